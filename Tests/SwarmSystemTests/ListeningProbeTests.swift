import Foundation
import Glibc
@testable import SwarmSystem
import Testing

// The listening probe against real processes: Python programs that wait on
// a real listening socket the way servers do, at fd numbers other than the
// one they were given, in child processes, among 2,000 threads.

/// A Python of the system (not a pyenv shim: a shim is a shell script that
/// takes ~100 ms to exec the interpreter).
let probePython: String = {
    for p in ["/usr/bin/python3", "/usr/local/bin/python3"] where access(p, X_OK) == 0 { return p }
    for dir in (ProcessInfo.processInfo.environment["PATH"] ?? "").split(separator: ":") where access("\(dir)/python3", X_OK) == 0 {
        return "\(dir)/python3"
    }
    return "python3"
}()

/// A process started for one test: its stdout is a pipe the test reads lines from.
final class ProbeSubject {
    let pid: pid_t
    private let out: Int32
    private var pending: [UInt8] = []

    /// Runs `script` with `fds` as its fds 3, 4, …, in its own process group
    /// (and in `cgroupProcsFD`'s cgroup when given).
    init(_ script: String, fds: [Int32], cgroupProcsFD: Int32 = -1) throws {
        let p = try Posix.pipe()
        let devNull = try Posix.open("/dev/null", O_RDWR | O_CLOEXEC)
        defer {
            Posix.close(devNull)
            Posix.close(p.write)
        }
        var plan = SpawnPlan(executable: probePython, argv: [probePython, "-u", "-c", script], environment: ["PATH=/usr/bin:/bin"],
                             setListenPID: false, cwd: "/", fds: fds, stdin: devNull, stdout: p.write, stderr: devNull)
        // Not PDEATHSIG: it fires when the spawning thread exits, and test threads come and go.
        plan.parentDeathSignal = 0
        plan.cgroupProcsFD = cgroupProcsFD
        do { pid = try Spawner.spawn(plan) } catch {
            Posix.close(p.read)
            throw error
        }
        out = p.read
    }

    /// Waits for the line `text` on stdout; the lines before it, if any, are dropped.
    func waitFor(_ text: String, seconds: Double = 20) throws {
        let deadline = Posix.monotonicNanoseconds() + Int64(seconds * 1e9)
        while true {
            if let nl = pending.firstIndex(of: 10) {
                let line = String(decoding: pending[..<nl], as: UTF8.self)
                pending.removeSubrange(...nl)
                if line == text { return }
                continue
            }
            let left = deadline - Posix.monotonicNanoseconds()
            guard left > 0 else { throw TestFailure("pid \(pid) did not print \"\(text)\" within \(seconds) s") }
            var pfd = pollfd(fd: out, events: Int16(POLLIN), revents: 0)
            _ = poll(&pfd, 1, Int32(min(left / 1_000_000, 1000)))
            var buf = [UInt8](repeating: 0, count: 4096)
            let n = read(out, &buf, buf.count)
            if n == 0 { throw TestFailure("pid \(pid) closed its stdout before printing \"\(text)\"") }
            if n > 0 { pending += buf[0..<n] }
        }
    }

    /// SIGKILL to its whole group (the children it forked), then reaped.
    func stop() {
        _ = kill(-pid, SIGKILL)
        _ = kill(pid, SIGKILL)
        var status: Int32 = 0
        while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
        Posix.close(out)
    }
}

/// A listening TCP socket on 127.0.0.1 (an ephemeral port), closed afterwards.
func withListeningSocket<T>(_ body: (Int32, SocketIdentity) throws -> T) throws -> T {
    let fd = try Sockets.listenTCP(host: "127.0.0.1", port: 0, backlog: 16, reusePort: false)
    defer { Posix.close(fd) }
    return try body(fd, try SocketIdentity.of(fd: fd))
}

