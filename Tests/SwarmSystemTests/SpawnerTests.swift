import CSwarmSpawn
import Foundation
import Glibc
@testable import SwarmSystem
import Testing

/// The spawn path swarmd uses (reserved fd slots, a shared table unshared by
/// the child): real children, inspected through /proc.
@Suite("Spawner: fd slots")
struct SpawnerSlotTests {
    static func fdTableSize(_ pid: pid_t) -> Int? {
        guard let text = try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8) else { return nil }
        for line in text.split(separator: "\n") where line.hasPrefix("FDSize:") {
            return Int(line.dropFirst("FDSize:".count).trimmingCharacters(in: .whitespaces))
        }
        return nil
    }

    static func reapOrKill(_ pid: pid_t) {
        _ = kill(pid, SIGKILL)
        var status: Int32 = 0
        _ = waitpid(pid, &status, 0)
    }

    /// Reads until EOF, failing after `seconds`: EOF comes only once every copy of the write end is closed.
    static func readToEOF(_ fd: Int32, seconds: Double = 10) throws -> String {
        var out: [UInt8] = []
        let deadline = Posix.monotonicNanoseconds() + Int64(seconds * 1e9)
        var buf = [UInt8](repeating: 0, count: 4096)
        while true {
            let left = deadline - Posix.monotonicNanoseconds()
            guard left > 0 else { throw TestFailure("no EOF within \(seconds) s: a copy of the pipe's write end stayed open (\(out.count) bytes read)") }
            var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            _ = poll(&p, 1, Int32(min(left / 1_000_000, 1000)))
            let n = read(fd, &buf, buf.count)
            if n == 0 { return String(decoding: out, as: UTF8.self) }
            if n > 0 { out += buf[0..<n] }
        }
    }

    @Test("with 6,000 fds open, a child copies only the low slots: small fd table, exactly 0–3 open, the parent's table unchanged")
    func childCopiesTheLowEndOnly() throws {
        Spawner.reserveDescriptorSlots()
        let ceiling = try #require(Spawner.descriptorCeiling, "reserveDescriptorSlots failed")
        var lim = rlimit()
        getrlimit(__rlimit_resource_t(RLIMIT_NOFILE.rawValue), &lim)
        if lim.rlim_cur < 8192 {
            lim.rlim_cur = min(lim.rlim_max, 8192)
            setrlimit(__rlimit_resource_t(RLIMIT_NOFILE.rawValue), &lim)
        }
        try #require(lim.rlim_cur >= 7000, "RLIMIT_NOFILE \(lim.rlim_cur) leaves no room for 6,000 fds")
        var many: [Int32] = []
        defer { many.forEach { Posix.close($0) } }
        for _ in 0..<3000 {
            let p = try Posix.pipe()
            many += [p.read, p.write]
        }
        let passed = try Posix.pipe()
        defer { Posix.close(passed.read); Posix.close(passed.write) }
        let devNull = try Posix.open("/dev/null", O_RDWR)
        defer { Posix.close(devNull) }
        let plan = SpawnPlan(executable: "/bin/sleep", argv: ["sleep", "30"], environment: [], setListenPID: false, cwd: nil,
                             fds: [passed.write], stdin: devNull, stdout: devNull, stderr: devNull)
        let pid = try Spawner.spawn(plan)
        defer { Self.reapOrKill(pid) }
        // spawn returns once the exec replaced the child's memory (vfork's
        // release): this is the program's own table, but the kernel closes its
        // close-on-exec fds a moment later, so the open ones are waited for.
        let size = try #require(Self.fdTableSize(pid))
        #expect(size < 6000, "the child's fd table holds \(size) entries: swarmd's whole table was copied (ceiling \(ceiling))")
        #expect(size <= max(256, Int(ceiling) + 64), "fd table \(size), slot ceiling \(ceiling)")
        let deadline = Posix.monotonicNanoseconds() + 5_000_000_000
        var open: [Int] = []
        repeat {
            open = (ProcFS.listDirectory("/proc/\(pid)/fd") ?? []).compactMap(Int.init).sorted()
            if open == [0, 1, 2, 3] { break }
            usleep(1_000)
        } while Posix.monotonicNanoseconds() < deadline
        #expect(open == [0, 1, 2, 3], "fds open in the child 5 s after its exec: \(open)")
        var st = stat()
        var mine = stat()
        #expect(stat("/proc/\(pid)/fd/3", &st) == 0 && fstat(passed.write, &mine) == 0 && st.st_ino == mine.st_ino,
                "fd 3 of the child is not the pipe passed")
        // The parent's fds are where they were.
        for fd in many.prefix(50) + [passed.read, passed.write] { #expect(fcntl(fd, F_GETFD) >= 0, "fd \(fd) of the parent is gone") }
    }

    @Test("the slots are given back: a pipe passed as stdout reaches EOF once the child exits and the parent closes its end")
    func slotsReleaseTheirCopies() throws {
        Spawner.reserveDescriptorSlots()
        for round in 0..<3 {
            let out = try Posix.pipe()
            defer { Posix.close(out.read) }
            let devNull = try Posix.open("/dev/null", O_RDWR)
            defer { Posix.close(devNull) }
            let plan = SpawnPlan(executable: "/bin/sh", argv: ["sh", "-c", "echo round \(round)"], environment: [], setListenPID: false,
                                 cwd: nil, fds: [], stdin: devNull, stdout: out.write, stderr: out.write)
            let pid = try Spawner.spawn(plan)
            Posix.close(out.write)
            #expect(try Self.readToEOF(out.read) == "round \(round)\n")
            var status: Int32 = 0
            #expect(waitpid(pid, &status, 0) == pid)
        }
    }

    @Test("an exec failure through the slots is reported with its step and errno, as before")
    func execFailureThroughSlots() throws {
        Spawner.reserveDescriptorSlots()
        let devNull = try Posix.open("/dev/null", O_RDWR)
        defer { Posix.close(devNull) }
        let plan = SpawnPlan(executable: "/nonexistent/program", argv: ["program"], environment: [], setListenPID: false, cwd: nil,
                             fds: [devNull], stdin: devNull, stdout: devNull, stderr: devNull)
        do {
            _ = try Spawner.spawn(plan)
            Issue.record("spawn of /nonexistent/program succeeded")
        } catch let e as SpawnError {
            #expect(e.step == "execve" && e.errno == ENOENT, "\(e)")
        }
        var cwdPlan = plan
        cwdPlan.executable = "/bin/true"
        cwdPlan.cwd = "/nonexistent/dir"
        do {
            _ = try Spawner.spawn(cwdPlan)
            Issue.record("spawn with a missing cwd succeeded")
        } catch let e as SpawnError {
            #expect(e.step == "chdir" && e.errno == ENOENT, "\(e)")
        }
    }
}

