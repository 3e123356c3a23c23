import Foundation
import Glibc
import SwarmCore
import SwarmProtocol
import SwarmSystem

/// Variables that belong to swarmd's own service manager, never passed on.
let strippedEnvironment: Set<String> = [
    "LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES", "NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID",
    "JOURNAL_STREAM", "INVOCATION_ID", "MANAGERPID", "SWARM_SOCKET", "SWARM_STATE_DIR", "SYSTEMD_EXEC_PID",
    "MONOTONIC_USEC", "TRIGGER_UNIT", "TRIGGER_PATH",
]

extension Daemon {
    func spawn(_ id: WorkerID, spec: AppSpec, slot: Int, generation: Int) {
        lastBusyAt = Posix.monotonicNanoseconds()
        do {
            let pid = try startProcess(id, spec: spec, slot: slot, generation: generation)
            events.append(.spawned(id, pid: pid))
        } catch {
            let reason: String
            if let e = error as? SpawnError, e.errno == EAGAIN {
                reason = "\(e) — the process limit is reached"
            } else {
                reason = "\(error)"
            }
            workerIO[id]?.closeReady()
            workerIO[id] = nil
            events.append(.spawnFailed(id, reason: reason))
        }
    }

    func environment(for spec: AppSpec, slot: Int, generation: Int, sockets: [AppSockets.Entry], readyFD: Int32?) -> [String] {
        var env: [String: String] = [:]
        if spec.inheritEnvironment {
            for (k, v) in ProcessInfo.processInfo.environment where !strippedEnvironment.contains(k) { env[k] = v }
        } else {
            env["PATH"] = ProcessInfo.processInfo.environment["PATH"] ?? "/usr/local/bin:/usr/bin:/bin"
        }
        for (k, v) in spec.env { env[k] = v }
        env["SWARM_APP"] = spec.name
        env["SWARM_WORKER"] = String(slot)
        env["SWARM_GENERATION"] = String(generation)
        env["NOTIFY_SOCKET"] = notifyPath
        if !sockets.isEmpty {
            env["LISTEN_FDS"] = String(sockets.count)
            env["LISTEN_FDNAMES"] = sockets.map(\.spec.name).joined(separator: ":")
        } else {
            env["LISTEN_FDS"] = nil
            env["LISTEN_FDNAMES"] = nil
        }
        if let port = sockets.first(where: { $0.port != nil })?.port, spec.env["PORT"] == nil { env["PORT"] = String(port) }
        if let readyFD { env["SWARM_READY_FD"] = String(readyFD) }
        if let wd = spec.ready.watchdog { env["WATCHDOG_USEC"] = String(wd.nanoseconds / 1000) }
        if let user = spec.user, let pw = getpwnam(user) {
            env["USER"] = user
            env["LOGNAME"] = user
            env["HOME"] = String(cString: pw.pointee.pw_dir)
        }
        return env.map { "\($0.key)=\($0.value)" }.sorted()
    }

    func expand(_ arg: String, sockets: [AppSockets.Entry]) -> String {
        guard arg.contains("{") else { return arg }
        var out = arg
        for (i, e) in sockets.enumerated() {
            out = out.replacingOccurrences(of: "{fd:\(e.spec.name)}", with: String(3 + i))
            if let port = e.port { out = out.replacingOccurrences(of: "{port:\(e.spec.name)}", with: String(port)) }
        }
        return out
    }

