import CSwarmSpawn
import Glibc

/// Reads and writes in the one error convention: `IOResult` for
/// non-blocking fds, `SystemError` for failures, EINTR retried, EBADF and
/// EFAULT trapped.
extension Posix {
    /// read(2) on a non-blocking fd: `.done(0)` is end of file.
    public static func readSome(_ fd: Int32, into buffer: UnsafeMutableRawBufferPointer) throws -> IOResult<Int> {
        try nonBlockingSyscall("read", subject: "fd \(fd)") { Glibc.read(fd, buffer.baseAddress, buffer.count) }
    }

    /// write(2) on a non-blocking fd: what the kernel took now.
    public static func writeSome(_ fd: Int32, _ bytes: UnsafeRawBufferPointer) throws -> IOResult<Int> {
        try nonBlockingSyscall("write", subject: "fd \(fd)") { Glibc.write(fd, bytes.baseAddress, bytes.count) }
    }

    /// Writes every byte. On a non-blocking fd (a socket) it waits for room
    /// with poll, but never past `timeoutNanoseconds` (nil: no limit; meant
    /// for blocking fds and regular files), then throws ETIMEDOUT naming how
    /// much was written.
    public static func writeFully(_ fd: Int32, _ bytes: UnsafeRawBufferPointer, subject: String? = nil,
                                  timeoutNanoseconds: Int64? = nil) throws {
        let what = subject ?? "fd \(fd)"
        let deadline = timeoutNanoseconds.map { monotonicNanoseconds() + $0 }
        var offset = 0
        while offset < bytes.count {
            let rest = UnsafeRawBufferPointer(rebasing: bytes[offset...])
            switch try nonBlockingSyscall("write", subject: what, { Glibc.write(fd, rest.baseAddress, rest.count) }) {
            case let .done(n):
                offset += n
            case .wouldBlock:
                let left = deadline.map { max(0, $0 - monotonicNanoseconds()) }
                if let left, left == 0 {
                    throw SystemError("write", errno: ETIMEDOUT, subject: "\(what) (\(offset) of \(bytes.count) bytes written)")
                }
                _ = try waitFor(fd, events: Int16(POLLOUT), timeoutNanoseconds: left, subject: what)
            }
        }
    }

    public static func writeFully(_ fd: Int32, _ bytes: [UInt8], subject: String? = nil, timeoutNanoseconds: Int64? = nil) throws {
        try bytes.withUnsafeBytes { try writeFully(fd, $0, subject: subject, timeoutNanoseconds: timeoutNanoseconds) }
    }

    /// poll(2) on one fd; false when the timeout passed first (nil: wait without limit).
    @discardableResult
    public static func waitFor(_ fd: Int32, events: Int16, timeoutNanoseconds: Int64?, subject: String? = nil) throws -> Bool {
        var p = pollfd(fd: fd, events: events, revents: 0)
        let ms: Int32 = timeoutNanoseconds.map { Int32(clamping: ($0 + 999_999) / 1_000_000) } ?? -1
        let n = try syscall("poll", subject: subject ?? "fd \(fd)") { Glibc.poll(&p, 1, ms) }
        if n > 0 && p.revents & Int16(POLLNVAL) != 0 {
            preconditionFailure("poll \(subject ?? "fd \(fd)"): POLLNVAL: a closed fd is a bug in swarm")
        }
        return n > 0
    }

    /// poll(2) on several fds; the revents of each, in order (all 0 when the timeout passed first).
    public static func poll(_ fds: [(fd: Int32, events: Int16)], timeoutNanoseconds: Int64?) throws -> [Int16] {
        var set = fds.map { pollfd(fd: $0.fd, events: $0.events, revents: 0) }
        let ms: Int32 = timeoutNanoseconds.map { Int32(clamping: ($0 + 999_999) / 1_000_000) } ?? -1
        _ = try syscall("poll", subject: fds.map { "fd \($0.fd)" }.joined(separator: ", ")) { Glibc.poll(&set, nfds_t(set.count), ms) }
        if let bad = set.first(where: { $0.revents & Int16(POLLNVAL) != 0 }) {
            preconditionFailure("poll fd \(bad.fd): POLLNVAL: a closed fd is a bug in swarm")
        }
        return set.map(\.revents)
    }

