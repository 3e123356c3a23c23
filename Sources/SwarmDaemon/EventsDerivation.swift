import SwarmCore

/// One lifecycle event before it is numbered and stamped (`EventRecord`).
struct LifecycleDraft: Equatable {
    var kind: String
    var app: String
    var slot: Int?
    var pid: Int32?
    var generation: Int?
    var message: String
    var details: [String: String] = [:]
}

/// Derives lifecycle events from what the shell already does: the events it
/// feeds the core (`before`, `after`) and the actions it performs
/// (`performed`), read against the core's state. The one place they are
/// derived; nothing here decides anything (as `MetricsRecorder` counts, this
/// names). The core's state is read through its public queries only.
///
/// - exited, spawn-failed: the worker the event concerns, before the core forgets it.
/// - spawned, ready: the worker after the event (ready by delay is seen on a tick).
/// - restart-scheduled: a slot whose restart count rose after the loss of its
///   worker (an exit, a spawn failure, a stop for memory, watchdog or ready
///   timeout), with the delay the core chose.
/// - crash-loop-entered/left: the slot's backoff says so, checked where it can change.
/// - unhealthy, hung: a health event left a verdict on the slot's worker.
/// - replaced, recycled: swarmd stops a worker for that reason.
/// - reload-*: the core's reload progress.
/// - started, stopped, restarted, deleted, scaled: a command changed the app's goal or count.
final class EventDeriver {
    struct AppSlot: Hashable {
        var app: String
        var slot: Int
    }

    private(set) var drafts: [LifecycleDraft] = []

    private struct Candidate {
        var key: AppSlot
        var reason: String
        var pid: Int32?
        var generation: Int?
    }

    // Within one event's handling.
    private var candidates: [Candidate] = []
    private var spawnedSlots: Set<AppSlot> = []
    private var readyCheck: WorkerID?
    private var healthSlots: [AppSlot] = []
    private var commandApps: [(name: String, goal: AppGoal?, count: Int)] = []
    private var command: Command?
    private var wasShuttingDown = false
    private var restartedApps: [String] = []

    /// Across events.
    private var unready: Set<WorkerID> = []
    private var restartsSeen: [AppSlot: Int] = [:]
    private var looping: Set<AppSlot> = []
    private var verdictsSeen: Set<WorkerID> = []
    private var stopsSeen: Set<WorkerID> = []

    func take() -> [LifecycleDraft] {
        defer { drafts.removeAll(keepingCapacity: true) }
        return drafts
    }

    func add(_ d: LifecycleDraft) { drafts.append(d) }

    // MARK: - Feeding

    func before(_ event: Event, _ s: Supervisor) {
        switch event {
        case let .exited(pid, status):
            guard let w = s.worker(pid: pid) else { return }
            if case let .spawnFailed(reason) = status {
                // Its exec failed after the spawn returned (SpawnPlan.returnBeforeExec): the same event as one failed at once.
                add(LifecycleDraft(kind: "spawn-failed", app: w.app, slot: w.slot, pid: pid, generation: w.generation,
                                   message: reason, details: ["reason": reason]))
                return noteLoss(w, reason: "spawn-failed", s)
            }
            var d = LifecycleDraft(kind: "exited", app: w.app, slot: w.slot, pid: pid, generation: w.generation,
                                   message: status.description, details: EventDeriver.details(of: status))
            if let r = w.stopReason {
                d.details["stop_reason"] = r.rawValue
                d.message += " (stopped by swarmd: \(r.rawValue))"
                if EventDeriver.isPlanned(r) { d.details["expected"] = "true" }
            }
            add(d)
            noteLoss(w, reason: w.stopReason.flatMap(EventDeriver.lossLabel) ?? EventDeriver.lossLabel(status), s)
        case let .spawnFailed(id, reason):
            guard let w = s.workers[id] else { return }
            add(LifecycleDraft(kind: "spawn-failed", app: w.app, slot: w.slot, pid: nil, generation: w.generation,
                               message: reason, details: ["reason": reason]))
            noteLoss(w, reason: "spawn-failed", s)
        case let .ready(pid):
            if let w = s.worker(pid: pid), !w.isReady { readyCheck = w.id }
        case let .memory(pid, _):
            if let w = s.worker(pid: pid) { noteLoss(w, reason: "memory", s) }
        case let .health(h):
            switch h {
            case let .probeResults(outcomes):
                for o in outcomes { if let w = s.workers[o.worker] { healthSlots.append(AppSlot(app: w.app, slot: w.slot)) } }
            case let .acceptQueues(name, lengths):
                for k in lengths.keys.sorted() { healthSlots.append(AppSlot(app: name, slot: k)) }
            case let .connections(name, counts):
                for k in counts.keys.sorted() { healthSlots.append(AppSlot(app: name, slot: k)) }
            }
            for key in healthSlots where restartsSeen[key] == nil { restartsSeen[key] = slot(key, s)?.restarts }
        case let .command(_, c):
            command = c
            wasShuttingDown = s.shuttingDown
            for name in EventDeriver.apps(of: c, s) {
                commandApps.append((name, s.apps[name]?.goal, s.apps[name]?.targetCount ?? 0))
            }
        default:
            break
        }
    }

