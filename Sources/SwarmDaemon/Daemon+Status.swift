import Glibc
import SwarmCore
import SwarmProtocol
import SwarmSystem

extension Daemon {
    func statusReport(only name: String?) throws -> StatusReport {
        let nowNS = Posix.monotonicNanoseconds()
        let now = Instant(nanoseconds: nowNS)
        var names = supervisor.appOrder
        if let name, name != "all" {
            guard supervisor.apps[name] != nil else { throw DaemonError.control(CommandError.unknownApp(name).description) }
            names = [name]
        }
        var apps: [AppStatus] = []
        for n in names {
            guard let app = supervisor.apps[n] else { continue }
            var workers: [WorkerStatus] = []
            var cpuTotals: [Int: Double] = [:]
            for slot in app.slots {
                var ids = [slot.current, slot.incoming].compactMap { $0 } + slot.retiring
                if ids.isEmpty {
                    let state: String
                    if app.goal != .running { state = "stopped" }
                    else if slot.removing { state = "removed" }
                    else if slot.restartAt != nil { state = slot.backoff.inCrashLoop ? "crash-loop" : "backoff" }
                    else { state = "stopped" }
                    workers.append(WorkerStatus(slot: slot.index, pid: nil, state: state, generation: slot.generation,
                                                restarts: slot.restarts, uptimeS: 0, lastExit: slot.lastExit?.description))
                    continue
                }
                ids.sort()
                for id in ids {
                    guard let w = supervisor.workers[id] else { continue }
                    var state = w.phase.rawValue
                    if slot.backoff.inCrashLoop && id == slot.current && w.phase != .ready { state = "crash-loop" }
                    var cpu: Double?
                    var rss: Int64?
                    var cpuSeconds: Double?
                    if let pid = w.pid {
                        let usage = ProcFS.usage(pid: pid)
                        rss = usage?.rss
                        if let ticks = usage?.cpuTicks {
                            cpuSeconds = Double(ticks) / Double(ProcFS.clockTicks)
                            if let prev = cpuSamples[pid], nowNS - prev.at > 50_000_000 {
                                cpu = Double(ticks - prev.ticks) / Double(ProcFS.clockTicks) / (Double(nowNS - prev.at) / 1e9) * 100
                            } else {
                                let up = max((now - w.startedAt).seconds, 0.001)
                                cpu = (cpuSeconds ?? 0) / up * 100
                            }
                            cpuSamples[pid] = (ticks, nowNS)
                        }
                    }
                    cpuTotals[workers.count] = cpuSeconds
                    workers.append(WorkerStatus(
                        slot: slot.index, pid: w.pid, state: state, generation: w.generation, restarts: slot.restarts,
                        uptimeS: ((now - w.startedAt).seconds * 1000).rounded() / 1000,
                        cpuPercent: cpu.map { ($0 * 10).rounded() / 10 }, rssBytes: rss, cpuSeconds: cpuSeconds,
                        statusText: w.status, lastExit: slot.lastExit?.description,
                        cpuPinned: w.pid == nil ? nil : supervisor.spec(of: w).flatMap { pinnedCPU($0, slot: w.slot) }))
                }
            }
            let total = cpuTotals.values.reduce(0, +)
            if total > 0 {
                for (i, secs) in cpuTotals { workers[i].cpuShare = ((secs / total) * 1000).rounded() / 1000 }
            }
            let ready = app.slots.filter { $0.current.flatMap { supervisor.workers[$0] }?.phase == .ready }.count
            let state: String
            if app.goal == .stopped { state = app.slots.contains { !$0.liveWorkers.isEmpty } ? "stopping" : "stopped" }
            else if app.goal == .deleted { state = "deleting" }
            else if app.reload != nil { state = "reloading" }
            else if app.slots.contains(where: { $0.backoff.inCrashLoop }) { state = "crash-loop" }
            else if ready < app.targetCount { state = "degraded" }
            else { state = "running" }
            let sockets = app.spec.sockets.map { s in
                SocketStatus(name: s.name, listen: s.listen.description,
                             balance: (appSockets[n]?.entries.first { $0.spec.name == s.name }?.reuseport ?? false) ? "reuseport" : "shared")
            }
            apps.append(AppStatus(
                name: n, state: state, config: app.spec.sourcePath, generation: app.generation, workersWanted: app.targetCount,
                workersReady: ready,
                lastReload: app.lastReload.map { ReloadStatus(ok: $0.succeeded, message: $0.message, ageS: ((now - $0.at).seconds * 10).rounded() / 10) },
                sockets: sockets, workers: workers))
            if let b = outputBudgets[n], b.throttledNS > 0 || b.pausedAt != nil {
                let open = b.pausedAt.map { nowNS - $0 } ?? 0
                apps[apps.count - 1].logThrottledS = (Double(b.throttledNS + open) / 1e8).rounded() / 10
            }
        }
        let daemon = DaemonStatus(pid: getpid(), version: swarmVersion, uptimeS: (Double(nowNS - startedAt) / 1e8).rounded() / 10,
                                  rssBytes: ProcFS.rss(pid: getpid()) ?? 0, socket: options.socketPath, stateDir: options.stateDir)
        return StatusReport(daemon: daemon, apps: apps)
    }
}