    /// Everything up to end of file, at most `limit` bytes (more is EFBIG).
    /// For pipes, memfds and files whose size fstat does not know.
    public static func readAll(_ fd: Int32, limit: Int, subject: String? = nil) throws -> [UInt8] {
        let what = subject ?? "fd \(fd)"
        var out: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = try chunk.withUnsafeMutableBytes { buf in
                try syscall("read", subject: what) { Glibc.read(fd, buf.baseAddress, buf.count) }
            }
            if n == 0 { return out }
            if out.count + n > limit { throw SystemError("read", errno: EFBIG, subject: "\(what) (more than \(limit) bytes)") }
            out.append(contentsOf: chunk[0..<n])
        }
    }

    public enum SeekOrigin {
        case start, current, end
        var whence: Int32 {
            switch self {
            case .start: return SEEK_SET
            case .current: return SEEK_CUR
            case .end: return SEEK_END
            }
        }
    }

    /// lseek(2); the new offset.
    @discardableResult
    public static func seek(_ fd: Int32, to offset: Int64, from origin: SeekOrigin = .start) throws -> Int64 {
        Int64(try syscall("lseek", subject: "fd \(fd)") { lseek(fd, off_t(offset), origin.whence) })
    }

    /// ftruncate(2).
    public static func truncate(_ fd: Int32, to size: Int64, subject: String? = nil) throws {
        try syscall("ftruncate", subject: subject ?? "fd \(fd)") { ftruncate(fd, off_t(size)) }
    }

    /// fsync(2).
    public static func sync(_ fd: Int32, subject: String? = nil) throws {
        try syscall("fsync", subject: subject ?? "fd \(fd)") { fsync(fd) }
    }

    /// Sets or clears FD_CLOEXEC: an fd to hand to an exec'd program must
    /// have it cleared.
    public static func setCloseOnExec(_ fd: Int32, _ on: Bool) throws {
        let flags = try syscall("fcntl(F_GETFD)", subject: "fd \(fd)") { fcntl(fd, F_GETFD) }
        let wanted = on ? flags | FD_CLOEXEC : flags & ~FD_CLOEXEC
        if wanted != flags { try syscall("fcntl(F_SETFD)", subject: "fd \(fd)") { fcntl(fd, F_SETFD, wanted) } }
    }

    public static func isCloseOnExec(_ fd: Int32) throws -> Bool {
        try syscall("fcntl(F_GETFD)", subject: "fd \(fd)") { fcntl(fd, F_GETFD) } & FD_CLOEXEC != 0
    }

    /// Sets or clears O_NONBLOCK on the open file description (shared by every dup of it).
    public static func setNonBlocking(_ fd: Int32, _ on: Bool) throws {
        let flags = try syscall("fcntl(F_GETFL)", subject: "fd \(fd)") { fcntl(fd, F_GETFL) }
        let wanted = on ? flags | O_NONBLOCK : flags & ~O_NONBLOCK
        if wanted != flags { try syscall("fcntl(F_SETFL)", subject: "fd \(fd)") { fcntl(fd, F_SETFL, wanted) } }
    }

    public static func isNonBlocking(_ fd: Int32) throws -> Bool {
        try syscall("fcntl(F_GETFL)", subject: "fd \(fd)") { fcntl(fd, F_GETFL) } & O_NONBLOCK != 0
    }

    /// An anonymous file in memory (memfd_create(2)).
    public static func memoryFile(name: String, closeOnExec: Bool) throws -> Int32 {
        try syscall("memfd_create", subject: name) { swarm_memfd_create_flags(name, closeOnExec ? 1 : 0) }
    }

    /// execve(2): replaces this program. Returns only if the exec failed,
    /// with the error (the caller decides whether to go on).
    public static func exec(_ path: String, arguments: [String], environment: [String]) -> SystemError {
        var owned: [UnsafeMutablePointer<CChar>] = []
        defer { owned.forEach { free($0) } }
        func c(_ s: String) -> UnsafeMutablePointer<CChar>? {
            let p = strdup(s)!
            owned.append(p)
            return p
        }
        let argv: [UnsafeMutablePointer<CChar>?] = arguments.map(c) + [nil]
        let envp: [UnsafeMutablePointer<CChar>?] = environment.map(c) + [nil]
        let (_, e) = retryingEINTR("execve", subject: path, trapProgrammingErrors: true) { execve(path, argv, envp) }
        return SystemError("execve", errno: e, subject: path)
    }

    /// dup(2) with FD_CLOEXEC.
    public static func duplicate(_ fd: Int32) throws -> Int32 {
        try syscall("fcntl(F_DUPFD_CLOEXEC)", subject: "fd \(fd)") { fcntl(fd, F_DUPFD_CLOEXEC, 0) }
    }

    /// Whether the fd is a terminal.
    public static func isTerminal(_ fd: Int32) -> Bool { isatty(fd) == 1 }

    /// Sleeps (the rest after a signal too).
    public static func sleep(nanoseconds: Int64) {
        var req = timespec(tv_sec: Int(nanoseconds / 1_000_000_000), tv_nsec: Int(nanoseconds % 1_000_000_000))
        var rem = timespec()
        while nanosleep(&req, &rem) < 0 && Glibc.errno == EINTR { req = rem }
    }

    /// waitpid(pid, WNOHANG) for one child: nil while it runs.
    public static func reap(_ pid: pid_t) throws -> WaitResult? {
        var status: Int32 = 0
        let r = try syscall("waitpid", subject: "pid \(pid)") { waitpid(pid, &status, WNOHANG) }
        if r == 0 { return nil }
        return decode(pid: r, status: status)
    }

    static func decode(pid: pid_t, status: Int32) -> WaitResult? {
        // Linux encoding: low 7 bits the signal, 0x80 core, high byte the exit code.
        let sig = status & 0x7f
        if sig == 0 { return .exited(pid, (status >> 8) & 0xff) }
        if sig == 0x7f { return nil } // stopped/continued: not reported without WUNTRACED
        return .signaled(pid, sig, core: status & 0x80 != 0)
    }

    // MARK: Who we are

    public static var processID: pid_t { getpid() }
    public static var parentProcessID: pid_t { getppid() }
    public static var userID: uid_t { getuid() }
    public static var effectiveUserID: uid_t { geteuid() }
    public static var groupID: gid_t { getgid() }
    public static var isRoot: Bool { geteuid() == 0 }
}

