import CSwarmSpawn
import Glibc

/// Listening sockets, bound by swarmd and handed to workers.
public enum Sockets {
    /// A TCP listener on a numeric address. With `reusePort`, several may
    /// share the address: the kernel hashes connections over them.
    public static func listenTCP(host: String, port: UInt16, backlog: Int32, reusePort: Bool) throws -> Int32 {
        let v6 = host.contains(":")
        let fd = try Posix.check("socket") { socket(v6 ? AF_INET6 : AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0) }
        do {
            var one: Int32 = 1
            try Posix.check("setsockopt(SO_REUSEADDR)") { setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size)) }
            if reusePort {
                try Posix.check("setsockopt(SO_REUSEPORT)") { setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, socklen_t(MemoryLayout<Int32>.size)) }
            }
            let subject = v6 ? "[\(host)]:\(port)" : "\(host):\(port)"
            if v6 {
                var addr = sockaddr_in6()
                addr.sin6_family = sa_family_t(AF_INET6)
                addr.sin6_port = port.bigEndian
                guard inet_pton(AF_INET6, host, &addr.sin6_addr) == 1 else { throw SystemError("inet_pton", errno: EINVAL, subject: host) }
                try Posix.check("bind", subject: subject) {
                    withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in6>.size)) } }
                }
            } else {
                var addr = sockaddr_in()
                addr.sin_family = sa_family_t(AF_INET)
                addr.sin_port = port.bigEndian
                guard inet_pton(AF_INET, host, &addr.sin_addr) == 1 else { throw SystemError("inet_pton", errno: EINVAL, subject: host) }
                try Posix.check("bind", subject: subject) {
                    withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
                }
            }
            try Posix.check("listen", subject: subject) { listen(fd, backlog) }
            return fd
        } catch {
            Posix.close(fd)
            throw error
        }
    }

    /// A Unix stream listener. A stale socket file (nobody accepting) is replaced.
    public static func listenUnix(path: String, backlog: Int32, mode: mode_t?) throws -> Int32 {
        if isStale(path) { unlink(path) }
        let fd = try Posix.check("socket") { socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0) }
        do {
            var addr = try unixAddress(path)
            // Create the file with the final mode: no window where it is wider.
            let oldMask = umask(mode.map { 0o777 & ~$0 } ?? 0o077)
            let r = withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) } }
            let e = errno
            umask(oldMask)
            if r < 0 { throw SystemError("bind", errno: e, subject: path) }
            if let mode { try Posix.check("chmod", subject: path) { chmod(path, mode) } }
            try Posix.check("listen", subject: path) { listen(fd, backlog) }
            return fd
        } catch {
            Posix.close(fd)
            throw error
        }
    }

    /// A socket file nobody listens on any more.
    static func isStale(_ path: String) -> Bool {
        var st = stat()
        guard lstat(path, &st) == 0, (st.st_mode & S_IFMT) == S_IFSOCK else { return false }
        guard let fd = try? connectUnix(path) else { return errno == ECONNREFUSED }
        Posix.close(fd)
        return false
    }

    public static func unixAddress(_ path: String) throws -> sockaddr_un {
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(path.utf8)
        guard bytes.count < MemoryLayout.size(ofValue: addr.sun_path) else { throw SystemError("bind", errno: ENAMETOOLONG, subject: path) }
        withUnsafeMutableBytes(of: &addr.sun_path) { raw in
            for (i, b) in bytes.enumerated() { raw[i] = b }
            raw[bytes.count] = 0
        }
        // Abstract namespace: a leading '@' stands for the NUL byte.
        if bytes.first == UInt8(ascii: "@") {
            withUnsafeMutableBytes(of: &addr.sun_path) { $0[0] = 0 }
        }
        return addr
    }

    static func unixAddressLength(_ path: String) -> socklen_t {
        if path.hasPrefix("@") {
            return socklen_t(MemoryLayout<sa_family_t>.size + path.utf8.count)
        }
        return socklen_t(MemoryLayout<sockaddr_un>.size)
    }

    /// A blocking connection to a Unix stream socket.
    public static func connectUnix(_ path: String) throws -> Int32 {
        let fd = try Posix.check("socket") { socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0) }
        var addr = try unixAddress(path)
        let len = unixAddressLength(path)
        let r = withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, len) } }
        if r < 0 {
            let e = errno
            Posix.close(fd)
            errno = e
            throw SystemError("connect", errno: e, subject: path)
        }
        return fd
    }

    /// socketpair(AF_UNIX, SOCK_STREAM|SOCK_CLOEXEC): a connected pair, e.g.
    /// a child's stdin and stdout as one socket (ssh for `--host`).
    public static func streamPair() throws -> (Int32, Int32) {
        var pair: [Int32] = [-1, -1]
        try Posix.check("socketpair(AF_UNIX, SOCK_STREAM)") {
            socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0, &pair)
        }
        return (pair[0], pair[1])
    }

    /// A Unix datagram socket bound at `path` ('@' for abstract), receiving credentials.
    public static func bindDatagram(_ path: String) throws -> Int32 {
        if !path.hasPrefix("@") { unlink(path) }
        let fd = try Posix.check("socket") { socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue) | Int32(SOCK_NONBLOCK.rawValue), 0) }
        do {
            var addr = try unixAddress(path)
            let len = unixAddressLength(path)
            try Posix.check("bind", subject: path) { withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, len) } } }
            try Posix.check("setsockopt(SO_PASSCRED)") { swarm_enable_passcred(fd) }
            var size: Int32 = 1 << 20
            _ = setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &size, socklen_t(MemoryLayout<Int32>.size))
            return fd
        } catch {
            Posix.close(fd)
            throw error
        }
    }

    /// The port a TCP socket is bound to.
    public static func localPort(_ fd: Int32) -> UInt16? {
        var storage = sockaddr_storage()
        var len = socklen_t(MemoryLayout<sockaddr_storage>.size)
        let r = withUnsafeMutablePointer(to: &storage) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &len) } }
        guard r == 0 else { return nil }
        switch Int32(storage.ss_family) {
        case AF_INET:
            return withUnsafePointer(to: &storage) { $0.withMemoryRebound(to: sockaddr_in.self, capacity: 1) { UInt16(bigEndian: $0.pointee.sin_port) } }
        case AF_INET6:
            return withUnsafePointer(to: &storage) { $0.withMemoryRebound(to: sockaddr_in6.self, capacity: 1) { UInt16(bigEndian: $0.pointee.sin6_port) } }
        default:
            return nil
        }
    }

    /// SO_PEERCRED of a connected Unix socket.
    public static func peerCredentials(_ fd: Int32) -> (pid: pid_t, uid: uid_t, gid: gid_t)? {
        var pid: pid_t = 0, uid: uid_t = 0, gid: gid_t = 0
        guard swarm_peer_cred(fd, &pid, &uid, &gid) == 0 else { return nil }
        return (pid, uid, gid)
    }
}

