import Glibc
import SwarmCore
import SwarmProtocol
import SwarmSystem

/// Runs an app's `[hooks]` commands when their events happen: spawned
/// through the C spawner (own process group, SIGKILL on swarmd's death),
/// reaped by swarmd's one waitpid loop (`reaped`), never waited for.
///
/// Bounds, per app: at most `maxConcurrent` hooks in flight (an event that
/// finds them all busy runs none: it is counted and logged, not queued);
/// each killed (SIGKILL to its process group) at its `timeout`; its output
/// (stdout and stderr, one pipe) goes to swarmd's log, at most
/// `outputCap` bytes per run, the rest read and discarded so the hook is not
/// blocked on a full pipe.
final class HookRunner {
    final class Run {
        let hook: String
        let app: String
        let pid: Int32
        let deadline: Int64
        var output: Int32
        var source: EventLoop.Source?
        var logged = 0
        var partial: [UInt8] = []
        var truncated = false
        var killed = false
        var exited = false

        init(hook: String, app: String, pid: Int32, deadline: Int64, output: Int32) {
            self.hook = hook
            self.app = app
            self.pid = pid
            self.deadline = deadline
            self.output = output
        }

        var label: String { "hook \(hook) of \(app) (pid \(pid))" }
    }

    let loop: EventLoop
    let kernel: Kernel
    var report: (NoteLevel, String) -> Void = { _, _ in }

    /// Bytes of one run's output that reach swarmd's log.
    static let outputCap = 16 << 10
    /// A longer line is cut there.
    static let maxLine = 4096
    /// How often deadlines are checked while hooks run.
    static let sweepInterval: Int64 = 50_000_000

    private(set) var running: [Int32: Run] = [:]
    private var inFlight: [String: Int] = [:]
    /// Hooks not run because the app had `maxConcurrent` in flight, per app.
    private(set) var dropped: [String: Int] = [:]
    private(set) var started = 0
    private var sweeper: EventLoop.Source?
    private var buffer = [UInt8](repeating: 0, count: 16384)

    init(loop: EventLoop, kernel: Kernel) {
        self.loop = loop
        self.kernel = kernel
    }

    /// Runs each of `spec`'s hooks that `record`'s kind calls for.
    func run(_ record: EventRecord, spec: AppSpec) {
        let hooks = spec.hooks
        guard !hooks.commands.isEmpty else { return }
        // Exits swarmd planned (a stop, a reload, a scale-down) are no news for on_exit.
        let planned = record.details?["expected"] == "true"
        for (name, argv) in hooks.commands.sorted(by: { $0.key < $1.key })
        where HooksPolicy.events[name]?.contains(record.kind) == true && !(planned && name == "on_exit") {
            let busy = inFlight[spec.name, default: 0]
            if busy >= hooks.maxConcurrent {
                dropped[spec.name, default: 0] += 1
                report(.warning, "Failed to run hook \(name) of \(spec.name) for \(record.kind) (event \(record.seq)): \(busy) hooks of \(spec.name) still running (max_concurrent = \(hooks.maxConcurrent)); not run, \(dropped[spec.name]!) dropped so far")
                continue
            }
            do {
                try start(name, argv: argv, record: record, spec: spec)
            } catch {
                report(.error, "Failed to run hook \(name) of \(spec.name) (\(argv[0])): \(error), ignoring")
            }
        }
    }

    private func start(_ name: String, argv: [String], record: EventRecord, spec: AppSpec) throws {
        let input = try Posix.pipe(nonBlockingRead: false)
        var toClose = [input.read]
        defer { for fd in toClose { Posix.close(fd) } }
        let out: (read: Int32, write: Int32)
        do { out = try Posix.pipe() } catch {
            Posix.close(input.write)
            throw error
        }
        toClose.append(out.write)
        var plan = SpawnPlan(executable: argv[0], argv: argv, environment: HookRunner.environment(record, hook: name, spec: spec),
                             setListenPID: false, cwd: spec.cwd, fds: [], stdin: input.read, stdout: out.write, stderr: out.write)
        if let user = spec.user, let ids = Users.lookupUser(user) {
            plan.ids = (ids.uid, spec.group.flatMap { Users.lookupGroup($0) } ?? ids.gid)
        } else if let group = spec.group, let gid = Users.lookupGroup(group) {
            plan.ids = (getuid(), gid)
        }
        plan.noNewPrivileges = spec.noNewPrivileges
        let pid: Int32
        do { pid = try kernel.spawn(plan) } catch {
            Posix.close(input.write)
            Posix.close(out.read)
            throw error
        }
        // The event is a few hundred bytes: it fits the pipe, so this write never waits.
        var json = Codec.encode(record)
        if json.count > 60 << 10 { json = Array(json.prefix(60 << 10)) }
        try? Posix.setNonBlocking(input.write)
        _ = try? json.withUnsafeBytes { try Posix.writeSome(input.write, $0) }
        Posix.close(input.write)

        let r = Run(hook: name, app: spec.name, pid: pid, deadline: kernel.now() + spec.hooks.timeout.nanoseconds, output: out.read)
        running[pid] = r
        inFlight[spec.name, default: 0] += 1
        started += 1
        do {
            r.source = try loop.addReader(out.read) { [weak self, weak r] _ in
                if let self, let r { self.readOutput(r) }
            }
        } catch {
            report(.warning, "Failed to watch the output of \(r.label): \(error); discarding it")
            Posix.close(out.read)
            r.output = -1
        }
        report(.info, "\(r.label) started for \(record.kind) (event \(record.seq))")
        if sweeper == nil {
            sweeper = try? loop.addPeriodic(every: HookRunner.sweepInterval) { [weak self] in self?.sweep() }
        }
    }

