/// The supervisor's whole decision logic: events in, actions out.
///
/// `handle(_:now:)` is the only thing that changes state. It never reads a
/// clock, a pid table or a file: the shell feeds it what happened and performs
/// the actions it returns, in order. Every wait is a deadline kept here, and
/// the shell is asked to wake the core at the earliest one with `.armTimer`.
///
/// ## Workers (`WorkerState`, each state carries its own deadlines)
///
///     queued ──batch has room──▶ spawning ──.spawned──▶ starting ──ready──▶ ready
///        │                          │                      │                  │
///        └──retired: dropped        └─.spawnFailed/        ├─readyBy passed───┤ watchdogBy passed (SIGABRT)
///                                     retired: gone        │  (stop signal)   │ memory over ceiling
///                                                          ▼                  ▼
///                                                       stopping ──killAt──▶ killing ──.exited──▶ gone
///
/// Any worker with a pid may exit at any time (`.exited`): it is gone, and its
/// slot decides what comes next (restart with backoff, roll a reload back, or
/// nothing). `deadline(of:)` is the one place that says which instant a state
/// waits for; `tick` handles exactly those (Supervisor+Time.swift).
///
/// ## Slots
/// A slot is a stable position 0…N-1 holding a `current` worker, during a
/// reload an `incoming` one, and `retiring` ones. An empty slot of a running app
/// waits for `restartAt` (backoff); with `[reload] surge = 0` also until its
/// retiring workers are gone. A `removing` slot is released once empty.
///
/// ## Where things are
/// - Supervisor.swift: state, `handle` (the dispatch of every event by worker
///   state), the mutation helpers that keep the counters and the deadline index right.
/// - +Commands: control commands. +Reload: rolling reloads and their validation.
/// - +Lifecycle: starting, readiness, stopping, exits, restarts.
/// - +Time: `deadline(of:)`, `tick`, the spawn queue. +Accounting: per-app counters.
/// - +Queries: health, display states, invariants, snapshots.
///
/// Per event the work is proportional to what the event touches (issue 18):
/// deadlines live in an indexed heap, per-app counters replace scans, waiters
/// are re-evaluated only for the apps an event touched, and at most
/// `spawnBatch` spawns go out per event.
public struct Supervisor: Sendable {
    public internal(set) var apps: [String: App] = [:]
    /// Names in the order the apps were started: status lists them so.
    public internal(set) var appOrder: [String] = []
    public internal(set) var workers: [WorkerID: Worker] = [:]
    public internal(set) var shuttingDown = false

    var byPid: [Int32: WorkerID] = [:]
    var nextWorker: UInt64 = 1
    var waiters: [Waiter] = []
    var shutdownRequests: [RequestID] = []
    var exitEmitted = false
    var armed: Instant?
    var out: [Action] = []
    /// Stop and kill signals of this event, sent after the steering updates they need.
    var signals: [Action] = []
    /// `.workerGone` of this event, after the signals (a reaped worker's group is killed first).
    var goneActions: [Action] = []

    // Derived state (rebuilt on restore, never persisted).
    var stats: [String: AppStats] = [:]
    var deadlines = IndexedHeap<DeadlineKey, DeadlineOrder>()
    var deadlineSeq: UInt64 = 0
    var dirtyWorkers: Set<WorkerID> = []
    var dirtySlots: Set<SlotKey> = []
    var touchedApps: Set<String> = []
    /// Apps touched since the shell last took them (`takeChangedApps`).
    var changedApps: Set<String> = []
    var steerDirty: Set<String> = []
    var spawnQueue = FIFO<WorkerID>()
    var queued = 0
    var spawnsThisEvent = 0
    var newWaiters = false
    /// The `now` of the event being handled (or the last one).
    var lastNow: Instant = .zero
    /// Probe results, queue watches and replacements per app (Supervisor+Health.swift); not persisted.
    var healthBook = HealthBooks()
    /// Generation history not yet attached to an app (Supervisor+Rollback.swift); not persisted.
    var generationBook = GenerationBook()
    /// Numbers start failures, so waiters compare against the number at their request.
    var failureSeq: UInt64 = 0
    /// Slots and workers examined, for the tests that bound the work per event.
    var visits = 0

    /// How often a worker in "listening" readiness mode is probed.
    public var probeInterval: Duration = .milliseconds(20)
    /// How often a worker's memory is sampled when its app has a ceiling.
    public var memoryInterval: Duration = .milliseconds(500)
    /// The CPUs swarmd may use, for `cpu_affinity = "auto"`.
    public var allowedCPUs: [Int] = []
    /// Whether a reload's new workers can start at nice 19 and get their priority back (root).
    public var canRaisePriority = false
    /// At most this many `.spawn` actions per `handle`; the rest wait in order
    /// and the timer is armed for `now` to continue. Each spawn holds the loop
    /// until the child has exec'd (1–3 ms on a busy host): 16 keep a batch
    /// well under 100 ms, so control requests are answered during a storm.
    public var spawnBatch = 16

