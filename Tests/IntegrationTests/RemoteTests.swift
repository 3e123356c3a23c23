import Foundation
import Glibc
import SwarmProtocol
import SwarmSystem
import Testing

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

            // events streams through the tunnel too: a restart's exit, spawn and readiness arrive.
            let events = try fleet.ctlInBackground(["events", "talker", "--json", "--host", h1.url])
            defer { events.signal(SIGTERM) }
            try await waitUntil(timeout: 15, "events through ssh to show a restart (so far: \(events.stdout) \(events.stderr))") {
                _ = try await fleet.ctl(["restart", "talker", "--host", h1.url])
                let kinds = events.stdout.split(separator: "\n").compactMap { try? JSONDecoder().decode(EventRecord.self, from: Data($0.utf8)).kind }
                return kinds.contains("restarted") && kinds.contains("spawned") && kinds.contains("ready")
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

            for bad in ["web1", "ssh://-oProxyCommand=touch", "ssh://[::1", "ssh://a,,ssh://b", "ssh://a,ssh://a"] {
                let r = try await fleet.ctl(["status", "--host", bad])
                #expect(r.code == 64 && r.err.contains("--host"), "\(bad): \(r)")
            }
            #expect(access(fleet.dir + "/proxy-ran", F_OK) != 0)
        }
    }
}

/// `--host a,b,c`: read verbs on every host, reload as a rollout.
@Suite("A fleet of hosts: labelled reads, host-by-host rollouts that stop at the first failure", .serialized,
       .enabled(if: getuid() == 0, "needs root to make network namespaces and run sshd"),
       .enabled(if: FileManager.default.isExecutableFile(atPath: "/usr/sbin/sshd"), "needs Debian's openssh-server (scripts/deps.sh installs it)"))
struct FleetTests {
    static func conf(_ command: [String], version: String = "1") -> String {
        Conf.app("talker", command: command, workers: 2, env: ["VERSION": version], extra: "[ready]\nmode = \"delay\"\ndelay = \"200ms\"")
    }

