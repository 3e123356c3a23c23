import Testing
@testable import SwarmCore

/// The config a reload brings: same app, a visible difference.
func v2(workers: Int = 3, surge: Int = 1, _ configure: (inout AppSpec) -> Void = { _ in }) -> AppSpec {
    makeSpec(workers: workers) {
        $0.env["VERSION"] = "2"
        $0.reload.surge = surge
        configure(&$0)
    }
}

/// An app of `workers` ready workers, with the ready floor enforced from now on.
func runningApp(workers: Int = 3, sourceLocation: SourceLocation = #_sourceLocation) -> (FakeShell, [Int32]) {
    let h = FakeShell()
    h.startReady(makeSpec(workers: workers), sourceLocation: sourceLocation)
    h.readyFloor["web"] = workers
    return (h, (0..<workers).map { h.pid("web", $0)! })
}

@Suite("Rolling reload")
struct RollingReloadTests {
    @Test func surgeOneReplacesOneSlotAtATime() {
        let (h, old) = runningApp(workers: 3)
        let r = h.command(.reloadSpecs([v2()]))
        #expect(h.app()?.reload != nil)
        for k in 0..<3 {
            #expect(h.incoming("web", k)?.generation == 2, "slot \(k) gets its new worker")
            #expect((0..<3).filter { h.incoming("web", $0) != nil } == [k], "one new worker at a time")
            #expect(!h.signalled(old[k]), "old worker of slot \(k) retired only once its replacement is ready")
            let new = h.incomingPid("web", k)!
            h.advance(by: .milliseconds(10))
            h.ready(new)
            #expect(h.signals(to: old[k]).map(\.signal) == [.term, .cont])
            #expect(h.sup.worker(pid: old[k])?.stopReason == .reload)
            #expect(h.pid("web", k) == new)
            #expect(h.slot("web", k)?.generation == 2)
        }
        #expect(h.reply(r) == nil, "old workers are still stopping")
        h.exitRetiring()
        #expect(h.reply(r) == .success("web: reloaded 3 workers to generation 2"))
        #expect(h.app()?.reload == nil)
        #expect(h.app()?.generation == 2)
        #expect(h.app()?.spec.env["VERSION"] == "2")
        #expect(h.app()?.specs.keys.sorted() == [2])
        #expect(h.app()?.lastReload?.succeeded == true)
        let kinds = h.progress[r]?.map(\.kind) ?? []
        #expect(kinds.first == .begin && kinds.last == .done)
        #expect(kinds.filter { $0 == .spawned }.count == 3)
        #expect(kinds.filter { $0 == .ready }.count == 3)
        #expect(kinds.filter { $0 == .retiring }.count == 3)
        #expect(h.progress[r]?.filter { $0.kind == .retiring }.map(\.pid) == old)
    }

    @Test func eachSwapHandsTheOldWorkersClientsToItsReplacementBeforeStoppingIt() {
        let (h, old) = runningApp(workers: 3)
        h.command(.reloadSpecs([v2()]))
        for k in 0..<3 {
            let signalsBefore = h.signals.count
            h.ready(h.incomingPid("web", k)!)
            #expect(h.handOvers.count == k + 1)
            let last = h.handOvers.last
            #expect(last?.app == "web" && last?.slot == k && last?.from == old[k])
            #expect(last?.signalsBefore == signalsBefore, "the hand-over precedes the old worker's stop signal")
        }
        h.exitRetiring()
        #expect(h.handOvers.count == 3)
    }

    @Test func noHandOverWithoutASwap() {
        let (h, _) = runningApp(workers: 3)
        h.readyFloor["web"] = 1
        h.command(.scale("web", 1))
        h.exitRetiring()
        let r = h.command(.reloadSpecs([v2(workers: 1)]))
        h.exit(h.incomingPid("web", 0))
        #expect(h.failure(r) != nil)
        #expect(h.handOvers.isEmpty, "scale-down and a rolled-back reload keep round-robin")
        let off = h.command(.reloadSpecs([v2(workers: 1) { $0.reload.handOver = false }]))
        h.readyAll()
        h.exitRetiring()
        #expect(h.succeeded(off))
        #expect(h.handOvers.isEmpty, "hand_over = false keeps round-robin")
    }

