import Foundation
import Glibc
import SwarmConfig
import SwarmCore
import SwarmProtocol
import SwarmSystem

/// One control client.
final class Connection {
    let fd: Int32
    let uid: uid_t
    let pid: pid_t
    var source: EventLoop.Source?
    var reader = FrameReader()
    var output: [UInt8] = []
    var writing = false
    var closing = false
    var lastActivity: Int64
    /// When the oldest incomplete request began to arrive.
    var partialSince: Int64?
    var following: Set<String> = []
    var droppedLogLines = 0
    /// Requests whose answer is still to come.
    var outstanding = 0

    init(fd: Int32, uid: uid_t, pid: pid_t, now: Int64) {
        self.fd = fd
        self.uid = uid
        self.pid = pid
        lastActivity = now
    }

    var privileged: Bool { uid == 0 || uid == getuid() }
}

/// A client request waiting for one or more core commands to be answered.
final class PendingCommand {
    weak var connection: Connection?
    let clientID: UInt64
    var remaining: Set<RequestID> = []
    var messages: [String] = []
    var errors: [String] = []
    var details: [String] = []

    init(connection: Connection?, clientID: UInt64) {
        self.connection = connection
        self.clientID = clientID
    }
}

extension Daemon {
    static let maxConnections = 1024
    /// Bytes queued to a client before it counts as not reading.
    static let maxOutput = 8 << 20
    /// A request must arrive whole within this time.
    static let requestTimeout: Int64 = 10_000_000_000
    /// An idle connection is closed after this.
    static let idleTimeout: Int64 = 600_000_000_000

    func setUpControlSocket(adopting adopted: Int32? = nil) throws {
        if let adopted {
            controlFD = adopted
        } else if let i = systemdFDs.firstIndex(where: { $0.name == "control" }) {
            controlFD = systemdFDs.remove(at: i).fd
            controlFromSystemd = true
            try Posix.setNonBlocking(controlFD)
            log.info("using the control socket passed by systemd (fd \(controlFD))")
        } else {
            let dir = (options.socketPath as NSString).deletingLastPathComponent
            try Posix.mkdirs(dir, mode: 0o755)
            var mode: mode_t = 0o600
            if options.socketGroup != nil { mode = 0o660 }
            controlFD = try Sockets.listenUnix(path: options.socketPath, backlog: 256, mode: mode)
            if let group = options.socketGroup {
                guard let gid = Users.lookupGroup(group) else { throw DaemonError.control("--socket-group: no group named '\(group)'") }
                if chown(options.socketPath, getuid(), gid) < 0 { throw SystemError("chown", errno: errno, subject: options.socketPath) }
            }
            try Posix.setNonBlocking(controlFD)
        }
        controlSource = try loop.addReader(controlFD, priority: -10) { [weak self] _ in self?.acceptClients() }
        sweepSource = try loop.addPeriodic(every: 1_000_000_000) { [weak self] in self?.sweepConnections() }
    }

    func acceptClients() {
        for _ in 0..<64 {
            let fd: Int32
            do {
                guard let c = try Sockets.accept(controlFD) else { return }
                fd = c
            } catch {
                // EMFILE/ENFILE: stop accepting for a moment instead of spinning on a readable socket.
                if !acceptFailing {
                    log.error("Failed to accept a control connection: \(error); pausing accepts (retrying every 100ms)")
                    acceptFailing = true
                }
                controlSource?.setEnabled(false)
                acceptPausedUntil = Posix.monotonicNanoseconds() + 100_000_000
                return
            }
            guard connections.count < Daemon.maxConnections else {
                let msg = Codec.encode(Response.failure(0, "too many control connections (\(Daemon.maxConnections)); try again later"))
                _ = msg.withUnsafeBytes { Glibc.write(fd, $0.baseAddress, $0.count) }
                Posix.close(fd)
                continue
            }
            if acceptFailing {
                acceptFailing = false
                log.notice("accepting control connections again")
            }
            let cred = Sockets.peerCredentials(fd) ?? (pid: 0, uid: uid_t.max, gid: gid_t.max)
            let conn = Connection(fd: fd, uid: cred.uid, pid: cred.pid, now: Posix.monotonicNanoseconds())
            let key = ObjectIdentifier(conn)
            do {
                conn.source = try loop.addReader(fd, priority: -5) { [weak self] revents in self?.onClientEvent(key, revents) }
                connections[key] = conn
            } catch {
                Posix.close(fd)
            }
        }
    }

