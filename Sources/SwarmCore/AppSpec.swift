/// A signal by number. Linux numbers: the core targets Linux only and must
/// not import Glibc to learn them.
public struct Signal: Codable, Hashable, Sendable, CustomStringConvertible {
    public var number: Int32
    public init(_ number: Int32) { self.number = number }

    public static let hup = Signal(1)
    public static let int = Signal(2)
    public static let quit = Signal(3)
    public static let abrt = Signal(6)
    public static let kill = Signal(9)
    public static let usr1 = Signal(10)
    public static let usr2 = Signal(12)
    public static let term = Signal(15)
    public static let cont = Signal(18)
    public static let winch = Signal(28)

    public static let names: [(String, Signal)] = [
        ("SIGHUP", .hup), ("SIGINT", .int), ("SIGQUIT", .quit), ("SIGABRT", .abrt), ("SIGKILL", .kill),
        ("SIGUSR1", .usr1), ("SIGUSR2", .usr2), ("SIGTERM", .term), ("SIGCONT", .cont), ("SIGWINCH", .winch),
    ]

    public init?(name: String) {
        let upper = name.uppercased()
        let full = upper.hasPrefix("SIG") ? upper : "SIG" + upper
        guard let found = Signal.names.first(where: { $0.0 == full }) else { return nil }
        self = found.1
    }

    public var description: String {
        Signal.names.first(where: { $0.1 == self })?.0 ?? "signal \(number)"
    }
}

/// Where a socket listens.
public enum ListenAddress: Codable, Hashable, Sendable, CustomStringConvertible {
    /// `host` is a numeric IPv4 or IPv6 address (no brackets).
    case tcp(host: String, port: UInt16)
    case unix(path: String)

    public var description: String {
        switch self {
        case let .tcp(host, port): return host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)"
        case let .unix(path): return "unix:\(path)"
        }
    }

    public var isTCP: Bool { if case .tcp = self { return true } else { return false } }
}

/// How connections are spread over the workers of a socket.
public enum Balance: String, Codable, Hashable, Sendable, CaseIterable {
    /// One listening socket per slot in a SO_REUSEPORT group: the kernel
    /// hashes each new connection to a slot, so no worker can starve the others.
    case reuseport
    /// One socket shared by every worker: whoever calls accept first wins.
    case shared
}

public struct SocketSpec: Codable, Hashable, Sendable {
    public var name: String
    public var listen: ListenAddress
    public var backlog: Int32
    public var balance: Balance
    /// Permission bits of a unix socket's file.
    public var mode: UInt32?
    /// Bind interception: a worker's own `bind()` to this socket's port (on its
    /// address, a wildcard or loopback, either family) is answered with slot k's
    /// listening socket instead, so servers that bind their port themselves
    /// (`listen(process.env.PORT)`) run unmodified. TCP only; default true for TCP
    /// (config `intercept`, an error when set to true on a unix socket), always
    /// false for unix sockets.
    public var intercept: Bool

    /// `intercept` nil: on for TCP, off for unix sockets.
    public init(name: String, listen: ListenAddress, backlog: Int32 = 1024, balance: Balance = .reuseport, mode: UInt32? = nil,
                intercept: Bool? = nil) {
        self.name = name
        self.listen = listen
        self.backlog = backlog
        self.balance = balance
        self.mode = mode
        self.intercept = intercept ?? listen.isTCP
    }

    enum CodingKeys: String, CodingKey { case name, listen, backlog, balance, mode, intercept }

    /// A spec encoded before `intercept` existed (the state a re-exec hands over
    /// from an older swarmd) decodes with the default.
    public init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        name = try c.decode(String.self, forKey: .name)
        listen = try c.decode(ListenAddress.self, forKey: .listen)
        backlog = try c.decode(Int32.self, forKey: .backlog)
        balance = try c.decode(Balance.self, forKey: .balance)
        mode = try c.decodeIfPresent(UInt32.self, forKey: .mode)
        intercept = try c.decodeIfPresent(Bool.self, forKey: .intercept) ?? listen.isTCP
    }

    /// Reuseport only makes sense for TCP; unix sockets stay shared.
    public var effectiveBalance: Balance { listen.isTCP ? balance : .shared }
}

public enum RestartMode: String, Codable, Sendable, CaseIterable {
    case always
    case onFailure = "on-failure"
    case never
}

public struct RestartPolicy: Codable, Hashable, Sendable {
    public var mode: RestartMode = .always
    public var initialDelay: Duration = .milliseconds(100)
    public var maxDelay: Duration = .seconds(30)
    public var multiplier: Double = 2
    /// A worker that stayed up this long resets its backoff.
    public var resetAfter: Duration = .seconds(30)
    /// This many failures within `crashLoopWindow` is a crash loop.
    public var crashLoopRestarts: Int = 5
    public var crashLoopWindow: Duration = .seconds(60)
    public init() {}
}

