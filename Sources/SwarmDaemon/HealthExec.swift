import Foundation
import Glibc
import SwarmCore
import SwarmProtocol
import SwarmSystem

/// `[health] exec`: one run of the command per worker per interval, bounded in
/// every way a probe could hurt swarmd.
///
/// - Spawned through the same C spawner as workers (fork + async-signal-safe
///   child + exec, its own process group, PDEATHSIG, every other fd closed),
///   as the app's `user`/`group`, in its `cwd`, with the app's environment plus
///   `SWARM_APP`, `SWARM_WORKER`, `SWARM_GENERATION`, `SWARM_WORKER_PID` and
///   `SWARM_PORT`/`PORT` (the probed TCP socket's port).
/// - Reaped by swarmd's one `waitpid(-1)` loop: `reaped(pid:status:)` claims
///   exactly the pids started here and nothing else.
/// - At its timeout the whole process group gets SIGKILL and the probe has
///   failed ("timeout"); the pid stays counted until it is reaped.
/// - stdout and stderr share one non-blocking pipe, read at most
///   `readChunk` per wake-up; only the last `tailBytes` are kept (for
///   `last_probe`), and after `maxOutput` bytes the pipe is closed, so a
///   flooding probe blocks or dies of SIGPIPE instead of costing swarmd a core.
/// - At most `maxInFlight` probes exist daemon-wide (running or killed and not
///   yet reaped); a probe over the cap is not started and the core asks again
///   at the next interval (one warning per episode).
final class ExecProbes {
    static let maxInFlight = 16
    static let readChunk = 4096
    static let tailBytes = 512
    static let maxOutput = 64 * 1024

    final class Run {
        let request: HealthProbeRequest
        let pid: pid_t
        let deadline: Int64
        var pipe: Int32
        var source: EventLoop.Source?
        var tail: [UInt8] = []
        var outputBytes = 0
        /// The result went to the core (timeout); only the reap is awaited.
        var answered = false
        init(request: HealthProbeRequest, pid: pid_t, deadline: Int64, pipe: Int32) {
            self.request = request
            self.pid = pid
            self.deadline = deadline
            self.pipe = pipe
        }
    }

    let loop: EventLoop
    var spawn: (SpawnPlan) throws -> pid_t = { _ in throw SystemError("fork", errno: ENOSYS) }
    var signalGroup: (pid_t, Int32) -> Void = { _, _ in }
    var devNull: () -> Int32 = { -1 }
    var spec: (String, Int) -> AppSpec? = { _, _ in nil }
    var port: (HealthProbeRequest) -> UInt16? = { _ in nil }
    var hostEnvironment: () -> [String: String] = { [:] }
    var finish: (HealthProbeRequest, Bool, String) -> Void = { _, _, _ in }
    var report: (NoteLevel, String) -> Void = { _, _ in }
    var now: () -> Int64 = { Posix.monotonicNanoseconds() }

    private(set) var runs: [pid_t: Run] = [:]
    private var byWorker: [WorkerID: pid_t] = [:]
    /// The deadlines of the runs not answered yet, by worker.
    private var deadlines = ProbeDeadlines()
    private var overCap = false

    init(loop: EventLoop) { self.loop = loop }

    var inFlight: Int { runs.count }
    /// Whether the worker has a probe running (not one killed and awaiting its reap).
    func running(_ id: WorkerID) -> Bool { byWorker[id].flatMap { runs[$0] }.map { !$0.answered } ?? false }
    var earliestDeadline: Int64? { deadlines.next?.nanoseconds }

    func start(_ r: HealthProbeRequest) {
        guard case let .exec(argv) = r.check, let program = argv.first else { return }
        if running(r.worker) { return }
        guard runs.count < ExecProbes.maxInFlight else {
            if !overCap {
                overCap = true
                report(.warning, "\(r.app)[\(r.slot)]: \(ExecProbes.maxInFlight) exec probes are running already (daemon-wide cap); not starting another until one ends")
            }
            return
        }
        overCap = false
        guard let spec = spec(r.app, r.generation) else { return }
        let out: (read: Int32, write: Int32)
        do { out = try Posix.pipe() } catch {
            return finish(r, false, "pipe: \(error)")
        }
        defer { Posix.close(out.write) }
        var plan = SpawnPlan(executable: program, argv: argv, environment: environment(r, spec),
                             setListenPID: false, cwd: spec.cwd, fds: [], stdin: devNull(), stdout: out.write, stderr: out.write)
        if let user = spec.user, let ids = Users.lookupUser(user) {
            plan.ids = (ids.uid, spec.group.flatMap { Users.lookupGroup($0) } ?? ids.gid)
        } else if let group = spec.group, let gid = Users.lookupGroup(group) {
            plan.ids = (getuid(), gid)
        }
        plan.noNewPrivileges = spec.noNewPrivileges
        let pid: pid_t
        do { pid = try spawn(plan) } catch {
            Posix.close(out.read)
            return finish(r, false, "\(error)")
        }
        let run = Run(request: r, pid: pid, deadline: now() + r.timeout.nanoseconds, pipe: out.read)
        runs[pid] = run
        byWorker[r.worker] = pid
        deadlines.add(r.worker, at: Instant(nanoseconds: run.deadline))
        do {
            run.source = try loop.addReader(out.read) { [weak self, weak run] _ in
                guard let self, let run else { return }
                self.drain(run)
            }
        } catch {
            closePipe(run)
        }
    }

