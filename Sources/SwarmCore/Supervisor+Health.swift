/// Health: active probes (`[health] http/tcp/exec`), zero-config hang
/// detection from each slot's accept queue, recycling by age, and the one path
/// they all replace a worker by: start-first, like a one-slot reload.
///
/// ## The rules
/// - A probe result or an accept-queue sample concerns the slot's *current*
///   worker while it is ready; anything else is ignored.
/// - `failures` consecutive failed probes (not counting those within
///   `start_period` of the worker's start) make the worker **unhealthy**; a
///   queue that stays non-empty and never shrinks between samples for
///   `stuck_after` makes it **hung**. Either verdict takes the slot out of the
///   steering set at once (the worker no longer counts as ready) and goes
///   through the slot's backoff: the replacement starts after the backoff's
///   delay, so a worker that is unhealthy from birth is not replaced in a tight
///   loop, and enough of them make a crash loop.
/// - The replacement is the slot's `incoming` worker, of the slot's own
///   generation: it is handed the slot's socket (so it takes the connections
///   queued there) and once ready it becomes current and the old worker is
///   stopped (stop signal, SIGCONT, SIGKILL to its group at the stop timeout).
/// - A replacement that fails leaves the old worker where it was and is tried
///   again after the slot's next backoff delay. If the old worker dies first,
///   the replacement simply becomes the slot's current worker.
/// - Recycling (`[recycle] max_age`, `max_connections`, and a ready worker over
///   `[limits] memory`) takes the same path without the verdict's steering
///   change (the old worker serves until its replacement is ready), at most one
///   slot of an app at a time, only while every slot is ready. A worker over
///   its memory ceiling that cannot be replaced yet (another slot is being
///   replaced, or not every slot is ready) keeps serving and is tried again at
///   its next memory sample; one still starting is stopped first as before
///   (it serves nothing, so no capacity is lost).
/// - `[ready] mode = "http" | "tcp" | "exec"`: a starting worker is probed with
///   the app's `[health]` probe every `min(interval, 250 ms)` and is ready at
///   the first pass; failures only count against its readiness timeout.
/// - No verdict and no replacement while the app reloads: the reload replaces
///   every worker anyway, and its own readiness gate must not be second-guessed.
///
/// The state lives in `healthBook` and is handed to a re-executed swarmd
/// (failure counts, last probe, hang watch, connection counts, a verdict that
/// waits for its backoff); no snapshot is taken while a replacement is in flight.
extension Supervisor {
    // MARK: - Events

    mutating func onHealthEvent(_ event: HealthEvent, now: Instant) {
        switch event {
        case let .probeResults(outcomes):
            for o in outcomes { probeResult(o.worker, ok: o.ok, detail: o.detail, now: now) }
        case let .acceptQueues(name, lengths):
            acceptQueues(name, lengths, now: now)
        case let .connections(name, counts):
            connections(name, counts, now: now)
        }
    }

    mutating func probeResult(_ id: WorkerID, ok: Bool, detail: String, now: Instant) {
        guard let w = workers[id], let spec = spec(of: w), let check = spec.health.check else { return }
        visit()
        let name = w.app
        let k = w.slot
        let detail = String(detail.prefix(200))
        if case .starting = w.state {
            // A readiness probe: the first pass makes the worker ready; failures count against its timeout only.
            guard ok, spec.ready.mode.probeKind == check.kind else { return }
            note(.info, "\(label(w)) passed its \(check.kind) probe (\(detail))")
            return markReady(id, now: now)
        }
        guard slot(name, k)?.current == id, w.isReady else { return }
        let counted = !ok && now >= w.startedAt + spec.health.startPeriod
        let failures = updateHealth(name, k, worker: id) { h in
            h.probeSentAt = nil
            h.lastResult = "\(check.kind) \(detail)"
            h.lastOK = ok
            h.lastProbeAt = now
            if ok { h.failures = 0 } else if counted { h.failures += 1 }
            return h.failures
        }
        guard !ok else { return }
        guard counted else {
            return note(.info, "\(label(w)) failed its \(check.kind) probe (\(detail)) within its start period; not counted")
        }
        note(.warning, "\(label(w)) failed its \(check.kind) probe (\(detail)), \(failures) of \(spec.health.failures)")
        if failures >= spec.health.failures {
            declare(name, k, worker: id, verdict: .unhealthy("\(check.kind) \(detail) ×\(failures)"), now: now)
        }
    }

