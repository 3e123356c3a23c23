import Testing
@testable import SwarmCore

@Suite("Worker and slot lifecycle")
struct WorkerTests {
    @Test func phasesFromSpawnToReap() {
        let h = FakeShell()
        h.deferSpawns = true
        h.start(makeSpec(workers: 1))
        let id = h.slot("web", 0)!.current!
        #expect(h.sup.workers[id]?.phase == .spawning)
        #expect(h.sup.workers[id]?.isAlive == false)
        h.advance(to: at(.seconds(2)))
        h.completeSpawns()
        let w = h.sup.workers[id]!
        #expect(w.phase == .starting && w.isAlive && w.pid != nil)
        #expect(w.startedAt == at(.seconds(2)), "uptime counts from exec, not from the request")
        #expect(w.readyDeadline == at(.seconds(32)))
        h.ready(w.pid)
        #expect(h.sup.workers[id]?.phase == .ready)
        #expect(h.sup.workers[id]?.healthyAt == at(.seconds(32)))
        h.command(.stop(.app("web")))
        #expect(h.sup.workers[id]?.phase == .stopping)
        #expect(h.sup.workers[id]?.isRetiring == true)
        #expect(h.slot("web", 0)?.retiring == [id])
        #expect(h.slot("web", 0)?.current == nil)
        h.advance(by: .seconds(10))
        #expect(h.sup.workers[id]?.phase == .killing)
        h.exit(w.pid, .signaled(9, coreDumped: false))
        #expect(h.sup.workers[id] == nil)
        #expect(h.slot("web", 0)?.liveWorkers == [])
        #expect(h.sup.isIdle)
    }

    @Test func aWorkerStoppedBeforeItWasSpawnedIsDropped() {
        let h = FakeShell()
        h.deferSpawns = true
        h.start(makeSpec(workers: 1))
        let r = h.command(.stop(.app("web")))
        #expect(h.sup.workers.isEmpty)
        #expect(h.succeeded(r))
        #expect(h.signals.isEmpty)
    }

    @Test func slotNumbersAreStableAcrossRestarts() {
        let h = FakeShell()
        h.startReady(makeSpec(workers: 3))
        h.exit(h.pid("web", 1), .exited(1))
        h.advance(by: .milliseconds(100))
        #expect(h.spawns.map(\.slot) == [0, 1, 2, 1])
        #expect(h.current("web", 1)?.slot == 1)
        #expect(h.slot("web", 1)?.restarts == 1)
        #expect(h.slot("web", 0)?.restarts == 0)
    }
}
