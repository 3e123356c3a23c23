import Foundation
import Glibc
import SwarmProtocol
import Testing

// Issue 14 items 1 and 4, as a user meets them: servers that bind
// process.env.PORT themselves run as N workers on one port under swarmd,
// unmodified; the non-blocking flag of the shared socket does not leak from
// one worker to the next of its slot.

@Suite("Bind interception: unmodified servers that bind their own port")
struct InterceptTests {
    @Test("an unmodified Node listen(PORT) with 3 workers answers from 3 pids on one port and survives 10 rolling reloads under load with 0 failed requests")
    func nodeListenPortThroughTenReloads() async throws {
        try await withSwarm { s in
            let port = try Ports.free()
            let app = try s.write("app.js", InterceptApps.node)
            let conf = try s.write("web.conf", InterceptApps.conf("web", command: [Paths.node, app], workers: 3, port: port))
            try await s.startDaemon([conf])
            var pids = try await s.waitReady("web", workers: 3)
            let answers = try await waitForAnswers(port, from: Set(pids))
            #expect(answers.count == 3, "\(answers)")
            for pid in pids {
                // libuv's own socket was replaced by the slot's: the fd it bound holds fd 3's socket.
                let fds = substitutedFDs(pid: pid)
                #expect(fds.count == 1, "pid \(pid): fds holding its slot's socket besides 3: \(fds)")
            }
            let g0 = try reloadApp(try s.quickStatus(), "web").generation
            let load = Traffic(port: port)
            let (_, report) = try await withTraffic(load) {
                for i in 1...10 {
                    try await s.ctlOK("reload", "web")
                    pids = try await expectReplaced(s, "web", workers: 3, before: pids, generation: g0 + i)
                }
            }
            print("node listen(PORT), 10 reloads under load: \(report)")
            #expect(report.failed == 0, "load during 10 reloads: \(report)")
            #expect(report.ok > 100, "load during 10 reloads: \(report)")
            let last = try await waitForAnswers(port, from: Set(pids))
            #expect(Set(last.keys) == Set(pids))
        }
    }

    @Test("a static Go net/http binary (CGO_ENABLED=0) and Python's http.server each run 2 workers on one port")
    func goAndPythonTwoWorkersEach() async throws {
        try await withSwarm { s in
            let go = try await InterceptApps.buildGoServer(in: s.dir)
            let goPort = try Ports.free()
            let pyPort = try Ports.free()
            let py = try s.write("py.py", InterceptApps.python())
            let goConf = try s.write("go.conf", InterceptApps.conf("goweb", command: [go], workers: 2, port: goPort))
            let pyConf = try s.write("py.conf", InterceptApps.conf("pyweb", command: [Paths.python, py], workers: 2, port: pyPort))
            try await s.startDaemon([goConf, pyConf])
            for (name, port) in [("goweb", goPort), ("pyweb", pyPort)] {
                let pids = try await s.waitReady(name, workers: 2)
                let answers = try await waitForAnswers(port, from: Set(pids), connections: 20)
                #expect(answers.count == 2, "\(name): \(answers)")
                for pid in pids {
                    #expect(substitutedFDs(pid: pid).count == 1, "\(name) pid \(pid) holds its slot's socket at the fd it bound")
                }
            }
        }
    }

