import Glibc
import SwarmCore
import SwarmSystem

/// The listening sockets of one app, owned by swarmd for the app's whole
/// life: workers come and go, the sockets (and their backlogs) stay.
final class AppSockets {
    final class Entry {
        let spec: SocketSpec
        /// The shared socket, or slot 0's of a reuseport group (kept open so the
        /// port stays bound even with no slot).
        var shared: Int32
        /// Reuseport: one socket per slot above 0.
        var perSlot: [Int: Int32] = [:]
        /// Passed in by systemd or a previous swarmd: never closed by us on delete.
        let adopted: Bool
        let port: UInt16?
        /// eBPF round-robin over the slots' sockets (root only); nil: hash steering.
        var roundRobin: ReuseportSteering?
        /// The round-robin array as last written: index → slot. Kept compact
        /// (0..<count) because the program picks among the first `count`.
        var steeredSlots: [Int] = []
        /// slot → its index in `steeredSlots`.
        var steeredIndex: [Int: Int] = [:]
        /// Hash steering: the live count the program was attached with.
        var hashedOver: Int?
        var steeringProblem: String?

        init(spec: SocketSpec, shared: Int32, adopted: Bool) {
            self.spec = spec
            self.shared = shared
            self.adopted = adopted
            self.port = spec.listen.isTCP ? Sockets.localPort(shared) : nil
        }

        var reuseport: Bool { !adopted && spec.effectiveBalance == .reuseport }

        /// The socket slot `k` serves on, if bound.
        func fd(ofSlot k: Int) -> Int32? { k == 0 ? shared : perSlot[k] }
    }

    private(set) var entries: [Entry] = []
    static let maxSlots = 4096
    /// The slots last steered to (ascending), when every entry took them all;
    /// nil: not known, and the next steering compares every entry with the set.
    var lastSteer: [Int]?

    /// Binds every socket of `spec`, reusing `adoptable` fds (systemd's, or
    /// those of an app being replaced) that match by name and address.
    init(spec: AppSpec, kernel: Kernel, adoptable: (SocketSpec) -> (fd: Int32, adopted: Bool)?) throws {
        do {
            for s in spec.sockets {
                let entry: Entry
                if let (fd, adopted) = adoptable(s) {
                    entry = Entry(spec: s, shared: fd, adopted: adopted)
                } else {
                    let fd: Int32
                    switch s.listen {
                    case let .tcp(host, port):
                        if ListenerProbe.isTaken(host: host, port: port) {
                            throw SocketTableError.held(socket: s.name, address: s.listen.description, port: port,
                                                        by: ListenerProbe.holder(port: port))
                        }
                        fd = try Sockets.listenTCP(host: host, port: port, backlog: s.backlog, reusePort: s.effectiveBalance == .reuseport)
                    case let .unix(path):
                        fd = try Sockets.listenUnix(path: path, backlog: s.backlog, mode: s.mode.map { mode_t($0) } ?? 0o666)
                    }
                    entry = Entry(spec: s, shared: fd, adopted: false)
                }
                // A socket taken over from a replaced app gets a steering program of its
                // own: attaching replaces the old one, whose map named closed sockets.
                if entry.reuseport {
                    do {
                        let rr = try kernel.makeSteering(maxSlots: AppSockets.maxSlots)
                        try rr.setSocket(entry.shared, at: 0)
                        try rr.setLiveCount(1)
                        try rr.attach(to: entry.shared)
                        entry.roundRobin = rr
                        entry.steeredSlots = [0]
                        entry.steeredIndex = [0: 0]
                    } catch {
                        entry.steeringProblem = "\(error)"
                    }
                }
                entries.append(entry)
            }
        } catch {
            close()
            throw error
        }
    }

    /// Sockets handed over by a re-executed swarmd.
    init(restoring entries: [Entry]) {
        self.entries = entries
    }

    /// Binds slot `slot`'s reuseport sockets if it has none yet; returns the
    /// fds a worker of that slot receives, in [[socket]] order.
    func bindSlot(_ slot: Int) throws -> [Int32] {
        try entries.map { e in
            guard e.reuseport, slot != 0 else { return e.shared }
            if let fd = e.perSlot[slot] { return fd }
            guard case let .tcp(host, port) = e.spec.listen else { return e.shared }
            let fd = try Sockets.listenTCP(host: host, port: port, backlog: e.spec.backlog, reusePort: true)
            e.perSlot[slot] = fd
            return fd
        }
    }

