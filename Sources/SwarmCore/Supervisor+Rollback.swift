/// Generation history and `rollback`: every app keeps its last
/// `generationsKept` config generations (number, start, outcome, the
/// shell's digest of the files, and the config itself while it can be rolled
/// back to). `rollback` is a rolling reload to the config of the generation
/// before the current one, through the same readiness-gated path as any
/// reload (a new generation number runs the old config), so it rolls itself
/// back too when that config no longer starts.
///
/// Rollbacks stack like undo: a generation that restored generation G stands
/// for G, so the next rollback goes to the generation before G, not back to
/// the one just undone. Rolled-back and failed generations are never targets.

/// One config generation of an app, as `status` lists it and `rollback` reads it.
public struct GenerationRecord: Codable, Hashable, Sendable {
    public enum Outcome: String, Codable, Hashable, Sendable {
        /// In force now (also for a stopped app: the config its next start uses).
        case running
        /// A later reload or `start --replace` took its place.
        case replaced
        /// `rollback` took its place with the generation before it.
        case rolledBack = "rolled back"
        /// Its reload failed (and was rolled back) or was cancelled: it never took over.
        case failed
    }

    public var generation: Int
    /// When its reload (or start) began.
    public var at: Instant
    public var outcome: Outcome
    /// The shell's digest of the files the config was read from (nil: not known).
    public var digest: String?
    /// A rollback: the generation whose config this one runs again.
    public var restores: Int?
    /// The config, kept while it can be rolled back to (running and replaced generations).
    public var spec: AppSpec?

    public init(generation: Int, at: Instant, outcome: Outcome, digest: String? = nil, restores: Int? = nil, spec: AppSpec? = nil) {
        self.generation = generation
        self.at = at
        self.outcome = outcome
        self.digest = digest
        self.restores = restores
        self.spec = spec
    }
}

/// What the core holds about generations outside the apps (not persisted:
/// a snapshot is never taken while a reload runs or a start waits).
struct GenerationBook: Sendable {
    /// `.history` before a `start`: the records a previous swarmd kept and the digest of the file about to start.
    var pending: [String: (records: [GenerationRecord], digest: String?)] = [:]
    /// Per app with a reload in flight: the new generation's digest and, for a rollback, what it restores.
    var inFlight: [String: (digest: String?, restores: Int?, at: Instant)] = [:]
}

extension Supervisor {
    /// How many generations of each app are kept (the running one always among them).
    public static let generationsKept = 5

    /// `.rollback(NAME)`.
    mutating func rollback(_ name: String, request: RequestID, now: Instant) {
        guard let app = apps[name], app.goal != .deleted else { return reply(request, .failure(.unknownApp(name))) }
        if app.reload != nil { return reply(request, .failure(.reloadInProgress(name))) }
        switch rollbackTarget(name) {
        case let .failure(why):
            reply(request, .failure(why))
        case let .success((target, spec)):
            let restores = target.restores ?? target.generation
            reload([ReloadRequest(app: name, spec: spec, digest: target.digest)], request: request, now: now, restoring: restores)
        }
    }

    /// The generation `rollback` would go to, and its config; or why there is none.
    public func rollbackTarget(_ name: String) -> Result<(GenerationRecord, AppSpec), CommandError> {
        guard let app = apps[name] else { return .failure(.unknownApp(name)) }
        let history = app.history ?? []
        let current = history.last { $0.generation == app.generation }
        let base = current?.restores ?? app.generation
        guard let target = history.last(where: { $0.generation < base && $0.outcome == .replaced && $0.spec != nil }),
              let spec = target.spec else {
            let kept = history.filter { $0.generation != app.generation }.map { "\($0.generation) \($0.outcome.rawValue)" }
            var why = "\(name): no previous generation to roll back to: generation \(app.generation) is in force"
            if let r = current?.restores { why += " (it restored generation \(r))" }
            why += kept.isEmpty ? " and swarmd keeps no other" : "; kept: \(kept.joined(separator: ", ")) (rolled-back and failed ones are not rolled back to)"
            return .failure(.invalid(why))
        }
        return .success((target, spec))
    }

