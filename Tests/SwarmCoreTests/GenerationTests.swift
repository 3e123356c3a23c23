import Testing
@testable import SwarmCore

/// How generations are numbered: what a reload reports is what status shows
/// afterwards, and each successful reload is the previous number plus one.
/// Drives a rolling reload of "web" to its end: every new worker becomes
/// ready, every old one exits (bounded: a reload that never ends fails the test).
func completeReload(_ h: FakeShell, sourceLocation: SourceLocation = #_sourceLocation) {
    for _ in 0..<1000 {
        let slots = h.app()?.slots.count ?? 0
        for k in 0..<slots {
            if let p = h.incomingPid("web", k) { h.ready(p, sourceLocation: sourceLocation) }
        }
        h.readyAll(sourceLocation: sourceLocation)
        h.exitRetiring(sourceLocation: sourceLocation)
        if h.app()?.reload == nil && h.workers(of: "web").allSatisfy({ $0.isReady }) { return }
    }
    Issue.record("the reload did not finish", sourceLocation: sourceLocation)
}

@Suite("Generation numbering")
struct GenerationTests {
    /// Reloads one after the other, each waited for: 1 → 2 → 3, the reply, the
    /// progress, the app and every worker agree on the number.
    @Test func consecutiveReloadsCountUpByOne() {
        let (h, _) = runningApp(workers: 3)
        for expected in 2...4 {
            let r = h.command(.reloadSpecs([v2()]))
            #expect(h.progress[r]?.first?.generation == expected)
            completeReload(h)
            #expect(h.reply(r) == .success("web: reloaded 3 workers to generation \(expected)"))
            #expect(h.app()?.generation == expected, "status shows the generation the reload reported")
            #expect(h.workers(of: "web").allSatisfy { $0.generation == expected })
            #expect(h.app()?.specs.keys.sorted() == [expected])
        }
    }

    /// The reply comes once the old workers are gone; a reload asked for right
    /// after it (as `swarmctl reload` twice in a row does) is the next number.
    @Test func reloadRightAfterTheReplyIsTheNextNumber() {
        let (h, _) = runningApp(workers: 3)
        let first = h.command(.reloadSpecs([v2()]))
        completeReload(h)
        #expect(h.succeeded(first))
        let second = h.command(.reloadSpecs([v2()]))
        #expect(h.progress[second]?.first?.message.contains("generation 2 → 3") == true)
        completeReload(h)
        #expect(h.reply(second) == .success("web: reloaded 3 workers to generation 3"))
        #expect(h.app()?.generation == 3)
    }

    /// A number is never used twice, not even the number of a rolled-back
    /// reload whose workers are all gone: logs, progress lines and
    /// SWARM_GENERATION of the failed workers keep meaning one config.
    @Test func rolledBackReloadUsesUpItsNumber() {
        let (h, _) = runningApp(workers: 3)
        let bad = h.command(.reloadSpecs([v2()]))
        h.exit(h.incomingPid("web", 0))
        #expect(h.failure(bad) != nil)
        h.exitRetiring()
        #expect(h.app()?.generation == 1)
        let good = h.command(.reloadSpecs([v2()]))
        #expect(h.progress[good]?.first?.message.contains("generation 1 → 3") == true)
        completeReload(h)
        #expect(h.reply(good) == .success("web: reloaded 3 workers to generation 3"))
        #expect(h.app()?.generation == 3)
    }

    /// Reloading a stopped app takes the config at once: that is a generation too,
    /// and the start after it runs that number.
    @Test func reloadOfAStoppedAppIsOneGeneration() {
        let (h, _) = runningApp(workers: 2)
        h.readyFloor["web"] = nil
        h.command(.stop(.app("web")))
        h.exitRetiring()
        let r = h.command(.reloadSpecs([v2(workers: 2)]))
        #expect(h.succeeded(r))
        #expect(h.app()?.generation == 2)
        h.command(.resume(.app("web")))
        h.readyAll()
        #expect(h.workers(of: "web").allSatisfy { $0.generation == 2 })
        let next = h.command(.reloadSpecs([v2(workers: 2)]))
        completeReload(h)
        #expect(h.reply(next) == .success("web: reloaded 2 workers to generation 3"))
        #expect(h.app()?.generation == 3)
    }

    /// A reload the core refuses (in progress, bad request) takes no number.
    @Test func refusedReloadTakesNoNumber() {
        let (h, _) = runningApp(workers: 2)
        let first = h.command(.reloadSpecs([v2(workers: 2)]))
        let refused = h.command(.reloadSpecs([v2(workers: 2)]))
        #expect(h.failure(refused) != nil)
        completeReload(h)
        #expect(h.reply(first) == .success("web: reloaded 2 workers to generation 2"))
        let next = h.command(.reloadSpecs([v2(workers: 2)]))
        completeReload(h)
        #expect(h.reply(next) == .success("web: reloaded 2 workers to generation 3"))
        #expect(h.app()?.generation == 3)
    }

    /// start --replace is a new generation, numbered after the running one.
    @Test func replaceIsTheNextNumber() {
        let (h, _) = runningApp(workers: 2)
        let r = h.command(.reloadSpecs([v2(workers: 2)]))
        completeReload(h)
        #expect(h.succeeded(r))
        h.readyFloor["web"] = nil  // a replace stops every old worker at once
        h.start(v2(workers: 2), replace: true)
        completeReload(h)
        #expect(h.app()?.generation == 3)
        #expect(h.workers(of: "web").allSatisfy { $0.generation == 3 })
    }
}
