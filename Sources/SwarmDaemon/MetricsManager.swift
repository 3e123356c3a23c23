import Glibc
import SwarmCore
import SwarmProtocol
import SwarmSystem

/// What a re-executed swarmd is handed for `--metrics`: the listening socket and the counters.
struct MetricsHandover: Codable {
    var fd: Int32
    var fromSystemd: Bool
    /// A unix socket swarmd bound itself (removed when swarmd stops for good).
    var unixPath: String?
    var counters: MetricsRecorder.Saved
}

/// The metrics part of the shell: the HTTP server, the counters the Manager
/// feeds, the event-loop lag probe, and the scrape being collected.
final class DaemonMetrics {
    let server: MetricsServer
    let recorder = MetricsRecorder()
    let fd: Int32
    let fromSystemd: Bool
    let unixPath: String?
    var lagTimer: EventLoop.Source?
    var lagProbe: EventLoop.Deferred?
    var lagTriggeredAt: Int64 = 0
    /// The scrape being collected: the workers to read, in order.
    var targets: [(app: Int, slot: Int, pid: Int32)] = []
    var samples: [[MetricsSnapshot.WorkerSample]] = []
    var next = 0
    var unread = 0
    var continuation: EventLoop.Deferred?
    var done: (([UInt8]) -> Void)?
    var startedAt: Int64 = 0
    var turns = 0
    /// CPU ticks and resident bytes of a worker process (tests replace it).
    lazy var readUsage: (Int32) -> (cpuTicks: Int64, rss: Int64)? = { [unowned self] pid in self.statReader.usage(pid: pid) }
    let statReader = ProcStatReader()

    /// /proc reads per loop turn while collecting a scrape: the rest wait for the next turn.
    static let readsPerTurn = 256

    init(server: MetricsServer, fd: Int32, fromSystemd: Bool, unixPath: String?) {
        self.server = server
        self.fd = fd
        self.fromSystemd = fromSystemd
        self.unixPath = unixPath
    }

    func stop(removeSocket: Bool) {
        server.stop()
        lagTimer?.cancel()
        lagProbe?.cancel()
        continuation?.cancel()
        Posix.close(fd)
        if removeSocket, let unixPath, !fromSystemd { _ = try? FileSystem.removeIfPresent(unixPath) }
    }
}

extension Manager: MetricsHandler {
    /// Opens (or adopts) the metrics socket when asked for: `--metrics`, or a
    /// socket systemd passed named "metrics".
    func setUpMetrics(handover: MetricsHandover?) throws {
        var fd: Int32
        var fromSystemd = false
        var unixPath: String?
        if let h = handover {
            guard options.metricsAddress != nil || h.fromSystemd else {
                // Re-executed without --metrics: the socket goes.
                Posix.close(h.fd)
                if let p = h.unixPath { _ = try? FileSystem.removeIfPresent(p) }
                return
            }
            (fd, fromSystemd, unixPath) = (h.fd, h.fromSystemd, h.unixPath)
        } else if let i = sockets.passedBySystemd.firstIndex(where: { $0.name == "metrics" }) {
            fd = sockets.passedBySystemd.remove(at: i).fd
            fromSystemd = true
            log.info("serving metrics on the socket systemd passed (fd \(fd))")
        } else if let address = options.metricsAddress {
            guard address.isLocal || options.metricsPublic else {
                throw MetricsAddressError("--metrics \(address): not a loopback address; metrics name every app and pid, so serving them beyond this host needs --metrics-public")
            }
            switch address {
            case let .tcp(host, port):
                do { fd = try Sockets.listenTCP(host: host, port: port, backlog: 128, reusePort: false) } catch {
                    throw MetricsAddressError("--metrics \(address): \(error)")
                }
            case let .unix(path):
                let absolute = (try? FileSystem.absolute(path)) ?? path
                do { fd = try Sockets.listenUnix(path: absolute, backlog: 128, mode: 0o660) } catch {
                    throw MetricsAddressError("--metrics \(address): \(error)")
                }
                unixPath = absolute
            }
            if !address.isLocal { log.warning("metrics are served on \(address), beyond this host (--metrics-public)") }
            log.notice("serving metrics on \(address): /metrics, /healthz, /readyz")
        } else {
            return
        }
        let server = MetricsServer(loop: loop, kernel: kernel)
        let m = DaemonMetrics(server: server, fd: fd, fromSystemd: fromSystemd, unixPath: unixPath)
        if let counters = handover?.counters { m.recorder.restore(counters) }
        server.handler = self
        server.report = { [weak self] level, text in self?.note(level, text) }
        try server.listen(on: fd)
        // Lag: how long a deferred source waits behind everything else pending, 4 times a second.
        m.lagProbe = loop.addDeferred { [weak m, weak self] in
            guard let m, let self else { return }
            m.recorder.observeLag(seconds: Double(self.kernel.now() - m.lagTriggeredAt) / 1e9)
        }
        m.lagTimer = try loop.addPeriodic(every: 250_000_000) { [weak m, weak self] in
            guard let m, let self, m.lagProbe?.isTriggered == false else { return }
            m.lagTriggeredAt = self.kernel.now()
            m.lagProbe?.trigger()
        }
        m.continuation = loop.addDeferred { [weak self] in self?.continueCollecting() }
        metrics = m
        for name in supervisor.appOrder { countLogLines(of: name) }
    }

