import Glibc
import SwarmConfig
import SwarmCore
import SwarmProtocol
import SwarmSystem

// Issue 16's operator verbs: describe, signal, reopen-logs.

extension Manager {
    /// `describe NAME`: the app's spec and slots, secrets masked here, before
    /// anything is encoded (a secret never crosses the control socket).
    func describe(_ request: Request, _ client: ControlClient) {
        let id = request.id
        guard let name = request.name, name != AppName.all else {
            return control.send(client, .failure(id, "describe needs one app name"))
        }
        do {
            var r = Response.success(id)
            r.describe = try describeApp(name)
            control.send(client, r)
        } catch {
            control.send(client, .failure(id, "\(error)"))
        }
    }

    func describeApp(_ name: String) throws -> AppDescription {
        // The worker rows as `status` builds them: one state, health and uptime everywhere.
        let status = try statusReport(only: name).apps.first
        guard let app = supervisor.apps[name], let status else {
            if let broken = brokenApps[name] {
                var d = AppDescription(name: name, state: "error", generation: 0, config: broken.remembered.config, command: [], executable: "",
                                       cwd: "", inheritEnv: false, envFiles: [], env: [], sockets: [], workersWanted: broken.remembered.workers ?? 0,
                                       workersReady: 0, restart: "", stop: "", slots: [], logs: LogFiles(target: "file", path: nil, files: [], maxSizeBytes: 0, keep: 0))
                d.configProblem = broken.reason
                d.configSHA256 = try? Digest.sha256Hex(Posix.readFile(broken.remembered.config, limit: AppConfig.maxFileSize))
                return d
            }
            throw DaemonError.control(CommandError.unknownApp(name).description)
        }
        let spec = app.spec
        let now = Instant(nanoseconds: kernel.now())
        var slots: [SlotHistory] = []
        for slot in app.slots {
            let rows = status.workers.filter { $0.slot == slot.index }
            let currentPid = slot.current.flatMap { supervisor.workers[$0]?.pid }
            let row = rows.first { $0.pid != nil && $0.pid == currentPid } ?? rows.first
            var h = SlotHistory(slot: slot.index, generation: slot.generation, pid: row?.pid ?? nil, state: row?.state ?? "stopped", restarts: slot.restarts)
            if row?.pid != nil { h.uptimeS = row?.uptimeS }
            h.health = row?.health
            h.lastExit = slot.lastExit?.description
            h.lastFailure = slot.lastFailure
            if let at = slot.restartAt { h.restartInS = max(0, ((at - now).seconds * 10).rounded() / 10) }
            let others = ([slot.incoming].compactMap { $0 } + slot.retiring).compactMap { supervisor.workers[$0]?.pid }
            if !others.isEmpty { h.others = others }
            if let exits = exitHistory[name]?[slot.index], !exits.isEmpty { h.exits = exits }
            slots.append(h)
        }
        let sink = output.sink(for: name)
        var logs = LogFiles(target: sink.journal == nil ? "file" : "journal", path: sink.journal == nil ? sink.path : nil, files: [],
                            maxSizeBytes: sink.maxSize, keep: sink.keep)
        if sink.journal == nil {
            for n in [sink.name] + (0..<max(0, sink.keep)).map({ "\(sink.name).\($0 + 1)" }) {
                if let st = try? sink.directory.statusOfEntry(n) { logs.files.append(LogFile(path: sink.directory.pathOf(n), bytes: st.size)) }
            }
        }
        if sink.writeErrors > 0 { logs.writeErrors = sink.writeErrors }
        var d = AppDescription(
            name: name, state: status.state, generation: app.generation, config: spec.sourcePath,
            command: SecretMask.arguments(spec.command), executable: spec.executable, cwd: spec.cwd,
            inheritEnv: spec.inheritEnvironment, envFiles: spec.envFiles,
            env: spec.env.keys.sorted().map { SecretMask.entry(key: $0, value: spec.env[$0]!) },
            sockets: spec.sockets.map { s in
                let balance = status.sockets.first { $0.name == s.name }?.balance ?? s.effectiveBalance.rawValue
                return DescribedSocket(name: s.name, listen: s.listen.description, balance: balance, backlog: Int(s.backlog), intercept: s.intercept)
            },
            workersWanted: status.workersWanted, workersReady: status.workersReady,
            restart: "\(spec.restart.mode.rawValue), backoff \(Self.secondsText(spec.restart.initialDelay))…\(Self.secondsText(spec.restart.maxDelay)), "
                + "crash loop at \(spec.restart.crashLoopRestarts) failures in \(Self.secondsText(spec.restart.crashLoopWindow))",
            stop: "\(spec.stop.signal), then SIGKILL after \(Self.secondsText(spec.stop.timeout))",
            slots: slots, logs: logs)
        d.user = spec.user
        d.group = spec.group
        d.memoryLimitBytes = spec.memoryLimit
        d.lastReload = status.lastReload
        do {
            d.configSHA256 = Digest.sha256Hex(try Posix.readFile(spec.sourcePath, limit: AppConfig.maxFileSize))
            var onDisk = try AppConfig.load(path: spec.sourcePath, environment: configEnvironment)
            // `scale` changes the count without touching the file: not a change a reload would make.
            onDisk.workers = spec.workers
            d.configChanged = onDisk != spec
        } catch {
            d.configProblem = "\(error)"
        }
        return d
    }

