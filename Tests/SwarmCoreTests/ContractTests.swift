import Foundation
import Testing
@testable import SwarmCore

/// A spec with one reuseport TCP socket (steered by the core).
func webSpec(workers: Int = 3, _ configure: (inout AppSpec) -> Void = { _ in }) -> AppSpec {
    makeSpec(workers: workers) {
        $0.sockets = [SocketSpec(name: "http", listen: .tcp(host: "127.0.0.1", port: 8080))]
        $0.sourcePath = "/etc/swarm/web.conf"
        configure(&$0)
    }
}

@Suite("Core/shell contract: the actions")
struct ActionContractTests {
    @Test func steersToAllLiveSlotsThenToTheReadyOnes() {
        let h = FakeShell()
        h.start(webSpec(workers: 3))
        #expect(h.steers.map(\.slots) == [[0, 1, 2]], "none ready yet: every live slot")
        h.ready(h.pid("web", 1))
        #expect(h.steers.last?.slots == [1])
        h.ready(h.pid("web", 0))
        h.ready(h.pid("web", 2))
        #expect(h.steers.map(\.slots) == [[0, 1, 2], [1], [0, 1], [0, 1, 2]])
        h.ready(h.pid("web", 2))
        #expect(h.steers.count == 4, "nothing changed, nothing sent")
    }

    @Test func aSlotBeingRemovedIsSteeredAwayBeforeItsWorkerIsSignalled() {
        let h = FakeShell()
        h.startReady(webSpec(workers: 3))
        let pid2 = h.pid("web", 2)
        let signalsBefore = h.signals.count
        h.command(.scale("web", 2))
        let steer = h.steers.last
        #expect(steer?.slots == [0, 1])
        #expect(steer?.signalsBefore == signalsBefore, "the steer comes before the stop signal")
        #expect(h.signalled(pid2))
        // The order within the batch: .steer, then .signal.
        let order = h.lastActions.compactMap { a -> String? in
            switch a {
            case .steer: return "steer"
            case .signal: return "signal"
            default: return nil
            }
        }
        #expect(order.first == "steer")
    }

    @Test func aCrashedSlotLeavesTheSetAndComesBackWhenReady() {
        let h = FakeShell()
        h.startReady(webSpec(workers: 3))
        h.exit(h.pid("web", 1))
        #expect(h.steers.last?.slots == [0, 2])
        h.advance(by: .milliseconds(100))
        h.ready(h.pid("web", 1))
        #expect(h.steers.last?.slots == [0, 1, 2])
    }

    @Test func aReloadSwapKeepsTheSlotSteered() {
        let h = FakeShell()
        h.startReady(webSpec(workers: 2))
        let before = h.steers.count
        h.command(.reloadSpecs([webSpec(workers: 2) { $0.env["V"] = "2" }]))
        h.readyAll()
        h.readyAll()
        h.exitRetiring()
        #expect(h.steers.count == before, "each swap puts the new worker in before the old one is stopped")
        #expect(h.handOvers.count == 2)
    }

    @Test func appsWithoutReuseportSocketsAreNotSteered() {
        let h = FakeShell()
        h.startReady(makeSpec(workers: 2))
        h.startReady(makeSpec("unix", workers: 2) { $0.sockets = [SocketSpec(name: "s", listen: .unix(path: "/run/s.sock"))] })
        #expect(h.steers.isEmpty)
    }

    @Test func startReplaceSteersAgainForTheNewSockets() {
        let h = FakeShell()
        h.startReady(webSpec(workers: 2))
        let before = h.steers.count
        h.start(webSpec(workers: 2), replace: true)
        #expect(h.steers.count == before + 1)
    }

