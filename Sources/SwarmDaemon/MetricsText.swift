/// The Prometheus text exposition format (version 0.0.4), written by hand.
///
/// Why not swift-prometheus (2.4.1, in the package mirror): its registry keeps
/// each metric family as an immutable dictionary that is copied whole on every
/// series added or removed. Per-worker series come and go with every spawn and
/// exit; measured here (release build), registering 4,000 per-worker gauges took
/// 536 ms and unregistering them 565 ms, so one `restart all` of 100 apps × 40
/// workers would stall swarmd's only thread for about a second. It also has no
/// collector callback: the gauges swarmd derives from the core's state and the
/// values it reads from /proc at scrape time would have to be copied into the
/// registry before every scrape, a second copy of the state. What swarmd needs of
/// the format is this file: escaping, one HELP/TYPE pair per family, counters,
/// gauges and cumulative histograms.
struct MetricsText {
    private(set) var bytes: [UInt8] = []

    init(capacity: Int = 0) { bytes.reserveCapacity(capacity) }

    enum Kind: String {
        case counter, gauge, histogram
    }

    /// `# HELP` and `# TYPE`: once per family, before its samples.
    mutating func family(_ name: String, _ kind: Kind, _ help: String) {
        append("# HELP ")
        append(name)
        bytes.append(0x20)
        for b in help.utf8 {
            switch b {
            case UInt8(ascii: "\\"): append("\\\\")
            case UInt8(ascii: "\n"): append("\\n")
            default: bytes.append(b)
            }
        }
        append("\n# TYPE ")
        append(name)
        bytes.append(0x20)
        append(kind.rawValue)
        bytes.append(0x0a)
    }

    mutating func sample(_ name: String, _ labels: [(String, String)] = [], _ value: Int64) {
        head(name, labels)
        append(String(value))
        bytes.append(0x0a)
    }

    mutating func sample(_ name: String, _ labels: [(String, String)] = [], _ value: Int) {
        sample(name, labels, Int64(value))
    }

    mutating func sample(_ name: String, _ labels: [(String, String)] = [], _ value: Double) {
        head(name, labels)
        append(MetricsText.format(value))
        bytes.append(0x0a)
    }

    /// `_bucket` lines (cumulative, with `le`), `_sum` and `_count`.
    mutating func histogram(_ name: String, _ labels: [(String, String)] = [], _ h: Histogram) {
        var cumulative: Int64 = 0
        for (i, bound) in h.bounds.enumerated() {
            cumulative += h.counts[i]
            sample(name + "_bucket", labels + [("le", MetricsText.format(bound))], cumulative)
        }
        sample(name + "_bucket", labels + [("le", "+Inf")], h.count)
        sample(name + "_sum", labels, h.sum)
        sample(name + "_count", labels, h.count)
    }

    private mutating func head(_ name: String, _ labels: [(String, String)]) {
        append(name)
        if !labels.isEmpty {
            bytes.append(UInt8(ascii: "{"))
            for (i, (key, value)) in labels.enumerated() {
                if i > 0 { bytes.append(UInt8(ascii: ",")) }
                append(key)
                append("=\"")
                MetricsText.escapeLabelValue(value, into: &bytes)
                bytes.append(UInt8(ascii: "\""))
            }
            bytes.append(UInt8(ascii: "}"))
        }
        bytes.append(0x20)
    }

    private mutating func append(_ s: String) { bytes.append(contentsOf: s.utf8) }

    /// Backslash, double quote and line feed are the only escapes the format has.
    static func escapeLabelValue(_ value: String, into out: inout [UInt8]) {
        for b in value.utf8 {
            switch b {
            case UInt8(ascii: "\\"): out += [0x5c, 0x5c]
            case UInt8(ascii: "\""): out += [0x5c, 0x22]
            case UInt8(ascii: "\n"): out += [0x5c, 0x6e]
            default: out.append(b)
            }
        }
    }

    /// Go's ParseFloat reads these: integers without a fraction, "+Inf", "-Inf", "NaN".
    static func format(_ v: Double) -> String {
        if v.isNaN { return "NaN" }
        if v.isInfinite { return v > 0 ? "+Inf" : "-Inf" }
        if v == v.rounded(), abs(v) < 1e15 { return String(Int64(v)) }
        return "\(v)"
    }
}

/// A cumulative histogram with fixed bucket bounds (seconds).
struct Histogram: Codable, Equatable {
    let bounds: [Double]
    /// Observations per bucket (not cumulative); above the last bound only in `count`.
    private(set) var counts: [Int64]
    private(set) var sum: Double = 0
    private(set) var count: Int64 = 0

    init(bounds: [Double]) {
        self.bounds = bounds
        counts = Array(repeating: 0, count: bounds.count)
    }

    mutating func observe(_ v: Double) {
        count += 1
        sum += v
        // Few buckets: a linear scan is cheaper than a search.
        for i in bounds.indices where v <= bounds[i] {
            counts[i] += 1
            return
        }
    }

    /// Readiness and reloads: tens of milliseconds to minutes.
    static let startBounds: [Double] = [0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300]
    /// Event-loop lag: microseconds to a second.
    static let lagBounds: [Double] = [0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1]
}
