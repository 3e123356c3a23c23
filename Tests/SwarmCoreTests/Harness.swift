import Testing
@testable import SwarmCore

/// An instant `d` after the fake clock's origin.
func at(_ d: Duration) -> Instant { .zero + d }

/// A spec with notify readiness unless told otherwise; `configure` tweaks the rest.
func makeSpec(_ name: String = "web", workers: Int = 2, ready: ReadyMode = .notify,
              _ configure: (inout AppSpec) -> Void = { _ in }) -> AppSpec {
    var s = AppSpec(name: name, command: ["/usr/bin/\(name)"], workers: workers, cwd: "/srv/\(name)")
    s.ready.mode = ready
    configure(&s)
    return s
}

extension Command {
    /// A reload of each spec's own app, as the shell asks after re-reading the files.
    static func reloadSpecs(_ specs: [AppSpec]) -> Command {
        .reload(specs.map { ReloadRequest(app: $0.name, spec: $0) })
    }
}

/// A signal the core asked the shell to send.
struct SentSignal: Equatable {
    var pid: Int32
    var signal: Signal
    var group: Bool
    var at: Instant
}

/// Performs the core's actions the way swarmd's shell does, against a fake
/// clock: spawns get pids (answered with `.spawned` right after the batch),
/// the armed timer fires `.tick` when the clock reaches it, and everything
/// else is recorded. After every event the core's invariants are checked.
final class FakeShell {
    var sup = Supervisor()
    private(set) var now: Instant = .zero
    /// The timer as the core last armed it.
    private(set) var armed: Instant?
    var nextPid: Int32 = 1000
    var nextRequest: UInt64 = 1

    /// The next this many spawns fail with `.spawnFailed`.
    var failingSpawns = 0
    /// Keep spawns unanswered (in `pendingSpawns`) until `completeSpawns()`.
    var deferSpawns = false
    private(set) var pendingSpawns: [WorkerID] = []

    private(set) var actions: [Action] = []
    private(set) var lastActions: [Action] = []
    private(set) var replies: [RequestID: Result<String, CommandError>] = [:]
    private(set) var replyOrder: [RequestID] = []
    private(set) var progress: [RequestID: [ReloadEvent]] = [:]
    private(set) var signals: [SentSignal] = []
    /// (worker, app, slot, generation, pid) of every spawn, in order.
    private(set) var spawns: [(id: WorkerID, app: String, slot: Int, generation: Int, at: Instant)] = []
    private(set) var probes: [(id: WorkerID, pid: Int32, at: Instant)] = []
    private(set) var memorySamples: [(pid: Int32, at: Instant)] = []
    private(set) var released: [(app: String, slot: Int)] = []
    /// Reload hand-overs, with how many signals had been sent before each (it must precede the old worker's stop signal).
    private(set) var handOvers: [(app: String, slot: Int, from: Int32, signalsBefore: Int)] = []
    private(set) var removed: [String] = []
    private(set) var appsChanged = 0
    private(set) var notes: [(level: NoteLevel, text: String)] = []
    private(set) var exits = 0
    /// `.health` actions (probes, queue samples), with when they were asked for.
    private(set) var healthActions: [(action: HealthAction, at: Instant)] = []

    /// While set, an app must keep at least this many ready workers (checked after every event).
    var readyFloor: [String: Int] = [:]
    /// Off for the scale tests: the full check walks every worker after every event.
    var checkEveryEvent = true
    /// `.steer` actions, with how many signals had been sent before each.
    private(set) var steers: [(app: String, slots: [Int], signalsBefore: Int)] = []
    /// `.workerGone` per worker, to check it comes exactly once, and only for spawned workers.
    private(set) var gone: [WorkerID: Int] = [:]
    private(set) var spawned: Set<WorkerID> = []
    private(set) var restoredPriorities: [Int32] = []
    /// Slots and workers the core visited in each `handle` of the last `send`.
    private(set) var visitsPerHandle: [Int] = []
    /// The most `.spawn` actions one `handle` returned.
    private(set) var largestSpawnBatch = 0
    /// Spawn requests as the core made them.
    private(set) var spawnRequests: [SpawnRequest] = []

    init(probeInterval: Duration? = nil) {
        if let probeInterval { sup.probeInterval = probeInterval }
    }

    // MARK: Driving

