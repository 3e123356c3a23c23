import Foundation
import SwarmCore
import TOMLKit

/// A config error: where it is and what is wrong, for a human.
public struct ConfigError: Error, Equatable, CustomStringConvertible {
    public var file: String
    /// 0 when the error concerns the file as a whole.
    public var line: Int
    public var key: String?
    public var message: String
    /// The file's further errors, in line order: a load reports every problem
    /// it found, this one (the first) and these.
    public var also: [ConfigError] = []

    /// At most this many errors of one file are kept; a last one says how many more there were.
    public static let maxReported = 50

    /// Control characters in `key` and `message` (they quote the user's text)
    /// are escaped, so an error cannot move a terminal's cursor or forge a line.
    public init(file: String, line: Int, key: String?, message: String) {
        self.file = file
        self.line = line
        self.key = key.map { AppConfig.printable($0, limit: 200) }
        self.message = AppConfig.printable(message, limit: 2000)
    }

    /// The first of `errors` by line (file-wide errors, line 0, first), carrying
    /// the rest; nil when there are none.
    init?(collecting errors: [ConfigError]) {
        let sorted = errors.enumerated().sorted { ($0.element.line, $0.offset) < ($1.element.line, $1.offset) }.map(\.element)
        guard var first = sorted.first else { return nil }
        var rest = Array(sorted.dropFirst().prefix(ConfigError.maxReported - 1))
        if sorted.count > ConfigError.maxReported {
            // In the place of the first one left out, so the list stays in line order.
            let next = sorted[ConfigError.maxReported - 1]
            rest[rest.count - 1] = ConfigError(file: next.file, line: next.line, key: nil,
                                               message: "\(sorted.count - ConfigError.maxReported + 1) more errors from this line on, not shown")
        }
        first.also = rest
        self = first
    }

    /// This error and the further ones, each on its own.
    public var all: [ConfigError] {
        var head = self
        head.also = []
        return [head] + also
    }

    /// One line per error.
    public var description: String {
        all.map { e in
            let place = e.line > 0 ? "\(AppConfig.printable(e.file, limit: 4096)):\(e.line)" : AppConfig.printable(e.file, limit: 4096)
            if let key = e.key { return "\(place): \(key): \(e.message)" }
            return "\(place): \(e.message)"
        }.joined(separator: "\n")
    }
}

/// What the loader needs from the machine, injectable for tests.
public struct ConfigEnvironment: Sendable {
    /// CPUs this process may use (affinity and cgroup quota): `workers = "auto"`.
    public var cpuCount: @Sendable () -> Int
    public var isRoot: Bool
    public var currentUID: UInt32
    /// uid and primary gid of a user name or number.
    public var lookupUser: @Sendable (String) -> (uid: UInt32, gid: UInt32)?
    public var lookupGroup: @Sendable (String) -> UInt32?
    /// PATH used to find a bare command name when the app's env sets none.
    public var path: String
    public var isExecutable: @Sendable (String) -> Bool
    public var isDirectory: @Sendable (String) -> Bool
    /// The CPUs this process may run on (`cpu_affinity` must name some of them).
    public var allowedCPUs: @Sendable () -> [Int]

    public init(cpuCount: @escaping @Sendable () -> Int, isRoot: Bool, currentUID: UInt32,
                lookupUser: @escaping @Sendable (String) -> (uid: UInt32, gid: UInt32)?,
                lookupGroup: @escaping @Sendable (String) -> UInt32?,
                path: String,
                isExecutable: @escaping @Sendable (String) -> Bool,
                isDirectory: @escaping @Sendable (String) -> Bool,
                allowedCPUs: @escaping @Sendable () -> [Int] = { [] }) {
        self.cpuCount = cpuCount
        self.isRoot = isRoot
        self.currentUID = currentUID
        self.lookupUser = lookupUser
        self.lookupGroup = lookupGroup
        self.path = path
        self.isExecutable = isExecutable
        self.isDirectory = isDirectory
        self.allowedCPUs = allowedCPUs
    }
}

public enum AppConfig {
    /// Largest config file read: anything bigger is a mistake.
    public static let maxFileSize = 1 << 20
    public static let maxWorkers = AppSpec.maxWorkers
    /// Linux's MAX_ARG_STRLEN: execve fails with E2BIG on a longer argument or
    /// KEY=value string (NUL included), so a config holding one is refused here
    /// instead of every spawn failing later.
    public static let maxArgumentBytes = 131_072
    /// `env_file` lists at most this many files, each at most `maxFileSize` bytes.
    public static let maxEnvFiles = 16
    /// sched_setaffinity masks swarmd builds hold CPUs 0…1023.
    public static let maxCPU = 1024

    /// Why `name` cannot name an app, or nil if it can: 1 to 64 of a-z, 0-9, _
    /// and -, and not "all".
    public static func nameProblem(_ name: String) -> String? {
        guard !name.isEmpty, name.unicodeScalars.count <= 64,
              name.unicodeScalars.allSatisfy({ ($0 >= "a" && $0 <= "z") || ($0 >= "0" && $0 <= "9") || $0 == "_" || $0 == "-" }) else {
            return "'\(printable(name))' is not a valid name: use 1 to 64 of a-z, 0-9, _ and -"
        }
        if name == "all" { return "'all' is reserved (it means every app in swarmctl)" }
        return nil
    }

    /// Why KEY=value cannot reach a worker through execve, or nil.
    static func envSizeProblem(_ key: String, _ value: String) -> String? {
        let bytes = key.utf8.count + 1 + value.utf8.count
        guard bytes >= maxArgumentBytes else { return nil }
        return "\(key)=… is \(bytes) bytes; Linux passes at most \(maxArgumentBytes - 1) per variable"
    }