    @Test func minReadyKeepsTheOldWorkerServingUntilTheNewOneHasBeenReadyThatLong() {
        let (h, old) = runningApp(workers: 2)
        let r = h.command(.reloadSpecs([v2(workers: 2) { $0.reload.minReady = .seconds(1) }]))
        let new0 = h.incomingPid("web", 0)!
        h.ready(new0)
        #expect(!h.signalled(old[0]), "the old worker serves on beside the new one")
        #expect(h.incoming("web", 1) == nil, "the next slot waits for this one's swap")
        #expect(h.armed == h.now + .seconds(1), "a timer for the swap")
        h.advance(by: .milliseconds(999))
        #expect(!h.signalled(old[0]))
        h.advance(by: .milliseconds(1))
        #expect(h.signals(to: old[0]).map(\.signal) == [.term, .cont])
        #expect(h.pid("web", 0) == new0)
        #expect(h.incoming("web", 1) != nil)
        h.ready(h.incomingPid("web", 1))
        h.advance(by: .seconds(1))
        h.exitRetiring()
        #expect(h.succeeded(r))
        #expect(h.progress[r]?.first { $0.kind == .ready }?.message.contains("replaces the old worker after 1s") == true)
    }

    @Test func aNewWorkerLostWithinMinReadyRollsBackAndTheOldOneWasNeverStopped() {
        let (h, old) = runningApp(workers: 2)
        let r = h.command(.reloadSpecs([v2(workers: 2) { $0.reload.minReady = .seconds(5) }]))
        let new0 = h.incomingPid("web", 0)!
        h.ready(new0)
        h.advance(by: .seconds(2))
        h.exit(new0, .signaled(11, coreDumped: false))
        #expect(h.failure(r).map { "\($0)" }?.contains("after it was ready (within [reload] min_ready)") == true, "\(String(describing: h.failure(r)))")
        #expect(!h.signalled(old[0]) && !h.signalled(old[1]), "the old workers were never stopped")
        #expect(h.pid("web", 0) == old[0] && h.pid("web", 1) == old[1])
        #expect(h.app()?.generation == 1)
    }

    @Test func surgeTwoStartsTwoAtATime() {
        let (h, old) = runningApp(workers: 3)
        let r = h.command(.reloadSpecs([v2(surge: 2)]))
        #expect(h.incoming("web", 0) != nil && h.incoming("web", 1) != nil)
        #expect(h.incoming("web", 2) == nil)
        h.ready(h.incomingPid("web", 1))
        #expect(h.signalled(old[1]) && !h.signalled(old[0]))
        #expect(h.incoming("web", 2) != nil, "slot 2 starts as soon as slot 1 is done")
        h.ready(h.incomingPid("web", 2))
        #expect(!h.signalled(old[0]))
        h.ready(h.incomingPid("web", 0))
        h.exitRetiring()
        #expect(h.succeeded(r))
        #expect(h.workers(of: "web").allSatisfy { $0.generation == 2 && $0.phase == .ready })
    }

    @Test func reloadGrowsTheWorkerCount() {
        let (h, _) = runningApp(workers: 2)
        let r = h.command(.reloadSpecs([v2(workers: 4)]))
        h.readyAll()  // slot 0
        h.readyAll()  // slot 1
        #expect(h.app()?.slots.count == 3, "added slots come after the replaced ones, one at a time")
        #expect(h.current("web", 2)?.generation == 2)
        h.readyAll()
        h.readyAll()
        h.exitRetiring()
        #expect(h.reply(r) == .success("web: reloaded 4 workers to generation 2"))
        #expect(h.app()?.targetCount == 4)
        #expect(h.readyCount() == 4)
    }

