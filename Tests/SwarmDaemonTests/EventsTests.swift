import Foundation
import Glibc
@testable import SwarmDaemon
import SwarmCore
import SwarmProtocol
import SwarmSystem
import Testing

/// Lifecycle events as the shell derives them, against the fake kernel.
struct EventsDerivationTests {
    func kinds(_ f: ManagerFixture, app: String? = "web") -> [String] {
        f.manager.lifecycle.recent(LifecycleEvents.ringSize, app: app).map(\.kind)
    }

    func records(_ f: ManagerFixture, after seq: UInt64 = 0) -> [EventRecord] {
        f.manager.lifecycle.recent(LifecycleEvents.ringSize, app: nil).filter { $0.seq > seq }
    }

    @Test func aCrashIsExitThenRestartScheduledThenSpawnedThenReady() throws {
        let f = try ManagerFixture()
        let pids = try f.startReady(try f.config(restart: "always"))
        #expect(kinds(f) == ["started", "spawned", "ready"], "\(kinds(f))")
        let mark = f.manager.lifecycle.seq
        f.exit(pids[0], code: 3)
        // The first restart waits initial_delay (100ms): nothing is spawned until the core's deadline passes.
        #expect(records(f, after: mark).map(\.kind) == ["exited", "restart-scheduled"], "\(records(f, after: mark))")
        f.kernel.advance(seconds: 0.2)
        f.manager.feed(.tick)
        try runLoop(f.loop, until: "the restart's spawn") { f.pids.count == 2 }
        f.ready(f.pids[1])
        let after = records(f, after: mark)
        #expect(after.map(\.kind) == ["exited", "restart-scheduled", "spawned", "ready"], "\(after)")
        let exit = after[0]
        #expect(exit.pid == pids[0] && exit.slot == 0 && exit.generation == 1)
        #expect(exit.details?["exit_status"] == "exited" && exit.details?["exit_code"] == "3", "\(exit)")
        let restart = after[1]
        #expect(restart.details?["reason"] == "crash" && restart.details?["delay_s"] == "0.1", "\(restart)")
        #expect(after[2].pid == f.pids[1] && after[3].pid == f.pids[1])
        #expect(after.map(\.seq) == after.map(\.seq).sorted(), "numbered in order")
    }

    @Test func anExitSwarmdAskedForSaysWhyAndSchedulesNoRestart() throws {
        let f = try ManagerFixture()
        let pids = try f.startReady(try f.config(restart: "always"))
        let mark = f.manager.lifecycle.seq
        _ = try f.send { Request(id: $0, verb: .stop, name: "web") }
        f.exit(pids[0], code: 0)
        let after = records(f, after: mark)
        #expect(after.map(\.kind) == ["stopped", "exited"], "\(after)")
        #expect(after[1].details?["stop_reason"] == "stop" && after[1].details?["expected"] == "true")
    }

    @Test func aReloadIsStartedStepsAndFinished() throws {
        let f = try ManagerFixture()
        let old = try f.startReady(try f.config())[0]
        let mark = f.manager.lifecycle.seq
        let id = try f.send { Request(id: $0, verb: .reload, name: "web") }
        try runLoop(f.loop, until: "the new generation's spawn") { f.pids.count == 2 }
        f.ready(f.pids[1])
        f.exit(old)
        #expect(try f.waitForResult(of: id, "the reload's answer").ok == true)
        let after = records(f, after: mark)
        let reload = after.filter { $0.kind.hasPrefix("reload-") }
        #expect(reload.first?.kind == "reload-started" && reload.first?.generation == 2, "\(after.map(\.kind))")
        #expect(reload.last?.kind == "reload-finished", "\(after.map(\.kind))")
        #expect(reload.contains { $0.kind == "reload-step" && $0.details?["step"] == "retiring" && $0.pid == old })
        let exit = try #require(after.first { $0.kind == "exited" })
        #expect(exit.pid == old && exit.details?["stop_reason"] == "reload" && exit.details?["expected"] == "true")
        #expect(!after.contains { $0.kind == "restart-scheduled" })
    }

