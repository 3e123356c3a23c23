/// The deadlines of the probes the shell has out, and the one instant its
/// timer must wake at: the earliest of them, none while no probe is out. A
/// probe that ends leaves the set, so the timer moves to the next deadline (or
/// goes quiet) instead of a periodic check finding nothing to do.
public struct ProbeDeadlines: Sendable {
    private var heap = IndexedHeap<WorkerID, DeadlineOrder>()
    private var seq: UInt64 = 0

    public init() {}

    public var count: Int { heap.count }
    public var isEmpty: Bool { heap.isEmpty }

    /// When the timer must fire next; nil: no wake-up (no probe out).
    public var next: Instant? { heap.min?.priority.time }

    public func deadline(of id: WorkerID) -> Instant? { heap.priority(of: id)?.time }

    /// A probe of `id` is out until `deadline` (a second one for `id` replaces the first).
    public mutating func add(_ id: WorkerID, at deadline: Instant) {
        seq += 1
        heap.set(id, DeadlineOrder(time: deadline, seq: seq))
    }

    /// The probe of `id` ended (answered or dropped).
    public mutating func remove(_ id: WorkerID) { heap.remove(id) }

    /// The probes whose deadline is at or before `now`, earliest first (equal
    /// deadlines in the order they were added); they leave the set.
    public mutating func due(at now: Instant) -> [WorkerID] {
        var ids: [WorkerID] = []
        while let top = heap.min, top.priority.time <= now {
            ids.append(top.key)
            heap.remove(top.key)
        }
        return ids
    }

    public mutating func removeAll() { heap = IndexedHeap() }
}
