/// What the shell may read for rendering (status, STATUS=), the invariant
/// check, and the snapshot handed to a re-executed swarmd.
extension Supervisor {
    /// The app's state as `status` shows it, from counters (no walk of its slots).
    public func health(of name: String) -> AppHealth? {
        guard let app = apps[name] else { return nil }
        let st = stats[name] ?? AppStats()
        let state: AppHealth.State
        switch app.goal {
        case .stopped: state = st.workers > 0 ? .stopping : .stopped
        case .deleted: state = .deleting
        case .running:
            if app.reload != nil { state = .reloading }
            else if st.crashLoops > 0 { state = .crashLoop }
            else if st.ready < app.targetCount { state = .degraded }
            else { state = .running }
        }
        return AppHealth(state: state, ready: st.ready, wanted: app.targetCount)
    }

    /// A worker's state in `status`.
    public func displayState(of w: Worker, in slot: Slot) -> String {
        if slot.backoff.inCrashLoop && w.id == slot.current && !w.isReady { return "crash-loop" }
        return w.phase.rawValue
    }

    /// The state of a slot that has no worker, in `status`.
    public func displayState(ofEmpty slot: Slot, in app: App) -> String {
        if app.goal != .running { return "stopped" }
        if slot.removing { return "removed" }
        if slot.restartAt != nil { return slot.backoff.inCrashLoop ? "crash-loop" : "backoff" }
        return "stopped"
    }

    /// Everything that must hold between events, each broken rule in words.
    /// Walks the whole state: for tests and debug builds, not for every event in production.
    public func invariantViolations() -> [String] {
        var v: [String] = []
        if Set(appOrder) != Set(apps.keys) || appOrder.count != apps.count { v.append("appOrder \(appOrder) does not match the apps") }
        var references: [WorkerID: Int] = [:]
        for (name, app) in apps {
            if app.name != name { v.append("app \(name) is named \(app.name)") }
            if app.specs[app.generation] == nil { v.append("\(name): no spec for its generation \(app.generation)") }
            for (i, slot) in app.slots.enumerated() {
                let at = "\(name)[\(i)]"
                if slot.index != i { v.append("\(at) has index \(slot.index)") }
                if app.specs[slot.generation] == nil { v.append("\(at): no spec for slot generation \(slot.generation)") }
                if slot.current != nil && slot.current == slot.incoming { v.append("\(at): same worker current and incoming") }
                if Set(slot.retiring).count != slot.retiring.count { v.append("\(at): duplicate retiring") }
                let healthIncoming = isHealthReplacement(name, i)
                if app.reload == nil && slot.incoming != nil && !healthIncoming { v.append("\(at): incoming worker with no reload") }
                for id in slot.liveWorkers {
                    references[id, default: 0] += 1
                    guard let w = workers[id] else {
                        v.append("\(at) references \(id), which is not a worker")
                        continue
                    }
                    if w.app != name || w.slot != i { v.append("\(id) is \(w.app)[\(w.slot)] but referenced by \(at)") }
                    if app.specs[w.generation] == nil { v.append("\(id): spec of generation \(w.generation) dropped while it lives") }
                }
                if let c = slot.current, let w = workers[c] {
                    if w.isRetiring { v.append("\(at): current \(c) is \(w.phase)") }
                    if w.generation != slot.generation { v.append("\(at): current runs generation \(w.generation), slot says \(slot.generation)") }
                }
                if let inc = slot.incoming, let w = workers[inc] {
                    // A ready incoming worker waits out [reload] min_ready, and no longer than that.
                    var fine = false
                    switch w.state {
                    case .queued, .spawning, .starting: fine = true
                    case let .ready(_, _, swapAt, _): fine = swapAt.map { lastNow < $0 } ?? false
                    default: fine = false
                    }
                    if !fine { v.append("\(at): incoming \(inc) is \(w.state)") }
                    if healthIncoming ? w.generation != slot.generation : app.reload.map({ w.generation != $0.to }) ?? true { v.append("\(at): incoming of generation \(w.generation)") }
                }
                for id in slot.retiring {
                    if let w = workers[id], !w.isRetiring { v.append("\(at): retiring \(id) is \(w.phase)") }
                }
                if slot.counted != counts(of: slot) { v.append("\(at): counted \(slot.counted), is \(counts(of: slot))") }
                let key = DeadlineKey.slot(SlotKey(app: name, index: i))
                let due = deadline(ofSlot: slot, in: app)
                if deadlines.priority(of: key)?.time != due {
                    v.append("\(at): deadline index has \(String(describing: deadlines.priority(of: key)?.time)), the slot waits for \(String(describing: due))")
                }
            }
            if let r = app.reload {
                let flying = app.slots.filter { slot in
                    if slot.incoming != nil { return true }
                    if let c = slot.current, let w = workers[c] { return w.generation == r.to && !w.isReady }
                    return false
                }.count
                if flying > max(1, r.surge) { v.append("\(name): \(flying) new workers starting at once, surge \(r.surge)") }
                if app.generation != r.from { v.append("\(name): generation \(app.generation) during a reload from \(r.from)") }
            }
            let counted = stats[name] ?? AppStats()
            let actual = recount(name)
            if counted != actual { v.append("\(name): counters \(describe(counted)) but the slots say \(describe(actual))") }
            if counted.notReady.min?.priority != actual.notReady.min?.priority { v.append("\(name): least not-ready failure differs") }
        }
        for name in stats.keys where apps[name] == nil { v.append("counters kept for \(name), which is gone") }
        var queuedSeen = 0
        for (id, w) in workers {
            if references[id] != 1 { v.append("\(id) (\(w.app)[\(w.slot)] \(w.phase)) is referenced by \(references[id] ?? 0) slot fields") }
            if let pid = w.pid, byPid[pid] != id { v.append("pid \(pid) of \(id) not indexed") }
            if case .queued = w.state { queuedSeen += 1 }
            if case let .starting(_, _, _, _, priorityAt?) = w.state, !w.niced {
                v.append("\(id) waits to get its priority back at \(priorityAt) but was not started niced")
            }
            if deadlines.priority(of: .worker(id))?.time != deadline(of: w) {
                v.append("\(id): deadline index has \(String(describing: deadlines.priority(of: .worker(id))?.time)), the worker waits for \(String(describing: deadline(of: w)))")
            }
        }
        if queuedSeen != queued { v.append("\(queued) workers counted as queued, \(queuedSeen) are") }
        for (pid, id) in byPid where workers[id]?.pid != pid { v.append("pid index \(pid) → \(id) is stale") }
        if exitEmitted && !workers.isEmpty { v.append("exit emitted with workers left") }
        return v
    }

