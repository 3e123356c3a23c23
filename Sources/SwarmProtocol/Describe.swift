/// `swarmctl describe NAME` (`--json` prints this). Like `StatusReport`,
/// fields may be added within a protocol version, never removed. Built by
/// swarmd, which masks secrets before anything is encoded: a secret never
/// crosses the control socket.
public struct AppDescription: Codable, Sendable, Equatable {
    public var name: String
    /// As in `AppStatus.state`.
    public var state: String
    public var generation: Int
    /// Absolute path of the config file.
    public var config: String
    /// SHA-256 (hex) of the config file as it is on disk now.
    public var configSHA256: String?
    /// The file on disk now loads to something else than the running generation: a reload would change it.
    public var configChanged: Bool?
    /// The file cannot be read or loaded now (or, state "error", why the app cannot run).
    public var configProblem: String?
    /// argv as configured, secret-looking arguments masked.
    public var command: [String]
    /// argv[0] resolved.
    public var executable: String
    public var cwd: String
    public var user: String?
    public var group: String?
    /// Whether workers also get swarmd's own environment.
    public var inheritEnv: Bool
    public var envFiles: [String]
    /// The config's `env` and its `env_file`s' variables, sorted by key.
    public var env: [EnvEntry]
    public var sockets: [DescribedSocket]
    public var workersWanted: Int
    public var workersReady: Int
    public var restart: String
    public var stop: String
    public var memoryLimitBytes: Int64?
    public var slots: [SlotHistory]
    public var logs: LogFiles
    public var lastReload: ReloadStatus?

    enum CodingKeys: String, CodingKey {
        case name, state, generation, config, command, executable, cwd, user, group, env, sockets, restart, stop, slots, logs
        case configSHA256 = "config_sha256"
        case configChanged = "config_changed"
        case configProblem = "config_problem"
        case inheritEnv = "inherit_env"
        case envFiles = "env_files"
        case workersWanted = "workers_wanted"
        case workersReady = "workers_ready"
        case memoryLimitBytes = "memory_limit_bytes"
        case lastReload = "last_reload"
    }

    public init(name: String, state: String, generation: Int, config: String, command: [String], executable: String, cwd: String,
                inheritEnv: Bool, envFiles: [String], env: [EnvEntry], sockets: [DescribedSocket], workersWanted: Int,
                workersReady: Int, restart: String, stop: String, slots: [SlotHistory], logs: LogFiles) {
        self.name = name
        self.state = state
        self.generation = generation
        self.config = config
        self.command = command
        self.executable = executable
        self.cwd = cwd
        self.inheritEnv = inheritEnv
        self.envFiles = envFiles
        self.env = env
        self.sockets = sockets
        self.workersWanted = workersWanted
        self.workersReady = workersReady
        self.restart = restart
        self.stop = stop
        self.slots = slots
        self.logs = logs
    }
}

public struct EnvEntry: Codable, Sendable, Equatable {
    public var key: String
    /// `SecretMask.mask` in place of a secret (or of a URL's userinfo in it).
    public var value: String
    /// Some or all of the value was masked.
    public var masked: Bool

    public init(key: String, value: String, masked: Bool) {
        self.key = key
        self.value = value
        self.masked = masked
    }
}

public struct DescribedSocket: Codable, Sendable, Equatable {
    public var name: String
    public var listen: String
    public var balance: String
    public var backlog: Int
    /// Bind interception is on for it.
    public var intercept: Bool

    public init(name: String, listen: String, balance: String, backlog: Int, intercept: Bool) {
        self.name = name
        self.listen = listen
        self.balance = balance
        self.backlog = backlog
        self.intercept = intercept
    }
}

/// One slot: its worker now and what happened to it before.
public struct SlotHistory: Codable, Sendable, Equatable {
    public var slot: Int
    public var generation: Int
    public var pid: Int32?
    public var state: String
    public var uptimeS: Double?
    public var restarts: Int
    /// How the slot's last worker ended ("exited with status 1", "killed by SIGKILL").
    public var lastExit: String?
    /// Why the slot's last worker was lost (an exit, a readiness timeout, the watchdog, its memory).
    public var lastFailure: String?
    /// Seconds until a pending restart.
    public var restartInS: Double?
    public var health: String?
    /// Pids of the slot's workers being stopped, and of a reload's incoming one.
    public var others: [Int32]?
    /// The slot's last exits, oldest first (at most `SlotExit.kept`; since swarmd started or last re-executed).
    public var exits: [SlotExit]?