    static func environment(_ e: EventRecord, hook: String, spec: AppSpec) -> [String] {
        var env: [String: String] = [
            "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "SWARM_HOOK": hook, "SWARM_EVENT": e.kind, "SWARM_APP": e.app, "SWARM_MESSAGE": e.message,
            "SWARM_TIME": e.time, "SWARM_SEQ": String(e.seq), "SWARM_CONFIG": spec.sourcePath,
        ]
        if let s = e.slot { env["SWARM_SLOT"] = String(s) }
        if let p = e.pid { env["SWARM_PID"] = String(p) }
        if let g = e.generation { env["SWARM_GENERATION"] = String(g) }
        for (k, v) in e.details ?? [:] {
            let key = "SWARM_" + String(k.uppercased().map { $0.isLetter || $0.isNumber ? $0 : "_" })
            if env[key] == nil { env[key] = v }
        }
        if let user = spec.user, let record = Users.record(named: user) {
            env["HOME"] = record.home
            env["USER"] = user
            env["LOGNAME"] = user
        }
        return env.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }
    }

    // MARK: - Output

    private func readOutput(_ r: Run) {
        guard r.output >= 0 else { return }
        for _ in 0..<8 {
            let result: IOResult<Int>
            do { result = try buffer.withUnsafeMutableBytes { try Posix.readSome(r.output, into: $0) } } catch {
                return closeOutput(r)
            }
            guard case let .done(n) = result else { return }
            if n == 0 { return closeOutput(r) }
            take(r, buffer[0..<n])
        }
    }

    private func take(_ r: Run, _ bytes: ArraySlice<UInt8>) {
        guard !r.truncated else { return }
        var rest = bytes
        while let nl = rest.firstIndex(of: 0x0a) {
            r.partial += rest[rest.startIndex..<nl]
            rest = rest[(nl + 1)...]
            logLine(r)
            if r.truncated { return }
        }
        r.partial += rest
        if r.partial.count >= HookRunner.maxLine { logLine(r) }
    }

    private func logLine(_ r: Run) {
        let line = Array(r.partial.prefix(HookRunner.maxLine))
        r.partial.removeAll(keepingCapacity: true)
        if r.logged + line.count + 1 > HookRunner.outputCap {
            r.truncated = true
            report(.warning, "\(r.label): output beyond \(HookRunner.outputCap >> 10) KiB discarded")
            return
        }
        r.logged += line.count + 1
        report(.notice, "\(r.label): \(TerminalText.escape(String(decoding: line, as: UTF8.self)))")
    }

    private func closeOutput(_ r: Run) {
        if !r.partial.isEmpty && !r.truncated { logLine(r) }
        r.source?.cancel()
        r.source = nil
        if r.output >= 0 { Posix.close(r.output) }
        r.output = -1
        finishIfDone(r)
    }

    // MARK: - Ends

    /// swarmd's reaper collected `pid`: true if it was a hook's.
    func reaped(_ pid: Int32, _ status: ExitStatus) -> Bool {
        guard let r = running[pid] else { return false }
        r.exited = true
        inFlight[r.app, default: 1] -= 1
        if inFlight[r.app] == 0 { inFlight[r.app] = nil }
        let level: NoteLevel = status.isCleanExit ? .info : .warning
        report(level, "\(r.label) \(r.killed ? "killed at its timeout" : status.description)")
        // What the hook left behind in its group goes with it; the pipe then reaches end of file.
        try? kernel.signal(pid, SIGKILL, group: true)
        if r.output >= 0 { readOutput(r) }
        finishIfDone(r)
        return true
    }

    private func finishIfDone(_ r: Run) {
        guard r.exited else { return }
        // A straggler outside the group may hold the pipe: swarmd stops reading it now.
        if r.output >= 0 {
            r.source?.cancel()
            r.source = nil
            Posix.close(r.output)
            r.output = -1
        }
        running[r.pid] = nil
        if running.isEmpty {
            sweeper?.cancel()
            sweeper = nil
        }
    }

    private func sweep() {
        let now = kernel.now()
        for r in running.values where !r.killed && !r.exited && now >= r.deadline {
            r.killed = true
            report(.warning, "\(r.label) still running at its timeout; killing its process group")
            try? kernel.signal(r.pid, SIGKILL, group: true)
        }
    }

    func stopAll() {
        for r in running.values where !r.exited {
            try? kernel.signal(r.pid, SIGKILL, group: true)
        }
        sweeper?.cancel()
        sweeper = nil
    }
}
