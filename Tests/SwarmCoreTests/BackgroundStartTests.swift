import Foundation
import Testing
@testable import SwarmCore

/// `[reload] background_start`: which new workers start at nice 19, and the
/// starvation guard that gives a niced worker its priority back when it is not
/// ready within `Supervisor.backgroundStartLimit` (on a saturated machine a
/// nice-19 worker may never reach listen() before its readiness timeout).
@Suite struct BackgroundStartTests {
    /// A shell that may raise priority (root), an app of `workers` ready workers.
    func started(workers: Int = 2, _ configure: @escaping (inout AppSpec) -> Void = { _ in }) -> FakeShell {
        let h = FakeShell()
        h.sup.canRaisePriority = true
        h.startReady(makeSpec(workers: workers, configure))
        return h
    }

    @Test func theLimitIsTwoSecondsAtMostAQuarterOfTheReadyTimeout() {
        #expect(Supervisor.backgroundStartLimit(readyTimeout: .seconds(30)) == .seconds(2))
        #expect(Supervisor.backgroundStartLimit(readyTimeout: .seconds(8)) == .seconds(2))
        #expect(Supervisor.backgroundStartLimit(readyTimeout: .seconds(4)) == .seconds(1))
        #expect(Supervisor.backgroundStartLimit(readyTimeout: .milliseconds(200)) == .milliseconds(50))
    }

    @Test func aNicedWorkerNotReadyGetsItsPriorityBackAtTheLimitNotBeforeAndOnce() {
        let h = started()
        h.command(.reloadSpecs([v2(workers: 2)]))
        let spawnedAt = h.now
        let pid = h.incomingPid("web", 0)
        #expect(h.spawnRequests.last?.nice == 19)
        h.advance(to: spawnedAt + .milliseconds(1999))
        #expect(h.restoredPriorities.isEmpty, "not before the limit")
        h.advance(to: spawnedAt + .seconds(2))
        #expect(h.restoredPriorities == [pid!], "at the limit")
        #expect(h.noted("not ready 2s after its background start"))
        h.advance(by: .seconds(5))
        h.ready(pid)
        #expect(h.restoredPriorities == [pid!], "readiness does not restore it again")
        #expect(h.incoming("web", 1)?.pid != nil)
        h.ready(h.incomingPid("web", 1))
        h.exitRetiring()
        #expect(h.restoredPriorities.count == 2, "the second worker, ready at once, by readiness only")
        #expect(h.app()?.lastReload?.succeeded == true)
    }

    @Test func aWorkerReadyBeforeTheLimitIsRestoredOnceByReadiness() {
        let h = started(workers: 1)
        h.command(.reloadSpecs([v2(workers: 1)]))
        let pid = h.incomingPid("web", 0)
        h.advance(by: .milliseconds(500))
        h.ready(pid)
        #expect(h.restoredPriorities == [pid!])
        h.advance(by: .seconds(10))
        #expect(h.restoredPriorities == [pid!], "the limit no longer applies once ready")
    }

    @Test func theLimitFollowsAShortReadyTimeout() {
        let h = started(workers: 1)
        h.command(.reloadSpecs([v2(workers: 1) { $0.ready.timeout = .seconds(2) }]))
        let start = h.now
        let pid = h.incomingPid("web", 0)
        h.advance(to: start + .milliseconds(499))
        #expect(h.restoredPriorities.isEmpty)
        h.advance(to: start + .milliseconds(500))
        #expect(h.restoredPriorities == [pid!])
        // Then the readiness timeout as usual: the reload rolls back, nothing restored twice.
        h.advance(by: .seconds(2))
        #expect(h.app()?.lastReload?.succeeded == false)
        #expect(h.restoredPriorities == [pid!])
    }

    @Test func aWorkerThatExitsBeforeTheLimitLeavesNoDeadline() {
        let h = started(workers: 1)
        h.command(.reloadSpecs([v2(workers: 1)]))
        let pid = h.incomingPid("web", 0)
        h.advance(by: .milliseconds(300))
        h.exit(pid)
        h.advance(by: .seconds(5))
        #expect(h.restoredPriorities.isEmpty, "a gone worker's group is not reniced")
    }

    @Test func noGuardWithoutBackgroundStart() {
        let h = started(workers: 1)
        h.command(.reloadSpecs([v2(workers: 1) { $0.reload.backgroundStart = false }]))
        #expect(h.incoming("web", 0)?.state.priorityDeadline == nil)
        h.advance(by: .seconds(5))
        #expect(h.restoredPriorities.isEmpty)
        let first = FakeShell()
        first.sup.canRaisePriority = true
        first.start(makeSpec(workers: 1))
        #expect(first.spawnRequests.last?.nice == nil, "a first start is not backgrounded")
        first.advance(by: .seconds(5))
        #expect(first.restoredPriorities.isEmpty)
    }

