import Foundation
import Glibc
@testable import SwarmDaemon
import SwarmCore
import SwarmProtocol
import SwarmSystem
import Testing

@Suite("Status")
struct StatusTests {
    @Test func statusRendersEveryWorkerWithTheKernelsUsageNumbers() throws {
        let f = try ManagerFixture()
        let port = try Ports.free()
        let path = try f.config(workers: 2, port: port)
        let pids = try f.startReady(path, workers: 2)
        let ticks = ProcFS.clockTicks
        f.kernel.usageOf[pids[0]] = (cpuTicks: 1 * ticks, rss: 10 << 20)
        f.kernel.usageOf[pids[1]] = (cpuTicks: 3 * ticks, rss: 20 << 20)
        f.kernel.rssOf[getpid()] = 5 << 20
        f.kernel.advance(seconds: 10)

        let report = try f.manager.statusReport(only: nil)
        #expect(report.daemon.rssBytes == 5 << 20)
        #expect(report.daemon.uptimeS == 10)
        #expect(report.daemon.version == swarmVersion)
        #expect(report.daemon.socket == f.dir.path + "/swarmd.sock")
        let app = try #require(report.apps.first)
        #expect(report.apps.count == 1)
        #expect(app.name == "web")
        #expect(app.state == "running")
        #expect(app.config == path)
        #expect(app.workersWanted == 2 && app.workersReady == 2)
        #expect(app.sockets == [SocketStatus(name: "http", listen: "127.0.0.1:\(port)", balance: "reuseport")])
        #expect(app.logThrottledS == nil)
        #expect(app.workers.map(\.slot) == [0, 1])
        #expect(app.workers.map(\.pid) == pids)
        #expect(app.workers.map(\.state) == ["ready", "ready"])
        #expect(app.workers.map(\.rssBytes) == [10 << 20, 20 << 20])
        #expect(app.workers.map(\.cpuSeconds) == [1, 3])
        #expect(app.workers.map(\.uptimeS) == [10, 10])
        #expect(app.workers.map(\.cpuPercent) == [10, 30], "CPU over the worker's whole life before a first sample")
        #expect(app.workers.map(\.cpuShare) == [0.25, 0.75])
    }

    @Test func cpuPercentIsMeasuredSinceTheLastStatus() throws {
        let f = try ManagerFixture()
        let pid = try f.startReady(try f.config())[0]
        let ticks = ProcFS.clockTicks
        f.kernel.usageOf[pid] = (cpuTicks: 0, rss: 1)
        f.kernel.advance(seconds: 1)
        _ = try f.manager.statusReport(only: "web")
        f.kernel.usageOf[pid] = (cpuTicks: ticks, rss: 1)
        f.kernel.advance(seconds: 2)
        let w = try #require(try f.manager.statusReport(only: "web").apps.first?.workers.first)
        #expect(w.cpuPercent == 50, "1 s of CPU in 2 s")
    }

