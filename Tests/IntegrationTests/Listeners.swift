import Foundation
import Glibc
import SwarmProtocol
import SwarmSystem

// Helpers for SystemdTests and HardeningTests: a unix-datagram listener that
// plays systemd's NOTIFY_SOCKET or journald's native socket, an HTTP load
// loop on its own thread, processes spawned with sockets at fds 3, 4, …, and
// a few /proc readers.

/// One datagram as received, with its arrival time.
struct Datagram {
    var at: Date
    var bytes: [UInt8]
    var text: String { String(decoding: bytes, as: UTF8.self) }
}

/// A unix datagram socket bound at `path`, read by its own thread into a list.
final class DatagramListener: @unchecked Sendable {
    let path: String
    let fd: Int32
    private let lock = NSLock()
    private var received: [Datagram] = []
    private var stopped = false
    private var thread: Thread?

    init(path: String) throws {
        self.path = path
        unlink(path)
        fd = try Sockets.bindDatagram(path)
        var size: Int32 = 8 << 20
        setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &size, socklen_t(MemoryLayout<Int32>.size))
        setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &size, socklen_t(MemoryLayout<Int32>.size))
        // Blocking with a short timeout, so the thread notices stop().
        let flags = fcntl(fd, F_GETFL)
        _ = fcntl(fd, F_SETFL, flags & ~O_NONBLOCK)
        setTimeouts(fd, seconds: 0.1)
        let t = Thread { [self] in self.readLoop() }
        t.name = "datagram-listener"
        thread = t
        t.start()
    }

    deinit { stop() }

    private func readLoop() {
        var buf = [UInt8](repeating: 0, count: 256 << 10)
        while !lock.withLock({ stopped }) {
            let n = buf.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            if n > 0 {
                let d = Datagram(at: Date(), bytes: Array(buf[0..<n]))
                lock.withLock { received.append(d) }
            } else if n < 0 && errno != EAGAIN && errno != EINTR && errno != EWOULDBLOCK {
                return
            }
        }
    }

    func stop() {
        let first = lock.withLock { () -> Bool in
            defer { stopped = true }
            return !stopped
        }
        if first {
            // The thread exits within its 100 ms receive timeout; close after that.
            let fd = self.fd
            DispatchQueue.global().asyncAfter(deadline: .now() + 0.5) { close(fd) }
            unlink(path)
        }
    }

    var all: [Datagram] { lock.withLock { received } }
    var count: Int { lock.withLock { received.count } }

    /// sd_notify messages: one line a variable.
    var notifyLines: [(at: Date, line: String)] {
        all.flatMap { d in d.text.split(separator: "\n").map { (d.at, String($0)) } }
    }

    /// Waits for the first datagram (after `from`, an index) matching `match`; returns its index and itself.
    @discardableResult
    func waitFor(timeout: Double, _ what: String, from: Int = 0, _ match: @escaping (Datagram) -> Bool) async throws -> (Int, Datagram) {
        try await waitUntil(timeout: timeout, "\(what); received so far: \(summary())", every: 0.005) { () -> (Int, Datagram)? in
            let list = self.all
            guard from < list.count else { return nil }
            for i in from..<list.count where match(list[i]) { return (i, list[i]) }
            return nil
        }
    }

    func summary(limit: Int = 30) -> String {
        let list = all
        return "\(list.count) datagrams: " + list.suffix(limit).map { $0.text.replacingOccurrences(of: "\n", with: "\\n").prefix(200) }.joined(separator: " | ")
    }
}

/// journald's native protocol: "KEY=value\n", or "KEY\n" + 64-bit LE length + value + "\n".
func parseJournalDatagram(_ bytes: [UInt8]) -> [String: String] {
    var fields: [String: String] = [:]
    var i = 0
    while i < bytes.count {
        var j = i
        while j < bytes.count && bytes[j] != UInt8(ascii: "=") && bytes[j] != UInt8(ascii: "\n") { j += 1 }
        let key = String(decoding: bytes[i..<j], as: UTF8.self)
        guard j < bytes.count else { break }
        if bytes[j] == UInt8(ascii: "=") {
            var k = j + 1
            while k < bytes.count && bytes[k] != UInt8(ascii: "\n") { k += 1 }
            fields[key] = String(decoding: bytes[(j + 1)..<k], as: UTF8.self)
            i = k + 1
        } else {
            guard j + 9 <= bytes.count else { break }
            var len: UInt64 = 0
            for b in 0..<8 { len |= UInt64(bytes[j + 1 + b]) << (8 * UInt64(b)) }
            let start = j + 9
            let end = min(bytes.count, start + Int(len))
            fields[key] = String(decoding: bytes[start..<end], as: UTF8.self)
            i = end + 1
        }
    }
    return fields
}

