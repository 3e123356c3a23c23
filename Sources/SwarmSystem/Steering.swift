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