    @Test func anUnknownAppIsAnErrorAndAnExitedWorkersSlotShowsWhy() throws {
        let f = try ManagerFixture()
        #expect(throws: (any Error).self) { try f.manager.statusReport(only: "nope") }
        do { _ = try f.manager.statusReport(only: "nope") } catch { #expect("\(error)" == "no app named 'nope'") }

        let pid = try f.startReady(try f.config(restart: "always"))[0]
        f.exit(pid, code: 3)
        let app = try #require(try f.manager.statusReport(only: "web").apps.first)
        #expect(app.state == "degraded")
        #expect(app.workersReady == 0)
        let w = try #require(app.workers.first)
        #expect(w.pid == nil)
        #expect(w.state == "backoff")
        #expect(w.lastExit == "exited with status 3")
        #expect(w.restarts == 1)
    }

    @Test func throttledOutputShowsInTheAppsStatus() throws {
        let f = try ManagerFixture()
        let pid = try f.startReady(try f.config(logSettings: "rate = \"4KiB\""))[0]
        let process = try #require(f.kernel.processes[pid])
        try writeAll(process.stdout, String(repeating: String(repeating: "q", count: 99) + "\n", count: 50))
        try runLoop(f.loop, until: "the output budget is spent") { f.manager.output.budgets["web"]?.pausedAt != nil }
        f.kernel.advance(seconds: 0.7)
        let app = try #require(try f.manager.statusReport(only: "web").apps.first)
        #expect(app.logThrottledS == 0.7)
    }

    @Test func statusThroughTheControlSocketIsTheSameReport() throws {
        let f = try ManagerFixture()
        let pids = try f.startReady(try f.config(workers: 2), workers: 2)
        let r = try f.call { Request(id: $0, verb: .status) }
        #expect(r.ok == true)
        let app = try #require(r.status?.apps.first)
        #expect(app.workers.map(\.pid) == pids)
        #expect(r.status?.daemon.pid == getpid())
        let unprivileged = try f.client(uid: 65534, pid: 7)
        unprivileged.send(Request(id: 2, verb: .status, name: "web"))
        try runLoop(f.loop, until: "the unprivileged status", pump: { unprivileged.pump(); unprivileged.receive() }) {
            !unprivileged.responses.isEmpty
        }
        #expect(unprivileged.responses.first?.status?.apps.map(\.name) == ["web"], "status is read-only: anyone may ask")
    }

    /// Above `perPart` workers the report is streamed: parts of at most that
    /// many workers, in order, and the apps of the result without them; put
    /// back together it is the report built whole.
    @Test func aLargeStatusIsStreamedInPartsThatReassembleToTheWholeReport() throws {
        let f = try ManagerFixture()
        let pids = try f.startReady(try f.config(workers: 10), workers: 10)
        let whole = try f.manager.statusReport(only: nil)
        var parts: [StatusPart] = []
        let streamed = try f.manager.statusReport(only: nil, perPart: 4) { parts.append(StatusPart(app: $0, workers: $1)) }
        #expect(parts.map(\.workers.count) == [4, 4, 2])
        #expect(parts.allSatisfy { $0.app == "web" })
        #expect(streamed.apps.first?.workers.isEmpty == true, "the result holds no worker")
        var assembler = StatusAssembler()
        for p in parts {
            var r = Response(id: 1, kind: .part)
            r.part = p
            assembler.add(r)
        }
        let report = assembler.report(streamed)
        #expect(report.apps.first?.workers.map(\.pid) == pids)
        #expect(report.apps.first?.workers.map(\.slot) == Array(0..<10))
        #expect(report.apps.first?.workers == whole.apps.first?.workers)
        #expect(try f.manager.statusReport(only: nil, perPart: 10) { _, _ in Issue.record("10 workers fit one line") }.apps.first?.workers.count == 10)
    }

    /// A part of `statusWorkersPerPart` workers with the longest fields a worker
    /// can have stays within the protocol's line limit.
    @Test func aFullPartFitsInOneLine() {
        let w = WorkerStatus(slot: 4095, pid: 4_194_304, state: "crash-loop", generation: 1_000_000, restarts: 1_000_000, uptimeS: 1e9 + 0.123,
                             cpuPercent: 199.9, rssBytes: 1 << 40, cpuSeconds: 1e9 + 0.123, cpuShare: 0.123,
                             statusText: String(repeating: "\u{1}", count: 200), lastExit: "killed by signal 9 (SIGKILL), core dumped", cpuPinned: 1023)
        var r = Response(id: .max, kind: .part)
        r.part = StatusPart(app: String(repeating: "a", count: 64), workers: Array(repeating: w, count: ControlProtocol.statusWorkersPerPart))
        let size = Codec.encode(r).count
        #expect(size < ControlProtocol.maxMessageSize, "\(size) bytes")
    }

    /// A small status is one result line, as before.
    @Test func aSmallStatusIsOneLine() throws {
        let f = try ManagerFixture()
        try f.startReady(try f.config(workers: 3), workers: 3)
        let peer = try f.client()
        peer.send(Request(id: 9, verb: .status))
        try runLoop(f.loop, until: "the status", pump: { peer.pump(); peer.receive() }) {
            peer.responses.contains { $0.kind == .result }
        }
        #expect(peer.responses.map(\.kind) == [.result])
        #expect(peer.responses.first?.status?.apps.first?.workers.count == 3)
    }

    /// STATUS= is described again only for the apps the core says changed:
    /// an event of one app leaves the others' parts as they were.
    @Test func systemdStatusIsRecomputedOnlyForTheAppThatChanged() throws {
        let f = try ManagerFixture()
        let api = try f.startReady(try f.config("api"))
        try f.startReady(try f.config("web"))
        var described: [String] = []
        f.manager.systemd.update(changed: f.manager.supervisor.takeChangedApps(), order: f.manager.supervisor.appOrder) {
            described.append($0)
            return f.manager.systemdStatusPart($0)
        }
        #expect(f.kernel.notifications.last == "STATUS=api 1/1 ready · web 1/1 ready")
        described = []
        f.exit(api[0])
        f.manager.systemd.update(changed: f.manager.supervisor.takeChangedApps(), order: f.manager.supervisor.appOrder) {
            described.append($0)
            return f.manager.systemdStatusPart($0)
        }
        #expect(described == ["api"], "only the app whose worker exited")
        #expect(f.kernel.notifications.last == "STATUS=api 0/1 ready · web 1/1 ready")
        described = []
        f.manager.systemd.update(changed: f.manager.supervisor.takeChangedApps(), order: f.manager.supervisor.appOrder) {
            described.append($0)
            return f.manager.systemdStatusPart($0)
        }
        #expect(described.isEmpty, "nothing changed, nothing described")
    }
}

/// Issue 18: while swarmd replaces many workers, one `status` reads a bounded
/// number of each app's workers' usage files, and the next goes on where it stopped.
@Suite("Status usage reads")
struct StatusUsageReadTests {
    @Test func unboundedEveryUnreadWorkerIsRead() {
        var b = UsageReadBudget(perApp: nil, cursors: ["web": 3])
        let w = b.window(app: "web", unreadSlots: [0, 1, 2, 3, 4])
        #expect((0..<5).allSatisfy { w.contains($0, of: 5) })
        #expect(b.cursors["web"] == 3, "an unbounded status leaves the cursor of a bounded one alone")
    }

