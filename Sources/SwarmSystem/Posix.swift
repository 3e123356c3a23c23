import CSwarmSpawn
import Glibc

/// Every system call swarm makes, wrapped once: EINTR retried, failures
/// thrown as `SystemError` naming the call.
public enum Posix {
    /// The compatibility form of `syscall`: throws on every failure, EBADF
    /// included (callers written before the trap existed rely on that).
    @discardableResult
    static func check(_ call: String, subject: String? = nil, _ body: () -> Int32) throws -> Int32 {
        let (r, e) = retryingEINTR(call, subject: subject, trapProgrammingErrors: false, body)
        if r < 0 { throw SystemError(call, errno: e, subject: subject) }
        return r
    }

    public static func close(_ fd: Int32) {
        // Linux closes the fd even when close reports EINTR: never retry.
        _ = Glibc.close(fd)
    }

    /// Compatibility: throws every error, EAGAIN included (new code: `readSome`).
    public static func read(_ fd: Int32, into buffer: UnsafeMutableRawBufferPointer) throws -> Int {
        let (n, e) = retryingEINTR("read", subject: "fd \(fd)", trapProgrammingErrors: false) { Glibc.read(fd, buffer.baseAddress, buffer.count) }
        if n < 0 { throw SystemError("read", errno: e, subject: "fd \(fd)") }
        return n
    }

    /// Compatibility: writes what the kernel takes now; returns the count (0 on EAGAIN) (new code: `writeSome`).
    public static func write(_ fd: Int32, _ bytes: UnsafeRawBufferPointer) throws -> Int {
        let (n, e) = retryingEINTR("write", subject: "fd \(fd)", trapProgrammingErrors: false) { Glibc.write(fd, bytes.baseAddress, bytes.count) }
        if n >= 0 { return n }
        if e == EAGAIN { return 0 }
        throw SystemError("write", errno: e, subject: "fd \(fd)")
    }

    /// Compatibility: writes everything, blocking as needed (for regular files) (new code: `writeFully`).
    public static func writeAll(_ fd: Int32, _ bytes: [UInt8]) throws {
        var offset = 0
        try bytes.withUnsafeBytes { buf in
            while offset < buf.count {
                let (n, e) = retryingEINTR("write", subject: "fd \(fd)", trapProgrammingErrors: false) {
                    Glibc.write(fd, buf.baseAddress! + offset, buf.count - offset)
                }
                if n < 0 { throw SystemError("write", errno: e, subject: "fd \(fd)") }
                offset += n
            }
        }
    }

    public static func pipe(nonBlockingRead: Bool = true) throws -> (read: Int32, write: Int32) {
        var fds: [Int32] = [0, 0]
        try check("pipe2") { swarm_pipe_cloexec(&fds) }
        if nonBlockingRead { try setNonBlocking(fds[0]) }
        return (fds[0], fds[1])
    }

    public static func setNonBlocking(_ fd: Int32) throws {
        let flags = try check("fcntl(F_GETFL)") { fcntl(fd, F_GETFL) }
        try check("fcntl(F_SETFL)") { fcntl(fd, F_SETFL, flags | O_NONBLOCK) }
    }

    public static func setCloseOnExec(_ fd: Int32) throws {
        try check("fcntl(F_SETFD)") { fcntl(fd, F_SETFD, FD_CLOEXEC) }
    }

    public static func open(_ path: String, _ flags: Int32, mode: mode_t = 0o644) throws -> Int32 {
        try check("open", subject: path) { Glibc.open(path, flags | O_CLOEXEC, mode) }
    }

    /// kill(2); a process already gone (ESRCH) is not an error.
    public static func kill(_ pid: pid_t, _ sig: Int32) throws {
        if Glibc.kill(pid, sig) < 0 && Glibc.errno != ESRCH {
            throw SystemError("kill", errno: Glibc.errno, subject: "pid \(pid) signal \(sig)")
        }
    }

    public enum WaitResult {
        case exited(pid_t, Int32)
        case signaled(pid_t, Int32, core: Bool)
    }

    /// Reaps one child without blocking; nil when none is waiting.
    public static func reapOne() -> WaitResult? { reapOneWithCPU()?.result }

