import Glibc
import SwarmCore
import SwarmProtocol
import SwarmSystem

/// One control client.
final class ControlClient {
    let fd: Int32
    let uid: uid_t
    let pid: pid_t
    /// Root or swarmd's own uid: every verb, and the reserved connections.
    let privileged: Bool
    fileprivate(set) var source: EventLoop.Source?
    fileprivate var reader = FrameReader()
    /// Replies not yet taken, oldest first; `written` bytes of the first are out.
    fileprivate var replies: [[UInt8]] = []
    fileprivate var written = 0
    /// Bytes of every reply but the first.
    fileprivate var laterBytes = 0
    fileprivate var writing = false
    fileprivate var reading = true
    fileprivate var queued = false
    /// Within a turn: replies are queued and written once at its end.
    fileprivate var batching = false
    fileprivate(set) var closing = false
    fileprivate(set) var closed = false
    fileprivate var lastActivity: Int64
    /// When the oldest incomplete request began to arrive.
    fileprivate var partialSince: Int64?
    /// Since when replies wait and the client has taken none of them.
    fileprivate var stalledSince: Int64?
    /// SO_SNDBUF asked for (0: the kernel's default).
    fileprivate var sendBuffer: Int32 = 0
    /// Apps whose log lines this client follows.
    var following: Set<String> = []
    var droppedLogLines = 0
    /// Streams lifecycle events (`events`): not idle while it waits for them.
    var subscribedToEvents = false
    /// Requests whose answer is still to come.
    var outstanding = 0

    init(fd: Int32, uid: uid_t, pid: pid_t, privileged: Bool, now: Int64) {
        self.fd = fd
        self.uid = uid
        self.pid = pid
        self.privileged = privileged
        lastActivity = now
    }

    /// Reply bytes not yet taken by the client.
    var queuedBytes: Int { replies.isEmpty ? 0 : replies[0].count - written + laterBytes }
}

/// What the control server asks of its owner.
protocol ControlHandler: AnyObject {
    /// A well-formed request the client may make (read-only verbs for unprivileged peers).
    func handle(_ request: Request, from client: ControlClient)
    /// The client is gone: forget what was done for it (log follows).
    func clientClosed(_ client: ControlClient)
}

/// The control socket's clients: accepting, framing, fairness and limits,
/// and the queue of replies each client has yet to read.
///
/// Fairness: one dispatch handles at most `framesPerTurn` requests of one
/// client; a client with more waiting goes to the back of a queue served by a
/// deferred source, behind every other pending source (signals, child exits,
/// timers, other clients). While a client's replies pile up unread it is not
/// read from at all, and a client that takes no reply for `stallTimeout` is
/// closed: memory per client is bounded by time, not only by size.
final class ControlServer {
    let loop: EventLoop
    let kernel: Kernel
    weak var handler: ControlHandler?
    var report: (NoteLevel, String) -> Void = { _, _ in }

    static let maxConnections = 1024
    /// Connections only root and swarmd's uid may take, so that read-only
    /// peers cannot lock the owner out.
    static let reservedConnections = 32
    static let framesPerTurn = 16
    /// A client's turn ends after this much time, whatever it asked: 16
    /// pipelined `status` requests of 4,096 workers are ~0.5 s of work, which
    /// would hold off reaping and respawning during a storm.
    static let turnBudget: Int64 = 5_000_000
    /// Unread replies above which a client's further requests wait.
    static let readPause = 256 << 10
    /// Requests read but not yet handled above which swarmd stops reading the
    /// client (its own socket buffer then holds what it sends).
    static let maxPendingRequests = 4 << 20
    /// Unread replies beyond the one being written that close the client.
    static let maxQueued = 8 << 20
    /// A client that takes none of its replies for this long is closed.
    static let stallTimeout: Int64 = 10_000_000_000
    /// A request must arrive whole within this time.
    static let requestTimeout: Int64 = 10_000_000_000
    /// An idle connection is closed after this.
    static let idleTimeout: Int64 = 600_000_000_000

    private(set) var listenFD: Int32 = -1
    private var listenSource: EventLoop.Source?
    private var clients: [ObjectIdentifier: ControlClient] = [:]
    /// Clients with buffered requests left over from their last turn, in order.
    private var runQueue: [ControlClient] = []
    private var runQueueHead = 0
    private var continuation: EventLoop.Deferred?
    private var acceptPausedUntil: Int64?
    private var acceptFailing = false
    private var readBuffer = [UInt8](repeating: 0, count: 65536)
    let ownUID = getuid()