/// Probes every 10 ms until the probe finds the process listening; every outcome is kept.
func probeUntilListening(_ prober: ListeningProber, _ query: ListeningQuery, maxProbes: Int,
                         seconds: Double = 20) throws -> (evidence: ListeningEvidence, outcomes: [ListeningProbeOutcome]) {
    var outcomes: [ListeningProbeOutcome] = []
    let deadline = Posix.monotonicNanoseconds() + Int64(seconds * 1e9)
    while outcomes.count < maxProbes && Posix.monotonicNanoseconds() < deadline {
        let o = prober.probe(query)
        outcomes.append(o)
        if let e = o.evidence { return (e, outcomes) }
        usleep(10_000)
    }
    let reads = outcomes.map(\.reads)
    throw TestFailure("pid \(query.pid) not seen listening after \(outcomes.count) probes (reads \(reads.prefix(8))…, problem \(String(describing: outcomes.last?.problem)))")
}

/// Moves the socket at fd 3 to fd 7 and closes fd 3 (as uvicorn --fd and Go's
/// net.FileListener dup it), then waits on fd 7 the way `how` says.
func dupAndWait(_ how: String, prelude: String = "") -> String {
    """
    import os, select, socket, sys, threading, time
    \(prelude)
    os.dup2(3, 7)
    os.close(3)
    s = socket.socket(fileno=7)
    s.setblocking(True)
    how = "\(how)"
    if how == "epoll":
        ep = select.epoll()
        ep.register(7, select.EPOLLIN)
        os.write(1, b"ready\\n")
        while True: ep.poll(1000)
    elif how == "poll":
        p = select.poll()
        p.register(7, select.POLLIN)
        os.write(1, b"ready\\n")
        while True: p.poll(1000)
    elif how == "select":
        os.write(1, b"ready\\n")
        while True: select.select([7], [], [], 1.0)
    elif how == "accept":
        os.write(1, b"ready\\n")
        while True: s.accept()
    else:
        os.write(1, b"ready\\n")
        time.sleep(1000)
    """
}

@Suite("The listening probe, by socket identity, with a bounded cost")
struct ListeningProbeTests {
    @Test("a process that dups the socket to fd 7 (and closes fd 3) is seen waiting on it", arguments: ["epoll", "poll", "select", "accept"])
    func dupedSocket(how: String) throws {
        try withListeningSocket { fd, identity in
            let p = try ProbeSubject(dupAndWait(how), fds: [fd])
            defer { p.stop() }
            try p.waitFor("ready")
            let prober = ListeningProber()
            let query = ListeningQuery(pid: p.pid, sockets: [identity], cgroup: nil, execFDs: [3])
            let (e, outcomes) = try probeUntilListening(prober, query, maxProbes: 500)
            #expect(e.pid == p.pid && e.inode == identity.inode)
            switch (how, e.wait) {
            case ("epoll", .epoll(_, 7)), ("poll", .poll(p.pid, 7)), ("select", .select(p.pid, 7)), ("accept", .accept(p.pid, 7)):
                break
            default:
                Issue.record("waiting in \(how) reported as \(e)")
            }
            #expect(outcomes.allSatisfy { $0.reads <= 32 && $0.problem == nil }, "\(outcomes.map(\.reads))")
        }
    }