    @Test("a bind to another port is untouched; a bind in a child process of the worker is intercepted")
    func otherPortAndChildProcess() async throws {
        try await withSwarm { s in
            let port = try Ports.free()
            let other = try Ports.free()
            // Its own socket on `other` (with a listen backlog of its own), then http.server on PORT.
            let own = try s.write("own.py", InterceptApps.python(prelude: """
                import threading
                mine = socket.socket()
                mine.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                mine.bind(("127.0.0.1", \(other)))
                mine.listen(7)
                def own_loop():
                    while True:
                        c, _ = mine.accept()
                        c.recv(65536)
                        body = b"own %d" % os.getpid()
                        c.sendall(b"HTTP/1.1 200 OK\\r\\nContent-Length: %d\\r\\nConnection: close\\r\\n\\r\\n" % len(body) + body)
                        c.close()
                threading.Thread(target=own_loop, daemon=True).start()
                """))
            let ownConf = try s.write("own.conf", InterceptApps.conf("own", command: [Paths.python, own], workers: 1, port: port))
            let childPort = try Ports.free()
            // The worker forks; only the child binds PORT and serves.
            let forking = try s.write("fork.py", InterceptApps.python(main: """
                child = os.fork()
                if child == 0:
                    serve()
                signal.signal(signal.SIGTERM, lambda *a: (os.kill(child, signal.SIGTERM), os._exit(0)))
                os.waitpid(child, 0)
                """))
            let forkConf = try s.write("fork.conf", InterceptApps.conf("fork", command: [Paths.python, forking], workers: 2, port: childPort))
            try await s.startDaemon([ownConf, forkConf])

            let ownPid = try await s.waitReady("own", workers: 1)[0]
            _ = try await waitForAnswers(port, from: [ownPid], connections: 4)
            let r = try await waitUntil(timeout: 10, "an answer on the worker's own port \(other)") { try? httpGet(other) }
            #expect(r.body == "own \(ownPid)")
            // The socket on `other` is the worker's own: not fd 3's, and the kernel's, with its own backlog.
            let ss = try runSync("/usr/bin/ss", ["-ltnH", "sport = :\(other)"]).out
            #expect(ss.contains("LISTEN") && ss.split(separator: " ", omittingEmptySubsequences: true).dropFirst(2).first == "7",
                    "the worker's own listener on \(other) keeps its backlog 7: \(ss)")
            #expect(substitutedFDs(pid: ownPid).count == 1, "only the bind to PORT got the slot's socket")

            let parents = try await s.waitReady("fork", workers: 2)
            let children = try await childrenOf(parents)
            let answers = try await waitForAnswers(childPort, from: Set(children), connections: 20)
            #expect(Set(answers.keys).isDisjoint(with: parents), "the children answer, not the workers: \(answers), workers \(parents)")
            for child in children {
                #expect(substitutedFDs(pid: child).count == 1, "child \(child) holds its slot's socket at the fd it bound")
            }
        }
    }

    @Test("O_NONBLOCK set by one worker is not seen by the next worker of its slot (restart, surge-0 reload); during a surge reload the new worker shares the old one's")
    func nonBlockingFlagDoesNotLeak() async throws {
        try await withSwarm { s in
            let port = try Ports.free()
            // A worker on fd 3 that reports the flag it found, then sets it (as libuv would).
            let script = try s.write("flag.py", """
                import fcntl, http.server, os, signal, socket
                found = 1 if fcntl.fcntl(3, fcntl.F_GETFL) & os.O_NONBLOCK else 0
                fcntl.fcntl(3, fcntl.F_SETFL, fcntl.fcntl(3, fcntl.F_GETFL) | os.O_NONBLOCK)
                class H(http.server.BaseHTTPRequestHandler):
                    def do_GET(self):
                        body = ("%d %d" % (os.getpid(), found)).encode()
                        self.send_response(200)
                        self.send_header("Content-Length", str(len(body)))
                        self.end_headers()
                        self.wfile.write(body)
                    def log_message(self, *a): pass
                signal.signal(signal.SIGTERM, lambda *a: os._exit(0))
                srv = http.server.HTTPServer(("127.0.0.1", 0), H, bind_and_activate=False)
                srv.socket = socket.socket(fileno=3)
                srv.serve_forever()

                """)
            let conf = try s.write("flag.conf", Conf.app("flag", command: [Paths.python, script], workers: 1, port: port,
                                                          extra: "[ready]\nmode = \"listening\"\n[restart]\ninitial_delay = \"100ms\""))
            try await s.startDaemon([conf])
            func answer(_ pid: Int32) async throws -> String {
                try await waitUntil(timeout: 10, "pid \(pid) to answer on \(port)") {
                    let r = try? httpGet(port)
                    return r?.body.hasPrefix("\(pid) ") == true ? r!.body : nil
                }
            }
            let first = try await s.waitReady("flag", workers: 1)[0]
            #expect(try await answer(first) == "\(first) 0", "the first worker finds the flag off")
            // A crash: the next worker of the slot finds the flag off again, not its predecessor's.
            kill(first, SIGKILL)
            let second = try await waitUntil(timeout: 15, "a restarted worker") {
                let p = try await s.waitReady("flag", workers: 1)[0]
                return p != first ? p : nil
            }
            #expect(try await answer(second) == "\(second) 0", "after a restart the flag is off again")

            // A rolling reload with surge 1: old and new worker share the slot's socket, so the
            // new one finds what the old one set (README: the non-blocking flag).
            try await s.ctlOK("reload", "flag")
            let third = try await expectReplaced(s, "flag", workers: 1, before: [second], generation: 2)[0]
            #expect(try await answer(third) == "\(third) 1", "during a surge reload the flag is the old worker's")

            // surge = 0: the old worker is gone before the new one starts: off again.
            try s.write("flag.conf", Conf.app("flag", command: [Paths.python, script], workers: 1, port: port,
                                              extra: "[ready]\nmode = \"listening\"\n[reload]\nsurge = 0"))
            try await s.ctlOK("reload", "flag")
            let fourth = try await expectReplaced(s, "flag", workers: 1, before: [third], generation: 3)[0]
            #expect(try await answer(fourth) == "\(fourth) 0", "a surge-0 reload starts the new worker with the flag off")
        }
    }

    @Test("an intercepted worker gets the flag of the socket it bound: Node's non-blocking, then a blocking-accept Python server in the same slot")
    func interceptedWorkersGetTheirOwnFlag() async throws {
        try await withSwarm { s in
            let port = try Ports.free()
            let node = try s.write("app.js", InterceptApps.node)
            // Blocking accept() with no selector: a non-blocking socket would fail it with EAGAIN.
            let blocking = try s.write("blocking.py", """
                import os, signal, socket
                signal.signal(signal.SIGTERM, lambda *a: os._exit(0))
                s = socket.socket()
                s.bind(("127.0.0.1", int(os.environ["PORT"])))
                s.listen(16)
                while True:
                    c, _ = s.accept()
                    c.recv(65536)
                    body = ("%d\\n" % os.getpid()).encode()
                    c.sendall(b"HTTP/1.1 200 OK\\r\\nContent-Length: %d\\r\\nConnection: close\\r\\n\\r\\n" % len(body) + body)
                    c.close()

                """)
            let conf = try s.write("web.conf", InterceptApps.conf("web", command: [Paths.node, node], workers: 1, port: port,
                                                                   extra: "[reload]\nsurge = 0"))
            try await s.startDaemon([conf])
            let nodePid = try await s.waitReady("web", workers: 1)[0]
            _ = try await waitForAnswers(port, from: [nodePid], connections: 4)
            #expect(isNonBlocking(pid: nodePid, fd: 3) == true, "Node's (libuv's) choice: non-blocking")
            try s.write("web.conf", InterceptApps.conf("web", command: [Paths.python, blocking], workers: 1, port: port,
                                                        extra: "[reload]\nsurge = 0"))
            try await s.ctlOK("reload", "web")
            let pyPid = try await expectReplaced(s, "web", workers: 1, before: [nodePid], generation: 2)[0]
            let answers = try await waitForAnswers(port, from: [pyPid], connections: 30)
            #expect(answers[pyPid] == 30)
            #expect(isNonBlocking(pid: pyPid, fd: 3) == false, "the blocking server's choice: blocking")
            let app = try reloadApp(try s.quickStatus(), "web")
            #expect(app.workers.allSatisfy { $0.restarts == 0 }, "no EAGAIN crash: \(app.workers.map(\.restarts))")
        }
    }

    @Test("hostile binds: a bad sockaddr pointer, a huge addrlen, processes killed between bind and the answer leave swarmd and the other workers untouched")
    func hostileBinds() async throws {
        try await withSwarm { s in
            let port = try Ports.free()
            let hostilePort = try Ports.free()
            let py = try s.write("py.py", InterceptApps.python())
            let hostile = try s.write("hostile.py", InterceptApps.python(prelude: """
                import ctypes, time
                libc = ctypes.CDLL(None, use_errno=True)
                libc.bind.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_uint]
                good = ctypes.create_string_buffer(bytes([2, 0, port >> 8, port & 255, 127, 0, 0, 1]) + bytes(8))
                s = socket.socket()
                for name, ptr, length in [("badptr", 1, 16), ("huge", ctypes.addressof(good), 1 << 30),
                                          ("max", ctypes.addressof(good), 0xffffffff), ("short", ctypes.addressof(good), 1)]:
                    r = libc.bind(s.fileno(), ptr, length)
                    print("hostile", name, r, ctypes.get_errno(), flush=True)
                s.close()
                # Children that bind the port and are killed at once: some die before swarmd
                # answers, some while it answers, some after.
                for i in range(40):
                    pid = os.fork()
                    if pid == 0:
                        t = socket.socket()
                        t.bind(("127.0.0.1", port))
                        os._exit(0)
                    if i % 2 == 0:
                        os.kill(pid, signal.SIGKILL)
                    os.waitpid(pid, 0)
                print("hostile done", flush=True)
                """))
            let web = try s.write("web.conf", InterceptApps.conf("web", command: [Paths.python, py], workers: 2, port: port))
            let bad = try s.write("bad.conf", InterceptApps.conf("bad", command: [Paths.python, hostile], workers: 1, port: hostilePort))
            let daemon = try await s.startDaemon([web])
            let pids = try await s.waitReady("web", workers: 2)
            _ = try await waitForAnswers(port, from: Set(pids), connections: 12)
            let load = Traffic(port: port, keepAlive: 0, fresh: 2)
            let (_, report) = try await withTraffic(load) {
                try await s.ctlOK("start", bad)
                let badPid = try await s.waitReady("bad", workers: 1)[0]
                let logs = try await waitUntil(timeout: 20, "the hostile worker to finish its binds") {
                    let l = try await s.ctl("logs", "bad", "-n", "50").out
                    return l.contains("hostile done") ? l : nil
                }
                // The kernel answered the calls swarmd continued, as it would without swarm.
                #expect(logs.contains("hostile badptr -1 \(EFAULT)"), "\(logs)")
                #expect(logs.contains("hostile huge -1 \(EINVAL)"), "\(logs)")
                #expect(logs.contains("hostile max -1 \(EINVAL)"), "\(logs)")
                #expect(logs.contains("hostile short -1 \(EINVAL)"), "\(logs)")
                // …and it still serves on its own slot's socket afterwards.
                _ = try await waitForAnswers(hostilePort, from: [badPid], connections: 4)
                #expect(substitutedFDs(pid: badPid).count == 1)
            }
            #expect(report.failed == 0, "the other app's load: \(report)")
            #expect(daemon.running, "swarmd is alive")
            let after = try await s.waitReady("web", workers: 2)
            #expect(after == pids, "the other app's workers were untouched: \(pids) → \(after)")
        }
    }

    @Test("daemon-reexec with intercepting workers: they keep serving, and a rebind after the re-exec is still intercepted")
    func reexecKeepsInterception() async throws {
        try await withSwarm { s in
            let port = try Ports.free()
            // On SIGUSR1: close its server socket and bind PORT again (a config reload, say).
            let py = try s.write("rebind.py", InterceptApps.python(main: """
                import threading
                rebind = threading.Event()
                signal.signal(signal.SIGUSR1, lambda *a: rebind.set())
                while True:
                    srv = http.server.HTTPServer(("127.0.0.1", port), H)
                    srv.timeout = 0.05
                    print("bound", len(os.listdir("/proc/self/fd")), flush=True)
                    while not rebind.is_set():
                        srv.handle_request()
                    rebind.clear()
                    srv.server_close()
                """))
            let conf = try s.write("web.conf", InterceptApps.conf("web", command: [Paths.python, py], workers: 2, port: port))
            let daemon = try await s.startDaemon([conf])
            let pids = try await s.waitReady("web", workers: 2)
            _ = try await waitForAnswers(port, from: Set(pids), connections: 12)
            let before = pids.map { substitutedFDs(pid: $0) }
            #expect(before.allSatisfy { $0.count == 1 }, "\(before)")

            try await s.ctlOK("daemon-reexec")
            try await waitUntil(timeout: 15, "swarmd to answer after the re-exec") { (try? s.request(.ping))?.ok == true }
            let reexecuted = try s.quickStatus().daemon.pid
            #expect(daemon.running && daemon.pid == reexecuted, "same swarmd pid")
            #expect(try await s.waitReady("web", workers: 2) == pids, "the workers were kept")
            for pid in pids { kill(pid, SIGUSR1) }
            try await waitUntil(timeout: 15, "both workers to bind again (log: \(s.daemonLog.suffix(800)))") {
                let l = try await s.ctl("logs", "web", "-n", "50").out
                return l.components(separatedBy: "bound").count - 1 >= 4
            }
            // The rebind got the slot's socket again (an own socket would have failed: EADDRINUSE).
            let answers = try await waitForAnswers(port, from: Set(pids), connections: 12)
            #expect(Set(answers.keys) == Set(pids))
            for pid in pids { #expect(substitutedFDs(pid: pid).count == 1, "pid \(pid) after the rebind") }
            let app = try reloadApp(try s.quickStatus(), "web")
            #expect(app.workers.allSatisfy { $0.restarts == 0 }, "no worker died: \(app.workers.map(\.restarts))")
        }
    }

    @Test("seccomp notification unavailable (swarmd under a filter that forbids seccomp): one clear message, workers on fd 3 as before")
    func fallbackWithoutSeccomp() async throws {
        try await withSwarm { s in
            let port = try Ports.free()
            let selfPort = try Ports.free()
            let wrapper = try s.write("noseccomp.py", noSeccompWrapper)
            let conf = try s.write("web.conf", Conf.python("web", workers: 2, port: port))
            let py = try s.write("py.py", InterceptApps.python())
            let selfConf = try s.write("self.conf", InterceptApps.conf("self", command: [Paths.python, py], workers: 1, port: selfPort))
            let d = try s.launchDaemon(["--socket", s.socket, "--state-dir", s.stateDir, conf, selfConf], wrapper: [Paths.python, wrapper])
            try await waitUntil(timeout: 15, "swarmd under the wrapper to answer ping") {
                if let code = d.poll() { throw HarnessError("swarmd exited with \(code): \(d.stderr)") }
                return (try? s.request(.ping))?.ok == true
            }
            let pids = try await s.waitReady("web", workers: 2)
            let answers = try await waitForAnswers(port, from: Set(pids), connections: 12)
            #expect(answers.count == 2)
            let lines = s.daemonLog.split(separator: "\n").filter { $0.contains("bind interception unavailable") }
            #expect(lines.count == 1, "one message: \(lines)")
            #expect(lines.first?.contains("seccomp") == true && lines.first?.contains("fd 3") == true, "\(lines)")
            // Without interception a server that binds its port itself meets swarm's socket: EADDRINUSE.
            let logs = try await waitUntil(timeout: 20, "the self-binding worker's failure in its log") {
                let l = try await s.ctl("logs", "self", "-n", "50").out
                return l.contains("Address already in use") ? l : nil
            }
            #expect(logs.contains("Errno 98"), "\(logs)")
        }
    }
}

