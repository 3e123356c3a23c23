import Testing
@testable import SwarmCore

/// A reuseport app with an http probe every second, 3 failures, hang detection after 10 s.
func healthSpec(workers: Int = 2, _ configure: (inout AppSpec) -> Void = { _ in }) -> AppSpec {
    makeSpec("web", workers: workers) { s in
        s.sockets = [SocketSpec(name: "http", listen: .tcp(host: "127.0.0.1", port: 8080))]
        s.health.check = .http(path: "/healthz", host: nil, expect: 200...399)
        s.health.interval = .seconds(1)
        s.health.timeout = .milliseconds(500)
        s.health.failures = 3
        s.health.stuckAfter = .seconds(10)
        configure(&s)
    }
}

extension FakeShell {
    /// Probes asked for since index `from` of `healthActions`.
    func probes(since from: Int = 0) -> [HealthProbeRequest] {
        healthActions.dropFirst(from).compactMap { if case let .probe(p) = $0.action { return p } else { return nil } }
    }

    func samples(since from: Int = 0) -> [(app: String, at: Instant)] {
        healthActions.dropFirst(from).compactMap { if case let .sampleQueues(app) = $0.action { return (app, $0.at) } else { return nil } }
    }

    /// Answers the probe of slot `k`'s current worker.
    func answerProbe(_ k: Int, ok: Bool, _ detail: String, app: String = "web") {
        guard let id = slot(app, k)?.current else {
            Issue.record("no current worker in \(app)[\(k)]")
            return
        }
        send(.health(.probeResult(id, ok: ok, detail: detail)))
    }

    /// The steering set last sent for the app.
    func lastSteer(_ app: String = "web") -> [Int]? { steers.last { $0.app == app }?.slots }
}

@Suite struct SupervisorHealthTests {
    // MARK: Probes

    @Test func probesGoToEveryReadyCurrentWorkerOncePerInterval() {
        let h = FakeShell()
        h.startReady(healthSpec(workers: 3))
        let before = h.healthActions.count
        h.advance(by: .milliseconds(999))
        #expect(h.probes(since: before).isEmpty)
        h.advance(by: .milliseconds(1))
        let probes = h.probes(since: before)
        #expect(probes.map(\.slot) == [0, 1, 2])
        #expect(probes.map(\.pid) == [h.pid("web", 0), h.pid("web", 1), h.pid("web", 2)].compactMap { $0 })
        #expect(probes.allSatisfy { $0.timeout == .milliseconds(500) && $0.check == .http(path: "/healthz", host: nil, expect: 200...399) })
        for k in 0..<3 { h.answerProbe(k, ok: true, "200") }
        h.advance(by: .seconds(1))
        #expect(h.probes(since: before).count == 6)
        #expect(h.sup.slotHealth("web", 1)?.lastResult == "http 200")
        #expect(h.sup.slotHealth("web", 1)?.state == "healthy")
    }

    @Test func aProbeStillOutIsNotDoubled() {
        let h = FakeShell()
        h.startReady(healthSpec(workers: 1))
        let before = h.healthActions.count
        h.advance(by: .seconds(1))
        h.advance(by: .seconds(1))  // no answer yet: within timeout + interval
        #expect(h.probes(since: before).count == 1)
        h.advance(by: .seconds(1))  // lost for longer than timeout + interval: asked again
        #expect(h.probes(since: before).count == 2)
    }

