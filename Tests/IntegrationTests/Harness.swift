import Foundation
import Glibc
import SwarmProtocol
import SwarmSystem
import Testing

// The integration harness: real swarmd and swarmctl binaries, real workers,
// real sockets. Every wait has a deadline and says what it waited for; every
// test gets its own directory, ports and daemon; a test kills only the
// processes it started.

struct HarnessError: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}

// MARK: - Paths

enum Paths {
    /// The package root: the first folder above this file holding Package.swift.
    static let root: String = {
        var dir = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
        while dir.path != "/" {
            if FileManager.default.fileExists(atPath: dir.appendingPathComponent("Package.swift").path) { return dir.path }
            dir = dir.deletingLastPathComponent()
        }
        fatalError("no Package.swift above \(#filePath)")
    }()

    /// The binaries under test: .build/debug, or SWARM_BIN_DIR (scripts/sanitize.sh points it at a sanitized build).
    static var binDir: String {
        if let d = ProcessInfo.processInfo.environment["SWARM_BIN_DIR"], !d.isEmpty { return d }
        return root + "/.build/debug"
    }
    static var swarmd: String { binDir + "/swarmd" }
    static var swarmctl: String { binDir + "/swarmctl" }
    static var pythonApps: String { root + "/etc/apps/python" }
    static var nodeApps: String { root + "/etc/apps/node" }

    /// The real python3 (not a pyenv shim: a shim is slow and changes nothing we test).
    static let python: String = {
        let r = try? runSync("/usr/bin/env", ["python3", "-c", "import sys; print(sys.executable)"])
        let p = r?.out.trimmingCharacters(in: .whitespacesAndNewlines) ?? ""
        return p.isEmpty ? "python3" : p
    }()

    static let node: String = {
        for dir in (ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin").split(separator: ":") {
            let p = "\(dir)/node"
            if access(p, X_OK) == 0 { return p }
        }
        return "node"
    }()

    static func requireBinaries() throws {
        for b in [swarmd, swarmctl] where access(b, X_OK) != 0 {
            throw HarnessError("\(b) is missing: run `swift build` first (`swift test` does not build the executables the integration tests run)")
        }
    }
}

// MARK: - Processes

/// The environment our children get: ours, minus anything that would point
/// them at another swarmd.
func childEnvironment(_ extra: [String: String] = [:]) -> [String] {
    var env = ProcessInfo.processInfo.environment
    for k in ["SWARM_SOCKET", "SWARM_STATE_DIR", "LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES", "NOTIFY_SOCKET", "XDG_RUNTIME_DIR"] {
        env[k] = nil
    }
    env["NO_COLOR"] = "1"
    // scripts/sanitize.sh: leak checks for the programs under test, not for this runner.
    if let asan = env["SWARM_CHILD_ASAN_OPTIONS"] { env["ASAN_OPTIONS"] = asan }
    for (k, v) in extra { env[k] = v }
    return env.map { "\($0.key)=\($0.value)" }.sorted()
}

/// A process this test started; its output goes to files.
final class Child: @unchecked Sendable {
    let pid: pid_t
    let name: String
    let outPath: String
    let errPath: String
    private(set) var exitCode: Int32?
    private let lock = NSLock()

    init(pid: pid_t, name: String, outPath: String, errPath: String) {
        self.pid = pid
        self.name = name
        self.outPath = outPath
        self.errPath = errPath
    }

    private static let outputFiles = Counter()

