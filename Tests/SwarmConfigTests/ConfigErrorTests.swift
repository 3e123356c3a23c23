import SwarmConfig
import Testing

/// A bad config and exactly where and how it must be reported.
struct BadConfig: CustomTestStringConvertible, Sendable {
    var label: String
    var text: String
    var line: Int
    var key: String?
    var message: String
    var environment: ConfigEnvironment = fakeEnvironment()

    var testDescription: String { label }
}

let app = "name = \"web\"\ncommand = [\"node\"]\n"

let badConfigs: [BadConfig] = [
    BadConfig(label: "TOML syntax error", text: app + "workers = 2\nworkers = = 3\n", line: 4, key: nil, message: "TOML syntax error"),
    BadConfig(label: "unterminated string", text: app + "\n\ncwd = \"/srv\n", line: 5, key: nil, message: "TOML syntax error"),
    BadConfig(label: "unknown top-level key with hint", text: app + "worker = 2\n", line: 3, key: "worker", message: "did you mean 'workers'?"),
    BadConfig(label: "unknown key, no hint", text: app + "\nbanana = 2\n", line: 4, key: "banana", message: "unknown key; allowed here: name"),
    BadConfig(label: "unknown key in [restart]", text: app + "[restart]\npolicy = \"always\"\ninital_delay = \"1s\"\n",
              line: 5, key: "restart.inital_delay", message: "did you mean 'initial_delay'?"),
    BadConfig(label: "unknown key in second [[socket]]",
              text: app + "[[socket]]\nlisten = \"127.0.0.1:80\"\nbacklog = 10\n\n[[socket]]\nname = \"b\"\nlisten = \"127.0.0.1:81\"\nbalanse = \"shared\"\n",
              line: 10, key: "socket[1].balanse", message: "did you mean 'balance'?"),
    BadConfig(label: "workers is a word", text: app + "workers = \"many\"\n", line: 3, key: "workers", message: "'many'"),
    BadConfig(label: "workers is a float", text: app + "workers = 2.5\n", line: 3, key: "workers", message: "expected a number of workers"),
    BadConfig(label: "command is a string", text: "name = \"web\"\ncommand = \"node server.js\"\n", line: 2, key: "command",
              message: "commands never go through a shell"),
    BadConfig(label: "command element is a number", text: "name = \"web\"\ncommand = [\"node\", 3]\n", line: 2, key: "command", message: "element 1"),
    BadConfig(label: "empty command", text: "name = \"web\"\ncommand = []\n", line: 2, key: "command", message: "must not be empty"),
    BadConfig(label: "env value is a table", text: app + "[env]\nA = \"1\"\nB = { C = 1 }\n", line: 5, key: "env.B", message: "expected a string, found table"),
    BadConfig(label: "env value is an array", text: app + "env.A = [1]\n", line: 3, key: "env.A", message: "expected a string, found array"),
    BadConfig(label: "bad env name", text: app + "[env]\n\"1A\" = \"x\"\n", line: 4, key: "env.1A", message: "not a valid environment variable name"),
    BadConfig(label: "workers below zero", text: app + "workers = -5\n", line: 3, key: "workers", message: "-5 is out of range (0…4096"),
    BadConfig(label: "workers too many", text: app + "workers = 4097\n", line: 3, key: "workers", message: "out of range"),
    BadConfig(label: "workers negative", text: app + "workers = -1\n", line: 3, key: "workers", message: "out of range"),
    BadConfig(label: "duration without unit", text: app + "[stop]\ntimeout = \"10\"\n", line: 4, key: "stop.timeout", message: "'10' is not a duration"),
    BadConfig(label: "duration is a word", text: app + "[restart]\nmax_delay = \"fast\"\n", line: 4, key: "restart.max_delay", message: "'fast' is not a duration"),
    BadConfig(label: "negative duration", text: app + "[ready]\ntimeout = \"-1s\"\n", line: 4, key: "ready.timeout", message: "'-1s' is not a duration"),
    BadConfig(label: "duration is a number", text: app + "[ready]\ntimeout = 10\n", line: 4, key: "ready.timeout", message: "expected a duration string"),
    BadConfig(label: "duration too long", text: app + "[stop]\ntimeout = \"2h\"\n", line: 4, key: "stop.timeout", message: "is longer than"),
    BadConfig(label: "zero ready timeout", text: app + "[ready]\ntimeout = \"0\"\n", line: 4, key: "ready.timeout", message: "must be positive"),
    BadConfig(label: "max_delay under initial_delay", text: app + "[restart]\ninitial_delay = \"5s\"\nmax_delay = \"1s\"\n",
              line: 5, key: "restart.max_delay", message: "must not be shorter than initial_delay"),
    BadConfig(label: "host name", text: app + "[[socket]]\nlisten = \"localhost:80\"\n", line: 4, key: "socket[0].listen", message: "not a numeric IPv4 address"),
    BadConfig(label: "no port", text: app + "[[socket]]\nlisten = \"1.2.3.4\"\n", line: 4, key: "socket[0].listen", message: "use \"HOST:PORT\""),
    BadConfig(label: "port zero", text: app + "[[socket]]\nlisten = \"1.2.3.4:0\"\n", line: 4, key: "socket[0].listen", message: "'0' is not a port"),
    BadConfig(label: "port too big", text: app + "[[socket]]\nlisten = \"1.2.3.4:70000\"\n", line: 4, key: "socket[0].listen", message: "'70000' is not a port"),
    BadConfig(label: "IPv6 without colon", text: app + "[[socket]]\nlisten = \"[::1]8080\"\n", line: 4, key: "socket[0].listen", message: "IPv6 is written"),
    BadConfig(label: "bad IPv6", text: app + "[[socket]]\nlisten = \"[::g]:80\"\n", line: 4, key: "socket[0].listen", message: "not an IPv6 address"),
    BadConfig(label: "empty unix path", text: app + "[[socket]]\nlisten = \"unix:\"\n", line: 4, key: "socket[0].listen", message: "path is empty"),
    BadConfig(label: "unix path too long", text: app + "[[socket]]\nlisten = \"unix:/\(String(repeating: "a", count: 120))\"\n",
              line: 4, key: "socket[0].listen", message: "longer than a unix socket path"),
    BadConfig(label: "missing listen", text: app + "[[socket]]\nname = \"a\"\n", line: 3, key: "socket[0]", message: "missing 'listen'"),
    BadConfig(label: "duplicate socket name",
              text: app + "[[socket]]\nname = \"a\"\nlisten = \"127.0.0.1:80\"\n[[socket]]\nname = \"a\"\nlisten = \"127.0.0.1:81\"\n",
              line: 7, key: "socket[1].name", message: "a socket named 'a' is already defined"),
    BadConfig(label: "duplicate socket address",
              text: app + "[[socket]]\nlisten = \"unix:/run/a.sock\"\n[[socket]]\nname = \"b\"\nlisten = \"unix:/run/../run/a.sock\"\n",
              line: 7, key: "socket[1].listen", message: "already used by socket 'http'"),
    BadConfig(label: "second socket needs a name",
              text: app + "[[socket]]\nlisten = \"127.0.0.1:80\"\n[[socket]]\nlisten = \"127.0.0.1:81\"\n",
              line: 5, key: "socket[1].name", message: "'' is not a valid socket name"),
    BadConfig(label: "mode on a TCP socket", text: app + "[[socket]]\nlisten = \"127.0.0.1:80\"\nmode = \"0600\"\n",
              line: 5, key: "socket[0].mode", message: "only unix sockets"),
    BadConfig(label: "bad balance", text: app + "[[socket]]\nlisten = \"127.0.0.1:80\"\nbalance = \"random\"\n",
              line: 5, key: "socket[0].balance", message: "not one of: reuseport, shared"),
    BadConfig(label: "socket is a plain table", text: app + "[socket]\nlisten = \"127.0.0.1:80\"\n", line: 3, key: "socket", message: "expected [[socket]] tables"),
    BadConfig(label: "missing name", text: "command = [\"node\"]\n", line: 0, key: "name", message: "missing"),
    BadConfig(label: "missing command", text: "name = \"web\"\n", line: 0, key: "command", message: "missing"),
    BadConfig(label: "upper-case name", text: "name = \"Web\"\ncommand = [\"node\"]\n", line: 1, key: "name", message: "'Web' is not a valid name"),
    BadConfig(label: "reserved name", text: "command = [\"node\"]\nname = \"all\"\n", line: 2, key: "name", message: "'all' is reserved"),
    BadConfig(label: "empty name", text: "name = \"\"\ncommand = [\"node\"]\n", line: 1, key: "name", message: "not a valid name"),
    BadConfig(label: "missing binary", text: "name = \"web\"\ncommand = [\"nosuch\"]\n", line: 2, key: "command", message: "'nosuch' was not found in PATH"),
    BadConfig(label: "missing relative binary", text: "name = \"web\"\ncommand = [\"./nosuch\"]\n", line: 2, key: "command",
              message: "'/etc/swarm/nosuch' does not exist or is not executable"),
    BadConfig(label: "non-executable binary", text: "name = \"web\"\ncommand = [\"/usr/bin/node\"]\n", line: 2, key: "command",
              message: "'/usr/bin/node' does not exist or is not executable", environment: fakeEnvironment(executables: [])),
    BadConfig(label: "cwd is not a directory", text: app + "cwd = \"/nope\"\n", line: 3, key: "cwd", message: "'/nope' is not a directory"),
    BadConfig(label: "unknown signal", text: app + "[stop]\nsignal = \"SIGFOO\"\n", line: 4, key: "stop.signal", message: "'SIGFOO' is not a signal"),
    BadConfig(label: "signal number out of range", text: app + "[stop]\nsignal = 65\n", line: 4, key: "stop.signal", message: "65 is not a signal number (1…64)"),
    BadConfig(label: "listening without sockets", text: app + "[ready]\nmode = \"listening\"\n", line: 4, key: "ready.mode", message: "needs a [[socket]]"),
    BadConfig(label: "unknown ready mode", text: app + "[ready]\nmode = \"magic\"\n", line: 4, key: "ready.mode", message: "not one of: notify, fd"),
    BadConfig(label: "watchdog without notify", text: app + "[ready]\nmode = \"fd\"\nwatchdog = \"1s\"\n", line: 5, key: "ready.watchdog",
              message: "needs mode = \"notify\""),
    BadConfig(label: "watchdog too short", text: app + "[ready]\nmode = \"notify\"\nwatchdog = \"1ms\"\n", line: 5, key: "ready.watchdog",
              message: "at least 10ms"),
    BadConfig(label: "non-root asks for another user", text: app + "user = \"www-data\"\n", line: 3, key: "user", message: "not root"),
    BadConfig(label: "non-root asks for a group", text: app + "group = \"app\"\n", line: 3, key: "group", message: "is not root"),
    BadConfig(label: "unknown user", text: app + "user = \"nobody-here\"\n", line: 3, key: "user", message: "no user named 'nobody-here'",
              environment: fakeEnvironment(isRoot: true)),
    BadConfig(label: "unknown group", text: app + "group = \"nogroup-here\"\n", line: 3, key: "group", message: "no group named",
              environment: fakeEnvironment(isRoot: true)),
    BadConfig(label: "key inside an inline table", text: app + "env = { A = 1, B = {} }\n", line: 3, key: "env.B", message: "found table"),
    BadConfig(label: "multi-line arrays before the bad key",
              text: "name = \"web\"\ncommand = [\n  \"node\",\n  \"a]b\", # ]]\n  \"x\",\n]\n[env]\nX = [\n  [1, 2],\n  [3],\n]\n",
              line: 8, key: "env.X", message: "found array"),
    BadConfig(label: "multi-line array then unknown key",
              text: "command = [\n  \"node\",\n  \"server.js\"\n]\nname = \"web\"\n[restart]\npolicy = \"sometimes\"\n",
              line: 7, key: "restart.policy", message: "'sometimes' is not one of"),
    BadConfig(label: "'#' inside strings",
              text: "name = \"web\" # [stop]\ncommand = [\"node\", \"#[ready]\", '#'] # \"\nenv.A = \"#\" # x = [\nworkers = \"#\"\n",
              line: 4, key: "workers", message: "'#'"),
    BadConfig(label: "escaped quotes in strings",
              text: "name = \"web\"\ncommand = [\"node\", \"a\\\"[\", \"b\"]\nenv.A = \"\\\"#\"\nworkers = true\n",
              line: 4, key: "workers", message: "found bool"),
    BadConfig(label: "multi-line string", text: app + "env.A = \"\"\"\n[stop]\nworkers = 1\n\"\"\"\nworkers = -1\n",
              line: 7, key: "workers", message: "out of range"),
    BadConfig(label: "CRLF line ends", text: "name = \"web\"\r\ncommand = [\"node\"]\r\n\r\nworkers = -1\r\n",
              line: 4, key: "workers", message: "out of range"),
    BadConfig(label: "negative surge", text: app + "[reload]\nsurge = -1\n", line: 4, key: "reload.surge", message: "-1 is out of range (0…4096)"),
    BadConfig(label: "surge too big", text: app + "[reload]\nsurge = 4097\n", line: 4, key: "reload.surge", message: "out of range (0…4096)"),
    BadConfig(label: "surge 0 with min_ready", text: app + "[reload]\nsurge = 0\nmin_ready = \"1s\"\n", line: 5, key: "reload.min_ready",
              message: "needs surge ≥ 1"),
    BadConfig(label: "intercept on a unix socket", text: app + "[[socket]]\nlisten = \"unix:/run/a.sock\"\nintercept = true\n",
              line: 5, key: "socket[0].intercept", message: "only TCP sockets can be intercepted"),
    BadConfig(label: "intercept is a string", text: app + "[[socket]]\nlisten = \"127.0.0.1:80\"\nintercept = \"yes\"\n",
              line: 5, key: "socket[0].intercept", message: "expected true or false, found string"),
    BadConfig(label: "lone surrogate in the name", text: "name = \"\\ud800\"\ncommand = [\"node\"]\n", line: 1, key: nil, message: "unicode surrogates (U+D800 - U+DFFF) are explicitly prohibited"),
    BadConfig(label: "combining mark in the name", text: "name = \"we\\u0301b\"\ncommand = [\"node\"]\n", line: 1, key: "name",
              message: "is not a valid name"),
    BadConfig(label: "escape sequence in the name", text: "name = \"w\\u001b[2J\"\ncommand = [\"node\"]\n", line: 1, key: "name",
              message: "'w\\u{1b}[2J' is not a valid name"),
    BadConfig(label: "bad log size", text: app + "[logs]\nmax_size = \"1KiB\"\n", line: 4, key: "logs.max_size", message: "at least 4KiB"),
    BadConfig(label: "bad log target", text: app + "[logs]\ntarget = \"syslog\"\n", line: 4, key: "logs.target", message: "not one of: auto, file, journal"),
    BadConfig(label: "bad limit", text: app + "[limits]\nnofile = -1\n", line: 4, key: "limits.nofile", message: "non-negative integer or \"unlimited\""),
    BadConfig(label: "unknown limit", text: app + "[limits]\nnofiles = 1\n", line: 4, key: "limits.nofiles", message: "did you mean 'nofile'?"),
    BadConfig(label: "bad memory", text: app + "[limits]\nmemory = \"lots\"\n", line: 4, key: "limits.memory", message: "expected a size"),
    BadConfig(label: "section is a value", text: app + "restart = \"always\"\n", line: 3, key: "restart", message: "expected a table, found string"),
    // toml++ asserts on these (tomlplusplus#301): swarm must report them instead.
    BadConfig(label: "header [=]", text: app + "[=]\n", line: 3, key: nil, message: "a table header needs a key"),
    BadConfig(label: "header [[[1]]]", text: app + "\n[[[1]]]\n", line: 4, key: nil, message: "a table header needs a key"),
    BadConfig(label: "lone [", text: app + "[\nworkers = 1\n", line: 3, key: nil, message: "a table header needs a key"),
    BadConfig(label: "lone [ at the end", text: app + "  [", line: 3, key: nil, message: "TOML syntax error"),
    BadConfig(label: "header [#]", text: app + "[#restart]\n", line: 3, key: nil, message: "a table header needs a key"),
    BadConfig(label: "header [[ =", text: app + "[[ =\n", line: 3, key: nil, message: "a table header needs a key"),
    BadConfig(label: "header after CRLF", text: "name = \"web\"\r\n[\r\n", line: 2, key: nil, message: "a table header needs a key"),
    BadConfig(label: "header after BOM", text: "\u{FEFF}[=]\n" + app, line: 1, key: nil, message: "a table header needs a key"),
    BadConfig(label: "earlier syntax error wins", text: app + "workers = = 1\n[=]\n", line: 3, key: nil, message: "TOML syntax error"),
    BadConfig(label: "header [ [", text: app + "[ [a]]\n", line: 3, key: nil, message: "must be contiguous"),
    BadConfig(label: "nested arrays are not headers", text: app + "x = [\n  [[1]],\n  [{a = 1}],\n]\n", line: 3, key: "x", message: "unknown key"),
    BadConfig(label: "NUL byte", text: app + "env.A = \"a\0b\"\n", line: 0, key: nil, message: "NUL byte"),
    // Inputs that used to get a misleading answer, or none.
    BadConfig(label: "duration too long to count", text: app + "[stop]\ntimeout = \"99999999999h\"\n", line: 4, key: "stop.timeout",
              message: "'99999999999h' is longer than 1h"),
    BadConfig(label: "abstract unix socket", text: app + "[[socket]]\nlisten = \"unix:@web\"\n", line: 4, key: "socket[0].listen",
              message: "abstract unix sockets are not supported"),
    BadConfig(label: "port with a sign", text: app + "[[socket]]\nlisten = \"127.0.0.1:+80\"\n", line: 4, key: "socket[0].listen",
              message: "'+80' is not a port"),
    BadConfig(label: "empty cwd", text: app + "cwd = \"\"\n", line: 3, key: "cwd", message: "is empty: use \".\""),
    BadConfig(label: "env value is a float", text: app + "env.A = 1.5\n", line: 3, key: "env.A", message: "found floating-point number"),
    BadConfig(label: "unknown dotted key", text: app + "\na.b = 1\n", line: 4, key: "a", message: "unknown key"),
]

