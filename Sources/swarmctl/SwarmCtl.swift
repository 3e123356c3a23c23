import ArgumentParser
import Glibc
import SwarmProtocol
import SwarmSystem

@main
enum Main {
    /// `swarmctl --socket X status` as well as `swarmctl status --socket X`:
    /// global options written before the subcommand are moved after it.
    static func main() {
        let given = Array(CommandLine.arguments.dropFirst())
        if let ping = QuickPing(given) { exit(ping.run()) }
        let args = arrange(given)
        do {
            if let hosts = try Fleet.hosts(in: args) { exit(Fleet.run(args, hosts: hosts)) }
        } catch let e as CtlError {
            printErr("swarmctl: \(e.description)")
            exit(e.exitCode)
        } catch {
            printErr("swarmctl: \(error)")
            exit(1)
        }
        do {
            var command = try SwarmCtl.parseAsRoot(args)
            try command.run()
        } catch {
            // As ParsableCommand.main does, but the argument parser's own messages (which quote
            // the command line) are escaped like everything else swarmctl prints.
            let code = SwarmCtl.exitCode(for: error)
            let message = SwarmCtl.fullMessage(for: error)
            if !message.isEmpty {
                Console.write(TerminalText.escapeKeepingNewlines(message) + "\n", to: code == .success ? .output : .error)
            }
            exit(code.rawValue)
        }
    }

    static let globalOptionsWithValue: Set<String> = ["--socket", "--trust-uid", "--host"]

    static func arrange(_ input: [String]) -> [String] {
        var args = input
        var moved: [String] = []
        var i = 0
        while i < args.count, args[i].hasPrefix("-") {
            if globalOptionsWithValue.contains(args[i]), i + 1 < args.count {
                moved += [args[i], args[i + 1]]
                args.removeSubrange(i...(i + 1))
            } else if globalOptionsWithValue.contains(where: { args[i].hasPrefix($0 + "=") }) {
                moved.append(args.remove(at: i))
            } else {
                i += 1
            }
        }
        if !moved.isEmpty, i < args.count { args.insert(contentsOf: moved, at: i + 1) } else { args += moved }
        // `scale web -2`: a negative count is not an option; it goes last, after "--".
        if i < args.count, args[i] == "scale", !args.contains("--"),
           let n = args[(i + 1)...].firstIndex(where: { $0.count > 1 && $0.hasPrefix("-") && $0.dropFirst().allSatisfy(\.isWholeNumber) }) {
            args += ["--", args.remove(at: n)]
        }
        // `start -i -1`: the parser would take "-1" for an option and say only "missing value";
        // attached, it reaches swarmd, whose error names the range.
        if i < args.count, args[i] == "start" {
            let end = args.firstIndex(of: "--") ?? args.count
            var j = i + 1
            while j + 1 < end {
                if args[j] == "-i" || args[j] == "--instances", args[j + 1].hasPrefix("-"), args[j + 1].count > 1,
                   args[j + 1].dropFirst().allSatisfy(\.isWholeNumber) {
                    args[j...(j + 1)] = ["--instances=" + args[j + 1]]
                }
                j += 1
            }
        }
        return args
    }
}

/// `swarmctl ping [--socket PATH] [--trust-uid UID]…`, the health check
/// scripts run in loops, without the argument parser: building its tree of
/// every subcommand (type names, conformance lookups, reflection of every
/// option) was a third of ping's CPU time (issue 18). Anything else, help
/// and errors included, goes through the parser as before.
struct QuickPing {
    var socket: String?
    var trust: [String] = []

    /// `ping` with global options before or after it; nil for anything else.
    init?(_ args: [String]) {
        guard Environment.nonEmpty(GlobalOptions.hostVariable) == nil else { return nil }
        var sawPing = false
        var i = 0
        while i < args.count {
            let a = args[i]
            if a == "ping" && !sawPing {
                sawPing = true
                i += 1
            } else if (a == "--socket" || a == "--trust-uid"), i + 1 < args.count, !args[i + 1].hasPrefix("-") {
                if a == "--socket" { socket = args[i + 1] } else { trust.append(args[i + 1]) }
                i += 2
            } else if a.hasPrefix("--socket="), a.count > 9 {
                socket = String(a.dropFirst(9))
                i += 1
            } else if a.hasPrefix("--trust-uid="), a.count > 12 {
                trust.append(String(a.dropFirst(12)))
                i += 1
            } else {
                return nil
            }
        }
        guard sawPing else { return nil }
    }