    /// `text` with control characters escaped, so that an error quoting user
    /// input cannot move the cursor or forge a line on a terminal.
    static func printable(_ text: String, limit: Int = 80) -> String {
        var out = ""
        for (i, c) in text.unicodeScalars.enumerated() {
            if i == limit { out += "…"; break }
            switch c {
            case "\n": out += "\\n"
            case "\t": out += "\\t"
            case "\r": out += "\\r"
            case _ where c.value < 0x20 || (0x7F...0x9F).contains(c.value):
                out += "\\u{\(String(c.value, radix: 16))}"
            default: out.unicodeScalars.append(c)
            }
        }
        return out
    }

    /// Reads and validates one app config file.
    public static func load(path: String, environment: ConfigEnvironment) throws(ConfigError) -> AppSpec {
        let absolute = absolutePath(path)
        let data: [UInt8]
        switch ConfigFile.read(path: absolute, limit: maxFileSize) {
        case let .success(bytes): data = bytes
        case let .failure(why): throw ConfigError(file: absolute, line: 0, key: nil, message: why.message)
        }
        guard let text = String(validating: data, as: UTF8.self) else {
            throw ConfigError(file: absolute, line: invalidUTF8Line(data), key: nil, message: "not UTF-8 text")
        }
        return try parse(text: text, path: absolute, environment: environment)
    }

    public static func parse(text: String, path: String, environment: ConfigEnvironment) throws(ConfigError) -> AppSpec {
        if text.contains("\0") {
            throw ConfigError(file: path, line: 0, key: nil, message: "file contains a NUL byte")
        }
        let locator = KeyLocator(text: text)
        if let bad = locator.keylessHeaderLine {
            // toml++ would abort on that header: parse only the lines before it, so an
            // earlier syntax error is still the one reported.
            var end = text.unicodeScalars.startIndex
            for _ in 1..<bad { end = text.unicodeScalars[end...].firstIndex(of: "\n").map(text.unicodeScalars.index(after:)) ?? end }
            _ = try toml(String(text.unicodeScalars[..<end]), path: path)
            throw ConfigError(file: path, line: bad, key: nil,
                              message: "TOML syntax error: a table header needs a key after its '[', like [restart] or [[socket]]")
        }
        var reader = Reader(path: path, locator: locator, environment: environment)
        return try reader.app(toml(text, path: path))
    }

    static func toml(_ text: String, path: String) throws(ConfigError) -> TOMLTable {
        do {
            return try TOMLTable(string: text)
        } catch let error as TOMLParseError {
            throw ConfigError(file: path, line: error.source.begin.line, key: nil,
                              message: "TOML syntax error: \(error.description)")
        } catch {
            throw ConfigError(file: path, line: 0, key: nil, message: "TOML syntax error: \(error)")
        }
    }

    /// The line of the first byte sequence that is not UTF-8 (0 if there is none).
    static func invalidUTF8Line(_ bytes: [UInt8]) -> Int {
        var line = 1
        var start = 0
        for (i, b) in bytes.enumerated() where b == UInt8(ascii: "\n") {
            if String(validating: bytes[start..<i], as: UTF8.self) == nil { return line }
            line += 1
            start = i + 1
        }
        return String(validating: bytes[start...], as: UTF8.self) == nil ? line : 0
    }

    static func absolutePath(_ path: String) -> String {
        if path.hasPrefix("/") { return normalize(path) }
        return normalize(FileManager.default.currentDirectoryPath + "/" + path)
    }

    static func normalize(_ path: String) -> String {
        var parts: [Substring] = []
        for part in path.split(separator: "/") {
            if part == "." || part.isEmpty { continue }
            if part == ".." { _ = parts.popLast(); continue }
            parts.append(part)
        }
        return "/" + parts.joined(separator: "/")
    }
}

/// Where a Reader's errors gather: every check of a file runs, and the
/// load fails at the end with all of them.
final class ErrorSink {
    var errors: [ConfigError] = []
}

/// Walks the parsed table, converting each key and reporting every problem
/// with its line.
struct Reader {
    let path: String
    let locator: KeyLocator
    let environment: ConfigEnvironment
    let sink = ErrorSink()

    init(path: String, locator: KeyLocator, environment: ConfigEnvironment) {
        self.path = path
        self.locator = locator
        self.environment = environment
    }

    func fail(_ key: String, _ message: String) -> ConfigError {
        ConfigError(file: path, line: locator.line(of: key) ?? 0, key: key, message: message)
    }

    /// One check that does not depend on the others: its error is recorded
    /// and nil stands in for its value.
    func check<T>(_ body: () throws(ConfigError) -> T?) -> T? {
        do { return try body() } catch {
            sink.errors.append(error)
            return nil
        }
    }

    func checkKeys(_ table: TOMLTable, allowed: [String], at prefix: String) {
        for key in table.keys where !allowed.contains(key) {
            let full = prefix.isEmpty ? key : "\(prefix).\(key)"
            let hint = allowed.min(by: { editDistance($0, key) < editDistance($1, key) })
                .flatMap { editDistance($0, key) <= 2 ? " (did you mean '\($0)'?)" : nil } ?? ""
            sink.errors.append(fail(full, "unknown key\(hint); allowed here: \(allowed.joined(separator: ", "))"))
        }
    }

    func string(_ t: TOMLTable, _ key: String, at prefix: String) throws(ConfigError) -> String? {
        guard let v = t[key] else { return nil }
        guard let s = v.string else { throw fail(join(prefix, key), "expected a string, found \(v.type)") }
        return s
    }

    func int(_ t: TOMLTable, _ key: String, at prefix: String, range: ClosedRange<Int>) throws(ConfigError) -> Int? {
        guard let v = t[key] else { return nil }
        guard let i = v.int else { throw fail(join(prefix, key), "expected an integer, found \(v.type)") }
        guard range.contains(i) else {
            throw fail(join(prefix, key), "\(i) is out of range (\(range.lowerBound)…\(range.upperBound))")
        }
        return i
    }