    @Test func aBoundedBudgetReadsInTurnAndWraps() {
        let slots = Array(0..<10)
        var cursors: [String: Int] = [:]
        var read: [[Int]] = []
        for _ in 0..<4 {
            var b = UsageReadBudget(perApp: 4, cursors: cursors)
            let w = b.window(app: "web", unreadSlots: slots)
            read.append(slots.indices.filter { w.contains($0, of: slots.count) }.map { slots[$0] })
            cursors = b.cursors
        }
        #expect(read == [[0, 1, 2, 3], [4, 5, 6, 7], [0, 1, 8, 9], [2, 3, 4, 5]])
    }

    @Test func theCursorFollowsSlotsNotPositions() {
        // Slots 2 and 5 were read meanwhile (fresh figures): the next read starts at the first unread slot from the cursor on.
        var b = UsageReadBudget(perApp: 2, cursors: ["web": 3])
        let unread = [0, 1, 4, 6, 7]
        let w = b.window(app: "web", unreadSlots: unread)
        #expect(unread.indices.filter { w.contains($0, of: unread.count) }.map { unread[$0] } == [4, 6])
        #expect(b.cursors["web"] == 7)
    }

    @Test func eachAppHasABudgetOfItsOwn() {
        var b = UsageReadBudget(perApp: 3, cursors: [:])
        #expect(b.window(app: "a", unreadSlots: [0, 1, 2]) == .init(start: 0, count: 3))
        #expect(b.cursors["a"] == nil, "all read: no cursor")
        let w = b.window(app: "b", unreadSlots: [0, 1, 2, 3])
        #expect(w.count == 3 && b.cursors["b"] == 3, "an app listed first does not use up a later one's reads")
        #expect(b.window(app: "c", unreadSlots: []) == .init(start: 0, count: 0))
        var none = UsageReadBudget(perApp: 0, cursors: [:])
        let w0 = none.window(app: "d", unreadSlots: [0, 1])
        #expect(w0.count == 0 && !w0.contains(0, of: 2) && none.cursors["d"] == nil)
    }

    @Test func theSpawnRateCountsTheLastSecondOrSo() {
        var r = SpawnRate()
        #expect(r.recent(now: 0) == 0)
        for t in stride(from: Int64(0), to: 900_000_000, by: 10_000_000) { r.note(now: t) }  // 90 spawns in 0.9 s
        #expect(r.recent(now: 950_000_000) == 90)
        #expect(r.recent(now: 1_500_000_000) == 90, "the window just ended still counts")
        r.note(now: 1_200_000_000)
        #expect(r.recent(now: 1_300_000_000) == 90, "a new window starts with the last one's count")
        #expect(r.recent(now: 2_300_000_000) == 1)
        #expect(r.recent(now: 3_300_000_000) == 0)
        r.note(now: 4_000_000_000)
        #expect(r.recent(now: 4_100_000_000) == 1, "a window that ended long ago is forgotten")
    }