    @Test("status on 3 hosts, a rollout on all 3, a broken version stopping at host 2, a canary that restarts stopping after host 1")
    func rollouts() async throws {
        try await withSwarm { s in
            let fleet = try TestFleet(hosts: 3, dir: s.dir)
            defer { fleet.close() }
            try await fleet.waitForSSH()
            var confs: [String] = []
            for (i, h) in fleet.hosts.enumerated() {
                confs.append(try s.write("\(h.name).conf", FleetTests.conf(["/bin/sleep", "1000"])))
                try await fleet.startSwarmd(i, configs: [confs[i]])
            }
            let all = fleet.hosts.map(\.url).joined(separator: ",")
            func generations() async throws -> [Int] {
                var g: [Int] = []
                for h in fleet.hosts { g.append(try await remoteStatus(fleet, h.url)?.generation ?? -1) }
                return g
            }
            for h in fleet.hosts {
                try await waitUntil(timeout: 20, "talker on \(h.name) to be ready") { try await remoteStatus(fleet, h.url)?.workersReady == 2 }
            }

            let st = try await fleet.ctl(["status", "--host", all])
            #expect(st.code == 0, "\(st)")
            for h in fleet.hosts { #expect(st.out.contains("== \(h.url) =="), "\(st.out)") }
            #expect(st.out.components(separatedBy: "talker").count - 1 >= 3, "\(st.out)")
            // ls and describe read every host too, labelled.
            for verb in [["ls"], ["describe", "talker"]] {
                let r = try await fleet.ctl(verb + ["--host", all])
                #expect(r.code == 0, "\(verb): \(r)")
                for h in fleet.hosts { #expect(r.out.contains("== \(h.url) =="), "\(verb): \(r.out)") }
            }

            let before = try await generations()
            let ok = try await fleet.ctl(["reload", "talker", "--host", all, "--parallel", "2"], timeout: 120)
            #expect(ok.code == 0, "\(ok)")
            #expect(ok.out.contains("rollout summary"), "\(ok.out)")
            #expect(try await generations() == before.map { $0 + 1 }, "every host reloaded once")

            // Version 2, broken on host 2 only: host 1 reloads, host 2 fails and rolls itself back, host 1 is then
            // rolled back to its previous generation (version 1 again, new pids), host 3 is not touched.
            func pids(_ h: Int) async throws -> [Int32] { try await remoteStatus(fleet, fleet.hosts[h].url)?.workers.compactMap(\.pid).sorted() ?? [] }
            func versions(_ h: Int) async throws -> [String] { try await pids(h).map { environmentValue($0, "VERSION") ?? "?" } }
            try s.write("host1.conf", FleetTests.conf(["/bin/sleep", "1000"], version: "2"))
            try s.write("host2.conf", FleetTests.conf(["/bin/sh", "-c", "echo broken version; exit 1"], version: "2"))
            try s.write("host3.conf", FleetTests.conf(["/bin/sleep", "1000"], version: "2"))
            let mid = try await generations()
            let host1Before = try await pids(0), host3Before = try await pids(2)
            #expect(try await versions(0) == ["1", "1"])
            let broken = try await fleet.ctl(["reload", "talker", "--host", all], timeout: 120)
            print("[fleet] broken rollout output:\n\(broken.out)\(broken.err)")
            #expect(broken.code == 1, "\(broken)")
            #expect(broken.out.contains("\(fleet.hosts[1].url): FAILED") && broken.out.contains("(it rolled itself back)"), "\(broken.out)")
            #expect(broken.out.contains("\(fleet.hosts[0].url): reloaded, then rolled back to its previous generation"), "\(broken.out)")
            #expect(broken.out.contains("\(fleet.hosts[2].url): not started"), "\(broken.out)")
            #expect(broken.err.contains("rollout stopped at \(fleet.hosts[1].url)"), "\(broken.err)")
            let after = try await generations()
            #expect(after[0] == mid[0] + 2 && after[1] == mid[1] && after[2] == mid[2],
                    "host 1 reloaded then rolled back, hosts 2 and 3 on their generation: \(mid) → \(after)")
            try await waitUntil(timeout: 20, "host 1 to serve version 1 again") { try await remoteStatus(fleet, fleet.hosts[0].url)?.workersReady == 2 }
            #expect(try await versions(0) == ["1", "1"], "host 1 runs its previous generation's config again")
            #expect(Set(try await pids(0)).isDisjoint(with: host1Before), "host 1's workers were replaced twice (reload, rollback)")
            let host1 = try await remoteStatus(fleet, fleet.hosts[0].url)
            #expect(host1?.generations?.suffix(2).map(\.outcome) == ["rolled back", "running"], "\(String(describing: host1?.generations))")
            #expect(try await pids(2) == host3Before, "host 3 untouched")
            try await waitUntil(timeout: 20, "host 2 to serve its old version again") { try await remoteStatus(fleet, fleet.hosts[1].url)?.workersReady == 2 }

            // A version that becomes ready, then crashes: the canary watch on host 1 stops the rollout.
            try s.write("host2.conf", FleetTests.conf(["/bin/sleep", "1000"]))
            try s.write("host1.conf", FleetTests.conf(["/bin/sh", "-c", "sleep 1; exit 3"]))
            let pre = try await generations()
            let canary = try await fleet.ctl(["reload", "talker", "--host", all, "--canary-wait", "6s"], timeout: 120)
            #expect(canary.code == 1 && canary.out.contains("canary"), "\(canary)")
            #expect(canary.err.contains("rollout stopped at \(fleet.hosts[0].url)"), "\(canary.err)")
            #expect(canary.out.contains("\(fleet.hosts[0].url): FAILED: canary") && canary.out.contains("then rolled back to its previous generation"), "\(canary.out)")
            try await waitUntil(timeout: 20, "host 1 to run its previous generation again") {
                let st = try await remoteStatus(fleet, fleet.hosts[0].url)
                return st?.generations?.last?.outcome == "running" && st?.workersReady == 2
            }

            // --hosts-file: one host per line, comments.
            let list = try s.write("hosts.txt", "# the fleet\n" + fleet.hosts.map { "\($0.url)  # \($0.name)" }.joined(separator: "\n") + "\n\n")
            let fromFile = try await fleet.ctl(["status", "--hosts-file", list])
            #expect(fromFile.code == 0, "\(fromFile)")
            for h in fleet.hosts { #expect(fromFile.out.contains("== \(h.url) =="), "\(fromFile.out)") }
            let badList = try s.write("bad-hosts.txt", "\(fleet.hosts[0].url)\nnot a host\n")
            let bad = try await fleet.ctl(["status", "--hosts-file", badList])
            #expect(bad.code == 65 && bad.err.contains("bad-hosts.txt:2"), "\(bad)")
            let post = try await generations()
            #expect(post[1] == pre[1] && post[2] == pre[2], "hosts 2 and 3 untouched: \(pre) → \(post)")
            print("[fleet] canary rollout output:\n\(canary.out)\(canary.err)")

            for bad in [["reload", "talker", "--host", all, "--parallel", "0"], ["reload", "talker", "--host", all, "--canary-wait", "soon"],
                        ["scale", "talker", "3", "--host", all]] {
                let r = try await fleet.ctl(bad)
                #expect(r.code == 64, "\(bad): \(r)")
            }
        }
    }

    /// A record of `events --json` on several hosts: an `EventRecord` plus the host it came from.
    struct HostEvent: Decodable {
        let host: String
        let seq: UInt64
        let kind: String
        let app: String
    }

    @Test("events and logs -f on 3 hosts: merged as they arrive, text lines labelled with the host, JSON records with a host field; a host whose sshd stops mid-stream is reported while the others go on, and the exit is non-zero")
    func eventsFromEveryHost() async throws {
        try await withSwarm { s in
            let fleet = try TestFleet(hosts: 3, dir: s.dir)
            defer { fleet.close() }
            try await fleet.waitForSSH()
            for (i, h) in fleet.hosts.enumerated() {
                // Each worker says where it runs, so logs -f shows which host a line came from.
                let conf = try s.write("\(h.name).conf", FleetTests.conf(["/bin/sh", "-c", "echo \"talking on \(h.name) slot $SWARM_WORKER\"; exec sleep 1000"]))
                try await fleet.startSwarmd(i, configs: [conf])
            }
            for h in fleet.hosts {
                try await waitUntil(timeout: 20, "talker on \(h.name) to be ready") { try await remoteStatus(fleet, h.url)?.workersReady == 2 }
            }
            let all = fleet.hosts.map(\.url).joined(separator: ",")
            func records(_ c: Child) -> [HostEvent] {
                c.stdout.split(separator: "\n").compactMap { try? JSONDecoder().decode(HostEvent.self, from: Data($0.utf8)) }
            }
            func spawned(_ c: Child, _ h: TestFleet.Host) -> Int { records(c).filter { $0.host == h.url && $0.kind == "spawned" }.count }
            func textLines(_ out: String, _ h: TestFleet.Host) -> [Substring] {
                out.split(separator: "\n").filter { $0.hasPrefix("[\(h.address)] ") }
            }

            // -n 2: each host's last events come first, which shows its stream is connected.
            let json = try fleet.ctlInBackground(["events", "talker", "--json", "-n", "2", "--host", all])
            let text = try fleet.ctlInBackground(["events", "talker", "-n", "2", "--host", all])
            let logs = try fleet.ctlInBackground(["logs", "talker", "-f", "-n", "0", "--host", all])
            defer { json.signal(SIGKILL); text.signal(SIGKILL); logs.signal(SIGKILL) }
            /// Lines of the merged logs -f that say they came from host `h`, labelled as `h`.
            func talking(_ h: TestFleet.Host) -> [Substring] { textLines(logs.stdout, h).filter { $0.contains("talking on \(h.name) slot") } }
            try await waitUntil(timeout: 30, "every host's past events in both merged streams (so far: \(json.stdout) \(text.stdout) \(json.stderr))") {
                fleet.hosts.allSatisfy { h in records(json).contains { $0.host == h.url } && textLines(text.stdout, h).count >= 2 }
            }
            var before = fleet.hosts.map { spawned(json, $0) }
            for h in fleet.hosts {
                let r = try await fleet.ctl(["restart", "talker", "--host", h.url])
                #expect(r.code == 0, "\(r)")
            }
            try await waitUntil(timeout: 30, "every host's restart in the merged JSON stream (so far: \(json.stdout))") {
                fleet.hosts.indices.allSatisfy { spawned(json, fleet.hosts[$0]) >= before[$0] + 2 }
            }
            // Every line is a record with its host: the EventRecord fields are all there.
            for line in json.stdout.split(separator: "\n") {
                #expect((try? JSONDecoder().decode(HostEvent.self, from: Data(line.utf8))) != nil, "not a record with a host: \(line)")
                #expect((try? JSONDecoder().decode(EventRecord.self, from: Data(line.utf8))) != nil, "not an event record: \(line)")
            }
            try await waitUntil(timeout: 30, "every host's restart in the merged text stream (so far: \(text.stdout))") {
                fleet.hosts.allSatisfy { h in textLines(text.stdout, h).filter { $0.contains("spawned") }.count >= 2 }
            }
            #expect(!text.stdout.split(separator: "\n").contains { !$0.hasPrefix("[") }, "every text line is labelled: \(text.stdout)")
            // logs -f: the restarted workers' first lines, each host's under its own label and no other's.
            try await waitUntil(timeout: 30, "every host's restarted workers in the merged logs -f (so far: \(logs.stdout) \(logs.stderr))") {
                fleet.hosts.allSatisfy { talking($0).count >= 2 }
            }
            for h in fleet.hosts {
                let labelled = textLines(logs.stdout, h)
                #expect(labelled.allSatisfy { $0.contains("talking on \(h.name) ") }, "host \(h.name)'s label on another host's line: \(labelled)")
            }
            // ^C with every host still streaming: exit 0.
            text.signal(SIGINT)
            let textCode = try await text.wait(timeout: 15, "the text stream to end on SIGINT")
            #expect(textCode == 0, "SIGINT with no host failed: exit 0; stderr: \(text.stderr)")

            // Host 2's sshd goes (its sessions with it): reported, naming the host; hosts 1 and 3 go on.
            let h2 = fleet.hosts[1]
            try fleet.stopSSH(1)
            try await waitUntil(timeout: 30, "the stream to report host 2's loss (stderr: \(json.stderr))") {
                json.stderr.contains("host \(h2.url): events stopped")
            }
            #expect(json.running, "the others go on: \(json.stderr)")
            try await waitUntil(timeout: 30, "logs -f to report host 2's loss (stderr: \(logs.stderr))") {
                logs.stderr.contains("host \(h2.url): logs -f stopped")
            }
            #expect(logs.running, "logs -f goes on with the others: \(logs.stderr)")
            print("[fleet] events stderr after host 2's sshd stopped:\n\(json.stderr)")
            before = fleet.hosts.map { spawned(json, $0) }
            let talked = fleet.hosts.map { talking($0).count }
            for i in [0, 2] {
                let r = try await fleet.ctl(["restart", "talker", "--host", fleet.hosts[i].url])
                #expect(r.code == 0, "\(r)")
            }
            try await waitUntil(timeout: 30, "hosts 1 and 3's restarts after host 2 was lost (so far: \(json.stdout))") {
                spawned(json, fleet.hosts[0]) >= before[0] + 2 && spawned(json, fleet.hosts[2]) >= before[2] + 2
            }
            #expect(json.running)
            try await waitUntil(timeout: 30, "hosts 1 and 3's restarted workers in logs -f after host 2 was lost (so far: \(logs.stdout))") {
                talking(fleet.hosts[0]).count >= talked[0] + 2 && talking(fleet.hosts[2]).count >= talked[2] + 2
            }
            logs.signal(SIGINT)
            let logsCode = try await logs.wait(timeout: 15, "logs -f to end on SIGINT")
            #expect(logsCode == 3, "a host failed: exit 3; stderr: \(logs.stderr)")
            #expect(logs.stderr.contains("logs -f failed on 1 of 3 hosts: \(h2.url)"), "\(logs.stderr)")
            json.signal(SIGINT)
            let code = try await json.wait(timeout: 15, "the JSON stream to end on SIGINT")
            #expect(code == 3, "a host failed: exit 3 (ssh's failure); stderr: \(json.stderr)")
            #expect(json.stderr.contains("events failed on 1 of 3 hosts: \(h2.url)"), "\(json.stderr)")

            // The streams end by themselves with --no-follow: host 2 is unreachable now, the others answer.
            let past = try await fleet.ctl(["events", "talker", "-n", "3", "--no-follow", "--host", all])
            #expect(past.code == 3, "\(past)")
            #expect(textLines(past.out, fleet.hosts[0]).count == 3 && textLines(past.out, fleet.hosts[2]).count == 3, "\(past)")
            #expect(past.err.contains(h2.url) && past.err.contains("unreachable"), "\(past.err)")
        }
    }
}
