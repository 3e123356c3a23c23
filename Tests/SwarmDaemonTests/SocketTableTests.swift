import Glibc
@testable import SwarmDaemon
import SwarmCore
import SwarmSystem
import Testing

/// A SocketTable on real sockets bound on 127.0.0.1, with the fake kernel's
/// steering recording every map write.
final class SocketFixture {
    let kernel = FakeKernel()
    let table: SocketTable
    let reports = Reports()
    let port: UInt16

    init(sockets: (UInt16) -> [SocketSpec] = { [tcpSocket(port: $0)] }, steeringFails: Bool = false) throws {
        _ = processSetUp
        table = SocketTable(kernel: kernel)
        table.report = reports.sink
        if steeringFails { kernel.steeringError = SystemError("bpf(BPF_PROG_LOAD)", errno: EPERM) }
        port = try Ports.free()
        let spec = makeSpec(sockets: sockets(port))
        switch table.bind(spec) {
        case let .success(s): table.install(s, for: "web")
        case let .failure(e): throw TestFailure("binding the app's sockets: \(e)")
        }
    }

    deinit { table.closeAll() }

    var entry: AppSockets.Entry { table["web"]!.entries[0] }
    var steering: FakeSteering { kernel.steerings[0] }

    /// The map writes `body` costs.
    func writes(_ body: () -> Void) -> [FakeSteering.Write] {
        let before = steering.writes.count
        body()
        return Array(steering.writes[before...])
    }

    /// The program's array holds exactly the sockets of the steered slots, compactly.
    func checkMap(_ slots: Set<Int>, _ comment: Comment? = nil) {
        let e = entry
        #expect(Set(e.steeredSlots) == slots, comment)
        #expect(e.steeredSlots.count == slots.count, "a slot sits at two indices")
        #expect(steering.liveCount == slots.count, comment)
        #expect(steering.liveSockets == e.steeredSlots.map { e.fd(ofSlot: $0) }, comment)
        let misplaced = e.steeredSlots.enumerated().filter { e.steeredIndex[$0.element] != $0.offset }.map(\.element)
        #expect(misplaced.isEmpty, "slots whose recorded index is wrong: \(misplaced.prefix(10))")
        #expect(e.steeredIndex.count == slots.count)
    }
}

@Suite("SocketTable")
struct SocketTableTests {
    @Test func bindingAReuseportSocketStartsRoundRobinOverSlotZero() throws {
        let f = try SocketFixture()
        let fd = f.entry.shared
        #expect(Sockets.localPort(fd) == f.port)
        #expect(f.kernel.calls.first == .makeSteering(maxSlots: AppSockets.maxSlots))
        #expect(f.steering.writes == [.set(index: 0, fd: fd), .count(1), .attach(fd: fd)])
        f.checkMap([0])
    }

    @Test func aSlotJoiningCostsOneMapWriteAndOneCountWriteAndGetsItsSocketBound() throws {
        let f = try SocketFixture()
        #expect(f.entry.fd(ofSlot: 1) == nil)
        let writes = f.writes { f.table.steer("web", to: [0, 1]) }
        let fd1 = try #require(f.entry.fd(ofSlot: 1), "steering to slot 1 binds its socket")
        #expect(fd1 != f.entry.shared)
        #expect(Sockets.localPort(fd1) == f.port, "slot 1's socket joins the same port's reuseport group")
        #expect(writes == [.set(index: 1, fd: fd1), .count(2)])
        f.checkMap([0, 1])
        #expect(f.writes { f.table.steer("web", to: [0, 1]) } == [], "steering to the same set writes nothing")
    }

    @Test func aLeavingSlotIsSwapRemovedSoTheArrayStaysCompact() throws {
        let f = try SocketFixture()
        f.table.steer("web", to: [0, 1, 2, 3])
        f.checkMap([0, 1, 2, 3])
        let fd3 = try #require(f.entry.fd(ofSlot: 3))
        let writes = f.writes { f.table.steer("web", to: [1, 2, 3]) }
        #expect(writes == [.clear(index: 3), .set(index: 0, fd: fd3), .count(3)], "the last entry takes the leaving slot's place")
        #expect(f.entry.steeredSlots == [3, 1, 2])
        f.checkMap([1, 2, 3])
        #expect(f.writes { f.table.steer("web", to: [1, 3]) } == [.clear(index: 2), .count(2)], "the last slot leaves with one clear")
        f.checkMap([1, 3])
    }

    @Test func everySequenceOfSteeringSetsKeepsTheMapEqualToTheSet() throws {
        let f = try SocketFixture()
        var rng = SystemRandomNumberGenerator()
        var previous: Set<Int> = [0]
        for step in 0..<300 {
            var wanted = Set((0..<16).filter { _ in Bool.random(using: &rng) })
            if wanted.isEmpty { wanted = [Int.random(in: 0..<16, using: &rng)] }
            let writes = f.writes { f.table.steer("web", to: wanted.sorted()) }
            f.checkMap(wanted, "step \(step): \(previous.sorted()) → \(wanted.sorted())")
            let changed = previous.symmetricDifference(wanted).count
            #expect(writes.count <= 2 * changed + 1, "step \(step): \(writes.count) writes for \(changed) slots changed")
            previous = wanted
        }
    }

