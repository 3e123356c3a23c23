import Foundation
import Glibc
import SwarmProtocol
import SwarmSystem
import Testing

// Issue 13, items 1 and 2: control traffic must not starve supervision, and
// the reap loop must not livelock. Each test fails on the code the issue
// describes (see the report in the commit that added them) and states the
// behaviour the fix must have.

/// `[ready]`/`[restart]` tables for workers that are ready at once and restarted without delay, indefinitely
/// (a run of 50 ms resets the backoff; a crash-loop window of 10 ms never fills).
let instantRestart = """
    [ready]
    mode = "delay"
    delay = "10ms"
    [restart]
    initial_delay = "0s"
    reset_after = "50ms"
    crash_loop_restarts = 1000
    crash_loop_window = "10ms"

    """

@Suite("Attack 1-2: control floods, slow readers, reserved connections, reap-loop churn", attackTestsSwitch)
struct AttackControlTests {
    @Test("1: a client pipelining 64 KiB batches of ping starves neither reaping, restarts, status nor SIGTERM")
    func pingFloodStarvesNothing() async throws {
        try await withSwarm { s in
            let conf = try s.write("w.conf", Conf.app("w", command: ["/bin/sleep", "600"], workers: 2, extra: instantRestart))
            let d = try await s.startDaemon([conf])
            let pids = try await s.waitReady("w", workers: 2)
            let flood = try PingFlood(socket: s.socket, maxSeconds: 30)
            flood.start()
            defer { flood.stop() }
            let zombies = ZombieWatch(parent: d.pid)
            defer { zombies.stop() }
            // Proof the flood is on: a fair swarmd still answers it, if more slowly on a loaded machine.
            try await waitUntil(timeout: 10, "the flood to get 256 KiB of replies (error: \(flood.error ?? "none"))") { flood.replyBytes > 256 << 10 }

            // A crashed worker is reaped and replaced while the flood goes on.
            let victim = pids[0]
            kill(victim, SIGKILL)
            let killedAt = Date()
            try await waitUntil(timeout: 4, "worker \(victim), killed during the flood, to be reaped (it stays a zombie of swarmd)") {
                !ProcState.exists(victim)
            }
            let reaped = elapsed(since: killedAt)
            var slowest = 0.0
            let replacement = try await waitUntil(timeout: 4, "slot 0 to get a replacement during the flood") { () -> Int32? in
                let (took, report) = try timedStatus(s)
                slowest = max(slowest, took)
                let w = report.apps.first?.workers.first { $0.slot == 0 }
                guard let p = w?.pid, p != victim else { return nil }
                return p
            }
            for _ in 0..<3 { slowest = max(slowest, try timedStatus(s).seconds) }
            reportFigure("ping flood: killed worker reaped after \(String(format: "%.3f", reaped))s, replaced by \(replacement), slowest status from a second client \(String(format: "%.3f", slowest))s, \(flood.batches) batches of 64 KiB sent")
            #expect(reaped < 1, "the killed worker stayed a zombie for \(reaped)s during the flood")
            #expect(zombies.longestZombie < 1, "a zombie of swarmd lasted \(zombies.longestZombie)s during the flood")
            #expect(slowest < 1, "status from a second client took \(slowest)s during the flood")
            #expect(flood.error == nil, "the flooding client was cut off: \(flood.error ?? "")")

            // SIGTERM is served within 2 s while the flood still runs.
            let batchesBefore = flood.batches
            d.signal(SIGTERM)
            let termAt = Date()
            let code = try await d.wait(timeout: 2, "swarmd to exit within 2 s of SIGTERM during the flood")
            #expect(code == 0)
            #expect(elapsed(since: termAt) < 2)
            #expect(batchesBefore > 10, "the flood sent only \(batchesBefore) batches: it did not flood")
        }
    }

