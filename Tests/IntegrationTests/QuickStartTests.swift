import Foundation
import Glibc
import SwarmProtocol
import SwarmSystem
import Testing

// The PM2-style quick start (issue 14 item 2): `swarmctl start --name web -i N
// --listen ADDR --env K=V -- CMD` with no config file, as a new user types it.

extension Swarm {
    /// swarmctl with `--socket` first: everything after a quick start's `--` is the app's command.
    func quick(_ args: [String]) async throws -> CtlResult { try await ctl(["--socket", socket] + args, socket: false) }

    func quickOK(_ args: [String], sourceLocation: SourceLocation = #_sourceLocation) async throws -> CtlResult {
        let r = try await quick(args)
        guard r.code == 0 else { throw HarnessError("expected success from \(r)\nswarmd log:\n\(daemonLog.suffix(3000))") }
        return r
    }

    var quickStartDir: String { stateDir + "/apps" }
}

/// A Node server on fd 3 that answers its pid on `/` and `VERSION PORT GREETING` on `/info`,
/// and drains on SIGTERM. (A `listen(PORT)` server needs bind interception: see QuickStartInterceptTests.)
let quickNodeServer = """
    const http = require('http');
    const version = require('fs').readFileSync(__dirname + '/version.txt', 'utf8').trim();
    const server = http.createServer((req, res) => {
      res.setHeader('Connection', 'close');
      res.end(req.url === '/info' ? `${version} ${process.env.PORT} ${process.env.GREETING}\\n` : `${process.pid}\\n`);
    });
    server.listen({ fd: 3 });
    process.on('SIGTERM', () => server.close(() => process.exit(0)));
    """

/// Keys of a process's environment.
func environment(of pid: Int32) -> [String: String] {
    var env: [String: String] = [:]
    for entry in readText("/proc/\(pid)/environ").split(separator: "\0") {
        guard let eq = entry.firstIndex(of: "=") else { continue }
        env[String(entry[..<eq])] = String(entry[entry.index(after: eq)...])
    }
    return env
}

@Suite("Quick start: an app from swarmctl flags, no config file")
struct QuickStartTests {
    @Test("start --name web -i 2 --listen --env -- node app.js: serves, is remembered, reloads new code, survives a swarmd restart, delete removes its file")
    func quickStartWithListen() async throws {
        try await withSwarm { s in
            let port = try Ports.free()
            try s.write("app.js", quickNodeServer)
            try s.write("version.txt", "v1\n")
            try await s.startDaemon()
            let r = try await s.quickOK(["start", "--name", "web", "-i", "2", "--listen", "127.0.0.1:\(port)", "--env", "GREETING=hello world",
                                         "--", "node", "app.js"])
            let file = s.quickStartDir + "/web.conf"
            #expect(r.out.contains("web: config \(file)") && r.out.contains("2/2 workers ready"), "\(r)")
            let pids = try await s.waitReady("web", workers: 2)
            #expect(Set(try answeringPids(port, connections: 24).keys) == Set(pids), "both workers answer on the one port")
            #expect(try httpGet(port, "/info").body == "v1 \(port) hello world\n", "PORT is the port; --env reached the workers")

            // The file is an ordinary config: what the flags said, interception on for the socket.
            let text = readText(file)
            for line in ["name = \"web\"", "command = [\"\(Paths.node)\", \"app.js\"]", "workers = 2", "cwd = \"\(s.dir)\"",
                         "GREETING = \"hello world\"", "listen = \"127.0.0.1:\(port)\"", "intercept = true"] {
                #expect(text.contains(line), "\(file) lacks \(line):\n\(text)")
            }
            var st: FileStatus? = try? FileSystem.status(file)
            #expect(st?.permissions == 0o600, "the generated config is swarmd's own: mode \(String(st?.permissions ?? 0, radix: 8))")
            let app = try reloadApp(try await s.status(), "web")
            #expect(app.config == file, "status names the generated file: \(app.config)")
            #expect(try await s.ctlOK("status").out.contains("config \(file)"), "the status table names it too")
            #expect(readText(s.stateDir + "/apps.json").contains(file), "remembered: \(readText(s.stateDir + "/apps.json"))")

            // reload: the same command on the code now on disk.
            try s.write("version.txt", "v2\n")
            try await s.ctlOK("reload", "web")
            let reloaded = try await expectReplaced(s, "web", workers: 2, before: pids, generation: 2)
            #expect(try httpGet(port, "/info").body == "v2 \(port) hello world\n")

            // A swarmd restart brings it back from apps.json and that file.
            #expect(try await s.stopDaemon() == 0)
            try await s.startDaemon()
            let again = try await s.waitReady("web", workers: 2)
            #expect(Set(again).isDisjoint(with: reloaded))
            #expect(Set(try answeringPids(port, connections: 24).keys) == Set(again))
            #expect(try reloadApp(try await s.status(), "web").config == file)

            try await s.ctlOK("delete", "web")
            st = try? FileSystem.status(file)
            #expect(st == nil, "delete removes the generated config")
            #expect(!readText(s.stateDir + "/apps.json").contains("web"), "and forgets the app: \(readText(s.stateDir + "/apps.json"))")
            #expect(try await s.status().apps.isEmpty)
        }
    }

