import Foundation
import SwarmConfig
import SwarmCore
import Testing

/// Every key swarm knows, each set away from its default.
let fullConfig = """
    # A web app with every key set.
    name = "web"
    command = ["node", "server.js", "--fd={fd:http}", "--port={port:http}", "--admin={fd:admin}"]
    workers = 3
    cwd = "../../srv/web"
    inherit_env = false
    user = "app"
    no_new_privs = true

    [env]
    NODE_ENV = "production"   # a comment
    THREADS = 4
    DEBUG = false
    "QUOTED_NAME" = "x#y"

    [[socket]]
    name = "http"
    listen = "0.0.0.0:8080"
    backlog = 511
    balance = "shared"

    [[socket]]
    name = "admin"
    listen = "unix:run/admin.sock"
    mode = "0660"

    [restart]
    policy = "on-failure"
    initial_delay = "250ms"
    max_delay = "1m"
    reset_after = "2m"
    crash_loop_restarts = 7
    crash_loop_window = "1h"

    [stop]
    signal = "SIGINT"
    timeout = "1.5s"

    [ready]
    mode = "notify"
    timeout = "45s"
    delay = "2s"
    watchdog = "5s"

    [reload]
    surge = 2

    [logs]
    max_size = "20MiB"
    keep = 3
    target = "journal"

    [limits]
    nofile = 65536
    core = "unlimited"
    memory = "512MiB"

    """

