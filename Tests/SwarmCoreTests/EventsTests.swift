import Testing
@testable import SwarmCore

@Suite("Events")
struct EventsTests {
    @Test func exitStatusDescriptions() {
        #expect(SwarmCore.ExitStatus.exited(3).description == "exited with status 3")
        #expect(SwarmCore.ExitStatus.signaled(9, coreDumped: false).description == "killed by SIGKILL")
        #expect(SwarmCore.ExitStatus.signaled(11, coreDumped: true).description == "killed by signal 11 (core dumped)")
        #expect(SwarmCore.ExitStatus.exited(0).isCleanExit)
        #expect(!SwarmCore.ExitStatus.signaled(15, coreDumped: false).isCleanExit)
    }

    @Test func commandErrorDescriptions() {
        #expect(CommandError.unknownApp("x").description == "no app named 'x'")
        #expect(CommandError.startFailed(app: "web", failed: 1, of: 3, detail: "exited with status 1").description
                == "web: 1 of 3 workers failed to start: exited with status 1")
        #expect(CommandError.reloadFailed(app: "web", reason: "boom", slot: 0, pid: 7).description
                == "web: reload failed and was rolled back: boom")
        #expect(CommandError.shuttingDown.description == "swarmd is shutting down")
    }

    @Test func identifiers() {
        #expect(WorkerID(3).description == "w3")
        #expect(WorkerID(2) < WorkerID(10))
        #expect(RequestID(5).description == "r5")
    }
}
