import Foundation
import Glibc
import Logging
import SwarmConfig
import SwarmCore
import SwarmProtocol
import SwarmSystem

/// One version for both programs.
public let swarmVersion = SwarmVersion.current

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
    /// `--agent HOST:PORT`: answer HAProxy's agent-check there.
    public var agent: (host: String, port: UInt16)?
    /// `--metrics`: where /metrics, /healthz and /readyz are served (nil: not at all,
    /// unless systemd passes a socket named "metrics").
    public var metricsAddress: MetricsAddress?
    /// `--metrics-public`: a non-loopback metrics address is allowed.
    public var metricsPublic = false
    /// `--priority-boost`: nice levels swarmd runs above its workers (0: none).
    public var priorityBoost: Int32 = 10
    /// `--realtime-priority`: SCHED_RR priority swarmd runs at (0: none, SCHED_OTHER).
    public var realtimePriority: Int32 = DaemonOptions.defaultRealtimePriority
    /// Whether `realtimePriority` was asked for (a refusal is then a warning, not news).
    public var realtimeRequested = false
    public static let defaultRealtimePriority: Int32 = 1

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
}

/// Spawns counted in second-long windows: `recent` is the larger of the
/// current window's count and the previous one's (when that ended less than
/// a second ago).
struct SpawnRate: Equatable {
    static let window: Int64 = 1_000_000_000
    private(set) var windowStart: Int64?
    private(set) var current = 0
    private(set) var previous = 0

    mutating func note(now: Int64) {
        roll(now: now)
        current += 1
    }

    func recent(now: Int64) -> Int {
        guard let start = windowStart else { return 0 }
        let age = now - start
        if age < SpawnRate.window { return max(current, previous) }
        if age < 2 * SpawnRate.window { return current }
        return 0
    }

    private mutating func roll(now: Int64) {
        guard let start = windowStart else {
            windowStart = now
            return
        }
        let age = now - start
        guard age >= SpawnRate.window else { return }
        previous = age < 2 * SpawnRate.window ? current : 0
        current = 0
        windowStart = now
    }
}

/// A worker's figures as one status read them.
struct UsageSample: Equatable {
    var ticks: Int64
    /// kernel.now() of the read.
    var at: Int64
    var rss: Int64?
    var percent: Double?
}

/// Who waits for the answers of one or more core requests.
final class Requester {
    enum Kind {
        /// A control client's request; answered as one reply.
        case client(ControlClient, id: UInt64)
        /// SIGHUP: the service manager waits for READY=1 once every app's reload is answered.
        case signal
        /// The apps started at start-up: READY=1 once every one is answered.
        case startup
    }

    let kind: Kind
    var remaining: Set<RequestID> = []
    var messages: [String] = []
    var errors: [String] = []
    var details: [String] = []
    /// Its commands are still being fed to the core: no answer goes out yet.
    var submitting = false

    init(_ kind: Kind) { self.kind = kind }
}

/// swarmd's shell. The Manager owns the event loop and the parts that hold
/// kernel resources; it feeds what happens to the core (`Supervisor`) and
/// performs the actions the core returns, in the order given. It makes no
/// decision of its own about workers.
///
/// The parts:
/// - `control`: the control socket's clients (framing, fairness, limits).
/// - `output`: worker stdout/stderr, readiness pipes, sd_notify; log sinks and budgets.
/// - `sockets`: every app's listening sockets and their steering.
/// - `cgroups`: a cgroup per worker, so nothing a worker starts outlives it.
/// - `interception`: workers' own bind() calls answered with their slot's socket.
/// - `systemd`: READY/STATUS/RELOADING/STOPPING.
/// - `store`: the remembered apps.
/// - `workers`: what the shell holds per live worker (for `workerGone`).
public final class Manager {
    let options: DaemonOptions
    let kernel: Kernel
    let loop: EventLoop
    var supervisor = Supervisor()
    var log = Logger(label: "swarmd")
    let control: ControlServer
    let output: WorkerOutput
    let sockets: SocketTable
    let cgroups: WorkerCgroups
    let interception: BindInterception
    let systemd: SystemdBridge
    let store: StateStore
    let health: HealthChecker
    /// The state directory and its `logs/`, checked once and held open: every
    /// file in them is reached through these fds.
    let stateDirectory: TrustedDirectory
    let logsDirectory: TrustedDirectory
    let configEnvironment: ConfigEnvironment
    /// This binary's path, read at start: after an upgrade it names the new binary.
    let executablePath: String
    var startedAt: Int64

