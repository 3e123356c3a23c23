import Foundation
import Glibc

// A small HTTP load generator for the reload and balance tests: a few OS
// threads, some keeping one connection alive across requests, some opening a
// fresh connection per request; it counts successes and failures (with their
// reasons) and which pids answered. Bounded in time and in requests, so a
// forgotten `stop()` cannot run forever.

struct TrafficReport: CustomStringConvertible {
    var ok = 0
    var failed = 0
    /// Failure reason → count.
    var reasons: [String: Int] = [:]
    /// Requests re-sent on a fresh connection because the server closed an idle
    /// keep-alive connection just as we reused it (RFC 9112 §9.3.1: a client may
    /// retry an idempotent request then). The retry itself must succeed.
    var keepAliveRetries = 0
    var pids: [Int32: Int] = [:]
    var seconds = 0.0

    var description: String {
        let r = reasons.sorted { $0.value > $1.value }.prefix(8).map { "\($0.value)× \($0.key)" }.joined(separator: "; ")
        return "\(ok) ok, \(failed) failed\(r.isEmpty ? "" : " (\(r))"), \(keepAliveRetries) keep-alive retries, "
            + "\(pids.count) pids, \(String(format: "%.1f", seconds))s"
    }
}

final class Traffic: @unchecked Sendable {
    enum Style: Sendable { case keepAlive, fresh }

    let port: UInt16
    let path: String
    private let styles: [Style]
    private let pause: Double
    private let maxSeconds: Double
    private let maxRequestsPerThread: Int
    private let lock = NSLock()
    private var report = TrafficReport()
    private var stopping = false
    private var paused = false
    private var inFlight = 0
    private var running = 0
    private var started = Date()
    /// Keep-alive thread index → pid of its last answer.
    private var lastPid: [Int: Int32] = [:]

    /// `pause`: seconds each thread sleeps between requests (0: a tight loop).
    init(port: UInt16, keepAlive: Int = 2, fresh: Int = 2, path: String = "/", pause: Double = 0.002,
         maxSeconds: Double = 90, maxRequestsPerThread: Int = 200_000) {
        self.port = port
        self.path = path
        styles = Array(repeating: .keepAlive, count: keepAlive) + Array(repeating: .fresh, count: fresh)
        self.pause = pause
        self.maxSeconds = maxSeconds
        self.maxRequestsPerThread = maxRequestsPerThread
    }

    func start() {
        lock.withLock {
            started = Date()
            running = styles.count
        }
        for (i, style) in styles.enumerated() {
            let t = Thread { [self] in self.run(style, index: i) }
            t.stackSize = 1 << 20
            t.start()
        }
    }

    /// A snapshot of the counts so far.
    var current: TrafficReport {
        lock.withLock {
            var r = report
            r.seconds = Date().timeIntervalSince(started)
            return r
        }
    }

    /// How many keep-alive clients the last answer came from each pid: where their connections are.
    var keepAliveHomes: [Int32: Int] {
        lock.withLock { lastPid.values.reduce(into: [:]) { $0[$1, default: 0] += 1 } }
    }

    /// Waits until at least `n` more requests have succeeded (proof the load is flowing).
    func waitForProgress(_ n: Int = 20, timeout: Double = 15) async throws {
        let base = current.ok
        try await waitUntil(timeout: timeout, "\(n) more successful requests on port \(port) (load: \(current))") {
            self.current.ok >= base + n
        }
    }

    /// Holds every thread between two requests (none in flight) until `resume()`.
    func pauseAll(timeout: Double = 15) async throws {
        lock.withLock { paused = true }
        try await waitUntil(timeout: timeout, "every load thread to finish its request in flight") {
            self.lock.withLock { self.inFlight == 0 }
        }
    }

    func resume() { lock.withLock { paused = false } }

    /// Stops the threads (each finishes its request in flight) and returns the totals.
    func stop(timeout: Double = 30) async throws -> TrafficReport {
        lock.withLock {
            stopping = true
            paused = false
        }
        try await waitUntil(timeout: timeout, "the load threads to finish (load: \(current))") {
            self.lock.withLock { self.running == 0 }
        }
        return current
    }

    private func record(ok pid: Int32?, failure: String? = nil, retried: Bool = false) {
        lock.withLock {
            if let failure {
                report.failed += 1
                report.reasons[failure, default: 0] += 1
            } else {
                report.ok += 1
                if let pid { report.pids[pid, default: 0] += 1 }
            }
            if retried { report.keepAliveRetries += 1 }
        }
    }