    enum CodingKeys: String, CodingKey {
        case slot, generation, pid, state, restarts, health, others, exits
        case uptimeS = "uptime_s"
        case lastExit = "last_exit"
        case lastFailure = "last_failure"
        case restartInS = "restart_in_s"
    }

    public init(slot: Int, generation: Int, pid: Int32?, state: String, restarts: Int) {
        self.slot = slot
        self.generation = generation
        self.pid = pid
        self.state = state
        self.restarts = restarts
    }
}

/// One worker's end, as swarmd reaped it.
public struct SlotExit: Codable, Sendable, Equatable {
    public static let kept = 5
    /// RFC 3339, UTC.
    public var at: String
    public var pid: Int32
    public var generation: Int
    /// "exited with status 1", "killed by SIGKILL".
    public var status: String
    /// How long the worker ran.
    public var uptimeS: Double

    enum CodingKeys: String, CodingKey {
        case at, pid, generation, status
        case uptimeS = "uptime_s"
    }

    public init(at: String, pid: Int32, generation: Int, status: String, uptimeS: Double) {
        self.at = at
        self.pid = pid
        self.generation = generation
        self.status = status
        self.uptimeS = uptimeS
    }
}

public struct LogFiles: Codable, Sendable, Equatable {
    /// "file" or "journal".
    public var target: String
    /// The file lines are appended to (target "file").
    public var path: String?
    /// The file and its rotated copies that exist now, newest first.
    public var files: [LogFile]
    public var maxSizeBytes: Int64
    public var keep: Int
    public var writeErrors: Int?

    enum CodingKeys: String, CodingKey {
        case target, path, files, keep
        case maxSizeBytes = "max_size_bytes"
        case writeErrors = "write_errors"
    }

    public init(target: String, path: String?, files: [LogFile], maxSizeBytes: Int64, keep: Int) {
        self.target = target
        self.path = path
        self.files = files
        self.maxSizeBytes = maxSizeBytes
        self.keep = keep
    }
}

public struct LogFile: Codable, Sendable, Equatable {
    public var path: String
    public var bytes: Int64

    public init(path: String, bytes: Int64) {
        self.path = path
        self.bytes = bytes
    }
}

/// Which values `describe` and `status` hide: swarmd applies it before a
/// value is encoded, so swarmctl (and whoever reads its output, or the socket) never has it.
public enum SecretMask {
    public static let mask = "********"

    /// Words that make a key a secret's name, matched anywhere in it, in any case.
    public static let secretWords = ["PASSWORD", "PASSWD", "SECRET", "TOKEN", "KEY", "CREDENTIAL", "PRIVATE", "AUTH"]

    public static func isSecretKey(_ key: String) -> Bool {
        let upper = key.uppercased()
        return secretWords.contains { upper.contains($0) }
    }

    /// An env entry: the whole value when its key looks secret, else any URL userinfo in it.
    public static func entry(key: String, value: String) -> EnvEntry {
        if isSecretKey(key) { return EnvEntry(key: key, value: value.isEmpty ? "" : mask, masked: !value.isEmpty) }
        let v = maskingUserinfo(value)
        return EnvEntry(key: key, value: v, masked: v != value)
    }

    /// argv with `--password=x`, `--token x`, `PASSWORD=x` and URL passwords masked.
    public static func arguments(_ argv: [String]) -> [String] {
        var out: [String] = []
        var hideNext = false
        for (i, arg) in argv.enumerated() {
            if hideNext {
                hideNext = false
                if !arg.hasPrefix("-") { out.append(mask); continue }
            }
            if i > 0, let eq = arg.firstIndex(of: "="), isSecretKey(String(arg[..<eq])) {
                out.append(String(arg[...eq]) + mask)
                continue
            }
            if i > 0, arg.hasPrefix("-"), !arg.contains("="), isSecretKey(arg) {
                hideNext = true
            }
            out.append(maskingUserinfo(arg))
        }
        return out
    }

