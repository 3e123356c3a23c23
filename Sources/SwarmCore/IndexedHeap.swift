/// A binary min-heap in which each key appears at most once and can be
/// re-prioritised or removed in O(log n): the core's deadline index (one
/// entry per worker or slot with a deadline) and each app's set of slots
/// without a ready worker.
struct IndexedHeap<Key: Hashable & Sendable, Priority: Comparable & Sendable>: Sendable {
    private var keys: [Key] = []
    private var priorities: [Priority] = []
    private var position: [Key: Int] = [:]

    var count: Int { keys.count }
    var isEmpty: Bool { keys.isEmpty }

    var min: (key: Key, priority: Priority)? {
        keys.isEmpty ? nil : (keys[0], priorities[0])
    }

    func priority(of key: Key) -> Priority? {
        position[key].map { priorities[$0] }
    }

    /// Inserts, moves or (with nil) removes `key`.
    mutating func set(_ key: Key, _ priority: Priority?) {
        guard let priority else { remove(key); return }
        if let i = position[key] {
            let old = priorities[i]
            if old == priority { return }
            priorities[i] = priority
            if priority < old { siftUp(i) } else { siftDown(i) }
        } else {
            keys.append(key)
            priorities.append(priority)
            position[key] = keys.count - 1
            siftUp(keys.count - 1)
        }
    }

    mutating func remove(_ key: Key) {
        guard let i = position.removeValue(forKey: key) else { return }
        let last = keys.count - 1
        if i != last {
            keys[i] = keys[last]
            priorities[i] = priorities[last]
            position[keys[i]] = i
        }
        keys.removeLast()
        priorities.removeLast()
        if i < keys.count {
            let moved = keys[i]
            siftUp(i)
            if let j = position[moved] { siftDown(j) }
        }
    }

    mutating func popMin() -> (key: Key, priority: Priority)? {
        guard let top = min else { return nil }
        remove(top.key)
        return top
    }

    private mutating func swapAt(_ a: Int, _ b: Int) {
        keys.swapAt(a, b)
        priorities.swapAt(a, b)
        position[keys[a]] = a
        position[keys[b]] = b
    }

    private mutating func siftUp(_ start: Int) {
        var i = start
        while i > 0 {
            let parent = (i - 1) / 2
            guard priorities[i] < priorities[parent] else { return }
            swapAt(i, parent)
            i = parent
        }
    }

    private mutating func siftDown(_ start: Int) {
        var i = start
        while true {
            let l = 2 * i + 1, r = l + 1
            var m = i
            if l < keys.count && priorities[l] < priorities[m] { m = l }
            if r < keys.count && priorities[r] < priorities[m] { m = r }
            guard m != i else { return }
            swapAt(i, m)
            i = m
        }
    }
}

/// A deadline's place in the index: earliest first, and among equal instants
/// the one set first (slots started together spawn in the order they were asked).
struct DeadlineOrder: Comparable, Sendable {
    var time: Instant
    var seq: UInt64
    static func < (a: DeadlineOrder, b: DeadlineOrder) -> Bool {
        a.time != b.time ? a.time < b.time : a.seq < b.seq
    }
}

struct SlotKey: Hashable, Sendable {
    var app: String
    var index: Int
}

enum DeadlineKey: Hashable, Sendable {
    case worker(WorkerID)
    case slot(SlotKey)
    /// An app's health timer (probes, queue samples, replacement retries, recycling).
    case app(String)
}

/// Integers kept sorted, for the steering sets: insert and remove by binary search.
struct SortedInts: Hashable, Sendable {
    private(set) var values: [Int] = []
    var isEmpty: Bool { values.isEmpty }
    var count: Int { values.count }

    private func lowerBound(_ x: Int) -> Int {
        var lo = 0, hi = values.count
        while lo < hi {
            let mid = (lo + hi) / 2
            if values[mid] < x { lo = mid + 1 } else { hi = mid }
        }
        return lo
    }

    mutating func insert(_ x: Int) {
        let i = lowerBound(x)
        if i < values.count && values[i] == x { return }
        values.insert(x, at: i)
    }

    mutating func remove(_ x: Int) {
        let i = lowerBound(x)
        if i < values.count && values[i] == x { values.remove(at: i) }
    }
}

/// First in, first out, with O(1) removal at the head.
struct FIFO<Element: Sendable>: Sendable {
    private var items: [Element] = []
    private var head = 0
    var isEmpty: Bool { head >= items.count }
    mutating func append(_ x: Element) { items.append(x) }
    mutating func popFirst() -> Element? {
        guard head < items.count else { return nil }
        let x = items[head]
        head += 1
        if head > 64 && head * 2 > items.count {
            items.removeFirst(head)
            head = 0
        }
        return x
    }
}
