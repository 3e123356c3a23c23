/// A worker's life: start, readiness, stop, exit, and what its slot does next.
extension Supervisor {
    mutating func startWorker(_ name: String, slot k: Int, generation: Int, incoming: Bool, now: Instant) {
        guard apps[name]?.specs[generation] != nil, let slot = slot(name, k) else {
            return note(.error, "internal: no spec or slot for \(name)[\(k)] generation \(generation); not starting a worker")
        }
        if incoming ? slot.incoming != nil : slot.current != nil {
            return note(.error, "internal: \(name)[\(k)] already has a\(incoming ? "n incoming" : " current") worker; not starting another")
        }
        let id = WorkerID(nextWorker)
        nextWorker += 1
        addWorker(Worker(id: id, app: name, slot: k, generation: generation, startedAt: now))
        modifySlot(name, k) { slot in
            if incoming {
                slot.incoming = id
            } else {
                slot.current = id
                slot.generation = generation
            }
            slot.restartAt = nil
        }
        requestSpawn(id, now: now)
    }

    mutating func onSpawned(_ id: WorkerID, pid: Int32, now: Instant) {
        guard let w = workers[id] else {
            // Stopped before the shell answered: nobody wants this process.
            note(.info, "pid \(pid) was started for a worker no longer wanted; killing it")
            return signal(pid, .kill, group: true)
        }
        visit()
        guard case .spawning = w.state, let spec = spec(of: w) else { return impossible("spawned (pid \(pid))", w) }
        var probeAt: Instant?
        var delayReadyAt: Instant?
        switch spec.ready.mode {
        case .delay: delayReadyAt = now + spec.ready.delay
        case .listening:
            if spec.sockets.isEmpty { delayReadyAt = now + spec.ready.delay } else { probeAt = now }
        case .notify, .fd: break
        case .http, .tcp, .exec: probeAt = now
        }
        let memoryAt = spec.memoryLimit != nil ? now + memoryInterval : nil
        let priorityAt = w.niced ? now + Supervisor.backgroundStartLimit(readyTimeout: spec.ready.timeout) : nil
        modifyWorker(id) {
            $0.pid = pid
            $0.startedAt = now
            $0.state = .starting(readyBy: now + spec.ready.timeout, probeAt: probeAt, delayReadyAt: delayReadyAt,
                                 memoryAt: memoryAt, priorityAt: priorityAt)
        }
        byPid[pid] = id
        note(.info, "\(label(w))\(" pid \(pid)") started (generation \(w.generation))")
        if let r = apps[w.app]?.reload, w.generation == r.to, let req = r.requester {
            progress(req, ReloadEvent(app: w.app, kind: .spawned, slot: w.slot, pid: pid, generation: w.generation,
                                      message: "slot \(w.slot): started pid \(pid)"))
        }
        if spec.ready.mode == .delay && spec.ready.delay == .zero { markReady(id, now: now) }
    }

    mutating func onSpawnFailed(_ id: WorkerID, reason: String, now: Instant) {
        guard let w = workers[id] else { return }  // dropped already: its .workerGone went out then
        visit()
        guard case .spawning = w.state else { return impossible("spawn failure", w) }
        removeWorker(id)
        goneActions.append(.workerGone(id, pid: nil))
        lost(w, status: .spawnFailed(reason), now: now)
    }

    mutating func onExited(pid: Int32, status: ExitStatus, now: Instant) {
        guard let id = byPid[pid], let w = workers[id] else {
            return note(.debug, "reaped pid \(pid) (\(status)), not a worker")
        }
        visit()
        removeWorker(id)
        // Whatever the worker left in its process group goes with it, at once: it
        // is not a stop signal, so it need not wait for this event's steering.
        out.append(.signal(pid: pid, .kill, group: true))
        goneActions.append(.workerGone(id, pid: pid))
        lost(w, status: status, now: now)
    }

    mutating func markReady(_ id: WorkerID, now: Instant) {
        guard let w = workers[id], case let .starting(_, _, _, memoryAt, _) = w.state, let spec = spec(of: w) else { return }
        let name = w.app
        let k = w.slot
        let incoming = slot(name, k)?.incoming == id
        let swapAt: Instant? = incoming && spec.reload.minReady > .zero ? now + spec.reload.minReady : nil
        modifyWorker(id) {
            $0.state = .ready(watchdogBy: spec.ready.watchdog.map { now + $0 }, healthyAt: now + spec.restart.resetAfter,
                              swapAt: swapAt, memoryAt: memoryAt)
            $0.readyAt = now
            $0.niced = false
        }
        if w.niced, let pid = w.pid { out.append(.restorePriority(pid: pid)) }
        note(.info, "\(label(w)) ready after \((now - w.startedAt).humanReadable)")
        guard apps[name] != nil else { return }
        armHealth(name, now: now)
        // "ready" goes to the requester before the swap's "retiring": the order things happened in.
        if let r = apps[name]?.reload, w.generation == r.to, let req = r.requester {
            progress(req, ReloadEvent(app: name, kind: .ready, slot: k, pid: w.pid, generation: w.generation,
                                      message: "slot \(k): pid \(w.pid ?? 0) ready"
                                          + (spec.reload.minReady > .zero ? " (replaces the old worker after \(spec.reload.minReady.humanReadable))" : "")))
        }
        // With [reload] min_ready the old worker keeps serving beside the new one until swapAt.
        if incoming && swapAt == nil { swapIn(id, now: now) }
        advanceReload(name, now: now)
    }