    @Test("without --listen (a queue consumer), -i max: one worker per usable CPU, no socket, ready after the delay")
    func quickStartWithoutListen() async throws {
        try await withSwarm { s in
            try s.write("consumer.py", "import time\nwhile True:\n    time.sleep(1)\n")
            try await s.startDaemon()
            let cpus = ProcFS.usableCPUs()
            let r = try await s.quickOK(["start", "--name", "queue", "-i", "max", "--env", "QUEUE=jobs", "--", "python3", "consumer.py"])
            #expect(r.out.contains("\(cpus)/\(cpus) workers ready"), "\(r)")
            let pids = try await s.waitReady("queue", workers: cpus)
            let app = try reloadApp(try await s.status(), "queue")
            #expect(app.sockets.isEmpty && app.workersWanted == cpus)
            #expect(readText(s.quickStartDir + "/queue.conf").contains("workers = \"auto\""))
            for (slot, pid) in pids.enumerated() {
                let env = environment(of: pid)
                #expect(env["QUEUE"] == "jobs" && env["SWARM_WORKER"] == String(slot), "worker \(slot): \(env)")
                #expect(env["LISTEN_FDS"] == nil && env["PORT"] == nil, "no socket, no LISTEN_FDS or PORT: \(env)")
                #expect(readText("/proc/\(pid)/cmdline").hasSuffix("consumer.py\0"))
            }
            try await s.ctlOK("delete", "queue")
            #expect(!FileManager.default.fileExists(atPath: s.quickStartDir + "/queue.conf"))
        }
    }

