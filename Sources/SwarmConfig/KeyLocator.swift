/// Maps a key path ("socket[1].listen", "env.NODE_ENV") back to the line
/// that defines it. TOMLKit reports positions only for syntax errors, so
/// type and value errors need this to name a line.
struct KeyLocator {
    private(set) var lines: [String: Int] = [:]
    /// The first table header with no key after its "[" or "[[" (`[=`, `[[[x]]]`, a
    /// lone `[`): toml++ asserts on these instead of reporting them (tomlplusplus#301).
    private(set) var keylessHeaderLine: Int?

    init(text: String) {
        var table: [String] = []
        var arrayCounts: [String: Int] = [:]
        var depth = 0
        var multiline: String?
        var lineNumber = 0
        // Split on "\n" scalars: as Characters, "\r\n" is one grapheme and never equals "\n".
        for rawLine in text.unicodeScalars.split(separator: "\n", omittingEmptySubsequences: false) {
            lineNumber += 1
            let continuing = depth > 0 || multiline != nil
            if !continuing && keylessHeaderLine == nil
                && KeyLocator.isKeylessHeader(lineNumber == 1 && rawLine.first == "\u{FEFF}" ? rawLine.dropFirst() : rawLine[...]) {
                keylessHeaderLine = lineNumber
            }
            let (line, balance) = KeyLocator.scan(String(String.UnicodeScalarView(rawLine)), multiline: &multiline)
            if continuing {
                depth = max(0, depth + balance)
                continue
            }
            let trimmed = line.trimmedSpaces
            if trimmed.hasPrefix("[[") && trimmed.hasSuffix("]]") {
                let name = KeyLocator.parseKey(String(trimmed.dropFirst(2).dropLast(2)))
                let joined = name.joined(separator: ".")
                let index = arrayCounts[joined, default: 0]
                arrayCounts[joined] = index + 1
                table = name.dropLast() + ["\(name.last ?? "")[\(index)]"]
                record(table, lineNumber)
                record(name, lineNumber, onlyIfAbsent: true)
                continue
            }
            if trimmed.hasPrefix("[") && trimmed.hasSuffix("]") {
                table = KeyLocator.parseKey(String(trimmed.dropFirst().dropLast()))
                record(table, lineNumber)
                continue
            }
            guard let eq = KeyLocator.assignmentIndex(trimmed) else { continue }
            let key = KeyLocator.parseKey(String(trimmed[..<eq]))
            let path = table + key
            record(path, lineNumber)
            // `a.b = 1` defines table `a` here too, unless a line above did.
            for end in stride(from: path.count - 1, to: table.count, by: -1) {
                record(Array(path[..<end]), lineNumber, onlyIfAbsent: true)
            }
            let value = String(trimmed[trimmed.index(after: eq)...]).trimmedSpaces
            if value.hasPrefix("{") {
                // Inline table: its keys live on this line.
                let inner = value.dropFirst().dropLast()
                for part in inner.split(separator: ",") {
                    if let e = KeyLocator.assignmentIndex(String(part).trimmedSpaces) {
                        let p = String(part).trimmedSpaces
                        record(path + KeyLocator.parseKey(String(p[..<e])), lineNumber)
                    }
                }
            }
            // A value left open (array, inline table, multi-line string) continues on the next lines.
            depth = max(0, balance)
        }
    }

    private mutating func record(_ path: [String], _ line: Int, onlyIfAbsent: Bool = false) {
        let key = KeyLocator.render(path)
        if onlyIfAbsent && lines[key] != nil { return }
        lines[key] = line
    }

    static func render(_ path: [String]) -> String {
        var out = ""
        for part in path {
            if part.hasSuffix("]"), let open = part.firstIndex(of: "["), open != part.startIndex {
                out += (out.isEmpty ? "" : ".") + part
            } else {
                out += (out.isEmpty ? "" : ".") + part
            }
        }
        return out
    }

    /// The line of `path`, or of its closest enclosing table.
    func line(of path: String) -> Int? {
        var p = path
        while true {
            if let l = lines[p] { return l }
            if let dot = p.lastIndex(of: ".") {
                p = String(p[..<dot])
            } else if let br = p.lastIndex(of: "["), br != p.startIndex {
                p = String(p[..<br])
            } else {
                return nil
            }
        }
    }

