/// The `.env` format of docker compose, python-dotenv and foreman, the part
/// they agree on:
///
///     # a comment                 blank lines and comment lines are skipped
///     KEY=value                   unquoted: to the end of the line, trimmed;
///     KEY=value # comment         `#` starts a comment only after a space or tab
///     export KEY=value            `export ` is allowed (and ignored)
///     KEY = value                 spaces around `=` are allowed
///     KEY=                        empty value
///     KEY='literal $x \n'         single quotes: exactly what is between them
///     KEY="a\nb \"q\" \\ \$"      double quotes: \n \r \t \" \\ \$ are escapes,
///                                 any other backslash is kept as written
///     KEY="line one               both kinds of quotes may span lines
///     line two"
///
/// No `$VAR` expansion: values are taken literally (a `$` stays a `$`).
enum DotEnv {
    struct Entry: Equatable {
        var key: String
        var value: String
        /// 1-based line of the key.
        var line: Int
    }

    struct Problem: Error, Equatable {
        var line: Int
        var message: String
    }

    static func parse(_ text: String) -> Result<[Entry], Problem> {
        var s = Array(text.unicodeScalars)
        if s.first == "\u{FEFF}" { s.removeFirst() }
        var entries: [Entry] = []
        var i = 0
        var line = 1
        func at(_ k: Int) -> Unicode.Scalar? { k < s.count ? s[k] : nil }
        func isBlank(_ c: Unicode.Scalar?) -> Bool { c == " " || c == "\t" || (c == "\r" && (at(i + 1) == "\n" || i + 1 == s.count)) }
        func skipBlanks() { while i < s.count && isBlank(s[i]) { i += 1 } }
        func atLineEnd() -> Bool { i == s.count || s[i] == "\n" }
        func skipComment() { while i < s.count && s[i] != "\n" { i += 1 } }

        while i < s.count {
            skipBlanks()
            if atLineEnd() {
                if i < s.count { i += 1; line += 1 }
                continue
            }
            if s[i] == "#" { skipComment(); continue }
            let keyLine = line
            // Values may be secrets: messages quote keys, never the rest of a line.
            var end = i
            while end < s.count && s[end] != "\n" && s[end] != "=" { end += 1 }
            guard at(end) == "=" else {
                return .failure(Problem(line: keyLine, message: "expected KEY=value: this line has no '='"))
            }
            var keyStart = i
            var key = word(s, &i)
            if key == "export" && isBlank(at(i)) {
                skipBlanks()
                if !atLineEnd() && s[i] != "=" { keyStart = i; key = word(s, &i) }
            }
            guard !key.isEmpty else {
                return .failure(Problem(line: keyLine, message: "expected KEY=value: no key before the '='"))
            }
            skipBlanks()
            guard isValidEnvName(key), at(i) == "=" else {
                let shown = excerpt(Array(s[keyStart..<end]))
                return .failure(Problem(line: keyLine, message: "'\(shown)' is not a valid environment variable name (use A-Z, a-z, 0-9 and _, not starting with a digit)"))
            }
            i += 1
            skipBlanks()
            var value = ""
            if let q = at(i), q == "'" || q == "\"" {
                i += 1
                var closed = false
                while i < s.count {
                    let c = s[i]
                    if c == q { closed = true; i += 1; break }
                    if c == "\n" { line += 1 }
                    if q == "\"" && c == "\\", let next = at(i + 1) {
                        switch next {
                        case "n": value.unicodeScalars.append("\n")
                        case "r": value.unicodeScalars.append("\r")
                        case "t": value.unicodeScalars.append("\t")
                        case "\"", "\\", "$": value.unicodeScalars.append(next)
                        default: value.unicodeScalars.append(c); value.unicodeScalars.append(next); if next == "\n" { line += 1 }
                        }
                        i += 2
                        continue
                    }
                    value.unicodeScalars.append(c)
                    i += 1
                }
                guard closed else {
                    let kind = q == "'" ? "single" : "double"
                    return .failure(Problem(line: keyLine, message: "the \(kind)-quoted value of '\(key)' has no closing \(q == "'" ? "'" : "\"")"))
                }
                skipBlanks()
                if at(i) == "#" { skipComment() }
                guard atLineEnd() else {
                    // A quote left open swallows the lines below it up to the next quote: say where it opened.
                    let opened = line == keyLine ? "" : ", a value that opened on line \(keyLine)"
                    return .failure(Problem(line: line, message: "unexpected text after the closing quote of '\(key)'\(opened) (quote the whole value; a comment needs a '#')"))
                }
            } else {
                var end = i
                while end < s.count && s[end] != "\n" {
                    if s[end] == "#" && end > i && (s[end - 1] == " " || s[end - 1] == "\t") { break }
                    end += 1
                }
                var v = s[i..<end]
                while let l = v.last, l == " " || l == "\t" || l == "\r" { v = v.dropLast() }
                value.unicodeScalars.append(contentsOf: v)
                i = end
                skipComment()
            }
            entries.append(Entry(key: key, value: value, line: keyLine))
        }
        return .success(entries)
    }

    /// A run of scalars up to a blank, `=`, `#` or the end of the line.
    private static func word(_ s: [Unicode.Scalar], _ i: inout Int) -> String {
        var out = String.UnicodeScalarView()
        while i < s.count, !" \t\r\n=#".unicodeScalars.contains(s[i]) {
            out.append(s[i])
            i += 1
        }
        return String(out)
    }

    /// At most 40 scalars, trimmed, control characters shown as '?', for an error message.
    private static func excerpt(_ scalars: [Unicode.Scalar]) -> String {
        var v = scalars[...]
        while let l = v.last, l == " " || l == "\t" || l == "\r" { v = v.dropLast() }
        var out = String.UnicodeScalarView()
        // Control characters would reach the terminal raw.
        for c in v.prefix(40) { out.append(c.value < 0x20 || c.value == 0x7F ? "?" : c) }
        if v.count > 40 { out.append(contentsOf: "…".unicodeScalars) }
        return String(out)
    }
}
