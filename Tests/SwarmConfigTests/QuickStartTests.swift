import Foundation
import SwarmConfig
import SwarmCore
import Testing

@Suite struct QuickStartTests {
    static let oddArguments = [
        "server.js", "a \"quoted\" \\ back", "tab\there", "new\nline", "cr\rlf", "\u{7F}del", "\u{1}ctl\u{1B}[2J", "é🙂",
        "#not a comment", "'''", "\"\"\"", "[x]", "= =", "{plain}", "\\u0041", "",
    ]

    /// Renders, writes the text where swarmd would (a state dir), loads it back.
    func roundTrip(name: String = "web", instances: QuickStart.Instances = .count(4), listen: String? = nil,
                   env: [String] = [], command: [String], cwd: String = "/srv/web", cpus: Int = 8) throws -> (AppSpec, String) {
        let dir = try TempDir()
        defer { dir.remove() }
        let text = try QuickStart.render(name: name, instances: instances, listen: listen, env: env, command: command, cwd: cwd)
        try dir.write("\(name).conf", text)
        let environment = fakeEnvironment(cpus: cpus, directories: [dir.path, "/srv/web"])
        return (try AppConfig.load(path: dir.path + "/\(name).conf", environment: environment), dir.path + "/\(name).conf")
    }

    @Test func oddArgumentsAndEnvValuesSurviveTheRoundTrip() throws {
        let command = ["node"] + Self.oddArguments + ["--fd={fd:http}", "--port={port:http}"]
        let env = ["NODE_ENV=production", "EQ=a=b=c", "EMPTY=", "MULTI=line1\nline2", "SLASH=\\", "HASH=# x", "QUOTE=\"'",
                   "CTL=\u{1}\u{1F}\u{7F}", "UNI=ünï🙂", "NODE_ENV=staging"]
        let (spec, path) = try roundTrip(listen: "127.0.0.1:3000", env: env, command: command)
        var expected = AppSpec(name: "web", command: command, executable: "/usr/bin/node", workers: 4, cwd: "/srv/web",
                               env: ["NODE_ENV": "staging", "EQ": "a=b=c", "EMPTY": "", "MULTI": "line1\nline2", "SLASH": "\\",
                                     "HASH": "# x", "QUOTE": "\"'", "CTL": "\u{1}\u{1F}\u{7F}", "UNI": "ünï🙂"],
                               sockets: [SocketSpec(name: "http", listen: .tcp(host: "127.0.0.1", port: 3000), intercept: true)],
                               sourcePath: path)
        expected.ready.mode = .listening
        #expect(spec == expected)
    }