    /// Remembered apps whose config no longer loads, or whose sockets cannot be
    /// bound: kept (and remembered) with the reason, shown by status as state
    /// "error", until a `start` or `reload` brings them back or `delete` forgets them.
    var brokenApps: [String: (remembered: RememberedApp, reason: String)] = [:]
    var brokenOrder: [String] = []
    /// Per live worker: its pid and what the shell opened for it.
    var workers: [WorkerID: Int32] = [:]
    var cpuSamples: [Int32: UsageSample] = [:]
    /// How old a worker's CPU and memory figures in `status` may be: requests
    /// closer together than this (a dashboard, `top`, scripts polling every few
    /// hundred ms) reuse them instead of reading every worker's cgroup files
    /// again (at 1,000 workers half of a status' cost was those reads).
    static let usageMaxAge: Int64 = 1_000_000_000
    /// Workers of an app whose usage files one `status` may read, and while
    /// swarmd is replacing many workers (`UsageReadBudget`); vars for tests.
    var usageReadsPerStatus = 512
    var usageReadsWhileReplacing = 32
    /// How long one `status` may spend reading usage files (at least one is read).
    static let usageReadTime: Int64 = 10_000_000
    var replacingSpawnsPerSecond = 64
    var usageReadCursors: [String: Int] = [:]
    var spawnRate = SpawnRate()
    /// Whether swarmd is starting many workers at once: at least
    /// `replacingSpawnsPerSecond` in the last second or so (one crash-looping
    /// worker is not that).
    func isReplacingWorkers(now: Int64) -> Bool {
        spawnRate.recent(now: now) >= replacingSpawnsPerSecond
    }
    var requesters: [RequestID: Requester] = [:]
    var nextRequest: UInt64 = 1
    var events: [SwarmCore.Event] = []
    var eventsHead = 0
    var feeding = false
    var stateDirty = false
    /// Config generations' files and what each generations file holds (Manager+Rollback.swift).
    let generationKeeper = GenerationKeeper()
    /// Why the last save of the remembered apps failed (nil: it worked).
    var lastSaveError: String?
    var saveFailures = 0
    var controlFD: Int32 = -1
    /// The control socket in use: `--socket`, or the one systemd passed.
    var controlSocketPath: String
    var controlFromSystemd = false
    var originalNoFile: (soft: UInt64, hard: UInt64)?
    var devNull: Int32 = -1
    /// The CPUs swarmd was started with: `cpu_affinity` is checked against them.
    let allowedCPUs: [Int]
    var signalSources: [EventLoop.Source] = []
    /// Issue 16: each app's slots' last exits, for `describe` (not handed over by a re-exec).
    var exitHistory: [String: [Int: [SlotExit]]] = [:]
    var reapContinuation: EventLoop.Deferred?
    var housekeeping: EventLoop.Source?
    var sweepSource: EventLoop.Source?
    var agent: AgentServer?
    /// Apps the operator drained (`swarmctl drain`): the agent says `drain` for them.
    var drained: Set<String> = []
    /// swarmd's environment, which workers inherit (read once: Foundation parses environ anew at every call).
    lazy var ownEnvironment: [String: String] = ProcessInfo.processInfo.environment
    /// Each app's last-built worker environment (`sharedEnvironment(_:sockets:readyFD:)`).
    var sharedEnvironments: [String: SharedEnvironment] = [:]
    /// `/metrics`, `/healthz`, `/readyz`; nil when not asked for.
    var metrics: DaemonMetrics?
    /// Lifecycle events (`swarmctl events`) and the `[hooks]` they run.
    lazy var lifecycle = LifecycleEvents(loop: loop, kernel: kernel)