    /// Scale-down: the slot's socket leaves the reuseport group. Connections
    /// still queued on it are lost with it, so the core releases a slot only
    /// once its workers (which drain the queue before exiting) are gone.
    func release(slot: Int) {
        for e in entries {
            if let fd = e.perSlot.removeValue(forKey: slot) { Posix.close(fd) }
        }
    }

    /// Takes the shared fd of a matching socket out, for an app replacing this one.
    func take(matching s: SocketSpec) -> Int32? {
        guard let i = entries.firstIndex(where: { $0.spec.listen == s.listen && $0.spec.effectiveBalance == s.effectiveBalance }) else { return nil }
        let e = entries.remove(at: i)
        // The old program stays attached (and its map alive) until the new one replaces
        // it, and a socket may sit in one map only: take it out of the old map first.
        if let rr = e.roundRobin {
            for index in e.steeredSlots.indices { try? rr.clearSocket(at: index) }
        }
        for fd in e.perSlot.values { Posix.close(fd) }
        return e.shared
    }

    func close() {
        for e in entries {
            for fd in e.perSlot.values { Posix.close(fd) }
            e.perSlot = [:]
            e.roundRobin = nil
            if !e.adopted {
                Posix.close(e.shared)
                if case let .unix(path) = e.spec.listen { _ = try? FileSystem.removeIfPresent(path) }
            }
        }
        entries = []
    }
}

/// Every app's listening sockets, and the steering of new connections over
/// each reuseport group's per-slot sockets.
final class SocketTable {
    let kernel: Kernel
    private(set) var apps: [String: AppSockets] = [:]
    /// Sockets systemd passed (socket activation), adopted by name when an app binds.
    var passedBySystemd: [(name: String, fd: Int32)] = []
    /// What to log and how; the table itself decides nothing.
    var report: (NoteLevel, String) -> Void = { _, _ in }

    init(kernel: Kernel) { self.kernel = kernel }

    subscript(app: String) -> AppSockets? { apps[app] }

    /// Binds `spec`'s sockets without installing them (a failure binds nothing);
    /// with `replacing`, the running app's matching sockets are taken over.
    func bind(_ spec: AppSpec, replacing: Bool = false) -> Result<AppSockets, Error> {
        let old = replacing ? apps[spec.name] : nil
        // Reuseport would let a second socket of ours join the group and take
        // a share (or all) of another app's traffic: one address, one app.
        for s in spec.sockets {
            for (name, other) in apps where name != spec.name {
                if let clash = other.entries.first(where: { $0.spec.listen.overlaps(s.listen) }) {
                    return .failure(SocketTableError.addressInUse(socket: s.name, address: s.listen.description,
                                                                  owner: "app '\(name)' (socket '\(clash.spec.name)', \(clash.spec.listen))"))
                }
            }
        }
        do {
            let sockets = try AppSockets(spec: spec, kernel: kernel) { s in
                if let fd = old?.take(matching: s) { return (fd, false) }
                if let i = self.passedBySystemd.firstIndex(where: { $0.name == s.name }) {
                    let fd = self.passedBySystemd.remove(at: i).fd
                    self.report(.info, "\(spec.name): using socket '\(s.name)' passed by systemd (fd \(fd))")
                    return (fd, true)
                }
                return nil
            }
            for e in sockets.entries {
                if let problem = e.steeringProblem {
                    report(.notice, "\(spec.name)/\(e.spec.name): no round-robin steering (\(problem)); the kernel hashes connections over the slots")
                } else if e.roundRobin != nil {
                    report(.debug, "\(spec.name)/\(e.spec.name): round-robin steering over per-slot sockets")
                }
            }
            return .success(sockets)
        } catch {
            return .failure(error)
        }
    }

    /// Makes `sockets` the app's, closing what it had.
    func install(_ sockets: AppSockets, for app: String) {
        if let old = apps[app], old !== sockets { old.close() }
        apps[app] = sockets
    }