    mutating func acceptQueues(_ name: String, _ lengths: [Int: Int], now: Instant) {
        guard let app = apps[name] else { return }
        let stuckAfter = app.spec.health.stuckAfter
        guard app.spec.watchesAcceptQueues else { return }
        for (k, length) in lengths.sorted(by: { $0.key < $1.key }) {
            visit()
            guard let id = slot(name, k)?.current, let w = workers[id], w.isReady, app.reload == nil else {
                healthBook[name]?.slots[k]?.queueSince = nil
                continue
            }
            let hung = updateHealth(name, k, worker: id) { h -> (Int, Duration)? in
                // Drained, or shrunk since the last sample: the worker accepts.
                if length == 0 || length < h.queue { h.queueSince = nil } else if h.queueSince == nil { h.queueSince = now }
                h.queue = length
                guard let since = h.queueSince, now - since >= stuckAfter else { return nil }
                return (length, now - since)
            }
            if let (length, stuck) = hung {
                declare(name, k, worker: id, verdict: .hung("queue \(length) for \(wholeSeconds(stuck)) s"), now: now)
            }
        }
    }

    /// New connections the steering program counted per slot since the last count:
    /// they belong to the slot's current worker (`[recycle] max_connections`).
    mutating func connections(_ name: String, _ counts: [Int: Int], now: Instant) {
        guard let app = apps[name] else { return }
        var over = false
        for (k, n) in counts.sorted(by: { $0.key < $1.key }) where n > 0 {
            visit()
            guard let id = app.slots[safe: k]?.current, let w = workers[id], w.isReady else { continue }
            let total = updateHealth(name, k, worker: id) { h -> Int in
                h.connections += n
                return h.connections
            }
            if let max = app.specs[w.generation]?.recycle.maxConnections, total >= max { over = true }
        }
        if over { recycleOne(name, now: now) }
    }

    /// A ready worker is over its `[limits] memory` ceiling: replaced start-first
    /// as soon as that is possible without losing capacity.
    mutating func memoryRecycle(_ w: Worker, bytes: Int64, limit: Int64, now: Instant) {
        let text = "memory \(bytes >> 20) MiB > \(limit >> 20) MiB"
        let first = updateHealth(w.app, w.slot, worker: w.id) { h -> Bool in
            defer { h.memoryOver = text }
            return h.memoryOver == nil
        }
        recycleOne(w.app, now: now)
        guard first else { return }
        if healthBook[w.app]?.slots[w.slot]?.verdict == nil {
            note(.warning, "\(label(w)) uses \(bytes >> 20) MiB, above its \(limit >> 20) MiB ceiling; it serves on until it can be replaced start-first (another slot is being replaced or not every slot is ready)")
        } else {
            note(.warning, "\(label(w)) uses \(bytes >> 20) MiB, above its \(limit >> 20) MiB ceiling; replacing it start-first")
        }
    }

    // MARK: - Verdicts and replacement

