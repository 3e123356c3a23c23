import ArgumentParser
import SwarmProtocol

struct Reload: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Re-read an app's config and replace its workers one by one, without dropping a connection.",
        discussion: "Returns when every worker is replaced, or non-zero with the reason when the new version failed and was rolled back.")
    @OptionGroup var global: GlobalOptions
    @Flag(help: "Print progress events as JSON lines.") var json = false
    @Option(help: ArgumentHelp("With several --host: reload this many hosts at a time after the first (default 1).", valueName: "n"))
    var parallel: Int?
    @Option(name: .customLong("canary-wait"),
            help: ArgumentHelp("With several --host: after the first host, watch it this long (all workers ready, none restarting) before going on, e.g. 30s.", valueName: "duration"))
    var canaryWait: String?
    @Argument(help: "App name, or 'all'.") var name: String

    func validate() throws { try validateName(name) }

    func run() throws {
        try runRollingVerb(.reload, name: name, json: json, global: global)
    }
}

/// Runs a rolling verb (reload, rollback) on one swarmd, printing its progress
/// events as they come (JSON lines with `json`), then its outcome.
func runRollingVerb(_ verb: Verb, name: String, json: Bool, global: GlobalOptions) throws {
    try execute {
        let client = try Client(global)
        do {
            var printed = false
            let r = try client.call(client.request(verb, name: name)) { event in
                guard let e = event.event else { return }
                printed = true
                if json { printJSONLine(e) } else { printOut(TerminalText.escape(e.message)) }
            }
            if json { printOut(#"{"ok":true}"#) } else if !printed, let m = r.message { printOut(m) }
        } catch let e as CtlError {
            if json { printJSONLine(["ok": "false", "error": e.description]) }
            throw e
        }
    }
}
