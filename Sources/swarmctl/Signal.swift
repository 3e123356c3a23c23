import ArgumentParser
import SwarmProtocol

struct SignalCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "signal",
        abstract: "Send a signal to an app's workers (all of them, or one slot's).",
        discussion: """
            The signal goes to the worker process itself, which is what servers that act on signals expect \
            (gunicorn's TTIN/TTOU/HUP, nginx's USR1, a node cluster primary's own handlers); --group sends it \
            to the worker's whole process group (each worker leads its own) instead. Workers being stopped are \
            left alone. A worker killed this way is restarted by its restart policy like any other exit.
            """)
    @OptionGroup var global: GlobalOptions
    @Flag(help: "Send it to each worker's process group (the worker and the processes it started).") var group = false
    @Argument(help: ArgumentHelp("The app, or one slot of it.", valueName: "name[:slot]")) var target: String
    @Argument(help: ArgumentHelp("A name (TERM, SIGHUP, usr1, RTMIN+1) or a number (1-31, 34-64).", valueName: "signal")) var signal: String

    /// "web" → ("web", nil); "web:2" → ("web", 2).
    static func split(_ target: String) throws -> (name: String, slot: Int?) {
        guard let colon = target.lastIndex(of: ":") else { return (target, nil) }
        let digits = target[target.index(after: colon)...]
        guard !digits.isEmpty, digits.count <= 5, digits.allSatisfy({ $0.isASCII && $0.isNumber }), let slot = Int(digits) else {
            throw ValidationError("'\(TerminalText.escape(target))': the slot after ':' must be a number (web:0 is the first)")
        }
        return (String(target[..<colon]), slot)
    }

    func validate() throws {
        let (name, _) = try Self.split(target)
        try validateName(name)
        guard name != AppName.all else { throw ValidationError("signal takes one app name, not 'all'") }
        if case let .failure(e) = SignalName.parse(signal) { throw ValidationError("signal \(e.description)") }
    }

    func run() throws {
        let (name, slot) = try Self.split(target)
        try execute {
            let client = try Client(global)
            var request = client.request(.signal, name: name)
            request.slot = slot
            request.signal = signal
            if group { request.group = true }
            let r = try client.call(request)
            if let m = r.message { printOut(m) }
        }
    }
}
