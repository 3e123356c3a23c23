// FoundationEssentials where it exists: swarmctl then does not load all of
// Foundation and ICU at every start (issue 18), and JSON is all we need.
#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

public enum FrameError: Error, Equatable, CustomStringConvertible {
    case tooLarge(limit: Int)
    case malformed(String)
    case unsupportedVersion(Int)

    public var description: String {
        switch self {
        case let .tooLarge(limit): return "message larger than \(limit) bytes"
        case let .malformed(why): return "malformed message: \(why)"
        case let .unsupportedVersion(v): return "unsupported protocol version \(v) (this swarmd speaks \(ControlProtocol.version))"
        }
    }
}

/// Splits a byte stream into newline-terminated frames, refusing any frame
/// longer than the limit before buffering it whole.
public struct FrameReader: Sendable {
    public let limit: Int
    private var buffer: [UInt8] = []
    /// Where the unread bytes start: frames are sliced off the front without
    /// moving the rest, so a batch of N pipelined frames costs O(bytes), not O(N × bytes).
    private var start = 0
    private var scanFrom = 0

    public init(limit: Int = ControlProtocol.maxMessageSize) { self.limit = limit }

    /// Bytes received but not yet returned as a frame.
    public var pendingCount: Int { buffer.count - start }

    public mutating func append(_ bytes: some Collection<UInt8>) {
        if start > 0 && start >= buffer.count / 2 {
            buffer.removeSubrange(..<start)
            scanFrom -= start
            start = 0
        }
        buffer.append(contentsOf: bytes)
    }

    /// The next complete frame (without its newline), nil if none yet.
    public mutating func next() throws(FrameError) -> [UInt8]? {
        if let nl = buffer[max(scanFrom, start)...].firstIndex(of: UInt8(ascii: "\n")) {
            let frame = Array(buffer[start..<nl])
            start = nl + 1
            scanFrom = start
            if start == buffer.count {
                buffer.removeAll(keepingCapacity: true)
                start = 0
                scanFrom = 0
            }
            if frame.count > limit { throw .tooLarge(limit: limit) }
            return frame
        }
        scanFrom = buffer.count
        if pendingCount > limit { throw .tooLarge(limit: limit) }
        return nil
    }

    /// Whether a complete frame is buffered.
    public var hasFrame: Bool { buffer[max(scanFrom, start)...].contains(UInt8(ascii: "\n")) }
}

public enum Codec {
    /// Deepest nesting of arrays and objects a frame may have; our messages
    /// nest 5 deep. Checked before JSONDecoder sees the bytes: Foundation's
    /// decoder (Swift 6.3) traps when its own limit of 512 is passed on the
    /// last byte of the input (513 "["), so one short line would kill swarmd.
    static let maxNesting = 64

    static func isNestedTooDeep(_ frame: [UInt8]) -> Bool {
        var depth = 0
        var inString = false
        var escaped = false
        for byte in frame {
            if inString {
                if escaped { escaped = false } else if byte == UInt8(ascii: "\\") { escaped = true } else if byte == UInt8(ascii: "\"") { inString = false }
            } else if byte == UInt8(ascii: "\"") {
                inString = true
            } else if byte == UInt8(ascii: "[") || byte == UInt8(ascii: "{") {
                depth += 1
                if depth > maxNesting { return true }
            } else if byte == UInt8(ascii: "]") || byte == UInt8(ascii: "}") {
                depth = max(0, depth - 1)
            }
        }
        return false
    }

    public static func encode<T: Encodable>(_ value: T) -> [UInt8] {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        // Encoding our own value types cannot fail.
        var bytes = Array(try! encoder.encode(value))
        bytes.append(UInt8(ascii: "\n"))
        return bytes
    }

