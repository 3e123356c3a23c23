import ArgumentParser
import Glibc
import Logging
import SwarmDaemon
import SwarmSystem

struct Swarmd: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "swarmd",
        abstract: "Run N copies of any server behind shared listening sockets, and keep them alive.",
        discussion: """
            Stays in the foreground. SIGTERM/SIGINT/SIGQUIT: graceful stop of every worker (a second one kills them at once). \
            SIGHUP: rolling reload of every app. SIGUSR1: reopen every app's log file (after logrotate moved it). \
            SIGUSR2: re-execute swarmd in place, keeping the workers and their sockets (daemon-reexec).
            """,
        version: swarmVersion)

    @Option(help: ArgumentHelp("Control socket path (env SWARM_SOCKET).", valueName: "path"))
    var socket: String?

    @Option(name: .customLong("state-dir"), help: ArgumentHelp("Remembered apps and logs (env SWARM_STATE_DIR).", valueName: "dir"))
    var stateDir: String?

    @Option(name: .customLong("apps-dir"), help: ArgumentHelp("Also start every *.conf in this folder.", valueName: "dir"))
    var appsDir: String?

    @Option(name: .customLong("log-target"), help: "Where worker output goes: auto (journal under systemd), file, journal.")
    var logTarget: String = "auto"

    @Option(name: .customLong("socket-group"), help: ArgumentHelp("Open the control socket to this group (mode 0660).", valueName: "group"))
    var socketGroup: String?

    @Option(help: ArgumentHelp("Serve Prometheus /metrics, /healthz and /readyz on host:port or unix:PATH (loopback only unless --metrics-public).",
                               valueName: "addr"))
    var metrics: String?

    @Flag(name: .customLong("metrics-public"), help: "Allow a --metrics address beyond loopback (every app name and pid is visible there).")
    var metricsPublic = false

    @Option(name: .customLong("journal-socket"), help: .hidden)
    var journalSocket: String = "/run/systemd/journal/socket"

    @Option(help: ArgumentHelp("Answer HAProxy's agent-check on this address (HOST:PORT, e.g. 10.0.0.5:9999): up with a weight of ready/wanted workers, drain, or down.", valueName: "host:port"))
    var agent: String?

    @Option(name: .customLong("priority-boost"),
            help: ArgumentHelp("Run swarmd N nice levels above the priority it was started with, which its workers keep, so a mass restart is not starved by the workers it starts (0-39; 0: off; needs root or CAP_SYS_NICE).", valueName: "N"))
    var priorityBoost: Int32 = 10

    @Option(name: .customLong("realtime-priority"),
            help: ArgumentHelp("Run swarmd under the real-time policy SCHED_RR at priority N (1-99; default 1), above every ordinary process, so that a kill storm of thousands of workers cannot starve it; its children leave it for SCHED_OTHER before they exec. A thread that runs 5 s of CPU without sleeping is moved back to SCHED_OTHER for good (RLIMIT_RTTIME). 0: off. Needs root or CAP_SYS_NICE; without, swarmd runs at its --priority-boost.", valueName: "N"))
    var realtimePriority: Int32?

    @Flag(name: .shortAndLong, help: "Log debug messages.")
    var verbose = false

    @Argument(help: ArgumentHelp("App config files to start now.", valueName: "app.conf"))
    var configs: [String] = []

    func validate() throws {
        guard (0...39).contains(priorityBoost) else {
            throw ValidationError("--priority-boost must be 0 to 39 nice levels, not \(priorityBoost)")
        }
        if let realtimePriority, !(0...99).contains(realtimePriority) {
            throw ValidationError("--realtime-priority must be 0 (off) or a SCHED_RR priority 1 to 99, not \(realtimePriority)")
        }
        guard ["auto", "file", "journal"].contains(logTarget) else {
            throw ValidationError("--log-target must be auto, file or journal, not '\(logTarget)'")
        }
        if let metrics {
            let address: MetricsAddress
            do { address = try MetricsAddress.parse(metrics) } catch { throw ValidationError("\(error)") }
            guard address.isLocal || metricsPublic else {
                throw ValidationError("--metrics \(metrics): not a loopback address; add --metrics-public to serve metrics beyond this host")
            }
        }
    }

    func run() throws {
        LoggingSystem.bootstrap { DaemonLogHandler(label: $0) }
        if verbose { DaemonLogHandler.minimumLevel = .debug }
        var options = DaemonOptions(
            socketPath: socket ?? SwarmDefaults.socketPath,
            stateDir: stateDir ?? SwarmDefaults.stateDirectory,
            appsDir: appsDir, configFiles: configs, logTarget: logTarget,
            journalSocket: journalSocket, socketGroup: socketGroup)
        options.metricsAddress = try metrics.map(MetricsAddress.parse)
        options.metricsPublic = metricsPublic
        options.priorityBoost = priorityBoost
        options.realtimePriority = realtimePriority ?? DaemonOptions.defaultRealtimePriority
        options.realtimeRequested = realtimePriority != nil
        do {
            options.agent = try agent.map(DaemonOptions.agentAddress)
        } catch {
            FileHandleStderr.write("swarmd: \(error)\n")
            throw ExitCode(64)
        }
        do {
            let code = try Manager(options: options).run()
            throw ExitCode(code)
        } catch let error as ExitCode {
            throw error
        } catch {
            FileHandleStderr.write("swarmd: \(error)\n")
            throw ExitCode(error is DaemonConfigError ? 78 : 1)
        }
    }
}

enum FileHandleStderr {
    static func write(_ s: String) { _ = s.withCString { fputs($0, stderr) } }
}

// Signals are blocked before any other thread can exist, so every thread inherits the mask.
blockDaemonSignals()
Swarmd.main()
