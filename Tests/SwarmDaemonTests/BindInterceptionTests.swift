import Glibc
@testable import SwarmDaemon
import SwarmCore
import SwarmSystem
import Testing

/// The shell's side of bind interception that needs no worker: which socket a
/// call may get, and who decides the shared O_NONBLOCK flag. On real sockets.
@Suite("BindInterception")
struct BindInterceptionTests {
    func nonBlocking(_ fd: Int32) -> Bool { BindInterceptor.isNonBlocking(fd) }

    @Test func aLoneWorkerFindsTheFlagOffWhateverItsPredecessorSet() throws {
        let f = try SocketFixture()
        let flags = NonBlockingFlags()
        let fd = f.entry.shared
        flags.spawning(WorkerID(1), fds: [fd])
        BindInterceptor.setNonBlocking(fd, true) // what libuv does to fd 3
        flags.gone(WorkerID(1))
        #expect(nonBlocking(fd), "nobody restores it behind a worker that set it itself")
        flags.spawning(WorkerID(2), fds: [fd])
        #expect(!nonBlocking(fd), "the next worker of the slot, alone on the socket, finds it off")
    }

    @Test func duringAnOverlapTheNewerInterceptedWorkerWinsAndTheOlderIsRestoredWhenItIsGone() throws {
        let f = try SocketFixture()
        let flags = NonBlockingFlags()
        let fd = f.entry.shared
        // The old worker: a blocking server (its bind asked for blocking).
        flags.spawning(WorkerID(1), fds: [fd])
        flags.bound(WorkerID(1), socket: fd, wantsNonBlocking: false)
        // A reload's new worker shares the socket: no reset at its spawn, its bind's choice wins.
        BindInterceptor.setNonBlocking(fd, false)
        flags.spawning(WorkerID(2), fds: [fd])
        #expect(flags.holders(ofSocket: fd).map(\.worker) == [WorkerID(1), WorkerID(2)])
        flags.bound(WorkerID(2), socket: fd, wantsNonBlocking: true)
        #expect(nonBlocking(fd))
        // The new worker fails (a rolled-back reload): the old one gets its blocking socket back.
        flags.gone(WorkerID(2))
        #expect(!nonBlocking(fd))
        #expect(flags.holders(ofSocket: fd).map(\.worker) == [WorkerID(1)])
    }

    @Test func anFD3HolderKeepsWhatItHadWhenAnotherWorkersBindChangedIt() throws {
        let f = try SocketFixture()
        let flags = NonBlockingFlags()
        let fd = f.entry.shared
        flags.spawning(WorkerID(1), fds: [fd])
        BindInterceptor.setNonBlocking(fd, true) // an fd-3 worker's own fcntl: swarmd never sees it
        flags.spawning(WorkerID(2), fds: [fd])
        flags.bound(WorkerID(2), socket: fd, wantsNonBlocking: false)
        #expect(!nonBlocking(fd))
        flags.gone(WorkerID(2))
        #expect(nonBlocking(fd), "the fd-3 worker's flag as it was before the other's bind")
    }

    @Test func aFailedSpawnHoldsNothingAndRestoresNothing() throws {
        let f = try SocketFixture()
        let flags = NonBlockingFlags()
        let fd = f.entry.shared
        flags.spawning(WorkerID(1), fds: [fd])
        flags.spawnFailed(WorkerID(1))
        #expect(flags.holders(ofSocket: fd).isEmpty)
    }

    @Test func rulesComeFromTheSlotsOwnSocketAndOnlyForInterceptingTCPSockets() throws {
        let f = try SocketFixture(sockets: { port in
            [tcpSocket(port: port), SocketSpec(name: "admin", listen: .tcp(host: "127.0.0.1", port: 0), intercept: false)]
        })
        let loop = try EventLoop()
        let interception = BindInterception(loop: loop)
        interception.sockets = { f.table[$0] }
        let slot2 = try f.table["web"]!.bindSlot(2)
        let rules = interception.rules(app: "web", slot: 2)
        #expect(rules.map(\.name) == ["http"], "the socket with intercept = false has no rule")
        #expect(rules.first?.rule.listenFD == slot2[0], "slot 2's own reuseport socket, the one its fd 3 carries")
        #expect(rules.first?.rule.port == f.port)
        #expect(interception.rules(app: "web", slot: 0).first?.rule.listenFD == f.entry.shared)
        #expect(interception.rules(app: "other", slot: 0).isEmpty)
        #expect(interception.rules(app: nil, slot: 0).isEmpty, "a gone worker's leftovers get no socket")
        f.table["web"]!.release(slot: 2)
        #expect(interception.rules(app: "web", slot: 2).isEmpty, "a released slot's closed fd is never handed out")
    }

    @Test func theFakeKernelCannotInterceptSoWorkersRunOnFD3Only() throws {
        let loop = try EventLoop()
        let interception = BindInterception(loop: loop)
        var lines: [String] = []
        interception.report = { _, text in lines.append(text) }
        #expect(!interception.wants(makeSpec(sockets: [tcpSocket(port: 1)])), "not before the probe")
        interception.probe(kernel: FakeKernel())
        #expect(!interception.isAvailable)
        #expect(!interception.wants(makeSpec(sockets: [tcpSocket(port: 1)])))
        #expect(lines.count == 1 && lines[0].hasPrefix("bind interception unavailable"), "\(lines)")
    }
}