    func remove(_ app: String) {
        apps.removeValue(forKey: app)?.close()
    }

    func closeAll() {
        for s in apps.values { s.close() }
        apps = [:]
    }

    /// New connections to `app`'s reuseport sockets go to `slots` only.
    /// Round-robin: one map write per slot that joins or leaves (a leaving
    /// slot's place is taken by the last entry, so the array stays compact).
    /// Hash steering cannot choose slots: it spreads over the first n sockets.
    /// `slots` ascending, as the core gives them. Against the set steered last
    /// time only what changed is touched (one slot per event while an app of
    /// thousands starts or restarts), so a change costs a walk of two sorted
    /// arrays, not a hash of every slot.
    func steer(_ app: String, to slots: [Int]) {
        guard let sockets = apps[app] else { return }
        let change: (joining: [Int], leaving: [Int])?
        if let last = sockets.lastSteer {
            let d = sortedDifference(from: last, to: slots)
            guard !d.joining.isEmpty || !d.leaving.isEmpty else { return }
            change = d
        } else {
            change = nil
        }
        sockets.lastSteer = slots
        // A slot steered to before its first worker was spawned gets its socket now.
        for slot in change?.joining ?? slots where sockets.entries.contains(where: { $0.reuseport && $0.fd(ofSlot: slot) == nil }) {
            do { _ = try sockets.bindSlot(slot) } catch {
                sockets.lastSteer = nil
                report(.warning, "Failed to bind \(app)[\(slot)]'s socket: \(error), ignoring")
            }
        }
        for entry in sockets.entries where entry.reuseport {
            if let rr = entry.roundRobin {
                do {
                    if let change {
                        try update(entry, rr, leaving: change.leaving, joining: change.joining.filter { entry.fd(ofSlot: $0) != nil })
                    } else {
                        let wanted = Set(slots.filter { entry.fd(ofSlot: $0) != nil })
                        try update(entry, rr, leaving: entry.steeredSlots.filter { !wanted.contains($0) },
                                   joining: slots.filter { wanted.contains($0) && entry.steeredIndex[$0] == nil })
                    }
                } catch {
                    entry.steeredSlots = []
                    entry.steeredIndex = [:]
                    sockets.lastSteer = nil
                    report(.warning, "Failed to steer \(app)/\(entry.spec.name) over slots \(slots): \(error), ignoring")
                }
            } else {
                // Sockets sit in the group in slot order: the live slots are the first n.
                let live = max(1, (slots.last ?? 0) + 1)
                guard entry.hashedOver != live else { continue }
                do {
                    try kernel.attachHashSteering(to: entry.shared, liveSockets: live, ipv6: entry.spec.listen.description.hasPrefix("["))
                    entry.hashedOver = live
                } catch {
                    report(.warning, "Failed to steer \(app)/\(entry.spec.name) over \(live) sockets: \(error), ignoring")
                }
            }
        }
    }

    private func update(_ entry: AppSockets.Entry, _ rr: ReuseportSteering, leaving: [Int], joining: [Int]) throws {
        let before = entry.steeredSlots.count
        // Leaving slots first: a socket may sit at one index only.
        for slot in leaving {
            guard let i = entry.steeredIndex.removeValue(forKey: slot) else { continue }
            let last = entry.steeredSlots.count - 1
            try rr.clearSocket(at: last)
            if i != last {
                let moved = entry.steeredSlots[last]
                try rr.setSocket(entry.fd(ofSlot: moved)!, at: i)
                entry.steeredSlots[i] = moved
                entry.steeredIndex[moved] = i
            }
            entry.steeredSlots.removeLast()
        }
        for slot in joining where entry.steeredIndex[slot] == nil {
            let i = entry.steeredSlots.count
            try rr.setSocket(entry.fd(ofSlot: slot)!, at: i)
            entry.steeredSlots.append(slot)
            entry.steeredIndex[slot] = i
        }
        if entry.steeredSlots.count != before { try rr.setLiveCount(entry.steeredSlots.count) }
    }

