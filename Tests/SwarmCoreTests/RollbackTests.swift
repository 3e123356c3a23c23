import Testing
@testable import SwarmCore

/// A reload of `spec` with the digest the shell would have computed.
func reloadWith(_ spec: AppSpec, digest: String) -> Command {
    .reload([ReloadRequest(app: spec.name, spec: spec, digest: digest)])
}

func version(_ v: String, workers: Int = 3) -> AppSpec {
    makeSpec(workers: workers) {
        $0.env["VERSION"] = v
        $0.reload.surge = 1
    }
}

extension FakeShell {
    /// Reloads to `spec` and makes every new worker ready, one at a time, and the old ones exit.
    func reloadReady(_ spec: AppSpec, digest: String, sourceLocation: SourceLocation = #_sourceLocation) {
        let r = command(reloadWith(spec, digest: digest), sourceLocation: sourceLocation)
        finishRollout(r, sourceLocation: sourceLocation)
    }

    func finishRollout(_ r: RequestID, sourceLocation: SourceLocation = #_sourceLocation) {
        var guardrail = 0
        while app()?.reload != nil, guardrail < 100 {
            guardrail += 1
            advance(by: .milliseconds(10), sourceLocation: sourceLocation)
            for k in 0..<(app()?.slots.count ?? 0) { if let p = incomingPid("web", k) { ready(p, sourceLocation: sourceLocation) } }
            readyAll(sourceLocation: sourceLocation)
            exitRetiring(sourceLocation: sourceLocation)
        }
        exitRetiring(sourceLocation: sourceLocation)
        #expect(reply(r) != nil, "the rollout answered", sourceLocation: sourceLocation)
    }

    var history: [GenerationRecord] { app()?.history ?? [] }
    func outcomes() -> [String] { history.map { "\($0.generation) \($0.outcome.rawValue)" } }
}

@Suite("Rollback and generation history")
struct RollbackTests {
    @Test func startRecordsTheFirstGeneration() {
        let h = FakeShell()
        h.send(.command(RequestID(900), .history(app: "web", records: [], digest: "d1")))
        h.startReady(version("1"))
        #expect(h.outcomes() == ["1 running"])
        #expect(h.history.first?.digest == "d1")
        #expect(h.history.first?.spec?.env["VERSION"] == "1")
    }

    @Test func reloadThenRollbackRunsTheOldConfigAgainSlotBySlot() {
        let h = FakeShell()
        h.startReady(version("1"))
        h.readyFloor["web"] = 3
        h.advance(by: .seconds(5))
        h.reloadReady(version("2"), digest: "d2")
        #expect(h.outcomes() == ["1 replaced", "2 running"])
        #expect(h.history.last?.at == at(.seconds(5)), "the time its reload began")
        let v2Pids = (0..<3).map { h.pid("web", $0)! }

        let r = h.command(.rollback("web"))
        #expect(h.app()?.reload != nil, "a rollback is a rolling reload")
        #expect(h.progress[r]?.first?.message.contains("rolling back to the config of generation 1") == true)
        // Readiness-gated like a reload: one new worker, the v2 workers untouched until it is ready.
        #expect((0..<3).filter { h.incoming("web", $0) != nil } == [0])
        #expect(v2Pids.allSatisfy { !h.signalled($0) })
        #expect(h.incoming("web", 0)?.generation == 3, "a new number for the old config")
        #expect(h.sup.spec(of: h.incoming("web", 0)!)?.env["VERSION"] == "1")
        h.finishRollout(r)
        #expect(h.reply(r) == .success("web: rolled back 3 workers to the config of generation 1 (now generation 3)"))
        #expect(h.app()?.generation == 3)
        #expect(h.app()?.spec.env["VERSION"] == "1")
        #expect(h.outcomes() == ["1 replaced", "2 rolled back", "3 running"])
        #expect(h.history.last?.restores == 1)
        #expect(h.history.first(where: { $0.generation == 2 })?.spec == nil, "a rolled-back config is not kept to go back to")
        #expect(v2Pids.allSatisfy { h.signals(to: $0).map(\.signal).first == .term })
    }

