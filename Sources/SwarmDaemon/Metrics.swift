import SwarmCore

/// The counters behind `/metrics`, kept by the shell as it feeds the core its
/// events and performs the actions the core returns. Nothing here decides
/// anything: the core decided to restart a slot, and this notices that it did.
///
/// A restart is counted when the core schedules one (at once or after a
/// backoff) for a slot whose current worker was lost; its reason is how the
/// worker was lost:
/// - `crash` (exited non-zero), `exit` (exited 0 under `restart = always`),
///   `signal` (killed by a signal swarmd did not send), `spawn-failed`;
/// - `memory`, `watchdog`, `ready-timeout`: swarmd stopped it for that reason
///   (seen on the `.signal` action that stops it).
/// A reload's new worker that fails rolls the reload back: that is a reload
/// outcome, not a restart.
final class MetricsRecorder {
    struct SlotReason: Hashable {
        var slot: Int
        var reason: String
    }

    struct AppSlot: Hashable {
        var app: String
        var slot: Int
    }

    private(set) var restarts: [String: [SlotReason: Int64]] = [:]
    /// By exit code ("0"…"255") or signal ("SIGKILL").
    private(set) var exits: [String: [String: Int64]] = [:]
    /// By outcome: succeeded, rolled-back, cancelled.
    private(set) var reloads: [String: [String: Int64]] = [:]
    private(set) var reloadDuration: [String: Histogram] = [:]
    /// Spawn to ready, per app.
    private(set) var readySeconds: [String: Histogram] = [:]
    /// Bytes of log lines, by stream (stdout, stderr).
    private(set) var logBytes: [String: [String: Int64]] = [:]
    private(set) var loopLag = Histogram(bounds: Histogram.lagBounds)

    // Within one event's handling.
    private var candidates: [(AppSlot, String)] = []
    private var spawnedSlots: Set<AppSlot> = []
    private var readyCheck: WorkerID?
    private var scanUnready = false

    /// Spawned, not yet seen ready: its spawn-to-ready time is observed once.
    private var unready: [WorkerID: String] = [:]
    /// Workers whose loss was already counted when swarmd stopped them.
    private var lossCounted: Set<WorkerID> = []
    private var reloadsRunning: [String: (since: Int64, request: RequestID)] = [:]

    /// Before the core handles `event`: what the event says about the worker it concerns.
    func before(_ event: Event, _ s: Supervisor) {
        switch event {
        case let .exited(pid, status):
            guard let w = s.worker(pid: pid) else { return }
            exits[w.app, default: [:]][MetricsRecorder.exitLabel(status), default: 0] += 1
            guard w.stopReason == nil, MetricsRecorder.isCurrent(w.id, app: w.app, slot: w.slot, s) else { return }
            let reason: String
            switch status {
            case .signaled: reason = "signal"
            case let .exited(code): reason = code == 0 ? "exit" : "crash"
            case .spawnFailed: reason = "spawn-failed"
            }
            candidates.append((AppSlot(app: w.app, slot: w.slot), reason))
        case let .spawnFailed(id, _):
            guard let w = s.workers[id], MetricsRecorder.isCurrent(id, app: w.app, slot: w.slot, s) else { return }
            candidates.append((AppSlot(app: w.app, slot: w.slot), "spawn-failed"))
        case let .ready(pid):
            readyCheck = s.worker(pid: pid)?.id
        case .tick:
            // Readiness by delay is decided on a tick.
            scanUnready = !unready.isEmpty
        default:
            break
        }
    }

    /// As the shell performs one of the core's actions (`now`: CLOCK_MONOTONIC ns).
    func performed(_ action: Action, _ s: Supervisor, now: Int64) {
        switch action {
        case let .spawn(r):
            spawnedSlots.insert(AppSlot(app: r.app, slot: r.slot))
        case let .signal(pid, _, _):
            guard let w = s.worker(pid: pid), let reason = MetricsRecorder.stopLabel(w.stopReason),
                  lossCounted.insert(w.id).inserted else { return }
            candidates.append((AppSlot(app: w.app, slot: w.slot), reason))
        case let .workerGone(id, _):
            unready[id] = nil
            lossCounted.remove(id)
        case let .progress(request, e):
            switch e.kind {
            case .begin:
                if reloadsRunning[e.app] != nil { finishReload(e.app, "cancelled", now: now) }
                reloadsRunning[e.app] = (now, request)
            case .done: finishReload(e.app, "succeeded", now: now)
            case .rolledBack: finishReload(e.app, "rolled-back", now: now)
            default: break
            }
        case let .reply(request, _):
            // Answered without done or rolled-back: stopped, deleted or replaced mid-way.
            for (app, r) in reloadsRunning where r.request == request { finishReload(app, "cancelled", now: now) }
        case let .appRemoved(name):
            forget(app: name)
        default:
            break
        }
    }

