// FoundationEssentials where it exists: swarmctl then does not load all of
// Foundation and ICU at every start (issue 18), and JSON is all we need.
#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

/// The control protocol spoken on swarmd's Unix socket: one JSON object per
/// line, each way. Requests carry a client-chosen `id`; every response line
/// repeats it. A request gets zero or more `event`/`log` lines, then exactly
/// one `result` line (a `logs --follow` request streams until the client
/// closes the connection).
public enum ControlProtocol {
    public static let version = 1
    /// A line longer than this is refused and the connection closed.
    public static let maxMessageSize = 1 << 20
    /// `status` of more workers than this sends them in `part` lines of at
    /// most this many (a worker is 200–400 bytes of JSON, at most ~1.5 KB), before its result
    /// line, so no line nears `maxMessageSize` at any worker count.
    public static let statusWorkersPerPart = 512
}

public enum Verb: String, Codable, Sendable, CaseIterable {
    case ping, version, start, stop, restart, delete, reload, scale, status, logs, shutdown
    /// HAProxy's agent (swarmd --agent) says `drain` for the app until `undrain`.
    case drain, undrain
    case daemonReexec = "daemon-reexec"
    /// Lifecycle events as they happen (`EventRecord`), after the last `lines` kept ones.
    case events

    /// Verbs a peer that is neither root nor swarmd's own uid may use.
    public var isReadOnly: Bool { self == .ping || self == .version || self == .status }
}

public struct Request: Codable, Sendable, Equatable {
    public var v: Int
    public var id: UInt64
    public var verb: Verb
    /// `start`: absolute paths of config files.
    public var files: [String]?
    /// The app a verb applies to, or "all".
    public var name: String?
    /// `start`: replace an app of the same name.
    public var replace: Bool?
    /// `scale`: the new worker count.
    public var count: Int?
    /// `scale`: add (positive) or remove (negative) this many workers instead; exactly one of `count` and `delta`.
    public var delta: Int?
    /// `logs`: how many past lines.
    public var lines: Int?
    /// `logs`: keep streaming.
    public var follow: Bool?
    /// `start` without a config file (instead of `files`): swarmd writes one into its state dir.
    public var quickStart: QuickStartRequest?

    public init(id: UInt64, verb: Verb, files: [String]? = nil, name: String? = nil, replace: Bool? = nil,
                count: Int? = nil, delta: Int? = nil, lines: Int? = nil, follow: Bool? = nil,
                quickStart: QuickStartRequest? = nil) {
        self.v = ControlProtocol.version
        self.id = id
        self.verb = verb
        self.files = files
        self.name = name
        self.replace = replace
        self.count = count
        self.delta = delta
        self.lines = lines
        self.follow = follow
        self.quickStart = quickStart
    }

    enum CodingKeys: String, CodingKey {
        case v, id, verb, files, name, replace, count, delta, lines, follow
        case quickStart = "quick_start"
    }
}

/// `swarmctl start --name web -i 4 --listen 127.0.0.1:3000 --env K=V --cwd DIR -- node server.js`,
/// as sent: swarmd checks every field (the option it came from named in the
/// error), writes the equivalent config file and starts it like any other.
/// Added in protocol 1 as an optional field: a swarmd without it answers
/// "start needs at least one config file".
public struct QuickStartRequest: Codable, Sendable, Equatable {
    /// At most this many `env` pairs and `command` arguments (each also bounded by the line limit).
    public static let maxItems = 4096

    public var name: String
    /// A number of workers as text, or "max" (one per CPU swarmd may use).
    public var instances: String
    /// "HOST:PORT", "[V6]:PORT" or "unix:PATH"; nil: no socket (a queue consumer).
    public var listen: String?
    /// "KEY=VALUE" pairs; a later pair for the same key wins.
    public var env: [String]
    /// argv; argv[0] as swarmctl found it in the caller's PATH.
    public var command: [String]
    /// Absolute: the workers' directory (swarmctl sends its own by default).
    public var cwd: String

    public init(name: String, instances: String, listen: String?, env: [String], command: [String], cwd: String) {
        self.name = name
        self.instances = instances
        self.listen = listen
        self.env = env
        self.command = command
        self.cwd = cwd
    }

