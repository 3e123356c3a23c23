import Foundation
import Glibc
import SwarmProtocol
import SwarmSystem
import Testing

private func remoteStatus(_ fleet: TestFleet, _ url: String) async throws -> AppStatus? {
    let st = try await fleet.ctl(["status", "--json", "--host", url])
    guard st.code == 0 else { throw HarnessError("status through ssh failed: \(st)") }
    return try JSONDecoder().decode(StatusReport.self, from: Data(st.out.utf8)).apps.first { $0.name == "talker" }
}

/// `swarmctl --host ssh://…` against real sshds on test hosts (network
/// namespaces), each with its own swarmd.
@Suite("Remote control over SSH (test hosts in network namespaces)", .serialized,
       .enabled(if: getuid() == 0, "needs root to make network namespaces and run sshd"),
       .enabled(if: FileManager.default.isExecutableFile(atPath: "/usr/sbin/sshd"), "needs Debian's openssh-server (scripts/deps.sh installs it)"))
struct RemoteTests {
    @Test("status, scale, logs, logs -f, reload and ping through ssh; SWARM_HOST; the host's own socket and app")
    func everyVerbRemotely() async throws {
        try await withSwarm { s in
            let fleet = try TestFleet(hosts: 2, dir: s.dir)
            defer { fleet.close() }
            try await fleet.waitForSSH()
            for (i, h) in fleet.hosts.enumerated() {
                let conf = try s.write("\(h.name).conf", Conf.app("talker", command: ["/bin/sh", "-c", "echo hello from \(h.name); exec sleep 1000"],
                                                                   workers: 1))
                try await fleet.startSwarmd(i, configs: [conf])
            }
            let h1 = fleet.hosts[0], h2 = fleet.hosts[1]

            let ping = try await fleet.ctl(["ping", "--host", h1.url])
            #expect(ping.code == 0 && ping.out.contains("pong"), "\(ping)")

            try await waitUntil(timeout: 20, "talker on \(h1.name) to be ready, seen through ssh") {
                try await remoteStatus(fleet, h1.url)?.workersReady == 1
            }
            let scaled = try await fleet.ctl(["scale", "talker", "3", "--host", h1.url])
            #expect(scaled.code == 0, "\(scaled)")
            try await waitUntil(timeout: 20, "3 talkers on \(h1.name)") {
                try await remoteStatus(fleet, h1.url)?.workersReady == 3
            }
            // The other host is untouched: SWARM_HOST picks it.
            let other = try await fleet.ctl(["status", "--json"], env: ["SWARM_HOST": h2.url])
            let otherApp = try JSONDecoder().decode(StatusReport.self, from: Data(other.out.utf8)).apps.first
            #expect(other.code == 0 && otherApp?.workersWanted == 1, "\(other)")

            let logs = try await fleet.ctl(["logs", "talker", "-n", "5", "--host", h1.url])
            #expect(logs.code == 0 && logs.out.contains("hello from host1") && !logs.out.contains("host2"), "\(logs)")

            // logs -f streams through the tunnel: a restart's new line arrives.
            let follow = try fleet.ctlInBackground(["logs", "talker", "-f", "-n", "0", "--host", h1.url])
            defer { follow.signal(SIGTERM) }
            try await waitUntil(timeout: 15, "logs -f through ssh to be connected (a restart's line to arrive)") {
                _ = try await fleet.ctl(["restart", "talker", "--host", h1.url])
                return follow.stdout.contains("hello from host1")
            }

            let reload = try await fleet.ctl(["reload", "talker", "--host", h1.url], timeout: 90)
            #expect(reload.code == 0, "\(reload)")
        }
    }

    @Test("unreachable host, refused key, no swarmd there, a bad address: each a clear error naming the host, exit 3 or 64")
    func failuresNameTheHost() async throws {
        try await withSwarm { s in
            let fleet = try TestFleet(hosts: 1, dir: s.dir)
            defer { fleet.close() }
            try await fleet.waitForSSH()
            let h = fleet.hosts[0]

            let nobody = "ssh://root@\(fleet.subnet).99"
            let unreachable = try await fleet.ctl(["status", "--host", nobody], timeout: 30)
            #expect(unreachable.code == 3, "\(unreachable)")
            #expect(unreachable.err.contains("host \(nobody)") && unreachable.err.contains("unreachable"), "\(unreachable)")

            // A config whose only key is not authorized.
            try """
                Host *
                  IdentityFile \(fleet.dir)/stranger_ed25519
                  IdentitiesOnly yes
                  StrictHostKeyChecking no
                  UserKnownHostsFile /dev/null
                  LogLevel ERROR
                  ConnectTimeout 3
                """.write(toFile: fleet.dir + "/stranger_config", atomically: true, encoding: .utf8)
            let refused = try await fleet.ctl(["status", "--host", h.url], env: ["SWARM_SSH": "ssh -F \(fleet.dir)/stranger_config"])
            #expect(refused.code == 3 && refused.err.contains("host \(h.url)") && refused.err.contains("authentication failed"), "\(refused)")

            // sshd answers, but no swarmd listens on that host's socket.
            let empty = try await fleet.ctl(["status", "--host", h.url])
            #expect(empty.code == 3 && empty.err.contains("host \(h.url)") && empty.err.contains("no swarmd"), "\(empty)")
            #expect(empty.err.contains("no socket there"), "the host's own words come along: \(empty)")

            let noCtl = try await fleet.ctl(["status", "--host", h.url], env: ["SWARM_REMOTE_SWARMCTL": "/nonexistent/swarmctl"])
            #expect(noCtl.code == 3 && noCtl.err.contains("no swarmctl on the host"), "\(noCtl)")
            for r in [unreachable, refused, empty, noCtl] { print("[remote error] \(r.err.trimmingCharacters(in: .whitespacesAndNewlines))") }

            for bad in ["web1", "ssh://-oProxyCommand=touch", "ssh://[::1", "ssh://a,ssh://b"] {
                let r = try await fleet.ctl(["status", "--host", bad])
                #expect(r.code == 64 && r.err.contains("--host"), "\(bad): \(r)")
            }
            #expect(access(fleet.dir + "/proxy-ran", F_OK) != 0)
        }
    }
}