    /// Delivers one event, then the `.spawned` answers it provoked and any
    /// tick already due, until the core is quiet.
    @discardableResult
    func send(_ event: Event, sourceLocation: SourceLocation = #_sourceLocation) -> [Action] {
        var queue: [Event] = [event]
        var batch: [Action] = []
        visitsPerHandle = []
        var rounds = 0
        while true {
            let next: Event
            if !queue.isEmpty {
                next = queue.removeFirst()
            } else if let a = armed, a <= now {
                next = .tick
            } else {
                break
            }
            rounds += 1
            if rounds > 10_000 {
                Issue.record("the core never settled: deadline \(String(describing: armed)) stays due at \(now)",
                             sourceLocation: sourceLocation)
                break
            }
            let visitsBefore = sup.visits
            let out = sup.handle(next, now: now)
            visitsPerHandle.append(sup.visits - visitsBefore)
            batch += out
            actions += out
            largestSpawnBatch = max(largestSpawnBatch, out.filter { if case .spawn = $0 { return true } else { return false } }.count)
            perform(out, queue: &queue)
            if checkEveryEvent { checkInvariants(sourceLocation) }
        }
        lastActions = batch
        return batch
    }

    /// Moves the clock to `t`, firing the timer at every deadline on the way.
    func advance(to t: Instant, sourceLocation: SourceLocation = #_sourceLocation) {
        precondition(t >= now, "the clock does not go back")
        while let a = armed, a <= t {
            if a > now { now = a }
            send(.tick, sourceLocation: sourceLocation)
            if let b = armed, b <= now { break }  // already reported by send
        }
        now = t
    }

    func advance(by d: Duration, sourceLocation: SourceLocation = #_sourceLocation) {
        advance(to: now + d, sourceLocation: sourceLocation)
    }

    /// Answers every deferred spawn.
    func completeSpawns(sourceLocation: SourceLocation = #_sourceLocation) {
        let pending = pendingSpawns
        pendingSpawns = []
        for id in pending {
            let pid = nextPid
            nextPid += 1
            send(.spawned(id, pid: pid), sourceLocation: sourceLocation)
        }
    }

    private func perform(_ out: [Action], queue: inout [Event]) {
        for action in out {
            switch action {
            case let .spawn(r):
                let id = r.worker
                spawns.append((id, r.app, r.slot, r.generation, now))
                spawnRequests.append(r)
                if spawned.contains(id) { Issue.record("\(id) spawned twice") }
                spawned.insert(id)
                if failingSpawns > 0 {
                    failingSpawns -= 1
                    queue.append(.spawnFailed(id, reason: "Failed to execute \(r.spec.executable): No such file or directory"))
                } else if deferSpawns {
                    pendingSpawns.append(id)
                } else {
                    let pid = nextPid
                    nextPid += 1
                    queue.append(.spawned(id, pid: pid))
                }
            case let .steer(app, slots):
                steers.append((app, slots, signals.count))
                if slots.isEmpty { Issue.record("\(app): steered to no slot") }
            case let .workerGone(id, _):
                gone[id, default: 0] += 1
                if gone[id] != 1 { Issue.record("\(id): workerGone \(gone[id] ?? 0) times") }
                if !spawned.contains(id) { Issue.record("\(id): workerGone for a worker never spawned") }
            case let .restorePriority(pid):
                restoredPriorities.append(pid)
            case let .signal(pid, sig, group):
                signals.append(SentSignal(pid: pid, signal: sig, group: group, at: now))
            case let .probeListening(id, pid):
                probes.append((id, pid, now))
            case let .sampleMemory(pid):
                memorySamples.append((pid, now))
            case let .armTimer(t):
                armed = t
            case let .reply(r, result):
                if replies[r] != nil { Issue.record("request \(r) answered twice") }
                replies[r] = result
                replyOrder.append(r)
            case let .progress(r, e):
                progress[r, default: []].append(e)
            case let .handOver(app, slot, pid):
                handOvers.append((app, slot, pid, signals.count))
            case let .slotReleased(app, slot):
                released.append((app, slot))
            case let .appRemoved(name):
                removed.append(name)
            case .appsChanged:
                appsChanged += 1
            case let .note(level, text):
                notes.append((level, text))
            case .exit:
                exits += 1
            case let .health(a):
                healthActions.append((a, now))
            }
        }
    }

    // MARK: Commands

    @discardableResult
    func command(_ c: Command, sourceLocation: SourceLocation = #_sourceLocation) -> RequestID {
        let r = RequestID(nextRequest)
        nextRequest += 1
        send(.command(r, c), sourceLocation: sourceLocation)
        return r
    }

    @discardableResult
    func start(_ spec: AppSpec, replace: Bool = false, sourceLocation: SourceLocation = #_sourceLocation) -> RequestID {
        command(.start(spec, replace: replace), sourceLocation: sourceLocation)
    }

    /// Starts `spec` and makes every worker ready; expects the start to succeed.
    func startReady(_ spec: AppSpec, sourceLocation: SourceLocation = #_sourceLocation) {
        let r = start(spec, sourceLocation: sourceLocation)
        readyAll(spec.name, sourceLocation: sourceLocation)
        #expect(succeeded(r), "start of \(spec.name): \(String(describing: replies[r]))", sourceLocation: sourceLocation)
    }

    func reply(_ r: RequestID) -> Result<String, CommandError>? { replies[r] }

