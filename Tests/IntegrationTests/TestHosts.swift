import Foundation
import Glibc
import SwarmSystem

/// Test hosts on this machine: one network namespace per host, each joined
/// to a bridge in the root namespace by a veth pair, each with its own
/// address, its own `sshd` (key authentication with a key made for the
/// test) and, once started, its own swarmd. Root only. Everything made here
/// is removed by `close()`, which the test calls in a `defer`.
final class TestFleet {
    struct Host {
        let name: String
        let namespace: String
        let address: String
        let socket: String
        let stateDir: String
        var sshd: Child?
        var swarmd: Child?
        /// `ssh://root@ADDRESS/SOCKET`.
        var url: String { "ssh://root@\(address)\(socket)" }
    }

    let dir: String
    let id: String
    let bridge: String
    let subnet: String
    let gateway: String
    private(set) var hosts: [Host] = []
    /// `SWARM_SSH`: ssh with the test's own config (its key, no known_hosts).
    let sshCommand: String
    private var labels = 0
    /// Added to the next `startSwarmd`'s arguments (e.g. `--agent`).
    var extraSwarmdArgs: [String] = []
    nonisolated(unsafe) private static var counter = 0
    private static let lock = NSLock()

    /// The names and subnet depend on our pid and a counter: parallel test runs cannot collide.
    init(hosts count: Int, dir: String) throws {
        self.dir = dir
        let n = TestFleet.lock.withLock { TestFleet.counter += 1; return TestFleet.counter }
        let pid = Int(getpid())
        id = String(format: "%04x%x", pid & 0xffff, n % 16)
        bridge = "swb\(id)"
        subnet = "10.\(180 + pid % 60).\((pid / 60 + n * 7) % 250)"
        gateway = subnet + ".1"
        sshCommand = "ssh -F \(dir)/ssh_config"
        do {
            try makeKeys()
            try run(["ip", "link", "add", bridge, "type", "bridge"])
            try run(["ip", "addr", "add", gateway + "/24", "dev", bridge])
            try run(["ip", "link", "set", bridge, "up"])
            for i in 1...count { try addHost(i) }
        } catch {
            close()
            throw error
        }
    }

    private func label(_ base: String) -> String {
        labels += 1
        return "\(base)-\(labels)"
    }

    /// Runs a command to completion (30 s at most); its stderr in the error.
    @discardableResult
    func run(_ argv: [String], env: [String] = childEnvironment()) throws -> String {
        let c = try Child.spawn(argv[0].hasPrefix("/") ? argv[0] : "/usr/bin/env", argv[0].hasPrefix("/") ? Array(argv.dropFirst()) : argv,
                                env: env, dir: dir, label: label("cmd"))
        let deadline = Date().addingTimeInterval(30)
        while c.poll() == nil {
            if Date() > deadline {
                c.signal(SIGKILL)
                throw HarnessError("\(argv.joined(separator: " ")) did not finish within 30s")
            }
            usleep(5_000)
        }
        guard c.poll() == 0 else { throw HarnessError("\(argv.joined(separator: " ")) failed (\(c.poll()!)): \(c.stderr)") }
        return c.stdout
    }

    private func makeKeys() throws {
        try run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", dir + "/id_ed25519", "-C", "swarm-test"])
        try run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", dir + "/host_ed25519", "-C", "swarm-test-host"])
        try run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", dir + "/stranger_ed25519", "-C", "not-authorized"])
        for f in ["id_ed25519", "host_ed25519", "stranger_ed25519"] { chmod(dir + "/" + f, 0o600) }
        let pub = try String(contentsOfFile: dir + "/id_ed25519.pub", encoding: .utf8)
        try pub.write(toFile: dir + "/authorized_keys", atomically: true, encoding: .utf8)
        chmod(dir + "/authorized_keys", 0o600)
        try """
            Host *
              IdentityFile \(dir)/id_ed25519
              IdentitiesOnly yes
              StrictHostKeyChecking no
              UserKnownHostsFile /dev/null
              LogLevel ERROR
              ConnectTimeout 3
            """.write(toFile: dir + "/ssh_config", atomically: true, encoding: .utf8)
        chmod(dir + "/ssh_config", 0o600)
        // sshd's privilege-separation directory.
        mkdir("/run/sshd", 0o755)
        chmod("/run/sshd", 0o755)
    }

    private func addHost(_ i: Int) throws {
        let ns = "sw\(id)h\(i)"
        let outside = "sw\(id)v\(i)"
        let inside = "sw\(id)p\(i)"
        let address = "\(subnet).\(10 + i)"
        // Recorded first, so close() removes it even if a later step fails.
        hosts.append(Host(name: "host\(i)", namespace: ns, address: address, socket: "\(dir)/host\(i).sock",
                          stateDir: "\(dir)/host\(i)-state", sshd: nil, swarmd: nil))
        try run(["ip", "netns", "add", ns])
        try run(["ip", "link", "add", outside, "type", "veth", "peer", "name", inside])
        try run(["ip", "link", "set", outside, "master", bridge, "up"])
        try run(["ip", "link", "set", inside, "netns", ns])
        try run(["ip", "-n", ns, "addr", "add", address + "/24", "dev", inside])
        try run(["ip", "-n", ns, "link", "set", inside, "up"])
        try run(["ip", "-n", ns, "link", "set", "lo", "up"])
        try """
            ListenAddress \(address):22
            HostKey \(dir)/host_ed25519
            PidFile \(dir)/sshd-\(i).pid
            AuthorizedKeysFile \(dir)/authorized_keys
            PermitRootLogin prohibit-password
            PasswordAuthentication no
            KbdInteractiveAuthentication no
            UsePAM no
            StrictModes no
            """.write(toFile: "\(dir)/sshd-\(i).conf", atomically: true, encoding: .utf8)
        hosts[i - 1].sshd = try Child.spawn("/usr/bin/ip", ["netns", "exec", ns, "/usr/sbin/sshd", "-D", "-e", "-f", "\(dir)/sshd-\(i).conf"],
                                            dir: dir, label: "sshd-\(i)")
    }