@Suite struct ConfigErrorTests {
    @Test(arguments: badConfigs)
    func badConfigIsReportedPrecisely(_ bad: BadConfig) throws {
        let error = try #require(parseError(bad.text, environment: bad.environment), "\(bad.label) parsed")
        #expect(error.file == configPath)
        #expect(error.line == bad.line, "\(error)")
        #expect(error.key == bad.key, "\(error)")
        #expect(error.message.contains(bad.message), "\(error)")
    }
}

@Suite struct EveryErrorOfAFileTests {
    @Test func everyProblemIsReportedInLineOrder() throws {
        let text = """
            name = "Web"
            command = ["node"]
            workers = -1
            [[socket]]
            listen = "localhost:80"
            [restart]
            policy = "sometimes"
            initial_delay = "soon"
            [stop]
            signal = "SIGFOO"
            [logs]
            keep = 1000
            colour = true
            """
        let error = try #require(parseError(text))
        #expect(error.all.map(\.line) == [1, 3, 5, 7, 8, 10, 12, 13], "\(error)")
        #expect(error.all.map(\.key) == ["name", "workers", "socket[0].listen", "restart.policy", "restart.initial_delay", "stop.signal",
                                         "logs.keep", "logs.colour"], "\(error)")
        // The first is the error itself, as before there were several.
        #expect(error.line == 1 && error.key == "name" && error.message.contains("'Web' is not a valid name"))
        let lines = error.description.split(separator: "\n")
        #expect(lines.count == 8)
        #expect(lines.allSatisfy { $0.hasPrefix(configPath + ":") }, "\(error)")
    }

    @Test func aCheckThatNeedsAFailedValueIsSkipped() throws {
        // The bad socket must not also make {fd:http} an unknown socket, nor the
        // listening mode an app without sockets.
        let sockets = try #require(parseError(app.replacingOccurrences(of: "[\"node\"]", with: "[\"node\", \"{fd:http}\"]")
                                              + "[[socket]]\nlisten = \"nowhere\"\n[ready]\nmode = \"listening\"\n"))
        #expect(sockets.all.map(\.key) == ["socket[0].listen"], "\(sockets)")
        // A bad env entry may be the PATH that finds the command.
        let env = try #require(parseError("name = \"w\"\ncommand = [\"tool\"]\n[env]\nPATH = [\"/opt\"]\n",
                                          environment: fakeEnvironment(executables: ["/opt/tool"])))
        #expect(env.all.map(\.key) == ["env.PATH"], "\(env)")
        // A bad initial_delay is not compared with max_delay.
        let delays = try #require(parseError(app + "[restart]\ninitial_delay = \"x\"\nmax_delay = \"10ms\"\n"))
        #expect(delays.all.map(\.key) == ["restart.initial_delay"], "\(delays)")
        let watchdog = try #require(parseError(app + "[ready]\nmode = \"notifyy\"\nwatchdog = \"1s\"\n"))
        #expect(watchdog.all.map(\.key) == ["ready.mode"], "\(watchdog)")
    }

    @Test func manyErrorsAreCapped() throws {
        let keys = (0..<60).map { "unknown_\($0) = 1" }.joined(separator: "\n")
        let error = try #require(parseError(app + keys + "\n"))
        #expect(error.all.count == ConfigError.maxReported)
        #expect(error.all.last?.message == "11 more errors from this line on, not shown", "\(error.all.last!)")
        #expect(error.all.last?.line == 3 + 49, "\(error.all.last!)")
        #expect(zip(error.all, error.all.dropFirst()).allSatisfy { $0.line <= $1.line })
        #expect(error.all.dropLast().allSatisfy { $0.message.hasPrefix("unknown key") })
    }

    @Test func controlCharactersInQuotedInputAreEscaped() throws {
        let error = try #require(parseError(app + "workers = \"\\u001b[2J\\r\\nforged\"\n"))
        #expect(!error.description.unicodeScalars.contains { $0.value < 0x20 && $0 != "\n" }, "\(error)")
        #expect(error.description.split(separator: "\n").count == 1)
        #expect(error.message.contains("'\\u{1b}[2J\\r\\nforged'"), "\(error)")
    }

    @Test func smallerFixes() throws {
        // "0" as a string is a size; rate 0 means no limit either way.
        #expect(try AppConfig.parse(text: app + "[logs]\nrate = \"0\"\n", path: configPath, environment: fakeEnvironment()).logs.rate == 0)
        #expect(try AppConfig.parse(text: app + "[logs]\nrate = 0\n", path: configPath, environment: fakeEnvironment()).logs.rate == 0)
        #expect(parseError(app + "[logs]\nmax_size = \"0\"\n")?.message == "must be positive")
        // TOML's octal integers are file modes too.
        let spec = try AppConfig.parse(text: app + "[[socket]]\nlisten = \"unix:/run/a.sock\"\nmode = 0o640\n", path: configPath,
                                       environment: fakeEnvironment())
        #expect(spec.sockets.first?.mode == 0o640)
        #expect(parseError(app + "[[socket]]\nlisten = \"unix:/run/a.sock\"\nmode = 0o1777\n")?.message == "0o1777 is not a file mode (0o0…0o777)")
        #expect(parseError(app + "[[socket]]\nlisten = \"unix:/run/a.sock\"\nmode = \"rw-rw----\"\n")?.message.contains("'rw-rw----' is not an octal file mode") == true)
    }
}