    /// Reaps per dispatch before the loop serves other sources. Each reap of
    /// a crashed worker spawns its replacement in the same turn (a vfork that
    /// waits for the child's exec, 1–3 ms on a busy host), so this bounds how
    /// long a control request waits during a kill storm: with 64 `status`
    /// answered in 0.5–1 s while 4,096 workers were replaced; with 16 a raw
    /// `ping` took 40–50 ms (median) and `status` 60–65 ms; with 4, 11–16 ms
    /// and 25–31 ms, the storm as fast (issue 18, bench/RESULTS.md).
    static let reapsPerTurn = 4

    public init(options given: DaemonOptions, kernel: Kernel = LinuxKernel()) throws {
        // Relative paths are the caller's: fixed once, before anything uses them.
        var options = given
        options.stateDir = (try? FileSystem.absolute(given.stateDir)) ?? given.stateDir
        options.socketPath = (try? FileSystem.absolute(given.socketPath)) ?? given.socketPath
        options.appsDir = given.appsDir.map { (try? FileSystem.absolute($0)) ?? $0 }
        self.options = options
        controlSocketPath = options.socketPath
        self.kernel = kernel
        loop = try EventLoop()
        startedAt = kernel.now()
        // Whoever can write in the state directory decides what swarmd runs (apps.json names
        // config files) and where its log lines go: it must be swarmd's own, and no one else's to write.
        do {
            stateDirectory = try TrustedDirectory(path: options.stateDir, owners: [geteuid()], create: 0o700)
            logsDirectory = try stateDirectory.subdirectory("logs", owners: [geteuid()], create: 0o750)
        } catch {
            throw DaemonError.untrusted("state directory: \(error)")
        }
        control = ControlServer(loop: loop, kernel: kernel)
        output = WorkerOutput(loop: loop, kernel: kernel, logDirectory: logsDirectory,
                              notifyPath: "@swarmd-notify-\(getpid())-\(kernel.now() % 1_000_000)")
        sockets = SocketTable(kernel: kernel)
        cgroups = WorkerCgroups(loop: loop)
        interception = BindInterception(loop: loop)
        systemd = SystemdBridge(kernel: kernel)
        store = StateStore(directory: stateDirectory)
        health = HealthChecker(loop: loop, sockets: sockets)
        executablePath = (try? FileSystem.readLink("/proc/self/exe")).map { $0.hasSuffix(" (deleted)") ? String($0.dropLast(10)) : $0 } ?? CommandLine.arguments[0]
        let cpus = ProcFS.allowedCPUs()
        allowedCPUs = cpus
        let isRoot = getuid() == 0
        let path = ProcessInfo.processInfo.environment["PATH"] ?? "/usr/local/bin:/usr/bin:/bin"
        configEnvironment = ConfigEnvironment(
            cpuCount: { ProcFS.usableCPUs() }, isRoot: isRoot, currentUID: getuid(),
            lookupUser: { Users.lookupUser($0) }, lookupGroup: { Users.lookupGroup($0) }, path: path,
            isExecutable: { FileSystem.isExecutableFile($0) },
            isDirectory: { FileSystem.isDirectory($0) },
            allowedCPUs: { cpus })
        supervisor.allowedCPUs = cpus
        supervisor.canRaisePriority = Spawner.canRaisePriority
        wireParts()
    }

    /// The parts report to the Manager; only it talks to the core.
    func wireParts() {
        let report: (NoteLevel, String) -> Void = { [weak self] level, text in self?.note(level, text) }
        control.handler = self
        cgroups.slotsOf = { [unowned self] app in self.supervisor.apps[app]?.slots.count ?? 0 }
        control.report = report
        sockets.report = report
        cgroups.report = report
        interception.report = report
        interception.sockets = { [weak self] app in self?.sockets[app] }
        output.report = report
        output.journalSocket = options.journalSocket
        output.deliver = { [weak self] event in self?.feed(event) }
        output.policy = { [weak self] app in self?.supervisor.apps[app]?.spec.logs }
        output.isWorker = { [weak self] pid in self?.supervisor.worker(pid: pid) != nil }
        health.report = report
        wireHealth()
        setUpLifecycle()
    }

    // MARK: - Start-up

