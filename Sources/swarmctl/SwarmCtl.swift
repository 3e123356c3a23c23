import ArgumentParser
import Foundation
import Glibc
import SwarmProtocol
import SwarmSystem

@main
enum Main {
    /// `swarmctl --socket X status` as well as `swarmctl status --socket X`:
    /// global options written before the subcommand are moved after it.
    static func main() {
        var args = Array(CommandLine.arguments.dropFirst())
        var moved: [String] = []
        var i = 0
        while i < args.count, args[i].hasPrefix("-") {
            if args[i] == "--socket", i + 1 < args.count {
                moved += [args[i], args[i + 1]]
                args.removeSubrange(i...(i + 1))
            } else if args[i].hasPrefix("--socket=") {
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
        SwarmCtl.main(args)
    }
}

struct SwarmCtl: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "swarmctl",
        abstract: "Drive swarmd over its control socket.",
        version: "0.1.0",
        subcommands: [Start.self, Stop.self, Restart.self, Delete.self, Reload.self, Scale.self, Status.self, Logs.self,
                      Ping.self, Version.self, Shutdown.self, DaemonReexec.self])
}

struct GlobalOptions: ParsableArguments {
    @Option(help: ArgumentHelp("swarmd's control socket (env SWARM_SOCKET).", valueName: "path"))
    var socket: String?

    var socketPath: String {
        if let socket { return socket }
        if let env = ProcessInfo.processInfo.environment["SWARM_SOCKET"], !env.isEmpty { return env }
        if getuid() == 0 { return "/run/swarm/swarmd.sock" }
        if let xdg = ProcessInfo.processInfo.environment["XDG_RUNTIME_DIR"], !xdg.isEmpty { return "\(xdg)/swarm/swarmd.sock" }
        return "/tmp/swarm-\(getuid())/swarmd.sock"
    }
}

/// Runs `body`, printing a failure as one line (plus details) and exiting non-zero.
func execute(_ body: () throws -> Void) throws {
    do {
        try body()
    } catch let e as CtlError {
        printErr("swarmctl: \(e.description)")
        for d in e.details { printErr("  \(d)") }
        throw ExitCode(e.exitCode)
    } catch let e as FrameError {
        printErr("swarmctl: \(e)")
        throw ExitCode(1)
    }
}

func validateName(_ name: String) throws {
    guard !name.isEmpty, name.count <= 64,
          name.allSatisfy({ ($0 >= "a" && $0 <= "z") || ($0 >= "0" && $0 <= "9") || $0 == "_" || $0 == "-" }) else {
        throw ValidationError("'\(name)' is not an app name (a-z, 0-9, _ and -) or 'all'")
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
            throw ValidationError("the worker count must be a number N, or +N / -N to add or remove N workers; not '\(word)'")
        }
        switch sign {
        case "+": return .by(n)
        case "-": return .by(-n)
        default: return .to(n)
        }
    }

    func validate() throws {
        try validateName(name)
        guard name != "all" else { throw ValidationError("scale takes one app name, not 'all'") }
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
        let client = try Client(path: global.socketPath)
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
        printOut("swarmctl 0.1.0, protocol \(ControlProtocol.version)")
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
            let client = try Client(path: global.socketPath)
            let r = try client.call(client.request(.daemonReexec))
            if let m = r.message { printOut(m) }
            // Wait for the new binary to answer on the same socket.
            let deadline = Posix.monotonicNanoseconds() + 10_000_000_000
            while Posix.monotonicNanoseconds() < deadline {
                if let c = try? Client(path: global.socketPath), let v = try? c.call(c.request(.version)) {
                    printOut(v.message ?? "swarmd answers again")
                    return
                }
                usleep(20_000)
            }
            throw CtlError(description: "swarmd did not answer within 10s after re-executing")
        }
    }
}
