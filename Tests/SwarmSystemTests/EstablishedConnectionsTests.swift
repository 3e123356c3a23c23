import Glibc
@testable import SwarmSystem
import Testing

/// `ProcFS.establishedConnections`: the reload hand-over's count of the
/// connections a worker holds, from its fds and one sock_diag dump of its
/// listener's address family (issue 18: the dump of both families per
/// replaced worker was 2.5 ms of a 1,000-worker reload's CPU each).
@Suite struct EstablishedConnectionsTests {
    /// Connects `count` clients to `listener` and accepts them here: this
    /// process then holds `count` established connections on the port.
    func connectAndAccept(_ listener: Int32, host: String, port: UInt16, ipv6: Bool, count: Int) throws -> [Int32] {
        var fds: [Int32] = []
        for _ in 0..<count {
            let c = socket(ipv6 ? AF_INET6 : AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
            #expect(c >= 0)
            var ok: Int32 = -1
            if ipv6 {
                var a = sockaddr_in6()
                a.sin6_family = sa_family_t(AF_INET6)
                a.sin6_port = port.bigEndian
                _ = inet_pton(AF_INET6, host, &a.sin6_addr)
                ok = withUnsafePointer(to: &a) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(c, $0, socklen_t(MemoryLayout<sockaddr_in6>.size)) } }
            } else {
                var a = sockaddr_in()
                a.sin_family = sa_family_t(AF_INET)
                a.sin_port = port.bigEndian
                _ = inet_pton(AF_INET, host, &a.sin_addr)
                ok = withUnsafePointer(to: &a) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(c, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
            }
            #expect(ok == 0, "connect: errno \(errno)")
            let s = accept(listener, nil, nil)
            #expect(s >= 0, "accept: errno \(errno)")
            fds += [c, s]
        }
        return fds
    }

    @Test(arguments: [("127.0.0.1", false), ("::1", true)])
    func countsTheConnectionsAcceptedFromTheListener(host: String, ipv6: Bool) throws {
        let listener = try Sockets.listenTCP(host: host, port: 0, backlog: 16, reusePort: false)
        defer { Posix.close(listener) }
        let port = try #require(Sockets.localPort(listener))
        #expect(try ProcFS.establishedConnections(pid: getpid(), localPort: port, listener: listener) == 0,
                "only the listener: nothing held")
        let fds = try connectAndAccept(listener, host: host, port: port, ipv6: ipv6, count: 3)
        defer { for fd in fds { Posix.close(fd) } }
        // The client ends are on ephemeral ports: only the 3 accepted ones count.
        #expect(try ProcFS.establishedConnections(pid: getpid(), localPort: port, listener: listener) == 3)
        #expect(try ProcFS.establishedConnections(pid: getpid(), localPort: port) == 3, "without the listener: both families dumped")
    }
}
