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

    /// While set, an app must keep at least this many ready workers (checked after every event).
    var readyFloor: [String: Int] = [:]

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
            let out = sup.handle(next, now: now)
            batch += out
            actions += out
            perform(out, queue: &queue)
            checkInvariants(sourceLocation)
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
                let (id, spec, slot, generation) = (r.worker, r.spec, r.slot, r.generation)
                spawns.append((id, spec.name, slot, generation, now))
                if failingSpawns > 0 {
                    failingSpawns -= 1
                    queue.append(.spawnFailed(id, reason: "Failed to execute \(spec.executable): No such file or directory"))
                } else if deferSpawns {
                    pendingSpawns.append(id)
                } else {
                    let pid = nextPid
                    nextPid += 1
                    queue.append(.spawned(id, pid: pid))
                }
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
            case .steer, .workerGone, .restorePriority:
                break
            case .exit:
                exits += 1
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
        #expect(Set(sup.appOrder) == Set(sup.apps.keys) && sup.appOrder.count == sup.apps.count, "appOrder \(sup.appOrder) vs apps", sourceLocation: loc)

        var references: [WorkerID: Int] = [:]
        for (name, app) in sup.apps {
            #expect(app.name == name, sourceLocation: loc)
            #expect(app.specs[app.generation] != nil, "\(name): no spec for its generation \(app.generation)", sourceLocation: loc)
            for (i, slot) in app.slots.enumerated() {
                let where_ = "\(name)[\(i)]"
                #expect(slot.index == i, "\(where_) has index \(slot.index)", sourceLocation: loc)
                #expect(app.specs[slot.generation] != nil, "\(where_): no spec for slot generation \(slot.generation)", sourceLocation: loc)
                if slot.current != nil { #expect(slot.current != slot.incoming, "\(where_): same worker current and incoming", sourceLocation: loc) }
                #expect(Set(slot.retiring).count == slot.retiring.count, "\(where_): duplicate retiring", sourceLocation: loc)
                if app.reload == nil { #expect(slot.incoming == nil, "\(where_): incoming worker with no reload", sourceLocation: loc) }
                for id in slot.liveWorkers {
                    references[id, default: 0] += 1
                    guard let w = sup.workers[id] else {
                        Issue.record("\(where_) references \(id), which is not a worker", sourceLocation: loc)
                        continue
                    }
                    #expect(w.app == name && w.slot == i, "\(id) is \(w.app)[\(w.slot)] but referenced by \(where_)", sourceLocation: loc)
                    #expect(app.specs[w.generation] != nil, "\(id): spec of generation \(w.generation) dropped while it lives", sourceLocation: loc)
                }
                if let c = slot.current, let w = sup.workers[c] {
                    #expect(!w.isRetiring, "\(where_): current \(c) is \(w.phase)", sourceLocation: loc)
                    #expect(w.generation == slot.generation, "\(where_): current runs generation \(w.generation), slot says \(slot.generation)", sourceLocation: loc)
                }
                if let inc = slot.incoming, let w = sup.workers[inc] {
                    // A ready incoming worker waits out [reload] min_ready, and no longer than that.
                    let waiting = w.phase == .ready && w.readyAt.map { now < $0 + (sup.spec(of: w)?.reload.minReady ?? .zero) } == true
                    #expect(w.phase == .spawning || w.phase == .starting || waiting, "\(where_): incoming \(inc) is \(w.phase)", sourceLocation: loc)
                    #expect(app.reload.map { w.generation == $0.to } ?? false, "\(where_): incoming of generation \(w.generation)", sourceLocation: loc)
                }
                for id in slot.retiring {
                    if let w = sup.workers[id] { #expect(w.isRetiring, "\(where_): retiring \(id) is \(w.phase)", sourceLocation: loc) }
                }
            }
            if let r = app.reload {
                let flying = app.slots.filter { slot in
                    if slot.incoming != nil { return true }
                    if let c = slot.current, let w = sup.workers[c] { return w.generation == r.to && w.phase != .ready }
                    return false
                }.count
                #expect(flying <= r.surge, "\(name): \(flying) new workers starting at once, surge \(r.surge)", sourceLocation: loc)
                #expect(app.generation == r.from, sourceLocation: loc)
            }
        }
        for (id, w) in sup.workers {
            #expect(references[id] == 1, "\(id) (\(w.app)[\(w.slot)] \(w.phase)) is referenced by \(references[id] ?? 0) slot fields", sourceLocation: loc)
            if let pid = w.pid { #expect(sup.byPid[pid] == id, "pid \(pid) of \(id) not indexed", sourceLocation: loc) }
        }
        for (pid, id) in sup.byPid {
            #expect(sup.workers[id]?.pid == pid, "pid index \(pid) → \(id) is stale", sourceLocation: loc)
        }
        #expect(exits <= 1, "exit emitted \(exits) times", sourceLocation: loc)
        if exits > 0 { #expect(sup.workers.isEmpty, "exit emitted with workers left", sourceLocation: loc) }
        for (name, floor) in readyFloor {
            #expect(readyCount(name) >= floor, "\(name): \(readyCount(name)) ready workers, fewer than \(floor)", sourceLocation: loc)
        }
    }
}

/// Interim: reload requests for specs of running apps of the same name.
func reloads(_ specs: [AppSpec]) -> [ReloadRequest] { specs.map { ReloadRequest(app: $0.name, spec: $0) } }
