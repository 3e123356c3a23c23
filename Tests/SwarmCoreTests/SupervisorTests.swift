import Testing
@testable import SwarmCore

@Suite("Supervisor: start and readiness")
struct StartTests {
    @Test func startSpawnsEveryWorkerAndRepliesOnceAllAreReady() {
        let h = FakeShell()
        let r = h.start(makeSpec(workers: 3))
        #expect(h.spawns.map(\.slot) == [0, 1, 2])
        #expect(h.spawns.allSatisfy { $0.generation == 1 && $0.app == "web" })
        #expect(h.workers(of: "web").allSatisfy { $0.phase == .starting })
        #expect(h.appsChanged == 1)
        h.ready(h.pid("web", 0))
        h.ready(h.pid("web", 1))
        #expect(h.reply(r) == nil)
        h.ready(h.pid("web", 2))
        #expect(h.reply(r) == .success("web: started, 3/3 workers ready"))
        #expect(h.readyCount() == 3)
        #expect(h.app()?.targetCount == 3)
    }

    @Test func startRepliesFailureWhenAWorkerExitsBeforeReady() {
        let h = FakeShell()
        let r = h.start(makeSpec(workers: 3))
        h.ready(h.pid("web", 0))
        h.exit(h.pid("web", 1), .exited(3))
        #expect(h.reply(r) == nil, "slot 2 is still starting")
        h.ready(h.pid("web", 2))
        #expect(h.failure(r) == .startFailed(app: "web", failed: 1, of: 3, detail: "exited with status 3"))
        // The failed slot is still restarted.
        h.advance(by: .milliseconds(100))
        #expect(h.spawns(in: "web", slot: 1).count == 2)
    }

    @Test func startRepliesFailureWhenSpawnFails() {
        let h = FakeShell()
        h.failingSpawns = 1
        let r = h.start(makeSpec(workers: 2))
        #expect(h.current("web", 0) == nil)
        #expect(h.slot("web", 0)?.restartAt == at(.milliseconds(100)))
        h.ready(h.pid("web", 1))
        guard case let .startFailed(app, failed, total, detail)? = h.failure(r) else {
            Issue.record("expected startFailed, got \(String(describing: h.reply(r)))")
            return
        }
        #expect(app == "web" && failed == 1 && total == 2)
        #expect(detail.contains("No such file or directory"))
    }

    @Test func startingAnExistingAppIsRefused() {
        let h = FakeShell()
        h.startReady(makeSpec())
        let r = h.start(makeSpec(workers: 5))
        #expect(h.failure(r) == .appExists("web"))
        #expect(h.spawns.count == 2)
    }

    @Test func startWithNegativeWorkersIsInvalid() {
        let h = FakeShell()
        let r = h.start(makeSpec(workers: -1))
        #expect(h.failure(r) == .invalid("workers must be >= 0"))
        #expect(h.sup.apps.isEmpty)
    }

    @Test func startWithZeroWorkersRepliesAtOnce() {
        let h = FakeShell()
        let r = h.start(makeSpec(workers: 0))
        #expect(h.reply(r) == .success("web: started, 0/0 workers ready"))
    }

    @Test(arguments: [ReadyMode.notify, .fd])
    func explicitReadinessWaitsForTheWorker(mode: ReadyMode) {
        let h = FakeShell()
        let r = h.start(makeSpec(workers: 1, ready: mode))
        h.advance(by: .seconds(29))
        #expect(h.current("web", 0)?.phase == .starting)
        #expect(h.probes.isEmpty)
        #expect(h.reply(r) == nil)
        h.ready(h.pid("web", 0))
        #expect(h.current("web", 0)?.phase == .ready)
        #expect(h.current("web", 0)?.readyAt == at(.seconds(29)))
        #expect(h.succeeded(r))
    }

    @Test func listeningReadinessProbesAtTheProbeInterval() {
        let h = FakeShell(probeInterval: .milliseconds(20))
        let r = h.start(makeSpec(workers: 1, ready: .listening) {
            $0.sockets = [SocketSpec(name: "http", listen: .tcp(host: "127.0.0.1", port: 8080))]
        })
        let pid = h.pid("web", 0)!
        #expect(h.probes.map(\.at) == [.zero], "probed at once")
        h.advance(by: .milliseconds(100))
        #expect(h.probes.map(\.at) == [0, 20, 40, 60, 80, 100].map { at(.milliseconds($0)) })
        #expect(h.probes.allSatisfy { $0.pid == pid })
        h.ready(pid)
        #expect(h.succeeded(r))
        h.advance(by: .seconds(1))
        #expect(h.probes.count == 6, "no probe once ready")
    }