    @Test func rollbacksStackLikeUndo() {
        let h = FakeShell()
        h.startReady(version("1"))
        h.reloadReady(version("2"), digest: "d2")
        h.reloadReady(version("3"), digest: "d3")
        let r1 = h.command(.rollback("web"))
        h.finishRollout(r1)
        #expect(h.app()?.spec.env["VERSION"] == "2")
        #expect(h.history.last?.digest == "d2", "the restored generation's digest")
        let r2 = h.command(.rollback("web"))
        h.finishRollout(r2)
        #expect(h.app()?.spec.env["VERSION"] == "1", "the second rollback goes past the generation the first one restored")
        #expect(h.outcomes() == ["1 replaced", "2 replaced", "3 rolled back", "4 rolled back", "5 running"])
        #expect(h.history.last?.restores == 1)
        let r3 = h.command(.rollback("web"))
        guard case let .invalid(msg)? = h.failure(r3) else { Issue.record("expected a refusal, got \(String(describing: h.reply(r3)))"); return }
        #expect(msg.hasPrefix("web: no previous generation to roll back to: generation 5 is in force (it restored generation 1)"), "\(msg)")
    }

    @Test func noPreviousGenerationIsAClearErrorAndChangesNothing() {
        let h = FakeShell()
        h.startReady(version("1"))
        let spawnsBefore = h.spawns(in: "web", slot: 0).count
        let r = h.command(.rollback("web"))
        #expect(h.failure(r) == .invalid("web: no previous generation to roll back to: generation 1 is in force and swarmd keeps no other"))
        #expect(h.app()?.reload == nil)
        #expect(h.spawns(in: "web", slot: 0).count == spawnsBefore)
        #expect(h.failure(h.command(.rollback("nope"))) == .unknownApp("nope"))
    }

    @Test func aFailedReloadIsRecordedAndNeverRolledBackTo() {
        let h = FakeShell()
        h.startReady(version("1"))
        h.readyFloor["web"] = 3
        h.reloadReady(version("2"), digest: "d2")
        let r = h.command(reloadWith(version("broken"), digest: "dx"))
        h.exit(h.incomingPid("web", 0))
        #expect(h.failure(r) != nil)
        h.exitRetiring()
        #expect(h.outcomes() == ["1 replaced", "2 running", "3 failed"])
        #expect(h.history.last?.spec == nil)
        let back = h.command(.rollback("web"))
        h.finishRollout(back)
        #expect(h.app()?.spec.env["VERSION"] == "1", "past the failed generation to the one before the running one")
    }

    @Test func aRollbackWhoseOldConfigNoLongerStartsRollsItselfBack() {
        let h = FakeShell()
        h.startReady(version("1"))
        h.readyFloor["web"] = 3
        h.reloadReady(version("2"), digest: "d2")
        let r = h.command(.rollback("web"))
        h.exit(h.incomingPid("web", 0))
        #expect(h.failure(r) != nil)
        h.exitRetiring()
        #expect(h.app()?.generation == 2)
        #expect(h.app()?.spec.env["VERSION"] == "2")
        #expect(h.outcomes() == ["1 replaced", "2 running", "3 failed"])
        #expect(h.readyCount() == 3)
    }

    @Test func rollbackDuringAReloadIsRefused() {
        let h = FakeShell()
        h.startReady(version("1"))
        h.reloadReady(version("2"), digest: "d2")
        h.command(reloadWith(version("3"), digest: "d3"))
        #expect(h.failure(h.command(.rollback("web"))) == .reloadInProgress("web"))
    }

