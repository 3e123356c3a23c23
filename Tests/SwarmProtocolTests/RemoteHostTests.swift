import SwarmProtocol
import Testing

@Suite("--host ssh://… addresses")
struct RemoteHostTests {
    @Test("what parses, and what it means", arguments: [
        ("ssh://web1", RemoteHost(host: "web1")),
        ("ssh://deploy@web1", RemoteHost(user: "deploy", host: "web1")),
        ("ssh://deploy@web1:2222", RemoteHost(user: "deploy", host: "web1", port: 2222)),
        ("ssh://10.0.0.5/run/swarm/swarmd.sock", RemoteHost(host: "10.0.0.5", socket: "/run/swarm/swarmd.sock")),
        ("ssh://root@[fd00::5]:22/tmp/s.sock", RemoteHost(user: "root", host: "fd00::5", port: 22, socket: "/tmp/s.sock")),
        ("ssh://[::1]", RemoteHost(host: "::1")),
        ("ssh://web1/", RemoteHost(host: "web1")),
    ])
    func parses(text: String, expected: RemoteHost) throws {
        let h = try RemoteHost.parse(text)
        #expect(h == expected)
        #expect(try RemoteHost.parse(h.description) == h, "description round-trips: \(h)")
    }

    @Test("what is refused, and the message says why", arguments: [
        ("web1", "only ssh://"),
        ("http://web1", "only ssh://"),
        ("ssh://", "no host"),
        ("ssh://@web1", "empty user"),
        ("ssh://-oProxyCommand=x", "may not start with '-'"),
        ("ssh://-x@web1", "not a user name"),
        ("ssh://web1:0", "not a port"),
        ("ssh://web1:70000", "not a port"),
        ("ssh://web1:ssh", "not a port"),
        ("ssh://::1", "in brackets"),
        ("ssh://[::1", "closing ']'"),
        ("ssh://[web1]", "not an IPv6"),
        ("ssh://[::1]x", "unexpected"),
        ("ssh://web 1", "spaces"),
        ("ssh://web1\u{1b}[2J", "control characters"),
    ])
    func refuses(text: String, why: String) {
        do {
            let h = try RemoteHost.parse(text)
            Issue.record("'\(text)' parsed as \(h)")
        } catch let e as RemoteHost.ParseError {
            #expect(e.description.contains(why), "\(e)")
            #expect(!e.description.contains("\u{1b}"), "escaped: \(e)")
        } catch {
            Issue.record("\(error)")
        }
    }

    @Test("a list: comma-separated, spaces allowed, no empty entry, no duplicate")
    func lists() throws {
        #expect(try RemoteHost.parseList("ssh://a, ssh://b:2222,ssh://c").map(\.host) == ["a", "b", "c"])
        #expect(throws: RemoteHost.ParseError.self) { try RemoteHost.parseList("ssh://a,,ssh://b") }
        #expect(throws: RemoteHost.ParseError.self) { try RemoteHost.parseList("ssh://a,ssh://a") }
        #expect(throws: RemoteHost.ParseError.self) { try RemoteHost.parseList("ssh://a,b") }
    }

    @Test("the ssh argv: port, batch mode, '--' before the destination, the remote command quoted for its shell")
    func sshArgv() throws {
        let h = try RemoteHost.parse("ssh://deploy@web1:2222/srv/it's/s.sock")
        let argv = h.sshArguments(ssh: ["ssh", "-F", "fleet.conf"], remoteSwarmctl: "/opt/swarm/bin/swarmctl")
        #expect(argv == ["ssh", "-F", "fleet.conf", "-p", "2222", "-T", "-o", "BatchMode=yes", "--", "deploy@web1",
                         "/opt/swarm/bin/swarmctl dial-stdio --socket '/srv/it'\\''s/s.sock'"])
        #expect(RemoteHost.shellQuoted("it's") == "'it'\\''s'")
        #expect(RemoteHost.shellQuoted("$(reboot)") == "'$(reboot)'")
        #expect(RemoteHost.shellQuoted("") == "''")
        let plain = try RemoteHost.parse("ssh://web1").sshArguments(ssh: ["ssh"], remoteSwarmctl: "swarmctl")
        #expect(plain == ["ssh", "-T", "-o", "BatchMode=yes", "--", "web1", "swarmctl dial-stdio"])
    }
}