    /// Loads every app first (a bad file given on the command line aborts
    /// before anything starts), then binds, then runs the loop.
    public func run() throws -> Int32 {
        let useJournal = options.logTarget == "journal" || (options.logTarget == "auto" && Systemd.underSystemd && Systemd.journalAvailable)
        if useJournal { output.journal = try? JournalWriter(socketPath: options.journalSocket) }
        DaemonLogHandler.journal = output.journal

        var specs: [AppSpec] = []
        var errors: [String] = []
        for file in options.configFiles {
            do { specs.append(try AppConfig.load(path: file, environment: configEnvironment)) } catch { errors.append(error.description) }
        }
        errors += supervisor.startProblems(specs, replace: false)
        if !errors.isEmpty { throw DaemonError.config(errors) }

        devNull = try Posix.open("/dev/null", O_RDWR)
        // Every worker costs swarmd a few fds (pipes, sockets): use the whole hard limit.
        originalNoFile = Posix.raiseFileLimit()
        try Spawner.setChildSubreaper()
        Posix.ignore(SIGPIPE)
        interception.probe(kernel: kernel)

        let handover = try Handover.take()
        if let n = handover?.originalNoFile { originalNoFile = (n.soft, n.hard) }
        raiseOwnPriority(startedWith: handover?.originalNice)
        raiseToRealtime()
        if let handover {
            try resume(from: handover)
        } else {
            try startFresh(commandLine: specs)
        }
        let code = try loop.run()
        systemd.stopping()
        cleanUp()
        return code
    }

    /// Registers the sources every start (fresh or hand-over) needs.
    func setUpLoop(controlSocket adopted: Int32?, notifySocket: Int32?) throws {
        try setUpSignals()
        try setUpControlSocket(adopting: adopted)
        try output.openNotifySocket(adopting: notifySocket)
        housekeeping = try loop.addPost { [weak self] in self?.afterDispatch() }
        // The 1 s sweep is armed by afterDispatch only while it has work (armSweep).
        reapContinuation = loop.addDeferred { [weak self] in self?.reapChildren() }
        if let a = options.agent {
            do {
                agent = try AgentServer(host: a.host, port: a.port, loop: loop, kernel: kernel) { [weak self] request in
                    guard let self else { return "down\n" }
                    return AgentReply.line(request: request, health: { self.supervisor.health(of: $0) },
                                           appNames: self.supervisor.appOrder, drained: self.drained)
                }
                log.notice("HAProxy agent listening on \(agent!.address)")
            } catch {
                throw DaemonError.control("--agent \(a.host):\(a.port): \(error)")
            }
        }
    }

