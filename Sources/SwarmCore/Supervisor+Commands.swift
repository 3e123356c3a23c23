/// Control commands: start, add, stop, resume, restart, delete, scale, reload, shutdown.
extension Supervisor {
    mutating func handle(_ command: Command, request: RequestID, now: Instant) {
        if shuttingDown {
            if case .shutdown = command { shutdownRequests.append(request) } else { reply(request, .failure(.shuttingDown)) }
            return
        }
        switch command {
        case let .start(spec, replace):
            start(spec, replace: replace, request: request, now: now)
            generationBook.pending[spec.name] = nil
        case let .add(spec):
            defer { generationBook.pending[spec.name] = nil }
            guard apps[spec.name] == nil else { return reply(request, .failure(.appExists(spec.name))) }
            let first = firstGeneration(spec.name)
            var app = App(name: spec.name, specs: [first: spec], generation: first, targetCount: spec.workers)
            app.goal = .stopped
            apps[spec.name] = app
            appOrder.append(spec.name)
            stats[spec.name] = AppStats()
            for _ in 0..<spec.workers { appendSlot(spec.name, generation: first) }
            recordStart(spec.name, generation: first, now: now)
            reply(request, .success("\(spec.name): added, stopped"))
            out.append(.appsChanged)
        case let .stop(selector):
            guard let names = resolve(selector, request: request) else { return }
            for name in names { stopApp(name, goal: .stopped, reason: "stopped by request", now: now) }
            addWaiter(Waiter(request: request, verb: "stopped", apps: names, kind: .gone))
            out.append(.appsChanged)
        case let .delete(selector):
            guard let names = resolve(selector, request: request) else { return }
            for name in names { stopApp(name, goal: .deleted, reason: "deleted by request", now: now) }
            addWaiter(Waiter(request: request, verb: "deleted", apps: names, kind: .gone))
            for name in names { removeAppIfDone(name) }
            out.append(.appsChanged)
        case let .resume(selector):
            guard let names = resolve(selector, request: request) else { return }
            for name in names {
                modifyApp(name) { $0.goal = .running }
                resteer(name)
                for k in apps[name]?.slots.indices ?? 0..<0 where slot(name, k)?.removing == false {
                    modifySlot(name, k) {
                        $0.backoff.healthy()
                        if $0.current == nil { $0.restartAt = now }
                    }
                }
            }
            addWaiter(Waiter(request: request, verb: "started", apps: names, kind: .settled(since: failureSeq)))
            out.append(.appsChanged)
        case let .restart(selector):
            guard let names = resolve(selector, request: request) else { return }
            if let busy = names.first(where: { apps[$0]?.reload != nil }) {
                return reply(request, .failure(.reloadInProgress(busy)))
            }
            for name in names { restartAll(name, reason: .restart, now: now) }
            addWaiter(Waiter(request: request, verb: "restarted", apps: names, kind: .settled(since: failureSeq)))
            out.append(.appsChanged)
        case let .reload(requests):
            reload(requests, request: request, now: now)
        case let .rollback(name):
            rollback(name, request: request, now: now)
        case let .history(name, records, digest):
            restoreHistory(name, records: records, digest: digest, request: request)
        case let .scale(name, count):
            scale(name, to: count, request: request, now: now)
        case let .scaleBy(name, delta):
            guard let goal = apps[name]?.goal, goal != .deleted, let current = apps[name]?.targetCount else {
                return reply(request, .failure(.unknownApp(name)))
            }
            let (count, overflow) = current.addingReportingOverflow(delta)
            guard !overflow, (0...AppSpec.maxWorkers).contains(count) else {
                let change = delta < 0 ? "remove \(delta.magnitude)" : "add \(delta)"
                return reply(request, .failure(.invalid(
                    "\(name) has \(workerCount(current)): cannot \(change) (the count must stay between 0 and \(AppSpec.maxWorkers))")))
            }
            scale(name, to: count, request: request, now: now)
        case .shutdown:
            shuttingDown = true
            shutdownRequests.append(request)
            for name in appOrder {
                cancelReload(name, reason: "swarmd is shutting down", now: now)
                retireAll(name, reason: .shutdown, now: now)
            }
            for i in waiters.indices { waiters[i].interrupted = "swarmd is shutting down" }
            newWaiters = true
            note(.notice, "shutting down: stopping \(workerCount(workers.count))")
        }
    }

    mutating func resolve(_ selector: AppSelector, request: RequestID) -> [String]? {
        switch selector {
        case .all:
            return appOrder
        case let .app(name):
            guard let app = apps[name], app.goal != .deleted else {
                reply(request, .failure(.unknownApp(name)))
                return nil
            }
            return [name]
        }
    }