    /// The worker is unhealthy or hung: no new connection goes to its slot from now
    /// on, and its replacement starts after the slot's backoff delay.
    mutating func declare(_ name: String, _ k: Int, worker id: WorkerID, verdict: HealthVerdict, now: Instant) {
        guard let w = workers[id], apps[name]?.reload == nil,
              !(healthBook[name]?.slots[k].map { $0.worker == id && $0.verdict != nil } ?? false) else { return }
        let policy = spec(of: w)?.restart ?? RestartPolicy()
        let wasLooping = slot(name, k)?.backoff.inCrashLoop ?? false
        let (delay, looping) = modifySlot(name, k) { slot -> (Duration, Bool) in
            let delay = slot.backoff.failure(at: now, uptime: now - w.startedAt, policy: policy)
            slot.restarts += 1
            return (delay, slot.backoff.inCrashLoop)
        } ?? (.zero, false)
        updateHealth(name, k, worker: id) { h in
            h.verdict = verdict
            h.retryAt = now + delay
        }
        // Out of the steering set now: the verdict makes the worker count as not ready.
        account(name, k)
        note(.error, "\(label(w)) is \(verdict): no new connections go to slot \(k); replacing it"
            + (delay > .zero ? " in \(delay.humanReadable)" : ""))
        if looping && !wasLooping {
            note(.error, "\(name)[\(k)] is in a crash loop (\(policy.crashLoopRestarts) failures within \(policy.crashLoopWindow.humanReadable)); retrying every \(policy.maxDelay.humanReadable)")
        }
        if delay <= .zero { startReplacement(name, k, now: now) }
        armHealth(name, now: now)
    }

    /// Starts the slot's replacement worker if one is due and none is in flight.
    mutating func startReplacement(_ name: String, _ k: Int, now: Instant) {
        guard let app = apps[name], app.goal == .running, app.reload == nil, !shuttingDown,
              let slot = app.slots[safe: k], !slot.removing, slot.incoming == nil,
              let current = slot.current, let h = healthBook[name]?.slots[k], h.worker == current, h.verdict != nil,
              (h.retryAt ?? now) <= now else { return }
        let generation = slot.generation
        startWorker(name, slot: k, generation: generation, incoming: true, now: now)
        let incoming = self.slot(name, k)?.incoming
        updateHealth(name, k, worker: current) {
            $0.replacement = incoming
            $0.retryAt = nil
        }
        if let incoming, let verdict = healthBook[name]?.slots[k]?.verdict {
            note(.notice, "\(name)[\(k)]: starting \(incoming) to replace pid \(workers[current]?.pid ?? 0) (\(verdict))")
        }
    }

    /// Hook of `swapIn`: the slot's incoming worker took over. The stop reason
    /// for the old one if this was a health replacement, nil for a reload's swap.
    mutating func healthSwapped(_ name: String, _ k: Int, old: WorkerID?, now: Instant) -> StopReason? {
        guard let old, let h = healthBook[name]?.slots[k], h.worker == old, let verdict = h.verdict else { return nil }
        let text = "replaced: \(verdict)"
        modifySlot(name, k) {
            $0.lastFailure = text
            // A sick worker's replacement was counted at its verdict (through the backoff); a recycled one's now.
            if !verdict.unsteers { $0.restarts += 1 }
        }
        healthBook[name]?.slots[k] = nil
        healthBook[name]?.replacements[k] = text
        note(.notice, "\(name)[\(k)]: pid \(workers[old]?.pid ?? 0) \(text)")
        return verdict.stopReason
    }

    /// Hook of `rollBack` when no reload is in progress: a replacement failed.
    /// The old worker stays; the next try waits for the slot's backoff.
    mutating func healthReplacementFailed(_ name: String, slot k: Int?, reason: String, now: Instant) {
        guard let k, let h = healthBook[name]?.slots[k], h.verdict != nil, let current = slot(name, k)?.current,
              current == h.worker, let w = workers[current] else { return }
        let policy = spec(of: w)?.restart ?? RestartPolicy()
        let delay = modifySlot(name, k) { slot -> Duration in
            slot.restarts += 1
            return slot.backoff.failure(at: now, uptime: .zero, policy: policy)
        } ?? policy.maxDelay
        updateHealth(name, k, worker: current) {
            $0.replacement = nil
            $0.retryAt = now + delay
        }
        note(.error, "\(name)[\(k)]: the replacement failed (\(reason)); \(label(w)) stays out of the steering set, next try in \(delay.humanReadable)")
        armHealth(name, now: now)
    }