    @Test func reloadShrinksTheWorkerCount() {
        let (h, old) = runningApp(workers: 3)
        h.readyFloor["web"] = 1
        let r = h.command(.reloadSpecs([v2(workers: 1)]))
        #expect(h.readyCount() == 3)
        h.ready(h.incomingPid("web", 0))
        #expect(h.signalled(old[0]) && h.signalled(old[1]) && h.signalled(old[2]))
        #expect(h.slot("web", 2)?.removing == true)
        #expect(h.reply(r) == nil)
        h.exitRetiring()
        #expect(h.released.map(\.slot) == [2, 1])
        #expect(h.reply(r) == .success("web: reloaded 1 worker to generation 2"))
        #expect(h.app()?.slots.count == 1)
        #expect(h.app()?.targetCount == 1)
    }

    @Test func reloadKeepsAScaleWhenTheFileDidNotChangeTheCount() {
        let (h, _) = runningApp(workers: 2)
        let s = h.command(.scale("web", 3))
        h.readyAll()
        #expect(h.succeeded(s))
        h.readyFloor["web"] = 3
        let r = h.command(.reloadSpecs([v2(workers: 2)]))
        for _ in 0..<3 { h.readyAll() }
        h.exitRetiring()
        #expect(h.succeeded(r))
        #expect(h.readyCount() == 3)
    }

