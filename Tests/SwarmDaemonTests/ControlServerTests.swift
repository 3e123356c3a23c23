import Glibc
@testable import SwarmDaemon
import SwarmCore
import SwarmProtocol
import SwarmSystem
import Testing

/// A ControlServer on a real loop and a real listening socket; clients are
/// socketpairs admitted with any peer uid the test chooses.
final class ControlFixture {
    let dir: TempDir
    let kernel = FakeKernel()
    let loop: EventLoop
    let server: ControlServer
    let handler = RecordingHandler()
    let reports = Reports()
    let socketPath: String
    let listenFD: Int32

    init() throws {
        dir = try TempDir()
        loop = try EventLoop()
        server = ControlServer(loop: loop, kernel: kernel)
        server.handler = handler
        handler.server = server
        server.report = reports.sink
        socketPath = dir.path + "/control.sock"
        listenFD = try Sockets.listenUnix(path: socketPath, backlog: 64, mode: 0o600)
        try Posix.setNonBlocking(listenFD)
        try server.listen(on: listenFD)
    }

    deinit {
        server.stop()
        Posix.close(listenFD)
    }

    static let nobody: uid_t = 65534

    /// A client admitted as if its peer credentials said `uid`.
    func connect(uid: uid_t = 0, pid: pid_t = 4321) throws -> Peer {
        let (s, c) = try socketPair()
        server.admit(fd: s, uid: uid, pid: pid)
        return Peer(fd: c)
    }

    /// A client that has had one request answered: the server's side of it is known.
    func connectAnswered(pid: pid_t) throws -> (peer: Peer, client: ControlClient) {
        let peer = try connect(pid: pid)
        peer.ping(1)
        try run(until: "the first reply", peers: [peer]) { peer.responses.count == 1 }
        return (peer, try #require(handler.clients.last))
    }

    func run(until what: String, within seconds: Double = 10, peers: [Peer], _ done: () -> Bool) throws {
        try runLoop(loop, until: what, within: seconds, pump: { for p in peers { p.pump(); p.receive() } }, done)
    }
}

@Suite("ControlServer")
struct ControlServerTests {
    @Test func aRequestIsAnswered() throws {
        let f = try ControlFixture()
        let peer = try f.connect()
        peer.ping(7)
        try f.run(until: "the reply to ping 7", peers: [peer]) { peer.responses.count == 1 }
        #expect(peer.responses[0].id == 7)
        #expect(peer.responses[0].ok == true)
        #expect(peer.responses[0].message == "pong")
        #expect(f.handler.handled.map(\.request.verb) == [.ping])
    }

    @Test func aClientAcceptedOnTheListeningSocketIsServedWithItsRealCredentials() throws {
        let f = try ControlFixture()
        let fd = try Sockets.connectUnix(f.socketPath)
        try Posix.setNonBlocking(fd)
        let peer = Peer(fd: fd)
        peer.send(Request(id: 3, verb: .stop, name: "web"))
        try f.run(until: "the accepted client's stop request reaches the handler", peers: [peer]) { f.handler.handled.count == 1 }
        let client = try #require(f.handler.clients.first)
        #expect(client.uid == getuid())
        #expect(client.pid == getpid())
        #expect(client.privileged, "swarmd's own uid may use every verb")
        #expect(f.server.connectionCount == 1)
    }

    @Test func pipelinedRequestsAreHandledAtMostFramesPerTurnPerDispatchAndAllAnswered() throws {
        let f = try ControlFixture()
        let peer = try f.connect()
        for i in 1...1000 { peer.ping(UInt64(i)) }
        var perDispatch: [Int] = []
        let deadline = Posix.monotonicNanoseconds() + 20_000_000_000
        while peer.responses.count < 1000 {
            #expect(Posix.monotonicNanoseconds() < deadline, "timed out with \(peer.responses.count) of 1000 replies")
            if Posix.monotonicNanoseconds() >= deadline { return }
            peer.pump()
            let before = f.handler.handled.count
            try f.loop.runOnce(timeout: 5_000_000)
            perDispatch.append(f.handler.handled.count - before)
            peer.receive()
        }
        #expect(perDispatch.max()! <= ControlServer.framesPerTurn)
        #expect(perDispatch.filter { $0 > 0 }.count >= 1000 / ControlServer.framesPerTurn)
        #expect(peer.responses.map(\.id) == (1...1000).map(UInt64.init), "every ping answered once, in order")
    }

