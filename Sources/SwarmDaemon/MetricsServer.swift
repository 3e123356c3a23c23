import Glibc
import SwarmCore
import SwarmSystem

/// What the metrics server asks of its owner.
protocol MetricsHandler: AnyObject {
    /// The exposition text; `done` may be called later (the /proc reads are spread over loop turns).
    func collectMetrics(_ done: @escaping ([UInt8]) -> Void)
    /// nil: every app. The text names what is not ready.
    func readiness(of apps: [String]?) -> (ready: Bool, text: String)
}

/// Where `--metrics` listens: `host:port` (numeric, `[v6]:port`, or `localhost`) or `unix:PATH`.
public enum MetricsAddress: Equatable, CustomStringConvertible {
    case tcp(host: String, port: UInt16)
    case unix(path: String)

    public static func parse(_ text: String) throws -> MetricsAddress {
        if text.hasPrefix("unix:") {
            let path = String(text.dropFirst(5))
            guard path.hasPrefix("/") || path.hasPrefix("."), path.utf8.count < 108 else {
                throw MetricsAddressError("--metrics \(text): a unix socket needs a path (unix:/run/swarm/metrics.sock), shorter than 108 bytes")
            }
            return .unix(path: path)
        }
        guard let colon = text.lastIndex(of: ":"), let port = UInt16(text[text.index(after: colon)...]), port > 0 else {
            throw MetricsAddressError("--metrics \(text): expected host:port (127.0.0.1:9464, [::1]:9464) or unix:PATH")
        }
        var host = String(text[..<colon])
        if host.hasPrefix("[") && host.hasSuffix("]") { host = String(host.dropFirst().dropLast()) }
        if host == "localhost" { host = "127.0.0.1" }
        if host.isEmpty { host = "0.0.0.0" }
        var v4 = in_addr()
        var v6 = in6_addr()
        guard inet_pton(AF_INET, host, &v4) == 1 || inet_pton(AF_INET6, host, &v6) == 1 else {
            throw MetricsAddressError("--metrics \(text): '\(host)' is not a numeric IPv4 or IPv6 address (or localhost)")
        }
        return .tcp(host: host, port: port)
    }

    /// Loopback only: 127.0.0.0/8, ::1, or a unix socket (file permissions guard it).
    public var isLocal: Bool {
        switch self {
        case .unix: return true
        case let .tcp(host, _): return host.hasPrefix("127.") || host == "::1" || host == "::ffff:127.0.0.1"
        }
    }

    public var description: String {
        switch self {
        case let .tcp(host, port): return host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)"
        case let .unix(path): return "unix:\(path)"
        }
    }
}

public struct MetricsAddressError: Error, CustomStringConvertible, DaemonConfigError {
    public var description: String
    public init(_ d: String) { description = d }
}

/// One HTTP connection to the metrics address.
final class MetricsConnection {
    let fd: Int32
    var source: EventLoop.Source?
    var request: [UInt8] = []
    /// Response head and body, written in turn; the body may be shared by several connections.
    var head: [UInt8] = []
    var body: [UInt8] = []
    var written = 0
    var waitingForBody = false
    var headOnly = false
    var keepAlive = true
    /// Requests answered: a connection that never sent one is cut off sooner.
    var served = 0
    var closed = false
    /// When the request being read began (nil: none begun).
    var requestSince: Int64?
    /// Since when the response waits for the client to take more of it.
    var writeSince: Int64?
    var lastActivity: Int64

    init(fd: Int32, now: Int64) {
        self.fd = fd
        lastActivity = now
    }

    var writing: Bool { written < head.count + body.count }
}

/// A minimal HTTP/1.1 server for `/metrics`, `/healthz` and `/readyz`, on
/// swarmd's own loop. Bounded like the control socket: at most
/// `maxConnections`, a request head of at most `maxRequest` bytes that must
/// arrive within `requestTimeout`, a response the client must keep taking
/// (`writeTimeout` without progress closes it), idle keep-alive connections
/// closed after `idleTimeout`. One response at a time per connection, and a
/// scrape's body is built once for every connection waiting for it.
final class MetricsServer {
    let loop: EventLoop
    let kernel: Kernel
    weak var handler: MetricsHandler?
    var report: (NoteLevel, String) -> Void = { _, _ in }

    static let maxConnections = 64
    static let maxRequest = 8 << 10
    static let requestTimeout: Int64 = 5_000_000_000
    static let writeTimeout: Int64 = 10_000_000_000
    static let idleTimeout: Int64 = 60_000_000_000
    /// A connection that has sent nothing yet holds a place for at most this long.
    static let firstRequestTimeout: Int64 = 10_000_000_000

