import Foundation
import SwarmConfig
import Testing

/// Config texts an editor might leave behind: a valid config with lines lost,
/// doubled, swapped, bytes flipped and stray TOML pasted in.
struct ConfigTextGenerator {
    var rng: SplitMix64

    static let fragments = [
        "[restart]", "[[socket]]", "[stop]", "[ready]", "[env]", "[limits]", "[[socket.x]]", "[socket]", "[", "]", "[[", "]]",
        "listen = \"unix:x.sock\"", "listen = \"[::1]:80\"", "name = \"b\"", "workers = \"auto\"", "workers = 0", "workers = 1e9",
        "x = [", "x = {", "}", "\"\"\"", "'''", "= =", "a.b.c = 1", "restart.policy = \"never\"", "env = { A = 1, B = {} }",
        "signal = 99", "mode = \"notify\"", "watchdog = \"1s\"", "# comment", "\"#\" = \"#\"", "t = 1979-05-27T07:32:00Z",
        "n = inf", "n = nan", "n = 0x7FFFFFFFFFFFFFFF", "n = 99999999999999999999", "s = \"\\uD800\"", "s = \"\\u0000\"", "é = 1",
        "command = \"sh\"", "command = []", "command = [\"{fd:http}\", \"{port:\"]", "user = \"www-data\"", "group = \"app\"",
        "max_size = \"1KiB\"", "timeout = \"-1s\"", "\r", "\t", "\u{FEFF}", "\"quoted key\" = 1", "a = '''\n[stop]\n'''",
    ]

    mutating func pick<T>(_ items: [T]) -> T { items[Int.random(in: 0..<items.count, using: &rng)] }
    mutating func int(_ range: Range<Int>) -> Int { Int.random(in: range, using: &rng) }

    mutating func mutate(_ text: String) -> String {
        var lines = text.split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
        for _ in 0..<int(1..<5) {
            let i = int(0..<lines.count)
            switch int(0..<10) {
            case 0: lines.remove(at: i); if lines.isEmpty { lines = [""] }
            case 1: lines.insert(lines[i], at: i)
            case 2: lines.swapAt(i, int(0..<lines.count))
            case 3: // flip bits in the UTF-8, then read it back as a config file would be (lossy)
                var bytes = Array(lines[i].utf8)
                if !bytes.isEmpty { bytes[int(0..<bytes.count)] ^= UInt8(1 << int(0..<8)) }
                lines[i] = String(decoding: bytes, as: UTF8.self)
            case 4, 5: lines.insert(pick(Self.fragments), at: i)
            case 6: // a fragment spliced into the middle of a line
                var chars = Array(lines[i])
                chars.insert(contentsOf: pick(Self.fragments), at: int(0..<chars.count + 1))
                lines[i] = String(chars)
            case 7: lines[i] += pick(["\0", "\u{0}x", " # \0"])
            case 8: lines.insert(pick(["x = \"", "# ", "x = ", "[", "\"k"]) + String(repeating: pick(["a", "[", "\"", "é", "{"]), count: int(1000..<20_000)), at: i)
            default: // deep nesting of arrays or inline tables
                let depth = pick([100, 1000, 10_000])
                lines.insert(pick(["x = ", "env.A = "]) + String(repeating: pick(["[", "{a=", "[{a="]), count: depth), at: i)
            }
        }
        return lines.joined(separator: "\n")
    }
}

@Suite struct ConfigFuzzTests {
    static let seed: UInt64 = ProcessInfo.processInfo.environment["SWARM_FUZZ_SEED"].flatMap { UInt64($0, radix: 16) } ?? 0x5EED_C0DE_0002
    static let cases = 3_000

    @Test("config parser answers 3,000 mutated configs (seed 0x5EEDC0DE0002, or SWARM_FUZZ_SEED)")
    func configParserAnswersEveryText() {
        var generator = ConfigTextGenerator(rng: SplitMix64(seed: Self.seed))
        let environment = fakeEnvironment()
        var specs = 0, errors = 0, syntaxErrors = 0
        let started = ContinuousClock.now
        for index in 0..<Self.cases {
            let text = generator.mutate(fullConfig)
            // Lines as an editor counts them: a final newline starts an (empty) last line.
            let lineCount = text.unicodeScalars.reduce(1) { $1 == "\n" ? $0 + 1 : $0 }
            do {
                _ = try AppConfig.parse(text: text, path: configPath, environment: environment)
                specs += 1
            } catch {
                errors += 1
                if error.message.hasPrefix("TOML syntax error") { syntaxErrors += 1 }
                for e in error.all {
                    #expect(e.file == configPath)
                    #expect(e.line >= 0 && e.line <= lineCount,
                            "seed \(String(Self.seed, radix: 16)), case \(index): line \(e.line) of \(lineCount): \(e)")
                }
                #expect(error.all.count <= ConfigError.maxReported)
                #expect(zip(error.all, error.all.dropFirst()).allSatisfy { $0.line <= $1.line }, "not in line order: \(error)")
                #expect(!error.description.unicodeScalars.contains { ($0.value < 0x20 && $0 != "\n") || $0.value == 0x7F }, "a raw control character: \(error)")
            }
        }
        let elapsed = ContinuousClock.now - started
        print("config fuzz: seed \(String(Self.seed, radix: 16)), \(Self.cases) texts in \(elapsed): \(specs) specs, "
              + "\(errors) errors (\(syntaxErrors) TOML syntax)")
        #expect(specs + errors == Self.cases)
        #expect(specs > 100 && errors - syntaxErrors > 100, "the generator reaches the validator, not just the TOML parser")
    }

    @Test(arguments: ["x = ", "x = [", "env.A = {a=", "[", "command = [\"node\", "])
    func deepNestingIsAnErrorNotACrash(prefix: String) {
        for depth in [100, 257, 1000, 100_000] {
            let open = prefix.hasSuffix("{a=") ? "{a=" : "["
            let text = "name = \"web\"\ncommand = [\"node\"]\n" + prefix + String(repeating: open, count: depth) + "\n"
            let error = parseError(text)
            #expect(error != nil)
            #expect((error?.line ?? 0) <= 4, "\(String(describing: error))")
        }
        // Closed properly but deep: still refused or parsed, never a crash.
        let balanced = "name = \"web\"\ncommand = [\"node\"]\nx = " + String(repeating: "[", count: 5000) + String(repeating: "]", count: 5000) + "\n"
        #expect(parseError(balanced) != nil)
    }

    @Test func veryLongLinesAndNulBytes() throws {
        let long = "name = \"web\"\ncommand = [\"node\"]\n[env]\nA = \"" + String(repeating: "é#[", count: 100_000) + "\"\n[stop]\ntimeout = \"x\"\n"
        let error = try #require(parseError(long), "a config with a 300,000-character line parsed")
        // The 300,000-byte value is itself refused (execve takes at most 128 KiB per variable), and the line after it still counted.
        #expect(error.all.map(\.line) == [4, 6] && error.all.map(\.key) == ["env.A", "stop.timeout"], "\(error.all.map { "\($0.line) \($0.key ?? "")" })")
        #expect(parseError(fullConfig + "\0")?.message.contains("NUL") == true)
    }
}
