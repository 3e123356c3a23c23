import Foundation
import Glibc
@testable import SwarmDaemon
import SwarmCore
import SwarmProtocol
@testable import SwarmSystem
import Testing

@Suite("Manager")
struct ManagerTests {
    // MARK: - Spawning

    @Test func aSpawnActionBecomesAKernelSpawnWithTheRequestsNiceCPUAndEnvironment() throws {
        let f = try ManagerFixture()
        let spec = makeSpec(workers: 4)
        f.manager.perform(.spawn(SpawnRequest(worker: WorkerID(77), app: "web", slot: 3, generation: 2, spec: spec, nice: 19, cpu: 1)))
        let plan = try #require(f.kernel.spawned.last)
        #expect(plan.nice == 19)
        #expect(plan.cpu == 1)
        #expect(plan.executable == "/bin/true")
        #expect(plan.argv == ["/bin/true", "serve"])
        for v in ["SWARM_APP=web", "SWARM_WORKER=3", "SWARM_GENERATION=2", "NOTIFY_SOCKET=\(f.manager.output.notifyPath)", "GREETING=hello"] {
            #expect(plan.environment.contains(v), "\(v) missing from \(plan.environment)")
        }
        #expect(!plan.environment.contains { $0.hasPrefix("LISTEN_FDS=") }, "no sockets, no LISTEN_FDS")
        #expect(plan.fds.isEmpty && !plan.setListenPID)
        let pid = try #require(f.pids.last)
        #expect(f.manager.workers[WorkerID(77)] == pid)
        #expect(f.manager.output.pipeCount == 2, "stdout and stderr are watched")

        f.manager.perform(.spawn(SpawnRequest(worker: WorkerID(78), app: "web", slot: 0, generation: 2, spec: spec)))
        #expect(f.kernel.spawned.last?.nice == nil, "no nice asked: the workers' priority (Spawner.childPriority)")
        #expect(f.kernel.spawned.last?.cpu == nil)
    }

    @Test func theSharedEnvironmentIsBuiltOncePerGenerationAndAgainWhenItsSpecChanges() throws {
        let f = try ManagerFixture()
        var spec = makeSpec(workers: 4)
        f.manager.perform(.spawn(SpawnRequest(worker: WorkerID(1), app: "web", slot: 0, generation: 1, spec: spec)))
        f.manager.perform(.spawn(SpawnRequest(worker: WorkerID(2), app: "web", slot: 1, generation: 1, spec: spec)))
        let first = f.kernel.spawned[f.kernel.spawned.count - 2].environment, second = f.kernel.spawned.last!.environment
        #expect(first.contains("SWARM_WORKER=0") && !first.contains("SWARM_WORKER=1"))
        #expect(second.contains("SWARM_WORKER=1") && !second.contains("SWARM_WORKER=0"))
        #expect(first.filter { !$0.hasPrefix("SWARM_WORKER=") } == second.filter { !$0.hasPrefix("SWARM_WORKER=") })
        // The same generation number with another spec (an app removed and started again) is not served from the cache.
        spec.env["GREETING"] = "changed"
        f.manager.perform(.spawn(SpawnRequest(worker: WorkerID(3), app: "web", slot: 2, generation: 1, spec: spec)))
        #expect(f.kernel.spawned.last!.environment.contains("GREETING=changed"))
        f.manager.perform(.spawn(SpawnRequest(worker: WorkerID(4), app: "web", slot: 3, generation: 2, spec: spec)))
        #expect(f.kernel.spawned.last!.environment.contains("SWARM_GENERATION=2"))
        #expect(f.manager.sharedEnvironments.count == 1, "one entry per app")
    }

    @Test func aSpawnPassesTheSlotsSocketAndItsReadinessPipe() throws {
        let f = try ManagerFixture()
        let port = try Ports.free()
        let spec = makeSpec(workers: 2, sockets: [tcpSocket(port: port)], ready: .fd)
        let bound = try f.manager.sockets.bind(spec).get()
        f.manager.sockets.install(bound, for: "web")
        f.manager.perform(.spawn(SpawnRequest(worker: WorkerID(5), app: "web", slot: 1, generation: 1, spec: spec)))
        let plan = try #require(f.kernel.spawned.last)
        let slot1 = try #require(bound.entries[0].perSlot[1], "spawning slot 1 binds its socket")
        #expect(plan.fds.count == 2)
        #expect(plan.fds.first == slot1)
        #expect(Sockets.localPort(slot1) == port)
        #expect(plan.setListenPID)
        for v in ["LISTEN_FDS=1", "LISTEN_FDNAMES=http", "PORT=\(port)", "SWARM_READY_FD=4"] {
            #expect(plan.environment.contains(v), "\(v) missing from \(plan.environment)")
        }
        let pid = try #require(f.pids.last)
        #expect(f.manager.output.readyPipes[WorkerID(5)]?.pid == pid)

        // The worker writes its newline on fd 4: the shell feeds the core .ready.
        let process = try #require(f.kernel.processes[pid])
        try writeAll(process.fds[1], "\n")
        try runLoop(f.loop, until: "the readiness pipe is read") { f.manager.output.readyPipes.isEmpty }
    }