    /// A reload is about to stop `pid`, slot `slot`'s old worker: its keep-alive
    /// clients will reconnect, and round-robin would spread them over every slot,
    /// piling them onto the other (old) workers. Instead the steering program sends
    /// the next as-many-as-it-holds connections to the slot's socket, where its
    /// replacement waits, and resumes round-robin after that.
    /// The connections steered to the slot for a worker holding `held`. The
    /// old worker shares the slot's socket with its replacement and, while it
    /// stops, may still accept a steered reconnect (its last poll before the
    /// stop took hold) and close it after one answer: that client connects
    /// twice, and with a quota of exactly `held` the last client of the old
    /// worker would be spread round-robin (measured: 1 in 4 reloads of 2×10
    /// keep-alive clients ended 9/11). One in eight more, at least one, covers
    /// it; a unit left over sends one new connection to the replacement.
    static func handOverQuota(held: Int) -> Int { held + max(1, held / 8) }

    func handOver(_ app: String, slot: Int, from pid: Int32) {
        guard let sockets = apps[app] else { return }
        for entry in sockets.entries where entry.reuseport {
            guard let rr = entry.roundRobin, let port = entry.port, let index = entry.steeredIndex[slot],
                  let listener = entry.fd(ofSlot: slot) else { continue }
            do {
                let held = try kernel.establishedConnections(pid: pid, localPort: port, listener: listener)
                guard held > 0 else { continue }
                let quota = SocketTable.handOverQuota(held: held)
                try rr.handOver(toIndex: index, quota: quota)
                report(.debug, "\(app)[\(slot)]: the next \(quota) connections to \(entry.spec.name) go to the replacement of pid \(pid), which holds \(held)")
            } catch {
                report(.warning, "Failed to hand \(app)[\(slot)]'s connections over to its new worker: \(error), ignoring")
            }
        }
    }
}

enum SocketTableError: Error, CustomStringConvertible {
    case addressInUse(socket: String, address: String, owner: String)
    case held(socket: String, address: String, port: UInt16, by: ListenerProbe.Holder)

    var description: String {
        switch self {
        case let .addressInUse(socket, address, owner):
            return "socket '\(socket)': \(address) is already served by \(owner)"
        case let .held(socket, address, _, .listener(who)):
            return "socket '\(socket)': \(address) is already served by \(who ?? "another process (not visible to swarmd)")"
        case let .held(socket, address, port, .connection(ephemeral: range?)):
            return "socket '\(socket)': \(address) is in use by a connection's local end, not by a listener: port \(port) is inside "
                + "this host's ephemeral range \(range.lowerBound)-\(range.upperBound) (net.ipv4.ip_local_port_range), which the kernel "
                + "hands to outgoing connections; choose a port below \(range.lowerBound) (or above \(range.upperBound))"
        case let .held(socket, address, _, .connection(ephemeral: nil)):
            return "socket '\(socket)': \(address) is in use by a connection's local end, not by a listener; try again when it closes"
        case let .held(socket, address, _, .unknown):
            return "socket '\(socket)': \(address) is in use by a socket that neither listens nor connects (bound by another process)"
        }
    }
}

extension ListenAddress {
    /// Whether two listening addresses would share connections: the same
    /// port on the same host or a wildcard, or the same Unix path.
    func overlaps(_ other: ListenAddress) -> Bool {
        switch (self, other) {
        case let (.tcp(h1, p1), .tcp(h2, p2)):
            guard p1 == p2, p1 != 0 else { return false }
            let wild: Set<String> = ["0.0.0.0", "::"]
            return h1 == h2 || wild.contains(h1) || wild.contains(h2)
        case let (.unix(a), .unix(b)):
            return a == b
        default:
            return false
        }
    }
}

/// What changed from one ascending list of slots to another: one walk of both.
func sortedDifference(from old: [Int], to new: [Int]) -> (joining: [Int], leaving: [Int]) {
    var joining: [Int] = [], leaving: [Int] = []
    var i = 0, j = 0
    while i < old.count || j < new.count {
        if j == new.count || (i < old.count && old[i] < new[j]) {
            leaving.append(old[i]); i += 1
        } else if i == old.count || new[j] < old[i] {
            joining.append(new[j]); j += 1
        } else {
            i += 1; j += 1
        }
    }
    return (joining, leaving)
}