    /// `fds` become 3, 4, … in the child; with `listenPID`, LISTEN_PID is set to the child's own pid.
    static func spawn(_ executable: String, _ args: [String], env: [String] = childEnvironment(), dir: String,
                      label: String, cwd: String? = nil, fds: [Int32] = [], listenPID: Bool = false) throws -> Child {
        // Numbered: callers share folders (several tests spawn "sha256" in /tmp at
        // once), and an O_TRUNC of another test's file emptied its output.
        let file = "\(dir)/\(label).\(getpid()).\(outputFiles.next())"
        let outPath = file + ".out"
        let errPath = file + ".err"
        let out = try Posix.open(outPath, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode: 0o644)
        defer { Posix.close(out) }
        let err = try Posix.open(errPath, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode: 0o644)
        defer { Posix.close(err) }
        let devNull = try Posix.open("/dev/null", O_RDWR | O_CLOEXEC)
        defer { Posix.close(devNull) }
        var plan = SpawnPlan(executable: executable, argv: [executable] + args, environment: env, setListenPID: listenPID,
                             cwd: cwd ?? dir, fds: fds, stdin: devNull, stdout: out, stderr: err)
        // Not PDEATHSIG: it fires when the spawning *thread* exits, and test threads come and go.
        plan.parentDeathSignal = 0
        let pid = try Spawner.spawn(plan)
        return Child(pid: pid, name: label, outPath: outPath, errPath: errPath)
    }

    /// Reaps the child if it has exited; its exit code, or 128+signal.
    @discardableResult
    func poll() -> Int32? {
        lock.lock()
        defer { lock.unlock() }
        if let exitCode { return exitCode }
        var status: Int32 = 0
        let r = waitpid(pid, &status, WNOHANG)
        guard r == pid else { return nil }
        let sig = status & 0x7f
        exitCode = sig == 0 ? (status >> 8) & 0xff : 128 + sig
        return exitCode
    }

    var running: Bool { poll() == nil }

    func wait(timeout: Double, _ what: String? = nil) async throws -> Int32 {
        try await waitUntil(timeout: timeout, what ?? "\(name) (pid \(pid)) to exit") { self.poll() }
    }

    func signal(_ sig: Int32) {
        if running { Glibc.kill(pid, sig) }
    }

    var stdout: String { readText(outPath) }
    var stderr: String { readText(errPath) }
}

/// Runs a short command to completion (blocking; harness set-up only).
func runSync(_ executable: String, _ args: [String]) throws -> (code: Int32, out: String) {
    let dir = NSTemporaryDirectory() + "swit-sync-\(getpid())-\(Ports.counter.next())"
    try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    defer { try? FileManager.default.removeItem(atPath: dir) }
    let c = try Child.spawn(executable, args, dir: dir, label: "run")
    let deadline = Date().addingTimeInterval(20)
    while c.poll() == nil && Date() < deadline { usleep(10_000) }
    if c.poll() == nil { c.signal(SIGKILL); while c.poll() == nil { usleep(1000) } }
    return (c.exitCode ?? -1, c.stdout)
}

func readText(_ path: String) -> String {
    guard let d = FileManager.default.contents(atPath: path) else { return "" }
    return String(decoding: d, as: UTF8.self)
}

/// A process as seen in /proc: its pid and start time, so a reused pid is never mistaken for it.
struct ProcessIdentity: Hashable, CustomStringConvertible {
    let pid: Int32
    let startTime: UInt64

    init?(pid: Int32) {
        guard let s = ProcState.read(pid) else { return nil }
        self.pid = pid
        startTime = s.startTime
    }

    /// Running (or sleeping, or stopped): anything but gone or a zombie.
    var isAlive: Bool {
        guard let s = ProcState.read(pid), s.startTime == startTime else { return false }
        return s.state != "Z" && s.state != "X"
    }

    var description: String {
        let cmd = readText("/proc/\(pid)/cmdline").replacingOccurrences(of: "\0", with: " ")
        return "pid \(pid) (\(cmd.trimmingCharacters(in: .whitespaces)))"
    }
}

enum ProcState {
    /// State letter, parent pid and start time from /proc/<pid>/stat.
    static func read(_ pid: Int32) -> (state: Character, ppid: Int32, startTime: UInt64)? {
        let text = readText("/proc/\(pid)/stat")
        guard let close = text.lastIndex(of: ")") else { return nil }
        let fields = text[text.index(after: close)...].split(separator: " ")
        // fields[0] is field 3 (state); start time is field 22.
        guard fields.count > 19, let state = fields[0].first, let ppid = Int32(fields[1]), let start = UInt64(fields[19]) else { return nil }
        return (state, ppid, start)
    }

