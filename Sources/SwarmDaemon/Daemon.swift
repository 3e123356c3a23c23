import Foundation
import Glibc
import Logging
import SwarmConfig
import SwarmCore
import SwarmProtocol
import SwarmSystem

public let swarmVersion = "0.1.0"

/// swarmd's settings, from its command line and environment.
public struct DaemonOptions {
    public var socketPath: String
    public var stateDir: String
    public var appsDir: String?
    public var configFiles: [String]
    /// "auto" (journal under systemd), "file" or "journal".
    public var logTarget: String
    /// The journal socket (tests point it at their own listener).
    public var journalSocket: String
    /// Group allowed on the control socket (mode 0660) besides the owner.
    public var socketGroup: String?

    public init(socketPath: String, stateDir: String, appsDir: String?, configFiles: [String], logTarget: String = "auto",
                journalSocket: String = "/run/systemd/journal/socket", socketGroup: String? = nil) {
        self.socketPath = socketPath
        self.stateDir = stateDir
        self.appsDir = appsDir
        self.configFiles = configFiles
        self.logTarget = logTarget
        self.journalSocket = journalSocket
        self.socketGroup = socketGroup
    }

    /// Defaults: /run/swarm and /var/lib/swarm for root, the XDG places otherwise.
    public static func defaultSocketPath() -> String {
        if let env = ProcessInfo.processInfo.environment["SWARM_SOCKET"], !env.isEmpty { return env }
        if getuid() == 0 { return "/run/swarm/swarmd.sock" }
        if let xdg = ProcessInfo.processInfo.environment["XDG_RUNTIME_DIR"], !xdg.isEmpty { return "\(xdg)/swarm/swarmd.sock" }
        return "/tmp/swarm-\(getuid())/swarmd.sock"
    }

    public static func defaultStateDir() -> String {
        if let env = ProcessInfo.processInfo.environment["SWARM_STATE_DIR"], !env.isEmpty { return env }
        if getuid() == 0 { return "/var/lib/swarm" }
        return (Users.homeDirectory() ?? "/tmp") + "/.local/state/swarm"
    }
}

/// Resources swarmd holds for one live worker process.
final class WorkerIO {
    let id: WorkerID
    let app: String
    let slot: Int
    var pid: Int32 = 0
    var readyPipe: Int32 = -1
    var readySource: EventLoop.Source?

    init(id: WorkerID, app: String, slot: Int) {
        self.id = id
        self.app = app
        self.slot = slot
    }

    func closeReady() {
        readySource?.cancel()
        readySource = nil
        if readyPipe >= 0 { Posix.close(readyPipe) }
        readyPipe = -1
    }
}

/// Output read from an app's workers in the current second, against `[logs] rate`.
struct OutputBudget {
    var bytes: Int64 = 0
    var pausedAt: Int64?
    var pauses = 0
    /// Total time reading was paused.
    var throttledNS: Int64 = 0
}

/// A worker's stdout or stderr pipe; it may outlive the worker (children holding it).
final class OutputPipe {
    let fd: Int32
    let app: String
    let slot: Int
    let pid: Int32
    let stream: String
    var splitter = LineSplitter()
    var source: EventLoop.Source?

    init(fd: Int32, app: String, slot: Int, pid: Int32, stream: String) {
        self.fd = fd
        self.app = app
        self.slot = slot
        self.pid = pid
        self.stream = stream
    }
}

/// The imperative shell: owns the kernel resources, turns kernel events into
/// core events and core actions into system calls, on one thread.
public final class Daemon {
    let options: DaemonOptions
    let loop: EventLoop
    var supervisor = Supervisor()
    var log: Logger
    var startedAt = Posix.monotonicNanoseconds()
    /// This binary's path, read at start: after an upgrade it names the new binary.
    let executablePath = ProcFS.readLink("/proc/self/exe").map { $0.hasSuffix(" (deleted)") ? String($0.dropLast(10)) : $0 } ?? CommandLine.arguments[0]
    let configEnvironment: ConfigEnvironment

    var appSockets: [String: AppSockets] = [:]
    var sinks: [String: LogSink] = [:]
    var workerIO: [WorkerID: WorkerIO] = [:]
    var outputPipes: [ObjectIdentifier: OutputPipe] = [:]
    var journal: JournalWriter?
    var systemdFDs: [(name: String, fd: Int32)] = []
    var signalSources: [EventLoop.Source] = []

