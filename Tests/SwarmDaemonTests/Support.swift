import Foundation
import Glibc
@testable import SwarmDaemon
import SwarmCore
import SwarmProtocol
import SwarmSystem
import Testing

struct TestFailure: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}

/// What every test needs of the process once: replies written to a peer that
/// hung up must fail with EPIPE, not kill the test runner (swarmd ignores
/// SIGPIPE in run(), which these tests do not call); and room for a few
/// thousand sockets.
let processSetUp: Void = {
    Posix.ignore(SIGPIPE)
    Posix.raiseFileLimit()
}()

/// A directory of the test's own, removed when the test is done with it.
final class TempDir {
    let path: String

    init() throws {
        _ = processSetUp
        var template = Array("/tmp/swarmd-tests-XXXXXX".utf8CString)
        guard let p = mkdtemp(&template) else { throw TestFailure("mkdtemp: \(String(cString: strerror(errno)))") }
        path = String(cString: p)
    }

    deinit { try? FileManager.default.removeItem(atPath: path) }

    func file(_ name: String, _ text: String) throws -> String {
        let p = "\(path)/\(name)"
        try text.write(toFile: p, atomically: true, encoding: .utf8)
        return p
    }
}

/// Runs the loop one dispatch at a time until `done` holds, failing after a
/// real-time deadline with `what` (the loop runs on this thread, so nothing
/// else can make `done` true).
func runLoop(_ loop: EventLoop, until what: String, within seconds: Double = 10,
             pump: () -> Void = {}, _ done: () -> Bool) throws {
    let deadline = Posix.monotonicNanoseconds() + Int64(seconds * 1e9)
    while !done() {
        guard Posix.monotonicNanoseconds() < deadline else {
            throw TestFailure("timed out after \(seconds)s waiting for: \(what)")
        }
        pump()
        try loop.runOnce(timeout: 5_000_000)
    }
}

/// Runs `times` loop iterations of at most 1 ms each: whatever is pending
/// now gets dispatched, and a test can then check that nothing more happened.
func spin(_ loop: EventLoop, times: Int = 30, pump: () -> Void = {}) throws {
    for _ in 0..<times {
        pump()
        try loop.runOnce(timeout: 1_000_000)
    }
}

/// Both ends of a Unix stream socketpair: `server` for the code under test,
/// `client` for the test. Both non-blocking.
func socketPair() throws -> (server: Int32, client: Int32) {
    var fds: [Int32] = [0, 0]
    guard socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue) | Int32(SOCK_NONBLOCK.rawValue), 0, &fds) == 0 else {
        throw TestFailure("socketpair: \(String(cString: strerror(errno)))")
    }
    return (fds[0], fds[1])
}

func pipePair() throws -> (read: Int32, write: Int32) {
    _ = processSetUp
    return try Posix.pipe()
}

func writeAll(_ fd: Int32, _ text: String) throws { try Posix.writeAll(fd, Array(text.utf8)) }

/// Bytes readable on `fd` now (non-blocking), nil at end of file.
func readAvailable(_ fd: Int32) -> [UInt8]? {
    var out: [UInt8] = []
    var buf = [UInt8](repeating: 0, count: 65536)
    while true {
        let n = buf.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress, $0.count) }
        if n > 0 { out += buf[0..<n]; continue }
        if n == 0 { return out.isEmpty ? nil : out }
        return out
    }
}

/// The test's end of a control connection: what it sends, and the replies it reads.
final class Peer {
    let fd: Int32
    private var outgoing: [UInt8] = []
    private var reader = FrameReader(limit: 64 << 20)
    private(set) var responses: [Response] = []
    /// Frames too large to be worth decoding here (the huge-reply test), raw.
    private(set) var largeFrames: [[UInt8]] = []
    private(set) var hungUp = false
    private(set) var bytesRead = 0
    var open = true

    init(fd: Int32) { self.fd = fd }

    deinit { if open { Posix.close(fd) } }

    func close() {
        guard open else { return }
        open = false
        Posix.close(fd)
    }

    func send(raw: [UInt8]) {
        outgoing += raw
        pump()
    }

    func send(_ request: Request) { send(raw: Codec.encode(request)) }

    func ping(_ id: UInt64) { send(Request(id: id, verb: .ping)) }

