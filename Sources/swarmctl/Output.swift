import SwarmProtocol
import SwarmSystem

// Everything swarmctl prints goes through these: text from swarmd (and,
// through it, from workers and config files) is escaped so no control
// character reaches the terminal raw (see `TerminalText`).

/// A line (or lines: "\n" is kept) on stdout.
func printOut(_ s: String) {
    Console.write(TerminalText.escapeKeepingNewlines(s) + "\n", to: .output)
}

/// A line (or lines) on stderr.
func printErr(_ s: String) {
    Console.write(TerminalText.escapeKeepingNewlines(s) + "\n", to: .error)
}

/// Several lines on stdout in one write.
func printLines(_ lines: [String]) {
    guard !lines.isEmpty else { return }
    Console.write(lines.map { TerminalText.escape($0) }.joined(separator: "\n") + "\n", to: .output)
}

/// A value as JSON on stdout, one line (JSON escapes C0; DEL and C1 are escaped too).
func printJSONLine<T: Encodable>(_ value: T) {
    var bytes = Codec.encode(value)
    bytes.removeLast()
    printRawJSON(bytes)
}

/// Pretty-printed JSON (`status --json`).
func printPrettyJSON<T: Encodable>(_ value: T) {
    printRawJSON(Codec.encodePretty(value))
}

private func printRawJSON(_ bytes: [UInt8]) {
    Console.write(String(decoding: TerminalText.escapeJSON(bytes) + [UInt8(ascii: "\n")], as: UTF8.self), to: .output)
}

/// `x` with `digits` decimals, rounded half away from zero ("%.1f" without Foundation).
func fixed(_ x: Double, _ digits: Int) -> String {
    guard x.isFinite else { return x.isNaN ? "nan" : (x < 0 ? "-inf" : "inf") }
    var scale = 1.0
    for _ in 0..<digits { scale *= 10 }
    let negative = x < 0
    let scaled = (abs(x) * scale).rounded(.toNearestOrAwayFromZero)
    guard scaled < 9.0e18 else { return String(x) }
    let n = UInt64(scaled)
    let whole = n / UInt64(scale)
    var text = String(whole)
    if digits > 0 {
        let frac = String(n % UInt64(scale))
        text += "." + String(repeating: "0", count: digits - frac.count) + frac
    }
    return (negative && n != 0 ? "-" : "") + text
}