    private func environment(_ r: HealthProbeRequest, _ spec: AppSpec) -> [String] {
        var env: [String: String] = [:]
        let host = hostEnvironment()
        if spec.inheritEnvironment {
            for (k, v) in host where !WorkerLaunch.strippedEnvironment.contains(k) { env[k] = v }
        } else {
            env["PATH"] = host["PATH"] ?? "/usr/local/bin:/usr/bin:/bin"
        }
        for (k, v) in spec.env { env[k] = v }
        env["SWARM_APP"] = r.app
        env["SWARM_WORKER"] = String(r.slot)
        env["SWARM_GENERATION"] = String(r.generation)
        env["SWARM_WORKER_PID"] = String(r.pid)
        if let p = port(r) {
            env["SWARM_PORT"] = String(p)
            if spec.env["PORT"] == nil { env["PORT"] = String(p) }
        }
        return env.map { "\($0.key)=\($0.value)" }.sorted()
    }

    /// Reads what is there, keeping the tail; past `maxOutput` the pipe is closed.
    private func drain(_ run: Run) {
        guard run.pipe >= 0 else { return }
        var buf = [UInt8](repeating: 0, count: ExecProbes.readChunk)
        let n = buf.withUnsafeMutableBytes { Glibc.read(run.pipe, $0.baseAddress, $0.count) }
        if n < 0 {
            if errno == EAGAIN || errno == EINTR { return }
            return closePipe(run)
        }
        if n == 0 { return closePipe(run) }
        run.outputBytes += n
        run.tail += buf.prefix(n)
        if run.tail.count > ExecProbes.tailBytes { run.tail.removeFirst(run.tail.count - ExecProbes.tailBytes) }
        if run.outputBytes >= ExecProbes.maxOutput { closePipe(run) }
    }

    private func closePipe(_ run: Run) {
        run.source?.cancel()
        run.source = nil
        if run.pipe >= 0 { Posix.close(run.pipe) }
        run.pipe = -1
    }

    /// The last non-empty line of the output, escaped and cut short, for `last_probe`.
    static func lastLine(_ tail: [UInt8]) -> String? {
        let lines = tail.split(separator: UInt8(ascii: "\n")).map { String(decoding: $0, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines) }
        guard let line = lines.last(where: { !$0.isEmpty }) else { return nil }
        let escaped = TerminalText.escape(line)
        return escaped.count > 120 ? String(escaped.prefix(120)) + "…" : escaped
    }

    /// "SIGPIPE" for 13: the signals a probe dies of, by name.
    static func signalName(_ n: Int32) -> String {
        let names: [Int32: String] = [SIGHUP: "SIGHUP", SIGINT: "SIGINT", SIGQUIT: "SIGQUIT", SIGILL: "SIGILL", SIGABRT: "SIGABRT",
                                      SIGBUS: "SIGBUS", SIGFPE: "SIGFPE", SIGKILL: "SIGKILL", SIGSEGV: "SIGSEGV", SIGPIPE: "SIGPIPE",
                                      SIGALRM: "SIGALRM", SIGTERM: "SIGTERM", SIGXCPU: "SIGXCPU", SIGXFSZ: "SIGXFSZ"]
        return names[n] ?? "signal \(n)"
    }

    /// swarmd's reaper found `pid`: true if it was a probe (its result goes to the core).
    func reaped(pid: pid_t, status: SwarmCore.ExitStatus) -> Bool {
        guard let run = runs.removeValue(forKey: pid) else { return false }
        if byWorker[run.request.worker] == pid {
            byWorker[run.request.worker] = nil
            deadlines.remove(run.request.worker)
        }
        if run.pipe >= 0 {
            // Whatever is buffered now, without waiting for an EOF a grandchild may hold off.
            for _ in 0..<(ExecProbes.maxOutput / ExecProbes.readChunk) where run.pipe >= 0 {
                let before = run.outputBytes
                drain(run)
                if run.outputBytes == before { break }
            }
            closePipe(run)
        }
        guard !run.answered else { return true }
        let line = ExecProbes.lastLine(run.tail)
        switch status {
        case let .exited(code):
            finish(run.request, code == 0, "exit \(code)" + (line.map { ": \($0)" } ?? ""))
        case let .signaled(sig, _):
            finish(run.request, false, "killed by \(ExecProbes.signalName(sig))" + (line.map { ": \($0)" } ?? ""))
        case let .spawnFailed(why):
            finish(run.request, false, why)
        }
        return true
    }

    /// Kills every probe past its deadline (its whole group) and answers for it.
    func expire() {
        for id in deadlines.due(at: Instant(nanoseconds: now())) {
            guard let pid = byWorker[id], let run = runs[pid], !run.answered else { continue }
            run.answered = true
            signalGroup(run.pid, SIGKILL)
            closePipe(run)
            if byWorker[run.request.worker] == run.pid { byWorker[run.request.worker] = nil }
            finish(run.request, false, "timeout (killed after \(run.request.timeout.humanReadable))")
        }
    }

    /// The worker is gone: its probe is killed, unanswered; the reap still comes.
    func forget(_ id: WorkerID) {
        guard let pid = byWorker.removeValue(forKey: id), let run = runs[pid] else { return }
        deadlines.remove(id)
        run.answered = true
        signalGroup(pid, SIGKILL)
        closePipe(run)
    }

    func closeAll() {
        for run in runs.values {
            if !run.answered { signalGroup(run.pid, SIGKILL) }
            run.answered = true
            closePipe(run)
        }
        byWorker = [:]
        deadlines.removeAll()
    }
}