    /// Whether /proc has any entry for pid, zombie included.
    static func exists(_ pid: Int32) -> Bool { access("/proc/\(pid)", F_OK) == 0 }
}

// MARK: - Waiting

/// Polls `probe` every 25 ms until it returns non-nil; fails naming what it waited for.
@discardableResult
func waitUntil<T>(timeout: Double, _ what: @autoclosure () -> String, every interval: Double = 0.025,
                  _ probe: () async throws -> T?) async throws -> T {
    let deadline = Date().addingTimeInterval(timeout)
    var lastError: Error?
    while true {
        do {
            if let v = try await probe() { return v }
            lastError = nil
        } catch {
            lastError = error
        }
        if Date() >= deadline {
            let why = lastError.map { " (last error: \($0))" } ?? ""
            throw HarnessError("timed out after \(timeout)s waiting for \(what())\(why)")
        }
        try await Task.sleep(nanoseconds: UInt64(interval * 1e9))
    }
}

func waitUntil(timeout: Double, _ what: @autoclosure () -> String, every interval: Double = 0.025,
               _ condition: () async throws -> Bool) async throws {
    try await waitUntil(timeout: timeout, what(), every: interval) { try await condition() ? true : nil }
}

func elapsed(since start: Date) -> Double { Date().timeIntervalSince(start) }

/// How much slower the binaries under test run: 1, or more for a sanitized build
/// (scripts/sanitize.sh sets SWARM_SANITIZER). Scales a few CPU and time bounds.
let sanitizerSlowdown: Double = {
    switch ProcessInfo.processInfo.environment["SWARM_SANITIZER"] {
    case "thread": return 4
    case "address": return 2
    default: return 1
    }
}()

// MARK: - Ports and parallelism

final class Counter: @unchecked Sendable {
    private var value = 0
    private let lock = NSLock()
    func next() -> Int {
        lock.lock()
        defer { lock.unlock() }
        value += 1
        return value
    }
}

/// A value shared with another thread.
final class LockedValue<T>: @unchecked Sendable {
    private var value: T
    private let lock = NSLock()
    init(_ value: T) { self.value = value }
    func get() -> T { lock.withLock { value } }
    func set(_ v: T) { lock.withLock { value = v } }
}

enum Ports {
    static let counter = Counter()
    private static let portCounter = Counter()

    /// A TCP port on 127.0.0.1 that nothing listens on now, from a range below
    /// the ephemeral ports (so no client connection takes it), spread by our pid
    /// so two test processes start in different places.
    static func free() throws -> UInt16 {
        let base = 20000 + Int(getpid() % 400) * 30
        for _ in 0..<2000 {
            let port = UInt16(20000 + (base - 20000 + portCounter.next()) % 12000)
            if isBindable(port) { return port }
        }
        throw HarnessError("no free port found in 20000..<32000")
    }

    static func isBindable(_ port: UInt16) -> Bool {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { return false }
        defer { close(fd) }
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_port = port.bigEndian
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        return withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        } == 0
    }
}

/// Bounds how many tests run at once: each starts a daemon and several
/// interpreters, and timing assertions mean little on an overloaded machine.
actor Gate {
    static let shared = Gate(limit: Int(ProcessInfo.processInfo.environment["SWARM_IT_PARALLEL"] ?? "") ?? 4)
    private var available: Int
    private var waiters: [CheckedContinuation<Void, Never>] = []

    private let limit: Int
    /// A test that wants every place: places freed go to it first.
    private var gathering: (needed: Int, resume: CheckedContinuation<Void, Never>)?
    private var exclusiveHeld = false
    private var exclusiveWaiters: [CheckedContinuation<Void, Never>] = []

    init(limit: Int) {
        self.limit = max(1, limit)
        available = self.limit
    }

    func acquire() async {
        if available > 0 {
            available -= 1
            return
        }
        await withCheckedContinuation { waiters.append($0) }
    }

    func release() {
        if var g = gathering {
            g.needed -= 1
            gathering = g.needed == 0 ? nil : g
            if g.needed == 0 { g.resume.resume() }
            return
        }
        if waiters.isEmpty { available += 1 } else { waiters.removeFirst().resume() }
    }

    /// Every place at once, for a test that loads the whole machine (it would
    /// make its neighbours' timing assertions meaningless): it waits for the
    /// tests running now, and none starts until it is done.
    func acquireAll() async {
        while exclusiveHeld { await withCheckedContinuation { exclusiveWaiters.append($0) } }
        exclusiveHeld = true
        let free = available
        available = 0
        guard free < limit else { return }
        await withCheckedContinuation { gathering = (limit - free, $0) }
    }

    func releaseAll() {
        exclusiveHeld = false
        for _ in 0..<limit { release() }
        if !exclusiveWaiters.isEmpty { exclusiveWaiters.removeFirst().resume() }
    }
}