    /// The slot's incoming (ready) worker becomes current; the old one is stopped.
    mutating func swapIn(_ id: WorkerID, now: Instant) {
        guard let w = workers[id], let spec = spec(of: w), let slot = slot(w.app, w.slot), slot.incoming == id else { return }
        let name = w.app
        let k = w.slot
        let old = slot.current
        // The new worker takes the slot before the old one's stop signal, so steering never drops the slot.
        modifySlot(name, k) {
            $0.incoming = nil
            $0.current = id
            $0.generation = w.generation
            $0.restartAt = nil
        }
        guard let old, let oldWorker = workers[old] else { return }
        if let req = apps[name]?.reload?.requester, let oldPid = oldWorker.pid {
            progress(req, ReloadEvent(app: name, kind: .retiring, slot: k, pid: oldPid, generation: oldWorker.generation,
                                      message: "slot \(k): retiring pid \(oldPid)"))
        }
        let reason = healthSwapped(name, k, old: old, now: now) ?? .reload
        if spec.reload.handOver, let oldPid = oldWorker.pid { out.append(.handOver(app: name, slot: k, from: oldPid)) }
        retire(old, reason: reason, now: now)
    }

    /// A worker is gone (exited, or never started). Decide what its slot does next.
    mutating func lost(_ w: Worker, status: ExitStatus, now: Instant) {
        let name = w.app
        let k = w.slot
        guard let slot = slot(name, k) else { return }
        if slot.retiring.contains(w.id) {
            modifySlot(name, k) { $0.retiring.removeAll { $0 == w.id } }
            note(.info, "\(label(w)) \(status) after being stopped (\(w.stopReason?.rawValue ?? "stop"))")
        } else if slot.incoming == w.id {
            let seq = nextFailure()
            modifySlot(name, k) {
                $0.incoming = nil
                $0.startFailures += 1
                $0.lastStartFailure = seq
                $0.lastExit = status
            }
            let when = w.readyAt.map { "\((now - $0).humanReadable) after it was ready (within [reload] min_ready)" } ?? "before it was ready"
            rollBack(name, reason: "new worker in slot \(k)\(w.pid.map { " (pid \($0))" } ?? "") \(status) \(when)",
                     slot: k, pid: w.pid, now: now)
        } else if slot.current == w.id {
            let seq = w.readyAt == nil ? nextFailure() : nil
            modifySlot(name, k) {
                $0.current = nil
                $0.lastExit = status
                if let seq {
                    $0.startFailures += 1
                    $0.lastStartFailure = seq
                }
            }
            slotLost(name, k, worker: w, cause: status.description, restartable: policyRestarts(w, status), now: now)
        }
        removeReleasedSlots(name)
        gcSpecs(name)
        advanceReload(name, now: now)
        removeAppIfDone(name)
    }

    mutating func nextFailure() -> UInt64 {
        failureSeq += 1
        return failureSeq
    }

    func policyRestarts(_ w: Worker, _ status: ExitStatus) -> Bool {
        guard let spec = spec(of: w) else { return false }
        switch spec.restart.mode {
        case .always: return true
        case .onFailure: return !status.isCleanExit
        case .never: return false
        }
    }