    @Test("a process that holds the socket but does not wait on it, or waits on another socket at fd 3, is not listening")
    func notListening() throws {
        try withListeningSocket { fd, identity in
            let idle = try ProbeSubject(dupAndWait("sleep"), fds: [fd])
            defer { idle.stop() }
            try withListeningSocket { otherFD, _ in
                // This one waits in epoll on fd 3, the number swarm's fd-3 contract uses, but it is another socket.
                let other = try ProbeSubject("""
                import os, select
                ep = select.epoll()
                ep.register(3, select.EPOLLIN)
                os.write(1, b"ready\\n")
                while True: ep.poll(1000)
                """, fds: [otherFD])
                defer { other.stop() }
                try idle.waitFor("ready")
                try other.waitFor("ready")
                let prober = ListeningProber()
                // The one that waits on its fd 3 is seen when asked about its own socket: the negative below is not an accident.
                let own = try SocketIdentity.of(fd: otherFD)
                _ = try probeUntilListening(prober, ListeningQuery(pid: other.pid, sockets: [own], cgroup: nil, execFDs: [3]), maxProbes: 500)
                usleep(200_000)
                for _ in 0..<20 {
                    #expect(prober.probe(ListeningQuery(pid: idle.pid, sockets: [identity], cgroup: nil, execFDs: [3])).evidence == nil)
                    #expect(prober.probe(ListeningQuery(pid: other.pid, sockets: [identity], cgroup: nil, execFDs: [3])).evidence == nil)
                }
            }
        }
    }

    @Test("a pre-fork server: the parent only waits for its child, the child accepts (found through /proc children)")
    func acceptInChild() throws {
        try withListeningSocket { fd, identity in
            let p = try ProbeSubject("""
            import os, socket, time
            pid = os.fork()
            if pid == 0:
                os.dup2(3, 9)
                s = socket.socket(fileno=9)
                s.setblocking(True)
                os.write(1, b"child\\n")
                while True: s.accept()
            os.close(3)
            os.write(1, b"ready\\n")
            os.waitpid(pid, 0)
            """, fds: [fd])
            defer { p.stop() }
            try p.waitFor("ready")
            let prober = ListeningProber()
            let query = ListeningQuery(pid: p.pid, sockets: [identity], cgroup: nil, execFDs: [3])
            let (e, outcomes) = try probeUntilListening(prober, query, maxProbes: 500)
            #expect(e.pid != p.pid, "the parent closed its copy: only the child can be waiting (\(e))")
            if case .accept(e.pid, 9) = e.wait {} else { Issue.record("expected the child's accept on fd 9: \(e)") }
            #expect(outcomes.last?.processes == 2)
            #expect(outcomes.allSatisfy { $0.reads <= 40 }, "\(outcomes.map(\.reads))")
        }
    }

    @Test("a child forked by another thread is found through the worker's cgroup (root)")
    func cgroupMembers() throws {
        guard isRoot else {
            print("skipped: cgroups need root")
            return
        }
        let instance = "probe-test-\(getpid())"
        guard case let .success(root) = Cgroups.setUp(instance: instance) else {
            Issue.record("Cgroups.setUp(instance: \(instance)) failed")
            return
        }
        defer {
            _ = root.cleanUpLeftovers()
            root.removeIfEmpty()
            if let slash = root.path.lastIndex(of: "/") { _ = rmdir(String(root.path[..<slash])) }
        }
        let cgroup = try root.createWorker(app: "probe", slot: 0, worker: 1)
        defer {
            try? cgroup.kill()
            _ = cgroup.waitUntilEmpty(timeoutNanoseconds: 5_000_000_000)
            try? cgroup.remove()
        }
        try withListeningSocket { fd, identity in
            // /proc lists a thread's children under that thread: these are not the main thread's.
            let p = try ProbeSubject("""
            import os, select, threading, time
            def fork_server():
                if os.fork() == 0:
                    os.dup2(3, 11)
                    ep = select.epoll()
                    ep.register(11, select.EPOLLIN)
                    os.write(1, b"child\\n")
                    while True: ep.poll(1000)
                forked.set()
                # Alive: a thread that exits hands its children to the main thread.
                time.sleep(1000)
            forked = threading.Event()
            threading.Thread(target=fork_server, daemon=True).start()
            forked.wait()
            os.close(3)
            os.write(1, b"ready\\n")
            time.sleep(1000)
            """, fds: [fd], cgroupProcsFD: try cgroup.openProcsFD())
            cgroup.closeProcsFD()
            defer { p.stop() }
            try p.waitFor("ready")
            let prober = ListeningProber()
            let (e, _) = try probeUntilListening(prober, ListeningQuery(pid: p.pid, sockets: [identity], cgroup: cgroup.path, execFDs: [3]),
                                                 maxProbes: 500)
            #expect(e.pid != p.pid)
            if case .epoll(_, 11) = e.wait {} else { Issue.record("expected the child's epoll entry for fd 11: \(e)") }
            // Without the cgroup, the main thread's children are all the probe reads: this child is not among them.
            for _ in 0..<10 {
                #expect(prober.probe(ListeningQuery(pid: p.pid, sockets: [identity], cgroup: nil, execFDs: [3])).evidence == nil)
            }
        }
    }