    func startProcess(_ id: WorkerID, spec: AppSpec, slot: Int, generation: Int) throws -> pid_t {
        let sockets = appSockets[spec.name]
        let entries = sockets?.entries ?? []
        let listenFDs = try sockets?.fds(forSlot: slot) ?? []
        let io = WorkerIO(id: id, app: spec.name, slot: slot)
        var passed = listenFDs
        var readyWrite: Int32 = -1
        if spec.ready.mode == .fd {
            let p = try Posix.pipe()
            io.readyPipe = p.read
            readyWrite = p.write
            passed.append(readyWrite)
        }
        defer { if readyWrite >= 0 { Posix.close(readyWrite) } }
        let out = try Posix.pipe()
        defer { Posix.close(out.write) }
        let err: (read: Int32, write: Int32)
        do { err = try Posix.pipe() } catch {
            Posix.close(out.read)
            throw error
        }
        defer { Posix.close(err.write) }

        var plan = SpawnPlan(
            executable: spec.executable,
            argv: spec.command.map { expand($0, sockets: entries) },
            environment: environment(for: spec, slot: slot, generation: generation, sockets: entries,
                                     readyFD: readyWrite >= 0 ? Int32(3 + listenFDs.count) : nil),
            setListenPID: !listenFDs.isEmpty, cwd: spec.cwd, fds: passed,
            stdin: devNull, stdout: out.write, stderr: err.write)
        if let user = spec.user, let ids = Users.lookupUser(user) {
            let gid = spec.group.flatMap { Users.lookupGroup($0) } ?? ids.gid
            plan.ids = (ids.uid, gid)
        } else if let group = spec.group, let gid = Users.lookupGroup(group) {
            plan.ids = (getuid(), gid)
        }
        plan.noNewPrivileges = spec.noNewPrivileges
        // A reload's new worker starts in the background: the old ones still serve.
        let backgrounded = spec.reload.backgroundStart && Spawner.canRaisePriority
            && supervisor.apps[spec.name]?.reload?.to == generation
        if backgrounded { plan.nice = 19 }
        plan.cpu = pinnedCPU(spec, slot: slot).map(Int32.init)
        plan.limits = spec.limits.compactMap { l in rlimitResource(l.name).map { ($0, l.soft, l.hard) } }
        // swarmd raised its own fd limit; workers get the one it was given, unless their app sets one.
        if let original = originalNoFile, !spec.limits.contains(where: { $0.name == "nofile" }) {
            plan.limits.append((7, original.soft, original.hard))
        }
        let pid: pid_t
        do {
            pid = try Spawner.spawn(plan)
        } catch {
            Posix.close(out.read)
            Posix.close(err.read)
            throw error
        }
        io.pid = pid
        workerIO[id] = io
        if backgrounded { backgroundWorkers[id] = pid }
        watchOutput(fd: out.read, app: spec.name, slot: slot, pid: pid, stream: "stdout")
        watchOutput(fd: err.read, app: spec.name, slot: slot, pid: pid, stream: "stderr")
        if io.readyPipe >= 0 {
            io.readySource = try? loop.addReader(io.readyPipe) { [weak self, weak io] _ in
                guard let self, let io else { return }
                self.onReadyPipe(io)
            }
        }
        return pid
    }

    func rlimitResource(_ name: String) -> Int32? {
        let table: [String: Int32] = [
            "cpu": 0, "fsize": 1, "data": 2, "stack": 3, "core": 4, "rss": 5, "nproc": 6, "nofile": 7,
            "memlock": 8, "as": 9, "locks": 10, "sigpending": 11, "msgqueue": 12, "nice": 13, "rtprio": 14, "rttime": 15,
        ]
        return table[name]
    }

    func onReadyPipe(_ io: WorkerIO) {
        var buf = [UInt8](repeating: 0, count: 256)
        let n = (try? buf.withUnsafeMutableBytes { try Posix.read(io.readyPipe, into: $0) }) ?? 0
        if n > 0 && buf[0..<n].contains(UInt8(ascii: "\n")) {
            feed(.ready(pid: io.pid))
            io.closeReady()
        } else if n <= 0 {
            io.closeReady()
        }
    }

    // MARK: - Output

    func sink(for app: String) -> LogSink {
        if let s = sinks[app] { return s }
        let policy = supervisor.apps[app]?.spec.logs ?? LogPolicy()
        let useJournal = policy.target == "journal" || (policy.target == "auto" && journal != nil)
        var writer: JournalWriter? = nil
        if useJournal { writer = journal ?? (try? JournalWriter(socketPath: options.journalSocket)) }
        let s = LogSink(app: app, directory: options.stateDir + "/logs", maxSize: policy.maxSize, keep: policy.keep, journal: writer)
        sinks[app] = s
        return s
    }

    func watchOutput(fd: Int32, app: String, slot: Int, pid: Int32, stream: String) {
        let pipe = OutputPipe(fd: fd, app: app, slot: slot, pid: pid, stream: stream)
        let key = ObjectIdentifier(pipe)
        outputPipes[key] = pipe
        do {
            // Lowest priority: a flooding worker yields to control requests and timers.
            pipe.source = try loop.addReader(fd, priority: 10) { [weak self] _ in _ = self?.onOutput(key) }
            if outputBudgets[app]?.pausedAt != nil { pipe.source?.setEnabled(false) }
        } catch {
            log.error("Failed to watch output of \(app)[\(slot)]: \(error), ignoring")
            Posix.close(fd)
            outputPipes[key] = nil
        }
    }

