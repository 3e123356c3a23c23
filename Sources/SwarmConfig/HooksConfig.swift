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
        try absoluteArgv(v, key: key, example: "[\"/usr/local/bin/notify\", \"--crash\"]",
                         why: "hooks are run without a PATH search")
    }
}
