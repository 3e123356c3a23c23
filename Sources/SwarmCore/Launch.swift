/// How a worker's command line and environment are made from its spec and
/// the facts only the shell has (the inherited environment, the bound ports,
/// the notify socket). Pure, so the rules are tested without a process.
public enum WorkerLaunch {
    /// Variables that belong to swarmd's own service manager, never passed on.
    public static let strippedEnvironment: Set<String> = [
        "LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES", "NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID",
        "JOURNAL_STREAM", "INVOCATION_ID", "MANAGERPID", "SWARM_SOCKET", "SWARM_STATE_DIR", "SYSTEMD_EXEC_PID",
        "MONOTONIC_USEC", "TRIGGER_UNIT", "TRIGGER_PATH",
    ]

    /// One passed socket as the worker sees it.
    public struct PassedSocket: Equatable, Sendable {
        public var name: String
        /// The bound TCP port (the config may say 0: the kernel chose).
        public var port: UInt16?
        public init(name: String, port: UInt16?) {
            self.name = name
            self.port = port
        }
    }

    /// The facts of the host the shell supplies.
    public struct Host: Sendable {
        /// swarmd's own environment.
        public var environment: [String: String]
        public var notifySocket: String
        /// The app user's home directory, if the spec names a user.
        public var home: String?
        public init(environment: [String: String], notifySocket: String, home: String? = nil) {
            self.environment = environment
            self.notifySocket = notifySocket
            self.home = home
        }
    }

    /// `KEY=value` strings, sorted: the worker's whole environment.
    /// `readyFD`: the fd number of the readiness pipe ([ready] mode = "fd").
    public static func environment(_ r: SpawnRequest, sockets: [PassedSocket], host: Host, readyFD: Int32?) -> [String] {
        environment(slot: r.slot, shared: sharedEnvironment(r.spec, generation: r.generation, sockets: sockets, host: host, readyFD: readyFD))
    }

    /// A worker's environment but for SWARM_WORKER, sorted: the same for
    /// every worker of a generation, so the shell builds it once per
    /// generation rather than per spawn (building and sorting it was a tenth
    /// of swarmd's CPU starting 4,096 workers).
    public static func sharedEnvironment(_ spec: AppSpec, generation: Int, sockets: [PassedSocket], host: Host, readyFD: Int32?) -> [String] {
        var env: [String: String] = [:]
        if spec.inheritEnvironment {
            for (k, v) in host.environment where !strippedEnvironment.contains(k) { env[k] = v }
        } else {
            env["PATH"] = host.environment["PATH"] ?? "/usr/local/bin:/usr/bin:/bin"
        }
        for (k, v) in spec.env { env[k] = v }
        env["SWARM_APP"] = spec.name
        env["SWARM_WORKER"] = nil
        env["SWARM_GENERATION"] = String(generation)
        env["NOTIFY_SOCKET"] = host.notifySocket
        if !sockets.isEmpty {
            env["LISTEN_FDS"] = String(sockets.count)
            env["LISTEN_FDNAMES"] = sockets.map(\.name).joined(separator: ":")
        } else {
            env["LISTEN_FDS"] = nil
            env["LISTEN_FDNAMES"] = nil
        }
        if let port = sockets.first(where: { $0.port != nil })?.port, spec.env["PORT"] == nil { env["PORT"] = String(port) }
        if let readyFD { env["SWARM_READY_FD"] = String(readyFD) }
        if let wd = spec.ready.watchdog { env["WATCHDOG_USEC"] = String(wd.nanoseconds / 1000) }
        if let user = spec.user {
            env["USER"] = user
            env["LOGNAME"] = user
            if let home = host.home { env["HOME"] = home }
        }
        return env.map { "\($0.key)=\($0.value)" }.sorted()
    }

    /// `shared` with the worker's slot in its sorted place.
    public static func environment(slot: Int, shared: [String]) -> [String] {
        let entry = "SWARM_WORKER=\(slot)"
        var low = 0, high = shared.count
        while low < high {
            let mid = (low + high) / 2
            if shared[mid] < entry { low = mid + 1 } else { high = mid }
        }
        var env = shared
        env.insert(entry, at: low)
        return env
    }

    /// The command with `{fd:NAME}` and `{port:NAME}` filled in.
    public static func argv(_ spec: AppSpec, sockets: [PassedSocket]) -> [String] {
        spec.command.map { arg in
            guard arg.contains("{") else { return arg }
            var out = arg
            for (i, s) in sockets.enumerated() {
                out = out.replacingAll("{fd:\(s.name)}", with: String(3 + i))
                if let port = s.port { out = out.replacingAll("{port:\(s.name)}", with: String(port)) }
            }
            return out
        }
    }

    /// setrlimit resource numbers (Linux) of the `[limits]` names.
    public static func rlimitResource(_ name: String) -> Int32? {
        let table: [String: Int32] = [
            "cpu": 0, "fsize": 1, "data": 2, "stack": 3, "core": 4, "rss": 5, "nproc": 6, "nofile": 7,
            "memlock": 8, "as": 9, "locks": 10, "sigpending": 11, "msgqueue": 12, "nice": 13, "rtprio": 14, "rttime": 15,
        ]
        return table[name]
    }
}

extension String {
    /// Every occurrence of `target` replaced (the core does not import Foundation).
    func replacingAll(_ target: String, with replacement: String) -> String {
        guard !target.isEmpty else { return self }
        var result = ""
        var rest = self[...]
        while let r = rest.range(of: target) {
            result += rest[..<r.lowerBound]
            result += replacement
            rest = rest[r.upperBound...]
        }
        return result + rest
    }
}

extension Substring {
    fileprivate func range(of target: String) -> Range<Substring.Index>? {
        let t = Array(target.utf8)
        let u = self.utf8
        var i = u.startIndex
        while i != u.endIndex {
            var j = i
            var k = 0
            while k < t.count, j != u.endIndex, u[j] == t[k] {
                j = u.index(after: j)
                k += 1
            }
            if k == t.count { return i..<j }
            i = u.index(after: i)
        }
        return nil
    }
}