    /// 2,000 threads asleep, the socket moved to fd 7; `waiter` (Python) waits on it, or not.
    func threads2000(_ waiter: String) -> String {
        """
        import os, select, socket, threading, time
        threading.stack_size(256 * 1024)
        stop = threading.Event()
        started = []
        def idle():
            started.append(1)
            stop.wait()
        for _ in range(1999): threading.Thread(target=idle, daemon=True).start()
        while len(started) < 1999: time.sleep(0.01)
        os.dup2(3, 7)
        os.close(3)
        \(waiter)
        time.sleep(0.3)
        os.write(1, b"ready\\n")
        time.sleep(1000)
        """
    }

    /// At most this many reads per probe of one process: its threads' system calls, plus the
    /// process directory, the fd listing and links, the task listings and the children file.
    func readBound(_ prober: ListeningProber) -> Int { prober.limits.threadsPerProcess + 24 }

    @Test("2,000 threads, one blocked in accept: a bounded number of reads per probe; the oldest at once, the newest within one turn of the window",
          arguments: ["oldest", "newest"])
    func manyThreadsAccept(acceptor: String) throws {
        try withListeningSocket { fd, identity in
            // The newest thread sits last in /proc/PID/task: a probe that read only the first threads would never see it.
            let p = try ProbeSubject("""
            import os, socket, threading, time
            threading.stack_size(256 * 1024)
            def acceptor():
                s = socket.socket(fileno=7)
                s.setblocking(True)
                while True: s.accept()
            stop = threading.Event()
            started = []
            def idle():
                started.append(1)
                stop.wait()
            os.dup2(3, 7)
            os.close(3)
            if "\(acceptor)" == "oldest": threading.Thread(target=acceptor, daemon=True).start()
            for _ in range(1999): threading.Thread(target=idle, daemon=True).start()
            while len(started) < 1999: time.sleep(0.01)
            if "\(acceptor)" == "newest": threading.Thread(target=acceptor, daemon=True).start()
            time.sleep(0.3)
            os.write(1, b"ready\\n")
            time.sleep(1000)
            """, fds: [fd])
            defer { p.stop() }
            try p.waitFor("ready", seconds: 60)
            #expect((try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(p.pid)/task").count) ?? 0 >= 2001)
            let prober = ListeningProber()
            let window = prober.limits.threadsPerProcess - prober.limits.firstThreads
            let turn = acceptor == "oldest" ? 1 : (2001 - prober.limits.firstThreads + window - 1) / window
            let (e, outcomes) = try probeUntilListening(prober, ListeningQuery(pid: p.pid, sockets: [identity], cgroup: nil, execFDs: [3]),
                                                        maxProbes: turn + 1)
            if case .accept(_, 7) = e.wait {} else { Issue.record("expected a thread in accept on fd 7: \(e)") }
            let reads = outcomes.map(\.reads)
            print("listening probe, 2,000 threads, acceptor \(acceptor): found after \(outcomes.count) probes (bound \(turn + 1)), reads per probe max \(reads.max() ?? 0), total \(reads.reduce(0, +)) (a walk of every thread: 2,000+ per probe)")
            #expect(reads.allSatisfy { $0 <= readBound(prober) }, "\(reads)")
            #expect(outcomes.allSatisfy { !$0.budgetSpent && $0.problem == nil })
        }
    }

