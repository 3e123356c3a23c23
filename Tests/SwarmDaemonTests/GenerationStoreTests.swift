import Foundation
import Glibc
import SwarmCore
@testable import SwarmDaemon
import SwarmSystem
import Testing

@Suite("generations/<app>.json: the kept config generations")
struct GenerationStoreTests {
    func generation(_ n: Int, _ outcome: GenerationRecord.Outcome, text: String = "name = \"web\"\n") -> StoredGeneration {
        StoredGeneration(generation: n, timeNS: 1_700_000_000_000_000_000 + Int64(n), outcome: outcome, digest: "sha256:\(n)", restores: nil,
                         spec: AppSpec(name: "web", command: ["/bin/true"], workers: 2),
                         files: [ConfigSource.File(path: "/etc/web.conf", text: text)])
    }

    @Test("round trip with exact modes under a strict umask (0177): folder 0700, file 0600")
    func roundTripAndModes() throws {
        let dir = try TempDir()
        let old = umask(0o177)
        defer { umask(old) }
        let store = try GenerationStore.open(in: try TrustedDirectory(path: dir.path))
        let kept = [generation(1, .replaced), generation(2, .running, text: "name = \"web\"\nworkers = 3\n")]
        try store.save("web", kept)
        let (back, problem) = store.load("web", now: 0)
        #expect(problem == nil)
        #expect(back == kept)
        var st = stat()
        #expect(stat(dir.path + "/generations", &st) == 0 && st.st_mode & 0o777 == 0o700, "mode \(String(st.st_mode & 0o777, radix: 8))")
        #expect(stat(dir.path + "/generations/web.json", &st) == 0 && st.st_mode & 0o777 == 0o600, "mode \(String(st.st_mode & 0o777, radix: 8))")
        // Replaced whole: no temp file is left beside it.
        try store.save("web", [generation(2, .running)])
        #expect(try FileManager.default.contentsOfDirectory(atPath: dir.path + "/generations") == ["web.json"])
        #expect(store.load("web", now: 0).generations.map(\.generation) == [2])
    }

    @Test("a missing file is an empty history; a corrupt one is moved aside and reported; another app's is refused")
    func badFiles() throws {
        let dir = try TempDir()
        let store = try GenerationStore.open(in: try TrustedDirectory(path: dir.path))
        #expect(store.load("web", now: 0).generations.isEmpty && store.load("web", now: 0).problem == nil)
        try "{not json".write(toFile: dir.path + "/generations/web.json", atomically: true, encoding: .utf8)
        let (g, problem) = store.load("web", now: 5_000_000_000)
        #expect(g.isEmpty)
        #expect(problem?.contains("generations/web.json is unreadable") == true && problem?.contains("web.json.corrupt-5") == true, "\(String(describing: problem))")
        #expect(FileManager.default.fileExists(atPath: dir.path + "/generations/web.json.corrupt-5"))
        try store.save("api", [generation(1, .running)])
        try FileManager.default.moveItem(atPath: dir.path + "/generations/api.json", toPath: dir.path + "/generations/web.json")
        #expect(store.load("web", now: 0).problem?.contains("is about app 'api'") == true)
    }

    @Test("a symlink in place of the file is not followed")
    func noSymlink() throws {
        let dir = try TempDir()
        let store = try GenerationStore.open(in: try TrustedDirectory(path: dir.path))
        try "secret".write(toFile: dir.path + "/target", atomically: true, encoding: .utf8)
        symlink(dir.path + "/target", dir.path + "/generations/web.json")
        let (g, problem) = store.load("web", now: 0)
        #expect(g.isEmpty && problem != nil)
        #expect(try String(contentsOfFile: dir.path + "/target", encoding: .utf8) == "secret")
    }
}