    /// Hook of `slotLost`: the current worker is gone while its replacement starts;
    /// the replacement becomes the slot's current worker. Returns whether it did.
    mutating func healthPromote(_ name: String, _ k: Int, now: Instant) -> Bool {
        guard let slot = slot(name, k), slot.current == nil, let inc = slot.incoming, isHealthReplacement(name, k) else { return false }
        modifySlot(name, k) {
            $0.incoming = nil
            $0.current = inc
            $0.restartAt = nil
        }
        healthBook[name]?.slots[k] = nil
        note(.info, "\(name)[\(k)]: the worker being replaced is gone; its replacement \(inc) takes the slot")
        return true
    }

    /// Hook of `reload`: a reload replaces every worker, so replacements in flight are withdrawn.
    mutating func cancelHealthReplacements(_ name: String, now: Instant) {
        guard let book = healthBook[name] else { return }
        for (k, h) in book.slots.sorted(by: { $0.key < $1.key }) {
            guard let inc = h.replacement, slot(name, k)?.incoming == inc else { continue }
            retire(inc, reason: .reload, now: now)
            healthBook[name]?.slots[k]?.replacement = nil
        }
    }

    /// Whether slot `k`'s incoming worker is a health replacement (not a reload's).
    public func isHealthReplacement(_ name: String, _ k: Int) -> Bool {
        guard let inc = slot(name, k)?.incoming else { return false }
        return healthBook[name]?.slots[k]?.replacement == inc
    }

    /// Whether `w`, its slot's current worker, has a verdict that keeps it out of the steering set.
    func isUnsteered(_ w: Worker) -> Bool {
        guard let h = healthBook[w.app]?.slots[w.slot], h.worker == w.id, let v = h.verdict else { return false }
        return v.unsteers
    }

    // MARK: - Time

    /// Hook of `markReady` (and restore): the app has a ready worker, so its health timer must run.
    mutating func armHealth(_ name: String, now: Instant) {
        guard let spec = apps[name]?.spec, spec.hasHealthWork || healthBook[name]?.slots.isEmpty == false else { return }
        var book = healthBook[name] ?? AppHealthBook()
        if spec.health.check != nil, book.probeAt == nil { book.probeAt = now + spec.health.interval }
        if spec.watchesAcceptQueues, book.sampleAt == nil { book.sampleAt = now + spec.health.queueSampleInterval }
        if let age = spec.recycle.maxAge, book.recycleAt == nil { book.recycleAt = now + min(.seconds(1), .nanoseconds(age.nanoseconds / 10)) }
        if spec.recycle.maxConnections != nil, book.countAt == nil { book.countAt = now + Supervisor.connectionCountInterval }
        healthBook[name] = book
        setDeadline(.app(name), book.deadline)
    }

    mutating func armRestoredHealth(now: Instant) {
        let names = healthBook.pendingArm
        healthBook.pendingArm = []
        for name in names { armHealth(name, now: now) }
    }