    /// Writes what the socket takes; reads nothing.
    func pump() {
        guard open, !outgoing.isEmpty else { return }
        let n = outgoing.withUnsafeBytes { Glibc.write(fd, $0.baseAddress, $0.count) }
        if n > 0 { outgoing.removeFirst(n) }
    }

    var unsent: Int { outgoing.count }

    /// Reads every reply that arrived so far.
    func receive() {
        guard open, !hungUp else { return }
        var buffer = [UInt8](repeating: 0, count: 256 << 10)
        while true {
            let n = buffer.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress, $0.count) }
            if n == 0 { hungUp = true; break }
            if n < 0 { break }
            bytesRead += n
            reader.append(buffer[0..<n])
        }
        while let frame = try? reader.next() {
            if frame.count > 1 << 20 { largeFrames.append(frame); continue }
            if let r = try? Codec.decodeResponse(frame) { responses.append(r) }
        }
    }
}

/// Records what the server passes up, and answers `ping` (optionally with a
/// reply of a chosen size) the way the Manager does.
final class RecordingHandler: ControlHandler {
    weak var server: ControlServer?
    private(set) var handled: [(client: ObjectIdentifier, request: Request)] = []
    private(set) var clients: [ControlClient] = []
    private(set) var closed: [ObjectIdentifier] = []
    /// Size of the message in each reply (0: "pong").
    var replySize = 0
    /// Sent as the reply to every request instead, as is.
    var rawReply: [UInt8]?
    /// Called for each request before it is answered (a test can let time pass).
    var onRequest: (() -> Void)?

    func handle(_ request: Request, from client: ControlClient) {
        handled.append((ObjectIdentifier(client), request))
        onRequest?()
        if !clients.contains(where: { $0 === client }) { clients.append(client) }
        guard let server else { return }
        if let rawReply { return server.send(client, bytes: rawReply) }
        server.send(client, .success(request.id, replySize > 0 ? String(repeating: "x", count: replySize) : "pong"))
    }

    func clientClosed(_ client: ControlClient) { closed.append(ObjectIdentifier(client)) }

    func handledCount(of client: ControlClient) -> Int { handled.filter { $0.client == ObjectIdentifier(client) }.count }
}

/// A TCP port on 127.0.0.1 that nothing is bound to now, below the ephemeral
/// range and apart from the integration tests' 20000..<32000, spread by pid.
enum Ports {
    private static let lock = NSLock()
    nonisolated(unsafe) private static var counter = 0

    static func free() throws -> UInt16 {
        let base = Int(getpid() % 200) * 37
        for _ in 0..<4000 {
            let n = lock.withLock { counter += 1; return counter }
            let port = UInt16(12000 + (base + n) % 8000)
            if isBindable(port) { return port }
        }
        throw TestFailure("no free port in 12000..<20000")
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

/// The identity of the open file behind `fd`, or nil if `fd` is not open.
func inode(of fd: Int32) -> UInt64? {
    var st = stat()
    guard fstat(fd, &st) == 0 else { return nil }
    return UInt64(st.st_ino)
}

/// Collects (level, text) reports of a part.
final class Reports {
    private(set) var all: [(level: NoteLevel, text: String)] = []
    var sink: (NoteLevel, String) -> Void { { [unowned self] level, text in self.all.append((level, text)) } }
    func count(containing s: String) -> Int { all.filter { $0.text.contains(s) }.count }
}

/// An app with sensible test defaults.
func makeSpec(_ name: String = "web", workers: Int = 2, sockets: [SocketSpec] = [], ready: ReadyMode = .notify,
              restart: RestartMode = .always, sourcePath: String = "") -> AppSpec {
    var spec = AppSpec(name: name, command: ["/bin/true", "serve"], executable: "/bin/true", workers: workers,
                       cwd: "/", env: ["GREETING": "hello"], sockets: sockets, sourcePath: sourcePath)
    spec.ready.mode = ready
    spec.restart.mode = restart
    spec.logs.target = "file"
    return spec
}

func tcpSocket(_ name: String = "http", port: UInt16, balance: Balance = .reuseport) -> SocketSpec {
    SocketSpec(name: name, listen: .tcp(host: "127.0.0.1", port: port), backlog: 64, balance: balance)
}
