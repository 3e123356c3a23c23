import Foundation
import Glibc
@testable import SwarmDaemon
import SwarmCore
import SwarmProtocol
import SwarmSystem
import Testing

struct MetricsTextTests {
    @Test func labelValuesAndHelpAreEscapedAndIntegersHaveNoFraction() {
        var t = MetricsText()
        t.family("x_total", .counter, "a \\ b\nc")
        t.sample("x_total", [("app", "a\"b\\c\nd")], 3)
        t.sample("y", [], 0.25)
        t.sample("z", [], 2.0)
        #expect(String(decoding: t.bytes, as: UTF8.self) == """
            # HELP x_total a \\\\ b\\nc
            # TYPE x_total counter
            x_total{app="a\\"b\\\\c\\nd"} 3
            y 0.25
            z 2

            """)
        #expect(MetricsText.format(.infinity) == "+Inf" && MetricsText.format(.nan) == "NaN")
    }

    @Test func aHistogramIsCumulativeWithInfSumAndCount() {
        var h = Histogram(bounds: [0.1, 1])
        for v in [0.05, 0.1, 0.5, 3] { h.observe(v) }
        var t = MetricsText()
        t.histogram("h", [("app", "a")], h)
        #expect(String(decoding: t.bytes, as: UTF8.self) == """
            h_bucket{app="a",le="0.1"} 2
            h_bucket{app="a",le="1"} 3
            h_bucket{app="a",le="+Inf"} 4
            h_sum{app="a"} 3.65
            h_count{app="a"} 4

            """)
    }

    @Test func everyAppGetsEveryWorkerStateZeroIncluded() {
        let snap = MetricsSnapshot(version: "1", apps: [
            .init(name: "web", state: "degraded", ready: 1, desired: 2, byState: ["ready": 1, "backoff": 1],
                  workers: [.init(slot: 0, pid: 42, cpuSeconds: 1.5, residentBytes: 4096)], throttledSeconds: nil),
        ], process: nil, controlConnections: 2, metricsConnections: 1, unreadWorkers: 0)
        let text = String(decoding: MetricsRender.render(snap, MetricsRecorder()), as: UTF8.self)
        for state in workerDisplayStates {
            let n = state == "ready" || state == "backoff" ? 1 : 0
            #expect(text.contains("swarm_workers{app=\"web\",state=\"\(state)\"} \(n)\n"), "\(state)")
        }
        #expect(text.contains("swarm_app_state{app=\"web\",state=\"degraded\"} 1\n"))
        #expect(text.contains("swarm_app_state{app=\"web\",state=\"running\"} 0\n"))
        #expect(text.contains("swarm_worker_cpu_seconds_total{app=\"web\",slot=\"0\",pid=\"42\"} 1.50\n"))
        #expect(text.contains("swarm_worker_resident_bytes{app=\"web\",slot=\"0\",pid=\"42\"} 4096\n"))
        #expect(text.contains("swarm_control_connections 2\n"))
        // One HELP and one TYPE per family.
        let types = text.split(separator: "\n").filter { $0.hasPrefix("# TYPE ") }.map { $0.split(separator: " ")[2] }
        #expect(Set(types).count == types.count, "\(types)")
    }
}

struct MetricsHTTPTests {
    @Test func requestHeadsAreParsedOnBytes() throws {
        let r = try #require(HTTPRequest.parse(Array("GET /readyz?app=a%2Cb&x=1 HTTP/1.1\r\nHost: h\r\nConnection: close".utf8)))
        #expect(r.method == "GET" && r.path == "/readyz" && r.query("app") == "a,b" && !r.keepAlive && !r.hasBody)
        let post = try #require(HTTPRequest.parse(Array("POST /metrics HTTP/1.1\r\nContent-Length: 5".utf8)))
        #expect(post.hasBody && post.keepAlive)
        let old = try #require(HTTPRequest.parse(Array("GET / HTTP/1.0\nConnection: Keep-Alive".utf8)))
        #expect(old.keepAlive)
        #expect(HTTPRequest.parse(Array("GET /metrics".utf8)) == nil)
        #expect(HTTPRequest.parse(Array("get /metrics HTTP/1.1".utf8)) == nil)
        #expect(HTTPRequest.parse(Array("GET /metrics HTTP/2\r\n".utf8)) == nil)
        #expect(HTTPRequest.parse(Array("GET /metrics HTTP/1.1\r\nno colon here".utf8)) == nil)
        #expect(MetricsServer.headEnd(Array("GET / HTTP/1.1\r\n\r\nnext".utf8))?.next == 18)
        #expect(MetricsServer.headEnd(Array("GET / HTTP/1.1\r\nHost: x\r\n".utf8)) == nil)
    }

    @Test func addressesAndWhichAreLocal() throws {
        #expect(try MetricsAddress.parse("127.0.0.1:9464") == .tcp(host: "127.0.0.1", port: 9464))
        #expect(try MetricsAddress.parse("localhost:9464") == .tcp(host: "127.0.0.1", port: 9464))
        #expect(try MetricsAddress.parse("[::1]:9") == .tcp(host: "::1", port: 9))
        #expect(try MetricsAddress.parse(":9464") == .tcp(host: "0.0.0.0", port: 9464))
        #expect(try MetricsAddress.parse("unix:/run/m.sock") == .unix(path: "/run/m.sock"))
        #expect(try MetricsAddress.parse("127.0.0.1:9464").isLocal)
        #expect(try MetricsAddress.parse("[::1]:9464").isLocal)
        #expect(try MetricsAddress.parse("unix:/run/m.sock").isLocal)
        #expect(try !MetricsAddress.parse("0.0.0.0:9464").isLocal)
        #expect(try !MetricsAddress.parse("10.1.2.3:9464").isLocal)
        for bad in ["9464", "host:9464", "127.0.0.1:0", "127.0.0.1:99999", "unix:", "unix:relative"] {
            #expect(throws: MetricsAddressError.self, "\(bad)") { try MetricsAddress.parse(bad) }
        }
    }
}

/// The recorder counts what the core decided, seen through the shell's own
/// feed and perform path (a Manager on the fake kernel).
struct MetricsRecorderTests {
    func fixture() throws -> ManagerFixture {
        let f = try ManagerFixture()
        let server = MetricsServer(loop: f.manager.loop, kernel: f.kernel)
        f.manager.metrics = DaemonMetrics(server: server, fd: try Posix.open("/dev/null", O_RDONLY), fromSystemd: false, unixPath: nil)
        return f
    }

    @Test func aCrashIsARestartWithItsReasonAndAnExitWithItsCode() throws {
        let f = try fixture()
        let path = try f.config(restart: "always", extra: "")
        let pids = try f.startReady(path)
        f.exit(pids[0], code: 3)
        let rec = try #require(f.manager.metrics?.recorder)
        #expect(rec.exits["web"] == ["3": 1])
        #expect(rec.restarts["web"] == [MetricsRecorder.SlotReason(slot: 0, reason: "crash"): 1], "\(rec.restarts)")
        #expect(rec.readySeconds["web"]?.count == 1)
    }

    @Test func anExitThatIsNotRestartedIsNoRestart() throws {
        let f = try fixture()
        let pids = try f.startReady(try f.config(restart: "never"))
        f.exit(pids[0], code: 1)
        let rec = try #require(f.manager.metrics?.recorder)
        #expect(rec.exits["web"] == ["1": 1])
        #expect(rec.restarts["web"] == nil)
    }

    @Test func aWorkerOverItsMemoryCeilingIsRestartedForMemoryOnce() throws {
        let f = try fixture()
        f.manager.supervisor.memoryInterval = .milliseconds(100)
        let pids = try f.startReady(try f.config(restart: "always", extra: "[limits]\nmemory = \"10MiB\""))
        f.kernel.rssOf[pids[0]] = 64 << 20
        f.kernel.advance(seconds: 0.2)
        f.manager.feed(.tick)
        let rec = try #require(f.manager.metrics?.recorder)
        // Start-first: counted when the replacement is ready and the old worker is stopped.
        #expect(rec.restarts["web"] == nil, "\(rec.restarts)")
        let replacement = try #require(f.manager.supervisor.apps["web"]?.slots[0].incoming.flatMap { f.manager.supervisor.workers[$0]?.pid })
        f.ready(replacement)
        #expect(rec.restarts["web"] == [MetricsRecorder.SlotReason(slot: 0, reason: "memory"): 1], "\(rec.restarts)")
        // Its exit after the stop signal is no second restart.
        f.exit(pids[0], code: 0)
        #expect(rec.restarts["web"] == [MetricsRecorder.SlotReason(slot: 0, reason: "memory"): 1], "\(rec.restarts)")
        #expect(rec.exits["web"] == ["0": 1])
    }

    @Test func countersSurviveTheHandOverEncoding() throws {
        let rec = MetricsRecorder()
        rec.restore(MetricsRecorder.Saved(restarts: ["web": ["3 crash": 2]], exits: ["web": ["SIGKILL": 1]], reloads: [:],
                                          reloadDuration: [:], readySeconds: [:], logBytes: ["web": ["stdout": 10]]))
        let data = try JSONEncoder().encode(rec.saved)
        let back = MetricsRecorder()
        back.restore(try JSONDecoder().decode(MetricsRecorder.Saved.self, from: data))
        #expect(back.restarts["web"] == [MetricsRecorder.SlotReason(slot: 3, reason: "crash"): 2])
        #expect(back.exits == rec.exits && back.logBytes == rec.logBytes)
    }
}

struct MetricsFastPathTests {
    @Test func workerLinesMatchTheGeneralWriter() {
        for (secs, bytes) in [(0.0, Int64(0)), (12.34, Int64(4096)), (1e-7, Int64(1) << 40), (123456.07, Int64(9))] {
            var fast = MetricsText()
            fast.workerSample(prefix: MetricsText.workerPrefix("c_total", app: "a\"b"), slot: 12, pid: 4301, integer: nil, seconds: secs)
            fast.workerSample(prefix: MetricsText.workerPrefix("r", app: "a\"b"), slot: 0, pid: 7, integer: bytes, seconds: 0)
            var slow = MetricsText()
            slow.sample("c_total", [("app", "a\"b"), ("slot", "12"), ("pid", "4301")], secs)
            slow.sample("r", [("app", "a\"b"), ("slot", "0"), ("pid", "7")], bytes)
            let f = String(decoding: fast.bytes, as: UTF8.self)
            let s = String(decoding: slow.bytes, as: UTF8.self)
            // Same lines; a value may be written with two decimals instead of Swift's shortest form.
            #expect(f.split(separator: "\n").map { Double($0.split(separator: " ")[1])! } == s.split(separator: "\n").map { Double($0.split(separator: " ")[1])! }, "\(f) vs \(s)")
            #expect(f.split(separator: "\n").map { $0.split(separator: " ")[0] } == s.split(separator: "\n").map { $0.split(separator: " ")[0] })
        }
    }

    @Test func procStatIsParsedFromTheLastParenthesis() {
        let line = Array("4301 (we ird) (x) S 1 4301 4301 0 -1 4194560 100 0 0 0 250 75 0 0 20 0 1 0 12345 1000000 321 18446744073709551615\n".utf8)
        let r = line.withUnsafeBufferPointer { ProcStatReader.parse($0, pageSize: 4096) }
        #expect(r?.cpuTicks == 325 && r?.rss == 321 * 4096, "\(String(describing: r))")
        #expect(ProcStatReader().usage(pid: getpid())?.rss ?? 0 > 0)
    }
}
