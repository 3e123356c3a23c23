import ArgumentParser
import SwarmProtocol

struct Events: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Stream lifecycle events (spawned, ready, exited, restart-scheduled, crash loops, reloads, …) as they happen.",
        discussion: "Runs until interrupted. -n N first prints the last N events swarmd kept (at most 512). A reader that falls behind by more than 256 KiB gets a 'dropped' event with the count instead of the events it missed.")
    @OptionGroup var global: GlobalOptions
    @Option(name: .short, help: "How many past events to print first.") var n: Int = 0
    @Flag(name: .customLong("no-follow"), help: "Print the past events (-n) and exit.") var noFollow = false
    @Flag(help: "One JSON object per line.") var json = false
    @Argument(help: "App name (default: every app).") var name: String?

    func validate() throws {
        if let name { try validateName(name) }
        guard n >= 0 else { throw ValidationError("-n must be 0 or more") }
    }

    func run() throws {
        try execute {
            let client = try Client(global)
            _ = try client.call(client.request(.events, name: name, lines: n, follow: !noFollow)) { r in
                guard let record = r.record else { return }
                if json { printJSONLine(record) } else { printLines([record.formatted]) }
            }
        }
    }
}
