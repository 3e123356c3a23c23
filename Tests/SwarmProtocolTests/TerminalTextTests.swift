import Foundation
@testable import SwarmProtocol
import Testing

@Suite("Escaping control characters for terminals and log files")
struct TerminalTextTests {
    @Test("plain text, tabs and other Unicode are unchanged (and not copied)")
    func plain() {
        for s in ["", "hello world", "tab\there", "ünïcødé ✓ 日本", "back\\slash \\e literal", "é (U+00E9, starts with 0xC3)", "\u{A0}nbsp"] {
            #expect(TerminalText.escape(s) == s, "\(s)")
            #expect(!TerminalText.needsEscaping(s))
        }
    }

    @Test("ESC, CR, LF, NUL, BEL, BS, other C0 and DEL become visible escapes")
    func c0() {
        #expect(TerminalText.escape("\u{1b}[2J\u{1b}[31mred") == "\\e[2J\\e[31mred")
        #expect(TerminalText.escape("a\rb") == "a\\rb")
        #expect(TerminalText.escape("a\nb") == "a\\nb")
        #expect(TerminalText.escape("\u{0}\u{7}\u{8}") == "\\0\\a\\b")
        #expect(TerminalText.escape("\u{1}\u{1f}\u{7f}") == "\\x01\\x1f\\x7f")
        #expect(TerminalText.escape("\u{0c}\u{0b}") == "\\x0c\\x0b")
        // Every C0 but tab, and DEL, is escaped; nothing printable stays below 0x20.
        for b in (UInt8(0)...0x7f) {
            let out = TerminalText.escape(String(decoding: [b], as: UTF8.self))
            let unsafe = (b < 0x20 && b != 0x09) || b == 0x7f
            #expect(out.utf8.allSatisfy { $0 >= 0x20 && $0 != 0x7f || $0 == 0x09 }, "byte \(b) -> \(out)")
            #expect(unsafe == (out.utf8.count > 1), "byte \(b) -> \(out)")
        }
    }

    @Test("C1 controls (U+0080–U+009F, e.g. the one-character CSI U+009B) are escaped; U+00A0 and up are not")
    func c1() {
        #expect(TerminalText.escape("\u{9b}31m") == "\\u{9b}31m")
        #expect(TerminalText.escape("x\u{80}\u{85}\u{9f}y") == "x\\u{80}\\u{85}\\u{9f}y")
        #expect(TerminalText.escape("\u{a0}\u{a9}\u{c0}") == "\u{a0}\u{a9}\u{c0}")
        for v in UInt32(0x80)...0x9f {
            let s = String(Character(Unicode.Scalar(v)!))
            #expect(TerminalText.escape(s).unicodeScalars.allSatisfy { $0.value < 0x80 }, "U+\(String(v, radix: 16))")
        }
    }

    @Test("a CR cannot forge a log line: the escaped line is one line and carries its prefix")
    func forgedLine() {
        let forged = "ok\r2026-12-01T00:00:00.000000Z web[0] 1 O admin logged in"
        let line = LogLine(time: "T", app: "web", slot: 1, pid: 9, stream: "stdout", text: forged).formatted
        #expect(!line.contains("\r") && !line.contains("\n"))
        #expect(line == "T web[1] 9 O ok\\r2026-12-01T00:00:00.000000Z web[0] 1 O admin logged in")
        #expect(LogLine(time: "T", app: "web", slot: 0, pid: 1, stream: "stderr", text: "\u{1b}]0;pwned\u{7}").formatted == "T web[0] 1 E \\e]0;pwned\\a")
    }

    @Test("keeping newlines: a message keeps its lines, but CR and ESC are still escaped")
    func keepNewlines() {
        #expect(TerminalText.escapeKeepingNewlines("line 1\nline 2") == "line 1\nline 2")
        #expect(TerminalText.escapeKeepingNewlines("a\r\nb\u{1b}") == "a\\r\nb\\e")
        #expect(!TerminalText.needsEscaping("a\nb", keepNewlines: true))
        #expect(TerminalText.needsEscaping("a\nb"))
    }

