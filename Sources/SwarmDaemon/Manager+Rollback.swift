import Crypto
import Foundation
import Glibc
import SwarmConfig
import SwarmCore
import SwarmProtocol
import SwarmSystem

/// What the shell keeps of config generations beyond what the core holds:
/// the files each config was read from (by digest) and what each app's
/// generations file holds now. The core decides the history (numbers,
/// outcomes, what `rollback` goes to); the shell only stores and renders it.
final class GenerationKeeper {
    /// Files as read, by digest, until a generation that uses them is saved (and after, for the next save).
    var sources: [String: ConfigSource] = [:]
    /// The last digests read: never pruned (a reload in flight has no record yet).
    var recent: [String] = []
    /// Per app: what its generations file holds.
    var saved: [String: [StoredGeneration]] = [:]
    var store: GenerationStore?
    /// Apps whose generations file has been read into `saved` (a re-executed swarmd reads it when first needed).
    var loaded: Set<String> = []
    /// Why the last save failed (logged once per streak).
    var lastError: String?

    func remember(_ source: ConfigSource) {
        sources[source.digest] = source
        recent.removeAll { $0 == source.digest }
        recent.append(source.digest)
        if recent.count > 64 { recent.removeFirst(recent.count - 64) }
    }
}

extension Manager {
    // MARK: Reading configs

    /// The config file and its env files as they are now, and their digest:
    /// SHA-256 of the config file's bytes, then for each env file a NUL, its
    /// absolute path, a NUL and its bytes (with no env file: `sha256sum` of the
    /// config). nil when a file cannot be read (the generation is kept without a digest).
    func readSource(_ spec: AppSpec) -> ConfigSource? {
        var hash = SHA256()
        var files: [ConfigSource.File] = []
        for (i, path) in ([spec.sourcePath] + spec.envFiles).enumerated() {
            guard let bytes = Manager.readSmallFile(path, limit: AppConfig.maxFileSize) else { return nil }
            if i > 0 { hash.update(data: [0] + Array(path.utf8) + [0]) }
            hash.update(data: bytes)
            files.append(ConfigSource.File(path: path, text: String(decoding: bytes, as: UTF8.self)))
        }
        let digest = "sha256:" + Digest.hex(hash.finalize())
        let source = ConfigSource(files: files, digest: digest)
        generationKeeper.remember(source)
        return source
    }