/// Runs its arguments under a seccomp filter that fails seccomp(2) with EPERM,
/// as a container runtime's policy may: swarmd's start-up probe must notice.
let noSeccompWrapper = """
import ctypes, os, struct, sys
def stmt(code, k): return struct.pack("HBBI", code, 0, 0, k)
def jump(code, k, jt, jf): return struct.pack("HBBI", code, jt, jf, k)
LD_W_ABS, JEQ_K, RET_K = 0x20, 0x15, 0x06
AUDIT_ARCH_X86_64, NR_SECCOMP = 0xc000003e, 317
prog = b"".join([
    stmt(LD_W_ABS, 4), jump(JEQ_K, AUDIT_ARCH_X86_64, 0, 3),
    stmt(LD_W_ABS, 0), jump(JEQ_K, NR_SECCOMP, 0, 1),
    stmt(RET_K, 0x00050000 | 1),
    stmt(RET_K, 0x7fff0000),
])
buf = ctypes.create_string_buffer(prog)
class Fprog(ctypes.Structure): _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]
fp = Fprog(len(prog) // 8, ctypes.addressof(buf))
libc = ctypes.CDLL(None, use_errno=True)
libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p, ctypes.c_ulong, ctypes.c_ulong]
if os.geteuid() != 0 and libc.prctl(38, 1, None, 0, 0) != 0:
    sys.exit("prctl(PR_SET_NO_NEW_PRIVS) failed: errno %d" % ctypes.get_errno())
if libc.prctl(22, 2, ctypes.byref(fp), 0, 0) != 0:
    sys.exit("prctl(PR_SET_SECCOMP) failed: errno %d" % ctypes.get_errno())
os.execv(sys.argv[1], sys.argv[1:])

"""