    /// The app's health timer fired: sample, probe, retry, recycle, whichever is due.
    mutating func healthTick(_ name: String, now: Instant) {
        guard let app = apps[name], app.goal == .running, !shuttingDown else {
            healthBook[name] = nil
            return setDeadline(.app(name), nil)
        }
        let spec = app.spec
        var book = healthBook[name] ?? AppHealthBook()
        // Entries of workers that are no longer current are dropped here, once per tick.
        for (k, h) in book.slots where app.slots[safe: k]?.current != h.worker { book.slots[k] = nil }
        if let t = book.sampleAt, t <= now {
            book.sampleAt = spec.watchesAcceptQueues ? now + spec.health.queueSampleInterval : nil
            if spec.watchesAcceptQueues { out.append(.health(.sampleQueues(app: name))) }
        }
        var probes: [HealthProbeRequest] = []
        if let t = book.probeAt, t <= now {
            book.probeAt = spec.health.check != nil ? now + spec.health.interval : nil
            if let check = spec.health.check {
                for slot in app.slots where !slot.removing {
                    visit()
                    guard let id = slot.current, let w = workers[id], w.isReady, let pid = w.pid,
                          let ownSpec = app.specs[w.generation] else { continue }
                    // A probe still out (the shell answers every one within its timeout) is not doubled.
                    if let h = book.slots[slot.index], h.worker == id, let sent = h.probeSentAt,
                       now - sent < ownSpec.health.timeout + ownSpec.health.interval { continue }
                    if book.slots[slot.index]?.worker != id { book.slots[slot.index] = SlotHealth(worker: id) }
                    book.slots[slot.index]?.probeSentAt = now
                    probes.append(HealthProbeRequest(worker: id, pid: pid, app: name, slot: slot.index, generation: w.generation,
                                                     check: ownSpec.health.check ?? check, socket: ownSpec.health.socket,
                                                     timeout: ownSpec.health.timeout))
                }
            }
        }
        if let t = book.countAt, t <= now {
            book.countAt = spec.recycle.maxConnections != nil ? now + Supervisor.connectionCountInterval : nil
            if book.countAt != nil { out.append(.health(.countConnections(app: name))) }
        }
        var recycleDue = false
        if let t = book.recycleAt, t <= now {
            book.recycleAt = spec.recycle.maxAge.map { now + min(.seconds(1), .nanoseconds($0.nanoseconds / 10)) }
            recycleDue = true
        }
        healthBook[name] = book
        for p in probes { out.append(.health(.probe(p))) }
        for (k, h) in book.slots.sorted(by: { $0.key < $1.key }) where h.verdict != nil && h.replacement == nil {
            if let t = h.retryAt, t > now { continue }
            startReplacement(name, k, now: now)
        }
        if recycleDue { recycleOne(name, now: now) }
        armHealth(name, now: now)
    }

    /// How often the steering program's per-slot connection counters are read.
    public static let connectionCountInterval: Duration = .seconds(1)

    /// Starts one recycling replacement, if no replacement of the app is in flight
    /// and every slot is ready (capacity never drops): a worker over its memory
    /// ceiling first, then one past `max_connections`, then the oldest past its age.
    mutating func recycleOne(_ name: String, now: Instant) {
        guard let app = apps[name], app.reload == nil, let st = stats[name], st.incoming == 0,
              st.ready >= app.targetCount, app.targetCount > 0 else { return }
        var best: (k: Int, id: WorkerID, rank: Int, age: Duration, verdict: HealthVerdict)?
        for slot in app.slots where !slot.removing {
            visit()
            guard let id = slot.current, let w = workers[id], w.isReady, let spec = app.specs[w.generation] else { continue }
            let h = healthBook[name]?.slots[slot.index].flatMap { $0.worker == id ? $0 : nil }
            if h?.verdict != nil { continue }
            let age = now - w.startedAt
            let candidate: (Int, HealthVerdict)?
            if let text = h?.memoryOver {
                candidate = (3, .memory(text))
            } else if let max = spec.recycle.maxConnections, let n = h?.connections, n >= max {
                candidate = (2, .recycled("connections \(n) ≥ \(max)"))
            } else if let limit = spec.recycle.age(forSlot: slot.index, of: app.targetCount), age >= limit {
                candidate = (1, .recycled("age \(age.humanReadable)"))
            } else {
                candidate = nil
            }
            guard let (rank, verdict) = candidate else { continue }
            if best.map({ rank > $0.rank || (rank == $0.rank && age > $0.age) }) ?? true {
                best = (slot.index, id, rank, age, verdict)
            }
        }
        guard let (k, id, _, _, verdict) = best else { return }
        updateHealth(name, k, worker: id) {
            $0.verdict = verdict
            $0.retryAt = nil
        }
        startReplacement(name, k, now: now)
    }

