import Foundation
import SwarmConfig
import SwarmCore
import Testing

private func app(_ extra: String) -> String {
    "name = \"web\"\ncommand = [\"node\"]\n\n\(extra)"
}

private func parse(_ text: String) throws -> AppSpec {
    try AppConfig.parse(text: text, path: configPath, environment: fakeEnvironment())
}

@Suite struct HooksConfigTests {
    @Test func noHooksByDefault() throws {
        let h = try parse(app("")).hooks
        #expect(h.commands.isEmpty && h.timeout == .seconds(10) && h.maxConcurrent == 4)
    }

    @Test func everyKey() throws {
        let h = try parse(app("""
            [hooks]
            on_exit = ["/opt/tools/tool", "exit"]
            on_crash_loop = ["/opt/tools/tool", "--page", "ops"]
            on_reload_failed = ["/opt/tools/tool"]
            on_unhealthy = ["/opt/tools/tool", "sick"]
            on_restart = ["/opt/tools/tool"]
            on_reload = ["/opt/tools/tool"]
            on_ready = ["/opt/tools/tool"]
            on_config_error = ["/opt/tools/tool"]
            timeout = "3s"
            max_concurrent = 2
            """)).hooks
        #expect(h.commands["on_exit"] == ["/opt/tools/tool", "exit"])
        #expect(h.commands["on_crash_loop"] == ["/opt/tools/tool", "--page", "ops"])
        #expect(h.commands.count == 8)
        #expect(Set(h.commands.keys) == Set(HooksPolicy.events.keys))
        #expect(h.timeout == .seconds(3) && h.maxConcurrent == 2)
    }

    @Test(arguments: [
        ("on_exit = \"/opt/tools/tool\"", "hooks.on_exit", "expected an array of strings"),
        ("on_exit = []", "hooks.on_exit", "must not be empty"),
        ("on_exit = [\"tool\"]", "hooks.on_exit", "must be an absolute path"),
        ("on_exit = [\"/no/such/tool\"]", "hooks.on_exit", "does not exist or is not executable"),
        ("on_exit = [\"/opt/tools/tool\", 3]", "hooks.on_exit", "element 1 is integer, expected a string"),
        ("on_crash = [\"/opt/tools/tool\"]", "hooks.on_crash", "unknown key"),
        ("on_exti = [\"/opt/tools/tool\"]", "hooks.on_exti", "did you mean 'on_exit'?"),
        ("timeout = \"2h\"", "hooks.timeout", "longer than 1h"),
        ("timeout = \"1ms\"", "hooks.timeout", "shorter than 10ms"),
        ("timeout = 5", "hooks.timeout", "expected a duration string"),
        ("max_concurrent = 0", "hooks.max_concurrent", "0 is out of range (1…64)"),
        ("max_concurrent = 65", "hooks.max_concurrent", "out of range"),
    ])
    func badValues(line: String, key: String, message: String) throws {
        let text = app("[hooks]\n\(line)\n")
        let error = try #require(parseError(text), "\(line) was accepted")
        #expect(error.key == key, "\(error)")
        // Line 4 is [hooks]; the key is on line 5.
        #expect(error.line == 5, "\(error)")
        #expect(error.message.contains(message), "\(error)")
        #expect(error.description.hasPrefix("\(configPath):5: \(key): "), "\(error)")
    }

    @Test func hooksMustBeATable() throws {
        let error = try #require(parseError(app("hooks = 3\n")))
        #expect(error.key == "hooks" && error.line == 4, "\(error)")
    }
}