    @Test func workerGoneOnceForExitsSpawnFailuresAndDroppedSpawns() {
        let h = FakeShell()
        h.startReady(makeSpec(workers: 2))
        let id0 = h.current("web", 0)!.id
        h.exit(h.pid("web", 0))
        #expect(h.gone[id0] == 1)
        #expect(h.lastActions.contains(.workerGone(id0, pid: 1000)))
        h.failingSpawns = 1
        h.advance(by: .milliseconds(100))
        #expect(h.gone.count == 2, "the failed spawn is gone too")
        // Stopped while the shell has not answered the spawn yet.
        h.deferSpawns = true
        h.advance(by: .seconds(1))
        let pending = h.pendingSpawns
        #expect(pending.count == 1)
        h.command(.stop(.app("web")))
        #expect(h.gone[pending[0]] == 1)
        #expect(h.lastActions.contains(.workerGone(pending[0], pid: nil)))
        h.completeSpawns()
        #expect(h.signals.last?.signal == .kill, "the late process is killed")
        h.exitRetiring()
        h.checkGone()
        #expect(h.gone.values.allSatisfy { $0 == 1 })
    }

    @Test func aQueuedWorkerDroppedBeforeItsSpawnGetsNoWorkerGone() {
        var sup = Supervisor()
        sup.spawnBatch = 2
        let first = sup.handle(.command(RequestID(1), .start(makeSpec(workers: 5), replace: false)), now: .zero)
        let spawned = first.compactMap { a -> WorkerID? in if case let .spawn(r) = a { return r.worker } else { return nil } }
        #expect(spawned.count == 2)
        #expect(first.last == .armTimer(.zero), "the other three continue at once")
        #expect(sup.workers.values.filter { if case .queued = $0.state { return true } else { return false } }.count == 3)
        // Stopped before the timer fires: the two spawned are dropped with .workerGone, the three queued silently.
        let stop = sup.handle(.command(RequestID(2), .stop(.app("web"))), now: .zero)
        let gone = stop.compactMap { a -> WorkerID? in if case let .workerGone(id, nil) = a { return id } else { return nil } }
        #expect(gone == spawned)
        #expect(!stop.contains { if case .spawn = $0 { return true } else { return false } })
        #expect(sup.workers.isEmpty)
        #expect(sup.invariantViolations() == [])
        let tick = sup.handle(.tick, now: .zero)
        #expect(!tick.contains { if case .spawn = $0 { return true } else { return false } })
        #expect(sup.nextDeadline() == nil)
    }

    @Test func backgroundStartIsDecidedByTheCoreAndRestoredOnReady() {
        let h = FakeShell()
        h.sup.canRaisePriority = true
        h.startReady(makeSpec(workers: 2))
        #expect(h.spawnRequests.allSatisfy { $0.nice == nil }, "a first start is not backgrounded")
        h.command(.reloadSpecs([v2(workers: 2)]))
        let new = h.spawnRequests.filter { $0.generation == 2 }
        #expect(new.count == 1 && new.allSatisfy { $0.nice == 19 })
        let pid = h.incomingPid("web", 0)
        h.ready(pid)
        #expect(h.restoredPriorities == [pid!])
        h.ready(h.incomingPid("web", 1))
        h.exitRetiring()
        #expect(h.restoredPriorities.count == 2, "once per backgrounded worker")
        #expect(h.spawnRequests.filter { $0.generation == 2 }.allSatisfy { $0.nice == 19 })
    }

    @Test func noBackgroundStartWithoutThePrivilegeOrWhenTurnedOff() {
        let h = FakeShell()
        h.startReady(makeSpec(workers: 1))
        h.command(.reloadSpecs([v2(workers: 1)]))
        #expect(h.spawnRequests.last?.nice == nil, "canRaisePriority is false")
        let g = FakeShell()
        g.sup.canRaisePriority = true
        g.startReady(makeSpec(workers: 1))
        g.command(.reloadSpecs([v2(workers: 1) { $0.reload.backgroundStart = false }]))
        #expect(g.spawnRequests.last?.nice == nil)
        g.ready(g.incomingPid("web", 0))
        #expect(g.restoredPriorities.isEmpty)
    }

