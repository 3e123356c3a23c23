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
