import ArgumentParser
import Foundation
import Glibc
import SwarmProtocol

struct Status: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Show apps and workers (a table, or --json).")
    @OptionGroup var global: GlobalOptions
    @Flag(help: "Print the documented JSON schema instead of a table.") var json = false
    @Argument(help: "Only this app.") var name: String?

    func validate() throws { if let name { try validateName(name) } }

    func run() throws {
        try execute {
            let client = try Client(path: global.socketPath)
            let r = try client.call(client.request(.status, name: name))
            guard let report = r.status else { throw CtlError(description: "swarmd sent no status") }
            if json {
                printOut(toJSON(report))
            } else {
                printOut(StatusTable.render(report, color: isatty(1) != 0 && ProcessInfo.processInfo.environment["NO_COLOR"] == nil))
            }
        }
    }
}

/// The `swarmctl status` table: fits 80 columns.
enum StatusTable {
    /// One block per app: a summary line, then a worker table (≤ 80 columns).
    static func render(_ report: StatusReport, color: Bool) -> String {
        func paint(_ text: String, _ state: String) -> String {
            guard color, let code = colorCode(state) else { return text }
            return "\u{1b}[\(code)m\(text)\u{1b}[0m"
        }
        var lines: [String] = []
        for app in report.apps {
            // PIN (the CPU a worker is pinned to) only for apps with cpu_affinity, to stay within 80 columns.
            let pinned = app.workers.contains { $0.cpuPinned != nil }
            let header = ["SLOT", "PID", "STATE", "GEN", "UPTIME", "RESTARTS", "CPU%", "SHARE", "RSS"] + (pinned ? ["PIN"] : [])
            let sockets = app.sockets.map { "\($0.name) \($0.listen) (\($0.balance))" }.joined(separator: ", ")
            var summary = "\(app.name)  \(paint(app.state, app.state))  gen \(app.generation)  \(app.workersReady)/\(app.workersWanted) ready"
            if !sockets.isEmpty { summary += "  \(sockets)" }
            if let t = app.logThrottledS, t > 0 { summary += "  (output throttled \(duration(t)))" }
            lines.append(summary)
            let rows: [[String]] = app.workers.map { w in
                var row: [String] = [
                    "\(w.slot)", w.pid.map(String.init) ?? "-", w.state, "\(w.generation)", duration(w.uptimeS), "\(w.restarts)",
                    w.cpuPercent.map { String(format: "%.1f", $0) } ?? "-",
                    w.cpuShare.map { String(format: "%.0f%%", $0 * 100) } ?? "-", w.rssBytes.map(bytes) ?? "-",
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
            if let r = app.lastReload {
                lines.append("  last reload \(r.ok ? "ok" : paint("FAILED", "crash-loop")) \(duration(r.ageS)) ago: \(r.message)")
            }
            for w in app.workers {
                if let text = w.statusText { lines.append("  [\(w.slot)] \(text)") }
                if w.state == "backoff" || w.state == "crash-loop", let exit = w.lastExit { lines.append("  [\(w.slot)] last exit: \(exit)") }
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
        if s < 60 { return String(format: "%.0fs", s) }
        if s < 3600 { return "\(Int(s) / 60)m\(Int(s) % 60)s" }
        if s < 86400 { return "\(Int(s) / 3600)h\(Int(s) % 3600 / 60)m" }
        return "\(Int(s) / 86400)d\(Int(s) % 86400 / 3600)h"
    }

    static func bytes(_ b: Int64) -> String {
        if b < 1 << 20 { return "\(b >> 10)K" }
        if b < 1 << 30 { return String(format: "%.1fM", Double(b) / 1048576) }
        return String(format: "%.1fG", Double(b) / 1073741824)
    }
}

struct Logs: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Print an app's recent worker output; -f keeps following it.")
    @OptionGroup var global: GlobalOptions
    @Flag(name: .shortAndLong, help: "Keep printing new lines.") var follow = false
    @Option(name: .short, help: "How many past lines.") var n: Int = 50
    @Flag(help: "One JSON object per line.") var json = false
    @Argument(help: "App name, or 'all'.") var name: String

    func validate() throws {
        try validateName(name)
        guard n >= 0 else { throw ValidationError("-n must be 0 or more") }
    }

    func run() throws {
        try execute {
            let client = try Client(path: global.socketPath)
            _ = try client.call(client.request(.logs, name: name, lines: n, follow: follow)) { r in
                if let m = r.message { printErr("swarmctl: \(m)") }
                for line in r.log ?? [] {
                    printOut(json ? String(decoding: Codec.encode(line).dropLast(), as: UTF8.self) : line.formatted)
                }
            }
        }
    }
}
