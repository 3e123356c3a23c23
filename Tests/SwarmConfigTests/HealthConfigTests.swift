import Foundation
import SwarmConfig
import SwarmCore
import Testing

/// An app with one reuseport TCP socket, then `extra` (a [health] or [recycle] table).
private func app(_ extra: String, socket: String = "[[socket]]\nlisten = \"127.0.0.1:8080\"\n") -> String {
    "name = \"web\"\ncommand = [\"node\"]\n\n\(socket)\n\(extra)"
}

/// Line of the first line of `extra` in `app(extra)` with the default socket.
private let firstExtraLine = 7

private func parse(_ text: String) throws -> AppSpec {
    try AppConfig.parse(text: text, path: configPath, environment: fakeEnvironment())
}

@Suite struct HealthConfigTests {
    @Test func defaultsWithoutHealthTable() throws {
        let spec = try parse(app(""))
        #expect(spec.health.check == nil)
        #expect(spec.health.stuckAfter == .seconds(10))
        #expect(spec.health.interval == .seconds(5))
        #expect(spec.health.timeout == .seconds(2))
        #expect(spec.health.failures == 3)
        #expect(spec.health.startPeriod == .zero)
        #expect(spec.recycle.maxAge == nil)
    }

    @Test func hangDetectionIsOffWithoutAReuseportSocket() throws {
        #expect(try parse(app("")).watchesAcceptQueues)
        #expect(try !parse(app("", socket: "")).watchesAcceptQueues)
        #expect(try !parse(app("", socket: "[[socket]]\nlisten = \"unix:/run/w.sock\"\n")).watchesAcceptQueues)
        #expect(try !parse(app("", socket: "[[socket]]\nlisten = \"127.0.0.1:1\"\nbalance = \"shared\"\n")).watchesAcceptQueues)
        // Even with a [health] table that does not mention it.
        #expect(try !parse(app("[health]\nfailures = 2\n", socket: "")).watchesAcceptQueues)
        #expect(try !parse(app("[health]\nstuck_after = \"0s\"\n")).watchesAcceptQueues)
    }

    @Test func everyKey() throws {
        let spec = try parse(app("""
            [health]
            http = "/healthz?deep=1"
            host = "web.example"
            expect = "200-204"
            interval = "2s"
            timeout = "500ms"
            failures = 4
            start_period = "30s"
            stuck_after = "5s"

            [recycle]
            max_age = "6h"
            jitter = "30m"
            """))
        #expect(spec.health.check == .http(path: "/healthz?deep=1", host: "web.example", expect: 200...204))
        #expect(spec.health.interval == .seconds(2))
        #expect(spec.health.timeout == .milliseconds(500))
        #expect(spec.health.failures == 4)
        #expect(spec.health.startPeriod == .seconds(30))
        #expect(spec.health.stuckAfter == .seconds(5))
        #expect(spec.recycle.maxAge == .seconds(6 * 3600))
        #expect(spec.recycle.jitter == .seconds(1800))
    }

    @Test(arguments: [("200", 200...200), ("\"2xx\"", 200...299), ("\"3XX\"", 300...399), ("\"200 - 302\"", 200...302)])
    func expectForms(text: String, range: ClosedRange<Int>) throws {
        let spec = try parse(app("[health]\nhttp = \"/\"\nexpect = \(text)\n"))
        #expect(spec.health.check == .http(path: "/", host: nil, expect: range))
    }

    @Test func httpDefaultsToTwoAndThreeHundreds() throws {
        #expect(try parse(app("[health]\nhttp = \"/healthz\"\n")).health.check == .http(path: "/healthz", host: nil, expect: 200...399))
    }

    @Test func tcpAndExec() throws {
        #expect(try parse(app("[health]\ntcp = true\n")).health.check == .tcp)
        #expect(try parse(app("[health]\ntcp = false\n")).health.check == nil)
        #expect(try parse(app("[health]\nexec = [\"/opt/tools/tool\", \"--check\"]\n")).health.check == .exec(["/opt/tools/tool", "--check"]))
        // exec needs no socket.
        #expect(try parse(app("[health]\nexec = [\"/opt/tools/tool\"]\n", socket: "")).health.check == .exec(["/opt/tools/tool"]))
    }