    /// `.probe` of a starting worker whose `[ready] mode` is a probe, and when to probe it next.
    func readinessProbe(_ w: Worker, pid: Int32, now: Instant) -> (probe: Action, next: Instant)? {
        guard let spec = spec(of: w), let kind = spec.ready.mode.probeKind, let check = spec.health.check, check.kind == kind else { return nil }
        let request = HealthProbeRequest(worker: w.id, pid: pid, app: w.app, slot: w.slot, generation: w.generation,
                                         check: check, socket: spec.health.socket, timeout: spec.health.timeout, readiness: true)
        return (.health(.probe(request)), now + min(spec.health.interval, Supervisor.maxProbeInterval))
    }

    // MARK: - Queries

    /// What `status` shows of slot `k`'s health: its current worker's, if it has been probed or sampled.
    public func slotHealth(_ name: String, _ k: Int) -> SlotHealth? {
        guard let h = healthBook[name]?.slots[k], h.worker == slot(name, k)?.current else { return nil }
        return h
    }

    /// The last replacement of slot `k` ("replaced: hung (queue 37 for 10 s)").
    public func lastReplacement(_ name: String, _ k: Int) -> String? { healthBook[name]?.replacements[k] }

    // MARK: - Helpers

    /// Changes the book entry of slot `k` for `worker` (a fresh one when the slot's worker changed).
    /// In place: a copy of the book, changed and stored back, copied every
    /// slot's entry once per change (4,096 slots: 16 M copies per queue sample).
    @discardableResult
    mutating func updateHealth<R>(_ name: String, _ k: Int, worker: WorkerID, _ body: (inout SlotHealth) -> R) -> R {
        let fresh = SlotHealth(worker: worker)
        func change(_ h: inout SlotHealth) -> R {
            if h.worker != worker { h = fresh }
            return body(&h)
        }
        return change(&healthBook.apps[name, default: AppHealthBook()].slots[k, default: fresh])
    }
}

/// "10" for 10.4 s: the reason strings count whole seconds.
func wholeSeconds(_ d: Duration) -> Int { Int(d.nanoseconds / 1_000_000_000) }

/// Why a worker is being replaced.
public enum HealthVerdict: Codable, Hashable, Sendable, CustomStringConvertible {
    /// `failures` probes in a row failed; the text is like "http 503 ×3".
    case unhealthy(String)
    /// Its accept queue did not move; the text is like "queue 37 for 10 s".
    case hung(String)
    /// `[recycle] max_age`; the text is like "age 6h".
    case recycled(String)
    /// A ready worker over `[limits] memory`; the text is like "memory 512 MiB > 400 MiB".
    case memory(String)

    public var description: String {
        switch self {
        case let .unhealthy(why): return "unhealthy (\(why))"
        case let .hung(why): return "hung (\(why))"
        case let .recycled(why), let .memory(why): return "recycled (\(why))"
        }
    }

    /// A sick worker gets no new connection; a recycled one serves until its replacement is ready.
    var unsteers: Bool {
        switch self {
        case .unhealthy, .hung: return true
        case .recycled, .memory: return false
        }
    }

    var stopReason: StopReason {
        switch self {
        case .unhealthy: return .unhealthy
        case .hung: return .hung
        case .recycled: return .recycle
        case .memory: return .memory
        }
    }
}

