import Foundation
import Glibc
import SwarmProtocol
import Testing

// Issue 14 item 5: a failed start, restart or scale shows the failing worker's
// last lines, as reload does; `[reload] surge = 0` for apps that cannot share.

@Suite("Failures show the worker's last lines; surge = 0 for exclusive resources")
struct QuickStartFailureTests {
    @Test("start of a command that exits 1 at once: 'exited with status 1' and the lines it printed")
    func startFailureShowsTheLog() async throws {
        try await withSwarm { s in
            try await s.startDaemon()
            let r = try await s.quick(["start", "--name", "bad", "--", "/bin/sh", "-c",
                                       "echo booting; echo 'Error: Cannot find module expresss' >&2; exit 1"])
            #expect(r.code == 1, "\(r)")
            #expect(r.err.contains("bad: 1 of 1 worker failed to start: exited with status 1"), "\(r)")
            #expect(r.err.contains("bad[0]") && r.err.contains(" E Error: Cannot find module expresss"), "the worker's stderr line: \(r)")
            #expect(r.err.contains(" O booting"), "and its stdout line: \(r)")

            // The same through a config file.
            let conf = try s.write("crash.conf", Conf.app("crash", command: ["/bin/sh", "-c", "echo 'listen EADDRINUSE: :::3000' >&2; exit 7"]))
            let c = try await s.ctl("start", conf)
            #expect(c.code == 1 && c.err.contains("exited with status 7") && c.err.contains("crash[0]") && c.err.contains("EADDRINUSE"), "\(c)")
        }
    }

    @Test("restart and scale whose new workers fail: the reply has that worker's lines, not an older worker's")
    func restartAndScaleFailuresShowTheLog() async throws {
        try await withSwarm { s in
            let flag = s.dir + "/broken"
            try s.write("flaky.sh", """
                #!/bin/sh
                echo "worker $SWARM_WORKER up as $$"
                if [ -e '\(flag)' ]; then echo "cannot lock db.lock (held by $$)" >&2; exit 3; fi
                exec sleep 600
                """)
            chmod(s.dir + "/flaky.sh", 0o755)
            try await s.startDaemon()
            try await s.quickOK(["start", "--name", "flaky", "--", "./flaky.sh"])
            let before = try await s.waitReady("flaky", workers: 1)
            FileManager.default.createFile(atPath: flag, contents: nil)

            let r = try await s.ctl("restart", "flaky")
            #expect(r.code == 1 && r.err.contains("flaky: 1 of 1 worker failed to start: exited with status 3"), "\(r)")
            #expect(r.err.contains("cannot lock db.lock"), "the new worker's error line: \(r)")
            #expect(!r.err.contains("up as \(before[0])"), "no line of the worker that was replaced: \(r)")

            let sc = try await s.ctl("scale", "flaky", "2")
            #expect(sc.code == 1 && sc.err.contains("failed to start: exited with status 3") && sc.err.contains("cannot lock db.lock"), "\(sc)")
            try await s.ctlOK("delete", "flaky")
        }
    }

    /// A server that must be alone: it takes an exclusive lock on a shared file
    /// (LOCK_NB: a second one exits 1 at once) and serves fd 3 until SIGTERM.
    static let exclusiveServer = """
        import fcntl, os, signal, socket, sys
        from http.server import BaseHTTPRequestHandler, HTTPServer
        lock = open(sys.argv[1], "a")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print("db.lock is held by another worker", file=sys.stderr, flush=True)
            sys.exit(1)
        class H(BaseHTTPRequestHandler):
            def do_GET(self):
                body = b"%d\\n" % os.getpid()
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Connection", "close")
                self.end_headers()
                self.wfile.write(body)
            def log_message(self, *a):
                pass
        server = HTTPServer(("127.0.0.1", 0), H, bind_and_activate=False)
        server.socket.close()
        server.socket = socket.socket(fileno=3)
        signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))
        server.serve_forever()
        """

    @Test("[reload] surge = 0: an app holding an exclusive lock reloads (old stopped, then new started); surge = 1 rolls it back")
    func surgeZeroReloadsAnExclusiveApp() async throws {
        try await withSwarm { s in
            let port = try Ports.free()
            try s.write("exclusive.py", Self.exclusiveServer)
            let lock = s.dir + "/db.lock"
            func conf(surge: Int) -> String {
                Conf.app("db", command: [Paths.python, s.dir + "/exclusive.py", lock], port: port,
                         extra: "[reload]\nsurge = \(surge)\n[stop]\ntimeout = \"5s\"\n")
            }
            let file = try s.write("db.conf", conf(surge: 1))
            try await s.startDaemon([file])
            var pids = try await s.waitReady("db", workers: 1)

            // surge 1: the new worker starts beside the old one, cannot lock, and the reload rolls back.
            let r = try await s.ctl("reload", "db")
            #expect(r.code == 1 && r.err.contains("rolled back") && r.err.contains("db.lock is held by another worker"), "\(r)")
            #expect(try await s.waitReady("db", workers: 1) == pids, "the old worker kept serving")

            // surge 0: stopped first, then replaced; 3 reloads in a row. The rolled-back generation 2
            // was never in force, and its number is not given out again.
            try s.write("db.conf", conf(surge: 0))
            for generation in 3...5 {
                let out = try await s.ctlOK("reload", "db").out
                let old = pids[0]
                pids = try await expectReplaced(s, "db", workers: 1, before: pids, generation: generation)
                // The old worker was retired before its replacement was started.
                let lines = out.split(separator: "\n").map(String.init)
                let retired = lines.firstIndex { $0.contains("stopping pid \(old) before its replacement starts") }
                let started = lines.firstIndex { $0.contains("started pid \(pids[0])") }
                #expect(retired != nil && started != nil && retired! < started!, "order of the reload's steps: \(out)")
                #expect(try httpGet(port).pid == pids[0])
            }
        }
    }
}