    /// swarmd's answer to `request`, byte for byte: compared instead of decoded
    /// (JSON coding was a quarter of ping's own CPU time). Anything else is decoded.
    static let request = Array(#"{"id":1,"v":1,"verb":"ping"}"#.utf8) + [0x0a]
    static let pong = Array(#"{"id":1,"kind":"result","message":"pong","ok":true,"v":1}"#.utf8)

    func run() -> Int32 {
        // Not through GlobalOptions: its property wrappers cost a lookup of the parser's metadata.
        do {
            try execute {
                let client = try Client(path: socket ?? SwarmDefaults.socketPath, trusting: try GlobalOptions.parseTrusted(trust),
                                        builtInPath: GlobalOptions.isBuiltIn(socket))
                do { try Sockets.sendAll(client.fd, QuickPing.request, timeoutNanoseconds: 60_000_000_000) } catch { throw client.lost(error) }
                while let line = try client.receiveLine() {
                    if line == QuickPing.pong { return printOut("pong") }
                    let r = try Codec.decodeResponse(line)
                    guard r.id == 1 || r.id == 0, r.kind == .result else { continue }
                    if r.ok == false { throw CtlError(description: r.error ?? "failed", details: r.details ?? []) }
                    return printOut(r.message ?? "pong")
                }
                throw CtlError(description: "swarmd closed the connection before answering (it may have stopped)")
            }
            return 0
        } catch let e as ExitCode {
            return e.rawValue
        } catch {
            printErr("swarmctl: \(error)")
            return 1
        }
    }
}

struct SwarmCtl: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "swarmctl",
        abstract: "Drive swarmd over its control socket.",
        version: SwarmVersion.current,
        subcommands: [Start.self, Stop.self, Restart.self, Delete.self, Reload.self, Scale.self, Status.self, Logs.self, Events.self,
                      Ping.self, Version.self, Shutdown.self, DaemonReexec.self, Drain.self, Undrain.self, DialStdio.self])
}

struct GlobalOptions: ParsableArguments {
    @Option(help: ArgumentHelp("swarmd's control socket (env SWARM_SOCKET).", valueName: "path"))
    var socket: String?

    @Option(name: .customLong("trust-uid"),
            help: ArgumentHelp("Also talk to a swarmd running as this uid or user (env SWARM_TRUST_UID, comma-separated); root and your own uid are always trusted.",
                               valueName: "uid"))
    var trustUID: [String] = []

    @Option(help: ArgumentHelp("A swarmd on another host, through ssh: ssh://[user@]host[:port][/path/to/swarmd.sock] (env SWARM_HOST; ssh is $SWARM_SSH or 'ssh'; the host's swarmctl is $SWARM_REMOTE_SWARMCTL or 'swarmctl').",
                               valueName: "ssh://host"))
    var host: String?

    static let hostVariable = "SWARM_HOST"

    /// No --host / SWARM_HOST: the swarmd is this machine's (and may be started here).
    var isLocal: Bool { host == nil && Environment.nonEmpty(GlobalOptions.hostVariable) == nil }

    /// --host, else SWARM_HOST; nil: the local socket.
    func remoteHosts() throws -> [RemoteHost]? {
        guard let text = host ?? Environment.nonEmpty(GlobalOptions.hostVariable) else { return nil }
        do {
            let hosts = try RemoteHost.parseList(text)
            // Several hosts are Fleet's (main), which runs one swarmctl per host.
            if hosts.count > 1 { throw CtlError(description: "--host: several hosts are run one swarmctl per host; this one got \(hosts.count)", exitCode: 70) }
            if socket != nil { throw CtlError(description: "--socket and --host: give the socket in the address (ssh://host/path/to/swarmd.sock)", exitCode: 64) }
            return hosts
        } catch let e as RemoteHost.ParseError {
            throw CtlError(description: e.description, exitCode: 64)
        }
    }