/// Fresh-connection GETs in a loop on their own thread, counting failures.
final class HTTPLoadLoop: @unchecked Sendable {
    let port: UInt16
    private let lock = NSLock()
    private var stopped = false
    private var done = false
    private(set) var ok = 0
    private(set) var failed = 0
    private(set) var errors: [String] = []
    private(set) var pids: [Int32: Int] = [:]
    /// The slowest answered request (seconds): a connection that waited in a backlog.
    private(set) var slowest = 0.0
    private var thread: Thread?

    init(port: UInt16, pause: Double = 0.005) {
        self.port = port
        let t = Thread { [self] in
            while !self.lock.withLock({ self.stopped }) {
                do {
                    let t0 = Date()
                    let r = try httpGet(port)
                    let took = elapsed(since: t0)
                    self.lock.withLock {
                        if r.status == 200 {
                            self.ok += 1
                            self.slowest = max(self.slowest, took)
                            if let p = r.pid { self.pids[p, default: 0] += 1 }
                        } else {
                            self.failed += 1
                            if self.errors.count < 10 { self.errors.append("status \(r.status): \(r.body)") }
                        }
                    }
                } catch {
                    self.lock.withLock {
                        self.failed += 1
                        if self.errors.count < 10 { self.errors.append("\(error)") }
                    }
                }
                if pause > 0 { usleep(UInt32(pause * 1e6)) }
            }
            self.lock.withLock { self.done = true }
        }
        thread = t
        t.start()
    }

    var counts: (ok: Int, failed: Int, errors: [String]) { lock.withLock { (ok, failed, errors) } }
    /// Which worker pids answered, and how often.
    var answered: [Int32: Int] { lock.withLock { pids } }
    var slowestAnswer: Double { lock.withLock { slowest } }

    /// Stops the loop and waits (bounded) for its last request to finish.
    func stop() async throws -> (ok: Int, failed: Int, errors: [String]) {
        lock.withLock { stopped = true }
        try await waitUntil(timeout: 15, "the HTTP load thread to finish its last request") { self.lock.withLock { self.done } }
        return counts
    }
}

/// Processes a test started outside the harness's daemon slot: SIGKILLed and reaped at the end unless already gone.
final class OwnedProcesses: @unchecked Sendable {
    private let lock = NSLock()
    private var children: [Child] = []
    private var others: [ProcessIdentity] = []

    func add(_ c: Child) { lock.withLock { children.append(c) } }
    func add(_ id: ProcessIdentity) { lock.withLock { others.append(id) } }

    func killAll() {
        for id in lock.withLock({ others }) where id.isAlive { kill(id.pid, SIGKILL) }
        for c in lock.withLock({ children }) where c.running {
            c.signal(SIGKILL)
            for _ in 0..<300 where c.running { usleep(10_000) }
        }
    }
}

/// /proc helpers.
enum ProcPeek {
    /// utime + stime in clock ticks.
    static func cpuTicks(_ pid: Int32) -> Int64? { ProcFS.cpuTicks(pid: pid)?.cpu }

    static func rss(_ pid: Int32) -> Int64? { ProcFS.rss(pid: pid) }

    /// Pids whose parent is `pid`, with their state letter.
    static func children(of pid: Int32) -> [(pid: Int32, state: Character)] {
        var out: [(Int32, Character)] = []
        for name in ProcFS.listDirectory("/proc") ?? [] {
            guard let p = Int32(name), let s = ProcState.read(p), s.ppid == pid else { continue }
            out.append((p, s.state))
        }
        return out
    }

    /// A line of /proc/<pid>/status or limits starting with `prefix`.
    static func line(_ pid: Int32, file: String, prefix: String) -> String? {
        readText("/proc/\(pid)/\(file)").split(separator: "\n").first { $0.hasPrefix(prefix) }.map(String.init)
    }

    /// Raises this process's soft RLIMIT_NOFILE to at least `n` (children inherit it).
    static func raiseNoFile(to n: UInt64) {
        var rl = rlimit()
        getrlimit(Int32(RLIMIT_NOFILE.rawValue), &rl)
        if rl.rlim_cur < n {
            rl.rlim_cur = min(max(rlim_t(n), rl.rlim_cur), rl.rlim_max)
            setrlimit(Int32(RLIMIT_NOFILE.rawValue), &rl)
        }
    }
}

/// Times one status request over a fresh control connection.
func timedStatus(_ s: Swarm) throws -> (seconds: Double, report: StatusReport) {
    let t0 = Date()
    let c = try ControlConnection(path: s.socket, timeout: 10)
    let r = try c.call(Request(id: 9, verb: .status))
    guard let report = r.status else { throw HarnessError("status answered without a report: \(r)") }
    return (elapsed(since: t0), report)
}
