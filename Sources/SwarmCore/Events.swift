/// Identifies one worker process over its whole life, across pid reuse.
public struct WorkerID: Codable, Hashable, Comparable, Sendable, CustomStringConvertible {
    public var raw: UInt64
    public init(_ raw: UInt64) { self.raw = raw }
    public static func < (a: WorkerID, b: WorkerID) -> Bool { a.raw < b.raw }
    public var description: String { "w\(raw)" }
}

/// A control request in flight, assigned by the shell.
public struct RequestID: Codable, Hashable, Sendable, CustomStringConvertible {
    public var raw: UInt64
    public init(_ raw: UInt64) { self.raw = raw }
    public var description: String { "r\(raw)" }
}

/// How a worker's process ended.
public enum ExitStatus: Codable, Hashable, Sendable, CustomStringConvertible {
    /// exit(code).
    case exited(Int32)
    /// Killed by a signal.
    case signaled(Int32, coreDumped: Bool)
    /// fork or exec failed; the message names the step and the errno.
    case spawnFailed(String)

    public var isCleanExit: Bool { self == .exited(0) }

    public var description: String {
        switch self {
        case let .exited(code): return "exited with status \(code)"
        case let .signaled(sig, core): return "killed by \(Signal(sig))" + (core ? " (core dumped)" : "")
        case let .spawnFailed(msg): return msg
        }
    }
}

/// Which apps a command applies to.
public enum AppSelector: Hashable, Sendable {
    case app(String)
    case all
}

/// What a control client asks of the supervisor.
public enum Command: Sendable {
    /// Run a new app; with `replace`, an app of that name is deleted first.
    case start(AppSpec, replace: Bool)
    /// Know an app without running it (a remembered stopped app); `resume` starts it.
    case add(AppSpec)
    /// Gracefully stop every worker; the app stays known.
    case stop(AppSelector)
    /// Start a stopped app again.
    case resume(AppSelector)
    /// Replace every worker at once.
    case restart(AppSelector)
    /// Stop and forget.
    case delete(AppSelector)
    /// Rolling replacement with the freshly read specs, one per app. The core
    /// validates the whole command (names, sockets, duplicates, unknown apps,
    /// reloads in progress) and rejects all of it on any problem.
    case reload([ReloadRequest])
    /// Change the number of workers.
    case scale(String, Int)
    /// Add (positive) or remove (negative) workers: resolved against the app's worker count when it arrives.
    case scaleBy(String, Int)
    /// Stop everything; the supervisor emits `.exit` when nothing is left.
    case shutdown
    /// Rolling reload back to the config of the generation before the one in force.
    case rollback(String)
    /// Before a `start`/`add` of the app: the generations a previous swarmd kept,
    /// and the digest of the config file about to start (answered at once).
    case history(app: String, records: [GenerationRecord], digest: String?)
}

/// One app of a `reload`: the running app whose config file was re-read, and
/// what that file says now.
public struct ReloadRequest: Hashable, Sendable {
    public var app: String
    public var spec: AppSpec
    /// The shell's digest of the files `spec` was read from, kept in the generation history.
    public var digest: String?
    public init(app: String, spec: AppSpec, digest: String? = nil) {
        self.app = app
        self.spec = spec
        self.digest = digest
    }
}

/// Everything the shell needs to start one worker; the core has decided all of it.
public struct SpawnRequest: Equatable, Sendable {
    public var worker: WorkerID
    public var app: String
    public var slot: Int
    public var generation: Int
    public var spec: AppSpec
    /// Start at this nice value (19: a reload's background start); nil: swarmd's own.
    public var nice: Int32?
    /// Pin to this CPU (`cpu_affinity`); nil: no pinning.
    public var cpu: Int?

    public init(worker: WorkerID, app: String, slot: Int, generation: Int, spec: AppSpec, nice: Int32? = nil, cpu: Int? = nil) {
        self.worker = worker
        self.app = app
        self.slot = slot
        self.generation = generation
        self.spec = spec
        self.nice = nice
        self.cpu = cpu
    }
}

/// An app's health as `status` and systemd's STATUS= show it.
public struct AppHealth: Hashable, Sendable {
    public enum State: String, Hashable, Sendable {
        case running, degraded, crashLoop = "crash-loop", reloading, stopping, stopped, deleting
    }
    public var state: State
    /// Slots whose current worker is ready.
    public var ready: Int
    /// The worker count asked for.
    public var wanted: Int
}

/// Everything that can happen to the supervisor.
public enum Event: Sendable {
    /// A control request.
    case command(RequestID, Command)
    /// The shell forked and exec'd the worker the core asked for.
    case spawned(WorkerID, pid: Int32)
    /// fork or exec failed: the worker never ran.
    case spawnFailed(WorkerID, reason: String)
    /// The reaper collected a child.
    case exited(pid: Int32, ExitStatus)
    /// The worker signalled readiness (notify READY=1, the ready fd, or a listening probe).
    case ready(pid: Int32)
    /// sd_notify STATUS= text.
    case status(pid: Int32, String)
    /// sd_notify WATCHDOG=1.
    case watchdogPing(pid: Int32)
    /// sd_notify STOPPING=1: the worker is shutting down on its own.
    case stopping(pid: Int32)
    /// The worker's resident memory, sampled by the shell when asked.
    case memory(pid: Int32, bytes: Int64)
    /// The timer the core armed has fired (or any wake-up: the core checks every deadline against `now`).
    case tick
    /// A probe result or accept-queue sample the core asked for with `.health`.
    case health(HealthEvent)
}

