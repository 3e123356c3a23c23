/// Time: the one place that says which instant each state waits for, and
/// the tick that handles exactly the deadlines that are due.
extension Supervisor {
    /// The earliest instant worker `w` waits for in its state, or nil.
    public func deadline(of w: Worker) -> Instant? {
        switch w.state {
        case .queued, .spawning, .killing:
            return nil
        case let .starting(readyBy, probeAt, delayReadyAt, memoryAt, priorityAt):
            return earliest(readyBy, probeAt, delayReadyAt, memoryAt, priorityAt)
        case let .ready(watchdogBy, healthyAt, swapAt, memoryAt):
            return earliest(watchdogBy, healthyAt, swapAt, memoryAt)
        case let .stopping(killAt):
            return killAt
        }
    }

    /// How long until a starting worker is probed again: `probeInterval`
    /// while it is young, then an eighth of the time it has been starting (a
    /// worker that needs 2 s is seen at most 250 ms late), at most
    /// `maxProbeInterval`. A worker that takes long to listen (or never
    /// does, until its readiness timeout) costs a few probes a second, not 50.
    /// With `starting` workers of its app probed at once (a big start, a kill
    /// storm), each is probed that many times less often per
    /// `probesPerInterval`, so that the probes of one app cost about
    /// `probesPerInterval` per interval whatever their number (4,096 socket
    /// workers starting cost 4.6 s of swarmd's CPU in probes when swarmd
    /// outran them under SCHED_RR, issue 18); they are seen at most
    /// `maxProbeInterval` late, or as late as the crowd makes them, up to
    /// `maxCrowdProbeInterval` (with 250 ms for all, 4,096 starting workers
    /// were 16,000 probes a second, 2 s of swarmd's CPU in their start).
    public func probeDelay(startedAt: Instant, now: Instant, starting: Int = 1) -> Duration {
        let crowd = probeInterval * max(1, starting / Supervisor.probesPerInterval)
        let cap = max(probeInterval, Supervisor.maxProbeInterval, min(crowd, Supervisor.maxCrowdProbeInterval))
        return min(cap, max(probeInterval, crowd, (now - startedAt) / 8))
    }

    /// Starting workers of one app probed per `probeInterval` before each is probed less often.
    public static let probesPerInterval = 64

    /// Workers of `app` not ready yet: current ones of every generation and incoming ones (a reload's).
    func startingCount(_ app: String) -> Int {
        guard let st = stats[app] else { return 0 }
        return st.startingByGeneration.values.reduce(0, +) + st.incoming
    }

    /// The longest wait between two probes of a starting worker.
    public static let maxProbeInterval: Duration = .milliseconds(250)
    /// The same in a crowd of more than 800 (`probeDelay`).
    public static let maxCrowdProbeInterval: Duration = .seconds(1)

    /// How long a background-started worker (nice 19) may be starting before it
    /// gets the workers' priority back anyway: 2 s, at most a quarter of its
    /// readiness timeout. Nice 19 costs a worker nothing while a core is idle
    /// (the scheduler hands spare time to anyone), so a worker still not ready
    /// after 2 s is slow or starved: with every core busy it gets about 1.5 % of
    /// one and may never reach listen() before its timeout, which would roll
    /// back every reload on a saturated machine. 2 s covers the start-up of
    /// the servers the tests run (Python, Node, NIO: 0.1–0.5 s) with room to
    /// spare, so on a machine with spare CPU background start still does what
    /// it is for; the quarter leaves a starved worker at least three quarters
    /// of a short timeout at full priority.
    public static func backgroundStartLimit(readyTimeout: Duration) -> Duration {
        min(.seconds(2), .nanoseconds(readyTimeout.nanoseconds / 4))
    }

    /// A background-started worker is not ready within `backgroundStartLimit`:
    /// its process group gets the workers' priority back now (readiness will not do it again).
    mutating func restoreStarvedPriority(_ w: Worker, now: Instant) {
        guard w.niced, let pid = w.pid else { return }
        modifyWorker(w.id) { $0.niced = false }
        out.append(.restorePriority(pid: pid))
        note(.info, "\(label(w)) not ready \((now - w.startedAt).humanReadable) after its background start; giving it the workers' priority")
    }

