import Testing
@testable import SwarmCore

@Suite("Supervisor: the listening probe backs off while a worker is slow to listen")
struct ProbeBackoffTests {
    func listeningSpec(timeout: Duration) -> AppSpec {
        makeSpec(workers: 1, ready: .listening) {
            $0.sockets = [SocketSpec(name: "http", listen: .tcp(host: "127.0.0.1", port: 8080))]
            $0.ready.timeout = timeout
        }
    }

    @Test func probesAtTheIntervalWhileYoungThenAnEighthOfTheAgeUpTo250ms() {
        let h = FakeShell(probeInterval: .milliseconds(20))
        _ = h.start(listeningSpec(timeout: .seconds(30)))
        h.advance(by: .seconds(10))
        let times = h.probes.map(\.at.nanoseconds)
        let gaps = zip(times.dropFirst(), times).map { Duration.nanoseconds($0 - $1) }
        #expect(gaps.prefix(8).allSatisfy { $0 == .milliseconds(20) }, "the first probes as often as before: \(gaps.prefix(8))")
        #expect(zip(gaps.dropFirst(), gaps).allSatisfy { $0 >= $1 }, "the gaps never shrink")
        #expect(gaps.max() == .milliseconds(250))
        for (t, gap) in zip(times, gaps) {
            let expected = min(.milliseconds(250), max(.milliseconds(20), Duration.nanoseconds(t / 8)))
            #expect(gap == expected, "at \(t) ns")
        }
        // 10 s of probing at a fixed 20 ms would be 500 probes.
        #expect(h.probes.count < 70, "\(h.probes.count) probes in 10 s")
    }

    @Test func aSlowWorkerIsSeenAtMostAnEighthOfItsStartLate() {
        let h = FakeShell(probeInterval: .milliseconds(20))
        let r = h.start(listeningSpec(timeout: .seconds(30)))
        let pid = h.pid("web", 0)!
        h.advance(by: .milliseconds(1600))
        // The worker starts listening now; the shell sees it at the next probe.
        let listeningAt = h.probes.last!.at
        h.advance(by: .milliseconds(200))
        let next = h.probes.first { $0.at > listeningAt }!.at
        #expect(next - listeningAt <= .milliseconds(200), "next probe \(next - listeningAt) after")
        h.ready(pid)
        #expect(h.succeeded(r))
        let count = h.probes.count
        h.advance(by: .seconds(5))
        #expect(h.probes.count == count, "no probe once ready")
    }

    @Test("1,024 and 2,048 workers starting together are each probed less often: about 64 probes per interval in all, none more than 320 (640) ms apart")
    func aCrowdOfStartingWorkersIsProbedAtAboutTheSameRateAsAFew() {
        for n in [10, 1024, 2048] {
            let h = FakeShell(probeInterval: .milliseconds(20))
            _ = h.start(makeSpec(workers: n, ready: .listening) {
                $0.sockets = [SocketSpec(name: "http", listen: .tcp(host: "127.0.0.1", port: 8080))]
                $0.ready.timeout = .seconds(30)
            })
            h.advance(by: .seconds(1))
            let perWorker = Double(h.probes.count) / Double(n)
            let perSecond = Double(h.probes.count)
            if n == 10 {
                #expect(perWorker >= 20, "a few workers keep their probes: \(perWorker) each in 1 s")
            } else {
                // Alone, each would be probed about 25 times in 1 s (25,600 probes at 1,024); in the crowd,
                // every 320 ms at 1,024 (16 × 20 ms) and every 640 ms at 2,048 (32 × 20 ms; at most 1 s).
                #expect(perWorker <= (n == 1024 ? 6 : 4), "\(perWorker) probes per worker in 1 s")
                #expect(perSecond <= (n == 1024 ? 6_000 : 8_200), "\(perSecond) probes per second")
                var last: [WorkerID: Instant] = [:]
                var widest = Duration.zero
                for p in h.probes {
                    if let t = last[p.id] { widest = max(widest, p.at - t) }
                    last[p.id] = p.at
                }
                #expect(widest <= (n == 1024 ? .milliseconds(320) : .milliseconds(640)), "a worker went \(widest) between probes")
            }
        }
    }

    @Test func aLongProbeIntervalIsKept() {
        let h = FakeShell(probeInterval: .seconds(1))
        _ = h.start(listeningSpec(timeout: .seconds(30)))
        h.advance(by: .seconds(5))
        #expect(h.probes.map(\.at) == (0...5).map { at(.seconds($0)) })
    }
}
