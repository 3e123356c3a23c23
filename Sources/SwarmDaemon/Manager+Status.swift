import Glibc
import SwarmCore
import SwarmProtocol
import SwarmSystem

extension Manager {
    /// One app's part of systemd's STATUS= line (nil: no such app any more).
    func systemdStatusPart(_ name: String) -> String? {
        guard let h = supervisor.health(of: name) else { return nil }
        if h.state == .stopped { return "\(name) stopped" }
        return "\(name) \(h.ready)/\(h.wanted) ready" + (h.state == .reloading ? " (reloading)" : "")
    }

    /// Answers `status`. Above `ControlProtocol.statusWorkersPerPart` workers the
    /// workers go out in `part` lines as they are built (each encoded on its
    /// own), and the result line carries the daemon and the apps without them:
    /// no line nears the protocol's limit and no copy of the whole report is held.
    func sendStatus(_ request: Request, to client: ControlClient, perPart: Int = ControlProtocol.statusWorkersPerPart) {
        let id = request.id
        do {
            // The parts and the result are one answer, queued as one: the client's
            // limit on unread replies applies behind it, not within it.
            var answer: [UInt8] = []
            let report = try statusReport(only: request.name, perPart: perPart) { app, workers in
                answer += Codec.encodeStatusPart(id: id, app: app, workers: workers)
            }
            var r = Response.success(id)
            r.status = report
            answer += Codec.encode(r)
            control.send(client, bytes: answer)
        } catch {
            control.send(client, .failure(id, "\(error)"))
        }
    }

    /// What one worker uses, read from its cgroup (or /proc) once per status.
    private struct Usage {
        var slot: Int
        var worker: WorkerID?
        var cpuSeconds: Double?
        var cpuPercent: Double?
        var rss: Int64?

        mutating func use(_ sample: UsageSample) {
            rss = sample.rss
            cpuSeconds = Double(sample.ticks) / Double(ProcFS.clockTicks)
            cpuPercent = sample.percent
        }
    }

    /// Reads one worker's figures (its whole tree where there is a cgroup: a
    /// pre-fork server's children too) and keeps them as its last sample.
    private func readUsage(_ u: inout Usage, pid: Int32, startedAt: Instant, now nowNS: Int64) {
        let usage = cgroups.usage(ofPid: pid).map { u in
            (cpuTicks: Int64(u.cpuMicroseconds) * Int64(ProcFS.clockTicks) / 1_000_000, rss: u.memoryBytes)
        } ?? kernel.usage(pid: pid)
        u.rss = usage?.rss
        guard let ticks = usage?.cpuTicks else { return }
        let secs = Double(ticks) / Double(ProcFS.clockTicks)
        u.cpuSeconds = secs
        if let prev = cpuSamples[pid], nowNS - prev.at > 50_000_000 {
            u.cpuPercent = Double(ticks - prev.ticks) / Double(ProcFS.clockTicks) / (Double(nowNS - prev.at) / 1e9) * 100
        } else {
            let up = max((Instant(nanoseconds: nowNS) - startedAt).seconds, 0.001)
            u.cpuPercent = secs / up * 100
        }
        cpuSamples[pid] = UsageSample(ticks: ticks, at: nowNS, rss: u.rss, percent: u.cpuPercent)
    }