    /// After the core handled `event` and every action was performed.
    func after(_ event: Event, _ s: Supervisor) {
        if case let .spawned(id, _) = event, let w = s.workers[id] {
            unready[id] = w.app
            readyCheck = id
        }
        for (key, reason) in candidates {
            guard let slot = s.apps[key.app]?.slots.first(where: { $0.index == key.slot }) else { continue }
            // Restarted now, or a restart is due later (backoff): the core's decision, read off its effect.
            let scheduled = slot.current == nil && slot.restartAt != nil
            // A start-first replacement: the old worker is stopped once its successor took the slot.
            let replaced = slot.current != nil && MetricsRecorder.startFirstReasons.contains(reason)
            if spawnedSlots.contains(key) || scheduled || replaced {
                restarts[key.app, default: [:]][SlotReason(slot: key.slot, reason: reason), default: 0] += 1
            }
        }
        candidates.removeAll(keepingCapacity: true)
        spawnedSlots.removeAll(keepingCapacity: true)
        if let id = readyCheck { checkReady(id, s) }
        readyCheck = nil
        if scanUnready {
            scanUnready = false
            for id in Array(unready.keys) { checkReady(id, s) }
        }
    }

    private func checkReady(_ id: WorkerID, _ s: Supervisor) {
        guard let app = unready[id], let w = s.workers[id], w.isReady, let at = w.readyAt else { return }
        unready[id] = nil
        readySeconds[app, default: Histogram(bounds: Histogram.startBounds)].observe(max(0, (at - w.startedAt).seconds))
    }

    private func finishReload(_ app: String, _ outcome: String, now: Int64) {
        guard let r = reloadsRunning.removeValue(forKey: app) else { return }
        reloads[app, default: [:]][outcome, default: 0] += 1
        reloadDuration[app, default: Histogram(bounds: Histogram.startBounds)].observe(Double(now - r.since) / 1e9)
    }

    func countLog(app: String, stream: String, bytes: Int) {
        logBytes[app, default: [:]][stream, default: 0] += Int64(bytes)
    }

    func observeLag(seconds: Double) { loopLag.observe(seconds) }

    /// The app is gone: its series go with it.
    func forget(app: String) {
        restarts[app] = nil
        exits[app] = nil
        reloads[app] = nil
        reloadDuration[app] = nil
        readySeconds[app] = nil
        logBytes[app] = nil
        reloadsRunning[app] = nil
    }

    static func isCurrent(_ id: WorkerID, app: String, slot k: Int, _ s: Supervisor) -> Bool {
        guard let slots = s.apps[app]?.slots, k < slots.count, slots[k].index == k else { return false }
        return slots[k].current == id
    }

    static func exitLabel(_ status: ExitStatus) -> String {
        switch status {
        case let .exited(code): return String(code)
        case let .signaled(sig, _):
            let s = Signal(sig)
            return Signal.names.contains { $0.1 == s } ? s.description : "SIG\(sig)"
        case .spawnFailed: return "spawn-failed"
        }
    }

    /// Stop reasons of workers replaced start-first (Supervisor+Health.swift).
    static let startFirstReasons: Set<String> = ["unhealthy", "hung", "recycle", "memory"]

    static func stopLabel(_ reason: StopReason?) -> String? {
        switch reason {
        case .memory: return "memory"
        case .watchdog: return "watchdog"
        case .readyTimeout: return "ready-timeout"
        case .unhealthy: return "unhealthy"
        case .hung: return "hung"
        case .recycle: return "recycle"
        default: return nil
        }
    }

    /// What a re-executed swarmd keeps, so its counters do not drop to zero.
    struct Saved: Codable {
        var restarts: [String: [String: Int64]]
        var exits: [String: [String: Int64]]
        var reloads: [String: [String: Int64]]
        var reloadDuration: [String: Histogram]
        var readySeconds: [String: Histogram]
        var logBytes: [String: [String: Int64]]
    }

    var saved: Saved {
        Saved(restarts: restarts.mapValues { m in
                  Dictionary(m.map { ("\($0.key.slot) \($0.key.reason)", $0.value) }, uniquingKeysWith: +)
              },
              exits: exits, reloads: reloads, reloadDuration: reloadDuration, readySeconds: readySeconds, logBytes: logBytes)
    }