    @Test func afterASpawnAndItsReapTheShellHoldsNothingForTheWorker() throws {
        let f = try ManagerFixture()
        let path = try f.config(ready: "fd")
        try f.send { Request(id: $0, verb: .start, files: [path]) }
        try runLoop(f.loop, until: "the spawn") { f.pids.count == 1 }
        let pid = f.pids[0]
        let id = try #require(f.manager.workers.first { $0.value == pid }?.key)
        #expect(f.manager.output.readyPipes[id] != nil)
        #expect(f.manager.output.pipeCount == 2)
        f.kernel.usageOf[pid] = (cpuTicks: 100, rss: 1 << 20)
        _ = try f.manager.statusReport(only: nil)
        #expect(f.manager.cpuSamples[pid] != nil)

        f.exit(pid, code: 1)
        #expect(f.manager.workers.isEmpty, "workers: \(f.manager.workers)")
        #expect(f.manager.output.readyPipes.isEmpty, "the readiness pipe of a reaped worker is still open")
        #expect(f.manager.cpuSamples.isEmpty, "cpu samples: \(f.manager.cpuSamples)")
        #expect(f.manager.output.pipeCount == 0, "the reaped worker's output pipes are still watched")
        #expect(f.manager.supervisor.workers.isEmpty)
    }

    @Test func aFailedSpawnClosesWhatWasOpenedForItAndSaysWhy() throws {
        let f = try ManagerFixture()
        f.kernel.spawnError = SpawnError(step: "fork", errno: EAGAIN, executable: "/bin/true")
        let path = try f.config(ready: "fd", restart: "always")
        let r = try f.call { Request(id: $0, verb: .start, files: [path]) }
        #expect(r.ok == false)
        #expect(r.error?.contains("the process limit is reached") == true, "error: \(r.error ?? "nil")")
        #expect(f.manager.output.pipeCount == 0)
        #expect(f.manager.output.readyPipes.isEmpty)
        #expect(f.manager.workers.isEmpty)
        #expect(f.kernel.spawned.isEmpty)
    }

    // MARK: - Reaping

    @Test func reapingIsBoundedPerDispatchAndContinuesOnALaterOne() throws {
        let f = try ManagerFixture()
        f.manager.reapContinuation = f.loop.addDeferred { [weak m = f.manager] in m?.reapChildren() }
        // Not a multiple of reapsPerTurn: the last round ends with the empty waitpid.
        let children = 12 * Manager.reapsPerTurn + 3
        for i in 0..<children { f.kernel.exit(pid_t(90_000 + i), code: 0) }
        f.manager.onSignal(SIGCHLD)
        #expect(f.kernel.reapCalls == Manager.reapsPerTurn, "one SIGCHLD reaps at most reapsPerTurn")
        #expect(f.kernel.zombiesLeft == children - Manager.reapsPerTurn)
        var counts: [Int] = []
        while f.kernel.zombiesLeft > 0 && counts.count < 100 {
            let before = f.kernel.reapCalls
            try f.loop.runOnce(timeout: 5_000_000)
            counts.append(f.kernel.reapCalls - before)
        }
        #expect(f.kernel.zombiesLeft == 0, "the continuation stopped with zombies left")
        #expect(counts.max()! <= Manager.reapsPerTurn, "waitpid calls per dispatch: \(counts)")
        #expect(f.kernel.reapCalls == children + 1, "every child and the one empty waitpid that ends the round")
        try spin(f.loop, times: 10)
        #expect(f.kernel.reapCalls == children + 1, "the continuation runs on with nothing to reap")
    }