    /// The status report. With `emit`, a report of more than
    /// `statusWorkersPerPart` workers is streamed: each app's workers are passed
    /// to `emit` in order, in pieces of at most that many, and left out of the
    /// returned report.
    func statusReport(only name: String?, perPart: Int = ControlProtocol.statusWorkersPerPart,
                      emit: ((String, [WorkerStatus]) -> Void)? = nil) throws -> StatusReport {
        let nowNS = kernel.now()
        let now = Instant(nanoseconds: nowNS)
        var names = supervisor.appOrder + brokenOrder.filter { supervisor.apps[$0] == nil }
        if let name, name != "all" {
            guard supervisor.apps[name] != nil || brokenApps[name] != nil else { throw DaemonError.control(CommandError.unknownApp(name).description) }
            names = [name]
        }
        let perPart = max(1, perPart)
        cgroups.beginUsageRound()
        var readBudget = UsageReadBudget(
            perApp: isReplacingWorkers(now: nowNS) ? usageReadsWhileReplacing : usageReadsPerStatus, cursors: usageReadCursors)
        // Cursors of apps deleted since are dropped here (a few entries).
        defer { usageReadCursors = readBudget.cursors.filter { supervisor.apps[$0.key] != nil } }
        let streaming = emit != nil && names.reduce(0) { $0 + (supervisor.apps[$1]?.slots.count ?? 0) } > perPart
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
            guard let health = supervisor.health(of: n) else { continue }
            // Pass 1: the kernel reads (and the app's CPU total, which every worker's share needs).
            var usages: [Usage] = []
            usages.reserveCapacity(app.slots.count)
            var unread: [Int] = []  // into usages: workers without figures of the last usageMaxAge
            for slot in app.slots {
                if slot.current == nil && slot.incoming == nil && slot.retiring.isEmpty {
                    usages.append(Usage(slot: slot.index))
                    continue
                }
                var ids = slot.retiring
                if let c = slot.current { ids.append(c) }
                if let i = slot.incoming { ids.append(i) }
                if ids.count > 1 { ids.sort() }
                for wid in ids {
                    guard let w = supervisor.workers[wid] else { continue }
                    var u = Usage(slot: slot.index, worker: wid)
                    if let pid = w.pid {
                        if let recent = cpuSamples[pid], nowNS - recent.at < Manager.usageMaxAge {
                            // Read less than usageMaxAge ago: the same figures (and no file read).
                            u.use(recent)
                        } else {
                            unread.append(usages.count)
                        }
                    }
                    usages.append(u)
                }
            }
            let window = readBudget.window(app: n, unreadSlots: unread.map { usages[$0].slot })
            var read = 0
            for k in 0..<unread.count {
                // In window order, so that a read cut short by time leaves the cursor after the last one read.
                let i = unread[(window.start + k) % unread.count]
                guard let wid = usages[i].worker, let w = supervisor.workers[wid], let pid = w.pid else { continue }
                if k < window.count && (read == 0 || kernel.now() - nowNS < Manager.usageReadTime) {
                    readUsage(&usages[i], pid: pid, startedAt: w.startedAt, now: nowNS)
                    read = k + 1
                } else if let last = cpuSamples[pid] {
                    usages[i].use(last)  // older than usageMaxAge, read again by a later status
                }
            }
            if read < window.count { readBudget.stopped(app: n, before: usages[unread[(window.start + read) % unread.count]].slot) }
            // Shares of a total that leaves workers out would not sum to 1: none then.
            let cpuTotal = read < unread.count ? 0 : usages.reduce(0.0) { $0 + ($1.cpuSeconds ?? 0) }
            // Pass 2: the rows, handed out in parts when streaming.
            var affinities: [Int: CPUAffinity?] = [:]
            var workers: [WorkerStatus] = []
            workers.reserveCapacity(streaming ? min(perPart, usages.count) : usages.count)
            for u in usages {
                let slot = app.slots[u.slot]
                guard let wid = u.worker, let w = supervisor.workers[wid] else {
                    workers.append(WorkerStatus(slot: slot.index, pid: nil, state: supervisor.displayState(ofEmpty: slot, in: app),
                                                generation: slot.generation, restarts: slot.restarts, uptimeS: 0,
                                                lastExit: slot.lastExit?.description))
                    addHealth(&workers[workers.count - 1], app: n, slot: slot, worker: nil)
                    if streaming && workers.count == perPart { emit?(n, workers); workers.removeAll(keepingCapacity: true) }
                    continue
                }
                var pinned: Int?
                if w.pid != nil {
                    // Looked up once per generation, not once per worker (a spec is a large value).
                    let affinity: CPUAffinity?
                    if let known = affinities[w.generation] { affinity = known } else {
                        affinity = app.specs[w.generation]?.cpuAffinity
                        affinities[w.generation] = affinity
                    }
                    pinned = affinity?.cpu(forSlot: w.slot, allowed: allowedCPUs)
                }
                var row = WorkerStatus(
                    slot: slot.index, pid: w.pid, state: supervisor.displayState(of: w, in: slot), generation: w.generation, restarts: slot.restarts,
                    uptimeS: ((now - w.startedAt).seconds * 1000).rounded() / 1000,
                    cpuPercent: u.cpuPercent.map { ($0 * 10).rounded() / 10 }, rssBytes: u.rss, cpuSeconds: u.cpuSeconds,
                    statusText: w.status, lastExit: slot.lastExit?.description, cpuPinned: pinned)
                if cpuTotal > 0, let secs = u.cpuSeconds { row.cpuShare = ((secs / cpuTotal) * 1000).rounded() / 1000 }
                addHealth(&row, app: n, slot: slot, worker: wid)
                workers.append(row)
                if streaming && workers.count == perPart { emit?(n, workers); workers.removeAll(keepingCapacity: true) }
            }
            if streaming && !workers.isEmpty {
                emit?(n, workers)
                workers = []
            }
            let sockets = app.spec.sockets.map { s in
                SocketStatus(name: s.name, listen: s.listen.description,
                             balance: (self.sockets[n]?.entries.first { $0.spec.name == s.name }?.reuseport ?? false) ? "reuseport" : "shared")
            }
            var a = AppStatus(
                name: n, state: health.state.rawValue, config: app.spec.sourcePath, generation: app.generation,
                workersWanted: health.wanted, workersReady: health.ready,
                lastReload: app.lastReload.map { ReloadStatus(ok: $0.succeeded, message: $0.message, ageS: ((now - $0.at).seconds * 10).rounded() / 10) },
                sockets: sockets, workers: workers)
            a.logThrottledS = output.throttledSeconds(n)
            a.generations = generationStatus(app)
            a.command = SecretMask.arguments(app.spec.command)
            a.cwd = app.spec.cwd
            let logSink = output.sink(for: n)
            a.logPath = logSink.journal == nil ? logSink.path : "journal"
            if drained.contains(n) { a.drained = true }
            if let sink = output.sinks[n], sink.writeErrors > 0 {
                a.logWriteErrors = sink.writeErrors
                a.logWriteError = sink.lastError
            }
            apps.append(a)
        }
        var daemon = DaemonStatus(pid: getpid(), version: swarmVersion, uptimeS: (Double(nowNS - startedAt) / 1e8).rounded() / 10,
                                  rssBytes: kernel.rss(pid: getpid()) ?? 0, socket: controlSocketPath, stateDir: options.stateDir)
        daemon.cgroups = cgroups.summary
        return StatusReport(daemon: daemon, apps: apps)
    }
}