    func restore(_ s: Saved) {
        restarts = s.restarts.mapValues { m in
            var out: [SlotReason: Int64] = [:]
            for (key, n) in m {
                let parts = key.split(separator: " ", maxSplits: 1)
                guard parts.count == 2, let slot = Int(parts[0]) else { continue }
                out[SlotReason(slot: slot, reason: String(parts[1])), default: 0] += n
            }
            return out
        }
        exits = s.exits
        reloads = s.reloads
        reloadDuration = s.reloadDuration
        readySeconds = s.readySeconds
        logBytes = s.logBytes
    }
}

/// What one scrape shows: the counters above plus what was read at scrape
/// time (state from the core's queries, CPU and memory from /proc). Plain
/// values, so rendering is a pure function tests can call.
struct MetricsSnapshot {
    struct WorkerSample {
        var slot: Int
        var pid: Int32
        var cpuSeconds: Double
        var residentBytes: Int64
    }

    struct AppSample {
        var name: String
        /// running, degraded, crash-loop, reloading, stopping, stopped, deleting, error.
        var state: String
        var ready: Int
        var desired: Int
        /// Slots and workers by display state (as `status` shows them).
        var byState: [String: Int]
        var workers: [WorkerSample]
        var throttledSeconds: Double?
        /// New connections steered to each slot (eBPF counters), when counted.
        var connections: [Int: UInt64] = [:]
    }

    struct ProcessSample {
        var cpuSeconds: Double
        var residentBytes: Int64
        var virtualBytes: Int64
        var startTimeSeconds: Double
        var openFDs: Int
        var maxFDs: Int64
    }

    var version: String
    var apps: [AppSample]
    var process: ProcessSample?
    var controlConnections: Int
    var metricsConnections: Int
    /// Workers whose /proc entry could not be read (gone since the list was taken).
    var unreadWorkers: Int
}

/// Every state `status` can show for a slot or worker: each app gets a
/// sample for each, zero included, so a series does not vanish when it empties.
let workerDisplayStates = ["spawning", "starting", "ready", "stopping", "killing", "crash-loop", "backoff", "stopped", "removed"]
let appStates = ["running", "degraded", "crash-loop", "reloading", "stopping", "stopped", "deleting", "error"]