    @Test func aTurnEndsOnceItHasTakenItsTimeBudget() throws {
        let f = try ControlFixture()
        // Each request takes 2 ms of the fake clock: a turn handles 3 (6 ms > the 5 ms budget), not 16.
        f.handler.onRequest = { f.kernel.advance(2_000_000) }
        let peer = try f.connect()
        for i in 1...48 { peer.ping(UInt64(i)) }
        var perDispatch: [Int] = []
        try f.run(until: "48 replies", peers: [peer]) {
            perDispatch.append(f.handler.handled.count)
            return peer.responses.count == 48
        }
        let counts = zip(perDispatch.dropFirst(), perDispatch).map { $0 - $1 }.filter { $0 > 0 }
        #expect(counts.max() == 3, "requests handled per turn: \(counts)")
        #expect(peer.responses.map(\.id) == (1...48).map(UInt64.init), "every ping answered once, in order")
    }

    @Test func twoPipeliningClientsTakeTurns() throws {
        let f = try ControlFixture()
        let a = try f.connect(pid: 1)
        let b = try f.connect(pid: 2)
        for i in 1...200 { a.ping(UInt64(i)) }
        for i in 1...200 { b.ping(UInt64(i)) }
        try f.run(until: "200 replies to each client", within: 20, peers: [a, b]) {
            a.responses.count == 200 && b.responses.count == 200
        }
        let order = f.handler.handled.map(\.client)
        var runs: [Int] = []
        var run = 0
        for (i, c) in order.enumerated() {
            run = (i > 0 && order[i - 1] == c) ? run + 1 : 1
            if i == order.count - 1 || order[i + 1] != c { runs.append(run) }
        }
        #expect(runs.max()! <= ControlServer.framesPerTurn,
                "the longest stretch of one client's requests was \(runs.max()!): runs \(runs.prefix(8))…")
        #expect(runs.count >= 400 / ControlServer.framesPerTurn)
    }