    @Test func listeningReadinessWithoutSocketsFallsBackToTheDelay() {
        let h = FakeShell()
        let r = h.start(makeSpec(workers: 1, ready: .listening) { $0.ready.delay = .milliseconds(300) })
        h.advance(by: .milliseconds(299))
        #expect(h.reply(r) == nil)
        h.advance(by: .milliseconds(1))
        #expect(h.succeeded(r))
        #expect(h.probes.isEmpty)
    }

    @Test func delayReadinessIsTheTimer() {
        let h = FakeShell()
        let r = h.start(makeSpec(workers: 2, ready: .delay) { $0.ready.delay = .milliseconds(250) })
        #expect(h.armed == at(.milliseconds(250)))
        h.advance(by: .milliseconds(249))
        #expect(h.readyCount() == 0)
        h.advance(by: .milliseconds(1))
        #expect(h.readyCount() == 2)
        #expect(h.reply(r) == .success("web: started, 2/2 workers ready"))
    }

    @Test func delayReadinessOfZeroIsReadyOnSpawn() {
        let h = FakeShell()
        let r = h.start(makeSpec(workers: 2, ready: .delay) { $0.ready.delay = .zero })
        #expect(h.readyCount() == 2)
        #expect(h.succeeded(r))
    }

    @Test func readinessTimeoutStopsTheWorkerAndRestartsItWithBackoff() {
        let h = FakeShell()
        let r = h.start(makeSpec(workers: 1) { $0.ready.timeout = .seconds(5) })
        let pid = h.pid("web", 0)!
        h.advance(by: .seconds(5))
        #expect(h.signals(to: pid).map(\.signal) == [.term, .cont])
        #expect(h.signals(to: pid).allSatisfy { !$0.group })
        #expect(h.sup.worker(pid: pid)?.stopReason == .readyTimeout)
        #expect(h.failure(r) != nil, "the start failed")
        #expect(h.noted("was not ready within 5s"))
        #expect(h.spawns.count == 1)
        h.advance(by: .milliseconds(100))
        #expect(h.spawns.count == 2, "restarted after the first backoff step")
        // The old one ignores SIGTERM: SIGKILL at the stop timeout.
        h.advance(to: at(.seconds(15)))
        #expect(h.signals(to: pid).last == SentSignal(pid: pid, signal: .kill, group: true, at: at(.seconds(15))))
        h.exit(pid, .signaled(9, coreDumped: false))
        #expect(h.sup.worker(pid: pid) == nil)
    }

    @Test func statusTextIsKeptAndTruncated() {
        let h = FakeShell()
        h.startReady(makeSpec(workers: 1))
        let pid = h.pid("web", 0)!
        h.send(.status(pid: pid, "serving 3 clients"))
        #expect(h.current("web", 0)?.status == "serving 3 clients")
        h.send(.status(pid: pid, String(repeating: "x", count: 500)))
        #expect(h.current("web", 0)?.status?.count == 200)
        h.send(.stopping(pid: pid))
        #expect(h.current("web", 0)?.status == "stopping")
    }
}

@Suite("Supervisor: restarts")
struct RestartPolicyTests {
    @Test func alwaysRestartsEvenACleanExit() {
        let h = FakeShell()
        h.startReady(makeSpec(workers: 1) { $0.restart.mode = .always })
        h.exit(h.pid("web", 0), .exited(0))
        h.advance(by: .milliseconds(100))
        #expect(h.spawns.count == 2)
        #expect(h.slot("web", 0)?.restarts == 1)
        #expect(h.slot("web", 0)?.lastExit == .exited(0))
    }

    @Test func onFailureDoesNotRestartACleanExit() {
        let h = FakeShell()
        h.startReady(makeSpec(workers: 2) { $0.restart.mode = .onFailure })
        h.exit(h.pid("web", 0), .exited(0))
        h.advance(by: .seconds(120))
        #expect(h.spawns.count == 2)
        #expect(h.current("web", 0) == nil)
        #expect(h.noted("not restarted (restart policy on-failure)"))
        h.exit(h.pid("web", 1), .signaled(11, coreDumped: true))
        h.advance(by: .milliseconds(100))
        #expect(h.spawns(in: "web", slot: 1).count == 2, "a crash is restarted")
        #expect(h.spawns(in: "web", slot: 0).count == 1)
    }

