/// Rolling reloads: generation `from` is replaced slot by slot with `to`,
/// `surge` new workers at a time, each swapped in once ready; any new worker
/// lost rolls every slot back. With `surge = 0` a slot's old worker is stopped
/// and gone before its new one starts (apps that hold something exclusive).
extension Supervisor {
    /// Every reason to refuse a reload, one line each; empty: it may go ahead.
    /// The same checks for SIGHUP, swarmctl and start-up.
    func reloadProblems(_ requests: [ReloadRequest]) -> [CommandError] {
        var problems: [CommandError] = []
        var seen = Set<String>()
        var duplicates = Set<String>()
        for r in requests {
            guard let app = apps[r.app], app.goal != .deleted else {
                problems.append(.unknownApp(r.app))
                continue
            }
            if !seen.insert(r.app).inserted {
                if duplicates.insert(r.app).inserted {
                    problems.append(.invalid("two config files define an app named '\(r.app)'"))
                }
                continue
            }
            let path = app.spec.sourcePath
            if r.spec.name != r.app {
                problems.append(.invalid("\(path): name: the file now names the app '\(r.spec.name)', not '\(r.app)'; use swarmctl start for a new app"))
            } else if r.spec.sockets != app.spec.sockets {
                problems.append(.invalid("\(path): socket: the sockets changed; a rolling reload keeps the listening sockets, so use 'swarmctl start --replace \(path)' to rebind"))
            }
            if app.reload != nil { problems.append(.reloadInProgress(r.app)) }
        }
        return problems
    }

    /// `restoring`: a `rollback` (one request) running generation `restoring`'s config again.
    mutating func reload(_ requests: [ReloadRequest], request: RequestID, now: Instant, restoring: Int? = nil) {
        let problems = reloadProblems(requests)
        if problems.count == 1 { return reply(request, .failure(problems[0])) }
        if !problems.isEmpty {
            return reply(request, .failure(.invalid(problems.map(\.description).joined(separator: "\n"))))
        }
        var names: [String] = []
        for req in requests {
            let spec = req.spec
            let name = spec.name
            guard let (goal, generation, slotCount, running) = reloadFacts(name) else { continue }
            let to = allocateGeneration(name)
            recordReloadBegan(name, digest: req.digest, restores: restoring, now: now)
            // A changed `workers` in the file wins; otherwise a `scale` done since stays.
            let target = spec.workers != running.workers ? spec.workers : (apps[name]?.targetCount ?? spec.workers)
            modifyApp(name) { $0.specs[to] = spec }
            if goal != .running {
                // Nothing runs: the new config simply takes effect for the next start.
                modifyApp(name) {
                    $0.generation = to
                    $0.targetCount = target
                }
                for k in 0..<slotCount {
                    modifySlot(name, k) {
                        $0.generation = to
                        $0.removing = k >= target
                        if k >= target { $0.restartAt = nil }
                    }
                }
                for _ in slotCount..<max(target, slotCount) { appendSlot(name, generation: to) }
                removeReleasedSlots(name)
                gcSpecs(name)
                modifyApp(name) { $0.lastReload = ReloadOutcome(succeeded: true, message: "config updated while stopped", at: now) }
                recordReloaded(name, from: generation, to: to, now: now)
                continue
            }
            cancelHealthReplacements(name, now: now)
            let surge = max(0, spec.reload.surge)
            modifyApp(name) {
                $0.reload = RollingReload(from: generation, to: to, requester: request,
                                          targetCount: target, oldCount: slotCount, surge: surge)
            }
            names.append(name)
            let how = surge == 0 ? "surge 0: each old worker stops before its replacement starts" : "surge \(surge)"
            let what = restoring.map { "rolling back to the config of generation \($0): " } ?? "reloading "
            progress(request, ReloadEvent(app: name, kind: .begin, generation: to,
                                          message: "\(name): \(what)\(slotCount) → \(target) workers, generation \(generation) → \(to), \(how)"))
            note(.notice, "\(name): rolling \(restoring == nil ? "reload" : "rollback") to generation \(to) started")
        }
        if names.isEmpty {
            let done = restoring.map { "rolled back to the config of generation \($0) (app is stopped)" } ?? "config updated (app is stopped)"
            reply(request, .success(requests.map { "\($0.spec.name): \(done)" }.joined(separator: "\n")))
            out.append(.appsChanged)
            return
        }
        addWaiter(Waiter(request: request, verb: "reloaded", apps: names, kind: .reload))
        for name in names { advanceReload(name, now: now) }
    }

