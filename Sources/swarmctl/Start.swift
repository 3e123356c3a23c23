import ArgumentParser
import SwarmProtocol
import SwarmSystem

struct Start: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Validate and start apps from config files, start stopped apps by name ('all': every stopped app), or start a command with no config file (--name … -- CMD).",
        discussion: """
            A word that is an app name (a-z, 0-9, _ and -) names an app swarmd knows; anything else is a config file \
            (relative paths are relative to the current directory). To start a config file whose name looks like an app \
            name, write ./NAME. With no swarmd reachable, one is started in the background (its log in the state dir), \
            unless --no-autostart.

            Quick start, as `pm2 start server.js -i 4`: swarmctl start --name web -i 4 --listen 127.0.0.1:3000 -- node server.js. \
            swarmd writes the equivalent config to <state-dir>/apps/NAME.conf and starts it: the app is remembered, \
            `reload NAME` restarts it on the code now on disk with the same command, `status` shows that file, \
            `delete NAME` removes it. With --listen, PORT is the port and a worker's own bind() of that port gets \
            swarm's socket (intercept), so `app.listen(process.env.PORT)` works unchanged.
            """)
    @OptionGroup var global: GlobalOptions
    @Flag(help: "Replace a running app of the same name.") var replace = false
    @Flag(name: .customLong("no-autostart"), help: "Fail instead of starting swarmd when none answers.") var noAutostart = false
    @Option(name: .customLong("state-dir"), help: ArgumentHelp("State dir of an autostarted swarmd (env SWARM_STATE_DIR).", valueName: "dir"))
    var stateDir: String?
    @Option(help: ArgumentHelp("Quick start: the new app's name (a-z, 0-9, _ and -).", valueName: "name")) var name: String?
    @Option(name: [.customShort("i"), .customLong("instances")],
            help: ArgumentHelp("Quick start: number of workers, or 'max' (one per CPU swarmd may use). Default 1.", valueName: "n|max"))
    var instances: String?
    @Option(help: ArgumentHelp("Quick start: listen here (HOST:PORT, [V6]:PORT or unix:PATH); without it the app has no socket.",
                               valueName: "addr"))
    var listen: String?
    @Option(name: .customLong("env"), help: ArgumentHelp("Quick start: set KEY=VALUE in the workers' environment (repeatable).", valueName: "K=V"))
    var env: [String] = []
    @Option(help: ArgumentHelp("Quick start: the workers' directory (default: the current one).", valueName: "dir")) var cwd: String?
    @Argument(help: ArgumentHelp("Config files, names of stopped apps, or 'all'; with --name, the command (after '--').", valueName: "app.conf|name|all|-- cmd"))
    var files: [String] = []

    var isQuickStart: Bool { name != nil || instances != nil || listen != nil || !env.isEmpty || cwd != nil }

    func validate() throws {
        if isQuickStart {
            guard name != nil else {
                throw ValidationError("--name is required for a quick start: swarmctl start --name web -i 4 --listen 127.0.0.1:3000 -- node server.js")
            }
            guard !files.isEmpty, !(files.first ?? "").isEmpty else {
                throw ValidationError("command: missing: give the program and its arguments after '--', like -- node server.js")
            }
            return
        }
        guard !files.isEmpty else { throw ValidationError("give at least one config file or app name") }
    }

    /// One word of the command line, sorted out before anything is sent.
    enum Word: Equatable {
        case everyStopped
        case name(String)
        /// Absolute: swarmd reads the file with a cwd of its own.
        case file(String)
    }

    static func classify(_ words: [String], cwd: String) throws -> [Word] {
        try words.map { w in
            if w == AppName.all { return .everyStopped }
            if AppName.isValid(w) { return .name(w) }
            return .file(try FileSystem.absolute(w, relativeTo: cwd))
        }
    }

    func run() throws {
        if isQuickStart { return try runQuickStart() }
        try execute {
            let cwd = try FileSystem.currentDirectory()
            let words = try Start.classify(files, cwd: cwd)
            let client = try connect(cwd: cwd)
            var sent: [String] = []
            if words.contains(where: { if case .file = $0 { return false } else { return true } }) {
                // Names are checked here, against what swarmd knows, so an unknown one gets a clear answer
                // (swarmd would try to read it as a file), and 'all' becomes the stopped apps.
                guard let report = try client.call(client.request(.status)).status else { throw CtlError(description: "swarmd sent no status") }
                var unknown: [String] = []
                for w in words {
                    switch w {
                    case .everyStopped:
                        sent += report.apps.filter { $0.state == "stopped" }.map(\.name).filter { !sent.contains($0) }
                    case let .name(n):
                        if report.apps.contains(where: { $0.name == n }) { if !sent.contains(n) { sent.append(n) } } else { unknown.append(n) }
                    case let .file(path):
                        sent.append(path)
                    }
                }
                if !unknown.isEmpty {
                    let hint = unknown.filter { FileSystem.exists(cwd + "/" + $0) }
                    throw CtlError(description: "no app named \(unknown.map { "'\($0)'" }.joined(separator: ", ")) is known to swarmd"
                        + (hint.isEmpty ? "" : " (to start the config file \(hint[0]) here, write ./\(hint[0]))"))
                }
                if sent.isEmpty {
                    printOut("no stopped apps to start")
                    return
                }
            } else {
                sent = words.compactMap { if case let .file(p) = $0 { return p } else { return nil } }
            }
            let r = try client.call(client.request(.start, files: sent, replace: replace))
            if let m = r.message { printOut(m) }
        }
    }

    /// Everything is checked by swarmd (each error names its flag); swarmctl only
    /// makes the paths absolute and finds the program in the caller's PATH,
    /// which is what a user typing `node` means (swarmd's PATH may differ).
    func runQuickStart() throws {
        try execute {
            let here = try FileSystem.currentDirectory()
            var command = files
            let dir: String
            if global.isLocal {
                dir = try FileSystem.absolute(cwd ?? here, relativeTo: here)
                let searchPath = Environment.get("PATH") ?? "/usr/local/bin:/usr/bin:/bin"
                guard let program = QuickStartRequest.resolveProgram(command[0], searchPath: searchPath, cwd: here,
                                                                     isExecutable: FileSystem.isExecutableFile) else {
                    throw CtlError(description: "command: '\(TerminalText.escape(command[0]))' was not found in PATH (\(TerminalText.escape(searchPath)))",
                                   exitCode: 64)
                }
                command[0] = program
            } else {
                // Another host: this machine's directory and PATH mean nothing there; its swarmd resolves the program.
                guard let cwd else {
                    throw CtlError(description: "--cwd: required with --host (the current directory is this machine's, not the host's)", exitCode: 64)
                }
                dir = cwd
            }
            let request = QuickStartRequest(name: name ?? "", instances: instances ?? "1", listen: listen, env: env, command: command, cwd: dir)
            let client = try connect(cwd: here)
            let r = try client.call(client.request(.start, replace: replace, quickStart: request))
            if let m = r.message { printOut(m) }
        }
    }

    func connect(cwd: String) throws -> Client {
        do {
            return try Client(global)
        } catch let e as CtlError where e.exitCode == 3 && !noAutostart && global.isLocal {
            try autostart(cwd: cwd)
            return try Client(global)
        }
    }

    /// Starts swarmd detached (own process group, stdio to its log) and waits for its socket.
    func autostart(cwd: String) throws {
        let executable = try Start.findSwarmd()
        // swarmd runs in "/": every path it is given must be absolute.
        let state = try FileSystem.absolute(stateDir ?? SwarmDefaults.stateDirectory, relativeTo: cwd)
        let socket = try FileSystem.absolute(global.socketPath, relativeTo: cwd)
        let dir = try TrustedDirectory(path: state, create: 0o700)
        let log = try dir.openAppendFile("swarmd.log", mode: 0o600)
        defer { log.close() }
        let devNull = try FileSystem.openDevNull()
        defer { Posix.close(devNull) }
        var plan = SpawnPlan(executable: executable, argv: [executable, "--socket", socket, "--state-dir", state],
                             environment: Environment.all, setListenPID: false, cwd: "/", fds: [], stdin: devNull,
                             stdout: log.fd, stderr: log.fd)
        plan.parentDeathSignal = 0
        let pid = try Spawner.spawn(plan)
        printErr("swarmctl: started swarmd (pid \(pid)), log \(log.path)")
        let deadline = Posix.monotonicNanoseconds() + 10_000_000_000
        while Posix.monotonicNanoseconds() < deadline {
            if let fd = try? Sockets.connectUnix(global.socketPath) {
                Posix.close(fd)
                return
            }
            switch try Posix.reap(pid) {
            case let .exited(_, code)?:
                throw CtlError(description: "swarmd exited at once (status \(code)); see \(log.path)", exitCode: 3)
            case let .signaled(_, sig, _)?:
                throw CtlError(description: "swarmd was killed by signal \(sig) at once; see \(log.path)", exitCode: 3)
            case nil:
                break
            }
            Posix.sleep(nanoseconds: 20_000_000)
        }
        throw CtlError(description: "swarmd did not open \(global.socketPath) within 10s; see \(log.path)", exitCode: 3)
    }

    /// swarmd next to this swarmctl, else the first in PATH.
    static func findSwarmd() throws -> String {
        if let me = try? FileSystem.readLink("/proc/self/exe") {
            let sibling = FileSystem.split(me).directory + "/swarmd"
            if FileSystem.isExecutableFile(sibling) { return sibling }
        }
        let path = Environment.nonEmpty("PATH") ?? "/usr/bin:/bin"
        if let found = path.split(separator: ":").map({ String($0) + "/swarmd" }).first(where: FileSystem.isExecutableFile) {
            return found
        }
        throw CtlError(description: "swarmd is not running and no swarmd binary was found next to swarmctl or in PATH", exitCode: 3)
    }
}
