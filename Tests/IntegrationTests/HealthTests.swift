import Foundation
import Glibc
import SwarmProtocol
import Testing

// Health (issue 15): a SIGSTOPped worker is seen hung from its accept queue and
// replaced start-first, its queued clients served by the replacement; a worker
// whose /healthz turns 503, or hangs, is replaced and its sibling is not touched.

/// A worker on fd 3 (threaded, so / answers while /healthz hangs): /healthz
/// answers 503 while the file `sick.<pid>` exists in $HEALTH_DIR, and never
/// answers while `hang.<pid>` exists.
private let healthServer = #"""
import http.server, os, socket, sys, time
d = os.environ["HEALTH_DIR"]
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *a): pass
    def do_GET(self):
        me = os.getpid()
        if self.path == "/healthz":
            if os.path.exists(f"{d}/hang.{me}"):
                time.sleep(3600)
            code = 503 if os.path.exists(f"{d}/sick.{me}") else 200
        else:
            code = 200
        body = f"{me}\n".encode()
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
class S(http.server.ThreadingHTTPServer):
    daemon_threads = True
s = S(("127.0.0.1", 0), H, bind_and_activate=False)
s.socket.close()
s.socket = socket.socket(fileno=3)
s.serve_forever()
"""#

/// Values appended from several threads.
private final class Collected<T>: @unchecked Sendable {
    private let lock = NSLock()
    private var items: [T] = []
    func append(_ v: T) { lock.withLock { items.append(v) } }
    func get() -> [T] { lock.withLock { items } }
}

/// The slot's ready worker's status line.
private func worker(_ s: Swarm, _ app: String, slot: Int) throws -> WorkerStatus? {
    try reloadApp(try s.quickStatus(), app).workers.first { $0.slot == slot && $0.state == "ready" }
}

@Suite("Health: hang detection, probes, start-first replacement")
struct HealthIntegrationTests {
    @Test("a SIGSTOPped worker under load is seen hung and replaced; the clients queued on its slot are answered")
    func stoppedWorkerIsReplaced() async throws {
        guard getuid() == 0 else {
            print("skipped: needs root (eBPF steering pins connections to slots)")
            return
        }
        try await withSwarm { s in
            let port = try Ports.free()
            let conf = try s.write("web.conf", Conf.python("web", workers: 2, port: port, extra: """
                [health]
                stuck_after = "2s"
                [stop]
                timeout = "2s"
                """))
            try await s.startDaemon([conf])
            _ = try await s.waitReady("web", workers: 2)
            let stopped = try #require(try readyPid(s, "web", slot: 0))
            let stoppedIdentity = try #require(ProcessIdentity(pid: stopped))
            let sibling = try #require(try readyPid(s, "web", slot: 1))
            kill(stopped, SIGSTOP)
            defer { kill(stopped, SIGCONT) }
            let hungAt = Date()
            // Fresh connections opened at once: round-robin puts half of them in the stopped slot's queue.
            let results = Collected<Result<Int32, HarnessError>>()
            let clients = 12
            let threads = (0..<clients).map { _ in
                Thread {
                    let r: Result<Int32, HarnessError>
                    do {
                        let answer = try HTTPConnection(port: port, timeout: 30).get("/", close: true)
                        r = answer.status == 200 && answer.pid != nil ? .success(answer.pid!) : .failure(HarnessError("answered \(answer.status)"))
                    } catch { r = .failure(error as? HarnessError ?? HarnessError("\(error)")) }
                    results.append(r)
                }
            }
            threads.forEach { $0.start() }
            let replacement = try await waitUntil(timeout: 30, "slot 0 served by a new worker") { () -> Int32? in
                guard let p = try? readyPid(s, "web", slot: 0), p != stopped else { return nil }
                return p
            }
            let replacedAfter = elapsed(since: hungAt)
            try await waitUntil(timeout: 40, "every client answered (\(results.get().count) of \(clients))") { results.get().count == clients }
            let answers = results.get()
            let failures = answers.compactMap { if case let .failure(e) = $0 { return e.description } else { return nil } }
            let pids = answers.compactMap { try? $0.get() }
            #expect(failures.isEmpty, "failed: \(failures)")
            #expect(pids.contains(replacement), "the replacement served the queued clients: answers from \(pids), replacement \(replacement)")
            #expect(!pids.contains(stopped))
            #expect(try readyPid(s, "web", slot: 1) == sibling, "the sibling was not touched")
            let w = try #require(try worker(s, "web", slot: 0))
            #expect(w.lastExit?.hasPrefix("replaced: hung (queue ") == true, "last_exit: \(String(describing: w.lastExit))")
            // The stopped worker goes: SIGTERM with SIGCONT, SIGKILL at the stop timeout.
            try await waitUntil(timeout: 15, "pid \(stopped) gone") { !stoppedIdentity.isAlive }
            print("hung worker replaced \(String(format: "%.1f", replacedAfter)) s after SIGSTOP (stuck_after 2 s); answers by pid: \(Dictionary(grouping: pids, by: { $0 }).mapValues(\.count))")
        }
    }

    @Test("a worker whose /healthz turns 503 is replaced within interval × failures + its start; its sibling is untouched")
    func unhealthyWorkerIsReplaced() async throws {
        guard getuid() == 0 else {
            print("skipped: needs root (eBPF steering aims each probe at one worker)")
            return
        }
        try await withSwarm { s in
            let port = try Ports.free()
            let script = try s.write("health_server.py", healthServer)
            let conf = try s.write("web.conf", Conf.app("web", command: [Paths.python, script], workers: 2, port: port,
                                                         env: ["HEALTH_DIR": s.dir], extra: """
                [health]
                http = "/healthz"
                interval = "300ms"
                timeout = "250ms"
                failures = 3
                """))
            try await s.startDaemon([conf])
            _ = try await s.waitReady("web", workers: 2)
            try await waitUntil(timeout: 10, "both workers probed healthy") {
                (try? reloadApp(try s.quickStatus(), "web").workers.allSatisfy { $0.health == "healthy" && $0.lastProbe == "http 200" }) == true
            }
            let sick = try #require(try readyPid(s, "web", slot: 0))
            let sibling = try #require(try readyPid(s, "web", slot: 1))
            FileManager.default.createFile(atPath: "\(s.dir)/sick.\(sick)", contents: nil)
            let start = Date()
            let replacement = try await waitUntil(timeout: 20, "slot 0 served by a new worker") { () -> Int32? in
                guard let p = try? readyPid(s, "web", slot: 0), p != sick else { return nil }
                return p
            }
            let took = elapsed(since: start)
            // 3 × 300 ms of probes, the backoff's 100 ms, a Python start (well under 2 s even loaded).
            #expect(took < 0.9 + 0.1 + 0.5 + 4, "replaced after \(took) s")
            #expect(try readyPid(s, "web", slot: 1) == sibling)
            let w = try #require(try worker(s, "web", slot: 0))
            #expect(w.pid == replacement)
            #expect(w.lastExit == "replaced: unhealthy (http 503 ×3)", "last_exit: \(String(describing: w.lastExit))")
            let other = try #require(try worker(s, "web", slot: 1))
            #expect(other.lastExit == nil && other.restarts == 0, "sibling: \(other)")
            print("503 worker replaced after \(String(format: "%.2f", took)) s (interval 300 ms × 3 failures)")
        }
    }

    @Test("a worker that answers / but hangs on /healthz is replaced (probe timeout)")
    func hangingProbeIsReplaced() async throws {
        guard getuid() == 0 else {
            print("skipped: needs root (eBPF steering aims each probe at one worker)")
            return
        }
        try await withSwarm { s in
            let port = try Ports.free()
            let script = try s.write("health_server.py", healthServer)
            let conf = try s.write("web.conf", Conf.app("web", command: [Paths.python, script], workers: 2, port: port,
                                                         env: ["HEALTH_DIR": s.dir], extra: """
                [health]
                http = "/healthz"
                interval = "400ms"
                timeout = "200ms"
                failures = 2
                """))
            try await s.startDaemon([conf])
            _ = try await s.waitReady("web", workers: 2)
            let stuck = try #require(try readyPid(s, "web", slot: 1))
            let sibling = try #require(try readyPid(s, "web", slot: 0))
            FileManager.default.createFile(atPath: "\(s.dir)/hang.\(stuck)", contents: nil)
            #expect(try httpGet(port, "/").status == 200, "/ still answers")
            _ = try await waitUntil(timeout: 20, "slot 1 served by a new worker") { () -> Int32? in
                guard let p = try? readyPid(s, "web", slot: 1), p != stuck else { return nil }
                return p
            }
            let w = try #require(try worker(s, "web", slot: 1))
            #expect(w.lastExit == "replaced: unhealthy (http timeout ×2)", "last_exit: \(String(describing: w.lastExit))")
            #expect(try readyPid(s, "web", slot: 0) == sibling)
        }
    }
}