    /// What a reload needs to know of the app, as values (no App copy alive while it changes).
    func reloadFacts(_ name: String) -> (AppGoal, Int, Int, AppSpec)? {
        guard let app = apps[name] else { return nil }
        return (app.goal, app.generation, app.slots.count, app.spec)
    }

    /// Starts as many new-generation workers as the surge allows, swaps ready
    /// ones in, culls surplus slots, and finishes the reload once only the
    /// new generation is left. Reads counters, never every slot.
    mutating func advanceReload(_ name: String, now: Instant) {
        guard var r = apps[name]?.reload else { return }
        if r.surge == 0 {
            guard advanceExclusive(name, &r, now: now) else { return }
        } else {
            var flying = inFlight(name, r)
            while flying < r.surge && r.nextSlot < r.targetCount {
                let k = r.nextSlot
                r.nextSlot += 1
                visit()
                guard let slot = slot(name, k) else {
                    appendSlot(name, generation: r.to)
                    startWorker(name, slot: k, generation: r.to, incoming: false, now: now)
                    flying += 1
                    continue
                }
                if let c = slot.current, workers[c]?.generation == r.to { continue }
                if slot.current == nil {
                    modifySlot(name, k) { $0.generation = r.to }
                    startWorker(name, slot: k, generation: r.to, incoming: false, now: now)
                } else {
                    startWorker(name, slot: k, generation: r.to, incoming: true, now: now)
                }
                flying += 1
            }
            modifyApp(name) { $0.reload = r }
        }
        guard r.nextSlot >= r.targetCount else { return }
        // Every slot below the target runs a ready worker of the new generation.
        guard (stats[name]?.readyByGeneration[r.to] ?? 0) >= r.targetCount else { return }
        if !r.culling {
            r.culling = true
            modifyApp(name) { $0.reload = r }
            let count = apps[name]?.slots.count ?? 0
            for k in r.targetCount..<max(count, r.targetCount) {
                modifySlot(name, k) {
                    $0.removing = true
                    $0.restartAt = nil
                }
            }
            for k in r.targetCount..<max(count, r.targetCount) { retireSlot(name, k, reason: .reload, now: now) }
            removeReleasedSlots(name)
        }
        let workersLeft = stats[name]?.workers ?? 0
        guard workersLeft == (stats[name]?.workersByGeneration[r.to] ?? 0), apps[name]?.slots.count == r.targetCount else { return }
        modifyApp(name) {
            $0.reload = nil
            $0.generation = r.to
            $0.targetCount = r.targetCount
        }
        gcSpecs(name)
        let restored = generationBook.inFlight[name]?.restores
        let message = restored.map { "\(name): rolled back \(workerCount(r.targetCount)) to the config of generation \($0) (now generation \(r.to))" }
            ?? "\(name): reloaded \(workerCount(r.targetCount)) to generation \(r.to)"
        recordReloaded(name, from: r.from, to: r.to, now: now)
        modifyApp(name) { $0.lastReload = ReloadOutcome(succeeded: true, message: message, at: now) }
        note(.notice, message)
        if let req = r.requester {
            progress(req, ReloadEvent(app: name, kind: .done, generation: r.to, message: message))
            recordReload(req, app: name, result: .success(message))
        }
        out.append(.appsChanged)
    }

    /// New workers not yet ready: the incoming ones, and new-generation workers
    /// started in empty or added slots.
    func inFlight(_ name: String, _ r: RollingReload) -> Int {
        guard let st = stats[name] else { return 0 }
        return st.incoming + (st.startingByGeneration[r.to] ?? 0)
    }