    init(loop: EventLoop, kernel: Kernel) {
        self.loop = loop
        self.kernel = kernel
    }

    var connectionCount: Int { clients.count }

    func listen(on fd: Int32) throws {
        listenFD = fd
        listenSource = try loop.addReader(fd) { [weak self] _ in self?.acceptClients() }
        continuation = loop.addDeferred { [weak self] in self?.runQueued() }
    }

    func stop() {
        for c in Array(clients.values) { drop(c) }
        listenSource?.cancel()
        listenSource = nil
        continuation?.cancel()
        continuation = nil
    }

    func acceptClients() {
        for _ in 0..<64 {
            let fd: Int32
            do {
                guard let c = try Sockets.accept(listenFD) else { return }
                fd = c
            } catch {
                // EMFILE/ENFILE: stop accepting for a moment instead of spinning on a readable socket.
                if !acceptFailing {
                    report(.error, "Failed to accept a control connection: \(error); pausing accepts (retrying every 100ms)")
                    acceptFailing = true
                }
                listenSource?.setEnabled(false)
                acceptPausedUntil = kernel.now() + 100_000_000
                return
            }
            if acceptFailing {
                acceptFailing = false
                report(.notice, "accepting control connections again")
            }
            let cred = Sockets.peerCredentials(fd) ?? (pid: 0, uid: uid_t.max, gid: gid_t.max)
            admit(fd: fd, uid: cred.uid, pid: cred.pid)
        }
    }

    /// Takes a connected socket as a client, or refuses it when full.
    func admit(fd: Int32, uid: uid_t, pid: pid_t) {
        let privileged = uid == 0 || uid == ownUID
        let limit = privileged ? ControlServer.maxConnections : ControlServer.maxConnections - ControlServer.reservedConnections
        guard clients.count < limit else {
            let msg = Codec.encode(Response.failure(0, "too many control connections (\(clients.count)); try again later"))
            _ = msg.withUnsafeBytes { try? Posix.write(fd, $0) }
            Posix.close(fd)
            return
        }
        let client = ControlClient(fd: fd, uid: uid, pid: pid, privileged: privileged, now: kernel.now())
        let key = ObjectIdentifier(client)
        do {
            client.source = try loop.addReader(fd) { [weak self] revents in self?.onEvent(key, revents) }
            clients[key] = client
        } catch {
            report(.error, "Failed to watch a control connection: \(error), ignoring")
            Posix.close(fd)
        }
    }

    private func onEvent(_ key: ObjectIdentifier, _ revents: UInt32) {
        guard let client = clients[key] else { return }
        if revents & IOEvents.writable != 0 { flush(client) }
        if client.closed { return }
        if revents & IOEvents.error != 0 { return drop(client) }
        if revents & IOEvents.readable != 0 {
            read(client)
        } else if revents & IOEvents.hangup != 0 {
            // Gone, with requests still buffered: nobody will read their answers.
            drop(client)
        }
    }

    private func read(_ client: ControlClient) {
        let n: Int
        do { n = try readBuffer.withUnsafeMutableBytes { try Posix.read(client.fd, into: $0) } } catch {
            if (error as? SystemError)?.errno == EAGAIN { return }
            return drop(client)
        }
        if n == 0 { return drop(client) }
        if client.closing { return }
        client.lastActivity = kernel.now()
        client.reader.append(readBuffer[0..<n])
        serve(client)
    }

    /// Handles up to `framesPerTurn` buffered requests, and no more once the
    /// turn has taken `turnBudget`; more wait for another turn. The turn's
    /// replies go out in one write at its end.
    private func serve(_ client: ControlClient) {
        var handled = 0
        let began = kernel.now()
        client.batching = true
        while handled < ControlServer.framesPerTurn {
            if client.closed || client.closing { break }
            if client.queuedBytes > ControlServer.readPause { break }
            if handled > 0 && kernel.now() - began > ControlServer.turnBudget { break }
            let frame: [UInt8]?
            do { frame = try client.reader.next() } catch {
                client.batching = false
                send(client, Response.failure(0, "\(error); closing the connection"))
                closeAfterFlush(client)
                return
            }
            guard let frame else { break }
            if frame.isEmpty { continue }
            handled += 1
            handleFrame(client, frame)
        }
        client.batching = false
        if client.closed { return }
        flush(client)
        if client.closed || client.closing { return }
        client.partialSince = client.reader.pendingCount > 0 ? (client.partialSince ?? client.lastActivity) : nil
        setReading(client, client.reader.pendingCount <= ControlServer.maxPendingRequests)
        if client.queuedBytes <= ControlServer.readPause && client.reader.hasFrame { enqueue(client) }
    }

