import SwarmConfig
import SwarmCore
import SwarmProtocol

extension DaemonOptions {
    /// `--agent HOST:PORT`, checked; the error names the flag.
    public static func agentAddress(_ text: String) throws -> (host: String, port: UInt16) {
        do { return try parseTCPAddress(text) } catch { throw DaemonError.control("--agent: \(error)") }
    }
}

extension Manager {
    /// `drain NAME|all` / `undrain NAME|all`: what the HAProxy agent says
    /// about the apps (workers are not touched), remembered in apps.json
    /// before the reply, like every other change of the remembered apps.
    func setDrained(_ request: Request, _ client: ControlClient) {
        let id = request.id
        guard let selector = selector(request, client) else { return }
        let names: [String]
        switch selector {
        case .all: names = supervisor.appOrder
        case let .app(name):
            guard supervisor.apps[name] != nil else {
                return control.send(client, .failure(id, CommandError.unknownApp(name).description))
            }
            names = [name]
        }
        let drain = request.verb == .drain
        for n in names {
            let changed = drain ? drained.insert(n).inserted : drained.remove(n) != nil
            if changed { shellEvent(LifecycleDraft(kind: drain ? "drained" : "undrained", app: n, message: drain ? "drained: the HAProxy agent answers 'drain'" : "undrained")) }
        }
        // Forget apps that are gone, so a later app of the same name starts undrained.
        drained.formIntersection(supervisor.appOrder)
        let failuresBefore = saveFailures
        stateDirty = true
        flushState()
        if saveFailures != failuresBefore, let why = lastSaveError {
            return control.send(client, .failure(id, "the change is in force, but \(store.path) could not be saved (\(why)): it will be forgotten when swarmd restarts"))
        }
        let what = drain ? "drained (the HAProxy agent answers 'drain')" : "undrained (the HAProxy agent answers by ready workers again)"
        let shown = names.isEmpty ? "no apps" : names.joined(separator: ", ")
        let note = agent == nil ? "; swarmd has no --agent, so nothing reads this yet" : ""
        control.send(client, .success(id, "\(shown): \(what)\(note)"))
    }
}
