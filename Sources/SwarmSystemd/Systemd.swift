import CSwarmSpawn
import CSystemd
import Glibc
import SwarmSystem

/// swarmd's own side of the systemd protocols, through libsystemd.
public enum Systemd {
    /// sd_notify's datagram (the same code as `LinuxKernel.notify`); a no-op (false) without NOTIFY_SOCKET.
    @discardableResult
    public static func notify(_ state: String) -> Bool {
        swarm_notify(state) > 0
    }

    public static var underSystemd: Bool { getenv("NOTIFY_SOCKET") != nil || getenv("INVOCATION_ID") != nil }

    /// Sockets passed by the service manager, by name; the environment
    /// variables are consumed so workers never see them.
    public static func listenFDs() -> [(name: String, fd: Int32)] {
        var names: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?
        let n = sd_listen_fds_with_names(1, &names)
        guard n > 0 else { return [] }
        var result: [(String, Int32)] = []
        for i in 0..<Int(n) {
            let name = names?[i].map { String(cString: $0) } ?? "unknown"
            result.append((name, SD_LISTEN_FDS_START + Int32(i)))
            free(names?[i])
        }
        free(names)
        for (_, fd) in result { try? Posix.setCloseOnExec(fd) }
        return result
    }

    /// Whether a journald accepts native messages here.
    public static var journalAvailable: Bool {
        access("/run/systemd/journal/socket", W_OK) == 0
    }
}
