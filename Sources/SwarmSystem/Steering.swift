import CSwarmSpawn
import Glibc

/// A classic BPF program on a SO_REUSEPORT group choosing the socket for
/// each new connection: index = (client port / 2 XOR client address) mod n.
/// Sockets sit in the group in the order they started listening, which is
/// slot order, so n live slots are indices 0..n-1 and a slot being removed
/// (always the highest) gets no new connection while it drains.
///
/// The client port is halved because Linux hands out ephemeral ports to
/// connect() in steps of two: consecutive connections from one client then
/// land on consecutive sockets.
public enum Steering {
    /// nil on success, else the error.
    public static func attach(to fd: Int32, liveSockets n: Int, ipv6: Bool) -> SystemError? {
        guard n >= 1 else { return SystemError("setsockopt(SO_ATTACH_REUSEPORT_CBPF)", errno: EINVAL) }
        let r = swarm_attach_reuseport_steering(fd, UInt32(n), ipv6 ? 1 : 0)
        return r < 0 ? SystemError("setsockopt(SO_ATTACH_REUSEPORT_CBPF)", errno: errno) : nil
    }
}

/// Round-robin over a reuseport group's live slots with an eBPF program: a
/// burst of connections spreads evenly whatever the client ports are.
/// Needs CAP_BPF (root); without it swarmd uses `Steering` (hash based).
public final class RoundRobinSteering {
    public let program: Int32
    public let stateMap: Int32
    public let socketMap: Int32
    /// New connections per socket-array index (`[recycle] max_connections`, metrics); -1: none.
    public let countMap: Int32

    /// The socket array's size, when this process made it.
    let capacity: Int?

    /// Maps and program handed over by a re-executed swarmd (one before the counters passes no count map).
    public init(adopting program: Int32, stateMap: Int32, socketMap: Int32, countMap: Int32 = -1) {
        self.program = program
        self.stateMap = stateMap
        self.socketMap = socketMap
        self.countMap = countMap
        capacity = nil
    }

    public init(maxSlots: Int) throws {
        var state: Int32 = -1, socks: Int32 = -1, counts: Int32 = -1
        var log = [CChar](repeating: 0, count: 4096)
        let fd = swarm_rr_create_counted(UInt32(maxSlots), &state, &socks, &counts, &log, UInt32(log.count))
        guard fd >= 0 else {
            let e = errno
            let text = String(cString: log)
            throw SystemError("bpf(BPF_PROG_LOAD)", errno: e, subject: text.isEmpty ? nil : "verifier: \(text.suffix(300))")
        }
        program = fd
        capacity = maxSlots
        stateMap = state
        socketMap = socks
        countMap = counts
    }

    deinit {
        Posix.close(program)
        Posix.close(stateMap)
        Posix.close(socketMap)
        if countMap >= 0 { Posix.close(countMap) }
    }

    /// The counters as last read, and the program's state then.
    private var lastRead: (counts: [UInt64], counter: UInt64, target: UInt32, quota: Int64)?

    /// Whether `connectionCounts(upTo: n)` would return what it returned last
    /// (the program counted nothing since): one state lookup, so that a caller
    /// that keeps the last counts skips comparing n of them at every change.
    /// Sound only while that caller is the counters' one reader (HealthChecker):
    /// another reader's `connectionCounts` would move "last" past its counts.
    public func countsUnchangedSinceLastRead(upTo n: Int) throws -> Bool {
        guard countMap >= 0, let last = lastRead, last.counts.count >= n else { return false }
        var state = swarm_rr_state()
        try Posix.check("bpf(BPF_MAP_LOOKUP_ELEM)", subject: "steering state") { swarm_rr_read_state(stateMap, &state) }
        return last.counter == state.counter && last.target == state.target && last.quota == state.quota
    }

    /// The counters of indices 0..<n (each counts from the program's creation), or nil without a count map.
    ///
    /// swarmd reads them at every change of an app's steering (thousands while
    /// a big app starts), so the counters are read again only when the program
    /// may have counted since: every counted connection moves the state's
    /// round-robin counter or its hand-over quota, one lookup instead of n.
    public func connectionCounts(upTo n: Int) throws -> [UInt64]? {
        guard countMap >= 0 else { return nil }
        guard n > 0 else { return [] }
        var state = swarm_rr_state()
        try Posix.check("bpf(BPF_MAP_LOOKUP_ELEM)", subject: "steering state") { swarm_rr_read_state(stateMap, &state) }
        if let last = lastRead, last.counts.count >= n, last.counter == state.counter, last.target == state.target, last.quota == state.quota {
            return last.counts.count == n ? last.counts : Array(last.counts[..<n])
        }
        // Read ahead (indices past the map's end read as 0): an app that grows one
        // ready slot at a time asks for one more index at every change.
        let read = max(n, min(max(2 * (lastRead?.counts.count ?? 0), 64), capacity ?? n))
        var out = [UInt64](repeating: 0, count: read)
        try Posix.check("bpf(BPF_MAP_LOOKUP_BATCH)", subject: "connection counters") {
            out.withUnsafeMutableBufferPointer { swarm_rr_read_counts(countMap, UInt32(read), $0.baseAddress) }
        }
        lastRead = (out, state.counter, state.target, state.quota)
        return read == n ? out : Array(out[..<n])
    }

    /// Attaching to one socket applies to its whole group.
    public func attach(to fd: Int32) throws {
        try Posix.check("setsockopt(SO_ATTACH_REUSEPORT_EBPF)") { swarm_rr_attach(program, fd) }
    }

    /// Steers new connections only to `sockets`, round-robin: the sockets of
    /// the slots whose worker is ready. A slot whose worker died or is
    /// starting keeps its queue but gets nothing new until it is ready again.
    public func steer(to sockets: [Int32], previouslyUsed: Int) throws {
        // A socket may sit at one index only: empty the array, then refill it.
        for i in 0..<max(previouslyUsed, sockets.count) {
            try Posix.check("bpf(BPF_MAP_DELETE_ELEM)") { swarm_rr_clear_socket(socketMap, UInt32(i)) }
        }
        for (i, fd) in sockets.enumerated() {
            try Posix.check("bpf(BPF_MAP_UPDATE_ELEM)", subject: "index \(i)") { swarm_rr_set_socket(socketMap, UInt32(i), fd) }
        }
        try setLiveSlots(sockets.count)
    }

    /// The next `quota` new connections go to the socket at `index` of the
    /// array `steer(to:)` last set, then round-robin resumes. Steering anew
    /// cancels a hand-over still pending.
    public func handOver(toIndex index: Int, quota: Int) throws {
        try Posix.check("bpf(BPF_MAP_UPDATE_ELEM)", subject: "hand-over") {
            swarm_rr_set_handover(stateMap, UInt32(index), UInt32(clamping: quota))
        }
    }

    public func setLiveSlots(_ n: Int) throws {
        try Posix.check("bpf(BPF_MAP_UPDATE_ELEM)") { swarm_rr_set_count(stateMap, UInt32(n)) }
    }
}