    @Test func threeFailuresInARowMakeAWorkerUnhealthyAndASuccessResetsTheCount() {
        let h = FakeShell()
        h.startReady(healthSpec())
        h.readyFloor["web"] = 2
        let sibling = h.pid("web", 1)
        for detail in ["503", "503"] {
            h.advance(by: .seconds(1))
            h.answerProbe(0, ok: false, detail)
            h.answerProbe(1, ok: true, "200")
        }
        #expect(h.sup.slotHealth("web", 0)?.failures == 2)
        #expect(h.sup.slotHealth("web", 0)?.state == "failing")
        h.advance(by: .seconds(1))
        h.answerProbe(0, ok: true, "200")
        #expect(h.sup.slotHealth("web", 0)?.failures == 0)
        let old = h.pid("web", 0)
        for _ in 0..<2 {
            h.advance(by: .seconds(1))
            h.answerProbe(0, ok: false, "503")
        }
        #expect(h.incoming("web", 0) == nil)
        h.advance(by: .seconds(1))
        let steersBefore = h.steers.count
        h.answerProbe(0, ok: false, "503")
        // Out of the steering set in the same event.
        #expect(h.steers.count == steersBefore + 1)
        #expect(h.lastSteer() == [1])
        #expect(h.sup.slotHealth("web", 0)?.state == "unhealthy")
        #expect(h.sup.health(of: "web")?.state == .degraded)
        #expect(h.noted("is unhealthy (http 503 ×3)"))
        // The replacement waits for the slot's first backoff delay (100 ms), then starts in slot 0.
        #expect(h.incoming("web", 0) == nil)
        h.advance(by: .milliseconds(100))
        let replacement = h.incoming("web", 0)
        #expect(replacement?.generation == h.current("web", 0)?.generation)
        #expect(h.sup.isHealthReplacement("web", 0))
        #expect(!h.signalled(old))
        h.ready(replacement?.pid)
        #expect(h.current("web", 0)?.id == replacement?.id)
        #expect(h.signals(to: old).map(\.signal) == [.term, .cont])
        #expect(h.lastSteer() == [0, 1])
        #expect(h.slot("web", 0)?.lastFailure == "replaced: unhealthy (http 503 ×3)")
        #expect(h.sup.lastReplacement("web", 0) == "replaced: unhealthy (http 503 ×3)")
        #expect(h.sup.workers.values.first { $0.pid == old }?.stopReason == .unhealthy)
        // The sibling was not touched.
        #expect(h.pid("web", 1) == sibling)
        #expect(!h.signalled(sibling))
        #expect(h.spawns(in: "web", slot: 1).count == 1)
        h.exitRetiring()
        #expect(h.sup.health(of: "web")?.state == .running)
    }

    @Test func aStuckOldWorkerIsKilledWithItsGroupAtTheStopTimeout() {
        let h = FakeShell()
        h.startReady(healthSpec(workers: 1) { $0.restart.initialDelay = .zero })
        let old = h.pid("web", 0)
        for _ in 0..<3 {
            h.advance(by: .seconds(1))
            h.answerProbe(0, ok: false, "timeout")
        }
        h.ready(h.incomingPid("web", 0))
        #expect(h.signals(to: old).map(\.signal) == [.term, .cont])
        h.advance(by: .seconds(10))  // stop timeout: the SIGSTOPped worker never exited
        let kill = h.signals(to: old).last
        #expect(kill?.signal == .kill && kill?.group == true)
        h.exit(old, .signaled(9, coreDumped: false))
        #expect(h.sup.workers.count == 1)
    }

    @Test func failuresWithinTheStartPeriodAreNotCounted() {
        let h = FakeShell()
        h.startReady(healthSpec(workers: 1) { $0.health.startPeriod = .seconds(3) })
        for _ in 0..<2 {
            h.advance(by: .seconds(1))
            h.answerProbe(0, ok: false, "503")
        }
        #expect(h.sup.slotHealth("web", 0)?.failures == 0)
        #expect(h.sup.slotHealth("web", 0)?.lastResult == "http 503")
        for n in 1...3 {
            h.advance(by: .seconds(1))
            h.answerProbe(0, ok: false, "503")
            #expect(h.sup.slotHealth("web", 0)?.failures == n)
        }
        #expect(h.sup.slotHealth("web", 0)?.state == "unhealthy")
    }

    @Test func resultsForOtherWorkersAreIgnored() {
        let h = FakeShell()
        h.startReady(healthSpec(workers: 1))
        h.advance(by: .seconds(1))
        let id = h.slot("web", 0)!.current!
        h.exit(h.pid("web", 0))
        for _ in 0..<5 { h.send(.health(.probeResult(id, ok: false, detail: "503"))) }
        h.send(.health(.probeResult(WorkerID(999), ok: false, detail: "503")))
        #expect(h.sup.slotHealth("web", 0) == nil)
        #expect(!h.noted("unhealthy"))
    }