    @Test func neverRestartsNothing() {
        let h = FakeShell()
        h.startReady(makeSpec(workers: 1) { $0.restart.mode = .never })
        h.exit(h.pid("web", 0), .exited(1))
        h.advance(by: .seconds(120))
        #expect(h.spawns.count == 1)
        #expect(h.sup.nextDeadline() == nil)
        #expect(h.app()?.slots.count == 1, "the slot stays")
    }

    /// Crashes the worker of slot 0 as soon as it runs and returns the delay before its replacement.
    static func crashAndMeasure(_ h: FakeShell, sourceLocation: SourceLocation = #_sourceLocation) -> Duration? {
        let before = h.spawns.count
        let crashedAt = h.now
        h.exit(h.pid("web", 0), .exited(1), sourceLocation: sourceLocation)
        if h.spawns.count > before { return .zero }
        guard let due = h.slot("web", 0)?.restartAt else { return nil }
        h.advance(to: due, sourceLocation: sourceLocation)
        #expect(h.spawns.count == before + 1, sourceLocation: sourceLocation)
        return due - crashedAt
    }

    @Test func backoffDoublesUpToTheMaximum() {
        let h = FakeShell()
        h.start(makeSpec(workers: 1) {
            $0.restart.maxDelay = .seconds(1)
            $0.restart.crashLoopRestarts = 100
        })
        var delays: [Duration?] = []
        for _ in 0..<7 { delays.append(Self.crashAndMeasure(h)) }
        #expect(delays == [100, 200, 400, 800, 1000, 1000, 1000].map { .milliseconds($0) })
        #expect(h.slot("web", 0)?.restarts == 7)
    }

    @Test func initialDelayZeroRestartsAtOnceOnlyTheFirstTime() {
        let h = FakeShell()
        h.start(makeSpec(workers: 1) {
            $0.restart.initialDelay = .zero
            $0.restart.crashLoopRestarts = 100
        })
        let first = Self.crashAndMeasure(h)
        #expect(first == .zero)
        let second = Self.crashAndMeasure(h) ?? .zero
        #expect(second >= .milliseconds(100))
        let third = Self.crashAndMeasure(h) ?? .zero
        #expect(third > second)
    }

    @Test func backoffResetsAfterAHealthyRun() {
        let h = FakeShell()
        h.start(makeSpec(workers: 1) { $0.restart.resetAfter = .seconds(5); $0.restart.crashLoopRestarts = 100 })
        #expect(Self.crashAndMeasure(h) == .milliseconds(100))
        #expect(Self.crashAndMeasure(h) == .milliseconds(200))
        #expect(Self.crashAndMeasure(h) == .milliseconds(400))
        // Up, but not for long enough: the delay keeps growing.
        h.ready(h.pid("web", 0))
        h.advance(by: .seconds(4))
        #expect(Self.crashAndMeasure(h) == .milliseconds(800))
        h.ready(h.pid("web", 0))
        h.advance(by: .seconds(5))
        #expect(h.slot("web", 0)?.backoff.consecutiveFailures == 0)
        #expect(Self.crashAndMeasure(h) == .milliseconds(100))
    }

    @Test func crashLoopIsDetectedAndClearedByAHealthyRun() {
        let h = FakeShell()
        h.start(makeSpec(workers: 1) {
            $0.restart.crashLoopRestarts = 3
            $0.restart.crashLoopWindow = .seconds(60)
            $0.restart.maxDelay = .seconds(10)
            $0.restart.resetAfter = .seconds(5)
        })
        #expect(Self.crashAndMeasure(h) == .milliseconds(100))
        #expect(Self.crashAndMeasure(h) == .milliseconds(200))
        #expect(h.slot("web", 0)?.backoff.inCrashLoop == false)
        #expect(Self.crashAndMeasure(h) == .seconds(10))
        #expect(h.slot("web", 0)?.backoff.inCrashLoop == true)
        #expect(h.notes.filter { $0.level == .error && $0.text.contains("crash loop") }.count == 1)
        #expect(Self.crashAndMeasure(h) == .seconds(10))
        #expect(h.notes.filter { $0.text.contains("crash loop") }.count == 1, "reported once")
        h.ready(h.pid("web", 0))
        h.advance(by: .seconds(5))
        #expect(h.slot("web", 0)?.backoff.inCrashLoop == false)
        #expect(Self.crashAndMeasure(h) == .milliseconds(100))
    }

