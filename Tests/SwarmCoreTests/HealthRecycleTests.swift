import Testing
@testable import SwarmCore

/// A reuseport app with no probe and no hang watch unless `configure` adds them.
private func recycleSpec(workers: Int = 2, _ configure: (inout AppSpec) -> Void = { _ in }) -> AppSpec {
    makeSpec("web", workers: workers) { s in
        s.sockets = [SocketSpec(name: "http", listen: .tcp(host: "127.0.0.1", port: 8080))]
        s.health.stuckAfter = .zero
        configure(&s)
    }
}

private let mib: Int64 = 1 << 20

extension FakeShell {
    func countRequests(since from: Int = 0) -> [Instant] {
        healthActions.dropFirst(from).compactMap { if case .countConnections = $0.action { return $0.at } else { return nil } }
    }
}

/// `[limits] memory` and `[recycle] max_connections` through the start-first path,
/// `[ready] mode` probes, and the health book across a snapshot (re-exec).
@Suite struct HealthRecycleTests {
    // MARK: Memory ceiling

    @Test func aReadyWorkerOverItsMemoryCeilingIsReplacedStartFirst() {
        let h = FakeShell()
        h.startReady(recycleSpec { $0.memoryLimit = 400 * mib })
        h.readyFloor["web"] = 2
        let old = h.pid("web", 0)
        let sibling = h.pid("web", 1)
        h.send(.memory(pid: old!, bytes: 512 * mib))
        let replacement = h.incoming("web", 0)
        #expect(replacement != nil, "the replacement starts at once")
        #expect(!h.signalled(old), "the old worker serves until its replacement is ready")
        #expect(h.lastSteer() == [0, 1])
        #expect(h.sup.slotHealth("web", 0)?.state == "recycling")
        h.ready(replacement?.pid)
        #expect(h.pid("web", 0) == replacement?.pid)
        #expect(h.signals(to: old).map(\.signal) == [.term, .cont])
        #expect(h.slot("web", 0)?.lastFailure == "replaced: recycled (memory 512 MiB > 400 MiB)")
        #expect(h.sup.workers.values.first { $0.pid == old }?.stopReason == .memory)
        #expect(!h.signalled(sibling))
        h.exitRetiring()
        #expect(h.pid("web", 1) == sibling)
    }

    @Test func neverTwoSlotsAtOnceForMemory() {
        let h = FakeShell()
        h.startReady(recycleSpec(workers: 3) { $0.memoryLimit = 400 * mib })
        h.readyFloor["web"] = 3
        let pids = (0..<3).map { h.pid("web", $0)! }
        for pid in pids { h.send(.memory(pid: pid, bytes: 500 * mib)) }
        #expect((0..<3).compactMap { h.incoming("web", $0) }.count == 1)
        #expect(h.incoming("web", 0) != nil)
        #expect(h.noted("serves on until it can be replaced start-first"))
        h.ready(h.incomingPid("web", 0))
        h.exitRetiring()
        // The next memory sample of a waiting worker starts its turn.
        h.send(.memory(pid: pids[1], bytes: 500 * mib))
        #expect(h.incoming("web", 1) != nil)
        #expect(h.incoming("web", 2) == nil)
        h.ready(h.incomingPid("web", 1))
        h.exitRetiring()
        h.send(.memory(pid: pids[2], bytes: 500 * mib))
        h.ready(h.incomingPid("web", 2))
        h.exitRetiring()
        #expect((0..<3).allSatisfy { h.pid("web", $0) != pids[$0] })
    }