    func bool(_ t: TOMLTable, _ key: String, at prefix: String) throws(ConfigError) -> Bool? {
        guard let v = t[key] else { return nil }
        guard let b = v.bool else { throw fail(join(prefix, key), "expected true or false, found \(v.type)") }
        return b
    }

    func duration(_ t: TOMLTable, _ key: String, at prefix: String, max: Duration = .seconds(86_400)) throws(ConfigError) -> Duration? {
        guard let v = t[key] else { return nil }
        guard let text = v.string else {
            throw fail(join(prefix, key), "expected a duration string like \"250ms\", \"10s\" or \"2m\", found \(v.type)")
        }
        guard let d = parseDuration(text) else {
            // Digits and a unit, but more nanoseconds than fit: a duration, only too long.
            if let unit = ["ms", "us", "ns", "s", "m", "h"].first(where: { text.trimmedSpaces.hasSuffix($0) }),
               case let number = text.trimmedSpaces.dropLast(unit.count), !number.isEmpty,
               number.allSatisfy({ $0.isASCII && $0.isNumber }) {
                throw fail(join(prefix, key), "'\(text)' is longer than \(max.humanReadable)")
            }
            throw fail(join(prefix, key), "'\(text)' is not a duration; use a number with ms, s, m or h, like \"250ms\" or \"10s\"")
        }
        guard d <= max else { throw fail(join(prefix, key), "'\(text)' is longer than \(max.humanReadable)") }
        return d
    }

    func size(_ t: TOMLTable, _ key: String, at prefix: String, zeroAllowed: Bool = false) throws(ConfigError) -> Int64? {
        guard let v = t[key] else { return nil }
        let n: Int64
        if let i = v.int {
            n = Int64(i)
        } else if let s = v.string, let parsed = parseSize(s) {
            n = parsed
        } else {
            throw fail(join(prefix, key), "expected a size like \"10MiB\", \"512KiB\" or a byte count")
        }
        if n < 0 || (n == 0 && !zeroAllowed) { throw fail(join(prefix, key), "must be positive") }
        return n
    }

    func table(_ t: TOMLTable, _ key: String, at prefix: String) throws(ConfigError) -> TOMLTable? {
        guard let v = t[key] else { return nil }
        guard let sub = v.table else { throw fail(join(prefix, key), "expected a table, found \(v.type)") }
        return sub
    }

    func join(_ prefix: String, _ key: String) -> String { prefix.isEmpty ? key : "\(prefix).\(key)" }

    /// `cpu_affinity = "auto"`, `"none"` or a list of CPU numbers.
    func cpuAffinity(_ root: TOMLTable) throws(ConfigError) -> CPUAffinity? {
        guard let v = root["cpu_affinity"] else { return nil }
        let expected = "expected \"auto\" (slot k on the k-th CPU swarmd may use), \"none\" or a list of CPU numbers like [0, 2]"
        if let s = v.string {
            switch s {
            case "auto": return .auto
            case "none": return nil
            default: throw fail("cpu_affinity", "'\(s)': \(expected)")
            }
        }
        guard let items = v.array else { throw fail("cpu_affinity", "\(expected), found \(v.type)") }
        guard !items.isEmpty else { throw fail("cpu_affinity", "the list is empty: \(expected)") }
        var cpus: [Int] = []
        for (i, item) in items.enumerated() {
            guard let n = item.int else { throw fail("cpu_affinity", "element \(i) is \(item.type), expected a CPU number") }
            guard (0..<AppConfig.maxCPU).contains(n) else {
                throw fail("cpu_affinity", "element \(i): CPU \(n) is out of range (0…\(AppConfig.maxCPU - 1))")
            }
            guard !cpus.contains(n) else { throw fail("cpu_affinity", "CPU \(n) is listed twice") }
            cpus.append(n)
        }
        let allowed = environment.allowedCPUs()
        if !allowed.isEmpty, let missing = cpus.first(where: { !allowed.contains($0) }) {
            throw fail("cpu_affinity", "CPU \(missing) is not available here (this process may use CPUs \(cpuList(allowed)))")
        }
        return .cpus(cpus)
    }