/// `SpawnPlan.returnBeforeExec`: the child runs to its exec while the caller
/// goes on (spawn.c's arenas). Real children; what the spawn promises at its
/// return, what each child gets, and how a failed exec is told at the reap.
@Suite("Spawner: children that run on")
struct SpawnerRunOnTests {
    static func plan(_ argv: [String], stdout: Int32, devNull: Int32, fds: [Int32] = []) -> SpawnPlan {
        var p = SpawnPlan(executable: argv[0], argv: argv, environment: ["PATH=/usr/bin:/bin"], setListenPID: true, cwd: nil,
                          fds: fds, stdin: devNull, stdout: stdout, stderr: devNull)
        p.returnBeforeExec = true
        return p
    }

    static func exitCode(_ pid: pid_t) -> Int32? {
        var status: Int32 = 0
        guard waitpid(pid, &status, 0) == pid, status & 0x7f == 0 else { return nil }
        return (status >> 8) & 0xff
    }

    @Test("200 children spawned back to back (more than the 64 arenas) each get their own argv, LISTEN_PID, fd 3 and stdout")
    func manyChildrenInFlightKeepTheirOwnRequests() throws {
        Spawner.reserveDescriptorSlots()
        let devNull = try Posix.open("/dev/null", O_RDWR)
        defer { Posix.close(devNull) }
        var children: [(pid: pid_t, out: Int32, index: Int)] = []
        defer { children.forEach { Posix.close($0.out) } }
        for i in 0..<200 {
            let out = try Posix.pipe()
            let third = try Posix.pipe()
            // Each child reports its index (argv), LISTEN_PID and what its fd 3 is, by inode.
            var st = stat()
            fstat(third.write, &st)
            let script = "echo \"$1 $LISTEN_PID $(stat -L -c %i /proc/self/fd/3)\""
            let p = Self.plan(["/bin/sh", "-c", script, "sh", "child-\(i)-\(st.st_ino)"], stdout: out.write, devNull: devNull,
                              fds: [third.write])
            let pid = try Spawner.spawn(p)
            // The caller's copies go at once, while the child may not have exec'd yet.
            Posix.close(out.write)
            Posix.close(third.write)
            Posix.close(third.read)
            children.append((pid, out.read, i))
            _ = st
        }
        for c in children {
            let line = try SpawnerSlotTests.readToEOF(c.out).trimmingCharacters(in: .newlines)
            let parts = line.split(separator: " ").map(String.init)
            #expect(parts.count == 3, "child \(c.index) printed \(line)")
            guard parts.count == 3 else { continue }
            #expect(parts[0].hasPrefix("child-\(c.index)-"), "child \(c.index) got argv \(parts[0])")
            #expect(parts[1] == "\(c.pid)", "child \(c.index): LISTEN_PID \(parts[1]), pid \(c.pid)")
            #expect(parts[0] == "child-\(c.index)-\(parts[2])", "child \(c.index): fd 3 is inode \(parts[2]), not its pipe (\(parts[0]))")
            #expect(Self.exitCode(c.pid) == 0)
            #expect(Spawner.takeExecFailure(pid: c.pid) == nil)
        }
    }

