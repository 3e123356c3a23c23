/// The `part` lines of a streamed `status`, written directly: the same bytes
/// `Codec.encode` writes for them (sorted keys, unescaped slashes, absent
/// optionals left out), without JSONEncoder's boxing of every row and field.
/// At 4,096 workers JSONEncoder was 44 % of a status answer's cost during a
/// kill -9 storm (issue 18); `StatusPartEncodingTests` holds the two outputs
/// equal, byte for byte.
extension Codec {
    public static func encodeStatusPart(id: UInt64, app: String, workers: [WorkerStatus]) -> [UInt8] {
        var json = JSONText()
        json.bytes.reserveCapacity(160 * workers.count + 64)
        json.raw("{\"id\":")
        json.integer(id)
        json.raw(",\"kind\":\"part\",\"part\":{\"app\":")
        json.string(app)
        json.raw(",\"workers\":[")
        for (i, w) in workers.enumerated() {
            if i > 0 { json.byte(UInt8(ascii: ",")) }
            w.writeJSON(&json)
        }
        json.raw("]},\"v\":")
        json.integer(ControlProtocol.version)
        json.raw("}\n")
        return json.bytes
    }
}

extension WorkerStatus {
    /// Keys in the order JSONEncoder's `.sortedKeys` puts them.
    func writeJSON(_ json: inout JSONText) {
        json.beginObject()
        if let acceptQueue { json.key("accept_queue"); json.integer(acceptQueue) }
        if let connections { json.key("connections"); json.integer(connections) }
        if let cpuPercent, cpuPercent.isFinite { json.key("cpu_percent"); json.number(cpuPercent) }
        if let cpuPinned { json.key("cpu_pinned"); json.integer(cpuPinned) }
        if let cpuSeconds, cpuSeconds.isFinite { json.key("cpu_seconds"); json.number(cpuSeconds) }
        if let cpuShare, cpuShare.isFinite { json.key("cpu_share"); json.number(cpuShare) }
        json.key("generation"); json.integer(generation)
        if let health { json.key("health"); json.string(health) }
        if let lastExit { json.key("last_exit"); json.string(lastExit) }
        if let lastProbe { json.key("last_probe"); json.string(lastProbe) }
        if let pid { json.key("pid"); json.integer(pid) }
        json.key("restarts"); json.integer(restarts)
        if let rssBytes { json.key("rss_bytes"); json.integer(rssBytes) }
        json.key("slot"); json.integer(slot)
        json.key("state"); json.string(state)
        if let statusText { json.key("status_text"); json.string(statusText) }
        // Never NaN or infinite in practice; JSON has no spelling for either.
        json.key("uptime_s"); json.number(uptimeS.isFinite ? uptimeS : 0)
        json.byte(UInt8(ascii: "}"))
    }
}

/// Compact JSON text as JSONEncoder writes it (with `.withoutEscapingSlashes`).
struct JSONText {
    var bytes: [UInt8] = []

    mutating func byte(_ b: UInt8) { bytes.append(b) }

    mutating func raw(_ s: StaticString) {
        s.withUTF8Buffer { bytes.append(contentsOf: $0) }
    }

    mutating func integer<T: BinaryInteger>(_ value: T) {
        bytes.append(contentsOf: String(value).utf8)
    }

    /// Swift's shortest round-trip spelling without a trailing `.0`: what
    /// JSONEncoder writes for a Double (held equal over 40,000 values, random
    /// bit patterns included).
    mutating func number(_ value: Double) {
        var text = value.description
        if text.hasSuffix(".0") { text.removeLast(2) }
        bytes.append(contentsOf: text.utf8)
    }

    /// `"` and `\` escaped, the short forms for \b \t \n \f \r, other
    /// characters below U+0020 as `\u00xx`; everything else as UTF-8.
    mutating func string(_ s: String) {
        bytes.append(UInt8(ascii: "\""))
        for b in s.utf8 {
            switch b {
            case UInt8(ascii: "\""): bytes.append(UInt8(ascii: "\\")); bytes.append(b)
            case UInt8(ascii: "\\"): bytes.append(UInt8(ascii: "\\")); bytes.append(b)
            case 0x08: bytes.append(UInt8(ascii: "\\")); bytes.append(UInt8(ascii: "b"))
            case 0x09: bytes.append(UInt8(ascii: "\\")); bytes.append(UInt8(ascii: "t"))
            case 0x0A: bytes.append(UInt8(ascii: "\\")); bytes.append(UInt8(ascii: "n"))
            case 0x0C: bytes.append(UInt8(ascii: "\\")); bytes.append(UInt8(ascii: "f"))
            case 0x0D: bytes.append(UInt8(ascii: "\\")); bytes.append(UInt8(ascii: "r"))
            case 0..<0x20:
                let digits: StaticString = "0123456789abcdef"
                raw("\\u00")
                digits.withUTF8Buffer { d in
                    bytes.append(d[Int(b >> 4)])
                    bytes.append(d[Int(b & 0xF)])
                }
            default: bytes.append(b)
            }
        }
        bytes.append(UInt8(ascii: "\""))
    }

    /// In an object just begun: its first member needs no comma.
    private var atFirstMember = false

    mutating func beginObject() {
        bytes.append(UInt8(ascii: "{"))
        atFirstMember = true
    }

    mutating func key(_ name: StaticString) {
        if !atFirstMember { bytes.append(UInt8(ascii: ",")) }
        atFirstMember = false
        bytes.append(UInt8(ascii: "\""))
        raw(name)
        raw("\":")
    }
}