    func succeeded(_ r: RequestID) -> Bool {
        if case .success = replies[r] { return true } else { return false }
    }

    func failure(_ r: RequestID) -> CommandError? {
        if case let .failure(e) = replies[r] { return e } else { return nil }
    }

    func message(_ r: RequestID) -> String? {
        if case let .success(m) = replies[r] { return m } else { return nil }
    }

    // MARK: Workers

    func app(_ name: String = "web") -> App? { sup.apps[name] }

    func slot(_ name: String, _ k: Int) -> Slot? {
        guard let app = sup.apps[name], k < app.slots.count else { return nil }
        return app.slots[k]
    }

    func current(_ name: String = "web", _ k: Int) -> Worker? {
        slot(name, k)?.current.flatMap { sup.workers[$0] }
    }

    func incoming(_ name: String = "web", _ k: Int) -> Worker? {
        slot(name, k)?.incoming.flatMap { sup.workers[$0] }
    }

    /// The pid of the worker serving slot `k`.
    func pid(_ name: String = "web", _ k: Int) -> Int32? { current(name, k)?.pid }

    func incomingPid(_ name: String = "web", _ k: Int) -> Int32? { incoming(name, k)?.pid }

    func workers(of name: String) -> [Worker] {
        sup.workers.values.filter { $0.app == name }.sorted { $0.id < $1.id }
    }

    func readyCount(_ name: String = "web") -> Int {
        workers(of: name).filter { $0.phase == .ready }.count
    }

    func ready(_ pid: Int32?, sourceLocation: SourceLocation = #_sourceLocation) {
        guard let pid else { Issue.record("no pid to make ready", sourceLocation: sourceLocation); return }
        send(.ready(pid: pid), sourceLocation: sourceLocation)
    }

    /// Every starting worker of the app signals readiness, lowest id first.
    func readyAll(_ name: String = "web", sourceLocation: SourceLocation = #_sourceLocation) {
        for w in workers(of: name) where w.phase == .starting {
            if let pid = w.pid { send(.ready(pid: pid), sourceLocation: sourceLocation) }
        }
    }

    func exit(_ pid: Int32?, _ status: SwarmCore.ExitStatus = .exited(1), sourceLocation: SourceLocation = #_sourceLocation) {
        guard let pid else { Issue.record("no pid to exit", sourceLocation: sourceLocation); return }
        send(.exited(pid: pid, status), sourceLocation: sourceLocation)
    }

    /// Every worker that was told to stop exits.
    func exitRetiring(_ name: String? = nil, sourceLocation: SourceLocation = #_sourceLocation) {
        for w in sup.workers.values.sorted(by: { $0.id < $1.id }) where w.isRetiring && (name == nil || w.app == name) {
            if let pid = w.pid, sup.workers[w.id] != nil {
                send(.exited(pid: pid, .signaled(Signal.term.number, coreDumped: false)), sourceLocation: sourceLocation)
            }
        }
    }

    func signals(to pid: Int32?) -> [SentSignal] { signals.filter { $0.pid == pid } }

    func signalled(_ pid: Int32?) -> Bool { !signals(to: pid).isEmpty }

    func spawns(in name: String, slot k: Int) -> [(id: WorkerID, app: String, slot: Int, generation: Int, at: Instant)] {
        spawns.filter { $0.app == name && $0.slot == k }
    }

    func noted(_ fragment: String) -> Bool { notes.contains { $0.text.contains(fragment) } }

    // MARK: Invariants

    func checkInvariants(_ loc: SourceLocation) {
        #expect(armed == sup.nextDeadline(), "armed timer \(String(describing: armed)) != next deadline \(String(describing: sup.nextDeadline()))", sourceLocation: loc)
        for problem in sup.invariantViolations() { Issue.record(Comment(rawValue: problem), sourceLocation: loc) }
        #expect(exits <= 1, "exit emitted \(exits) times", sourceLocation: loc)
        if exits > 0 { #expect(sup.workers.isEmpty, "exit emitted with workers left", sourceLocation: loc) }
        // A worker the core no longer knows was announced gone, once; a known one was not.
        for id in sup.workers.keys { #expect(gone[id] == nil, "\(id) announced gone but still a worker", sourceLocation: loc) }
        checkGone(sourceLocation: loc)
        for (name, floor) in readyFloor {
            #expect(readyCount(name) >= floor, "\(name): \(readyCount(name)) ready workers, fewer than \(floor)", sourceLocation: loc)
        }
    }

    /// Every spawned worker the core has forgotten got exactly one `.workerGone`.
    func checkGone(sourceLocation: SourceLocation = #_sourceLocation) {
        for id in spawned where sup.workers[id] == nil {
            #expect(gone[id] == 1, "\(id) forgotten with \(gone[id] ?? 0) workerGone", sourceLocation: sourceLocation)
        }
    }
}