    @Test("when spawn returns, the child leads its own process group: a signal to the group reaches it at once")
    func theProcessGroupIsThereWhenSpawnReturns() throws {
        Spawner.reserveDescriptorSlots()
        let devNull = try Posix.open("/dev/null", O_RDWR)
        defer { Posix.close(devNull) }
        for round in 0..<50 {
            let pid = try Spawner.spawn(Self.plan(["/bin/sleep", "30"], stdout: devNull, devNull: devNull))
            let sent = kill(-pid, SIGKILL)
            let e = errno
            #expect(sent == 0, "round \(round): kill(-\(pid)) failed: \(errnoName(e)) (the group was not made before spawn returned)")
            if sent != 0 { kill(pid, SIGKILL) }
            var status: Int32 = 0
            #expect(waitpid(pid, &status, 0) == pid)
            #expect(status & 0x7f == SIGKILL, "round \(round): status \(status)")
        }
    }

    @Test("a child stopped before its exec is 'executing' to the kernel seam (its fds must not be read yet), and no longer once it has exec'd")
    func aChildOnItsWayToExecIsKnownAsSuch() throws {
        let kernel = LinuxKernel()
        let devNull = try Posix.open("/dev/null", O_RDWR)
        defer { Posix.close(devNull) }
        func comm(_ pid: pid_t) -> String {
            ((try? String(contentsOfFile: "/proc/\(pid)/comm", encoding: .utf8)) ?? "").trimmingCharacters(in: .newlines)
        }
        var caught = 0
        for _ in 0..<20 where caught < 3 {
            let pid = try kernel.spawn(Self.plan(["/bin/sleep", "30"], stdout: devNull, devNull: devNull))
            // The child yields to this thread once it is on its own: stopped now, it has most often not exec'd.
            kill(pid, SIGSTOP)
            defer { SpawnerSlotTests.reapOrKill(pid) }
            var status: Int32 = 0
            #expect(waitpid(pid, &status, WUNTRACED) == pid)
            guard comm(pid) != "sleep" else {
                #expect(!kernel.isExecuting(pid: pid), "pid \(pid) runs sleep but is still 'executing'")
                continue
            }
            caught += 1
            #expect(kernel.isExecuting(pid: pid), "pid \(pid), stopped before its exec (comm \(comm(pid))), is not 'executing'")
            kill(pid, SIGCONT)
            let deadline = Posix.monotonicNanoseconds() + 5_000_000_000
            while comm(pid) != "sleep" && Posix.monotonicNanoseconds() < deadline { usleep(1_000) }
            try #require(comm(pid) == "sleep", "pid \(pid) did not exec within 5 s")
            // The kernel zeroes the arena's word in the exec, before the new program's name is set.
            #expect(!kernel.isExecuting(pid: pid), "pid \(pid) exec'd sleep but is still 'executing'")
        }
        #expect(caught > 0, "no child was stopped before its exec in 20 tries: the test could not check the first half")
    }

    @Test("a child stopped before its exec holds its own arena only: 300 spawns behind it reuse the others")
    func aStuckChildDoesNotPinLaterArenas() throws {
        let devNull = try Posix.open("/dev/null", O_RDWR)
        defer { Posix.close(devNull) }
        let stuck = try Spawner.spawn(Self.plan(["/bin/sleep", "30"], stdout: devNull, devNull: devNull))
        kill(stuck, SIGSTOP)
        defer { SpawnerSlotTests.reapOrKill(stuck) }
        let before = swarm_spawn_arena_count()
        for _ in 0..<300 {
            let pid = try Spawner.spawn(Self.plan(["/bin/true"], stdout: devNull, devNull: devNull))
            #expect(Self.exitCode(pid) == 0)
        }
        // Had the oldest busy arena blocked the harvest, each of these would have made a new one.
        let made = swarm_spawn_arena_count() - before
        #expect(made < 100, "300 spawns behind a stopped child made \(made) new arenas")
    }