    @Test("2,000 threads and an epoll set: found by the first probe, in a handful of reads; never listening: bounded every time")
    func manyThreadsEpoll() throws {
        try withListeningSocket { fd, identity in
            let epolling = try ProbeSubject(threads2000("""
            ep = select.epoll()
            ep.register(7, select.EPOLLIN)
            """), fds: [fd])
            defer { epolling.stop() }
            let idle = try ProbeSubject(threads2000(""), fds: [fd])
            defer { idle.stop() }
            try epolling.waitFor("ready", seconds: 60)
            try idle.waitFor("ready", seconds: 60)
            let prober = ListeningProber()
            let first = prober.probe(ListeningQuery(pid: epolling.pid, sockets: [identity], cgroup: nil, execFDs: [3]))
            if case .epoll(_, 7)? = first.evidence?.wait {} else { Issue.record("expected epoll on fd 7 at the first probe: \(String(describing: first.evidence))") }
            #expect(first.reads <= 16, "\(first.reads) reads")
            var reads: [Int] = []
            for _ in 0..<200 {
                let o = prober.probe(ListeningQuery(pid: idle.pid, sockets: [identity], cgroup: nil, execFDs: [3]))
                #expect(o.evidence == nil)
                reads.append(o.reads)
            }
            print("listening probe, 2,000 idle threads: reads per probe max \(reads.max() ?? 0), mean \(Double(reads.reduce(0, +)) / Double(reads.count))")
            #expect(reads.allSatisfy { $0 <= readBound(prober) }, "\(reads)")
        }
    }

    @Test("the read budget is a hard cap")
    func budget() throws {
        try withListeningSocket { fd, identity in
            let p = try ProbeSubject(dupAndWait("sleep", prelude: "fds = [os.open('/dev/null', os.O_RDONLY) for _ in range(300)]"), fds: [fd])
            defer { p.stop() }
            try p.waitFor("ready")
            var limits = ListeningProber.Limits()
            limits.reads = 20
            let o = ListeningProber(limits: limits).probe(ListeningQuery(pid: p.pid, sockets: [identity], cgroup: nil, execFDs: [3]))
            #expect(o.reads == 20 && o.budgetSpent && o.evidence == nil, "\(o)")
        }
    }

    @Test("a gone process is not listening and is no problem")
    func gone() throws {
        try withListeningSocket { _, identity in
            var pid: pid_t = 0
            let p = try ProbeSubject("import os; os.write(1, b'ready\\n')", fds: [])
            try p.waitFor("ready")
            pid = p.pid
            p.stop()
            let o = ListeningProber().probe(ListeningQuery(pid: pid, sockets: [identity], cgroup: nil, execFDs: [3]))
            #expect(o.evidence == nil && o.problem == nil && o.reads <= 1)
        }
    }

    @Test("fdinfo's sdev (kernel encoding) matches fstat's st_dev")
    func deviceEncoding() throws {
        try withListeningSocket { fd, identity in
            let p = try ProbeSubject(dupAndWait("epoll"), fds: [fd])
            defer { p.stop() }
            try p.waitFor("ready")
            let fds = try FileManager.default.contentsOfDirectory(atPath: "/proc/\(p.pid)/fd")
            let ep = try #require(fds.first { (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/\(p.pid)/fd/\($0)")) == "anon_inode:[eventpoll]" })
            let info = try String(contentsOfFile: "/proc/\(p.pid)/fdinfo/\(ep)", encoding: .utf8)
            let line = try #require(info.split(separator: "\n").first { $0.hasPrefix("tfd:") })
            let sdev = try #require(line.split(separator: " ").first { $0.hasPrefix("sdev:") }.flatMap { UInt64($0.dropFirst(5), radix: 16) })
            #expect(identity.isDevice(kernelEncoded: sdev), "\(line) vs st_dev \(identity.device)")
            #expect(!identity.isDevice(kernelEncoded: sdev + 1))
        }
    }
}