    @Test func cpuPinningIsDecidedByTheCore() {
        let h = FakeShell()
        h.sup.allowedCPUs = [0, 1]
        h.start(makeSpec("auto", workers: 3) { $0.cpuAffinity = .auto })
        h.start(makeSpec("list", workers: 3) { $0.cpuAffinity = .cpus([3, 5]) })
        h.start(makeSpec("free", workers: 1))
        #expect(h.spawnRequests.filter { $0.app == "auto" }.map(\.cpu) == [0, 1, 0])
        #expect(h.spawnRequests.filter { $0.app == "list" }.map(\.cpu) == [3, 5, 3])
        #expect(h.spawnRequests.filter { $0.app == "free" }.map(\.cpu) == [nil])
    }
}

@Suite("Core/shell contract: validation and queries")
struct ValidationContractTests {
    @Test func aReloadThatRenamesTheAppIsRejectedWhole() {
        let h = FakeShell()
        h.startReady(webSpec(workers: 2))
        h.startReady(makeSpec("api", workers: 1))
        let r = h.command(.reload([ReloadRequest(app: "api", spec: makeSpec("api", workers: 1) { $0.env["V"] = "2" }),
                                   ReloadRequest(app: "web", spec: webSpec(workers: 2) { $0.name = "www" })]))
        #expect(h.failure(r)?.description == "/etc/swarm/web.conf: name: the file now names the app 'www', not 'web'; use swarmctl start for a new app")
        #expect(h.app("api")?.reload == nil && h.app("web")?.reload == nil, "nothing changes")
        #expect(h.spawns.count == 3)
    }

    @Test func aReloadWithOtherSocketsIsRejected() {
        let h = FakeShell()
        h.startReady(webSpec(workers: 2))
        let r = h.command(.reloadSpecs([webSpec(workers: 2) { $0.sockets[0].listen = .tcp(host: "127.0.0.1", port: 9090) }]))
        #expect(h.failure(r)?.description == "/etc/swarm/web.conf: socket: the sockets changed; a rolling reload keeps the listening sockets, so use 'swarmctl start --replace /etc/swarm/web.conf' to rebind")
        #expect(h.app()?.reload == nil)
    }

    @Test func theSameAppTwiceIsRejected() {
        let h = FakeShell()
        h.startReady(makeSpec(workers: 1))
        let r = h.command(.reloadSpecs([v2(workers: 1), v2(workers: 2)]))
        #expect(h.failure(r)?.description == "two config files define an app named 'web'")
        #expect(h.app()?.reload == nil)
    }

