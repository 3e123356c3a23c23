import SwarmSystem

/// HAProxy's `agent-check` (`swarmd --agent ADDR`): HAProxy connects, may
/// send one line (`agent-send "web\n"`: the app it asks about), reads one
/// line back (`AgentReply`), and closes. Served by the event loop like
/// every other source, each connection bounded: 64 at once (more are
/// closed at once), 256 bytes of request, an answer after 100 ms of
/// silence (HAProxy without `agent-send` sends nothing), gone after 2 s.
///
/// Not handed over across `daemon-reexec`: the new image binds the address
/// again. HAProxy does not count an agent it cannot reach against the
/// server (its regular health check decides that), so the moment between
/// is harmless.
final class AgentServer {
    let address: String
    private let listenFD: Int32
    private let loop: EventLoop
    private let kernel: Kernel
    private var listener: EventLoop.Source?
    private var connections: [Int32: Connection] = [:]
    private var sweeper: EventLoop.Source?
    private let answer: (String?) -> String
    private(set) var served = 0
    private(set) var refused = 0

    static let maxConnections = 64
    static let requestLimit = 256
    static let quietAnswer: Int64 = 100_000_000
    static let lifetime: Int64 = 2_000_000_000
    static let acceptsPerTurn = 16

    private final class Connection {
        let source: EventLoop.Source
        let opened: Int64
        var request: [UInt8] = []
        init(source: EventLoop.Source, opened: Int64) {
            self.source = source
            self.opened = opened
        }
    }

    init(host: String, port: UInt16, loop: EventLoop, kernel: Kernel, answer: @escaping (String?) -> String) throws {
        address = host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)"
        listenFD = try Sockets.listenTCP(host: host, port: port, backlog: 128, reusePort: false)
        self.loop = loop
        self.kernel = kernel
        self.answer = answer
        do {
            try Posix.setNonBlocking(listenFD, true)
            listener = try loop.addReader(listenFD) { [weak self] _ in self?.acceptSome() }
        } catch {
            Posix.close(listenFD)
            throw error
        }
    }

    func close() {
        for fd in Array(connections.keys) { drop(fd) }
        listener?.cancel()
        listener = nil
        sweeper?.cancel()
        sweeper = nil
        Posix.close(listenFD)
    }

    private func acceptSome() {
        for _ in 0..<AgentServer.acceptsPerTurn {
            let fd: Int32
            do {
                guard case let .done(c) = try Sockets.acceptConnection(listenFD) else { return }
                fd = c
            } catch {
                // EMFILE and the like: the level-triggered source comes back; control and workers matter more.
                return
            }
            guard connections.count < AgentServer.maxConnections else {
                refused += 1
                Posix.close(fd)
                continue
            }
            do {
                let source = try loop.addReader(fd) { [weak self] _ in self?.readable(fd) }
                connections[fd] = Connection(source: source, opened: kernel.now())
                if sweeper == nil {
                    sweeper = try? loop.addPeriodic(every: AgentServer.quietAnswer / 2) { [weak self] in self?.sweep() }
                }
            } catch {
                Posix.close(fd)
            }
        }
    }

    private func readable(_ fd: Int32) {
        guard let c = connections[fd] else { return }
        var buf = [UInt8](repeating: 0, count: AgentServer.requestLimit)
        let got = try? buf.withUnsafeMutableBytes { try Sockets.receiveSome(fd, into: $0) }
        switch got {
        case let .done(n)? where n > 0:
            c.request += buf[0..<min(n, AgentServer.requestLimit - c.request.count)]
            if let nl = c.request.firstIndex(of: 0x0a) {
                reply(fd, String(decoding: c.request[..<nl], as: UTF8.self))
            } else if c.request.count >= AgentServer.requestLimit {
                drop(fd)
            }
        case .wouldBlock?:
            return
        default:
            // The peer half-closed (or failed): answer what it sent, if it can still read.
            reply(fd, c.request.isEmpty ? nil : String(decoding: c.request, as: UTF8.self))
        }
    }

    private func sweep() {
        let now = kernel.now()
        for (fd, c) in connections where now - c.opened >= AgentServer.quietAnswer {
            if now - c.opened >= AgentServer.lifetime { drop(fd) } else {
                reply(fd, c.request.isEmpty ? nil : String(decoding: c.request, as: UTF8.self))
            }
        }
        if connections.isEmpty {
            sweeper?.cancel()
            sweeper = nil
        }
    }

    private func reply(_ fd: Int32, _ request: String?) {
        let line = Array(answer(request).utf8)
        // One short line into an empty socket buffer: it fits, or the peer is gone.
        _ = try? line.withUnsafeBytes { try Sockets.sendSome(fd, $0) }
        served += 1
        drop(fd)
    }

    private func drop(_ fd: Int32) {
        guard let c = connections.removeValue(forKey: fd) else { return }
        c.source.cancel()
        Posix.close(fd)
    }
}