    var controlFD: Int32 = -1
    var controlSource: EventLoop.Source?
    var connections: [ObjectIdentifier: Connection] = [:]
    var pending: [RequestID: PendingCommand] = [:]
    var nextRequest: UInt64 = 1
    var housekeeping: EventLoop.Source?
    var sweepSource: EventLoop.Source?
    var controlFromSystemd = false
    var lastBusyAt: Int64?
    var originalNoFile: (soft: UInt64, hard: UInt64)?
    var acceptPausedUntil: Int64?
    var acceptFailing = false
    var outputBudgets: [String: OutputBudget] = [:]
    /// Reload workers started at nice 19, until they are ready.
    var backgroundWorkers: [WorkerID: Int32] = [:]
    /// The CPUs swarmd was started with: `cpu_affinity` is checked against them and "auto" spreads slots over them.
    let allowedCPUs: [Int]
    var cpuSamples: [Int32: (ticks: Int64, at: Int64)] = [:]

    var notifyPath: String
    var notifyFD: Int32 = -1
    var notifySource: EventLoop.Source?

    var events: [SwarmCore.Event] = []
    var feeding = false
    var stateDirty = false
    var stateStore: StateStore
    var lastSystemdStatus = ""
    var initialRequests: Set<RequestID> = []
    var sentReady = false
    var reloadingForSIGHUP: Set<RequestID> = []
    var exitCode: Int32 = 0
    var reuseportCounts: [String: Int] = [:]
    var devNull: Int32 = -1

    public init(options: DaemonOptions) throws {
        self.options = options
        loop = try EventLoop()
        log = Logger(label: "swarmd")
        stateStore = StateStore(directory: options.stateDir)
        notifyPath = "@swarmd-notify-\(getpid())-\(Posix.monotonicNanoseconds() % 1_000_000)"
        let isRoot = getuid() == 0
        let uid = getuid()
        let path = ProcessInfo.processInfo.environment["PATH"] ?? "/usr/local/bin:/usr/bin:/bin"
        let cpus = ProcFS.allowedCPUs()
        allowedCPUs = cpus
        configEnvironment = ConfigEnvironment(
            cpuCount: { ProcFS.usableCPUs() }, isRoot: isRoot, currentUID: uid,
            lookupUser: { Users.lookupUser($0) }, lookupGroup: { Users.lookupGroup($0) }, path: path,
            isExecutable: { p in
                var st = stat()
                return access(p, X_OK) == 0 && stat(p, &st) == 0 && (st.st_mode & S_IFMT) == S_IFREG
            },
            isDirectory: { p in
                var st = stat()
                return stat(p, &st) == 0 && (st.st_mode & S_IFMT) == S_IFDIR
            },
            allowedCPUs: { cpus })
    }

    // MARK: - Start-up

