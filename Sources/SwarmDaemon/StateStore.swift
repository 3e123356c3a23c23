import Foundation
import SwarmCore
import SwarmSystem

/// The apps swarmd was asked to run, remembered across restarts.
struct RememberedApp: Codable, Equatable {
    var name: String
    var config: String
    /// The worker count if `scale` changed it from the config's.
    var workers: Int?
    var stopped: Bool
    /// `swarmctl drain`: remembered until `undrain`, across restarts.
    var drained: Bool?
}

struct StateFile: Codable {
    var version = 1
    var apps: [RememberedApp]
}

/// `apps.json` in the state directory: read and written only through the
/// trusted directory's fd (no symlink followed, regular files only, bounded,
/// replaced atomically).
struct StateStore {
    static let name = "apps.json"
    static let sizeLimit = 16 << 20
    let directory: TrustedDirectory

    var path: String { directory.pathOf(StateStore.name) }

    /// The remembered apps; an unreadable or corrupt file is moved aside and reported, never fatal.
    func load(now: Int64) -> (apps: [RememberedApp], problem: String?) {
        do {
            guard let bytes = try directory.readFile(StateStore.name, limit: StateStore.sizeLimit) else { return ([], nil) }
            let state = try JSONDecoder().decode(StateFile.self, from: Data(bytes))
            return (state.apps, nil)
        } catch {
            let aside = "\(StateStore.name).corrupt-\(now / 1_000_000_000)"
            do {
                try directory.rename(StateStore.name, to: aside)
                return ([], "state file \(path) is unreadable (\(error)); moved it to \(directory.pathOf(aside)) and started with no remembered apps")
            } catch let moveError {
                return ([], "state file \(path) is unreadable (\(error)) and could not be moved aside (\(moveError)); started with no remembered apps")
            }
        }
    }

    func save(_ apps: [RememberedApp]) throws {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
        let data = try encoder.encode(StateFile(apps: apps))
        try directory.writeFileAtomically(StateStore.name, Array(data) + [10], mode: 0o600)
    }
}

/// One kept generation as `generations/<app>.json` holds it: what the core
/// knows (number, outcome, digest, the config as it ran) with wall-clock
/// time, and the text of the files it was read from.
struct StoredGeneration: Codable, Equatable {
    var generation: Int
    /// Nanoseconds since the epoch when its reload (or start) began.
    var timeNS: Int64
    var outcome: GenerationRecord.Outcome
    var digest: String?
    var restores: Int?
    /// The config as swarmd ran it (env files merged): what `rollback` starts again.
    var spec: AppSpec?
    /// The config file and its env files as read; nil when not known (read before this swarmd kept them, or over the bound).
    var files: [ConfigSource.File]?

    enum CodingKeys: String, CodingKey {
        case generation, outcome, digest, restores, spec, files
        case timeNS = "time_ns"
    }
}

struct GenerationsFile: Codable {
    var version = 1
    var app: String
    var generations: [StoredGeneration]
}

/// The files one config was read from, as read, and their digest.
struct ConfigSource: Codable, Equatable {
    struct File: Codable, Equatable {
        var path: String
        var text: String
    }
    var files: [File]
    var digest: String
}

/// `generations/<app>.json` in the state directory: each app's last
/// generations, written whole and atomically (mode 0600, whatever the
/// umask: `writeFileAtomically` fchmods), read bounded, a corrupt one moved
/// aside and reported.
struct GenerationStore {
    static let directoryName = "generations"
    /// A generations file larger than this is not read; the files of one
    /// generation over `sourceLimit` are not kept (the config still is).
    static let sizeLimit = 16 << 20
    static let sourceLimit = 2 << 20
    let directory: TrustedDirectory

    static func open(in state: TrustedDirectory) throws -> GenerationStore {
        GenerationStore(directory: try state.subdirectory(directoryName, owners: [geteuid()], create: 0o700))
    }

    /// Only names `AppConfig.nameProblem` accepts reach here: no '/', no leading '.'.
    static func fileName(_ app: String) -> String { "\(app).json" }

    func load(_ app: String, now: Int64) -> (generations: [StoredGeneration], problem: String?) {
        let name = GenerationStore.fileName(app)
        do {
            guard let bytes = try directory.readFile(name, limit: GenerationStore.sizeLimit) else { return ([], nil) }
            let file = try JSONDecoder().decode(GenerationsFile.self, from: Data(bytes))
            guard file.app == app else { return ([], "\(directory.pathOf(name)) is about app '\(file.app)', not '\(app)', ignoring") }
            return (file.generations, nil)
        } catch {
            let aside = "\(name).corrupt-\(now / 1_000_000_000)"
            let moved = (try? directory.rename(name, to: aside)) != nil
            return ([], "generation history \(directory.pathOf(name)) is unreadable (\(error))" + (moved ? "; moved it to \(directory.pathOf(aside))" : "") + ", starting a new one")
        }
    }

    func save(_ app: String, _ generations: [StoredGeneration]) throws {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
        let data = try encoder.encode(GenerationsFile(app: app, generations: generations))
        try directory.writeFileAtomically(GenerationStore.fileName(app), Array(data) + [10], mode: 0o600)
    }

    func remove(_ app: String) throws {
        _ = try directory.remove(GenerationStore.fileName(app))
    }
}