    /// `reapOne`, with the CPU time of the child and of the children it
    /// waited for (wait4's rusage, user + system, in microseconds).
    public static func reapOneWithCPU() -> (result: WaitResult, cpuMicroseconds: UInt64)? {
        var status: Int32 = 0
        var usage = rusage()
        while true {
            let (pid, _) = retryingEINTR("wait4", subject: "any child", trapProgrammingErrors: false) { wait4(-1, &status, WNOHANG, &usage) }
            if pid <= 0 { return nil }
            if let r = decode(pid: pid, status: status) { return (r, cpuMicroseconds(of: usage)) }
        }
    }

    /// User + system time of a wait4 rusage, in microseconds.
    public static func cpuMicroseconds(of usage: rusage) -> UInt64 {
        let micros = { (t: timeval) in UInt64(max(0, t.tv_sec)) * 1_000_000 + UInt64(max(0, t.tv_usec)) }
        return micros(usage.ru_utime) + micros(usage.ru_stime)
    }

    /// mkdir -p. A relative path stays relative to the current directory.
    public static func mkdirs(_ path: String, mode: mode_t) throws {
        try FileSystem.makeDirectories(path, mode: mode)
    }

    public static func monotonicNanoseconds() -> Int64 {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return Int64(ts.tv_sec) * 1_000_000_000 + Int64(ts.tv_nsec)
    }

    public static func realtimeNanoseconds() -> Int64 {
        var ts = timespec()
        clock_gettime(CLOCK_REALTIME, &ts)
        return Int64(ts.tv_sec) * 1_000_000_000 + Int64(ts.tv_nsec)
    }

    public static func blockSignals(_ signals: [Int32]) {
        var set = sigset_t()
        sigemptyset(&set)
        for s in signals { sigaddset(&set, s) }
        pthread_sigmask(SIG_BLOCK, &set, nil)
    }

    public static func ignore(_ sig: Int32) {
        signal(sig, SIG_IGN)
    }

    /// Writes a file atomically: temp file, fsync, rename, fsync of the
    /// directory. Symlinks at the target are replaced, never followed; a full
    /// disk is `FileError.noSpace`. (`TrustedDirectory.writeFileAtomically`
    /// also checks who owns the directory.)
    public static func writeFileAtomically(_ path: String, _ bytes: [UInt8], mode: mode_t = 0o600) throws {
        let (dir, name) = FileSystem.split(path)
        let d = try TrustedDirectory(unchecked: dir)
        try d.writeFileAtomically(name, bytes, mode: mode)
    }

    public static func readFile(_ path: String, limit: Int = 16 << 20) throws -> [UInt8] {
        let fd = try open(path, O_RDONLY)
        defer { close(fd) }
        var out: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 65536)
        while out.count <= limit {
            let n = try chunk.withUnsafeMutableBytes { try read(fd, into: $0) }
            if n == 0 { break }
            out.append(contentsOf: chunk[0..<n])
        }
        return out
    }

    /// The number the next new fd would get: the kernel hands out the lowest
    /// free one, so with few holes this is about how many are open (one
    /// open and close instead of listing /proc/self/fd). At the limit: the limit.
    public static func lowestFreeDescriptor() -> Int {
        let fd = Glibc.open("/", O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard fd >= 0 else { return Int(clamping: fileLimit() ?? 0) }
        Glibc.close(fd)
        return Int(fd)
    }

    /// RLIMIT_NOFILE's soft limit now (nil: getrlimit failed).
    public static func fileLimit() -> UInt64? {
        var rl = rlimit()
        guard getrlimit(Int32(RLIMIT_NOFILE.rawValue), &rl) == 0 else { return nil }
        return UInt64(rl.rlim_cur)
    }

    /// Raises RLIMIT_NOFILE's soft limit to its hard limit; returns the limits before.
    @discardableResult
    public static func raiseFileLimit() -> (soft: UInt64, hard: UInt64)? {
        var rl = rlimit()
        guard getrlimit(Int32(RLIMIT_NOFILE.rawValue), &rl) == 0 else { return nil }
        let before = (UInt64(rl.rlim_cur), UInt64(rl.rlim_max))
        if rl.rlim_cur < rl.rlim_max {
            var raised = rl
            raised.rlim_cur = rl.rlim_max
            _ = setrlimit(Int32(RLIMIT_NOFILE.rawValue), &raised)
        }
        return before
    }

}