/// The process environment, without Foundation (whose ProcessInfo copies
/// every variable into a dictionary on first use).
public enum Environment {
    public static func get(_ name: String) -> String? {
        getenv(name).map { String(cString: $0) }
    }

    /// The value, or nil when unset or empty.
    public static func nonEmpty(_ name: String) -> String? {
        guard let v = get(name), !v.isEmpty else { return nil }
        return v
    }

    /// Reads a variable and removes it, so programs started later never see it.
    public static func take(_ name: String) -> String? {
        let value = get(name)
        if value != nil { unsetenv(name) }
        return value
    }

    public static func set(_ name: String, _ value: String) throws {
        try Posix.syscall("setenv", subject: name) { setenv(name, value, 1) }
    }

    public static func unset(_ name: String) {
        unsetenv(name)
    }

    /// Every variable as "NAME=value", in the order of `environ`.
    public static var all: [String] {
        var out: [String] = []
        var p = environ
        while let entry = p.pointee {
            out.append(String(cString: entry))
            p += 1
        }
        return out
    }

    public static var dictionary: [String: String] {
        var d: [String: String] = [:]
        for entry in all {
            guard let eq = entry.firstIndex(of: "=") else { continue }
            let key = String(entry[..<eq])
            if d[key] == nil { d[key] = String(entry[entry.index(after: eq)...]) }
        }
        return d
    }
}

/// stdout and stderr for command-line output.
public enum Console {
    public enum Stream {
        case output, error
        var fd: Int32 { self == .output ? 1 : 2 }
    }

    /// Writes all of `text`, unbuffered; false when it could not. A closed or
    /// broken stdout is the caller's environment, not a bug in swarm: this
    /// never traps (and SIGPIPE, if not ignored, still ends the program, as
    /// for any command-line tool whose reader went away).
    @discardableResult
    public static func write(_ text: String, to stream: Stream = .output) -> Bool {
        var text = text
        return text.withUTF8 { buf in
            var offset = 0
            while offset < buf.count {
                let (n, _) = Posix.retryingEINTR("write", subject: "stdout", trapProgrammingErrors: false) {
                    Glibc.write(stream.fd, buf.baseAddress! + offset, buf.count - offset)
                }
                if n <= 0 { return false }
                offset += n
            }
            return true
        }
    }

    /// Writes all of `bytes` like `write(_:to:)`, except that a write a signal
    /// interrupted (a handler installed without `SA_RESTART`) ends it when
    /// `stop()` says so. False when it stopped or could not write.
    public static func write(_ bytes: [UInt8], to stream: Stream, unless stop: () -> Bool) -> Bool {
        bytes.withUnsafeBytes { buf in
            var offset = 0
            while offset < buf.count {
                let n = Glibc.write(stream.fd, buf.baseAddress! + offset, buf.count - offset)
                if n < 0 && errno == EINTR {
                    if stop() { return false }
                    continue
                }
                if n <= 0 { return false }
                offset += n
            }
            return true
        }
    }

    public static func isTerminal(_ stream: Stream) -> Bool { isatty(stream.fd) == 1 }
}