    private(set) var listenFD: Int32 = -1
    private var listenSource: EventLoop.Source?
    private var sweepSource: EventLoop.Source?
    private var connections: [ObjectIdentifier: MetricsConnection] = [:]
    /// Connections waiting for the scrape being collected.
    private var waiting: [MetricsConnection] = []
    private var collecting = false
    private var acceptPausedUntil: Int64?
    private var readBuffer = [UInt8](repeating: 0, count: 8192)
    private(set) var requestsServed = 0

    init(loop: EventLoop, kernel: Kernel) {
        self.loop = loop
        self.kernel = kernel
    }

    var connectionCount: Int { connections.count }

    func listen(on fd: Int32) throws {
        listenFD = fd
        try Posix.setNonBlocking(fd)
        listenSource = try loop.addReader(fd) { [weak self] _ in self?.acceptConnections() }
        sweepSource = try loop.addPeriodic(every: 1_000_000_000) { [weak self] in self?.sweep() }
    }

    func stop() {
        for c in Array(connections.values) { drop(c) }
        listenSource?.cancel()
        listenSource = nil
        sweepSource?.cancel()
        sweepSource = nil
    }

    private func acceptConnections() {
        for _ in 0..<64 {
            let fd: Int32
            do {
                guard let c = try Sockets.accept(listenFD) else { return }
                fd = c
            } catch {
                // EMFILE and the like: pause instead of spinning on a readable listener.
                report(.warning, "Failed to accept a metrics connection: \(error); pausing accepts for 1s")
                listenSource?.setEnabled(false)
                acceptPausedUntil = kernel.now() + 1_000_000_000
                return
            }
            guard connections.count < MetricsServer.maxConnections else {
                // Answered at once, so a flood drains the backlog instead of filling it.
                let bytes = MetricsServer.response(503, "too many metrics connections (\(connections.count)); try again later\n", keepAlive: false)
                _ = bytes.withUnsafeBytes { try? Sockets.sendSome(fd, $0) }
                Posix.close(fd)
                continue
            }
            let c = MetricsConnection(fd: fd, now: kernel.now())
            let key = ObjectIdentifier(c)
            do {
                c.source = try loop.addReader(fd) { [weak self] revents in self?.onEvent(key, revents) }
                connections[key] = c
            } catch {
                report(.warning, "Failed to watch a metrics connection: \(error), ignoring")
                Posix.close(fd)
            }
        }
    }

    private func onEvent(_ key: ObjectIdentifier, _ revents: UInt32) {
        guard let c = connections[key] else { return }
        if revents & IOEvents.writable != 0 { flush(c) }
        if c.closed { return }
        if revents & IOEvents.error != 0 { return drop(c) }
        if revents & IOEvents.readable != 0 {
            read(c)
        } else if revents & IOEvents.hangup != 0 {
            drop(c)
        }
    }

    private func read(_ c: MetricsConnection) {
        let n: Int
        do {
            switch try readBuffer.withUnsafeMutableBytes({ try Sockets.receiveSome(c.fd, into: $0) }) {
            case .wouldBlock: return
            case let .done(k): n = k
            }
        } catch {
            return drop(c)
        }
        if n == 0 { return drop(c) }
        let now = kernel.now()
        c.lastActivity = now
        if c.requestSince == nil { c.requestSince = now }
        c.request += readBuffer[0..<n]
        process(c)
    }

    /// Answers the request at the head of the buffer, if it is whole.
    private func process(_ c: MetricsConnection) {
        guard !c.writing, !c.waitingForBody, !c.closed else { return }
        guard let end = MetricsServer.headEnd(c.request) else {
            if c.request.count > MetricsServer.maxRequest {
                respond(c, 431, "request head larger than \(MetricsServer.maxRequest) bytes\n", close: true)
            }
            return
        }
        let head = Array(c.request[0..<end.head])
        c.request.removeFirst(end.next)
        c.requestSince = c.request.isEmpty ? nil : kernel.now()
        c.served += 1
        requestsServed += 1
        guard let req = HTTPRequest.parse(head) else {
            return respond(c, 400, "malformed request\n", close: true)
        }
        // A body is never read: answer, then close.
        c.keepAlive = req.keepAlive && !req.hasBody
        guard ["/metrics", "/healthz", "/readyz"].contains(req.path) else {
            return respond(c, 404, "not found: try /metrics, /healthz or /readyz\n")
        }
        guard req.method == "GET" || req.method == "HEAD" else {
            return respond(c, 405, "\(req.method) is not allowed here: GET or HEAD\n", extra: "Allow: GET, HEAD\r\n")
        }
        c.headOnly = req.method == "HEAD"
        switch req.path {
        case "/healthz":
            // Answered by the loop itself: if the loop is stuck, nothing answers.
            respond(c, 200, "ok\n")
        case "/readyz":
            let apps = req.query("app").map { $0.split(separator: ",").map(String.init).filter { !$0.isEmpty } }
            let (ready, text) = handler?.readiness(of: apps) ?? (false, "swarmd is stopping\n")
            respond(c, ready ? 200 : 503, text)
        default:
            c.waitingForBody = true
            // Nothing more is read until this answer is out (a hang-up is still reported).
            if let s = c.source { loop.setIOEvents(s, 0) }
            waiting.append(c)
            startCollecting()
        }
    }