    /// Called as a worker is reaped, before the core hears of it: the slot's
    /// history for `describe`, at most `SlotExit.kept` per slot. Apps that are
    /// gone are dropped once more than `maxHistoryApps` names are kept.
    func recordExit(pid: Int32, _ status: SwarmCore.ExitStatus) {
        guard let w = supervisor.worker(pid: pid) else { return }
        let up = max(0, (Instant(nanoseconds: kernel.now()) - w.startedAt).seconds)
        var exits = exitHistory[w.app]?[w.slot] ?? []
        exits.append(SlotExit(at: rfc3339(Posix.realtimeNanoseconds()), pid: pid, generation: w.generation, status: status.description,
                              uptimeS: (up * 1000).rounded() / 1000))
        if exits.count > SlotExit.kept { exits.removeFirst(exits.count - SlotExit.kept) }
        exitHistory[w.app, default: [:]][w.slot] = exits
        if exitHistory.count > Manager.maxHistoryApps {
            for app in exitHistory.keys where supervisor.apps[app] == nil { exitHistory[app] = nil }
        }
    }

    static let maxHistoryApps = 1024

    static func secondsText(_ d: Duration) -> String {
        let ms = d.nanoseconds / 1_000_000
        return ms % 1000 == 0 ? "\(ms / 1000)s" : "\(ms)ms"
    }

    /// `signal NAME[:SLOT] SIG`: to the app's workers (current and incoming;
    /// not those already being stopped), the process only unless `group`.
    func signalWorkers(_ request: Request, _ client: ControlClient) {
        let id = request.id
        guard let name = request.name, name != AppName.all else {
            return control.send(client, .failure(id, "signal needs one app name"))
        }
        guard let text = request.signal else { return control.send(client, .failure(id, "signal needs a signal name or number")) }
        let number: Int32
        switch SignalName.parse(text) {
        case let .success(n): number = n
        case let .failure(e): return control.send(client, .failure(id, "signal \(e)"))
        }
        guard let app = supervisor.apps[name] else {
            if let broken = brokenApps[name] { return control.send(client, .failure(id, "\(name) cannot run: \(broken.reason)")) }
            return control.send(client, .failure(id, CommandError.unknownApp(name).description))
        }
        var slots = app.slots
        if let s = request.slot {
            guard let slot = app.slots.first(where: { $0.index == s }) else {
                let range = app.slots.isEmpty ? "none" : "0-\(app.slots.count - 1)"
                return control.send(client, .failure(id, "\(name) has no slot \(s) (slots: \(range))"))
            }
            slots = [slot]
        }
        var targets: [(slot: Int, pid: Int32)] = []
        for slot in slots {
            for wid in [slot.current, slot.incoming].compactMap({ $0 }) {
                if let pid = supervisor.workers[wid]?.pid { targets.append((slot.index, pid)) }
            }
        }
        let signame = SignalName.name(of: number)
        let whom = request.slot.map { "\(name):\($0)" } ?? name
        guard !targets.isEmpty else { return control.send(client, .failure(id, "\(whom) has no running worker to send \(signame) to")) }
        let group = request.group ?? false
        var sent: [String] = []
        var failed: [String] = []
        for t in targets {
            do {
                try kernel.signal(t.pid, number, group: group)
                sent.append("slot \(t.slot) pid \(t.pid)")
            } catch {
                failed.append("slot \(t.slot) pid \(t.pid): \(error)")
            }
        }
        log.notice("sent \(signame) to \(group ? "the process groups of " : "")\(sent.count) worker(s) of \(whom) on request")
        let summary = "\(whom): sent \(signame) to \(group ? "the process group of " : "")\(sent.joined(separator: ", "))"
        guard failed.isEmpty else {
            var r = Response.failure(id, "\(whom): could not send \(signame) to \(failed.joined(separator: "; "))")
            if !sent.isEmpty { r.message = summary }
            return control.send(client, r)
        }
        control.send(client, .success(id, summary))
    }

    /// `logs --reopen` and SIGUSR1: every app's log file is closed and opened
    /// again by name, so after logrotate moved it away the lines go to a new one.
    @discardableResult
    func reopenLogFiles() -> [String] {
        var paths: [String] = []
        for name in output.sinks.keys.sorted() {
            guard let sink = output.sinks[name], sink.journal == nil else { continue }
            sink.reopen()
            paths.append(sink.path)
        }
        return paths
    }

    func reopenLogs(_ request: Request, _ client: ControlClient) {
        let paths = reopenLogFiles()
        log.info("reopened \(paths.count) log files on request")
        control.send(client, .success(request.id, paths.isEmpty ? "no log files open" : "reopened \(paths.joined(separator: ", "))"))
    }
}