    @Test func exitedWorkerHasItsGroupKilled() {
        let h = FakeShell()
        h.startReady(makeSpec(workers: 2))
        let pid = h.pid("web", 1)!
        let out = h.send(.exited(pid: pid, .exited(0)))
        #expect(out.first == .signal(pid: pid, .kill, group: true))
        #expect(h.signals(to: h.pid("web", 0)).isEmpty)
    }

    @Test func unknownPidsAreIgnored() {
        let h = FakeShell()
        h.startReady(makeSpec(workers: 1))
        let before = h.sup.workers
        for event: Event in [.exited(pid: 4242, .exited(1)), .ready(pid: 4242), .status(pid: 4242, "hi"),
                             .watchdogPing(pid: 4242), .stopping(pid: 4242), .memory(pid: 4242, bytes: 1 << 40),
                             .spawnFailed(WorkerID(999), reason: "x")] {
            let out = h.send(event)
            #expect(out.allSatisfy { if case .note(.debug, _) = $0 { return true } else { return false } }, "\(event): \(out)")
        }
        #expect(h.sup.workers == before)
        #expect(h.signals.isEmpty)
    }

    @Test func resumeAfterStopStartsTheWorkersAgain() {
        let h = FakeShell()
        h.startReady(makeSpec(workers: 2))
        let stop = h.command(.stop(.app("web")))
        h.exitRetiring()
        #expect(h.succeeded(stop))
        let r = h.command(.resume(.app("web")))
        #expect(h.spawns.count == 4)
        h.readyAll()
        #expect(h.reply(r) == .success("web: started, 2/2 workers ready"))
    }
}