    func sweepConnections() {
        refillOutputBudgets()
        let now = Posix.monotonicNanoseconds()
        // Quiet for a while after control traffic or spawning: give back the code pages they touched.
        if let last = lastBusyAt, now - last > 2_000_000_000 {
            lastBusyAt = nil
            ProcFS.pageOutCleanMappings()
        }
        if let until = acceptPausedUntil, now >= until {
            acceptPausedUntil = nil
            controlSource?.setEnabled(true)
        }
        for conn in connections.values {
            if let since = conn.partialSince, now - since > Daemon.requestTimeout {
                send(conn, Response.failure(0, "request not completed within \(Daemon.requestTimeout / 1_000_000_000)s; closing"))
                closeAfterFlush(conn)
            } else if conn.outstanding == 0 && conn.following.isEmpty && conn.output.isEmpty && now - conn.lastActivity > Daemon.idleTimeout {
                drop(conn)
            }
        }
    }

    func onClientEvent(_ key: ObjectIdentifier, _ revents: UInt32) {
        guard let conn = connections[key] else { return }
        if revents & IOEvents.writable != 0 { flush(conn) }
        if revents & (IOEvents.readable | IOEvents.hangup | IOEvents.error) != 0 { readClient(conn) }
    }

    func readClient(_ conn: Connection) {
        var buf = [UInt8](repeating: 0, count: 65536)
        let n: Int
        do { n = try buf.withUnsafeMutableBytes { try Posix.read(conn.fd, into: $0) } } catch {
            if (error as? SystemError)?.errno == EAGAIN { return }
            return drop(conn)
        }
        if n == 0 { return drop(conn) }
        if conn.closing { return }
        conn.lastActivity = Posix.monotonicNanoseconds()
        lastBusyAt = conn.lastActivity
        conn.reader.append(buf[0..<n])
        while true {
            let frame: [UInt8]?
            do { frame = try conn.reader.next() } catch {
                send(conn, Response.failure(0, "\(error); closing the connection"))
                closeAfterFlush(conn)
                return
            }
            guard let frame else { break }
            if frame.isEmpty { continue }
            handleFrame(conn, frame)
            if conn.closing { return }
        }
        conn.partialSince = conn.reader.pendingCount > 0 ? (conn.partialSince ?? conn.lastActivity) : nil
    }

    func handleFrame(_ conn: Connection, _ frame: [UInt8]) {
        let request: Request
        do { request = try Codec.decodeRequest(frame) } catch {
            send(conn, Response.failure(Codec.peekID(frame), error.description))
            return
        }
        guard conn.privileged || request.verb.isReadOnly else {
            send(conn, Response.failure(request.id, "permission denied: uid \(conn.uid) may only use ping, version and status (swarmd runs as uid \(getuid()))"))
            return
        }
        handle(request, from: conn)
    }

    func handle(_ request: Request, from conn: Connection) {
        let id = request.id
        switch request.verb {
        case .ping:
            send(conn, .success(id, "pong"))
        case .version:
            var r = Response.success(id, "swarmd \(swarmVersion), protocol \(ControlProtocol.version)")
            r.version = swarmVersion
            send(conn, r)
        case .status:
            var r = Response.success(id)
            do { r.status = try statusReport(only: request.name) } catch {
                return send(conn, .failure(id, "\(error)"))
            }
            send(conn, r)
        case .start:
            startFiles(request, conn)
        case .stop, .restart, .delete:
            guard let selector = selector(request, conn) else { return }
            if case let .app(name) = selector, supervisor.apps[name] == nil {
                return send(conn, .failure(id, CommandError.unknownApp(name).description))
            }
            if request.verb == .stop, case let .app(name) = selector, supervisor.apps[name]?.goal == .stopped {
                return send(conn, .success(id, "\(name): already stopped"))
            }
            let command: Command = request.verb == .stop ? .stop(selector) : request.verb == .restart ? .restart(selector) : .delete(selector)
            submit([command], for: request, conn)
        case .reload:
            guard let selector = selector(request, conn) else { return }
            reload(selector, request, conn)
        case .scale:
            switch (request.name, request.count, request.delta) {
            case let (name?, count?, nil): submit([.scale(name, count)], for: request, conn)
            case let (name?, nil, delta?): submit([.scaleBy(name, delta)], for: request, conn)
            default: send(conn, .failure(id, "scale needs 'name' and exactly one of 'count' and 'delta'"))
            }
        case .logs:
            logs(request, conn)
        case .shutdown:
            submit([.shutdown], for: request, conn)
        case .daemonReexec:
            if let why = reexec(reply: (conn, id)) { send(conn, .failure(id, "cannot re-execute now: \(why)")) }
        }
    }

