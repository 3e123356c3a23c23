import Foundation
import Glibc
import SwarmSystem
import Testing

// Real processes, real cgroups, real seccomp notifications. Every wait has a
// deadline and says what it waited for; every test kills only the processes
// it started and removes the cgroups it made, also when it fails.

struct KernelTestError: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}

let isRoot = geteuid() == 0
let rootOnly = "needs root (cgroup writes, seccomp listeners, process_vm_readv of other users' workers): run the tests as root"

final class Counter: @unchecked Sendable {
    private var value = 0
    private let lock = NSLock()
    func next() -> Int { lock.withLock { value += 1; return value } }
}

let counter = Counter()

/// The real python3 (not a pyenv shim, which would add a process and a second).
let python: String = {
    let pipe = Pipe()
    let p = Process()
    p.executableURL = URL(fileURLWithPath: "/usr/bin/env")
    p.arguments = ["python3", "-c", "import sys; print(sys.executable)"]
    p.standardOutput = pipe
    try? p.run()
    p.waitUntilExit()
    let out = String(decoding: pipe.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
    return out.isEmpty ? "/usr/bin/python3" : out
}()

func findExecutable(_ name: String) -> String? {
    for dir in (ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin").split(separator: ":") {
        let p = "\(dir)/\(name)"
        if access(p, X_OK) == 0 { return p }
    }
    return nil
}

func monotonic() -> Double { Double(Posix.monotonicNanoseconds()) / 1e9 }

/// Polls `condition` every 20 ms until it holds or `seconds` pass; the error names what was awaited.
func waitFor(_ what: String, seconds: Double = 10, _ condition: () throws -> Bool) throws {
    let deadline = monotonic() + seconds
    while true {
        if try condition() { return }
        if monotonic() > deadline { throw KernelTestError("timed out after \(seconds) s waiting for \(what)") }
        usleep(20_000)
    }
}

/// A temporary directory removed by `cleanUp`.
final class Scratch {
    let path: String
    init(_ tag: String) {
        var template = Array("/tmp/swarm-kernel-\(tag)-XXXXXX".utf8CString)
        path = template.withUnsafeMutableBufferPointer { String(cString: mkdtemp($0.baseAddress!)!) }
    }
    func file(_ name: String) -> String { path + "/" + name }
    func write(_ name: String, _ text: String) throws {
        try text.write(toFile: file(name), atomically: true, encoding: .utf8)
    }
    func read(_ name: String) -> String { (try? String(contentsOfFile: file(name), encoding: .utf8)) ?? "" }
    func cleanUp() { try? FileManager.default.removeItem(atPath: path) }
}

/// A process this test started (through Spawner, as swarmd does), with its output in a file.
final class Worker {
    let pid: pid_t
    let log: String
    var interceptor: BindInterceptor?
    private(set) var reaped = false

    /// `createdInCgroup`: the child is made in the cgroup (clone3 CLONE_INTO_CGROUP) when the cgroup allows it, as swarmd's spawns are.
    init(_ argv: [String], scratch: Scratch, cgroup: WorkerCgroup? = nil, createdInCgroup: Bool = false, interceptBind: Bool = false,
         ids: (uid: uid_t, gid: gid_t)? = nil, env: [String] = []) throws {
        log = scratch.file("worker-\(counter.next()).log")
        let out = open(log, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
        let devNull = open("/dev/null", O_RDONLY | O_CLOEXEC)
        defer { close(out); close(devNull) }
        let environment = ["PATH=/usr/local/bin:/usr/bin:/bin", "HOME=/tmp", "PYTHONUNBUFFERED=1", "LANG=C.UTF-8"] + env
        var plan = SpawnPlan(executable: argv[0], argv: argv, environment: environment, setListenPID: false,
                             cwd: scratch.path, fds: [], stdin: devNull, stdout: out, stderr: out)
        plan.cgroupProcsFD = try cgroup?.openProcsFD() ?? -1
        let directory = createdInCgroup ? cgroup?.openDirectory() ?? -1 : -1
        defer { if directory >= 0 { close(directory) } }
        plan.cgroupDirFD = directory
        plan.interceptBind = interceptBind
        plan.ids = ids
        if ids != nil { chmod(log, 0o666) }
        let spawned = try Spawner.spawnWorker(plan)
        pid = spawned.pid
        if let fd = spawned.bindNotifyFD { interceptor = BindInterceptor(notifyFD: fd, pid: pid) }
        cgroup?.closeProcsFD()
    }

    var output: String { (try? String(contentsOfFile: log, encoding: .utf8)) ?? "" }

    /// Reaps without blocking; true once the process is gone.
    @discardableResult
    func reap() -> Bool {
        if reaped { return true }
        var status: Int32 = 0
        let r = waitpid(pid, &status, WNOHANG)
        if r == pid || (r < 0 && errno == ECHILD) { reaped = true }
        return reaped
    }

    /// The test reaped the process itself (wait4).
    func markReaped() { reaped = true }

    func stop() {
        if !reaped {
            // The worker's own process group: the children it forked (the tests that escape it use a cgroup).
            _ = kill(-pid, SIGKILL)
            _ = kill(pid, SIGKILL)
            var status: Int32 = 0
            while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
            reaped = true
        }
        interceptor?.close()
    }
}

/// A pid and its start time: a pid that was reused is not the same process.
struct Identity: Hashable, CustomStringConvertible {
    var pid: pid_t
    var start: Int64
    init?(pid: pid_t) {
        guard let t = ProcFS.cpuTicks(pid: pid) else { return nil }
        self.pid = pid
        start = t.start
    }
    /// Gone, or a zombie (killed, not yet reaped by whoever inherited it).
    var isDead: Bool {
        guard let now = Identity(pid: pid), now.start == start else { return true }
        return processState(pid) == "Z"
    }
    var description: String { "pid \(pid)" }
}

func processState(_ pid: pid_t) -> Character? {
    guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
          let close = stat.lastIndex(of: ")") else { return nil }
    return stat[stat.index(close, offsetBy: 2)]
}

/// Field 5 of /proc/PID/stat.
func processGroup(_ pid: pid_t) -> pid_t? {
    guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
          let close = stat.lastIndex(of: ")") else { return nil }
    let fields = stat[stat.index(after: close)...].split(separator: " ")
    return fields.count > 2 ? pid_t(fields[2]) : nil
}

// MARK: - Sockets

enum Ports {
    private static let portCounter = Counter()
    /// A TCP port on 127.0.0.1 that nothing listens on now, spread by our pid
    /// (below the ephemeral range) so parallel test processes start apart.
    static func free() throws -> UInt16 {
        let base = 32000 + Int(getpid() % 300) * 20
        for _ in 0..<2000 {
            let port = UInt16(32000 + (base - 32000 + portCounter.next()) % 6000)
            if isBindable(port) { return port }
        }
        throw KernelTestError("no free port in 32000..<38000")
    }

    static func isBindable(_ port: UInt16) -> Bool {
        guard let fd = try? Sockets.listenTCP(host: "127.0.0.1", port: port, backlog: 1, reusePort: false) else { return false }
        close(fd)
        return true
    }
}

func socketInode(_ fd: Int32) -> UInt64 {
    var st = stat()
    fstat(fd, &st)
    return UInt64(st.st_ino)
}

/// The fds of `pid` that are the socket with this inode.
func fds(of pid: pid_t, withInode inode: UInt64) -> [Int32] {
    (ProcFS.listDirectory("/proc/\(pid)/fd") ?? []).compactMap { name in
        ProcFS.readLink("/proc/\(pid)/fd/\(name)") == "socket:[\(inode)]" ? Int32(name) : nil
    }
}

/// One HTTP/1.0 request; the whole answer (head and body), or an error naming what failed.
func httpGet(port: UInt16, path: String = "/", seconds: Double = 5) throws -> String {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
    guard fd >= 0 else { throw KernelTestError("socket: errno \(errno)") }
    defer { close(fd) }
    var tv = timeval(tv_sec: Int(seconds), tv_usec: 0)
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
    var addr = sockaddr_in()
    addr.sin_family = sa_family_t(AF_INET)
    addr.sin_port = port.bigEndian
    addr.sin_addr.s_addr = inet_addr("127.0.0.1")
    let c = withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
    guard c == 0 else { throw KernelTestError("connect to 127.0.0.1:\(port): errno \(errno)") }
    let request = Array("GET \(path) HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n".utf8)
    guard request.withUnsafeBytes({ send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }) == request.count else {
        throw KernelTestError("send to 127.0.0.1:\(port): errno \(errno)")
    }
    var answer: [UInt8] = []
    var buf = [UInt8](repeating: 0, count: 4096)
    let deadline = monotonic() + seconds
    while monotonic() < deadline {
        let n = buf.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
        if n > 0 { answer += buf[0..<n]; continue }
        if n == 0 { return String(decoding: answer, as: UTF8.self) }
        if errno == EINTR { continue }
        throw KernelTestError("recv from 127.0.0.1:\(port) after \(answer.count) bytes: errno \(errno)")
    }
    throw KernelTestError("no complete answer from 127.0.0.1:\(port) within \(seconds) s (got \(answer.count) bytes)")
}

// MARK: - An interceptor driven like the daemon's event loop would

/// Runs `handleOne` whenever the notification fd is readable, on a thread of
/// its own (the test's thread waits on outcomes). Stops on `stop()` or hang-up.
final class Pump: @unchecked Sendable {
    private let interceptor: BindInterceptor
    private let rules: [BindRule]
    private let lock = NSLock()
    private var outcomes: [BindOutcome] = []
    private var stopping = false
    private let done = DispatchSemaphore(value: 0)

    init(_ interceptor: BindInterceptor, rules: [BindRule]) {
        self.interceptor = interceptor
        self.rules = rules
        let thread = Thread { [self] in run() }
        thread.start()
    }

    private func run() {
        defer { done.signal() }
        while !lock.withLock({ stopping }) {
            var p = pollfd(fd: interceptor.fd, events: Int16(POLLIN), revents: 0)
            let r = poll(&p, 1, 50)
            if r <= 0 { continue }
            let outcome = interceptor.handleOne(rules: rules)
            if outcome == .idle { continue }
            lock.withLock { outcomes.append(outcome) }
            if outcome == .hungUp { return }
        }
    }

    var all: [BindOutcome] { lock.withLock { outcomes } }

    var substitutions: [BindOutcome] {
        all.filter { if case .substituted = $0 { return true } else { return false } }
    }

    func waitForOutcome(_ what: String, seconds: Double = 15, log: () -> String = { "" },
                        _ predicate: (BindOutcome) -> Bool) throws -> BindOutcome {
        var found: BindOutcome?
        do {
            try waitFor(what, seconds: seconds) {
                found = all.first(where: predicate)
                return found != nil
            }
        } catch {
            throw KernelTestError("\(error); outcomes so far: \(all); worker output: \(log())")
        }
        return found!
    }

    func stop() {
        lock.withLock { stopping = true }
        _ = done.wait(timeout: .now() + 2)
    }
}
