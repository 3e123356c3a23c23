import SwarmCore
import TOMLKit

/// `[health]` and `[recycle]`.
extension Reader {
    /// Bounds of the `[health]` settings: a probe more often than every 100 ms
    /// would cost swarmd more than it tells; one slower than an hour finds nothing in time.
    static let healthIntervalRange: ClosedRange<Duration> = .milliseconds(100) ... .seconds(3600)
    static let healthTimeoutRange: ClosedRange<Duration> = .milliseconds(10) ... .seconds(3600)
    static let stuckAfterRange: ClosedRange<Duration> = .milliseconds(500) ... .seconds(3600)
    static let maxHealthPath = 1024
    static let maxAgeRange: ClosedRange<Duration> = .seconds(1) ... .seconds(90 * 86_400)

    /// `sockets`: the app's sockets as parsed; `socketsComplete`: whether every one parsed
    /// (a check that needs them is skipped otherwise, so one mistake gives one error).
    func health(_ t: TOMLTable, sockets: [SocketSpec], socketsComplete: Bool) -> HealthPolicy {
        let p = "health"
        checkKeys(t, allowed: ["http", "tcp", "exec", "host", "expect", "socket", "interval", "timeout", "failures",
                               "start_period", "stuck_after"], at: p)
        var h = HealthPolicy()
        let given = ["http", "tcp", "exec"].filter { t[$0] != nil }
        if given.count > 1 {
            sink.errors.append(fail("\(p).\(given[1])", "only one probe per app: \(given.joined(separator: " and ")) are both set"))
        }
        h.check = check { () throws(ConfigError) -> HealthCheck? in
            if let path = try string(t, "http", at: p) {
                guard path.hasPrefix("/") else { throw fail("\(p).http", "'\(path)' must start with \"/\", like \"/healthz\"") }
                guard path.utf8.count <= Reader.maxHealthPath else { throw fail("\(p).http", "is longer than \(Reader.maxHealthPath) bytes") }
                // Sent as is on the request line: anything a request line cannot carry is refused here.
                guard path.unicodeScalars.allSatisfy({ $0.value > 0x20 && $0.value < 0x7F }) else {
                    throw fail("\(p).http", "'\(path)' contains a space, a control character or non-ASCII text; percent-encode it")
                }
                return .http(path: path, host: nil, expect: HealthPolicy.defaultExpect)
            }
            if let tcp = try bool(t, "tcp", at: p) { return tcp ? .tcp : nil }
            if let v = t["exec"] { return try execProbe(v) }
            return nil
        }
        // host and expect belong to http; each is judged only when the probe parsed.
        let host = check { () throws(ConfigError) -> String? in
            guard let host = try string(t, "host", at: p) else { return nil }
            guard t["http"] != nil else { throw fail("\(p).host", "is the Host header of an http probe; this [health] has no http") }
            guard !host.isEmpty, host.utf8.count <= 255,
                  host.unicodeScalars.allSatisfy({ $0.value > 0x20 && $0.value < 0x7F }) else {
                throw fail("\(p).host", "'\(host)' is not a host name (1 to 255 printable ASCII characters, no spaces)")
            }
            return host
        }
        let expect = check { () throws(ConfigError) -> ClosedRange<Int>? in
            guard let v = t["expect"] else { return nil }
            guard t["http"] != nil else { throw fail("\(p).expect", "is the status range of an http probe; this [health] has no http") }
            return try statusRange(v)
        }
        if case let .http(path, _, defaultExpect) = h.check {
            h.check = .http(path: path, host: host, expect: expect ?? defaultExpect)
        }
        h.socket = check { () throws(ConfigError) -> String? in
            guard let name = try string(t, "socket", at: p) else { return nil }
            guard socketsComplete else { return name }
            guard let s = sockets.first(where: { $0.name == name }) else {
                throw fail("\(p).socket", "no [[socket]] is named '\(name)'")
            }
            guard s.listen.isTCP else { throw fail("\(p).socket", "socket '\(name)' is a unix socket; probes reach TCP sockets only") }
            return name
        }
        if socketsComplete, t["socket"] == nil, let c = h.check, c.kind != "exec", !sockets.contains(where: { $0.listen.isTCP }) {
            sink.errors.append(fail("\(p).\(c.kind)", "an \(c.kind) probe needs a TCP [[socket]] to reach each worker on; this app has none (use exec)"))
        }
        if socketsComplete, let c = h.check, c.kind != "exec",
           let s = h.socket.flatMap({ name in sockets.first { $0.name == name } }) ?? sockets.first(where: { $0.listen.isTCP }),
           s.effectiveBalance != .reuseport {
            sink.errors.append(fail(h.socket != nil ? "\(p).socket" : "\(p).\(c.kind)",
                                    "socket '\(s.name)' has balance = \"shared\": a probe cannot reach one chosen worker on it (use reuseport, or exec)"))
        }
        let interval = check { () throws(ConfigError) -> Duration? in try boundedDuration(t, "interval", at: p, Reader.healthIntervalRange) }
        h.interval = interval ?? h.interval
        h.timeout = check { () throws(ConfigError) -> Duration? in
            guard let d = try boundedDuration(t, "timeout", at: p, Reader.healthTimeoutRange) else { return nil }
            if interval != nil || t["interval"] == nil, d > h.interval {
                throw fail("\(p).timeout", "\(d.humanReadable) is longer than interval (\(h.interval.humanReadable)): one probe would still run when the next is due")
            }
            return d
        } ?? min(h.timeout, h.interval)
        h.failures = check { () throws(ConfigError) -> Int? in try int(t, "failures", at: p, range: 1...100) } ?? h.failures
        h.startPeriod = check { () throws(ConfigError) -> Duration? in try duration(t, "start_period", at: p, max: .seconds(3600)) } ?? h.startPeriod
        h.stuckAfter = check { () throws(ConfigError) -> Duration? in
            guard let d = try duration(t, "stuck_after", at: p, max: Reader.stuckAfterRange.upperBound) else { return nil }
            if d == .zero { return d }
            guard d >= Reader.stuckAfterRange.lowerBound else {
                throw fail("\(p).stuck_after", "'\(d.humanReadable)' is shorter than \(Reader.stuckAfterRange.lowerBound.humanReadable); use \"0s\" to turn hang detection off")
            }
            if socketsComplete, !sockets.contains(where: { $0.effectiveBalance == .reuseport }) {
                throw fail("\(p).stuck_after", "hang detection watches each worker's own reuseport TCP socket; this app has none (set \"0s\", or add a TCP [[socket]])")
            }
            return d
        } ?? h.stuckAfter
        return h
    }

