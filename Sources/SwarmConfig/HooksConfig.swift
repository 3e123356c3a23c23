import SwarmCore
import TOMLKit

/// `[hooks]`.
extension Reader {
    static let hookTimeoutRange: ClosedRange<Duration> = .milliseconds(10) ... .seconds(3600)
    static let maxHookConcurrency = 64

    func hooks(_ t: TOMLTable) -> HooksPolicy {
        let p = "hooks"
        let names = HooksPolicy.events.keys.sorted()
        checkKeys(t, allowed: names + ["timeout", "max_concurrent"], at: p)
        var h = HooksPolicy()
        for name in names where t[name] != nil {
            if let argv = check({ () throws(ConfigError) -> [String]? in try hookCommand(t[name]!, key: "\(p).\(name)") }) {
                h.commands[name] = argv
            }
        }
        h.timeout = check { () throws(ConfigError) -> Duration? in try boundedDuration(t, "timeout", at: p, Reader.hookTimeoutRange) } ?? h.timeout
        h.maxConcurrent = check { () throws(ConfigError) -> Int? in
            try int(t, "max_concurrent", at: p, range: 1...Reader.maxHookConcurrency)
        } ?? h.maxConcurrent
        return h
    }

    func hookCommand(_ v: TOMLValueConvertible, key: String) throws(ConfigError) -> [String] {
        guard let items = v.array else {
            throw fail(key, "expected an array of strings like [\"/usr/local/bin/notify\", \"--crash\"] (never run through a shell), found \(v.type)")
        }
        var argv: [String] = []
        for (i, item) in items.enumerated() {
            guard let s = item.string else { throw fail(key, "element \(i) is \(item.type), expected a string") }
            if s.contains("\0") { throw fail(key, "element \(i) contains a NUL byte") }
            if s.utf8.count >= AppConfig.maxArgumentBytes {
                throw fail(key, "element \(i) is \(s.utf8.count) bytes; Linux passes at most \(AppConfig.maxArgumentBytes - 1) per argument")
            }
            argv.append(s)
        }
        guard let program = argv.first, !program.isEmpty else { throw fail(key, "must not be empty") }
        guard program.hasPrefix("/") else {
            throw fail(key, "'\(program)' must be an absolute path: hooks are run without a PATH search")
        }
        guard environment.isExecutable(program) else { throw fail(key, "'\(program)' does not exist or is not executable") }
        return argv
    }
}