    /// Loads every app first (a bad file given on the command line aborts
    /// before anything starts), then binds, then runs the loop.
    public func run() throws -> Int32 {
        let useJournal = options.logTarget == "journal" || (options.logTarget == "auto" && Systemd.underSystemd && Systemd.journalAvailable)
        if useJournal { journal = try? JournalWriter(socketPath: options.journalSocket) }
        DaemonLogHandler.journal = journal
        log = Logger(label: "swarmd")

        var specs: [AppSpec] = []
        var errors: [String] = []
        for file in options.configFiles {
            do { specs.append(try AppConfig.load(path: file, environment: configEnvironment)) } catch { errors.append(error.description) }
        }
        if let dup = duplicateName(specs) { errors.append("two config files define an app named '\(dup)'") }
        if !errors.isEmpty { throw DaemonError.config(errors) }

        try Posix.mkdirs(options.stateDir, mode: 0o700)
        chmod(options.stateDir, 0o700)
        try Posix.mkdirs(options.stateDir + "/logs", mode: 0o750)
        devNull = try Posix.open("/dev/null", O_RDWR)
        // Every worker costs swarmd a few fds (pipes, sockets): use the whole hard limit.
        originalNoFile = Posix.raiseFileLimit()
        try Spawner.setChildSubreaper()
        Posix.ignore(SIGPIPE)

        if let handover = try Handover.take() {
            // Re-executed: the workers, sockets and pipes are already ours.
            try resume(from: handover)
            return try runLoop()
        }
        systemdFDs = Systemd.listenFDs()
        try setUpSignals()
        try setUpControlSocket()
        try setUpNotifySocket()
        housekeeping = try loop.addPost { [weak self] in self?.afterDispatch() }
        enableTCPMigration()

        // Remembered apps, then the apps directory, then the command line: later wins.
        var byName: [String: (AppSpec, RememberedApp?)] = [:]
        var order: [String] = []
        let (remembered, problem) = stateStore.load()
        if let problem { log.error("\(problem)") }
        for entry in remembered {
            do {
                let spec = try AppConfig.load(path: entry.config, environment: configEnvironment)
                if byName[spec.name] == nil { order.append(spec.name) }
                byName[spec.name] = (spec, entry)
            } catch {
                log.error("Failed to load remembered app '\(entry.name)': \(error.description), ignoring")
            }
        }
        if let dir = options.appsDir {
            let files = ((try? FileManager.default.contentsOfDirectory(atPath: dir)) ?? []).filter { $0.hasSuffix(".conf") }.sorted()
            for file in files {
                do {
                    let spec = try AppConfig.load(path: "\(dir)/\(file)", environment: configEnvironment)
                    if byName[spec.name] == nil { order.append(spec.name) }
                    byName[spec.name] = (spec, nil)
                } catch {
                    log.error("Failed to load \(dir)/\(file): \(error.description), ignoring")
                }
            }
        }
        for spec in specs {
            if byName[spec.name] == nil { order.append(spec.name) }
            byName[spec.name] = (spec, nil)
        }
        log.notice("swarmd \(swarmVersion) pid \(getpid()) control socket \(options.socketPath), state \(options.stateDir)")
        for name in order {
            let (spec, entry) = byName[name]!
            let fromCommandLine = specs.contains { $0.name == name }
            switch bindSockets(for: spec) {
            case let .failure(error):
                if fromCommandLine { throw DaemonError.config(["\(spec.sourcePath): \(error)"]) }
                log.error("Failed to start \(name): \(error), ignoring")
                continue
            case let .success(sockets):
                appSockets[name] = sockets
            }
            if entry?.stopped == true && !fromCommandLine {
                feed(.command(newRequest(nil), .add(spec)))
            } else {
                let id = newRequest(nil)
                initialRequests.insert(id)
                feed(.command(id, .start(spec, replace: false)))
            }
            // A remembered scale is applied as a scale, not by editing the spec: the spec keeps
            // the file's count, so the next save still sees the scale and remembers it.
            if let n = entry?.workers, n != spec.workers {
                feed(.command(newRequest(nil), .scale(name, n)))
            }
        }
        stateDirty = true
        flushState()
        maybeSendReady()
        return try runLoop()
    }

    func runLoop() throws -> Int32 {
        let code = try loop.run()
        Systemd.notify("STOPPING=1")
        cleanUp()
        return code == 0 ? exitCode : code
    }

    func duplicateName(_ specs: [AppSpec]) -> String? {
        var seen = Set<String>()
        for s in specs where !seen.insert(s.name).inserted { return s.name }
        return nil
    }

    func setUpSignals() throws {
        let handled = [SIGCHLD, SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGUSR2]
        Posix.blockSignals(handled)
        for sig in handled {
            signalSources.append(try loop.addSignal(sig) { [weak self] s in self?.onSignal(s) })
        }
    }

    func onSignal(_ sig: Int32) {
        switch sig {
        case SIGCHLD:
            while let r = Posix.reapOne() {
                let (pid, status): (Int32, SwarmCore.ExitStatus)
                switch r {
                case let .exited(p, code): (pid, status) = (p, .exited(code))
                case let .signaled(p, s, core): (pid, status) = (p, .signaled(s, coreDumped: core))
                }
                drainOutput(pid: pid)
                cpuSamples[pid] = nil
                feed(.exited(pid: pid, status))
            }
        case SIGTERM, SIGINT, SIGQUIT:
            if supervisor.shuttingDown {
                log.warning("second \(Signal(sig)) during shutdown: killing every worker now")
                for w in supervisor.workers.values { if let pid = w.pid { try? Posix.kill(-pid, SIGKILL) } }
                return
            }
            log.notice("received \(Signal(sig)): stopping every worker")
            Systemd.notify("STOPPING=1")
            feed(.command(newRequest(nil), .shutdown))
        case SIGHUP:
            log.notice("received SIGHUP: reloading every app")
            reloadAll()
        case SIGUSR2:
            log.notice("received SIGUSR2: re-executing \(executablePath)")
            if let why = reexec(reply: nil) { log.error("Failed to re-execute: \(why)") }
        default:
            break
        }
    }