    mutating func app(_ root: TOMLTable) throws(ConfigError) -> AppSpec {
        checkKeys(root, allowed: ["name", "command", "workers", "cwd", "env", "env_file", "inherit_env", "user", "group",
                                  "no_new_privs", "cpu_affinity", "socket", "restart", "stop", "ready", "reload", "logs", "limits",
                                  "health", "recycle", "hooks"], at: "")
        // Each check below stands alone: its error is recorded and the next one still runs,
        // so one load reports every problem of the file. Checks that need an earlier
        // value (the executable needs command, cwd and env) are skipped when it failed.
        let name = check { () throws(ConfigError) -> String? in
            guard let name = try string(root, "name", at: "") else { throw fail("name", "missing: every app needs a name") }
            if let problem = AppConfig.nameProblem(name) { throw fail("name", problem) }
            return name
        }
        let command = check { () throws(ConfigError) -> [String]? in try self.command(root) }

        let configDir = (path as NSString).deletingLastPathComponent
        let cwd = check { () throws(ConfigError) -> String? in
            let cwdText = try string(root, "cwd", at: "") ?? "."
            if cwdText.isEmpty { throw fail("cwd", "is empty: use \".\" for the config file's folder") }
            let cwd = AppConfig.normalize(cwdText.hasPrefix("/") ? cwdText : configDir + "/" + cwdText)
            guard environment.isDirectory(cwd) else { throw fail("cwd", "'\(cwd)' is not a directory") }
            return cwd
        }

        let envFiles = check { () throws(ConfigError) -> [String]? in try self.envFiles(root, configDir: configDir) }
        var envComplete = envFiles != nil
        var env: [String: String] = [:]
        for file in envFiles ?? [] {
            guard let entries = check({ () throws(ConfigError) -> [DotEnv.Entry]? in try readEnvFile(file) }) else {
                envComplete = false
                continue
            }
            for entry in entries { env[entry.key] = entry.value }
        }
        if let envTable = check({ () throws(ConfigError) -> TOMLTable? in try table(root, "env", at: "") }) {
            for key in envTable.keys {
                if let value = check({ () throws(ConfigError) -> String? in try envValue(envTable, key) }) {
                    env[key] = value
                } else {
                    envComplete = false
                }
            }
        } else if root["env"] != nil {
            envComplete = false
        }

        let workers = check { () throws(ConfigError) -> Int? in try self.workers(root) } ?? 1
        let (sockets, socketsComplete) = self.sockets(root, configDir: configDir)

        var spec = AppSpec(name: name ?? "", command: command ?? [], workers: workers, cwd: cwd ?? "/", env: env, sockets: sockets, sourcePath: path)
        spec.envFiles = envFiles ?? []
        if let command, let cwd, envComplete {
            spec.executable = check { () throws(ConfigError) -> String? in try resolveExecutable(command[0], cwd: cwd, env: env) } ?? ""
        }
        if let command, socketsComplete {
            _ = check { () throws(ConfigError) -> Bool? in try checkPlaceholders(command, sockets: sockets); return true }
        }
        spec.inheritEnvironment = check { () throws(ConfigError) -> Bool? in try bool(root, "inherit_env", at: "") } ?? true

        // An app whose sockets failed to parse may well have some: do not add a second error about [ready].
        let hasSockets = !sockets.isEmpty || !socketsComplete
        if let t = check({ () throws(ConfigError) -> TOMLTable? in try table(root, "restart", at: "") }) { spec.restart = restart(t) }
        if let t = check({ () throws(ConfigError) -> TOMLTable? in try table(root, "stop", at: "") }) { spec.stop = stop(t) }
        if let t = check({ () throws(ConfigError) -> TOMLTable? in try table(root, "ready", at: "") }) {
            spec.ready = ready(t, hasSockets: hasSockets)
        } else if !hasSockets {
            spec.ready.mode = .delay
        }
        if let t = check({ () throws(ConfigError) -> TOMLTable? in try table(root, "reload", at: "") }) { spec.reload = reload(t) }
        spec.cpuAffinity = check { () throws(ConfigError) -> CPUAffinity? in try cpuAffinity(root) }
        if let t = check({ () throws(ConfigError) -> TOMLTable? in try table(root, "logs", at: "") }) { spec.logs = logs(t) }
        if let t = check({ () throws(ConfigError) -> TOMLTable? in try table(root, "limits", at: "") }) { (spec.limits, spec.memoryLimit) = limits(t) }
        if let t = check({ () throws(ConfigError) -> TOMLTable? in try table(root, "health", at: "") }) {
            spec.health = health(t, sockets: sockets, socketsComplete: socketsComplete)
        }
        if let t = check({ () throws(ConfigError) -> TOMLTable? in try table(root, "recycle", at: "") }) {
            spec.recycle = recycle(t, sockets: sockets, socketsComplete: socketsComplete)
        }
        checkReadyProbe(spec, root: root)
        if let t = check({ () throws(ConfigError) -> TOMLTable? in try table(root, "hooks", at: "") }) { spec.hooks = hooks(t) }

        spec.user = check { () throws(ConfigError) -> String? in
            guard let user = try string(root, "user", at: "") else { return nil }
            guard let found = environment.lookupUser(user) else { throw fail("user", "no user named '\(user)'") }
            if !environment.isRoot && found.uid != environment.currentUID {
                throw fail("user", "swarmd runs as uid \(environment.currentUID), not root: it cannot run workers as '\(user)'")
            }
            return user
        }
        spec.group = check { () throws(ConfigError) -> String? in
            guard let group = try string(root, "group", at: "") else { return nil }
            guard environment.lookupGroup(group) != nil else { throw fail("group", "no group named '\(group)'") }
            if !environment.isRoot { throw fail("group", "swarmd is not root: it cannot switch workers to group '\(group)'") }
            return group
        }
        spec.noNewPrivileges = check { () throws(ConfigError) -> Bool? in try bool(root, "no_new_privs", at: "") } ?? false
        if let error = ConfigError(collecting: sink.errors) { throw error }
        return spec
    }

    func command(_ root: TOMLTable) throws(ConfigError) -> [String] {
        guard let commandValue = root["command"] else {
            throw fail("command", "missing: the program to run, as an array like [\"node\", \"server.js\"]")
        }
        guard let commandArray = commandValue.array else {
            throw fail("command", "expected an array of strings like [\"node\", \"server.js\"] (commands never go through a shell), found \(commandValue.type)")
        }
        var command: [String] = []
        for (i, item) in commandArray.enumerated() {
            guard let s = item.string else { throw fail("command", "element \(i) is \(item.type), expected a string") }
            if s.contains("\0") { throw fail("command", "element \(i) contains a NUL byte") }
            if s.utf8.count >= AppConfig.maxArgumentBytes {
                throw fail("command", "element \(i) is \(s.utf8.count) bytes; Linux passes at most \(AppConfig.maxArgumentBytes - 1) per argument")
            }
            command.append(s)
        }
        guard let program = command.first, !program.isEmpty else { throw fail("command", "must not be empty") }
        return command
    }

    func envValue(_ envTable: TOMLTable, _ key: String) throws(ConfigError) -> String {
        guard isValidEnvName(key) else { throw fail("env.\(key)", "'\(key)' is not a valid environment variable name") }
        let v = envTable[key]!
        let value: String
        if let s = v.string { value = s }
        else if let i = v.int { value = String(i) }
        else if let b = v.bool { value = b ? "true" : "false" }
        else { throw fail("env.\(key)", "expected a string, found \(v.type) (integers and booleans are written as text too)") }
        if value.contains("\0") { throw fail("env.\(key)", "contains a NUL byte") }
        if let problem = AppConfig.envSizeProblem(key, value) { throw fail("env.\(key)", problem) }
        return value
    }