    var metricsHandover: MetricsHandover? {
        guard let m = metrics else { return nil }
        return MetricsHandover(fd: m.fd, fromSystemd: m.fromSystemd, unixPath: m.unixPath, counters: m.recorder.saved)
    }

    /// Counts the bytes of every log line of `app` as its sink takes them.
    func countLogLines(of app: String) {
        guard let m = metrics else { return }
        let sink = output.sink(for: app)
        guard sink.followers[ObjectIdentifier(m)] == nil else { return }
        sink.followers[ObjectIdentifier(m)] = { [weak m] line in
            m?.recorder.countLog(app: line.app, stream: line.stream, bytes: line.text.utf8.count + 1)
        }
    }

    // MARK: - Scrapes

    func collectMetrics(_ done: @escaping ([UInt8]) -> Void) {
        guard let m = metrics else { return done([]) }
        m.targets = []
        m.samples = []
        for (i, name) in supervisor.appOrder.enumerated() {
            m.samples.append([])
            guard let app = supervisor.apps[name] else { continue }
            for slot in app.slots {
                for id in slot.liveWorkers {
                    if let pid = supervisor.workers[id]?.pid { m.targets.append((i, slot.index, pid)) }
                }
            }
        }
        m.next = 0
        m.unread = 0
        m.turns = 0
        m.startedAt = kernel.now()
        m.done = done
        continueCollecting()
    }

    /// Reads `readsPerTurn` workers' /proc entries, then lets the loop serve
    /// everything else before the next batch; renders once all are read.
    func continueCollecting() {
        guard let m = metrics, m.done != nil else { return }
        m.turns += 1
        let end = min(m.targets.count, m.next + DaemonMetrics.readsPerTurn)
        let ticks = Double(ProcFS.clockTicks)
        while m.next < end {
            let t = m.targets[m.next]
            m.next += 1
            guard let u = m.readUsage(t.pid) else {
                m.unread += 1
                continue
            }
            m.samples[t.app].append(MetricsSnapshot.WorkerSample(slot: t.slot, pid: t.pid, cpuSeconds: Double(u.cpuTicks) / ticks,
                                                                 residentBytes: u.rss))
        }
        if m.next < m.targets.count {
            m.continuation?.trigger()
            return
        }
        let done = m.done
        m.done = nil
        let rendering = kernel.now()
        let body = MetricsRender.render(metricsSnapshot(workers: m.samples, unread: m.unread), m.recorder)
        let now = kernel.now()
        log.debug("metrics: \(m.targets.count) workers read in \((rendering - m.startedAt) / 1000) µs (over \(m.turns) turns), \(body.count) bytes rendered in \((now - rendering) / 1000) µs")
        m.targets = []
        m.samples = []
        done?(body)
    }

    /// The app-level state now, from the core's queries (as `status` reads it).
    func metricsSnapshot(workers: [[MetricsSnapshot.WorkerSample]], unread: Int) -> MetricsSnapshot {
        var apps: [MetricsSnapshot.AppSample] = []
        for (i, name) in supervisor.appOrder.enumerated() {
            guard let app = supervisor.apps[name], let h = supervisor.health(of: name) else { continue }
            var byState: [String: Int] = [:]
            for slot in app.slots {
                let ids = slot.liveWorkers
                if ids.isEmpty {
                    byState[supervisor.displayState(ofEmpty: slot, in: app), default: 0] += 1
                }
                for id in ids {
                    if let w = supervisor.workers[id] { byState[supervisor.displayState(of: w, in: slot), default: 0] += 1 }
                }
            }
            health.readCounters(name)
            let throttled = output.budgets[name].map { b in Double(b.throttledNS + (b.pausedAt.map { kernel.now() - $0 } ?? 0)) / 1e9 }
            apps.append(MetricsSnapshot.AppSample(
                name: name, state: h.state.rawValue, ready: h.ready, desired: app.goal == .running ? h.wanted : 0,
                byState: byState, workers: i < workers.count ? workers[i] : [], throttledSeconds: throttled,
                connections: health.connectionTotals[name] ?? [:]))
        }
        for name in brokenOrder where supervisor.apps[name] == nil {
            guard let b = brokenApps[name] else { continue }
            apps.append(MetricsSnapshot.AppSample(name: name, state: "error", ready: 0, desired: b.remembered.workers ?? 0,
                                                  byState: [:], workers: [], throttledSeconds: nil))
        }
        return MetricsSnapshot(version: swarmVersion, apps: apps, process: DaemonMetrics.ownProcess(),
                               controlConnections: control.connectionCount,
                               metricsConnections: metrics?.server.connectionCount ?? 0, unreadWorkers: unread)
    }

    // MARK: - /readyz