public struct StopPolicy: Codable, Hashable, Sendable {
    public var signal: Signal = .term
    public var timeout: Duration = .seconds(10)
    public init() {}
}

public enum ReadyMode: String, Codable, Sendable, CaseIterable {
    /// sd_notify READY=1 on the NOTIFY_SOCKET swarmd serves.
    case notify
    /// A newline on the fd named by SWARM_READY_FD (the s6 convention).
    case fd
    /// The worker is seen polling or accepting on one of its listening sockets.
    case listening
    /// A fixed time after exec.
    case delay
    /// The `[health] http` probe first passes (after the worker is seen listening).
    case http
    /// The `[health] tcp` probe first connects (after the worker is seen listening).
    case tcp
    /// The `[health] exec` probe first exits 0.
    case exec

    /// Ready by a `[health]` probe: the probe of that kind is what decides.
    public var probeKind: String? {
        switch self {
        case .http: return "http"
        case .tcp: return "tcp"
        case .exec: return "exec"
        case .notify, .fd, .listening, .delay: return nil
        }
    }
}

public struct ReadyPolicy: Codable, Hashable, Sendable {
    public var mode: ReadyMode = .listening
    public var timeout: Duration = .seconds(30)
    public var delay: Duration = .seconds(1)
    /// With notify: WATCHDOG_USEC is set and a worker silent for this long is killed.
    public var watchdog: Duration? = nil
    public init() {}
}

public struct ReloadPolicy: Codable, Hashable, Sendable {
    /// New workers started ahead of the old ones they replace (at most this many
    /// slots in flight at once). 0: in one slot at a time, stop the old worker
    /// first and start its replacement only after the old one has exited — for
    /// apps that hold an exclusive resource (a lock file, a database file, a port
    /// outside swarm's sockets). Not zero-downtime for that slot: the slot serves
    /// nothing from the old worker's exit until the new one is ready (its socket
    /// stays bound, so connections wait in its backlog rather than being refused).
    /// 0…`AppSpec.maxWorkers`; `minReady` must be 0 with it.
    public var surge: Int = 1
    /// Start new-generation workers at the lowest CPU priority until they
    /// are ready, so the workers still serving keep the CPU (needs root).
    public var backgroundStart = true
    /// Each swap sends the retiring worker's clients to its replacement (false: round-robin over all workers).
    public var handOver = true
    /// How long a new worker must stay ready before it replaces its slot's old
    /// one (which keeps serving meanwhile); a new worker lost within it rolls the reload back.
    public var minReady: Duration = .zero
    public init() {}
}

public struct LogPolicy: Codable, Hashable, Sendable {
    public var maxSize: Int64 = 10 << 20
    public var keep: Int = 5
    /// "file" writes the app's log files; "journal" sends to journald;
    /// "auto" picks journal under systemd, files otherwise.
    public var target: String = "auto"
    /// Bytes per second read from the app's workers' output (0: no limit). Past it,
    /// swarmd stops reading until the next second: the workers block on their full
    /// pipes instead of swarmd spending a core on their logs. Nothing is dropped.
    public var rate: Int64 = 4 << 20
    public init() {}
}

public struct ResourceLimit: Codable, Hashable, Sendable {
    public var name: String
    public var soft: UInt64
    public var hard: UInt64
    public init(name: String, soft: UInt64, hard: UInt64) {
        self.name = name
        self.soft = soft
        self.hard = hard
    }
}

/// `[hooks]`: commands swarmd runs when lifecycle events happen, each with the
/// event as JSON on stdin and in `SWARM_*` variables, as the app's user.
public struct HooksPolicy: Codable, Hashable, Sendable {
    /// Hook name (`on_exit`, …) → argv (argv[0] absolute; never run through a shell).
    public var commands: [String: [String]] = [:]
    /// A hook still running after this is killed (SIGKILL to its process group).
    public var timeout: Duration = .seconds(10)
    /// Hooks of the app running at once; an event finding them all busy runs none (counted, logged).
    public var maxConcurrent: Int = 4
    public init() {}

    /// The hooks an app may set, and the event kinds (`EventRecord.kind`) each runs on.
    public static let events: [String: Set<String>] = [
        "on_exit": ["exited", "spawn-failed"],
        "on_restart": ["restart-scheduled"],
        "on_crash_loop": ["crash-loop-entered"],
        "on_unhealthy": ["unhealthy", "hung"],
        "on_reload": ["reload-finished"],
        "on_reload_failed": ["reload-rolled-back"],
        "on_ready": ["ready"],
        "on_config_error": ["config-error"],
    ]
}

/// Which CPU a slot's worker is pinned to.
public enum CPUAffinity: Codable, Hashable, Sendable {
    /// Slot k on the k-th CPU swarmd may use (modulo their number).
    case auto
    /// Slot k on `cpus[k % cpus.count]`.
    case cpus([Int])

    public func cpu(forSlot k: Int, allowed: [Int]) -> Int? {
        switch self {
        case .auto: return allowed.isEmpty ? nil : allowed[k % allowed.count]
        case let .cpus(list): return list.isEmpty ? nil : list[k % list.count]
        }
    }
}

