/// What swarmd tells HAProxy's `agent-check` about this host: one line,
/// decided here so the whole rule is tested without sockets.
///
/// HAProxy reads the words of the line: a weight (`75%`, relative to the
/// server's configured weight), an administrative state (`drain`: no new
/// connections; `ready`: leave drain/maint) and an operational one (`up`,
/// `down`). So a filling host comes back gradually, an emptying one is taken
/// out before it has nothing to serve, and an operator's drain empties it.
public enum AgentReply {
    /// The name HAProxy sent (`agent-send "web\n"`), or nil/empty for every app.
    public static func line(request: String?, health: (String) -> AppHealth?, appNames: [String], drained: Set<String>) -> String {
        let name = request.map(trimmed) ?? ""
        let names: [String]
        if name.isEmpty {
            names = appNames
        } else {
            guard health(name) != nil else { return "down #no app '\(printable(name))' on this host\n" }
            names = [name]
        }
        if names.isEmpty { return "down #no apps\n" }
        if names.contains(where: drained.contains) { return "drain #drained by the operator\n" }
        var ready = 0
        var wanted = 0
        for n in names {
            guard let h = health(n) else { continue }
            switch h.state {
            case .stopped, .stopping, .deleting: continue
            default:
                ready += h.ready
                wanted += h.wanted
            }
        }
        if ready == 0 { return "down #no worker ready\n" }
        // Never 0% while a worker serves (0% would drain it); never above 100% during a reload's surge.
        let percent = max(1, min(100, ready * 100 / max(1, wanted)))
        return "up ready \(percent)%\n"
    }

    static func trimmed(_ s: String) -> String {
        // By scalars: "\r\n" is one Character, equal to neither "\r" nor "\n".
        var t = Substring(s).unicodeScalars
        let space: (Unicode.Scalar) -> Bool = { $0 == " " || $0 == "\t" || $0 == "\r" || $0 == "\n" }
        while let c = t.first, space(c) { t = t.dropFirst() }
        while let c = t.last, space(c) { t = t.dropLast() }
        return String(t)
    }

    /// At most 64 printable ASCII characters: the name goes back into HAProxy's logs.
    static func printable(_ s: String) -> String {
        String(String.UnicodeScalarView(s.unicodeScalars.prefix(64).map { $0.value >= 0x20 && $0.value < 0x7f && $0 != "#" ? $0 : "?" }))
    }
}