    @Test("JSON: DEL and C1 inside strings become \\u escapes; the value decodes the same")
    func json() throws {
        let value = ["text": "a\u{7f}b\u{9b}c\u{1b}d é"]
        let encoded = Codec.encode(value)
        let safe = TerminalText.escapeJSON(encoded)
        #expect(!safe.contains(0x7f))
        #expect(!zip(safe, safe.dropFirst()).contains { $0 == 0xC2 && (0x80...0x9f).contains($1) })
        #expect(String(decoding: safe, as: UTF8.self).contains("\\u007f") && String(decoding: safe, as: UTF8.self).contains("\\u009b"))
        #expect(try JSONDecoder().decode([String: String].self, from: Data(safe)) == value)
        let plain = Codec.encode(["a": "b"])
        #expect(TerminalText.escapeJSON(plain) == plain)
    }

    @Test("random bytes: the output never holds a control character but tab (fuzz)")
    func fuzz() {
        var rng = SystemRandomNumberGenerator()
        for _ in 0..<2000 {
            let bytes = (0..<Int.random(in: 0...40, using: &rng)).map { _ in UInt8.random(in: 0...255, using: &rng) }
            let out = TerminalText.escape(String(decoding: bytes, as: UTF8.self))
            for s in out.unicodeScalars {
                #expect(!(s.value < 0x20 && s.value != 9) && !(0x7f...0x9f).contains(s.value), "U+\(String(s.value, radix: 16)) in \(out)")
            }
        }
    }
}

@Suite("Shared names and version")
struct DefaultsTests {
    @Test("the app-name rule")
    func appNames() {
        for ok in ["web", "a", "my_app-2", String(repeating: "x", count: 64)] { #expect(AppName.isValid(ok), "\(ok)") }
        for bad in ["", "Web", "a b", "a.conf", "a/b", "all", String(repeating: "x", count: 65), "é", "\u{1b}x"] {
            #expect(!AppName.isValid(bad), "\(bad)")
        }
        #expect(AppName.isSelector("all") && AppName.isSelector("web") && !AppName.isSelector("a.conf"))
        #expect(AppName.problem("all")?.contains("reserved") == true)
        #expect(AppName.problem("\u{1b}[2J")?.contains("\\e[2J") == true, "the problem text is escaped")
    }

    @Test("version")
    func version() {
        #expect(SwarmVersion.current == "0.2.0")
    }
}

@Suite("Timestamps")
struct TimestampTests {
    @Test("RFC 3339 in UTC with microseconds, matching the C library's gmtime")
    func rfc3339() {
        #expect(Timestamp.rfc3339(nanosecondsSinceEpoch: 0) == "1970-01-01T00:00:00.000000Z")
        #expect(Timestamp.rfc3339(nanosecondsSinceEpoch: 1_796_165_079_123_456_789) == "2026-12-01T22:44:39.123456Z")
        #expect(Timestamp.rfc3339(nanosecondsSinceEpoch: 951_782_400_000_000_000) == "2000-02-29T00:00:00.000000Z")
        #expect(Timestamp.rfc3339(nanosecondsSinceEpoch: -1_000) == "1969-12-31T23:59:59.999999Z")
        // Every day of several years against gmtime_r.
        var t: Int64 = 946_684_800  // 2000-01-01
        while t < 1_900_000_000 {
            var tt = time_t(t)
            var tmv = tm()
            gmtime_r(&tt, &tmv)
            let mine = Timestamp.rfc3339(nanosecondsSinceEpoch: t * 1_000_000_000 + 5_000)
            let libc = String(format: "%04d-%02d-%02dT%02d:%02d:%02d.000005Z", tmv.tm_year + 1900, tmv.tm_mon + 1, tmv.tm_mday, tmv.tm_hour, tmv.tm_min, tmv.tm_sec)
            if mine != libc { Issue.record("\(t): \(mine) != \(libc)"); break }
            t += 86400 + 3671
        }
    }
}
