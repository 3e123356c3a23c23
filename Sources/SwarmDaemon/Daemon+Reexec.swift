import CSwarmSpawn
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

    var version = 1
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
    var reuseportCounts: [String: Int]

    static let variable = "SWARM_REEXEC_FD"

    var allFDs: [Int32] {
        var fds = [notifyFD, controlFD] + outputs.map(\.fd) + readyPipes.map(\.fd) + systemdFDs.values
        for entries in sockets.values {
            for e in entries { fds += [e.shared] + e.perSlot.values + (e.roundRobin ?? []) }
        }
        return fds
    }

    /// The handover left by the previous swarmd, if this is a re-exec.
    static func take() throws -> Handover? {
        guard let text = getenv(variable) else { return nil }
        let value = String(cString: text)
        unsetenv(variable)
        guard let fd = Int32(value) else { throw DaemonError.control("\(variable)=\(value) is not an fd") }
        defer { Posix.close(fd) }
        lseek(fd, 0, SEEK_SET)
        var bytes: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = try chunk.withUnsafeMutableBytes { try Posix.read(fd, into: $0) }
            if n == 0 { break }
            bytes += chunk[0..<n]
        }
        let handover = try JSONDecoder().decode(Handover.self, from: Data(bytes))
        for fd in handover.allFDs { try? Posix.setCloseOnExec(fd) }
        return handover
    }
}

extension Daemon {
    /// Replaces this process's binary with `executablePath`, keeping the pid,
    /// every worker, listening socket and pipe. Returns why it could not, or
    /// never returns.
    func reexec(reply: (Connection, UInt64)?) -> String? {
        guard let snapshot = supervisor.snapshot() else { return supervisor.busyReason ?? "busy" }
        var sockets: [String: [Handover.SocketState]] = [:]
        for (name, s) in appSockets {
            sockets[name] = s.entries.map { e in
                Handover.SocketState(name: e.spec.name, shared: e.shared, perSlot: e.perSlot, adopted: e.adopted,
                                     roundRobin: e.roundRobin.map { [$0.program, $0.stateMap, $0.socketMap] })
            }
        }
        let outputs = outputPipes.values.map { Handover.OutputState(fd: $0.fd, app: $0.app, slot: $0.slot, pid: $0.pid, stream: $0.stream) }
        let ready = workerIO.values.filter { $0.readyPipe >= 0 }.map {
            Handover.ReadyState(worker: $0.id.raw, app: $0.app, slot: $0.slot, pid: $0.pid, fd: $0.readyPipe)
        }
        var named: [String: Int32] = [:]
        for (n, fd) in systemdFDs { named[n] = fd }
        let handover = Handover(supervisor: snapshot, startedAt: startedAt, notifyPath: notifyPath, notifyFD: notifyFD,
                                controlFD: controlFD, controlFromSystemd: controlFromSystemd, sockets: sockets, outputs: outputs,
                                readyPipes: ready, systemdFDs: named, sentReady: sentReady, reuseportCounts: reuseportCounts)
        let memfd = swarm_memfd_create("swarmd-handover")
        guard memfd >= 0 else { return "memfd_create: \(String(cString: strerror(errno)))" }
        do {
            try Posix.writeAll(memfd, Array(try JSONEncoder().encode(handover)))
        } catch {
            Posix.close(memfd)
            return "writing the handover: \(error)"
        }
        guard access(executablePath, X_OK) == 0 else {
            Posix.close(memfd)
            return "\(executablePath) is not executable"
        }
        flushState()
        if let (conn, id) = reply {
            // Answer now: the connection does not survive the exec.
            let bytes = Codec.encode(Response.success(id, "swarmd pid \(getpid()) re-executing \(executablePath)"))
            _ = bytes.withUnsafeBytes { Glibc.write(conn.fd, $0.baseAddress, $0.count) }
        }
        log.notice("re-executing \(executablePath) as pid \(getpid()) with \(supervisor.workers.count) workers")
        let fds = handover.allFDs + [memfd]
        for fd in fds { _ = fcntl(fd, F_SETFD, 0) }
        var env = ProcessInfo.processInfo.environment
        env[Handover.variable] = String(memfd)
        let envp: [UnsafeMutablePointer<CChar>?] = env.map { strdup("\($0.key)=\($0.value)") } + [nil]
        let argv: [UnsafeMutablePointer<CChar>?] = ([executablePath] + CommandLine.arguments.dropFirst()).map { strdup($0) } + [nil]
        execve(executablePath, argv, envp)
        let e = errno
        for fd in fds { _ = fcntl(fd, F_SETFD, FD_CLOEXEC) }
        Posix.close(memfd)
        for p in envp { free(p) }
        for p in argv { free(p) }
        return "execve(\(executablePath)): \(String(cString: strerror(e)))"
    }

    /// Takes over from the swarmd that re-executed into this one.
    func resume(from h: Handover) throws {
        supervisor = Supervisor(restoring: h.supervisor)
        startedAt = h.startedAt
        notifyPath = h.notifyPath
        sentReady = h.sentReady
        controlFromSystemd = h.controlFromSystemd
        reuseportCounts = h.reuseportCounts
        systemdFDs = h.systemdFDs.map { ($0.key, $0.value) }
        try setUpSignals()
        try setUpControlSocket(adopting: h.controlFD)
        notifyFD = h.notifyFD
        notifySource = try loop.addReader(notifyFD, priority: -5) { [weak self] _ in self?.onNotify() }
        housekeeping = try loop.addPost { [weak self] in self?.afterDispatch() }
        for (name, entries) in h.sockets {
            guard let app = supervisor.apps[name] else { continue }
            appSockets[name] = AppSockets(restoring: entries.compactMap { e in
                guard let spec = app.spec.sockets.first(where: { $0.name == e.name }) else { return nil }
                let rr = e.roundRobin.flatMap { fds in fds.count == 3 ? RoundRobinSteering(adopting: fds[0], stateMap: fds[1], socketMap: fds[2]) : nil }
                return (spec, e.shared, e.perSlot, e.adopted, rr)
            })
        }
        for o in h.outputs { watchOutput(fd: o.fd, app: o.app, slot: o.slot, pid: o.pid, stream: o.stream) }
        for r in h.readyPipes {
            let io = WorkerIO(id: WorkerID(r.worker), app: r.app, slot: r.slot)
            io.pid = r.pid
            io.readyPipe = r.fd
            workerIO[io.id] = io
            io.readySource = try? loop.addReader(r.fd) { [weak self, weak io] _ in
                guard let self, let io else { return }
                self.onReadyPipe(io)
            }
        }
        log.notice("swarmd \(swarmVersion) re-executed as pid \(getpid()): \(supervisor.appOrder.count) apps, \(supervisor.workers.count) workers kept")
        // Children that exited during the exec: their SIGCHLD is still pending, but reap now anyway.
        onSignal(SIGCHLD)
        feed(.tick)
        // The status text is not handed over: compute it before READY=1, or systemd is told "STATUS=".
        updateSystemdStatus()
        Systemd.notify("READY=1\nSTATUS=\(lastSystemdStatus)")
    }
}