    private func startCollecting() {
        guard !collecting else { return }
        guard let handler else {
            finishCollecting(Array("# swarmd is stopping\n".utf8))
            return
        }
        collecting = true
        handler.collectMetrics { [weak self] body in self?.finishCollecting(body) }
    }

    private func finishCollecting(_ body: [UInt8]) {
        collecting = false
        let ready = waiting
        waiting = []
        for c in ready where !c.closed {
            c.waitingForBody = false
            var h = "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n"
            h += "Content-Length: \(body.count)\r\nDate: \(MetricsServer.httpDate(kernel.wallClock()))\r\n"
            h += c.keepAlive ? "\r\n" : "Connection: close\r\n\r\n"
            send(c, Array(h.utf8), body: c.headOnly ? [] : body)
        }
    }

    private func respond(_ c: MetricsConnection, _ code: Int, _ text: String, close: Bool = false, extra: String = "") {
        if close { c.keepAlive = false }
        send(c, MetricsServer.response(code, text, keepAlive: c.keepAlive, headOnly: c.headOnly, extra: extra), body: [])
    }

    private func send(_ c: MetricsConnection, _ head: [UInt8], body: [UInt8]) {
        c.head = head
        c.body = body
        c.written = 0
        c.writeSince = kernel.now()
        flush(c)
    }

    private func flush(_ c: MetricsConnection) {
        guard !c.closed else { return }
        while c.writing {
            let inHead = c.written < c.head.count
            let result: IOResult<Int>
            do {
                if inHead {
                    result = try c.head.withUnsafeBytes { try Sockets.sendSome(c.fd, UnsafeRawBufferPointer(rebasing: $0[c.written...])) }
                } else {
                    let off = c.written - c.head.count
                    result = try c.body.withUnsafeBytes { try Sockets.sendSome(c.fd, UnsafeRawBufferPointer(rebasing: $0[off...])) }
                }
            } catch {
                return drop(c)
            }
            guard case let .done(n) = result, n > 0 else { break }
            c.written += n
            c.writeSince = kernel.now()
        }
        if c.writing {
            // Wait for room; read nothing more until the client takes this response.
            if let s = c.source { loop.setIOEvents(s, IOEvents.writable) }
            return
        }
        c.head = []
        c.body = []
        c.written = 0
        c.writeSince = nil
        c.headOnly = false
        guard c.keepAlive else { return drop(c) }
        if let s = c.source { loop.setIOEvents(s, IOEvents.readable) }
        c.lastActivity = kernel.now()
        // A pipelined request may already be buffered.
        if !c.request.isEmpty { process(c) }
    }

    private func drop(_ c: MetricsConnection) {
        let key = ObjectIdentifier(c)
        guard connections.removeValue(forKey: key) != nil else { return }
        c.closed = true
        c.source?.cancel()
        c.source = nil
        Posix.close(c.fd)
        c.head = []
        c.body = []
        c.request = []
    }

    /// Deadlines, once a second.
    private func sweep() {
        let now = kernel.now()
        if let until = acceptPausedUntil, now >= until {
            acceptPausedUntil = nil
            listenSource?.setEnabled(true)
        }
        for c in Array(connections.values) {
            if let since = c.writeSince, c.writing, now - since > MetricsServer.writeTimeout {
                report(.info, "metrics client took none of its response for \(MetricsServer.writeTimeout / 1_000_000_000)s; closing it")
                drop(c)
            } else if let since = c.requestSince, !c.waitingForBody, !c.writing, now - since > MetricsServer.requestTimeout {
                respond(c, 408, "request not completed within \(MetricsServer.requestTimeout / 1_000_000_000)s\n", close: true)
            } else if c.requestSince == nil, !c.writing, !c.waitingForBody,
                      now - c.lastActivity > (c.served == 0 ? MetricsServer.firstRequestTimeout : MetricsServer.idleTimeout) {
                drop(c)
            }
        }
    }

    // MARK: - HTTP

    static func headEnd(_ buf: [UInt8]) -> (head: Int, next: Int)? {
        guard buf.count >= 2 else { return nil }
        var i = 0
        while i + 1 < buf.count {
            if buf[i] == 0x0a {
                if buf[i + 1] == 0x0a { return (i, i + 2) }
                if buf[i + 1] == 0x0d, i + 2 < buf.count, buf[i + 2] == 0x0a { return (i, i + 3) }
            }
            i += 1
        }
        return nil
    }