    @Test func overTheCeilingWhileASlotIsDownItWaitsInsteadOfDroppingCapacity() {
        let h = FakeShell()
        h.startReady(recycleSpec { s in
            s.memoryLimit = 400 * mib
            s.restart.initialDelay = .seconds(30)
        })
        h.exit(h.pid("web", 1))
        let old = h.pid("web", 0)
        h.send(.memory(pid: old!, bytes: 600 * mib))
        #expect(h.incoming("web", 0) == nil)
        #expect(!h.signalled(old), "stopping it would leave no ready worker")
        h.advance(by: .seconds(30))
        h.readyAll()
        h.send(.memory(pid: old!, bytes: 600 * mib))
        #expect(h.incoming("web", 0) != nil)
    }

    @Test func aStartingWorkerOverTheCeilingIsStoppedFirstAsBefore() {
        let h = FakeShell()
        _ = h.start(recycleSpec(workers: 1) { s in
            s.memoryLimit = 400 * mib
            s.ready.mode = .notify
        })
        let pid = h.workers(of: "web").first?.pid
        h.send(.memory(pid: pid!, bytes: 600 * mib))
        #expect(h.signals(to: pid).map(\.signal).first == .term)
        #expect(h.sup.workers.values.first { $0.pid == pid }?.stopReason == .memory)
    }

    // MARK: max_connections

    @Test func connectionsAreCountedPerWorkerAndPastTheLimitRecycleOneSlot() {
        let h = FakeShell()
        h.startReady(recycleSpec { $0.recycle.maxConnections = 100 })
        h.readyFloor["web"] = 2
        let before = h.healthActions.count
        h.advance(by: .seconds(3))
        #expect(h.countRequests(since: before).count == 3, "the counters are read once a second")
        h.send(.health(.connections(app: "web", [0: 60, 1: 99])))
        #expect(h.incoming("web", 0) == nil && h.incoming("web", 1) == nil)
        #expect(h.sup.slotHealth("web", 1)?.connections == 99)
        h.send(.health(.connections(app: "web", [0: 50, 1: 5])))
        // Both are past it; one at a time, the fuller one's turn comes with the next count.
        #expect([h.incoming("web", 0), h.incoming("web", 1)].compactMap { $0 }.count == 1)
        let k = h.incoming("web", 0) != nil ? 0 : 1
        let old = h.pid("web", k)
        h.ready(h.incomingPid("web", k))
        h.exitRetiring()
        #expect(h.slot("web", k)?.lastFailure?.hasPrefix("replaced: recycled (connections ") == true)
        #expect(h.sup.workers.values.allSatisfy { $0.pid != old })
        // The new worker counts from zero.
        #expect(h.sup.slotHealth("web", k)?.connections ?? 0 == 0)
        h.send(.health(.connections(app: "web", [0: 1, 1: 1])))
        #expect(h.incoming("web", 1 - k) != nil)
        #expect(h.incoming("web", k) == nil)
    }

    @Test func connectionsOfAnAppWithoutALimitAreNotAskedFor() {
        let h = FakeShell()
        h.startReady(recycleSpec())
        let before = h.healthActions.count
        h.advance(by: .seconds(5))
        #expect(h.countRequests(since: before).isEmpty)
    }

    // MARK: [ready] mode = http / tcp / exec

    @Test(arguments: [ReadyMode.http, .tcp, .exec])
    func aStartingWorkerIsReadyWhenItsProbeFirstPasses(mode: ReadyMode) {
        let h = FakeShell()
        let check: HealthCheck = switch mode {
        case .http: .http(path: "/healthz", host: nil, expect: 200...399)
        case .tcp: .tcp
        default: .exec(["/bin/true"])
        }
        let r = h.start(recycleSpec(workers: 1) { s in
            s.ready.mode = mode
            s.ready.timeout = .seconds(5)
            s.health.check = check
            s.health.interval = .seconds(2)
            s.health.timeout = .milliseconds(100)
        })
        let w = h.workers(of: "web").first
        let readiness = { h.probes().filter { $0.readiness } }
        #expect(readiness().count == 1, "probed at once")
        #expect(readiness().first?.check == check)
        h.send(.health(.probeResult(w!.id, ok: false, detail: "refused")))
        #expect(h.readyCount() == 0)
        #expect(h.sup.slotHealth("web", 0)?.failures ?? 0 == 0, "readiness failures are not health failures")
        h.advance(by: .milliseconds(250))
        #expect(readiness().count == 2, "again every min(interval, 250 ms)")
        h.send(.health(.probeResult(w!.id, ok: true, detail: "200")))
        #expect(h.readyCount() == 1)
        #expect(h.succeeded(r))
        h.advance(by: .seconds(1))
        #expect(readiness().count == 2, "no readiness probe once ready")
    }