/// The health of one slot's current worker.
public struct SlotHealth: Codable, Hashable, Sendable {
    /// The worker this entry is about: an entry of any other worker is stale.
    public let worker: WorkerID
    /// Failed probes in a row (counted ones).
    public internal(set) var failures = 0
    /// "http 200", "http 503", "tcp refused", "exec exit 1", "http timeout".
    public internal(set) var lastResult: String?
    public internal(set) var lastOK: Bool?
    public internal(set) var lastProbeAt: Instant?
    /// The last accept-queue length sampled.
    public internal(set) var queue = 0
    /// Since when the queue has been non-empty and not shrinking.
    public internal(set) var queueSince: Instant?
    public internal(set) var verdict: HealthVerdict?
    /// The incoming worker replacing this one.
    public internal(set) var replacement: WorkerID?
    /// New connections steered to the slot while this worker was its current one.
    public internal(set) var connections = 0
    /// Over `[limits] memory` ("memory 512 MiB > 400 MiB"), waiting for its replacement.
    public internal(set) var memoryOver: String?
    /// The next replacement attempt (the slot's backoff).
    var retryAt: Instant?
    var probeSentAt: Instant?

    init(worker: WorkerID) { self.worker = worker }

    /// For status: "healthy", "unhealthy", "hung", "recycling", or "unknown" before the first probe.
    public var state: String {
        switch verdict {
        case .unhealthy: return "unhealthy"
        case .hung: return "hung"
        case .recycled, .memory: return "recycling"
        case nil: return lastOK == false ? "failing" : (lastOK == true ? "healthy" : "unknown")
        }
    }
}

/// Every app's health state.
struct HealthBooks: Hashable, Sendable {
    var apps: [String: AppHealthBook] = [:]
    /// Restored apps whose health timer starts with the first event (a restore knows no time).
    var pendingArm: [String] = []

    subscript(name: String) -> AppHealthBook? {
        get { apps[name] }
        // In place: `healthBook[name]?.slots[k]?.x = y` must not copy the app's book.
        _modify { yield &apps[name] }
    }

    /// What a re-executed swarmd gets: everything but the timers (a restore arms
    /// them at its first event) and the probes in flight (their answers are lost
    /// with the old image's sockets and pipes).
    var forSnapshot: [String: AppHealthBook] {
        apps.mapValues { book in
            var b = book
            b.probeAt = nil
            b.sampleAt = nil
            b.recycleAt = nil
            b.countAt = nil
            for k in b.slots.keys { b.slots[k]?.probeSentAt = nil }
            return b
        }
    }

    /// Takes the books of a snapshot, keeping only entries of workers that still exist.
    mutating func restore(_ books: [String: AppHealthBook], workers: [WorkerID: Worker]) {
        for (name, var book) in books {
            for (k, h) in book.slots where workers[h.worker] == nil || h.replacement.map({ workers[$0] == nil }) == true {
                book.slots[k] = nil
            }
            apps[name] = book
        }
    }
}

/// The slots' health entries of one app, keyed by slot index, with the
/// retry deadlines of the unhealthy ones kept in a heap as entries change:
/// `AppHealthBook.deadline`, asked after every ready worker, had walked every
/// slot's entry for them (4 % of swarmd's CPU in a 4,096-worker socket
/// storm, issue 18). Coded as the plain dictionary it replaced.
struct SlotHealthTable: Codable, Hashable, Sendable, Sequence {
    private(set) var entries: [Int: SlotHealth] = [:]
    /// `retryAt` of each entry with a verdict and no replacement yet.
    private var retries = IndexedHeap<Int, Instant>()

    init() {}

    init(from decoder: Decoder) throws {
        entries = try decoder.singleValueContainer().decode([Int: SlotHealth].self)
        for k in entries.keys { reindex(k) }
    }

    func encode(to encoder: Encoder) throws {
        var c = encoder.singleValueContainer()
        try c.encode(entries)
    }

    static func == (a: SlotHealthTable, b: SlotHealthTable) -> Bool { a.entries == b.entries }
    func hash(into h: inout Hasher) { h.combine(entries) }

    subscript(k: Int) -> SlotHealth? {
        get { entries[k] }
        _modify {
            defer { reindex(k) }
            yield &entries[k]
        }
    }

