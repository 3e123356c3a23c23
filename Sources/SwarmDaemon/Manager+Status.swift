import Glibc
import SwarmCore
import SwarmProtocol
import SwarmSystem

extension Manager {
    func statusReport(only name: String?) throws -> StatusReport {
        let nowNS = kernel.now()
        let now = Instant(nanoseconds: nowNS)
        var names = supervisor.appOrder + brokenOrder.filter { supervisor.apps[$0] == nil }
        if let name, name != "all" {
            guard supervisor.apps[name] != nil || brokenApps[name] != nil else { throw DaemonError.control(CommandError.unknownApp(name).description) }
            names = [name]
        }
        var apps: [AppStatus] = []
        for n in names {
            guard let app = supervisor.apps[n] else {
                if let broken = brokenApps[n] {
                    var a = AppStatus(name: n, state: "error", config: broken.remembered.config, generation: 0,
                                      workersWanted: broken.remembered.workers ?? 0, workersReady: 0, lastReload: nil, sockets: [], workers: [])
                    a.problem = broken.reason
                    apps.append(a)
                }
                continue
            }
            var workers: [WorkerStatus] = []
            var cpuTotals: [Int: Double] = [:]
            for slot in app.slots {
                var ids = [slot.current, slot.incoming].compactMap { $0 } + slot.retiring
                if ids.isEmpty {
                    workers.append(WorkerStatus(slot: slot.index, pid: nil, state: supervisor.displayState(ofEmpty: slot, in: app),
                                                generation: slot.generation, restarts: slot.restarts, uptimeS: 0,
                                                lastExit: slot.lastExit?.description))
                    continue
                }
                ids.sort()
                for id in ids {
                    guard let w = supervisor.workers[id] else { continue }
                    let state = supervisor.displayState(of: w, in: slot)
                    var cpu: Double?
                    var rss: Int64?
                    var cpuSeconds: Double?
                    if let pid = w.pid {
                        // The whole tree where there is a cgroup (a pre-fork server's children too).
                        let usage = cgroups.usage(ofPid: pid).map { u in
                            (cpuTicks: Int64(u.cpuMicroseconds) * Int64(ProcFS.clockTicks) / 1_000_000, rss: u.memoryBytes)
                        } ?? kernel.usage(pid: pid)
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
                        cpuPinned: w.pid == nil ? nil : supervisor.spec(of: w)?.cpuAffinity?.cpu(forSlot: w.slot, allowed: allowedCPUs)))
                }
            }
            let total = cpuTotals.values.reduce(0, +)
            if total > 0 {
                for (i, secs) in cpuTotals { workers[i].cpuShare = ((secs / total) * 1000).rounded() / 1000 }
            }
            guard let health = supervisor.health(of: n) else { continue }
            let sockets = app.spec.sockets.map { s in
                SocketStatus(name: s.name, listen: s.listen.description,
                             balance: (self.sockets[n]?.entries.first { $0.spec.name == s.name }?.reuseport ?? false) ? "reuseport" : "shared")
            }
            apps.append(AppStatus(
                name: n, state: health.state.rawValue, config: app.spec.sourcePath, generation: app.generation,
                workersWanted: health.wanted, workersReady: health.ready,
                lastReload: app.lastReload.map { ReloadStatus(ok: $0.succeeded, message: $0.message, ageS: ((now - $0.at).seconds * 10).rounded() / 10) },
                sockets: sockets, workers: workers))
            apps[apps.count - 1].logThrottledS = output.throttledSeconds(n)
            if drained.contains(n) { apps[apps.count - 1].drained = true }
            if let sink = output.sinks[n], sink.writeErrors > 0 {
                apps[apps.count - 1].logWriteErrors = sink.writeErrors
                apps[apps.count - 1].logWriteError = sink.lastError
            }
        }
        var daemon = DaemonStatus(pid: getpid(), version: swarmVersion, uptimeS: (Double(nowNS - startedAt) / 1e8).rounded() / 10,
                                  rssBytes: kernel.rss(pid: getpid()) ?? 0, socket: controlSocketPath, stateDir: options.stateDir)
        daemon.cgroups = cgroups.summary
        return StatusReport(daemon: daemon, apps: apps)
    }
}