    @Test func everyProblemIsListedOneLineEach() {
        let h = FakeShell()
        h.startReady(webSpec(workers: 1))
        h.startReady(makeSpec("api", workers: 1))
        h.command(.reloadSpecs([makeSpec("api", workers: 1) { $0.env["V"] = "2" }]))
        let r = h.command(.reload([ReloadRequest(app: "nope", spec: makeSpec("nope")),
                                   ReloadRequest(app: "api", spec: makeSpec("api", workers: 1)),
                                   ReloadRequest(app: "web", spec: webSpec(workers: 1) { $0.sockets = [] })]))
        #expect(h.failure(r) == .invalid("""
            no app named 'nope'
            a reload of 'api' is already in progress
            /etc/swarm/web.conf: socket: the sockets changed; a rolling reload keeps the listening sockets, so use 'swarmctl start --replace /etc/swarm/web.conf' to rebind
            """))
        #expect(h.app("web")?.reload == nil)
    }

    @Test func startProblemsNameDuplicatesAndRunningApps() {
        let h = FakeShell()
        h.startReady(makeSpec(workers: 1) { $0.sourcePath = "/a/web.conf" })
        let specs = [makeSpec("api") { $0.sourcePath = "/a/api.conf" }, makeSpec("api") { $0.sourcePath = "/b/api.conf" },
                     makeSpec("web") { $0.sourcePath = "/b/web.conf" }]
        #expect(h.sup.startProblems(specs, replace: false) == [
            "two config files define an app named 'api'",
            "/b/web.conf: an app named 'web' is already running (use --replace to replace it)",
        ])
        #expect(h.sup.startProblems(specs, replace: true) == ["two config files define an app named 'api'"])
        #expect(h.sup.startProblems([makeSpec("new")], replace: false).isEmpty)
    }

    @Test func healthFollowsTheApp() {
        let h = FakeShell()
        h.start(makeSpec(workers: 2))
        #expect(h.sup.health(of: "web") == AppHealth(state: .degraded, ready: 0, wanted: 2))
        h.readyAll()
        #expect(h.sup.health(of: "web") == AppHealth(state: .running, ready: 2, wanted: 2))
        h.command(.reloadSpecs([v2(workers: 2)]))
        #expect(h.sup.health(of: "web")?.state == .reloading)
        h.readyAll()
        h.readyAll()
        h.exitRetiring()
        #expect(h.sup.health(of: "web")?.state == .running)
        for _ in 0..<5 {
            h.exit(h.pid("web", 0))
            h.advance(by: .seconds(1))
        }
        #expect(h.sup.health(of: "web")?.state == .crashLoop)
        #expect(h.sup.health(of: "web")?.state.rawValue == "crash-loop")
        h.command(.stop(.app("web")))
        #expect(h.sup.health(of: "web")?.state == .stopping)
        h.exitRetiring()
        #expect(h.sup.health(of: "web") == AppHealth(state: .stopped, ready: 0, wanted: 2))
        #expect(h.sup.health(of: "nope") == nil)
    }

    @Test func displayStatesAreTodaysStrings() {
        let h = FakeShell()
        h.start(makeSpec(workers: 3))
        h.ready(h.pid("web", 0))
        let app = h.app()!
        func state(_ k: Int) -> String {
            let slot = h.slot("web", k)!
            guard let w = h.current("web", k) else { return h.sup.displayState(ofEmpty: slot, in: h.app()!) }
            return h.sup.displayState(of: w, in: slot)
        }
        #expect(state(0) == "ready" && state(1) == "starting")
        h.exit(h.pid("web", 1))
        #expect(state(1) == "backoff")
        _ = app
        h.command(.scale("web", 2))
        #expect(state(2) == "removed", "the slot has no current worker any more")
        let stopping = h.slot("web", 2).flatMap { $0.retiring.first }.flatMap { h.sup.workers[$0] }
        #expect(stopping.map { h.sup.displayState(of: $0, in: h.slot("web", 2)!) } == "stopping")
        h.command(.stop(.app("web")))
        h.exitRetiring()
        #expect(state(0) == "stopped")
    }
}

@Suite("Snapshots")
struct SnapshotTests {
    @Test func aRestoredSupervisorCarriesOn() throws {
        let h = FakeShell()
        h.startReady(webSpec(workers: 3) { $0.memoryLimit = 1 << 30 })
        h.exit(h.pid("web", 1))
        let snap = try #require(h.sup.snapshot())
        let data = try JSONEncoder().encode(snap)
        let restored = Supervisor(restoring: try JSONDecoder().decode(Supervisor.Snapshot.self, from: data))
        #expect(restored.invariantViolations() == [])
        #expect(restored.workers == h.sup.workers)
        #expect(restored.nextDeadline() == h.sup.nextDeadline())
        #expect(restored.health(of: "web") == h.sup.health(of: "web"))
    }

    @Test func aWorkerWrittenByTheSwarmdBeforeWorkerStateIsRead() throws {
        let legacy = """
            {"id":{"raw":7},"app":"web","slot":1,"generation":2,"pid":4242,"phase":"starting",
             "startedAt":{"nanoseconds":1000},"readyDeadline":{"nanoseconds":5000},"nextProbe":{"nanoseconds":2000}}
            """
        let w = try JSONDecoder().decode(Worker.self, from: Data(legacy.utf8))
        #expect(w.state == .starting(readyBy: Instant(nanoseconds: 5000), probeAt: Instant(nanoseconds: 2000), delayReadyAt: nil, memoryAt: nil, priorityAt: nil))
        #expect(w.phase == .starting && w.pid == 4242)
        let again = try JSONDecoder().decode(Worker.self, from: try JSONEncoder().encode(w))
        #expect(again == w)
    }
}
