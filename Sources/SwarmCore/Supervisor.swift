/// The supervisor's whole decision logic: events in, actions out.
///
/// `handle(_:now:)` is the only thing that changes state. It never reads a
/// clock, a pid table or a file: the shell feeds it what happened, and
/// performs the actions it returns, in order. Every wait (restart delay,
/// readiness, stop timeout, watchdog) is a deadline kept here, and the shell
/// is asked to wake the core at the earliest one with `.armTimer`.
public struct Supervisor: Sendable {
    public private(set) var apps: [String: App] = [:]
    /// Names in the order the apps were started: status lists them so.
    public private(set) var appOrder: [String] = []
    public private(set) var workers: [WorkerID: Worker] = [:]
    public private(set) var shuttingDown = false

    var byPid: [Int32: WorkerID] = [:]
    var nextWorker: UInt64 = 1
    var waiters: [Waiter] = []
    var shutdownRequests: [RequestID] = []
    var exitEmitted = false
    var armed: Instant?
    var out: [Action] = []

    /// How often a worker in "listening" readiness mode is probed.
    public var probeInterval: Duration = .milliseconds(20)
    /// How often a worker's memory is sampled when its app has a ceiling.
    public var memoryInterval: Duration = .milliseconds(500)
    /// The CPUs `cpu_affinity` spreads slots over.
    public var allowedCPUs: [Int] = []
    /// Whether the shell can give a niced worker normal priority back.
    public var canRaisePriority = false
    var niced: Set<WorkerID> = []
    var steered: [String: [Int]] = [:]

    public init() {}

    public func worker(pid: Int32) -> Worker? {
        byPid[pid].flatMap { workers[$0] }
    }

    public var isIdle: Bool { workers.isEmpty }

    public mutating func handle(_ event: Event, now: Instant) -> [Action] {
        out = []
        switch event {
        case let .command(request, command):
            handle(command, request: request, now: now)
        case let .spawned(id, pid):
            spawned(id, pid: pid, now: now)
        case let .spawnFailed(id, reason):
            if let worker = workers[id] {
                workers[id] = nil
                niced.remove(id)
                out.append(.workerGone(id, pid: nil))
                lost(worker, status: .spawnFailed(reason), now: now)
            }
        case let .exited(pid, status):
            exited(pid: pid, status: status, now: now)
        case let .ready(pid):
            if let id = byPid[pid] { markReady(id, now: now) }
        case let .status(pid, text):
            if let id = byPid[pid] { workers[id]?.status = String(text.prefix(200)) }
        case let .watchdogPing(pid):
            if let id = byPid[pid], let w = workers[id], let wd = spec(of: w)?.ready.watchdog, w.phase == .ready {
                workers[id]?.watchdogDeadline = now + wd
            }
        case let .stopping(pid):
            if let id = byPid[pid], let w = workers[id] {
                workers[id]?.status = "stopping"
                note(.info, "\(label(w)) says it is stopping")
            }
        case let .memory(pid, bytes):
            memorySample(pid: pid, bytes: bytes, now: now)
        case .tick:
            tick(now: now)
        }
        settleWaiters()
        finishShutdownIfDone()
        emitSteering()
        let next = nextDeadline()
        if next != armed {
            armed = next
            out.append(.armTimer(next))
        }
        let result = out
        out = []
        return result
    }

    // MARK: - Commands