    /// When an empty slot starts its next worker, or nil.
    func deadline(ofSlot slot: Slot, in app: App) -> Instant? {
        guard !shuttingDown, app.goal == .running, slot.current == nil, !slot.removing, let t = slot.restartAt else { return nil }
        if exclusive(app) && !slot.retiring.isEmpty { return nil }  // surge 0: the old worker goes first
        return t
    }

    /// An app whose workers hold something they cannot share (`[reload] surge = 0`
    /// in any generation still around): a slot's next worker starts only once the
    /// previous one is gone.
    func isExclusive(_ name: String) -> Bool { apps[name].map(exclusive) ?? false }

    func exclusive(_ app: App) -> Bool {
        if let r = app.reload, r.surge == 0 { return true }
        return app.specs.values.contains { $0.reload.surge == 0 }
    }

    /// The instant the shell's timer must fire at: the earliest deadline, or
    /// `now` while spawns wait in the queue.
    public func nextDeadline() -> Instant? {
        let t = deadlines.min?.priority.time
        guard queued > 0 else { return t }
        return t.map { min($0, lastNow) } ?? lastNow
    }

    mutating func tick(now: Instant) {
        flushSpawnQueue(now: now)
        var dueWorkers: [WorkerID] = []
        var dueSlots: [SlotKey] = []
        var dueApps: [String] = []
        var popped = 0
        while popped < dueBatch, let top = deadlines.min, top.priority.time <= now {
            popped += 1
            _ = deadlines.popMin()
            switch top.key {
            case let .worker(id): dueWorkers.append(id)
            case let .slot(key): dueSlots.append(key)
            case let .app(name): dueApps.append(name)
            }
        }
        // Workers first, lowest id first, as the core always did; slots in the order they were due.
        dueWorkers.sort()
        for id in dueWorkers {
            dirtyWorkers.insert(id)
            guard let w = workers[id] else { continue }
            visit()
            tickWorker(w, now: now)
        }
        for key in dueSlots {
            dirtySlots.insert(key)
            visit()
            startDueSlot(key.app, key.index, now: now)
        }
        for name in dueApps { healthTick(name, now: now) }
    }

    /// The due deadlines of one worker, by state. Each handler moves the
    /// deadline it handled (or leaves the state), so a tick never repeats.
    mutating func tickWorker(_ w: Worker, now: Instant) {
        let id = w.id
        switch w.state {
        case .queued, .spawning, .killing:
            break
        case let .starting(readyBy, probeAt, delayReadyAt, memoryAt, priorityAt):
            if let t = delayReadyAt, t <= now { return markReady(id, now: now) }
            if readyBy <= now { return readinessTimedOut(id, now: now) }
            var probe = probeAt, memory = memoryAt, priority = priorityAt
            if let t = priorityAt, t <= now {
                priority = nil
                restoreStarvedPriority(w, now: now)
            }
            if let t = probeAt, t <= now, let pid = w.pid {
                if let action = readinessProbe(w, pid: pid, now: now) {
                    probe = action.next
                    out.append(action.probe)
                } else {
                    probe = now + probeDelay(startedAt: w.startedAt, now: now, starting: startingCount(w.app))
                    out.append(.probeListening(id, pid: pid))
                }
            }
            if let t = memoryAt, t <= now, let pid = w.pid {
                memory = now + memoryInterval
                out.append(.sampleMemory(pid: pid))
            }
            modifyWorker(id) {
                $0.state = .starting(readyBy: readyBy, probeAt: probe, delayReadyAt: delayReadyAt, memoryAt: memory, priorityAt: priority)
            }
        case let .ready(watchdogBy, healthyAt, swapAt, memoryAt):
            if let t = watchdogBy, t <= now { return watchdogExpired(id, now: now) }
            var healthy = healthyAt, swap = swapAt, memory = memoryAt
            if let t = swapAt, t <= now { swap = nil }
            if let t = healthyAt, t <= now { healthy = nil }
            if let t = memoryAt, t <= now, let pid = w.pid {
                memory = now + memoryInterval
                out.append(.sampleMemory(pid: pid))
            }
            modifyWorker(id) { $0.state = .ready(watchdogBy: watchdogBy, healthyAt: healthy, swapAt: swap, memoryAt: memory) }
            // An unhealthy or hung worker's time up does not make its slot healthy.
            if healthy == nil, healthyAt != nil, slot(w.app, w.slot)?.current == id, !isUnsteered(w) {
                modifySlot(w.app, w.slot) { $0.backoff.healthy() }
            }
            if swap == nil, swapAt != nil {
                swapIn(id, now: now)
                advanceReload(w.app, now: now)
            }
        case let .stopping(killAt):
            guard killAt <= now, let pid = w.pid else { return }
            modifyWorker(id) { $0.state = .killing }
            note(.warning, "\(label(w)) still running \(((spec(of: w)?.stop.timeout) ?? .zero).humanReadable) after its stop signal; sending SIGKILL")
            signal(pid, .kill, group: true)
        }
    }

