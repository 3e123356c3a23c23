import Foundation
import Glibc
import Logging
@testable import SwarmDaemon
import SwarmCore
import SwarmProtocol
import SwarmSystem
import Testing

/// swarmd's own log lines, kept for the test to read.
final class LogBox: @unchecked Sendable {
    private let lock = NSLock()
    private var lines: [(Logger.Level, String)] = []
    func append(_ level: Logger.Level, _ text: String) { lock.withLock { lines.append((level, text)) } }
    var all: [(level: Logger.Level, text: String)] { lock.withLock { lines.map { ($0.0, $0.1) } } }
    func count(containing s: String) -> Int { all.filter { $0.text.contains(s) }.count }
}

struct CapturingLogHandler: LogHandler {
    let box: LogBox
    var metadata: Logger.Metadata = [:]
    var metadataProvider: Logger.MetadataProvider?
    var logLevel: Logger.Level = .debug

    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    func log(event: LogEvent) { box.append(event.level, event.message.description) }
}

/// A Manager on the fake kernel: a real loop, a real control socket, real
/// pipes for worker output; no process. Tests drive it by control requests,
/// core events (ready, exits through scripted reaps) and signals.
final class ManagerFixture {
    let dir: TempDir
    let kernel = FakeKernel()
    let manager: Manager
    let logs = LogBox()
    private var caller: Peer?
    private var nextID: UInt64 = 100

    /// Without `control`, the control socket is left to the test (a hand-over brings its own).
    init(control: Bool = true) throws {
        dir = try TempDir()
        let state = dir.path + "/state"
        try Posix.mkdirs(state + "/logs", mode: 0o750)
        manager = try Manager(options: DaemonOptions(socketPath: dir.path + "/swarmd.sock", stateDir: state, appsDir: nil, configFiles: []),
                              kernel: kernel)
        let box = logs
        manager.log = Logger(label: "swarmd-test") { _ in CapturingLogHandler(box: box) }
        if control { try manager.setUpControlSocket() }
    }

    deinit { manager.cleanUp() }

    var loop: EventLoop { manager.loop }

    /// An app's config file in the test's directory.
    func config(_ name: String = "web", workers: Int = 1, port: UInt16? = nil, ready: String = "notify",
                restart: String = "never", logSettings: String = "", extra: String = "") throws -> String {
        var text = """
            name = "\(name)"
            command = ["/bin/true", "serve"]
            workers = \(workers)
            \(extra)
            [ready]
            mode = "\(ready)"
            [restart]
            policy = "\(restart)"
            [logs]
            target = "file"
            \(logSettings)

            """
        if let port { text += "[[socket]]\nname = \"http\"\nlisten = \"127.0.0.1:\(port)\"\n" }
        return try dir.file("\(name).conf", text)
    }

    /// A control client admitted as `uid` (the fixture's own caller is root).
    func client(uid: uid_t = 0, pid: pid_t = 5555) throws -> Peer {
        let (s, c) = try socketPair()
        manager.control.admit(fd: s, uid: uid, pid: pid)
        return Peer(fd: c)
    }

    private func callerPeer() throws -> Peer {
        if let caller { return caller }
        let p = try client()
        caller = p
        return p
    }

    /// Sends a request; its answer is collected by `result(of:)`.
    @discardableResult
    func send(_ build: (UInt64) -> Request) throws -> UInt64 {
        nextID += 1
        let p = try callerPeer()
        p.send(build(nextID))
        try spin(loop, times: 3, pump: { p.pump(); p.receive() })
        return nextID
    }

    func result(of id: UInt64) -> Response? {
        caller?.receive()
        return caller?.responses.last { $0.id == id && $0.kind == .result }
    }

    func waitForResult(of id: UInt64, _ what: String) throws -> Response {
        let p = try callerPeer()
        try runLoop(loop, until: what, pump: { p.pump(); p.receive() }) { result(of: id) != nil }
        return result(of: id)!
    }

    func call(_ build: (UInt64) -> Request) throws -> Response {
        let id = try send(build)
        return try waitForResult(of: id, "the answer to request \(id)")
    }

    /// Pids the fake kernel handed out, in spawn order.
    var pids: [pid_t] { kernel.calls.compactMap { if case let .spawn(pid, _) = $0 { return pid } else { return nil } } }

    func ready(_ pid: pid_t) { manager.feed(.ready(pid: pid)) }

    /// The worker exits and swarmd reaps it on SIGCHLD.
    func exit(_ pid: pid_t, code: Int32 = 0) {
        kernel.exit(pid, code: code)
        manager.onSignal(SIGCHLD)
    }

    /// Starts the config file's app and makes each of its `workers` ready.
    @discardableResult
    func startReady(_ path: String, workers: Int = 1) throws -> [pid_t] {
        let before = pids.count
        let id = try send { Request(id: $0, verb: .start, files: [path]) }
        try runLoop(loop, until: "\(workers) spawns for \(path)") { pids.count >= before + workers }
        let started = Array(pids[before...])
        for pid in started { ready(pid) }
        let r = try waitForResult(of: id, "start \(path)")
        guard r.ok == true else { throw TestFailure("start \(path) failed: \(r.error ?? "?")") }
        return started
    }
}
