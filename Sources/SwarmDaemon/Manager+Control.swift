import Foundation
import Glibc
import SwarmConfig
import SwarmCore
import SwarmProtocol
import SwarmSystem

extension Manager: ControlHandler {
    func setUpControlSocket(adopting adopted: Int32? = nil) throws {
        if let adopted {
            controlFD = adopted
            if let path = Sockets.unixPath(of: adopted) { controlSocketPath = path }
        } else if let i = sockets.passedBySystemd.firstIndex(where: { $0.name == "control" }) {
            controlFD = sockets.passedBySystemd.remove(at: i).fd
            controlFromSystemd = true
            if let path = Sockets.unixPath(of: controlFD) { controlSocketPath = path }
            try Posix.setNonBlocking(controlFD)
            log.info("using the control socket passed by systemd (fd \(controlFD), \(controlSocketPath))")
        } else {
            let dir = FileSystem.split(options.socketPath).directory
            try FileSystem.makeDirectories(dir, mode: 0o755)
            // Whoever may write in the socket's directory could bind the path first and
            // receive swarmctl's requests. Root-owned and not writable by others is fine too.
            do { try TrustedDirectory.verify(path: dir, owners: geteuid() == 0 ? [0] : [geteuid(), 0]) } catch {
                throw DaemonError.untrusted("control socket directory: \(error)")
            }
            var mode: mode_t = 0o600
            if options.socketGroup != nil { mode = 0o660 }
            controlFD = try Sockets.listenUnix(path: options.socketPath, backlog: 256, mode: mode)
            if let group = options.socketGroup {
                guard let gid = Users.lookupGroup(group) else { throw DaemonError.control("--socket-group: no group named '\(group)'") }
                try FileSystem.changeOwner(options.socketPath, uid: nil, gid: gid)
            }
            try Posix.setNonBlocking(controlFD)
        }
        try control.listen(on: controlFD)
    }

    func handle(_ request: Request, from client: ControlClient) {
        let id = request.id
        switch request.verb {
        case .ping:
            control.send(client, .success(id, "pong"))
        case .version:
            var r = Response.success(id, "swarmd \(swarmVersion), protocol \(ControlProtocol.version)")
            r.version = swarmVersion
            control.send(client, r)
        case .status:
            sendStatus(request, to: client)
        case .start:
            startFiles(request, client)
        case .stop, .restart, .delete:
            guard let selector = selector(request, client) else { return }
            if request.verb == .delete {
                switch selector {
                case let .app(name) where brokenApps[name] != nil:
                    forgetBroken(name)
                    removeQuickStartConfig(name)
                    return control.send(client, .success(id, "\(name): deleted"))
                case .all:
                    for name in brokenOrder {
                        forgetBroken(name)
                        if supervisor.apps[name] == nil { removeQuickStartConfig(name) }
                    }
                default: break
                }
            }
            if case let .app(name) = selector, supervisor.apps[name] == nil {
                if let broken = brokenApps[name] {
                    return control.send(client, .failure(id, "\(name) cannot run: \(broken.reason)"))
                }
                return control.send(client, .failure(id, CommandError.unknownApp(name).description))
            }
            if request.verb == .stop, case let .app(name) = selector, supervisor.apps[name]?.goal == .stopped {
                return control.send(client, .success(id, "\(name): already stopped"))
            }
            let command: Command = request.verb == .stop ? .stop(selector) : request.verb == .restart ? .restart(selector) : .delete(selector)
            let deleting: [String]
            if request.verb == .delete {
                if case let .app(name) = selector { deleting = [name] } else { deleting = supervisor.appOrder }
            } else {
                deleting = []
            }
            submit([command], for: request, client)
            // Forgotten in apps.json as soon as the delete is accepted (its workers may still be
            // stopping): the generated config goes with it, so a swarmd restart cannot find it.
            for name in deleting where supervisor.apps[name].map({ $0.goal == .deleted }) ?? true {
                removeQuickStartConfig(name)
            }
        case .reload:
            guard let selector = selector(request, client) else { return }
            reload(selector, request, client)
        case .scale:
            switch (request.name, request.count, request.delta) {
            case let (name?, count?, nil): submit([.scale(name, count)], for: request, client)
            case let (name?, nil, delta?): submit([.scaleBy(name, delta)], for: request, client)
            default: control.send(client, .failure(id, "scale needs 'name' and exactly one of 'count' and 'delta'"))
            }
        case .logs:
            logs(request, client)
        case .shutdown:
            submit([.shutdown], for: request, client)
        case .drain, .undrain:
            setDrained(request, client)
        case .events:
            subscribeEvents(request, client)
        case .daemonReexec:
            if let why = reexec(reply: (client, id)) { control.send(client, .failure(id, "cannot re-execute now: \(why)")) }
        }
    }

