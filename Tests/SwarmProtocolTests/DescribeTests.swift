import Foundation
import SwarmProtocol
import Testing

@Suite struct SecretMaskTests {
    @Test(arguments: ["DB_PASSWORD", "password", "MYSQL_PASSWD", "AWS_SECRET_ACCESS_KEY", "GITHUB_TOKEN", "api_key", "STRIPE_KEY",
                      "GOOGLE_APPLICATION_CREDENTIALS", "SSH_PRIVATE_KEY", "BASIC_AUTH", "ClientSecret"])
    func secretKeysAreMaskedWhole(key: String) {
        let e = SecretMask.entry(key: key, value: "hunter2")
        #expect(e.value == SecretMask.mask && e.masked, "\(key)")
    }

    @Test(arguments: ["PORT", "PATH", "NODE_ENV", "HOME", "PWD", "LANG", "WORKERS"])
    func otherKeysAreShown(key: String) {
        #expect(SecretMask.entry(key: key, value: "plain value") == EnvEntry(key: key, value: "plain value", masked: false))
    }

    @Test func anEmptySecretStaysEmpty() {
        #expect(SecretMask.entry(key: "TOKEN", value: "") == EnvEntry(key: "TOKEN", value: "", masked: false))
    }

    @Test(arguments: [
        ("postgres://admin:s3cr3t@db:5432/app", "postgres://admin:********@db:5432/app"),
        ("https://abc123@o1.ingest.sentry.io/42", "https://********@o1.ingest.sentry.io/42"),
        ("redis://:pw@r1:6379,redis://u:pw2@r2", "redis://:********@r1:6379,redis://u:********@r2"),
        ("mysql://user:p@ss@host/db", "mysql://user:********@host/db"),
        ("https://example.com/a@b", "https://example.com/a@b"),
        ("http://host:8080/path?q=1", "http://host:8080/path?q=1"),
        ("no url here", "no url here"),
        ("://@x", "://@x"),
    ])
    func urlUserinfoIsMasked(input: String, expected: String) {
        #expect(SecretMask.maskingUserinfo(input) == expected)
        let e = SecretMask.entry(key: "DATABASE_URL", value: input)
        #expect(e.value == expected && e.masked == (input != expected))
    }

    @Test func argumentsHideSecretOptionsAndURLPasswords() {
        let argv = ["/usr/bin/server", "--port", "80", "--api-token", "t0k", "--password=pw", "DB_SECRET=x",
                    "--db", "postgres://u:pw@h/d", "--token", "--verbose", "token"]
        #expect(SecretMask.arguments(argv) == ["/usr/bin/server", "--port", "80", "--api-token", "********", "--password=********",
                                               "DB_SECRET=********", "--db", "postgres://u:********@h/d", "--token", "--verbose", "token"])
        #expect(!SecretMask.arguments(argv).joined().contains("pw"))
    }
}

@Suite struct SignalNameTests {
    @Test(arguments: [("TERM", 15), ("term", 15), ("SIGTERM", 15), ("sigkill", 9), ("HUP", 1), ("USR1", 10), ("usr2", 12),
                      ("TTIN", 21), ("WINCH", 28), ("15", 15), ("9", 9), ("1", 1), ("31", 31), ("34", 34), ("64", 64),
                      ("RTMIN", 34), ("RTMIN+2", 36), ("SIGRTMAX", 64), ("RTMAX-1", 63), ("IOT", 6)])
    func valid(text: String, number: Int32) {
        #expect(SignalName.parse(text) == .success(number))
    }

    @Test(arguments: ["", "0", "32", "33", "65", "999", "0015", "-9", "TERMINATE", "SIG", "RTMIN+31", "RTMAX+1", "RTMIN-1", "15x", "9 "])
    func invalid(text: String) {
        guard case let .failure(e) = SignalName.parse(text) else { Issue.record("'\(text)' was accepted"); return }
        #expect(e.text == text)
    }

    @Test func names() {
        #expect(SignalName.name(of: 15) == "SIGTERM")
        #expect(SignalName.name(of: 6) == "SIGABRT")
        #expect(SignalName.name(of: 29) == "SIGIO")
        #expect(SignalName.name(of: 34) == "SIGRTMIN")
        #expect(SignalName.name(of: 40) == "SIGRTMIN+6")
        // Every number a name parses to names itself back to a name that parses to the same number.
        for (name, n) in SignalName.table {
            #expect(SignalName.parse(SignalName.name(of: n)) == .success(n), "\(name)")
        }
    }
}

@Suite struct DescribeMessageTests {
    @Test func theDescriptionRoundTripsWithDocumentedKeys() throws {
        var d = AppDescription(name: "web", state: "running", generation: 2, config: "/etc/swarm/web.conf", command: ["/bin/app", "--token", "********"],
                               executable: "/bin/app", cwd: "/srv", inheritEnv: true, envFiles: ["/srv/.env"],
                               env: [EnvEntry(key: "A", value: "1", masked: false)],
                               sockets: [DescribedSocket(name: "http", listen: "127.0.0.1:80", balance: "reuseport", backlog: 1024, intercept: true)],
                               workersWanted: 2, workersReady: 2, restart: "always", stop: "SIGTERM", slots: [SlotHistory(slot: 0, generation: 2, pid: 9, state: "ready", restarts: 3)],
                               logs: LogFiles(target: "file", path: "/var/log/web.log", files: [LogFile(path: "/var/log/web.log", bytes: 5)], maxSizeBytes: 10, keep: 5))
        d.configSHA256 = String(repeating: "a", count: 64)
        d.configChanged = true
        var r = Response.success(7)
        r.describe = d
        #expect(try roundTrip(r) == r)
        let json = String(decoding: Codec.encode(d), as: UTF8.self)
        for key in ["config_sha256", "config_changed", "inherit_env", "env_files", "workers_wanted", "max_size_bytes"] {
            #expect(json.contains("\"\(key)\""), "\(key) in \(json)")
        }
    }

    @Test func signalRequestFields() throws {
        var q = Request(id: 3, verb: .signal, name: "web")
        q.slot = 2
        q.signal = "HUP"
        q.group = true
        #expect(try roundTrip(q) == q)
        #expect(String(decoding: Codec.encode(q), as: UTF8.self).contains(#""verb":"signal""#))
        #expect(Verb(rawValue: "reopen-logs") == .reopenLogs)
        #expect(!Verb.describe.isReadOnly && !Verb.signal.isReadOnly && !Verb.reopenLogs.isReadOnly)
    }
}