    func workers(_ root: TOMLTable) throws(ConfigError) -> Int {
        guard let v = root["workers"] else { return 1 }
        if let i = v.int {
            // 0 is an app that is known and runs no worker, as after `swarmctl scale NAME 0`.
            guard (0...AppConfig.maxWorkers).contains(i) else {
                throw fail("workers", "\(i) is out of range (0…\(AppConfig.maxWorkers), or \"auto\")")
            }
            return i
        }
        if v.string == "auto" { return max(1, environment.cpuCount()) }
        throw fail("workers", "expected a number of workers or \"auto\", found \(v.type == .string ? "'\(v.string!)'" : "\(v.type)")")
    }

    /// `env_file = ".env"` or a list of them, relative to the config's folder.
    func envFiles(_ root: TOMLTable, configDir: String) throws(ConfigError) -> [String] {
        guard let v = root["env_file"] else { return [] }
        let expected = "expected a file name like \".env\" or a list of them"
        let names: [String]
        if let s = v.string {
            names = [s]
        } else if let items = v.array {
            var list: [String] = []
            for (i, item) in items.enumerated() {
                guard let s = item.string else { throw fail("env_file", "element \(i) is \(item.type): \(expected)") }
                list.append(s)
            }
            names = list
        } else {
            throw fail("env_file", "\(expected), found \(v.type)")
        }
        guard names.count <= AppConfig.maxEnvFiles else { throw fail("env_file", "more than \(AppConfig.maxEnvFiles) files") }
        var paths: [String] = []
        for name in names {
            guard !name.isEmpty else { throw fail("env_file", "a file name is empty") }
            if name.contains("\0") { throw fail("env_file", "a file name contains a NUL byte") }
            let full = AppConfig.normalize(name.hasPrefix("/") ? name : configDir + "/" + name)
            if paths.contains(full) { throw fail("env_file", "'\(full)' is listed twice") }
            paths.append(full)
        }
        return paths
    }

    /// One env file's variables. Errors about the file as a whole point at the
    /// config's `env_file` line; errors inside it at the env file's own line.
    func readEnvFile(_ file: String) throws(ConfigError) -> [DotEnv.Entry] {
        let bytes: [UInt8]
        switch ConfigFile.read(path: file, limit: AppConfig.maxFileSize) {
        case let .success(b): bytes = b
        case let .failure(why): throw fail("env_file", "'\(file)': \(why.message)")
        }
        let from = "(env_file of \(path):\(locator.line(of: "env_file") ?? 0))"
        guard let text = String(validating: bytes, as: UTF8.self) else {
            throw ConfigError(file: file, line: AppConfig.invalidUTF8Line(bytes), key: nil, message: "not UTF-8 text \(from)")
        }
        if let nul = bytes.firstIndex(of: 0) {
            let line = bytes[..<nul].reduce(1) { $1 == UInt8(ascii: "\n") ? $0 + 1 : $0 }
            throw ConfigError(file: file, line: line, key: nil, message: "contains a NUL byte \(from)")
        }
        switch DotEnv.parse(text) {
        case let .success(entries):
            for entry in entries {
                if let problem = AppConfig.envSizeProblem(entry.key, entry.value) {
                    throw ConfigError(file: file, line: entry.line, key: nil, message: "\(problem) \(from)")
                }
            }
            return entries
        case let .failure(problem): throw ConfigError(file: file, line: problem.line, key: nil, message: "\(problem.message) \(from)")
        }
    }

    func resolveExecutable(_ program: String, cwd: String, env: [String: String]) throws(ConfigError) -> String {
        if program.contains("/") {
            let full = program.hasPrefix("/") ? program : AppConfig.normalize(cwd + "/" + program)
            guard environment.isExecutable(full) else {
                throw fail("command", "'\(full)' does not exist or is not executable")
            }
            return full
        }
        let searchPath = env["PATH"] ?? environment.path
        for dir in searchPath.split(separator: ":") where !dir.isEmpty {
            let base = dir.hasPrefix("/") ? String(dir) : AppConfig.normalize(cwd + "/" + dir)
            let candidate = base + "/" + program
            if environment.isExecutable(candidate) { return candidate }
        }
        throw fail("command", "'\(program)' was not found in PATH (\(searchPath))")
    }

    func checkPlaceholders(_ command: [String], sockets: [SocketSpec]) throws(ConfigError) {
        for arg in command {
            var rest = Substring(arg)
            // The earlier of the two, so that neither kind hides the other.
            while let open = [rest.range(of: "{fd:"), rest.range(of: "{port:")].compactMap({ $0 }).min(by: { $0.lowerBound < $1.lowerBound }) {
                guard let close = rest[open.upperBound...].firstIndex(of: "}") else {
                    throw fail("command", "unterminated placeholder in '\(arg)'")
                }
                let name = String(rest[open.upperBound..<close])
                guard let socket = sockets.first(where: { $0.name == name }) else {
                    throw fail("command", "placeholder in '\(arg)' names socket '\(name)', but no [[socket]] has that name")
                }
                if rest[open].hasPrefix("{port:") && !socket.listen.isTCP {
                    throw fail("command", "placeholder {port:\(name)}: socket '\(name)' is a unix socket and has no port")
                }
                rest = rest[rest.index(after: close)...]
            }
        }
    }