    @Test("a status stops reading usage after 10 ms, and the next one goes on from there")
    func usageReadsStopAfterTheirTime() throws {
        let f = try ManagerFixture()
        let pids = try f.startReady(try f.config(workers: 6), workers: 6)
        for (i, pid) in pids.enumerated() { f.kernel.usageOf[pid] = (cpuTicks: Int64(i + 1) * ProcFS.clockTicks, rss: Int64(i + 1) << 20) }
        func usageReads() -> Int { f.kernel.calls.filter { if case .usage = $0 { return true } else { return false } }.count }
        f.kernel.advance(seconds: 5)  // not replacing: the count budget (512) is no bound here
        f.kernel.usageReadCost = 4_000_000
        var before = usageReads()
        var rows = try #require(f.manager.statusReport(only: "web").apps.first?.workers)
        #expect(usageReads() - before == 3, "reads at 0, 4 and 8 ms; none after 10 ms")
        #expect(rows.map(\.rssBytes) == [1 << 20, 2 << 20, 3 << 20, nil, nil, nil])
        #expect(rows.allSatisfy { $0.cpuShare == nil }, "no shares of a partial total")
        f.kernel.advance(seconds: 0.1)
        before = usageReads()
        rows = try #require(f.manager.statusReport(only: "web").apps.first?.workers)
        #expect(usageReads() - before == 3)
        #expect(rows.map(\.rssBytes) == (1...6).map { Int64($0) << 20 }, "the rest, from where the last stopped")
        f.kernel.usageReadCost = 20_000_000
        f.kernel.advance(seconds: 1.1)
        before = usageReads()
        _ = try f.manager.statusReport(only: "web")
        #expect(usageReads() - before == 1, "one read however slow")
    }

    @Test func whileManyWorkersAreReplacedAStatusReadsAtMostItsBudget() throws {
        let f = try ManagerFixture()
        let pids = try f.startReady(try f.config(workers: 6), workers: 6)
        for (i, pid) in pids.enumerated() { f.kernel.usageOf[pid] = (cpuTicks: Int64(i + 1) * ProcFS.clockTicks, rss: Int64(i + 1) << 20) }
        f.manager.usageReadsWhileReplacing = 4
        f.manager.replacingSpawnsPerSecond = 6
        func usageReads() -> Int { f.kernel.calls.filter { if case .usage = $0 { return true } else { return false } }.count }
        func status() throws -> [WorkerStatus] { try #require(f.manager.statusReport(only: "web").apps.first?.workers) }

        // 6 spawns just now: replacing. The first status reads slots 0-3 and gives no shares (their total would leave 4 and 5 out).
        f.kernel.advance(seconds: 0.5)
        var before = usageReads()
        var rows = try status()
        #expect(usageReads() - before == 4)
        #expect(rows.map(\.rssBytes) == [1 << 20, 2 << 20, 3 << 20, 4 << 20, nil, nil], "not read yet: no figures")
        #expect(rows[4].pid == pids[4] && rows[4].state == "ready")
        #expect(rows.allSatisfy { $0.cpuShare == nil })

        // 0.2 s later slots 0-3 are fresh: only 4 and 5 are due, and with every worker's figures the shares are back.
        f.kernel.advance(seconds: 0.2)
        before = usageReads()
        rows = try status()
        #expect(usageReads() - before == 2)
        #expect(rows.map(\.rssBytes) == (1...6).map { Int64($0) << 20 })
        #expect(rows.compactMap(\.cpuShare).count == 6)

        // 0.9 s later slots 0-3 are due again; with a budget of 2, slots 0 and 1 are read and 2 and 3 keep their figures.
        f.manager.usageReadsWhileReplacing = 2
        f.kernel.advance(seconds: 0.9)
        f.kernel.usageOf[pids[0]]?.rss = 99
        f.kernel.usageOf[pids[2]]?.rss = 77
        before = usageReads()
        rows = try status()
        #expect(usageReads() - before == 2)
        #expect(rows[0].rssBytes == 99 && rows[2].rssBytes == 3 << 20, "an unread worker keeps its last figures: \(rows.map(\.rssBytes))")

        // The next status goes on from slot 2.
        f.kernel.advance(seconds: 0.1)
        before = usageReads()
        rows = try status()
        #expect(usageReads() - before == 2)
        #expect(rows[2].rssBytes == 77)

        // Two seconds without spawning: every due worker is read again.
        f.kernel.advance(seconds: 2.1)
        before = usageReads()
        _ = try status()
        #expect(usageReads() - before == 6)

        // Not replacing, a status still reads at most usageReadsPerStatus (4,096 workers' files took 75-100 ms), going on from where the last stopped.
        f.manager.usageReadsPerStatus = 5
        f.kernel.advance(seconds: 1.1)
        before = usageReads()
        rows = try status()
        #expect(usageReads() - before == 5)
        #expect(rows.allSatisfy { $0.rssBytes != nil }, "the sixth keeps its last figures")
        f.kernel.advance(seconds: 0.1)
        before = usageReads()
        _ = try status()
        #expect(usageReads() - before == 1, "only the one the last status left is due")
    }
}