    @Test func noProbeWithoutACheckAndNoneForStartingWorkers() {
        let h = FakeShell()
        h.start(healthSpec(workers: 2))
        h.advance(by: .seconds(3))
        #expect(h.probes().isEmpty)
        h.ready(h.pid("web", 0))
        h.advance(by: .seconds(1))
        #expect(h.probes().map(\.slot) == [0])
        let h2 = FakeShell()
        h2.startReady(healthSpec { $0.health.check = nil })
        h2.advance(by: .seconds(5))
        #expect(h2.probes().isEmpty)
        #expect(!h2.samples().isEmpty)
    }

    // MARK: Hang detection

    @Test func queuesAreSampledOncePerAppPerInterval() {
        let h = FakeShell()
        h.startReady(healthSpec(workers: 4) { $0.health.check = nil })
        h.advance(by: .seconds(5))
        let samples = h.samples()
        #expect(samples.count == 5)
        #expect(samples.allSatisfy { $0.app == "web" })
        let h2 = FakeShell()
        h2.startReady(healthSpec { $0.health.check = nil; $0.health.stuckAfter = .zero })
        h2.advance(by: .seconds(5))
        #expect(h2.samples().isEmpty)
        #expect(h2.sup.nextDeadline() == nil || h2.sup.nextDeadline()! > h2.now, "an app with nothing to watch keeps no timer")
    }

    @Test func aQueueThatDoesNotMoveForStuckAfterIsAHungWorker() {
        let h = FakeShell()
        h.startReady(healthSpec { $0.health.check = nil; $0.restart.initialDelay = .zero })
        let t0 = h.now
        h.send(.health(.acceptQueues(app: "web", [0: 3, 1: 0])))
        for (i, len) in [5, 5, 9, 20, 37].enumerated() {
            h.advance(to: t0 + .seconds(2 * (i + 1) - 1))
            h.send(.health(.acceptQueues(app: "web", [0: len, 1: 0])))
        }
        // 9 s: not yet.
        #expect(h.sup.slotHealth("web", 0)?.verdict == nil)
        #expect(h.sup.slotHealth("web", 0)?.queue == 37)
        h.advance(to: t0 + .seconds(10))
        h.send(.health(.acceptQueues(app: "web", [0: 37, 1: 0])))
        #expect(h.sup.slotHealth("web", 0)?.verdict == .hung("queue 37 for 10 s"))
        #expect(h.lastSteer() == [1])
        let old = h.pid("web", 0)
        h.ready(h.incomingPid("web", 0))
        #expect(h.slot("web", 0)?.lastFailure == "replaced: hung (queue 37 for 10 s)")
        #expect(h.signals(to: old).map(\.signal) == [.term, .cont])
        #expect(h.sup.slotHealth("web", 1)?.verdict == nil)
    }

    @Test(arguments: [0, 2])
    func aQueueThatEmptiesOrShrinksIsNotHung(drainedTo: Int) {
        let h = FakeShell()
        h.startReady(healthSpec(workers: 1) { $0.health.check = nil })
        let t0 = h.now
        h.send(.health(.acceptQueues(app: "web", [0: 4])))
        h.advance(to: t0 + .seconds(6))
        h.send(.health(.acceptQueues(app: "web", [0: drainedTo])))
        h.advance(to: t0 + .seconds(12))
        h.send(.health(.acceptQueues(app: "web", [0: 8])))
        h.advance(to: t0 + .seconds(21))
        h.send(.health(.acceptQueues(app: "web", [0: 8])))
        #expect(h.sup.slotHealth("web", 0)?.verdict == nil, "a worker that accepts is not hung")
        h.advance(to: t0 + .seconds(22))
        h.send(.health(.acceptQueues(app: "web", [0: 8])))
        #expect(h.sup.slotHealth("web", 0)?.verdict == .hung("queue 8 for 10 s"))
    }

