import Foundation
@testable import SwarmDaemon
import SwarmCore
import SwarmProtocol
import Testing

@Suite("Reexec")
struct ReexecTests {
    func sample(_ f: ManagerFixture) throws -> Handover {
        let snapshot = try #require(f.manager.supervisor.snapshot(), "no command waits, so a snapshot can be taken")
        let line = LogLine(time: "2026-12-01T00:00:00.000000Z", app: "web", slot: 1, pid: 40_001, stream: "stderr", text: "last words")
        return Handover(supervisor: snapshot, startedAt: 123_456, notifyPath: "@swarmd-notify-1-2", notifyFD: 5, controlFD: 6,
                        controlFromSystemd: true,
                        sockets: ["web": [Handover.SocketState(name: "http", shared: 10, perSlot: [1: 11, 2: 12], adopted: false,
                                                               roundRobin: [20, 21, 22], steeredSlots: [2, 0, 1])]],
                        outputs: [Handover.OutputState(fd: 30, app: "web", slot: 1, pid: 40_001, stream: "stdout")],
                        readyPipes: [Handover.ReadyState(worker: 9, app: "web", slot: 2, pid: 40_002, fd: 31)],
                        systemdFDs: ["control": 3], sentReady: true, logTails: ["web": [line]])
    }

    @Test func aHandoverRoundTripsItsStateLogTailsAndSteeredSlots() throws {
        let f = try ManagerFixture()
        let pids = try f.startReady(try f.config(workers: 2), workers: 2)
        let h = try sample(f)
        let back = try Handover.decode(Array(try JSONEncoder().encode(h)))
        #expect(back.version == Handover.currentVersion)
        #expect(back.logTails == h.logTails)
        let socket = try #require(back.sockets["web"]?.first)
        #expect(socket.steeredSlots == [2, 0, 1])
        #expect(socket.perSlot == [1: 11, 2: 12])
        #expect(socket.roundRobin == [20, 21, 22])
        #expect(back.outputs.map(\.fd) == [30] && back.readyPipes.map(\.worker) == [9])
        #expect(back.controlFromSystemd && back.sentReady && back.notifyPath == "@swarmd-notify-1-2")
        #expect(Set(back.allFDs) == [5, 6, 30, 31, 3, 10, 11, 12, 20, 21, 22], "every fd the exec must keep open")

        let restored = Supervisor(restoring: back.supervisor)
        #expect(restored.appOrder == ["web"])
        for pid in pids { #expect(restored.worker(pid: pid)?.phase == .ready, "pid \(pid) is not known after the hand-over") }
    }

    @Test func aHandoverFromANewerSwarmdIsRefused() throws {
        let f = try ManagerFixture()
        var h = try sample(f)
        h.version = Handover.currentVersion + 1
        let bytes = Array(try JSONEncoder().encode(h))
        #expect(throws: (any Error).self) { try Handover.decode(bytes) }
        do {
            _ = try Handover.decode(bytes)
        } catch {
            #expect("\(error)".contains("hand-over version \(Handover.currentVersion + 1); this binary reads up to \(Handover.currentVersion)"))
        }
    }

    @Test func anOlderHandoverWithoutLogTailsIsRead() throws {
        let f = try ManagerFixture()
        var h = try sample(f)
        h.version = 1
        var object = try #require(try JSONSerialization.jsonObject(with: try JSONEncoder().encode(h)) as? [String: Any])
        object["logTails"] = nil
        let back = try Handover.decode(Array(try JSONSerialization.data(withJSONObject: object)))
        #expect(back.version == 1)
        #expect(back.logTails == nil)
        #expect(back.sockets["web"]?.first?.steeredSlots == [2, 0, 1])
    }
}