// MARK: - One test's world

/// `swarmctl`'s outcome, as a user sees it.
struct CtlResult: CustomStringConvertible {
    var args: [String]
    var code: Int32
    var out: String
    var err: String
    var description: String { "swarmctl \(args.joined(separator: " ")) → exit \(code)\nstdout: \(out)\nstderr: \(err)" }
}

/// A test's own directory, daemon and workers.
final class Swarm: @unchecked Sendable {
    let dir: String
    var socket: String { dir + "/s.sock" }
    var stateDir: String { dir + "/state" }
    private(set) var daemon: Child?
    /// A daemon we did not spawn ourselves (autostarted by swarmctl).
    var foreignDaemon: ProcessIdentity?
    /// Every worker pid seen in a status report: none may outlive the test.
    private(set) var seenWorkers: Set<ProcessIdentity> = []
    private let lock = NSLock()
    private let labels = Counter()

    init() throws {
        var template = Array("/tmp/swit-XXXXXX".utf8CString)
        guard let p = mkdtemp(&template) else { throw HarnessError("mkdtemp failed: \(String(cString: strerror(errno)))") }
        dir = String(cString: p)
        // Traversable by others: the permission tests rely on the socket's own mode.
        chmod(dir, 0o755)
    }

    func label(_ base: String) -> String { "\(base)-\(labels.next())" }

    @discardableResult
    func write(_ name: String, _ text: String) throws -> String {
        let path = dir + "/" + name
        try text.write(toFile: path, atomically: true, encoding: .utf8)
        return path
    }

    // MARK: Daemon

    /// Starts swarmd in the foreground and waits until it answers on its socket.
    ///
    /// Under SCHED_OTHER unless `realtime` (swarmd's default, which the tests of
    /// the policy itself ask for) or `args` name a policy: dozens of debug-built
    /// swarmds at once, real-time, starved the tests that time them on CI's 2
    /// cores (a test polling every 0.1 s saw a close 7 s and once 18 s after it
    /// happened, against a bar of 8-16 s).
    @discardableResult
    func startDaemon(_ configs: [String] = [], args: [String] = [], realtime: Bool = false) async throws -> Child {
        if let d = daemon, d.running { throw HarnessError("this test's swarmd (pid \(d.pid)) is still running") }
        let policy = realtime || args.contains("--realtime-priority") ? [] : ["--realtime-priority", "0"]
        let d = try Child.spawn(Paths.swarmd, ["--socket", socket, "--state-dir", stateDir] + policy + args + configs,
                                dir: dir, label: label("swarmd"))
        daemon = d
        try await waitUntil(timeout: 15, "swarmd (pid \(d.pid)) to answer ping on \(socket)") {
            if let code = d.poll() { throw HarnessError("swarmd exited with \(code): \(d.stderr)") }
            return (try? self.request(.ping))?.ok == true
        }
        return d
    }

    /// Starts swarmd with exactly `args` (no --socket/--state-dir added), optionally through `wrapper`
    /// (e.g. setpriv), without waiting for it to answer: for a swarmd that must refuse to start, or
    /// that may hang. It becomes this test's daemon (stopped or killed at the end like any other).
    @discardableResult
    func launchDaemon(_ args: [String], wrapper: [String] = [], env: [String] = childEnvironment(), cwd: String? = nil) throws -> Child {
        if let d = daemon, d.running { throw HarnessError("this test's swarmd (pid \(d.pid)) is still running") }
        let executable = wrapper.first ?? Paths.swarmd
        let argv = wrapper.isEmpty ? args : Array(wrapper.dropFirst()) + [Paths.swarmd] + args
        let d = try Child.spawn(executable, argv, env: env, dir: dir, label: label("swarmd"), cwd: cwd)
        daemon = d
        return d
    }

