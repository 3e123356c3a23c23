import SwarmConfig

/// A machine with 8 CPUs, uid 1000 ("app"), and a few known files, so tests
/// never depend on the host.
func fakeEnvironment(cpus: Int = 8, isRoot: Bool = false, path: String = "/usr/local/bin:/usr/bin:/bin",
                     executables: Set<String> = defaultExecutables,
                     directories: Set<String> = defaultDirectories) -> ConfigEnvironment {
    ConfigEnvironment(
        cpuCount: { cpus }, isRoot: isRoot, currentUID: 1000,
        lookupUser: { name in
            switch name {
            case "app", "1000": return (1000, 1000)
            case "www-data", "33": return (33, 33)
            default: return nil
            }
        },
        lookupGroup: { name in ["app": 1000, "www-data": 33, "33": 33][name] },
        path: path,
        isExecutable: { executables.contains($0) },
        isDirectory: { directories.contains($0) },
        allowedCPUs: { Array(0..<cpus) })
}

let defaultExecutables: Set<String> = ["/usr/bin/node", "/srv/web/bin/server", "/etc/swarm/apps/run", "/opt/tools/tool"]
let defaultDirectories: Set<String> = ["/", "/etc/swarm", "/etc/swarm/apps", "/srv/web", "/srv"]
let configPath = "/etc/swarm/web.conf"

/// Parses `text` as /etc/swarm/web.conf; the error if it fails, nil if it parses.
func parseError(_ text: String, environment: ConfigEnvironment = fakeEnvironment()) -> ConfigError? {
    do {
        _ = try AppConfig.parse(text: text, path: configPath, environment: environment)
        return nil
    } catch {
        return error
    }
}

/// SplitMix64: small, fast, and the same sequence on every machine for a seed.
struct SplitMix64: RandomNumberGenerator {
    private var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}
