import Testing
@testable import SwarmCore

/// Issue 18: the work per event is bounded by what the event touches, not by
/// the number of workers. The core counts every slot and worker it examines
/// (`Supervisor.visits`); these tests read the count per `handle`.
@Suite("Flat cost per event")
struct CostTests {
    /// `n` ready workers of one app, readied 1 ms apart so their deadlines differ.
    func fleet(_ n: Int, _ configure: (inout AppSpec) -> Void = { _ in }) -> FakeShell {
        let h = FakeShell()
        h.checkEveryEvent = false
        h.start(makeSpec(workers: n) {
            $0.sockets = [SocketSpec(name: "http", listen: .tcp(host: "127.0.0.1", port: 8080))]
            $0.ready.mode = .notify
            configure(&$0)
        })
        for k in 0..<n {
            h.ready(h.pid("web", k))
            h.advance(by: .milliseconds(1))
        }
        #expect(h.sup.health(of: "web")?.ready == n)
        #expect(h.sup.invariantViolations() == [])
        return h
    }

    struct Costs: Equatable, CustomStringConvertible {
        var exit = 0, restartTick = 0, ready = 0, idleTick = 0, healthyTick = 0, scaleUp = 0, scaleDown = 0
        var reloadBegin = 0, reloadStep = 0
        var description: String {
            "exit \(exit), restart tick \(restartTick), ready \(ready), idle tick \(idleTick), healthy tick \(healthyTick), scale +1 \(scaleUp), scale -1 \(scaleDown), reload begin \(reloadBegin), reload step \(reloadStep)"
        }
    }

    /// The most any one `handle` of the last `send` visited.
    func peak(_ h: FakeShell) -> Int { h.visitsPerHandle.max() ?? 0 }

    func measure(_ n: Int) -> Costs {
        let h = fleet(n)
        var c = Costs()
        let k = n / 2
        h.exit(h.pid("web", k))
        c.exit = peak(h)
        h.advance(by: .milliseconds(100))  // the restart's tick
        c.restartTick = peak(h)
        h.ready(h.pid("web", k))
        c.ready = peak(h)
        h.send(.tick)
        c.idleTick = peak(h)
        // The first worker's healthyAt (30 s after its readiness): one worker due.
        h.advance(to: at(.seconds(30)))
        h.send(.tick)
        let due = h.sup.deadlines.min.map { $0.priority.time }
        if let due { h.advance(to: due) }
        c.healthyTick = peak(h)
        h.command(.scaleBy("web", -1))
        c.scaleDown = peak(h)
        h.exitRetiring()
        h.command(.scaleBy("web", 1))
        c.scaleUp = peak(h)
        h.ready(h.pid("web", n - 1))
        h.command(.reloadSpecs([makeSpec(workers: n) {
            $0.sockets = [SocketSpec(name: "http", listen: .tcp(host: "127.0.0.1", port: 8080))]
            $0.env["V"] = "2"
        }]))
        c.reloadBegin = peak(h)
        h.ready(h.incomingPid("web", 0))
        c.reloadStep = peak(h)
        #expect(h.sup.invariantViolations() == [])
        return c
    }

    @Test func visitsPerEventDoNotGrowWithTheNumberOfWorkers() {
        let small = measure(10)
        let large = measure(4096)
        print("visits per event at 10 workers: \(small)")
        print("visits per event at 4096 workers: \(large)")
        #expect(small == large, "10 workers: \(small); 4096 workers: \(large)")
        for (what, v) in [("exit", large.exit), ("restart tick", large.restartTick), ("ready", large.ready),
                          ("idle tick", large.idleTick), ("healthy tick", large.healthyTick), ("scale +1", large.scaleUp),
                          ("scale -1", large.scaleDown), ("reload begin", large.reloadBegin), ("reload step", large.reloadStep)] {
            #expect(v <= 16, "\(what) visited \(v) slots or workers")
        }
    }

    @Test func aLargeStartSpawnsInBatchesInSlotOrder() {
        let h = FakeShell()
        h.checkEveryEvent = false
        h.start(makeSpec(workers: 4096))
        #expect(h.largestSpawnBatch == Supervisor().spawnBatch)
        #expect(h.spawns.count == 4096, "every worker was spawned")
        #expect(h.spawns.map(\.slot) == Array(0..<4096), "in slot order")
        #expect(h.sup.invariantViolations() == [])
        h.readyAll()
        #expect(h.succeeded(RequestID(1)))
    }

