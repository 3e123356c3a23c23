import Glibc
import SwarmProtocol
import SwarmSystem

/// `--host a,b,c`: one swarmctl per host (this same binary, with
/// `SWARM_HOST` set to that host), so every verb behaves on each host
/// exactly as it does on one. Read verbs run on every host at once and print
/// per host, labelled; `reload` is a rollout: host by host (`--parallel N` at
/// a time), stopping at the first host whose reload fails (that host has
/// already rolled itself back), with `--canary-wait` watching the first host
/// before going on. When a host fails, the hosts already reloaded are
/// rolled back (`swarmctl rollback`) and the summary says so per host.
enum Fleet {
    static let readVerbs: Set<String> = ["status", "ls", "list", "describe", "logs", "ping", "version"]

    /// The hosts of `--host`/`SWARM_HOST` when there are several, or of
    /// `--hosts-file` (one or more); nil otherwise (one host or none: no fleet).
    static func hosts(in args: [String]) throws -> [RemoteHost]? {
        var text: String?
        var file: String?
        var i = 0
        while i < args.count, args[i] != "--" {
            if args[i] == "--host", i + 1 < args.count { text = args[i + 1]; i += 1 }
            else if args[i].hasPrefix("--host=") { text = String(args[i].dropFirst(7)) }
            else if args[i] == "--hosts-file", i + 1 < args.count { file = args[i + 1]; i += 1 }
            else if args[i].hasPrefix("--hosts-file=") { file = String(args[i].dropFirst(13)) }
            i += 1
        }
        if let file {
            guard text == nil else { throw CtlError(description: "--host and --hosts-file: give the hosts one way", exitCode: 64) }
            return try hostsFile(file)
        }
        guard let list = text ?? Environment.nonEmpty(GlobalOptions.hostVariable), list.contains(",") else { return nil }
        do { return try RemoteHost.parseList(list) } catch let e as RemoteHost.ParseError {
            throw CtlError(description: e.description, exitCode: 64)
        }
    }

    static let hostsFileLimit = 1 << 20

