import Foundation
import Glibc
@testable import SwarmSystem
import Testing

@Suite("System call wrappers: one error convention")
struct WrapperTests {
    /// Other tests open and close fds in this process meanwhile, so only what
    /// holds whatever they do is checked: the number is free (none of ours) and within the limit.
    @Test func theLowestFreeDescriptorIsAFreeNumberWithinTheLimit() throws {
        let held = (0..<3).map { _ in open("/dev/null", O_RDONLY | O_CLOEXEC) }
        defer { held.forEach { close($0) } }
        let free = Posix.lowestFreeDescriptor()
        #expect(!held.contains(Int32(free)), "an fd this test holds open was called free: \(free) in \(held)")
        #expect(free >= 0 && UInt64(free) < (Posix.fileLimit() ?? .max), "\(free)")
    }

    @Test("non-blocking read and write: wouldBlock is a value, EOF is .done(0)")
    func pipes() throws {
        let p = try Posix.pipe(nonBlockingRead: true)
        defer { Posix.close(p.read) }
        var buf = [UInt8](repeating: 0, count: 16)
        #expect(try buf.withUnsafeMutableBytes { try Posix.readSome(p.read, into: $0) } == .wouldBlock)
        #expect(try [UInt8]("hi".utf8).withUnsafeBytes { try Posix.writeSome(p.write, $0) } == .done(2))
        #expect(try buf.withUnsafeMutableBytes { try Posix.readSome(p.read, into: $0) } == .done(2))
        // A full pipe: the write end made non-blocking would block.
        try Posix.setNonBlocking(p.write, true)
        #expect(try Posix.isNonBlocking(p.write))
        let chunk = [UInt8](repeating: 1, count: 65536)
        var filled = false
        for _ in 0..<64 {
            if try chunk.withUnsafeBytes({ try Posix.writeSome(p.write, $0) }) == .wouldBlock { filled = true; break }
        }
        #expect(filled, "a pipe never filled up")
        Posix.close(p.write)
        var total = 0
        while case let .done(n) = try buf.withUnsafeMutableBytes({ try Posix.readSome(p.read, into: $0) }), n > 0 { total += n }
        #expect(total > 0)
        #expect(try buf.withUnsafeMutableBytes { try Posix.readSome(p.read, into: $0) } == .done(0), "EOF once the writer is gone")
    }

    @Test("errors name the call, the subject and the errno")
    func errorsNameEverything() throws {
        do {
            _ = try FileSystem.status("/nonexistent/swarm-test")
            Issue.record("stat of a missing path succeeded")
        } catch let e as SystemError {
            #expect(e.call == "stat" && e.errno == ENOENT && e.subject == "/nonexistent/swarm-test")
            #expect(e.description == "stat /nonexistent/swarm-test: No such file or directory (ENOENT)")
        }
        #expect(try FileSystem.statusIfPresent("/nonexistent/swarm-test") == nil)
        #expect(try FileSystem.removeIfPresent("/nonexistent-swarm-test") == false)
        #expect(SystemError("write", errno: ENOSPC).isNoSpace)
        #expect(SystemError("write", errno: EDQUOT).isNoSpace)
    }

    @Test("a listener with nothing pending: accept would block; a pending client is accepted with its credentials")
    func accept() throws {
        try withTempDir { tmp in
            let path = tmp + "/l.sock"
            let l = try Sockets.listenUnix(path: path, backlog: 4, mode: 0o600)
            defer { Posix.close(l) }
            try Posix.setNonBlocking(l)
            #expect(try Sockets.acceptConnection(l) == .wouldBlock)
            let c = try Sockets.connectUnix(path)
            defer { Posix.close(c) }
            guard case let .done(s) = try Sockets.acceptConnection(l) else { Issue.record("no connection"); return }
            defer { Posix.close(s) }
            let peer = try Sockets.peer(of: s)
            #expect(peer.uid == getuid() && peer.pid == getpid())
            #expect(try Sockets.peer(of: c).pid == getpid(), "the client sees the listener's credentials")
            #expect(try Posix.isCloseOnExec(s), "accepted with CLOEXEC")
            // sendAll and receiveSome; then shut down and EOF.
            try Sockets.sendAll(c, Array("ping\n".utf8), timeoutNanoseconds: 1_000_000_000)
            var buf = [UInt8](repeating: 0, count: 16)
            try Posix.waitFor(s, events: Int16(POLLIN), timeoutNanoseconds: 1_000_000_000)
            #expect(try buf.withUnsafeMutableBytes { try Sockets.receiveSome(s, into: $0) } == .done(5))
            try Sockets.shutdown(c, .write)
            try Posix.waitFor(s, events: Int16(POLLIN), timeoutNanoseconds: 1_000_000_000)
            #expect(try buf.withUnsafeMutableBytes { try Sockets.receiveSome(s, into: $0) } == .done(0))
        }
    }