    /// Surge 0, one slot at a time: stop the old worker, start the new one once
    /// the old is gone (the slot's restart waits for that), go on once it is ready.
    /// Returns whether every slot has been handed to the new generation.
    mutating func advanceExclusive(_ name: String, _ r: inout RollingReload, now: Instant) -> Bool {
        defer { modifyApp(name) { [r] in $0.reload = r } }
        if let k = r.exclusiveSlot {
            guard let c = slot(name, k)?.current, let w = workers[c], w.generation == r.to, w.isReady else { return false }
            r.exclusiveSlot = nil
        }
        while r.nextSlot < r.targetCount {
            let k = r.nextSlot
            r.nextSlot += 1
            visit()
            guard let slot = slot(name, k) else {
                appendSlot(name, generation: r.to)
                startWorker(name, slot: k, generation: r.to, incoming: false, now: now)
                r.exclusiveSlot = k
                return false
            }
            if let c = slot.current, workers[c]?.generation == r.to { continue }
            if let old = slot.current, let oldWorker = workers[old] {
                if let req = r.requester, let oldPid = oldWorker.pid {
                    progress(req, ReloadEvent(app: name, kind: .retiring, slot: k, pid: oldPid, generation: oldWorker.generation,
                                              message: "slot \(k): stopping pid \(oldPid) before its replacement starts (surge 0)"))
                }
                retire(old, reason: .reload, now: now)
            }
            modifySlot(name, k) {
                $0.generation = r.to
                $0.restartAt = now
            }
            if self.slot(name, k)?.retiring.isEmpty == true {
                startWorker(name, slot: k, generation: r.to, incoming: false, now: now)
            }
            r.exclusiveSlot = k
            return false
        }
        return true
    }

    /// A new-generation worker failed: stop the new generation and put the
    /// old one back in every slot it had.
    mutating func rollBack(_ name: String, reason: String, slot: Int?, pid: Int32?, now: Instant) {
        guard let r = apps[name]?.reload, let count = apps[name]?.slots.count else {
            return healthReplacementFailed(name, slot: slot, reason: reason, now: now)
        }
        modifyApp(name) { $0.reload = nil }
        for k in 0..<count {
            visit()
            guard let s = self.slot(name, k) else { continue }
            if let inc = s.incoming { retire(inc, reason: .rollback, now: now) }
            if let c = s.current, workers[c]?.generation == r.to { retire(c, reason: .rollback, now: now) }
            modifySlot(name, k) {
                $0.generation = r.from
                if k < r.oldCount {
                    $0.removing = false
                    if $0.current == nil && $0.restartAt == nil { $0.restartAt = now }
                } else {
                    $0.removing = true
                    $0.restartAt = nil
                }
            }
        }
        removeReleasedSlots(name)
        recordReloadFailed(name, to: r.to, now: now)
        let message = "\(name): reload to generation \(r.to) failed: \(reason); rolled back to generation \(r.from)"
        modifyApp(name) { $0.lastReload = ReloadOutcome(succeeded: false, message: message, at: now) }
        note(.error, message)
        if let req = r.requester {
            progress(req, ReloadEvent(app: name, kind: .failed, slot: slot, pid: pid, generation: r.to, message: reason))
            progress(req, ReloadEvent(app: name, kind: .rolledBack, generation: r.from, message: message))
            recordReload(req, app: name, result: .failure(.reloadFailed(app: name, reason: reason, slot: slot, pid: pid)))
        }
    }

    mutating func cancelReload(_ name: String, reason: String, now: Instant) {
        guard let r = apps[name]?.reload, let count = apps[name]?.slots.count else { return }
        modifyApp(name) { $0.reload = nil }
        for k in 0..<count {
            modifySlot(name, k) {
                $0.generation = r.from
                // Slots the reload added or culled go back to what the old generation had.
                $0.removing = k >= r.oldCount
                if k >= r.oldCount { $0.restartAt = nil }
            }
        }
        removeReleasedSlots(name)
        recordReloadFailed(name, to: r.to, now: now)
        let message = "\(name): reload to generation \(r.to) cancelled: \(reason)"
        modifyApp(name) { $0.lastReload = ReloadOutcome(succeeded: false, message: message, at: now) }
        note(.warning, message)
        if let req = r.requester {
            recordReload(req, app: name, result: .failure(.interrupted(message)))
        }
    }

    mutating func recordReload(_ request: RequestID, app: String, result: Result<String, CommandError>) {
        guard let i = waiters.firstIndex(where: { $0.request == request }) else { return }
        waiters[i].reloadResults[app] = result
    }
}
