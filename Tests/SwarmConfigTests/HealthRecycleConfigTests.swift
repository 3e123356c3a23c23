import Foundation
import SwarmConfig
import SwarmCore
import Testing

/// An app with one reuseport TCP socket (lines 1-5), then `extra` from line 6.
private func app(_ extra: String, socket: String = "[[socket]]\nlisten = \"127.0.0.1:8080\"\n") -> String {
    "name = \"web\"\ncommand = [\"node\"]\n\n\(socket)\n\(extra)"
}

private func parse(_ text: String) throws -> AppSpec {
    try AppConfig.parse(text: text, path: configPath, environment: fakeEnvironment())
}

/// The 1-based line of the first line of `text` that starts with `key =`.
private func line(of key: String, in text: String) -> Int? {
    text.split(separator: "\n", omittingEmptySubsequences: false).firstIndex { $0.hasPrefix(key + " ") }.map { $0 + 1 }
}

/// `[ready] mode = "http" | "tcp" | "exec"` and `[recycle] max_connections`.
@Suite struct HealthRecycleConfigTests {
    @Test(arguments: [("http", "http = \"/healthz\""), ("tcp", "tcp = true"), ("exec", "exec = [\"/opt/tools/tool\"]")])
    func readyByTheProbeOfThatKind(mode: String, probe: String) throws {
        let spec = try parse(app("[ready]\nmode = \"\(mode)\"\n\n[health]\n\(probe)\n"))
        #expect(spec.ready.mode.rawValue == mode)
        #expect(spec.ready.mode.probeKind == spec.health.check?.kind)
    }

    @Test(arguments: [
        ("[ready]\nmode = \"http\"\n", "has no [health] http probe"),
        ("[ready]\nmode = \"tcp\"\n\n[health]\nhttp = \"/healthz\"\n", "this app's [health] probe is http (use mode = \"http\")"),
        ("[ready]\nmode = \"exec\"\n\n[health]\ntcp = true\n", "this app's [health] probe is tcp"),
        ("[ready]\nmode = \"http\"\n\n[health]\ntcp = false\n", "has no [health] http probe"),
    ])
    func aReadyModeWithoutItsProbeIsAnErrorOnTheModeLine(extra: String, message: String) throws {
        let text = app(extra)
        let error = try #require(parseError(text), "accepted: \(extra)")
        #expect(error.key == "ready.mode", "\(error)")
        #expect(error.line == line(of: "mode", in: text), "\(error)")
        #expect(error.message.contains(message), "\(error)")
        #expect(error.description.hasPrefix("\(configPath):\(error.line): ready.mode: "), "\(error)")
    }

    @Test func aBadProbeIsReportedOnceNotAgainAsAMissingOne() throws {
        let error = try #require(parseError(app("[ready]\nmode = \"http\"\n\n[health]\nhttp = \"healthz\"\n")))
        #expect(error.all.map(\.key) == ["health.http"], "\(error)")
    }

    @Test func anUnknownModeNamesTheProbeModes() throws {
        let error = try #require(parseError(app("[ready]\nmode = \"grpc\"\n")))
        #expect(error.message.contains("notify, fd, listening, delay, http, tcp, exec"), "\(error)")
    }

    @Test func maxConnections() throws {
        #expect(try parse(app("[recycle]\nmax_connections = 100000\n")).recycle.maxConnections == 100_000)
        #expect(try parse(app("")).recycle.maxConnections == nil)
    }

    @Test(arguments: [
        ("max_connections = 0", "recycle.max_connections", "out of range"),
        ("max_connections = -5", "recycle.max_connections", "out of range"),
        ("max_connections = \"lots\"", "recycle.max_connections", "expected an integer"),
        ("max_connections = 10000000000000", "recycle.max_connections", "out of range"),
    ])
    func badMaxConnections(setting: String, key: String, message: String) throws {
        let text = app("[recycle]\n\(setting)\n")
        let error = try #require(parseError(text), "\(setting) was accepted")
        #expect(error.key == key, "\(error)")
        #expect(error.line == line(of: "max_connections", in: text), "\(error)")
        #expect(error.message.contains(message), "\(error)")
    }

    @Test func maxConnectionsNeedsAReuseportSocket() throws {
        for socket in ["", "[[socket]]\nlisten = \"127.0.0.1:1\"\nbalance = \"shared\"\n", "[[socket]]\nlisten = \"unix:/run/w.sock\"\n"] {
            let text = app("[recycle]\nmax_connections = 10\n", socket: socket)
            let error = try #require(parseError(text), "accepted with socket \(socket)")
            #expect(error.key == "recycle.max_connections")
            #expect(error.line == line(of: "max_connections", in: text), "\(error)")
            #expect(error.message.contains("reuseport TCP socket"), "\(error)")
        }
    }
}