enum MetricsRender {
    static func render(_ snap: MetricsSnapshot, _ rec: MetricsRecorder) -> [UInt8] {
        let workerCount = snap.apps.reduce(0) { $0 + $1.workers.count }
        var t = MetricsText(capacity: 4096 + snap.apps.count * 2048 + workerCount * 200)
        t.family("swarm_build_info", .gauge, "swarmd's version (the value is always 1).")
        t.sample("swarm_build_info", [("version", snap.version)], 1)

        t.family("swarm_app_state", .gauge, "1 for the state each app is in now, 0 for the others.")
        for a in snap.apps {
            for s in appStates { t.sample("swarm_app_state", [("app", a.name), ("state", s)], a.state == s ? 1 : 0) }
        }
        t.family("swarm_workers", .gauge, "Slots and workers of each app by state, as swarmctl status shows them.")
        for a in snap.apps {
            for s in workerDisplayStates { t.sample("swarm_workers", [("app", a.name), ("state", s)], a.byState[s] ?? 0) }
        }
        t.family("swarm_workers_ready", .gauge, "Slots whose current worker is ready.")
        for a in snap.apps { t.sample("swarm_workers_ready", [("app", a.name)], a.ready) }
        t.family("swarm_workers_desired", .gauge, "Workers the app should have (0 while it is stopped).")
        for a in snap.apps { t.sample("swarm_workers_desired", [("app", a.name)], a.desired) }

        t.family("swarm_slot_connections_total", .counter, "New connections the eBPF steering program sent to each slot (root only).")
        for a in snap.apps {
            for (slot, n) in a.connections.sorted(by: { $0.key < $1.key }) {
                t.sample("swarm_slot_connections_total", [("app", a.name), ("slot", String(slot))], Int64(clamping: n))
            }
        }
        t.family("swarm_restarts_total", .counter, "Restarts swarmd scheduled for a slot after losing its worker, by reason.")
        for a in snap.apps {
            guard let m = rec.restarts[a.name] else { continue }
            for (k, n) in m.sorted(by: { ($0.key.slot, $0.key.reason) < ($1.key.slot, $1.key.reason) }) {
                t.sample("swarm_restarts_total", [("app", a.name), ("slot", String(k.slot)), ("reason", k.reason)], n)
            }
        }
        t.family("swarm_worker_exits_total", .counter, "Worker processes reaped, by exit code or signal.")
        for a in snap.apps {
            for (code, n) in (rec.exits[a.name] ?? [:]).sorted(by: { $0.key < $1.key }) {
                t.sample("swarm_worker_exits_total", [("app", a.name), ("code", code)], n)
            }
        }
        t.family("swarm_reloads_total", .counter, "Rolling reloads finished, by outcome (succeeded, rolled-back, cancelled).")
        for a in snap.apps {
            for (outcome, n) in (rec.reloads[a.name] ?? [:]).sorted(by: { $0.key < $1.key }) {
                t.sample("swarm_reloads_total", [("app", a.name), ("outcome", outcome)], n)
            }
        }
        t.family("swarm_reload_duration_seconds", .histogram, "Time from a rolling reload's start to its outcome.")
        for a in snap.apps {
            if let h = rec.reloadDuration[a.name] { t.histogram("swarm_reload_duration_seconds", [("app", a.name)], h) }
        }
        t.family("swarm_ready_seconds", .histogram, "Time from a worker's spawn to its readiness.")
        for a in snap.apps {
            if let h = rec.readySeconds[a.name] { t.histogram("swarm_ready_seconds", [("app", a.name)], h) }
        }

        t.family("swarm_worker_cpu_seconds_total", .counter, "CPU time (user + system) of each worker process, read from /proc at scrape time.")
        for a in snap.apps where !a.workers.isEmpty {
            let prefix = MetricsText.workerPrefix("swarm_worker_cpu_seconds_total", app: a.name)
            for w in a.workers { t.workerSample(prefix: prefix, slot: w.slot, pid: w.pid, integer: nil, seconds: w.cpuSeconds) }
        }
        t.family("swarm_worker_resident_bytes", .gauge, "Resident memory of each worker process, read from /proc at scrape time.")
        for a in snap.apps where !a.workers.isEmpty {
            let prefix = MetricsText.workerPrefix("swarm_worker_resident_bytes", app: a.name)
            for w in a.workers { t.workerSample(prefix: prefix, slot: w.slot, pid: w.pid, integer: w.residentBytes, seconds: 0) }
        }
        t.family("swarm_log_bytes_total", .counter, "Bytes of log lines read from the workers' output, by stream.")
        for a in snap.apps {
            for (stream, n) in (rec.logBytes[a.name] ?? [:]).sorted(by: { $0.key < $1.key }) {
                t.sample("swarm_log_bytes_total", [("app", a.name), ("stream", stream)], n)
            }
        }
        t.family("swarm_log_throttled_seconds_total", .counter, "Time swarmd paused reading an app's output to hold its [logs] rate.")
        for a in snap.apps {
            t.sample("swarm_log_throttled_seconds_total", [("app", a.name)], a.throttledSeconds ?? 0)
        }

        t.family("swarm_event_loop_lag_seconds", .histogram, "How long a deferred event waited for swarmd's loop (sampled 4 times a second).")
        t.histogram("swarm_event_loop_lag_seconds", [], rec.loopLag)
        t.family("swarm_control_connections", .gauge, "Open control socket connections.")
        t.sample("swarm_control_connections", [], snap.controlConnections)
        t.family("swarm_metrics_connections", .gauge, "Open connections to this metrics address.")
        t.sample("swarm_metrics_connections", [], snap.metricsConnections)
        t.family("swarm_metrics_unread_workers", .gauge, "Workers of this scrape whose /proc entry could not be read (gone meanwhile).")
        t.sample("swarm_metrics_unread_workers", [], snap.unreadWorkers)

        if let p = snap.process {
            t.family("process_cpu_seconds_total", .counter, "Total user and system CPU time spent in seconds.")
            t.sample("process_cpu_seconds_total", [], p.cpuSeconds)
            t.family("process_resident_memory_bytes", .gauge, "Resident memory size in bytes.")
            t.sample("process_resident_memory_bytes", [], p.residentBytes)
            t.family("process_virtual_memory_bytes", .gauge, "Virtual memory size in bytes.")
            t.sample("process_virtual_memory_bytes", [], p.virtualBytes)
            t.family("process_start_time_seconds", .gauge, "Start time of the process since unix epoch in seconds.")
            t.sample("process_start_time_seconds", [], p.startTimeSeconds)
            t.family("process_open_fds", .gauge, "Number of open file descriptors.")
            t.sample("process_open_fds", [], p.openFDs)
            t.family("process_max_fds", .gauge, "Maximum number of open file descriptors.")
            t.sample("process_max_fds", [], p.maxFDs)
        }
        return t.bytes
    }
}