@Suite("Supervisor: stop, delete, shutdown")
struct StopTests {
    @Test func stopSignalsThenKillsTheGroupThenReplies() {
        let h = FakeShell()
        h.startReady(makeSpec(workers: 2))
        let pids = [h.pid("web", 0)!, h.pid("web", 1)!]
        h.advance(to: at(.seconds(1)))
        let r = h.command(.stop(.app("web")))
        for pid in pids {
            #expect(h.signals(to: pid) == [SentSignal(pid: pid, signal: .term, group: false, at: at(.seconds(1))),
                                           SentSignal(pid: pid, signal: .cont, group: false, at: at(.seconds(1)))])
        }
        #expect(h.app()?.goal == .stopped)
        h.exit(pids[0], .exited(0))
        #expect(h.reply(r) == nil)
        h.advance(to: at(.seconds(11)) + .nanoseconds(-1))
        #expect(h.signals(to: pids[1]).count == 2)
        h.advance(to: at(.seconds(11)))
        #expect(h.signals(to: pids[1]).last == SentSignal(pid: pids[1], signal: .kill, group: true, at: at(.seconds(11))))
        #expect(h.sup.worker(pid: pids[1])?.phase == .killing)
        #expect(h.reply(r) == nil)
        h.exit(pids[1], .signaled(9, coreDumped: false))
        #expect(h.reply(r) == .success("web: stopped"))
        h.advance(by: .seconds(60))
        #expect(h.spawns.count == 2, "a stopped app is not restarted")
        #expect(h.app() != nil)
    }

    @Test func stopUsesTheConfiguredSignalAndTimeout() {
        let h = FakeShell()
        h.startReady(makeSpec(workers: 1) { $0.stop.signal = .quit; $0.stop.timeout = .seconds(3) })
        let pid = h.pid("web", 0)!
        h.command(.stop(.app("web")))
        #expect(h.signals(to: pid).map(\.signal) == [.quit, .cont])
        h.advance(by: .seconds(3))
        #expect(h.signals(to: pid).map(\.signal) == [.quit, .cont, .kill])
    }

    @Test func stopWithSigkillOrZeroTimeoutKillsTheGroupAtOnce() {
        for configure: (inout AppSpec) -> Void in [{ $0.stop.signal = .kill }, { $0.stop.timeout = .zero }] {
            let h = FakeShell()
            h.startReady(makeSpec(workers: 1, configure))
            let pid = h.pid("web", 0)!
            h.command(.stop(.app("web")))
            #expect(h.signals(to: pid) == [SentSignal(pid: pid, signal: .kill, group: true, at: .zero)])
            #expect(h.sup.worker(pid: pid)?.phase == .killing)
        }
    }

    @Test func workerCrashingWhileStoppingIsNotRestarted() {
        let h = FakeShell()
        h.startReady(makeSpec(workers: 1))
        let r = h.command(.stop(.app("web")))
        h.exit(h.sup.workers.values.first?.pid, .exited(1))
        h.advance(by: .seconds(60))
        #expect(h.spawns.count == 1)
        #expect(h.succeeded(r))
    }

    @Test func stopOfAnUnknownAppFails() {
        let h = FakeShell()
        let r = h.command(.stop(.app("nope")))
        #expect(h.failure(r) == .unknownApp("nope"))
    }

    @Test func deleteStopsAndForgetsTheApp() {
        let h = FakeShell()
        h.startReady(makeSpec(workers: 2))
        let r = h.command(.delete(.app("web")))
        #expect(h.app()?.goal == .deleted)
        let again = h.start(makeSpec(workers: 1))
        #expect(h.failure(again) == .invalid("app 'web' is still being deleted; try again when its workers are gone"))
        #expect(h.failure(h.command(.stop(.app("web")))) == .unknownApp("web"))
        h.exitRetiring()
        #expect(h.reply(r) == .success("web: deleted"))
        #expect(h.removed == ["web"])
        #expect(h.app() == nil)
        #expect(h.sup.appOrder.isEmpty)
        let fresh = h.start(makeSpec(workers: 1))
        h.readyAll()
        #expect(h.succeeded(fresh))
        #expect(h.app()?.generation == 1)
    }

    @Test func deleteOfAnIdleAppIsImmediate() {
        let h = FakeShell()
        h.startReady(makeSpec(workers: 0))
        let r = h.command(.delete(.app("web")))
        #expect(h.reply(r) == .success("web: deleted"))
        #expect(h.removed == ["web"])
    }

    @Test func shutdownExitsOnlyOnceEveryWorkerExited() {
        let h = FakeShell()
        h.startReady(makeSpec("web", workers: 2))
        h.startReady(makeSpec("api", workers: 1))
        let r = h.command(.shutdown)
        #expect(h.signals.filter { $0.signal == .term }.count == 3)
        #expect(h.sup.shuttingDown)
        let refused = h.start(makeSpec("other", workers: 1))
        #expect(h.failure(refused) == .shuttingDown)
        #expect(h.failure(h.command(.scale("web", 5))) == .shuttingDown)
        #expect(h.failure(h.command(.reloadSpecs([makeSpec("web")]))) == .shuttingDown)
        let second = h.command(.shutdown)
        let pids = h.workers(of: "web").compactMap(\.pid) + h.workers(of: "api").compactMap(\.pid)
        h.exit(pids[0], .exited(1))
        h.exit(pids[1], .exited(0))
        #expect(h.exits == 0)
        #expect(h.reply(r) == nil)
        h.advance(by: .seconds(60))
        #expect(h.spawns.count == 3, "nothing restarts during shutdown")
        h.exit(pids[2], .signaled(9, coreDumped: false))
        #expect(h.exits == 1)
        #expect(h.reply(r) == .success("swarmd stopped every worker"))
        #expect(h.reply(second) == .success("swarmd stopped every worker"))
        #expect(h.lastActions.last == .exit || h.lastActions.contains(.exit))
    }

    @Test func shutdownWithNothingRunningExitsAtOnce() {
        let h = FakeShell()
        let r = h.command(.shutdown)
        #expect(h.exits == 1)
        #expect(h.succeeded(r))
    }

    @Test func shutdownKillsPendingSpawnsAndInterruptsAStart() {
        let h = FakeShell()
        h.deferSpawns = true
        let start = h.start(makeSpec(workers: 2))
        h.command(.shutdown)
        #expect(h.failure(start) == .interrupted("swarmd is shutting down"))
        h.completeSpawns()
        // The shell forked them after all: they must not be left running.
        #expect(h.exits == 1)
        for pid in [Int32(1000), 1001] {
            #expect(h.signals(to: pid).contains { $0.signal == .kill && $0.group }, "orphan pid \(pid) was not killed")
        }
    }
}