    var socketPath: String {
        if let socket { return socket }
        return SwarmDefaults.socketPath
    }

    /// Neither --socket nor SWARM_SOCKET chose the path: swarmctl vouches for its directory.
    var isBuiltInSocket: Bool { GlobalOptions.isBuiltIn(socket) }

    static func isBuiltIn(_ socket: String?) -> Bool {
        socket == nil && Environment.nonEmpty(SwarmDefaults.socketVariable) == nil
    }

    func trustedUIDs() throws -> [UInt32] { try GlobalOptions.parseTrusted(trustUID) }

    /// --trust-uid values and SWARM_TRUST_UID (both may list several, comma-separated).
    static func parseTrusted(_ options: [String]) throws -> [UInt32] {
        let words = options.flatMap { $0.split(separator: ",") }
            + (Environment.get(SwarmDefaults.trustUIDVariable) ?? "").split(separator: ",")
        return try words.map { word in
            let w = word.trimmingSpaces
            guard let uid = Users.uid(w) else {
                throw CtlError(description: "--trust-uid / \(SwarmDefaults.trustUIDVariable): no user or uid '\(w)'", exitCode: 64)
            }
            return uid
        }
    }
}

extension Substring {
    var trimmingSpaces: String { String(drop(while: { $0 == " " }).reversed().drop(while: { $0 == " " }).reversed()) }
}

/// Runs `body`, printing a failure as one line (plus details) and exiting non-zero.
func execute(_ body: () throws -> Void) throws {
    do {
        try body()
    } catch let e as CtlError {
        printErr("swarmctl: \(e.description)")
        for d in e.details { printErr("  \(TerminalText.escape(d))") }
        throw ExitCode(e.exitCode)
    } catch let e as FrameError {
        printErr("swarmctl: \(e)")
        throw ExitCode(1)
    } catch let e as SystemError {
        printErr("swarmctl: \(e)")
        throw ExitCode(1)
    } catch let e as FileError {
        printErr("swarmctl: \(e)")
        throw ExitCode(1)
    }
}

func validateName(_ name: String) throws {
    guard AppName.isSelector(name) else {
        throw ValidationError("'\(TerminalText.escape(name))' is not an app name (a-z, 0-9, _ and -) or 'all'")
    }
}

/// stop, restart, delete: NAME|all, answered once done.
protocol SimpleVerb: ParsableCommand {
    static var verb: Verb { get }
    var global: GlobalOptions { get }
    var name: String { get }
}

extension SimpleVerb {
    func validate() throws { try validateName(name) }

    func run() throws { try call(global, Self.verb, name: name, fallback: nil) }
}

struct Stop: SimpleVerb {
    static let configuration = CommandConfiguration(abstract: "Gracefully stop an app's workers (the app stays known).")
    static let verb = Verb.stop
    @OptionGroup var global: GlobalOptions
    @Argument(help: "App name, or 'all'.") var name: String
}

struct Restart: SimpleVerb {
    static let configuration = CommandConfiguration(abstract: "Replace all of an app's workers at once (not rolling: see reload).")
    static let verb = Verb.restart
    @OptionGroup var global: GlobalOptions
    @Argument(help: "App name, or 'all'.") var name: String
}

struct Delete: SimpleVerb {
    static let configuration = CommandConfiguration(abstract: "Stop an app and forget it.")
    static let verb = Verb.delete
    @OptionGroup var global: GlobalOptions
    @Argument(help: "App name, or 'all'.") var name: String
}

