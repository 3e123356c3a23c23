/// Text from workers (log lines, `STATUS=`), from configs and from swarmd
/// made safe to print on a terminal or to write into a log file.
///
/// A worker controls its output, its STATUS= line and, through them, what
/// an operator's terminal receives: ESC starts a control sequence (clear the
/// screen, recolour, retitle the window, on some terminals write a file), a
/// bare CR returns to the start of the line so the rest of it overprints the
/// prefix swarm wrote (a forged, legitimate-looking line), and the C1 range
/// (U+0080–U+009F, e.g. U+009B, a one-character CSI) does the same on
/// terminals that honour it. Those characters are shown as visible escapes
/// instead: `\e`-style C escapes for the common ones, `\xNN` for the other C0
/// controls and DEL, `\u{NN}` for C1. Tab stays; everything else (all other
/// Unicode, backslashes) is left exactly as it was.
public enum TerminalText {
    /// Every control character escaped, newlines too: for one field or one
    /// log line, which must print as exactly one line.
    public static func escape(_ text: String) -> String {
        escape(text, keepNewlines: false)
    }

    /// As `escape`, but "\n" stays a line break: for a multi-line message
    /// swarm composed. CR is still escaped, so no line can be overprinted.
    public static func escapeKeepingNewlines(_ text: String) -> String {
        escape(text, keepNewlines: true)
    }

    /// Whether `escape` would change anything.
    public static func needsEscaping(_ text: String, keepNewlines: Bool = false) -> Bool {
        var previous: UInt8 = 0
        for b in text.utf8 {
            if isUnsafeASCII(b, keepNewlines: keepNewlines) { return true }
            if previous == 0xC2 && b >= 0x80 && b <= 0x9F { return true }
            previous = b
        }
        return false
    }

    static func isUnsafeASCII(_ b: UInt8, keepNewlines: Bool) -> Bool {
        (b < 0x20 && b != 0x09 && !(keepNewlines && b == 0x0A)) || b == 0x7F
    }

    static func escape(_ text: String, keepNewlines: Bool) -> String {
        // Most text needs nothing: give it back without copying.
        guard needsEscaping(text, keepNewlines: keepNewlines) else { return text }
        var out: [UInt8] = []
        out.reserveCapacity(text.utf8.count + 16)
        var iterator = text.utf8.makeIterator()
        var pending: UInt8?
        while let b = pending ?? iterator.next() {
            pending = nil
            if isUnsafeASCII(b, keepNewlines: keepNewlines) {
                out.append(contentsOf: escapeSequence(b).utf8)
            } else if b == 0xC2, let next = iterator.next() {
                // U+0080–U+009F is 0xC2 0x80–0x9F in UTF-8.
                if next >= 0x80 && next <= 0x9F {
                    out.append(contentsOf: "\\u{\(hex(next))}".utf8)
                } else {
                    out.append(b)
                    pending = next
                }
            } else {
                out.append(b)
            }
        }
        return String(decoding: out, as: UTF8.self)
    }

    static func escapeSequence(_ b: UInt8) -> String {
        switch b {
        case 0x0A: return "\\n"
        case 0x0D: return "\\r"
        case 0x1B: return "\\e"
        case 0x00: return "\\0"
        case 0x08: return "\\b"
        case 0x07: return "\\a"
        default: return "\\x" + hex(b)
        }
    }

    static func hex(_ b: UInt8) -> String {
        let digits = Array("0123456789abcdef")
        return String([digits[Int(b >> 4)], digits[Int(b & 0xF)]])
    }

    /// JSON text (as JSONEncoder writes it) with DEL and C1 characters inside
    /// its strings written as `\u007f` / `\u0080`…`\u009f`: the same JSON value,
    /// but safe on a terminal (JSONEncoder escapes only U+0000–U+001F). These
    /// characters cannot occur outside strings in valid JSON.
    public static func escapeJSON(_ json: [UInt8]) -> [UInt8] {
        var needs = false
        var previous: UInt8 = 0
        for b in json {
            if b == 0x7F || (previous == 0xC2 && b >= 0x80 && b <= 0x9F) {
                needs = true
                break
            }
            previous = b
        }
        guard needs else { return json }
        var out: [UInt8] = []
        out.reserveCapacity(json.count + 16)
        var i = 0
        while i < json.count {
            let b = json[i]
            if b == 0x7F {
                out.append(contentsOf: "\\u007f".utf8)
            } else if b == 0xC2, i + 1 < json.count, json[i + 1] >= 0x80, json[i + 1] <= 0x9F {
                out.append(contentsOf: "\\u00\(hex(json[i + 1]))".utf8)
                i += 1
            } else {
                out.append(b)
            }
            i += 1
        }
        return out
    }

    public static func escapeJSON(_ json: String) -> String {
        String(decoding: escapeJSON(Array(json.utf8)), as: UTF8.self)
    }
}
