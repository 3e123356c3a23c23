import ArgumentParser
import SwarmProtocol
import SwarmSystem

struct Status: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Show apps and workers (a table, or --json).", aliases: ["ls", "list"])
    @OptionGroup var global: GlobalOptions
    @Flag(help: "Print the documented JSON schema instead of a table.") var json = false
    @Flag(help: "Exit 3 unless every app (or NAME) has all its workers ready: for exec probes and scripts.") var check = false
    @Argument(help: "Only this app.") var name: String?

    func validate() throws { if let name { try validateName(name) } }

    func run() throws {
        try execute {
            let client = try Client(global)
            var parts = StatusAssembler()
            let r = try client.call(client.request(.status, name: name)) { parts.add($0) }
            guard let streamed = r.status else { throw CtlError(description: "swarmd sent no status") }
            let report = parts.report(streamed)
            if json {
                printPrettyJSON(report)
            } else {
                // Each field from swarmd is escaped inside render; the colours are ours.
                Console.write(StatusTable.render(report, color: Console.isTerminal(.output) && Environment.get("NO_COLOR") == nil) + "\n")
            }
            if check, let problem = ReadyCheck.problem(report, named: name) {
                throw CtlError(description: "not ready: \(problem)", exitCode: ReadyCheck.notReadyExitCode)
            }
        }
    }
}

/// The `swarmctl status` table: fits 80 columns.
enum StatusTable {
    /// One block per app: a summary line, then a worker table (≤ 80 columns).
    /// Every text that came from swarmd (names, states, STATUS= lines, exit
    /// reasons, messages) is escaped: it may hold a worker's bytes.
    static func render(_ report: StatusReport, color: Bool) -> String {
        let e = TerminalText.escape
        func paint(_ text: String, _ state: String) -> String {
            guard color, let code = colorCode(state) else { return text }
            return "\u{1b}[\(code)m\(text)\u{1b}[0m"
        }
        var lines: [String] = []
        for app in report.apps {
            // PIN (the CPU a worker is pinned to) only for apps with cpu_affinity, to stay within 80 columns.
            let pinned = app.workers.contains { $0.cpuPinned != nil }
            let header = ["SLOT", "PID", "STATE", "GEN", "UPTIME", "RESTARTS", "CPU%", "SHARE", "RSS"] + (pinned ? ["PIN"] : [])
            let sockets = app.sockets.map { "\(e($0.name)) \(e($0.listen)) (\(e($0.balance)))" }.joined(separator: ", ")
            var summary = "\(e(app.name))  \(paint(e(app.state), app.state))  gen \(app.generation)  \(app.workersReady)/\(app.workersWanted) ready"
            if !sockets.isEmpty { summary += "  \(sockets)" }
            if let t = app.logThrottledS, t > 0 { summary += "  (output throttled \(duration(t)))" }
            lines.append(summary)
            let rows: [[String]] = app.workers.map { w in
                var row: [String] = [
                    "\(w.slot)", w.pid.map(String.init) ?? "-", e(w.state), "\(w.generation)", duration(w.uptimeS), "\(w.restarts)",
                    w.cpuPercent.map { fixed($0, 1) } ?? "-",
                    w.cpuShare.map { fixed($0 * 100, 0) + "%" } ?? "-", w.rssBytes.map(bytes) ?? "-",
                ]
                if pinned { row.append(w.cpuPinned.map(String.init) ?? "-") }
                return row
            }
            let widths = header.indices.map { i in max(header[i].count, rows.map { $0[i].count }.max() ?? 0) }
            func format(_ row: [String], state: String?) -> String {
                var out = " "
                for (i, cell) in row.enumerated() {
                    let pad = String(repeating: " ", count: widths[i] - cell.count)
                    var text = i == 2 ? cell + pad : pad + cell
                    if i == 2, let state { text = paint(cell, state) + pad }
                    out += " " + text + (i == row.count - 1 ? "" : " ")
                }
                return out
            }
            lines.append(format(header, state: nil))
            for (row, w) in zip(rows, app.workers) { lines.append(format(row, state: w.state)) }
            // Where to edit it before a reload: for a quick start, the file swarmd wrote.
            if !app.config.isEmpty { lines.append("  config \(e(app.config))") }
            if let r = app.lastReload {
                lines.append("  last reload \(r.ok ? "ok" : paint("FAILED", "crash-loop")) \(duration(r.ageS)) ago: \(e(r.message))")
            }
            for w in app.workers {
                if let text = w.statusText { lines.append("  [\(w.slot)] \(e(text))") }
                if w.state == "backoff" || w.state == "crash-loop", let exit = w.lastExit { lines.append("  [\(w.slot)] last exit: \(e(exit))") }
            }
            lines.append("")
        }
        if report.apps.isEmpty { lines.append("(no apps; start one with: swarmctl start app.conf)") }
        lines.append("swarmd pid \(report.daemon.pid), up \(duration(report.daemon.uptimeS)), rss \(bytes(report.daemon.rssBytes))")
        return lines.joined(separator: "\n")
    }

    static func colorCode(_ state: String) -> String? {
        switch state {
        case "ready", "running": return "32"
        case "starting", "stopping", "reloading", "backoff", "degraded": return "33"
        case "crash-loop", "killing": return "31"
        default: return nil
        }
    }

    static func duration(_ s: Double) -> String {
        if s < 60 { return fixed(s, 0) + "s" }
        if s < 3600 { return "\(Int(s) / 60)m\(Int(s) % 60)s" }
        if s < 86400 { return "\(Int(s) / 3600)h\(Int(s) % 3600 / 60)m" }
        return "\(Int(s) / 86400)d\(Int(s) % 86400 / 3600)h"
    }

    static func bytes(_ b: Int64) -> String {
        if b < 1 << 20 { return "\(b >> 10)K" }
        if b < 1 << 30 { return fixed(Double(b) / 1048576, 1) + "M" }
        return fixed(Double(b) / 1073741824, 1) + "G"
    }
}

/// `status --check`: the rule swarmd's /readyz applies. Every app must have
/// its wanted workers ready; an app the operator stopped wants none and is
/// skipped, unless it is the one named; an app in state error never is ready.
enum ReadyCheck {
    /// Distinct from 1 (swarmctl could not ask) and 64 (usage), as LSB's "status" uses 3.
    static let notReadyExitCode: Int32 = 3

    static func problem(_ report: StatusReport, named name: String?) -> String? {
        let explicit = name != nil && name != "all"
        var problems: [String] = []
        for app in report.apps {
            switch app.state {
            case "stopped", "stopping", "deleting":
                if explicit { problems.append("\(app.name) \(app.state)") }
            case "error":
                problems.append("\(app.name) error")
            default:
                if app.workersReady < app.workersWanted {
                    problems.append("\(app.name) \(app.workersReady)/\(app.workersWanted) ready (\(app.state))")
                }
            }
        }
        return problems.isEmpty ? nil : problems.map(TerminalText.escape).joined(separator: ", ")
    }
}