    /// The slot's current worker failed (exit, readiness timeout, watchdog, memory).
    mutating func slotLost(_ name: String, _ k: Int, worker w: Worker, cause: String, restartable: Bool, now: Instant) {
        modifySlot(name, k) { $0.lastFailure = cause }
        if healthPromote(name, k, now: now) { return }
        // Values, not the App: a copy of it alive across the mutations below would copy every slot.
        guard let goal = apps[name]?.goal, let slot = slot(name, k) else { return }
        if let r = apps[name]?.reload, w.generation == r.to {
            rollBack(name, reason: "new worker in slot \(k)\(w.pid.map { " (pid \($0))" } ?? "") \(cause)", slot: k, pid: w.pid, now: now)
            return
        }
        guard goal == .running, !shuttingDown, !slot.removing else { return }
        let ownSpec = apps[name]?.specs[w.generation]
        guard restartable else {
            note(.warning, "\(label(w)) \(cause); not restarted (restart policy \(ownSpec?.restart.mode.rawValue ?? "?"))")
            return
        }
        let policy = ownSpec?.restart ?? apps[name]?.spec.restart ?? RestartPolicy()
        let wasLooping = slot.backoff.inCrashLoop
        let (delay, looping) = modifySlot(name, k) { slot -> (Duration, Bool) in
            let delay = slot.backoff.failure(at: now, uptime: now - w.startedAt, policy: policy)
            slot.restarts += 1
            slot.restartAt = now + delay
            return (delay, slot.backoff.inCrashLoop)
        } ?? (.zero, false)
        note(.warning, "\(label(w)) \(cause); restarting in \(delay.humanReadable)")
        // No delay: start the replacement in this very batch rather than on the next timer,
        // unless the app's workers cannot overlap and the old one is still going.
        if delay <= .zero, let fresh = self.slot(name, k), fresh.current == nil, !(isExclusive(name) && !fresh.retiring.isEmpty) {
            startWorker(name, slot: k, generation: fresh.generation, incoming: false, now: now)
        }
        if looping && !wasLooping {
            note(.error, "\(name)[\(k)] is in a crash loop (\(policy.crashLoopRestarts) failures within \(policy.crashLoopWindow.humanReadable)); retrying every \(policy.maxDelay.humanReadable)")
        }
    }

    /// Sends the stop signal and arms the kill deadline.
    mutating func retire(_ id: WorkerID, reason: StopReason, now: Instant) {
        guard let w = workers[id] else { return }
        visit()
        let name = w.app
        let k = w.slot
        modifySlot(name, k) { slot in
            if slot.current == id { slot.current = nil }
            if slot.incoming == id { slot.incoming = nil }
            if !slot.retiring.contains(id) { slot.retiring.append(id) }
        }
        switch w.state {
        case .stopping, .killing:
            return
        case .queued, .spawning:
            // Never ran (or the shell has not answered yet): nothing to signal.
            removeWorker(id)
            modifySlot(name, k) { $0.retiring.removeAll { $0 == id } }
            if case .spawning = w.state { goneActions.append(.workerGone(id, pid: nil)) }
            return
        case .starting, .ready:
            break
        }
        guard let pid = w.pid else { return impossible("retire", w) }
        let stop = spec(of: w)?.stop ?? StopPolicy()
        let kill = stop.timeout == .zero || stop.signal == .kill
        modifyWorker(id) {
            $0.stopReason = reason
            $0.state = kill ? .killing : .stopping(killAt: now + stop.timeout)
        }
        if kill {
            signal(pid, .kill, group: true)
        } else {
            signal(pid, stop.signal, group: false)
            // A stopped (SIGSTOP) process would never see the signal.
            if stop.signal != .cont { signal(pid, .cont, group: false) }
        }
    }

    mutating func retireSlot(_ name: String, _ k: Int, reason: StopReason, now: Instant) {
        guard let slot = slot(name, k) else { return }
        for id in [slot.incoming, slot.current].compactMap({ $0 }) { retire(id, reason: reason, now: now) }
    }

    mutating func retireAll(_ name: String, reason: StopReason, now: Instant) {
        guard let count = apps[name]?.slots.count else { return }
        for k in 0..<count {
            modifySlot(name, k) { $0.restartAt = nil }
            retireSlot(name, k, reason: reason, now: now)
        }
    }

    mutating func restartAll(_ name: String, reason: StopReason, now: Instant) {
        modifyApp(name) { $0.goal = .running }
        guard let count = apps[name]?.slots.count else { return }
        for k in 0..<count where slot(name, k)?.removing == false {
            retireSlot(name, k, reason: reason, now: now)
            modifySlot(name, k) {
                $0.backoff.healthy()
                $0.restartAt = now
            }
        }
    }

    mutating func stopApp(_ name: String, goal: AppGoal, reason: String, now: Instant) {
        cancelReload(name, reason: reason, now: now)
        modifyApp(name) { $0.goal = goal }
        retireAll(name, reason: .stop, now: now)
        note(.notice, "\(name): \(reason)")
    }

    mutating func memorySample(_ w: Worker, bytes: Int64, now: Instant) {
        guard let spec = spec(of: w), let limit = spec.memoryLimit, bytes > limit,
              slot(w.app, w.slot)?.current == w.id else { return }
        // A ready worker is replaced start-first (Supervisor+Health.swift); one still starting serves nothing yet.
        if w.isReady { return memoryRecycle(w, bytes: bytes, limit: limit, now: now) }
        retire(w.id, reason: .memory, now: now)
        // Through the backoff: a worker over its ceiling from the start must not be replaced in a tight loop.
        slotLost(w.app, w.slot, worker: w, cause: "uses \(bytes >> 20) MiB, above its \(limit >> 20) MiB ceiling", restartable: true, now: now)
    }

