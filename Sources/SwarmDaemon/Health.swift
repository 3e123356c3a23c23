import CSwarmSpawn
import Foundation
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
/// Readiness probes (`[ready] mode = "http" | "tcp"`) reach a starting worker
/// whose slot is not in the steering set yet: for the probe's connect only, the
/// slot's socket is put at socket-array index `maxSlots - 1 - slot` (above every
/// steered index, so round-robin never picks it) and the probe's source port
/// names that index; it is taken out as soon as the connection is made, and
/// before any change of the app's steering (a probe whose aim was withdrawn
/// before it connected fails and is repeated). A starting worker shares its
/// slot's socket with the worker it replaces (reload, start-first
/// replacement), so the answer could come from either: a readiness probe is
/// sent only once the worker itself is seen listening on the socket (the
/// `listening` mode's check), and the probe then proves the app answers.
///
/// Connection counts (`[recycle] max_connections`, `swarm_slot_connections_total`):
/// the eBPF program adds 1 to a per-index counter for every new connection it
/// steers (one map lookup and one atomic add per connection; probes are not
/// counted). swarmd reads the counters of the steered indices (one
/// `BPF_MAP_LOOKUP_ELEM` per index) every second for apps with
/// `max_connections`, at every scrape, and just before every change of an
/// app's steering set, and charges each index's increase to the slot that sits
/// there, so a remap never moves counts between slots. Without eBPF (not
/// root) nothing is counted.
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
    /// At most this much of a probe's answer is read: its status line.
    static let maxResponse = 1024

    final class Probe {
        let request: HealthProbeRequest
        var fd: Int32
        let deadline: Int64
        /// In the probe sockets' epoll set (it leaves by itself when `fd` is closed).
        var watched = false
        var connected = false
        var response: [UInt8] = []
        /// A readiness probe's temporary socket-array index, while it is there.
        var placed: (entry: AppSockets.Entry, index: Int)?
        /// The temporary index was withdrawn before the connection was made.
        var aimLost = false
        init(request: HealthProbeRequest, fd: Int32, deadline: Int64) {
            self.request = request
            self.fd = fd
            self.deadline = deadline
        }
    }

    private(set) var probes: [WorkerID: Probe] = [:]
    let exec: ExecProbes
    /// Readiness probes: whether the starting worker itself is seen listening on its slot's sockets.
    var isListening: (WorkerID, Int32) -> Bool = { _, _ in true }
    /// "app/socket" → the counters as last read, by socket-array index. An
    /// array, compared whole: they are read at every change of the app's
    /// steering, and with thousands of slots a dictionary per index was most
    /// of swarmd's start-up.
    private var lastCounts: [String: [UInt64]] = [:]
    /// app → slot → new connections steered to it (since the app's sockets were made).
    private(set) var connectionTotals: [String: [Int: UInt64]] = [:]
    /// app → slot → read but not yet told the core.
    private var pendingCounts: [String: [Int: Int]] = [:]
    private var warnedUnaimed: Set<String> = []
    /// The http/tcp probes out, by deadline: the timer waits for the earliest.
    private var deadlines = ProbeDeadlines()
    /// One wake-up at the earliest deadline of every probe out (exec ones too), none while no probe is out.
    private lazy var deadlineTimer = loop.addOneShotTimer { [weak self] in self?.onDeadline() }
    /// The probe sockets, in an epoll set of their own: every probe that is
    /// ready in a loop turn is handled in one dispatch (created with the first probe).
    private var probeSockets: (set: EpollSet, source: EventLoop.Source)?
    /// Outcomes of the dispatch being handled: they go to the core as one
    /// `.probeResults` at its end, not one `handle` each (a round of 100
    /// probes would otherwise cost 100 passes over deadlines, steering and waiters).
    private var outcomes: [ProbeOutcome] = []
    private var batching = false
    /// Outcomes that come outside a dispatch of the probe sockets or the timer
    /// (a probe that fails at once while the core's actions are performed, an
    /// exec probe's reap) go together at the next loop turn: a round of
    /// readiness probes of 100 starting workers is one event too.
    private lazy var flushLater = loop.addDeferred { [weak self] in self?.flush() }

    init(loop: EventLoop, sockets: SocketTable) {
        self.loop = loop
        self.sockets = sockets
        exec = ExecProbes(loop: loop)
        exec.finish = { [weak self] r, ok, detail in
            guard let self else { return }
            self.finish(r, ok: ok, detail: detail)
            self.rearm()
        }
    }

    func perform(_ action: HealthAction) {
        switch action {
        case let .sampleQueues(app): sampleQueues(app)
        case let .probe(request): startProbe(request)
        case let .countConnections(app): countConnections(app)
        }
    }

    // MARK: - Connection counts

    /// Reads the app's counters and charges their increase to the slots at those indices.
    func readCounters(_ app: String) {
        guard let table = sockets[app] else { return }
        for entry in table.entries where entry.reuseport {
            guard let rr = entry.roundRobin else { continue }
            let key = "\(app)/\(entry.spec.name)"
            let counts: [UInt64]
            do {
                // Nothing counted since the counts this checker took last (it is their only reader).
                if lastCounts[key] != nil, try rr.countsUnchangedSinceLastRead(upTo: entry.steeredSlots.count) { continue }
                guard let c = try rr.connectionCounts(upTo: entry.steeredSlots.count) else { continue }
                counts = c
            } catch {
                report(.warning, "Failed to read the connection counters of \(app)/\(entry.spec.name): \(error), ignoring")
                continue
            }
            let last = lastCounts[key] ?? []
            if last.count >= counts.count, last[..<counts.count].elementsEqual(counts) { continue }
            for (i, c) in counts.enumerated() where i < entry.steeredSlots.count {
                let before = i < last.count ? last[i] : 0
                guard c != before else { continue }
                // A smaller value: a new program (the app's sockets were made anew) counts from 0.
                let d = c >= before ? c - before : c
                let slot = entry.steeredSlots[i]
                connectionTotals[app, default: [:]][slot, default: 0] += d
                pendingCounts[app, default: [:]][slot, default: 0] += Int(clamping: d)
            }
            // Indices past the steered ones keep their last value: a slot steered there again counts on from it.
            lastCounts[key] = last.count > counts.count ? counts + last[counts.count...] : counts
        }
    }

    func countConnections(_ app: String) {
        readCounters(app)
        let counts = pendingCounts.removeValue(forKey: app) ?? [:]
        deliver(.health(.connections(app: app, counts)))
    }

    /// The app's steering set is about to change: what the counters say so far
    /// belongs to the slots where they are now, and no readiness probe keeps a
    /// temporary index the new layout may need.
    func beforeSteer(_ app: String) {
        for p in probes.values where p.request.app == app { release(p) }
        readCounters(app)
    }

    /// The app's sockets are gone (deleted, replaced): its counters went with them.
    func forgetApp(_ app: String) {
        connectionTotals[app] = nil
        pendingCounts[app] = nil
        for key in lastCounts.keys where key.hasPrefix(app + "/") { lastCounts[key] = nil }
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
            exec.start(request)
            rearm()
        }
    }

    private func connectProbe(_ r: HealthProbeRequest) {
        // A starting worker may share its socket with the one it replaces: it must be listening itself first.
        if r.readiness, !isListening(r.worker, r.pid) { return finish(r, ok: false, detail: "not listening yet") }
        guard let table = sockets[r.app],
              let entry = table.entries.first(where: { e in r.socket.map { e.spec.name == $0 } ?? e.spec.listen.isTCP }),
              case let .tcp(host, port) = entry.spec.listen else { return }
        var placed: (entry: AppSockets.Entry, index: Int)?
        var aimed = entry.steeredIndex[r.slot]
        if aimed == nil, r.readiness, let rr = entry.roundRobin, let fd = entry.fd(ofSlot: r.slot) {
            let index = AppSockets.maxSlots - 1 - r.slot
            guard index >= entry.steeredSlots.count else { return finish(r, ok: false, detail: "no socket-array index to aim at") }
            do {
                try rr.setSocket(fd, at: index)
                placed = (entry, index)
                aimed = index
            } catch {
                return fail(r, "aiming at slot \(r.slot): \(error)")
            }
        }
        guard entry.roundRobin != nil, let index = aimed, index < AppSockets.maxSlots else {
            if entry.roundRobin == nil, warnedUnaimed.insert(r.app).inserted {
                report(.warning, "\(r.app): http/tcp probes need eBPF steering (root) to reach one chosen worker; not probing")
            }
            return
        }
        let unplace = { if let placed { try? placed.entry.roundRobin?.clearSocket(at: placed.index) } }
        let v6 = host.contains(":")
        let target = host == "0.0.0.0" ? "127.0.0.1" : (host == "::" ? "::1" : host)
        let fd = socket(v6 ? AF_INET6 : AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else {
            unplace()
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
            unplace()
            return fail(r, "bind to source port \(sourcePort): \(String(cString: strerror(e)))")
        }
        let c = withAddress(target, port: port, v6: v6) { connect(fd, $0, $1) }
        if c != 0 && errno != EINPROGRESS {
            let e = errno
            Posix.close(fd)
            unplace()
            return finish(r, ok: false, detail: e == ECONNREFUSED ? "refused" : "connect: \(String(cString: strerror(e)))")
        }
        let probe = Probe(request: r, fd: fd, deadline: now() + r.timeout.nanoseconds)
        probe.placed = placed
        probes[r.worker] = probe
        deadlines.add(r.worker, at: Instant(nanoseconds: probe.deadline))
        rearm()
        // On loopback the handshake is usually done by the time connect returns:
        // an http probe sends at once and waits only for the answer.
        if case .http = r.check, trySend(probe) { return }
        if probe.fd >= 0 && !probe.connected { watch(probe, HealthChecker.epollOut) }
    }

    /// Adds the probe's socket to the probe sockets' set, or changes what it waits for.
    private func watch(_ p: Probe, _ events: UInt32) {
        do {
            let set = try probeSocketSet()
            if p.watched {
                try set.modify(p.fd, events: events, token: p.request.worker.raw)
            } else {
                try set.add(p.fd, events: events, token: p.request.worker.raw)
                p.watched = true
            }
        } catch {
            done(p, ok: false, detail: "\(error)")
        }
    }

    private func probeSocketSet() throws -> EpollSet {
        if let s = probeSockets { return s.set }
        let set = try EpollSet()
        let source = try loop.addReader(set.fd) { [weak self] _ in self?.onProbeSockets() }
        probeSockets = (set, source)
        return set
    }

    /// Every probe socket that is ready now (up to `EpollSet.batch`), then one event to the core.
    private func onProbeSockets() {
        guard let set = probeSockets?.set else { return }
        let ready: [(token: UInt64, events: UInt32)]
        do { ready = try set.ready() } catch {
            report(.warning, "Failed to wait for the probe sockets: \(error), ignoring")
            return
        }
        batch {
            for (token, events) in ready {
                guard let p = probes[WorkerID(token)] else { continue }
                onReady(p, events: events)
            }
        }
    }

    /// Outcomes produced in `body` reach the core as one event at its end.
    private func batch(_ body: () -> Void) {
        let outer = batching
        batching = true
        body()
        batching = outer
        if !outer { flush() }
    }

    private func flush() {
        flushLater.cancel()
        guard !outcomes.isEmpty else { return }
        let all = outcomes
        outcomes.removeAll(keepingCapacity: true)
        deliver(.health(.probeResults(all)))
    }

    /// Takes a readiness probe's temporary index out of the socket array.
    private func release(_ p: Probe) {
        guard let placed = p.placed else { return }
        p.placed = nil
        if !p.connected { p.aimLost = true }
        do { try placed.entry.roundRobin?.clearSocket(at: placed.index) } catch {
            report(.warning, "Failed to take \(p.request.app)[\(p.request.slot)]'s probe index \(placed.index) out of the socket array: \(error), ignoring")
        }
    }

    private func onReady(_ p: Probe, events: UInt32) {
        if !p.connected {
            var err: Int32 = 0
            var len = socklen_t(MemoryLayout<Int32>.size)
            _ = getsockopt(p.fd, SOL_SOCKET, SO_ERROR, &err, &len)
            if err != 0 { return done(p, ok: false, detail: err == ECONNREFUSED ? "refused" : "connect: \(String(cString: strerror(err)))") }
            // Its steering was withdrawn before the connection was made: whoever accepted it may be another worker.
            if p.aimLost { return done(p, ok: false, detail: "re-steered while connecting") }
            p.connected = true
            release(p)
            guard case .http = p.request.check else { return done(p, ok: true, detail: "connected") }
            if !trySend(p) { done(p, ok: false, detail: "send: not connected") }
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

    /// Sends the http probe's request; false if the connection is not made yet
    /// (the probe then waits to be writable). Sent, it waits for the answer.
    private func trySend(_ p: Probe) -> Bool {
        guard case let .http(path, host, _) = p.request.check else { return false }
        let request = "GET \(path) HTTP/1.1\r\nHost: \(host ?? "localhost")\r\nUser-Agent: swarmd-health\r\nConnection: close\r\n\r\n"
        // Small enough for any socket buffer: one write, or the probe has failed.
        var bytes = request
        let n = bytes.withUTF8 { send(p.fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
        if n < 0 {
            let e = errno
            if !p.connected && (e == EAGAIN || e == ENOTCONN) { return false }
            if !p.connected { release(p) }
            done(p, ok: false, detail: e == ECONNREFUSED ? "refused" : "send: \(String(cString: strerror(e)))")
            return true
        }
        if !p.connected {
            p.connected = true
            release(p)
        }
        guard n == request.utf8.count else {
            done(p, ok: false, detail: "send: \(n) of \(request.utf8.count) bytes")
            return true
        }
        watch(p, HealthChecker.epollIn)
        return true
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
        guard p.fd >= 0 else { return }
        release(p)
        // Closing the socket takes it out of the probe sockets' set.
        Posix.close(p.fd)
        p.fd = -1
        if probes[p.request.worker] === p {
            probes[p.request.worker] = nil
            deadlines.remove(p.request.worker)
        }
        finish(p.request, ok: ok, detail: detail)
        rearm()
    }

    private func fail(_ r: HealthProbeRequest, _ why: String) {
        report(.warning, "Failed to probe \(r.app)[\(r.slot)]: \(why)")
        finish(r, ok: false, detail: why)
    }

    private func finish(_ r: HealthProbeRequest, ok: Bool, detail: String) {
        outcomes.append(ProbeOutcome(worker: r.worker, ok: ok, detail: detail))
        if !batching { flushLater.trigger() }
    }

    // MARK: - Timeouts

    /// Moves the one timer to the earliest deadline of the probes out; with none out, no wake-up.
    private func rearm() {
        let next = earliest(deadlines.next?.nanoseconds, exec.earliestDeadline)
        do { try deadlineTimer.set(at: next) } catch {
            report(.error, "Failed to arm the probe timer: \(error)")
        }
    }

    private func earliest(_ a: Int64?, _ b: Int64?) -> Int64? {
        guard let a else { return b }
        guard let b else { return a }
        return min(a, b)
    }

    /// The earliest deadline passed: every probe due has timed out (one event for all).
    private func onDeadline() {
        batch {
            for id in deadlines.due(at: Instant(nanoseconds: now())) {
                if let p = probes[id] { done(p, ok: false, detail: "timeout") }
            }
            exec.expire()
        }
        rearm()
    }

    /// A worker is gone: its probe (if any) is dropped unanswered.
    func forget(_ id: WorkerID) {
        exec.forget(id)
        defer { rearm() }
        guard let p = probes.removeValue(forKey: id) else { return }
        deadlines.remove(id)
        release(p)
        if p.fd >= 0 { Posix.close(p.fd) }
        p.fd = -1
    }

    /// Before an exec of a new image: every probe ends unanswered (exec probes
    /// killed with their group), every temporary index leaves the socket array.
    func prepareForReexec() {
        for id in Array(probes.keys) { forget(id) }
        exec.closeAll()
    }

    func closeAll() {
        for id in Array(probes.keys) { forget(id) }
        exec.closeAll()
        deadlineTimer.cancel()
        probeSockets?.source.cancel()
        probeSockets = nil
        flushLater.cancel()
        outcomes.removeAll()
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
            if h.connections > 0 { status.connections = h.connections }
        }
        // A slot's last loss was a replacement: last_exit says so, not the exit code of the old worker.
        if let failure = slot.lastFailure, failure.hasPrefix("replaced: ") { status.lastExit = failure }
    }

    /// Gives the health checker what it needs of the rest of the shell (exec probes, readiness).
    func wireHealth() {
        health.deliver = { [weak self] event in self?.feed(event) }
        health.now = { [weak self] in self?.kernel.now() ?? 0 }
        let exec = health.exec
        exec.report = health.report
        exec.now = health.now
        exec.spawn = { [weak self] plan in
            guard let self else { throw SystemError("fork", errno: ESRCH) }
            return try self.kernel.spawn(plan)
        }
        exec.signalGroup = { [weak self] pid, sig in try? self?.kernel.signal(pid, sig, group: true) }
        exec.devNull = { [weak self] in self?.devNull ?? -1 }
        exec.spec = { [weak self] app, generation in
            self?.supervisor.apps[app].flatMap { $0.specs[generation] ?? $0.spec }
        }
        exec.port = { [weak self] r in
            self?.sockets[r.app]?.entries.first(where: { e in r.socket.map { e.spec.name == $0 } ?? e.spec.listen.isTCP })?.port
        }
        exec.hostEnvironment = { ProcessInfo.processInfo.environment }
        health.isListening = { [weak self] id, pid in self?.isListeningNow(id, pid: pid) ?? false }
    }

    /// The listening mode's check, answered at once: is the worker (or a process
    /// it started) waiting for connections on its slot's sockets?
    func isListeningNow(_ id: WorkerID, pid: Int32) -> Bool {
        guard let w = supervisor.workers[id], let spec = supervisor.spec(of: w) else { return false }
        var identities = Set<SocketIdentity>()
        for e in sockets[spec.name]?.entries ?? [] {
            if let id = try? SocketIdentity.of(fd: e.perSlot[w.slot] ?? e.shared) { identities.insert(id) }
        }
        let query = ListeningQuery(pid: pid, sockets: identities, cgroup: cgroups.path(of: id),
                                   execFDs: Set((0..<spec.sockets.count).map { Int32(3 + $0) }))
        return kernel.listening(query).evidence != nil
    }
}

/// What a re-executed swarmd's health checker takes over (hand-over version 4).
struct HealthHandover: Codable {
    var lastCounts: [String: [Int: UInt64]]
    var totals: [String: [Int: UInt64]]
}

extension HealthChecker {
    var forHandover: HealthHandover {
        HealthHandover(lastCounts: lastCounts.mapValues { Dictionary(uniqueKeysWithValues: $0.enumerated().map { ($0.offset, $0.element) }) },
                       totals: connectionTotals)
    }

    func resume(_ h: HealthHandover?) {
        guard let h else { return }
        lastCounts = h.lastCounts.mapValues { byIndex in
            var counts = [UInt64](repeating: 0, count: (byIndex.keys.max() ?? -1) + 1)
            for (i, c) in byIndex where i >= 0 { counts[i] = c }
            return counts
        }
        connectionTotals = h.totals
    }
}
