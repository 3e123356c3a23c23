import Foundation
import Glibc
import Testing

/// A Python that has PyYAML, or nil.
func pythonWithYAML() async -> String? {
    for candidate in ["/usr/bin/env", Paths.python, "/var/tmp/swarm-venv/bin/python3"] {
        let args = candidate == "/usr/bin/env" ? ["python3", "-c", "import yaml"] : ["-c", "import yaml"]
        guard FileManager.default.isExecutableFile(atPath: candidate),
              let c = try? Child.spawn(candidate, args, dir: "/tmp", label: "yaml-probe"),
              let code = try? await c.wait(timeout: 20, "python to import yaml"), code == 0 else { continue }
        return candidate
    }
    return nil
}

/// etc/kubernetes/deployment.yaml is a manifest the README points at: it must
/// parse, and what it says must agree with swarmd (flags it has, probes on the
/// metrics port it serves, a grace period longer than preStop plus the stop timeout).
@Suite("Kubernetes example manifest")
struct KubernetesManifestTests {
    @Test("etc/kubernetes/deployment.yaml parses and agrees with swarmd's flags, probes and stop timeout")
    func manifestIsConsistent() async throws {
        guard let python = await pythonWithYAML() else {
            print("SKIPPED: no python3 with PyYAML here (pip install pyyaml) to parse etc/kubernetes/deployment.yaml")
            return
        }
        let path = Paths.root + "/etc/kubernetes/deployment.yaml"
        let script = "import json,sys,yaml\nprint(json.dumps(list(yaml.safe_load_all(open(sys.argv[1])))))"
        let args = (python == "/usr/bin/env" ? ["python3"] : []) + ["-c", script, path]
        let c = try Child.spawn(python, args, dir: "/tmp", label: "yaml")
        let code = try await c.wait(timeout: 30, "python to parse the manifest")
        #expect(code == 0, "yaml.safe_load_all failed: \(c.stderr)")
        guard code == 0 else { return }
        let docs = try #require(try JSONSerialization.jsonObject(with: Data(c.stdout.utf8)) as? [[String: Any]])
        let kinds = docs.compactMap { $0["kind"] as? String }
        #expect(kinds == ["ConfigMap", "Deployment"], "\(kinds)")

        let configMap = try #require(docs.first { $0["kind"] as? String == "ConfigMap" })
        let conf = try #require((configMap["data"] as? [String: String])?["web.conf"])
        let deployment = try #require(docs.first { $0["kind"] as? String == "Deployment" })
        let podSpec = try #require(((deployment["spec"] as? [String: Any])?["template"] as? [String: Any])?["spec"] as? [String: Any])
        let container = try #require((podSpec["containers"] as? [[String: Any]])?.first)
        let argv = try #require(container["args"] as? [String])

        // Every flag given to swarmd is one swarmd has.
        let help = try Child.spawn(Paths.swarmd, ["--help"], dir: "/tmp", label: "swarmd-help")
        _ = try await help.wait(timeout: 20, "swarmd --help")
        for flag in argv where flag.hasPrefix("--") {
            #expect(help.stdout.contains(flag), "swarmd has no \(flag)")
        }
        // The probes reach the metrics address swarmd is told to serve.
        let metrics = try #require(argv.firstIndex(of: "--metrics").map { argv[$0 + 1] })
        let metricsPort = try #require(Int(metrics.split(separator: ":").last ?? ""))
        let ports = (container["ports"] as? [[String: Any]]) ?? []
        let named = Dictionary(uniqueKeysWithValues: ports.compactMap { p in (p["name"] as? String).map { ($0, p["containerPort"] as? Int ?? -1) } })
        #expect(named["metrics"] == metricsPort)
        func probe(_ key: String) -> (path: String, port: Int?)? {
            guard let get = (container[key] as? [String: Any])?["httpGet"] as? [String: Any], let path = get["path"] as? String else { return nil }
            let port = (get["port"] as? Int) ?? (get["port"] as? String).flatMap { named[$0] }
            return (path, port)
        }
        #expect(probe("livenessProbe")?.path == "/healthz" && probe("livenessProbe")?.port == metricsPort)
        #expect(probe("readinessProbe")?.path.hasPrefix("/readyz") == true && probe("readinessProbe")?.port == metricsPort)
        #expect(probe("startupProbe")?.path.hasPrefix("/readyz") == true)
        #expect(argv.contains("--metrics-public"), "a non-loopback --metrics needs --metrics-public")
        // The config the ConfigMap mounts is the one swarmd is given.
        let mount = ((container["volumeMounts"] as? [[String: Any]]) ?? []).first { $0["name"] as? String == "config" }?["mountPath"] as? String
        #expect(argv.last == (mount ?? "?") + "/web.conf", "\(argv)")

        // The grace period covers preStop and the workers' stop timeout.
        let preStop = (((container["lifecycle"] as? [String: Any])?["preStop"] as? [String: Any])?["exec"] as? [String: Any])?["command"] as? [String]
        let sleep = try #require(preStop.flatMap { $0.last }.flatMap(Int.init), "preStop is a sleep")
        let stopTimeout = try #require(conf.split(separator: "\n").drop { !$0.hasPrefix("[stop]") }
            .first { $0.hasPrefix("timeout") }.flatMap { Int($0.split(separator: "\"")[1].dropLast()) })
        let grace = try #require(podSpec["terminationGracePeriodSeconds"] as? Int)
        #expect(grace > sleep + stopTimeout, "terminationGracePeriodSeconds \(grace) ≤ preStop \(sleep) s + [stop] timeout \(stopTimeout) s")
    }
}
