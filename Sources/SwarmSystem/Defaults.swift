import Glibc

/// The defaults swarmd and swarmctl share, in one place: where the control
/// socket and the state live when no option or variable says.
public enum SwarmDefaults {
    public static let socketVariable = "SWARM_SOCKET"
    public static let stateDirectoryVariable = "SWARM_STATE_DIR"
    /// swarmctl: a uid (or user name) whose swarmd it may talk to besides root and its own.
    public static let trustUIDVariable = "SWARM_TRUST_UID"

    /// The built-in socket path: /run/swarm/swarmd.sock for root,
    /// $XDG_RUNTIME_DIR/swarm/swarmd.sock, else /tmp/swarm-UID/swarmd.sock.
    public static func builtInSocketPath(uid: uid_t, environment: (String) -> String?) -> String {
        if uid == 0 { return "/run/swarm/swarmd.sock" }
        if let xdg = environment("XDG_RUNTIME_DIR"), !xdg.isEmpty { return "\(xdg)/swarm/swarmd.sock" }
        return "/tmp/swarm-\(uid)/swarmd.sock"
    }

    /// $SWARM_SOCKET, else the built-in path.
    public static func socketPath(uid: uid_t, environment: (String) -> String?) -> String {
        if let env = environment(socketVariable), !env.isEmpty { return env }
        return builtInSocketPath(uid: uid, environment: environment)
    }

    /// The socket path for this process (real uid, its environment).
    public static var socketPath: String { socketPath(uid: getuid(), environment: Environment.get) }

    /// $SWARM_STATE_DIR, else /var/lib/swarm for root, else
    /// $HOME/.local/state/swarm (the home from passwd when HOME is unset, /tmp without either).
    public static func stateDirectory(uid: uid_t, environment: (String) -> String?, home: () -> String?) -> String {
        if let env = environment(stateDirectoryVariable), !env.isEmpty { return env }
        if uid == 0 { return "/var/lib/swarm" }
        return (home() ?? "/tmp") + "/.local/state/swarm"
    }

    public static var stateDirectory: String {
        stateDirectory(uid: getuid(), environment: Environment.get, home: { Users.homeDirectory() })
    }
}