    /// Deadlines handled per tick; the rest stay due and the timer is armed
    /// for `now` to continue, so other sources get the loop in between.
    /// Deadlines that fall due together (workers started at one instant have
    /// their first listening probes due together, each probe a few /proc
    /// reads in the shell) would otherwise make one turn as long as all of them.
    public var dueBatch = 256

    public init() {}

    public func worker(pid: Int32) -> Worker? {
        byPid[pid].flatMap { workers[$0] }
    }

    public var isIdle: Bool { workers.isEmpty }

    /// The apps whose state (health, counts, workers) may have changed since
    /// the last call, deleted ones included: what the shell renders per app
    /// (systemd's STATUS=) is recomputed for these only.
    public mutating func takeChangedApps() -> Set<String> {
        defer { changedApps.removeAll(keepingCapacity: true) }
        return changedApps
    }

    public mutating func handle(_ event: Event, now: Instant) -> [Action] {
        out = []
        signals = []
        goneActions = []
        spawnsThisEvent = 0
        newWaiters = false
        lastNow = now
        if !healthBook.pendingArm.isEmpty { armRestoredHealth(now: now) }
        switch event {
        case let .command(request, command):
            handle(command, request: request, now: now)
        case let .spawned(id, pid):
            onSpawned(id, pid: pid, now: now)
        case let .spawnFailed(id, reason):
            onSpawnFailed(id, reason: reason, now: now)
        case let .exited(pid, status):
            onExited(pid: pid, status: status, now: now)
        case let .ready(pid):
            onWorkerEvent(pid, "ready") { s, w in
                switch w.state {
                case .starting: s.markReady(w.id, now: now)
                case .ready, .stopping, .killing: break  // late or repeated: nothing changes
                case .queued, .spawning: s.impossible("ready", w)
                }
            }
        case let .status(pid, text):
            onWorkerEvent(pid, "status") { s, w in s.modifyWorker(w.id) { $0.status = String(text.prefix(200)) } }
        case let .watchdogPing(pid):
            onWorkerEvent(pid, "watchdog ping") { s, w in
                guard case let .ready(_, healthyAt, swapAt, memoryAt) = w.state, let wd = s.spec(of: w)?.ready.watchdog else { return }
                s.modifyWorker(w.id) { $0.state = .ready(watchdogBy: now + wd, healthyAt: healthyAt, swapAt: swapAt, memoryAt: memoryAt) }
            }
        case let .stopping(pid):
            onWorkerEvent(pid, "stopping") { s, w in
                s.modifyWorker(w.id) { $0.status = "stopping" }
                s.note(.info, "\(s.label(w)) says it is stopping")
            }
        case let .memory(pid, bytes):
            onWorkerEvent(pid, "memory") { s, w in
                switch w.state {
                case .starting, .ready: s.memorySample(w, bytes: bytes, now: now)
                default: break  // already stopping: the ceiling no longer matters
                }
            }
        case .tick:
            tick(now: now)
        case let .health(e):
            onHealthEvent(e, now: now)
        }
        settleWaiters()
        flushSteering()
        out += signals
        out += goneActions
        signals = []
        goneActions = []
        finishShutdownIfDone()
        reindex()
        let next = nextDeadline()
        if next != armed {
            armed = next
            out.append(.armTimer(next))
        }
        changedApps.formUnion(touchedApps)
        touchedApps.removeAll(keepingCapacity: true)
        let result = out
        out = []
        return result
    }

    /// A worker event by pid: events for pids that are not (or no longer) workers are dropped.
    mutating func onWorkerEvent(_ pid: Int32, _ what: String, _ body: (inout Supervisor, Worker) -> Void) {
        guard let id = byPid[pid], let w = workers[id] else { return }
        visit()
        body(&self, w)
    }

    /// An event that cannot happen in this state: the core noted it and changed nothing.
    mutating func impossible(_ event: String, _ w: Worker) {
        note(.error, "internal: \(event) for \(label(w)) in state \(w.state), ignoring")
    }

    // MARK: - Mutation helpers

    /// Changes app `name` in place; nil if it does not exist.
    @discardableResult
    mutating func modifyApp<R>(_ name: String, _ body: (inout App) -> R) -> R? {
        guard apps[name] != nil else { return nil }
        touchedApps.insert(name)
        return body(&apps[name]!)
    }

    /// Changes slot `k` of `name` in place and updates the counters and its
    /// deadline; nil if there is no such slot.
    @discardableResult
    mutating func modifySlot<R>(_ name: String, _ k: Int, _ body: (inout Slot) -> R) -> R? {
        guard let count = apps[name]?.slots.count, k >= 0, k < count else { return nil }
        let r = body(&apps[name]!.slots[k])
        account(name, k)
        return r
    }