    @Test("an exec that fails is told at the reap: exit 127, then the step, errno and executable, once")
    func aFailedExecIsToldAtTheReap() throws {
        Spawner.reserveDescriptorSlots()
        let devNull = try Posix.open("/dev/null", O_RDWR)
        defer { Posix.close(devNull) }
        // More failures than the arenas kept, none taken until all were spawned: each keeps its report until its reap
        // (a spawn that found no arena would wait, and throw).
        var pids: [pid_t] = []
        var thrown = 0
        for _ in 0..<80 {
            do {
                pids.append(try Spawner.spawn(Self.plan(["/nonexistent/program"], stdout: devNull, devNull: devNull)))
            } catch let e as SpawnError {
                #expect(e.step == "execve" && e.errno == ENOENT, "\(e)")
                thrown += 1
            }
        }
        #expect(pids.count + thrown == 80)
        #expect(!pids.isEmpty, "no spawn returned before its exec")
        for pid in pids {
            #expect(Self.exitCode(pid) == 127)
            let e = try #require(Spawner.takeExecFailure(pid: pid), "no failure kept for pid \(pid)")
            #expect(e.step == "execve" && e.errno == ENOENT && e.executable == "/nonexistent/program", "\(e)")
            #expect(e.description == "exec of /nonexistent/program failed: No such file or directory (ENOENT)")
            #expect(Spawner.takeExecFailure(pid: pid) == nil, "taken twice")
        }
        // A step before the exec, the same way.
        var p = Self.plan(["/bin/true"], stdout: devNull, devNull: devNull)
        p.cwd = "/nonexistent/dir"
        let pid = try Spawner.spawn(p)
        #expect(Self.exitCode(pid) == 127)
        let e = try #require(Spawner.takeExecFailure(pid: pid))
        #expect(e.step == "chdir" && e.errno == ENOENT, "\(e)")
        // A program that exits 127 itself is not an exec failure.
        let own = try Spawner.spawn(Self.plan(["/bin/sh", "-c", "exit 127"], stdout: devNull, devNull: devNull))
        #expect(Self.exitCode(own) == 127)
        #expect(Spawner.takeExecFailure(pid: own) == nil)
    }
}

@Suite("Spawner: the real-time guard")
struct RealtimeGuardTests {
    /// The child's verdicts (its exit status).
    enum Verdict: Int32 {
        case demoted = 0, guardFailed = 10, realtimeRefused = 11, stillRealtime = 12, tooSoon = 13, notTripped = 14, trippedTwice = 15
    }

    @Test("a process that spins under SCHED_RR past RLIMIT_RTTIME's soft limit (here 100 ms) is put back under SCHED_OTHER by SIGXCPU's handler, and the flag says so once",
          .enabled(if: geteuid() == 0, "needs root (CAP_SYS_NICE) for SCHED_RR"))
    func spinningThreadIsDemoted() throws {
        // In a child of its own: the limit and the handler are process-wide, and the
        // tests' process has other threads (and tests that read its limits). The child
        // makes system calls only.
        let pid = fork()
        try #require(pid >= 0, "fork: errno \(errno)")
        if pid == 0 { _exit(Self.spinUntilDemoted().rawValue) }
        var status: Int32 = 0
        let deadline = Self.monotonicSeconds() + 20
        while waitpid(pid, &status, WNOHANG) == 0 {
            if Self.monotonicSeconds() > deadline {
                kill(pid, SIGKILL)
                waitpid(pid, &status, 0)
                Issue.record("the spinning child did not finish within 20 s")
                return
            }
            usleep(10_000)
        }
        #expect(status & 0x7f == 0, "the child was killed by signal \(status & 0x7f)")
        let verdict = Verdict(rawValue: (status >> 8) & 0xff)
        #expect(verdict == .demoted, "the child's verdict: \(verdict.map { "\($0)" } ?? "exit \((status >> 8) & 0xff)")")
    }

    private static func spinUntilDemoted() -> Verdict {
        var soft: UInt64 = 0, hard: UInt64 = 0
        guard swarm_rttime_guard(100_000, &soft, &hard) == 0 else { return .guardFailed }
        var rt = sched_param(sched_priority: 1)
        guard sched_setscheduler(0, SCHED_RR, &rt) == 0 else { return .realtimeRefused }
        let start = monotonicSeconds()
        // Spins without a blocking call (clock_gettime is the vDSO's) until demoted, for at most 5 s.
        while sched_getscheduler(0) == SCHED_RR && monotonicSeconds() - start < 5 {}
        let spun = monotonicSeconds() - start
        if sched_getscheduler(0) != SCHED_OTHER { return .stillRealtime }
        if spun < 0.09 { return .tooSoon }
        if swarm_rttime_tripped() != 1 { return .notTripped }
        if swarm_rttime_tripped() != 0 { return .trippedTwice }
        return .demoted
    }

    private static func monotonicSeconds() -> Double {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return Double(ts.tv_sec) + Double(ts.tv_nsec) / 1e9
    }
}