    @Test func aReloadWhoseNewWorkerDiesIsRolledBack() throws {
        let f = try ManagerFixture()
        try f.startReady(try f.config())
        let mark = f.manager.lifecycle.seq
        let id = try f.send { Request(id: $0, verb: .reload, name: "web") }
        try runLoop(f.loop, until: "the new generation's spawn") { f.pids.count == 2 }
        f.exit(f.pids[1], code: 1)
        #expect(try f.waitForResult(of: id, "the reload's answer").ok == false)
        let kinds = records(f, after: mark).map(\.kind)
        #expect(kinds.contains("reload-rolled-back") && !kinds.contains("reload-finished"), "\(kinds)")
        #expect(kinds.firstIndex(of: "exited")! < kinds.firstIndex(of: "reload-rolled-back")!)
    }

    @Test func failedProbesAreAnUnhealthyEventOnceThenAReplacement() throws {
        let f = try ManagerFixture()
        let path = try f.config(port: try Ports.free(), ready: "notify", restart: "always")
        let text = try String(contentsOfFile: path, encoding: .utf8) + "[health]\ntcp = true\nfailures = 2\n"
        try text.write(toFile: path, atomically: true, encoding: .utf8)
        let pid = try f.startReady(path)[0]
        let id = try #require(f.manager.supervisor.worker(pid: pid)?.id)
        let mark = f.manager.lifecycle.seq
        for _ in 0..<3 { f.manager.feed(.health(.probeResult(id, ok: false, detail: "refused"))) }
        let after = records(f, after: mark)
        let sick = after.filter { $0.kind == "unhealthy" }
        #expect(sick.count == 1, "\(after.map(\.kind))")
        #expect(sick.first?.pid == pid && sick.first?.slot == 0 && sick.first?.details?["verdict"]?.contains("tcp refused") == true, "\(sick)")
        // The replacement starts after the slot's backoff; once it is ready, the sick one is stopped.
        f.kernel.advance(seconds: 1)
        f.manager.feed(.tick)
        try runLoop(f.loop, until: "the replacement's spawn") { f.pids.count == 2 }
        f.ready(f.pids[1])
        let replaced = try #require(records(f, after: mark).first { $0.kind == "replaced" }, "\(records(f, after: mark).map(\.kind))")
        #expect(replaced.pid == pid && replaced.details?["reason"] == "unhealthy")
        #expect(!records(f, after: mark).contains { $0.kind == "restart-scheduled" }, "a replacement, not a restart")
    }

    @Test func repeatedCrashesEnterTheCrashLoopOnce() throws {
        let f = try ManagerFixture()
        let path = try f.config(restart: "always", extra: "")
        // crash_loop_restarts = 3: the third failure within the window is a loop.
        let text = try String(contentsOfFile: path, encoding: .utf8).replacingOccurrences(of: "policy = \"always\"", with: "policy = \"always\"\ncrash_loop_restarts = 3")
        try text.write(toFile: path, atomically: true, encoding: .utf8)
        try f.startReady(path)
        for i in 0..<4 {
            f.exit(f.pids.last!, code: 1)
            // Within the 60 s window, past each backoff delay (the crash loop's is 30 s).
            f.kernel.advance(seconds: i < 2 ? 1 : 31)
            f.manager.feed(.tick)
            try runLoop(f.loop, until: "restart \(i)") { f.pids.count == i + 2 }
        }
        let k = kinds(f)
        #expect(k.filter { $0 == "crash-loop-entered" }.count == 1, "\(k)")
        #expect(k.filter { $0 == "restart-scheduled" }.count == 4, "\(k)")
        let entered = try #require(k.firstIndex(of: "crash-loop-entered"))
        #expect(k[..<entered].filter { $0 == "exited" }.count == 3, "entered at the third failure: \(k)")
        // Up for reset_after (30 s) once ready: out of the loop.
        f.ready(f.pids.last!)
        f.kernel.advance(seconds: 31)
        f.manager.feed(.tick)
        #expect(kinds(f).suffix(2) == ["ready", "crash-loop-left"], "\(kinds(f))")
    }