    @Test func theDifferenceOfTwoAscendingSlotListsIsWhatJoinedAndWhatLeft() {
        #expect(sortedDifference(from: [], to: []) == ([], []))
        #expect(sortedDifference(from: [], to: [0, 3]) == ([0, 3], []))
        #expect(sortedDifference(from: [1, 2], to: []) == ([], [1, 2]))
        #expect(sortedDifference(from: [0, 1, 2, 5], to: [1, 3, 5, 9]) == ([3, 9], [0, 2]))
        var rng = SystemRandomNumberGenerator()
        for _ in 0..<200 {
            let a = Set((0..<40).filter { _ in Bool.random(using: &rng) }), b = Set((0..<40).filter { _ in Bool.random(using: &rng) })
            let d = sortedDifference(from: a.sorted(), to: b.sorted())
            #expect(d.joining == b.subtracting(a).sorted() && d.leaving == a.subtracting(b).sorted(), "\(a.sorted()) → \(b.sorted())")
        }
    }

    @Test func withoutALastSetTheSteeringIsComparedWithTheWholeMap() throws {
        let f = try SocketFixture()
        f.table.steer("web", to: [0, 1, 2, 3])
        // What a failed write leaves: not knowing what the map holds.
        f.table["web"]?.lastSteer = nil
        f.table.steer("web", to: [1, 3])
        f.checkMap([1, 3])
        #expect(f.table["web"]?.lastSteer == [1, 3])
    }

    @Test func withAllSlotsSteeredOneChangeCostsAConstantNumberOfWrites() throws {
        let f = try SocketFixture()
        let all = Array(0..<AppSockets.maxSlots)
        f.table.steer("web", to: all)
        f.checkMap(Set(all))
        #expect(f.steering.liveCount == 4096)

        var without100 = all
        without100.removeAll { $0 == 100 }
        let leave = f.writes { f.table.steer("web", to: without100) }
        #expect(leave.count == 3, "one slot leaving 4,096: \(leave)")
        let join = f.writes { f.table.steer("web", to: all) }
        #expect(join.count == 2, "one slot joining 4,095: \(join)")
        // Slot 4095 sits at index 100 now, slot 100 (which joined last) at 4095.
        let leaveLast = f.writes { f.table.steer("web", to: Array(0..<4095)) }
        #expect(leaveLast == [.clear(index: 4095), .set(index: 100, fd: f.entry.fd(ofSlot: 100)!), .count(4095)])
        f.checkMap(Set(0..<4095))
    }

    @Test func handOverUsesTheSlotsIndexAndTheConnectionsTheOldWorkerHolds() throws {
        let f = try SocketFixture()
        f.table.steer("web", to: [0, 1, 2])
        f.table.steer("web", to: [1, 2])
        #expect(f.entry.steeredIndex[2] == 0, "slot 2 moved to index 0")
        f.kernel.connectionsHeld[555] = 7
        let writes = f.writes { f.table.handOver("web", slot: 2, from: 555) }
        #expect(writes == [.handOver(index: 0, quota: 8)], "the hand-over names slot 2's index, not its number; 7 held + 1 for a client that connects twice")
        #expect([1, 7, 8, 10, 16, 100].map(SocketTable.handOverQuota) == [2, 8, 9, 11, 18, 112])
        #expect(f.kernel.calls.contains(.established(pid: 555, port: f.port)))

        f.kernel.connectionsHeld[556] = 0
        #expect(f.writes { f.table.handOver("web", slot: 1, from: 556) } == [], "nothing held, nothing handed over")
        #expect(f.kernel.calls.contains(.established(pid: 556, port: f.port)))

        #expect(f.writes { f.table.handOver("web", slot: 0, from: 557) } == [], "slot 0 is not steered to")
        #expect(!f.kernel.calls.contains(.established(pid: 557, port: f.port)))
    }