    /// One host per line; blank lines and everything after a '#' are ignored.
    static func hostsFile(_ path: String) throws -> [RemoteHost] {
        let shown = TerminalText.escape(path)
        let fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC | O_NOCTTY)
        guard fd >= 0 else { throw CtlError(description: "--hosts-file \(shown): cannot open: \(String(cString: strerror(errno)))", exitCode: 66) }
        defer { close(fd) }
        var st = stat()
        guard fstat(fd, &st) == 0, st.st_mode & S_IFMT == S_IFREG else {
            throw CtlError(description: "--hosts-file \(shown): not a regular file", exitCode: 66)
        }
        var bytes: [UInt8] = []
        var buf = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = buf.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if n < 0 && errno == EINTR { continue }
            guard n >= 0 else { throw CtlError(description: "--hosts-file \(shown): read: \(String(cString: strerror(errno)))", exitCode: 66) }
            if n == 0 { break }
            bytes += buf[0..<n]
            guard bytes.count <= hostsFileLimit else { throw CtlError(description: "--hosts-file \(shown): larger than \(hostsFileLimit) bytes", exitCode: 65) }
        }
        var words: [String] = []
        for (number, raw) in String(decoding: bytes, as: UTF8.self).split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            let line = trimSpaces(String(raw.split(separator: "#", maxSplits: 1, omittingEmptySubsequences: false).first ?? ""))
            guard !line.isEmpty else { continue }
            guard !line.contains(",") && !line.contains(" ") && !line.contains("\t") else {
                throw CtlError(description: "--hosts-file \(shown):\(number + 1): one host per line, got '\(TerminalText.escape(line))'", exitCode: 65)
            }
            do { _ = try RemoteHost.parse(line) } catch let e as RemoteHost.ParseError {
                throw CtlError(description: "--hosts-file \(shown):\(number + 1): \(e.description)", exitCode: 65)
            }
            words.append(line)
        }
        guard !words.isEmpty else { throw CtlError(description: "--hosts-file \(shown): no hosts in it", exitCode: 65) }
        do { return try RemoteHost.parseList(words.joined(separator: ",")) } catch let e as RemoteHost.ParseError {
            throw CtlError(description: "--hosts-file \(shown): \(e.description)", exitCode: 65)
        }
    }

    static func trimSpaces(_ s: String) -> String {
        let isSpace: (Character) -> Bool = { $0 == " " || $0 == "\t" || $0 == "\r" }
        return String(s.drop(while: isSpace).reversed().drop(while: isSpace).reversed())
    }

    struct Options {
        var parallel = 1
        var canaryWait: Double = 0
        /// The arguments for each host's swarmctl: without --host, --parallel and --canary-wait.
        var perHost: [String] = []
    }

    static func options(_ args: [String]) throws -> Options {
        var o = Options()
        var i = 0
        func value(_ name: String) throws -> String {
            if args[i].hasPrefix(name + "=") { return String(args[i].dropFirst(name.count + 1)) }
            guard i + 1 < args.count else { throw CtlError(description: "\(name) needs a value", exitCode: 64) }
            i += 1
            return args[i]
        }
        var rest = false
        while i < args.count {
            let a = args[i]
            if rest { o.perHost.append(a) }
            else if a == "--" { rest = true; o.perHost.append(a) }
            else if a == "--host" || a.hasPrefix("--host=") { _ = try value("--host") }
            else if a == "--hosts-file" || a.hasPrefix("--hosts-file=") { _ = try value("--hosts-file") }
            else if a == "--parallel" || a.hasPrefix("--parallel=") {
                let v = try value("--parallel")
                guard let n = Int(v), n >= 1, n <= 64 else { throw CtlError(description: "--parallel '\(TerminalText.escape(v))': a number of hosts from 1 to 64", exitCode: 64) }
                o.parallel = n
            } else if a == "--canary-wait" || a.hasPrefix("--canary-wait=") {
                let v = try value("--canary-wait")
                guard let d = parseDuration(v), d >= 0, d <= 86_400 else {
                    throw CtlError(description: "--canary-wait '\(TerminalText.escape(v))': a duration such as 30s, 2m or 500ms (at most 24h)", exitCode: 64)
                }
                o.canaryWait = d
            } else { o.perHost.append(a) }
            i += 1
        }
        return o
    }

    static func parseDuration(_ text: String) -> Double? {
        let units: [(String, Double)] = [("ms", 0.001), ("s", 1), ("m", 60), ("h", 3600)]
        for (suffix, scale) in units where text.hasSuffix(suffix) {
            guard let n = Double(text.dropLast(suffix.count)), n.isFinite else { return nil }
            return n * scale
        }
        return nil
    }

    /// Runs the command line on every host; the exit code.
    static func run(_ args: [String], hosts: [RemoteHost]) -> Int32 {
        do {
            let o = try options(args)
            guard let verb = o.perHost.first(where: { !$0.hasPrefix("-") }) else {
                throw CtlError(description: "--host with several hosts: which command?", exitCode: 64)
            }
            if readVerbs.contains(verb) {
                if verb == "logs", o.perHost.contains(where: { $0 == "-f" || $0 == "--follow" }) {
                    return FleetStreams.run(o.perHost, hosts: hosts, verb: "logs -f")
                }
                return readAll(o.perHost, hosts: hosts)
            }
            if verb == "events" { return FleetStreams.run(o.perHost, hosts: hosts, verb: "events") }
            if verb == "reload" { return try rollout(o, hosts: hosts) }
            if verb == "rollback" { return rollBackAll(o.perHost, hosts: hosts) }
            throw CtlError(description: "'\(TerminalText.escape(verb))' goes to one host at a time; with several hosts swarmctl runs \(readVerbs.sorted().joined(separator: ", ")), events, reload and rollback", exitCode: 64)
        } catch let e as CtlError {
            printErr("swarmctl: \(e.description)")
            return e.exitCode
        } catch {
            printErr("swarmctl: \(error)")
            return 1
        }
    }

    // MARK: Read verbs

    static func readAll(_ args: [String], hosts: [RemoteHost]) -> Int32 {
        var runs: [HostRun] = []
        var failed: [String] = []
        for h in hosts {
            do { runs.append(try HostRun(h, args)) } catch { failed.append("host \(h): \(error)") }
        }
        HostRun.pumpAll(runs)
        var worst: Int32 = failed.isEmpty ? 0 : 3
        for r in runs {
            printOut("== \(r.host) ==")
            let out = String(decoding: r.output, as: UTF8.self)
            if !out.isEmpty { Console.write(out.hasSuffix("\n") ? out : out + "\n") }
            let err = String(decoding: r.errors, as: UTF8.self)
            if !err.isEmpty { Console.write(err.hasSuffix("\n") ? err : err + "\n", to: .error) }
            if r.exitCode != 0 { worst = max(worst, r.exitCode) }
        }
        failed.forEach { printErr("swarmctl: \($0)") }
        return worst
    }

    // MARK: Rollout

    static func rollout(_ o: Options, hosts: [RemoteHost]) throws -> Int32 {
        var done: [RemoteHost] = []
        var index = 0
        var failure: (RemoteHost, String)?
        while index < hosts.count, failure == nil {
            // The first host alone (the canary), then --parallel at a time.
            let width = index == 0 ? 1 : o.parallel
            let batch = Array(hosts[index..<min(hosts.count, index + width)])
            index += batch.count
            var runs: [HostRun] = []
            for h in batch {
                printOut("[\(h)] reload started")
                do { runs.append(try HostRun(h, o.perHost, echoPrefix: "[\(h)] ")) } catch {
                    failure = failure ?? (h, "\(error)")
                }
            }
            HostRun.pumpAll(runs)
            for r in runs {
                if r.exitCode == 0 { done.append(r.host); printOut("[\(r.host)] reload done") }
                else {
                    let why = reason(r.errors) ?? "exit \(r.exitCode)"
                    failure = failure ?? (r.host, why)
                }
            }
            if failure == nil, index == 1, o.canaryWait > 0, hosts.count > 1 {
                printOut("[\(hosts[0])] canary: watching for \(fmtSeconds(o.canaryWait)) before the next host")
                if let problem = watch(hosts[0], seconds: o.canaryWait) { failure = (hosts[0], "canary: " + problem) }
            }
        }
        // The failed host rolled itself back; the ones done (the canary too, when watching it
        // failed) go back to their previous generation, the last reloaded first.
        var rolledBack: [String: String?] = [:]
        if let failure {
            for h in done.reversed() {
                printOut("[\(h)] rolling back (the rollout stopped at \(failure.0))")
                rolledBack[h.description] = rollBack(h, o.perHost)
            }
        }
        printOut("rollout summary:")
        for h in hosts {
            let state: String
            let back = rolledBack[h.description].map { $0.map { "; ROLLBACK FAILED: \($0)" } ?? ", then rolled back to its previous generation" }
            if let f = failure, f.0 == h {
                state = done.contains(h) ? "FAILED: \(f.1)" + (back ?? "") : "FAILED: \(f.1) (it rolled itself back)"
            } else if done.contains(h) { state = "reloaded" + (back ?? "") }
            else { state = "not started (untouched)" }
            printOut("  \(h): \(state)")
        }
        guard let failure else { return 0 }
        printErr("swarmctl: rollout stopped at \(failure.0): \(failure.1)")
        return 1
    }

    /// `rollback` on several hosts: host by host (each a rolling reload of its own), all of them
    /// even when one fails, with a per-host summary.
    static func rollBackAll(_ args: [String], hosts: [RemoteHost]) -> Int32 {
        var results: [(RemoteHost, String?)] = []
        for h in hosts {
            printOut("[\(h)] rollback started")
            results.append((h, rollBack(h, args)))
        }
        printOut("rollback summary:")
        for (h, why) in results { printOut("  \(h): " + (why.map { "FAILED: \($0)" } ?? "rolled back to its previous generation")) }
        return results.contains { $0.1 != nil } ? 1 : 0
    }

    /// `swarmctl rollback` on one host with the reload's arguments; nil when it worked, else why not.
    static func rollBack(_ host: RemoteHost, _ reloadArgs: [String]) -> String? {
        var args = reloadArgs
        if let i = args.firstIndex(of: "reload") { args[i] = "rollback" }
        do {
            let run = try HostRun(host, args, echoPrefix: "[\(host)] ")
            HostRun.pumpAll([run])
            guard run.exitCode != 0 else { return nil }
            return reason(run.errors) ?? "exit \(run.exitCode)"
        } catch {
            return "\(error)"
        }
    }

    /// A host's swarmctl's error: its last "swarmctl: " line (the failed worker's log lines follow it), else its last line.
    static func reason(_ stderr: [UInt8]) -> String? {
        let lines = String(decoding: stderr, as: UTF8.self).split(separator: "\n").map(String.init)
        return lines.last { $0.hasPrefix("swarmctl: ") }.map { String($0.dropFirst(10)) } ?? lines.last
    }

    static func fmtSeconds(_ s: Double) -> String { s == s.rounded() ? "\(Int(s))s" : "\(s)s" }

    /// Watches a host's status once a second: every app fully ready and no worker restarting. The problem, or nil.
    static func watch(_ host: RemoteHost, seconds: Double) -> String? {
        let deadline = Posix.monotonicNanoseconds() + Int64(seconds * 1e9)
        var baseline: [String: Int]?
        repeat {
            guard let run = try? HostRun(host, ["status", "--json"]) else { return "cannot run status" }
            HostRun.pumpAll([run])
            guard run.exitCode == 0, let report = StatusReport.decodeJSON(run.output) else {
                return "status failed: " + (String(decoding: run.errors, as: UTF8.self).split(separator: "\n").last.map(String.init) ?? "exit \(run.exitCode)")
            }
            var restarts: [String: Int] = [:]
            for a in report.apps {
                if a.state == "running", a.workersReady < a.workersWanted { return "app \(a.name): \(a.workersReady) of \(a.workersWanted) workers ready" }
                for w in a.workers { restarts["\(a.name)/\(w.slot)"] = w.restarts }
            }
            if let b = baseline, let (slot, n) = restarts.first(where: { $0.value > (b[$0.key] ?? $0.value) }) {
                return "worker \(slot) restarted (\(n) restarts)"
            }
            baseline = baseline ?? restarts
            Posix.sleep(nanoseconds: 1_000_000_000)
        } while Posix.monotonicNanoseconds() < deadline
        return nil
    }
}