struct Scale: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Change an app's number of workers; removes the highest slots first.")
    @OptionGroup var global: GlobalOptions
    @Argument(help: "App name.") var name: String
    // "-2" reaches here because Main moves it after "--".
    @Argument(help: "The new number of workers, or +N / -N to add or remove N.") var count: String

    enum Change { case to(Int), by(Int) }

    /// "3" → to(3); "+2" → by(2); "-1" → by(-1).
    static func change(_ word: String) throws -> Change {
        let sign = word.first.flatMap { "+-".contains($0) ? $0 : nil }
        let digits = sign == nil ? Substring(word) : word.dropFirst()
        // The range is swarmd's to check: it knows the app's current count.
        guard !digits.isEmpty, digits.allSatisfy({ $0.isASCII && $0.isNumber }), let n = Int(digits) else {
            throw ValidationError("the worker count must be a number N, or +N / -N to add or remove N workers; not '\(TerminalText.escape(word))'")
        }
        switch sign {
        case "+": return .by(n)
        case "-": return .by(-n)
        default: return .to(n)
        }
    }

    func validate() throws {
        try validateName(name)
        guard name != AppName.all else { throw ValidationError("scale takes one app name, not 'all'") }
        _ = try Self.change(count)
    }

    func run() throws {
        switch try Self.change(count) {
        case let .to(n): try call(global, .scale, name: name, count: n, fallback: nil)
        case let .by(d): try call(global, .scale, name: name, delta: d, fallback: nil)
        }
    }
}

/// One request; its message (or `fallback`) printed; failures as one line.
func call(_ global: GlobalOptions, _ verb: Verb, name: String? = nil, count: Int? = nil, delta: Int? = nil, fallback: String?) throws {
    try execute {
        let client = try Client(global)
        let r = try client.call(client.request(verb, name: name, count: count, delta: delta))
        if let m = r.message ?? fallback { printOut(m) }
    }
}

struct Ping: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Check that swarmd answers.")
    @OptionGroup var global: GlobalOptions

    func run() throws { try call(global, .ping, fallback: "pong") }
}

struct Version: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Print swarmctl's and swarmd's versions.")
    @OptionGroup var global: GlobalOptions

    func run() throws {
        printOut("swarmctl \(SwarmVersion.current), protocol \(ControlProtocol.version)")
        try call(global, .version, fallback: nil)
    }
}

struct Shutdown: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Stop every worker and make swarmd exit (like SIGTERM).")
    @OptionGroup var global: GlobalOptions

    func run() throws { try call(global, .shutdown, fallback: "swarmd stopped") }
}

struct DaemonReexec: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "daemon-reexec",
        abstract: "Replace the swarmd binary in place (same pid); workers and sockets are untouched.",
        discussion: "Like systemctl daemon-reexec: install the new swarmd over the old path, then run this (or send SIGUSR2).")
    @OptionGroup var global: GlobalOptions

    func run() throws {
        try execute {
            let client = try Client(global)
            let r = try client.call(client.request(.daemonReexec))
            if let m = r.message { printOut(m) }
            // Wait for the new binary to answer on the same socket.
            let deadline = Posix.monotonicNanoseconds() + 10_000_000_000
            while Posix.monotonicNanoseconds() < deadline {
                if let c = try? Client(global), let v = try? c.call(c.request(.version)) {
                    printOut(v.message ?? "swarmd answers again")
                    return
                }
                Posix.sleep(nanoseconds: 20_000_000)
            }
            throw CtlError(description: "swarmd did not answer within 10s after re-executing")
        }
    }
}

struct Drain: SimpleVerb {
    static let configuration = CommandConfiguration(
        abstract: "Make swarmd's HAProxy agent answer 'drain' for an app (no new connections to this host); workers keep running.",
        discussion: "Remembered across swarmd restarts until 'undrain'. Needs swarmd --agent to have an effect.")
    static let verb = Verb.drain
    @OptionGroup var global: GlobalOptions
    @Argument(help: "App name, or 'all'.") var name: String
}

struct Undrain: SimpleVerb {
    static let configuration = CommandConfiguration(abstract: "End a drain: the HAProxy agent answers by ready workers again.")
    static let verb = Verb.undrain
    @OptionGroup var global: GlobalOptions
    @Argument(help: "App name, or 'all'.") var name: String
}