    private func enqueue(_ client: ControlClient) {
        guard !client.queued else { return }
        client.queued = true
        runQueue.append(client)
        continuation?.trigger()
    }

    /// One turn for each client that was queued when this dispatch began.
    private func runQueued() {
        let end = runQueue.count
        while runQueueHead < end {
            let client = runQueue[runQueueHead]
            runQueueHead += 1
            client.queued = false
            guard !client.closed else { continue }
            // Hung up while its requests waited for this turn: nobody reads their answers.
            // (poll reports POLLHUP and POLLERR whatever is asked: a half-closed client still gets served.)
            if (try? Posix.waitFor(client.fd, events: 0, timeoutNanoseconds: 0)) == true {
                drop(client)
                continue
            }
            serve(client)
        }
        if runQueueHead == runQueue.count {
            runQueue.removeAll(keepingCapacity: true)
            runQueueHead = 0
        } else {
            continuation?.trigger()
        }
    }

    private func handleFrame(_ client: ControlClient, _ frame: [UInt8]) {
        let request: Request
        do { request = try Codec.decodeRequest(frame) } catch {
            send(client, Response.failure(Codec.peekID(frame), error.description))
            return
        }
        guard client.privileged || request.verb.isReadOnly else {
            send(client, Response.failure(request.id, "permission denied: uid \(client.uid) may only use ping, version and status (swarmd runs as uid \(ownUID))"))
            return
        }
        handler?.handle(request, from: client)
    }

    private func setReading(_ client: ControlClient, _ on: Bool) {
        guard client.reading != on else { return }
        client.reading = on
        updateEvents(client)
    }

    private func updateEvents(_ client: ControlClient) {
        guard let src = client.source else { return }
        loop.setIOEvents(src, (client.reading ? IOEvents.readable : 0) | (client.writing ? IOEvents.writable : 0))
    }

    // MARK: - Replies

    func send(_ client: ControlClient, _ response: Response) {
        send(client, bytes: Codec.encode(response))
    }

    func send(_ client: ControlClient, bytes: [UInt8]) {
        guard !client.closed else { return }
        if !client.replies.isEmpty {
            // The reply being written may be of any size (a large status);
            // behind it, a client may leave only this much unread.
            if client.laterBytes + bytes.count > ControlServer.maxQueued {
                report(.warning, "control client pid \(client.pid) (uid \(client.uid)) does not read its replies (\(client.queuedBytes >> 10) KiB unread); closing it")
                return drop(client)
            }
            client.laterBytes += bytes.count
        }
        client.replies.append(bytes)
        if !client.batching { flush(client) }
    }

    /// A large answer (a 4,096-worker status is ~600 KB) goes to the kernel
    /// whole, instead of a default buffer's worth at a time: each further part
    /// would wait for the socket to drain and then for the loop's turn, behind
    /// a reaping turn in a kill storm (tens of ms each). The memory is the same
    /// either way (the answer is held until taken, here or in the kernel) and
    /// bounded per client by `maxQueued` and the stall timeout; the kernel
    /// part by `maxSendBuffer` (Linux doubles it: 2 MiB at most per client).
    /// With CAP_NET_ADMIN (root) past net.core.wmem_max, which is 208 KiB on
    /// a default host; without, up to it.
    static let largeAnswer = 192 << 10
    static let maxSendBuffer: Int32 = 1 << 20

    private func raiseSendBuffer(_ client: ControlClient) {
        guard let head = client.replies.first else { return }
        let unsent = head.count - client.written + client.laterBytes
        guard unsent > ControlServer.largeAnswer, client.sendBuffer < ControlServer.maxSendBuffer else { return }
        let wanted = Int32(min(unsent, Int(ControlServer.maxSendBuffer)))
        guard wanted > client.sendBuffer else { return }
        do {
            try Sockets.setSendBuffer(client.fd, bytes: wanted, force: true)
            client.sendBuffer = wanted
        } catch {
            report(.debug, "control client pid \(client.pid): \(error); its answer goes out in pieces")
            client.sendBuffer = ControlServer.maxSendBuffer  // not tried again
        }
    }