    func selector(_ request: Request, _ conn: Connection) -> AppSelector? {
        guard let name = request.name, !name.isEmpty else {
            send(conn, .failure(request.id, "\(request.verb.rawValue) needs an app name or 'all'"))
            return nil
        }
        return name == "all" ? .all : .app(name)
    }

    func startFiles(_ request: Request, _ conn: Connection) {
        let id = request.id
        guard let files = request.files, !files.isEmpty else {
            return send(conn, .failure(id, "start needs at least one config file"))
        }
        guard files.count <= 256 else { return send(conn, .failure(id, "at most 256 files at once")) }
        var specs: [AppSpec] = []
        var errors: [String] = []
        var resumes: [String] = []
        for file in files {
            // A bare app name: start a stopped app again.
            if !file.contains("/"), !file.hasSuffix(".conf"), let app = supervisor.apps[file] {
                if app.goal == .running { errors.append("\(file): already running") } else { resumes.append(file) }
                continue
            }
            do { specs.append(try AppConfig.load(path: file, environment: configEnvironment)) } catch { errors.append(error.description) }
        }
        if let dup = duplicateName(specs) { errors.append("two config files define an app named '\(dup)'") }
        let replace = request.replace ?? false
        for spec in specs where !replace {
            if let app = supervisor.apps[spec.name], app.goal != .deleted {
                errors.append("\(spec.sourcePath): \(CommandError.appExists(spec.name).description)")
            }
        }
        guard errors.isEmpty else { return send(conn, .failure(id, errors.joined(separator: "\n"))) }
        // Bind everything before starting anything: one failure starts nothing.
        var bound: [(AppSpec, AppSockets)] = []
        for spec in specs {
            let old = replace ? appSockets[spec.name] : nil
            switch bindSockets(for: spec, replacing: old) {
            case let .success(s): bound.append((spec, s))
            case let .failure(error):
                for (_, s) in bound { s.close() }
                return send(conn, .failure(id, "\(spec.sourcePath): cannot listen: \(error)"))
            }
        }
        var commands: [Command] = resumes.map { .resume(.app($0)) }
        for (spec, sockets) in bound {
            if let old = appSockets[spec.name] { old.close() }
            appSockets[spec.name] = sockets
            reuseportCounts[spec.name] = nil
            commands.append(.start(spec, replace: replace))
        }
        submit(commands, for: request, conn)
    }

    func reload(_ selector: AppSelector, _ request: Request, _ conn: Connection) {
        let names: [String]
        switch selector {
        case .all: names = supervisor.appOrder
        case let .app(name):
            guard supervisor.apps[name] != nil else { return send(conn, .failure(request.id, CommandError.unknownApp(name).description)) }
            names = [name]
        }
        guard !names.isEmpty else { return send(conn, .success(request.id, "no apps to reload")) }
        var specs: [AppSpec] = []
        var errors: [String] = []
        for name in names {
            let app = supervisor.apps[name]!
            do {
                let spec = try AppConfig.load(path: app.spec.sourcePath, environment: configEnvironment)
                if spec.name != name {
                    errors.append("\(app.spec.sourcePath): name: the file now names the app '\(spec.name)', not '\(name)'; use swarmctl start for a new app")
                } else if spec.sockets != app.spec.sockets {
                    errors.append("\(app.spec.sourcePath): socket: the sockets changed; a rolling reload keeps the listening sockets, so use 'swarmctl start --replace \(app.spec.sourcePath)' to rebind")
                } else {
                    specs.append(spec)
                }
            } catch {
                errors.append("\(error.description) (the running config stays in force)")
            }
        }
        guard errors.isEmpty else { return send(conn, .failure(request.id, errors.joined(separator: "\n"))) }
        submit([.reload(specs.map { ReloadRequest(app: $0.name, spec: $0) })], for: request, conn)
    }

    func logs(_ request: Request, _ conn: Connection) {
        let id = request.id
        guard let name = request.name else { return send(conn, .failure(id, "logs needs an app name or 'all'")) }
        let names = name == "all" ? supervisor.appOrder : [name]
        if name != "all" && supervisor.apps[name] == nil && sinks[name] == nil {
            return send(conn, .failure(id, CommandError.unknownApp(name).description))
        }
        let count = max(0, min(request.lines ?? 50, LogSink.tailLines))
        var lines: [LogLine] = []
        for n in names { lines += sink(for: n).tail.suffix(count) }
        lines.sort { $0.time < $1.time }
        lines = Array(lines.suffix(count))
        var r = Response(id: id, kind: .log)
        r.log = lines
        send(conn, r)
        guard request.follow == true else { return send(conn, .success(id)) }
        let key = ObjectIdentifier(conn)
        for n in names {
            conn.following.insert(n)
            sink(for: n).followers[key] = { [weak self, weak conn] line in
                guard let self, let conn else { return }
                if conn.output.count > Daemon.maxOutput / 2 {
                    conn.droppedLogLines += 1
                    return
                }
                var r = Response(id: id, kind: .log)
                r.log = [line]
                if conn.droppedLogLines > 0 {
                    r.message = "\(conn.droppedLogLines) lines dropped: this client reads too slowly"
                    conn.droppedLogLines = 0
                }
                self.send(conn, r)
            }
        }
    }