    /// Ready: every app (or each app named) has its desired workers ready. An
    /// app the operator stopped wants none, so it does not hold the whole host
    /// back; named explicitly, it is not ready. An app whose config cannot be
    /// loaded (state error) is never ready, nor is a swarmd shutting down.
    func readiness(of names: [String]?) -> (ready: Bool, text: String) {
        if supervisor.shuttingDown { return (false, "not ready: swarmd is shutting down\n") }
        var problems: [String] = []
        let all = names == nil
        let list = names ?? (supervisor.appOrder + brokenOrder.filter { supervisor.apps[$0] == nil })
        for name in list {
            if let h = supervisor.health(of: name), let app = supervisor.apps[name] {
                if app.goal != .running {
                    if !all { problems.append("\(name) \(h.state.rawValue)") }
                } else if h.ready < h.wanted {
                    problems.append("\(name) \(h.ready)/\(h.wanted) ready (\(h.state.rawValue))")
                }
            } else if brokenApps[name] != nil {
                problems.append("\(name) error (its config cannot be loaded or its sockets bound)")
            } else {
                problems.append("\(name): no such app")
            }
        }
        if problems.isEmpty {
            let n = list.count
            return (true, "ready: \(n) app\(n == 1 ? "" : "s")\n")
        }
        return (false, "not ready: " + problems.joined(separator: ", ") + "\n")
    }
}

extension DaemonMetrics {
    static let bootTime: Double = {
        for line in readText("/proc/stat").split(separator: "\n") where line.hasPrefix("btime ") {
            return Double(line.dropFirst(6)) ?? 0
        }
        return 0
    }()

    static func readText(_ path: String) -> String {
        String(decoding: (try? Posix.readFile(path, limit: 1 << 20)) ?? [], as: UTF8.self)
    }

    /// swarmd's own process_* figures, from /proc/self.
    static func ownProcess() -> MetricsSnapshot.ProcessSample? {
        let stat = readText("/proc/self/stat")
        guard let close = stat.lastIndex(of: ")") else { return nil }
        let f = stat[stat.index(after: close)...].split(separator: " ")
        // f[0] is field 3 (state): utime 14, stime 15, starttime 22, vsize 23, rss 24.
        guard f.count > 21, let ut = Double(f[11]), let st = Double(f[12]), let start = Double(f[19]),
              let vsize = Int64(f[20]), let rss = Int64(f[21]) else { return nil }
        let ticks = Double(ProcFS.clockTicks)
        var limit = rlimit()
        getrlimit(__rlimit_resource_t(RLIMIT_NOFILE.rawValue), &limit)
        return MetricsSnapshot.ProcessSample(
            cpuSeconds: (ut + st) / ticks, residentBytes: rss * ProcFS.pageSize, virtualBytes: vsize,
            startTimeSeconds: bootTime + start / ticks, openFDs: ProcFS.listDirectory("/proc/self/fd").map { $0.count - 1 } ?? 0,
            maxFDs: Int64(clamping: limit.rlim_cur))
    }
}

/// /proc/PID/stat read into one reused buffer and parsed as bytes: a scrape
/// reads it for every worker, and the general-purpose file reader (a fresh
/// 64 KiB buffer, a String, a split into fields) cost several times the read.
final class ProcStatReader {
    private var buffer = [UInt8](repeating: 0, count: 2048)
    private let pageSize = Int64(sysconf(Int32(_SC_PAGESIZE)))

    /// utime + stime (field 14 + 15, clock ticks) and rss (field 24, pages → bytes).
    func usage(pid: Int32) -> (cpuTicks: Int64, rss: Int64)? {
        guard let fd = try? Posix.open("/proc/\(pid)/stat", O_RDONLY | O_CLOEXEC) else { return nil }
        defer { Posix.close(fd) }
        guard let n = try? buffer.withUnsafeMutableBytes({ try Posix.read(fd, into: $0) }), n > 0 else { return nil }
        return buffer.withUnsafeBufferPointer { ProcStatReader.parse(UnsafeBufferPointer(rebasing: $0[0..<n]), pageSize: pageSize) }
    }

    static func parse(_ b: UnsafeBufferPointer<UInt8>, pageSize: Int64) -> (cpuTicks: Int64, rss: Int64)? {
        // The command name (field 2) may hold spaces and parentheses: fields count from the last ')'.
        guard var i = b.lastIndex(of: UInt8(ascii: ")")) else { return nil }
        i += 1
        var field = 2
        var utime: Int64 = 0, stime: Int64 = 0, rss: Int64 = 0
        var value: Int64 = 0
        while i < b.count {
            let c = b[i]
            if c == 0x20 || c == 0x0a {
                switch field {
                case 14: utime = value
                case 15: stime = value
                case 24:
                    rss = value
                    return (utime + stime, rss * pageSize)
                default: break
                }
                field += 1
                value = 0
            } else if c >= 0x30 && c <= 0x39 {
                value = value &* 10 &+ Int64(c - 0x30)
            }
            i += 1
        }
        return nil
    }
}
