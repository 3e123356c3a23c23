import Testing
@testable import SwarmCore

@Suite("Waiters: when commands are answered")
struct WaiterTests {
    @Test func stopAllListsEveryApp() {
        let h = FakeShell()
        h.startReady(makeSpec("web", workers: 1))
        h.startReady(makeSpec("api", workers: 1))
        let r = h.command(.stop(.all))
        h.exitRetiring("web")
        #expect(h.reply(r) == nil)
        h.exitRetiring("api")
        #expect(h.reply(r) == .success("web: stopped\napi: stopped"))
    }

    @Test func stopAllWithNoAppsAnswersAtOnce() {
        let h = FakeShell()
        #expect(h.reply(h.command(.stop(.all))) == .success("no apps"))
    }

    @Test func startInterruptedByStop() {
        let h = FakeShell()
        let start = h.start(makeSpec(workers: 2))
        h.ready(h.pid("web", 0))
        let stop = h.command(.stop(.app("web")))
        #expect(h.failure(start) == .interrupted("web was stopped before its workers were ready"))
        h.exitRetiring()
        #expect(h.succeeded(stop))
    }

    @Test func startInterruptedByDelete() {
        let h = FakeShell()
        let start = h.start(makeSpec(workers: 1))
        h.command(.delete(.app("web")))
        #expect(h.failure(start) == .interrupted("web was deleted before its workers were ready"))
    }

    @Test func aStartFailureCountsOnlyFailuresSinceTheRequest() {
        let h = FakeShell()
        h.start(makeSpec(workers: 1))
        h.exit(h.pid("web", 0), .exited(1))  // the start fails
        h.advance(by: .milliseconds(100))
        h.ready(h.pid("web", 0))
        let r = h.command(.restart(.app("web")))
        h.readyAll()
        #expect(h.reply(r) == .success("web: restarted, 1/1 workers ready"), "the old failure does not fail the restart")
    }

    @Test func aStartWaitsForScaleDownToFinish() {
        let h = FakeShell()
        h.startReady(makeSpec(workers: 2))
        h.command(.scale("web", 1))
        let r = h.command(.resume(.app("web")))
        #expect(h.reply(r) == nil, "slot 1 is still being removed")
        h.exitRetiring()
        #expect(h.reply(r) == .success("web: started, 1/1 workers ready"))
    }
}