extension Sockets {
    /// One datagram and its sender's pid (SCM_CREDENTIALS); -1 with errno set when none.
    public static func receiveWithCredentials(_ fd: Int32, _ buffer: UnsafeMutableRawBufferPointer) -> (count: Int, pid: pid_t) {
        var pid: pid_t = 0
        let n = swarm_recv_with_cred(fd, buffer.baseAddress, buffer.count, &pid)
        return (n, pid)
    }

    /// Compatibility: accept4(NONBLOCK|CLOEXEC); nil when nothing is pending, throws on other errors (EMFILE…).
    /// New code: `acceptConnection` (which also traps EBADF).
    public static func accept(_ fd: Int32) throws -> Int32? {
        while true {
            let (c, e) = Posix.retryingEINTR("accept4", subject: "fd \(fd)", trapProgrammingErrors: false) { swarm_accept(fd) }
            if c >= 0 { return c }
            if e == ECONNABORTED { continue }
            if e == EAGAIN || e == EWOULDBLOCK { return nil }
            throw SystemError("accept4", errno: e)
        }
    }
}

/// Who is at the other end of a Unix socket (SO_PEERCRED): for a connected
/// socket, the process that called connect() or listen().
public struct PeerCredentials: Equatable, Sendable {
    public var pid: pid_t
    public var uid: uid_t
    public var gid: gid_t
}

extension Sockets {
    public enum ShutdownHow {
        case read, write, both
        var how: Int32 {
            switch self {
            case .read: return Int32(SHUT_RD)
            case .write: return Int32(SHUT_WR)
            case .both: return Int32(SHUT_RDWR)
            }
        }
    }

    /// shutdown(2). A peer already gone (ENOTCONN) is not an error.
    public static func shutdown(_ fd: Int32, _ how: ShutdownHow) throws {
        let (r, e) = Posix.retryingEINTR("shutdown", subject: "fd \(fd)", trapProgrammingErrors: true) { Glibc.shutdown(fd, how.how) }
        if r < 0 && e != ENOTCONN { throw SystemError("shutdown", errno: e, subject: "fd \(fd)") }
    }

