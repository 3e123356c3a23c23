/// A command whose reply waits for workers: it is answered once the
/// condition holds, checked after each event that touched one of its apps.
struct Waiter: Sendable {
    enum Kind: Sendable {
        /// Every slot runs a ready worker, or has failed to start since the
        /// request (a start failure numbered above `since`).
        case settled(since: UInt64)
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
    mutating func addWaiter(_ w: Waiter) {
        waiters.append(w)
        newWaiters = true
    }

    /// Answers the waiters this event may have settled: those of the apps it
    /// touched (each evaluated from counters), all of them after a shutdown or a new waiter.
    mutating func settleWaiters() {
        guard !waiters.isEmpty else { return }
        guard newWaiters || !touchedApps.isEmpty else { return }
        var remaining: [Waiter] = []
        remaining.reserveCapacity(waiters.count)
        for waiter in waiters {
            let relevant = newWaiters || waiter.interrupted != nil || waiter.apps.contains { touchedApps.contains($0) }
            if relevant, let result = evaluate(waiter) {
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
            var failures: [CommandError] = []
            var lines: [String] = []
            for name in waiter.apps {
                switch waiter.reloadResults[name] {
                case nil: return nil
                case let .success(msg)?: lines.append(msg)
                case let .failure(err)?: failures.append(err)
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
                if let app = apps[name] {
                    if (stats[name]?.workers ?? 0) > 0 || app.goal == .deleted { return nil }
                }
                lines.append("\(name): \(waiter.verb)")
            }
            return .success(lines.isEmpty ? "no apps" : lines.joined(separator: "\n"))

        case let .settled(since):
            if let why = waiter.interrupted { return .failure(.interrupted(why)) }
            var lines: [String] = []
            for name in waiter.apps {
                guard let app = apps[name], app.goal != .deleted else {
                    return .failure(.interrupted("\(name) was deleted before its workers were ready"))
                }
                guard app.goal == .running else {
                    return .failure(.interrupted("\(name) was stopped before its workers were ready"))
                }
                guard let st = stats[name], st.removing == 0 else { return nil }
                // A slot not ready that has not failed since the request: wait for it.
                if let least = st.notReady.min, least.priority <= since { return nil }
                let failed = st.notReady.count
                if failed > 0 {
                    // Once, for the reply: the lowest failed slot says why.
                    let first = app.slots.first { slot in !(slot.current.flatMap { workers[$0] }?.isReady ?? false) }
                    let detail = first.flatMap { $0.lastFailure ?? $0.lastExit?.description } ?? "not ready"
                    return .failure(.startFailed(app: name, failed: failed, of: app.slots.count, detail: detail))
                }
                lines.append("\(name): \(waiter.verb), \(app.slots.count)/\(app.slots.count) workers ready")
            }
            return .success(lines.isEmpty ? "no apps" : lines.joined(separator: "\n"))
        }
    }
}