    subscript(k: Int, default fresh: @autoclosure () -> SlotHealth) -> SlotHealth {
        get { entries[k] ?? fresh() }
        _modify {
            defer { reindex(k) }
            yield &entries[k, default: fresh()]
        }
    }

    var isEmpty: Bool { entries.isEmpty }
    var count: Int { entries.count }
    var keys: Dictionary<Int, SlotHealth>.Keys { entries.keys }
    func makeIterator() -> Dictionary<Int, SlotHealth>.Iterator { entries.makeIterator() }

    /// The earliest retry of an unhealthy slot's check, if any is waiting.
    var earliestRetry: Instant? { retries.min?.priority }

    private mutating func reindex(_ k: Int) {
        let h = entries[k]
        retries.set(k, h.flatMap { $0.verdict != nil && $0.replacement == nil ? $0.retryAt : nil })
    }
}

/// One app's health state.
struct AppHealthBook: Codable, Hashable, Sendable {
    var slots = SlotHealthTable()
    /// The last replacement of each slot, for status.
    var replacements: [Int: String] = [:]
    var probeAt: Instant?
    var sampleAt: Instant?
    var recycleAt: Instant?
    var countAt: Instant?

    var deadline: Instant? { earliest(probeAt, sampleAt, recycleAt, countAt, slots.earliestRetry) }
}

/// What the core asks of the shell's health part.
public enum HealthAction: Equatable, Sendable {
    /// Probe one worker through the socket it serves; answer with `.probeResult` within the timeout.
    case probe(HealthProbeRequest)
    /// Read the accept-queue length of each slot's reuseport listener of the app
    /// (one sock_diag dump); answer with `.acceptQueues`.
    case sampleQueues(app: String)
    /// Read the steering program's per-slot connection counters of the app;
    /// answer with `.connections` (the counts since the last read).
    case countConnections(app: String)
}

/// One probe of one worker.
public struct HealthProbeRequest: Equatable, Sendable {
    public var worker: WorkerID
    public var pid: Int32
    public var app: String
    public var slot: Int
    public var generation: Int
    public var check: HealthCheck
    /// The TCP socket to probe on (nil: the app's first TCP socket).
    public var socket: String?
    public var timeout: Duration
    /// A `[ready] mode` probe of a starting worker (which may share its slot's
    /// socket with the worker it replaces, and may not be in the steering set).
    public var readiness: Bool

    public init(worker: WorkerID, pid: Int32, app: String, slot: Int, generation: Int, check: HealthCheck, socket: String?,
                timeout: Duration, readiness: Bool = false) {
        self.readiness = readiness
        self.worker = worker
        self.pid = pid
        self.app = app
        self.slot = slot
        self.generation = generation
        self.check = check
        self.socket = socket
        self.timeout = timeout
    }
}

/// What the shell's health part reports.
public enum HealthEvent: Sendable {
    /// The outcomes of the probes that ended together (in one turn of the
    /// shell's loop), in the order they ended: one `handle` for a round of
    /// probes, not one each with its deadlines, steering and waiters.
    case probeResults([ProbeOutcome])
    /// Accept-queue lengths by slot index (slots not read are left out).
    case acceptQueues(app: String, [Int: Int])
    /// New connections per slot index since the last `.countConnections` answer.
    case connections(app: String, [Int: Int])
}

extension HealthEvent {
    /// One probe's outcome alone: a batch of one.
    public static func probeResult(_ id: WorkerID, ok: Bool, detail: String) -> HealthEvent {
        .probeResults([ProbeOutcome(worker: id, ok: ok, detail: detail)])
    }
}

/// One probe's outcome, as `.probeResults` carries it.
public struct ProbeOutcome: Equatable, Sendable {
    public var worker: WorkerID
    public var ok: Bool
    /// "200", "503", "timeout", "refused", "exit 1".
    public var detail: String

    public init(worker: WorkerID, ok: Bool, detail: String) {
        self.worker = worker
        self.ok = ok
        self.detail = detail
    }
}
