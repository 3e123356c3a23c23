import Glibc
import SwarmSystem
import Testing

/// The round-robin program's connection counters, read in one batch: a real
/// reuseport group on 127.0.0.1, real connections.
@Suite("Steering counters", .enabled(if: isRoot, "needs root (CAP_BPF) to load the eBPF steering program"))
struct SteeringCountsTests {
    /// The port the kernel gave a socket bound to port 0.
    func port(of fd: Int32) throws -> UInt16 {
        var addr = sockaddr_in()
        var len = socklen_t(MemoryLayout<sockaddr_in>.size)
        let r = withUnsafeMutablePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &len) } }
        guard r == 0 else { throw KernelTestError("getsockname: errno \(errno)") }
        return UInt16(bigEndian: addr.sin_port)
    }

    func connect(to port: UInt16) throws -> Int32 {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw KernelTestError("socket: errno \(errno)") }
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_port = port.bigEndian
        inet_pton(AF_INET, "127.0.0.1", &addr.sin_addr)
        let r = withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
        guard r == 0 else { let e = errno; close(fd); throw KernelTestError("connect 127.0.0.1:\(port): errno \(e)") }
        return fd
    }

    @Test("counters of 1,500 indices come back in one read, each index's connections where the program steered them")
    func countsOfEveryIndex() throws {
        let first = try Sockets.listenTCP(host: "127.0.0.1", port: 0, backlog: 64, reusePort: true)
        let p = try port(of: first)
        var group = [first]
        for _ in 1..<3 { group.append(try Sockets.listenTCP(host: "127.0.0.1", port: p, backlog: 64, reusePort: true)) }
        var clients: [Int32] = []
        defer { (group + clients).forEach { close($0) } }
        // More indices than the batch's on-stack key buffer (1,024): the read covers them all.
        let rr = try RoundRobinSteering(maxSlots: 1500)
        try rr.attach(to: first)
        try rr.steer(to: group, previouslyUsed: 0)
        #expect(try rr.connectionCounts(upTo: 1500) == [UInt64](repeating: 0, count: 1500))
        for _ in 0..<9 { clients.append(try connect(to: p)) }
        let counts = try #require(try rr.connectionCounts(upTo: 1500))
        #expect(counts.count == 1500)
        #expect(Array(counts[0..<3]) == [3, 3, 3], "round-robin over 3 sockets: \(counts[0..<3])")
        #expect(counts[3...].allSatisfy { $0 == 0 }, "indices nobody sits at counted connections")
        // Fewer than all: the first ones only.
        #expect(try rr.connectionCounts(upTo: 2) == [3, 3])
        // Read again with nothing new (one state lookup), then after one more connection.
        #expect(try rr.connectionCounts(upTo: 1500) == counts)
        clients.append(try connect(to: p))
        let tenth = try #require(try rr.connectionCounts(upTo: 3))
        #expect(tenth.reduce(0, +) == 10 && tenth.sorted() == [3, 3, 4], "the 10th connection counted: \(tenth)")
        // A hand-over's connections move its quota, not the round-robin counter: they are seen too.
        try rr.handOver(toIndex: 2, quota: 2)
        #expect(try rr.connectionCounts(upTo: 3) == tenth)
        for _ in 0..<2 { clients.append(try connect(to: p)) }
        let handed = try #require(try rr.connectionCounts(upTo: 3))
        #expect(handed == [tenth[0], tenth[1], tenth[2] + 2], "two handed-over connections at index 2: \(tenth) → \(handed)")
    }
}