    @Test func newWorkerCrashingBeforeReadyRollsBack() {
        let (h, old) = runningApp(workers: 3)
        h.readyFloor = [:]
        let r = h.command(.reloadSpecs([v2()]))
        let first = h.incomingPid("web", 0)!
        h.ready(first)  // old[0] retired
        let bad = h.incomingPid("web", 1)!
        h.advance(by: .seconds(1))
        h.exit(bad, .exited(2))
        #expect(h.failure(r) == .reloadFailed(app: "web", reason: "new worker in slot 1 (pid \(bad)) exited with status 2 before it was ready",
                                              slot: 1, pid: bad))
        #expect(h.signals(to: first).map(\.signal) == [.term, .cont], "new-generation workers are stopped")
        #expect(h.sup.worker(pid: first)?.stopReason == .rollback)
        #expect(!h.signalled(old[1]) && !h.signalled(old[2]), "old workers keep serving")
        #expect(h.pid("web", 1) == old[1] && h.pid("web", 2) == old[2])
        #expect(h.app()?.reload == nil)
        #expect(h.app()?.generation == 1)
        #expect(h.app()?.lastReload?.succeeded == false)
        #expect(h.app()?.lastReload?.at == at(.seconds(1)))
        #expect(h.app()?.lastReload?.message.contains("rolled back to generation 1") == true)
        #expect(h.current("web", 0)?.generation == 1, "the replaced slot runs the old generation again")
        #expect(h.spawns.last?.generation == 1 && h.spawns.last?.slot == 0)
        let kinds = h.progress[r]?.map(\.kind) ?? []
        #expect(kinds.suffix(2) == [.failed, .rolledBack])
        h.readyAll()
        h.exitRetiring()
        #expect(h.readyCount() == 3)
        #expect(h.workers(of: "web").allSatisfy { $0.generation == 1 })
        #expect(h.app()?.specs.keys.sorted() == [1])
        h.advance(by: .seconds(60))
        #expect(h.spawns.count == 3 + 2 + 1, "nothing else starts")
    }

    @Test func newWorkerSpawnFailureRollsBack() {
        let (h, old) = runningApp(workers: 2)
        h.failingSpawns = 1
        let r = h.command(.reloadSpecs([v2(workers: 2)]))
        guard case let .reloadFailed(_, reason, slot, _)? = h.failure(r) else {
            Issue.record("expected reloadFailed, got \(String(describing: h.reply(r)))")
            return
        }
        #expect(slot == 0)
        #expect(reason.contains("No such file or directory"))
        #expect(h.signals.isEmpty)
        #expect(h.pid("web", 0) == old[0] && h.pid("web", 1) == old[1])
    }

    @Test func newWorkerReadinessTimeoutRollsBack() {
        let (h, old) = runningApp(workers: 3)
        let r = h.command(.reloadSpecs([v2 { $0.ready.timeout = .seconds(5) }]))
        let slow = h.incomingPid("web", 0)!
        h.advance(by: .seconds(5))
        #expect(h.signals(to: slow).map(\.signal) == [.term, .cont])
        #expect(h.sup.worker(pid: slow)?.stopReason == .readyTimeout)
        guard case let .reloadFailed(app, reason, slot, pid)? = h.failure(r) else {
            Issue.record("expected reloadFailed, got \(String(describing: h.reply(r)))")
            return
        }
        #expect(app == "web" && slot == 0 && pid == slow)
        #expect(reason.contains("was not ready within 5s"))
        #expect(old.allSatisfy { !h.signalled($0) })
        #expect((0..<3).map { h.pid("web", $0) } == old)
        h.exitRetiring()
        #expect(h.app()?.specs.keys.sorted() == [1])
        h.advance(by: .seconds(60))
        #expect(h.spawns.count == 4, "no restart of the old generation was needed")
    }

    @Test func newWorkerCrashingAfterReadyRollsBackAndRespawnsTheOldGeneration() {
        let (h, old) = runningApp(workers: 3)
        h.readyFloor = [:]
        let r = h.command(.reloadSpecs([v2()]))
        let new0 = h.incomingPid("web", 0)!
        h.ready(new0)
        let new1 = h.incomingPid("web", 1)!
        h.exit(new0, .signaled(11, coreDumped: true))
        #expect(h.failure(r) == .reloadFailed(app: "web", reason: "new worker in slot 0 (pid \(new0)) killed by signal 11 (core dumped)",
                                              slot: 0, pid: new0))
        #expect(h.signals(to: new1).map(\.signal) == [.term, .cont])
        #expect(h.incoming("web", 1) == nil)
        #expect(h.pid("web", 1) == old[1])
        #expect(h.current("web", 0)?.generation == 1)
        #expect(h.spawns.last?.slot == 0 && h.spawns.last?.generation == 1)
        h.readyAll()
        h.exitRetiring()
        #expect(h.readyCount() == 3)
        #expect(h.workers(of: "web").allSatisfy { $0.generation == 1 })
    }

    @Test func newWorkerInAnAddedSlotCrashingRollsBackTheCount() {
        let (h, _) = runningApp(workers: 2)
        h.readyFloor = [:]
        let r = h.command(.reloadSpecs([v2(workers: 3)]))
        h.readyAll()
        h.readyAll()
        #expect(h.current("web", 2)?.generation == 2)
        h.exit(h.pid("web", 2), .exited(1))
        #expect(h.failure(r) != nil)
        #expect(h.released.map(\.slot) == [2])
        #expect(h.app()?.slots.count == 2)
        h.readyAll()
        h.exitRetiring()
        #expect(h.readyCount() == 2)
        #expect(h.workers(of: "web").allSatisfy { $0.generation == 1 })
        #expect(h.app()?.targetCount == 2)
    }

    @Test func oldWorkerCrashingMidReloadIsRestartedWithTheOldGeneration() {
        let (h, old) = runningApp(workers: 3)
        h.readyFloor = [:]
        let r = h.command(.reloadSpecs([v2()]))
        h.ready(h.incomingPid("web", 0))
        h.exit(old[2], .exited(1))
        #expect(h.app()?.reload != nil, "an old worker's crash is no reason to roll back")
        h.advance(by: .milliseconds(100))
        #expect(h.current("web", 2)?.generation == 1)
        #expect(h.spawns.last?.slot == 2 && h.spawns.last?.generation == 1)
        h.ready(h.pid("web", 2))
        h.ready(h.incomingPid("web", 1))
        h.ready(h.incomingPid("web", 2))
        h.exitRetiring()
        #expect(h.reply(r) == .success("web: reloaded 3 workers to generation 2"))
        #expect(h.workers(of: "web").allSatisfy { $0.generation == 2 && $0.phase == .ready })
        #expect(h.workers(of: "web").count == 3)
    }

    @Test func oldWorkerCrashingInASlotWithAnIncomingWorker() {
        let (h, old) = runningApp(workers: 2)
        h.readyFloor = [:]
        let r = h.command(.reloadSpecs([v2(workers: 2)]))
        let new0 = h.incomingPid("web", 0)!
        h.exit(old[0], .exited(1))
        #expect(h.incomingPid("web", 0) == new0)
        h.ready(new0)
        #expect(h.pid("web", 0) == new0)
        h.advance(by: .seconds(1))
        #expect(h.spawns(in: "web", slot: 0).count == 2, "the old generation is not restarted behind the new worker")
        h.ready(h.incomingPid("web", 1))
        h.exitRetiring()
        #expect(h.succeeded(r))
    }

    @Test func reloadDuringAReloadIsRejected() {
        let (h, _) = runningApp(workers: 2)
        let r = h.command(.reloadSpecs([v2(workers: 2)]))
        let again = h.command(.reloadSpecs([v2(workers: 5)]))
        #expect(h.failure(again) == .reloadInProgress("web"))
        #expect(h.failure(h.command(.scale("web", 4))) == .reloadInProgress("web"))
        #expect(h.failure(h.command(.restart(.app("web")))) == .reloadInProgress("web"))
        #expect(h.failure(h.command(.restart(.all))) == .reloadInProgress("web"))
        h.readyAll()
        h.readyAll()
        h.exitRetiring()
        #expect(h.reply(r) == .success("web: reloaded 2 workers to generation 2"))
        #expect(h.app()?.targetCount == 2)
    }

    @Test func reloadOfAnUnknownAppIsRejected() {
        let (h, _) = runningApp(workers: 1)
        let r = h.command(.reloadSpecs([v2(workers: 1), makeSpec("nope")]))
        #expect(h.failure(r) == .unknownApp("nope"))
        #expect(h.app()?.reload == nil, "nothing started")
        #expect(h.spawns.count == 1)
    }

    @Test(arguments: ["stop", "delete", "shutdown"])
    func interruptingAReloadFailsItAndLeavesACleanState(verb: String) {
        let (h, _) = runningApp(workers: 3)
        h.readyFloor = [:]
        let r = h.command(.reloadSpecs([v2()]))
        h.ready(h.incomingPid("web", 0))
        let interrupt: RequestID
        switch verb {
        case "stop": interrupt = h.command(.stop(.app("web")))
        case "delete": interrupt = h.command(.delete(.app("web")))
        default: interrupt = h.command(.shutdown)
        }
        guard case let .interrupted(why)? = h.failure(r) else {
            Issue.record("expected interrupted, got \(String(describing: h.reply(r)))")
            return
        }
        let expected = ["stop": "stopped by request", "delete": "deleted by request", "shutdown": "swarmd is shutting down"][verb]!
        #expect(why.contains(expected))
        #expect(why.contains("reload to generation 2 cancelled"))
        if verb != "shutdown" { #expect(h.app()?.lastReload?.succeeded == false) }
        #expect(h.app()?.reload == nil)
        #expect(h.app()?.slots.allSatisfy { $0.incoming == nil && $0.current == nil } == true)
        #expect(h.workers(of: "web").allSatisfy { $0.isRetiring })
        h.exitRetiring()
        #expect(h.succeeded(interrupt))
        #expect(h.sup.workers.isEmpty)
        h.advance(by: .seconds(60))
        #expect(h.sup.workers.isEmpty)
        switch verb {
        case "stop":
            #expect(h.app()?.generation == 1)
            let resume = h.command(.resume(.app("web")))
            h.readyAll()
            #expect(h.reply(resume) == .success("web: started, 3/3 workers ready"))
            #expect(h.workers(of: "web").allSatisfy { $0.generation == 1 })
        case "delete":
            #expect(h.app() == nil)
        default:
            #expect(h.exits == 1)
        }
    }

    @Test func stoppingAReloadThatGrewTheAppRestoresTheOldCount() {
        let (h, _) = runningApp(workers: 2)
        h.readyFloor = [:]
        h.command(.reloadSpecs([v2(workers: 4)]))
        for _ in 0..<3 { h.readyAll() }
        #expect(h.app()?.slots.count == 4)
        h.command(.stop(.app("web")))
        h.exitRetiring()
        let resume = h.command(.resume(.app("web")))
        h.readyAll()
        #expect(h.reply(resume) == .success("web: started, 2/2 workers ready"))
        #expect(h.workers(of: "web").count == 2)
        #expect(h.workers(of: "web").allSatisfy { $0.generation == 1 })
    }

    @Test func stoppingAReloadThatShrankTheAppRestoresTheOldCount() {
        let (h, _) = runningApp(workers: 3)
        h.readyFloor = [:]
        h.command(.reloadSpecs([v2(workers: 1)]))
        h.readyAll()
        #expect(h.slot("web", 2)?.removing == true, "culling")
        h.command(.stop(.app("web")))
        h.exitRetiring()
        let resume = h.command(.resume(.app("web")))
        h.readyAll()
        #expect(h.reply(resume) == .success("web: started, 3/3 workers ready"))
        #expect(h.workers(of: "web").allSatisfy { $0.generation == 1 })
    }

    @Test func reloadOfAStoppedAppStoresTheConfig() {
        let h = FakeShell()
        h.startReady(makeSpec(workers: 2))
        h.command(.stop(.app("web")))
        h.exitRetiring()
        let r = h.command(.reloadSpecs([v2(workers: 2)]))
        #expect(h.reply(r) == .success("web: config updated (app is stopped)"))
        #expect(h.app()?.generation == 2)
        #expect(h.app()?.lastReload?.succeeded == true)
        #expect(h.app()?.specs.keys.sorted() == [2])
        #expect(h.spawns.count == 2)
        let resume = h.command(.resume(.app("web")))
        #expect(h.spawns.suffix(2).map(\.generation) == [2, 2])
        h.readyAll()
        #expect(h.succeeded(resume))
    }

    @Test func reloadOfAStoppedAppWithANewCountTakesEffectOnResume() {
        for count in [4, 1] {
            let h = FakeShell()
            h.startReady(makeSpec(workers: 2))
            h.command(.stop(.app("web")))
            h.exitRetiring()
            h.command(.reloadSpecs([v2(workers: count)]))
            #expect(h.app()?.targetCount == count)
            let resume = h.command(.resume(.app("web")))
            h.readyAll()
            #expect(h.reply(resume) == .success("web: started, \(count)/\(count) workers ready"))
            #expect(h.workers(of: "web").count == count)
        }
    }

    @Test func reloadOfTwoAppsRepliesOnceBothAreDone() {
        let h = FakeShell()
        h.startReady(makeSpec("web", workers: 1))
        h.startReady(makeSpec("api", workers: 1))
        let r = h.command(.reloadSpecs([makeSpec("web", workers: 1) { $0.env["V"] = "2" },
                                   makeSpec("api", workers: 1) { $0.env["V"] = "2" }]))
        h.readyAll("web")
        h.exitRetiring("web")
        #expect(h.reply(r) == nil)
        h.readyAll("api")
        h.exitRetiring("api")
        #expect(h.reply(r) == .success("web: reloaded 1 worker to generation 2\napi: reloaded 1 worker to generation 2"))
    }

    @Test func aReloadAfterARollbackNeverReusesALiveGeneration() {
        let (h, _) = runningApp(workers: 2)
        h.readyFloor = [:]
        h.command(.reloadSpecs([v2(workers: 2)]))
        let new0 = h.incomingPid("web", 0)!
        h.ready(new0)
        h.exit(h.incomingPid("web", 1), .exited(1))  // rollback; new0 is still stopping
        #expect(h.sup.worker(pid: new0)?.generation == 2)
        let r = h.command(.reloadSpecs([v2(workers: 2) { $0.env["VERSION"] = "3" }]))
        let to = h.app()?.reload?.to
        #expect(to != 2, "generation 2 still has a live worker running another config")
        #expect(h.sup.worker(pid: new0).flatMap { h.app()?.specs[$0.generation]?.env["VERSION"] } == "2")
        h.readyAll()
        h.readyAll()
        h.exitRetiring()
        #expect(h.succeeded(r))
    }
}