    static let reasons: [Int: String] = [
        200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed", 408: "Request Timeout",
        431: "Request Header Fields Too Large", 503: "Service Unavailable", 505: "HTTP Version Not Supported",
    ]

    static func response(_ code: Int, _ text: String, keepAlive: Bool, headOnly: Bool = false, extra: String = "") -> [UInt8] {
        var h = "HTTP/1.1 \(code) \(reasons[code] ?? "Error")\r\nContent-Type: text/plain; charset=utf-8\r\n"
        h += "Content-Length: \(text.utf8.count)\r\nDate: \(httpDate(Posix.realtimeNanoseconds()))\r\n\(extra)"
        h += keepAlive ? "\r\n" : "Connection: close\r\n\r\n"
        if !headOnly { h += text }
        return Array(h.utf8)
    }

    /// RFC 9110's IMF-fixdate.
    static func httpDate(_ wallNS: Int64) -> String {
        var t = time_t(wallNS / 1_000_000_000)
        var tm = Glibc.tm()
        gmtime_r(&t, &tm)
        var buf = [CChar](repeating: 0, count: 64)
        let n = strftime(&buf, buf.count, "%a, %d %b %Y %H:%M:%S GMT", &tm)
        return String(decoding: buf.prefix(n).map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }
}

/// The parts of an HTTP/1.x request head this server looks at.
struct HTTPRequest: Equatable {
    var method: String
    var path: String
    var rawQuery: String
    var version: String
    var keepAlive: Bool
    /// A body follows (Content-Length > 0 or Transfer-Encoding): not read, so the connection closes after the answer.
    var hasBody: Bool

    static func parse(_ head: [UInt8]) -> HTTPRequest? {
        // Split on bytes: in a Swift String "\r\n" is one Character, not two.
        var lines: [Substring] = head.split(separator: 0x0a, omittingEmptySubsequences: false).map { line in
            Substring(String(decoding: line.last == 0x0d ? line.dropLast() : line, as: UTF8.self))
        }
        guard !lines.isEmpty else { return nil }
        let requestLine = lines.removeFirst().split(separator: " ", omittingEmptySubsequences: false)
        guard requestLine.count == 3, !requestLine[0].isEmpty, requestLine[0].allSatisfy({ $0.isUppercase }),
              requestLine[1].hasPrefix("/"), requestLine[2].hasPrefix("HTTP/1.") else { return nil }
        let target = requestLine[1]
        let q = target.firstIndex(of: "?")
        var r = HTTPRequest(method: String(requestLine[0]), path: String(target[..<(q ?? target.endIndex)]),
                            rawQuery: q.map { String(target[target.index(after: $0)...]) } ?? "",
                            version: String(requestLine[2]), keepAlive: requestLine[2] == "HTTP/1.1", hasBody: false)
        for line in lines where !line.isEmpty {
            guard let colon = line.firstIndex(of: ":") else { return nil }
            let name = line[..<colon].lowercased()
            let value = line[line.index(after: colon)...].trimmingCharacters(in: " \t").lowercased()
            switch name {
            case "connection":
                if value.contains("close") { r.keepAlive = false }
                if value.contains("keep-alive") && r.version == "HTTP/1.0" { r.keepAlive = true }
            case "content-length":
                if value != "0" { r.hasBody = true }
            case "transfer-encoding":
                r.hasBody = true
            default:
                break
            }
        }
        return r
    }

    /// The first value of `name` in the query, percent-decoded.
    func query(_ name: String) -> String? {
        for pair in rawQuery.split(separator: "&") {
            let kv = pair.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
            if HTTPRequest.percentDecode(kv[0]) == name { return kv.count > 1 ? HTTPRequest.percentDecode(kv[1]) : "" }
        }
        return nil
    }

    static func percentDecode(_ s: Substring) -> String {
        var out: [UInt8] = []
        var bytes = Array(s.utf8)[...]
        while let b = bytes.popFirst() {
            if b == UInt8(ascii: "%"), bytes.count >= 2, let v = UInt8(String(decoding: bytes.prefix(2), as: UTF8.self), radix: 16) {
                out.append(v)
                bytes = bytes.dropFirst(2)
            } else if b == UInt8(ascii: "+") {
                out.append(0x20)
            } else {
                out.append(b)
            }
        }
        return String(decoding: out, as: UTF8.self)
    }
}

extension Substring {
    fileprivate func trimmingCharacters(in set: String) -> String {
        let chars = Set(set)
        var s = self[...]
        while let f = s.first, chars.contains(f) { s = s.dropFirst() }
        while let l = s.last, chars.contains(l) { s = s.dropLast() }
        return String(s)
    }
}