extension StatusReport {
    static func decodeJSON(_ bytes: [UInt8]) -> StatusReport? {
        try? Codec.decodeStatusReport(bytes)
    }
}

/// One host's swarmctl, its output collected (and echoed line by line with `echoPrefix`).
final class HostRun {
    let host: RemoteHost
    let pid: pid_t
    private let out: Int32
    private let err: Int32
    private(set) var output: [UInt8] = []
    private(set) var errors: [UInt8] = []
    private(set) var exitCode: Int32 = 0
    let echoPrefix: String?
    private var pendingOut: [UInt8] = []
    private var pendingErr: [UInt8] = []
    static let outputLimit = 64 << 20

    init(_ host: RemoteHost, _ args: [String], echoPrefix: String? = nil) throws {
        self.host = host
        self.echoPrefix = echoPrefix
        (pid, out, err) = try HostRun.spawn(host, args)
    }

    /// This swarmctl again with `args`, `SWARM_HOST` set to `host`, stdin
    /// /dev/null, stdout and stderr the read ends returned (non-blocking). It is
    /// in a process group of its own (so a terminal's ^C reaches only us, which
    /// decide) and gets SIGTERM if we die.
    static func spawn(_ host: RemoteHost, _ args: [String]) throws -> (pid: pid_t, out: Int32, err: Int32) {
        let me = try FileSystem.readLink("/proc/self/exe")
        let o = try Posix.pipe(nonBlockingRead: true)
        let e: (read: Int32, write: Int32)
        do { e = try Posix.pipe(nonBlockingRead: true) } catch { Posix.close(o.read); Posix.close(o.write); throw error }
        let devNull: Int32
        do { devNull = try FileSystem.openDevNull() } catch { [o.read, o.write, e.read, e.write].forEach(Posix.close); throw error }
        defer { Posix.close(devNull); Posix.close(o.write); Posix.close(e.write) }
        var env = Environment.all.filter { !$0.hasPrefix(GlobalOptions.hostVariable + "=") && !$0.hasPrefix("NO_COLOR=") }
        env += [GlobalOptions.hostVariable + "=" + host.description, "NO_COLOR=1"]
        var plan = SpawnPlan(executable: me, argv: [me] + args, environment: env, setListenPID: false, cwd: nil, fds: [],
                             stdin: devNull, stdout: o.write, stderr: e.write)
        plan.parentDeathSignal = SIGTERM
        do { return (try Spawner.spawn(plan), o.read, e.read) } catch { Posix.close(o.read); Posix.close(e.read); throw error }
    }

