import CSwarmSpawn
import Glibc
import SwarmCore
import SwarmProtocol
import SwarmSystem

/// The shell's health part: the accept-queue samples and probes the core asks
/// for, each answered with one `Event.health`, all on the one event loop.
///
/// ## How a probe reaches one worker
/// With reuseport the kernel, not swarmd, picks the socket (and so the worker)
/// of a new connection. swarm's eBPF steering program picks it instead, and it
/// recognises probe connections by their **source port**: a connection from
/// port `probePortBase + i` goes to entry `i` of the group's socket array,
/// which `SocketTable` keeps filled with the steered slots' sockets. The probe
/// binds that source port on the loopback address, connects to the app's
/// port, and is accepted by exactly slot k's worker, through the very socket
/// its clients use. Cost: one socket and one connection per probe (closed with
/// RST, so no TIME_WAIT holds the port), a handful of BPF instructions on
/// every new connection (a two-byte load and a compare), and a port range
/// (61000…65095) that must stay out of `net.ipv4.ip_local_port_range`. A slot
/// out of the steering set has no entry and is not probed (it is already being
/// replaced); without eBPF (not root) http/tcp probes cannot be aimed and are
/// skipped, with one warning.
///
/// Queue samples: one sock_diag dump of the listening sockets per address family
/// per app per interval; each slot's listener is found by its inode.
final class HealthChecker {
    let loop: EventLoop
    let sockets: SocketTable
    /// Results go back to the core through this.
    var deliver: (SwarmCore.Event) -> Void = { _ in }
    var report: (NoteLevel, String) -> Void = { _, _ in }
    /// CLOCK_MONOTONIC nanoseconds.
    var now: () -> Int64 = { Posix.monotonicNanoseconds() }

    /// Must match SWARM_PROBE_PORT_BASE in bpf.c.
    static let probePortBase = Int(SWARM_PROBE_PORT_BASE)
    static let epollIn: UInt32 = 0x001
    static let epollOut: UInt32 = 0x004
    /// How often probe deadlines are checked while probes are out.
    static let timeoutResolution: Int64 = 25_000_000
    /// At most this much of a probe's answer is read: its status line.
    static let maxResponse = 1024

    final class Probe {
        let request: HealthProbeRequest
        let fd: Int32
        let deadline: Int64
        var source: EventLoop.Source?
        var connected = false
        var response: [UInt8] = []
        init(request: HealthProbeRequest, fd: Int32, deadline: Int64) {
            self.request = request
            self.fd = fd
            self.deadline = deadline
        }
    }

    private(set) var probes: [WorkerID: Probe] = [:]
    private var timerSource: EventLoop.Source?
    private var warnedUnaimed: Set<String> = []
    private var inTimer = false
    private lazy var stopTimerLater = loop.addDeferred { [weak self] in self?.stopTimer() }

    init(loop: EventLoop, sockets: SocketTable) {
        self.loop = loop
        self.sockets = sockets
    }

    func perform(_ action: HealthAction) {
        switch action {
        case let .sampleQueues(app): sampleQueues(app)
        case let .probe(request): startProbe(request)
        }
    }

    // MARK: - Accept queues

    func sampleQueues(_ app: String) {
        guard let table = sockets[app] else { return }
        var lengths: [Int: Int] = [:]
        for entry in table.entries where entry.reuseport {
            guard let port = entry.port else { continue }
            var slots: [Int] = []
            var inodes: [UInt32] = []
            for k in ([0] + entry.perSlot.keys.sorted()) {
                guard let fd = entry.fd(ofSlot: k) else { continue }
                var st = stat()
                guard fstat(fd, &st) == 0 else { continue }
                slots.append(k)
                inodes.append(UInt32(truncatingIfNeeded: st.st_ino))
            }
            var queues = [Int32](repeating: -1, count: inodes.count)
            let found = inodes.withUnsafeBufferPointer { ino in
                queues.withUnsafeMutableBufferPointer { q in swarm_listen_queues(port, ino.baseAddress, Int32(ino.count), q.baseAddress) }
            }
            if found < 0 {
                report(.warning, "Failed to read the accept queues of \(app) (sock_diag, port \(port)): \(String(cString: strerror(errno))), ignoring")
                continue
            }
            // Several sockets per slot: the fullest queue speaks for the slot.
            for (i, k) in slots.enumerated() where queues[i] >= 0 { lengths[k] = max(lengths[k] ?? 0, Int(queues[i])) }
        }
        deliver(.health(.acceptQueues(app: app, lengths)))
    }

