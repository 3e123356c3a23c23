import SwarmCore

/// A bad quick-start argument: the option it came from and what is wrong.
public struct QuickStartError: Error, Equatable, CustomStringConvertible {
    /// "--name", "-i", "--listen", "--env", "--cwd" or "command".
    public var option: String
    public var message: String

    public init(option: String, message: String) {
        self.option = option
        self.message = message
    }

    public var description: String { "\(option): \(message)" }
}

/// `swarmctl start --name web -i 4 --listen 127.0.0.1:3000 --env K=V -- node server.js`
/// as an app config: swarmd writes the text into its state dir and loads it
/// like any other config, so the app is remembered and reloadable.
public enum QuickStart {
    public enum Instances: Equatable, Sendable {
        case count(Int)
        /// One per CPU swarmd may use: `workers = "auto"`.
        case max
    }

    /// `-i 4` or `-i max`. Unlike `workers` in a file, 0 is refused: a quick
    /// start that runs nothing is a typo, not a plan.
    public static func instances(_ text: String) throws(QuickStartError) -> Instances {
        if text == "max" { return .max }
        guard text.utf8.allSatisfy({ $0 >= UInt8(ascii: "0") && $0 <= UInt8(ascii: "9") }), let n = Int(text),
              (1...AppSpec.maxWorkers).contains(n) else {
            throw QuickStartError(option: "-i", message: "'\(AppConfig.printable(text))' is not a number of instances (1…\(AppSpec.maxWorkers)) or \"max\"")
        }
        return .count(n)
    }

    /// The whole quick start as swarmd does it: the flags checked, the config
    /// text rendered, and that text loaded as the file `path` will be, so any
    /// problem (a command not found, a cwd that is no directory) is reported
    /// against its option before anything is written or started.
    public static func load(name: String, instances text: String, listen: String?, env: [String], command: [String],
                            cwd: String, path: String, environment: ConfigEnvironment) throws(QuickStartError) -> (text: String, spec: AppSpec) {
        let text = try render(name: name, instances: try instances(text), listen: listen, env: env, command: command, cwd: cwd)
        do {
            return (text, try AppConfig.parse(text: text, path: path, environment: environment))
        } catch {
            // The text is ours; the user wrote flags: name the flag, not a line of a file they never saw.
            let first = error.all[0]
            throw QuickStartError(option: option(forKey: first.key), message: first.message)
        }
    }

    /// The flag a config key of the rendered text came from.
    static func option(forKey key: String?) -> String {
        guard let key else { return "quick start" }
        if key == "name" { return "--name" }
        if key == "workers" { return "-i" }
        if key == "cwd" { return "--cwd" }
        if key == "env" || key.hasPrefix("env.") { return "--env" }
        if key.hasPrefix("socket") { return "--listen" }
        if key == "command" { return "command" }
        return key
    }

    /// The config text. `cwd` must be absolute (the file lives in the state dir,
    /// not beside the app); `env` holds "KEY=VALUE" pairs, a later pair for the
    /// same key wins; `listen` adds one `[[socket]]` named "http", with bind
    /// interception on so a server that binds that port itself works unchanged.
    public static func render(name: String, instances: Instances, listen: String?, env: [String],
                              command: [String], cwd: String) throws(QuickStartError) -> String {
        if let problem = AppConfig.nameProblem(name) { throw QuickStartError(option: "--name", message: problem) }
        guard cwd.hasPrefix("/") else {
            throw QuickStartError(option: "--cwd", message: "'\(AppConfig.printable(cwd))' is not an absolute path")
        }
        if cwd.contains("\0") { throw QuickStartError(option: "--cwd", message: "contains a NUL byte") }
        guard let program = command.first, !program.isEmpty else {
            throw QuickStartError(option: "command", message: "missing: give the program and its arguments after '--', like -- node server.js")
        }
        if let i = command.firstIndex(where: { $0.contains("\0") }) {
            throw QuickStartError(option: "command", message: "argument \(i) contains a NUL byte")
        }
        if let i = command.firstIndex(where: { $0.utf8.count >= AppConfig.maxArgumentBytes }) {
            throw QuickStartError(option: "command", message: "argument \(i) is \(command[i].utf8.count) bytes; Linux passes at most \(AppConfig.maxArgumentBytes - 1) per argument")
        }
        if case let .count(n) = instances, !(1...AppSpec.maxWorkers).contains(n) {
            throw QuickStartError(option: "-i", message: "\(n) is out of range (1…\(AppSpec.maxWorkers), or \"max\")")
        }
        var address: ListenAddress?
        if let listen {
            switch parseListen(listen, relativeTo: cwd) {
            case let .success(a): address = a
            case let .failure(why): throw QuickStartError(option: "--listen", message: why.message)
            }
        }
        var pairs: [(String, String)] = []
        for pair in env {
            guard let eq = pair.firstIndex(of: "=") else {
                throw QuickStartError(option: "--env", message: "'\(AppConfig.printable(pair, limit: 40))' is not KEY=VALUE")
            }
            let key = String(pair[..<eq]), value = String(pair[pair.index(after: eq)...])
            guard isValidEnvName(key) else {
                throw QuickStartError(option: "--env", message: "'\(AppConfig.printable(key, limit: 40))' is not a valid environment variable name (use A-Z, a-z, 0-9 and _, not starting with a digit)")
            }
            if value.contains("\0") { throw QuickStartError(option: "--env", message: "the value of \(key) contains a NUL byte") }
            if let problem = AppConfig.envSizeProblem(key, value) { throw QuickStartError(option: "--env", message: problem) }
            if let i = pairs.firstIndex(where: { $0.0 == key }) { pairs[i].1 = value } else { pairs.append((key, value)) }
        }

        var out = "# Written by swarmd for `swarmctl start --name \(name)` (a quick start, no config file of its own).\n"
        out += "# Edit it and run `swarmctl reload \(name)`; see the README's \"App config reference\".\n"
        out += "name = \(tomlString(name))\n"
        out += "command = [\(command.map(tomlString).joined(separator: ", "))]\n"
        switch instances {
        case let .count(n): out += "workers = \(n)\n"
        case .max: out += "workers = \"auto\"\n"
        }
        out += "cwd = \(tomlString(cwd))\n"
        if !pairs.isEmpty {
            out += "\n[env]\n"
            for (key, value) in pairs { out += "\(key) = \(tomlString(value))\n" }
        }
        if let address {
            out += "\n[[socket]]\nname = \"http\"\nlisten = \(tomlString(address.description))\n"
            if address.isTCP { out += "intercept = true\n" }
        }
        return out
    }

    /// A TOML basic string: `"` and `\` escaped, and every control character
    /// (TOML allows none raw but tab) as \uXXXX.
    static func tomlString(_ s: String) -> String {
        var out = "\""
        for c in s.unicodeScalars {
            switch c {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\t": out += "\\t"
            case "\r": out += "\\r"
            case _ where c.value < 0x20 || c.value == 0x7F:
                let hex = String(c.value, radix: 16, uppercase: true)
                out += "\\u" + String(repeating: "0", count: 4 - hex.count) + hex
            default: out.unicodeScalars.append(c)
            }
        }
        return out + "\""
    }
}