    @Test func timeoutDefaultsToNoMoreThanTheInterval() throws {
        #expect(try parse(app("[health]\ntcp = true\ninterval = \"1s\"\n")).health.timeout == .seconds(1))
    }

    @Test(arguments: [
        ("http = \"healthz\"", "health.http", "must start with \"/\""),
        ("http = \"\"", "health.http", "must start with \"/\""),
        ("http = \"/a b\"", "health.http", "contains a space"),
        ("http = 1", "health.http", "expected a string"),
        ("tcp = \"yes\"", "health.tcp", "expected true or false"),
        ("exec = \"/opt/tools/tool\"", "health.exec", "expected an array of strings"),
        ("exec = []", "health.exec", "must not be empty"),
        ("exec = [\"tool\"]", "health.exec", "must be an absolute path"),
        ("exec = [\"/nope\"]", "health.exec", "'/nope' does not exist or is not executable"),
        ("exec = [\"/opt/tools/tool\", 3]", "health.exec", "element 1 is integer"),
        ("host = \"x\"", "health.host", "this [health] has no http"),
        ("tcp = true\nexpect = 200", "health.expect", "this [health] has no http"),
        ("http = \"/\"\nexpect = 99", "health.expect", "99 is not an HTTP status"),
        ("http = \"/\"\nexpect = \"300-200\"", "health.expect", "the range is empty"),
        ("http = \"/\"\nexpect = \"ok\"", "health.expect", "expected a status like 200"),
        ("http = \"/\"\nhost = \"a b\"", "health.host", "is not a host name"),
        ("interval = \"10ms\"", "health.interval", "shorter than 100ms"),
        ("interval = \"2h\"", "health.interval", "longer than 1h"),
        ("interval = 5", "health.interval", "expected a duration string"),
        ("timeout = \"1ms\"", "health.timeout", "shorter than 10ms"),
        ("interval = \"1s\"\ntimeout = \"2s\"", "health.timeout", "longer than interval (1s)"),
        ("failures = 0", "health.failures", "0 is out of range (1…100)"),
        ("failures = 101", "health.failures", "out of range"),
        ("start_period = \"2h\"", "health.start_period", "longer than 1h"),
        ("stuck_after = \"100ms\"", "health.stuck_after", "use \"0s\" to turn hang detection off"),
        ("stuck_after = \"forever\"", "health.stuck_after", "is not a duration"),
        ("socket = \"admin\"", "health.socket", "no [[socket]] is named 'admin'"),
        ("intervall = \"1s\"", "health.intervall", "did you mean 'interval'?"),
    ])
    func badHealthValues(line: String, key: String, message: String) throws {
        let text = app("[health]\n\(line)\n")
        let error = try #require(parseError(text), "\(line) was accepted")
        #expect(error.file == configPath)
        #expect(error.key == key, "\(error)")
        // The line of the key named (the table header is line 6).
        let keyName = String(key.split(separator: ".").last!)
        let expectedLine = text.split(separator: "\n", omittingEmptySubsequences: false)
            .firstIndex { $0.hasPrefix(keyName + " ") || $0.hasPrefix(keyName + "=") }.map { $0 + 1 }
        #expect(error.line == expectedLine, "\(error)")
        #expect(error.message.contains(message), "\(error)")
        #expect(error.description.hasPrefix("\(configPath):\(expectedLine ?? 0): \(key): "), "\(error)")
    }

    @Test func twoProbesAreOneErrorOnTheSecond() throws {
        let error = try #require(parseError(app("[health]\nhttp = \"/\"\ntcp = true\n")))
        #expect(error.line == firstExtraLine + 2)
        #expect(error.message.contains("only one probe per app"), "\(error)")
        #expect(error.also.isEmpty, "\(error)")
    }

