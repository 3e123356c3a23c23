import Foundation
import Glibc
import SwarmProtocol
import Testing

// `swarmctl rollback` and the generation history (issue 15 item 5): a
// rolling, readiness-gated reload back to the previous generation's kept
// config (env files included), under load with 0 failed requests; the
// history in `status --json` survives a swarmd restart and daemon-reexec.

/// The value of `key` in a live process's environment (we are root: any pid).
func environmentValue(_ pid: Int32, _ key: String) -> String? {
    guard let data = FileManager.default.contents(atPath: "/proc/\(pid)/environ") else { return nil }
    for entry in data.split(separator: 0) {
        let s = String(decoding: entry, as: UTF8.self)
        if s.hasPrefix(key + "=") { return String(s.dropFirst(key.count + 1)) }
    }
    return nil
}

/// SHA-256 of `bytes` in hex, by Python's hashlib (the test does not share swarmd's code).
func pythonSHA256(_ files: [String]) async throws -> String {
    // The documented digest: the config's bytes, then NUL path NUL bytes for each env file.
    var script = "import hashlib,sys\nh=hashlib.sha256()\n"
    for (i, f) in files.enumerated() {
        if i > 0 { script += "h.update(b'\\0'+\(pyBytes(Array(f.utf8)))+b'\\0')\n" }
        script += "h.update(open(\(pyBytes(Array(f.utf8))).decode(),'rb').read())\n"
    }
    script += "print(h.hexdigest())\n"
    let c = try Child.spawn(Paths.python, ["-c", script], dir: "/tmp", label: "sha256")
    _ = try await c.wait(timeout: 20, "python's sha256")
    return "sha256:" + c.stdout.trimmingCharacters(in: .whitespacesAndNewlines)
}

func pyBytes(_ b: [UInt8]) -> String { "bytes([" + b.map(String.init).joined(separator: ",") + "])" }

func generations(_ s: Swarm, _ name: String) throws -> [GenerationStatus] {
    try reloadApp(try s.quickStatus(), name).generations ?? []
}

func outcomes(_ g: [GenerationStatus]) -> [String] { g.map { "\($0.generation) \($0.outcome)" } }

/// Every ready worker's VERSION.
func versions(_ s: Swarm, _ name: String) throws -> [String] {
    try reloadApp(try s.quickStatus(), name).workers.filter { $0.state == "ready" }.compactMap { $0.pid }.map { environmentValue($0, "VERSION") ?? "?" }
}