    func clientClosed(_ client: ControlClient) {
        let key = ObjectIdentifier(client)
        for name in client.following { output.sinks[name]?.followers[key] = nil }
        client.following = []
        lifecycle.unsubscribe(client)
    }

    func selector(_ request: Request, _ client: ControlClient) -> AppSelector? {
        guard let name = request.name, !name.isEmpty else {
            control.send(client, .failure(request.id, "\(request.verb.rawValue) needs an app name or 'all'"))
            return nil
        }
        return name == "all" ? .all : .app(name)
    }

    func startFiles(_ request: Request, _ client: ControlClient) {
        let id = request.id
        if let quick = request.quickStart {
            guard request.files?.isEmpty ?? true else {
                return control.send(client, .failure(id, "start takes config files or a quick start, not both"))
            }
            return quickStart(quick, request, client)
        }
        guard let files = request.files, !files.isEmpty else {
            return control.send(client, .failure(id, "start needs at least one config file"))
        }
        guard files.count <= 256 else { return control.send(client, .failure(id, "at most 256 files at once")) }
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
        let replace = request.replace ?? false
        errors += supervisor.startProblems(specs, replace: replace)
        guard errors.isEmpty else { return control.send(client, .failure(id, errors.joined(separator: "\n"))) }
        // Bind everything before starting anything: one failure starts nothing.
        var bound: [(AppSpec, AppSockets)] = []
        for spec in specs {
            switch sockets.bind(spec, replacing: replace) {
            case let .success(s): bound.append((spec, s))
            case let .failure(error):
                for (_, s) in bound { s.close() }
                return control.send(client, .failure(id, "\(spec.sourcePath): cannot listen: \(error)"))
            }
        }
        var commands: [Command] = resumes.map { .resume(.app($0)) }
        for (spec, s) in bound {
            forgetBroken(spec.name)
            sockets.install(s, for: spec.name)
            commands.append(.start(spec, replace: replace))
        }
        submit(commands, for: request, client)
    }

    // MARK: - Quick start

    /// Where quick-start configs live: `<state-dir>/apps/`, swarmd's own like the rest of the state dir.
    static let quickStartDirectory = "apps"

    func quickStartDirectoryHandle() throws -> TrustedDirectory {
        try stateDirectory.subdirectory(Manager.quickStartDirectory, owners: [geteuid()], create: 0o700)
    }

