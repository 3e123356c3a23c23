import Testing
@testable import SwarmCore

@Suite("Backoff")
struct BackoffTests {
    func policy(_ configure: (inout RestartPolicy) -> Void = { _ in }) -> RestartPolicy {
        var p = RestartPolicy()
        p.crashLoopRestarts = 0
        configure(&p)
        return p
    }

    @Test func delaysDoubleFromTheInitialDelayAndAreCapped() {
        let p = policy { $0.maxDelay = .seconds(2) }
        let delays = (0..<8).map { Backoff.delay(afterFailures: $0, policy: p) }
        #expect(delays == [100, 200, 400, 800, 1600, 2000, 2000, 2000].map { .milliseconds($0) })
    }

    @Test func hugeFailureCountsStayAtTheCap() {
        let p = policy()
        #expect(Backoff.delay(afterFailures: 10_000, policy: p) == .seconds(30))
        #expect(Backoff.delay(afterFailures: Int.max, policy: p) == .seconds(30))
    }

    @Test func multiplierBelowOneDoesNotShrink() {
        let p = policy { $0.multiplier = 0.5 }
        #expect(Backoff.delay(afterFailures: 5, policy: p) == .milliseconds(100))
    }

    @Test func initialDelayAboveTheMaximumIsCapped() {
        let p = policy { $0.initialDelay = .seconds(60); $0.maxDelay = .seconds(5) }
        #expect(Backoff.delay(afterFailures: 0, policy: p) == .seconds(5))
        #expect(Backoff.delay(afterFailures: 1, policy: p) == .seconds(5))
    }

    @Test func zeroInitialDelayIsImmediateOnlyOnce() {
        let p = policy { $0.initialDelay = .zero }
        var b = Backoff()
        #expect(b.failure(at: .zero, uptime: .zero, policy: p) == .zero)
        let second = b.failure(at: at(.seconds(1)), uptime: .zero, policy: p)
        #expect(second >= .milliseconds(100))
        #expect(b.failure(at: at(.seconds(2)), uptime: .zero, policy: p) > second)
    }

    @Test func failureAfterALongRunStartsOver() {
        let p = policy { $0.resetAfter = .seconds(10) }
        var b = Backoff()
        _ = b.failure(at: at(.seconds(1)), uptime: .zero, policy: p)
        _ = b.failure(at: at(.seconds(2)), uptime: .zero, policy: p)
        #expect(b.failure(at: at(.seconds(3)), uptime: .zero, policy: p) == .milliseconds(400))
        #expect(b.failure(at: at(.seconds(20)), uptime: .seconds(10), policy: p) == .milliseconds(100))
        #expect(b.consecutiveFailures == 1)
    }

    @Test func crashLoopNeedsEnoughFailuresInsideTheWindow() {
        let p = policy { $0.crashLoopRestarts = 3; $0.crashLoopWindow = .seconds(10); $0.maxDelay = .seconds(30) }
        var b = Backoff()
        _ = b.failure(at: at(.seconds(0)), uptime: .zero, policy: p)
        _ = b.failure(at: at(.seconds(6)), uptime: .zero, policy: p)
        // The first failure has left the window.
        _ = b.failure(at: at(.seconds(12)), uptime: .zero, policy: p)
        #expect(!b.inCrashLoop)
        #expect(b.recentFailures == [at(.seconds(6)), at(.seconds(12))])
        let d = b.failure(at: at(.seconds(13)), uptime: .zero, policy: p)
        #expect(b.inCrashLoop)
        #expect(d == .seconds(30), "a crash loop waits the maximum delay")
        #expect(b.recentFailures.count == 3, "the window keeps at most crashLoopRestarts entries")
    }

    @Test func healthyClearsEverything() {
        let p = policy { $0.crashLoopRestarts = 2 }
        var b = Backoff()
        _ = b.failure(at: .zero, uptime: .zero, policy: p)
        _ = b.failure(at: .zero, uptime: .zero, policy: p)
        #expect(b.inCrashLoop)
        b.healthy()
        #expect(b == Backoff())
        #expect(b.failure(at: at(.seconds(1)), uptime: .zero, policy: p) == .milliseconds(100))
        #expect(!b.inCrashLoop)
    }

    @Test func crashLoopDetectionCanBeDisabled() {
        let p = policy { $0.crashLoopRestarts = 0 }
        var b = Backoff()
        for i in 0..<50 { _ = b.failure(at: at(.milliseconds(Int64(i))), uptime: .zero, policy: p) }
        #expect(!b.inCrashLoop)
        #expect(b.recentFailures.isEmpty)
    }
}
