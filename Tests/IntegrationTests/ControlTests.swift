import Foundation
import Glibc
import SwarmProtocol
import SwarmSystem
import Testing

/// Thread-safe results of concurrent clients.
final class Tally: @unchecked Sendable {
    private let lock = NSLock()
    private(set) var ok = 0
    private(set) var failures: [String] = []
    private(set) var pids: [Int32] = []

    func success(_ pid: Int32? = nil) { lock.withLock { ok += 1; if let pid { pids.append(pid) } } }
    func failure(_ why: String) { lock.withLock { failures.append(why) } }
    var snapshot: (ok: Int, failures: [String], pids: [Int32]) { lock.withLock { (ok, failures, pids) } }
}

@Suite("Control API: swarmctl and the control socket")
struct ControlTests {
    @Test("every verb works: ping, version, start, status, restart, reload, scale, stop, start by name, --replace, delete, shutdown")
    func everyVerb() async throws {
        try await withSwarm { s in
            let port = try Ports.free()
            let conf = try s.write("web.conf", Conf.python("web", workers: 2, port: port))
            let d = try await s.startDaemon()

            #expect(try await s.ctlOK("ping").out == "pong\n")
            #expect(try await s.ctlOK("version").out.contains("swarmd 0.2.0"))
            let started = try await s.ctlOK("start", conf)
            #expect(started.out.contains("web: started"), "\(started)")
            let gen1 = try await s.waitReady("web", workers: 2)
            #expect(Set(try answeringPids(port, connections: 16).keys) == Set(gen1))

            try await s.ctlOK("restart", "web")
            let afterRestart = try await s.waitReady("web", workers: 2)
            #expect(Set(afterRestart).isDisjoint(with: gen1), "restart should replace every worker")
            #expect(gen1.compactMap { ProcessIdentity(pid: $0) }.allSatisfy { !$0.isAlive })

            try await s.ctlOK("reload", "web")
            let afterReload = try await s.waitReady("web", workers: 2)
            #expect(Set(afterReload).isDisjoint(with: afterRestart), "reload should replace every worker")
            #expect(try await s.status("web").apps[0].generation == 2)

            try await s.ctlOK("scale", "web", "3")
            try await s.waitReady("web", workers: 3)
            try await s.ctlOK("scale", "web", "+1")
            try await s.waitReady("web", workers: 4)
            try await s.ctlOK("scale", "web", "-3")
            let one = try await s.waitReady("web", workers: 1)
            // Out of range, or not a count: refused with the reason, nothing changes.
            for (args, says) in [(["scale", "web", "-2"], "web has 1 worker: cannot remove 2"),
                                 (["scale", "web", "+4096"], "cannot add 4096 (the count must stay between 0 and 4096)"),
                                 (["scale", "web", "5000"], "between 0 and 4096, not 5000"),
                                 (["scale", "web", "two"], "not 'two'"), (["scale", "web", "+-1"], "not '+-1'"),
                                 (["scale", "web", "1", "2"], "Unexpected argument '2'"), (["scale", "web"], "Missing expected argument '<count>'")] {
                let r = try await s.ctl(args)
                #expect(r.code != 0 && r.err.contains(says), "\(args): \(r)")
            }
            #expect(try await s.waitReady("web", workers: 1) == one)

            let stopped = try await s.ctlOK("stop", "web")
            #expect(stopped.out.contains("web: stopped"))
            let st = try await s.status("web").apps[0]
            #expect(st.state == "stopped")
            #expect(st.workers.allSatisfy { $0.pid == nil && $0.state == "stopped" })
            #expect(one.compactMap { ProcessIdentity(pid: $0) }.allSatisfy { !$0.isAlive })
            #expect(try await s.ctlOK("stop", "web").out.contains("already stopped"))

            try await s.ctlOK("start", "web")
            try await s.waitReady("web", workers: 1)

            let again = try await s.ctl("start", conf)
            #expect(again.code != 0)
            #expect(again.err.contains("already running") && again.err.contains("--replace"), "\(again)")
            let before = try await s.waitReady("web", workers: 1)
            try await s.ctlOK("start", "--replace", conf)
            let replaced = try await s.waitReady("web", workers: 2)
            #expect(Set(replaced).isDisjoint(with: before))
            #expect(Set(try answeringPids(port, connections: 16).keys) == Set(replaced))

            try await s.ctlOK("delete", "web")
            #expect(try await s.status().apps.isEmpty)
            #expect(!readText(s.stateDir + "/apps.json").contains("\"web\""), "a deleted app is forgotten")

            let bye = try await s.ctlOK("shutdown")
            #expect(!bye.out.isEmpty)
            #expect(try await d.wait(timeout: 15) == 0)
        }
    }