    private func describe(_ s: AppStats) -> String {
        "slots \(s.slots) removing \(s.removing) ready \(s.ready) incoming \(s.incoming) workers \(s.workers) live \(s.live.values.count) liveReady \(s.liveReady.values.count) byGen ready \(s.readyByGeneration) starting \(s.startingByGeneration) slots \(s.slotsByGeneration) workers \(s.workersByGeneration) notReady \(s.notReady.count)"
    }
}

extension Supervisor {
    /// Everything the supervisor knows, for handing over to a re-executed
    /// swarmd. Taken only when no command waits for an answer: a waiting
    /// client would lose its connection across the exec.
    public struct Snapshot: Codable, Sendable {
        public var apps: [String: App]
        public var appOrder: [String]
        public var workers: [WorkerID: Worker]
        public var nextWorker: UInt64
        /// Health state by app (Supervisor+Health.swift); absent in a snapshot from a swarmd before it.
        var health: [String: AppHealthBook]? = nil
    }

    /// Why no snapshot can be taken now, or nil.
    public var busyReason: String? {
        if shuttingDown { return "swarmd is shutting down" }
        if let name = appOrder.first(where: { apps[$0]?.reload != nil }) { return "a reload of '\(name)' is in progress" }
        if !waiters.isEmpty { return "\(waiters.count) command(s) are still waiting for workers" }
        if let name = appOrder.first(where: { n in apps[n]?.slots.indices.contains { isHealthReplacement(n, $0) } ?? false }) {
            return "a worker of '\(name)' is being replaced"
        }
        return nil
    }

    public func snapshot() -> Snapshot? {
        guard busyReason == nil else { return nil }
        return Snapshot(apps: apps, appOrder: appOrder, workers: workers, nextWorker: nextWorker, health: healthBook.forSnapshot)
    }

    /// Rebuilds the derived state (counters, deadline index, spawn queue) from a snapshot: one walk, once.
    public init(restoring s: Snapshot) {
        self.init()
        apps = s.apps
        appOrder = s.appOrder
        nextWorker = s.nextWorker
        for name in appOrder where apps[name] != nil { stats[name] = AppStats() }
        for id in s.workers.keys.sorted() {
            guard let w = s.workers[id] else { continue }
            addWorker(w)
            if case .queued = w.state {
                queued += 1
                spawnQueue.append(id)
            }
        }
        for (name, app) in apps {
            if stats[name] == nil { stats[name] = AppStats() }
            for k in app.slots.indices {
                apps[name]?.slots[k].counted = SlotCounts()
                account(name, k)
                failureSeq = max(failureSeq, app.slots[k].lastStartFailure ?? 0)
            }
            resteer(name)
            // The first event arms the app's probes and samples; counts and verdicts carry on.
            if app.spec.hasHealthWork || s.health?[name] != nil { healthBook.pendingArm.append(name) }
        }
        healthBook.restore(s.health ?? [:], workers: workers)
        reindex()
        touchedApps = []
        changedApps = Set(appOrder)
        visits = 0
    }
}