    @Test func startingWorkersAndDisabledDetectionAreNotJudged() {
        let h = FakeShell()
        h.start(healthSpec(workers: 1) { $0.health.check = nil })
        h.send(.health(.acceptQueues(app: "web", [0: 50])))
        h.advance(by: .seconds(20))
        h.send(.health(.acceptQueues(app: "web", [0: 50])))
        #expect(h.sup.slotHealth("web", 0)?.verdict == nil)
        let h2 = FakeShell()
        h2.startReady(healthSpec(workers: 1) { $0.health.check = nil; $0.health.stuckAfter = .zero })
        h2.send(.health(.acceptQueues(app: "web", [0: 50])))
        h2.advance(by: .seconds(20))
        h2.send(.health(.acceptQueues(app: "web", [0: 50])))
        #expect(h2.sup.slotHealth("web", 0) == nil)
    }

    // MARK: Replacement failures

    @Test func aFailedReplacementLeavesTheOldWorkerAndRetriesThroughTheBackoff() {
        let h = FakeShell()
        h.startReady(healthSpec(workers: 2) { $0.health.check = nil; $0.restart.crashLoopRestarts = 3 })
        let old = h.pid("web", 0)
        let t0 = h.now
        h.send(.health(.acceptQueues(app: "web", [0: 1])))
        h.advance(to: t0 + .seconds(10))
        h.send(.health(.acceptQueues(app: "web", [0: 1])))
        h.advance(by: .milliseconds(100))
        var tries: [Instant] = []
        for _ in 0..<3 {
            guard let inc = h.incoming("web", 0) else { Issue.record("no replacement started"); return }
            tries.append(h.now)
            h.exit(inc.pid, .exited(1))  // the replacement dies before it is ready
            #expect(h.pid("web", 0) == old)
            #expect(h.lastSteer() == [1], "the unhealthy slot stays out of the steering set")
            #expect(h.incoming("web", 0) == nil)
            guard let next = h.sup.nextDeadline() else { Issue.record("no retry armed"); return }
            h.advance(to: next)
            while h.incoming("web", 0) == nil, let n = h.sup.nextDeadline(), n <= t0 + .seconds(200) { h.advance(to: n) }
        }
        #expect(!h.signalled(old))
        // Delays grow: 100 ms, then 200 ms, then the crash loop's maximum.
        #expect(tries.count == 3)
        #expect(h.slot("web", 0)?.backoff.inCrashLoop == true)
        #expect(h.sup.health(of: "web")?.state == .crashLoop)
        #expect(h.noted("the replacement failed"))
        // Finally one comes up.
        h.ready(h.incomingPid("web", 0))
        #expect(h.signals(to: old).first?.signal == .term)
        #expect(h.lastSteer() == [0, 1])
    }

    @Test func whenTheOldWorkerDiesFirstTheReplacementTakesTheSlot() {
        let h = FakeShell()
        h.startReady(healthSpec(workers: 1) { $0.health.check = nil; $0.restart.initialDelay = .zero })
        let t0 = h.now
        h.send(.health(.acceptQueues(app: "web", [0: 1])))
        h.advance(to: t0 + .seconds(10))
        h.send(.health(.acceptQueues(app: "web", [0: 1])))
        let inc = h.incoming("web", 0)
        #expect(inc != nil)
        let spawnsBefore = h.spawns.count
        h.exit(h.pid("web", 0), .signaled(9, coreDumped: false))
        #expect(h.current("web", 0)?.id == inc?.id)
        #expect(h.incoming("web", 0) == nil)
        #expect(h.spawns.count == spawnsBefore, "no second worker started")
        h.ready(inc?.pid)
        #expect(h.sup.health(of: "web")?.state == .running)
    }

    @Test func aReloadWithdrawsReplacementsAndTakesNoVerdicts() {
        let h = FakeShell()
        let spec = healthSpec(workers: 2) { $0.health.check = nil; $0.restart.initialDelay = .zero }
        h.startReady(spec)
        let t0 = h.now
        h.send(.health(.acceptQueues(app: "web", [0: 1])))
        h.advance(to: t0 + .seconds(10))
        h.send(.health(.acceptQueues(app: "web", [0: 1])))
        let replacement = h.incoming("web", 0)
        #expect(replacement != nil)
        var next = spec
        next.env["V"] = "2"
        let r = h.command(.reloadSpecs([next]))
        #expect(h.signals(to: replacement?.pid).first?.signal == .term)
        // While reloading, a stuck queue takes no verdict.
        h.send(.health(.acceptQueues(app: "web", [1: 5])))
        h.advance(by: .seconds(11))
        h.send(.health(.acceptQueues(app: "web", [1: 5])))
        #expect(h.sup.slotHealth("web", 1)?.verdict == nil)
        for _ in 0..<4 {
            h.readyAll()
            h.exitRetiring()
        }
        #expect(h.succeeded(r), "\(String(describing: h.reply(r)))")
        #expect(h.workers(of: "web").allSatisfy { $0.generation == 2 })
        #expect(h.lastSteer() == [0, 1])
    }