    /// An empty slot whose restart is due starts its worker.
    mutating func startDueSlot(_ name: String, _ k: Int, now: Instant) {
        guard let generation = dueGeneration(name, k, now: now) else { return }
        startWorker(name, slot: k, generation: generation, incoming: false, now: now)
    }

    /// The generation slot `k` starts now, if its start is due (the App copy ends here, before any mutation).
    func dueGeneration(_ name: String, _ k: Int, now: Instant) -> Int? {
        guard let app = apps[name], let slot = app.slots[safe: k], let t = deadline(ofSlot: slot, in: app), t <= now else { return nil }
        return slot.generation
    }

    // MARK: - The spawn queue

    /// Asks the shell for the worker's process now if this event still has
    /// room in its batch and nobody is queued ahead; otherwise queues it.
    mutating func requestSpawn(_ id: WorkerID, now: Instant) {
        if queued == 0 && spawnsThisEvent < spawnBatch {
            emitSpawn(id)
        } else {
            modifyWorker(id) { $0.state = .queued }
            queued += 1
            spawnQueue.append(id)
        }
    }

    mutating func flushSpawnQueue(now: Instant) {
        while queued > 0 && spawnsThisEvent < spawnBatch, let id = spawnQueue.popFirst() {
            guard let w = workers[id], case .queued = w.state else { continue }  // dropped while queued
            visit()
            queued -= 1
            emitSpawn(id)
        }
    }

    /// Whether `w` starts while the app's workers serve on (what background
    /// start is for): a reload's new worker, or a recycling replacement (its
    /// slot's old worker serves until it is ready). Not the replacement of an
    /// unhealthy or hung worker: its slot is out of the steering set and the
    /// clients queued on it wait for that replacement.
    func startsBesideServingWorkers(_ w: Worker) -> Bool {
        if apps[w.app]?.reload?.to == w.generation { return true }
        guard slot(w.app, w.slot)?.incoming == w.id, let verdict = healthBook[w.app]?.slots[w.slot]?.verdict else { return false }
        return !verdict.unsteers
    }

    mutating func emitSpawn(_ id: WorkerID) {
        guard let w = workers[id], let spec = apps[w.app]?.specs[w.generation] else { return }
        let background = spec.reload.backgroundStart && canRaisePriority && startsBesideServingWorkers(w)
        let nice: Int32? = background ? 19 : nil
        modifyWorker(id) {
            $0.state = .spawning
            $0.niced = nice != nil
        }
        spawnsThisEvent += 1
        out.append(.spawn(SpawnRequest(worker: id, app: w.app, slot: w.slot, generation: w.generation, spec: spec, nice: nice,
                                       cpu: spec.cpuAffinity?.cpu(forSlot: w.slot, allowed: allowedCPUs))))
    }
}

func earliest(_ times: Instant?...) -> Instant? {
    var best: Instant?
    for case let t? in times {
        if let b = best, b <= t { continue }
        best = t
    }
    return best
}