    /// SO_SNDBUF: how much the kernel holds for the peer to read. Linux
    /// doubles `bytes` (for its bookkeeping) and caps it at net.core.wmem_max;
    /// with `force`, SO_SNDBUFFORCE is tried first (no cap; it needs
    /// CAP_NET_ADMIN) and SO_SNDBUF used if it is refused.
    public static func setSendBuffer(_ fd: Int32, bytes: Int32, force: Bool = false) throws {
        var size = bytes
        let length = socklen_t(MemoryLayout<Int32>.size)
        if force && setsockopt(fd, SOL_SOCKET, SO_SNDBUFFORCE, &size, length) == 0 { return }
        try Posix.syscall("setsockopt(SO_SNDBUF)", subject: "fd \(fd)") {
            setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &size, length)
        }
    }

    /// SO_PEERCRED, throwing (`peerCredentials` is the optional form).
    public static func peer(of fd: Int32) throws -> PeerCredentials {
        var pid: pid_t = 0, uid: uid_t = 0, gid: gid_t = 0
        try Posix.syscall("getsockopt(SO_PEERCRED)", subject: "fd \(fd)") { swarm_peer_cred(fd, &pid, &uid, &gid) }
        return PeerCredentials(pid: pid, uid: uid, gid: gid)
    }

    /// accept4(NONBLOCK|CLOEXEC) on a non-blocking listener. A connection the
    /// client aborted before we took it (ECONNABORTED) is skipped; EMFILE and
    /// the like are thrown.
    public static func acceptConnection(_ fd: Int32) throws -> IOResult<Int32> {
        while true {
            let (c, e) = Posix.retryingEINTR("accept4", subject: "fd \(fd)", trapProgrammingErrors: true) { swarm_accept(fd) }
            if c >= 0 { return .done(c) }
            if e == ECONNABORTED { continue }
            if e == EAGAIN || e == EWOULDBLOCK { return .wouldBlock }
            throw SystemError("accept4", errno: e, subject: "fd \(fd)")
        }
    }

    /// One datagram and its sender's pid (SCM_CREDENTIALS, 0 if none sent),
    /// from a non-blocking socket. Passed fds are closed.
    public static func receiveDatagram(_ fd: Int32, into buffer: UnsafeMutableRawBufferPointer) throws -> IOResult<(count: Int, pid: pid_t)> {
        var pid: pid_t = 0
        let (n, e) = Posix.retryingEINTR("recvmsg", subject: "fd \(fd)", trapProgrammingErrors: true) {
            swarm_recv_with_cred(fd, buffer.baseAddress, buffer.count, &pid)
        }
        if n >= 0 { return .done((n, pid)) }
        if e == EAGAIN || e == EWOULDBLOCK { return .wouldBlock }
        throw SystemError("recvmsg", errno: e, subject: "fd \(fd)")
    }

    /// send(2) with MSG_NOSIGNAL (a closed peer is EPIPE, not SIGPIPE) of
    /// what the socket takes now.
    public static func sendSome(_ fd: Int32, _ bytes: UnsafeRawBufferPointer) throws -> IOResult<Int> {
        try Posix.nonBlockingSyscall("send", subject: "fd \(fd)") { send(fd, bytes.baseAddress, bytes.count, Int32(MSG_NOSIGNAL)) }
    }

    /// Sends every byte on a (blocking or non-blocking) socket, waiting for
    /// room, but not past the timeout (ETIMEDOUT then).
    public static func sendAll(_ fd: Int32, _ bytes: [UInt8], timeoutNanoseconds: Int64) throws {
        let deadline = Posix.monotonicNanoseconds() + timeoutNanoseconds
        var offset = 0
        try bytes.withUnsafeBytes { buf in
            while offset < buf.count {
                switch try sendSome(fd, UnsafeRawBufferPointer(rebasing: buf[offset...])) {
                case let .done(n): offset += n
                case .wouldBlock:
                    let left = deadline - Posix.monotonicNanoseconds()
                    guard left > 0, try Posix.waitFor(fd, events: Int16(POLLOUT), timeoutNanoseconds: left) else {
                        throw SystemError("send", errno: ETIMEDOUT, subject: "fd \(fd) (\(offset) of \(buf.count) bytes sent)")
                    }
                }
            }
        }
    }

    /// recv(2) on a blocking socket, or `.wouldBlock` on a non-blocking one.
    public static func receiveSome(_ fd: Int32, into buffer: UnsafeMutableRawBufferPointer) throws -> IOResult<Int> {
        try Posix.nonBlockingSyscall("recv", subject: "fd \(fd)") { recv(fd, buffer.baseAddress, buffer.count, 0) }
    }
}
