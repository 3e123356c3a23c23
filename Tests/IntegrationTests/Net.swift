import Foundation
import Glibc
import SwarmProtocol
import SwarmSystem

// Clients over plain POSIX sockets: the control protocol, and HTTP/1.1 with keep-alive.

func setTimeouts(_ fd: Int32, seconds: Double) {
    var tv = timeval(tv_sec: Int(seconds), tv_usec: Int((seconds - Double(Int(seconds))) * 1e6))
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
}

func errnoText(_ e: Int32 = errno) -> String { "\(String(cString: strerror(e))) (\(errnoName(e)))" }

/// A raw connection to swarmd's control socket.
final class ControlConnection {
    let fd: Int32
    private var reader = FrameReader(limit: 64 << 20)

    init(path: String, timeout: Double = 10) throws {
        fd = try Sockets.connectUnix(path)
        setTimeouts(fd, seconds: timeout)
    }

    deinit { close(fd) }

    func send(_ bytes: [UInt8]) throws {
        var off = 0
        while off < bytes.count {
            let n = bytes[off...].withUnsafeBytes { Glibc.send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            if n < 0 {
                if errno == EINTR { continue }
                throw HarnessError("send on the control socket failed: \(errnoText())")
            }
            off += n
        }
    }

    func send(_ request: Request) throws { try send(Codec.encode(request)) }

    /// The next response line; nil at EOF.
    func receive() throws -> Response? {
        guard let frame = try receiveFrame() else { return nil }
        return try Codec.decodeResponse(frame)
    }

    func receiveFrame() throws -> [UInt8]? {
        var buf = [UInt8](repeating: 0, count: 65536)
        while true {
            if let f = try reader.next() { return f }
            let n = buf.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            if n < 0 {
                if errno == EINTR { continue }
                if errno == ECONNRESET { return nil }
                throw HarnessError("reading the control socket failed: \(errnoText())")
            }
            if n == 0 { return nil }
            reader.append(buf[0..<n])
        }
    }

    /// Sends one request and returns its result line (skipping events and logs).
    /// The result; a large status's `part` lines are put back into it, as swarmctl does.
    func call(_ request: Request) throws -> Response {
        try send(request)
        var parts = StatusAssembler()
        while var r = try receive() {
            parts.add(r)
            if r.kind == .result {
                if let status = r.status { r.status = parts.report(status) }
                return r
            }
        }
        throw HarnessError("swarmd closed the control connection before answering \(request.verb)")
    }
}

struct HTTPResponse {
    var status: Int
    var headers: [String: String]
    var body: String
    var pid: Int32? { Int32(body.trimmingCharacters(in: .whitespacesAndNewlines)) }
}

/// An HTTP/1.1 client connection to 127.0.0.1:port; requests reuse it (keep-alive).
final class HTTPConnection {
    let fd: Int32
    private var buffer: [UInt8] = []
    private(set) var closedByServer = false

    init(port: UInt16, timeout: Double = 10) throws {
        fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw HarnessError("socket failed: \(errnoText())") }
        setTimeouts(fd, seconds: timeout)
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_port = port.bigEndian
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        let r = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        if r < 0 {
            // No close(fd) here: the object is fully initialised, so throwing runs deinit, which
            // closes it. Closing twice would close whatever another thread opened in between.
            throw HarnessError("connect to 127.0.0.1:\(port) failed: \(errnoText(errno))")
        }
    }

    deinit { close(fd) }

    func get(_ path: String = "/", close: Bool = false) throws -> HTTPResponse {
        let req = "GET \(path) HTTP/1.1\r\nHost: 127.0.0.1\r\n\(close ? "Connection: close\r\n" : "")\r\n"
        let bytes = Array(req.utf8)
        var off = 0
        while off < bytes.count {
            let n = bytes[off...].withUnsafeBytes { Glibc.send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            if n < 0 {
                if errno == EINTR { continue }
                throw HarnessError("sending GET \(path) failed: \(errnoText())")
            }
            off += n
        }
        return try readResponse(path)
    }

    private func fill(_ path: String) throws {
        var buf = [UInt8](repeating: 0, count: 16384)
        while true {
            let n = buf.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            if n < 0 {
                if errno == EINTR { continue }
                throw HarnessError("reading the answer to GET \(path) failed: \(errnoText())")
            }
            if n == 0 {
                closedByServer = true
                throw HarnessError("the server closed the connection before answering GET \(path) completely")
            }
            buffer += buf[0..<n]
            return
        }
    }

    private func readResponse(_ path: String) throws -> HTTPResponse {
        let sep: [UInt8] = [13, 10, 13, 10]
        var headEnd: Int?
        while headEnd == nil {
            if buffer.count >= 4 {
                for i in 0...(buffer.count - 4) where buffer[i] == 13 && Array(buffer[i..<i + 4]) == sep {
                    headEnd = i
                    break
                }
            }
            if headEnd == nil { try fill(path) }
        }
        let head = String(decoding: buffer[0..<headEnd!], as: UTF8.self)
        buffer.removeFirst(headEnd! + 4)
        var lines = head.components(separatedBy: "\r\n")
        let statusLine = lines.removeFirst().split(separator: " ")
        guard statusLine.count >= 2, let status = Int(statusLine[1]) else { throw HarnessError("bad status line in answer to GET \(path): \(head)") }
        var headers: [String: String] = [:]
        for l in lines {
            guard let c = l.firstIndex(of: ":") else { continue }
            headers[l[..<c].lowercased()] = l[l.index(after: c)...].trimmingCharacters(in: .whitespaces)
        }
        let length = Int(headers["content-length"] ?? "0") ?? 0
        while buffer.count < length { try fill(path) }
        let body = String(decoding: buffer[0..<length], as: UTF8.self)
        buffer.removeFirst(length)
        return HTTPResponse(status: status, headers: headers, body: body)
    }
}

/// One request on a fresh connection.
func httpGet(_ port: UInt16, _ path: String = "/") throws -> HTTPResponse {
    try HTTPConnection(port: port).get(path, close: true)
}

/// Which worker pids answer `connections` fresh connections (reuseport spreads them by client port).
func answeringPids(_ port: UInt16, connections: Int = 48) throws -> [Int32: Int] {
    var seen: [Int32: Int] = [:]
    for _ in 0..<connections {
        let r = try httpGet(port)
        guard r.status == 200, let pid = r.pid else { throw HarnessError("GET / answered \(r.status) \(r.body)") }
        seen[pid, default: 0] += 1
    }
    return seen
}