    func boundedDuration(_ t: TOMLTable, _ key: String, at p: String, _ range: ClosedRange<Duration>) throws(ConfigError) -> Duration? {
        guard let d = try duration(t, key, at: p, max: range.upperBound) else { return nil }
        guard d >= range.lowerBound else {
            throw fail("\(p).\(key)", "'\(d.humanReadable)' is shorter than \(range.lowerBound.humanReadable)")
        }
        return d
    }

    func execProbe(_ v: TOMLValueConvertible) throws(ConfigError) -> HealthCheck {
        .exec(try absoluteArgv(v, key: "health.exec", example: "[\"/usr/local/bin/check\", \"--quick\"]",
                               why: "a probe is run on every interval, with no PATH search"))
    }

    /// An argv array run without a shell or PATH search (exec probes, hooks):
    /// strings only, no NUL, each under Linux's argument limit, an absolute,
    /// executable program.
    func absoluteArgv(_ v: TOMLValueConvertible, key: String, example: String, why: String) throws(ConfigError) -> [String] {
        guard let items = v.array else {
            throw fail(key, "expected an array of strings like \(example) (never run through a shell), found \(v.type)")
        }
        var argv: [String] = []
        for (i, item) in items.enumerated() {
            guard let s = item.string else { throw fail(key, "element \(i) is \(item.type), expected a string") }
            if s.contains("\0") { throw fail(key, "element \(i) contains a NUL byte") }
            if s.utf8.count >= AppConfig.maxArgumentBytes {
                throw fail(key, "element \(i) is \(s.utf8.count) bytes; Linux passes at most \(AppConfig.maxArgumentBytes - 1) per argument")
            }
            argv.append(s)
        }
        guard let program = argv.first, !program.isEmpty else { throw fail(key, "must not be empty") }
        guard program.hasPrefix("/") else { throw fail(key, "'\(program)' must be an absolute path: \(why)") }
        guard environment.isExecutable(program) else { throw fail(key, "'\(program)' does not exist or is not executable") }
        return argv
    }