@Suite("Rollback: the previous generation back, rolling, under load")
struct RollbackIntegrationTests {
    @Test("reload v1→v2 under load, then rollback: the v1 config (env file included) back in every slot, 0 failed requests")
    func rollbackUnderLoad() async throws {
        try await withSwarm { s in
            let port = try Ports.free()
            let env = try s.write("web.env", "VERSION=1\nGREETING=one\n")
            func conf(_ envFile: String) -> String {
                Conf.python("web", workers: 4, port: port, extra: "") .replacingOccurrences(of: "workers = 4\n", with: "workers = 4\nenv_file = \(Conf.q(envFile))\n")
            }
            let path = try s.write("web.conf", conf(env))
            try await s.startDaemon([path])
            let v1 = try await s.waitReady("web", workers: 4)
            let g1 = try reloadApp(try s.quickStatus(), "web").generation
            let first = try generations(s, "web")
            #expect(outcomes(first) == ["\(g1) running"])
            let v1Digest = try await pythonSHA256([path, env])
            #expect(first.last?.digest == v1Digest, "digest of the config and its env file: \(first)")

            let r0 = try await s.ctl("rollback", "web")
            #expect(r0.code == 1 && r0.err.contains("web: no previous generation to roll back to"), "\(r0)")
            #expect(try await s.waitReady("web", workers: 4) == v1, "a refused rollback touches nothing")

            // v2: another env file content (a rollback must bring back what the env file held then).
            try s.write("web.env", "VERSION=2\nGREETING=two\n")
            let load = Traffic(port: port)
            let (_, report) = try await withTraffic(load) {
                try await s.ctlOK("reload", "web")
                let v2 = try await expectReplaced(s, "web", workers: 4, before: v1, generation: g1 + 1)
                #expect(try versions(s, "web") == ["2", "2", "2", "2"])
                let r = try await s.ctlOK("rollback", "web")
                #expect(r.out.contains("rolling back to the config of generation \(g1)"), "\(r)")
                #expect(r.out.contains("web: rolled back 4 workers to the config of generation \(g1) (now generation \(g1 + 2))"), "\(r)")
                _ = try await expectReplaced(s, "web", workers: 4, before: v2, generation: g1 + 2)
            }
            print("reload and rollback under load: \(report)")
            #expect(report.failed == 0, "load during the reload and the rollback: \(report)")
            #expect(report.ok > 50, "\(report)")
            #expect(try versions(s, "web") == ["1", "1", "1", "1"], "the v1 env file's content, though the file now says 2")
            let g = try generations(s, "web")
            #expect(outcomes(g) == ["\(g1) replaced", "\(g1 + 1) rolled back", "\(g1 + 2) running"])
            #expect(g.last?.restores == g1)
            #expect(g.last?.digest == v1Digest, "the restored generation keeps the v1 digest")
            #expect(g[1].digest != v1Digest && g[1].digest?.hasPrefix("sha256:") == true)
            #expect(g.allSatisfy { $0.time.hasSuffix("Z") && $0.time.count >= 20 }, "\(g)")

            // Kept in the state dir with exact modes, whatever the umask.
            var st = stat()
            #expect(stat(s.stateDir + "/generations", &st) == 0 && st.st_mode & 0o777 == 0o700)
            #expect(stat(s.stateDir + "/generations/web.json", &st) == 0 && st.st_mode & 0o777 == 0o600)
            let kept = try String(contentsOfFile: s.stateDir + "/generations/web.json", encoding: .utf8)
            #expect(kept.contains("VERSION=1\\nGREETING=one"), "the env file's text as it was is kept")

            // A second rollback goes further back than generation g1: there is nothing.
            let r2 = try await s.ctl("rollback", "web")
            #expect(r2.code == 1 && r2.err.contains("it restored generation \(g1)"), "\(r2)")
        }
    }

    @Test("the history survives daemon-reexec and a swarmd restart; a restart does not undo a rollback")
    func historySurvivesRestarts() async throws {
        try await withSwarm { s in
            let port = try Ports.free()
            let path = try s.write("web.conf", Conf.python("web", workers: 2, port: port, env: ["VERSION": "1"]))
            try await s.startDaemon([])
            try await s.ctlOK("start", path)
            _ = try await s.waitReady("web", workers: 2)
            try s.write("web.conf", Conf.python("web", workers: 2, port: port, env: ["VERSION": "2"]))
            try await s.ctlOK("reload", "web")
            _ = try await s.waitReady("web", workers: 2)
            let before = try generations(s, "web")
            #expect(before.count == 2)
            // Without env files the digest is the config's sha256sum.
            let plain = try await pythonSHA256([path])
            #expect(before.last?.digest == plain)

            try await s.ctlOK("daemon-reexec")
            try await waitUntil(timeout: 15, "swarmd to answer after daemon-reexec") { (try? s.request(.ping))?.ok == true }
            #expect(try generations(s, "web") == before, "daemon-reexec keeps the history")

            #expect(try await s.stopDaemon() == 0)
            try await s.startDaemon([])
            let pids = try await s.waitReady("web", workers: 2)
            let after = try generations(s, "web")
            #expect(after == before, "the same file after a restart: the same generations, numbers and times")
            #expect(try reloadApp(try s.quickStatus(), "web").generation == before.last?.generation)

            try await s.ctlOK("rollback", "web")
            _ = try await expectReplaced(s, "web", workers: 2, before: pids, generation: (before.last?.generation ?? 0) + 1)
            #expect(try versions(s, "web") == ["1", "1"])

            // The file still holds v2, the rolled-back config: a restart runs v1 again.
            #expect(try await s.stopDaemon() == 0)
            try await s.startDaemon([])
            _ = try await s.waitReady("web", workers: 2)
            #expect(try versions(s, "web") == ["1", "1"], "swarmd log: \(s.daemonLog.suffix(2000))")
            #expect(s.daemonLog.contains("still holds the config rolled back from"))
            #expect(outcomes(try generations(s, "web")).last?.hasSuffix("running") == true)
        }
    }
}
