import ArgumentParser
import Foundation
import Glibc
import SwarmProtocol
import SwarmSystem

struct Start: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Validate and start apps from config files, or start a stopped app by name.",
        discussion: "With no swarmd reachable, one is started in the background (its log in the state dir), unless --no-autostart.")
    @OptionGroup var global: GlobalOptions
    @Flag(help: "Replace a running app of the same name.") var replace = false
    @Flag(name: .customLong("no-autostart"), help: "Fail instead of starting swarmd when none answers.") var noAutostart = false
    @Option(name: .customLong("state-dir"), help: ArgumentHelp("State dir of an autostarted swarmd.", valueName: "dir")) var stateDir: String?
    @Argument(help: ArgumentHelp("Config files (or names of stopped apps).", valueName: "app.conf")) var files: [String]

    func validate() throws {
        guard !files.isEmpty else { throw ValidationError("give at least one config file") }
    }

    func run() throws {
        // The daemon reads the files: send absolute paths.
        let cwd = FileManager.default.currentDirectoryPath
        let paths = files.map { f -> String in
            if f.hasPrefix("/") { return f }
            if !f.contains("/") && !f.hasSuffix(".conf") && !FileManager.default.fileExists(atPath: f) { return f }
            return cwd + "/" + f
        }
        try execute {
            let client: Client
            do {
                client = try Client(path: global.socketPath)
            } catch let e as CtlError where e.exitCode == 3 && !noAutostart {
                try autostart()
                client = try Client(path: global.socketPath)
            }
            let r = try client.call(client.request(.start, files: paths, replace: replace))
            if let m = r.message { printOut(m) }
        }
    }

    /// Starts swarmd detached (own process group, stdio to its log) and waits for its socket.
    func autostart() throws {
        let me = URL(fileURLWithPath: CommandLine.arguments[0]).resolvingSymlinksInPath()
        let sibling = me.deletingLastPathComponent().appendingPathComponent("swarmd").path
        var executable = sibling
        if Glibc.access(sibling, X_OK) != 0 {
            let path = ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin"
            let candidates: [String] = path.split(separator: ":").map { String($0) + "/swarmd" }
            guard let found = candidates.first(where: { Glibc.access($0, X_OK) == 0 }) else {
                throw CtlError(description: "swarmd is not running and no swarmd binary was found next to swarmctl or in PATH", exitCode: 3)
            }
            executable = found
        }
        let state = stateDir ?? ProcessInfo.processInfo.environment["SWARM_STATE_DIR"] ?? defaultStateDir()
        try Posix.mkdirs(state, mode: 0o700)
        let logPath = state + "/swarmd.log"
        let logFD = try Posix.open(logPath, O_WRONLY | O_CREAT | O_APPEND, mode: 0o600)
        defer { Posix.close(logFD) }
        let devNull = try Posix.open("/dev/null", O_RDWR)
        defer { Posix.close(devNull) }
        let env = ProcessInfo.processInfo.environment.map { "\($0.key)=\($0.value)" }
        var plan = SpawnPlan(executable: executable, argv: [executable, "--socket", global.socketPath, "--state-dir", state],
                             environment: env, setListenPID: false, cwd: "/", fds: [], stdin: devNull, stdout: logFD, stderr: logFD)
        plan.parentDeathSignal = 0
        let pid = try Spawner.spawn(plan)
        printErr("swarmctl: started swarmd (pid \(pid)), log \(logPath)")
        let deadline = Posix.monotonicNanoseconds() + 10_000_000_000
        while Posix.monotonicNanoseconds() < deadline {
            if let fd = try? Sockets.connectUnix(global.socketPath) {
                Posix.close(fd)
                return
            }
            var status: Int32 = 0
            if waitpid(pid, &status, WNOHANG) == pid {
                throw CtlError(description: "swarmd exited at once (status \(status >> 8)); see \(logPath)", exitCode: 3)
            }
            usleep(20_000)
        }
        throw CtlError(description: "swarmd did not open \(global.socketPath) within 10s; see \(logPath)", exitCode: 3)
    }

    func defaultStateDir() -> String {
        if getuid() == 0 { return "/var/lib/swarm" }
        return (Users.homeDirectory() ?? "/tmp") + "/.local/state/swarm"
    }
}

struct Reload: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Re-read an app's config and replace its workers one by one, without dropping a connection.",
        discussion: "Returns when every worker is replaced, or non-zero with the reason when the new version failed and was rolled back.")
    @OptionGroup var global: GlobalOptions
    @Flag(help: "Print progress events as JSON lines.") var json = false
    @Argument(help: "App name, or 'all'.") var name: String

    func validate() throws { try validateName(name) }

    func run() throws {
        try execute {
            let client = try Client(path: global.socketPath)
            do {
                var printed = false
                let r = try client.call(client.request(.reload, name: name)) { event in
                    guard let e = event.event else { return }
                    printed = true
                    if json { printOut(String(decoding: Codec.encode(e).dropLast(), as: UTF8.self)) } else { printOut(e.message) }
                }
                if json { printOut(#"{"ok":true}"#) } else if !printed, let m = r.message { printOut(m) }
            } catch let e as CtlError {
                if json { printOut(String(decoding: Codec.encode(["ok": "false", "error": e.description]).dropLast(), as: UTF8.self)) }
                throw e
            }
        }
    }
}