    @Test func scaleAndDrainAreEvents() throws {
        let f = try ManagerFixture()
        try f.startReady(try f.config(workers: 1))
        let mark = f.manager.lifecycle.seq
        _ = try f.send { Request(id: $0, verb: .scale, name: "web", count: 3) }
        _ = try f.call { Request(id: $0, verb: .drain, name: "web") }
        _ = try f.call { Request(id: $0, verb: .drain, name: "web") }
        let after = records(f, after: mark)
        let scaled = try #require(after.first { $0.kind == "scaled" })
        #expect(scaled.details?["from"] == "1" && scaled.details?["to"] == "3")
        #expect(after.filter { $0.kind == "drained" }.count == 1, "a second drain changes nothing: \(after.map(\.kind))")
    }

    @Test func aSubscriberGetsTheKeptEventsThenNewOnesOfItsAppOnly() throws {
        let f = try ManagerFixture()
        try f.startReady(try f.config("web"))
        let peer = try f.client()
        peer.send(Request(id: 7, verb: .events, name: "other", lines: 10))
        let all = try f.client()
        all.send(Request(id: 8, verb: .events, lines: 2))
        try spin(f.loop, times: 5, pump: { peer.pump(); all.pump() })
        try f.startReady(try f.config("other"))
        try runLoop(f.loop, until: "other's events to reach the subscriber", pump: { peer.receive(); all.receive() }) {
            peer.responses.contains { $0.record?.kind == "ready" }
        }
        let mine = peer.responses.compactMap(\.record)
        #expect(!mine.isEmpty && mine.allSatisfy { $0.app == "other" }, "\(mine)")
        #expect(peer.responses.allSatisfy { $0.id == 7 && $0.kind == .record })
        let everything = all.responses.compactMap(\.record)
        // The last two kept (web's spawned and ready), then other's.
        #expect(everything.prefix(2).map { "\($0.app) \($0.kind)" } == ["web spawned", "web ready"], "\(everything)")
        #expect(everything.contains { $0.app == "other" && $0.kind == "started" })
    }

    @Test func aSubscriberThatDoesNotReadIsBoundedAndToldWhatItMissed() throws {
        let f = try ManagerFixture()
        try f.startReady(try f.config("web"))
        let slow = try f.client()
        slow.send(Request(id: 9, verb: .events))
        try spin(f.loop, times: 5, pump: { slow.pump() })
        #expect(f.manager.lifecycle.subscriberCount == 1)
        // Far more than the socket buffer and the read pause hold.
        let n = 20_000
        let note = String(repeating: "x", count: 200)
        for i in 0..<n {
            f.manager.shellEvent(LifecycleDraft(kind: "config-error", app: "web", message: "\(i) \(note)"))
        }
        // Still answers others at once.
        let other = try f.client()
        other.ping(1)
        try runLoop(f.loop, until: "a ping while the slow subscriber is behind", pump: { other.pump(); other.receive() }) {
            other.responses.contains { $0.id == 1 && $0.message == "pong" }
        }
        // Now it reads everything, and one more event comes.
        try runLoop(f.loop, until: "the slow subscriber to catch up", pump: { slow.receive() }) {
            slow.receive()
            return slow.responses.count > 100 && f.manager.control.connectionCount >= 2 && isDrained(f, slow)
        }
        f.manager.shellEvent(LifecycleDraft(kind: "config-error", app: "web", message: "last"))
        try runLoop(f.loop, until: "the dropped record", pump: { slow.receive() }) {
            slow.responses.contains { $0.record?.message == "last" }
        }
        let got = slow.responses.compactMap(\.record)
        let dropped = try #require(got.first { $0.kind == "dropped" }, "no dropped record among \(got.count)")
        let count = try #require(dropped.details?["count"].flatMap { Int($0) })
        let delivered = got.filter { $0.kind == "config-error" }.count
        #expect(delivered + count == n + 1, "every event delivered or counted: \(delivered) + \(count)")
        #expect(delivered < n / 2, "most were dropped, not queued: \(delivered) delivered")
        #expect(got.last?.message == "last" && got[got.count - 2].kind == "dropped")
    }

    func isDrained(_ f: ManagerFixture, _ peer: Peer) -> Bool {
        // Nothing more arrives after a few turns.
        let before = peer.responses.count
        try? spin(f.loop, times: 3, pump: { peer.receive() })
        return peer.responses.count == before
    }
}