    func startFresh(commandLine specs: [AppSpec]) throws {
        sockets.passedBySystemd = Systemd.listenFDs()
        try setUpLoop(controlSocket: nil, notifySocket: nil)
        try setUpMetrics(handover: nil)
        enableTCPMigration()
        cgroups.setUp(stateDirectory: options.stateDir, fresh: true)

        // Remembered apps, then the apps directory, then the command line: later wins.
        var byName: [String: (AppSpec, RememberedApp?)] = [:]
        var order: [String] = []
        let (remembered, problem) = store.load(now: kernel.wallClock())
        if let problem { log.error("\(problem)") }
        drained = Set(remembered.filter { $0.drained == true }.map(\.name))
        for entry in remembered {
            do {
                let spec = try AppConfig.load(path: entry.config, environment: configEnvironment)
                if byName[spec.name] == nil { order.append(spec.name) }
                byName[spec.name] = (spec, entry)
            } catch {
                markBroken(entry, reason: error.description)
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
        log.notice("swarmd \(swarmVersion) pid \(getpid()) control socket \(controlSocketPath)\(controlFromSystemd ? " (passed by systemd, fd \(controlFD))" : ""), state \(options.stateDir)")
        let startup = Requester(.startup)
        for name in order {
            let (fileSpec, entry) = byName[name]!
            let fromCommandLine = specs.contains { $0.name == name }
            switch sockets.bind(fileSpec) {
            case let .failure(error):
                if fromCommandLine { throw DaemonError.config(["\(fileSpec.sourcePath): \(error)"]) }
                if let entry {
                    markBroken(entry, reason: "\(fileSpec.sourcePath): cannot listen: \(error)")
                } else {
                    log.error("Failed to start \(name): \(error), ignoring")
                }
                continue
            case let .success(bound):
                sockets.install(bound, for: name)
            }
            let spec = restoreGenerations(name, fileSpec: fileSpec)
            if entry?.stopped == true && !fromCommandLine {
                feed(.command(newRequest(nil), .add(spec)))
            } else {
                feed(.command(newRequest(startup), .start(spec, replace: false)))
            }
            // A remembered scale is applied as a scale, not by editing the spec: the spec keeps
            // the file's count, so the next save still sees the scale and remembers it.
            if let n = entry?.workers, n != spec.workers {
                feed(.command(newRequest(nil), .scale(name, n)))
            }
        }
        stateDirty = true
        flushState()
        if startup.remaining.isEmpty { finishStartup() }
    }

    /// A remembered app that cannot run now is kept, not forgotten.
    func markBroken(_ entry: RememberedApp, reason: String) {
        log.error("Failed to start remembered app '\(entry.name)': \(reason); keeping it (state error) until it is fixed or deleted")
        shellEvent(LifecycleDraft(kind: "config-error", app: entry.name, message: reason, details: ["config": entry.config]))
        if brokenApps[entry.name] == nil { brokenOrder.append(entry.name) }
        brokenApps[entry.name] = (entry, reason)
    }

    func forgetBroken(_ name: String) {
        guard brokenApps.removeValue(forKey: name) != nil else { return }
        brokenOrder.removeAll { $0 == name }
        // Saved before the reply goes out, like every other change of the remembered apps.
        stateDirty = true
        flushState()
    }

    func finishStartup() {
        updateSystemdStatus()
        systemd.ready()
        // Start-up code (argument parsing, config decoding, runtime metadata scans) is not needed while idle.
        // Only once: paging out after every quiet spell (as swarmd did) made the next `status` fault the
        // control path back in from disk, 100-170 ms at 4,096 workers, and a storm's first spawns likewise.
        ProcFS.pageOutCleanMappings()
        log.info("ready: \(supervisor.appOrder.count) apps")
    }

    func setUpSignals() throws {
        Posix.blockSignals(Manager.handledSignals)
        for sig in Manager.handledSignals {
            signalSources.append(try loop.addSignal(sig) { [weak self] s in self?.onSignal(s) })
        }
    }

    static let handledSignals = [SIGCHLD, SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGUSR2, SIGUSR1]

    func onSignal(_ sig: Int32) {
        switch sig {
        case SIGCHLD:
            reapChildren()
        case SIGTERM, SIGINT, SIGQUIT:
            if supervisor.shuttingDown {
                log.warning("second \(Signal(sig)) during shutdown: killing every worker now")
                for pid in workers.values { try? kernel.signal(pid, SIGKILL, group: true) }
                return
            }
            log.notice("received \(Signal(sig)): stopping every worker")
            systemd.stopping()
            feed(.command(newRequest(nil), .shutdown))
        case SIGHUP:
            log.notice("received SIGHUP: reloading every app")
            reloadAll()
        case SIGUSR2:
            log.notice("received SIGUSR2: re-executing \(executablePath)")
            if let why = reexec(reply: nil) { log.error("Failed to re-execute: \(why)") }
        case SIGUSR1:
            let paths = reopenLogFiles()
            log.notice("received SIGUSR1: reopened \(paths.count) log files")
        default:
            break
        }
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

    func cleanUp() {
        interception.closeAll()
        sockets.closeAll()
        control.stop()
        metrics?.stop(removeSocket: true)
        if controlFD >= 0 {
            Posix.close(controlFD)
            if !controlFromSystemd { _ = try? FileSystem.removeIfPresent(options.socketPath) }
        }
        output.closeAll()
        health.closeAll()
        lifecycle.hooks.stopAll()
        cgroups.removeAll()
    }

    // MARK: - The core

    func now() -> Instant { Instant(nanoseconds: kernel.now()) }

    /// Feeds an event to the core and performs what it asks, in order,
    /// including the events those actions produce (spawned, probe results),
    /// until quiet.
    func feed(_ event: SwarmCore.Event) {
        events.append(event)
        guard !feeding else { return }
        feeding = true
        defer { feeding = false }
        while eventsHead < events.count {
            let e = events[eventsHead]
            eventsHead += 1
            metrics?.recorder.before(e, supervisor)
            lifecycle.deriver.before(e, supervisor)
            for action in supervisor.handle(e, now: now()) { perform(action) }
            metrics?.recorder.after(e, supervisor)
            lifecycle.deriver.after(e, supervisor, now: now())
            publishLifecycle()
            #if DEBUG
            checkInvariants(after: e)
            #endif
        }
        events.removeAll(keepingCapacity: true)
        eventsHead = 0
    }

    /// `--priority-boost`: swarmd runs that many nice levels above the
    /// priority it was started with, which its workers, hooks and checks keep
    /// (`Spawner.raiseOwnPriority` says why).
    func raiseOwnPriority(startedWith original: Int32?) {
        let steps = options.priorityBoost
        guard steps > 0 || original != nil else { return }
        do {
            let now = try Spawner.raiseOwnPriority(by: steps, original: original)
            if original == nil { log.info("Running at nice \(now); workers start at nice \(kernel.workerPriority)") }
        } catch {
            log.info("Running at the workers' priority (nice \(kernel.workerPriority)): raising it by \(steps) failed: \(error); it needs root or CAP_SYS_NICE")
        }
    }

    /// `--realtime-priority` (by default 1): swarmd under SCHED_RR, its
    /// children not (`Spawner.raiseToRealtime` says why). A re-executed image
    /// is given the same option and applies it again.
    func raiseToRealtime() {
        let priority = options.realtimePriority
        guard priority > 0 else { return }
        do {
            try Spawner.raiseToRealtime(priority: priority)
            log.info("Running under SCHED_RR at priority \(priority); workers run under SCHED_OTHER")
        } catch {
            let text = "Running under SCHED_OTHER: the real-time policy (--realtime-priority \(priority)) was refused: \(error); it needs root or CAP_SYS_NICE, and no RestrictRealtime="
            if options.realtimeRequested { log.warning("\(text)") } else { log.info("\(text)") }
        }
    }

    /// The guard of the real-time policy fired: a thread of swarmd ran
    /// `Spawner.realtimeGuard` of CPU without sleeping (or swarmd passed an
    /// RLIMIT_CPU soft limit). It is a bug, or a machine swarmd cannot keep up
    /// with; either way the rest of the machine gets its CPUs back.
    func leaveRealtimeIfGuardFired() {
        guard Spawner.leaveRealtimeIfGuardFired() else { return }
        log.error("SIGXCPU: swarmd ran \(Spawner.realtimeGuard) of CPU under SCHED_RR without sleeping (or passed its RLIMIT_CPU): it runs under SCHED_OTHER from now on, at nice \(Spawner.currentPriority)")
    }

    #if DEBUG
    var lastInvariantCheck: Int64 = 0

    /// Debug builds check the core's invariants after every event, as its tests do
    /// (skipped above a size where the check itself would dominate).
    func checkInvariants(after event: SwarmCore.Event) {
        // At most every 100 ms: a broken invariant persists, so sampling still catches it, and
        // debug builds (the integration tests measure them) keep their CPU figures honest. At
        // 20 ms the check was a quarter of a debug swarmd's CPU in a crash-loop storm (perf).
        let now = kernel.now()
        guard now - lastInvariantCheck >= 100_000_000, supervisor.workers.count <= 512,
              supervisor.apps.values.reduce(0, { $0 + $1.slots.count }) <= 2048 else { return }
        lastInvariantCheck = now
        let problems = supervisor.invariantViolations()
        if !problems.isEmpty {
            preconditionFailure("core invariants broken after \(event): \(problems.joined(separator: "; "))")
        }
    }
    #endif

    func perform(_ action: Action) {
        if let m = metrics {
            m.recorder.performed(action, supervisor, now: kernel.now())
            if case let .spawn(r) = action { countLogLines(of: r.app) }
        }
        lifecycle.deriver.performed(action, supervisor)
        switch action {
        case let .spawn(request):
            spawn(request)
        case let .signal(pid, sig, group):
            do { try kernel.signal(pid, sig.number, group: group) } catch {
                log.warning("Failed to send \(sig) to \(group ? "group " : "")\(pid): \(error), ignoring")
            }
            // The worker's group is all of its tree: what left the process group is still in its cgroup.
            if group && sig == .kill { cgroups.killTree(ofPid: pid) }
        case let .probeListening(id, pid):
            probeListening(id, pid: pid)
        case let .sampleMemory(pid):
            if let rss = kernel.rss(pid: pid) { events.append(.memory(pid: pid, bytes: rss)) }
        case let .armTimer(at):
            do {
                try loop.setTimer(at: at?.nanoseconds) { [weak self] in self?.feed(.tick) }
            } catch {
                log.critical("Failed to arm the timer: \(error)")
            }
        case let .reply(id, result):
            answer(id, result)
        case let .progress(id, event):
            progress(id, event)
        case let .steer(app, slots):
            health.beforeSteer(app)
            sockets.steer(app, to: slots)
        case let .handOver(app, slot, pid):
            sockets.handOver(app, slot: slot, from: pid)
        case let .workerGone(id, pid):
            workers[id] = nil
            cgroups.gone(id, pid: pid)
            interception.gone(id)
            output.closeReadyPipe(id)
            health.forget(id)
            if let pid { cpuSamples[pid] = nil }
        case let .restorePriority(pid):
            if !kernel.setGroupPriority(pid, to: kernel.workerPriority) {
                log.debug("Failed to restore the priority of group \(pid), ignoring")
            }
        case let .slotReleased(app, slot):
            sockets[app]?.release(slot: slot)
        case let .appRemoved(name):
            sockets.remove(name)
            health.forgetApp(name)
            forgetGenerations(name)
            sharedEnvironments[name] = nil
            output.forget(app: name)
            cgroups.forget(app: name)
        case .appsChanged:
            // Saved at once, so the reply to the command that changed it can say whether it was.
            stateDirty = true
            flushState()
        case let .note(level, text):
            note(level, text)
        case .exit:
            log.notice("every worker has stopped; exiting")
            loop.exit(code: 0)
        case let .health(action):
            health.perform(action)
        }
    }

    func note(_ level: NoteLevel, _ text: String) {
        switch level {
        case .debug: log.debug("\(text)")
        case .info: log.info("\(text)")
        case .notice: log.notice("\(text)")
        case .warning: log.warning("\(text)")
        case .error: log.error("\(text)")
        }
    }

    /// Runs after each dispatch: persistence and systemd status.
    func afterDispatch() {
        leaveRealtimeIfGuardFired()
        flushState()
        updateSystemdStatus()
        armSweep()
    }

    func everySecond() {
        output.refillBudgets()
        control.sweep()
    }

    func flushState() {
        guard stateDirty else { return }
        stateDirty = false
        guard !supervisor.shuttingDown else { return }
        var apps: [RememberedApp] = supervisor.appOrder.compactMap { name in
            guard let app = supervisor.apps[name], app.goal != .deleted else { return nil }
            return RememberedApp(name: name, config: app.spec.sourcePath,
                                 workers: app.targetCount != app.spec.workers ? app.targetCount : nil,
                                 stopped: app.goal == .stopped, drained: drained.contains(name) ? true : nil)
        }
        apps += brokenOrder.compactMap { name in supervisor.apps[name] == nil ? brokenApps[name]?.remembered : nil }
        do {
            try store.save(apps)
            lastSaveError = nil
            saveGenerations()
        } catch {
            if lastSaveError == nil { log.error("Failed to write \(store.path): \(error); the change is in force but will be forgotten at the next start") }
            lastSaveError = "\(error)"
            saveFailures += 1
            // Try again after the next change.
        }
    }

    func updateSystemdStatus() {
        systemd.update(changed: supervisor.takeChangedApps(), order: supervisor.appOrder) { systemdStatusPart($0) }
    }
}

enum DaemonError: Error, CustomStringConvertible {
    case config([String])
    case control(String)
    /// A directory swarmd must trust is another user's, or others may write in it.
    case untrusted(String)

    var description: String {
        switch self {
        case let .config(errors): return errors.joined(separator: "\n")
        case let .control(msg), let .untrusted(msg): return msg
        }
    }
}

/// Whether an error is a config error (swarmd exits 78, EX_CONFIG).
public protocol DaemonConfigError: Error {}
extension DaemonError: DaemonConfigError {}

/// Blocks the signals the event loop handles; call first thing in main.
public func blockDaemonSignals() {
    Posix.blockSignals(Manager.handledSignals)
}