    /// False when the thread should end; blocks while paused.
    private func enter() -> Bool {
        while true {
            let state: (stop: Bool, wait: Bool) = lock.withLock {
                if stopping || Date().timeIntervalSince(started) > maxSeconds { return (true, false) }
                if paused { return (false, true) }
                inFlight += 1
                return (false, false)
            }
            if state.stop { return false }
            if !state.wait { return true }
            usleep(1000)
        }
    }

    private func leave() { lock.withLock { inFlight -= 1 } }

    /// The server closed (or reset) the connection without answering: what a
    /// server closing an idle keep-alive connection looks like to a client that reused it.
    static func isIdleClose(_ error: Error) -> Bool {
        let text = "\(error)"
        return ["closed the connection before answering", "ECONNRESET", "EPIPE"].contains { text.contains($0) }
    }

    private func run(_ style: Style, index: Int) {
        defer { lock.withLock { running -= 1 } }
        var conn: HTTPConnection?
        var reused = false
        for _ in 0..<maxRequestsPerThread {
            guard enter() else { break }
            switch style {
            case .fresh:
                do {
                    let r = try httpGet(port, path)
                    if r.status == 200 { record(ok: r.pid) } else { record(ok: nil, failure: "status \(r.status)") }
                } catch {
                    record(ok: nil, failure: "fresh connection: \(error)")
                }
            case .keepAlive:
                do {
                    if conn == nil {
                        conn = try HTTPConnection(port: port)
                        reused = false
                    }
                    let r: HTTPResponse
                    var retried = false
                    do {
                        r = try conn!.get(path)
                    } catch where reused && Traffic.isIdleClose(error) {
                        // The server closed this idle connection as we reused it: retry once, fresh.
                        retried = true
                        conn = try HTTPConnection(port: port)
                        reused = false
                        r = try conn!.get(path)
                    }
                    reused = true
                    if r.headers["connection"]?.lowercased() == "close" { conn = nil }
                    if let pid = r.pid { lock.withLock { lastPid[index] = pid } }
                    if r.status == 200 { record(ok: r.pid, retried: retried) } else { record(ok: nil, failure: "status \(r.status)", retried: retried) }
                } catch {
                    conn = nil
                    record(ok: nil, failure: "keep-alive connection: \(error)")
                }
            }
            leave()
            if pause > 0 { usleep(UInt32(pause * 1e6)) }
        }
    }
}

/// Starts `load`, runs `body`, and always stops the load (even when `body` throws).
func withTraffic<T>(_ load: Traffic, _ body: () async throws -> T) async throws -> (T, TrafficReport) {
    load.start()
    let value: T
    do {
        try await load.waitForProgress()
        value = try await body()
    } catch {
        let r = try? await load.stop()
        throw HarnessError("\(error)\n(load so far: \(r.map { "\($0)" } ?? "threads did not stop"))")
    }
    return (value, try await load.stop())
}

/// Busy loops that saturate every core (`perCore` per online CPU), for tests of
/// behaviour on a machine whose CPU other processes use up. Each loop runs
/// under `timeout -s KILL` in its own process group, so it dies within
/// `lifetime` even if the test process itself dies; `stop()` (call it in a
/// `defer`) kills every group at once.
final class CPUHogs: CustomStringConvertible {
    let groups: [Int32]

    init(perCore: Int, dir: String, lifetime: Int = 300) throws {
        let cores = max(1, Int(sysconf(Int32(_SC_NPROCESSORS_ONLN))))
        var groups: [Int32] = []
        do {
            for i in 0..<(perCore * cores) {
                let c = try Child.spawn("/usr/bin/timeout", ["-s", "KILL", "\(lifetime)", "/bin/sh", "-c", "while :; do :; done"],
                                        dir: dir, label: "hog-\(i)")
                groups.append(c.pid)  // the spawner makes each child a process group leader
            }
        } catch {
            for g in groups { kill(-g, SIGKILL) }
            throw error
        }
        self.groups = groups
    }

    /// Whether every loop is there and burning CPU (state R in /proc/PID/stat, the shell child of `timeout`).
    var allRunning: Bool {
        groups.allSatisfy { g in
            let children = readText("/proc/\(g)/task/\(g)/children").split(separator: " ").compactMap { Int32($0) }
            return children.contains { ProcState.read($0)?.state == "R" }
        }
    }

    func stop() {
        for g in groups { kill(-g, SIGKILL) }
        for g in groups { waitpid(g, nil, 0) }
    }

    var description: String { "\(groups.count) busy loops (groups \(groups))" }
}
