import CSwarmSpawn
import Glibc

/// A private epoll set, level-triggered: a part that watches many short-lived
/// fds (the health probes' sockets) registers them here and puts only this
/// set's fd in the main loop, so every fd that is ready in one turn is handled
/// in one dispatch, and a closed fd leaves the set by itself (no
/// `EPOLL_CTL_DEL`, no loop source to create and free per fd).
public final class EpollSet {
    public let fd: Int32
    /// At most this many ready fds per `ready()` (the rest stay ready for the next).
    public static let batch = 128
    private var tokens = [UInt64](repeating: 0, count: EpollSet.batch)
    private var events = [UInt32](repeating: 0, count: EpollSet.batch)

    public init() throws {
        fd = try Posix.syscall("epoll_create1") { swarm_epoll_create() }
    }

    deinit { Posix.close(fd) }

    /// Watches `watched` for `events`; `token` comes back with each readiness.
    public func add(_ watched: Int32, events: UInt32, token: UInt64) throws {
        try Posix.syscall("epoll_ctl(ADD)", subject: "fd \(watched)") { swarm_epoll_watch(fd, 1, watched, events, token) }
    }

    public func modify(_ watched: Int32, events: UInt32, token: UInt64) throws {
        try Posix.syscall("epoll_ctl(MOD)", subject: "fd \(watched)") { swarm_epoll_watch(fd, 0, watched, events, token) }
    }

    /// The fds ready now (without waiting): (token, events).
    public func ready() throws -> [(token: UInt64, events: UInt32)] {
        let n = try tokens.withUnsafeMutableBufferPointer { t in
            try events.withUnsafeMutableBufferPointer { e in
                try Posix.syscall("epoll_wait", subject: "fd \(fd)") {
                    swarm_epoll_ready(fd, t.baseAddress, e.baseAddress, Int32(EpollSet.batch))
                }
            }
        }
        return (0..<Int(n)).map { (tokens[$0], events[$0]) }
    }
}