/// One app as its config describes it: everything the core and the shell
/// need to run its workers.
public struct AppSpec: Codable, Hashable, Sendable {
    /// The most workers one app may have (config `workers`, `scale`, quick start
    /// `-i`, `[reload] surge`). The fewest is 0 everywhere: an app with no worker
    /// is known, keeps its sockets and config, and can be scaled up.
    public static let maxWorkers = 4096

    public var name: String
    /// argv as written, `{fd:NAME}`/`{port:NAME}` placeholders not yet expanded.
    public var command: [String]
    /// argv[0] resolved against cwd and PATH.
    public var executable: String
    public var workers: Int
    /// Absolute.
    public var cwd: String
    /// What the workers get on top of the inherited environment: the `env_file`s'
    /// variables (later files win), then the config's `env` (wins over them).
    public var env: [String: String]
    /// Absolute paths of the config's `env_file`s, in order; read at each load
    /// (so a reload re-reads them) and already merged into `env`.
    public var envFiles: [String] = []
    /// Pass swarmd's own environment (minus what belongs to swarmd) to workers.
    public var inheritEnvironment = true
    public var sockets: [SocketSpec]
    public var restart = RestartPolicy()
    public var stop = StopPolicy()
    public var ready = ReadyPolicy()
    public var reload = ReloadPolicy()
    public var logs = LogPolicy()
    public var limits: [ResourceLimit] = []
    /// Restart a worker whose resident memory exceeds this many bytes.
    public var memoryLimit: Int64? = nil
    public var user: String? = nil
    public var group: String? = nil
    public var noNewPrivileges = false
    /// nil: workers run on any CPU swarmd may use.
    public var cpuAffinity: CPUAffinity? = nil
    /// `[health]`: probes and hang detection.
    public var health = HealthPolicy()
    /// `[recycle]`: start-first replacement by age.
    public var recycle = RecyclePolicy()
    /// `[hooks]`: commands run on lifecycle events.
    public var hooks = HooksPolicy()
    /// Absolute path of the config file, re-read on reload.
    public var sourcePath: String

    public init(name: String, command: [String], executable: String? = nil, workers: Int, cwd: String = "/",
                env: [String: String] = [:], sockets: [SocketSpec] = [], sourcePath: String = "") {
        self.name = name
        self.command = command
        self.executable = executable ?? command.first ?? ""
        self.workers = workers
        self.cwd = cwd
        self.env = env
        self.sockets = sockets
        self.sourcePath = sourcePath
    }

    enum CodingKeys: String, CodingKey {
        case name, command, executable, workers, cwd, env, envFiles, inheritEnvironment, sockets, restart, stop, ready, reload,
             logs, limits, memoryLimit, user, group, noNewPrivileges, cpuAffinity, health, recycle, sourcePath
        case hooks
    }

    /// A spec encoded before `envFiles` existed (the state a re-exec hands over
    /// from an older swarmd) decodes with none.
    public init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        name = try c.decode(String.self, forKey: .name)
        command = try c.decode([String].self, forKey: .command)
        executable = try c.decode(String.self, forKey: .executable)
        workers = try c.decode(Int.self, forKey: .workers)
        cwd = try c.decode(String.self, forKey: .cwd)
        env = try c.decode([String: String].self, forKey: .env)
        envFiles = try c.decodeIfPresent([String].self, forKey: .envFiles) ?? []
        inheritEnvironment = try c.decode(Bool.self, forKey: .inheritEnvironment)
        sockets = try c.decode([SocketSpec].self, forKey: .sockets)
        restart = try c.decode(RestartPolicy.self, forKey: .restart)
        stop = try c.decode(StopPolicy.self, forKey: .stop)
        ready = try c.decode(ReadyPolicy.self, forKey: .ready)
        reload = try c.decode(ReloadPolicy.self, forKey: .reload)
        logs = try c.decode(LogPolicy.self, forKey: .logs)
        limits = try c.decode([ResourceLimit].self, forKey: .limits)
        memoryLimit = try c.decodeIfPresent(Int64.self, forKey: .memoryLimit)
        user = try c.decodeIfPresent(String.self, forKey: .user)
        group = try c.decodeIfPresent(String.self, forKey: .group)
        noNewPrivileges = try c.decode(Bool.self, forKey: .noNewPrivileges)
        cpuAffinity = try c.decodeIfPresent(CPUAffinity.self, forKey: .cpuAffinity)
        health = try c.decodeIfPresent(HealthPolicy.self, forKey: .health) ?? HealthPolicy()
        recycle = try c.decodeIfPresent(RecyclePolicy.self, forKey: .recycle) ?? RecyclePolicy()
        hooks = try c.decodeIfPresent(HooksPolicy.self, forKey: .hooks) ?? HooksPolicy()
        sourcePath = try c.decode(String.self, forKey: .sourcePath)
    }
}
