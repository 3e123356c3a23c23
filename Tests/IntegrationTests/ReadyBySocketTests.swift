import Foundation
import Glibc
import SwarmProtocol
import Testing

// Unmodified servers that do not wait on fd 3 itself: uvicorn --fd and Go's
// net.FileListener dup it to another number; hypercorn and gunicorn accept in
// processes they fork. In `listening` mode each must be ready on the first
// start of every slot (no restart, no readiness timeout).

enum ReadyBySocket {
    /// The venv scripts/deps.sh makes (uvicorn, hypercorn, gunicorn from PyPI; SWARM_TEST_VENV overrides).
    static var venvPython: String {
        let venv = ProcessInfo.processInfo.environment["SWARM_TEST_VENV"].flatMap { $0.isEmpty ? nil : $0 } ?? "/var/tmp/swarm-venv"
        return venv + "/bin/python3"
    }

    static func requireVenv(_ modules: String) throws {
        guard access(venvPython, X_OK) == 0, (try? runSync(venvPython, ["-c", "import \(modules)"]))?.code == 0 else {
            throw HarnessError("\(venvPython) cannot import \(modules): run scripts/deps.sh (it makes the test venv from PyPI)")
        }
    }

    /// An ASGI app (uvicorn, hypercorn) and a WSGI app (gunicorn) answering with the pid of the process that served.
    static let apps = """
    import os

    async def app(scope, receive, send):
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        body = ("%d\\n" % os.getpid()).encode()
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

    def wsgi(environ, start_response):
        body = ("%d\\n" % os.getpid()).encode()
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
        return [body]

    """

    /// A Go net/http server on the inherited fd 3 through net.FileListener, which dups it.
    static let goServer = """
    package main

    import (
    \t"fmt"
    \t"net"
    \t"net/http"
    \t"os"
    )

    func main() {
    \tf := os.NewFile(3, "listener")
    \tl, err := net.FileListener(f)
    \tif err != nil {
    \t\tfmt.Fprintln(os.Stderr, "FileListener:", err)
    \t\tos.Exit(1)
    \t}
    \tf.Close()
    \terr = http.Serve(l, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
    \t\tfmt.Fprintf(w, "%d\\n", os.Getpid())
    \t}))
    \tfmt.Fprintln(os.Stderr, "Serve:", err)
    \tos.Exit(1)
    }

    """

    /// Whether `pid` is `ancestor` or descends from it (parent links in /proc).
    static func descends(_ pid: Int32, from ancestor: Int32) -> Bool {
        var p = pid
        for _ in 0..<16 {
            if p == ancestor { return true }
            guard let s = ProcState.read(p), s.ppid > 1 else { return false }
            p = s.ppid
        }
        return false
    }

    /// The pids the daemon log says were found listening, by slot ("app[slot] is listening: pid N: …").
    static func evidence(in log: String, app: String) -> [Int: Int32] {
        var out: [Int: Int32] = [:]
        for line in log.split(separator: "\n") {
            guard let r = line.range(of: "\(app)[") else { continue }
            let rest = line[r.upperBound...]
            guard let close = rest.firstIndex(of: "]"), let slot = Int(rest[..<close]),
                  let at = rest.range(of: "] is listening: pid ") else { continue }
            let digits = rest[at.upperBound...].prefix { $0.isNumber }
            if let pid = Int32(digits) { out[slot] = pid }
        }
        return out
    }