    @Test func withoutListenOrEnvAndWithMax() throws {
        let (spec, path) = try roundTrip(name: "worker_1", instances: .max, command: ["/usr/bin/node", "queue.js"], cpus: 6)
        var expected = AppSpec(name: "worker_1", command: ["/usr/bin/node", "queue.js"], executable: "/usr/bin/node", workers: 6,
                               cwd: "/srv/web", sourcePath: path)
        expected.ready.mode = .delay
        #expect(spec == expected)
        #expect(throws: QuickStartError.self, "a quick start of 0 workers is refused") {
            try roundTrip(instances: .count(0), command: ["node"])
        }
    }

    @Test(arguments: [("[::1]:8080", ListenAddress.tcp(host: "::1", port: 8080)), ("0.0.0.0:80", .tcp(host: "0.0.0.0", port: 80)),
                      ("unix:/run/web.sock", .unix(path: "/run/web.sock")), ("unix:run/../web.sock", .unix(path: "/srv/web/web.sock"))])
    func listenAddresses(text: String, expected: ListenAddress) throws {
        let (spec, _) = try roundTrip(listen: text, command: ["node"])
        #expect(spec.sockets == [SocketSpec(name: "http", listen: expected)])
        #expect(spec.sockets[0].intercept == expected.isTCP)
    }

    @Test func instancesText() throws {
        #expect(try QuickStart.instances("4") == .count(4))
        #expect(try QuickStart.instances("4096") == .count(4096))
        #expect(try QuickStart.instances("max") == .max)
        for bad in ["0", "-1", "+4", "4097", "99999999999999999999999", "lots", "", "4.5", " 4", "MAX", "٣"] {
            #expect(throws: QuickStartError.self, "'\(bad)'") { try QuickStart.instances(bad) }
        }
        #expect(throws: QuickStartError(option: "-i", message: "'lots' is not a number of instances (1…4096) or \"max\"")) {
            try QuickStart.instances("lots")
        }
        #expect(throws: QuickStartError(option: "-i", message: "'0' is not a number of instances (1…4096) or \"max\"")) {
            try QuickStart.instances("0")
        }
    }

    @Test(arguments: [
        ("Web", nil, [String](), ["node"], "/srv", "--name", "'Web' is not a valid name"),
        ("all", nil, [], ["node"], "/srv", "--name", "'all' is reserved"),
        ("we\u{1B}b", nil, [], ["node"], "/srv", "--name", "'we\\u{1b}b' is not a valid name"),
        ("web", "localhost:3000", [], ["node"], "/srv", "--listen", "'localhost' is not a numeric IPv4 address"),
        ("web", "3000", [], ["node"], "/srv", "--listen", "use \"HOST:PORT\""),
        ("web", "127.0.0.1:0", [], ["node"], "/srv", "--listen", "'0' is not a port"),
        ("web", nil, ["NOEQUALS"], ["node"], "/srv", "--env", "'NOEQUALS' is not KEY=VALUE"),
        ("web", nil, ["1A=x"], ["node"], "/srv", "--env", "'1A' is not a valid environment variable name"),
        ("web", nil, ["=x"], ["node"], "/srv", "--env", "'' is not a valid environment variable name"),
        ("web", nil, ["A=x\0y"], ["node"], "/srv", "--env", "the value of A contains a NUL byte"),
        ("web", nil, [], [], "/srv", "command", "missing"),
        ("web", nil, [], [""], "/srv", "command", "missing"),
        ("web", nil, [], ["node", "a\0"], "/srv", "command", "argument 1 contains a NUL byte"),
        ("web", nil, [], ["node"], "srv", "--cwd", "'srv' is not an absolute path"),
    ])
    func badInputsNameTheirOption(name: String, listen: String?, env: [String], command: [String], cwd: String,
                                  option: String, message: String) {
        do {
            _ = try QuickStart.render(name: name, instances: .count(1), listen: listen, env: env, command: command, cwd: cwd)
            Issue.record("rendered")
        } catch {
            #expect(error.option == option, "\(error)")
            #expect(error.message.contains(message), "\(error)")
        }
    }

    @Test func placeholdersWithoutASocketAreCaughtByTheLoader() throws {
        // render does not second-guess the command: the loader's own check answers, as for any config.
        #expect(throws: ConfigError.self) { try roundTrip(command: ["node", "--fd={fd:http}"]) }
    }

    /// What swarmd runs for a quick start: flags in, the text it will write and the spec, or an error naming a flag.
    func load(instances: String = "2", listen: String? = "127.0.0.1:3000", env: [String] = [], command: [String] = ["/usr/bin/node", "server.js"],
              cwd: String = "/srv/web", executables: Set<String> = defaultExecutables) throws(QuickStartError) -> (text: String, spec: AppSpec) {
        try QuickStart.load(name: "web", instances: instances, listen: listen, env: env, command: command, cwd: cwd,
                            path: "/var/lib/swarm/apps/web.conf", environment: fakeEnvironment(cpus: 3, executables: executables))
    }

    @Test func loadGivesTheTextAndTheSpecOfThatFile() throws {
        let (text, spec) = try load(instances: "max", env: ["NODE_ENV=production"])
        #expect(spec.sourcePath == "/var/lib/swarm/apps/web.conf")
        #expect(spec.workers == 3, "max: one per CPU swarmd may use")
        #expect(text.contains("workers = \"auto\""), "max stays 'auto' in the file, so a reload on other CPUs follows: \(text)")
        #expect(spec.env == ["NODE_ENV": "production"])
        #expect(spec.sockets == [SocketSpec(name: "http", listen: .tcp(host: "127.0.0.1", port: 3000), intercept: true)])
        #expect(try AppConfig.parse(text: text, path: spec.sourcePath, environment: fakeEnvironment(cpus: 3)) == spec)
        let queue = try load(listen: nil, command: ["/usr/bin/node", "queue.js"]).spec
        #expect(queue.sockets.isEmpty && queue.ready.mode == .delay, "without --listen: no socket, ready after the delay")
    }

    @Test(arguments: [
        (["/usr/bin/nodee", "server.js"], "/srv/web", "command", "'/usr/bin/nodee' does not exist or is not executable"),
        (["nodee"], "/srv/web", "command", "'nodee' was not found in PATH"),
        (["./run"], "/srv/web", "command", "'/srv/web/run' does not exist or is not executable"),
        (["/usr/bin/node", "--port={port:db}"], "/srv/web", "command", "names socket 'db'"),
        (["/usr/bin/node"], "/srv/nowhere", "--cwd", "not a directory"),
    ])
    func loaderProblemsNameTheFlag(command: [String], cwd: String, option: String, message: String) {
        do {
            _ = try load(command: command, cwd: cwd)
            Issue.record("loaded \(command) in \(cwd)")
        } catch {
            #expect(error.option == option, "\(error)")
            #expect(error.message.contains(message), "\(error)")
            #expect(!error.description.contains("apps/web.conf"), "the user never saw that file: \(error)")
        }
    }

    @Test func flagsAreCheckedBeforeTheLoader() {
        #expect(throws: QuickStartError(option: "-i", message: "'0' is not a number of instances (1…4096) or \"max\"")) { try load(instances: "0") }
        #expect(throws: QuickStartError.self) { try load(listen: "127.0.0.1:99999") }
        #expect(throws: QuickStartError(option: "--env", message: "'X' is not KEY=VALUE")) { try load(env: ["X"]) }
    }
}