    /// argv[0] found the way execvp would, in `searchPath` (relative entries
    /// against `cwd`); nil when no entry has it. A name with a '/' is left for
    /// swarmd to resolve against `cwd`.
    public static func resolveProgram(_ program: String, searchPath: String, cwd: String,
                                      isExecutable: (String) -> Bool) -> String? {
        if program.contains("/") { return program }
        for dir in searchPath.split(separator: ":", omittingEmptySubsequences: false) {
            // An empty entry is the current directory, as in execvp.
            let base = dir.isEmpty ? cwd : dir.hasPrefix("/") ? String(dir) : cwd + "/" + dir
            let candidate = (base.hasSuffix("/") ? base : base + "/") + program
            if isExecutable(candidate) { return candidate }
        }
        return nil
    }
}

public struct Response: Codable, Sendable, Equatable {
    public enum Kind: String, Codable, Sendable {
        /// The final answer.
        case result
        /// Progress of a long command (reload).
        case event
        /// Log lines (`logs`).
        case log
        /// A piece of a large result, before its `result` line: `status` of
        /// many workers sends them in parts (`part`), and the result's apps
        /// then list only the workers not sent before. `StatusAssembler` puts
        /// them back together.
        case part
        /// One lifecycle event (`events`).
        case record
    }

    public var v: Int
    public var id: UInt64
    public var kind: Kind
    public var ok: Bool?
    public var message: String?
    public var error: String?
    /// Extra lines explaining an error (the failed worker's last log lines).
    public var details: [String]?
    public var status: StatusReport?
    public var event: ProgressEvent?
    public var log: [LogLine]?
    public var version: String?
    /// kind `part`: some of an app's workers.
    public var part: StatusPart?
    /// kind `record`: one lifecycle event.
    public var record: EventRecord?

    public init(id: UInt64, kind: Kind) {
        self.v = ControlProtocol.version
        self.id = id
        self.kind = kind
    }

    public static func success(_ id: UInt64, _ message: String? = nil) -> Response {
        var r = Response(id: id, kind: .result)
        r.ok = true
        r.message = message
        return r
    }

    public static func failure(_ id: UInt64, _ error: String, details: [String]? = nil) -> Response {
        var r = Response(id: id, kind: .result)
        r.ok = false
        r.error = error
        r.details = details
        return r
    }
}

public struct ProgressEvent: Codable, Sendable, Equatable {
    public var app: String
    public var kind: String
    public var slot: Int?
    public var pid: Int32?
    public var generation: Int
    public var message: String

    public init(app: String, kind: String, slot: Int?, pid: Int32?, generation: Int, message: String) {
        self.app = app
        self.kind = kind
        self.slot = slot
        self.pid = pid
        self.generation = generation
        self.message = message
    }
}

/// One lifecycle event, as `events` streams it and hooks get it on stdin.
/// Kinds: spawned, spawn-failed, ready, exited, restart-scheduled,
/// crash-loop-entered, crash-loop-left, unhealthy, hung, replaced, recycled,
/// reload-started, reload-step, reload-finished, reload-rolled-back,
/// started, stopped, restarted, deleted, scaled, config-error, drained,
/// undrained, and `dropped` (`details.count` events this subscriber missed
/// because it read too slowly). Fields may be added within a protocol
/// version, never removed; `details` keys are lower_snake_case.
public struct EventRecord: Codable, Sendable, Equatable {
    /// Numbers every event swarmd derived since it started (a gap: events missed).
    public var seq: UInt64
    /// RFC 3339 with microseconds, UTC.
    public var time: String
    public var kind: String
    public var app: String
    public var slot: Int?
    public var pid: Int32?
    public var generation: Int?
    /// What happened, in words.
    public var message: String
    /// Kind-specific values: exit_status, exit_code, signal, reason, delay_s, from, to, …
    public var details: [String: String]?

    public init(seq: UInt64, time: String, kind: String, app: String, slot: Int? = nil, pid: Int32? = nil,
                generation: Int? = nil, message: String, details: [String: String]? = nil) {
        self.seq = seq
        self.time = time
        self.kind = kind
        self.app = app
        self.slot = slot
        self.pid = pid
        self.generation = generation
        self.message = message
        self.details = details
    }