@Suite struct AppConfigTests {
    @Test func fullConfigDecodesEveryKey() throws {
        let spec = try AppConfig.parse(text: fullConfig, path: configPath, environment: fakeEnvironment())
        #expect(spec.name == "web")
        #expect(spec.command == ["node", "server.js", "--fd={fd:http}", "--port={port:http}", "--admin={fd:admin}"])
        #expect(spec.executable == "/usr/bin/node")
        #expect(spec.workers == 3)
        #expect(spec.cwd == "/srv/web")
        #expect(spec.inheritEnvironment == false)
        #expect(spec.env == ["NODE_ENV": "production", "THREADS": "4", "DEBUG": "false", "QUOTED_NAME": "x#y"])
        #expect(spec.user == "app")
        #expect(spec.group == nil)
        #expect(spec.noNewPrivileges)
        #expect(spec.sourcePath == configPath)
        #expect(spec.sockets == [
            SocketSpec(name: "http", listen: .tcp(host: "0.0.0.0", port: 8080), backlog: 511, balance: .shared),
            SocketSpec(name: "admin", listen: .unix(path: "/etc/swarm/run/admin.sock"), backlog: 1024, balance: .reuseport, mode: 0o660),
        ])
        #expect(spec.restart.mode == .onFailure)
        #expect(spec.restart.initialDelay == .milliseconds(250))
        #expect(spec.restart.maxDelay == .seconds(60))
        #expect(spec.restart.resetAfter == .seconds(120))
        #expect(spec.restart.crashLoopRestarts == 7)
        #expect(spec.restart.crashLoopWindow == .seconds(3600))
        #expect(spec.stop.signal == .int)
        #expect(spec.stop.timeout == .milliseconds(1500))
        #expect(spec.ready.mode == .notify)
        #expect(spec.ready.timeout == .seconds(45))
        #expect(spec.ready.delay == .seconds(2))
        #expect(spec.ready.watchdog == .seconds(5))
        #expect(spec.reload.surge == 2)
        #expect(spec.logs.maxSize == 20 << 20)
        #expect(spec.logs.keep == 3)
        #expect(spec.logs.target == "journal")
        #expect(spec.limits == [ResourceLimit(name: "core", soft: .max, hard: .max),
                                ResourceLimit(name: "nofile", soft: 65536, hard: 65536)])
        #expect(spec.memoryLimit == 512 << 20)
    }

    @Test func defaultsWhenSectionsAreMissing() throws {
        let spec = try AppConfig.parse(text: """
            name = "web"
            command = ["node"]
            [[socket]]
            listen = "[::]:80"
            """, path: configPath, environment: fakeEnvironment())
        var expected = AppSpec(name: "web", command: ["node"], executable: "/usr/bin/node", workers: 1, cwd: "/etc/swarm",
                               env: [:], sockets: [SocketSpec(name: "http", listen: .tcp(host: "::", port: 80))],
                               sourcePath: configPath)
        expected.ready.mode = .listening
        #expect(spec == expected)
        #expect(spec.restart == RestartPolicy())
        #expect(spec.stop == StopPolicy())
        #expect(spec.logs == LogPolicy())
        #expect(spec.inheritEnvironment)

        let noSockets = try AppConfig.parse(text: "name = \"w\"\ncommand = [\"node\"]\n", path: configPath, environment: fakeEnvironment())
        #expect(noSockets.ready.mode == .delay)
        #expect(noSockets.sockets.isEmpty)
        let emptyReady = try AppConfig.parse(text: "name = \"w\"\ncommand = [\"node\"]\n[ready]\ntimeout = \"5s\"\n",
                                             path: configPath, environment: fakeEnvironment())
        #expect(emptyReady.ready.mode == .delay)
        #expect(emptyReady.ready.timeout == .seconds(5))
    }

    @Test(arguments: [("notify", ReadyMode.notify), ("fd", .fd), ("listening", .listening), ("delay", .delay)])
    func everyReadyMode(text: String, mode: ReadyMode) throws {
        let spec = try AppConfig.parse(text: """
            name = "web"
            command = ["node"]
            [[socket]]
            listen = "127.0.0.1:8080"
            [ready]
            mode = "\(text)"
            delay = "300ms"
            """, path: configPath, environment: fakeEnvironment())
        #expect(spec.ready.mode == mode)
        #expect(spec.ready.delay == .milliseconds(300))
    }

    @Test(arguments: [("\"auto\"", 8, 8), ("\"auto\"", 0, 1), ("1", 8, 1), ("4096", 8, 4096)])
    func workers(value: String, cpus: Int, expected: Int) throws {
        let spec = try AppConfig.parse(text: "name = \"w\"\ncommand = [\"node\"]\nworkers = \(value)\n",
                                       path: configPath, environment: fakeEnvironment(cpus: cpus))
        #expect(spec.workers == expected)
    }

    @Test(arguments: [("\"auto\"", CPUAffinity?.some(.auto)), ("\"none\"", nil), ("[3]", .cpus([3])), ("[1, 0, 7]", .cpus([1, 0, 7]))])
    func cpuAffinity(value: String, expected: CPUAffinity?) throws {
        let spec = try AppConfig.parse(text: "name = \"w\"\ncommand = [\"node\"]\ncpu_affinity = \(value)\n",
                                       path: configPath, environment: fakeEnvironment(cpus: 8))
        #expect(spec.cpuAffinity == expected)
    }

    @Test(arguments: [
        ("\"all\"", "'all': expected \"auto\""),
        ("2", "found integer"),
        ("[]", "the list is empty"),
        ("[0, \"1\"]", "element 1 is string"),
        ("[-1]", "CPU -1 is out of range (0…1023)"),
        ("[1024]", "CPU 1024 is out of range"),
        ("[2, 2]", "CPU 2 is listed twice"),
        ("[1, 9]", "CPU 9 is not available here (this process may use CPUs 0-7)"),
    ])
    func invalidCPUAffinity(value: String, message: String) throws {
        let error = try #require(parseError("name = \"w\"\ncommand = [\"node\"]\n\ncpu_affinity = \(value)\n"))
        #expect(error.key == "cpu_affinity")
        #expect(error.line == 4)
        #expect(error.message.contains(message), "\(error)")
    }

    @Test func slotsMapOntoCPUsRoundRobin() {
        #expect((0..<5).map { CPUAffinity.auto.cpu(forSlot: $0, allowed: [0, 2, 5]) } == [0, 2, 5, 0, 2])
        #expect((0..<3).map { CPUAffinity.cpus([4, 6]).cpu(forSlot: $0, allowed: [0, 1]) } == [4, 6, 4])
        #expect(CPUAffinity.auto.cpu(forSlot: 1, allowed: []) == nil)
    }

    @Test func handOverIsOnUnlessTurnedOff() throws {
        let on = try AppConfig.parse(text: "name = \"w\"\ncommand = [\"node\"]\n", path: configPath, environment: fakeEnvironment())
        #expect(on.reload.handOver)
        let off = try AppConfig.parse(text: "name = \"w\"\ncommand = [\"node\"]\n[reload]\nhand_over = false\n",
                                      path: configPath, environment: fakeEnvironment())
        #expect(!off.reload.handOver)
        #expect(on.reload.minReady == .zero)
        let warm = try AppConfig.parse(text: "name = \"w\"\ncommand = [\"node\"]\n[reload]\nmin_ready = \"1.5s\"\n",
                                       path: configPath, environment: fakeEnvironment())
        #expect(warm.reload.minReady == .milliseconds(1500))
        let bad = try #require(parseError("name = \"w\"\ncommand = [\"node\"]\n[reload]\nmin_ready = \"2h\"\n"))
        #expect(bad.key == "reload.min_ready" && bad.line == 4, "\(bad)")
    }

    @Test(arguments: [
        ("\"SIGTERM\"", Signal.term), ("\"term\"", .term), ("\"SIGHUP\"", .hup), ("\"usr2\"", .usr2), ("9", .kill), ("15", .term), ("34", Signal(34)),
    ])
    func stopSignal(value: String, expected: Signal) throws {
        let spec = try AppConfig.parse(text: "name = \"w\"\ncommand = [\"node\"]\n[stop]\nsignal = \(value)\n",
                                       path: configPath, environment: fakeEnvironment())
        #expect(spec.stop.signal == expected)
    }

    @Test(arguments: [
        ("127.0.0.1:8080", ListenAddress.tcp(host: "127.0.0.1", port: 8080)),
        ("0.0.0.0:1", .tcp(host: "0.0.0.0", port: 1)),
        ("[::]:8080", .tcp(host: "::", port: 8080)),
        ("[::1]:65535", .tcp(host: "::1", port: 65535)),
        ("unix:/run/web.sock", .unix(path: "/run/web.sock")),
        ("unix:web.sock", .unix(path: "/etc/swarm/web.sock")),
        ("unix:../run/./web.sock", .unix(path: "/etc/run/web.sock")),
    ])
    func listenAddresses(text: String, expected: ListenAddress) throws {
        let spec = try AppConfig.parse(text: "name = \"w\"\ncommand = [\"node\"]\n[[socket]]\nlisten = \"\(text)\"\n",
                                       path: configPath, environment: fakeEnvironment())
        #expect(spec.sockets.map(\.listen) == [expected])
    }

    @Test func limitsAndSizes() throws {
        let spec = try AppConfig.parse(text: """
            name = "w"
            command = ["node"]
            [logs]
            max_size = 4096
            [limits]
            nofile = "unlimited"
            nproc = 0
            memory = 1073741824
            """, path: configPath, environment: fakeEnvironment())
        #expect(spec.logs.maxSize == 4096)
        #expect(spec.limits == [ResourceLimit(name: "nofile", soft: .max, hard: .max), ResourceLimit(name: "nproc", soft: 0, hard: 0)])
        #expect(spec.memoryLimit == 1 << 30)
    }

    @Test func rootMayRunAsAnotherUserAndGroup() throws {
        let text = "name = \"w\"\ncommand = [\"node\"]\nuser = \"www-data\"\ngroup = \"www-data\"\n"
        let spec = try AppConfig.parse(text: text, path: configPath, environment: fakeEnvironment(isRoot: true))
        #expect(spec.user == "www-data")
        #expect(spec.group == "www-data")
        // Not root, but running as yourself is fine.
        let own = try AppConfig.parse(text: "name = \"w\"\ncommand = [\"node\"]\nuser = \"app\"\n", path: configPath, environment: fakeEnvironment())
        #expect(own.user == "app")
    }

    // MARK: command resolution

    @Test func commandIsFoundInPATH() throws {
        let env = fakeEnvironment(path: "/nope:/usr/bin", executables: ["/usr/bin/node", "/usr/local/bin/node"])
        let spec = try AppConfig.parse(text: "name = \"w\"\ncommand = [\"node\"]\n", path: configPath, environment: env)
        #expect(spec.executable == "/usr/bin/node")
    }

    @Test func theAppsOwnPATHWinsAndRelativeEntriesFollowCwd() throws {
        let text = """
            name = "w"
            command = ["tool"]
            cwd = "/opt"
            [env]
            PATH = "bin:tools"
            """
        let env = fakeEnvironment(executables: ["/opt/tools/tool", "/usr/bin/tool"], directories: ["/opt"])
        let spec = try AppConfig.parse(text: text, path: configPath, environment: env)
        #expect(spec.executable == "/opt/tools/tool")
    }

    @Test func relativeCommandIsResolvedAgainstCwd() throws {
        let spec = try AppConfig.parse(text: "name = \"w\"\ncommand = [\"bin/server\"]\ncwd = \"/srv/web\"\n",
                                       path: configPath, environment: fakeEnvironment())
        #expect(spec.executable == "/srv/web/bin/server")
        #expect(spec.command == ["bin/server"])
        let dotted = try AppConfig.parse(text: "name = \"w\"\ncommand = [\"./run\"]\ncwd = \"apps\"\n",
                                         path: configPath, environment: fakeEnvironment())
        #expect(dotted.executable == "/etc/swarm/apps/run")
        #expect(dotted.cwd == "/etc/swarm/apps")
        let absolute = try AppConfig.parse(text: "name = \"w\"\ncommand = [\"/usr/bin/node\"]\n",
                                           path: configPath, environment: fakeEnvironment())
        #expect(absolute.executable == "/usr/bin/node")
    }

    // MARK: placeholders

    @Test(arguments: ["{fd:http}", "{port:http}", "--listen=127.0.0.1:{port:http},{fd:http}", "{fd:ctl}", "{fd:http}{fd:ctl}", "plain {notaplaceholder}"])
    func validPlaceholders(arg: String) throws {
        let text = """
            name = "w"
            command = ["node", "\(arg)"]
            [[socket]]
            listen = "127.0.0.1:80"
            [[socket]]
            name = "ctl"
            listen = "unix:/run/ctl.sock"
            """
        #expect(parseError(text) == nil)
    }

    @Test(arguments: [
        ("{fd:nope}", "names socket 'nope'"),
        ("{port:ctl}", "is a unix socket and has no port"),
        ("{fd:http", "unterminated placeholder"),
        ("{fd:}", "names socket ''"),
        ("{port:nope}--{fd:http}", "names socket 'nope'"),
        ("{fd:http}{port:ctl}", "has no port"),
        ("{port:ctl}{fd:http}", "has no port"),
    ])
    func invalidPlaceholders(arg: String, message: String) throws {
        let text = """
            name = "w"
            command = ["node",
                       "\(arg)"]
            [[socket]]
            listen = "127.0.0.1:80"
            [[socket]]
            name = "ctl"
            listen = "unix:/run/ctl.sock"
            """
        let error = try #require(parseError(text))
        #expect(error.key == "command")
        #expect(error.line == 2)
        #expect(error.message.contains(message), "\(error)")
    }

    @Test func errorDescriptionNamesFileLineAndKey() {
        #expect(ConfigError(file: "/a.conf", line: 3, key: "workers", message: "bad").description == "/a.conf:3: workers: bad")
        #expect(ConfigError(file: "/a.conf", line: 0, key: nil, message: "bad").description == "/a.conf: bad")
    }

    @Test func loadReportsMissingFileAndReadsRealFiles() throws {
        #expect(throws: ConfigError(file: "/nonexistent/x.conf", line: 0, key: nil, message: "no such file")) {
            try AppConfig.load(path: "/nonexistent/./x.conf", environment: fakeEnvironment())
        }
        let dir = "/tmp/swarm-config-tests-\(UInt64.random(in: 0 ... .max))"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try "name = \"w\"\ncommand = [\"/bin/sh\"]\n".write(toFile: dir + "/w.conf", atomically: true, encoding: .utf8)
        let env = fakeEnvironment(executables: ["/bin/sh"], directories: [dir])
        let spec = try AppConfig.load(path: dir + "/w.conf", environment: env)
        #expect(spec.cwd == dir)
        #expect(spec.sourcePath == dir + "/w.conf")
    }

    @Test(arguments: [("250ms", Duration.milliseconds(250)), ("10s", .seconds(10)), ("1.5s", .milliseconds(1500)), ("2m", .seconds(120)),
                      ("1h", .seconds(3600)), ("0", .zero), ("5us", .microseconds(5)), ("7ns", .nanoseconds(7)), (" 3s ", .seconds(3))])
    func durations(text: String, expected: Duration) {
        #expect(parseDuration(text) == expected)
    }

    @Test(arguments: ["10", "fast", "-1s", "s", "1.2.3s", "1e3s", "", "1 s", "ms", "1d", "½s"])
    func badDurations(text: String) {
        #expect(parseDuration(text) == nil)
    }

    @Test(arguments: [("10MiB", Int64(10 << 20)), ("512KiB", 512 << 10), ("1GiB", 1 << 30), ("100MB", 100_000_000), ("4096", 4096), ("2K", 2048), ("7B", 7)])
    func sizes(text: String, expected: Int64) {
        #expect(parseSize(text) == expected)
    }

    @Test(arguments: ["big", "-1MiB", "MiB", "1e30GiB", "nan", "inf"])
    func badSizes(text: String) {
        #expect(parseSize(text) == nil)
    }
}