    /// Whether toml++ would read this line as a table header and find neither a
    /// key nor "]" where the key starts.
    static func isKeylessHeader(_ line: Substring.UnicodeScalarView) -> Bool {
        let isSpace: (Unicode.Scalar) -> Bool = { $0 == " " || $0 == "\t" }
        var rest = line.drop(while: isSpace)
        guard rest.first == "[" else { return false }
        rest = rest.dropFirst()
        let afterSpace = rest.drop(while: isSpace)
        if afterSpace.first == "[" {
            // "[ [" is reported as an error; "[[" is an array of tables.
            if afterSpace.startIndex != rest.startIndex { return false }
            rest = afterSpace.dropFirst().drop(while: isSpace)
        } else {
            rest = afterSpace
        }
        guard let c = rest.first else { return true }
        let startsKey = (c >= "a" && c <= "z") || (c >= "A" && c <= "Z") || (c >= "0" && c <= "9") || c == "_" || c == "-"
            || c == "\"" || c == "'" || c == "]"
        return !startsKey
    }

    /// One line without its comment, and its bracket balance outside
    /// strings. `multiline` carries an open multi-line string (its delimiter)
    /// from line to line.
    static func scan(_ text: String, multiline: inout String?) -> (code: String, balance: Int) {
        let chars = Array(text)
        func opens(_ delimiter: Character, at i: Int) -> Bool {
            i + 2 < chars.count && chars[i] == delimiter && chars[i + 1] == delimiter && chars[i + 2] == delimiter
        }
        var out = ""
        var balance = 0
        var single: Character?
        var i = 0
        while i < chars.count {
            let ch = chars[i]
            if let q = multiline?.first {
                if q == "\"" && ch == "\\" {
                    out.append(contentsOf: chars[i..<min(i + 2, chars.count)])
                    i += 2
                } else if opens(q, at: i) {
                    // Up to two more quotes just before the delimiter belong to the string.
                    var end = i + 3
                    while end < chars.count && end < i + 5 && chars[end] == q { end += 1 }
                    out.append(contentsOf: chars[i..<end])
                    i = end
                    multiline = nil
                } else {
                    out.append(ch)
                    i += 1
                }
                continue
            }
            if let q = single {
                if q == "\"" && ch == "\\" {
                    out.append(contentsOf: chars[i..<min(i + 2, chars.count)])
                    i += 2
                    continue
                }
                if ch == q { single = nil }
                out.append(ch)
                i += 1
                continue
            }
            if ch == "#" { break }
            if ch == "\"" || ch == "'" {
                if opens(ch, at: i) {
                    multiline = String(repeating: ch, count: 3)
                    out.append(contentsOf: chars[i..<i + 3])
                    i += 3
                    continue
                }
                single = ch
            } else if ch == "[" || ch == "{" {
                balance += 1
            } else if ch == "]" || ch == "}" {
                balance -= 1
            }
            out.append(ch)
            i += 1
        }
        return (out, balance)
    }

    static func assignmentIndex(_ s: String) -> String.Index? {
        var inString: Character?
        var escaped = false
        for i in s.indices {
            let ch = s[i]
            if let q = inString {
                if escaped { escaped = false } else if ch == "\\" && q == "\"" { escaped = true } else if ch == q { inString = nil }
                continue
            }
            if ch == "\"" || ch == "'" { inString = ch } else if ch == "=" { return i } else if ch == "[" || ch == "{" { return nil }
        }
        return nil
    }

    static func parseKey(_ s: String) -> [String] {
        var parts: [String] = []
        var current = ""
        var inString: Character?
        var escaped = false
        for ch in s {
            if let q = inString {
                if escaped {
                    escaped = false
                    current.append(ch)
                } else if ch == "\\" && q == "\"" {
                    escaped = true
                } else if ch == q {
                    inString = nil
                } else {
                    current.append(ch)
                }
            } else if ch == "\"" || ch == "'" {
                inString = ch
            } else if ch == "." {
                parts.append(current.trimmedSpaces)
                current = ""
            } else {
                current.append(ch)
            }
        }
        parts.append(current.trimmedSpaces)
        return parts
    }
}

extension String {
    var trimmedSpaces: String {
        var s = Substring(self)
        while let f = s.first, f == " " || f == "\t" || f == "\r" { s = s.dropFirst() }
        while let l = s.last, l == " " || l == "\t" || l == "\r" { s = s.dropLast() }
        return String(s)
    }
}