    func performed(_ action: Action, _ s: Supervisor) {
        switch action {
        case let .spawn(r):
            spawnedSlots.insert(AppSlot(app: r.app, slot: r.slot))
        case let .signal(pid, _, _):
            guard let w = s.worker(pid: pid), let reason = w.stopReason, stopsSeen.insert(w.id).inserted else { return }
            switch reason {
            case .unhealthy, .hung:
                add(LifecycleDraft(kind: "replaced", app: w.app, slot: w.slot, pid: pid, generation: w.generation,
                                   message: "stopping: its replacement is ready (\(reason.rawValue))", details: ["reason": reason.rawValue]))
            case .recycle:
                add(LifecycleDraft(kind: "recycled", app: w.app, slot: w.slot, pid: pid, generation: w.generation,
                                   message: "stopping: its replacement is ready (max_age)", details: ["reason": reason.rawValue]))
            case .restart:
                if !restartedApps.contains(w.app) { restartedApps.append(w.app) }
            case .memory, .watchdog, .readyTimeout:
                candidates.append(Candidate(key: AppSlot(app: w.app, slot: w.slot), reason: reason.rawValue, pid: pid, generation: w.generation))
            default:
                break
            }
        case let .workerGone(id, _):
            unready.remove(id)
            verdictsSeen.remove(id)
            stopsSeen.remove(id)
        case let .progress(_, e):
            let kind: String
            switch e.kind {
            case .begin: kind = "reload-started"
            case .done: kind = "reload-finished"
            case .rolledBack: kind = "reload-rolled-back"
            case .spawned, .ready, .retiring, .failed: kind = "reload-step"
            }
            var d = LifecycleDraft(kind: kind, app: e.app, slot: e.slot, pid: e.pid, generation: e.generation, message: e.message)
            if kind == "reload-step" { d.details["step"] = e.kind.rawValue }
            add(d)
        case let .appRemoved(name):
            restartsSeen = restartsSeen.filter { $0.key.app != name }
            looping = looping.filter { $0.app != name }
        default:
            break
        }
    }

