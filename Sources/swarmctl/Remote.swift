import ArgumentParser
import Glibc
import SwarmProtocol
import SwarmSystem

/// ssh to a host running swarmd, its stdin and stdout one end of a
/// socketpair: the control protocol runs over it unchanged. ssh's stderr
/// (and the remote swarmctl's) is kept, bounded, to explain a failure.
final class SSHTunnel {
    let host: RemoteHost
    let fd: Int32
    let pid: pid_t
    private let errors: Int32
    private var errorText: [UInt8] = []
    private var status: Posix.WaitResult?
    static let errorLimit = 8 << 10

    static let sshVariable = "SWARM_SSH"
    static let remoteCtlVariable = "SWARM_REMOTE_SWARMCTL"

    /// `$SWARM_SSH` split on spaces (e.g. `ssh -F ./fleet_ssh_config`), else `ssh`.
    static var sshCommand: [String] {
        let words = (Environment.nonEmpty(sshVariable) ?? "ssh").split(separator: " ").map(String.init)
        return words.isEmpty ? ["ssh"] : words
    }

    init(_ host: RemoteHost) throws {
        self.host = host
        let ssh = SSHTunnel.sshCommand
        let remoteCtl = Environment.nonEmpty(SSHTunnel.remoteCtlVariable) ?? "swarmctl"
        let argv = host.sshArguments(ssh: ssh, remoteSwarmctl: remoteCtl)
        guard let executable = SSHTunnel.find(ssh[0]) else {
            throw CtlError(description: "host \(host): '\(ssh[0])' not found in PATH (set \(SSHTunnel.sshVariable))", exitCode: 3)
        }
        let (mine, theirs) = try Sockets.streamPair()
        let pipe: (read: Int32, write: Int32)
        do { pipe = try Posix.pipe(nonBlockingRead: true) } catch { Posix.close(mine); Posix.close(theirs); throw error }
        var plan = SpawnPlan(executable: executable, argv: argv, environment: Environment.all, setListenPID: false, cwd: nil,
                             fds: [], stdin: theirs, stdout: theirs, stderr: pipe.write)
        // ssh outlives nothing: it goes when swarmctl does.
        plan.parentDeathSignal = SIGTERM
        do {
            pid = try Spawner.spawn(plan)
        } catch {
            [mine, theirs, pipe.read, pipe.write].forEach(Posix.close)
            throw CtlError(description: "host \(host): cannot run \(executable): \(error)", exitCode: 3)
        }
        Posix.close(theirs)
        Posix.close(pipe.write)
        fd = mine
        errors = pipe.read
    }

    deinit {
        Posix.close(fd)
        Posix.close(errors)
        if status == nil {
            _ = try? Posix.kill(pid, SIGTERM)
            _ = try? wait(seconds: 2)
        }
    }

    static func find(_ command: String) -> String? {
        if command.contains("/") { return FileSystem.isExecutableFile(command) ? command : nil }
        let path = Environment.nonEmpty("PATH") ?? "/usr/bin:/bin"
        return path.split(separator: ":").map { String($0) + "/" + command }.first(where: FileSystem.isExecutableFile)
    }

    /// Whatever ssh printed so far (never blocks).
    func drainErrors() {
        var buf = [UInt8](repeating: 0, count: 4096)
        while true {
            let r = try? buf.withUnsafeMutableBytes { try Posix.readSome(errors, into: $0) }
            guard case let .done(n)? = r, n > 0 else { return }
            errorText += buf[0..<n]
            if errorText.count > SSHTunnel.errorLimit { errorText.removeFirst(errorText.count - SSHTunnel.errorLimit) }
        }
    }

    private func wait(seconds: Int) throws -> Posix.WaitResult? {
        let deadline = Posix.monotonicNanoseconds() + Int64(seconds) * 1_000_000_000
        while status == nil, Posix.monotonicNanoseconds() < deadline {
            status = try Posix.reap(pid)
            if status == nil { Posix.sleep(nanoseconds: 10_000_000) }
        }
        return status
    }

    /// Why the tunnel ended: ssh's own words, classified, naming the host.
    func failure(_ what: String) -> CtlError {
        _ = try? wait(seconds: 5)
        drainErrors()
        // ssh ends its lines with "\r\n" (it may have a tty's habits): the "\r" is not part of the message.
        let raw = errorText.split(separator: 0x0a).map { line in
            TerminalText.escape(String(decoding: line.last == 0x0d ? line.dropLast() : line, as: UTF8.self))
        }
        let lines = raw.filter { !$0.isEmpty && !$0.hasPrefix("Warning: Permanently added") }
        let said = lines.suffix(3).joined(separator: " / ")
        var code: Int32? = nil
        if case let .exited(_, c)? = status { code = c }
        let why: String
        if said.contains("Could not resolve hostname") {
            why = "unknown host"
        } else if ["Connection refused", "No route to host", "Connection timed out", "Network is unreachable", "timed out"].contains(where: said.contains) {
            why = "unreachable"
        } else if said.contains("Permission denied") || said.contains("Host key verification failed") || said.contains("Too many authentication failures") {
            why = "SSH authentication failed"
        } else if said.contains("cannot reach swarmd") || said.contains("refusing") {
            why = "no swarmd answering there"
        } else if code == 127 {
            why = "no swarmctl on the host (set \(SSHTunnel.remoteCtlVariable) to its path there)"
        } else {
            why = what
        }
        var message = "host \(host): \(why)"
        if !said.isEmpty { message += ": " + said }
        else if let code { message += " (ssh exited with status \(code))" }
        return CtlError(description: message, exitCode: 3)
    }
}

/// `swarmctl dial-stdio`: what `--host ssh://…` runs on the host. Connects
/// to the local control socket (with the usual checks of who listens there)
/// and copies bytes both ways until either side closes.
struct DialStdio: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "dial-stdio",
        abstract: "Connect stdin and stdout to swarmd's control socket (run by --host ssh://… on the remote host).",
        shouldDisplay: false)

    @OptionGroup var global: GlobalOptions

    func run() throws {
        try execute {
            guard global.host == nil else { throw CtlError(description: "dial-stdio is local: it takes --socket, not --host", exitCode: 64) }
            let client = try Client(global)
            try StdioRelay(socket: client.fd, input: 0, output: 1).run()
        }
    }
}

/// Copies input → socket and socket → output, a chunk at a time, until the
/// socket closes; when input ends first, the socket's write side is shut so
/// swarmd sees the end of the requests and still sends its answers.
struct StdioRelay {
    let socket: Int32
    let input: Int32
    let output: Int32

    func run() throws {
        var inputOpen = true
        var buf = [UInt8](repeating: 0, count: 65536)
        while true {
            var set: [(fd: Int32, events: Int16)] = [(socket, Int16(POLLIN))]
            if inputOpen { set.append((input, Int16(POLLIN))) }
            let revents = try Posix.poll(set, timeoutNanoseconds: nil)
            if revents[0] != 0 {
                let n = try buf.withUnsafeMutableBytes { try Posix.read(socket, into: $0) }
                if n == 0 { return }
                try Posix.writeFully(output, Array(buf[0..<n]), subject: "stdout")
            }
            if inputOpen, revents.count > 1, revents[1] != 0 {
                let n = try buf.withUnsafeMutableBytes { try Posix.read(input, into: $0) }
                if n == 0 {
                    inputOpen = false
                    try Sockets.shutdown(socket, .write)
                } else {
                    try Posix.writeFully(socket, Array(buf[0..<n]), subject: "the control socket")
                }
            }
        }
    }
}