    deinit {
        Posix.close(out)
        Posix.close(err)
    }

    /// Reads every run's output until all have closed it, then reaps them.
    static func pumpAll(_ runs: [HostRun]) {
        var open: [(HostRun, Int32, Bool)] = runs.flatMap { [($0, $0.out, false), ($0, $0.err, true)] }
        var buf = [UInt8](repeating: 0, count: 65536)
        while !open.isEmpty {
            guard let revents = try? Posix.poll(open.map { (fd: $0.1, events: Int16(POLLIN)) }, timeoutNanoseconds: nil) else { break }
            var closed: [Int] = []
            for (i, r) in revents.enumerated() where r != 0 {
                let (run, fd, isError) = open[i]
                let got = try? buf.withUnsafeMutableBytes { try Posix.readSome(fd, into: $0) }
                switch got {
                case let .done(n)? where n > 0: run.take(buf[0..<n], isError: isError)
                case .wouldBlock?: break
                default: closed.append(i)
                }
            }
            for i in closed.reversed() { open.remove(at: i) }
        }
        for r in runs {
            r.flushEcho()
            while true {
                let result: Posix.WaitResult?
                do { result = try Posix.reap(r.pid) } catch { r.exitCode = 1; break }
                switch result {
                case let .exited(_, code)?: r.exitCode = code
                case let .signaled(_, sig, _)?: r.exitCode = 128 + sig
                case nil: Posix.sleep(nanoseconds: 5_000_000); continue
                }
                break
            }
        }
    }

