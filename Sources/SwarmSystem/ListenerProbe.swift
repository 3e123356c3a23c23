import Glibc

/// Who else listens on a TCP address. SO_REUSEPORT lets any socket of the
/// same uid join a listening group and take a share of its connections, so a
/// second swarmd (or any program of that user) on an app's port would
/// silently steal traffic. Binding a probe socket without SO_REUSEPORT fails
/// with EADDRINUSE exactly when something listens there already.
public enum ListenerProbe {
    /// Whether something already listens on `host:port` (never for port 0).
    public static func isTaken(host: String, port: UInt16) -> Bool {
        guard port != 0 else { return false }
        let v6 = host.contains(":")
        let fd = socket(v6 ? AF_INET6 : AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { return false }
        defer { Posix.close(fd) }
        var one: Int32 = 1
        // Without SO_REUSEADDR, connections in TIME_WAIT would look like a listener.
        _ = setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
        if v6 { _ = setsockopt(fd, Int32(IPPROTO_IPV6), IPV6_V6ONLY, &one, socklen_t(MemoryLayout<Int32>.size)) }
        let r: Int32
        if v6 {
            var addr = sockaddr_in6()
            addr.sin6_family = sa_family_t(AF_INET6)
            addr.sin6_port = port.bigEndian
            guard inet_pton(AF_INET6, host, &addr.sin6_addr) == 1 else { return false }
            r = withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in6>.size)) } }
        } else {
            var addr = sockaddr_in()
            addr.sin_family = sa_family_t(AF_INET)
            addr.sin_port = port.bigEndian
            guard inet_pton(AF_INET, host, &addr.sin_addr) == 1 else { return false }
            r = withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
        }
        return r < 0 && errno == EADDRINUSE
    }

    /// What holds TCP port `port` when a bind to it failed with EADDRINUSE.
    /// Only on the error path: it reads /proc/net/tcp{,6} and may read every process.
    public enum Holder: Equatable, Sendable {
        /// A listener: "pid 123 (node)", or nil when its process is not visible to us.
        case listener(String?)
        /// No listener, but a connection's local end: the kernel gives ports of
        /// its ephemeral range to outgoing connections, so an app's port inside
        /// that range is taken whenever some client happens to draw it.
        case connection(ephemeral: ClosedRange<Int>?)
        /// Nothing in /proc/net/tcp: a socket bound without listening or connecting.
        case unknown
    }

    public static func holder(port: UInt16) -> Holder {
        var listening: Set<String> = []
        var connected = false
        let hexPort = String(port, radix: 16, uppercase: true)
        let padded = String(repeating: "0", count: max(0, 4 - hexPort.count)) + hexPort
        for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
            guard let bytes = try? Posix.readFile(table, limit: 8 << 20) else { continue }
            for line in String(decoding: bytes, as: UTF8.self).split(separator: "\n").dropFirst() {
                let f = line.split(separator: " ", omittingEmptySubsequences: true)
                // local_address is ADDR:PORT, st 0A is LISTEN, inode is the 10th field.
                guard f.count > 9, f[1].hasSuffix(":" + padded) else { continue }
                if f[3] == "0A" { listening.insert(String(f[9])) } else { connected = true }
            }
        }
        if !listening.isEmpty { return .listener(owner(ofInodes: listening)) }
        if connected {
            let range = ephemeralRange().flatMap { $0.contains(Int(port)) ? $0 : nil }
            return .connection(ephemeral: range)
        }
        return .unknown
    }

    /// net.ipv4.ip_local_port_range, if readable.
    public static func ephemeralRange() -> ClosedRange<Int>? {
        guard let bytes = try? Posix.readFile("/proc/sys/net/ipv4/ip_local_port_range", limit: 64) else { return nil }
        let f = String(decoding: bytes, as: UTF8.self).split(whereSeparator: { $0 == " " || $0 == "\t" || $0 == "\n" })
        guard f.count == 2, let lo = Int(f[0]), let hi = Int(f[1]), lo <= hi else { return nil }
        return lo...hi
    }

    /// The process listening on TCP port `port` ("pid 123 (node)"), if this
    /// process may see it: the socket's inode from /proc/net/tcp{,6}, then the
    /// /proc/PID/fd link naming it.
    public static func owner(port: UInt16) -> String? {
        if case .listener(let who) = holder(port: port) { return who }
        return nil
    }

    private static func owner(ofInodes inodes: Set<String>) -> String? {
        for pid in ProcFS.listDirectory("/proc") ?? [] where pid.first?.isNumber == true {
            for fd in ProcFS.listDirectory("/proc/\(pid)/fd") ?? [] {
                guard let link = ProcFS.readLink("/proc/\(pid)/fd/\(fd)"), link.hasPrefix("socket:[") else { continue }
                if inodes.contains(String(link.dropFirst(8).dropLast())) {
                    let comm = (try? Posix.readFile("/proc/\(pid)/comm", limit: 64)).map { String(decoding: $0, as: UTF8.self).trimmingSuffixNewline } ?? "?"
                    return "pid \(pid) (\(comm))"
                }
            }
        }
        return nil
    }
}

extension String {
    fileprivate var trimmingSuffixNewline: String { hasSuffix("\n") ? String(dropLast()) : self }
}

extension Sockets {
    /// The path a Unix socket is bound to (getsockname), if it has one.
    public static func unixPath(of fd: Int32) -> String? {
        var addr = sockaddr_un()
        var len = socklen_t(MemoryLayout<sockaddr_un>.size)
        let r = withUnsafeMutablePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &len) } }
        guard r == 0, addr.sun_family == sa_family_t(AF_UNIX) else { return nil }
        let path = withUnsafeBytes(of: addr.sun_path) { raw -> String in
            let bytes = raw.prefix(max(0, Int(len) - 2))
            return String(decoding: bytes.prefix { $0 != 0 }, as: UTF8.self)
        }
        return path.isEmpty ? nil : path
    }
}