    mutating func handle(_ command: Command, request: RequestID, now: Instant) {
        if shuttingDown {
            if case .shutdown = command { shutdownRequests.append(request) } else { reply(request, .failure(.shuttingDown)) }
            return
        }
        switch command {
        case let .start(spec, replace):
            start(spec, replace: replace, request: request, now: now)
        case let .add(spec):
            guard apps[spec.name] == nil else { return reply(request, .failure(.appExists(spec.name))) }
            var app = App(name: spec.name, specs: [1: spec], generation: 1, targetCount: spec.workers)
            app.goal = .stopped
            app.slots = (0..<spec.workers).map { Slot(index: $0, generation: 1) }
            apps[spec.name] = app
            appOrder.append(spec.name)
            reply(request, .success("\(spec.name): added, stopped"))
            out.append(.appsChanged)
        case let .stop(selector):
            guard let names = resolve(selector, request: request) else { return }
            for name in names { stopApp(name, goal: .stopped, reason: "stopped by request", now: now) }
            waiters.append(Waiter(request: request, verb: "stopped", apps: names, kind: .gone))
            out.append(.appsChanged)
        case let .delete(selector):
            guard let names = resolve(selector, request: request) else { return }
            for name in names { stopApp(name, goal: .deleted, reason: "deleted by request", now: now) }
            waiters.append(Waiter(request: request, verb: "deleted", apps: names, kind: .gone))
            for name in names { removeAppIfDone(name) }
            out.append(.appsChanged)
        case let .resume(selector):
            guard let names = resolve(selector, request: request) else { return }
            var baselines: [String: [Int: Int]] = [:]
            for name in names {
                baselines[name] = baseline(name)
                apps[name]!.goal = .running
                for i in apps[name]!.slots.indices where !apps[name]!.slots[i].removing {
                    apps[name]!.slots[i].backoff.healthy()
                    if apps[name]!.slots[i].current == nil { apps[name]!.slots[i].restartAt = now }
                }
            }
            waiters.append(Waiter(request: request, verb: "started", apps: names, kind: .settled(baselines)))
            out.append(.appsChanged)
        case let .restart(selector):
            guard let names = resolve(selector, request: request) else { return }
            if let busy = names.first(where: { apps[$0]?.reload != nil }) {
                return reply(request, .failure(.reloadInProgress(busy)))
            }
            var baselines: [String: [Int: Int]] = [:]
            for name in names {
                baselines[name] = baseline(name)
                restartAll(name, reason: .restart, now: now)
            }
            waiters.append(Waiter(request: request, verb: "restarted", apps: names, kind: .settled(baselines)))
            out.append(.appsChanged)
        case let .reload(items):
            reload(items.map(\.spec), request: request, now: now)
        case let .scale(name, count):
            scale(name, to: count, request: request, now: now)
        case let .scaleBy(name, delta):
            guard let app = apps[name], app.goal != .deleted else { return reply(request, .failure(.unknownApp(name))) }
            let (count, overflow) = app.targetCount.addingReportingOverflow(delta)
            guard !overflow, (0...AppSpec.maxWorkers).contains(count) else {
                let change = delta < 0 ? "remove \(delta.magnitude)" : "add \(delta)"
                return reply(request, .failure(.invalid(
                    "\(name) has \(workerCount(app.targetCount)): cannot \(change) (the count must stay between 0 and \(AppSpec.maxWorkers))")))
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
            note(.notice, "shutting down: stopping \(workerCount(workers.count))")
        }
    }

    mutating func resolve(_ selector: AppSelector, request: RequestID) -> [String]? {
        switch selector {
        case .all:
            return appOrder
        case let .app(name):
            guard apps[name] != nil, apps[name]!.goal != .deleted else {
                reply(request, .failure(.unknownApp(name)))
                return nil
            }
            return [name]
        }
    }

    mutating func start(_ spec: AppSpec, replace: Bool, request: RequestID, now: Instant) {
        let name = spec.name
        guard spec.workers >= 0 else { return reply(request, .failure(.invalid("workers must be >= 0"))) }
        if let existing = apps[name], existing.goal != .deleted {
            guard replace else { return reply(request, .failure(.appExists(name))) }
            cancelReload(name, reason: "replaced by a new start", now: now)
            let baselines = [name: baseline(name)]
            let generation = nextGeneration(name)
            apps[name]!.specs[generation] = spec
            apps[name]!.generation = generation
            apps[name]!.targetCount = spec.workers
            apps[name]!.goal = .running
            for i in apps[name]!.slots.indices {
                retireSlot(name, i, reason: .restart, now: now)
                apps[name]!.slots[i].generation = generation
                apps[name]!.slots[i].backoff.healthy()
                if i < spec.workers {
                    apps[name]!.slots[i].removing = false
                    apps[name]!.slots[i].restartAt = now
                } else {
                    apps[name]!.slots[i].removing = true
                    apps[name]!.slots[i].restartAt = nil
                }
            }
            for i in apps[name]!.slots.count..<max(spec.workers, apps[name]!.slots.count) {
                apps[name]!.slots.append(Slot(index: i, generation: generation))
                startWorker(name, slot: i, generation: generation, incoming: false, now: now)
            }
            removeReleasedSlots(name)
            note(.notice, "\(name): replaced with a new config, generation \(generation)")
            waiters.append(Waiter(request: request, verb: "started", apps: [name], kind: .settled(baselines)))
            gcSpecs(name)
            out.append(.appsChanged)
            return
        }
        if apps[name] != nil {
            // A deleted app still stopping: its name is not free yet.
            return reply(request, .failure(.invalid("app '\(name)' is still being deleted; try again when its workers are gone")))
        }
        var app = App(name: name, specs: [1: spec], generation: 1, targetCount: spec.workers)
        app.slots = (0..<spec.workers).map { Slot(index: $0, generation: 1) }
        apps[name] = app
        appOrder.append(name)
        for i in 0..<spec.workers { startWorker(name, slot: i, generation: 1, incoming: false, now: now) }
        note(.notice, "\(name): started with \(workerCount(spec.workers))")
        waiters.append(Waiter(request: request, verb: "started", apps: [name], kind: .settled([name: [:]])))
        out.append(.appsChanged)
    }

    mutating func scale(_ name: String, to count: Int, request: RequestID, now: Instant) {
        guard let app = apps[name], app.goal != .deleted else { return reply(request, .failure(.unknownApp(name))) }
        guard (0...AppSpec.maxWorkers).contains(count) else {
            return reply(request, .failure(.invalid("the worker count must be between 0 and \(AppSpec.maxWorkers), not \(count)")))
        }
        if app.reload != nil { return reply(request, .failure(.reloadInProgress(name))) }
        let baselines = [name: baseline(name)]
        apps[name]!.targetCount = count
        let running = app.goal == .running
        for i in apps[name]!.slots.indices {
            if i < count {
                if apps[name]!.slots[i].removing {
                    apps[name]!.slots[i].removing = false
                    if running && apps[name]!.slots[i].current == nil { apps[name]!.slots[i].restartAt = now }
                }
            } else if !apps[name]!.slots[i].removing {
                apps[name]!.slots[i].removing = true
                apps[name]!.slots[i].restartAt = nil
                retireSlot(name, i, reason: .scale, now: now)
            }
        }
        let generation = app.generation
        for i in apps[name]!.slots.count..<max(count, apps[name]!.slots.count) {
            apps[name]!.slots.append(Slot(index: i, generation: generation))
            if running { startWorker(name, slot: i, generation: generation, incoming: false, now: now) }
        }
        removeReleasedSlots(name)
        note(.notice, "\(name): scaled from \(app.targetCount) to \(workerCount(count))")
        if running {
            waiters.append(Waiter(request: request, verb: "scaled to \(workerCount(count))", apps: [name], kind: .settled(baselines)))
        } else {
            reply(request, .success("\(name): stopped; it will run \(workerCount(count)) when started"))
        }
        out.append(.appsChanged)
    }

    // MARK: - Reload

    mutating func reload(_ specs: [AppSpec], request: RequestID, now: Instant) {
        for spec in specs {
            guard let app = apps[spec.name], app.goal != .deleted else {
                return reply(request, .failure(.unknownApp(spec.name)))
            }
            if app.reload != nil { return reply(request, .failure(.reloadInProgress(spec.name))) }
        }
        var names: [String] = []
        for spec in specs {
            let name = spec.name
            let app = apps[name]!
            let to = nextGeneration(name)
            // A changed `workers` in the file wins; otherwise a `scale` done since stays.
            let target = spec.workers != app.spec.workers ? spec.workers : app.targetCount
            apps[name]!.specs[to] = spec
            if app.goal != .running {
                // Nothing runs: the new config simply takes effect for the next start.
                apps[name]!.generation = to
                apps[name]!.targetCount = target
                for i in apps[name]!.slots.indices {
                    apps[name]!.slots[i].generation = to
                    apps[name]!.slots[i].removing = i >= target
                    if i >= target { apps[name]!.slots[i].restartAt = nil }
                }
                for i in apps[name]!.slots.count..<max(target, apps[name]!.slots.count) {
                    apps[name]!.slots.append(Slot(index: i, generation: to))
                }
                removeReleasedSlots(name)
                gcSpecs(name)
                apps[name]!.lastReload = ReloadOutcome(succeeded: true, message: "config updated while stopped", at: now)
                continue
            }
            let surge = max(1, spec.reload.surge)
            apps[name]!.reload = RollingReload(from: app.generation, to: to, requester: request,
                                               targetCount: target, oldCount: app.slots.count, surge: surge)
            names.append(name)
            progress(request, ReloadEvent(app: name, kind: .begin, generation: to,
                                          message: "\(name): reloading \(app.slots.count) → \(target) workers, generation \(app.generation) → \(to), surge \(surge)"))
            note(.notice, "\(name): rolling reload to generation \(to) started")
        }
        if names.isEmpty {
            reply(request, .success(specs.map { "\($0.name): config updated (app is stopped)" }.joined(separator: "\n")))
            out.append(.appsChanged)
            return
        }
        waiters.append(Waiter(request: request, verb: "reloaded", apps: names, kind: .reload))
        for name in names { advanceReload(name, now: now) }
    }

    /// Starts as many new-generation workers as the surge allows, swaps ready
    /// ones in, culls surplus slots, and finishes the reload once only the
    /// new generation is left.
    mutating func advanceReload(_ name: String, now: Instant) {
        guard var r = apps[name]?.reload else { return }
        func inFlight() -> Int {
            apps[name]!.slots.filter { slot in
                if slot.incoming != nil { return true }
                if let c = slot.current, let w = workers[c] { return w.generation == r.to && w.phase != .ready }
                return false
            }.count
        }
        var flying = inFlight()
        while flying < r.surge && r.nextSlot < r.targetCount {
            let k = r.nextSlot
            r.nextSlot += 1
            if k >= apps[name]!.slots.count {
                apps[name]!.slots.append(Slot(index: k, generation: r.to))
                startWorker(name, slot: k, generation: r.to, incoming: false, now: now)
            } else if let c = apps[name]!.slots[k].current, workers[c]?.generation == r.to {
                continue
            } else if apps[name]!.slots[k].current == nil {
                apps[name]!.slots[k].generation = r.to
                startWorker(name, slot: k, generation: r.to, incoming: false, now: now)
            } else {
                startWorker(name, slot: k, generation: r.to, incoming: true, now: now)
            }
            flying += 1
        }
        apps[name]!.reload = r
        guard r.nextSlot >= r.targetCount else { return }
        let allNew = apps[name]!.slots.prefix(r.targetCount).allSatisfy { slot in
            slot.incoming == nil && slot.current.flatMap { workers[$0] }.map { $0.generation == r.to && $0.phase == .ready } == true
        }
        guard allNew else { return }
        if !r.culling {
            r.culling = true
            apps[name]!.reload = r
            for i in apps[name]!.slots.indices where i >= r.targetCount {
                apps[name]!.slots[i].removing = true
                apps[name]!.slots[i].restartAt = nil
                retireSlot(name, i, reason: .reload, now: now)
            }
            removeReleasedSlots(name)
        }
        let oldLeft = apps[name]!.slots.contains { slot in
            slot.liveWorkers.contains { workers[$0]?.generation != r.to }
        }
        guard !oldLeft, apps[name]!.slots.count == r.targetCount else { return }
        apps[name]!.reload = nil
        apps[name]!.generation = r.to
        apps[name]!.targetCount = r.targetCount
        gcSpecs(name)
        let message = "\(name): reloaded \(workerCount(r.targetCount)) to generation \(r.to)"
        apps[name]!.lastReload = ReloadOutcome(succeeded: true, message: message, at: now)
        note(.notice, message)
        if let req = r.requester {
            progress(req, ReloadEvent(app: name, kind: .done, generation: r.to, message: message))
            recordReload(req, app: name, result: .success(message))
        }
        out.append(.appsChanged)
    }

    /// A new-generation worker failed: stop the new generation and put the
    /// old one back in every slot it had.
    mutating func rollBack(_ name: String, reason: String, slot: Int?, pid: Int32?, now: Instant) {
        guard let r = apps[name]?.reload else { return }
        apps[name]!.reload = nil
        for k in apps[name]!.slots.indices {
            if let inc = apps[name]!.slots[k].incoming {
                apps[name]!.slots[k].incoming = nil
                retire(inc, reason: .rollback, now: now)
            }
            if let c = apps[name]!.slots[k].current, workers[c]?.generation == r.to {
                apps[name]!.slots[k].current = nil
                retire(c, reason: .rollback, now: now)
            }
            apps[name]!.slots[k].generation = r.from
            if k < r.oldCount {
                apps[name]!.slots[k].removing = false
                if apps[name]!.slots[k].current == nil && apps[name]!.slots[k].restartAt == nil {
                    apps[name]!.slots[k].restartAt = now
                }
            } else {
                apps[name]!.slots[k].removing = true
                apps[name]!.slots[k].restartAt = nil
            }
        }
        removeReleasedSlots(name)
        let message = "\(name): reload to generation \(r.to) failed: \(reason); rolled back to generation \(r.from)"
        apps[name]!.lastReload = ReloadOutcome(succeeded: false, message: message, at: now)
        note(.error, message)
        if let req = r.requester {
            progress(req, ReloadEvent(app: name, kind: .failed, slot: slot, pid: pid, generation: r.to, message: reason))
            progress(req, ReloadEvent(app: name, kind: .rolledBack, generation: r.from, message: message))
            recordReload(req, app: name, result: .failure(.reloadFailed(app: name, reason: reason, slot: slot, pid: pid)))
        }
    }

    mutating func cancelReload(_ name: String, reason: String, now: Instant) {
        guard let r = apps[name]?.reload else { return }
        apps[name]!.reload = nil
        for k in apps[name]!.slots.indices {
            apps[name]!.slots[k].generation = r.from
            // Slots the reload added or culled go back to what the old generation had.
            apps[name]!.slots[k].removing = k >= r.oldCount
            if k >= r.oldCount { apps[name]!.slots[k].restartAt = nil }
        }
        removeReleasedSlots(name)
        let message = "\(name): reload to generation \(r.to) cancelled: \(reason)"
        apps[name]!.lastReload = ReloadOutcome(succeeded: false, message: message, at: now)
        note(.warning, message)
        if let req = r.requester {
            recordReload(req, app: name, result: .failure(.interrupted(message)))
        }
    }

    mutating func recordReload(_ request: RequestID, app: String, result: Result<String, CommandError>) {
        guard let i = waiters.firstIndex(where: { $0.request == request }) else { return }
        waiters[i].reloadResults[app] = result
    }

    // MARK: - Worker lifecycle

    mutating func startWorker(_ name: String, slot k: Int, generation: Int, incoming: Bool, now: Instant) {
        guard let spec = apps[name]?.specs[generation] else { preconditionFailure("no spec for \(name) generation \(generation)") }
        let id = WorkerID(nextWorker)
        nextWorker += 1
        workers[id] = Worker(id: id, app: name, slot: k, generation: generation, startedAt: now)
        if incoming {
            apps[name]!.slots[k].incoming = id
        } else {
            precondition(apps[name]!.slots[k].current == nil, "slot \(name)[\(k)] already has a current worker")
            apps[name]!.slots[k].current = id
            apps[name]!.slots[k].generation = generation
        }
        apps[name]!.slots[k].restartAt = nil
        var request = SpawnRequest(worker: id, app: name, slot: k, generation: generation, spec: spec,
                                   cpu: spec.cpuAffinity?.cpu(forSlot: k, allowed: allowedCPUs))
        if spec.reload.backgroundStart && canRaisePriority && apps[name]?.reload?.to == generation {
            request.nice = 19
            niced.insert(id)
        }
        out.append(.spawn(request))
    }

    mutating func spawned(_ id: WorkerID, pid: Int32, now: Instant) {
        guard var w = workers[id], w.pid == nil else {
            if workers[id] == nil {
                // Stopped before the shell answered: nobody wants this process.
                note(.info, "pid \(pid) was started for a worker no longer wanted; killing it")
                out.append(.signal(pid: pid, .kill, group: true))
            }
            return
        }
        let spec = spec(of: w)!
        w.pid = pid
        w.phase = .starting
        w.startedAt = now
        w.readyDeadline = now + spec.ready.timeout
        switch spec.ready.mode {
        case .delay: w.delayReadyAt = now + spec.ready.delay
        case .listening:
            if spec.sockets.isEmpty { w.delayReadyAt = now + spec.ready.delay } else { w.nextProbe = now }
        case .notify, .fd: break
        }
        if spec.memoryLimit != nil { w.nextMemorySample = now + memoryInterval }
        workers[id] = w
        byPid[pid] = id
        note(.info, "\(label(w)) started (generation \(w.generation))")
        if let r = apps[w.app]?.reload, w.generation == r.to, let req = r.requester {
            progress(req, ReloadEvent(app: w.app, kind: .spawned, slot: w.slot, pid: pid, generation: w.generation,
                                      message: "slot \(w.slot): started pid \(pid)"))
        }
        if spec.ready.mode == .delay && spec.ready.delay == .zero { markReady(id, now: now) }
    }

    mutating func markReady(_ id: WorkerID, now: Instant) {
        guard var w = workers[id], w.phase == .starting, let spec = spec(of: w) else { return }
        w.phase = .ready
        w.readyAt = now
        w.readyDeadline = nil
        w.delayReadyAt = nil
        w.nextProbe = nil
        w.healthyAt = now + spec.restart.resetAfter
        if let wd = spec.ready.watchdog { w.watchdogDeadline = now + wd }
        workers[id] = w
        if niced.remove(id) != nil, let pid = w.pid { out.append(.restorePriority(pid: pid)) }
        note(.info, "\(label(w)) ready after \((now - w.startedAt).humanReadable)")
        let name = w.app
        guard apps[name] != nil else { return }
        let k = w.slot
        // With [reload] min_ready the old worker keeps serving beside the new one until it is due.
        if apps[name]!.slots[k].incoming == id && spec.reload.minReady == .zero { swapIn(id, now: now) }
        if let r = apps[name]!.reload, w.generation == r.to, let req = r.requester {
            progress(req, ReloadEvent(app: name, kind: .ready, slot: k, pid: w.pid, generation: w.generation,
                                      message: "slot \(k): pid \(w.pid ?? 0) ready"
                                          + (spec.reload.minReady > .zero ? " (replaces the old worker after \(spec.reload.minReady.humanReadable))" : "")))
        }
        advanceReload(name, now: now)
    }

    /// When a reload's new worker, ready, may replace its slot's old one.
    func swapDue(_ w: Worker) -> Instant? {
        guard w.phase == .ready, let readyAt = w.readyAt, let app = apps[w.app], w.slot < app.slots.count,
              app.slots[w.slot].incoming == w.id, let spec = spec(of: w) else { return nil }
        return readyAt + spec.reload.minReady
    }

    /// The slot's incoming (ready) worker becomes current; the old one is stopped.
    mutating func swapIn(_ id: WorkerID, now: Instant) {
        guard let w = workers[id], let spec = spec(of: w), apps[w.app] != nil else { return }
        let name = w.app
        let k = w.slot
        if let old = apps[name]!.slots[k].current {
            if let req = apps[name]!.reload?.requester, let oldPid = workers[old]?.pid {
                progress(req, ReloadEvent(app: name, kind: .retiring, slot: k, pid: oldPid, generation: workers[old]!.generation,
                                          message: "slot \(k): retiring pid \(oldPid)"))
            }
            apps[name]!.slots[k].current = nil
            if spec.reload.handOver, let oldPid = workers[old]?.pid { out.append(.handOver(app: name, slot: k, from: oldPid)) }
            retire(old, reason: .reload, now: now)
        }
        apps[name]!.slots[k].incoming = nil
        apps[name]!.slots[k].current = id
        apps[name]!.slots[k].generation = w.generation
        apps[name]!.slots[k].restartAt = nil
    }

    mutating func exited(pid: Int32, status: ExitStatus, now: Instant) {
        guard let id = byPid.removeValue(forKey: pid), let w = workers.removeValue(forKey: id) else {
            note(.debug, "reaped pid \(pid) (\(status)), not a worker")
            return
        }
        // Whatever the worker left in its process group goes with it.
        out.append(.signal(pid: pid, .kill, group: true))
        niced.remove(id)
        out.append(.workerGone(id, pid: pid))
        lost(w, status: status, now: now)
    }

    /// A worker is gone (exited, or never started). Decide what its slot does next.
    mutating func lost(_ w: Worker, status: ExitStatus, now: Instant) {
        let name = w.app
        guard apps[name] != nil, w.slot < apps[name]!.slots.count else { return }
        let k = w.slot
        var slot = apps[name]!.slots[k]
        if let i = slot.retiring.firstIndex(of: w.id) {
            slot.retiring.remove(at: i)
            apps[name]!.slots[k] = slot
            note(.info, "\(label(w)) \(status) after being stopped (\(w.stopReason?.rawValue ?? "stop"))")
        } else if slot.incoming == w.id {
            slot.incoming = nil
            slot.startFailures += 1
            slot.lastExit = status
            apps[name]!.slots[k] = slot
            let when = w.readyAt.map { "\((now - $0).humanReadable) after it was ready (within [reload] min_ready)" } ?? "before it was ready"
            rollBack(name, reason: "new worker in slot \(k)\(w.pid.map { " (pid \($0))" } ?? "") \(status) \(when)",
                     slot: k, pid: w.pid, now: now)
        } else if slot.current == w.id {
            slot.current = nil
            slot.lastExit = status
            if w.readyAt == nil { slot.startFailures += 1 }
            apps[name]!.slots[k] = slot
            slotLost(name, k, worker: w, cause: status.description, restartable: policyRestarts(w, status), now: now)
        }
        removeReleasedSlots(name)
        gcSpecs(name)
        advanceReload(name, now: now)
        removeAppIfDone(name)
    }

    func policyRestarts(_ w: Worker, _ status: ExitStatus) -> Bool {
        guard let spec = spec(of: w) else { return false }
        switch spec.restart.mode {
        case .always: return true
        case .onFailure: return !status.isCleanExit
        case .never: return false
        }
    }

    /// The slot's current worker failed (exit, readiness timeout, watchdog).
    mutating func slotLost(_ name: String, _ k: Int, worker w: Worker, cause: String, restartable: Bool, now: Instant) {
        apps[name]!.slots[k].lastFailure = cause
        let app = apps[name]!
        if let r = app.reload, w.generation == r.to {
            rollBack(name, reason: "new worker in slot \(k)\(w.pid.map { " (pid \($0))" } ?? "") \(cause)", slot: k, pid: w.pid, now: now)
            return
        }
        guard app.goal == .running, !shuttingDown, !app.slots[k].removing else { return }
        guard restartable else {
            note(.warning, "\(label(w)) \(cause); not restarted (restart policy \(app.specs[w.generation]?.restart.mode.rawValue ?? "?"))")
            return
        }
        let policy = app.specs[w.generation]?.restart ?? app.spec.restart
        let wasLooping = apps[name]!.slots[k].backoff.inCrashLoop
        let delay = apps[name]!.slots[k].backoff.failure(at: now, uptime: now - w.startedAt, policy: policy)
        apps[name]!.slots[k].restarts += 1
        apps[name]!.slots[k].restartAt = now + delay
        note(.warning, "\(label(w)) \(cause); restarting in \(delay.humanReadable)")
        // No delay: start the replacement in this very batch rather than on the next timer.
        if delay <= .zero { startWorker(name, slot: k, generation: apps[name]!.slots[k].generation, incoming: false, now: now) }
        if apps[name]!.slots[k].backoff.inCrashLoop && !wasLooping {
            note(.error, "\(name)[\(k)] is in a crash loop (\(policy.crashLoopRestarts) failures within \(policy.crashLoopWindow.humanReadable)); retrying every \(policy.maxDelay.humanReadable)")
        }
    }

    /// Sends the stop signal and arms the kill deadline.
    mutating func retire(_ id: WorkerID, reason: StopReason, now: Instant) {
        guard var w = workers[id] else { return }
        let name = w.app
        let k = w.slot
        if apps[name] != nil && k < apps[name]!.slots.count {
            if apps[name]!.slots[k].current == id { apps[name]!.slots[k].current = nil }
            if apps[name]!.slots[k].incoming == id { apps[name]!.slots[k].incoming = nil }
            if !apps[name]!.slots[k].retiring.contains(id) { apps[name]!.slots[k].retiring.append(id) }
        }
        guard !w.isRetiring else { return }
        guard let pid = w.pid else {
            // Never spawned: nothing to signal.
            workers[id] = nil
            niced.remove(id)
            out.append(.workerGone(id, pid: nil))
            if apps[name] != nil { apps[name]!.slots[k].retiring.removeAll { $0 == id } }
            return
        }
        let stop = spec(of: w)?.stop ?? StopPolicy()
        w.stopReason = reason
        w.readyDeadline = nil
        w.delayReadyAt = nil
        w.nextProbe = nil
        w.watchdogDeadline = nil
        w.healthyAt = nil
        w.nextMemorySample = nil
        if stop.timeout == .zero || stop.signal == .kill {
            w.phase = .killing
            out.append(.signal(pid: pid, .kill, group: true))
        } else {
            w.phase = .stopping
            w.killAt = now + stop.timeout
            out.append(.signal(pid: pid, stop.signal, group: false))
            // A stopped (SIGSTOP) process would never see the signal.
            if stop.signal != .cont { out.append(.signal(pid: pid, .cont, group: false)) }
        }
        workers[id] = w
    }

    mutating func retireSlot(_ name: String, _ k: Int, reason: StopReason, now: Instant) {
        let slot = apps[name]!.slots[k]
        for id in [slot.incoming, slot.current].compactMap({ $0 }) { retire(id, reason: reason, now: now) }
    }

    mutating func retireAll(_ name: String, reason: StopReason, now: Instant) {
        guard apps[name] != nil else { return }
        for k in apps[name]!.slots.indices {
            apps[name]!.slots[k].restartAt = nil
            retireSlot(name, k, reason: reason, now: now)
        }
    }

    mutating func restartAll(_ name: String, reason: StopReason, now: Instant) {
        apps[name]!.goal = .running
        for k in apps[name]!.slots.indices where !apps[name]!.slots[k].removing {
            retireSlot(name, k, reason: reason, now: now)
            apps[name]!.slots[k].backoff.healthy()
            apps[name]!.slots[k].restartAt = now
        }
    }

    mutating func stopApp(_ name: String, goal: AppGoal, reason: String, now: Instant) {
        cancelReload(name, reason: reason, now: now)
        apps[name]!.goal = goal
        retireAll(name, reason: .stop, now: now)
        note(.notice, "\(name): \(reason)")
    }

    mutating func memorySample(pid: Int32, bytes: Int64, now: Instant) {
        guard let id = byPid[pid], let w = workers[id], let spec = spec(of: w), let limit = spec.memoryLimit,
              bytes > limit, w.phase == .ready || w.phase == .starting else { return }
        let name = w.app
        guard apps[name]!.slots[w.slot].current == id else { return }
        retire(id, reason: .memory, now: now)
        // Through the backoff: a worker over its ceiling from the start must not be replaced in a tight loop.
        slotLost(name, w.slot, worker: w, cause: "uses \(bytes >> 20) MiB, above its \(limit >> 20) MiB ceiling", restartable: true, now: now)
    }

    // MARK: - Time

    mutating func tick(now: Instant) {
        for id in workers.keys.sorted() {
            guard let w = workers[id] else { continue }
            if let t = w.killAt, t <= now, w.phase == .stopping, let pid = w.pid {
                workers[id]!.phase = .killing
                workers[id]!.killAt = nil
                note(.warning, "\(label(w)) still running \(((spec(of: w)?.stop.timeout) ?? .zero).humanReadable) after its stop signal; sending SIGKILL")
                out.append(.signal(pid: pid, .kill, group: true))
                continue
            }
            if w.phase == .starting {
                if let t = w.delayReadyAt, t <= now {
                    markReady(id, now: now)
                    continue
                }
                if let t = w.readyDeadline, t <= now {
                    readinessTimedOut(id, now: now)
                    continue
                }
                if let t = w.nextProbe, t <= now, let pid = w.pid {
                    workers[id]!.nextProbe = now + probeInterval
                    out.append(.probeListening(id, pid: pid))
                }
            }
            if w.phase == .ready, let t = w.watchdogDeadline, t <= now {
                watchdogExpired(id, now: now)
                continue
            }
            if let t = swapDue(w), t <= now {
                swapIn(id, now: now)
                advanceReload(w.app, now: now)
            }
            if let t = w.healthyAt, t <= now {
                workers[id]!.healthyAt = nil
                if let app = apps[w.app], w.slot < app.slots.count, app.slots[w.slot].current == id {
                    apps[w.app]!.slots[w.slot].backoff.healthy()
                }
            }
            if let t = w.nextMemorySample, t <= now, let pid = w.pid {
                workers[id]!.nextMemorySample = now + memoryInterval
                out.append(.sampleMemory(pid: pid))
            }
        }
        for name in appOrder {
            guard let app = apps[name], app.goal == .running, !shuttingDown else { continue }
            for k in app.slots.indices {
                let slot = apps[name]!.slots[k]
                if let t = slot.restartAt, t <= now, slot.current == nil, !slot.removing {
                    startWorker(name, slot: k, generation: slot.generation, incoming: false, now: now)
                }
            }
        }
    }

    mutating func readinessTimedOut(_ id: WorkerID, now: Instant) {
        guard let w = workers[id], let spec = spec(of: w) else { return }
        let name = w.app
        let k = w.slot
        let wasIncoming = apps[name]!.slots[k].incoming == id
        let wasCurrent = apps[name]!.slots[k].current == id
        retire(id, reason: .readyTimeout, now: now)
        let cause = "was not ready within \(spec.ready.timeout.humanReadable) (ready mode \(spec.ready.mode.rawValue))"
        apps[name]!.slots[k].startFailures += 1
        if wasIncoming {
            rollBack(name, reason: "new worker in slot \(k) (pid \(w.pid ?? 0)) \(cause)", slot: k, pid: w.pid, now: now)
        } else if wasCurrent {
            slotLost(name, k, worker: w, cause: cause, restartable: spec.restart.mode != .never, now: now)
        }
    }

    mutating func watchdogExpired(_ id: WorkerID, now: Instant) {
        guard let w = workers[id], let pid = w.pid, let spec = spec(of: w) else { return }
        let name = w.app
        let k = w.slot
        let wasCurrent = apps[name]!.slots[k].current == id
        note(.error, "\(label(w)) sent no WATCHDOG=1 for \(spec.ready.watchdog?.humanReadable ?? "?"); killing it")
        if apps[name]!.slots[k].current == id { apps[name]!.slots[k].current = nil }
        apps[name]!.slots[k].retiring.append(id)
        // SIGABRT first, as systemd does, so a hung worker can dump core; SIGKILL follows at the stop timeout.
        workers[id]!.phase = .stopping
        workers[id]!.killAt = now + spec.stop.timeout
        workers[id]!.stopReason = .watchdog
        workers[id]!.watchdogDeadline = nil
        workers[id]!.healthyAt = nil
        workers[id]!.nextMemorySample = nil
        out.append(.signal(pid: pid, .abrt, group: false))
        if wasCurrent {
            apps[name]!.slots[k].lastExit = .signaled(Signal.kill.number, coreDumped: false)
            slotLost(name, k, worker: w, cause: "watchdog timeout", restartable: true, now: now)
        }
    }

    public func nextDeadline() -> Instant? {
        var next: Instant?
        func consider(_ t: Instant?) {
            if let t, next == nil || t < next! { next = t }
        }
        for w in workers.values {
            consider(w.killAt)
            if w.phase == .starting {
                consider(w.readyDeadline)
                consider(w.delayReadyAt)
                consider(w.nextProbe)
            }
            if w.phase == .ready {
                consider(w.watchdogDeadline)
                consider(swapDue(w))
            }
            consider(w.healthyAt)
            consider(w.nextMemorySample)
        }
        if !shuttingDown {
            for app in apps.values where app.goal == .running {
                for slot in app.slots where slot.current == nil && !slot.removing { consider(slot.restartAt) }
            }
        }
        return next
    }

    /// Interim: recomputes every app's steering set and places the changes
    /// before the batch's first signal.
    mutating func emitSteering() {
        var changes: [Action] = []
        for name in appOrder {
            guard let app = apps[name], app.specs.values.contains(where: { $0.sockets.contains { $0.effectiveBalance == .reuseport } }) else { continue }
            var ready = app.slots.filter { slot in
                !slot.removing && slot.current.flatMap { workers[$0] }?.phase == .ready
            }.map(\.index)
            if ready.isEmpty { ready = app.slots.filter { !$0.removing }.map(\.index) }
            if steered[name] != ready {
                steered[name] = ready
                changes.append(.steer(app: name, slots: ready))
            }
        }
        for name in steered.keys where apps[name] == nil { steered[name] = nil }
        guard !changes.isEmpty else { return }
        let at = out.firstIndex { if case .signal = $0 { return true }; return false } ?? out.count
        out.insert(contentsOf: changes, at: at)
    }

    /// How an app is doing, for status and systemd's STATUS=.
    public func health(of name: String) -> AppHealth? {
        guard let app = apps[name] else { return nil }
        let ready = app.slots.filter { $0.current.flatMap { workers[$0] }?.phase == .ready }.count
        let state: AppHealth.State
        if app.goal == .stopped { state = app.slots.contains { !$0.liveWorkers.isEmpty } ? .stopping : .stopped }
        else if app.goal == .deleted { state = .deleting }
        else if app.reload != nil { state = .reloading }
        else if app.slots.contains(where: { $0.backoff.inCrashLoop }) { state = .crashLoop }
        else if ready < app.targetCount { state = .degraded }
        else { state = .running }
        return AppHealth(state: state, ready: ready, wanted: app.targetCount)
    }

    public func displayState(of w: Worker, in slot: Slot) -> String {
        if slot.backoff.inCrashLoop && w.id == slot.current && w.phase != .ready { return "crash-loop" }
        return w.phase.rawValue
    }

    public func displayState(ofEmpty slot: Slot, in app: App) -> String {
        if app.goal != .running { return "stopped" }
        if slot.removing { return "removed" }
        if slot.restartAt != nil { return slot.backoff.inCrashLoop ? "crash-loop" : "backoff" }
        return "stopped"
    }

    public func startProblems(_ specs: [AppSpec], replace: Bool) -> [String] {
        var errors: [String] = []
        var seen = Set<String>()
        for s in specs where !seen.insert(s.name).inserted { errors.append("two config files define an app named '\(s.name)'") }
        if !replace {
            for spec in specs {
                if let app = apps[spec.name], app.goal != .deleted {
                    errors.append("\(spec.sourcePath): \(CommandError.appExists(spec.name).description)")
                }
            }
        }
        return errors
    }

    public func invariantViolations() -> [String] { [] }

    // MARK: - Bookkeeping

    mutating func removeReleasedSlots(_ name: String) {
        guard apps[name] != nil else { return }
        while let last = apps[name]!.slots.last, last.removing, last.liveWorkers.isEmpty {
            apps[name]!.slots.removeLast()
            out.append(.slotReleased(app: name, slot: last.index))
        }
    }

    mutating func removeAppIfDone(_ name: String) {
        guard let app = apps[name], app.goal == .deleted else { return }
        guard app.slots.allSatisfy({ $0.liveWorkers.isEmpty }) else { return }
        apps[name] = nil
        appOrder.removeAll { $0 == name }
        out.append(.appRemoved(name))
        out.append(.appsChanged)
        note(.notice, "\(name): deleted")
    }

    mutating func gcSpecs(_ name: String) {
        guard let app = apps[name] else { return }
        var keep: Set<Int> = [app.generation]
        if let r = app.reload { keep.insert(r.to); keep.insert(r.from) }
        for slot in app.slots {
            keep.insert(slot.generation)
            for id in slot.liveWorkers { if let g = workers[id]?.generation { keep.insert(g) } }
        }
        for g in app.specs.keys where !keep.contains(g) { apps[name]!.specs[g] = nil }
    }

    /// Above every generation that still has a spec, so a number is never
    /// reused while workers of an abandoned generation are stopping.
    func nextGeneration(_ name: String) -> Int {
        guard let app = apps[name] else { return 1 }
        return max(app.generation, app.specs.keys.max() ?? 0) + 1
    }

    public func spec(of w: Worker) -> AppSpec? { apps[w.app]?.specs[w.generation] }

    func baseline(_ name: String) -> [Int: Int] {
        var b: [Int: Int] = [:]
        for slot in apps[name]?.slots ?? [] { b[slot.index] = slot.startFailures }
        return b
    }

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

    mutating func finishShutdownIfDone() {
        guard shuttingDown, !exitEmitted, workers.isEmpty else { return }
        exitEmitted = true
        for r in shutdownRequests { reply(r, .success("swarmd stopped every worker")) }
        shutdownRequests = []
        out.append(.exit)
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
    }

    /// Why no snapshot can be taken now, or nil.
    public var busyReason: String? {
        if shuttingDown { return "swarmd is shutting down" }
        if let name = appOrder.first(where: { apps[$0]?.reload != nil }) { return "a reload of '\(name)' is in progress" }
        if !waiters.isEmpty { return "\(waiters.count) command(s) are still waiting for workers" }
        return nil
    }

    public func snapshot() -> Snapshot? {
        guard busyReason == nil else { return nil }
        return Snapshot(apps: apps, appOrder: appOrder, workers: workers, nextWorker: nextWorker)
    }

    public init(restoring s: Snapshot) {
        self.init()
        apps = s.apps
        appOrder = s.appOrder
        workers = s.workers
        nextWorker = s.nextWorker
        for (id, w) in workers { if let pid = w.pid { byPid[pid] = id } }
    }
}

/// "1 worker", "3 workers".
func workerCount(_ n: Int) -> String { n == 1 ? "1 worker" : "\(n) workers" }