    // MARK: - Probes

    func startProbe(_ request: HealthProbeRequest) {
        if probes[request.worker] != nil { return }  // the core waits for the one out
        switch request.check {
        case .http, .tcp:
            connectProbe(request)
        case .exec:
            // Not built yet: say so once rather than judge the worker.
            if warnedUnaimed.insert("exec:\(request.app)").inserted {
                report(.warning, "\(request.app): exec health probes are not supported by this swarmd yet; not probing")
            }
        }
    }

    private func connectProbe(_ r: HealthProbeRequest) {
        guard let table = sockets[r.app],
              let entry = table.entries.first(where: { e in r.socket.map { e.spec.name == $0 } ?? e.spec.listen.isTCP }),
              case let .tcp(host, port) = entry.spec.listen else { return }
        guard entry.roundRobin != nil, let index = entry.steeredIndex[r.slot], index < AppSockets.maxSlots else {
            if entry.roundRobin == nil, warnedUnaimed.insert(r.app).inserted {
                report(.warning, "\(r.app): http/tcp probes need eBPF steering (root) to reach one chosen worker; not probing")
            }
            return
        }
        let v6 = host.contains(":")
        let target = host == "0.0.0.0" ? "127.0.0.1" : (host == "::" ? "::1" : host)
        let fd = socket(v6 ? AF_INET6 : AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else {
            return fail(r, "socket: \(String(cString: strerror(errno)))")
        }
        var one: Int32 = 1
        _ = setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
        // No TIME_WAIT: the next probe of this slot binds the same source port.
        var linger = Glibc.linger(l_onoff: 1, l_linger: 0)
        _ = setsockopt(fd, SOL_SOCKET, SO_LINGER, &linger, socklen_t(MemoryLayout<Glibc.linger>.size))
        let sourcePort = UInt16(HealthChecker.probePortBase + index)
        let bound = withAddress(target, port: sourcePort, v6: v6) { bind(fd, $0, $1) }
        guard bound == 0 else {
            let e = errno
            Posix.close(fd)
            return fail(r, "bind to source port \(sourcePort): \(String(cString: strerror(e)))")
        }
        let c = withAddress(target, port: port, v6: v6) { connect(fd, $0, $1) }
        if c != 0 && errno != EINPROGRESS {
            let e = errno
            Posix.close(fd)
            return finish(r, ok: false, detail: e == ECONNREFUSED ? "refused" : "connect: \(String(cString: strerror(e)))")
        }
        let probe = Probe(request: r, fd: fd, deadline: now() + r.timeout.nanoseconds)
        probes[r.worker] = probe
        do {
            probe.source = try loop.addReader(fd, events: HealthChecker.epollOut) { [weak self, weak probe] events in
                guard let self, let probe else { return }
                self.onReady(probe, events: events)
            }
        } catch {
            probes[r.worker] = nil
            Posix.close(fd)
            return fail(r, "\(error)")
        }
        armTimer()
    }

    private func onReady(_ p: Probe, events: UInt32) {
        if !p.connected {
            var err: Int32 = 0
            var len = socklen_t(MemoryLayout<Int32>.size)
            _ = getsockopt(p.fd, SOL_SOCKET, SO_ERROR, &err, &len)
            if err != 0 { return done(p, ok: false, detail: err == ECONNREFUSED ? "refused" : "connect: \(String(cString: strerror(err)))") }
            p.connected = true
            guard case let .http(path, host, _) = p.request.check else { return done(p, ok: true, detail: "connected") }
            let request = "GET \(path) HTTP/1.1\r\nHost: \(host ?? "localhost")\r\nUser-Agent: swarmd-health\r\nConnection: close\r\n\r\n"
            let bytes = Array(request.utf8)
            // Small enough for any socket buffer: one write, or the probe has failed.
            let n = bytes.withUnsafeBytes { send(p.fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            guard n == bytes.count else { return done(p, ok: false, detail: "send: \(String(cString: strerror(errno)))") }
            if let s = p.source { loop.setIOEvents(s, HealthChecker.epollIn) }
            return
        }
        var buf = [UInt8](repeating: 0, count: 512)
        let n = buf.withUnsafeMutableBytes { recv(p.fd, $0.baseAddress, $0.count, 0) }
        if n < 0 {
            if errno == EAGAIN || errno == EINTR { return }
            return done(p, ok: false, detail: "recv: \(String(cString: strerror(errno)))")
        }
        p.response += buf.prefix(n)
        if let status = HealthChecker.status(of: p.response) {
            guard case let .http(_, _, expect) = p.request.check else { return }
            return done(p, ok: expect.contains(status), detail: "\(status)")
        }
        if n == 0 || p.response.count >= HealthChecker.maxResponse {
            done(p, ok: false, detail: n == 0 ? "closed without a status line" : "no status line")
        }
    }

    /// The status of an HTTP response's first line, once it is complete.
    static func status(of bytes: [UInt8]) -> Int? {
        guard let end = bytes.firstIndex(of: UInt8(ascii: "\n")) else { return nil }
        let line = String(decoding: bytes[..<end], as: UTF8.self)
        let parts = line.split(separator: " ", omittingEmptySubsequences: true)
        guard parts.count >= 2, parts[0].hasPrefix("HTTP/"), let code = Int(parts[1]), (100...599).contains(code) else { return 0 }
        return code
    }

    private func done(_ p: Probe, ok: Bool, detail: String) {
        p.source?.cancel()
        p.source = nil
        Posix.close(p.fd)
        probes[p.request.worker] = nil
        finish(p.request, ok: ok, detail: detail)
        armTimer()
    }

    private func fail(_ r: HealthProbeRequest, _ why: String) {
        report(.warning, "Failed to probe \(r.app)[\(r.slot)]: \(why)")
        finish(r, ok: false, detail: why)
    }

    private func finish(_ r: HealthProbeRequest, ok: Bool, detail: String) {
        deliver(.health(.probeResult(r.worker, ok: ok, detail: detail)))
    }

    // MARK: - Timeouts

    /// A periodic check of the deadlines, only while probes are out.
    private func armTimer() {
        if probes.isEmpty {
            // Not from within the periodic source's own dispatch: it touches its source after the handler.
            if inTimer { stopTimerLater.trigger() } else { stopTimer() }
            return
        }
        guard timerSource == nil else { return }
        do {
            timerSource = try loop.addPeriodic(every: HealthChecker.timeoutResolution) { [weak self] in self?.onTimer() }
        } catch {
            report(.error, "Failed to arm the probe timer: \(error)")
        }
    }

    private func stopTimer() {
        guard probes.isEmpty else { return }
        timerSource?.cancel()
        timerSource = nil
    }

    private func onTimer() {
        inTimer = true
        defer { inTimer = false }
        let t = now()
        for p in probes.values.sorted(by: { $0.request.worker < $1.request.worker }) where p.deadline <= t {
            done(p, ok: false, detail: "timeout")
        }
        armTimer()
    }

    /// A worker is gone: its probe (if any) is dropped unanswered.
    func forget(_ id: WorkerID) {
        guard let p = probes.removeValue(forKey: id) else { return }
        p.source?.cancel()
        Posix.close(p.fd)
    }

    func closeAll() {
        for id in Array(probes.keys) { forget(id) }
        stopTimerLater.cancel()
        timerSource?.cancel()
        timerSource = nil
    }

    private func withAddress<R>(_ host: String, port: UInt16, v6: Bool, _ body: (UnsafePointer<sockaddr>, socklen_t) -> R) -> R {
        if v6 {
            var a = sockaddr_in6()
            a.sin6_family = sa_family_t(AF_INET6)
            a.sin6_port = port.bigEndian
            _ = inet_pton(AF_INET6, host, &a.sin6_addr)
            return withUnsafePointer(to: &a) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { body($0, socklen_t(MemoryLayout<sockaddr_in6>.size)) } }
        }
        var a = sockaddr_in()
        a.sin_family = sa_family_t(AF_INET)
        a.sin_port = port.bigEndian
        _ = inet_pton(AF_INET, host, &a.sin_addr)
        return withUnsafePointer(to: &a) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { body($0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
    }
}

extension Manager {
    /// The health columns of one worker's status line.
    func addHealth(_ status: inout WorkerStatus, app: String, slot: Slot, worker: WorkerID?) {
        if let h = supervisor.slotHealth(app, slot.index), worker == nil || worker == h.worker {
            status.health = h.state
            status.lastProbe = h.lastResult
            if h.queue > 0 { status.acceptQueue = h.queue }
        }
        // A slot's last loss was a replacement: last_exit says so, not the exit code of the old worker.
        if let failure = slot.lastFailure, failure.hasPrefix("replaced: ") { status.lastExit = failure }
    }
}