    /// Starts `command` as 2 workers in `listening` mode: `start` must succeed
    /// with every slot's first worker ready (no restart), the app must answer,
    /// and the process seen listening must be the worker (`preFork: false`) or one of its children.
    static func expectReadyOnFirstStart(_ s: Swarm, _ name: String, command: [String], preFork: Bool) async throws {
        let port = try Ports.free()
        let conf = try s.write(name + ".conf", Conf.app(name, command: command, workers: 2, port: port,
                                                         extra: "[ready]\nmode = \"listening\"\ntimeout = \"30s\"\n[restart]\ninitial_delay = \"60s\"\nmax_delay = \"60s\""))
        try await s.startDaemon(args: ["--verbose"])
        let started = Date()
        let r = try await s.ctl("start", conf)
        #expect(r.code == 0, "\(r)\nswarmd log: \(s.daemonLog.suffix(4000))")
        guard r.code == 0 else { return }
        let took = elapsed(since: started)
        let app = try #require(try await s.status(name).apps.first { $0.name == name })
        #expect(app.workers.count == 2 && app.workers.allSatisfy { $0.state == "ready" && $0.restarts == 0 && $0.generation == 1 },
                "every slot's first worker is ready: \(app.workers.map { "\($0.slot): \($0.state), \($0.restarts) restarts" })")
        let workers = Dictionary(uniqueKeysWithValues: app.workers.compactMap { w in w.pid.map { (w.slot, $0) } })
        let seen = evidence(in: s.daemonLog, app: name)
        #expect(Set(seen.keys) == [0, 1], "the log names who listens in each slot: \(seen)")
        for (slot, pid) in seen {
            guard let worker = workers[slot] else { continue }
            if preFork {
                #expect(pid != worker && descends(pid, from: worker), "slot \(slot): \(pid) is a child of worker \(worker)")
            } else {
                #expect(pid == worker, "slot \(slot): the worker itself (\(worker)) listens, not \(pid)")
            }
        }
        let answering = try answeringPids(port, connections: 16)
        #expect(answering.keys.allSatisfy { pid in workers.values.contains { descends(pid, from: $0) } },
                "answered by \(answering.keys.sorted()), workers \(workers.values.sorted())")
        print("ready by socket: \(name) ready on first start in \(String(format: "%.1f", took)) s; listening: \(seen.sorted { $0.key < $1.key }.map { "slot \($0.key) pid \($0.value)" })")
    }
}

@Suite("Readiness by socket identity: unmodified servers in listening mode")
struct ReadyBySocketTests {
    @Test("uvicorn --fd {fd:http} (dups fd 3) is ready on the first start of every slot")
    func uvicorn() async throws {
        try ReadyBySocket.requireVenv("uvicorn")
        try await withSwarm { s in
            try s.write("apps.py", ReadyBySocket.apps)
            try await ReadyBySocket.expectReadyOnFirstStart(
                s, "uvi", command: [ReadyBySocket.venvPython, "-m", "uvicorn", "--fd", "{fd:http}", "--log-level", "warning", "apps:app"],
                preFork: false)
        }
    }

    @Test("Go net.FileListener(os.NewFile(3, …)), static (CGO_ENABLED=0), is ready on the first start of every slot")
    func goFileListener() async throws {
        try await withSwarm { s in
            let binary = try await InterceptApps.buildStaticGo(ReadyBySocket.goServer, in: s.dir, name: "filelistener")
            try await ReadyBySocket.expectReadyOnFirstStart(s, "gofl", command: [binary], preFork: false)
        }
    }

    @Test("hypercorn's default (the listener in a spawned child) is ready on the first start")
    func hypercorn() async throws {
        try ReadyBySocket.requireVenv("hypercorn")
        try await withSwarm { s in
            try s.write("apps.py", ReadyBySocket.apps)
            try await ReadyBySocket.expectReadyOnFirstStart(
                s, "hyper", command: [ReadyBySocket.venvPython, "-m", "hypercorn", "--bind", "fd://{fd:http}", "apps:app"],
                preFork: true)
        }
    }

    @Test("gunicorn --workers 2 (LISTEN_FDS, accepting in its workers) is ready on the first start")
    func gunicorn() async throws {
        try ReadyBySocket.requireVenv("gunicorn")
        try await withSwarm { s in
            try s.write("apps.py", ReadyBySocket.apps)
            // gunicorn also says READY=1 on NOTIFY_SOCKET, which would make it ready without the probe:
            // without it, only the probe can (env execs gunicorn in place, so LISTEN_PID stays right).
            try await ReadyBySocket.expectReadyOnFirstStart(
                s, "guni", command: ["/usr/bin/env", "-u", "NOTIFY_SOCKET", ReadyBySocket.venvPython, "-m", "gunicorn", "--workers", "2", "apps:wsgi"],
                preFork: true)
        }
    }
}
