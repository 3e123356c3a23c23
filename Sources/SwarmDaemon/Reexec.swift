import Foundation
import Glibc
import SwarmCore
import SwarmProtocol
import SwarmSystem

/// What a swarmd hands to the binary it re-executes (same pid): the core's
/// state and every fd the workers depend on. Passed as JSON in a memfd
/// named by SWARM_REEXEC_FD; the fds themselves survive the exec.
struct Handover: Codable {
    struct SocketState: Codable {
        var name: String
        var shared: Int32
        var perSlot: [Int: Int32]
        var adopted: Bool
        /// eBPF program, state map, socket map.
        var roundRobin: [Int32]?
        /// The round-robin array as written: index → slot.
        var steeredSlots: [Int]?
    }

    struct OutputState: Codable {
        var fd: Int32
        var app: String
        var slot: Int
        var pid: Int32
        var stream: String
    }

    struct ReadyState: Codable {
        var worker: UInt64
        var app: String
        var slot: Int
        var pid: Int32
        var fd: Int32
    }

    /// The layout this binary writes and reads. A newer layout than a binary
    /// knows is refused (it would misread the fds); older ones read with defaults.
    /// 3: bind-interception notification fds (a binary that knew only 2 would
    /// leave them open unread, and every later bind of those workers would hang).
    /// 4: a fourth steering fd (the per-index connection counters; a binary that
    /// knew only 3 would drop the app's steering) and the core's health book
    /// (`Supervisor.Snapshot.health`), plus the shell's connection totals.
    static let currentVersion = 4
    var version = Handover.currentVersion
    var supervisor: Supervisor.Snapshot
    var startedAt: Int64
    var notifyPath: String
    var notifyFD: Int32
    var controlFD: Int32
    var controlFromSystemd: Bool
    var sockets: [String: [SocketState]]
    var outputs: [OutputState]
    var readyPipes: [ReadyState]
    var systemdFDs: [String: Int32]
    var sentReady: Bool
    /// The in-memory log tail of each app (`logs -n`, reload errors).
    var logTails: [String: [LogLine]]?
    /// Each intercepted worker's seccomp notification fd.
    var interceptors: [BindInterception.Handed]?
    /// `--metrics`: its listening socket and counters.
    var metrics: MetricsHandover?
    /// The health checker's connection counter readings and totals (version 4).
    var health: HealthHandover?
    /// What swarmd was started with, before it raised its own: the new image
    /// finds them raised, and its workers must get these.
    var originalNice: Int32?
    var originalNoFile: FileLimit?
    struct FileLimit: Codable {
        var soft: UInt64
        var hard: UInt64
    }

    static let variable = "SWARM_REEXEC_FD"

    var allFDs: [Int32] {
        var fds = [notifyFD, controlFD] + outputs.map(\.fd) + readyPipes.map(\.fd) + systemdFDs.values + (metrics.map { [$0.fd] } ?? [])
        fds += (interceptors ?? []).map(\.fd)
        for entries in sockets.values {
            for e in entries { fds += [e.shared] + e.perSlot.values + (e.roundRobin ?? []) }
        }
        return fds
    }

    /// The handover left by the previous swarmd, if this is a re-exec.
    static func take() throws -> Handover? {
        guard let value = Environment.take(variable) else { return nil }
        guard let fd = Int32(value) else { throw DaemonError.control("\(variable)=\(value) is not an fd") }
        defer { Posix.close(fd) }
        _ = try Posix.seek(fd, to: 0)
        let bytes = try Posix.readAll(fd, limit: 256 << 20, subject: "the hand-over memfd")
        let handover = try decode(bytes)
        for fd in handover.allFDs { try? Posix.setCloseOnExec(fd) }
        return handover
    }

    /// Reads a hand-over, refusing a layout newer than this binary knows.
    static func decode(_ bytes: [UInt8]) throws -> Handover {
        let handover = try JSONDecoder().decode(Handover.self, from: Data(bytes))
        guard handover.version <= currentVersion else {
            throw DaemonError.control("the swarmd that re-executed this one wrote hand-over version \(handover.version); this binary reads up to \(currentVersion)")
        }
        return handover
    }
}