    // MARK: - Core requests

    func newRequest(_ pending: PendingCommand?) -> RequestID {
        let id = RequestID(nextRequest)
        nextRequest += 1
        if let pending {
            pending.remaining.insert(id)
            self.pending[id] = pending
        }
        return id
    }

    func submit(_ commands: [Command], for request: Request, _ conn: Connection) {
        let p = PendingCommand(connection: conn, clientID: request.id)
        conn.outstanding += 1
        let ids = commands.map { _ in newRequest(p) }
        for (id, command) in zip(ids, commands) { feed(.command(id, command)) }
    }

    func reply(_ id: RequestID, _ result: Result<String, CommandError>) {
        if initialRequests.remove(id) != nil {
            if case let .failure(e) = result { log.error("\(e.description)") }
        }
        if reloadingForSIGHUP.remove(id) != nil {
            switch result {
            case let .success(m): log.notice("\(m)")
            case let .failure(e): log.error("\(e.description)")
            }
            Systemd.notify("READY=1\nSTATUS=\(lastSystemdStatus)")
        }
        guard let p = pending.removeValue(forKey: id) else { return }
        p.remaining.remove(id)
        switch result {
        case let .success(msg): p.messages.append(msg)
        case let .failure(err):
            p.errors.append(err.description)
            if case let .reloadFailed(app, _, slot, pid) = err, let slot {
                p.details += failedWorkerLog(app: app, slot: slot, pid: pid)
            }
        }
        guard p.remaining.isEmpty, let conn = p.connection else { return }
        conn.outstanding -= 1
        if p.errors.isEmpty {
            send(conn, .success(p.clientID, p.messages.joined(separator: "\n")))
        } else {
            var r = Response.failure(p.clientID, p.errors.joined(separator: "\n"), details: p.details.isEmpty ? nil : p.details)
            if !p.messages.isEmpty { r.message = p.messages.joined(separator: "\n") }
            send(conn, r)
        }
    }

    func failedWorkerLog(app: String, slot: Int, pid: Int32?) -> [String] {
        guard let sink = sinks[app] else { return [] }
        let lines = sink.tail.filter { $0.slot == slot && (pid == nil || $0.pid == pid!) }.suffix(10)
        return lines.map(\.formatted)
    }

    func progress(_ id: RequestID, _ event: ReloadEvent) {
        guard let p = pending[id], let conn = p.connection else { return }
        var r = Response(id: p.clientID, kind: .event)
        r.event = ProgressEvent(app: event.app, kind: event.kind.rawValue, slot: event.slot, pid: event.pid,
                                generation: event.generation, message: event.message)
        send(conn, r)
    }

    // MARK: - Output

    func send(_ conn: Connection, _ response: Response) {
        conn.output += Codec.encode(response)
        if conn.output.count > Daemon.maxOutput {
            log.warning("control client pid \(conn.pid) does not read its replies; closing it")
            return drop(conn)
        }
        flush(conn)
    }

    func flush(_ conn: Connection) {
        while !conn.output.isEmpty {
            let n: Int
            do { n = try conn.output.withUnsafeBytes { try Posix.write(conn.fd, UnsafeRawBufferPointer(rebasing: $0.prefix(256 << 10))) } } catch {
                return drop(conn)
            }
            if n == 0 { break }
            conn.output.removeFirst(n)
        }
        let wantOut = !conn.output.isEmpty
        if wantOut != conn.writing, let src = conn.source {
            conn.writing = wantOut
            loop.setIOEvents(src, IOEvents.readable | (wantOut ? IOEvents.writable : 0))
        }
        if conn.closing && conn.output.isEmpty { drop(conn) }
    }

    func closeAfterFlush(_ conn: Connection) {
        conn.closing = true
        shutdown(conn.fd, Int32(SHUT_RD))
        flush(conn)
    }

    func drop(_ conn: Connection) {
        let key = ObjectIdentifier(conn)
        guard connections.removeValue(forKey: key) != nil else { return }
        conn.source?.cancel()
        conn.source = nil
        Posix.close(conn.fd)
        for name in conn.following { sinks[name]?.followers[key] = nil }
        conn.following = []
    }
}