    /// Waits until every host's sshd accepts TCP connections on port 22.
    func waitForSSH() async throws {
        for h in hosts {
            try await waitUntil(timeout: 15, "sshd on \(h.name) (\(h.address):22) to listen: \(h.sshd?.stderr ?? "")") {
                if let code = h.sshd?.poll() { throw HarnessError("sshd on \(h.name) exited with \(code): \(h.sshd?.stderr ?? "")") }
                return TestFleet.canConnect(h.address, 22)
            }
        }
    }

    static func canConnect(_ address: String, _ port: UInt16) -> Bool {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { return false }
        defer { Glibc.close(fd) }
        var a = sockaddr_in()
        a.sin_family = sa_family_t(AF_INET)
        a.sin_port = port.bigEndian
        inet_pton(AF_INET, address, &a.sin_addr)
        return withUnsafePointer(to: &a) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } } == 0
    }

    /// Starts swarmd in host `i` (0-based) with `configs`, and waits until it answers.
    func startSwarmd(_ i: Int, configs: [String]) async throws {
        let h = hosts[i]
        let d = try Child.spawn("/usr/bin/ip", ["netns", "exec", h.namespace, Paths.swarmd, "--socket", h.socket, "--state-dir", h.stateDir] + extraSwarmdArgs + configs,
                                dir: dir, label: "swarmd-\(h.name)")
        hosts[i].swarmd = d
        try await waitUntil(timeout: 20, "swarmd on \(h.name) to answer on \(h.socket)") {
            if let code = d.poll() { throw HarnessError("swarmd on \(h.name) exited with \(code): \(d.stderr)") }
            guard let fd = try? Sockets.connectUnix(h.socket) else { return false }
            Posix.close(fd)
            return true
        }
    }

    /// swarmctl run here (the operator's machine), with this fleet's ssh and the built swarmctl on the hosts.
    func ctl(_ args: [String], env extra: [String: String] = [:], timeout: Double = 60) async throws -> CtlResult {
        var env = ["SWARM_SSH": sshCommand, "SWARM_REMOTE_SWARMCTL": Paths.swarmctl]
        for (k, v) in extra { env[k] = v }
        let c = try Child.spawn(Paths.swarmctl, args, env: childEnvironment(env), dir: dir, label: label("ctl"))
        do {
            _ = try await c.wait(timeout: timeout, "swarmctl \(args.joined(separator: " ")) to finish")
        } catch {
            c.signal(SIGKILL)
            throw HarnessError("\(error); its stderr: \(c.stderr)")
        }
        return CtlResult(args: args, code: c.poll()!, out: c.stdout, err: c.stderr)
    }

    /// swarmctl left running (`logs -f`): the caller signals it.
    func ctlInBackground(_ args: [String]) throws -> Child {
        try Child.spawn(Paths.swarmctl, args, env: childEnvironment(["SWARM_SSH": sshCommand, "SWARM_REMOTE_SWARMCTL": Paths.swarmctl]),
                        dir: dir, label: label("ctl-bg"))
    }

    /// Stops host `i`'s sshd as a crash or `systemctl stop ssh` plus a dropped
    /// network would: the listener and every session it serves (sshd's
    /// per-connection processes) are SIGKILLed; swarmd and its workers run on.
    func stopSSH(_ i: Int) throws {
        let h = hosts[i]
        h.sshd?.signal(SIGKILL)
        for pid in try run(["ip", "netns", "pids", h.namespace]).split(separator: "\n").compactMap({ Int32($0) }) {
            let comm = (try? String(contentsOfFile: "/proc/\(pid)/comm", encoding: .utf8)) ?? ""
            if comm.hasPrefix("sshd") { Glibc.kill(pid, SIGKILL) }
        }
        _ = h.sshd?.poll()
    }

    /// Stops every swarmd and sshd this fleet started, deletes the namespaces and the bridge.
    func close() {
        for h in hosts {
            h.swarmd?.signal(SIGTERM)
        }
        for h in hosts {
            if let d = h.swarmd {
                let deadline = Date().addingTimeInterval(10)
                while d.poll() == nil, Date() < deadline { usleep(10_000) }
                d.signal(SIGKILL)
                _ = d.poll()
            }
            h.sshd?.signal(SIGKILL)
            let deadline = Date().addingTimeInterval(5)
            while let s = h.sshd, s.poll() == nil, Date() < deadline { usleep(5_000) }
            // sshd's per-connection children live in the namespace too: none outlives it.
            _ = try? run(["ip", "netns", "pids", h.namespace]).split(separator: "\n").compactMap { Int32($0) }.forEach { Glibc.kill($0, SIGKILL) }
            _ = try? run(["ip", "netns", "del", h.namespace])
        }
        _ = try? run(["ip", "link", "del", bridge])
    }
}
