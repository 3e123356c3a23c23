import Glibc
import SwarmProtocol
import SwarmSystem

/// Why swarmctl failed, as the one line it prints.
struct CtlError: Error, CustomStringConvertible {
    var description: String
    var details: [String] = []
    var exitCode: Int32 = 1
}

/// A connection to swarmd's control socket, to a peer swarmctl trusts.
final class Client {
    let path: String
    let fd: Int32
    /// Set for `--host ssh://…`: the ssh process the protocol runs through.
    let tunnel: SSHTunnel?
    var reader = FrameReader(limit: 64 << 20)
    var nextID: UInt64 = 1

    convenience init(_ global: GlobalOptions) throws {
        if let host = try global.remoteHosts()?.first {
            try self.init(remote: host)
        } else {
            try self.init(path: global.socketPath, trusting: try global.trustedUIDs(), builtInPath: global.isBuiltInSocket)
        }
    }

    /// Through ssh to the host's `swarmctl dial-stdio`: who answers is
    /// decided there (its peer checks, as the SSH user), not here.
    init(remote host: RemoteHost) throws {
        let t = try SSHTunnel(host)
        tunnel = t
        fd = t.fd
        path = host.description
    }

    /// Connects, then checks who listens there (SO_PEERCRED): root, this
    /// user, or a uid in `trusting`; anyone else could be another user's
    /// program posing as swarmd to collect config paths and environments.
    /// For the built-in path, the socket's directory is checked first: one
    /// that another user owns or may write in could hold their socket.
    init(path: String, trusting: [uid_t], builtInPath: Bool) throws {
        self.path = path
        tunnel = nil
        if builtInPath { try Client.checkSocketDirectory(of: path) }
        do {
            fd = try Sockets.connectUnix(path)
        } catch let e as SystemError {
            throw CtlError(description: Client.unreachable(path, e), exitCode: 3)
        }
        do {
            try Client.checkPeer(fd, path: path, trusting: trusting)
        } catch {
            Posix.close(fd)
            throw error
        }
    }

    deinit { if tunnel == nil { Posix.close(fd) } }

    static func checkSocketDirectory(of path: String) throws {
        let dir = FileSystem.split(path).directory
        do {
            try TrustedDirectory.verify(path: dir, owners: Array(Set([0, Posix.userID])))
        } catch let e as SystemError where e.errno == ENOENT {
            // Nothing there yet: the connect fails as "no socket there".
        } catch let e as FileError {
            throw CtlError(description: "refusing the control socket \(path): \(e)")
        }
    }

    static func checkPeer(_ fd: Int32, path: String, trusting: [uid_t]) throws {
        let peer: PeerCredentials
        do { peer = try Sockets.peer(of: fd) } catch {
            throw CtlError(description: "cannot tell who listens on \(path): \(error); refusing to talk to it")
        }
        let me = Posix.userID
        guard peer.uid == 0 || peer.uid == me || trusting.contains(peer.uid) else {
            throw CtlError(description: "refusing to talk to \(path): the process listening there (pid \(peer.pid)) runs as "
                + "\(Users.describe(peer.uid)), not as root or as you (\(Users.describe(me))), so it may not be swarmd. "
                + "If you trust it, pass --trust-uid \(peer.uid) (or set \(SwarmDefaults.trustUIDVariable)=\(peer.uid))")
        }
    }

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

    func lost(_ error: Error) -> CtlError {
        if let tunnel { return tunnel.failure("the connection was lost (\(error))") }
        return CtlError(description: "lost the connection to swarmd at \(path): \(error)")
    }

    func send(_ request: Request) throws {
        do { try Sockets.sendAll(fd, Codec.encode(request), timeoutNanoseconds: 60_000_000_000) } catch { throw lost(error) }
    }

    /// The next response line; nil at EOF.
    func receive() throws -> Response? {
        guard let frame = try receiveLine() else { return nil }
        return try Codec.decodeResponse(frame)
    }

    /// The next response already read from the socket, if a whole one is buffered; never reads.
    func bufferedResponse() throws -> Response? {
        guard let frame = try reader.next() else { return nil }
        return try Codec.decodeResponse(frame)
    }

    /// The next line as received (without its newline); nil at EOF.
    func receiveLine() throws -> [UInt8]? {
        var buf = [UInt8](repeating: 0, count: 65536)
        while true {
            if let frame = try reader.next() { return frame }
            let got: IOResult<Int>
            do { got = try buf.withUnsafeMutableBytes { try Sockets.receiveSome(fd, into: $0) } } catch { throw lost(error) }
            // A blocking socket: .wouldBlock only if a timeout were set, which it is not.
            guard case let .done(n) = got else { continue }
            if n == 0 {
                if let tunnel { throw tunnel.failure("ssh closed the connection") }
                return nil
            }
            reader.append(buf[0..<n])
            tunnel?.drainErrors()
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
                 delta: Int? = nil, lines: Int? = nil, follow: Bool? = nil, quickStart: QuickStartRequest? = nil) -> Request {
        defer { nextID += 1 }
        return Request(id: nextID, verb: verb, files: files, name: name, replace: replace, count: count, delta: delta,
                       lines: lines, follow: follow, quickStart: quickStart)
    }
}