    /// The sockets that parsed, and whether every one did (a later check that
    /// looks a socket up by name is skipped otherwise).
    func sockets(_ root: TOMLTable, configDir: String) -> ([SocketSpec], Bool) {
        guard let v = root["socket"] else { return ([], true) }
        guard let array = v.array else {
            sink.errors.append(fail("socket", "expected [[socket]] tables, found \(v.type)"))
            return ([], false)
        }
        var result: [SocketSpec] = []
        var complete = true
        for (i, item) in array.enumerated() {
            if let socket = check({ () throws(ConfigError) -> SocketSpec? in try self.socket(item, index: i, configDir: configDir, before: result) }) {
                result.append(socket)
            } else {
                complete = false
            }
        }
        return (result, complete)
    }

    func socket(_ item: TOMLValueConvertible, index i: Int, configDir: String, before result: [SocketSpec]) throws(ConfigError) -> SocketSpec {
        let prefix = "socket[\(i)]"
        guard let t = item.table else { throw fail(prefix, "expected a table, found \(item.type)") }
        checkKeys(t, allowed: ["name", "listen", "backlog", "balance", "mode", "intercept"], at: prefix)
        let name = try string(t, "name", at: prefix) ?? (i == 0 ? "http" : "")
        guard !name.isEmpty, name.unicodeScalars.count <= 64,
              name.unicodeScalars.allSatisfy({ $0.isASCII && ($0.properties.isAlphabetic || ("0"..."9").contains($0) || "_-.".unicodeScalars.contains($0)) }) else {
            throw fail("\(prefix).name", "'\(name)' is not a valid socket name: use 1 to 64 of A-Z, a-z, 0-9, _, - and .")
        }
        if result.contains(where: { $0.name == name }) { throw fail("\(prefix).name", "a socket named '\(name)' is already defined") }
        guard let listenText = try string(t, "listen", at: prefix) else {
            throw fail(prefix, "missing 'listen': an address like \"127.0.0.1:8080\", \"[::]:8080\" or \"unix:/run/web.sock\"")
        }
        let listen: ListenAddress
        switch parseListen(listenText, relativeTo: configDir) {
        case let .success(a): listen = a
        case let .failure(why): throw fail("\(prefix).listen", why.message)
        }
        if let other = result.first(where: { $0.listen == listen }) {
            throw fail("\(prefix).listen", "\(listen) is already used by socket '\(other.name)'")
        }
        let backlog = try int(t, "backlog", at: prefix, range: 1...65535) ?? 1024
        var balance = Balance.reuseport
        if let b = try string(t, "balance", at: prefix) {
            guard let parsed = Balance(rawValue: b) else {
                throw fail("\(prefix).balance", "'\(b)' is not one of: reuseport, shared")
            }
            balance = parsed
        }
        var mode: UInt32?
        if let v = t["mode"] {
            guard case .unix = listen else { throw fail("\(prefix).mode", "only unix sockets have a file mode") }
            // TOML's own 0o660 is as clear as "0660".
            if let n = v.int, (0...0o777).contains(n) {
                mode = UInt32(n)
            } else if let m = v.string, let parsed = UInt32(m, radix: 8), parsed <= 0o777 {
                mode = parsed
            } else if let n = v.int {
                throw fail("\(prefix).mode", "0o\(String(n, radix: 8)) is not a file mode (0o0…0o777)")
            } else {
                throw fail("\(prefix).mode", "\(v.string.map { "'\($0)'" } ?? "\(v.type)") is not an octal file mode like \"0660\" or 0o660")
            }
        }
        let intercept = try bool(t, "intercept", at: prefix)
        if intercept == true && !listen.isTCP {
            throw fail("\(prefix).intercept", "only TCP sockets can be intercepted: a worker's bind() to a unix path is left alone")
        }
        return SocketSpec(name: name, listen: listen, backlog: Int32(backlog), balance: balance, mode: mode, intercept: intercept)
    }

    func restart(_ t: TOMLTable) -> RestartPolicy {
        let p = "restart"
        checkKeys(t, allowed: ["policy", "initial_delay", "max_delay", "reset_after", "crash_loop_restarts", "crash_loop_window"], at: p)
        var r = RestartPolicy()
        r.mode = check { () throws(ConfigError) -> RestartMode? in
            guard let s = try string(t, "policy", at: p) else { return nil }
            guard let mode = RestartMode(rawValue: s) else { throw fail("\(p).policy", "'\(s)' is not one of: always, on-failure, never") }
            return mode
        } ?? r.mode
        let initialDelay = check { () throws(ConfigError) -> Duration? in try duration(t, "initial_delay", at: p) }
        let maxDelay = check { () throws(ConfigError) -> Duration? in try duration(t, "max_delay", at: p) }
        r.initialDelay = initialDelay ?? r.initialDelay
        r.maxDelay = maxDelay ?? r.maxDelay
        r.resetAfter = check { () throws(ConfigError) -> Duration? in try duration(t, "reset_after", at: p) } ?? r.resetAfter
        r.crashLoopRestarts = check { () throws(ConfigError) -> Int? in try int(t, "crash_loop_restarts", at: p, range: 1...1000) } ?? r.crashLoopRestarts
        r.crashLoopWindow = check { () throws(ConfigError) -> Duration? in try duration(t, "crash_loop_window", at: p) } ?? r.crashLoopWindow
        // Compared only when neither failed: a default standing in for a bad value would give a second, false error.
        if (initialDelay != nil || t["initial_delay"] == nil) && (maxDelay != nil || t["max_delay"] == nil) && r.maxDelay < r.initialDelay {
            sink.errors.append(fail("\(p).max_delay", "must not be shorter than initial_delay (\(r.initialDelay.humanReadable))"))
        }
        return r
    }