import Foundation

@Suite struct ZeroAndInterceptTests {
    @Test func zeroWorkersAndZeroSurgeAreAccepted() throws {
        let spec = try AppConfig.parse(text: "name = \"w\"\ncommand = [\"node\"]\nworkers = 0\n[reload]\nsurge = 0\nhand_over = false\n",
                                       path: configPath, environment: fakeEnvironment())
        #expect(spec.workers == 0)
        #expect(spec.reload.surge == 0)
        #expect(spec.reload.minReady == .zero)
        #expect(AppConfig.maxWorkers == AppSpec.maxWorkers)
        let full = try AppConfig.parse(text: "name = \"w\"\ncommand = [\"node\"]\nworkers = 4096\n[reload]\nsurge = 4096\n",
                                       path: configPath, environment: fakeEnvironment())
        #expect(full.workers == AppSpec.maxWorkers && full.reload.surge == AppSpec.maxWorkers)
    }

    @Test func interceptDefaultsToTCPOnly() throws {
        let spec = try AppConfig.parse(text: """
            name = "w"
            command = ["node"]
            [[socket]]
            listen = "127.0.0.1:80"
            [[socket]]
            name = "off"
            listen = "[::]:81"
            intercept = false
            [[socket]]
            name = "ctl"
            listen = "unix:/run/ctl.sock"
            [[socket]]
            name = "ctl2"
            listen = "unix:/run/ctl2.sock"
            intercept = false
            """, path: configPath, environment: fakeEnvironment())
        #expect(spec.sockets.map(\.intercept) == [true, false, false, false])
    }

    @Test func specsEncodedBeforeTheNewFieldsStillDecode() throws {
        var spec = AppSpec(name: "w", command: ["node"], workers: 2,
                           sockets: [SocketSpec(name: "http", listen: .tcp(host: "::", port: 80)),
                                     SocketSpec(name: "ctl", listen: .unix(path: "/run/c.sock"))])
        spec.envFiles = ["/srv/.env"]
        let data = try JSONEncoder().encode(spec)
        #expect(try JSONDecoder().decode(AppSpec.self, from: data) == spec)
        // What an older swarmd hands over in a re-exec: no "intercept", no "envFiles".
        var object = try #require(try JSONSerialization.jsonObject(with: data) as? [String: Any])
        object["envFiles"] = nil
        object["sockets"] = (object["sockets"] as? [[String: Any]])?.map { var s = $0; s["intercept"] = nil; return s }
        let old = try JSONDecoder().decode(AppSpec.self, from: JSONSerialization.data(withJSONObject: object))
        #expect(old.envFiles == [])
        #expect(old.sockets.map(\.intercept) == [true, false])
    }
}