    private func flush(_ client: ControlClient) {
        // Many small replies (a pipelined batch) go out in one write.
        if client.replies.count > 1 && client.written == 0 && client.replies[0].count + client.laterBytes <= ControlServer.readPause {
            var joined = client.replies[0]
            for r in client.replies.dropFirst() { joined += r }
            client.replies = [joined]
            client.laterBytes = 0
        }
        raiseSendBuffer(client)
        var progressed = false
        while !client.replies.isEmpty {
            let head = client.replies[0]
            let n: Int
            do {
                n = try head.withUnsafeBytes { buf in
                    try Posix.write(client.fd, UnsafeRawBufferPointer(rebasing: buf[client.written..<min(buf.count, client.written + (256 << 10))]))
                }
            } catch {
                return drop(client)
            }
            if n == 0 { break }
            progressed = true
            client.written += n
            if client.written == head.count {
                client.replies.removeFirst()
                client.written = 0
                if let next = client.replies.first { client.laterBytes -= next.count }
            }
        }
        if client.replies.isEmpty {
            client.stalledSince = nil
        } else if progressed || client.stalledSince == nil {
            client.stalledSince = kernel.now()
        }
        let wantOut = !client.replies.isEmpty
        if wantOut != client.writing {
            client.writing = wantOut
            updateEvents(client)
        }
        if client.closing && !wantOut { return drop(client) }
        // Replies taken: buffered requests may go on.
        if !client.closing && !client.batching && client.queuedBytes <= ControlServer.readPause && client.reader.hasFrame {
            enqueue(client)
        }
    }

    /// Sends what is queued, then closes.
    func closeAfterFlush(_ client: ControlClient) {
        guard !client.closed else { return }
        client.closing = true
        try? Sockets.shutdown(client.fd, .read)
        flush(client)
    }

    func drop(_ client: ControlClient) {
        let key = ObjectIdentifier(client)
        guard clients.removeValue(forKey: key) != nil else { return }
        client.closed = true
        client.source?.cancel()
        client.source = nil
        Posix.close(client.fd)
        client.replies = []
        client.written = 0
        client.laterBytes = 0
        handler?.clientClosed(client)
    }

    /// Whether `sweep` has anything to watch: swarmd arms its 1 s sweep only then.
    var needsSweep: Bool { !clients.isEmpty || acceptPausedUntil != nil }

    /// Time limits, once a second.
    func sweep() {
        let now = kernel.now()
        if let until = acceptPausedUntil, now >= until {
            acceptPausedUntil = nil
            listenSource?.setEnabled(true)
        }
        for client in Array(clients.values) {
            if let since = client.stalledSince, now - since > ControlServer.stallTimeout {
                report(.warning, "control client pid \(client.pid) (uid \(client.uid)) does not read its replies: none taken for \(ControlServer.stallTimeout / 1_000_000_000)s, \(client.queuedBytes >> 10) KiB unread; closing it")
                drop(client)
            } else if let since = client.partialSince, now - since > ControlServer.requestTimeout {
                // A client that stopped reading also stops being read (its replies back up),
                // so its half-read frame can time out first: it is the reader that failed.
                if client.stalledSince != nil {
                    report(.warning, "control client pid \(client.pid) (uid \(client.uid)) does not read its replies (\(client.queuedBytes >> 10) KiB unread); closing it")
                    drop(client)
                } else {
                    report(.warning, "control client pid \(client.pid) (uid \(client.uid)) did not complete its request within \(ControlServer.requestTimeout / 1_000_000_000)s; closing it")
                    send(client, Response.failure(0, "request not completed within \(ControlServer.requestTimeout / 1_000_000_000)s; closing"))
                    closeAfterFlush(client)
                }
            } else if client.outstanding == 0 && client.following.isEmpty && !client.subscribedToEvents && client.queuedBytes == 0
                        && now - client.lastActivity > ControlServer.idleTimeout {
                drop(client)
            }
        }
    }
}