    @Test("sendAll to a peer that does not read gives up at its deadline with ETIMEDOUT")
    func sendAllTimesOut() throws {
        var fds: [Int32] = [0, 0]
        #expect(socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0, &fds) == 0)
        defer { Posix.close(fds[0]); Posix.close(fds[1]) }
        try Posix.setNonBlocking(fds[0], true)
        let t0 = Posix.monotonicNanoseconds()
        do {
            try Sockets.sendAll(fds[0], [UInt8](repeating: 0, count: 8 << 20), timeoutNanoseconds: 200_000_000)
            Issue.record("8 MiB fit a socket buffer")
        } catch let e as SystemError {
            #expect(e.errno == ETIMEDOUT && e.call == "send", "\(e)")
            #expect(e.subject?.contains("bytes sent") == true, "\(e)")
        }
        let took = Double(Posix.monotonicNanoseconds() - t0) / 1e9
        #expect(took >= 0.19 && took < 5, "\(took) s")
    }

    @Test("a datagram with the sender's pid; an empty socket would block")
    func datagram() throws {
        try withTempDir { tmp in
            let path = tmp + "/n.sock"
            let fd = try Sockets.bindDatagram(path)
            defer { Posix.close(fd) }
            var buf = [UInt8](repeating: 0, count: 64)
            #expect(try buf.withUnsafeMutableBytes { try Sockets.receiveDatagram(fd, into: $0) }.value == nil)
            let c = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
            defer { close(c) }
            var addr = try Sockets.unixAddress(path)
            let sent = withUnsafePointer(to: &addr) { a in
                a.withMemoryRebound(to: sockaddr.self, capacity: 1) { sendto(c, "READY=1", 7, 0, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
            }
            #expect(sent == 7)
            let got = try buf.withUnsafeMutableBytes { try Sockets.receiveDatagram(fd, into: $0) }.value
            #expect(got?.count == 7 && got?.pid == getpid())
        }
    }

    @Test("memfd, seek, readAll, close-on-exec flags")
    func memfdAndFlags() throws {
        let fd = try Posix.memoryFile(name: "swarm-test", closeOnExec: false)
        defer { Posix.close(fd) }
        #expect(try Posix.isCloseOnExec(fd) == false, "a hand-over memfd survives exec")
        try Posix.writeFully(fd, Array("hand-over".utf8))
        #expect(try Posix.seek(fd, to: 0) == 0)
        #expect(try Posix.readAll(fd, limit: 100) == Array("hand-over".utf8))
        try Posix.seek(fd, to: 0)
        #expect(throws: SystemError.self) { _ = try Posix.readAll(fd, limit: 4) }
        try Posix.setCloseOnExec(fd, true)
        #expect(try Posix.isCloseOnExec(fd))
        try Posix.setCloseOnExec(fd, false)
        #expect(try Posix.isCloseOnExec(fd) == false)
        let other = try Posix.memoryFile(name: "x", closeOnExec: true)
        defer { Posix.close(other) }
        #expect(try Posix.isCloseOnExec(other))
        try Posix.truncate(fd, to: 4)
        #expect(try FileSystem.status(fd: fd).size == 4)
    }

    @Test("exec of a missing program returns the error and this process goes on")
    func execFailure() {
        let e = Posix.exec("/nonexistent/swarmd", arguments: ["swarmd"], environment: ["A=1"])
        #expect(e.call == "execve" && e.errno == ENOENT && e.subject == "/nonexistent/swarmd")
    }

    @Test("the environment: get, take (removes), all")
    func environment() throws {
        try Environment.set("SWARM_TEST_TAKE", "v=1")
        #expect(Environment.get("SWARM_TEST_TAKE") == "v=1")
        #expect(Environment.all.contains("SWARM_TEST_TAKE=v=1"))
        #expect(Environment.dictionary["SWARM_TEST_TAKE"] == "v=1")
        #expect(Environment.take("SWARM_TEST_TAKE") == "v=1")
        #expect(Environment.get("SWARM_TEST_TAKE") == nil)
        #expect(Environment.take("SWARM_TEST_TAKE") == nil)
        try Environment.set("SWARM_TEST_EMPTY", "")
        #expect(Environment.nonEmpty("SWARM_TEST_EMPTY") == nil)
        Environment.unset("SWARM_TEST_EMPTY")
    }

    @Test("users: records by name and uid, descriptions for messages")
    func users() {
        let root = Users.record(named: "root")
        #expect(root?.uid == 0 && root?.home == "/root")
        #expect(Users.record(uid: 0)?.name == "root")
        #expect(Users.record(named: "no-such-user-swarm") == nil)
        #expect(Users.describe(0) == "uid 0 (root)")
        #expect(Users.describe(4_000_000_123) == "uid 4000000123")
        #expect(Users.uid("nobody") == 65534)
        #expect(Users.uid("1234") == 1234)
    }

    @Test("paths: absolute against a directory, normalized, split")
    func paths() throws {
        #expect(try FileSystem.absolute("st", relativeTo: "/w") == "/w/st")
        #expect(try FileSystem.absolute("./a//b/", relativeTo: "/w/") == "/w/a/b")
        #expect(try FileSystem.absolute("/abs/./x", relativeTo: "/w") == "/abs/x")
        #expect(try FileSystem.absolute("../up", relativeTo: "/w") == "/w/../up")
        #expect(try FileSystem.absolute("rel").hasPrefix("/"))
        #expect(FileSystem.split("/run/swarm/swarmd.sock") == ("/run/swarm", "swarmd.sock"))
        #expect(FileSystem.split("swarmd.sock") == (".", "swarmd.sock"))
        #expect(FileSystem.split("/x") == ("/", "x"))
        #expect(FileSystem.split("a/b/") == ("a", "b"))
    }

    @Test("defaults: socket and state dir by uid and environment")
    func defaults() {
        let none: (String) -> String? = { _ in nil }
        #expect(SwarmDefaults.socketPath(uid: 0, environment: none) == "/run/swarm/swarmd.sock")
        #expect(SwarmDefaults.socketPath(uid: 1000, environment: none) == "/tmp/swarm-1000/swarmd.sock")
        #expect(SwarmDefaults.socketPath(uid: 1000, environment: { $0 == "XDG_RUNTIME_DIR" ? "/run/user/1000" : nil }) == "/run/user/1000/swarm/swarmd.sock")
        #expect(SwarmDefaults.socketPath(uid: 0, environment: { $0 == "SWARM_SOCKET" ? "/x.sock" : nil }) == "/x.sock")
        #expect(SwarmDefaults.builtInSocketPath(uid: 0, environment: { $0 == "SWARM_SOCKET" ? "/x.sock" : nil }) == "/run/swarm/swarmd.sock")
        #expect(SwarmDefaults.stateDirectory(uid: 0, environment: none, home: { nil }) == "/var/lib/swarm")
        #expect(SwarmDefaults.stateDirectory(uid: 5, environment: none, home: { "/home/u" }) == "/home/u/.local/state/swarm")
        #expect(SwarmDefaults.stateDirectory(uid: 5, environment: { $0 == "SWARM_STATE_DIR" ? "/s" : nil }, home: { nil }) == "/s")
    }
}

@Suite("Priorities")
struct PriorityTests {
    /// niceness of a process: field 19 of /proc/PID/stat.
    func nice(_ pid: pid_t, task: pid_t? = nil) -> Int32? {
        let path = task.map { "/proc/\(pid)/task/\($0)/stat" } ?? "/proc/\(pid)/stat"
        guard let text = try? String(contentsOfFile: path, encoding: .utf8), let close = text.lastIndex(of: ")") else { return nil }
        let fields = text[text.index(after: close)...].split(separator: " ")
        return Int32(fields[16])
    }

    @Test("renice of a process group reaches every member (a pre-fork server's children)")
    func processGroup() throws {
        // A shell in its own group with two children.
        let devNull = try Posix.open("/dev/null", O_RDWR)
        defer { Posix.close(devNull) }
        let plan = SpawnPlan(executable: "/bin/sh", argv: ["sh", "-c", "sleep 30 & sleep 30 & wait"], environment: ["PATH=/usr/bin:/bin"],
                             setListenPID: false, cwd: nil, fds: [], stdin: devNull, stdout: devNull, stderr: devNull)
        let pid = try Spawner.spawn(plan)
        defer {
            try? Posix.kill(-pid, SIGKILL)
            var status: Int32 = 0
            waitpid(pid, &status, 0)
        }
        // Wait (with a deadline) for both children.
        var children: [pid_t] = []
        let deadline = Posix.monotonicNanoseconds() + 5_000_000_000
        while Posix.monotonicNanoseconds() < deadline {
            let text = (try? String(contentsOfFile: "/proc/\(pid)/task/\(pid)/children", encoding: .utf8)) ?? ""
            children = text.split(separator: " ").compactMap { pid_t($0) }
            if children.count == 2 { break }
            Posix.sleep(nanoseconds: 10_000_000)
        }
        #expect(children.count == 2, "the shell's children did not appear within 5 s")
        try Priority.set(.processGroup(pid), to: 7)
        for p in [pid] + children { #expect(nice(p) == 7, "pid \(p) has nice \(String(describing: nice(p)))") }
        #expect(try Priority.get(.processGroup(pid)) == 7)
        #expect(try Priority.get(.process(children[0])) == 7)
        do {
            _ = try Priority.get(.process(4_000_000))
            Issue.record("getpriority of a missing pid succeeded")
        } catch let e as SystemError {
            #expect(e.errno == ESRCH && e.call == "getpriority" && e.subject == "pid 4000000")
        }
    }
}