    @Test func noSnapshotWhileAReplacementIsInFlight() {
        let h = FakeShell()
        h.startReady(healthSpec(workers: 1) { $0.health.check = nil; $0.restart.initialDelay = .zero })
        let t0 = h.now
        h.send(.health(.acceptQueues(app: "web", [0: 1])))
        h.advance(to: t0 + .seconds(10))
        h.send(.health(.acceptQueues(app: "web", [0: 1])))
        #expect(h.sup.busyReason == "a worker of 'web' is being replaced")
        h.ready(h.incomingPid("web", 0))
        #expect(h.sup.busyReason == nil)
    }

    @Test func restoredSupervisorArmsHealthAgain() throws {
        let h = FakeShell()
        h.startReady(healthSpec(workers: 2))
        let snap = try #require(h.sup.snapshot())
        var restored = Supervisor(restoring: snap)
        let out = restored.handle(.tick, now: h.now)
        #expect(out.contains { if case .armTimer(let t?) = $0 { return t > h.now } else { return false } })
        let later = restored.handle(.tick, now: h.now + .seconds(1))
        let probes = later.filter { if case .health(.probe) = $0 { return true } else { return false } }
        #expect(probes.count == 2)
        #expect(restored.invariantViolations().isEmpty)
    }

    // MARK: Recycling

    @Test func maxAgeRecyclesOneSlotAtATimeWithoutLeavingTheSteeringSet() {
        let h = FakeShell()
        h.startReady(healthSpec(workers: 3) { s in
            s.health.check = nil
            s.health.stuckAfter = .zero
            s.recycle.maxAge = .seconds(60)
            s.recycle.jitter = .seconds(6)
        })
        h.readyFloor["web"] = 3
        let first = (0..<3).map { h.pid("web", $0) }
        h.advance(by: .seconds(59))
        #expect(h.workers(of: "web").count == 3)
        var recycled: [Int] = []
        for _ in 0..<30 {
            h.advance(by: .seconds(1))
            #expect(h.workers(of: "web").filter { !$0.isRetiring }.count <= 4, "never two slots at once")
            for k in 0..<3 where h.incoming("web", k) != nil {
                #expect(h.lastSteer() == [0, 1, 2], "a recycled worker keeps serving until its replacement is ready")
                recycled.append(k)
                h.ready(h.incomingPid("web", k))
                h.exitRetiring()
            }
        }
        #expect(recycled.sorted() == [0, 1, 2], "\(recycled)")
        #expect((0..<3).allSatisfy { h.pid("web", $0) != first[$0] })
        #expect(h.slot("web", 0)?.lastFailure?.hasPrefix("replaced: recycled (age 1m") == true)
        #expect(h.sup.workers.values.allSatisfy { $0.stopReason == nil })
    }

    @Test func noRecyclingWhileASlotIsNotReady() {
        let h = FakeShell()
        h.startReady(healthSpec(workers: 2) { s in
            s.health.check = nil
            s.health.stuckAfter = .zero
            s.recycle.maxAge = .seconds(10)
            s.recycle.jitter = .zero
            s.restart.initialDelay = .seconds(30)
        })
        h.advance(by: .seconds(5))
        h.exit(h.pid("web", 1))  // slot 1 waits 30 s for its restart
        h.advance(by: .seconds(10))
        #expect(h.incoming("web", 0) == nil, "capacity would drop below the ready count")
        h.advance(by: .seconds(21))
        h.readyAll()
        h.advance(by: .seconds(1))
        #expect(h.incoming("web", 0) != nil)
    }
}
