import Foundation
import Glibc
import SwarmProtocol
import SwarmSystem
import Testing

/// HAProxy (Debian's) in the root namespace balancing over three test hosts,
/// each swarmd answering HAProxy's agent-check (`--agent`).
@Suite("HAProxy over three hosts: agent-check weights, drain/undrain, a fleet reload under load", .serialized,
       .enabled(if: getuid() == 0, "needs root to make network namespaces and run sshd"),
       .enabled(if: FileManager.default.isExecutableFile(atPath: "/usr/sbin/sshd"), "needs Debian's openssh-server (scripts/deps.sh installs it)"),
       .enabled(if: FileManager.default.isExecutableFile(atPath: "/usr/sbin/haproxy"), "needs Debian's haproxy (scripts/deps.sh installs it)"))
struct HAProxyTests {
    static let agentInterval = 0.5

    /// `show stat` through HAProxy's admin socket: server name → status (UP, DOWN, DRAIN, …).
    static func serverStates(_ socket: String) throws -> [String: String] { try stat(socket, column: "status") }

    /// One column of `show stat` for each server of backend `be`.
    static func stat(_ socket: String, column: String) throws -> [String: String] {
        let fd = try Sockets.connectUnix(socket)
        defer { Posix.close(fd) }
        try Sockets.sendAll(fd, Array("show stat\n".utf8), timeoutNanoseconds: 5_000_000_000)
        let text = String(decoding: try Posix.readAll(fd, limit: 1 << 20), as: UTF8.self)
        var states: [String: String] = [:]
        let rows = text.split(separator: "\n")
        guard let header = rows.first?.split(separator: ",", omittingEmptySubsequences: false),
              let statusColumn = header.firstIndex(where: { $0 == column || $0 == "# " + column }) else { throw HarnessError("unexpected 'show stat' output: \(text.prefix(300))") }
        for row in rows.dropFirst() {
            let f = row.split(separator: ",", omittingEmptySubsequences: false)
            guard f.count > statusColumn, f[0] == "be", f[1] != "BACKEND" else { continue }
            states[String(f[1])] = String(f[statusColumn])
        }
        return states
    }