/// Why a command failed, in words for the user.
public enum CommandError: Error, Hashable, Sendable, CustomStringConvertible {
    case unknownApp(String)
    case appExists(String)
    case reloadInProgress(String)
    case shuttingDown
    case invalid(String)
    case startFailed(app: String, failed: Int, of: Int, detail: String)
    case reloadFailed(app: String, reason: String, slot: Int?, pid: Int32?)
    case interrupted(String)

    public var description: String {
        switch self {
        case let .unknownApp(name): return "no app named '\(name)'"
        case let .appExists(name): return "an app named '\(name)' is already running (use --replace to replace it)"
        case let .reloadInProgress(name): return "a reload of '\(name)' is already in progress"
        case .shuttingDown: return "swarmd is shutting down"
        case let .invalid(msg): return msg
        case let .startFailed(app, failed, total, detail):
            return "\(app): \(failed) of \(workerCount(total)) failed to start: \(detail)"
        case let .reloadFailed(app, reason, _, _): return "\(app): reload failed and was rolled back: \(reason)"
        case let .interrupted(msg): return msg
        }
    }
}

/// One step of a rolling reload, streamed to the client that asked for it.
public struct ReloadEvent: Hashable, Sendable {
    public enum Kind: String, Hashable, Sendable {
        case begin, spawned, ready, retiring, failed, rolledBack = "rolled-back", done
    }
    public var app: String
    public var kind: Kind
    public var slot: Int?
    public var pid: Int32?
    public var generation: Int
    public var message: String

    public init(app: String, kind: Kind, slot: Int? = nil, pid: Int32? = nil, generation: Int, message: String) {
        self.app = app
        self.kind = kind
        self.slot = slot
        self.pid = pid
        self.generation = generation
        self.message = message
    }
}

public enum NoteLevel: String, Sendable {
    case debug, info, notice, warning, error
}

/// What the core asks the shell to do, in the order the shell must perform
/// them. Within one `handle`: spawns, probes, replies, progress, hand-overs
/// and notes as they arise; then every `.steer` the event made necessary;
/// then stop and kill signals (so a slot leaving the steering set gets no new
/// connection before its worker is signalled); then `.workerGone`; `.exit`;
/// `.armTimer` last. (A reaped worker's group kill goes out at once: it is no
/// stop signal.)
public enum Action: Equatable, Sendable {
    /// Fork and exec one worker as the request says; answer with `.spawned` or `.spawnFailed`.
    /// At most `Supervisor.spawnBatch` of these per `handle`.
    case spawn(SpawnRequest)
    /// New connections to the app's reuseport sockets go to these slots only. Comes
    /// before any stop signal of the same batch that retires a worker of the app.
    case steer(app: String, slots: [Int])
    /// The worker is gone for good (reaped, its spawn failed, or it was dropped before
    /// the shell answered its spawn): free its records now. Once per spawned worker.
    case workerGone(WorkerID, pid: Int32?)
    /// A worker spawned with a `nice` became ready: give its process group the workers' priority (the one swarmd was started with).
    case restorePriority(pid: Int32)
    /// kill(pid) or, with `group`, kill(-pid): workers lead their own process group.
    case signal(pid: Int32, Signal, group: Bool)
    /// Check whether the worker waits on one of its listening sockets; answer with `.ready` if so.
    case probeListening(WorkerID, pid: Int32)
    /// Sample the worker's resident memory; answer with `.memory`.
    case sampleMemory(pid: Int32)
    /// Wake the core with `.tick` at this instant (nil: no timer).
    case armTimer(Instant?)
    /// Answer a command.
    case reply(RequestID, Result<String, CommandError>)
    /// Stream reload progress to the requester.
    case progress(RequestID, ReloadEvent)
    /// A reload swapped a new worker into `slot` and is about to stop `pid`, the
    /// slot's old worker: the clients that worker disconnects will reconnect, so
    /// send as many new connections as it holds to the slot, not round-robin.
    case handOver(app: String, slot: Int, from: Int32)
    /// A slot no longer exists: release what the shell holds for it (its reuseport socket).
    case slotReleased(app: String, slot: Int)
    /// The app has no workers left and is forgotten.
    case appRemoved(String)
    /// The set of apps, their specs or their worker counts changed: persist them.
    case appsChanged
    /// Something worth a log line.
    case note(NoteLevel, String)
    /// Shutdown finished: no worker is left.
    case exit
    /// Probe a worker or sample an app's accept queues; answer with `Event.health`.
    case health(HealthAction)
}
