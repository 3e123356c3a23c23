/// A swarmd on another host, reached as `docker -H ssh://…` reaches dockerd:
/// swarmctl runs `ssh [user@]host swarmctl dial-stdio [--socket PATH]` and
/// speaks the control protocol over ssh's stdin and stdout. Transport and
/// authentication are SSH's; on the host, `dial-stdio` applies the control
/// socket's usual peer checks to the SSH user.
public struct RemoteHost: Equatable, Sendable, CustomStringConvertible {
    public var user: String?
    /// A name, an IPv4 address or an IPv6 address (without brackets).
    public var host: String
    public var port: UInt16?
    /// The control socket on that host; nil: its swarmctl's default (`SWARM_SOCKET` there, or the built-in path).
    public var socket: String?

    public init(user: String? = nil, host: String, port: UInt16? = nil, socket: String? = nil) {
        self.user = user
        self.host = host
        self.port = port
        self.socket = socket
    }

    public static let scheme = "ssh://"

    public struct ParseError: Error, Equatable, CustomStringConvertible {
        public var text: String
        public var why: String
        public var description: String {
            "--host '\(TerminalText.escape(text))': \(why) (expected ssh://[user@]host[:port][/path/to/swarmd.sock])"
        }
    }

    /// `ssh://[user@]host[:port][/path]`; an IPv6 address in brackets (`ssh://[::1]:2222`).
    public static func parse(_ text: String) throws -> RemoteHost {
        func fail(_ why: String) -> ParseError { ParseError(text: text, why: why) }
        guard text.hasPrefix(scheme) else { throw fail("only ssh:// hosts are supported") }
        var rest = Substring(text.dropFirst(scheme.count))
        guard !rest.utf8.contains(where: { $0 < 0x21 || $0 == 0x7f }) else { throw fail("spaces and control characters are not allowed") }
        var socket: String?
        if let slash = rest.firstIndex(of: "/") {
            socket = String(rest[slash...])
            rest = rest[..<slash]
            if socket == "/" { socket = nil }
        }
        var user: String?
        if let at = rest.lastIndex(of: "@") {
            user = String(rest[..<at])
            rest = rest[rest.index(after: at)...]
            guard let u = user, !u.isEmpty else { throw fail("an empty user name") }
            // ssh would read a leading "-" as an option.
            guard !u.hasPrefix("-"), !u.contains(":") else { throw fail("'\(u)' is not a user name") }
        }
        var host: Substring
        var portText: Substring?
        if rest.hasPrefix("[") {
            guard let close = rest.firstIndex(of: "]") else { throw fail("an IPv6 address without its closing ']'") }
            host = rest[rest.index(after: rest.startIndex)..<close]
            let after = rest[rest.index(after: close)...]
            if !after.isEmpty {
                guard after.hasPrefix(":") else { throw fail("unexpected '\(after)' after the address") }
                portText = after.dropFirst()
            }
            guard host.contains(":") else { throw fail("'[\(host)]' is not an IPv6 address") }
        } else {
            let parts = rest.split(separator: ":", omittingEmptySubsequences: false)
            guard parts.count <= 2 else { throw fail("an IPv6 address must be in brackets: ssh://[::1]") }
            host = parts[0]
            if parts.count == 2 { portText = parts[1] }
        }
        guard !host.isEmpty else { throw fail("no host") }
        guard !host.hasPrefix("-") else { throw fail("a host may not start with '-'") }
        var port: UInt16?
        if let portText {
            guard let p = UInt16(portText), p > 0 else { throw fail("'\(portText)' is not a port (1-65535)") }
            port = p
        }
        return RemoteHost(user: user, host: String(host), port: port, socket: socket)
    }

    /// A comma-separated list of hosts, each as `parse` takes it; duplicates refused.
    public static func parseList(_ text: String) throws -> [RemoteHost] {
        let words = text.split(separator: ",", omittingEmptySubsequences: false).map { String($0).trimmingASCIISpaces }
        guard !words.contains(where: \.isEmpty) else { throw ParseError(text: text, why: "an empty host in the list") }
        let hosts = try words.map(parse)
        var seen = Set<String>()
        for h in hosts where !seen.insert(h.description).inserted {
            throw ParseError(text: text, why: "\(h) is listed twice")
        }
        return hosts
    }

    public var description: String {
        var s = RemoteHost.scheme
        if let user { s += user + "@" }
        s += host.contains(":") ? "[\(host)]" : host
        if let port { s += ":\(port)" }
        if let socket { s += socket }
        return s
    }

    /// The argv to run: `ssh` (or the words of `$SWARM_SSH`), the port, `--`,
    /// the destination, and the remote command as one string for the
    /// remote shell, each word single-quoted.
    public func sshArguments(ssh: [String], remoteSwarmctl: String) -> [String] {
        var argv = ssh
        if let port { argv += ["-p", String(port)] }
        argv += ["-T", "-o", "BatchMode=yes", "--", (user.map { $0 + "@" } ?? "") + host]
        var remote = [remoteSwarmctl, "dial-stdio"]
        if let socket { remote += ["--socket", socket] }
        argv.append(remote.map(RemoteHost.shellQuoted).joined(separator: " "))
        return argv
    }

    /// A word the remote shell (sh, bash, zsh) reads back unchanged.
    public static func shellQuoted(_ word: String) -> String {
        if !word.isEmpty, word.utf8.allSatisfy({ b in
            (b >= 0x61 && b <= 0x7a) || (b >= 0x41 && b <= 0x5a) || (b >= 0x30 && b <= 0x39) || "/._-+=:,@".utf8.contains(b)
        }) { return word }
        return "'" + word.replacingAll("'", with: "'\\''") + "'"
    }
}

extension String {
    fileprivate var trimmingASCIISpaces: String {
        var s = Substring(self)
        while s.first == " " || s.first == "\t" { s = s.dropFirst() }
        while s.last == " " || s.last == "\t" { s = s.dropLast() }
        return String(s)
    }

    /// Foundation-free replacement of every `target` by `replacement`.
    fileprivate func replacingAll(_ target: Character, with replacement: String) -> String {
        var out = ""
        for c in self { if c == target { out += replacement } else { out.append(c) } }
        return out
    }
}
