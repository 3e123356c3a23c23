/// Restart pacing for one slot: exponential delays, reset after a healthy
/// run, and crash-loop detection over a sliding window.
public struct Backoff: Codable, Hashable, Sendable {
    public private(set) var consecutiveFailures = 0
    public private(set) var recentFailures: [Instant] = []
    public private(set) var inCrashLoop = false

    /// Delays grow from at least this step, so an `initialDelay` of 0
    /// restarts at once only the first time.
    static let minimumStep: Duration = .milliseconds(100)

    public init() {}

    /// Records a failure of a worker that had been up for `uptime` and
    /// returns how long to wait before the next start.
    public mutating func failure(at now: Instant, uptime: Duration, policy: RestartPolicy) -> Duration {
        if uptime >= policy.resetAfter {
            consecutiveFailures = 0
            inCrashLoop = false
        }
        let windowStart = now + .nanoseconds(-policy.crashLoopWindow.nanoseconds)
        recentFailures.removeAll { $0 < windowStart }
        recentFailures.append(now)
        if recentFailures.count > policy.crashLoopRestarts { recentFailures.removeFirst(recentFailures.count - policy.crashLoopRestarts) }
        if policy.crashLoopRestarts > 0, recentFailures.count >= policy.crashLoopRestarts {
            inCrashLoop = true
        }
        let delay = Backoff.delay(afterFailures: consecutiveFailures, policy: policy)
        consecutiveFailures += 1
        return inCrashLoop ? max(delay, policy.maxDelay) : delay
    }

    /// A worker stayed up long enough: start afresh.
    public mutating func healthy() {
        consecutiveFailures = 0
        inCrashLoop = false
        recentFailures.removeAll()
    }

    public static func delay(afterFailures n: Int, policy: RestartPolicy) -> Duration {
        if n == 0 { return min(policy.initialDelay, policy.maxDelay) }
        let base = max(policy.initialDelay, minimumStep).nanoseconds
        var value = Double(base)
        for _ in 0..<min(n, 64) {
            value *= max(policy.multiplier, 1)
            if value >= Double(policy.maxDelay.nanoseconds) { return policy.maxDelay }
        }
        return min(.nanoseconds(Int64(value)), policy.maxDelay)
    }
}
