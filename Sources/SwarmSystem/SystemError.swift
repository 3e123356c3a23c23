import Glibc

/// A failed system call: which call, on what, and the errno.
///
/// The one error convention of SwarmSystem: every wrapper that can fail at
/// run time throws this (or a `FileError`, for the file-safety refusals),
/// naming the call and its subject (a path, an fd, a pid). Would-block is not
/// an error but a value (`IOResult.wouldBlock`); EINTR never reaches a
/// caller; EBADF and EFAULT are bugs in swarm, not conditions to handle, and
/// stop the process with the call named (see `Posix.syscall`).
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

    /// The disk (or the quota) is full.
    public var isNoSpace: Bool { errno == ENOSPC || errno == EDQUOT }
}

public func errnoName(_ e: Int32) -> String {
    let names: [Int32: String] = [
        EPERM: "EPERM", ENOENT: "ENOENT", ESRCH: "ESRCH", EINTR: "EINTR", EIO: "EIO", EBADF: "EBADF",
        ECHILD: "ECHILD", EAGAIN: "EAGAIN", ENOMEM: "ENOMEM", EACCES: "EACCES", EEXIST: "EEXIST",
        ENOTDIR: "ENOTDIR", EISDIR: "EISDIR", EINVAL: "EINVAL", EMFILE: "EMFILE", ENFILE: "ENFILE",
        ENOEXEC: "ENOEXEC", EPIPE: "EPIPE", EADDRINUSE: "EADDRINUSE", EADDRNOTAVAIL: "EADDRNOTAVAIL",
        ECONNREFUSED: "ECONNREFUSED", ENAMETOOLONG: "ENAMETOOLONG", ELOOP: "ELOOP", ETXTBSY: "ETXTBSY",
        E2BIG: "E2BIG", ENOSPC: "ENOSPC", EROFS: "EROFS", ECONNRESET: "ECONNRESET", ENOTSOCK: "ENOTSOCK",
        EDQUOT: "EDQUOT", ENXIO: "ENXIO", ETIMEDOUT: "ETIMEDOUT", EFAULT: "EFAULT", ENOTEMPTY: "ENOTEMPTY",
        EXDEV: "EXDEV", ENOTCONN: "ENOTCONN", EMSGSIZE: "EMSGSIZE", ENOSYS: "ENOSYS", EOPNOTSUPP: "EOPNOTSUPP",
        ECONNABORTED: "ECONNABORTED", EFBIG: "EFBIG",
    ]
    return names[e] ?? "errno \(e)"
}

/// The outcome of a call on a non-blocking fd: done, or the kernel would
/// have had to wait (EAGAIN/EWOULDBLOCK), which is a normal answer, not an error.
public enum IOResult<T> {
    case done(T)
    case wouldBlock

    /// The value, nil when the call would have blocked.
    public var value: T? {
        if case let .done(v) = self { return v }
        return nil
    }
}

extension IOResult: Equatable where T: Equatable {}

extension Posix {
    /// The one place EINTR is retried. Runs `body` (a raw system call that
    /// returns a negative value and sets errno on failure) until it does not
    /// fail with EINTR; returns its result, or -1 with the errno.
    ///
    /// EBADF and EFAULT mean swarm passed a closed fd or a bad pointer: a bug
    /// that no caller can handle sensibly (a retry could hit an fd reused by
    /// someone else), so they stop the process, naming the call.
    @inline(__always)
    static func retryingEINTR<T: FixedWidthInteger>(_ call: @autoclosure () -> String, subject: @autoclosure () -> String?,
                                                   trapProgrammingErrors: Bool, _ body: () -> T) -> (result: T, errno: Int32) {
        while true {
            let r = body()
            if r >= 0 { return (r, 0) }
            let e = Glibc.errno
            if e == EINTR { continue }
            if trapProgrammingErrors && (e == EBADF || e == EFAULT) {
                let on = subject().map { " \($0)" } ?? ""
                preconditionFailure("\(call())\(on): \(errnoName(e)): a closed fd or a bad pointer is a bug in swarm")
            }
            return (r, e)
        }
    }

    /// A system call that must succeed: its result, or a thrown `SystemError`.
    @inline(__always)
    @discardableResult
    public static func syscall<T: FixedWidthInteger>(_ call: @autoclosure () -> String, subject: @autoclosure () -> String? = nil,
                                                    _ body: () -> T) throws -> T {
        let (r, e) = retryingEINTR(call(), subject: subject(), trapProgrammingErrors: true, body)
        if r < 0 { throw SystemError(call(), errno: e, subject: subject()) }
        return r
    }

    /// A system call on a non-blocking fd: EAGAIN/EWOULDBLOCK is `.wouldBlock`.
    @inline(__always)
    public static func nonBlockingSyscall<T: FixedWidthInteger>(_ call: @autoclosure () -> String, subject: @autoclosure () -> String? = nil,
                                                               _ body: () -> T) throws -> IOResult<T> {
        let (r, e) = retryingEINTR(call(), subject: subject(), trapProgrammingErrors: true, body)
        if r >= 0 { return .done(r) }
        if e == EAGAIN || e == EWOULDBLOCK { return .wouldBlock }
        throw SystemError(call(), errno: e, subject: subject())
    }
}