    /// Every `scheme://user:password@host` in `text` as `scheme://user:********@host`;
    /// `scheme://token@host` (a DSN whose key is the user) as `scheme://********@host`.
    public static func maskingUserinfo(_ text: String) -> String {
        let s = Array(text.unicodeScalars)
        var out = String.UnicodeScalarView()
        var i = 0
        while i < s.count {
            // "://" after at least one scheme character.
            guard i + 2 < s.count, s[i] == ":", s[i + 1] == "/", s[i + 2] == "/", i > 0 else {
                out.append(s[i])
                i += 1
                continue
            }
            out.append(contentsOf: s[i...(i + 2)])
            i += 3
            var end = i
            while end < s.count, !"/?#, \t\n".unicodeScalars.contains(s[end]) { end += 1 }
            guard let at = s[i..<end].lastIndex(of: "@") else { continue }
            let userinfo = s[i..<at]
            if let colon = userinfo.firstIndex(of: ":") {
                out.append(contentsOf: s[i...colon])
            }
            out.append(contentsOf: mask.unicodeScalars)
            i = at
        }
        return String(out)
    }
}

/// Signal names and numbers as Linux has them, for `swarmctl signal`: checked
/// by swarmctl (a usage error) and again by swarmd (the protocol is public).
public enum SignalName {
    public static let table: [(String, Int32)] = [
        ("HUP", 1), ("INT", 2), ("QUIT", 3), ("ILL", 4), ("TRAP", 5), ("ABRT", 6), ("IOT", 6), ("BUS", 7), ("FPE", 8),
        ("KILL", 9), ("USR1", 10), ("SEGV", 11), ("USR2", 12), ("PIPE", 13), ("ALRM", 14), ("TERM", 15), ("STKFLT", 16),
        ("CHLD", 17), ("CONT", 18), ("STOP", 19), ("TSTP", 20), ("TTIN", 21), ("TTOU", 22), ("URG", 23), ("XCPU", 24),
        ("XFSZ", 25), ("VTALRM", 26), ("PROF", 27), ("WINCH", 28), ("IO", 29), ("POLL", 29), ("PWR", 30), ("SYS", 31),
    ]
    /// glibc keeps 32 and 33 for its threads; real-time signals are 34…64.
    public static let realtimeMin: Int32 = 34
    public static let realtimeMax: Int32 = 64

    /// "TERM", "sigterm", "SIGTERM", "15", "RTMIN+2" → the number; nil and why otherwise.
    public static func parse(_ text: String) -> Result<Int32, SignalError> {
        if !text.isEmpty, text.utf8.allSatisfy({ $0 >= 0x30 && $0 <= 0x39 }) {
            guard text.utf8.count <= 3, let n = Int32(text), n >= 1, n <= realtimeMax, n != 32, n != 33 else {
                return .failure(SignalError(text: text, why: "no such signal number (1-31 or \(realtimeMin)-\(realtimeMax))"))
            }
            return .success(n)
        }
        var name = text.uppercased()
        if name.hasPrefix("SIG") { name.removeFirst(3) }
        if let n = table.first(where: { $0.0 == name })?.1 { return .success(n) }
        for (prefix, base, step) in [("RTMIN", realtimeMin, Int32(1)), ("RTMAX", realtimeMax, Int32(-1))] where name.hasPrefix(prefix) {
            let rest = name.dropFirst(prefix.count)
            if rest.isEmpty { return .success(base) }
            let sign: Character = step > 0 ? "+" : "-"
            if rest.first == sign, let k = Int32(rest.dropFirst()), k >= 0, k <= realtimeMax - realtimeMin {
                return .success(base + step * k)
            }
        }
        return .failure(SignalError(text: text, why: "not a signal name (like TERM, HUP, USR1, SIGKILL) or number"))
    }

    /// "SIGTERM" for 15, "SIGRTMIN+2" for 36.
    public static func name(of n: Int32) -> String {
        if let name = table.first(where: { $0.1 == n })?.0 { return "SIG" + name }
        if n >= realtimeMin && n <= realtimeMax { return n == realtimeMin ? "SIGRTMIN" : "SIGRTMIN+\(n - realtimeMin)" }
        return "signal \(n)"
    }

    public struct SignalError: Error, Equatable, CustomStringConvertible {
        public var text: String
        public var why: String
        public var description: String { "'\(TerminalText.escape(text))': \(why)" }
    }
}