    func after(_ event: Event, _ s: Supervisor, now: Instant) {
        switch event {
        case let .spawned(id, pid):
            if let w = s.workers[id] {
                unready.insert(id)
                let key = AppSlot(app: w.app, slot: w.slot)
                if restartsSeen[key] == nil { restartsSeen[key] = slot(key, s)?.restarts }
                add(LifecycleDraft(kind: "spawned", app: w.app, slot: w.slot, pid: pid, generation: w.generation,
                                   message: "spawned (generation \(w.generation))"))
                // Ready at once (ready.mode = delay with no delay).
                readyCheck = id
            }
        case .tick:
            for id in unready { checkReady(id, s) }
        default:
            break
        }
        if let id = readyCheck { checkReady(id, s) }
        readyCheck = nil

        for c in candidates {
            guard let slot = slot(c.key, s) else { continue }
            let seen = restartsSeen[c.key]
            restartsSeen[c.key] = slot.restarts
            // The core's decision, read off its effect: a restart counted, and due now or later.
            guard let seen, slot.restarts > seen, slot.restartAt != nil || spawnedSlots.contains(c.key) else { continue }
            let delay = slot.restartAt.map { max(0, ($0 - now).seconds) } ?? 0
            add(LifecycleDraft(kind: "restart-scheduled", app: c.key.app, slot: c.key.slot, pid: c.pid, generation: c.generation,
                               message: "restarting in \(EventDeriver.seconds(delay)) (\(c.reason))",
                               details: ["delay_s": EventDeriver.seconds(delay, unit: false), "reason": c.reason,
                                         "restarts": String(slot.restarts)]))
            enteredLoop(c.key, slot, s)
        }
        for key in healthSlots {
            guard let h = s.slotHealth(key.app, key.slot), let verdict = h.verdict else { continue }
            if let slot = slot(key, s) {
                restartsSeen[key] = slot.restarts
                enteredLoop(key, slot, s)
            }
            guard verdictsSeen.insert(h.worker).inserted else { continue }
            let w = s.workers[h.worker]
            let kind: String
            switch verdict {
            case .unhealthy: kind = "unhealthy"
            case .hung: kind = "hung"
            // Planned replacements: their "replaced" record says why.
            case .recycled, .memory: continue
            }
            add(LifecycleDraft(kind: kind, app: key.app, slot: key.slot, pid: w?.pid, generation: w?.generation,
                               message: "\(verdict.description): no new connections; replacing it", details: ["verdict": verdict.description]))
        }
        if !looping.isEmpty {
            // Sorted are only the slots that left: in a crash-loop storm every slot
            // loops, and sorting them all on every event cost a fifth of swarmd's CPU.
            var left: [(key: AppSlot, gone: Bool)] = []
            for key in looping {
                let slot = self.slot(key, s)
                if slot?.backoff.inCrashLoop != true { left.append((key, slot == nil)) }
            }
            for (key, gone) in left.sorted(by: { ($0.key.app, $0.key.slot) < ($1.key.app, $1.key.slot) }) {
                looping.remove(key)
                let why = gone ? "the slot is gone" : "a worker stayed up"
                add(LifecycleDraft(kind: "crash-loop-left", app: key.app, slot: key.slot, message: "out of the crash loop: \(why)"))
            }
        }
        if let c = command { commandEvents(c, s) }

        candidates.removeAll(keepingCapacity: true)
        spawnedSlots.removeAll(keepingCapacity: true)
        healthSlots.removeAll(keepingCapacity: true)
        commandApps.removeAll(keepingCapacity: true)
        restartedApps.removeAll(keepingCapacity: true)
        command = nil
    }

    // MARK: - Parts

    private func noteLoss(_ w: Worker, reason: String, _ s: Supervisor) {
        let key = AppSlot(app: w.app, slot: w.slot)
        // The count before the core handles the loss (also when the spawn was not seen: a re-exec).
        restartsSeen[key] = slot(key, s)?.restarts
        candidates.append(Candidate(key: key, reason: reason, pid: w.pid, generation: w.generation))
    }

    private func enteredLoop(_ key: AppSlot, _ slot: Slot, _ s: Supervisor) {
        guard slot.backoff.inCrashLoop, looping.insert(key).inserted else { return }
        let policy = s.apps[key.app]?.spec.restart ?? RestartPolicy()
        add(LifecycleDraft(kind: "crash-loop-entered", app: key.app, slot: key.slot,
                           message: "in a crash loop (\(policy.crashLoopRestarts) failures within \(policy.crashLoopWindow.humanReadable)); retrying every \(policy.maxDelay.humanReadable)",
                           details: ["failures": String(policy.crashLoopRestarts), "window_s": EventDeriver.seconds(policy.crashLoopWindow.seconds, unit: false),
                                     "retry_s": EventDeriver.seconds(policy.maxDelay.seconds, unit: false)]))
    }

    private func checkReady(_ id: WorkerID, _ s: Supervisor) {
        guard unready.contains(id), let w = s.workers[id], w.isReady else { return }
        unready.remove(id)
        let took = w.readyAt.map { max(0, ($0 - w.startedAt).seconds) }
        add(LifecycleDraft(kind: "ready", app: w.app, slot: w.slot, pid: w.pid, generation: w.generation,
                           message: "ready" + (took.map { " after \(EventDeriver.seconds($0))" } ?? ""),
                           details: took.map { ["ready_s": EventDeriver.seconds($0, unit: false)] } ?? [:]))
    }