    @Test func probesNeedATCPReuseportSocket() throws {
        let none = try #require(parseError(app("[health]\nhttp = \"/healthz\"\n", socket: "")))
        #expect(none.key == "health.http")
        #expect(none.message.contains("needs a TCP [[socket]]"), "\(none)")
        let unix = try #require(parseError(app("[health]\ntcp = true\nsocket = \"u\"\n", socket: "[[socket]]\nname = \"u\"\nlisten = \"unix:/run/u.sock\"\n")))
        #expect(unix.key == "health.socket")
        #expect(unix.message.contains("is a unix socket"), "\(unix)")
        let shared = try #require(parseError(app("[health]\ntcp = true\n", socket: "[[socket]]\nlisten = \"127.0.0.1:1\"\nbalance = \"shared\"\n")))
        #expect(shared.key == "health.tcp")
        #expect(shared.message.contains("balance = \"shared\""), "\(shared)")
        let stuck = try #require(parseError(app("[health]\nstuck_after = \"5s\"\n", socket: "")))
        #expect(stuck.key == "health.stuck_after")
        #expect(stuck.message.contains("this app has none"), "\(stuck)")
        // "0s" is always fine.
        #expect(try parse(app("[health]\nstuck_after = \"0s\"\n", socket: "")).health.stuckAfter == .zero)
    }

    @Test func namedSocketIsChecked() throws {
        let text = app("[health]\ntcp = true\nsocket = \"api\"\n",
                       socket: "[[socket]]\nlisten = \"127.0.0.1:1\"\n[[socket]]\nname = \"api\"\nlisten = \"127.0.0.1:2\"\n")
        #expect(try parse(text).health.socket == "api")
    }

    @Test func everyBadValueIsReportedInOneLoad() throws {
        let error = try #require(parseError(app("[health]\nhttp = \"x\"\nfailures = 0\ninterval = \"1ms\"\n")))
        #expect(error.all.map(\.key) == ["health.http", "health.failures", "health.interval"], "\(error)")
    }

    @Test(arguments: [
        ("max_age = \"100ms\"", "recycle.max_age", "shorter than 1s"),
        ("max_age = 3600", "recycle.max_age", "expected a duration string"),
        ("jitter = \"1m\"", "recycle.jitter", "has no max_age"),
        ("max_age = \"1h\"\njitter = \"2h\"", "recycle.jitter", "longer than max_age (1h)"),
        ("max_requests = 10", "recycle.max_requests", "unknown key"),
    ])
    func badRecycleValues(line: String, key: String, message: String) throws {
        let error = try #require(parseError(app("[recycle]\n\(line)\n")), "\(line) was accepted")
        #expect(error.key == key, "\(error)")
        #expect(error.line > firstExtraLine, "\(error)")
        #expect(error.message.contains(message), "\(error)")
    }

    @Test func recycleJitterSpreadsSlots() {
        var r = RecyclePolicy()
        r.maxAge = .seconds(600)
        let ages = (0..<8).compactMap { r.age(forSlot: $0, of: 8) }
        #expect(ages.count == 8)
        #expect(ages.allSatisfy { $0 >= .seconds(600) && $0 <= .seconds(660) })
        #expect(Set(ages).count == 8, "\(ages)")
        r.jitter = .zero
        #expect(r.age(forSlot: 3, of: 8) == .seconds(600))
    }

    @Test func specWithHealthRoundTripsThroughJSONAndOldSpecsDecode() throws {
        var spec = try parse(app("[health]\nhttp = \"/h\"\nexpect = 204\n[recycle]\nmax_age = \"1h\"\n"))
        let data = try JSONEncoder().encode(spec)
        #expect(try JSONDecoder().decode(AppSpec.self, from: data) == spec)
        // A spec written before [health] existed decodes with the defaults.
        var object = try JSONSerialization.jsonObject(with: data) as! [String: Any]
        object["health"] = nil
        object["recycle"] = nil
        let old = try JSONDecoder().decode(AppSpec.self, from: JSONSerialization.data(withJSONObject: object))
        spec.health = HealthPolicy()
        spec.recycle = RecyclePolicy()
        #expect(old == spec)
    }
}