/// How many of an app's workers' usage files one `status` reads: at most
/// `Manager.usageReadsPerStatus`, and `usageReadsWhileReplacing` while swarmd
/// is replacing many workers (`Manager.isReplacingWorkers`: a kill -9 storm, a
/// big start or reload), when every worker is new and none of the
/// `usageMaxAge` reuse applies. On a host without the memory controller each
/// read is three files; the workers past the bound show the figures read last,
/// or none yet, and the app's next status goes on from the slot this one
/// stopped at, so every worker is read in turn. A status also stops reading
/// after `Manager.usageReadTime` (reads of workers just replaced are slower:
/// the kernel flushes their cgroup's statistics first). Reading all of 4,096 workers
/// took 75–100 ms of an idle status (10 ms with the figures reused), and
/// 80–100 ms more of one in a storm.
struct UsageReadBudget: Equatable {
    /// nil: no bound.
    var perApp: Int?
    /// Per app: the slot the next bounded status starts reading at.
    var cursors: [String: Int]

    /// The unread workers a status reads: `count` of them from position `start`, wrapping.
    struct Window: Equatable {
        var start: Int
        var count: Int

        func contains(_ k: Int, of total: Int) -> Bool {
            total > 0 && (k - start + total) % total < count
        }
    }

    /// The window's reads ended early (`Manager.usageReadTime`): the app's next
    /// status goes on from `slot`.
    mutating func stopped(app: String, before slot: Int) {
        cursors[app] = slot
    }

    /// The window into an app's unread workers (`unreadSlots`: their slots,
    /// ascending); moves the app's cursor past it.
    mutating func window(app: String, unreadSlots: [Int]) -> Window {
        let total = unreadSlots.count
        guard let bound = perApp else { return Window(start: 0, count: total) }
        let count = min(max(bound, 0), total)
        // From the cursor even when all are due: a status whose reads ran out of time left one.
        let from = cursors[app] ?? 0
        let start = unreadSlots.firstIndex { $0 >= from } ?? 0
        if count >= total {
            cursors[app] = nil
        } else if count > 0 {
            cursors[app] = unreadSlots[(start + count - 1) % total] + 1
        }
        return Window(start: total == 0 ? 0 : start, count: count)
    }
}
