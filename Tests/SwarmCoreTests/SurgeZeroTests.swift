import Testing
@testable import SwarmCore

/// `[reload] surge = 0` (issue 14 item 5): for workers that hold something
/// they cannot share, a slot's old worker is stopped and gone before its new
/// one starts. Not zero-downtime; one slot at a time; rollback still works.
@Suite("Reload with surge 0")
struct SurgeZeroTests {
    func exclusive(workers: Int = 2, _ configure: (inout AppSpec) -> Void = { _ in }) -> AppSpec {
        v2(workers: workers, surge: 0, configure)
    }

    @Test func eachOldWorkerIsGoneBeforeItsReplacementStarts() {
        let (h, old) = runningApp(workers: 2)
        h.readyFloor = [:]
        let r = h.command(.reloadSpecs([exclusive()]))
        #expect(h.signalled(old[0]), "slot 0's old worker is stopped first")
        #expect(!h.signalled(old[1]))
        #expect(h.spawns.count == 2, "nothing new starts while it lives")
        #expect(h.progress[r]?.first?.message.contains("surge 0") == true)
        h.advance(by: .seconds(1))
        #expect(h.spawns.count == 2)
        h.exit(old[0], .signaled(15, coreDumped: false))
        #expect(h.spawns.count == 3)
        #expect(h.spawns.last?.slot == 0 && h.spawns.last?.generation == 2)
        #expect(!h.signalled(old[1]), "slot 1 waits until slot 0's new worker is ready")
        h.ready(h.pid("web", 0))
        #expect(h.signalled(old[1]))
        #expect(h.spawns.count == 3)
        h.exit(old[1], .signaled(15, coreDumped: false))
        #expect(h.spawns.last?.slot == 1 && h.spawns.last?.generation == 2)
        h.ready(h.pid("web", 1))
        #expect(h.reply(r) == .success("web: reloaded 2 workers to generation 2"))
        #expect(h.app()?.generation == 2)
    }

    @Test func aFailedNewWorkerRollsBackAndTheOldOneReturns() {
        let (h, old) = runningApp(workers: 2)
        h.readyFloor = [:]
        let r = h.command(.reloadSpecs([exclusive()]))
        h.exit(old[0], .signaled(15, coreDumped: false))
        let newPid = h.pid("web", 0)
        h.exit(newPid, .exited(1))
        #expect(h.failure(r).map { if case .reloadFailed = $0 { return true } else { return false } } == true)
        #expect(h.spawns.last?.slot == 0 && h.spawns.last?.generation == 1, "the old generation is back in slot 0")
        #expect(!h.signalled(old[1]), "slot 1 was never touched")
        h.ready(h.pid("web", 0))
        #expect(h.readyCount() == 2)
        #expect(h.app()?.reload == nil && h.app()?.generation == 1)
    }

    @Test func aNewWorkerThatNeverGetsReadyIsGoneBeforeTheOldOneReturns() {
        let (h, old) = runningApp(workers: 1)
        h.readyFloor = [:]
        let r = h.command(.reloadSpecs([exclusive(workers: 1) { $0.ready.timeout = .seconds(5) }]))
        h.exit(old[0], .signaled(15, coreDumped: false))
        let newPid = h.pid("web", 0)
        let spawnsBefore = h.spawns.count
        h.advance(by: .seconds(5))
        #expect(h.signalled(newPid), "the slow new worker is stopped")
        #expect(h.failure(r) != nil, "and the reload rolled back")
        #expect(h.spawns.count == spawnsBefore, "the old generation waits until it is gone")
        h.advance(by: .seconds(1))
        #expect(h.spawns.count == spawnsBefore)
        h.exitRetiring()
        #expect(h.spawns.count == spawnsBefore + 1)
        #expect(h.spawns.last?.generation == 1)
    }

