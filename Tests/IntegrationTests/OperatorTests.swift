import Foundation
import Glibc
import SwarmProtocol
import SwarmSystem
import Testing

// Issue 16's operator commands against a real swarmd and real workers:
// describe, status --json's new fields, ls/list, signal, logs --reopen and
// SIGUSR1 (with a real logrotate), and the shell completions and man pages.

/// A python worker without a socket: prints `usr1 <pid>` on SIGUSR1, runs a
/// child shell that prints `child-usr1 <pid>` on SIGUSR1 (it shares the
/// worker's process group), and with TICK=1 prints `tick N` every 20 ms.
let signalWorker = #"""
import os, signal, subprocess, sys, time
signal.signal(signal.SIGUSR1, lambda *a: print(f"usr1 {os.getpid()}", flush=True))
signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))
child = subprocess.Popen(["/bin/sh", "-c", "trap 'echo child-usr1 $PPID' USR1; while :; do sleep 0.05; done"])
i = 0
while True:
    if os.environ.get("TICK") == "1":
        print(f"tick {i}", flush=True)
        i += 1
    time.sleep(0.02)
"""#

extension Swarm {
    /// An app of `signalWorker`s, ready 200 ms after exec.
    func signalApp(_ name: String, workers: Int, env: [String: String] = [:]) throws -> String {
        let script = try write("worker-\(name).py", signalWorker)
        let envLines = env.sorted { $0.key < $1.key }.map { "\($0.key) = \(Conf.q($0.value))" }
        return try write("\(name).conf", """
            name = \(Conf.q(name))
            command = \(Conf.array([Paths.python, script]))
            workers = \(workers)
            [ready]
            mode = "delay"
            delay = "200ms"
            [stop]
            timeout = "3s"
            [env]
            \(envLines.joined(separator: "\n"))

            """)
    }

    /// The app's log lines as `logs` gives them.
    func logText(_ app: String) async throws -> String { try await ctlOK("logs", app, "-n", "2000").out }
}

/// A request's reply as the bytes swarmd wrote (one line), for checks on what crossed the socket.
func rawReply(_ socket: String, _ request: Request) throws -> String {
    let c = try ControlConnection(path: socket)
    try c.send(request)
    while let frame = try c.receiveFrame() {
        let r = try Codec.decodeResponse(frame)
        if r.kind == .result { return String(decoding: frame, as: UTF8.self) }
    }
    throw HarnessError("swarmd closed the connection before answering \(request.verb)")
}

func decodeJSON<T: Decodable>(_ type: T.Type, _ text: String) throws -> T {
    try JSONDecoder().decode(T.self, from: Data(text.utf8))
}

@Suite("Operator commands: describe, status fields, ls, signal, logs --reopen, completions, man pages")
struct OperatorTests {
    @Test("describe: config and its sha256, command, cwd, env with secrets masked by swarmd, sockets, slots, log files; status --json; ls/list; env_file re-read on reload")
    func describeMasksSecrets() async throws {
        try await withSwarm { s in
            let port = try Ports.free()
            let secrets = ["envfile-pw-111", "url-pw-222", "cfg-token-333", "arg-secret-444", "plain-key-555"]
            _ = try s.write(".env", """
                # the database
                export DB_PASSWORD="envfile-pw-111"
                DATABASE_URL=postgres://admin:url-pw-222@db:5432/app # a comment
                GREETING='hello world'

                """)
            func config(mode: String) -> String {
                """
                name = "web"
                command = \(Conf.array([Paths.python, Paths.pythonApps + "/server.py", "--secret-key=arg-secret-444"]))
                workers = 2
                env_file = ".env"
                [env]
                API_TOKEN = "cfg-token-333"
                STRIPE_KEY = "plain-key-555"
                MODE = \(Conf.q(mode))
                [[socket]]
                name = "http"
                listen = "127.0.0.1:\(port)"

                """
            }
            let conf = try s.write("web.conf", config(mode: "one"))
            try await s.startDaemon()
            try await s.ctlOK("start", conf)
            let pids = try await s.waitReady("web", workers: 2)

            let json = try await s.ctlOK("describe", "web", "--json").out
            let text = try await s.ctlOK("describe", "web").out
            let raw = try rawReply(s.socket, Request(id: 9, verb: .describe, name: "web"))
            let status = try await s.ctlOK("status", "--json").out
            for secret in secrets {
                #expect(!json.contains(secret) && !text.contains(secret) && !raw.contains(secret) && !status.contains(secret), "\(secret) leaked")
            }
            let d = try decodeJSON(AppDescription.self, json)
            #expect(d.name == "web" && d.state == "running" && d.workersReady == 2)
            #expect(d.config == conf)
            let sum = try runSync("/usr/bin/sha256sum", [conf]).out.split(separator: " ").first.map(String.init)
            #expect(d.configSHA256 == sum, "sha256sum says \(sum ?? "?")")
            #expect(d.configChanged == false)
            #expect(d.command == [Paths.python, Paths.pythonApps + "/server.py", "--secret-key=********"])
            #expect(d.cwd == s.dir)
            #expect(d.envFiles == [s.dir + "/.env"])
            let env = Dictionary(uniqueKeysWithValues: d.env.map { ($0.key, $0.value) })
            #expect(env == ["API_TOKEN": "********", "STRIPE_KEY": "********", "DB_PASSWORD": "********",
                            "DATABASE_URL": "postgres://admin:********@db:5432/app", "GREETING": "hello world", "MODE": "one"])
            #expect(d.env.filter(\.masked).map(\.key).sorted() == ["API_TOKEN", "DATABASE_URL", "DB_PASSWORD", "STRIPE_KEY"])
            #expect(d.sockets.map(\.listen) == ["127.0.0.1:\(port)"])
            #expect(d.slots.map(\.pid) == pids && d.slots.allSatisfy { $0.restarts == 0 && $0.state == "ready" })
            #expect(d.logs.target == "file" && d.logs.path == s.stateDir + "/logs/web.log")
            // The workers themselves got the real values: only what is shown is masked.
            let environ = readText("/proc/\(pids[0])/environ").split(separator: "\0").map(String.init)
            #expect(environ.contains("DB_PASSWORD=envfile-pw-111") && environ.contains("API_TOKEN=cfg-token-333"))
            #expect(text.contains("DB_PASSWORD=********") && text.contains("sha256     \(sum ?? "?")"), "\(text)")

            // status --json: command (masked like describe), cwd, config and log path.
            let report = try decodeJSON(StatusReport.self, status)
            let app = try #require(report.apps.first)
            #expect(app.command == d.command && app.cwd == s.dir && app.config == conf && app.logPath == d.logs.path)
            // ls and list are status.
            for alias in ["ls", "list"] {
                let out = try await s.ctlOK(alias).out
                #expect(out.contains("web  running") && out.contains("\(pids[1])"), "\(alias): \(out)")
            }

            // A worker killed: its slot's history says so.
            kill(pids[0], SIGKILL)
            try await waitUntil(timeout: 20, "slot 0 to be replaced after kill -9") {
                let d = try decodeJSON(AppDescription.self, try await s.ctlOK("describe", "web", "--json").out)
                return d.slots[0].pid != pids[0] && d.slots[0].state == "ready" ? d : nil
            }
            let after = try decodeJSON(AppDescription.self, try await s.ctlOK("describe", "web", "--json").out)
            #expect(after.slots[0].restarts == 1 && after.slots[0].lastExit == "killed by SIGKILL", "\(after.slots[0])")
            #expect(after.slots[1].pid == pids[1] && after.slots[1].restarts == 0)
            let exit = try #require(after.slots[0].exits?.last, "\(after.slots[0])")
            #expect(exit.pid == pids[0] && exit.status == "killed by SIGKILL" && exit.generation == 1 && exit.uptimeS > 0, "\(exit)")
            #expect(after.slots[1].exits == nil)

            // The file changed on disk: describe says a reload would change the app. The env_file is re-read by reload.
            _ = try s.write("web.conf", config(mode: "two"))
            _ = try s.write(".env", "DB_PASSWORD=envfile-pw-111\nGREETING=\"second\"\n")
            #expect(try decodeJSON(AppDescription.self, try await s.ctlOK("describe", "web", "--json").out).configChanged == true)
            try await s.ctlOK("reload", "web")
            let reloaded = try await s.waitReady("web", workers: 2)
            let d2 = try decodeJSON(AppDescription.self, try await s.ctlOK("describe", "web", "--json").out)
            #expect(d2.configChanged == false && d2.generation == 2)
            #expect(d2.env.first { $0.key == "GREETING" }?.value == "second" && d2.env.first { $0.key == "MODE" }?.value == "two")
            #expect(!d2.env.contains { $0.key == "DATABASE_URL" })
            let environ2 = readText("/proc/\(reloaded[0])/environ").split(separator: "\0").map(String.init)
            #expect(environ2.contains("GREETING=second") && !environ2.contains { $0.hasPrefix("DATABASE_URL=") })

            // Errors.
            let unknown = try await s.ctl("describe", "nope")
            #expect(unknown.code == 1 && unknown.err.contains("no app named 'nope'"), "\(unknown)")
            let all = try await s.ctl("describe", "all")
            #expect(all.code == 64 && all.err.contains("one app name"), "\(all)")
        }
    }

    @Test("signal NAME[:SLOT] SIG: only that app's workers (or one slot), the process or --group, names and numbers, clear errors")
    func signalWorkers() async throws {
        try await withSwarm { s in
            let conf = try s.signalApp("sig", workers: 2)
            let bystander = try s.signalApp("other", workers: 1)
            try await s.startDaemon()
            try await s.ctlOK("start", conf)
            try await s.ctlOK("start", bystander)
            let pids = try await s.waitReady("sig", workers: 2)
            let otherPid = try await s.waitReady("other", workers: 1)[0]

            let one = try await s.ctlOK("signal", "sig:1", "USR1")
            #expect(one.out == "sig:1: sent SIGUSR1 to slot 1 pid \(pids[1])\n", "\(one)")
            try await waitUntil(timeout: 10, "slot 1 (pid \(pids[1])) to log its SIGUSR1") {
                try await s.logText("sig").contains("usr1 \(pids[1])") ? true : nil
            }
            // The process, not its group: the worker's child shell heard nothing.
            try await s.ctlOK("signal", "sig", "10")
            try await waitUntil(timeout: 10, "both workers to log SIGUSR1 (number 10)") {
                let log = try await s.logText("sig")
                return log.components(separatedBy: "usr1 \(pids[0])").count == 2 && log.components(separatedBy: "usr1 \(pids[1])").count == 3 ? true : nil
            }
            #expect(!(try await s.logText("sig")).contains("child-usr1"))
            #expect(!(try await s.logText("other")).contains("usr1"), "another app's worker got the signal")

            let grouped = try await s.ctlOK("signal", "--group", "sig:0", "sigusr1")
            #expect(grouped.out.contains("process group of slot 0 pid \(pids[0])"), "\(grouped)")
            try await waitUntil(timeout: 10, "slot 0's child to log SIGUSR1 sent to the process group") {
                try await s.logText("sig").contains("child-usr1 \(pids[0])") ? true : nil
            }

            // A worker killed this way is restarted like any other that died.
            try await s.ctlOK("signal", "sig:0", "KILL")
            let replaced = try await waitUntil(timeout: 20, "slot 0 to be restarted after signal KILL") {
                let st = try s.quickStatus().apps.first { $0.name == "sig" }
                guard let w = st?.workers.first(where: { $0.slot == 0 }), let pid = w.pid, pid != pids[0], w.state == "ready" else { return nil as Int32? }
                return pid
            }
            let st = try s.quickStatus()
            #expect(st.apps.first { $0.name == "sig" }?.workers.first { $0.slot == 0 }?.lastExit == "killed by SIGKILL")
            #expect(st.apps.first { $0.name == "sig" }?.workers.first { $0.slot == 1 }?.pid == pids[1])
            #expect(st.apps.first { $0.name == "other" }?.workers.first?.pid == otherPid)
            #expect(replaced != pids[0])

            for (args, code, says) in [
                (["signal", "sig", "BOGUS"], Int32(64), "'BOGUS': not a signal name"),
                (["signal", "sig", "0"], 64, "no such signal number"),
                (["signal", "sig", "32"], 64, "no such signal number"),
                (["signal", "sig:x", "HUP"], 64, "must be a number"),
                (["signal", "all", "HUP"], 64, "one app name"),
                (["signal", "sig:7", "HUP"], 1, "sig has no slot 7 (slots: 0-1)"),
                (["signal", "nope", "HUP"], 1, "no app named 'nope'"),
                (["signal", "sig"], 64, "Missing expected argument '<signal>'"),
            ] {
                let r = try await s.ctl(args)
                #expect(r.code == code && r.err.contains(says), "\(args): \(r)")
            }
            // swarmd checks the signal too: the protocol is not only swarmctl's.
            var bad = Request(id: 5, verb: .signal, name: "sig")
            bad.signal = "0"
            let refused = try ControlConnection(path: s.socket).call(bad)
            #expect(refused.ok == false && refused.error?.contains("no such signal number") == true, "\(refused)")
            try await s.ctlOK("stop", "sig")
            let stopped = try await s.ctl("signal", "sig", "HUP")
            #expect(stopped.code == 1 && stopped.err.contains("sig has no running worker to send SIGHUP to"), "\(stopped)")
        }
    }

    @Test("logs --reopen and SIGUSR1 after a rename, then a real logrotate run with etc/logrotate/swarm: no line lost or written twice")
    func reopenAfterRotation() async throws {
        try await withSwarm { s in
            let conf = try s.signalApp("tick", workers: 1, env: ["TICK": "1"])
            try await s.startDaemon()
            try await s.ctlOK("start", conf)
            try await s.waitReady("tick", workers: 1)
            let dir = s.stateDir + "/logs"
            let log = dir + "/tick.log"
            func ticks(_ path: String) -> [Int] {
                readText(path).split(separator: "\n").compactMap { line in line.split(separator: " ").last.flatMap { Int($0) } }
            }
            func linesArrive(_ path: String) async throws {
                try await waitUntil(timeout: 10, "ticks to reach \(path)") { ticks(path).count >= 5 ? true : nil }
            }
            try await linesArrive(log)

            // 1: rename, then `logs --reopen`.
            try FileManager.default.moveItem(atPath: log, toPath: log + ".a")
            let r = try await s.ctlOK("logs", "--reopen")
            #expect(r.out == "reopened \(log)\n", "\(r)")
            try await linesArrive(log)
            let a = ticks(log + ".a")
            try await Task.sleep(nanoseconds: 300_000_000)
            #expect(ticks(log + ".a") == a, "lines still went to the renamed file after the reopen")

            // 2: rename, then SIGUSR1 to swarmd.
            try FileManager.default.moveItem(atPath: log, toPath: log + ".b")
            try #require(s.daemon).signal(SIGUSR1)
            try await linesArrive(log)
            let b = ticks(log + ".b")
            try await Task.sleep(nanoseconds: 300_000_000)
            #expect(ticks(log + ".b") == b)

            // 3: logrotate itself, with the shipped config pointed at this state dir.
            guard let logrotate = ([String])(["/usr/sbin/logrotate", "/usr/bin/logrotate"]).first(where: { access($0, X_OK) == 0 }) else {
                Issue.record("logrotate is not installed (scripts/deps.sh installs it)")
                return
            }
            let shipped = readText(Paths.root + "/etc/logrotate/swarm")
            #expect(shipped.contains("/var/lib/swarm/logs/*.log") && shipped.contains("create"), "\(shipped)")
            let rotateConf = try s.write("logrotate.conf", shipped
                .replacingOccurrences(of: "/var/lib/swarm/logs/", with: dir + "/")
                .replacingOccurrences(of: "swarmctl", with: "SWARM_SOCKET=\(s.socket) \(Paths.swarmctl)"))
            let rotated = try runSync(logrotate, ["--force", "--state", s.dir + "/logrotate.state", rotateConf])
            #expect(rotated.code == 0, "logrotate: \(rotated.out)")
            try await linesArrive(log)
            let c = ticks(log + ".1")
            #expect(c.count >= 5, "logrotate should have moved tick.log to tick.log.1: \((try? FileManager.default.contentsOfDirectory(atPath: dir)) ?? [])")
            try await Task.sleep(nanoseconds: 300_000_000)
            #expect(ticks(log + ".1") == c)
            let mode = try FileSystem.status(log).permissions
            #expect(mode == 0o640, "logrotate's create mode: \(String(mode, radix: 8))")

            // Every tick is in exactly one file, in order.
            try await s.ctlOK("stop", "tick")
            let all = ticks(log + ".a") + ticks(log + ".b") + ticks(log + ".1") + ticks(log)
            #expect(all == Array(0..<all.count), "ticks lost or repeated across the reopens: \(all.count) lines")
        }
    }

    @Test("completions for bash, zsh and fish come from the parser; bash loads and completes; the man pages render")
    func completionsAndManPages() async throws {
        try Paths.requireBinaries()
        let dir = NSTemporaryDirectory() + "swit-docs-\(getpid())-\(Ports.counter.next())"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        // The first run builds swift-argument-parser's generate-manual: minutes on a loaded machine.
        let gen = try Child.spawn("/bin/sh", [Paths.root + "/scripts/gen-docs.sh", dir + "/out"],
                                  env: childEnvironment(["BUILD_DIR": Paths.binDir]), dir: dir, label: "gen-docs")
        let code = try await gen.wait(timeout: 900, "scripts/gen-docs.sh to finish")
        #expect(code == 0, "gen-docs.sh: \(gen.stdout)\n\(gen.stderr)")
        let docs = dir + "/out"
        for f in ["completions/swarmctl.bash", "completions/swarmd.bash", "completions/_swarmctl", "completions/_swarmd",
                  "completions/swarmctl.fish", "completions/swarmd.fish", "man/swarmctl.1", "man/swarmd.1"] {
            #expect(FileManager.default.fileExists(atPath: "\(docs)/\(f)"), "\(f) missing")
        }
        #expect(readText(docs + "/completions/_swarmctl").hasPrefix("#compdef swarmctl"))
        #expect(readText(docs + "/completions/swarmctl.fish").contains("describe"))

        // bash: the function is registered, and completes subcommands and a new option.
        let script = """
            source \(docs)/completions/swarmctl.bash
            complete -p swarmctl
            comp() { COMP_WORDS=("$@"); COMP_CWORD=$(($# - 1)); COMP_LINE="$*"; COMP_POINT=${#COMP_LINE}; COMPREPLY=()
                     _swarmctl swarmctl "${COMP_WORDS[COMP_CWORD]}" "${COMP_WORDS[COMP_CWORD-1]}"; echo "$*: ${COMPREPLY[*]}"; }
            comp swarmctl des
            comp swarmctl si
            comp swarmctl logs --re
            comp swarmctl l
            """
        let bash = try runSync("/bin/bash", ["-c", "PATH=\(Paths.binDir):$PATH\n" + script])
        #expect(bash.code == 0, "\(bash.out)")
        #expect(bash.out.contains("-F _swarmctl swarmctl"), "\(bash.out)")
        #expect(bash.out.contains("swarmctl des: describe\n"), "\(bash.out)")
        #expect(bash.out.contains("swarmctl si: signal\n"), "\(bash.out)")
        #expect(bash.out.contains("swarmctl logs --re: --reopen\n"), "\(bash.out)")
        #expect(bash.out.contains("swarmctl l: logs ls list\n") || bash.out.contains("swarmctl l: logs\n"), "\(bash.out)")

        // man: groff renders both pages with no warning, and they list the new commands.
        for page in ["swarmctl", "swarmd"] {
            let path = "\(docs)/man/\(page).1"
            let check = try runSync("/bin/sh", ["-c", "groff -mandoc -Tutf8 -ww -z \(path) 2>&1"])
            #expect(check.code == 0 && check.out.isEmpty, "groff warnings for \(page).1: \(check.out)")
            let shown = try runSync("/bin/sh", ["-c", "MANWIDTH=100 man -l \(path) 2>&1 | col -b"])
            #expect(shown.code == 0 && shown.out.contains(page), "\(shown.out)")
            if page == "swarmctl" {
                for word in ["describe", "signal", "top", "--reopen", "status"] { #expect(shown.out.contains(word), "\(word) in swarmctl.1") }
            } else {
                #expect(shown.out.contains("--metrics"), "\(shown.out)")
            }
        }
    }
}