    /// What would make `start` of these specs fail before anything is bound or
    /// started, one line each: the shell asks before binding sockets.
    public func startProblems(_ specs: [AppSpec], replace: Bool) -> [String] {
        var problems: [String] = []
        var seen = Set<String>()
        var duplicates = Set<String>()
        for s in specs where !seen.insert(s.name).inserted {
            if duplicates.insert(s.name).inserted { problems.append("two config files define an app named '\(s.name)'") }
        }
        guard !replace else { return problems }
        for s in specs {
            if let app = apps[s.name], app.goal != .deleted {
                problems.append("\(s.sourcePath): \(CommandError.appExists(s.name).description)")
            }
        }
        return problems
    }

    mutating func start(_ spec: AppSpec, replace: Bool, request: RequestID, now: Instant) {
        let name = spec.name
        guard spec.workers >= 0 else { return reply(request, .failure(.invalid("workers must be >= 0"))) }
        if let existing = apps[name], existing.goal != .deleted {
            guard replace else { return reply(request, .failure(.appExists(name))) }
            cancelReload(name, reason: "replaced by a new start", now: now)
            let since = failureSeq
            let generation = allocateGeneration(name)
            modifyApp(name) {
                $0.specs[generation] = spec
                $0.generation = generation
                $0.targetCount = spec.workers
                $0.goal = .running
            }
            let count = apps[name]?.slots.count ?? 0
            for k in 0..<count {
                retireSlot(name, k, reason: .restart, now: now)
                modifySlot(name, k) {
                    $0.generation = generation
                    $0.backoff.healthy()
                    $0.removing = k >= spec.workers
                    $0.restartAt = k < spec.workers ? now : nil
                }
            }
            for k in count..<max(spec.workers, count) {
                appendSlot(name, generation: generation)
                startWorker(name, slot: k, generation: generation, incoming: false, now: now)
            }
            removeReleasedSlots(name)
            resteer(name)  // the shell bound new sockets
            recordStart(name, generation: generation, now: now)
            note(.notice, "\(name): replaced with a new config, generation \(generation)")
            addWaiter(Waiter(request: request, verb: "started", apps: [name], kind: .settled(since: since)))
            gcSpecs(name)
            out.append(.appsChanged)
            return
        }
        if apps[name] != nil {
            // A deleted app still stopping: its name is not free yet.
            return reply(request, .failure(.invalid("app '\(name)' is still being deleted; try again when its workers are gone")))
        }
        let first = firstGeneration(name)
        apps[name] = App(name: name, specs: [first: spec], generation: first, targetCount: spec.workers)
        appOrder.append(name)
        stats[name] = AppStats()
        recordStart(name, generation: first, now: now)
        let since = failureSeq
        for k in 0..<spec.workers {
            appendSlot(name, generation: first)
            startWorker(name, slot: k, generation: first, incoming: false, now: now)
        }
        resteer(name)
        note(.notice, "\(name): started with \(workerCount(spec.workers))")
        addWaiter(Waiter(request: request, verb: "started", apps: [name], kind: .settled(since: since)))
        out.append(.appsChanged)
    }

    mutating func scale(_ name: String, to count: Int, request: RequestID, now: Instant) {
        // Values, not the App: a copy alive across the changes below would copy every slot.
        guard let goal = apps[name]?.goal, goal != .deleted, let oldCount = apps[name]?.targetCount,
              let generation = apps[name]?.generation, let slots = apps[name]?.slots.count else {
            return reply(request, .failure(.unknownApp(name)))
        }
        guard (0...AppSpec.maxWorkers).contains(count) else {
            return reply(request, .failure(.invalid("the worker count must be between 0 and \(AppSpec.maxWorkers), not \(count)")))
        }
        if apps[name]?.reload != nil { return reply(request, .failure(.reloadInProgress(name))) }
        let since = failureSeq
        modifyApp(name) { $0.targetCount = count }
        let running = goal == .running
        // Only the slots whose fate changes: those coming back and those going away.
        for k in min(count, slots)..<slots {
            visit()
            guard let s = slot(name, k), !s.removing else { continue }
            modifySlot(name, k) {
                $0.removing = true
                $0.restartAt = nil
            }
        }
        for k in min(count, slots)..<slots where slot(name, k)?.removing == true { retireSlot(name, k, reason: .scale, now: now) }
        var k = min(count, slots) - 1
        while k >= 0, let s = slot(name, k), s.removing {
            modifySlot(name, k) {
                $0.removing = false
                if running && $0.current == nil { $0.restartAt = now }
            }
            k -= 1
        }
        for k in slots..<max(count, slots) {
            appendSlot(name, generation: generation)
            if running { startWorker(name, slot: k, generation: generation, incoming: false, now: now) }
        }
        removeReleasedSlots(name)
        note(.notice, "\(name): scaled from \(oldCount) to \(workerCount(count))")
        if running {
            addWaiter(Waiter(request: request, verb: "scaled to \(workerCount(count))", apps: [name], kind: .settled(since: since)))
        } else {
            reply(request, .success("\(name): stopped; it will run \(workerCount(count)) when started"))
        }
        out.append(.appsChanged)
    }
}