    /// One line for people: `TIME app[slot] pid kind: message`.
    public var formatted: String {
        let who = app.isEmpty ? "swarmd" : slot.map { "\(app)[\($0)]" } ?? app
        return "\(time) \(who)\(pid.map { " \($0)" } ?? "") \(kind): \(TerminalText.escape(message))"
    }
}

public struct LogLine: Codable, Sendable, Equatable {
    /// RFC 3339 with microseconds, UTC.
    public var time: String
    public var app: String
    public var slot: Int
    public var pid: Int32
    /// "stdout" or "stderr".
    public var stream: String
    public var text: String

    public init(time: String, app: String, slot: Int, pid: Int32, stream: String, text: String) {
        self.time = time
        self.app = app
        self.slot = slot
        self.pid = pid
        self.stream = stream
        self.text = text
    }

    /// The form log files and `swarmctl logs` use: one line, whatever the
    /// worker wrote (control characters in the text are escaped, so a CR or
    /// an escape sequence cannot forge another line or reach a terminal raw).
    public var formatted: String { "\(time) \(app)[\(slot)] \(pid) \(stream == "stderr" ? "E" : "O") \(TerminalText.escape(text))" }
}

/// Consecutive workers of one app in a streamed `status` (kind `part`).
public struct StatusPart: Codable, Sendable, Equatable {
    public var app: String
    public var workers: [WorkerStatus]

    public init(app: String, workers: [WorkerStatus]) {
        self.app = app
        self.workers = workers
    }
}

/// Rebuilds the whole report of a streamed `status`: feed it every line of
/// the reply, then take `report` after the result. A reply without parts is
/// passed through unchanged.
public struct StatusAssembler: Sendable {
    private var parts: [String: [WorkerStatus]] = [:]

    public init() {}

    /// Takes a `part` line (others are ignored).
    public mutating func add(_ r: Response) {
        guard r.kind == .part, let p = r.part else { return }
        parts[p.app, default: []] += p.workers
    }

    /// The result's report with every app's parts put in front of the workers it lists itself.
    public func report(_ result: StatusReport) -> StatusReport {
        guard !parts.isEmpty else { return result }
        var r = result
        for i in r.apps.indices {
            if let sent = parts[r.apps[i].name] { r.apps[i].workers = sent + r.apps[i].workers }
        }
        return r
    }
}

/// `status --json`. The schema is documented in the README and stable
/// within a protocol version: fields may be added, never removed.
public struct StatusReport: Codable, Sendable, Equatable {
    public var daemon: DaemonStatus
    public var apps: [AppStatus]

    public init(daemon: DaemonStatus, apps: [AppStatus]) {
        self.daemon = daemon
        self.apps = apps
    }
}

public struct DaemonStatus: Codable, Sendable, Equatable {
    public var pid: Int32
    public var version: String
    public var uptimeS: Double
    public var rssBytes: Int64
    public var socket: String
    public var stateDir: String
    /// Where the workers' cgroups are, or "unavailable: why" (then only
    /// process groups hold a worker's children together).
    public var cgroups: String?

    enum CodingKeys: String, CodingKey {
        case pid, version, socket, cgroups
        case uptimeS = "uptime_s"
        case rssBytes = "rss_bytes"
        case stateDir = "state_dir"
    }

    public init(pid: Int32, version: String, uptimeS: Double, rssBytes: Int64, socket: String, stateDir: String) {
        self.pid = pid
        self.version = version
        self.uptimeS = uptimeS
        self.rssBytes = rssBytes
        self.socket = socket
        self.stateDir = stateDir
    }
}

public struct AppStatus: Codable, Sendable, Equatable {
    public var name: String
    /// running | degraded | crash-loop | reloading | stopping | stopped | deleting | error
    public var state: String
    public var config: String
    public var generation: Int
    public var workersWanted: Int
    public var workersReady: Int
    public var lastReload: ReloadStatus?
    public var sockets: [SocketStatus]
    public var workers: [WorkerStatus]
    /// Seconds swarmd paused reading the workers' output to hold `[logs] rate`.
    public var logThrottledS: Double?
    /// Log lines that could not be written (full disk, a file that is not regular…).
    public var logWriteErrors: Int?
    /// The last such failure, in words.
    public var logWriteError: String?
    /// state "error": why the app cannot run (its remembered config no longer loads).
    public var problem: String?
    /// Drained by the operator: swarmd's HAProxy agent answers `drain` for it.
    public var drained: Bool?