    @Test("unknown app names fail every verb that takes one, naming the app")
    func unknownApp() async throws {
        try await withSwarm { s in
            try await s.startDaemon()
            for args in [["stop", "nope"], ["restart", "nope"], ["delete", "nope"], ["reload", "nope"], ["scale", "nope", "2"],
                         ["status", "nope"], ["logs", "nope"], ["start", "nope"]] {
                let r = try await s.ctl(args)
                #expect(r.code != 0, "\(r)")
                #expect(r.err.contains("nope"), "\(r)")
            }
            #expect(try await s.ctl("stop", "Bad Name").code != 0, "an invalid name is refused")
            #expect(try await s.ctl("scale", "all", "2").code != 0)
        }
    }

    @Test("daemon not running: swarmctl exits non-zero naming the socket it tried")
    func daemonNotRunning() async throws {
        try await withSwarm { s in
            let r = try await s.ctl("status")
            #expect(r.code == 3, "\(r)")
            #expect(r.err.contains(s.socket), "\(r)")
            #expect(r.err.contains("no socket there"), "\(r)")

            // A stale socket file: bound once, nobody listening.
            let stale = s.dir + "/stale.sock"
            let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
            var addr = try Sockets.unixAddress(stale)
            _ = withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) } }
            close(fd)
            let r2 = try await s.ctl(["ping", "--socket", stale], socket: false)
            #expect(r2.code != 0)
            #expect(r2.err.contains(stale) && r2.err.contains("nothing is listening"), "\(r2)")
        }
    }

    @Test("start --no-autostart fails without a daemon and starts none")
    func noAutostart() async throws {
        try await withSwarm { s in
            let conf = try s.write("web.conf", Conf.python("web", workers: 1, port: try Ports.free()))
            let r = try await s.ctl("start", "--no-autostart", "--state-dir", s.stateDir, conf)
            #expect(r.code != 0)
            #expect(r.err.contains(s.socket), "\(r)")
            #expect(!FileManager.default.fileExists(atPath: s.socket))
            #expect(!FileManager.default.fileExists(atPath: s.stateDir), "no daemon should have created its state dir")
        }
    }

    @Test("start with no daemon autostarts one; shutdown stops it")
    func autostart() async throws {
        try await withSwarm { s in
            let port = try Ports.free()
            let conf = try s.write("web.conf", Conf.python("web", workers: 2, port: port))
            let r = try await s.ctl("start", "--state-dir", s.stateDir, conf)
            #expect(r.code == 0, "\(r)")
            #expect(r.err.contains("started swarmd"), "\(r)")
            let st = try await s.status()
            s.foreignDaemon = ProcessIdentity(pid: st.daemon.pid)
            #expect(st.daemon.stateDir == s.stateDir)
            let pids = try await s.waitReady("web", workers: 2)
            #expect(Set(try answeringPids(port, connections: 16).keys) == Set(pids))
            #expect(FileManager.default.fileExists(atPath: s.stateDir + "/swarmd.log"))

            try await s.ctlOK("shutdown")
            let daemon = try #require(s.foreignDaemon)
            try await waitUntil(timeout: 15, "the autostarted swarmd \(daemon) to exit") { !daemon.isAlive }
            #expect(try await s.ctl("ping").code == 3)
        }
    }

    @Test("another uid: refused by the 0600 socket; with the socket opened up, SO_PEERCRED allows only read-only verbs")
    func otherUidIsRefused() async throws {
        try await withSwarm { s in
            let port = try Ports.free()
            let conf = try s.write("web.conf", Conf.python("web", workers: 1, port: port))
            try await s.startDaemon([conf])
            let pids = try await s.waitReady("web", workers: 1)

            let denied = try await s.ctl(["status"], asNobody: true)
            #expect(denied.code != 0, "\(denied)")
            #expect(denied.err.contains("permission denied"), "\(denied)")

            #expect(chmod(s.socket, 0o777) == 0)
            let status = try await s.ctl(["status"], asNobody: true)
            #expect(status.code == 0, "\(status)")
            #expect(status.out.contains("web"), "\(status)")
            #expect(try await s.ctl(["ping"], asNobody: true).code == 0)

            for verb in [["stop", "web"], ["scale", "web", "3"], ["shutdown"], ["start", conf]] {
                let r = try await s.ctl(verb, asNobody: true)
                #expect(r.code != 0, "\(r)")
                #expect(r.err.contains("permission denied"), "\(r)")
            }
            #expect(try await s.waitReady("web", workers: 1) == pids, "the app is untouched")
        }
    }

    @Test("--socket-group: the group may connect (0660) but only read; a stranger may not connect")
    func socketGroup() async throws {
        try await withSwarm { s in
            let port = try Ports.free()
            let conf = try s.write("web.conf", Conf.python("web", workers: 1, port: port))
            try await s.startDaemon([conf], args: ["--socket-group", "nogroup"])
            let pids = try await s.waitReady("web", workers: 1)
            var st = stat()
            #expect(stat(s.socket, &st) == 0)
            #expect(st.st_mode & 0o777 == 0o660, "socket mode \(String(st.st_mode & 0o777, radix: 8))")
            #expect(st.st_gid == 65534)

            let status = try await s.ctl(["status"], asNobody: true)
            #expect(status.code == 0, "\(status)")
            let stop = try await s.ctl(["stop", "web"], asNobody: true)
            #expect(stop.code != 0 && stop.err.contains("permission denied"), "\(stop)")
            // Same uid-less stranger without the group: the file mode refuses it.
            let c = try Child.spawn("/usr/bin/setpriv", ["--reuid=nobody", "--regid=daemon", "--clear-groups", Paths.swarmctl, "status", "--socket", s.socket],
                                    dir: s.dir, label: "stranger")
            #expect(try await c.wait(timeout: 20) != 0)
            #expect(c.stderr.contains("permission denied"), "\(c.stderr)")
            #expect(try await s.waitReady("web", workers: 1) == pids)
        }
    }

    @Test("garbage, oversized and half-sent messages on the raw socket leave the daemon working")
    func garbageOnTheSocket() async throws {
        try await withSwarm { s in
            try await s.startDaemon()

            // Not JSON: an error answer, and the connection still works.
            let c1 = try ControlConnection(path: s.socket)
            try c1.send(Array("this is not json\n".utf8))
            let e1 = try #require(try c1.receive(), "an answer to garbage")
            #expect(e1.ok == false && e1.kind == .result)
            try c1.send(Array("{\"v\":1,\"id\":9,\"verb\":\"frobnicate\"}\n".utf8))
            let e2 = try #require(try c1.receive())
            #expect(e2.ok == false)
            try c1.send(Array([0, 1, 2, 255, 254, 10]))
            #expect(try c1.receive()?.ok == false)
            #expect(try c1.call(Request(id: 3, verb: .ping)).ok == true)

            // Over 1 MiB without a newline: refused and closed (an error line or a reset, never a hang).
            let c2 = try ControlConnection(path: s.socket)
            var sendFailed = false
            do { try c2.send([UInt8](repeating: UInt8(ascii: "a"), count: (1 << 20) + 65536)) } catch { sendFailed = true }
            var answers: [Response] = []
            while let r = try? c2.receive() { answers.append(r) }
            #expect(sendFailed || answers.contains { $0.ok == false }, "an oversized message should be refused: \(answers)")

            // Half a message, then gone; half a message, kept open.
            let c3 = try ControlConnection(path: s.socket)
            try c3.send(Array("{\"v\":1,\"id\":7,\"verb\":\"sta".utf8))
            let c4 = try ControlConnection(path: s.socket)
            try c4.send(Array("{\"v\":1,\"id\":8,".utf8))
            _ = c3

            let r = try await s.ctlOK("status")
            #expect(r.out.contains("swarmd pid"))
            // The half-open client finishes its request late: still answered.
            try c4.send(Array("\"verb\":\"ping\"}\n".utf8))
            #expect(try c4.receive()?.ok == true)
            withExtendedLifetime(c4) {}
        }
    }

    @Test("200 concurrent clients each get their status answer")
    func concurrentClients() async throws {
        try await withSwarm { s in
            let port = try Ports.free()
            let conf = try s.write("web.conf", Conf.python("web", workers: 2, port: port))
            try await s.startDaemon([conf])
            try await s.waitReady("web", workers: 2)
            let tally = Tally()
            let connected = DispatchSemaphore(value: 0)
            let go = DispatchSemaphore(value: 0)
            let done = DispatchGroup()
            let socket = s.socket
            for i in 0..<200 {
                done.enter()
                let t = Thread {
                    defer { done.leave() }
                    let c: ControlConnection
                    do { c = try ControlConnection(path: socket, timeout: 20) } catch {
                        connected.signal()
                        return tally.failure("client \(i): \(error)")
                    }
                    connected.signal()
                    go.wait()
                    do {
                        let r = try c.call(Request(id: UInt64(i + 1), verb: .status))
                        if r.ok == true, r.id == UInt64(i + 1), r.status?.apps.first?.name == "web" { tally.success() } else { tally.failure("client \(i): \(r)") }
                    } catch {
                        tally.failure("client \(i): \(error)")
                    }
                }
                t.stackSize = 1 << 18
                t.start()
            }
            var n = 0
            try await waitUntil(timeout: 30, "200 clients to connect (\(n) so far)") {
                while connected.wait(timeout: .now()) == .success { n += 1 }
                return n == 200
            }
            for _ in 0..<200 { go.signal() }
            try await waitUntil(timeout: 60, "200 clients to get their answers") { done.wait(timeout: .now()) == .success }
            let snap = tally.snapshot
            #expect(snap.ok == 200, "\(snap.failures.count) failed: \(snap.failures.prefix(10))")
            #expect(try await s.ctlOK("status").out.contains("web"))
        }
    }
}