    @Test("bad flags, a taken name, a busy port: an error naming the flag, and nothing changed")
    func badQuickStartsChangeNothing() async throws {
        try await withSwarm { s in
            try s.write("app.js", quickNodeServer)
            try s.write("version.txt", "v1\n")
            try await s.startDaemon()
            let port = try Ports.free()
            // Held by a process of ours outside swarm: swarmd must refuse it, not join it.
            let holder = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
            defer { close(holder) }
            var addr = sockaddr_in()
            addr.sin_family = sa_family_t(AF_INET)
            let busy = try Ports.free()
            addr.sin_port = busy.bigEndian
            addr.sin_addr.s_addr = inet_addr("127.0.0.1")
            let bound = withUnsafePointer(to: &addr) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(holder, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
            }
            #expect(bound == 0 && listen(holder, 8) == 0, "binding the busy port: \(errnoText())")
            let node = ["--", "node", "app.js"]
            let cases: [(args: [String], says: String)] = [
                (["--name", "Web"] + node, "--name: 'Web' is not a valid name"),
                (["--name", "all"] + node, "--name: 'all' is reserved"),
                (["-i", "2"] + node, "--name is required"),
                (["--name", "web", "-i", "0"] + node, "-i: '0' is not a number of instances (1…4096)"),
                (["--name", "web", "-i", "-1"] + node, "-i: '-1' is not a number of instances"),
                (["--name", "web", "-i", "4097"] + node, "-i: '4097' is not a number of instances"),
                (["--name", "web", "-i", "99999999999999999999"] + node, "-i: '99999999999999999999' is not a number"),
                (["--name", "web", "-i", "lots"] + node, "-i: 'lots'"),
                (["--name", "web", "--listen", "localhost:\(port)"] + node, "--listen: 'localhost' is not a numeric IPv4 address"),
                (["--name", "web", "--listen", "\(port)"] + node, "--listen:"),
                (["--name", "web", "--listen", "127.0.0.1:70000"] + node, "--listen:"),
                (["--name", "web", "--listen", "127.0.0.1:\(busy)"] + node, "--listen: cannot listen"),
                (["--name", "web", "--env", "NOEQUALS"] + node, "--env: 'NOEQUALS' is not KEY=VALUE"),
                (["--name", "web", "--env", "1X=y"] + node, "--env: '1X' is not a valid environment variable name"),
                (["--name", "web", "--cwd", s.dir + "/nowhere"] + node, "--cwd: '\(s.dir)/nowhere' is not a directory"),
                (["--name", "web", "--", "nodee-not-installed", "app.js"], "command: 'nodee-not-installed' was not found in PATH"),
                (["--name", "web", "--", "./missing.sh"], "command: '\(s.dir)/missing.sh' does not exist or is not executable"),
                (["--name", "web", "--listen", "127.0.0.1:\(port)"], "command: missing"),
                (["--name", "web", "--", "node", "--port={port:db}"], "command: placeholder"),
            ]
            for c in cases {
                let r = try await s.quick(["start"] + c.args)
                #expect(r.code != 0, "\(r)")
                #expect(r.err.contains(c.says), "expected '\(c.says)' in: \(r)")
                #expect(!r.err.contains("apps/web.conf"), "the error is about a flag, not a file the user never wrote: \(r)")
            }
            #expect(try await s.status().apps.isEmpty, "nothing was started")
            let left = (try? FileManager.default.contentsOfDirectory(atPath: s.quickStartDir)) ?? []
            #expect(left.isEmpty, "nothing was written: \(left)")
            #expect(Ports.isBindable(port), "no socket was left bound on \(port)")

            // A name already taken, by a running app and by a stopped one.
            try await s.quickOK(["start", "--name", "web", "--listen", "127.0.0.1:\(port)"] + node)
            let other = try Ports.free()
            for state in ["running", "stopped"] {
                let r = try await s.quick(["start", "--name", "web", "--listen", "127.0.0.1:\(other)"] + node)
                #expect(r.code == 1 && r.err.contains("--name: an app named 'web' is already \(state)"), "\(r)")
                #expect(Ports.isBindable(other), "the refused start bound nothing")
                #expect(readText(s.quickStartDir + "/web.conf").contains("127.0.0.1:\(port)"), "the running app's file is untouched")
                if state == "running" { try await s.ctlOK("stop", "web") }
            }
            // --replace replaces it, as for a config file.
            try await s.quickOK(["start", "--replace", "--name", "web", "--listen", "127.0.0.1:\(other)"] + node)
            let pids = try await s.waitReady("web", workers: 1)
            #expect(try answeringPids(other, connections: 4).keys.contains(pids[0]))
            #expect(readText(s.quickStartDir + "/web.conf").contains("127.0.0.1:\(other)"))
            #expect(Ports.isBindable(port), "the replaced app's port was released")
        }
    }
}

/// An unmodified `listen(PORT)` server through the quick start: its own bind()
/// gets slot k's socket. Needs swarmd's bind interception (issue 14 item 1,
/// another branch of the same merge): enable once swarmd wires it.
@Suite("Quick start of an unmodified listen(PORT) server (bind interception)")
struct QuickStartInterceptTests {
    @Test("start --name web -i 3 --listen -- node app.js with app.listen(process.env.PORT): 3 pids on one port, reload, delete",
          .disabled("needs bind interception wired into swarmd (the intercept branch); enable at merge"))
    func unmodifiedNodeListenPort() async throws {
        try await withSwarm { s in
            let port = try Ports.free()
            try s.write("app.js", """
                const http = require('http');
                const server = http.createServer((req, res) => { res.setHeader('Connection', 'close'); res.end(`${process.pid}\\n`); });
                server.listen(process.env.PORT);
                process.on('SIGTERM', () => server.close(() => process.exit(0)));
                """)
            try await s.startDaemon()
            try await s.quickOK(["start", "--name", "web", "-i", "3", "--listen", "127.0.0.1:\(port)", "--", "node", "app.js"])
            let pids = try await s.waitReady("web", workers: 3)
            #expect(Set(try answeringPids(port, connections: 30).keys) == Set(pids), "3 distinct workers answer on the one port")
            try await s.ctlOK("reload", "web")
            let after = try await expectReplaced(s, "web", workers: 3, before: pids, generation: 2)
            #expect(Set(try answeringPids(port, connections: 30).keys) == Set(after))
            try await s.ctlOK("delete", "web")
        }
    }
}