    private func take(_ bytes: ArraySlice<UInt8>, isError: Bool) {
        if isError { if errors.count < HostRun.outputLimit { errors += bytes } } else if output.count < HostRun.outputLimit { output += bytes }
        guard let echoPrefix else { return }
        if isError { pendingErr += bytes } else { pendingOut += bytes }
        HostRun.echoLines(&pendingOut, prefix: echoPrefix, to: .output)
        HostRun.echoLines(&pendingErr, prefix: echoPrefix, to: .error)
    }

    private static func echoLines(_ pending: inout [UInt8], prefix: String, to stream: Console.Stream) {
        while let nl = pending.firstIndex(of: 0x0a) {
            Console.write(prefix + String(decoding: pending[..<nl], as: UTF8.self) + "\n", to: stream)
            pending.removeSubrange(...nl)
        }
    }

    private func flushEcho() {
        guard let echoPrefix else { return }
        pendingOut.append(0x0a)
        pendingErr.append(0x0a)
        if pendingOut.count > 1 { HostRun.echoLines(&pendingOut, prefix: echoPrefix, to: .output) }
        if pendingErr.count > 1 { HostRun.echoLines(&pendingErr, prefix: echoPrefix, to: .error) }
        pendingOut = []
        pendingErr = []
    }
}
