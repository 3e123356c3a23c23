import ArgumentParser
import SwarmProtocol

struct Logs: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Print an app's recent worker output; -f keeps following it.",
        discussion: "logs --reopen (no app name) makes swarmd close and reopen every app's log file, as SIGUSR1 does: run it after an outside tool such as logrotate renamed the files.")
    @OptionGroup var global: GlobalOptions
    @Flag(name: .shortAndLong, help: "Keep printing new lines.") var follow = false
    @Option(name: .short, help: "How many past lines.") var n: Int = 50
    @Flag(help: "One JSON object per line.") var json = false
    @Flag(help: "Make swarmd reopen its log files (after logrotate moved them away), then exit.") var reopen = false
    @Argument(help: "App name, or 'all'.") var name: String?

    func validate() throws {
        if reopen {
            guard name == nil, !follow else { throw ValidationError("logs --reopen takes no app name and no -f: it reopens every app's log file") }
            return
        }
        guard let name else { throw ValidationError("Missing expected argument '<name>' (an app name, or 'all')") }
        try validateName(name)
        guard n >= 0 else { throw ValidationError("-n must be 0 or more") }
    }

    func run() throws {
        if reopen { return try call(global, .reopenLogs, fallback: "reopened") }
        try execute {
            let client = try Client(global)
            _ = try client.call(client.request(.logs, name: name, lines: n, follow: follow)) { r in
                if let m = r.message { printErr("swarmctl: \(TerminalText.escape(m))") }
                let lines = r.log ?? []
                if json {
                    for line in lines { printJSONLine(line) }
                } else {
                    // `formatted` escapes the worker's text: one log line prints as one line.
                    printLines(lines.map(\.formatted))
                }
            }
        }
    }
}