    @Test func aClientThatHungUpGetsNoMoreRequestsHandledAndNoWrites() throws {
        let f = try ControlFixture()
        let peer = try f.connect()
        for i in 1...1000 { peer.ping(UInt64(i)) }
        try f.run(until: "the first turn", peers: [peer]) { !f.handler.handled.isEmpty }
        let handledBeforeHangUp = f.handler.handled.count
        #expect(handledBeforeHangUp <= ControlServer.framesPerTurn)
        peer.close()
        try runLoop(f.loop, until: "the server notices the hang-up") { f.server.connectionCount == 0 }
        // The freed fd number is the lowest free one: whatever opens next is likely to get it.
        let reused = try pipePair()
        defer { Posix.close(reused.read); Posix.close(reused.write) }
        try spin(f.loop, times: 50)
        #expect(f.handler.handled.count == handledBeforeHangUp,
                "\(f.handler.handled.count - handledBeforeHangUp) request(s) handled after the client hung up")
        #expect(f.handler.closed.count == 1)
        #expect(readAvailable(reused.read) ?? [] == [], "nothing may be written to a dropped client's old fd number")
    }

    @Test func aClientThatDoesNotReadStopsBeingReadAndIsClosedAfterTheStallTimeout() throws {
        let f = try ControlFixture()
        f.handler.replySize = 64 << 10
        let peer = try f.connect(pid: 777)
        for i in 1...100 { peer.ping(UInt64(i)) }
        // The replies fill the socket, then the queue past readPause: no more requests are taken.
        try spin(f.loop, times: 60, pump: { peer.pump() })
        let handled = f.handler.handled.count
        #expect(handled > 0 && handled < 100, "handled \(handled) requests of a client that reads nothing")
        let client = try #require(f.handler.clients.first)
        #expect(client.queuedBytes > ControlServer.readPause)
        try spin(f.loop, times: 60, pump: { peer.pump() })
        #expect(f.handler.handled.count == handled, "the server went on reading a client whose replies pile up")

        f.kernel.advance(ControlServer.stallTimeout - 1_000_000_000)
        f.server.sweep()
        #expect(f.server.connectionCount == 1, "closed before the stall timeout")
        f.kernel.advance(2_000_000_000)
        f.server.sweep()
        #expect(f.server.connectionCount == 0, "not closed after taking no reply for the stall timeout")
        #expect(client.closed)
        f.kernel.advance(ControlServer.stallTimeout * 2)
        f.server.sweep()
        try spin(f.loop)
        #expect(f.reports.count(containing: "pid 777") == 1, "warnings: \(f.reports.all.map(\.text))")
        #expect(f.reports.count(containing: "does not read its replies") == 1)
    }

    @Test func repliesPilingUpPastMaxQueuedCloseTheClientWithOneWarning() throws {
        let f = try ControlFixture()
        let (peer, client) = try f.connectAnswered(pid: 888)
        defer { withExtendedLifetime(peer) {} }  // its socket stays open, unread
        let megabyte = [UInt8](repeating: UInt8(ascii: "x"), count: 1 << 20) + [10]
        for _ in 0..<20 { f.server.send(client, bytes: megabyte) }
        #expect(client.closed, "20 MiB of unread replies did not close the client")
        for _ in 0..<20 { f.server.send(client, bytes: megabyte) }
        f.kernel.advance(ControlServer.stallTimeout * 2)
        f.server.sweep()
        #expect(f.reports.count(containing: "pid 888") == 1, "warnings: \(f.reports.all.map(\.text))")
        #expect(f.reports.count(containing: "does not read its replies") == 1)
        #expect(f.server.connectionCount == 0)
    }

    @Test func aLargeAnswerGoesToTheKernelInOneWrite() throws {
        let f = try ControlFixture()
        let (peer, client) = try f.connectAnswered(pid: 999)
        defer { withExtendedLifetime(peer) {} }  // its socket stays open, unread
        // About what a 4,096-worker status is; a default send buffer (~208 KiB) takes a third of it.
        let answer = [UInt8](repeating: UInt8(ascii: "x"), count: 700 << 10) + [10]
        f.server.send(client, bytes: answer)
        let wmemMax: Int = {
            let fd = open("/proc/sys/net/core/wmem_max", O_RDONLY)
            guard fd >= 0 else { return 0 }
            defer { Glibc.close(fd) }
            var buf = [UInt8](repeating: 0, count: 32)
            let n = read(fd, &buf, buf.count)
            return n > 0 ? Int(String(decoding: buf[..<n], as: UTF8.self).split(separator: "\n").first ?? "") ?? 0 : 0
        }()
        var size: Int32 = 0
        var len = socklen_t(MemoryLayout<Int32>.size)
        #expect(getsockopt(client.fd, SOL_SOCKET, SO_SNDBUF, &size, &len) == 0)
        // Root may go past wmem_max (SO_SNDBUFFORCE); others get at most wmem_max.
        let cap = geteuid() == 0 ? Int(ControlServer.maxSendBuffer) : min(wmemMax, Int(ControlServer.maxSendBuffer))
        #expect(Int(size) >= 2 * min(answer.count, cap), "SO_SNDBUF \(size), wmem_max \(wmemMax), euid \(geteuid())")
        if cap >= answer.count {
            #expect(client.queuedBytes == 0, "\(client.queuedBytes) bytes of the answer wait for the socket to drain")
        }
        // A small answer leaves the buffer as it was.
        let (other, small) = try f.connectAnswered(pid: 998)
        defer { withExtendedLifetime(other) {} }
        var defaultSize: Int32 = 0
        #expect(getsockopt(small.fd, SOL_SOCKET, SO_SNDBUF, &defaultSize, &len) == 0)
        #expect(defaultSize < size)
    }

    @Test func aHugeReplyReachesAClientThatReads() throws {
        let f = try ControlFixture()
        // Built by hand rather than encoded: what is tested is the writing, not JSONEncoder.
        let body = [UInt8](repeating: UInt8(ascii: "x"), count: 20 << 20)
        let reply = Array(#"{"id":42,"kind":"result","message":""#.utf8) + body + Array(#"","ok":true,"v":1}"#.utf8) + [10]
        f.handler.rawReply = reply
        let peer = try f.connect()
        peer.ping(42)
        try f.run(until: "the 20 MiB reply", within: 20, peers: [peer]) { peer.largeFrames.count == 1 }
        let frame = peer.largeFrames[0]
        #expect(frame.count == reply.count - 1)
        #expect(frame.prefix(64) == reply.prefix(64) && frame.suffix(64) == reply.dropLast().suffix(64), "the reply arrived altered")
        #expect(stride(from: 40, to: frame.count - 20, by: 4093).allSatisfy { frame[$0] == UInt8(ascii: "x") })
        #expect(peer.responses.isEmpty)
        #expect(f.server.connectionCount == 1, "a client reading a large reply is not cut off")
    }

    @Test func anotherReadySourceGetsItsTurnBetweenAPipeliningClientsTurns() throws {
        let f = try ControlFixture()
        let peer = try f.connect()
        for i in 1...1800 { peer.ping(UInt64(i)) }
        try runLoop(f.loop, until: "the client's first turn") { !f.handler.handled.isEmpty }
        // A pipe stands for what else wakes swarmd: SIGCHLD's signalfd, the timer, a worker's output.
        let p = try pipePair()
        defer { Posix.close(p.read); Posix.close(p.write) }
        var served = false
        let other = try f.loop.addReader(p.read) { _ in
            served = true
            _ = readAvailable(p.read)
        }
        defer { other.cancel() }
        try writeAll(p.write, "x")
        let handledBefore = f.handler.handled.count
        var dispatches = 0
        while !served && dispatches < 500 {
            try f.loop.runOnce(timeout: 5_000_000)
            dispatches += 1
            peer.receive()
        }
        #expect(served)
        #expect(f.handler.handled.count - handledBefore <= 2 * ControlServer.framesPerTurn,
                "\(f.handler.handled.count - handledBefore) requests of one client were handled, in \(dispatches) dispatches, before a ready pipe got its turn")
    }

    @Test func unprivilegedPeersCannotTakeTheReservedConnections() throws {
        let f = try ControlFixture()
        let open = ControlServer.maxConnections - ControlServer.reservedConnections
        var peers: [Peer] = []
        for i in 0..<open { peers.append(try f.connect(uid: ControlFixture.nobody, pid: pid_t(10_000 + i))) }
        #expect(f.server.connectionCount == open)

        let refused = try f.connect(uid: ControlFixture.nobody, pid: 9)
        #expect(f.server.connectionCount == open, "an unprivileged peer took a reserved connection")
        refused.receive()
        #expect(refused.responses.first?.ok == false)
        #expect(refused.responses.first?.error?.contains("too many control connections") == true)
        #expect(refused.hungUp, "a refused connection is closed")

        let root = try f.connect(uid: 0, pid: 1)
        let owner = try f.connect(uid: getuid(), pid: 2)
        #expect(f.server.connectionCount == open + 2, "root and swarmd's own uid still get in")
        root.ping(5)
        try f.run(until: "root's ping is answered", peers: [root]) { root.responses.count == 1 }
        #expect(root.responses[0].message == "pong")

        for i in (open + 2)..<ControlServer.maxConnections { peers.append(try f.connect(uid: 0, pid: pid_t(20_000 + i))) }
        #expect(f.server.connectionCount == ControlServer.maxConnections)
        let over = try f.connect(uid: 0, pid: 3)
        over.receive()
        #expect(over.hungUp, "root is refused too past maxConnections")
        #expect(f.server.connectionCount == ControlServer.maxConnections)
        _ = owner
    }

    @Test func unprivilegedPeersMayUseOnlyReadOnlyVerbs() throws {
        let f = try ControlFixture()
        let peer = try f.connect(uid: ControlFixture.nobody)
        peer.send(Request(id: 1, verb: .stop, name: "web"))
        peer.send(Request(id: 2, verb: .shutdown))
        peer.send(Request(id: 3, verb: .status))
        try f.run(until: "three replies", peers: [peer]) { peer.responses.count == 3 }
        #expect(peer.responses.map(\.id) == [1, 2, 3])
        for r in peer.responses.prefix(2) {
            #expect(r.ok == false)
            #expect(r.error == "permission denied: uid 65534 may only use ping, version and status (swarmd runs as uid \(getuid()))")
        }
        #expect(f.handler.handled.map(\.request.verb) == [.status], "only the read-only request reaches the handler")
    }

    @Test func aRequestNotCompletedInTimeIsAnsweredAndClosed() throws {
        let f = try ControlFixture()
        let peer = try f.connect()
        peer.send(raw: Array(#"{"v":1,"id":5,"verb":"#.utf8))
        try spin(f.loop, pump: { peer.pump() })
        f.kernel.advance(ControlServer.requestTimeout - 1_000_000_000)
        f.server.sweep()
        try spin(f.loop, pump: { peer.receive() })
        #expect(peer.responses.isEmpty && !peer.hungUp, "cut off before the request timeout")
        f.kernel.advance(2_000_000_000)
        f.server.sweep()
        try f.run(until: "the timeout reply and the close", peers: [peer]) { peer.hungUp }
        #expect(peer.responses.count == 1)
        #expect(peer.responses.first?.error == "request not completed within 10s; closing")
        #expect(f.handler.handled.isEmpty)
    }

    @Test func anIdleConnectionIsClosedAfterTheIdleTimeoutUnlessItWaitsForAnAnswer() throws {
        let f = try ControlFixture()
        let idle = try f.connect(pid: 1)
        let waiting = try f.connect(pid: 2)
        idle.ping(1)
        waiting.ping(1)
        try f.run(until: "both pings answered", peers: [idle, waiting]) { idle.responses.count == 1 && waiting.responses.count == 1 }
        let waitingClient = try #require(f.handler.clients.first { $0.pid == 2 })
        waitingClient.outstanding = 1

        f.kernel.advance(ControlServer.idleTimeout - 1_000_000_000)
        f.server.sweep()
        #expect(f.server.connectionCount == 2)
        f.kernel.advance(2_000_000_000)
        f.server.sweep()
        #expect(f.server.connectionCount == 1, "the idle connection stays open past the idle timeout")
        try f.run(until: "the idle client sees its connection closed", peers: [idle]) { idle.hungUp }
        waiting.receive()
        #expect(!waiting.hungUp, "a client waiting for an answer is not idle")
    }

    @Test func aMalformedFrameIsAnsweredAndTheConnectionStaysUsable() throws {
        let f = try ControlFixture()
        let peer = try f.connect()
        peer.send(raw: Array("this is not json\n".utf8))
        peer.send(raw: Array(#"{"v":2,"id":9,"verb":"ping"}"#.utf8) + [10])
        peer.send(raw: Array(#"{"v":1,"id":10,"verb":"fly"}"#.utf8) + [10])
        peer.ping(11)
        try f.run(until: "four replies", peers: [peer]) { peer.responses.count == 4 }
        #expect(peer.responses[0].error == "malformed message: not a JSON object")
        #expect(peer.responses[1].id == 9)
        #expect(peer.responses[1].error == "unsupported protocol version 2 (this swarmd speaks 1)")
        #expect(peer.responses[2].id == 10)
        #expect(peer.responses[2].ok == false)
        #expect(peer.responses[3].message == "pong")
        #expect(f.handler.handled.count == 1)
        #expect(!peer.hungUp)
    }

    @Test func aTooLargeFrameIsRefusedAndTheConnectionClosed() throws {
        let f = try ControlFixture()
        let peer = try f.connect()
        peer.send(raw: [UInt8](repeating: UInt8(ascii: "a"), count: ControlProtocol.maxMessageSize + 100_000))
        try f.run(until: "the refusal and the close", peers: [peer]) { peer.hungUp }
        #expect(peer.responses.count == 1)
        #expect(peer.responses.first?.error == "message larger than \(ControlProtocol.maxMessageSize) bytes; closing the connection")
        #expect(f.server.connectionCount == 0)
        #expect(f.handler.handled.isEmpty)
    }
}