    @Test func withoutBPFTheKernelHashesOverTheFirstSockets() throws {
        let f = try SocketFixture(steeringFails: true)
        #expect(f.entry.roundRobin == nil)
        #expect(f.reports.count(containing: "no round-robin steering") == 1)
        let fd = f.entry.shared
        f.table.steer("web", to: [0, 1, 2])
        f.table.steer("web", to: [0, 1, 2])
        f.table.steer("web", to: [0, 1])
        f.table.steer("web", to: [0, 2])
        let hashed = f.kernel.calls.filter { if case .hashSteering = $0 { return true } else { return false } }
        #expect(hashed == [.hashSteering(fd: fd, sockets: 3, ipv6: false), .hashSteering(fd: fd, sockets: 2, ipv6: false),
                           .hashSteering(fd: fd, sockets: 3, ipv6: false)])
        #expect(f.entry.fd(ofSlot: 2) != nil, "hash steering still needs the slots' sockets bound")
    }

    @Test func onlyReuseportSocketsGetPerSlotSockets() throws {
        let f = try SocketFixture(sockets: { port in
            [tcpSocket("http", port: port), tcpSocket("admin", port: try! Ports.free(), balance: .shared)]
        })
        let app = try #require(f.table["web"])
        f.table.steer("web", to: [0, 1])
        #expect(app.entries[0].fd(ofSlot: 1) != nil)
        #expect(app.entries[1].perSlot.isEmpty, "a shared socket has one fd for every slot")
        let fds = try app.bindSlot(1)
        #expect(fds == [app.entries[0].perSlot[1]!, app.entries[1].shared])
        #expect(f.kernel.steerings.count == 1, "no steering program for a shared socket")
    }

    @Test func releasingASlotClosesItsSocket() throws {
        let f = try SocketFixture()
        f.table.steer("web", to: [0, 1, 2])
        f.table.steer("web", to: [0, 1])
        let fd2 = try #require(f.entry.fd(ofSlot: 2))
        let ino = try #require(inode(of: fd2))
        f.table["web"]!.release(slot: 2)
        #expect(f.entry.fd(ofSlot: 2) == nil)
        #expect(inode(of: fd2) != ino, "slot 2's socket is still open")
        #expect(inode(of: f.entry.shared) != nil, "slot 0's socket keeps the port")
        let again = try f.table["web"]!.bindSlot(2)
        #expect(Sockets.localPort(again[0]) == f.port)
    }

    @Test func aSocketPassedBySystemdIsAdoptedAndNeverClosedByRemove() throws {
        let kernel = FakeKernel()
        let table = SocketTable(kernel: kernel)
        let reports = Reports()
        table.report = reports.sink
        let port = try Ports.free()
        let passed = try Sockets.listenTCP(host: "127.0.0.1", port: port, backlog: 8, reusePort: false)
        defer { Posix.close(passed) }
        let ino = try #require(inode(of: passed))
        table.passedBySystemd = [(name: "http", fd: passed)]
        let s = try table.bind(makeSpec(sockets: [tcpSocket(port: port)])).get()
        table.install(s, for: "web")
        #expect(s.entries[0].shared == passed)
        #expect(s.entries[0].adopted)
        #expect(!s.entries[0].reuseport, "a passed socket is one shared socket")
        #expect(table.passedBySystemd.isEmpty)
        #expect(reports.count(containing: "passed by systemd") == 1)
        #expect(kernel.steerings.isEmpty)
        table.remove("web")
        #expect(inode(of: passed) == ino, "removing the app closed systemd's socket")
    }

    @Test func replacingAnAppTakesOverItsMatchingSockets() throws {
        let f = try SocketFixture()
        f.table.steer("web", to: [0, 1])
        let old = f.entry.shared
        let oldSlot1 = try #require(f.entry.fd(ofSlot: 1))
        let ino1 = try #require(inode(of: oldSlot1))
        let replacement = try f.table.bind(makeSpec(sockets: [tcpSocket(port: f.port)]), replacing: true).get()
        #expect(replacement.entries[0].shared == old, "the listening socket (and its backlog) is kept")
        #expect(inode(of: oldSlot1) != ino1, "the old per-slot sockets are closed")
        f.table.install(replacement, for: "web")
        #expect(inode(of: old) != nil)
    }

    @Test func aReplacedAppKeepsRoundRobinSteeringOnTheSocketItTookOver() throws {
        let f = try SocketFixture()
        let replacement = try f.table.bind(makeSpec(sockets: [tcpSocket(port: f.port)]), replacing: true).get()
        f.table.install(replacement, for: "web")
        #expect(f.entry.reuseport)
        #expect(f.entry.roundRobin != nil, "after start --replace the app's reuseport socket has no round-robin steering")
        f.table.steer("web", to: [0, 1])
        #expect(!f.kernel.calls.contains { if case .hashSteering = $0 { return true } else { return false } },
                "the replaced app fell back to hash steering")
    }

    @Test func removingAnAppClosesItsSocketsAndUnlinksItsUnixSocketFile() throws {
        let dir = try TempDir()
        let path = dir.path + "/web.sock"
        let table = SocketTable(kernel: FakeKernel())
        let spec = makeSpec(sockets: [SocketSpec(name: "http", listen: .unix(path: path), backlog: 8, balance: .reuseport, mode: 0o660)])
        let s = try table.bind(spec).get()
        table.install(s, for: "web")
        var st = stat()
        #expect(stat(path, &st) == 0)
        #expect(st.st_mode & 0o777 == 0o660)
        #expect(!s.entries[0].reuseport, "a unix socket is shared")
        let fd = s.entries[0].shared
        let ino = try #require(inode(of: fd))
        table.remove("web")
        #expect(access(path, F_OK) != 0, "the socket file is left behind")
        #expect(inode(of: fd) != ino)
        #expect(table["web"] == nil)
    }
}
