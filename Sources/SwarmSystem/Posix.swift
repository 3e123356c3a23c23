import CSwarmSpawn
import Glibc

/// A failed system call: which call, on what, and the errno.
public struct SystemError: Error, CustomStringConvertible, Equatable {
    public var call: String
    public var errno: Int32
    public var subject: String?

    public init(_ call: String, errno: Int32, subject: String? = nil) {
        self.call = call
        self.errno = errno
        self.subject = subject
    }

    public var description: String {
        let on = subject.map { " \($0)" } ?? ""
        return "\(call)\(on): \(String(cString: strerror(errno))) (\(errnoName(errno)))"
    }
}

public func errnoName(_ e: Int32) -> String {
    let names: [Int32: String] = [
        EPERM: "EPERM", ENOENT: "ENOENT", ESRCH: "ESRCH", EINTR: "EINTR", EIO: "EIO", EBADF: "EBADF",
        ECHILD: "ECHILD", EAGAIN: "EAGAIN", ENOMEM: "ENOMEM", EACCES: "EACCES", EEXIST: "EEXIST",
        ENOTDIR: "ENOTDIR", EISDIR: "EISDIR", EINVAL: "EINVAL", EMFILE: "EMFILE", ENFILE: "ENFILE",
        ENOEXEC: "ENOEXEC", EPIPE: "EPIPE", EADDRINUSE: "EADDRINUSE", EADDRNOTAVAIL: "EADDRNOTAVAIL",
        ECONNREFUSED: "ECONNREFUSED", ENAMETOOLONG: "ENAMETOOLONG", ELOOP: "ELOOP", ETXTBSY: "ETXTBSY",
        E2BIG: "E2BIG", ENOSPC: "ENOSPC", EROFS: "EROFS", ECONNRESET: "ECONNRESET", ENOTSOCK: "ENOTSOCK",
    ]
    return names[e] ?? "errno \(e)"
}

/// Every system call swarm makes, wrapped once: EINTR retried, failures
/// thrown as `SystemError` naming the call.
public enum Posix {
    @discardableResult
    static func check(_ call: String, subject: String? = nil, _ body: () -> Int32) throws -> Int32 {
        while true {
            let r = body()
            if r >= 0 { return r }
            let e = Glibc.errno
            if e == EINTR { continue }
            throw SystemError(call, errno: e, subject: subject)
        }
    }

    public static func close(_ fd: Int32) {
        // Linux closes the fd even when close reports EINTR: never retry.
        _ = Glibc.close(fd)
    }

    public static func read(_ fd: Int32, into buffer: UnsafeMutableRawBufferPointer) throws -> Int {
        while true {
            let n = Glibc.read(fd, buffer.baseAddress, buffer.count)
            if n >= 0 { return n }
            if Glibc.errno == EINTR { continue }
            throw SystemError("read", errno: Glibc.errno)
        }
    }

    /// Writes what the kernel takes now; returns the count (0 on EAGAIN).
    public static func write(_ fd: Int32, _ bytes: UnsafeRawBufferPointer) throws -> Int {
        while true {
            let n = Glibc.write(fd, bytes.baseAddress, bytes.count)
            if n >= 0 { return n }
            let e = Glibc.errno
            if e == EINTR { continue }
            if e == EAGAIN { return 0 }
            throw SystemError("write", errno: e)
        }
    }

    /// Writes everything, blocking as needed (for regular files).
    public static func writeAll(_ fd: Int32, _ bytes: [UInt8]) throws {
        var offset = 0
        try bytes.withUnsafeBytes { buf in
            while offset < buf.count {
                let n = Glibc.write(fd, buf.baseAddress! + offset, buf.count - offset)
                if n < 0 {
                    if Glibc.errno == EINTR { continue }
                    throw SystemError("write", errno: Glibc.errno)
                }
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
    public static func reapOne() -> WaitResult? {
        var status: Int32 = 0
        while true {
            let pid = waitpid(-1, &status, WNOHANG)
            if pid < 0 && Glibc.errno == EINTR { continue }
            if pid <= 0 { return nil }
            // Linux encoding: low 7 bits the signal, 0x80 core, high byte the exit code.
            let sig = status & 0x7f
            if sig == 0 { return .exited(pid, (status >> 8) & 0xff) }
            if sig == 0x7f { continue } // stopped/continued: not reported without WUNTRACED
            return .signaled(pid, sig, core: status & 0x80 != 0)
        }
    }

    public static func mkdirs(_ path: String, mode: mode_t) throws {
        var current = ""
        for part in path.split(separator: "/") {
            current += "/" + part
            if mkdir(current, mode) < 0 && Glibc.errno != EEXIST {
                throw SystemError("mkdir", errno: Glibc.errno, subject: current)
            }
        }
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

    /// Writes a file atomically: temp file, fsync, rename, fsync of the directory.
    public static func writeFileAtomically(_ path: String, _ bytes: [UInt8], mode: mode_t = 0o600) throws {
        let dir = path.split(separator: "/").dropLast().joined(separator: "/")
        let tmp = "\(path).tmp.\(getpid())"
        let fd = try open(tmp, O_WRONLY | O_CREAT | O_TRUNC, mode: mode)
        do {
            try writeAll(fd, bytes)
            try check("fsync", subject: tmp) { fsync(fd) }
        } catch {
            close(fd)
            unlink(tmp)
            throw error
        }
        close(fd)
        do {
            try check("rename", subject: path) { rename(tmp, path) }
        } catch {
            unlink(tmp)
            throw error
        }
        if let dfd = try? open("/" + dir, O_RDONLY | O_DIRECTORY) {
            _ = fsync(dfd)
            close(dfd)
        }
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