    mutating func readinessTimedOut(_ id: WorkerID, now: Instant) {
        guard let w = workers[id], let spec = spec(of: w), let slot = slot(w.app, w.slot) else { return }
        let name = w.app
        let k = w.slot
        let wasIncoming = slot.incoming == id
        let wasCurrent = slot.current == id
        retire(id, reason: .readyTimeout, now: now)
        let cause = "was not ready within \(spec.ready.timeout.humanReadable) (ready mode \(spec.ready.mode.rawValue))"
        let seq = nextFailure()
        modifySlot(name, k) {
            $0.startFailures += 1
            $0.lastStartFailure = seq
        }
        if wasIncoming {
            rollBack(name, reason: "new worker in slot \(k) (pid \(w.pid ?? 0)) \(cause)", slot: k, pid: w.pid, now: now)
        } else if wasCurrent {
            slotLost(name, k, worker: w, cause: cause, restartable: spec.restart.mode != .never, now: now)
        }
    }

    mutating func watchdogExpired(_ id: WorkerID, now: Instant) {
        guard let w = workers[id], let pid = w.pid, let spec = spec(of: w), let slot = slot(w.app, w.slot) else { return }
        let name = w.app
        let k = w.slot
        let wasCurrent = slot.current == id
        let wasIncoming = slot.incoming == id
        note(.error, "\(label(w)) sent no WATCHDOG=1 for \(spec.ready.watchdog?.humanReadable ?? "?"); killing it")
        modifySlot(name, k) {
            if $0.current == id { $0.current = nil }
            if $0.incoming == id { $0.incoming = nil }
            if !$0.retiring.contains(id) { $0.retiring.append(id) }
        }
        // SIGABRT first, as systemd does, so a hung worker can dump core; SIGKILL follows at the stop timeout.
        modifyWorker(id) {
            $0.state = .stopping(killAt: now + spec.stop.timeout)
            $0.stopReason = .watchdog
        }
        signal(pid, .abrt, group: false)
        if wasCurrent {
            modifySlot(name, k) { $0.lastExit = .signaled(Signal.kill.number, coreDumped: false) }
            slotLost(name, k, worker: w, cause: "watchdog timeout", restartable: true, now: now)
        } else if wasIncoming {
            // A reload's new worker waiting out min_ready went silent: the new generation is not fit.
            rollBack(name, reason: "new worker in slot \(k) (pid \(pid)) watchdog timeout", slot: k, pid: pid, now: now)
        }
    }

    // MARK: - Bookkeeping

    mutating func removeReleasedSlots(_ name: String) {
        while let last = apps[name]?.slots.last, last.removing, last.liveWorkers.isEmpty {
            apps[name]?.slots.removeLast()
            unaccount(name, slot: last)
            out.append(.slotReleased(app: name, slot: last.index))
        }
    }

    mutating func removeAppIfDone(_ name: String) {
        guard let app = apps[name], app.goal == .deleted, (stats[name]?.workers ?? 0) == 0 else { return }
        for slot in app.slots {
            visit()
            deadlines.remove(.slot(SlotKey(app: name, index: slot.index)))
        }
        apps[name] = nil
        stats[name] = nil
        healthBook[name] = nil
        deadlines.remove(.app(name))
        steerDirty.remove(name)
        appOrder.removeAll { $0 == name }
        touchedApps.insert(name)
        out.append(.appRemoved(name))
        out.append(.appsChanged)
        note(.notice, "\(name): deleted")
    }

    /// Drops the specs of generations nothing refers to any more: counted, not walked.
    mutating func gcSpecs(_ name: String) {
        guard let app = apps[name], let st = stats[name] else { return }
        for g in app.specs.keys where g != app.generation && g != app.reload?.from && g != app.reload?.to
            && (st.slotsByGeneration[g] ?? 0) == 0 && (st.workersByGeneration[g] ?? 0) == 0 {
            apps[name]?.specs[g] = nil
        }
    }

    /// The next generation number, taken: one above every number given out
    /// before (and every spec still held), so a number names one config only.
    mutating func allocateGeneration(_ name: String) -> Int {
        guard let app = apps[name] else { return 1 }
        let next = max(app.generation, app.specs.keys.max() ?? 0, app.lastGeneration ?? 0) + 1
        modifyApp(name) { $0.lastGeneration = next }
        return next
    }
}