    /// SIGTERM, then the exit code (within `timeout`).
    func stopDaemon(timeout: Double = 20) async throws -> Int32 {
        guard let d = daemon else { throw HarnessError("no swarmd to stop") }
        d.signal(SIGTERM)
        return try await d.wait(timeout: timeout, "swarmd (pid \(d.pid)) to exit after SIGTERM")
    }

    var daemonLog: String { daemon?.stderr ?? "" }

    // MARK: swarmctl

    /// Runs swarmctl with `--socket` pointing at this test's daemon (unless `socket: false`).
    @discardableResult
    func ctl(_ args: [String], socket useSocket: Bool = true, asNobody: Bool = false, timeout: Double = 40) async throws -> CtlResult {
        var argv = args
        if useSocket { argv += ["--socket", socket] }
        var executable = Paths.swarmctl
        if asNobody {
            argv = ["--reuid=nobody", "--regid=nogroup", "--clear-groups", Paths.swarmctl] + argv
            executable = "/usr/bin/setpriv"
        }
        let c = try Child.spawn(executable, argv, dir: dir, label: label("ctl"))
        let code: Int32
        do {
            code = try await c.wait(timeout: timeout, "swarmctl \(args.joined(separator: " ")) to finish")
        } catch {
            c.signal(SIGKILL)
            _ = try? await c.wait(timeout: 5)
            throw HarnessError("\(error); its stderr: \(c.stderr)")
        }
        return CtlResult(args: args, code: code, out: c.stdout, err: c.stderr)
    }

    func ctl(_ args: String...) async throws -> CtlResult { try await ctl(args) }

    /// swarmctl that must succeed.
    @discardableResult
    func ctlOK(_ args: String..., sourceLocation: SourceLocation = #_sourceLocation) async throws -> CtlResult {
        let r = try await ctl(args)
        guard r.code == 0 else {
            throw HarnessError("expected success from \(r)\nswarmd log:\n\(daemonLog.suffix(3000))")
        }
        return r
    }

    /// `swarmctl status --json`, decoded; records the workers' pids.
    func status(_ app: String? = nil) async throws -> StatusReport {
        let r = try await ctl(["status", "--json"] + (app.map { [$0] } ?? []))
        guard r.code == 0 else { throw HarnessError("status failed: \(r)") }
        let report = try JSONDecoder().decode(StatusReport.self, from: Data(r.out.utf8))
        record(report)
        return report
    }

    func record(_ report: StatusReport) {
        var ids: [ProcessIdentity] = []
        for app in report.apps { for w in app.workers { if let pid = w.pid, let id = ProcessIdentity(pid: pid) { ids.append(id) } } }
        lock.lock()
        seenWorkers.formUnion(ids)
        lock.unlock()
    }

    // MARK: Raw protocol (cheap polling)

    /// One request over a fresh connection; the final result line.
    func request(_ verb: Verb, name: String? = nil, count: Int? = nil) throws -> Response {
        let c = try ControlConnection(path: socket)
        return try c.call(Request(id: 1, verb: verb, name: name, count: count))
    }

    func quickStatus() throws -> StatusReport {
        let r = try request(.status)
        guard let s = r.status else { throw HarnessError("status answered without a report: \(r)") }
        record(s)
        return s
    }

    /// Waits until `app` has `count` ready workers and reports it running; their pids by slot.
    @discardableResult
    func waitReady(_ app: String, workers count: Int, timeout: Double = 20) async throws -> [Int32] {
        try await waitUntil(timeout: timeout, "\(app) to have \(count) ready workers (log: \(daemonLog.suffix(1500)))") {
            let s = try self.quickStatus()
            guard let a = s.apps.first(where: { $0.name == app }), a.state == "running", a.workersReady == count,
                  a.workers.count == count, a.workers.allSatisfy({ $0.state == "ready" }) else { return nil }
            return a.workers.sorted { $0.slot < $1.slot }.compactMap(\.pid)
        }
    }

