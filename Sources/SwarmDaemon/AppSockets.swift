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
        /// Reuseport: one socket per slot.
        var perSlot: [Int: Int32] = [:]
        /// Passed in by systemd or a previous swarmd: never closed by us on delete.
        let adopted: Bool
        let port: UInt16?
        /// eBPF round-robin over the slots' sockets (root only); nil: hash steering.
        var roundRobin: RoundRobinSteering?
        /// The sockets round-robin steers to now (those of slots with a ready worker).
        var steeredTo: [Int32] = []
        var steeringProblem: String?

        init(spec: SocketSpec, shared: Int32, adopted: Bool) {
            self.spec = spec
            self.shared = shared
            self.adopted = adopted
            self.port = spec.listen.isTCP ? Sockets.localPort(shared) : nil
        }

        var reuseport: Bool { !adopted && spec.effectiveBalance == .reuseport }
    }

    private(set) var entries: [Entry] = []
    static let maxSlots = 4096

    /// Binds every socket of `spec`, reusing `adoptable` fds (systemd's, or
    /// those of an app being replaced) that match by name and address.
    init(spec: AppSpec, adoptable: (SocketSpec) -> (fd: Int32, adopted: Bool)?) throws {
        do {
            for s in spec.sockets {
                if let (fd, adopted) = adoptable(s) {
                    entries.append(Entry(spec: s, shared: fd, adopted: adopted))
                    continue
                }
                let fd: Int32
                switch s.listen {
                case let .tcp(host, port):
                    fd = try Sockets.listenTCP(host: host, port: port, backlog: s.backlog, reusePort: s.effectiveBalance == .reuseport)
                case let .unix(path):
                    fd = try Sockets.listenUnix(path: path, backlog: s.backlog, mode: s.mode.map { mode_t($0) } ?? 0o666)
                }
                let entry = Entry(spec: s, shared: fd, adopted: false)
                if entry.reuseport {
                    do {
                        let rr = try RoundRobinSteering(maxSlots: AppSockets.maxSlots)
                        try rr.steer(to: [fd], previouslyUsed: 0)
                        try rr.attach(to: fd)
                        entry.roundRobin = rr
                        entry.steeredTo = [fd]
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
    init(restoring entries: [(SocketSpec, Int32, [Int: Int32], Bool, RoundRobinSteering?)]) {
        for (spec, shared, perSlot, adopted, rr) in entries {
            let e = Entry(spec: spec, shared: shared, adopted: adopted)
            e.perSlot = perSlot
            e.roundRobin = rr
            self.entries.append(e)
        }
    }

    /// The fds a worker of `slot` receives, in [[socket]] order.
    func fds(forSlot slot: Int) throws -> [Int32] {
        try entries.map { e in
            guard e.reuseport else { return e.shared }
            if slot == 0 { return e.shared }
            if let fd = e.perSlot[slot] { return fd }
            guard case let .tcp(host, port) = e.spec.listen else { return e.shared }
            let fd = try Sockets.listenTCP(host: host, port: port, backlog: e.spec.backlog, reusePort: true)
            e.perSlot[slot] = fd
            return fd
        }
    }

    /// Scale-down: the slot's socket leaves the reuseport group. Connections
    /// still queued on it are lost with it, so the caller waits until the
    /// slot's workers (which drain the queue before exiting) are gone.
    func release(slot: Int) {
        for e in entries {
            if let fd = e.perSlot.removeValue(forKey: slot) { Posix.close(fd) }
        }
    }

    /// Takes the shared fd of a matching socket out, for an app replacing this one.
    func take(matching s: SocketSpec) -> Int32? {
        guard let i = entries.firstIndex(where: { $0.spec.listen == s.listen && $0.spec.effectiveBalance == s.effectiveBalance }) else { return nil }
        let e = entries.remove(at: i)
        for fd in e.perSlot.values { Posix.close(fd) }
        return e.shared
    }

    func close() {
        for e in entries {
            for fd in e.perSlot.values { Posix.close(fd) }
            e.perSlot = [:]
            if !e.adopted {
                Posix.close(e.shared)
                if case let .unix(path) = e.spec.listen { unlink(path) }
            }
        }
        entries = []
    }
}
