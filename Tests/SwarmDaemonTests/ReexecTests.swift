import Foundation
import Glibc
@testable import SwarmDaemon
import SwarmCore
import SwarmProtocol
import SwarmSystem
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

    /// What a swarmd about to exec would hand over, with every fd duplicated so
    /// that the two Managers in one test never close each other's fds.
    func handover(from a: ManagerFixture, controlFD: Int32, notifyPath: String, notifyFD: Int32) throws -> Handover {
        func dup(_ fd: Int32) -> Int32 { fcntl(fd, F_DUPFD_CLOEXEC, 0) }
        let m = a.manager
        var sockets: [String: [Handover.SocketState]] = [:]
        for (name, s) in m.sockets.apps {
            sockets[name] = s.entries.map { e in
                // Three fds stand for the eBPF program and maps the real steering hands over.
                Handover.SocketState(name: e.spec.name, shared: dup(e.shared), perSlot: e.perSlot.mapValues(dup), adopted: e.adopted,
                                     roundRobin: (0..<3).map { _ in open("/dev/null", O_RDONLY | O_CLOEXEC) }, steeredSlots: e.steeredSlots)
            }
        }
        var tails: [String: [LogLine]] = [:]
        for (app, sink) in m.output.sinks { tails[app] = sink.tail }
        return Handover(supervisor: try #require(m.supervisor.snapshot()), startedAt: m.startedAt, notifyPath: notifyPath, notifyFD: notifyFD,
                        controlFD: controlFD, controlFromSystemd: false, sockets: sockets,
                        outputs: m.output.pipesForHandover.map { Handover.OutputState(fd: dup($0.fd), app: $0.app, slot: $0.slot, pid: $0.pid, stream: $0.stream) },
                        readyPipes: [], systemdFDs: [:], sentReady: true, logTails: tails)
    }

    func resumed(from a: ManagerFixture, beforeResume: (ManagerFixture) -> Void = { _ in }) throws -> ManagerFixture {
        let b = try ManagerFixture(control: false)
        let control = try Sockets.listenUnix(path: b.dir.path + "/swarmd.sock", backlog: 8, mode: 0o600)
        try Posix.setNonBlocking(control)
        let notifyPath = "@swarmd-tests-resume-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        let h = try handover(from: a, controlFD: control, notifyPath: notifyPath, notifyFD: try Sockets.bindDatagram(notifyPath))
        beforeResume(b)
        try b.manager.resume(from: h)
        #expect(b.manager.output.notifyPath == notifyPath, "workers were told the old NOTIFY_SOCKET")
        return b
    }

    @Test func aResumedManagerTakesOverWorkersSocketsPipesAndLogTails() throws {
        let a = try ManagerFixture()
        let port = try Ports.free()
        let pids = try a.startReady(try a.config(workers: 3, port: port), workers: 3)
        let process0 = try #require(a.kernel.processes[pids[0]])
        let process1 = try #require(a.kernel.processes[pids[1]])
        try writeAll(process0.stdout, "before the exec\n")
        try runLoop(a.loop, until: "the line before the exec") { a.manager.output.sinks["web"]?.tail.count == 1 }

        let b = try resumed(from: a)
        #expect(Set(b.manager.workers.values) == Set(pids), "workers: \(b.manager.workers)")
        #expect(b.manager.startedAt == a.manager.startedAt)
        let entry = try #require(b.manager.sockets["web"]?.entries.first)
        let before = try #require(a.manager.sockets["web"]?.entries.first)
        #expect(Sockets.localPort(entry.shared) == port)
        #expect(entry.steeredSlots == before.steeredSlots)
        #expect(entry.steeredIndex == Dictionary(uniqueKeysWithValues: before.steeredSlots.enumerated().map { ($1, $0) }))
        #expect(entry.roundRobin != nil)
        #expect(Set(entry.perSlot.keys) == Set(before.perSlot.keys))
        #expect(b.manager.output.pipeCount == 6)
        #expect(b.manager.output.sinks["web"]?.tail.map(\.text) == ["before the exec"])
        #expect(b.kernel.notifications.last == "READY=1\nSTATUS=web 3/3 ready", "notifications: \(b.kernel.notifications)")

        // The old pipes are read by the new loop.
        try writeAll(process1.stdout, "after the exec\n")
        try runLoop(b.loop, until: "the line after the exec") { b.manager.output.sinks["web"]?.tail.count == 2 }
        #expect(b.manager.output.sinks["web"]?.tail.last?.pid == pids[1])
        // And the adopted control socket answers.
        let fd = try Sockets.connectUnix(b.dir.path + "/swarmd.sock")
        try Posix.setNonBlocking(fd)
        let peer = Peer(fd: fd)
        peer.ping(1)
        try runLoop(b.loop, until: "a ping on the adopted control socket", pump: { peer.pump(); peer.receive() }) { !peer.responses.isEmpty }
        #expect(peer.responses.first?.message == "pong")
    }

    @Test func aWorkerThatExitedDuringTheExecIsReapedOnResume() throws {
        let a = try ManagerFixture()
        let pids = try a.startReady(try a.config(workers: 2), workers: 2)
        let b = try resumed(from: a) { b in b.kernel.exit(pids[1], code: 0) }
        #expect(Array(b.manager.workers.values) == [pids[0]], "workers: \(b.manager.workers)")
        #expect(b.manager.supervisor.worker(pid: pids[1]) == nil)
        #expect(b.kernel.notifications.last == "READY=1\nSTATUS=web 1/2 ready", "notifications: \(b.kernel.notifications)")
    }
}