    /// Changes worker `id` in place and updates its slot's counters and its deadline.
    @discardableResult
    mutating func modifyWorker<R>(_ id: WorkerID, _ body: (inout Worker) -> R) -> R? {
        guard workers[id] != nil else { return nil }
        let r = body(&workers[id]!)
        dirtyWorkers.insert(id)
        if let w = workers[id] { account(w.app, w.slot) }
        return r
    }

    func slot(_ name: String, _ k: Int) -> Slot? { apps[name]?.slots[safe: k] }

    mutating func addWorker(_ w: Worker) {
        workers[w.id] = w
        if let pid = w.pid { byPid[pid] = w.id }
        countWorker(w, sign: 1)
        dirtyWorkers.insert(w.id)
    }

    /// Forgets a worker; its slot references are the caller's to clear.
    @discardableResult
    mutating func removeWorker(_ id: WorkerID) -> Worker? {
        guard let w = workers.removeValue(forKey: id) else { return nil }
        if let pid = w.pid, byPid[pid] == id { byPid[pid] = nil }
        if case .queued = w.state { queued -= 1 }
        countWorker(w, sign: -1)
        dirtyWorkers.insert(id)
        return w
    }

    mutating func appendSlot(_ name: String, generation: Int) {
        guard let k = apps[name]?.slots.count else { return }
        apps[name]?.slots.append(Slot(index: k, generation: generation))
        account(name, k)
    }

    // MARK: - End of each event

    /// Puts every worker and slot whose deadline may have changed back in the index.
    mutating func reindex() {
        for id in dirtyWorkers {
            let t = workers[id].flatMap { deadline(of: $0) }
            setDeadline(.worker(id), t)
        }
        dirtyWorkers.removeAll(keepingCapacity: true)
        for key in dirtySlots {
            let t = apps[key.app].flatMap { app in app.slots[safe: key.index].flatMap { deadline(ofSlot: $0, in: app) } }
            setDeadline(.slot(key), t)
        }
        dirtySlots.removeAll(keepingCapacity: true)
    }

    mutating func setDeadline(_ key: DeadlineKey, _ t: Instant?) {
        guard let t else { return deadlines.remove(key) }
        if let old = deadlines.priority(of: key), old.time == t { return }
        deadlineSeq += 1
        deadlines.set(key, DeadlineOrder(time: t, seq: deadlineSeq))
    }

    /// `.steer` for every app whose steering set may have changed, before this event's signals.
    mutating func flushSteering() {
        guard !steerDirty.isEmpty else { return }
        for name in steerDirty.sorted() { steer(name) }
        steerDirty.removeAll(keepingCapacity: true)
    }

    mutating func steer(_ name: String) {
        guard let app = apps[name], let st = stats[name],
              app.spec.sockets.contains(where: { $0.effectiveBalance == .reuseport }) else { return }
        // Ready slots; with none ready, every live one (the new workers will take them).
        let set = st.liveReady.isEmpty ? st.live.values : st.liveReady.values
        // Only removing slots left: they keep what they had until the app is gone.
        guard !set.isEmpty, set != st.lastSteer else { return }
        stats[name]?.lastSteer = set
        out.append(.steer(app: name, slots: set))
    }

    /// The shell must be told the app's steering set again (its sockets are new).
    mutating func resteer(_ name: String) {
        stats[name]?.lastSteer = nil
        steerDirty.insert(name)
    }

    // MARK: - Small things

    public func spec(of w: Worker) -> AppSpec? { apps[w.app]?.specs[w.generation] }

    func label(_ w: Worker) -> String {
        "\(w.app)[\(w.slot)]" + (w.pid.map { " pid \($0)" } ?? "")
    }

    mutating func note(_ level: NoteLevel, _ text: String) { out.append(.note(level, text)) }

    mutating func reply(_ request: RequestID, _ result: Result<String, CommandError>) {
        out.append(.reply(request, result))
    }

    mutating func progress(_ request: RequestID, _ event: ReloadEvent) {
        out.append(.progress(request, event))
    }

    mutating func signal(_ pid: Int32, _ sig: Signal, group: Bool) {
        signals.append(.signal(pid: pid, sig, group: group))
    }

    mutating func finishShutdownIfDone() {
        guard shuttingDown, !exitEmitted, workers.isEmpty else { return }
        exitEmitted = true
        for r in shutdownRequests { reply(r, .success("swarmd stopped every worker")) }
        shutdownRequests = []
        out.append(.exit)
    }
}

/// "1 worker", "3 workers".
func workerCount(_ n: Int) -> String { n == 1 ? "1 worker" : "\(n) workers" }