@Suite("Supervisor: scale, restart, replace")
struct ScaleTests {
    @Test func scaleUpStartsNewSlotsOnly() {
        let h = FakeShell()
        h.startReady(makeSpec(workers: 2))
        let r = h.command(.scale("web", 4))
        #expect(h.spawns.map(\.slot) == [0, 1, 2, 3])
        #expect(h.signals.isEmpty)
        #expect(h.reply(r) == nil)
        h.readyAll()
        #expect(h.reply(r) == .success("web: scaled to 4 workers, 4/4 workers ready"))
        #expect(h.app()?.targetCount == 4)
    }

    @Test func scaleByAddsAndRemovesRelativeToTheCurrentCount() {
        let h = FakeShell()
        h.startReady(makeSpec(workers: 2))
        let up = h.command(.scaleBy("web", 2))
        #expect(h.spawns.map(\.slot) == [0, 1, 2, 3])
        h.readyAll()
        #expect(h.reply(up) == .success("web: scaled to 4 workers, 4/4 workers ready"))
        let surplus = (1..<4).map { h.pid("web", $0)! }
        let down = h.command(.scaleBy("web", -3))
        #expect(h.app()?.targetCount == 1)
        for pid in surplus.reversed() { h.exit(pid, .exited(0)) }
        #expect(h.reply(down) == .success("web: scaled to 1 worker, 1/1 workers ready"))
    }