    @Test("1: a client that hung up with frames pending gets no more work done: its later frames are not executed")
    func hungUpClientGetsNoMoreWork() async throws {
        try await withSwarm { s in
            let conf = try s.write("w.conf", Conf.app("w", command: ["/bin/sleep", "600"], workers: 1, extra: instantRestart))
            let d = try await s.startDaemon([conf])
            let pids = try await s.waitReady("w", workers: 1)
            let c = try ControlConnection(path: s.socket)
            // swarmd has accepted the connection; now it is frozen while the client sends
            // 1,000 pings and a stop, and hangs up: swarmd then sees the frames and the hang-up together.
            try await waitUntil(timeout: 5, "swarmd to accept the connection") {
                (ProcFS.listDirectory("/proc/\(d.pid)/fd")?.count ?? 0) > 0 && (try? s.request(.ping))?.ok == true
            }
            kill(d.pid, SIGSTOP)
            var batch: [UInt8] = []
            for i in 0..<1000 { batch += Array("{\"v\":1,\"id\":\(i + 1),\"verb\":\"ping\"}\n".utf8) }
            batch += Array("{\"v\":1,\"id\":5000,\"verb\":\"stop\",\"name\":\"w\"}\n".utf8)
            do {
                try c.send(batch)
            } catch {
                kill(d.pid, SIGCONT)
                throw error
            }
            shutdown(c.fd, Int32(SHUT_RDWR))
            kill(d.pid, SIGCONT)
            // The stop, had it run, would have stopped the worker within its 10 s stop timeout; sleep
            // stops on SIGTERM at once, so 2 s is plenty to see it.
            try await Task.sleep(nanoseconds: 2_000_000_000)
            let app = try #require(try s.quickStatus().apps.first { $0.name == "w" })
            #expect(app.state == "running" && app.workers.compactMap(\.pid) == pids,
                    "the frames of a client that hung up were still executed: app state \(app.state), workers \(app.workers.map { "\($0.slot):\($0.pid ?? 0):\($0.state)" })")
            #expect(!d.stderr.contains("EBADF"), "swarmd wrote to a closed fd: \(d.stderr.suffix(1500))")
            withExtendedLifetime(c) {}
        }
    }

    @Test("1: a client that stops reading is cut off after ~10 s without read progress, though far below 8 MiB queued")
    func nonReadingClientIsCutOffInTime() async throws {
        try await withSwarm { s in
            let d = try await s.startDaemon()
            let c = try ControlConnection(path: s.socket, timeout: 5)
            // ~36 batches of 64 KiB of pings: ~2.2 MiB of replies, most of them queued in swarmd.
            var batch: [UInt8] = []
            var id = 1
            while batch.count < 65536 - 64 {
                batch += Array("{\"v\":1,\"id\":\(id),\"verb\":\"ping\"}\n".utf8)
                id += 1
            }
            for _ in 0..<16 { try c.send(batch) }
            // swarmd's last read progress is its last write into our socket: the moment
            // the bytes waiting for us stopped growing. On a busy machine swarmd may still
            // be answering the pings seconds after the last send, so the clock starts there.
            var queued: Int32 = 0
            var grewAt = Date()
            // Hung up by swarmd: POLLRDHUP shows while our unread replies are still in the buffer.
            let closedAfter = try await waitUntil(timeout: 30, "swarmd to close the connection of a client that reads nothing (not within 30 s)",
                                                  every: 0.1) { () -> Double? in
                var now: Int32 = 0
                if ioctl(c.fd, UInt(FIONREAD), &now) == 0, now > queued {
                    queued = now
                    grewAt = Date()
                }
                // POLLRDHUP (0x2000) is not exported to Swift by Glibc.
                let rdhup: Int16 = 0x2000
                var pfd = pollfd(fd: c.fd, events: rdhup, revents: 0)
                guard poll(&pfd, 1, 0) > 0, pfd.revents & (rdhup | Int16(POLLHUP)) != 0 else { return nil }
                return elapsed(since: grewAt)
            }
            #expect(closedAfter >= 8 && closedAfter <= 16,
                    "closed \(closedAfter)s after swarmd's last write to it (\(queued) bytes queued); the contract is 10 s without read progress")
            let line = "control client pid \(getpid())"
            try await waitUntil(timeout: 10, "swarmd to log why it closed the client") { d.stderr.contains("does not read its replies") }
            #expect(d.stderr.contains(line), "the log names the client's pid \(getpid()): \(d.stderr.suffix(1500))")
            // Still serving everyone else.
            #expect(try timedStatus(s).seconds < 1)
        }
    }

    @Test("1: the 'does not read its replies' message is logged once per client, however many frames it had pending")
    func notReadingIsLoggedOnce() async throws {
        try await withSwarm { s in
            // A remembered, stopped app of 4,096 slots: each status answer is ~300 KiB and costs no /proc reads.
            let conf = try s.write("big.conf", Conf.app("big", command: ["/bin/sleep", "600"], workers: 4096, extra: instantRestart))
            try makeDir(s.stateDir, mode: 0o700)
            try writeOwned(s.stateDir + "/apps.json", #"{"version":1,"apps":[{"name":"big","config":"\#(conf)","stopped":true}]}"# + "\n", mode: 0o600)
            let d = try await s.startDaemon()
            let one = try ControlConnection(path: s.socket, timeout: 10)
            let probe = try one.call(Request(id: 1, verb: .status))
            let size = Codec.encode(probe).count
            #expect(probe.status?.apps.first?.workers.count == 4096, "the remembered app's slots: \(probe.status?.apps.first?.workers.count ?? 0)")
            // 64 status requests in one write, never read: about 64 × \(size) bytes of answers, far over 8 MiB.
            let c = try ControlConnection(path: s.socket, timeout: 2)
            var frames: [UInt8] = []
            for i in 0..<64 { frames += Array("{\"v\":1,\"id\":\(i + 1),\"verb\":\"status\"}\n".utf8) }
            try c.send(frames)
            let cut: Void? = try? await waitUntil(timeout: 25, "swarmd to cut off the client that reads nothing") { d.stderr.contains("does not read its replies") }
            #expect(cut != nil, "swarmd never cut off a client that read none of 64 status answers of \(size) bytes each")
            try await Task.sleep(nanoseconds: 1_000_000_000)
            let n = occurrences(of: "does not read its replies", in: d.stderr)
            #expect(n == 1, "logged \(n) times for one client")
            #expect(answersPing(s.socket, within: 1), "swarmd does not answer ping within 1 s afterwards")
            withExtendedLifetime(c) {}
        }
    }

    @Test("1: 1,100 connections held by a read-only user (nobody, via --socket-group) leave room for root",
          .enabled(if: getuid() == 0, "needs root: the read-only client runs as nobody"))
    func readOnlyClientsCannotLockOutRoot() async throws {
        try await withSwarm { s in
            ProcPeek.raiseNoFile(to: 8192)
            let d = try await s.startDaemon(args: ["--socket-group", "nogroup"])
            let holder = try Child.spawn(asUser(65534, 65534)[0], Array(asUser(65534, 65534).dropFirst())
                                         + [Paths.python, Paths.pythonApps + "/hold_connections.py", s.socket, "1100", "60"],
                                         dir: s.dir, label: s.label("holder"))
            defer {
                holder.signal(SIGKILL)
                for _ in 0..<300 where holder.running { usleep(10_000) }
            }
            try await waitUntil(timeout: 30, "nobody to open its connections (\(holder.stdout)\(holder.stderr))") { holder.stdout.contains("held ") }
            try await waitUntil(timeout: 15, "swarmd to take 1,000 of nobody's connections") {
                (ProcFS.listDirectory("/proc/\(d.pid)/fd")?.count ?? 0) >= 1000
            }
            var answers: [String] = []
            for i in 0..<4 {
                let c = try ControlConnection(path: s.socket, timeout: 5)
                do {
                    let r = try c.call(Request(id: UInt64(i + 1), verb: .status))
                    answers.append(r.ok == true ? "ok" : (r.error ?? "failed"))
                } catch {
                    // Refused: swarmd wrote its reason and closed before our request went out.
                    let refusal = (try? c.receive())?.flatMap { $0.error } ?? "no reply"
                    answers.append("\(refusal) (\(error))")
                }
            }
            #expect(answers.allSatisfy { $0 == "ok" }, "root's status with nobody holding the connections: \(answers); holder: \(holder.stdout)")
            let r = try await s.ctl("status")
            #expect(r.code == 0, "\(r)")
        }
    }

    @Test("2: churn of 200 workers restarting at once (sleep 0.1, initial_delay 0s): status within 1 s, SIGTERM within 2 s")
    func churnDoesNotLivelock() async throws {
        try await withSwarm { s in
            let conf = try s.write("churn.conf", Conf.app("churn", command: ["/bin/sleep", "0.1"], workers: 200, extra: instantRestart))
            let d = try s.launchDaemon(["--socket", s.socket, "--state-dir", s.stateDir, conf])
            try await waitUntil(timeout: 20, "swarmd (pid \(d.pid)) to open its socket") {
                if let code = d.poll() { throw HarnessError("swarmd exited with \(code): \(d.stderr.suffix(1500))") }
                return access(s.socket, F_OK) == 0
            }
            // Let the churn build up.
            try await Task.sleep(nanoseconds: 2_000_000_000)
            var times: [Double] = []
            var restarts = 0
            for _ in 0..<5 {
                let t0 = Date()
                let c = try ControlConnection(path: s.socket, timeout: 3)
                let r = try? c.call(Request(id: 1, verb: .status))
                times.append(elapsed(since: t0))
                if let st = r?.status { restarts = st.apps.first?.workers.reduce(0) { $0 + $1.restarts } ?? 0 }
                try await Task.sleep(nanoseconds: 200_000_000)
            }
            reportFigure("churn of 200 × sleep 0.1: status took \(times.map { String(format: "%.3f", $0) }) s, \(restarts) restarts so far")
            #expect(times.allSatisfy { $0 < 1 }, "status during the churn took \(times) s")
            #expect(restarts >= 200, "only \(restarts) restarts: the churn did not happen")
            d.signal(SIGTERM)
            let t0 = Date()
            _ = try await d.wait(timeout: 2, "swarmd to exit within 2 s of SIGTERM during the churn")
            #expect(elapsed(since: t0) < 2)
        }
    }
}
