import Foundation
import SwarmSystem

/// The apps swarmd was asked to run, remembered across restarts.
struct RememberedApp: Codable, Equatable {
    var name: String
    var config: String
    /// The worker count if `scale` changed it from the config's.
    var workers: Int?
    var stopped: Bool
}

struct StateFile: Codable {
    var version = 1
    var apps: [RememberedApp]
}

struct StateStore {
    let path: String

    init(directory: String) { path = directory + "/apps.json" }

    /// The remembered apps; a corrupt file is moved aside and reported, never fatal.
    func load() -> (apps: [RememberedApp], problem: String?) {
        guard FileManager.default.fileExists(atPath: path) else { return ([], nil) }
        do {
            let bytes = try Posix.readFile(path)
            let state = try JSONDecoder().decode(StateFile.self, from: Data(bytes))
            return (state.apps, nil)
        } catch {
            let aside = "\(path).corrupt-\(Int(Date().timeIntervalSince1970))"
            rename(path, aside)
            return ([], "state file \(path) is unreadable (\(error)); moved it to \(aside) and started with no remembered apps")
        }
    }

    func save(_ apps: [RememberedApp]) throws {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
        let data = try encoder.encode(StateFile(apps: apps))
        try Posix.writeFileAtomically(path, Array(data) + [10], mode: 0o600)
    }
}