    private func commandEvents(_ c: Command, _ s: Supervisor) {
        for (name, goalBefore, countBefore) in commandApps {
            let app = s.apps[name]
            let goal = app?.goal
            let gen = app?.generation
            switch c {
            case .start, .resume:
                if goal == .running, goalBefore != .running || isReplace(c) {
                    add(LifecycleDraft(kind: "started", app: name, generation: gen, message: "started (\(app?.targetCount ?? 0) worker\((app?.targetCount ?? 0) == 1 ? "" : "s"))"))
                }
            case .stop:
                if goalBefore == .running, goal == .stopped {
                    add(LifecycleDraft(kind: "stopped", app: name, generation: gen, message: "stopping every worker"))
                }
            case .delete:
                if goalBefore != nil, goalBefore != .deleted, goal == nil || goal == .deleted {
                    add(LifecycleDraft(kind: "deleted", app: name, generation: gen, message: "deleted"))
                }
            case .scale, .scaleBy:
                if let n = app?.targetCount, n != countBefore {
                    add(LifecycleDraft(kind: "scaled", app: name, generation: gen, message: "scaled from \(countBefore) to \(n)",
                                       details: ["from": String(countBefore), "to": String(n)]))
                }
            case .restart:
                if restartedApps.contains(name) {
                    add(LifecycleDraft(kind: "restarted", app: name, generation: gen, message: "replacing every worker at once"))
                }
            case .add, .reload, .rollback, .history, .shutdown:
                break
            }
        }
        if case .shutdown = c, !wasShuttingDown, s.shuttingDown {
            add(LifecycleDraft(kind: "shutdown", app: "", message: "swarmd is stopping every worker"))
        }
    }

    private func isReplace(_ c: Command) -> Bool {
        if case let .start(_, replace) = c { return replace }
        return false
    }

    private func slot(_ key: AppSlot, _ s: Supervisor) -> Slot? {
        guard let slots = s.apps[key.app]?.slots, key.slot < slots.count, slots[key.slot].index == key.slot else {
            return s.apps[key.app]?.slots.first { $0.index == key.slot }
        }
        return slots[key.slot]
    }

    static func apps(of c: Command, _ s: Supervisor) -> [String] {
        func names(_ sel: AppSelector) -> [String] {
            switch sel {
            case let .app(n): return [n]
            case .all: return s.appOrder
            }
        }
        switch c {
        case let .start(spec, _), let .add(spec): return [spec.name]
        case let .stop(sel), let .resume(sel), let .restart(sel), let .delete(sel): return names(sel)
        case let .scale(n, _), let .scaleBy(n, _): return [n]
        case .reload, .rollback, .history, .shutdown: return []
        }
    }

    static func details(of status: ExitStatus) -> [String: String] {
        switch status {
        case let .exited(code): return ["exit_status": "exited", "exit_code": String(code)]
        case let .signaled(sig, core):
            var d = ["exit_status": "signaled", "signal": Signal(sig).description, "signal_number": String(sig)]
            if core { d["core_dumped"] = "true" }
            return d
        case let .spawnFailed(msg): return ["exit_status": "spawn-failed", "reason": msg]
        }
    }

    /// How a worker was lost, as `restart-scheduled` says (the metrics' restart reasons).
    static func lossLabel(_ status: ExitStatus) -> String {
        switch status {
        case .signaled: return "signal"
        case let .exited(code): return code == 0 ? "exit" : "crash"
        case .spawnFailed: return "spawn-failed"
        }
    }

    /// An exit swarmd asked for as part of a command or a planned replacement: no failure
    /// (`on_exit` does not run for it). A stop for memory, the watchdog or a ready timeout is one.
    static func isPlanned(_ reason: StopReason) -> Bool {
        switch reason {
        case .stop, .restart, .reload, .scale, .rollback, .shutdown, .unhealthy, .hung, .recycle: return true
        case .memory, .watchdog, .readyTimeout: return false
        }
    }

    static func lossLabel(_ reason: StopReason) -> String? {
        switch reason {
        case .memory, .watchdog, .readyTimeout: return reason.rawValue
        default: return nil
        }
    }

    /// "0.1" (or "0.1s" with `unit`): milliseconds at most, trailing zeros trimmed.
    static func seconds(_ s: Double, unit: Bool = true) -> String {
        var text = String(Double((s * 1000).rounded()) / 1000)
        if text.hasSuffix(".0") { text.removeLast(2) }
        return unit ? text + "s" : text
    }
}
