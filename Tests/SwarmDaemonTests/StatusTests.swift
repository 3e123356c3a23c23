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
}