    /// Foundation reports a string holding an unpaired `\\uD800`–`\\uDFFF` escape
    /// like a number that does not fit, without a coding path: find the key
    /// whose value holds one, so the error can name it.
    static func fieldWithLoneSurrogate(_ frame: [UInt8]) -> String? {
        func hex(_ b: UInt8) -> UInt8? {
            switch b {
            case UInt8(ascii: "0")...UInt8(ascii: "9"): return b - UInt8(ascii: "0")
            case UInt8(ascii: "a")...UInt8(ascii: "f"): return b - UInt8(ascii: "a") + 10
            case UInt8(ascii: "A")...UInt8(ascii: "F"): return b - UInt8(ascii: "A") + 10
            default: return nil
            }
        }
        func unit(at i: Int) -> UInt16? {
            guard i + 5 < frame.count, frame[i] == UInt8(ascii: "\\"), frame[i + 1] == UInt8(ascii: "u") else { return nil }
            var v: UInt16 = 0
            for k in 2..<6 { guard let h = hex(frame[i + k]) else { return nil }; v = v << 4 | UInt16(h) }
            return v
        }
        var i = 0
        var lastKey: String?
        var inString = false
        var stringStart = 0
        while i < frame.count {
            let b = frame[i]
            if inString {
                if b == UInt8(ascii: "\\") {
                    if let u = unit(at: i), (0xD800...0xDFFF).contains(u) {
                        let paired = u < 0xDC00 && (unit(at: i + 6).map { (0xDC00...0xDFFF).contains($0) } ?? false)
                        if !paired { return lastKey ?? "?" }
                        i += 12
                        continue
                    }
                    i += 2
                    continue
                }
                if b == UInt8(ascii: "\"") {
                    inString = false
                    // A string followed by ':' is a key.
                    var j = i + 1
                    while j < frame.count, frame[j] == UInt8(ascii: " ") { j += 1 }
                    if j < frame.count, frame[j] == UInt8(ascii: ":") {
                        lastKey = String(decoding: frame[(stringStart + 1)..<i], as: UTF8.self)
                    }
                }
            } else if b == UInt8(ascii: "\"") {
                inString = true
                stringStart = i
            }
            i += 1
        }
        return nil
    }

    public static func decodeRequest(_ frame: [UInt8]) throws(FrameError) -> Request {
        if isNestedTooDeep(frame) { throw .malformed("nested deeper than \(maxNesting) levels") }
        let data = Data(frame)
        // Check the version first so an old or new client gets a precise answer.
        struct Envelope: Decodable { var v: Int? }
        guard let envelope = try? JSONDecoder().decode(Envelope.self, from: data) else {
            throw .malformed("not a JSON object")
        }
        guard let v = envelope.v else { throw .malformed("missing field 'v' (protocol version)") }
        guard v == ControlProtocol.version else { throw .unsupportedVersion(v) }
        do {
            return try JSONDecoder().decode(Request.self, from: data)
        } catch let DecodingError.keyNotFound(key, _) {
            throw .malformed("missing field '\(key.stringValue)'")
        } catch let DecodingError.typeMismatch(_, ctx) {
            throw .malformed("wrong type for field '\(ctx.codingPath.map(\.stringValue).joined(separator: "."))'")
        } catch let DecodingError.dataCorrupted(ctx) {
            let path = ctx.codingPath.map(\.stringValue).joined(separator: ".")
            // The envelope parsed, so the JSON is valid: Foundation reports a number that does
            // not fit its field (1.5 or -1 for an integer) this way, without a coding path.
            if path.isEmpty, let field = fieldWithLoneSurrogate(frame) {
                throw .malformed("invalid value for field '\(field)': a lone UTF-16 surrogate escape is not a character")
            }
            throw .malformed(path.isEmpty ? "a number does not fit its field" : "invalid value for field '\(path)'")
        } catch {
            throw .malformed("\(error)")
        }
    }

    public static func decodeResponse(_ frame: [UInt8]) throws(FrameError) -> Response {
        if isNestedTooDeep(frame) { throw .malformed("cannot decode response: nested deeper than \(maxNesting) levels") }
        do {
            return try JSONDecoder().decode(Response.self, from: Data(frame))
        } catch {
            throw .malformed("cannot decode response: \(error)")
        }
    }

    /// What `swarmctl status --json` prints, read back (the fleet's canary watch).
    public static func decodeStatusReport(_ bytes: [UInt8]) throws(FrameError) -> StatusReport {
        if isNestedTooDeep(bytes) { throw .malformed("cannot decode status: nested deeper than \(maxNesting) levels") }
        do {
            return try JSONDecoder().decode(StatusReport.self, from: Data(bytes))
        } catch {
            throw .malformed("cannot decode status: \(error)")
        }
    }

    /// Best effort id of a frame that failed to decode, so the error reply can carry it.
    public static func peekID(_ frame: [UInt8]) -> UInt64 {
        struct Envelope: Decodable { var id: UInt64? }
        if isNestedTooDeep(frame) { return 0 }
        return (try? JSONDecoder().decode(Envelope.self, from: Data(frame)))?.id ?? 0
    }
}