    /// SIGHUP: re-read every config and roll every app, telling systemd.
    func reloadAll() {
        let names = supervisor.appOrder
        var specs: [AppSpec] = []
        for name in names {
            guard let app = supervisor.apps[name] else { continue }
            do {
                specs.append(try AppConfig.load(path: app.spec.sourcePath, environment: configEnvironment))
            } catch {
                log.error("Failed to reload \(name): \(error.description); keeping its running config")
            }
        }
        let usable = specs.filter { spec in
            guard let app = supervisor.apps[spec.name] else { return false }
            if app.reload != nil { log.warning("\(spec.name): a reload is already running, ignoring SIGHUP for it"); return false }
            if spec.sockets != app.spec.sockets { log.error("\(spec.name): sockets changed; a reload cannot rebind them (use swarmctl start --replace), ignoring"); return false }
            return true
        }
        Systemd.notify("RELOADING=1\nMONOTONIC_USEC=\(Posix.monotonicNanoseconds() / 1000)")
        guard !usable.isEmpty else {
            // Nothing to roll (config errors, reloads already running, no apps): still finish the
            // handshake, or systemd (Type=notify-reload) waits for READY=1 until its timeout.
            if sentReady { Systemd.notify("READY=1\nSTATUS=\(lastSystemdStatus)") }
            return
        }
        let id = newRequest(nil)
        reloadingForSIGHUP.insert(id)
        feed(.command(id, .reload(usable.map { ReloadRequest(app: $0.name, spec: $0) })))
    }

    /// Lets connections queued on a closing reuseport socket move to its
    /// siblings instead of being reset (net.ipv4.tcp_migrate_req).
    func enableTCPMigration() {
        let path = "/proc/sys/net/ipv4/tcp_migrate_req"
        guard let current = try? Posix.readFile(path), current.first == UInt8(ascii: "0") else { return }
        if let fd = try? Posix.open(path, O_WRONLY) {
            if (try? Posix.writeAll(fd, Array("1\n".utf8))) != nil {
                log.info("set net.ipv4.tcp_migrate_req=1: connections queued on a removed slot's socket move to the others")
            }
            Posix.close(fd)
        }
    }

    func setUpNotifySocket() throws {
        notifyFD = try Sockets.bindDatagram(notifyPath)
        notifySource = try loop.addReader(notifyFD, priority: -5) { [weak self] _ in self?.onNotify() }
    }

    func cleanUp() {
        for sockets in appSockets.values { sockets.close() }
        appSockets = [:]
        if controlFD >= 0 {
            Posix.close(controlFD)
            if !controlFromSystemd { unlink(options.socketPath) }
        }
        for sink in sinks.values { sink.close() }
    }

    // MARK: - The core

    func now() -> Instant { Instant(nanoseconds: Posix.monotonicNanoseconds()) }

    /// Feeds an event to the core and performs what it asks, including the
    /// events those actions produce (spawned, probe results), until quiet.
    func feed(_ event: SwarmCore.Event) {
        events.append(event)
        guard !feeding else { return }
        feeding = true
        defer { feeding = false }
        while !events.isEmpty {
            let e = events.removeFirst()
            let actions = supervisor.handle(e, now: now())
            // Replacements first: they are what a crashed slot's queued connections wait for.
            for action in actions { if case .spawn = action { perform(action) } }
            // Before any stop signal goes out: a slot being removed must get no new connection.
            updateReuseportSteering()
            for action in actions { if case .spawn = action {} else { perform(action) } }
        }
    }