    @Test func historyIsBoundedAndKeepsTheRunningGeneration() {
        let h = FakeShell()
        h.startReady(version("1"))
        h.readyFloor["web"] = 3
        for i in 2...4 { h.reloadReady(version("\(i)"), digest: "d\(i)") }
        for i in 0..<6 {
            let r = h.command(reloadWith(version("bad\(i)"), digest: "x\(i)"))
            h.exit(h.incomingPid("web", 0))
            #expect(h.failure(r) != nil)
            h.exitRetiring()
        }
        #expect(h.history.count == Supervisor.generationsKept)
        #expect(h.history.filter { $0.outcome == .running }.map(\.generation) == [4])
        #expect(h.history.map(\.generation) == [4, 7, 8, 9, 10])
        // Numbers are never given out again, even of records no longer kept.
        h.reloadReady(version("5"), digest: "d5")
        #expect(h.app()?.generation == 11)
    }

    @Test func aRestartWithTheSameFileKeepsTheNumbersAndCanRollBack() {
        // What a previous swarmd kept, as the shell reads it back.
        let kept = [
            GenerationRecord(generation: 4, at: at(.seconds(1)), outcome: .replaced, digest: "d1", spec: version("1")),
            GenerationRecord(generation: 5, at: at(.seconds(2)), outcome: .running, digest: "d2", spec: version("2")),
        ]
        let h = FakeShell()
        h.send(.command(RequestID(900), .history(app: "web", records: kept, digest: "d2")))
        h.startReady(version("2"))
        #expect(h.app()?.generation == 5, "the file it ran: the same generation")
        #expect(h.outcomes() == ["4 replaced", "5 running"])
        let r = h.command(.rollback("web"))
        h.finishRollout(r)
        #expect(h.app()?.generation == 6)
        #expect(h.app()?.spec.env["VERSION"] == "1")
        #expect(h.outcomes() == ["4 replaced", "5 rolled back", "6 running"])
    }

    @Test func aRestartWithAChangedFileIsANewGeneration() {
        let kept = [
            GenerationRecord(generation: 2, at: at(.seconds(1)), outcome: .replaced, digest: "d1", spec: version("1")),
            GenerationRecord(generation: 3, at: at(.seconds(2)), outcome: .running, digest: "d2", spec: version("2")),
        ]
        let h = FakeShell()
        h.send(.command(RequestID(900), .history(app: "web", records: kept, digest: "d9")))
        h.startReady(version("9"))
        #expect(h.app()?.generation == 4)
        #expect(h.outcomes() == ["2 replaced", "3 replaced", "4 running"])
        #expect(h.history.last?.digest == "d9")
    }

    @Test func historyNotFollowedByAStartIsNotUsedLater() {
        let kept = [GenerationRecord(generation: 7, at: at(.seconds(1)), outcome: .running, digest: "d7", spec: version("7"))]
        let h = FakeShell()
        h.startReady(version("1"))
        // A start refused (the app exists) drops what came with it.
        h.send(.command(RequestID(900), .history(app: "web", records: kept, digest: "d7")))
        #expect(h.failure(h.start(version("7"))) == .appExists("web"))
        h.command(.delete(.app("web")))
        h.exitRetiring()
        for w in h.workers(of: "web") { h.exit(w.pid, .exited(0)) }
        h.startReady(version("1"))
        #expect(h.app()?.generation == 1)
        #expect(h.outcomes() == ["1 running"])
    }

    @Test func aStoppedAppRollsBackItsConfig() {
        let h = FakeShell()
        h.startReady(version("1"))
        h.reloadReady(version("2"), digest: "d2")
        h.command(.stop(.app("web")))
        h.exitRetiring()
        for w in h.workers(of: "web") { h.exit(w.pid, .exited(0)) }
        let r = h.command(.rollback("web"))
        #expect(h.reply(r) == .success("web: rolled back to the config of generation 1 (app is stopped)"))
        #expect(h.app()?.spec.env["VERSION"] == "1")
        #expect(h.outcomes() == ["1 replaced", "2 rolled back", "3 running"])
    }

    @Test func theHistorySurvivesASnapshot() throws {
        let h = FakeShell()
        h.startReady(version("1"))
        h.reloadReady(version("2"), digest: "d2")
        let snap = try #require(h.sup.snapshot())
        let restored = Supervisor(restoring: snap)
        #expect(restored.apps["web"]?.history == h.history)
        #expect(try restored.rollbackTarget("web").get().0.generation == 1)
    }
}