    @Test("full weight when every worker is ready; drain takes a host out within two agent intervals and undrain brings it back; a fleet reload fails 0 requests")
    func balancedFleet() async throws {
        try await withSwarm { s in
            let fleet = try TestFleet(hosts: 3, dir: s.dir)
            defer { fleet.close() }
            try await fleet.waitForSSH()
            for (i, h) in fleet.hosts.enumerated() {
                let conf = try s.write("\(h.name).conf", Conf.app("talker", command: [Paths.python, Paths.pythonApps + "/server.py"], workers: 2,
                                                                   extra: "[[socket]]\nname = \"http\"\nlisten = \"\(h.address):8080\""))
                fleet.extraSwarmdArgs = ["--agent", "\(h.address):9999"]
                try await fleet.startSwarmd(i, configs: [conf])
            }
            let front = try Ports.free()
            let admin = s.dir + "/haproxy.sock"
            let servers = fleet.hosts.map { h in
                "  server \(h.name) \(h.address):8080 check inter 500ms agent-check agent-addr \(h.address) agent-port 9999 agent-send \"talker\\n\" agent-inter \(Int(HAProxyTests.agentInterval * 1000))ms weight 100"
            }
            try """
                global
                  stats socket \(admin) mode 600 level admin
                defaults
                  mode http
                  timeout connect 2s
                  timeout client 30s
                  timeout server 30s
                  timeout check 2s
                frontend fe
                  bind 127.0.0.1:\(front)
                  default_backend be
                backend be
                  balance roundrobin
                  option httpchk GET /health
                \(servers.joined(separator: "\n"))

                """.write(toFile: s.dir + "/haproxy.cfg", atomically: true, encoding: .utf8)
            let haproxy = try Child.spawn("/usr/sbin/haproxy", ["-db", "-f", s.dir + "/haproxy.cfg"], dir: s.dir, label: "haproxy")
            defer {
                haproxy.signal(SIGKILL)
                _ = haproxy.poll()
            }
            try await waitUntil(timeout: 30, "HAProxy to see all 3 hosts UP (\(haproxy.stderr.suffix(500)))") {
                if let code = haproxy.poll() { throw HarnessError("haproxy exited with \(code): \(haproxy.stderr)") }
                guard let st = try? HAProxyTests.serverStates(admin) else { return false }
                return st.count == 3 && st.values.allSatisfy { $0 == "UP" }
            }

            // UP needs one worker answering /health; full weight needs every worker ready, which a
            // loaded machine (or swarmd's start-up saves) can delay past UP: wait for that, then
            // for HAProxy to take the agent's 100% within two agent intervals.
            for h in fleet.hosts {
                try await waitUntil(timeout: 20, "both workers on \(h.name) to be ready") { try await remoteStatus(fleet, h.url)?.workersReady == 2 }
            }
            let readyAt = Date()
            try await waitUntil(timeout: 10, "HAProxy to give every host full weight (\((try? HAProxyTests.stat(admin, column: "weight")) ?? [:]))") {
                let w = try HAProxyTests.stat(admin, column: "weight")
                return w.count == 3 && w.values.allSatisfy { $0 == "100" }
            }
            let weightAfter = Date().timeIntervalSince(readyAt)
            #expect(weightAfter < 2 * HAProxyTests.agentInterval + 1, "full weight \(weightAfter)s after every worker was ready")
            let weights = try HAProxyTests.stat(admin, column: "weight")
            #expect(weights.count == 3 && weights.values.allSatisfy { $0 == "100" }, "agent: up ready 100%: \(weights)")

            let load = Traffic(port: front, keepAlive: 2, fresh: 2, pause: 0.005)
            let (_, report) = try await withTraffic(load) {
                try await load.waitForProgress(50)

                let drainedHost = fleet.hosts[1]
                let d = try await fleet.ctl(["drain", "talker", "--host", drainedHost.url])
                #expect(d.code == 0 && d.out.contains("drained"), "\(d)")
                let start = Date()
                try await waitUntil(timeout: 10, "HAProxy to mark host2 DRAIN (states: \((try? HAProxyTests.serverStates(admin)) ?? [:]))") { try HAProxyTests.serverStates(admin)[drainedHost.name]?.hasPrefix("DRAIN") == true }
                let took = Date().timeIntervalSince(start)
                print("[haproxy] drain seen by HAProxy after \(String(format: "%.2f", took))s (agent-inter \(HAProxyTests.agentInterval)s)")
                // From swarmd's answer to HAProxy's new state: two agent intervals (and the polling of this wait).
                #expect(took < 2 * HAProxyTests.agentInterval + 0.25, "\(took)s")
                let st = try await remoteStatus(fleet, drainedHost.url)
                #expect(st?.drained == true, "status shows the drain")
                // Out of rotation: no new requests reach the drained host while the others serve.
                let hrspBefore = try HAProxyTests.stat(admin, column: "hrsp_2xx")
                try await load.waitForProgress(200)
                let hrspAfter = try HAProxyTests.stat(admin, column: "hrsp_2xx")
                #expect(hrspAfter[drainedHost.name] == hrspBefore[drainedHost.name], "\(hrspBefore) → \(hrspAfter)")
                #expect(hrspAfter["host1"] != hrspBefore["host1"], "\(hrspBefore) → \(hrspAfter)")

                let u = try await fleet.ctl(["undrain", "talker", "--host", drainedHost.url])
                #expect(u.code == 0, "\(u)")
                try await waitUntil(timeout: 10, "HAProxy to mark host2 UP again (states: \((try? HAProxyTests.serverStates(admin)) ?? [:]))") { try HAProxyTests.serverStates(admin)[drainedHost.name] == "UP" }

                let all = fleet.hosts.map(\.url).joined(separator: ",")
                let r = try await fleet.ctl(["reload", "talker", "--host", all], timeout: 180)
                #expect(r.code == 0, "\(r)")
                try await load.waitForProgress(50)
            }
            print("[haproxy] traffic through HAProxy during drain, undrain and a 3-host reload: \(report)")
            #expect(report.failed == 0, "\(report)")
            #expect(report.ok > 200, "\(report)")
        }
    }
}

/// The first app's status on a host, through ssh.
func remoteStatus(_ fleet: TestFleet, _ url: String) async throws -> AppStatus? {
    let st = try await fleet.ctl(["status", "--json", "--host", url])
    guard st.code == 0 else { throw HarnessError("status through ssh failed: \(st)") }
    return try JSONDecoder().decode(StatusReport.self, from: Data(st.out.utf8)).apps.first
}
