import Foundation
import Glibc
import SwarmProtocol
import SwarmSystem
import Testing

// `swarmd --metrics`: real scrapes of a real swarmd, Debian's promtool and
// Prometheus server, hostile clients, and the probes (/healthz, /readyz,
// `swarmctl status --check`) in each state an app can be in.

/// The value of one sample in exposition text: `name{labels}` with exactly these labels (order as written).
func metricValue(_ text: String, _ name: String, _ labels: [(String, String)] = []) -> Double? {
    let key = labels.isEmpty ? name : name + "{" + labels.map { "\($0.0)=\"\($0.1)\"" }.joined(separator: ",") + "}"
    for line in text.split(separator: "\n") where line.hasPrefix(key + " ") {
        return Double(line.dropFirst(key.count + 1))
    }
    return nil
}

/// Every sample of `name` whose labels include these pairs, summed.
func metricSum(_ text: String, _ name: String, where pairs: [(String, String)] = []) -> Double {
    var total = 0.0
    for line in text.split(separator: "\n") where line.hasPrefix(name + "{") || line.hasPrefix(name + " ") {
        guard pairs.allSatisfy({ line.contains("\($0.0)=\"\($0.1)\"") }), let space = line.lastIndex(of: " ") else { continue }
        total += Double(line[line.index(after: space)...]) ?? 0
    }
    return total
}

enum Metrics {
    static let promtool = "/usr/bin/promtool"
    static let prometheus = "/usr/bin/prometheus"

    static func requireTools() throws {
        for tool in [promtool, prometheus] where access(tool, X_OK) != 0 {
            throw HarnessError("\(tool) is missing: install Debian's prometheus package (scripts/deps.sh does)")
        }
    }

    static func get(_ port: UInt16, _ path: String) throws -> HTTPResponse { try httpGet(port, path) }

    static func scrape(_ port: UInt16) throws -> String {
        let r = try get(port, "/metrics")
        guard r.status == 200 else { throw HarnessError("GET /metrics answered \(r.status): \(r.body)") }
        guard r.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8" else {
            throw HarnessError("GET /metrics: Content-Type \(r.headers["content-type"] ?? "missing")")
        }
        return r.body
    }

    /// `promtool check metrics` on `text` (stdin): its exit code and what it said.
    static func promtoolCheck(_ text: String, dir: String) async throws -> (code: Int32, output: String) {
        let input = dir + "/scrape-\(Ports.counter.next()).txt"
        try text.write(toFile: input, atomically: true, encoding: .utf8)
        let c = try Child.spawn("/bin/sh", ["-c", "exec \(promtool) check metrics < \(input)"], dir: dir, label: "promtool")
        let code = try await c.wait(timeout: 30, "promtool check metrics to finish")
        return (code, c.stdout + c.stderr)
    }

    /// A swarmd with `--metrics 127.0.0.1:<free port>`; the port.
    static func startDaemon(_ s: Swarm, _ configs: [String] = [], args: [String] = []) async throws -> UInt16 {
        let port = try Ports.free()
        try await s.startDaemon(configs, args: ["--metrics", "127.0.0.1:\(port)"] + args)
        try await waitUntil(timeout: 10, "swarmd to serve /healthz on 127.0.0.1:\(port)") {
            (try? get(port, "/healthz"))?.status == 200
        }
        return port
    }
}

/// A raw TCP client for the hostile tests.
final class RawClient {
    let fd: Int32

    init(port: UInt16, receiveBuffer: Int32? = nil) throws {
        fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw HarnessError("socket failed: \(errnoText())") }
        if var size = receiveBuffer {
            setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &size, socklen_t(MemoryLayout<Int32>.size))
        }
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_port = port.bigEndian
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        let r = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        if r < 0 { throw HarnessError("connect to 127.0.0.1:\(port) failed: \(errnoText())") }
        _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK)
    }

    deinit { close(fd) }

    /// Sends what the socket takes within `seconds`; how much that was. Errors (the server closed) end it.
    @discardableResult
    func send(_ bytes: [UInt8], within seconds: Double) -> Int {
        let deadline = Date().addingTimeInterval(seconds)
        var off = 0
        while off < bytes.count && Date() < deadline {
            let n = bytes[off...].withUnsafeBytes { Glibc.send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            if n > 0 { off += n; continue }
            if n < 0 && (errno == EAGAIN || errno == EINTR) { usleep(1000); continue }
            break
        }
        return off
    }

    /// Reads what is there now: the bytes, and whether the server has closed (EOF or reset).
    func drain() -> (bytes: [UInt8], closed: Bool) {
        var out: [UInt8] = []
        var buf = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = buf.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            if n > 0 { out += buf[0..<n]; continue }
            if n == 0 { return (out, true) }
            if errno == EINTR { continue }
            return (out, errno != EAGAIN)
        }
    }
}