    @Test func scaleByOutOfRangeChangesNothing() {
        let h = FakeShell()
        h.startReady(makeSpec(workers: 2))
        #expect(h.failure(h.command(.scaleBy("web", -3)))
            == .invalid("web has 2 workers: cannot remove 3 (the count must stay between 0 and 4096)"))
        #expect(h.failure(h.command(.scaleBy("web", 4095)))
            == .invalid("web has 2 workers: cannot add 4095 (the count must stay between 0 and 4096)"))
        #expect(h.failure(h.command(.scaleBy("web", .max)))
            == .invalid("web has 2 workers: cannot add \(Int.max) (the count must stay between 0 and 4096)"))
        #expect(h.failure(h.command(.scaleBy("web", .min)))
            == .invalid("web has 2 workers: cannot remove \(Int.min.magnitude) (the count must stay between 0 and 4096)"))
        #expect(h.failure(h.command(.scale("web", 4097))) == .invalid("the worker count must be between 0 and 4096, not 4097"))
        #expect(h.failure(h.command(.scaleBy("nope", 1))) == .unknownApp("nope"))
        #expect(h.app()?.targetCount == 2)
        #expect(h.spawns.count == 2 && h.signals.isEmpty)
    }

    @Test func scaleDownRemovesTheHighestSlots() {
        let h = FakeShell()
        h.startReady(makeSpec(workers: 4))
        let pids = (0..<4).map { h.pid("web", $0)! }
        let r = h.command(.scale("web", 2))
        #expect(!h.signalled(pids[0]) && !h.signalled(pids[1]))
        #expect(h.signals(to: pids[2]).map(\.signal) == [.term, .cont])
        #expect(h.signals(to: pids[3]).map(\.signal) == [.term, .cont])
        #expect(h.sup.worker(pid: pids[3])?.stopReason == .scale)
        h.exit(pids[2], .exited(0))
        #expect(h.released.isEmpty, "slot 2 waits for slot 3")
        #expect(h.reply(r) == nil)
        h.exit(pids[3], .exited(0))
        #expect(h.released.map(\.slot) == [3, 2])
        #expect(h.released.allSatisfy { $0.app == "web" })
        #expect(h.app()?.slots.count == 2)
        #expect(h.reply(r) == .success("web: scaled to 2 workers, 2/2 workers ready"))
        h.advance(by: .seconds(60))
        #expect(h.spawns.count == 4, "removed slots are not restarted")
    }

    @Test func scaleDownThenUpBeforeTheOldWorkersExitReusesTheSlot() {
        let h = FakeShell()
        h.startReady(makeSpec(workers: 3))
        let old = h.pid("web", 2)!
        h.command(.scale("web", 2))
        let r = h.command(.scale("web", 3))
        #expect(h.spawns(in: "web", slot: 2).count == 2)
        h.readyAll()
        #expect(h.succeeded(r))
        h.exit(old, .exited(0))
        #expect(h.released.isEmpty)
        #expect(h.app()?.slots.count == 3)
    }

    @Test func scaleRejectsBadInput() {
        let h = FakeShell()
        h.startReady(makeSpec(workers: 1))
        #expect(h.failure(h.command(.scale("nope", 2))) == .unknownApp("nope"))
        guard case .invalid? = h.failure(h.command(.scale("web", -1))) else {
            Issue.record("negative count accepted")
            return
        }
    }

    @Test func scaleOfAStoppedAppTakesEffectOnResume() {
        let h = FakeShell()
        h.startReady(makeSpec(workers: 1))
        h.command(.stop(.app("web")))
        h.exitRetiring()
        let r = h.command(.scale("web", 3))
        #expect(h.reply(r) == .success("web: stopped; it will run 3 workers when started"))
        #expect(h.spawns.count == 1)
        let resume = h.command(.resume(.app("web")))
        #expect(h.spawns.count == 4)
        h.readyAll()
        #expect(h.reply(resume) == .success("web: started, 3/3 workers ready"))
    }

    @Test func restartStartsNewWorkersBeforeTheOldExit() {
        let h = FakeShell()
        h.startReady(makeSpec(workers: 2))
        let old = [h.pid("web", 0)!, h.pid("web", 1)!]
        let r = h.command(.restart(.app("web")))
        #expect(h.spawns.count == 4, "both replacements spawned at once")
        for pid in old {
            #expect(h.signals(to: pid).map(\.signal) == [.term, .cont])
            #expect(h.sup.worker(pid: pid)?.stopReason == .restart)
        }
        let fresh = [h.pid("web", 0)!, h.pid("web", 1)!]
        #expect(Set(fresh).isDisjoint(with: old))
        h.readyAll()
        #expect(h.reply(r) == .success("web: restarted, 2/2 workers ready"))
        #expect(fresh.allSatisfy { !h.signalled($0) })
        h.exitRetiring()
        #expect(h.sup.workers.count == 2)
    }

    @Test func restartClearsTheBackoff() {
        let h = FakeShell()
        h.start(makeSpec(workers: 1) { $0.restart.crashLoopRestarts = 100 })
        _ = RestartPolicyTests.crashAndMeasure(h)
        _ = RestartPolicyTests.crashAndMeasure(h)
        #expect(h.slot("web", 0)?.backoff.consecutiveFailures == 2)
        h.command(.restart(.app("web")))
        #expect(h.slot("web", 0)?.backoff.consecutiveFailures == 0)
    }

    @Test func replaceStartsANewGeneration() {
        let h = FakeShell()
        h.startReady(makeSpec(workers: 2))
        let old = [h.pid("web", 0)!, h.pid("web", 1)!]
        let r = h.start(makeSpec(workers: 3) { $0.env["V"] = "2" }, replace: true)
        #expect(h.app()?.generation == 2)
        #expect(h.spawns.suffix(3).map(\.generation) == [2, 2, 2])
        #expect(h.spawns.suffix(3).map(\.slot).sorted() == [0, 1, 2])
        for pid in old { #expect(h.signals(to: pid).map(\.signal) == [.term, .cont]) }
        h.readyAll()
        #expect(h.reply(r) == .success("web: started, 3/3 workers ready"))
        h.exitRetiring()
        #expect(h.app()?.specs.keys.sorted() == [2], "the old spec is dropped once its workers are gone")
    }

    @Test func replaceWithFewerWorkersReleasesTheExtraSlots() {
        let h = FakeShell()
        h.startReady(makeSpec(workers: 3))
        let r = h.start(makeSpec(workers: 1), replace: true)
        h.readyAll()
        #expect(h.reply(r) == nil, "slots 1 and 2 are still stopping")
        h.exitRetiring()
        #expect(h.released.map(\.slot) == [2, 1])
        #expect(h.reply(r) == .success("web: started, 1/1 workers ready"))
    }

    @Test func replaceOfAStoppedAppWithFewerWorkers() {
        let h = FakeShell()
        h.startReady(makeSpec(workers: 3))
        h.command(.stop(.app("web")))
        h.exitRetiring()
        let r = h.start(makeSpec(workers: 1), replace: true)
        h.readyAll()
        #expect(h.app()?.slots.count == 1)
        #expect(h.reply(r) == .success("web: started, 1/1 workers ready"))
    }
}