    func stop(_ t: TOMLTable) -> StopPolicy {
        let p = "stop"
        checkKeys(t, allowed: ["signal", "timeout"], at: p)
        var s = StopPolicy()
        s.signal = check { () throws(ConfigError) -> Signal? in
            guard let v = t["signal"] else { return nil }
            if let name = v.string {
                guard let sig = Signal(name: name) else {
                    throw fail("\(p).signal", "'\(name)' is not a signal swarm knows (\(Signal.names.map(\.0).joined(separator: ", ")), or a number 1…64)")
                }
                return sig
            }
            if let n = v.int {
                guard (1...64).contains(n) else { throw fail("\(p).signal", "\(n) is not a signal number (1…64)") }
                return Signal(Int32(n))
            }
            throw fail("\(p).signal", "expected a signal name like \"SIGTERM\" or a number, found \(v.type)")
        } ?? s.signal
        s.timeout = check { () throws(ConfigError) -> Duration? in try duration(t, "timeout", at: p, max: .seconds(3600)) } ?? s.timeout
        return s
    }

    func ready(_ t: TOMLTable, hasSockets: Bool) -> ReadyPolicy {
        let p = "ready"
        checkKeys(t, allowed: ["mode", "timeout", "delay", "watchdog"], at: p)
        var r = ReadyPolicy()
        if !hasSockets { r.mode = .delay }
        let mode = check { () throws(ConfigError) -> ReadyMode? in
            guard let m = try string(t, "mode", at: p) else { return nil }
            guard let mode = ReadyMode(rawValue: m) else {
                throw fail("\(p).mode", "'\(m)' is not one of: notify, fd, listening, delay, http, tcp, exec")
            }
            if mode == .listening && !hasSockets {
                throw fail("\(p).mode", "\"listening\" needs a [[socket]] to watch; this app has none (use notify, fd or delay)")
            }
            return mode
        }
        r.mode = mode ?? r.mode
        r.timeout = check { () throws(ConfigError) -> Duration? in
            guard let d = try duration(t, "timeout", at: p, max: .seconds(3600)) else { return nil }
            if d <= .zero { throw fail("\(p).timeout", "must be positive") }
            return d
        } ?? r.timeout
        r.delay = check { () throws(ConfigError) -> Duration? in try duration(t, "delay", at: p, max: .seconds(3600)) } ?? r.delay
        r.watchdog = check { () throws(ConfigError) -> Duration? in
            guard let wd = try duration(t, "watchdog", at: p, max: .seconds(3600)) else { return nil }
            // A bad mode is reported already; the watchdog is judged against the mode written only if it parsed.
            if mode != nil || t["mode"] == nil {
                guard r.mode == .notify else { throw fail("\(p).watchdog", "needs mode = \"notify\": WATCHDOG=1 pings come over the notify socket") }
            }
            guard wd >= .milliseconds(10) else { throw fail("\(p).watchdog", "must be at least 10ms") }
            return wd
        }
        return r
    }

    func reload(_ t: TOMLTable) -> ReloadPolicy {
        let p = "reload"
        checkKeys(t, allowed: ["surge", "background_start", "hand_over", "min_ready"], at: p)
        var r = ReloadPolicy()
        let surge = check { () throws(ConfigError) -> Int? in try int(t, "surge", at: p, range: 0...AppConfig.maxWorkers) }
        r.surge = surge ?? r.surge
        r.backgroundStart = check { () throws(ConfigError) -> Bool? in try bool(t, "background_start", at: p) } ?? r.backgroundStart
        r.handOver = check { () throws(ConfigError) -> Bool? in try bool(t, "hand_over", at: p) } ?? r.handOver
        r.minReady = check { () throws(ConfigError) -> Duration? in
            guard let d = try duration(t, "min_ready", at: p, max: .seconds(3600)) else { return nil }
            if surge == 0 && d > .zero {
                throw fail("\(p).min_ready", "needs surge ≥ 1: with surge = 0 a slot's old worker is stopped before its replacement starts, so no worker serves beside it")
            }
            return d
        } ?? r.minReady
        return r
    }

    func logs(_ t: TOMLTable) -> LogPolicy {
        let p = "logs"
        checkKeys(t, allowed: ["max_size", "keep", "target", "rate"], at: p)
        var l = LogPolicy()
        l.maxSize = check { () throws(ConfigError) -> Int64? in
            guard let n = try size(t, "max_size", at: p) else { return nil }
            if n < 4096 { throw fail("\(p).max_size", "must be at least 4KiB") }
            return n
        } ?? l.maxSize
        l.keep = check { () throws(ConfigError) -> Int? in try int(t, "keep", at: p, range: 0...100) } ?? l.keep
        l.rate = check { () throws(ConfigError) -> Int64? in
            guard let rate = try size(t, "rate", at: p, zeroAllowed: true) else { return nil }
            guard rate == 0 || rate >= 4096 else { throw fail("\(p).rate", "must be at least 4KiB (per second), or 0 for no limit") }
            return rate
        } ?? l.rate
        l.target = check { () throws(ConfigError) -> String? in
            guard let target = try string(t, "target", at: p) else { return nil }
            guard ["auto", "file", "journal"].contains(target) else {
                throw fail("\(p).target", "'\(target)' is not one of: auto, file, journal")
            }
            return target
        } ?? l.target
        return l
    }

    static let rlimitNames = ["nofile", "nproc", "core", "stack", "memlock", "fsize", "as", "cpu", "data", "nice", "rtprio", "sigpending", "msgqueue", "locks", "rss", "rttime"]

    func limits(_ t: TOMLTable) -> ([ResourceLimit], Int64?) {
        let p = "limits"
        checkKeys(t, allowed: Reader.rlimitNames + ["memory"], at: p)
        var result: [ResourceLimit] = []
        var memory: Int64?
        for key in t.keys.sorted() {
            if key == "memory" {
                memory = check { () throws(ConfigError) -> Int64? in try size(t, key, at: p) }
                continue
            }
            guard Reader.rlimitNames.contains(key) else { continue }
            let v = t[key]!
            if let i = v.int, i >= 0 {
                result.append(ResourceLimit(name: key, soft: UInt64(i), hard: UInt64(i)))
            } else if v.string == "unlimited" {
                result.append(ResourceLimit(name: key, soft: .max, hard: .max))
            } else {
                sink.errors.append(fail("\(p).\(key)", "expected a non-negative integer or \"unlimited\""))
            }
        }
        return (result, memory)
    }
}