/// Waits until `slot` of `app` runs a ready worker other than `pid` (the kill was seen, the replacement is up).
func waitReplaced(_ s: Swarm, _ app: String, slot: Int, pid: Int32, timeout: Double = 20) async throws {
    try await waitUntil(timeout: timeout, "\(app)[\(slot)] (pid \(pid) killed) to be replaced by a ready worker") {
        guard let w = try s.quickStatus().apps.first(where: { $0.name == app })?.workers.first(where: { $0.slot == slot }) else { return false }
        return w.pid != nil && w.pid != pid && w.state == "ready"
    }
}

@Suite("Metrics: /metrics, /healthz, /readyz and status --check")
struct MetricsTests {
    @Test("/metrics is accepted by promtool and counts a kill -9 as a restart, an exit and a ready time")
    func promtoolAccepts() async throws {
        try Metrics.requireTools()
        try await withSwarm { s in
            let port = try Ports.free()
            let conf = try s.write("web.conf", Conf.python("web", workers: 2, port: port, extra: "[restart]\nmax_delay = \"100ms\"\n"))
            let mport = try await Metrics.startDaemon(s, [conf])
            let pids = try await s.waitReady("web", workers: 2)

            var text = try Metrics.scrape(mport)
            let first = try await Metrics.promtoolCheck(text, dir: s.dir)
            #expect(first.code == 0, "promtool rejects the output: \(first.output)\n\(text)")
            #expect(metricValue(text, "swarm_workers_ready", [("app", "web")]) == 2)
            #expect(metricValue(text, "swarm_workers_desired", [("app", "web")]) == 2)
            #expect(metricValue(text, "swarm_workers", [("app", "web"), ("state", "ready")]) == 2)
            #expect(metricValue(text, "swarm_ready_seconds_count", [("app", "web")]) == 2, "\(text)")
            #expect(metricSum(text, "swarm_restarts_total") == 0)
            for pid in pids {
                let rss = metricValue(text, "swarm_worker_resident_bytes", [("app", "web"), ("slot", pids.firstIndex(of: pid).map(String.init)!), ("pid", String(pid))])
                #expect((rss ?? 0) > 1_048_576, "resident bytes of worker \(pid): \(String(describing: rss))")
            }
            #expect((metricValue(text, "process_resident_memory_bytes") ?? 0) > 1_048_576)
            #expect(metricValue(text, "process_open_fds").map { $0 > 5 } == true)
            // The lag probe samples 4 times a second from the start: a scrape in the first 250 ms may come before the first.
            try await waitUntil(timeout: 5, "the event-loop lag probe's first sample (it runs 4 times a second)") {
                metricValue(try Metrics.scrape(mport), "swarm_event_loop_lag_seconds_count").map { $0 >= 1 } == true
            }

            kill(pids[0], SIGKILL)
            try await waitReplaced(s, "web", slot: 0, pid: pids[0])
            text = try Metrics.scrape(mport)
            #expect(metricValue(text, "swarm_restarts_total", [("app", "web"), ("slot", "0"), ("reason", "signal")]) == 1, "\(text)")
            #expect(metricValue(text, "swarm_worker_exits_total", [("app", "web"), ("code", "SIGKILL")]) == 1)
            #expect(metricValue(text, "swarm_ready_seconds_count", [("app", "web")]) == 3)
            let second = try await Metrics.promtoolCheck(text, dir: s.dir)
            #expect(second.code == 0, "promtool rejects the output after a restart: \(second.output)")

            // A reload: counted with its outcome and duration.
            try await s.ctlOK("reload", "web")
            text = try Metrics.scrape(mport)
            #expect(metricValue(text, "swarm_reloads_total", [("app", "web"), ("outcome", "succeeded")]) == 1, "\(text)")
            #expect(metricValue(text, "swarm_reload_duration_seconds_count", [("app", "web")]) == 1)
            #expect(metricValue(text, "swarm_worker_exits_total", [("app", "web"), ("code", "0")]) == 2,
                    "the reload's two old workers exit 0 on SIGTERM")
            #expect(metricSum(text, "swarm_restarts_total") == 1, "a reload is no restart")
        }
    }

    @Test("a real Prometheus server scrapes swarmd every second and sees swarm_restarts_total rise after kill -9")
    func prometheusScrapes() async throws {
        try Metrics.requireTools()
        try await withSwarm { s in
            let port = try Ports.free()
            let conf = try s.write("web.conf", Conf.python("web", workers: 2, port: port))
            let mport = try await Metrics.startDaemon(s, [conf])
            let pids = try await s.waitReady("web", workers: 2)
            let promPort = try Ports.free()
            let config = try s.write("prometheus.yml", """
                global:
                  scrape_interval: 1s
                  evaluation_interval: 1s
                scrape_configs:
                  - job_name: swarmd
                    scrape_interval: 1s
                    scrape_timeout: 900ms
                    static_configs:
                      - targets: ['127.0.0.1:\(mport)']
                """)
            let prom = try Child.spawn(Metrics.prometheus, [
                "--config.file=\(config)", "--storage.tsdb.path=\(s.dir)/tsdb",
                "--web.listen-address=127.0.0.1:\(promPort)", "--log.level=warn",
            ], dir: s.dir, label: "prometheus")
            defer {
                prom.signal(SIGKILL)
                var st: Int32 = 0
                _ = waitpid(prom.pid, &st, 0)
            }
            func query(_ q: String) throws -> Double? {
                let encoded = q.addingPercentEncoding(withAllowedCharacters: .alphanumerics) ?? q
                let r = try httpGet(promPort, "/api/v1/query?query=\(encoded)")
                guard r.status == 200,
                      let json = try JSONSerialization.jsonObject(with: Data(r.body.utf8)) as? [String: Any],
                      let data = json["data"] as? [String: Any], let result = data["result"] as? [[String: Any]] else {
                    throw HarnessError("query \(q) answered \(r.status): \(r.body)")
                }
                guard let value = result.first?["value"] as? [Any], value.count == 2, let v = value[1] as? String else { return nil }
                return Double(v)
            }
            try await waitUntil(timeout: 60, "Prometheus to have scraped swarm_workers_ready{app=\"web\"} = 2 (its log: \(prom.stderr.suffix(1500)))", every: 0.25) {
                if let code = prom.poll() { throw HarnessError("prometheus exited with \(code): \(prom.stderr.suffix(2000))") }
                return try? query("swarm_workers_ready{app=\"web\"}") == 2
            }
            let restarts = "sum(swarm_restarts_total{app=\"web\"}) or vector(0)"
            let before = try query(restarts)
            #expect(before == 0, "no restart yet, Prometheus says \(String(describing: before))")
            kill(pids[1], SIGKILL)
            try await waitUntil(timeout: 30, "Prometheus to see swarm_restarts_total{app=\"web\"} rise after kill -9 of \(pids[1])", every: 0.25) {
                (try? query(restarts)).flatMap { $0 } ?? 0 >= 1
            }
            #expect(try query("swarm_restarts_total{app=\"web\",slot=\"1\",reason=\"signal\"}") == 1)
            #expect(try query("up{job=\"swarmd\"}") == 1)
            _ = try await s.waitReady("web", workers: 2)
        }
    }

    @Test("hostile scrapers (one that never reads, a 1 MiB header, 200 connections at once) leave swarmd serving SIGCHLD and control")
    func hostileScrapers() async throws {
        try await withSwarm { s in
            // 120 workers make a response of some 60 KiB: a client that reads nothing fills its buffers.
            let conf = try s.write("many.conf", Conf.app("many", command: ["/bin/sleep", "600"], workers: 120,
                                                        extra: "[ready]\nmode = \"delay\"\ndelay = \"50ms\"\n[restart]\nmax_delay = \"100ms\"\n"))
            let port = try await Metrics.startDaemon(s, [conf])
            _ = try await s.waitReady("many", workers: 120, timeout: 60)

            // 1: never reads, with thousands of requests pipelined behind a small receive buffer.
            let stuck = try RawClient(port: port, receiveBuffer: 4096)
            stuck.send(Array(String(repeating: "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n", count: 2000).utf8), within: 2)
            // 2: a 1 MiB request head.
            let huge = try RawClient(port: port)
            let sent = huge.send(Array(("GET /metrics HTTP/1.1\r\nX-Big: " + String(repeating: "a", count: 1 << 20)).utf8), within: 3)
            // 3: 200 connections at once, none sends anything.
            // Measured before the loop: connects past the listen backlog wait for SYN retries, and those before them are accepted meanwhile.
            let floodStart = Date()
            var flood: [RawClient] = []
            for _ in 0..<200 { flood.append(try RawClient(port: port)) }

            // swarmd goes on: control answers, a killed worker is reaped and replaced.
            #expect(try await s.ctlOK("ping").out == "pong\n")
            let before = try s.quickStatus().apps[0].workers
            let victim = try #require(before.first { $0.slot == 7 }?.pid)
            kill(victim, SIGKILL)
            try await waitUntil(timeout: 10, "slot 7 to be replaced after kill -9 while hostile scrapers hang on") {
                guard let w = try s.quickStatus().apps[0].workers.first(where: { $0.slot == 7 }) else { return false }
                return w.pid != nil && w.pid != victim && w.state == "ready"
            }

            // The 1 MiB head was refused after its first kilobytes, with 431, and closed.
            try await waitUntil(timeout: 10, "the 1 MiB request head to be refused and its connection closed (sent \(sent) bytes)") {
                let (bytes, closed) = huge.drain()
                if !bytes.isEmpty {
                    let text = String(decoding: bytes, as: UTF8.self)
                    #expect(text.hasPrefix("HTTP/1.1 431 "), "answer to a 1 MiB head: \(text.prefix(200))")
                }
                return closed
            }

            // Beyond 64 connections, the flood is answered 503 at once and closed.
            var refused = 0
            try await waitUntil(timeout: 10, "the connections beyond the limit to be refused with 503") {
                refused = 0
                for c in flood {
                    let (bytes, closed) = c.drain()
                    if closed || String(decoding: bytes, as: UTF8.self).hasPrefix("HTTP/1.1 503") { refused += 1 }
                }
                return refused >= 200 - 64 - 2
            }
            #expect(refused <= 200 - 64 + 2, "\(refused) of 200 refused: the limit is 64 connections")

            // Connections that send nothing are cut off after 10 s; the one that never reads after 10 s without progress.
            try await waitUntil(timeout: 25, "the silent connections and the one that never reads to be closed", every: 0.5) {
                flood.allSatisfy { $0.drain().closed }
            }
            #expect(elapsed(since: floodStart) >= 9, "silent connections closed after \(elapsed(since: floodStart))s, before the 10 s allowance")
            try await waitUntil(timeout: 25, "the client that never reads to be cut off", every: 0.5) {
                // Reading now, after the cut-off: what was in flight, then EOF or a reset.
                stuck.drain().closed
            }
            #expect(s.daemonLog.contains("metrics client took none of its response"), "the cut-off is logged")

            // And scrapes work again.
            let text = try Metrics.scrape(port)
            #expect(metricValue(text, "swarm_workers_ready", [("app", "many")]) == 120)
            #expect(metricValue(text, "swarm_restarts_total", [("app", "many"), ("slot", "7"), ("reason", "signal")]) == 1)
            #expect(metricValue(text, "swarm_metrics_connections") == 1, "only this scrape's connection is left: \(text.suffix(600))")
        }
    }

    @Test("HTTP: 404, 405 with Allow, HEAD, keep-alive and pipelining, unix:PATH, a non-loopback address refused without --metrics-public")
    func httpDetails() async throws {
        try await withSwarm { s in
            let port = try await Metrics.startDaemon(s)
            let c = try HTTPConnection(port: port)
            let a = try c.get("/nope")
            #expect(a.status == 404)
            let b = try c.get("/healthz")
            #expect(b.status == 200 && b.body == "ok\n", "keep-alive: a second request on the connection")
            let m = try c.get("/metrics?ignored=1")
            #expect(m.status == 200 && m.body.contains("# TYPE swarm_workers gauge"))

            let raw = try RawClient(port: port)
            raw.send(Array("POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabcHEAD /metrics HTTP/1.1\r\n\r\n".utf8), within: 2)
            var got = ""
            try await waitUntil(timeout: 5, "the answer to POST /metrics") {
                let (bytes, closed) = raw.drain()
                got += String(decoding: bytes, as: UTF8.self)
                return closed
            }
            #expect(got.hasPrefix("HTTP/1.1 405 Method Not Allowed\r\n") && got.contains("\r\nAllow: GET, HEAD\r\n"), "\(got)")
            #expect(!got.contains("HTTP/1.1 200"), "a request with a body closes the connection after its answer: \(got)")

            let head = try RawClient(port: port)
            head.send(Array("HEAD /metrics HTTP/1.1\r\n\r\nGET /healthz HTTP/1.0\r\n\r\n".utf8), within: 2)
            got = ""
            try await waitUntil(timeout: 5, "the answers to HEAD /metrics and GET /healthz (HTTP/1.0 closes)") {
                let (bytes, closed) = head.drain()
                got += String(decoding: bytes, as: UTF8.self)
                return closed
            }
            let parts = got.components(separatedBy: "\r\n\r\n")
            #expect(parts.count == 3 && parts[0].hasPrefix("HTTP/1.1 200 OK") && parts[0].contains("version=0.0.4")
                    && parts[1].hasPrefix("HTTP/1.1 200 OK") && parts[2] == "ok\n", "HEAD has no body; pipelined GET answered next: \(got)")
            _ = try await s.stopDaemon()

            // unix:PATH
            let path = s.dir + "/metrics.sock"
            try await s.startDaemon(args: ["--metrics", "unix:\(path)"])
            let fd = try Sockets.connectUnix(path)
            defer { close(fd) }
            try Posix.writeAll(fd, Array("GET /healthz HTTP/1.1\r\nConnection: close\r\n\r\n".utf8))
            let answer = String(decoding: try Posix.readAll(fd, limit: 1 << 16), as: UTF8.self)
            #expect(answer.hasPrefix("HTTP/1.1 200 OK") && answer.hasSuffix("\r\n\r\nok\n"), "\(answer)")
            _ = try await s.stopDaemon()
            #expect(access(path, F_OK) != 0, "swarmd removes its metrics socket when it stops")

            // 0.0.0.0 needs --metrics-public.
            let p2 = try Ports.free()
            let refused = try s.launchDaemon(["--socket", s.socket, "--state-dir", s.stateDir, "--metrics", "0.0.0.0:\(p2)"])
            let code = try await refused.wait(timeout: 10)
            #expect(code == 64 && refused.stderr.contains("--metrics-public"), "exit \(code): \(refused.stderr)")
            try await s.startDaemon(args: ["--metrics", "0.0.0.0:\(p2)", "--metrics-public"])
            #expect(try Metrics.get(p2, "/healthz").status == 200)
            #expect(s.daemonLog.contains("beyond this host"), "a public address is logged as such")
        }
    }

    @Test("daemon-reexec keeps the metrics socket and its counters")
    func reexecKeepsMetrics() async throws {
        try await withSwarm { s in
            let conf = try s.write("w.conf", Conf.app("w", command: ["/bin/sleep", "600"], workers: 2,
                                                     extra: "[ready]\nmode = \"delay\"\ndelay = \"50ms\"\n[restart]\nmax_delay = \"100ms\"\n"))
            let port = try await Metrics.startDaemon(s, [conf])
            let pids = try await s.waitReady("w", workers: 2)
            kill(pids[0], SIGKILL)
            try await waitReplaced(s, "w", slot: 0, pid: pids[0])
            #expect(metricValue(try Metrics.scrape(port), "swarm_restarts_total", [("app", "w"), ("slot", "0"), ("reason", "signal")]) == 1)
            let keepAlive = try HTTPConnection(port: port)
            _ = try keepAlive.get("/healthz")
            let pid = try #require(s.daemon?.pid)
            try await s.ctlOK("daemon-reexec")
            try await waitUntil(timeout: 20, "the re-executed swarmd to log that it took over") {
                s.daemonLog.contains("re-executed as pid \(pid)")
            }
            let text = try Metrics.scrape(port)
            #expect(metricValue(text, "swarm_restarts_total", [("app", "w"), ("slot", "0"), ("reason", "signal")]) == 1,
                    "counters survive the re-exec: \(text)")
            #expect(metricValue(text, "swarm_workers_ready", [("app", "w")]) == 2)
            #expect(!s.daemonLog.contains("Failed to"), "\(s.daemonLog.suffix(2000))")
            _ = keepAlive
        }
    }

    @Test("systemd socket activation: a socket named 'metrics' is served without --metrics")
    func socketActivation() async throws {
        let tool = "/usr/bin/systemd-socket-activate"
        try #require(access(tool, X_OK) == 0, "\(tool) is missing (Debian package systemd)")
        try await withSwarm { s in
            let mport = try Ports.free()
            let d = try s.launchDaemon(["--socket", s.dir + "/unused.sock", "--state-dir", s.stateDir],
                                       wrapper: [tool, "-l", s.socket, "-l", "127.0.0.1:\(mport)", "--fdname=control:metrics"])
            try await waitUntil(timeout: 10, "systemd-socket-activate to listen on \(s.socket): \(d.stderr)") { access(s.socket, F_OK) == 0 }
            try await waitUntil(timeout: 20, "swarmd (exec'd by the tool) to answer ping: \(d.stderr)") {
                if let code = d.poll() { throw HarnessError("exited with \(code): \(d.stderr)") }
                return (try? s.request(.ping))?.ok == true
            }
            let text = try Metrics.scrape(mport)
            #expect(text.contains("# TYPE swarm_workers_ready gauge"))
            #expect(s.daemonLog.contains("serving metrics on the socket systemd passed"), "\(s.daemonLog.suffix(1500))")
        }
    }

    // MARK: - Probes

    func probe(_ port: UInt16, _ path: String) throws -> (Int, String) {
        let r = try Metrics.get(port, path)
        return (r.status, r.body)
    }

    @Test("/healthz, /readyz and status --check: ready, starting, crash loop, stopped, unknown, error, shutting down")
    func probesInEachState() async throws {
        try await withSwarm { s in
            let quick = "[ready]\nmode = \"delay\"\ndelay = \"50ms\"\n"
            let web = try s.write("web.conf", Conf.app("web", command: ["/bin/sleep", "600"], workers: 2, extra: quick))
            let port = try await Metrics.startDaemon(s, [web])
            _ = try await s.waitReady("web", workers: 2)

            // Ready.
            #expect(try probe(port, "/healthz") == (200, "ok\n"))
            #expect(try probe(port, "/readyz") == (200, "ready: 1 app\n"))
            #expect(try probe(port, "/readyz?app=web") == (200, "ready: 1 app\n"))
            #expect(try await s.ctl("status", "--check").code == 0)
            #expect(try await s.ctl("status", "--check", "web").code == 0)

            // Starting: a worker that never says it is ready.
            let slow = try s.write("slow.conf", Conf.app("slow", command: ["/bin/sleep", "600"],
                                                        extra: "[ready]\nmode = \"notify\"\ntimeout = \"60s\"\n"))
            // `start` waits for readiness: it runs on while the app is looked at, and ends with the delete.
            let starter = try Child.spawn(Paths.swarmctl, ["start", slow, "--socket", s.socket], dir: s.dir, label: "start-slow")
            try await waitUntil(timeout: 10, "slow to be starting") { try s.quickStatus().apps.contains { $0.name == "slow" } }
            var (code, body) = try probe(port, "/readyz")
            #expect(code == 503 && body == "not ready: slow 0/1 ready (degraded)\n", "\(code) \(body)")
            #expect(try probe(port, "/readyz?app=web") == (200, "ready: 1 app\n"), "only the apps named count")
            (code, body) = try probe(port, "/readyz?app=web%2Cslow")
            #expect(code == 503 && body.contains("slow 0/1"), "\(body)")
            var r = try await s.ctl("status", "--check")
            #expect(r.code == 3 && r.err.contains("not ready: slow 0/1 ready (degraded)"), "\(r)")
            #expect(try await s.ctl("status", "--check", "web").code == 0)
            #expect(try await s.ctl("status", "--check", "slow").code == 3)
            try await s.ctlOK("delete", "slow")
            _ = try await starter.wait(timeout: 10, "swarmctl start slow to end once slow is deleted")

            // Crash loop: a worker that exits at once.
            let bad = try s.write("bad.conf", Conf.app("bad", command: ["/bin/false"], extra: quick))
            _ = try await s.ctl("start", bad)
            try await waitUntil(timeout: 20, "bad to enter a crash loop") {
                try s.quickStatus().apps.first { $0.name == "bad" }?.state == "crash-loop"
            }
            (code, body) = try probe(port, "/readyz")
            #expect(code == 503 && body == "not ready: bad 0/1 ready (crash-loop)\n", "\(body)")
            r = try await s.ctl("status", "--check", "bad")
            #expect(r.code == 3 && r.err.contains("bad 0/1 ready (crash-loop)"), "\(r)")
            #expect(metricSum(try Metrics.scrape(port), "swarm_restarts_total", where: [("app", "bad"), ("reason", "crash")]) >= 1)

            // Stopped: wants no worker, so the host is ready; named, it is not.
            try await s.ctlOK("stop", "bad")
            #expect(try probe(port, "/readyz") == (200, "ready: 2 apps\n"))
            (code, body) = try probe(port, "/readyz?app=bad")
            #expect(code == 503 && body == "not ready: bad stopped\n", "\(body)")
            #expect(try await s.ctl("status", "--check").code == 0)
            r = try await s.ctl("status", "--check", "bad")
            #expect(r.code == 3 && r.err.contains("bad stopped"), "\(r)")

            // Unknown.
            (code, body) = try probe(port, "/readyz?app=nope")
            #expect(code == 503 && body == "not ready: nope: no such app\n", "\(body)")
            r = try await s.ctl("status", "--check", "nope")
            #expect(r.code != 0 && r.err.contains("no app named 'nope'"), "\(r)")

            // Error: a remembered app whose config is gone, after a restart of swarmd.
            try await s.ctlOK("delete", "bad")
            let gone = try s.write("gone.conf", Conf.app("gone", command: ["/bin/sleep", "600"], extra: quick))
            try await s.ctlOK("start", gone)
            _ = try await s.stopDaemon()
            try FileManager.default.removeItem(atPath: gone)
            let port2 = try await Metrics.startDaemon(s)
            try await waitUntil(timeout: 20, "web to be ready again") { try s.quickStatus().apps.first { $0.name == "web" }?.workersReady == 2 }
            (code, body) = try probe(port2, "/readyz")
            #expect(code == 503 && body.hasPrefix("not ready: gone error"), "\(body)")
            r = try await s.ctl("status", "--check")
            #expect(r.code == 3 && r.err.contains("gone error"), "\(r)")
            let text = try Metrics.scrape(port2)
            #expect(metricValue(text, "swarm_app_state", [("app", "gone"), ("state", "error")]) == 1)
            try await s.ctlOK("delete", "gone")
            #expect(try probe(port2, "/readyz") == (200, "ready: 1 app\n"))

            // Shutting down: not ready, still alive, while a worker takes its stop timeout.
            let stubborn = try s.write("stubborn.conf", Conf.python("stubborn", script: "ignore_term.py", port: try Ports.free(),
                                                                  extra: "[stop]\ntimeout = \"4s\"\n"))
            try await s.ctlOK("start", stubborn)
            _ = try await s.waitReady("stubborn", workers: 1)
            s.daemon?.signal(SIGTERM)
            try await waitUntil(timeout: 3, "/readyz to say swarmd is shutting down") {
                (try? probe(port2, "/readyz")).map { $0 == (503, "not ready: swarmd is shutting down\n") } ?? false
            }
            #expect(try probe(port2, "/healthz") == (200, "ok\n"), "alive while it shuts down")
            _ = try await s.daemon?.wait(timeout: 20)
        }
    }
}