    func perform(_ action: Action) {
        switch action {
        case let .spawn(r):
            spawn(r.worker, spec: r.spec, slot: r.slot, generation: r.generation)
        case .steer, .restorePriority:
            break  // still done by updateReuseportSteering / restorePriorities until the shell is rewritten
        case let .workerGone(id, _):
            workerIO.removeValue(forKey: id)?.closeReady()
        case let .signal(pid, sig, group):
            do { try Posix.kill(group ? -pid : pid, sig.number) } catch {
                if (error as? SystemError)?.errno != ESRCH { log.warning("Failed to send \(sig) to \(group ? "group " : "")\(pid): \(error), ignoring") }
            }
        case let .probeListening(id, pid):
            guard let spec = spec(of: id) else { return }
            let fds = Set((0..<spec.sockets.count).map { Int32(3 + $0) })
            if ProcFS.isListening(pid: pid, fds: fds) { events.append(.ready(pid: pid)) }
        case let .sampleMemory(pid):
            if let rss = ProcFS.rss(pid: pid) { events.append(.memory(pid: pid, bytes: rss)) }
        case let .armTimer(at):
            do {
                try loop.setTimer(at: at?.nanoseconds) { [weak self] in self?.feed(.tick) }
            } catch {
                log.critical("Failed to arm the timer: \(error)")
            }
        case let .reply(id, result):
            reply(id, result)
        case let .progress(id, event):
            progress(id, event)
        case let .handOver(app, slot, pid):
            handOver(app, slot: slot, from: pid)
        case let .slotReleased(app, slot):
            appSockets[app]?.release(slot: slot)
        case let .appRemoved(name):
            appSockets.removeValue(forKey: name)?.close()
            reuseportCounts[name] = nil
            outputBudgets[name] = nil
            if let sink = sinks.removeValue(forKey: name) { sink.close() }
        case .appsChanged:
            stateDirty = true
        case let .note(level, text):
            switch level {
            case .debug: log.debug("\(text)")
            case .info: log.info("\(text)")
            case .notice: log.notice("\(text)")
            case .warning: log.warning("\(text)")
            case .error: log.error("\(text)")
            }
        case .exit:
            log.notice("every worker has stopped; exiting")
            loop.exit(code: 0)
        }
    }

    func spec(of id: WorkerID) -> AppSpec? {
        supervisor.workers[id].flatMap(supervisor.spec(of:))
    }

    /// The CPU a worker of `spec` in `slot` is pinned to, if its app sets `cpu_affinity`.
    func pinnedCPU(_ spec: AppSpec, slot: Int) -> Int? {
        spec.cpuAffinity?.cpu(forSlot: slot, allowed: allowedCPUs)
    }

    /// Runs after each dispatch: priorities, persistence, systemd status. (Steering follows every event, in `feed`.)
    func afterDispatch() {
        restorePriorities()
        flushState()
        updateSystemdStatus()
        maybeSendReady()
    }

    func flushState() {
        guard stateDirty else { return }
        stateDirty = false
        guard !supervisor.shuttingDown else { return }
        let apps: [RememberedApp] = supervisor.appOrder.compactMap { name in
            guard let app = supervisor.apps[name], app.goal != .deleted else { return nil }
            return RememberedApp(name: name, config: app.spec.sourcePath,
                                 workers: app.targetCount != app.spec.workers ? app.targetCount : nil,
                                 stopped: app.goal == .stopped)
        }
        do { try stateStore.save(apps) } catch { log.error("Failed to write \(stateStore.path): \(error), ignoring") }
    }

    /// Keeps each reuseport group's steering program in step with the live
    /// slots, so a slot being removed gets no new connections while it drains.
    func updateReuseportSteering() {
        for (name, sockets) in appSockets where sockets.entries.contains(where: \.reuseport) {
            guard let app = supervisor.apps[name] else { continue }
            let live = max(1, app.slots.filter { !$0.removing }.count)
            // Round-robin goes to slots with a ready worker only; with none ready, to every live slot.
            var ready = app.slots.filter { slot in
                !slot.removing && slot.current.flatMap { supervisor.workers[$0] }?.phase == .ready
            }.map(\.index)
            if ready.isEmpty { ready = app.slots.filter { !$0.removing }.map(\.index) }
            for entry in sockets.entries where entry.reuseport {
                if let rr = entry.roundRobin {
                    let fds = ready.compactMap { $0 == 0 ? entry.shared : entry.perSlot[$0] }
                    guard entry.steeredTo != fds else { continue }
                    do {
                        try rr.steer(to: fds, previouslyUsed: entry.steeredTo.count)
                        entry.steeredTo = fds
                    } catch {
                        entry.steeredTo = []
                        log.warning("Failed to steer \(name)/\(entry.spec.name) over slots \(ready): \(error), ignoring")
                    }
                } else if reuseportCounts[name] != live {
                    if let err = Steering.attach(to: entry.shared, liveSockets: live, ipv6: entry.spec.listen.description.hasPrefix("[")) {
                        log.warning("Failed to steer \(name)/\(entry.spec.name) over \(live) sockets: \(err), ignoring")
                    }
                }
            }
            reuseportCounts[name] = live
        }
    }