func isValidEnvName(_ s: String) -> Bool {
    guard let first = s.first, first == "_" || (first.isASCII && first.isLetter) else { return false }
    return s.allSatisfy { $0 == "_" || ($0.isASCII && ($0.isLetter || $0.isNumber)) }
}

/// "250ms", "10s", "1.5s", "2m", "1h", "0".
public func parseDuration(_ text: String) -> Duration? {
    let s = text.trimmedSpaces
    if s == "0" { return .zero }
    let units: [(String, Double)] = [("ms", 1e6), ("us", 1e3), ("ns", 1), ("s", 1e9), ("m", 60e9), ("h", 3600e9)]
    for (suffix, scale) in units where s.hasSuffix(suffix) {
        let number = s.dropLast(suffix.count)
        guard !number.isEmpty, number.allSatisfy({ $0.isNumber || $0 == "." }), let value = Double(number),
              value >= 0, value * scale < 1e18 else { return nil }
        return .nanoseconds(Int64(value * scale))
    }
    return nil
}

/// "10MiB", "512KiB", "1GiB", "100MB", "4096".
public func parseSize(_ text: String) -> Int64? {
    let s = text.trimmedSpaces
    let units: [(String, Double)] = [("KiB", 1024), ("MiB", 1_048_576), ("GiB", 1_073_741_824), ("KB", 1e3), ("MB", 1e6), ("GB", 1e9),
                                     ("K", 1024), ("M", 1_048_576), ("G", 1_073_741_824), ("B", 1)]
    for (suffix, scale) in units where s.hasSuffix(suffix) {
        guard let v = Double(String(s.dropLast(suffix.count)).trimmedSpaces), v >= 0, v * scale < 1e18 else { return nil }
        return Int64(v * scale)
    }
    return Int64(s)
}

struct ListenError: Error { let message: String }

/// "127.0.0.1:8080", "0.0.0.0:8080", "[::]:8080", "[::1]:8080", "unix:/run/web.sock".
func parseListen(_ text: String, relativeTo dir: String) -> Result<ListenAddress, ListenError> {
    if text.hasPrefix("unix:") {
        let p = String(text.dropFirst(5))
        guard !p.isEmpty else { return .failure(ListenError(message: "'\(text)': the unix socket path is empty")) }
        if p.hasPrefix("@") {
            return .failure(ListenError(message: "'\(text)': abstract unix sockets are not supported; give a path like \"unix:/run/web.sock\""))
        }
        // Normalized so that two spellings of one path are seen as the same socket.
        let full = AppConfig.normalize(p.hasPrefix("/") ? p : dir + "/" + p)
        guard full.utf8.count < 108 else {
            return .failure(ListenError(message: "'\(full)' is longer than a unix socket path may be (107 bytes)"))
        }
        return .success(.unix(path: full))
    }
    let host: String
    let portText: Substring
    if text.hasPrefix("[") {
        guard let close = text.firstIndex(of: "]"), text[text.index(after: close)...].hasPrefix(":") else {
            return .failure(ListenError(message: "'\(text)' is not an address: IPv6 is written \"[::1]:8080\""))
        }
        host = String(text[text.index(after: text.startIndex)..<close])
        portText = text[text.index(close, offsetBy: 2)...]
        guard isIPv6(host) else { return .failure(ListenError(message: "'\(host)' is not an IPv6 address")) }
    } else {
        guard let colon = text.lastIndex(of: ":") else {
            return .failure(ListenError(message: "'\(text)' is not an address: use \"HOST:PORT\" like \"127.0.0.1:8080\", \"[::]:8080\" or \"unix:/path\""))
        }
        host = String(text[..<colon])
        portText = text[text.index(after: colon)...]
        guard isIPv4(host) else {
            return .failure(ListenError(message: "'\(host)' is not a numeric IPv4 address (host names are not resolved; use 0.0.0.0 for every interface)"))
        }
    }
    guard portText.allSatisfy({ $0.isASCII && $0.isNumber }), let port = UInt16(portText), port > 0 else {
        return .failure(ListenError(message: "'\(portText)' is not a port (1…65535)"))
    }
    return .success(.tcp(host: host, port: port))
}

func isIPv4(_ s: String) -> Bool {
    var addr = in_addr()
    return inet_pton(AF_INET, s, &addr) == 1
}

func isIPv6(_ s: String) -> Bool {
    var addr = in6_addr()
    return inet_pton(AF_INET6, s, &addr) == 1
}

func editDistance(_ a: String, _ b: String) -> Int {
    let a = Array(a), b = Array(b)
    if a.isEmpty { return b.count }
    if b.isEmpty { return a.count }
    var prev = Array(0...b.count)
    for i in 1...a.count {
        var cur = [i] + Array(repeating: 0, count: b.count)
        for j in 1...b.count {
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (a[i - 1] == b[j - 1] ? 0 : 1))
        }
        prev = cur
    }
    return prev[b.count]
}

/// "0-3,6" for [0, 1, 2, 3, 6].
func cpuList(_ cpus: [Int]) -> String {
    var parts: [String] = []
    var i = 0
    while i < cpus.count {
        var j = i
        while j + 1 < cpus.count && cpus[j + 1] == cpus[j] + 1 { j += 1 }
        parts.append(j == i ? "\(cpus[i])" : "\(cpus[i])-\(cpus[j])")
        i = j + 1
    }
    return parts.joined(separator: ",")
}