    @Test func anotherReadySourceGetsItsTurnBetweenReapingRounds() throws {
        let f = try ManagerFixture()
        f.manager.reapContinuation = f.loop.addDeferred { [weak m = f.manager] in m?.reapChildren() }
        for i in 0..<640 { f.kernel.exit(pid_t(90_000 + i), code: 0) }
        f.manager.onSignal(SIGCHLD)
        // A pipe stands for a control client, SIGTERM or the timer.
        let p = try pipePair()
        defer { Posix.close(p.read); Posix.close(p.write) }
        var reapsBeforeServed: Int?
        let other = try f.loop.addReader(p.read) { _ in
            reapsBeforeServed = f.kernel.reapCalls
            _ = readAvailable(p.read)
        }
        defer { other.cancel() }
        try writeAll(p.write, "x")
        try runLoop(f.loop, until: "the pipe's turn") { reapsBeforeServed != nil }
        #expect(reapsBeforeServed! <= 2 * Manager.reapsPerTurn,
                "\(reapsBeforeServed!) children were reaped before a ready pipe got its turn")
    }

    // MARK: - Priority

    @Test func restorePriorityGivesTheWorkersGroupTheWorkerPriority() throws {
        let f = try ManagerFixture()
        f.kernel.workerPriority = -2
        f.manager.perform(.restorePriority(pid: 4711))
        #expect(f.kernel.calls.contains(.setGroupPriority(pgid: 4711, nice: -2)))
    }

    @Test func aReloadsNicedWorkerGetsItsPriorityBackWhenReady() throws {
        let f = try ManagerFixture()
        let path = try f.config()
        let old = try f.startReady(path)[0]
        f.manager.supervisor.canRaisePriority = true
        let id = try f.send { Request(id: $0, verb: .reload, name: "web") }
        try runLoop(f.loop, until: "the new generation's spawn") { f.pids.count == 2 }
        let new = f.pids[1]
        #expect(f.kernel.spawned.last?.nice == 19)
        #expect(!f.kernel.calls.contains { if case .setGroupPriority = $0 { return true } else { return false } })
        f.ready(new)
        #expect(f.kernel.calls.contains(.setGroupPriority(pgid: new, nice: f.kernel.workerPriority)))
        f.exit(old)
        let r = try f.waitForResult(of: id, "the reload's answer")
        #expect(r.ok == true, "reload: \(r.error ?? "")")
    }

    // MARK: - Order

    @Test func actionsArePerformedInTheOrderGivenSteeringBeforeTheStopSignal() throws {
        let f = try ManagerFixture()
        let port = try Ports.free()
        let path = try f.config(workers: 2, port: port)
        let pids = try f.startReady(path, workers: 2)
        let steering = try #require(f.kernel.steerings.first)
        #expect(Set(steering.liveSockets.compactMap { $0 }).count == 2, "both ready slots are steered to")
        let mark = f.kernel.calls.count
        let id = try f.send { Request(id: $0, verb: .scale, name: "web", count: 1) }
        try runLoop(f.loop, until: "slot 1's worker is signalled") { f.kernel.signals.contains { $0.pid == pids[1] } }
        let after = Array(f.kernel.calls[mark...])
        let firstWrite = try #require(after.firstIndex { if case .steering = $0 { return true } else { return false } })
        let firstSignal = try #require(after.firstIndex { if case .signal = $0 { return true } else { return false } })
        #expect(firstWrite < firstSignal, "calls after scale: \(after)")
        #expect(steering.liveCount == 1)
        #expect(steering.liveSockets == [f.manager.sockets["web"]!.entries[0].shared])
        f.exit(pids[1])
        #expect(try f.waitForResult(of: id, "the scale's answer").ok == true)
        #expect(f.manager.sockets["web"]!.entries[0].perSlot[1] == nil, "the removed slot's socket is released")
    }

    // MARK: - systemd

    @Test func sighupWithABrokenConfigStillFinishesTheReloadHandshake() throws {
        let f = try ManagerFixture()
        let path = try f.config()
        try f.startReady(path)
        f.manager.updateSystemdStatus()
        f.manager.systemd.ready()
        let mark = f.kernel.notifications.count
        try "name = \"web\"\ncommand = [unterminated\n".write(toFile: path, atomically: true, encoding: .utf8)
        f.manager.onSignal(SIGHUP)
        #expect(Array(f.kernel.notifications[mark...]) == ["RELOADING=1\nMONOTONIC_USEC=\(f.kernel.now() / 1000)", "READY=1\nSTATUS=web 1/1 ready"])
        #expect(f.logs.count(containing: "Failed to reload web") == 1)
        #expect(f.pids.count == 1, "a broken file starts nothing")
    }

    @Test func sighupSendsReadyOnlyOnceTheReloadIsAnswered() throws {
        let f = try ManagerFixture()
        let path = try f.config()
        let old = try f.startReady(path)[0]
        f.manager.updateSystemdStatus()
        f.manager.systemd.ready()
        let mark = f.kernel.notifications.count
        func since() -> [String] { Array(f.kernel.notifications[mark...]) }
        f.manager.onSignal(SIGHUP)
        #expect(since() == ["RELOADING=1\nMONOTONIC_USEC=\(f.kernel.now() / 1000)"])
        #expect(f.pids.count == 2, "the reload starts the new generation")
        f.ready(f.pids[1])
        #expect(f.kernel.signals.contains { $0.pid == old && $0.signal == SIGTERM }, "the old worker is stopped")
        #expect(!since().contains { $0.hasPrefix("READY=1") }, "READY=1 before the reload finished: \(since())")
        f.exit(old)
        #expect(since().filter { $0.hasPrefix("READY=1") } == ["READY=1\nSTATUS=web 1/1 ready"], "after: \(since())")
    }

    @Test func sighupWaitsForTheGoodAppsReloadWhileABrokenOneKeepsItsConfig() throws {
        let f = try ManagerFixture()
        let good = try f.config("api")
        let bad = try f.config("web")
        let apiOld = try f.startReady(good)[0]
        try f.startReady(bad)
        f.manager.updateSystemdStatus()
        f.manager.systemd.ready()
        let mark = f.kernel.notifications.count
        try "workers = \"many\"\n".write(toFile: bad, atomically: true, encoding: .utf8)
        f.manager.onSignal(SIGHUP)
        #expect(f.logs.count(containing: "Failed to reload web") == 1)
        #expect(f.pids.count == 3, "api's reload started")
        f.ready(f.pids[2])
        #expect(!f.kernel.notifications[mark...].contains { $0.hasPrefix("READY=1") })
        f.exit(apiOld)
        #expect(f.kernel.notifications[mark...].filter { $0.hasPrefix("READY=1") }.count == 1)
    }

    @Test func statusIsToldToSystemdOnlyWhenItChanges() throws {
        let f = try ManagerFixture()
        let path = try f.config(workers: 2)
        let id = try f.send { Request(id: $0, verb: .start, files: [path]) }
        try runLoop(f.loop, until: "two spawns") { f.pids.count == 2 }
        f.ready(f.pids[0])
        f.manager.updateSystemdStatus()
        f.manager.updateSystemdStatus()
        f.ready(f.pids[1])
        _ = try f.waitForResult(of: id, "start")
        f.manager.updateSystemdStatus()
        f.manager.afterDispatch()
        #expect(f.kernel.notifications.filter { $0.hasPrefix("STATUS=") } == ["STATUS=web 1/2 ready", "STATUS=web 2/2 ready"])
    }

    @Test func aSecondSIGTERMKillsEveryWorkersGroup() throws {
        let f = try ManagerFixture()
        let pids = try f.startReady(try f.config(workers: 2), workers: 2)
        f.manager.onSignal(SIGTERM)
        #expect(f.kernel.notifications.contains("STOPPING=1"))
        for pid in pids {
            #expect(f.kernel.signals.contains { $0.pid == pid && $0.signal == SIGTERM && !$0.group })
            #expect(!f.kernel.signals.contains { $0.pid == pid && $0.signal == SIGKILL })
        }
        f.manager.onSignal(SIGTERM)
        for pid in pids {
            #expect(f.kernel.signals.contains { $0.pid == pid && $0.signal == SIGKILL && $0.group })
        }
    }

    // MARK: - Control

    @Test func startBindsNothingAndStartsNothingWhenASocketIsTaken() throws {
        let f = try ManagerFixture()
        let port = try Ports.free()
        let squatter = try Sockets.listenTCP(host: "127.0.0.1", port: port, backlog: 1, reusePort: false)
        defer { Posix.close(squatter) }
        let r = try f.call { Request(id: $0, verb: .start, files: [try! f.config(port: port)]) }
        #expect(r.ok == false)
        #expect(r.error?.contains("cannot listen") == true, "error: \(r.error ?? "nil")")
        #expect(f.kernel.spawned.isEmpty)
        #expect(f.manager.supervisor.apps.isEmpty)
        #expect(f.manager.sockets["web"] == nil)
    }

    @Test func aPortHeldByAListenerNamesItsProcess() throws {
        let f = try ManagerFixture()
        let port = try Ports.free()
        let squatter = try Sockets.listenTCP(host: "127.0.0.1", port: port, backlog: 1, reusePort: false)
        defer { Posix.close(squatter) }
        let r = try f.call { Request(id: $0, verb: .start, files: [try! f.config(port: port)]) }
        let comm = String(decoding: try Posix.readFile("/proc/self/comm", limit: 64), as: UTF8.self)
            .trimmingCharacters(in: .newlines)
        #expect(r.error?.contains("127.0.0.1:\(port) is already served by pid \(getpid()) (\(comm))") == true, "error: \(r.error ?? "nil")")
    }

    /// Nothing listens, yet the bind fails: a connection's local end holds the
    /// port (what a client's ephemeral port does to an app port inside that range).
    @Test func aPortHeldByAConnectionSaysSoAndNamesTheEphemeralRange() throws {
        let f = try ManagerFixture()
        let server = try Sockets.listenTCP(host: "127.0.0.1", port: try Ports.free(), backlog: 4, reusePort: false)
        defer { Posix.close(server) }
        let port = try Ports.free()
        // A client bound to `port` before it connects: its local end is 127.0.0.1:port.
        let client = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        #expect(client >= 0)
        defer { close(client) }
        var local = sockaddr_in()
        local.sin_family = sa_family_t(AF_INET)
        local.sin_port = port.bigEndian
        local.sin_addr.s_addr = inet_addr("127.0.0.1")
        var peer = sockaddr_in()
        var len = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafeMutablePointer(to: &peer) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(server, $0, &len) } }
        let bound = withUnsafePointer(to: &local) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(client, $0, len) } }
        let connected = withUnsafePointer(to: &peer) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(client, $0, len) } }
        try #require(bound == 0 && connected == 0, "client bind/connect: \(String(cString: strerror(errno)))")

        let r = try f.call { Request(id: $0, verb: .start, files: [try! f.config(port: port)]) }
        let error = r.error ?? ""
        #expect(error.contains("127.0.0.1:\(port) is in use by a connection's local end, not by a listener"), "error: \(error)")
        // The test's port is below the ephemeral range, so no range is blamed.
        if let range = ListenerProbe.ephemeralRange(), range.contains(Int(port)) {
            #expect(error.contains("ephemeral range \(range.lowerBound)-\(range.upperBound)"), "error: \(error)")
        } else {
            #expect(!error.contains("ephemeral"), "error: \(error)")
        }
        #expect(f.kernel.spawned.isEmpty)
        #expect(f.manager.sockets["web"] == nil)
    }

    @Test func theEphemeralRangeIsRead() throws {
        let range = try #require(ListenerProbe.ephemeralRange(), "/proc/sys/net/ipv4/ip_local_port_range is readable here")
        #expect(range.lowerBound >= 1 && range.upperBound <= 65535)
        // A port inside it, held by a connection, is explained by the range.
        let text = SocketTableError.held(socket: "http", address: "127.0.0.1:\(range.lowerBound)", port: UInt16(range.lowerBound),
                                         by: .connection(ephemeral: range)).description
        #expect(text.contains("choose a port below \(range.lowerBound)"), "\(text)")
    }

    @Test func theAppsAreRememberedInTheStateFile() throws {
        let f = try ManagerFixture()
        let path = try f.config()
        try f.startReady(path)
        f.manager.flushState()
        let (apps, problem) = f.manager.store.load(now: 0)
        #expect(problem == nil)
        #expect(apps == [RememberedApp(name: "web", config: path, workers: nil, stopped: false)])
    }

    @Test func aFollowingClientThatHangsUpIsForgottenBySink() throws {
        let f = try ManagerFixture()
        try f.startReady(try f.config())
        let follower = try f.client(pid: 6000)
        follower.send(Request(id: 1, verb: .logs, name: "web", follow: true))
        try runLoop(f.loop, until: "the follow is set up", pump: { follower.pump(); follower.receive() }) {
            f.manager.output.sinks["web"]?.followers.count == 1
        }
        let process = try #require(f.kernel.processes[f.pids[0]])
        try writeAll(process.stdout, "hello follower\n")
        try runLoop(f.loop, until: "the line reaches the follower", pump: { follower.receive() }) {
            follower.responses.contains { $0.log?.first?.text == "hello follower" }
        }
        follower.close()
        try runLoop(f.loop, until: "the follower is forgotten") { f.manager.output.sinks["web"]?.followers.isEmpty == true }
    }
}
