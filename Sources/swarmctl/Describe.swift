import ArgumentParser
import SwarmProtocol

struct Describe: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Everything swarmd knows about one app: config and its digest, command, env (secrets masked), sockets, slots, log files.",
        discussion: "Values of env keys that look secret (PASSWORD, SECRET, TOKEN, KEY, CREDENTIAL, PRIVATE, AUTH in the name) and the userinfo of URLs are masked by swarmd before they are sent.")
    @OptionGroup var global: GlobalOptions
    @Flag(help: "Print JSON (the fields documented in the README).") var json = false
    @Argument(help: "App name.") var name: String

    func validate() throws {
        try validateName(name)
        guard name != AppName.all else { throw ValidationError("describe takes one app name, not 'all'") }
    }

    func run() throws {
        try execute {
            let client = try Client(global)
            let r = try client.call(client.request(.describe, name: name))
            guard let d = r.describe else { throw CtlError(description: "swarmd sent no description (is it older than swarmctl?)") }
            if json { printPrettyJSON(d) } else { printLines(DescribeText.render(d)) }
        }
    }
}

/// The text form: a label column, then values; every value from swarmd
/// is escaped by `printLines`.
enum DescribeText {
    static func render(_ d: AppDescription) -> [String] {
        var out: [String] = ["\(d.name)  \(d.state)  gen \(d.generation)  \(d.workersReady)/\(d.workersWanted) ready"]
        func row(_ label: String, _ value: String) { out.append("  " + label.padding(11) + value) }
        row("config", d.config)
        if let sha = d.configSHA256 {
            row("sha256", sha + (d.configChanged == true ? "  (changed on disk since it was loaded: reload to apply)" : ""))
        }
        if let p = d.configProblem { row("problem", p) }
        guard d.state != "error" || !d.command.isEmpty else { return out }
        row("command", d.command.map(quoted).joined(separator: " "))
        if d.command.first != d.executable { row("executable", d.executable) }
        row("cwd", d.cwd)
        if d.user != nil || d.group != nil { row("user", "\(d.user ?? "-"):\(d.group ?? "-")") }
        for f in d.envFiles { row("env_file", f) }
        row("env", d.env.isEmpty ? "(none set)" : "\(d.env.count) set" + (d.inheritEnv ? ", plus swarmd's own environment" : ", nothing inherited"))
        for e in d.env { out.append("    \(e.key)=\(e.value)") }
        for s in d.sockets {
            row("socket", "\(s.name) \(s.listen) (\(s.balance), backlog \(s.backlog)\(s.intercept ? ", bind interception" : ""))")
        }
        row("restart", d.restart)
        row("stop", d.stop)
        if let m = d.memoryLimitBytes { row("memory", "restart above \(StatusTable.bytes(m))") }
        if let r = d.lastReload { row("last reload", "\(r.ok ? "ok" : "FAILED") \(StatusTable.duration(r.ageS)) ago: \(r.message)") }
        switch d.logs.target {
        case "journal": row("logs", "to the journal (journalctl SWARM_APP=\(d.name))")
        default:
            row("logs", "\(d.logs.path ?? "-") (rotated at \(StatusTable.bytes(d.logs.maxSizeBytes)), \(d.logs.keep) kept)")
            for f in d.logs.files { out.append("    \(f.path)  \(StatusTable.bytes(f.bytes))") }
            if let e = d.logs.writeErrors { out.append("    \(e) lines could not be written") }
        }
        out.append("  slots")
        let header = ["SLOT", "GEN", "PID", "STATE", "UPTIME", "RESTARTS", "HEALTH", "LAST EXIT"]
        let rows = d.slots.map { s -> [String] in
            var last = s.lastExit ?? "-"
            if let f = s.lastFailure, f != s.lastExit { last += " (\(f))" }
            if let t = s.restartInS { last += ", restart in \(StatusTable.duration(t))" }
            if let o = s.others { last += ", also pid \(o.map(String.init).joined(separator: ","))" }
            return ["\(s.slot)", "\(s.generation)", s.pid.map(String.init) ?? "-", s.state, s.uptimeS.map(StatusTable.duration) ?? "-",
                    "\(s.restarts)", s.health ?? "-", last]
        }
        out += Columns.format([header] + rows, indent: 4)
        let exits = d.slots.flatMap { s in (s.exits ?? []).map { (s.slot, $0) } }
        if !exits.isEmpty {
            out.append("  last exits")
            out += Columns.format([["SLOT", "AT", "PID", "GEN", "RAN", "HOW"]] + exits.map { slot, e in
                ["\(slot)", e.at, "\(e.pid)", "\(e.generation)", StatusTable.duration(e.uptimeS), e.status]
            }, indent: 4)
        }
        return out
    }

    static func quoted(_ arg: String) -> String {
        guard arg.isEmpty || arg.contains(where: { " \t\"'\\$".contains($0) }) else { return arg }
        return "'" + arg.replacingAll("'", with: "'\\''") + "'"
    }
}

/// Left-aligned columns (the last one unpadded).
enum Columns {
    static func format(_ rows: [[String]], indent: Int) -> [String] {
        guard let first = rows.first else { return [] }
        let widths = first.indices.map { i in rows.map { i < $0.count ? $0[i].count : 0 }.max() ?? 0 }
        return rows.map { row in
            String(repeating: " ", count: indent) + row.enumerated().map { i, cell in
                i == row.count - 1 ? cell : cell.padding(widths[i])
            }.joined(separator: "  ")
        }
    }
}

extension String {
    /// Padded with spaces to `width` characters (never cut).
    func padding(_ width: Int) -> String { count >= width ? self : self + String(repeating: " ", count: width - count) }

    func replacingAll(_ target: Character, with replacement: String) -> String {
        var out = ""
        for c in self { if c == target { out += replacement } else { out.append(c) } }
        return out
    }
}