    /// `swarmctl start --name web -i 4 --listen … -- node server.js`: the
    /// flags become `<state-dir>/apps/web.conf`, which is then an app config
    /// like any other (remembered in apps.json, re-read by `reload`, shown by
    /// `status`). Every check runs before anything is written or bound, and a
    /// failure after that undoes what was done: a refused quick start changes nothing.
    func quickStart(_ q: QuickStartRequest, _ request: Request, _ client: ControlClient) {
        let id = request.id
        let replace = request.replace ?? false
        guard q.env.count <= QuickStartRequest.maxItems else {
            return control.send(client, .failure(id, "--env: at most \(QuickStartRequest.maxItems) variables"))
        }
        guard q.command.count <= QuickStartRequest.maxItems else {
            return control.send(client, .failure(id, "command: at most \(QuickStartRequest.maxItems) arguments"))
        }
        if AppConfig.nameProblem(q.name) == nil, !replace {
            if let app = supervisor.apps[q.name] {
                let state = app.goal == .running ? "running" : app.goal == .stopped ? "stopped" : "being deleted"
                return control.send(client, .failure(id, "--name: an app named '\(q.name)' is already \(state) (config \(app.spec.sourcePath)); "
                    + "choose another name, delete it first, or add --replace to replace it"))
            }
            if let broken = brokenApps[q.name] {
                return control.send(client, .failure(id, "--name: an app named '\(q.name)' is remembered (config \(broken.remembered.config), state error); "
                    + "choose another name, delete it first, or add --replace to replace it"))
            }
        }
        let directory: TrustedDirectory
        do { directory = try quickStartDirectoryHandle() } catch {
            return control.send(client, .failure(id, "cannot keep the quick-start config: \(error)"))
        }
        let file = "\(q.name).conf"
        let loaded: (text: String, spec: AppSpec)
        do {
            loaded = try QuickStart.load(name: q.name, instances: q.instances, listen: q.listen, env: q.env, command: q.command,
                                         cwd: q.cwd, path: directory.pathOf(file), environment: configEnvironment)
        } catch {
            return control.send(client, .failure(id, error.description))
        }
        let spec = loaded.spec
        let problems = supervisor.startProblems([spec], replace: replace)
        guard problems.isEmpty else { return control.send(client, .failure(id, problems.joined(separator: "\n"))) }
        let bound: AppSockets
        switch sockets.bind(spec, replacing: replace) {
        case let .success(s): bound = s
        case let .failure(error): return control.send(client, .failure(id, "--listen: cannot listen: \(error)"))
        }
        do {
            try directory.writeFileAtomically(file, Array(loaded.text.utf8), mode: 0o600)
        } catch {
            bound.close()
            return control.send(client, .failure(id, "cannot write the quick-start config: \(error); nothing was started"))
        }
        forgetBroken(spec.name)
        sockets.install(bound, for: spec.name)
        submit([.start(spec, replace: replace)], for: request, client, note: "\(spec.name): config \(spec.sourcePath)")
    }

    /// The app is gone for good: so is the config a quick start wrote for it.
    func removeQuickStartConfig(_ name: String) {
        guard AppConfig.nameProblem(name) == nil,
              let directory = try? stateDirectory.subdirectory(Manager.quickStartDirectory, owners: [geteuid()]) else { return }
        do { _ = try directory.remove("\(name).conf") } catch {
            log.warning("Failed to remove \(directory.pathOf("\(name).conf")): \(error), ignoring")
        }
    }

    /// Re-reads each app's config file; the core checks what was read.
    func reloadRequests(_ names: [String]) -> (requests: [ReloadRequest], errors: [(app: String, error: String)]) {
        var requests: [ReloadRequest] = []
        var errors: [(app: String, error: String)] = []
        for name in names {
            guard let app = supervisor.apps[name] else { continue }
            do {
                requests.append(ReloadRequest(app: name, spec: try AppConfig.load(path: app.spec.sourcePath, environment: configEnvironment)))
            } catch {
                errors.append((name, error.description))
                shellEvent(LifecycleDraft(kind: "config-error", app: name, message: error.description,
                                          details: ["config": app.spec.sourcePath]))
            }
        }
        return (requests, errors)
    }

    func reload(_ selector: AppSelector, _ request: Request, _ client: ControlClient) {
        let names: [String]
        switch selector {
        case .all: names = supervisor.appOrder
        case let .app(name):
            if let broken = brokenApps[name], supervisor.apps[name] == nil {
                return restartBroken(name, broken.remembered, request, client)
            }
            guard supervisor.apps[name] != nil else { return control.send(client, .failure(request.id, CommandError.unknownApp(name).description)) }
            names = [name]
        }
        guard !names.isEmpty else { return control.send(client, .success(request.id, "no apps to reload")) }
        let (requests, errors) = reloadRequests(names)
        guard errors.isEmpty else {
            return control.send(client, .failure(request.id, errors.map { "\($0.error) (the running config stays in force)" }.joined(separator: "\n")))
        }
        submit([.reload(requests)], for: request, client)
    }