@Suite("Supervisor: watchdog and memory")
struct HealthTests {
    @Test func watchdogExpiryKillsAndRestarts() {
        let h = FakeShell()
        h.start(makeSpec(workers: 1) { $0.ready.watchdog = .seconds(2) })
        let pid = h.pid("web", 0)!
        h.send(.watchdogPing(pid: pid))
        h.advance(by: .seconds(5))
        #expect(h.signals.isEmpty, "no watchdog before ready")
        h.ready(pid)  // t=5
        h.advance(by: .seconds(1))
        h.send(.watchdogPing(pid: pid))  // deadline 8
        h.advance(to: at(.milliseconds(7999)))
        #expect(h.signals.isEmpty)
        h.advance(to: at(.seconds(8)))
        #expect(h.signals(to: pid) == [SentSignal(pid: pid, signal: .abrt, group: false, at: at(.seconds(8)))],
                "SIGABRT first, so a hung worker can dump core")
        #expect(h.sup.worker(pid: pid)?.stopReason == .watchdog)
        #expect(h.noted("sent no WATCHDOG=1 for 2s"))
        h.advance(by: .milliseconds(100))
        #expect(h.spawns.count == 2, "replaced after the initial restart delay, not after the old one is gone")
        h.advance(to: at(.seconds(18)))
        #expect(h.signals(to: pid).last == SentSignal(pid: pid, signal: .kill, group: true, at: at(.seconds(18))),
                "SIGKILL to the group at the stop timeout")
        h.exit(pid, .signaled(9, coreDumped: false))
        #expect(h.sup.worker(pid: pid) == nil)
        #expect(h.current("web", 0) != nil)
    }

    @Test func memoryCeilingReplacesTheWorker() {
        let h = FakeShell()
        h.startReady(makeSpec(workers: 2) { $0.memoryLimit = 100 << 20 })
        let pid = h.pid("web", 0)!
        #expect(h.memorySamples.isEmpty)
        h.advance(by: .milliseconds(500))
        #expect(Set(h.memorySamples.map(\.pid)) == Set([pid, h.pid("web", 1)!]))
        h.send(.memory(pid: pid, bytes: 50 << 20))
        #expect(h.signals.isEmpty)
        h.send(.memory(pid: pid, bytes: 200 << 20))
        // Start-first (HealthRecycleTests has the rest): the replacement starts, the old one serves on.
        #expect(h.signals.isEmpty)
        #expect(h.spawns(in: "web", slot: 0).count == 2)
        h.send(.memory(pid: pid, bytes: 300 << 20))
        #expect(h.spawns.count == 3, "a worker being replaced is not replaced twice")
        h.ready(h.incomingPid("web", 0))
        #expect(h.signals(to: pid).map(\.signal) == [.term, .cont])
        #expect(h.sup.worker(pid: pid)?.stopReason == .memory)
        #expect(h.app()?.slots[0].lastFailure == "replaced: recycled (memory 200 MiB > 100 MiB)")
        #expect(!h.signalled(h.pid("web", 1)))
        h.send(.memory(pid: pid, bytes: 300 << 20))
        #expect(h.spawns.count == 3, "a retiring worker is not replaced again")
    }

    @Test func noMemorySamplingWithoutACeiling() {
        let h = FakeShell()
        h.startReady(makeSpec(workers: 1))
        h.advance(by: .seconds(10))
        #expect(h.memorySamples.isEmpty)
        h.send(.memory(pid: h.pid("web", 0)!, bytes: 1 << 40))
        #expect(h.signals.isEmpty)
    }
}

@Suite("Supervisor: adding a stopped app")
struct AddStoppedTests {
    @Test func addedAppRunsNothingUntilResumed() {
        let h = FakeShell()
        let r = h.command(.add(makeSpec(workers: 3)))
        #expect(h.succeeded(r))
        #expect(h.spawns.isEmpty, "a remembered stopped app runs no worker")
        #expect(h.app()?.goal == .stopped)
        #expect(h.app()?.slots.count == 3)
        #expect(h.failure(h.command(.add(makeSpec(workers: 1)))) == .appExists("web"))
        let s = h.command(.scale("web", 2))
        #expect(h.succeeded(s))
        #expect(h.spawns.isEmpty)
        let resume = h.command(.resume(.app("web")))
        #expect(h.spawns.count == 2, "resume starts the scaled count")
        h.readyAll()
        #expect(h.succeeded(resume))
    }
}
