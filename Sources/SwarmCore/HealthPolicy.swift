/// What an active health probe does to reach one worker.
public enum HealthCheck: Codable, Hashable, Sendable, CustomStringConvertible {
    /// GET `path` on the worker's own listening socket; healthy when the status is in `expect`.
    case http(path: String, host: String?, expect: ClosedRange<Int>)
    /// A TCP connect to the worker's own listening socket succeeds.
    case tcp
    /// The command exits 0 (run with SWARM_WORKER_PID, SWARM_APP, SWARM_WORKER and PORT).
    case exec([String])

    public var description: String {
        switch self {
        case let .http(path, _, _): return "http \(path)"
        case .tcp: return "tcp"
        case let .exec(argv): return "exec \(argv.first ?? "")"
        }
    }

    /// The short word the reason strings use: "http", "tcp", "exec".
    public var kind: String {
        switch self {
        case .http: return "http"
        case .tcp: return "tcp"
        case .exec: return "exec"
        }
    }
}

/// `[health]`: active probes of each worker and zero-config hang detection.
public struct HealthPolicy: Codable, Hashable, Sendable {
    /// nil: no active probe (hang detection still runs, see `stuckAfter`).
    public var check: HealthCheck? = nil
    /// Name of the TCP socket probed (http, tcp); nil: the app's first TCP socket.
    public var socket: String? = nil
    public var interval: Duration = .seconds(5)
    public var timeout: Duration = .seconds(2)
    /// Consecutive failed probes that make a worker unhealthy.
    public var failures: Int = 3
    /// From a worker's start: failed probes in this time are not counted.
    public var startPeriod: Duration = .zero
    /// A slot whose reuseport listener's accept queue stays non-empty without
    /// shrinking for this long has a hung worker. `.zero`: off.
    public var stuckAfter: Duration = HealthPolicy.defaultStuckAfter

    public static let defaultStuckAfter: Duration = .seconds(10)
    public static let defaultExpect: ClosedRange<Int> = 200...399

    public init() {}

    /// How often the accept queues are sampled: a tenth of `stuckAfter`, between 50 ms and 1 s.
    public var queueSampleInterval: Duration {
        let tenth = Duration.nanoseconds(stuckAfter.nanoseconds / 10)
        return min(max(tenth, .milliseconds(50)), .seconds(1))
    }
}

extension AppSpec {
    /// Hang detection runs: `stuck_after` is not 0 and there is a reuseport socket to watch
    /// (without one the setting, even the default, has nothing to read).
    public var watchesAcceptQueues: Bool {
        health.stuckAfter > .zero && sockets.contains { $0.effectiveBalance == .reuseport }
    }

    /// Whether the app's health timer has anything to do.
    var hasHealthWork: Bool { health.check != nil || watchesAcceptQueues || recycle.maxAge != nil || recycle.maxConnections != nil }
}

/// `[recycle]`: replace a worker after a time, start-first, one slot of an app at a time.
public struct RecyclePolicy: Codable, Hashable, Sendable {
    /// A worker older than this (plus its jitter) is replaced; nil: never.
    public var maxAge: Duration? = nil
    /// Each worker's age limit is `maxAge` plus a share of this that depends on its slot,
    /// so slots started together do not recycle together. nil: a tenth of `maxAge`.
    public var jitter: Duration? = nil
    /// A worker that was handed this many new connections (counted per slot by the
    /// steering program) is replaced; nil: never.
    public var maxConnections: Int? = nil
    public init() {}

    /// The age at which slot `k`'s worker is recycled: spread evenly over the jitter by slot.
    public func age(forSlot k: Int, of n: Int) -> Duration? {
        guard let maxAge else { return nil }
        let spread = (jitter ?? .nanoseconds(maxAge.nanoseconds / 10)).nanoseconds
        guard spread > 0, n > 1 else { return maxAge }
        // Golden-ratio stride: neighbours far apart in time whatever the count.
        let fraction = (Double(k) * 0.618_033_988_75).truncatingRemainder(dividingBy: 1)
        return maxAge + .nanoseconds(Int64(Double(spread) * fraction))
    }
}
