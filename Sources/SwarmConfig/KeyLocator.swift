/// Maps a key path ("socket[1].listen", "env.NODE_ENV") back to the line
/// that defines it. TOMLKit reports positions only for syntax errors, so
/// type and value errors need this to name a line.
struct KeyLocator {
    private(set) var lines: [String: Int] = [:]

    init(text: String) {
        var table: [String] = []
        var arrayCounts: [String: Int] = [:]
        var depth = 0
        var lineNumber = 0
        for rawLine in text.split(separator: "\n", omittingEmptySubsequences: false) {
            lineNumber += 1
            let line = KeyLocator.stripComment(String(rawLine))
            let trimmed = line.trimmedSpaces
            if depth > 0 {
                depth += KeyLocator.bracketBalance(trimmed)
                continue
            }
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
            depth = max(0, KeyLocator.bracketBalance(value))
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

    static func stripComment(_ line: String) -> String {
        var inString: Character?
        var escaped = false
        var out = ""
        for ch in line {
            if let q = inString {
                if escaped { escaped = false } else if ch == "\\" && q == "\"" { escaped = true } else if ch == q { inString = nil }
            } else if ch == "\"" || ch == "'" {
                inString = ch
            } else if ch == "#" {
                break
            }
            out.append(ch)
        }
        return out
    }

    static func bracketBalance(_ s: String) -> Int {
        var n = 0
        var inString: Character?
        for ch in s {
            if let q = inString { if ch == q { inString = nil } ; continue }
            if ch == "\"" || ch == "'" { inString = ch } else if ch == "[" || ch == "{" { n += 1 } else if ch == "]" || ch == "}" { n -= 1 }
        }
        return n
    }

    static func assignmentIndex(_ s: String) -> String.Index? {
        var inString: Character?
        for i in s.indices {
            let ch = s[i]
            if let q = inString { if ch == q { inString = nil } ; continue }
            if ch == "\"" || ch == "'" { inString = ch } else if ch == "=" { return i } else if ch == "[" || ch == "{" { return nil }
        }
        return nil
    }

    static func parseKey(_ s: String) -> [String] {
        var parts: [String] = []
        var current = ""
        var inString: Character?
        for ch in s {
            if let q = inString {
                if ch == q { inString = nil } else { current.append(ch) }
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