    enum CodingKeys: String, CodingKey {
        case name, state, config, generation, workers, sockets, drained
        case problem = "error"
        case logThrottledS = "log_throttled_s"
        case logWriteErrors = "log_write_errors"
        case logWriteError = "log_write_error"
        case workersWanted = "workers_wanted"
        case workersReady = "workers_ready"
        case lastReload = "last_reload"
    }

    public init(name: String, state: String, config: String, generation: Int, workersWanted: Int, workersReady: Int,
                lastReload: ReloadStatus?, sockets: [SocketStatus], workers: [WorkerStatus]) {
        self.name = name
        self.state = state
        self.config = config
        self.generation = generation
        self.workersWanted = workersWanted
        self.workersReady = workersReady
        self.lastReload = lastReload
        self.sockets = sockets
        self.workers = workers
    }
}

public struct SocketStatus: Codable, Sendable, Equatable {
    public var name: String
    public var listen: String
    public var balance: String
    public init(name: String, listen: String, balance: String) {
        self.name = name
        self.listen = listen
        self.balance = balance
    }
}

public struct ReloadStatus: Codable, Sendable, Equatable {
    public var ok: Bool
    public var message: String
    public var ageS: Double

    enum CodingKeys: String, CodingKey {
        case ok, message
        case ageS = "age_s"
    }

    public init(ok: Bool, message: String, ageS: Double) {
        self.ok = ok
        self.message = message
        self.ageS = ageS
    }
}

public struct WorkerStatus: Codable, Sendable, Equatable {
    public var slot: Int
    /// null while the slot waits to restart.
    public var pid: Int32?
    /// starting | ready | stopping | backoff | crash-loop | stopped
    public var state: String
    public var generation: Int
    public var restarts: Int
    public var uptimeS: Double
    public var cpuPercent: Double?
    public var rssBytes: Int64?
    /// CPU time used since exec.
    public var cpuSeconds: Double?
    /// This worker's part of its app's CPU time (0…1): how evenly load is spread.
    public var cpuShare: Double?
    /// The worker's own STATUS= line.
    public var statusText: String?
    public var lastExit: String?
    /// The CPU the worker was pinned to (`cpu_affinity`), if any.
    public var cpuPinned: Int?
    /// healthy | failing | unhealthy | hung | recycling | unknown (no probe answered yet); nil: not watched.
    public var health: String?
    /// The last probe's result, like "http 200", "http 503", "tcp refused", "http timeout".
    public var lastProbe: String?
    /// Connections waiting in the slot's accept queue at the last sample, when not 0.
    public var acceptQueue: Int?
    /// New connections steered to the slot while this worker held it (`[recycle] max_connections`), when counted.
    public var connections: Int?

    enum CodingKeys: String, CodingKey {
        case slot, pid, state, generation, restarts
        case cpuPinned = "cpu_pinned"
        case cpuSeconds = "cpu_seconds"
        case cpuShare = "cpu_share"
        case uptimeS = "uptime_s"
        case cpuPercent = "cpu_percent"
        case rssBytes = "rss_bytes"
        case statusText = "status_text"
        case lastExit = "last_exit"
        case health
        case lastProbe = "last_probe"
        case acceptQueue = "accept_queue"
        case connections
    }

    public init(slot: Int, pid: Int32?, state: String, generation: Int, restarts: Int, uptimeS: Double,
                cpuPercent: Double? = nil, rssBytes: Int64? = nil, cpuSeconds: Double? = nil, cpuShare: Double? = nil, statusText: String? = nil,
                lastExit: String? = nil, cpuPinned: Int? = nil) {
        self.slot = slot
        self.pid = pid
        self.state = state
        self.generation = generation
        self.restarts = restarts
        self.uptimeS = uptimeS
        self.cpuPercent = cpuPercent
        self.rssBytes = rssBytes
        self.cpuSeconds = cpuSeconds
        self.cpuShare = cpuShare
        self.statusText = statusText
        self.lastExit = lastExit
        self.cpuPinned = cpuPinned
    }
}