    /// A regular file of at most `limit` bytes (O_NONBLOCK: a FIFO put there since the config was parsed cannot block swarmd).
    static func readSmallFile(_ path: String, limit: Int) -> [UInt8]? {
        let fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC | O_NOCTTY)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        var st = stat()
        guard fstat(fd, &st) == 0, st.st_mode & S_IFMT == S_IFREG, st.st_size <= limit else { return nil }
        var bytes: [UInt8] = []
        var buf = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = buf.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if n < 0 && errno == EINTR { continue }
            guard n >= 0 else { return nil }
            if n == 0 { return bytes }
            bytes += buf[0..<n]
            if bytes.count > limit { return nil }
        }
    }

    func digest(of spec: AppSpec) -> String? { readSource(spec)?.digest }

    // MARK: The generations files

    func generationStore() -> GenerationStore? {
        if let s = generationKeeper.store { return s }
        do {
            let s = try GenerationStore.open(in: stateDirectory)
            generationKeeper.store = s
            return s
        } catch {
            log.error("Failed to open the generation history directory in \(options.stateDir): \(error); rollback works until swarmd restarts")
            return nil
        }
    }

    /// What a previous swarmd kept of `name`'s generations, as core records (its files remembered by digest).
    func keptGenerations(_ name: String) -> [StoredGeneration] {
        guard AppConfig.nameProblem(name) == nil, let store = generationStore() else { return [] }
        let (kept, problem) = store.load(name, now: kernel.wallClock())
        if let problem { log.error("\(problem)") }
        generationKeeper.saved[name] = kept
        generationKeeper.loaded.insert(name)
        for g in kept {
            if let digest = g.digest, let files = g.files { generationKeeper.sources[digest] = ConfigSource(files: files, digest: digest) }
        }
        return kept
    }

    /// What `name`'s generations file holds, read once (after daemon-reexec the keeper starts empty).
    func savedGenerations(_ name: String) -> [StoredGeneration] {
        if !generationKeeper.loaded.contains(name) { _ = keptGenerations(name) }
        return generationKeeper.saved[name] ?? []
    }

    func records(_ kept: [StoredGeneration]) -> [GenerationRecord] {
        let mono = kernel.now(), wall = kernel.wallClock()
        return kept.map {
            GenerationRecord(generation: $0.generation, at: Instant(nanoseconds: mono - (wall - $0.timeNS)), outcome: $0.outcome,
                             digest: $0.digest, restores: $0.restores, spec: $0.spec)
        }
    }

    /// Before a start at swarmd's start-up: what the previous swarmd kept,
    /// and the spec to start. When the file still holds a config that
    /// `rollback` undid, the rolled-back-to config runs again (a restart does not
    /// undo a rollback); a changed file is a new generation as usual.
    func restoreGenerations(_ name: String, fileSpec: AppSpec) -> AppSpec {
        let kept = keptGenerations(name)
        let fileDigest = digest(of: fileSpec)
        var spec = fileSpec
        var digest = fileDigest
        if let running = kept.last(where: { $0.outcome == .running }), running.restores != nil, let keptSpec = running.spec,
           let fileDigest, running.digest != fileDigest,
           kept.contains(where: { $0.outcome == .rolledBack && $0.digest == fileDigest }) {
            log.notice("\(name): \(fileSpec.sourcePath) still holds the config rolled back from; starting the config of generation \(running.generation) again (edit the file and reload to go forward)")
            spec = keptSpec
            digest = running.digest
        }
        feed(.command(newRequest(nil), .history(app: name, records: records(kept), digest: digest)))
        return spec
    }

    /// Before `swarmctl start`: the digest of the file about to start (a new app has no kept history).
    func announceStart(_ spec: AppSpec) {
        feed(.command(newRequest(nil), .history(app: spec.name, records: [], digest: digest(of: spec))))
    }

    /// Writes the generations file of every app whose history changed; called with every save of apps.json.
    func saveGenerations() {
        guard let store = generationStore() else { return }
        let mono = kernel.now(), wall = kernel.wallClock()
        var referenced = Set(generationKeeper.recent)
        for name in supervisor.appOrder {
            guard let app = supervisor.apps[name], app.goal != .deleted, AppConfig.nameProblem(name) == nil else { continue }
            let before = savedGenerations(name)
            let stored: [StoredGeneration] = (app.history ?? []).map { r in
                let old = before.first { $0.generation == r.generation && $0.digest == r.digest }
                var files = r.digest.flatMap { generationKeeper.sources[$0]?.files } ?? old?.files
                if let f = files, f.reduce(0, { $0 + $1.text.utf8.count }) > GenerationStore.sourceLimit { files = nil }
                if let d = r.digest { referenced.insert(d) }
                return StoredGeneration(generation: r.generation, timeNS: old?.timeNS ?? (wall - (mono - r.at.nanoseconds)),
                                        outcome: r.outcome, digest: r.digest, restores: r.restores, spec: r.spec, files: files)
            }
            guard stored != before else { continue }
            do {
                try store.save(name, stored)
                generationKeeper.saved[name] = stored
                generationKeeper.lastError = nil
            } catch {
                if generationKeeper.lastError == nil {
                    log.error("Failed to write \(store.directory.pathOf(GenerationStore.fileName(name))): \(error); the generation history is in force but a restart will not know it")
                }
                generationKeeper.lastError = "\(error)"
            }
        }
        for digest in generationKeeper.sources.keys where !referenced.contains(digest) { generationKeeper.sources[digest] = nil }
    }

    /// The app is gone for good: so is its history.
    func forgetGenerations(_ name: String) {
        generationKeeper.saved[name] = nil
        generationKeeper.loaded.insert(name)
        guard AppConfig.nameProblem(name) == nil, let store = generationStore() else { return }
        do { try store.remove(name) } catch {
            log.warning("Failed to remove \(store.directory.pathOf(GenerationStore.fileName(name))): \(error), ignoring")
        }
    }

    /// `status --json`'s `generations` of one app.
    func generationStatus(_ app: App) -> [GenerationStatus]? {
        guard let history = app.history, !history.isEmpty else { return nil }
        let mono = kernel.now(), wall = kernel.wallClock()
        let saved = savedGenerations(app.name)
        return history.map { r in
            let ns = saved.first { $0.generation == r.generation && $0.digest == r.digest }?.timeNS ?? (wall - (mono - r.at.nanoseconds))
            return GenerationStatus(generation: r.generation, time: Timestamp.rfc3339(nanosecondsSinceEpoch: ns),
                                    outcome: r.outcome.rawValue, digest: r.digest, restores: r.restores)
        }
    }

    // MARK: swarmctl rollback

    func rollback(_ request: Request, _ client: ControlClient) {
        guard let selector = selector(request, client) else { return }
        let names: [String]
        switch selector {
        case .all: names = supervisor.appOrder.filter { supervisor.apps[$0]?.goal != .deleted }
        case let .app(name):
            if supervisor.apps[name] == nil, let broken = brokenApps[name] {
                return control.send(client, .failure(request.id, "\(name) cannot run: \(broken.reason); a rollback needs a running app"))
            }
            names = [name]
        }
        guard !names.isEmpty else { return control.send(client, .success(request.id, "no apps to roll back")) }
        submit(names.map { .rollback($0) }, for: request, client)
    }
}