    // MARK: Finishing

    /// Stops the daemon (SIGTERM, exit 0) and checks no worker it ran is left.
    func finish() async throws {
        if let d = daemon, d.running {
            let code = try await stopDaemon()
            #expect(code == 0, "swarmd should exit 0 after SIGTERM; log:\n\(daemonLog.suffix(2000))")
        }
        if let f = foreignDaemon {
            try await waitUntil(timeout: 20, "autostarted swarmd \(f) to exit") { !f.isAlive }
        }
        try await expectNoWorkersLeft()
        try? FileManager.default.removeItem(atPath: dir)
    }

    func expectNoWorkersLeft() async throws {
        let workers = lock.withLock { seenWorkers }
        try await waitUntil(timeout: 10, "every worker to be gone; still alive: \(workers.filter(\.isAlive))") {
            workers.allSatisfy { !$0.isAlive }
        }
    }

    /// After a failure: SIGKILL our daemon and any worker of ours still alive. The directory stays for a post-mortem.
    func abort() {
        if let d = daemon, d.running {
            d.signal(SIGKILL)
            for _ in 0..<200 where d.running { usleep(10_000) }
        }
        if let f = foreignDaemon, f.isAlive { Glibc.kill(f.pid, SIGKILL) }
        for w in lock.withLock({ seenWorkers }) where w.isAlive { Glibc.kill(w.pid, SIGKILL) }
    }
}

/// Runs one test's session: its own `Swarm`, bounded parallelism, cleanup
/// that checks for leftover workers on success and kills them on failure.
/// `exclusive`: no other test runs meanwhile (one that saturates the CPU).
func withSwarm(exclusive: Bool = false, _ body: (Swarm) async throws -> Void) async throws {
    try Paths.requireBinaries()
    if exclusive { await Gate.shared.acquireAll() } else { await Gate.shared.acquire() }
    func release() async {
        if exclusive { await Gate.shared.releaseAll() } else { await Gate.shared.release() }
    }
    let swarm: Swarm
    do { swarm = try Swarm() } catch {
        await release()
        throw error
    }
    do {
        try await body(swarm)
        try await swarm.finish()
    } catch {
        let log = swarm.daemonLog
        swarm.abort()
        await release()
        throw HarnessError("\(error)\n(test dir \(swarm.dir) kept; swarmd log tail:\n\(log.suffix(2500)))")
    }
    await release()
}

// MARK: - Configs

enum Conf {
    /// A TOML string literal.
    static func q(_ s: String) -> String {
        "\"" + s.replacingOccurrences(of: "\\", with: "\\\\").replacingOccurrences(of: "\"", with: "\\\"") + "\""
    }

    static func array(_ items: [String]) -> String { "[" + items.map(q).joined(separator: ", ") + "]" }

    /// An app config: top-level keys, [env], one [[socket]] on 127.0.0.1:port (if any), then `extra` tables.
    static func app(_ name: String, command: [String], workers: Int = 1, port: UInt16? = nil,
                    env: [String: String] = [:], extra: String = "") -> String {
        var lines = ["name = \(q(name))", "command = \(array(command))", "workers = \(workers)"]
        if !env.isEmpty {
            lines.append("[env]")
            for (k, v) in env.sorted(by: { $0.key < $1.key }) { lines.append("\(k) = \(q(v))") }
        }
        if let port {
            lines += ["[[socket]]", "name = \"http\"", "listen = \"127.0.0.1:\(port)\""]
        }
        if !extra.isEmpty { lines.append(extra) }
        return lines.joined(separator: "\n") + "\n"
    }

    static func python(_ name: String, script: String = "server.py", workers: Int = 1, port: UInt16? = nil,
                       env: [String: String] = [:], extra: String = "") -> String {
        app(name, command: [Paths.python, Paths.pythonApps + "/" + script], workers: workers, port: port, env: env, extra: extra)
    }
}