    /// `reload NAME` of an app kept in the error state: its config is read
    /// again, and if it loads and binds now, the app starts.
    func restartBroken(_ name: String, _ entry: RememberedApp, _ request: Request, _ client: ControlClient) {
        let spec: AppSpec
        do { spec = try AppConfig.load(path: entry.config, environment: configEnvironment) } catch {
            brokenApps[name]?.reason = error.description
            return control.send(client, .failure(request.id, "\(name) still cannot run: \(error.description)"))
        }
        guard spec.name == name else {
            return control.send(client, .failure(request.id, "\(entry.config): name: the file now names the app '\(spec.name)', not '\(name)'; use swarmctl start for a new app"))
        }
        switch sockets.bind(spec) {
        case let .failure(error):
            brokenApps[name]?.reason = "\(spec.sourcePath): cannot listen: \(error)"
            control.send(client, .failure(request.id, "\(name) still cannot run: \(spec.sourcePath): cannot listen: \(error)"))
        case let .success(bound):
            forgetBroken(name)
            sockets.install(bound, for: name)
            var commands: [Command] = [entry.stopped ? .add(spec) : .start(spec, replace: false)]
            if let n = entry.workers, n != spec.workers { commands.append(.scale(name, n)) }
            submit(commands, for: request, client)
        }
    }

    /// SIGHUP: re-read every config and roll every app, telling systemd. Each
    /// app is its own reload: one app's broken file does not hold back the others.
    func reloadAll() {
        systemd.reloading()
        let (requests, errors) = reloadRequests(supervisor.appOrder)
        for e in errors { log.error("Failed to reload \(e.app): \(e.error); keeping its running config") }
        guard !requests.isEmpty else {
            // Nothing to roll: still finish the handshake, or systemd
            // (Type=notify-reload) waits for READY=1 until its timeout.
            if systemd.sentReady { systemd.reloaded() }
            return
        }
        let signal = Requester(.signal)
        let ids = requests.map { _ in newRequest(signal) }
        for (id, r) in zip(ids, requests) { feed(.command(id, .reload([r]))) }
    }

    func logs(_ request: Request, _ client: ControlClient) {
        let id = request.id
        guard let name = request.name else { return control.send(client, .failure(id, "logs needs an app name or 'all'")) }
        let names = name == "all" ? supervisor.appOrder : [name]
        if name != "all" && supervisor.apps[name] == nil && output.sinks[name] == nil {
            return control.send(client, .failure(id, CommandError.unknownApp(name).description))
        }
        let count = max(0, min(request.lines ?? 50, LogSink.tailLines))
        var lines: [LogLine] = []
        for n in names { lines += output.sink(for: n).tail.suffix(count) }
        lines.sort { $0.time < $1.time }
        lines = Array(lines.suffix(count))
        var r = Response(id: id, kind: .log)
        r.log = lines
        control.send(client, r)
        guard request.follow == true else { return control.send(client, .success(id)) }
        let key = ObjectIdentifier(client)
        for n in names {
            client.following.insert(n)
            output.sink(for: n).followers[key] = { [weak self, weak client] line in
                guard let self, let client, !client.closed else { return }
                if client.queuedBytes > ControlServer.readPause {
                    client.droppedLogLines += 1
                    return
                }
                var r = Response(id: id, kind: .log)
                r.log = [line]
                if client.droppedLogLines > 0 {
                    r.message = "\(client.droppedLogLines) lines dropped: this client reads too slowly"
                    client.droppedLogLines = 0
                }
                self.control.send(client, r)
            }
        }
    }

    // MARK: - Core requests and their answers

    func newRequest(_ requester: Requester?) -> RequestID {
        let id = RequestID(nextRequest)
        nextRequest += 1
        if let requester {
            requester.remaining.insert(id)
            requesters[id] = requester
        }
        return id
    }