    @Test func growingAndShrinkingWithSurgeZero() {
        let (h, old) = runningApp(workers: 2)
        h.readyFloor = [:]
        let r = h.command(.reloadSpecs([exclusive(workers: 3)]))
        h.exit(old[0], .signaled(15, coreDumped: false))
        h.ready(h.pid("web", 0))
        h.exit(old[1], .signaled(15, coreDumped: false))
        h.ready(h.pid("web", 1))
        #expect(h.spawns.last?.slot == 2, "the added slot starts at once: it had nobody to wait for")
        h.ready(h.pid("web", 2))
        #expect(h.reply(r) == .success("web: reloaded 3 workers to generation 2"))
        let pids = (0..<3).map { h.pid("web", $0) }
        let r2 = h.command(.reloadSpecs([exclusive(workers: 1) { $0.env["VERSION"] = "3" }]))
        h.exit(pids[0], .signaled(15, coreDumped: false))
        h.ready(h.pid("web", 0))
        h.exitRetiring()
        #expect(h.reply(r2) == .success("web: reloaded 1 worker to generation 3"))
        #expect(h.app()?.slots.count == 1)
    }

    @Test func restartsOfAnExclusiveAppWaitForTheOldWorker() {
        let h = FakeShell()
        h.startReady(makeSpec(workers: 1) { $0.reload.surge = 0 })
        let pid = h.pid("web", 0)
        h.command(.restart(.app("web")))
        #expect(h.signalled(pid))
        #expect(h.spawns.count == 1, "no second worker beside the first")
        h.exitRetiring()
        #expect(h.spawns.count == 2)
    }
}

@Suite("Worker states and their deadlines")
struct WorkerStateTests {
    @Test func eachStateWaitsForItsOwnDeadlines() {
        let h = FakeShell()
        h.deferSpawns = true
        h.start(makeSpec(workers: 1) {
            $0.ready.watchdog = .seconds(3)
            $0.memoryLimit = 1 << 30
        })
        let id = h.slot("web", 0)!.current!
        #expect(h.sup.workers[id]?.state == .spawning)
        #expect(h.sup.deadline(of: h.sup.workers[id]!) == nil, "a spawning worker waits for the shell, not for a time")
        h.completeSpawns()
        let memoryAt = at(.milliseconds(500))
        #expect(h.sup.workers[id]?.state == .starting(readyBy: at(.seconds(30)), probeAt: nil, delayReadyAt: nil, memoryAt: memoryAt, priorityAt: nil))
        #expect(h.sup.nextDeadline() == memoryAt)
        h.ready(h.pid("web", 0))
        #expect(h.sup.workers[id]?.state == .ready(watchdogBy: at(.seconds(3)), healthyAt: at(.seconds(30)), swapAt: nil, memoryAt: memoryAt))
        h.advance(by: .seconds(1))
        h.send(.watchdogPing(pid: h.pid("web", 0)!))
        if case let .ready(watchdogBy, _, _, _)? = h.sup.workers[id]?.state { #expect(watchdogBy == at(.seconds(4))) }
        h.command(.stop(.app("web")))
        #expect(h.sup.workers[id]?.state == .stopping(killAt: at(.seconds(11))))
        #expect(h.sup.nextDeadline() == at(.seconds(11)), "only the kill deadline is left")
    }

    @Test func anIncomingWorkerThatGoesSilentDuringMinReadyRollsTheReloadBack() {
        let (h, old) = runningApp(workers: 1)
        let r = h.command(.reloadSpecs([v2(workers: 1) {
            $0.reload.minReady = .seconds(10)
            $0.ready.watchdog = .seconds(2)
        }]))
        let new = h.incomingPid("web", 0)
        h.ready(new)
        h.advance(by: .seconds(2))
        #expect(h.signals(to: new).first?.signal == .abrt)
        #expect(h.failure(r).map { if case .reloadFailed = $0 { return true } else { return false } } == true)
        #expect(!h.signalled(old[0]), "the old worker keeps serving")
        #expect(h.app()?.reload == nil)
    }
}
