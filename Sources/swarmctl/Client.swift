import Foundation
import Glibc
import SwarmProtocol
import SwarmSystem

/// Why swarmctl failed, as the one line it prints.
struct CtlError: Error, CustomStringConvertible {
    var description: String
    var details: [String] = []
    var exitCode: Int32 = 1
}

/// A connection to swarmd's control socket.
final class Client {
    let path: String
    let fd: Int32
    var reader = FrameReader(limit: 64 << 20)
    var nextID: UInt64 = 1

    init(path: String) throws {
        self.path = path
        do {
            fd = try Sockets.connectUnix(path)
        } catch let e as SystemError {
            throw CtlError(description: Client.unreachable(path, e), exitCode: 3)
        }
    }

    deinit { Posix.close(fd) }

    static func unreachable(_ path: String, _ e: SystemError) -> String {
        let why: String
        switch e.errno {
        case ENOENT: why = "no socket there"
        case ECONNREFUSED: why = "nothing is listening (a stale socket)"
        case EACCES: why = "permission denied (the control socket belongs to another user)"
        default: why = e.description
        }
        return "cannot reach swarmd at \(path): \(why). Start it with 'swarmd --socket \(path)' (or 'swarmctl start APP.conf', which starts one), or point --socket / SWARM_SOCKET at a running one."
    }

    func send(_ request: Request) throws {
        let bytes = Codec.encode(request)
        var offset = 0
        try bytes.withUnsafeBytes { buf in
            while offset < buf.count {
                let n = Glibc.write(fd, buf.baseAddress! + offset, buf.count - offset)
                if n < 0 {
                    if errno == EINTR { continue }
                    throw CtlError(description: "lost the connection to swarmd at \(path): \(String(cString: strerror(errno)))")
                }
                offset += n
            }
        }
    }

    /// The next response line; nil at EOF.
    func receive() throws -> Response? {
        var buf = [UInt8](repeating: 0, count: 65536)
        while true {
            if let frame = try reader.next() { return try Codec.decodeResponse(frame) }
            let n = buf.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress, $0.count) }
            if n < 0 {
                if errno == EINTR { continue }
                throw CtlError(description: "lost the connection to swarmd at \(path): \(String(cString: strerror(errno)))")
            }
            if n == 0 { return nil }
            reader.append(buf[0..<n])
        }
    }

    /// Sends one request and returns its result, passing event and log lines to `onStream`.
    func call(_ request: Request, onStream: (Response) throws -> Void = { _ in }) throws -> Response {
        try send(request)
        while let r = try receive() {
            if r.id != request.id && r.id != 0 { continue }
            if r.kind == .result {
                if r.ok == false {
                    throw CtlError(description: r.error ?? "failed", details: r.details ?? [])
                }
                return r
            }
            try onStream(r)
        }
        throw CtlError(description: "swarmd closed the connection before answering (it may have stopped)")
    }

    func request(_ verb: Verb, name: String? = nil, files: [String]? = nil, replace: Bool? = nil, count: Int? = nil,
                 delta: Int? = nil, lines: Int? = nil, follow: Bool? = nil) -> Request {
        defer { nextID += 1 }
        return Request(id: nextID, verb: verb, files: files, name: name, replace: replace, count: count, delta: delta,
                       lines: lines, follow: follow)
    }
}

func printErr(_ s: String) {
    _ = (s + "\n").withCString { fputs($0, stderr) }
}

func printOut(_ s: String) {
    _ = (s + "\n").withCString { fputs($0, stdout) }
    fflush(nil)
}

func toJSON<T: Encodable>(_ value: T) -> String {
    let e = JSONEncoder()
    e.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
    return String(decoding: try! e.encode(value), as: UTF8.self)
}
