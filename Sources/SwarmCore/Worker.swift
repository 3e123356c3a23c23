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
    /// Replaced start-first: failed probes, a stuck accept queue, `[recycle] max_age`.
    case unhealthy, hung, recycle
}

/// Where a worker is in its life, with the deadlines that belong to that
/// state and no other: `Supervisor.deadline(of:)` reads them for both the
/// tick and the next-timer computation.
public enum WorkerState: Codable, Hashable, Sendable {
    /// Created but held back: more than `spawnBatch` starts were due in one
    /// event. Not yet asked of the shell; no `.workerGone` if dropped now.
    case queued
    /// Asked of the shell; no pid yet.
    case spawning
    /// Running, not yet ready: failed at `readyBy`, probed (listening mode) at
    /// `probeAt`, ready by delay at `delayReadyAt`, memory sampled at `memoryAt`;
    /// started at nice 19 (background start), given its priority back at
    /// `priorityAt` if it is not ready by then (`Supervisor.backgroundStartLimit`).
    case starting(readyBy: Instant, probeAt: Instant?, delayReadyAt: Instant?, memoryAt: Instant?, priorityAt: Instant?)
    /// Serving: killed if no WATCHDOG=1 by `watchdogBy`; resets its slot's backoff
    /// at `healthyAt`; as a reload's incoming worker, replaces its slot's old one at
    /// `swapAt` ([reload] min_ready); memory sampled at `memoryAt`.
    case ready(watchdogBy: Instant?, healthyAt: Instant?, swapAt: Instant?, memoryAt: Instant?)
    /// Sent its stop signal; SIGKILL at `killAt`.
    case stopping(killAt: Instant)
    /// Sent SIGKILL; waiting to be reaped.
    case killing
}

/// One worker process.
public struct Worker: Hashable, Sendable {
    public let id: WorkerID
    public let app: String
    public let slot: Int
    public let generation: Int
    public internal(set) var pid: Int32?
    public internal(set) var state: WorkerState = .spawning
    public internal(set) var startedAt: Instant
    public internal(set) var readyAt: Instant?
    /// The last STATUS= the worker sent.
    public internal(set) var status: String?
    public internal(set) var stopReason: StopReason?
    /// Spawned with a `nice`: its priority is restored when it becomes ready, or
    /// at its starting state's `priorityAt`, whichever comes first.
    var niced = false

    init(id: WorkerID, app: String, slot: Int, generation: Int, startedAt: Instant) {
        self.id = id
        self.app = app
        self.slot = slot
        self.generation = generation
        self.startedAt = startedAt
    }

    /// For rendering: the state without its deadlines.
    public var phase: WorkerPhase {
        switch state {
        case .queued, .spawning: return .spawning
        case .starting: return .starting
        case .ready: return .ready
        case .stopping: return .stopping
        case .killing: return .killing
        }
    }

    public var isAlive: Bool { pid != nil }
    public var isRetiring: Bool { phase == .stopping || phase == .killing }
    public var isReady: Bool { if case .ready = state { return true } else { return false } }

    public var readyDeadline: Instant? {
        if case let .starting(readyBy, _, _, _, _) = state { return readyBy } else { return nil }
    }
    public var healthyAt: Instant? {
        if case let .ready(_, healthyAt, _, _) = state { return healthyAt } else { return nil }
    }
    public var killAt: Instant? {
        if case let .stopping(killAt) = state { return killAt } else { return nil }
    }
}

extension Worker: Codable {
    enum CodingKeys: String, CodingKey {
        case id, app, slot, generation, pid, state, startedAt, readyAt, status, stopReason, niced
        // What a swarmd from before WorkerState wrote; read so a re-exec across the upgrade keeps its workers.
        case phase, readyDeadline, delayReadyAt, nextProbe, killAt, watchdogDeadline, nextMemorySample, healthyAt
    }

    public init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        id = try c.decode(WorkerID.self, forKey: .id)
        app = try c.decode(String.self, forKey: .app)
        slot = try c.decode(Int.self, forKey: .slot)
        generation = try c.decode(Int.self, forKey: .generation)
        pid = try c.decodeIfPresent(Int32.self, forKey: .pid)
        startedAt = try c.decode(Instant.self, forKey: .startedAt)
        readyAt = try c.decodeIfPresent(Instant.self, forKey: .readyAt)
        status = try c.decodeIfPresent(String.self, forKey: .status)
        stopReason = try c.decodeIfPresent(StopReason.self, forKey: .stopReason)
        niced = try c.decodeIfPresent(Bool.self, forKey: .niced) ?? false
        if let state = try c.decodeIfPresent(WorkerState.self, forKey: .state) {
            self.state = state
            return
        }
        let phase = try c.decode(WorkerPhase.self, forKey: .phase)
        func t(_ k: CodingKeys) throws -> Instant? { try c.decodeIfPresent(Instant.self, forKey: k) }
        switch phase {
        case .spawning: state = .spawning
        case .starting:
            state = .starting(readyBy: try t(.readyDeadline) ?? startedAt, probeAt: try t(.nextProbe),
                              delayReadyAt: try t(.delayReadyAt), memoryAt: try t(.nextMemorySample), priorityAt: nil)
        case .ready:
            state = .ready(watchdogBy: try t(.watchdogDeadline), healthyAt: try t(.healthyAt), swapAt: nil,
                           memoryAt: try t(.nextMemorySample))
        case .stopping: state = .stopping(killAt: try t(.killAt) ?? startedAt)
        case .killing: state = .killing
        }
    }

    public func encode(to encoder: Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(id, forKey: .id)
        try c.encode(app, forKey: .app)
        try c.encode(slot, forKey: .slot)
        try c.encode(generation, forKey: .generation)
        try c.encodeIfPresent(pid, forKey: .pid)
        try c.encode(state, forKey: .state)
        try c.encode(startedAt, forKey: .startedAt)
        try c.encodeIfPresent(readyAt, forKey: .readyAt)
        try c.encodeIfPresent(status, forKey: .status)
        try c.encodeIfPresent(stopReason, forKey: .stopReason)
        try c.encode(niced, forKey: .niced)
    }
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
    /// Exits (or spawn failures) before readiness.
    var startFailures = 0
    /// `Supervisor.failureSeq` at the last of them: a waiting command asks
    /// "has this slot failed since I was asked?" without a per-slot baseline.
    var lastStartFailure: UInt64?
    /// What this slot last added to its app's counters (`AppStats`); not persisted.
    var counted = SlotCounts()

    enum CodingKeys: String, CodingKey {
        case index, current, incoming, retiring, generation, restartAt, backoff, restarts, lastExit, lastFailure, removing
        case startFailures, lastStartFailure
    }

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
    /// With surge 0: the slot being replaced (old worker stopped first, then the new one started).
    var exclusiveSlot: Int?
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
    /// The highest generation number given out so far: numbers are never
    /// reused, not even a rolled-back reload's once its workers are gone.
    /// (Optional: a snapshot from a swarmd before it decodes without it.)
    public internal(set) var lastGeneration: Int?
    /// The last `Supervisor.generationsKept` config generations, oldest first
    /// (Supervisor+Rollback.swift). Optional: a snapshot from a swarmd before it decodes without it.
    public internal(set) var history: [GenerationRecord]?

    /// The spec in force. A missing one is a broken core invariant (checked by
    /// `invariantViolations`); the lowest spec left stands in rather than trap.
    public var spec: AppSpec { specs[generation] ?? specs[specs.keys.min() ?? generation] ?? AppSpec(name: name, command: [], workers: 0) }
}
