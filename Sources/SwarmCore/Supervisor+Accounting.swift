/// Per-app counters kept up to date slot by slot, so that waiters, reloads,
/// steering, spec clean-up and health read a number instead of walking every
/// slot after every event (issue 18). They are derived state: never persisted,
/// rebuilt on restore, and checked against a full recount by `invariantViolations`.

/// What one slot contributes to its app's counters.
struct SlotCounts: Hashable, Sendable {
    var present = false
    var removing = false
    var generation = 0
    var crashLoop = false
    var incoming = false
    /// Generation of the current worker, if any.
    var currentGeneration: Int?
    var currentReady = false
    var lastStartFailure: UInt64 = 0
}

struct AppStats: Hashable, Sendable {
    var slots = 0
    var removing = 0
    var crashLoops = 0
    var incoming = 0
    /// Slots whose current worker is ready (removing ones too: what `status` counts).
    var ready = 0
    /// Not removing, by index: steering's fallback set.
    var live = SortedInts()
    /// Not removing and ready, by index: where steering sends new connections.
    var liveReady = SortedInts()
    var readyByGeneration: [Int: Int] = [:]
    /// Current workers not (yet) ready, by generation: a reload's in-flight count.
    var startingByGeneration: [Int: Int] = [:]
    var slotsByGeneration: [Int: Int] = [:]
    var workers = 0
    var workersByGeneration: [Int: Int] = [:]
    /// Slots without a ready current worker, keyed by the sequence number of
    /// their last start failure: a waiter is settled when the least is newer than its request.
    var notReady = IndexedHeap<Int, UInt64>()
    /// The last `.steer` sent (nil: none yet, or the shell must be told again).
    var lastSteer: [Int]?

    static func == (a: AppStats, b: AppStats) -> Bool {
        a.slots == b.slots && a.removing == b.removing && a.crashLoops == b.crashLoops && a.incoming == b.incoming
            && a.ready == b.ready && a.live == b.live && a.liveReady == b.liveReady
            && a.readyByGeneration.filter { $0.value != 0 } == b.readyByGeneration.filter { $0.value != 0 }
            && a.startingByGeneration.filter { $0.value != 0 } == b.startingByGeneration.filter { $0.value != 0 }
            && a.slotsByGeneration.filter { $0.value != 0 } == b.slotsByGeneration.filter { $0.value != 0 }
            && a.workers == b.workers
            && a.workersByGeneration.filter { $0.value != 0 } == b.workersByGeneration.filter { $0.value != 0 }
            && a.notReady.count == b.notReady.count
    }

    func hash(into h: inout Hasher) { h.combine(slots); h.combine(ready) }

    mutating func add(_ c: SlotCounts, index: Int, sign: Int) {
        guard c.present else { return }
        slots += sign
        if c.removing { removing += sign }
        if c.crashLoop { crashLoops += sign }
        if c.incoming { incoming += sign }
        slotsByGeneration[c.generation, default: 0] += sign
        if let g = c.currentGeneration {
            if c.currentReady {
                ready += sign
                readyByGeneration[g, default: 0] += sign
            } else {
                startingByGeneration[g, default: 0] += sign
            }
        }
    }
}

extension Supervisor {
    /// What slot `slot` of `name` contributes now.
    func counts(of slot: Slot) -> SlotCounts {
        var c = SlotCounts()
        c.present = true
        c.removing = slot.removing
        c.generation = slot.generation
        c.crashLoop = slot.backoff.inCrashLoop
        c.incoming = slot.incoming != nil
        if let id = slot.current, let w = workers[id] {
            c.currentGeneration = w.generation
            c.currentReady = w.isReady && !isUnsteered(w)
        }
        c.lastStartFailure = slot.lastStartFailure ?? 0
        return c
    }

    /// Brings the app's counters in line with slot `k` (call after any change to
    /// the slot or to one of its workers). One slot visited.
    mutating func account(_ name: String, _ k: Int) {
        visit()
        touchedApps.insert(name)
        guard let slot = apps[name]?.slots[safe: k] else { return }
        let new = counts(of: slot)
        let old = slot.counted
        dirtySlots.insert(SlotKey(app: name, index: k))
        guard new != old else { return }
        apps[name]?.slots[k].counted = new
        apply(name, index: k, old: old, new: new)
    }

    /// A slot is gone: take its contribution out.
    mutating func unaccount(_ name: String, slot: Slot) {
        visit()
        touchedApps.insert(name)
        apply(name, index: slot.index, old: slot.counted, new: SlotCounts())
        deadlines.remove(.slot(SlotKey(app: name, index: slot.index)))
    }

    private mutating func apply(_ name: String, index k: Int, old: SlotCounts, new: SlotCounts) {
        // In place: a copy of the counters out of the dictionary would copy their arrays on every change.
        if Supervisor.apply(&stats[name, default: AppStats()], index: k, old: old, new: new) { steerDirty.insert(name) }
    }

    /// Returns whether the steering set may have changed.
    private static func apply(_ st: inout AppStats, index k: Int, old: SlotCounts, new: SlotCounts) -> Bool {
        var steering = false
        st.add(old, index: k, sign: -1)
        st.add(new, index: k, sign: 1)
        let wasLive = old.present && !old.removing, isLive = new.present && !new.removing
        if wasLive != isLive {
            if isLive { st.live.insert(k) } else { st.live.remove(k) }
            steering = true
        }
        let wasSteered = wasLive && old.currentReady, isSteered = isLive && new.currentReady
        if wasSteered != isSteered {
            if isSteered { st.liveReady.insert(k) } else { st.liveReady.remove(k) }
            steering = true
        }
        if new.present && !new.currentReady {
            st.notReady.set(k, new.lastStartFailure)
        } else {
            st.notReady.remove(k)
        }
        return steering
    }

    mutating func countWorker(_ w: Worker, sign: Int) {
        stats[w.app, default: AppStats()].workers += sign
        stats[w.app, default: AppStats()].workersByGeneration[w.generation, default: 0] += sign
        touchedApps.insert(w.app)
    }

    /// Counting hook for the tests of issue 18: every slot or worker the core
    /// examines adds one.
    @inline(__always) mutating func visit() { visits &+= 1 }

    /// The counters recomputed from scratch, for `invariantViolations`.
    func recount(_ name: String) -> AppStats {
        var st = AppStats()
        guard let app = apps[name] else { return st }
        for slot in app.slots {
            let c = counts(of: slot)
            st.add(c, index: slot.index, sign: 1)
            if !c.removing { st.live.insert(slot.index) }
            if !c.removing && c.currentReady { st.liveReady.insert(slot.index) }
            if !c.currentReady { st.notReady.set(slot.index, c.lastStartFailure) }
        }
        for w in workers.values where w.app == name {
            st.workers += 1
            st.workersByGeneration[w.generation, default: 0] += 1
        }
        return st
    }
}

extension Array {
    subscript(safe i: Int) -> Element? { i >= 0 && i < count ? self[i] : nil }
}