extension Manager {
    /// Replaces this process's binary with `executablePath`, keeping the pid,
    /// every worker, listening socket and pipe. Returns why it could not, or
    /// never returns.
    func reexec(reply: (ControlClient, UInt64)?) -> String? {
        guard let snapshot = supervisor.snapshot() else { return supervisor.busyReason ?? "busy" }
        var socketStates: [String: [Handover.SocketState]] = [:]
        for (name, s) in sockets.apps {
            socketStates[name] = s.entries.map { e in
                Handover.SocketState(name: e.spec.name, shared: e.shared, perSlot: e.perSlot, adopted: e.adopted,
                                     roundRobin: e.roundRobin?.handoverFDs, steeredSlots: e.steeredSlots)
            }
        }
        let outputs = output.pipesForHandover.map { Handover.OutputState(fd: $0.fd, app: $0.app, slot: $0.slot, pid: $0.pid, stream: $0.stream) }
        let ready = output.readyPipes.values.map {
            Handover.ReadyState(worker: $0.worker.raw, app: $0.app, slot: $0.slot, pid: $0.pid, fd: $0.fd)
        }
        var named: [String: Int32] = [:]
        for (n, fd) in sockets.passedBySystemd { named[n] = fd }
        var tails: [String: [LogLine]] = [:]
        for (app, sink) in output.sinks { tails[app] = sink.tail }
        let handover = Handover(supervisor: snapshot, startedAt: startedAt, notifyPath: output.notifyPath, notifyFD: output.notifyFD,
                                controlFD: controlFD, controlFromSystemd: controlFromSystemd, sockets: socketStates, outputs: outputs,
                                readyPipes: ready, systemdFDs: named, sentReady: systemd.sentReady, logTails: tails,
                                interceptors: interception.forHandover,
                                metrics: metricsHandover, health: health.forHandover,
                                originalNice: kernel.workerPriority, originalNoFile: originalNoFile.map { Handover.FileLimit(soft: $0.soft, hard: $0.hard) })
        let memfd: Int32
        do { memfd = try Posix.memoryFile(name: "swarmd-handover", closeOnExec: true) } catch { return "\(error)" }
        do {
            try Posix.writeFully(memfd, Array(try JSONEncoder().encode(handover)), subject: "the hand-over memfd")
        } catch {
            Posix.close(memfd)
            return "writing the handover: \(error)"
        }
        guard FileSystem.isExecutableFile(executablePath) else {
            Posix.close(memfd)
            return "\(executablePath) is not executable"
        }
        flushState()
        // No probe outlives this image: its answer would be lost, and a readiness
        // probe's temporary socket-array index would be unknown to the next one.
        health.prepareForReexec()
        if let (client, id) = reply {
            // Answer now: the connection does not survive the exec.
            let bytes = Codec.encode(Response.success(id, "swarmd pid \(getpid()) re-executing \(executablePath)"))
            try? Sockets.sendAll(client.fd, bytes, timeoutNanoseconds: 1_000_000_000)
        }
        log.notice("re-executing \(executablePath) as pid \(getpid()) with \(supervisor.workers.count) workers")
        let fds = handover.allFDs + [memfd]
        for fd in fds { try? Posix.setCloseOnExec(fd, false) }
        var env = ProcessInfo.processInfo.environment
        env[Handover.variable] = String(memfd)
        let error = Spawner.withoutRealtimeGuard {
            Posix.exec(executablePath, arguments: [executablePath] + CommandLine.arguments.dropFirst(),
                       environment: env.map { "\($0.key)=\($0.value)" })
        }
        for fd in fds { try? Posix.setCloseOnExec(fd, true) }
        Posix.close(memfd)
        return "\(error)"
    }

    /// Takes over from the swarmd that re-executed into this one.
    func resume(from h: Handover) throws {
        supervisor = Supervisor(restoring: h.supervisor)
        supervisor.allowedCPUs = allowedCPUs
        supervisor.canRaisePriority = Spawner.canRaisePriority
        for (id, w) in supervisor.workers { if let pid = w.pid { workers[id] = pid } }
        startedAt = h.startedAt
        output.adoptNotifyPath(h.notifyPath)
        controlFromSystemd = h.controlFromSystemd
        sockets.passedBySystemd = h.systemdFDs.map { ($0.key, $0.value) }
        try setUpLoop(controlSocket: h.controlFD, notifySocket: h.notifyFD)
        // The drains the previous image saved (apps.json is written before every reply that changes it).
        let (remembered, problem) = store.load(now: kernel.wallClock())
        if let problem { log.error("\(problem)") }
        drained = Set(remembered.filter { $0.drained == true }.map(\.name))
        try setUpMetrics(handover: h.metrics)
        cgroups.setUp(stateDirectory: options.stateDir, fresh: false)
        for (id, w) in supervisor.workers { if let pid = w.pid { cgroups.adopt(id, app: w.app, slot: w.slot, pid: pid) } }
        for (name, states) in h.sockets {
            guard let app = supervisor.apps[name] else { continue }
            let entries: [AppSockets.Entry] = states.compactMap { s in
                guard let spec = app.spec.sockets.first(where: { $0.name == s.name }) else { return nil }
                let e = AppSockets.Entry(spec: spec, shared: s.shared, adopted: s.adopted)
                e.perSlot = s.perSlot
                if let fds = s.roundRobin, fds.count == 3 || fds.count == 4 {
                    e.roundRobin = RoundRobinSteering(adopting: fds[0], stateMap: fds[1], socketMap: fds[2],
                                                      countMap: fds.count == 4 ? fds[3] : -1)
                    e.steeredSlots = s.steeredSlots ?? []
                    for (i, slot) in e.steeredSlots.enumerated() { e.steeredIndex[slot] = i }
                }
                return e
            }
            sockets.install(AppSockets(restoring: entries), for: name)
        }
        interception.resume(h.interceptors ?? [])
        health.resume(h.health)
        // Who holds which socket, for the O_NONBLOCK rules (what each wanted is not handed over).
        for (id, w) in supervisor.workers where w.pid != nil {
            let fds = sockets[w.app]?.entries.compactMap { $0.fd(ofSlot: w.slot) } ?? []
            interception.flags.restore(id, fds: fds)
        }
        for (app, lines) in h.logTails ?? [:] { output.sink(for: app).restoreTail(lines) }
        for o in h.outputs { output.watch(fd: o.fd, app: o.app, slot: o.slot, pid: o.pid, stream: o.stream) }
        for r in h.readyPipes {
            output.watchReadyPipe(ReadyPipe(worker: WorkerID(r.worker), app: r.app, slot: r.slot, pid: r.pid, fd: r.fd))
        }
        log.notice("swarmd \(swarmVersion) re-executed as pid \(getpid()): \(supervisor.appOrder.count) apps, \(supervisor.workers.count) workers kept")
        // Children that exited during the exec: their SIGCHLD is still pending, but reap now anyway.
        reapChildren()
        feed(.tick)
        // The status text is not handed over: compute it before READY=1, or systemd is told "STATUS=".
        updateSystemdStatus()
        systemd.readyAgain()
    }
}