    /// `note`: a first line of the answer, success or not (what the shell did before the commands).
    func submit(_ commands: [Command], for request: Request, _ client: ControlClient, note: String? = nil) {
        let requester = Requester(.client(client, id: request.id))
        if let note { requester.messages.append(note) }
        client.outstanding += 1
        let ids = commands.map { _ in newRequest(requester) }
        let failuresBefore = saveFailures
        // Held until every command is in, so a failed save is known before the answer goes out.
        requester.submitting = true
        for (id, command) in zip(ids, commands) { feed(.command(id, command)) }
        if saveFailures != failuresBefore, let why = lastSaveError {
            requester.errors.append("the change is in force, but \(store.path) could not be saved (\(why)): it will be forgotten when swarmd restarts")
        }
        requester.submitting = false
        if requester.remaining.isEmpty { finish(requester) }
    }

    /// The core answered one request; once a requester has every answer, it is told.
    func answer(_ id: RequestID, _ result: Result<String, CommandError>) {
        guard let requester = requesters.removeValue(forKey: id) else { return }
        requester.remaining.remove(id)
        switch result {
        case let .success(msg): requester.messages.append(msg)
        case let .failure(err):
            requester.errors.append(err.description)
            if case let .reloadFailed(app, _, slot, pid) = err, let slot {
                requester.details += failedWorkerLog(app: app, slot: slot, pid: pid)
            } else if case let .startFailed(app, _, _, _) = err {
                requester.details += startFailureLog(app: app)
            }
        }
        if requester.remaining.isEmpty && !requester.submitting { finish(requester) }
    }

    func finish(_ requester: Requester) {
        switch requester.kind {
        case let .client(client, clientID):
            client.outstanding -= 1
            if requester.errors.isEmpty {
                control.send(client, .success(clientID, requester.messages.joined(separator: "\n")))
            } else {
                var r = Response.failure(clientID, requester.errors.joined(separator: "\n"), details: requester.details.isEmpty ? nil : requester.details)
                if !requester.messages.isEmpty { r.message = requester.messages.joined(separator: "\n") }
                control.send(client, r)
            }
        case .signal:
            // Successes were noted by the core already.
            for e in requester.errors { log.error("\(e)") }
            updateSystemdStatus()
            systemd.reloaded()
        case .startup:
            for e in requester.errors { log.error("\(e)") }
            finishStartup()
        }
    }

    func failedWorkerLog(app: String, slot: Int, pid: Int32?) -> [String] {
        guard let sink = output.sinks[app] else { return [] }
        let lines = sink.tail.filter { $0.slot == slot && (pid == nil || $0.pid == pid!) }.suffix(10)
        return lines.map(\.formatted)
    }

    /// The last lines of the worker a `start`, `restart` or `scale` failure is
    /// about, as `reload` gives: the slot the core's message describes (the
    /// lowest one without a ready worker) and, in it, the worker that just
    /// exited if that is what settled the command, else the slot's latest.
    func startFailureLog(app name: String) -> [String] {
        guard let app = supervisor.apps[name], let sink = output.sinks[name] else { return [] }
        guard let slot = app.slots.first(where: { s in !(s.current.flatMap { supervisor.workers[$0] }?.isReady ?? false) }) else {
            return []
        }
        if eventsHead > 0, eventsHead <= events.count, case let .exited(pid, _) = events[eventsHead - 1] {
            // Exactly that worker's lines, also none: an older worker's would be about something else.
            if sink.tail.contains(where: { $0.pid == pid && $0.slot == slot.index }) || supervisor.worker(pid: pid)?.slot == slot.index {
                return failedWorkerLog(app: name, slot: slot.index, pid: pid)
            }
        }
        guard let latest = sink.tail.last(where: { $0.slot == slot.index })?.pid else { return [] }
        return failedWorkerLog(app: name, slot: slot.index, pid: latest)
    }

    func progress(_ id: RequestID, _ event: ReloadEvent) {
        guard let requester = requesters[id], case let .client(client, clientID) = requester.kind else { return }
        var r = Response(id: clientID, kind: .event)
        r.event = ProgressEvent(app: event.app, kind: event.kind.rawValue, slot: event.slot, pid: event.pid,
                                generation: event.generation, message: event.message)
        control.send(client, r)
    }
}