    /// `.history`: what a previous swarmd kept of the app's generations, and the
    /// digest of the config file about to be started; used by the next `start` or `add`.
    mutating func restoreHistory(_ name: String, records: [GenerationRecord], digest: String?, request: RequestID) {
        let bounded = Array(records.sorted { $0.generation < $1.generation }.suffix(Supervisor.generationsKept))
        generationBook.pending[name] = (bounded, digest)
        reply(request, .success(""))
    }

    /// The first generation number of an app being started: the kept running
    /// generation's when the file is the one it ran (a restart changes nothing),
    /// else one above every number kept.
    func firstGeneration(_ name: String) -> Int {
        guard let p = generationBook.pending[name], let last = p.records.last else { return 1 }
        if last.outcome == .running, last.digest != nil, last.digest == p.digest { return last.generation }
        return (p.records.map(\.generation).max() ?? 0) + 1
    }

    /// A start (or `add`, or `start --replace`) put generation `generation` in force.
    mutating func recordStart(_ name: String, generation: Int, now: Instant) {
        guard let spec = apps[name]?.specs[generation] else { return }
        let pending = generationBook.pending.removeValue(forKey: name)
        var history = pending?.records ?? apps[name]?.history ?? []
        for i in history.indices where history[i].outcome == .running && history[i].generation != generation {
            history[i].outcome = .replaced
        }
        if let i = history.lastIndex(where: { $0.generation == generation }) {
            history[i].outcome = .running
            history[i].spec = spec
        } else {
            history.append(GenerationRecord(generation: generation, at: now, outcome: .running, digest: pending?.digest, spec: spec))
        }
        setHistory(name, history)
    }

    /// A reload to generation `to` began: remember what the record will say.
    mutating func recordReloadBegan(_ name: String, digest: String?, restores: Int?, now: Instant) {
        generationBook.inFlight[name] = (digest, restores, now)
    }

    /// Generation `to` took over from `from` (a reload finished, or a stopped app's config changed).
    mutating func recordReloaded(_ name: String, from: Int, to: Int, now: Instant) {
        let info = generationBook.inFlight.removeValue(forKey: name)
        var history = apps[name]?.history ?? []
        for i in history.indices where history[i].outcome == .running {
            let rolledBack = info?.restores != nil && history[i].generation == from
            history[i].outcome = rolledBack ? .rolledBack : .replaced
            if rolledBack { history[i].spec = nil }
        }
        history.append(GenerationRecord(generation: to, at: info?.at ?? now, outcome: .running, digest: info?.digest,
                                        restores: info?.restores, spec: apps[name]?.specs[to]))
        setHistory(name, history)
    }

    /// The reload to `to` failed or was cancelled: the generation in force stays.
    mutating func recordReloadFailed(_ name: String, to: Int, now: Instant) {
        let info = generationBook.inFlight.removeValue(forKey: name)
        var history = apps[name]?.history ?? []
        history.append(GenerationRecord(generation: to, at: info?.at ?? now, outcome: .failed, digest: info?.digest, restores: info?.restores))
        setHistory(name, history)
        // Starts, finished reloads and stops say so themselves; a failed reload changes only the history.
        out.append(.appsChanged)
    }

    /// Keeps the newest `generationsKept`, the running one always; numbers are never given out again.
    mutating func setHistory(_ name: String, _ records: [GenerationRecord]) {
        var h = records.sorted { $0.generation < $1.generation }
        while h.count > Supervisor.generationsKept, let i = h.firstIndex(where: { $0.outcome != .running }) { h.remove(at: i) }
        let highest = h.map(\.generation).max() ?? 0
        modifyApp(name) {
            $0.history = h
            $0.lastGeneration = max($0.lastGeneration ?? 0, highest)
        }
    }
}