    @Test func aWorkerWhoseReadinessProbeNeverPassesTimesOut() {
        let h = FakeShell()
        _ = h.start(recycleSpec(workers: 1) { s in
            s.ready.mode = .http
            s.ready.timeout = .seconds(2)
            s.health.check = .http(path: "/healthz", host: nil, expect: 200...399)
        })
        let pid = h.workers(of: "web").first?.pid
        h.advance(by: .seconds(2))
        #expect(h.signals(to: pid).first?.signal == .term)
        #expect(h.noted("was not ready within 2s (ready mode http)"))
    }

    // MARK: Across a re-exec

    @Test func failureCountsLastProbeAndTheHangWatchSurviveASnapshot() throws {
        let h = FakeShell()
        h.startReady(recycleSpec { s in
            s.health.check = .http(path: "/healthz", host: nil, expect: 200...399)
            s.health.interval = .seconds(1)
            s.health.timeout = .milliseconds(500)
            s.health.failures = 3
            s.health.stuckAfter = .seconds(10)
        })
        let id0 = try #require(h.slot("web", 0)?.current)
        for _ in 0..<2 {
            h.advance(by: .seconds(1))
            h.send(.health(.probeResult(id0, ok: false, detail: "503")))
        }
        h.send(.health(.acceptQueues(app: "web", [1: 4])))
        let queueSince = h.sup.slotHealth("web", 1)?.queueSince
        #expect(queueSince != nil)
        let snap = try #require(h.sup.snapshot())
        var restored = Supervisor(restoring: snap)
        #expect(restored.slotHealth("web", 0)?.failures == 2)
        #expect(restored.slotHealth("web", 0)?.lastResult == "http 503")
        #expect(restored.slotHealth("web", 1)?.queueSince == queueSince)
        // The probe that was out is not awaited: the restored core asks again.
        let t = h.now + .seconds(1)
        let out = restored.handle(.tick, now: t)
        _ = out
        let later = restored.handle(.tick, now: t + .seconds(1))
        #expect(later.contains { if case .health(.probe) = $0 { return true } else { return false } })
        let verdict = restored.handle(.health(.probeResult(id0, ok: false, detail: "503")), now: t + .seconds(1))
        #expect(restored.slotHealth("web", 0)?.state == "unhealthy", "the third failure in a row, counted across the re-exec")
        #expect(verdict.contains { if case let .steer(_, slots) = $0 { return slots == [1] } else { return false } })
        // Ten seconds after the first sample, counted before the re-exec, slot 1 is hung.
        _ = restored.handle(.health(.acceptQueues(app: "web", [1: 4])), now: queueSince! + .seconds(10))
        #expect(restored.slotHealth("web", 1)?.state == "hung")
        #expect(restored.invariantViolations().isEmpty)
    }

    @Test func aSnapshotFromBeforeTheHealthBookRestoresWithNone() throws {
        let h = FakeShell()
        h.startReady(recycleSpec { $0.health.check = .tcp })
        h.advance(by: .seconds(5))
        h.send(.health(.probeResult(h.slot("web", 0)!.current!, ok: false, detail: "refused")))
        var snap = try #require(h.sup.snapshot())
        snap.health = nil
        let restored = Supervisor(restoring: snap)
        #expect(restored.slotHealth("web", 0) == nil)
        #expect(restored.invariantViolations().isEmpty)
    }
}