    @Test func theFirstBatchComesWithATimerForNow() {
        let h = FakeShell()
        h.deferSpawns = true
        h.start(makeSpec(workers: 40))
        let first = h.actions.prefix { if case .armTimer = $0 { return false } else { return true } }
        #expect(first.filter { if case .spawn = $0 { return true } else { return false } }.count == Supervisor().spawnBatch)
        #expect(h.actions.contains(.armTimer(.zero)), "the rest continue at once, on the timer")
        #expect(h.spawns.count == 40)
        #expect(h.largestSpawnBatch == Supervisor().spawnBatch)
    }

    @Test func aChurnOfInstantlyExitingWorkersNeverExceedsTheBatch() {
        let h = FakeShell()
        h.checkEveryEvent = false
        h.start(makeSpec(workers: 200, ready: .delay) {
            $0.ready.delay = .zero
            $0.restart.initialDelay = .zero
            $0.restart.crashLoopRestarts = 0
        })
        for _ in 0..<6 {
            // All exit at once, as `sleep 0.1` workers do.
            for k in 0..<200 { h.exit(h.pid("web", k), .exited(0)) }
            h.advance(by: .seconds(5))
            #expect(h.sup.invariantViolations() == [])
            h.checkGone()
        }
        #expect(h.largestSpawnBatch <= 32, "at most one batch per event, got \(h.largestSpawnBatch)")
        #expect((0..<200).allSatisfy { h.pid("web", $0) != nil }, "every slot runs again")
        #expect(h.spawns.count == 200 * 7)
    }

    /// Every worker of a large app killed at once, then replaced: each exit and
    /// each restart tick costs the same few visits whatever the size. Prints the
    /// wall time per event (a debug build; for comparison between sizes only).
    @Test(arguments: [512, 4096])
    func aKillStormCostsTheSamePerWorker(n: Int) {
        let h = fleet(n)
        var worstExit = 0
        let clock = ContinuousClock()
        let t0 = clock.now
        for k in 0..<n {
            h.exit(h.pid("web", k), .signaled(9, coreDumped: false))
            worstExit = max(worstExit, peak(h))
        }
        let exits = clock.now - t0
        let t1 = clock.now
        h.advance(by: .milliseconds(100))
        let restarts = clock.now - t1
        #expect(h.spawns.count == 2 * n)
        #expect(h.largestSpawnBatch <= Supervisor().spawnBatch)
        #expect(worstExit <= 8, "an exit visited \(worstExit)")
        #expect(h.sup.invariantViolations() == [])
        let perExit = exits / n, perRestart = restarts / n
        print("kill storm of \(n): \(perExit) per exit (worst \(worstExit) visits), \(perRestart) per restart")
    }

    @Test func aTickHandlesAtMostDueBatchDeadlinesAndTheNextTicksTheRest() {
        let h = FakeShell()
        h.checkEveryEvent = false
        h.start(makeSpec(workers: 1000) {
            $0.sockets = [SocketSpec(name: "http", listen: .tcp(host: "127.0.0.1", port: 8080))]
            $0.ready.mode = .listening
        })
        // Spawned at one instant: their first listening probes are due together.
        let first = h.sup.deadlines.min.map { $0.priority.time }
        #expect(first != nil)
        let before = h.probes.count
        if let first { h.advance(to: first) }
        let probed = h.probes[before...]
        #expect(probed.count == 1000, "every worker probed once: \(probed.count)")
        #expect(Set(probed.map(\.at)).count == 1, "all at the instant they were due (the later ticks fire at once)")
        #expect(h.visitsPerHandle.count >= 1000 / h.sup.dueBatch, "handles in that send: \(h.visitsPerHandle.count)")
        #expect(h.visitsPerHandle.max() ?? 0 <= 2 * h.sup.dueBatch + 16, "visits per handle (two per due worker): \(h.visitsPerHandle)")
        #expect(h.sup.invariantViolations() == [])
    }
}