    /// Reads what the pipe holds (at most 64 KiB); false once it is empty (EAGAIN) or closed.
    @discardableResult
    func onOutput(_ key: ObjectIdentifier) -> Bool {
        guard let pipe = outputPipes[key] else { return false }
        var buf = [UInt8](repeating: 0, count: 65536)
        let n: Int
        do { n = try buf.withUnsafeMutableBytes { try Posix.read(pipe.fd, into: $0) } } catch {
            if (error as? SystemError)?.errno == EAGAIN { return false }
            n = 0
        }
        let sink = self.sink(for: pipe.app)
        let time = rfc3339(Posix.realtimeNanoseconds())
        let emit: (String) -> Void = { text in
            let (priority, message) = splitPriority(text)
            sink.append(LogLine(time: time, app: pipe.app, slot: pipe.slot, pid: pipe.pid, stream: pipe.stream, text: message), priority: priority)
        }
        if n == 0 {
            pipe.splitter.flush(emit)
            pipe.source?.cancel()
            pipe.source = nil
            Posix.close(pipe.fd)
            outputPipes[key] = nil
            return false
        }
        buf.withUnsafeBytes { pipe.splitter.feed(UnsafeRawBufferPointer(rebasing: $0[0..<n]), emit) }
        chargeOutput(app: pipe.app, bytes: n)
        return true
    }

    /// Counts output against the app's `[logs] rate`; over it, stops reading the
    /// app's pipes until the next second (`refillOutputBudgets`).
    func chargeOutput(app: String, bytes: Int) {
        let rate = supervisor.apps[app]?.spec.logs.rate ?? 0
        guard rate > 0 else { return }
        var budget = outputBudgets[app] ?? OutputBudget()
        budget.bytes += Int64(bytes)
        if budget.bytes >= rate && budget.pausedAt == nil {
            budget.pausedAt = Posix.monotonicNanoseconds()
            budget.pauses += 1
            for pipe in outputPipes.values where pipe.app == app { pipe.source?.setEnabled(false) }
            if budget.pauses == 1 || budget.pauses % 60 == 0 {
                log.notice("\(app): workers write more than \(rate >> 10) KiB/s of output ([logs] rate); reading it at that pace, the writers wait")
            }
        }
        outputBudgets[app] = budget
    }

    /// Every second: a new budget, and reading resumes.
    func refillOutputBudgets() {
        let now = Posix.monotonicNanoseconds()
        for (app, var budget) in outputBudgets {
            if let paused = budget.pausedAt {
                budget.throttledNS += now - paused
                budget.pausedAt = nil
                for pipe in outputPipes.values where pipe.app == app { pipe.source?.setEnabled(true) }
            }
            budget.bytes = 0
            outputBudgets[app] = budget
        }
    }

    /// Reads what an exited worker left in its stdout/stderr pipes before its exit is
    /// handled (the pipes' readers run at a lower priority than SIGCHLD), so a reload
    /// failure's reply and the log show its last lines. Bounded: 16 × 64 KiB per pipe
    /// (a grandchild may still hold the write end and keep writing).
    func drainOutput(pid: Int32) {
        for (key, pipe) in outputPipes where pipe.pid == pid {
            for _ in 0..<16 { if !onOutput(key) { break } }
        }
    }

    // MARK: - sd_notify from workers

    func onNotify() {
        var buf = [UInt8](repeating: 0, count: 4096)
        // Bounded per dispatch so a chatty worker cannot hold the loop.
        for _ in 0..<64 {
            let (n, pid) = buf.withUnsafeMutableBytes { Sockets.receiveWithCredentials(notifyFD, $0) }
            if n < 0 {
                if errno == EAGAIN || errno == EWOULDBLOCK { return }
                continue
            }
            guard pid > 0, let worker = supervisor.worker(pid: pid) else { continue }
            let text = String(decoding: buf[0..<n], as: UTF8.self)
            for line in text.split(separator: "\n") {
                if line == "READY=1" { feed(.ready(pid: pid)) }
                else if line == "WATCHDOG=1" { feed(.watchdogPing(pid: pid)) }
                else if line == "STOPPING=1" { feed(.stopping(pid: pid)) }
                else if line.hasPrefix("STATUS=") { feed(.status(pid: pid, String(line.dropFirst(7)))) }
                else if line.hasPrefix("WATCHDOG=trigger") {
                    log.warning("\(worker.app)[\(worker.slot)] pid \(pid) asked for a watchdog kill")
                }
            }
        }
    }
}

extension Daemon {
    /// Background-started workers that became ready (or gone) get swarmd's own priority back.
    func restorePriorities() {
        guard !backgroundWorkers.isEmpty else { return }
        let own = getpriority(__priority_which_t(PRIO_PROCESS.rawValue), 0)
        for (id, pid) in backgroundWorkers {
            guard let w = supervisor.workers[id] else {
                backgroundWorkers[id] = nil
                continue
            }
            if w.phase != .starting && w.phase != .spawning {
                Spawner.renice(pid: pid, to: own)
                backgroundWorkers[id] = nil
            }
        }
    }
}