    /// A reload is about to stop `pid`, slot `slot`'s old worker: its keep-alive
    /// clients will reconnect, and round-robin would spread them over every slot,
    /// piling them onto the other (old) workers. Instead the steering program sends
    /// the next as-many-as-it-holds connections to the slot's socket, where its
    /// replacement waits, and resumes round-robin after that.
    func handOver(_ app: String, slot: Int, from pid: Int32) {
        guard let sockets = appSockets[app] else { return }
        for entry in sockets.entries where entry.reuseport {
            guard let rr = entry.roundRobin, let port = entry.port,
                  let fd = slot == 0 ? entry.shared : entry.perSlot[slot],
                  let index = entry.steeredTo.firstIndex(of: fd) else { continue }
            do {
                let held = try ProcFS.establishedConnections(pid: pid, localPort: port)
                guard held > 0 else { continue }
                try rr.handOver(toIndex: index, quota: held)
                log.debug("\(app)[\(slot)]: the next \(held) connections to \(entry.spec.name) go to the replacement of pid \(pid), which holds \(held)")
            } catch {
                log.warning("Failed to hand \(app)[\(slot)]'s connections over to its new worker: \(error), ignoring")
            }
        }
    }

    func updateSystemdStatus() {
        let parts = supervisor.appOrder.compactMap { name -> String? in
            guard let app = supervisor.apps[name] else { return nil }
            let ready = app.slots.filter { $0.current.flatMap { supervisor.workers[$0] }?.phase == .ready }.count
            if app.goal == .stopped { return "\(name) stopped" }
            return "\(name) \(ready)/\(app.targetCount) ready" + (app.reload != nil ? " (reloading)" : "")
        }
        let status = parts.isEmpty ? "no apps" : parts.joined(separator: " · ")
        if status != lastSystemdStatus {
            lastSystemdStatus = status
            Systemd.notify("STATUS=\(status)")
        }
    }

    func maybeSendReady() {
        guard !sentReady, initialRequests.isEmpty else { return }
        sentReady = true
        Systemd.notify("READY=1\nSTATUS=\(lastSystemdStatus.isEmpty ? "no apps" : lastSystemdStatus)")
        // Start-up code (argument parsing, config decoding, runtime metadata scans) is not needed while idle.
        ProcFS.pageOutCleanMappings()
        log.info("ready: \(supervisor.appOrder.count) apps")
    }

    // MARK: - Sockets

    func bindSockets(for spec: AppSpec, replacing old: AppSockets? = nil) -> Result<AppSockets, Error> {
        do {
            let sockets = try AppSockets(spec: spec) { s in
                if let fd = old?.take(matching: s) { return (fd, false) }
                if let i = self.systemdFDs.firstIndex(where: { $0.name == s.name }) {
                    let fd = self.systemdFDs.remove(at: i).fd
                    self.log.info("\(spec.name): using socket '\(s.name)' passed by systemd (fd \(fd))")
                    return (fd, true)
                }
                return nil
            }
            for e in sockets.entries {
                if let problem = e.steeringProblem {
                    log.notice("\(spec.name)/\(e.spec.name): no round-robin steering (\(problem)); the kernel hashes connections over the slots")
                } else if e.roundRobin != nil {
                    log.debug("\(spec.name)/\(e.spec.name): round-robin steering over per-slot sockets")
                }
            }
            return .success(sockets)
        } catch {
            return .failure(error)
        }
    }
}

enum DaemonError: Error, CustomStringConvertible {
    case config([String])
    case control(String)

    var description: String {
        switch self {
        case let .config(errors): return errors.joined(separator: "\n")
        case let .control(msg): return msg
        }
    }
}

/// Whether an error is a config error (swarmd exits 78, EX_CONFIG).
public protocol DaemonConfigError: Error {}
extension DaemonError: DaemonConfigError {}

/// Blocks the signals the event loop handles; call first thing in main.
public func blockDaemonSignals() {
    Posix.blockSignals([SIGCHLD, SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGUSR2])
}