    /// `expect = 200`, `"200-299"`, `"2xx"`.
    func statusRange(_ v: TOMLValueConvertible) throws(ConfigError) -> ClosedRange<Int> {
        let key = "health.expect"
        let expected = "expected a status like 200, a range like \"200-299\", or a class like \"2xx\""
        if let n = v.int {
            guard (100...599).contains(n) else { throw fail(key, "\(n) is not an HTTP status (100…599)") }
            return n...n
        }
        guard let s = v.string?.trimmedSpaces else { throw fail(key, "\(expected), found \(v.type)") }
        let lower = s.lowercased()
        if lower.count == 3, lower.hasSuffix("xx"), let d = Int(String(lower.prefix(1))), (1...5).contains(d) {
            return (d * 100)...(d * 100 + 99)
        }
        let parts = s.split(separator: "-", omittingEmptySubsequences: false).map { String($0).trimmedSpaces }
        guard parts.count == 2, let a = Int(parts[0]), let b = Int(parts[1]) else { throw fail(key, "'\(s)': \(expected)") }
        guard (100...599).contains(a), (100...599).contains(b) else { throw fail(key, "'\(s)': statuses are 100…599") }
        guard a <= b else { throw fail(key, "'\(s)': the range is empty (\(a) > \(b))") }
        return a...b
    }

    /// `[recycle] max_connections` bounds: at least 1; at most 10^12 (a counter that never wraps).
    static let maxConnectionsRange: ClosedRange<Int> = 1...1_000_000_000_000

    /// `[ready] mode = "http" | "tcp" | "exec"` is decided by the `[health]` probe of that kind.
    func checkReadyProbe(_ spec: AppSpec, root: TOMLTable) {
        guard let kind = spec.ready.mode.probeKind else { return }
        // A [health] that failed to parse has reported its own error already.
        if let t = root["health"]?.table, ["http", "tcp", "exec"].contains(where: { t[$0] != nil }), spec.health.check == nil,
           t["tcp"]?.bool != false { return }
        guard let check = spec.health.check else {
            return sink.errors.append(fail("ready.mode", "\"\(kind)\" is ready when the [health] \(kind) probe first passes; this app has no [health] \(kind) probe (add [health] \(kind) = …)"))
        }
        if check.kind != kind {
            sink.errors.append(fail("ready.mode", "\"\(kind)\" is ready when the [health] \(kind) probe first passes; this app's [health] probe is \(check.kind) (use mode = \"\(check.kind)\")"))
        }
    }

    func recycle(_ t: TOMLTable, sockets: [SocketSpec], socketsComplete: Bool) -> RecyclePolicy {
        let p = "recycle"
        checkKeys(t, allowed: ["max_age", "jitter", "max_connections"], at: p)
        var r = RecyclePolicy()
        let maxAge = check { () throws(ConfigError) -> Duration? in try boundedDuration(t, "max_age", at: p, Reader.maxAgeRange) }
        r.maxAge = maxAge
        r.jitter = check { () throws(ConfigError) -> Duration? in
            guard let j = try duration(t, "jitter", at: p, max: Reader.maxAgeRange.upperBound) else { return nil }
            guard t["max_age"] != nil else { throw fail("\(p).jitter", "spreads max_age over the slots; this [recycle] has no max_age") }
            if let maxAge, j > maxAge { throw fail("\(p).jitter", "\(j.humanReadable) is longer than max_age (\(maxAge.humanReadable))") }
            return j
        }
        r.maxConnections = check { () throws(ConfigError) -> Int? in
            guard let n = try int(t, "max_connections", at: p, range: Reader.maxConnectionsRange) else { return nil }
            if socketsComplete, !sockets.contains(where: { $0.effectiveBalance == .reuseport }) {
                throw fail("\(p).max_connections", "connections are counted per slot by the steering program of a reuseport TCP socket; this app has none")
            }
            return n
        }
        return r
    }
}
