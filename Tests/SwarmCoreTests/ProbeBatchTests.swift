import Testing
@testable import SwarmCore

/// HealthTests' app (an http probe every second, 3 failures) without hang detection.
private func probedSpec(workers: Int) -> AppSpec {
    healthSpec(workers: workers) { $0.health.stuckAfter = .zero }
}

/// What status shows of every slot's health.
private func book(_ h: FakeShell, _ n: Int) -> [String] {
    (0..<n).map { k in
        let s = h.sup.slotHealth("web", k)
        return "\(k): \(s?.state ?? "-") \(s?.lastResult ?? "-") \(s?.failures ?? -1)"
    }
}

@Suite struct ProbeBatchTests {
    /// Slot 1 fails its probes; the others pass.
    func outcomes(_ h: FakeShell, _ n: Int) -> [ProbeOutcome] {
        (0..<n).map { k in
            let id = h.slot("web", k)!.current!
            return k == 1 ? ProbeOutcome(worker: id, ok: false, detail: "503") : ProbeOutcome(worker: id, ok: true, detail: "200")
        }
    }

    @Test func aRoundOfResultsInOneEventDecidesWhatTheSeparateResultsDecide() {
        let n = 5
        let one = FakeShell(), batched = FakeShell()
        for h in [one, batched] {
            h.startReady(probedSpec(workers: n))
            h.readyFloor["web"] = n - 1
        }
        for round in 1...3 {
            for h in [one, batched] { h.advance(by: .seconds(1)) }
            for o in outcomes(one, n) { one.send(.health(.probeResult(o.worker, ok: o.ok, detail: o.detail))) }
            let steersBefore = batched.steers.count
            batched.send(.health(.probeResults(outcomes(batched, n))))
            // One handle for the whole round.
            #expect(batched.visitsPerHandle.count == 1)
            #expect(batched.visitsPerHandle.first.map { $0 <= 3 * n } == true, "visits \(batched.visitsPerHandle)")
            #expect(book(batched, n) == book(one, n), "round \(round)")
            // The third failure takes slot 1 out of the steering set within the batch's event: one steer.
            #expect(batched.steers.count == steersBefore + (round == 3 ? 1 : 0))
        }
        #expect(batched.sup.slotHealth("web", 1)?.state == "unhealthy")
        #expect(batched.lastSteer() == [0, 2, 3, 4])
        #expect(batched.noted("is unhealthy (http 503 ×3)"))
        #expect(book(batched, n) == book(one, n))
    }

    @Test func aBatchSkipsResultsOfWorkersThatAreGoneOrNotCurrent() {
        let h = FakeShell()
        h.startReady(probedSpec(workers: 2))
        h.advance(by: .seconds(1))
        let id0 = h.slot("web", 0)!.current!
        let id1 = h.slot("web", 1)!.current!
        h.exit(h.pid("web", 1))
        h.send(.health(.probeResults([
            ProbeOutcome(worker: WorkerID(999), ok: false, detail: "503"),
            ProbeOutcome(worker: id1, ok: false, detail: "503"),
            ProbeOutcome(worker: id0, ok: true, detail: "200"),
        ])))
        #expect(h.sup.slotHealth("web", 0)?.lastResult == "http 200")
        #expect(h.sup.slotHealth("web", 1) == nil)
        #expect(!h.noted("failed its http probe"))
    }

    @Test func aBatchOfAReadinessPassMakesTheStartingWorkerReady() {
        let h = FakeShell()
        var spec = probedSpec(workers: 1)
        spec.ready.mode = .http
        h.start(spec)
        h.advance(by: .milliseconds(250))
        let id = h.slot("web", 0)!.current!
        #expect(h.current("web", 0)?.isReady == false)
        h.send(.health(.probeResults([ProbeOutcome(worker: id, ok: true, detail: "200")])))
        #expect(h.current("web", 0)?.isReady == true)
    }
}

/// The shell's probe timer: one wake-up at the earliest deadline of the probes out, none without.
@Suite struct ProbeDeadlinesTests {
    @Test func noProbeOutNoWakeUp() {
        var d = ProbeDeadlines()
        #expect(d.next == nil)
        #expect(d.due(at: at(.seconds(100))).isEmpty)
        d.add(WorkerID(1), at: at(.seconds(1)))
        d.remove(WorkerID(1))
        #expect(d.next == nil)
        #expect(d.isEmpty)
    }

    @Test func theNextWakeUpIsExactlyTheEarliestDeadline() {
        var d = ProbeDeadlines()
        d.add(WorkerID(1), at: at(.milliseconds(1500)))
        #expect(d.next == at(.milliseconds(1500)))
        d.add(WorkerID(2), at: at(.milliseconds(1200)))
        d.add(WorkerID(3), at: at(.milliseconds(1700)))
        #expect(d.next == at(.milliseconds(1200)))
        // The earliest probe answered: the timer moves to the next deadline, not a tick later.
        d.remove(WorkerID(2))
        #expect(d.next == at(.milliseconds(1500)))
        // Nothing is due a nanosecond early.
        #expect(d.due(at: at(.milliseconds(1500)) + .nanoseconds(-1)).isEmpty)
        #expect(d.due(at: at(.milliseconds(1500))) == [WorkerID(1)])
        #expect(d.next == at(.milliseconds(1700)))
        #expect(d.due(at: at(.seconds(10))) == [WorkerID(3)])
        #expect(d.next == nil)
    }

    @Test func equalDeadlinesExpireTogetherInTheOrderTheyWereSent() {
        var d = ProbeDeadlines()
        for raw in [5, 3, 9, 1] as [UInt64] { d.add(WorkerID(raw), at: at(.milliseconds(500))) }
        d.add(WorkerID(7), at: at(.milliseconds(400)))
        #expect(d.count == 5)
        #expect(d.due(at: at(.milliseconds(600))) == [WorkerID(7), WorkerID(5), WorkerID(3), WorkerID(9), WorkerID(1)])
        #expect(d.next == nil)
    }

    @Test func aNewProbeOfTheSameWorkerReplacesItsDeadline() {
        var d = ProbeDeadlines()
        d.add(WorkerID(1), at: at(.seconds(1)))
        d.add(WorkerID(1), at: at(.seconds(3)))
        #expect(d.count == 1)
        #expect(d.next == at(.seconds(3)))
        #expect(d.deadline(of: WorkerID(1)) == at(.seconds(3)))
    }
}
