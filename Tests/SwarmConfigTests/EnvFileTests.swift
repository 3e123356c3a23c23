import Foundation
import SwarmConfig
import SwarmCore
import Testing

@Suite struct EnvFileTests {
    func environment(_ dir: TempDir, executables: Set<String> = ["/bin/sh"]) -> ConfigEnvironment {
        fakeEnvironment(executables: executables, directories: [dir.path, dir.path + "/app"])
    }

    /// Writes `w.conf` (with `extra` after a minimal app) and loads it.
    func load(_ dir: TempDir, _ extra: String, executables: Set<String> = ["/bin/sh"]) throws(ConfigError) -> AppSpec {
        try? dir.write("w.conf", "name = \"w\"\ncommand = [\"/bin/sh\"]\n" + extra)
        return try AppConfig.load(path: dir.path + "/w.conf", environment: environment(dir, executables: executables))
    }

    func loadError(_ dir: TempDir, _ extra: String) -> ConfigError? {
        do { _ = try load(dir, extra); return nil } catch { return error }
    }

    @Test func everyFormOfLine() throws {
        let dir = try TempDir()
        defer { dir.remove() }
        try dir.write(".env", #"""
            # a comment
               # an indented comment

            export A=1
            B = spaced value   # a trailing comment
            C=a#b
            D='single $x \n # not a comment'
            E="double \"q\" \\ \n \t \$HOME \x"
            F=
            G=""
            H="multi
            line"
            I='multi
            line single'
            export    J="x" # c
            K=value with 'quotes' inside
            L=https://example.com/?a=1&b=2
            export=yes
            M="a"#no space needed after a quote
            A=overridden later in the file
            N=é ünïcode
            """#)
        let spec = try load(dir, "env_file = \".env\"\n")
        #expect(spec.env == [
            "A": "overridden later in the file", "B": "spaced value", "C": "a#b", "D": #"single $x \n # not a comment"#,
            "E": "double \"q\" \\ \n \t $HOME \\x", "F": "", "G": "", "H": "multi\nline", "I": "multi\nline single", "J": "x",
            "K": "value with 'quotes' inside", "L": "https://example.com/?a=1&b=2", "export": "yes", "M": "a", "N": "é ünïcode",
        ])
        #expect(spec.envFiles == [dir.path + "/.env"])
    }

    @Test func crlfAndBOM() throws {
        let dir = try TempDir()
        defer { dir.remove() }
        try dir.write(".env", "\u{FEFF}A=1\r\nB=\"two\"\r\n# c\r\nC=3 # x\r\n")
        #expect(try load(dir, "env_file = \".env\"\n").env == ["A": "1", "B": "two", "C": "3"])
    }

    @Test func configEnvWinsOverFilesAndLaterFilesOverEarlier() throws {
        let dir = try TempDir()
        defer { dir.remove() }
        try FileManager.default.createDirectory(atPath: dir.path + "/app", withIntermediateDirectories: false)
        try dir.write("base.env", "A=base\nB=base\nC=base\n")
        try dir.write("app/local.env", "B=local\nC=local\n")
        // Relative names follow the config file's folder, whatever cwd says.
        let spec = try load(dir, "cwd = \"app\"\nenv_file = [\"base.env\", \"app/local.env\"]\n[env]\nC = \"config\"\n")
        #expect(spec.env == ["A": "base", "B": "local", "C": "config"])
        #expect(spec.envFiles == [dir.path + "/base.env", dir.path + "/app/local.env"])
    }

    @Test func thePATHOfAnEnvFileFindsTheCommand() throws {
        let dir = try TempDir()
        defer { dir.remove() }
        try dir.write(".env", "PATH=/opt/tools\n")
        try dir.write("w.conf", "name = \"w\"\ncommand = [\"tool\"]\nenv_file = \".env\"\n")
        let spec = try AppConfig.load(path: dir.path + "/w.conf", environment: environment(dir, executables: ["/opt/tools/tool", "/usr/bin/tool"]))
        #expect(spec.executable == "/opt/tools/tool")
    }

    @Test func eachLoadReadsTheFileAgain() throws {
        let dir = try TempDir()
        defer { dir.remove() }
        try dir.write(".env", "VERSION=1\n")
        #expect(try load(dir, "env_file = \".env\"\n").env["VERSION"] == "1")
        try dir.write(".env", "VERSION=2\n")
        #expect(try load(dir, "env_file = \".env\"\n").env["VERSION"] == "2")
    }

    @Test(arguments: [
        ("A=1\nB=2\n1A=x\n", 3, "'1A' is not a valid environment variable name"),
        ("A-B=1\n", 1, "'A-B' is not a valid environment variable name"),
        ("KEY NAME=1\n", 1, "'KEY NAME' is not a valid environment variable name"),
        ("\n\njust words\n", 3, "expected KEY=value: this line has no '='"),
        ("=value\n", 1, "no key before the '='"),
        ("A=1\nB=\"open\nC=2\n", 2, "the double-quoted value of 'B' has no closing \""),
        ("A='open\n", 1, "the single-quoted value of 'A' has no closing '"),
        ("A=\"x\" y\n", 1, "unexpected text after the closing quote of 'A'"),
        ("A=\"multi\nline\" y\n", 2, "unexpected text after the closing quote of 'A', a value that opened on line 1"),
        ("A=\"forgot to close\nB=1\nC=\"x\"\n", 3, "of 'A', a value that opened on line 1"),
        ("export\n", 1, "this line has no '='"),
    ])
    func badLinesNameTheEnvFileAndTheConfigLine(text: String, line: Int, message: String) throws {
        let dir = try TempDir()
        defer { dir.remove() }
        try dir.write(".env", text)
        let error = try #require(loadError(dir, "\nenv_file = \".env\"\n"))
        #expect(error.file == dir.path + "/.env", "\(error)")
        #expect(error.line == line, "\(error)")
        #expect(error.message.contains(message), "\(error)")
        #expect(error.message.hasSuffix("(env_file of \(dir.path)/w.conf:4)"), "\(error)")
    }

    @Test func errorsDoNotQuoteValues() throws {
        let dir = try TempDir()
        defer { dir.remove() }
        for text in ["sk_live_SECRET\n", "A=\"SECRET\" SECRET\n", "=SECRET\n", "A='SECRET\n"] {
            try dir.write(".env", text)
            let error = try #require(loadError(dir, "env_file = \".env\"\n"))
            #expect(!error.description.contains("SECRET"), "\(error)")
        }
    }

    @Test func badFilesPointAtTheConfigLine() throws {
        let dir = try TempDir()
        defer { dir.remove() }
        try dir.mkfifo("fifo.env")
        try dir.writeBytes("latin1.env", Array("A=1\nB=caf".utf8) + [0xE9] + [0x0A])
        try dir.writeBytes("nul.env", Array("A=1\n\nB=x".utf8) + [0] + [0x0A])
        let cases: [(String, Int, String?, String, String)] = [
            ("env_file = \"missing.env\"", 3, "env_file", "\(dir.path)/w.conf", "'\(dir.path)/missing.env': no such file"),
            ("env_file = \"fifo.env\"", 3, "env_file", "\(dir.path)/w.conf", "not a regular file (a FIFO)"),
            ("env_file = \".\"", 3, "env_file", "\(dir.path)/w.conf", "not a regular file (a directory)"),
            ("env_file = \"latin1.env\"", 2, nil, "\(dir.path)/latin1.env", "not UTF-8 text (env_file of"),
            ("env_file = \"nul.env\"", 3, nil, "\(dir.path)/nul.env", "contains a NUL byte (env_file of"),
            ("env_file = \"\"", 3, "env_file", "\(dir.path)/w.conf", "a file name is empty"),
            ("env_file = 3", 3, "env_file", "\(dir.path)/w.conf", "expected a file name like \".env\" or a list of them, found integer"),
            ("env_file = [\".env\", 1]", 3, "env_file", "\(dir.path)/w.conf", "element 1 is integer"),
            ("env_file = [\"a\", \"./a\"]", 3, "env_file", "\(dir.path)/w.conf", "is listed twice"),
        ]
        for (extra, line, key, file, message) in cases {
            try dir.write("w.conf", "name = \"w\"\ncommand = [\"/bin/sh\"]\n" + extra + "\n")
            let result = try #require(loadWithDeadline(dir.path + "/w.conf", environment: environment(dir), unblock: dir.path + "/fifo.env"),
                                      "\(extra): load did not return within 5 s")
            guard case let .failure(error) = result else { Issue.record("\(extra) loaded"); continue }
            #expect(error.file == file && error.line == line && error.key == key, "\(extra): \(error)")
            #expect(error.message.contains(message), "\(extra): \(error)")
        }
    }

    @Test func aVariableTooLongForExecveIsRefusedAtItsLine() throws {
        let dir = try TempDir()
        defer { dir.remove() }
        let long = String(repeating: "v", count: AppConfig.maxArgumentBytes)
        try dir.write(".env", "A=1\nBIG=\(long)\n")
        let error = try #require(loadError(dir, "env_file = \".env\"\n"))
        #expect(error.file == dir.path + "/.env" && error.line == 2, "\(error)")
        #expect(error.message.hasPrefix("BIG=… is 131076 bytes; Linux passes at most 131071 per variable"), "\(error)")
        // Just under the limit is fine: "K=" + value + NUL = 131072.
        try dir.write(".env", "K=\(String(repeating: "v", count: AppConfig.maxArgumentBytes - 3))\n")
        #expect(try load(dir, "env_file = \".env\"\n").env["K"]?.utf8.count == AppConfig.maxArgumentBytes - 3)
        let config = try #require(loadError(dir, "[env]\nBIG = \"\(long)\"\n"))
        #expect(config.key == "env.BIG" && config.line == 4, "\(config)")
        let argv = try #require(parseError("name = \"w\"\ncommand = [\"node\", \"\(long)\"]\n"))
        #expect(argv.key == "command" && argv.message.contains("element 1 is 131072 bytes"), "\(argv)")
    }

    @Test func tooManyFiles() throws {
        let dir = try TempDir()
        defer { dir.remove() }
        let list = (0...AppConfig.maxEnvFiles).map { "\"\($0).env\"" }.joined(separator: ", ")
        let error = try #require(loadError(dir, "env_file = [\(list)]\n"))
        #expect(error.key == "env_file" && error.message.contains("more than 16 files"), "\(error)")
    }
}

@Suite struct EnvFileFuzzTests {
    /// Mutated env files: every one loads or fails with an error on a line of
    /// that file (or of the config), and none crashes or hangs.
    @Test("env_file parser answers 2,000 mutated files (seed 0x5EEDC0DE0003, or SWARM_FUZZ_SEED)")
    func envFileParserAnswersEveryText() throws {
        let dir = try TempDir()
        defer { dir.remove() }
        let seed = ProcessInfo.processInfo.environment["SWARM_FUZZ_SEED"].flatMap { UInt64($0, radix: 16) } ?? 0x5EED_C0DE_0003
        var rng = SplitMix64(seed: seed)
        let base = ["# c", "export A=1", "B = two words # c", "C='single\nline'", "D=\"dq \\\" \\n\"", "E=", "F=\"multi\nline\"", "", "G=a#b"]
        let pieces = ["'", "\"", "\\", "#", "=", " ", "\t", "\r", "\n", "export ", "é", "1", "-", "$", "\u{FEFF}", "''", "\"\"", "x"]
        try dir.write("w.conf", "name = \"w\"\ncommand = [\"/bin/sh\"]\nenv_file = \".env\"\n")
        let environment = fakeEnvironment(executables: ["/bin/sh"], directories: [dir.path])
        var loaded = 0, failed = 0
        for index in 0..<2000 {
            var chars = Array(base.joined(separator: "\n"))
            for _ in 0..<Int.random(in: 1..<6, using: &rng) {
                let at = Int.random(in: 0...chars.count, using: &rng)
                if Bool.random(using: &rng) || chars.isEmpty {
                    chars.insert(contentsOf: pieces[Int.random(in: 0..<pieces.count, using: &rng)], at: at)
                } else {
                    chars.remove(at: min(at, chars.count - 1))
                }
            }
            let text = String(chars)
            try dir.write(".env", text)
            let lines = text.unicodeScalars.reduce(1) { $1 == "\n" ? $0 + 1 : $0 }
            do {
                let spec = try AppConfig.load(path: dir.path + "/w.conf", environment: environment)
                #expect(spec.env.keys.allSatisfy { !$0.isEmpty && !$0.contains("=") })
                loaded += 1
            } catch {
                failed += 1
                let inEnv = error.file == dir.path + "/.env" && error.line >= 1 && error.line <= lines
                #expect(inEnv, "seed \(String(seed, radix: 16)), case \(index): \(error)")
            }
        }
        print("env_file fuzz: seed \(String(seed, radix: 16)): \(loaded) loaded, \(failed) errors")
        #expect(loaded > 100 && failed > 100)
    }
}