    @Test func aRecyclingReplacementStartsInTheBackgroundUnderTheSameGuard() throws {
        let h = started(workers: 2) { s in
            s.sockets = [SocketSpec(name: "http", listen: .tcp(host: "127.0.0.1", port: 8080))]
            s.health.stuckAfter = .zero
            s.recycle.maxAge = .seconds(10)
            s.recycle.jitter = .zero
        }
        h.readyFloor["web"] = 2
        var replacement: Worker?
        for _ in 0..<20 where replacement == nil {
            h.advance(by: .milliseconds(500))
            replacement = h.incoming("web", 0) ?? h.incoming("web", 1)
        }
        let r = try #require(replacement)
        #expect(h.spawnRequests.last?.nice == 19, "the old worker serves on: the replacement starts in the background")
        let spawnedAt = h.now
        h.advance(to: spawnedAt + .milliseconds(1999))
        #expect(h.restoredPriorities.isEmpty)
        h.advance(to: spawnedAt + .seconds(2))
        #expect(h.restoredPriorities == [r.pid!])
        h.ready(r.pid)
        #expect(h.restoredPriorities == [r.pid!])
        #expect(h.pid("web", r.slot) == r.pid)
    }

    @Test func aMemoryRecycleStartsInTheBackground() {
        let h = started(workers: 2) { s in
            s.sockets = [SocketSpec(name: "http", listen: .tcp(host: "127.0.0.1", port: 8080))]
            s.health.stuckAfter = .zero
            s.memoryLimit = 400 << 20
        }
        h.send(.memory(pid: h.pid("web", 1)!, bytes: 500 << 20))
        let pid = h.incomingPid("web", 1)
        #expect(pid != nil && h.spawnRequests.last?.nice == 19)
        h.ready(pid)
        #expect(h.restoredPriorities == [pid!])
    }

    @Test func theReplacementOfAnUnhealthyWorkerStartsAtFullPriority() throws {
        let h = started(workers: 2) { s in
            s.sockets = [SocketSpec(name: "http", listen: .tcp(host: "127.0.0.1", port: 8080))]
            s.health.check = .http(path: "/healthz", host: nil, expect: 200...399)
            s.health.interval = .seconds(1)
            s.health.failures = 1
            s.health.stuckAfter = .zero
            s.restart.initialDelay = .zero
        }
        h.advance(by: .seconds(1))
        h.answerProbe(0, ok: false, "503")
        h.advance(by: .milliseconds(500))  // the slot's backoff delay, if any
        let replacement = try #require(h.incoming("web", 0))
        #expect(h.spawnRequests.last?.worker == replacement.id)
        #expect(h.spawnRequests.last?.nice == nil, "its slot is out of the steering set: the clients queued there wait for it")
        h.advance(by: .seconds(5))
        #expect(h.restoredPriorities.isEmpty)
    }

    @Test func theGuardSurvivesASnapshot() throws {
        let h = started(workers: 1)
        h.command(.reloadSpecs([v2(workers: 1)]))
        let w = try #require(h.incoming("web", 0))
        #expect(w.state.priorityDeadline == h.now + .seconds(2))
        let data = try JSONEncoder().encode(w)
        let back = try JSONDecoder().decode(Worker.self, from: data)
        #expect(back.state == w.state && back.niced)
    }

    @Test func aStartingStateWrittenBeforeTheGuardDecodes() throws {
        // A snapshot of a swarmd from before `priorityAt`: its starting workers have none.
        let json = #"{"starting":{"readyBy":{"nanoseconds":5},"probeAt":{"nanoseconds":2}}}"#
        let state = try JSONDecoder().decode(WorkerState.self, from: Data(json.utf8))
        #expect(state == .starting(readyBy: Instant(nanoseconds: 5), probeAt: Instant(nanoseconds: 2), delayReadyAt: nil,
                                   memoryAt: nil, priorityAt: nil))
    }

    /// The guard is a deadline like any other: a fleet reloading with many
    /// niced workers starting costs the same few visits per event.
    @Test func theGuardIsADeadlineNotAScan() {
        func peakAtTheLimit(_ n: Int) -> Int {
            let h = FakeShell()
            h.checkEveryEvent = false
            h.sup.canRaisePriority = true
            h.startReady(makeSpec(workers: n))
            h.command(.reloadSpecs([v2(workers: n, surge: 4)]))
            let spawnedAt = h.now
            h.advance(to: spawnedAt + .seconds(2))
            #expect(h.restoredPriorities.count == 4)
            return h.visitsPerHandle.max() ?? 0
        }
        let small = peakAtTheLimit(8)
        let large = peakAtTheLimit(2048)
        #expect(small == large, "8 workers: \(small) visits; 2048 workers: \(large)")
        #expect(large <= 16)
    }
}

extension WorkerState {
    /// When a starting worker gets its priority back, if it waits for that.
    var priorityDeadline: Instant? {
        if case let .starting(_, _, _, _, priorityAt) = self { return priorityAt } else { return nil }
    }
}