/// `[hooks]` against the fake kernel: what is spawned, bounded and reaped.
struct HookRunnerTests {
    func config(_ f: ManagerFixture, hooks: String) throws -> String {
        let path = try f.config(restart: "never")
        let text = try String(contentsOfFile: path, encoding: .utf8) + "[hooks]\n" + hooks + "\n"
        try text.write(toFile: path, atomically: true, encoding: .utf8)
        return path
    }

    func hookPlans(_ f: ManagerFixture) -> [SpawnPlan] { f.kernel.spawned.filter { $0.executable == "/bin/sh" } }

    @Test func aHookGetsTheEventInItsEnvironmentAsTheAppsProcessGroupAndIsReaped() throws {
        let f = try ManagerFixture()
        let path = try config(f, hooks: #"on_exit = ["/bin/sh", "-c", "cat"]"#)
        let pids = try f.startReady(path)
        f.exit(pids[0], code: 7)
        let plans = hookPlans(f)
        try #require(plans.count == 1, "one hook for one exit: \(plans.map(\.argv))")
        let env = plans[0].environment
        for v in ["SWARM_EVENT=exited", "SWARM_APP=web", "SWARM_SLOT=0", "SWARM_PID=\(pids[0])", "SWARM_EXIT_STATUS=exited",
                  "SWARM_EXIT_CODE=7", "SWARM_HOOK=on_exit", "SWARM_GENERATION=1"] {
            #expect(env.contains(v), "\(v) in \(env)")
        }
        #expect(plans[0].argv == ["/bin/sh", "-c", "cat"])
        let hookPid = f.pids.last!
        #expect(f.manager.lifecycle.hooks.running[hookPid] != nil)
        f.exit(hookPid, code: 0)
        #expect(f.manager.lifecycle.hooks.running.isEmpty, "reaped by swarmd's own waitpid loop")
        #expect(f.manager.supervisor.worker(pid: hookPid) == nil)
    }

    @Test func anExitSwarmdPlannedRunsNoOnExitHook() throws {
        let f = try ManagerFixture()
        let pids = try f.startReady(try config(f, hooks: #"on_exit = ["/bin/sh", "-c", "cat"]"#))
        _ = try f.send { Request(id: $0, verb: .stop, name: "web") }
        f.exit(pids[0], code: 0)
        #expect(records(f).contains { $0.kind == "exited" && $0.details?["expected"] == "true" })
        #expect(hookPlans(f).isEmpty, "a stop is no news for on_exit")
    }

    func records(_ f: ManagerFixture) -> [EventRecord] { f.manager.lifecycle.recent(LifecycleEvents.ringSize, app: nil) }

    @Test func hooksBeyondMaxConcurrentAreDroppedAndCounted() throws {
        let f = try ManagerFixture()
        let path = try config(f, hooks: #"on_config_error = ["/bin/sh", "-c", "sleep 100"]"# + "\nmax_concurrent = 2")
        try f.startReady(path)
        for i in 0..<5 { f.manager.shellEvent(LifecycleDraft(kind: "config-error", app: "web", message: "bad \(i)")) }
        #expect(hookPlans(f).count == 2)
        #expect(f.manager.lifecycle.hooks.dropped["web"] == 3)
        #expect(f.logs.count(containing: "max_concurrent = 2); not run, 3 dropped so far") == 1, "\(f.logs.all.map(\.text))")
        // One ends: the next event runs again.
        f.exit(f.pids.last!, code: 0)
        f.manager.shellEvent(LifecycleDraft(kind: "config-error", app: "web", message: "bad again"))
        #expect(hookPlans(f).count == 3)
    }

    @Test func aHookPastItsTimeoutIsKilledWithItsGroup() throws {
        let f = try ManagerFixture()
        let path = try config(f, hooks: #"on_config_error = ["/bin/sh", "-c", "sleep 100"]"# + "\ntimeout = \"2s\"")
        try f.startReady(path)
        f.manager.shellEvent(LifecycleDraft(kind: "config-error", app: "web", message: "bad"))
        let hook = f.pids.last!
        try spin(f.loop, times: 80)
        #expect(!f.kernel.signals.contains { $0.pid == hook }, "not before its timeout")
        f.kernel.advance(seconds: 2.1)
        try runLoop(f.loop, until: "the hook's group to be killed") {
            f.kernel.signals.contains { $0.pid == hook && $0.signal == SIGKILL && $0.group }
        }
    }
}
