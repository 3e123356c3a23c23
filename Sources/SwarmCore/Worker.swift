/// Where a worker is in its life.
public enum WorkerPhase: String, Codable, Hashable, Sendable {
    /// Asked of the shell; no pid yet.
    case spawning
    /// Running, not yet ready.
    case starting
    /// Ready: serving.
    case ready
    /// Sent its stop signal; SIGKILL follows at the stop timeout.
    case stopping
    /// Sent SIGKILL; waiting to be reaped.
    case killing
}

/// Why swarmd stopped a worker.
public enum StopReason: String, Codable, Hashable, Sendable {
    case stop, restart, reload, scale, rollback, readyTimeout = "ready-timeout", watchdog, memory, shutdown
}

/// One worker process.
public struct Worker: Codable, Hashable, Sendable {
    public let id: WorkerID
    public let app: String
    public let slot: Int
    public let generation: Int
    public internal(set) var pid: Int32?
    public internal(set) var phase: WorkerPhase = .spawning
    public internal(set) var startedAt: Instant
    public internal(set) var readyAt: Instant?
    /// The last STATUS= the worker sent.
    public internal(set) var status: String?
    public internal(set) var stopReason: StopReason?
    var readyDeadline: Instant?
    var delayReadyAt: Instant?
    var nextProbe: Instant?
    var killAt: Instant?
    var watchdogDeadline: Instant?
    var nextMemorySample: Instant?
    /// Set once the worker has been up long enough to reset its slot's backoff.
    var healthyAt: Instant?

    public var isAlive: Bool { phase != .spawning || pid != nil }
    public var isRetiring: Bool { phase == .stopping || phase == .killing }
}

/// A stable position 0…N-1 in an app: the worker in it changes, the slot
/// (its `SWARM_WORKER` number, its reuseport socket, its backoff) stays.
public struct Slot: Codable, Hashable, Sendable {
    public let index: Int
    /// The worker that serves (or is starting to serve) this slot.
    public internal(set) var current: WorkerID?
    /// During a reload: the next generation's worker, not yet ready.
    public internal(set) var incoming: WorkerID?
    /// Workers being stopped.
    public internal(set) var retiring: [WorkerID] = []
    /// The generation the slot runs.
    public internal(set) var generation: Int
    /// When the next start is due, if one is pending.
    public internal(set) var restartAt: Instant?
    public internal(set) var backoff = Backoff()
    public internal(set) var restarts = 0
    public internal(set) var lastExit: ExitStatus?
    /// Why the slot's last worker was lost (an exit, a readiness timeout, the watchdog, its memory).
    public internal(set) var lastFailure: String?
    /// Scale-down: the slot goes away once its workers are gone.
    public internal(set) var removing = false
    /// Exits (or spawn failures) before readiness, to settle waiting commands.
    var startFailures = 0

    init(index: Int, generation: Int) {
        self.index = index
        self.generation = generation
    }

    public var liveWorkers: [WorkerID] {
        [current, incoming].compactMap { $0 } + retiring
    }
}

/// Outcome of the last reload of an app.
public struct ReloadOutcome: Codable, Hashable, Sendable {
    public var succeeded: Bool
    public var message: String
    public var at: Instant
}

/// A rolling reload in progress: generation `from` is replaced slot by slot
/// with `to`. Which slots are old, new or surplus is read off the slots.
public struct RollingReload: Codable, Hashable, Sendable {
    public let from: Int
    public let to: Int
    public let requester: RequestID?
    public let targetCount: Int
    public let oldCount: Int
    public let surge: Int
    /// Next slot index to start a new-generation worker in.
    var nextSlot = 0
    /// Once every slot below targetCount runs `to`, surplus slots are retired.
    var culling = false
}

/// Desired state of an app.
public enum AppGoal: String, Codable, Hashable, Sendable {
    case running, stopped, deleted
}

/// An app the supervisor runs.
public struct App: Codable, Hashable, Sendable {
    public let name: String
    /// Spec of each generation that still has workers; `specs[generation]` is in force.
    public internal(set) var specs: [Int: AppSpec]
    public internal(set) var generation: Int
    public internal(set) var goal: AppGoal = .running
    public internal(set) var slots: [Slot] = []
    /// Worker count asked for (the config's, or the last `scale`).
    public internal(set) var targetCount: Int
    public internal(set) var reload: RollingReload?
    public internal(set) var lastReload: ReloadOutcome?

    public var spec: AppSpec { specs[generation]! }
}
