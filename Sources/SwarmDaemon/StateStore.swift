import Foundation
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
