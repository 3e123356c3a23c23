/// A command whose reply waits for workers: it is answered once the
/// condition holds, checked after every event.
struct Waiter: Sendable {
    enum Kind: Sendable {
        /// Every slot runs a ready worker, or has failed to start since the
        /// request (per-slot start-failure counts at request time).
        case settled([String: [Int: Int]])
        /// No worker of the apps is left.
        case gone
        /// Every app's rolling reload has ended.
        case reload
    }

    let request: RequestID
    let verb: String
    let apps: [String]
    let kind: Kind
    var reloadResults: [String: Result<String, CommandError>] = [:]
    var interrupted: String?
}

extension Supervisor {
    mutating func settleWaiters() {
        var remaining: [Waiter] = []
        for waiter in waiters {
            if let result = evaluate(waiter) {
                reply(waiter.request, result)
            } else {
                remaining.append(waiter)
            }
        }
        waiters = remaining
    }

    func evaluate(_ waiter: Waiter) -> Result<String, CommandError>? {
        switch waiter.kind {
        case .reload:
            guard waiter.apps.allSatisfy({ waiter.reloadResults[$0] != nil }) else { return nil }
            var failures: [CommandError] = []
            var lines: [String] = []
            for name in waiter.apps {
                switch waiter.reloadResults[name]! {
                case let .success(msg): lines.append(msg)
                case let .failure(err): failures.append(err)
                }
            }
            if failures.count == 1 { return .failure(failures[0]) }
            if !failures.isEmpty {
                return .failure(.interrupted(failures.map(\.description).joined(separator: "\n")))
            }
            return .success(lines.joined(separator: "\n"))

        case .gone:
            var lines: [String] = []
            for name in waiter.apps {
                guard let app = apps[name] else {
                    lines.append("\(name): \(waiter.verb)")
                    continue
                }
                if app.slots.contains(where: { !$0.liveWorkers.isEmpty }) { return nil }
                if app.goal == .deleted { return nil }
                lines.append("\(name): \(waiter.verb)")
            }
            return .success(lines.isEmpty ? "no apps" : lines.joined(separator: "\n"))

        case let .settled(baselines):
            if let why = waiter.interrupted { return .failure(.interrupted(why)) }
            var lines: [String] = []
            for name in waiter.apps {
                guard let app = apps[name], app.goal != .deleted else {
                    return .failure(.interrupted("\(name) was deleted before its workers were ready"))
                }
                guard app.goal == .running else {
                    return .failure(.interrupted("\(name) was stopped before its workers were ready"))
                }
                if app.slots.contains(where: \.removing) { return nil }
                let base = baselines[name] ?? [:]
                var failed: [Slot] = []
                for slot in app.slots {
                    let ready = slot.current.flatMap { workers[$0] }.map { $0.phase == .ready } ?? false
                    if ready { continue }
                    if slot.startFailures > base[slot.index, default: 0] {
                        failed.append(slot)
                        continue
                    }
                    return nil
                }
                if !failed.isEmpty {
                    let detail = failed.first.flatMap { $0.lastFailure ?? $0.lastExit?.description } ?? "not ready"
                    return .failure(.startFailed(app: name, failed: failed.count, of: app.slots.count, detail: detail))
                }
                lines.append("\(name): \(waiter.verb), \(app.slots.count)/\(app.slots.count) workers ready")
            }
            return .success(lines.isEmpty ? "no apps" : lines.joined(separator: "\n"))
        }
    }
}

/// How an app is doing.
public struct AppHealth: Equatable, Sendable {
    public enum State: String, Sendable {
        case running, degraded, crashLoop = "crash-loop", reloading, stopping, stopped, deleting
    }
    public var state: State
    public var ready: Int
    public var wanted: Int
    public init(state: State, ready: Int, wanted: Int) {
        self.state = state
        self.ready = ready
        self.wanted = wanted
    }
}
