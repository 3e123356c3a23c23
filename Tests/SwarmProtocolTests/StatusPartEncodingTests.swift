import Foundation
import SwarmProtocol
import Testing

/// `Codec.encodeStatusPart` writes by hand what `Codec.encode` writes for a
/// `part` response through JSONEncoder: held equal byte for byte over random
/// rows (every optional present or absent, hostile strings, extreme numbers).
@Suite struct StatusPartEncodingTests {
    typealias Seeded = SplitMix64

    static let strings: [String] = [
        "", "ready", "serving \"all\"", "back\\slash", "a/b//c", "tab\there", "line\nbreak\r\n", "\u{08}\u{0C}\u{00}\u{01}\u{1F}",
        "\u{7F}\u{80}\u{9F} del and C1", "ünïcødé", "\u{2028}\u{2029}", "😀👩‍👩‍👧", "exit 1 (signal 9)", "http 503", String(repeating: "x", count: 300),
    ]

    static func double(_ g: inout Seeded) -> Double {
        switch Int.random(in: 0..<5, using: &g) {
        case 0: return (Double.random(in: 0...100_000, using: &g) * 1000).rounded() / 1000
        case 1: return [0, -0.0, 1, 0.1, 1e-7, 1e16, 1e21, 5e-324, 1.7976931348623157e308].randomElement(using: &g)!
        default:
            while true {
                let d = Double(bitPattern: g.next())
                if d.isFinite { return d }
            }
        }
    }

    static func row(_ g: inout Seeded) -> WorkerStatus {
        func maybe<T>(_ make: () -> T) -> T? { Bool.random(using: &g) ? make() : nil }
        var w = WorkerStatus(
            slot: Int.random(in: 0...4096, using: &g), pid: maybe { Int32.random(in: Int32.min...Int32.max, using: &g) },
            state: strings.randomElement(using: &g)!, generation: Int.random(in: Int.min...Int.max, using: &g),
            restarts: Int.random(in: 0...Int.max, using: &g), uptimeS: double(&g))
        w.cpuPercent = maybe { double(&g) }
        w.rssBytes = maybe { Int64.random(in: Int64.min...Int64.max, using: &g) }
        w.cpuSeconds = maybe { double(&g) }
        w.cpuShare = maybe { double(&g) }
        w.statusText = maybe { strings.randomElement(using: &g)! }
        w.lastExit = maybe { strings.randomElement(using: &g)! }
        w.cpuPinned = maybe { Int.random(in: -1...512, using: &g) }
        w.health = maybe { strings.randomElement(using: &g)! }
        w.lastProbe = maybe { strings.randomElement(using: &g)! }
        w.acceptQueue = maybe { Int.random(in: 0...Int.max, using: &g) }
        w.connections = maybe { Int.random(in: 0...Int.max, using: &g) }
        return w
    }

    static func viaEncoder(id: UInt64, app: String, workers: [WorkerStatus]) -> [UInt8] {
        var part = Response(id: id, kind: .part)
        part.part = StatusPart(app: app, workers: workers)
        return Codec.encode(part)
    }

    @Test(arguments: 0..<40)
    func randomRowsEncodeAsJSONEncoderDoes(seed: UInt64) throws {
        var g = SplitMix64(seed: fuzzSeed(default: 0x5EED) &+ seed)
        let workers = (0..<Int.random(in: 0...64, using: &g)).map { _ in Self.row(&g) }
        let id = [0, 1, UInt64.max, g.next()].randomElement(using: &g)!
        let app = Self.strings.randomElement(using: &g)!
        let mine = Codec.encodeStatusPart(id: id, app: app, workers: workers)
        let theirs = Self.viaEncoder(id: id, app: app, workers: workers)
        #expect(String(decoding: mine, as: UTF8.self) == String(decoding: theirs, as: UTF8.self))
        let decoded = try JSONDecoder().decode(Response.self, from: Data(mine.dropLast()))
        #expect(decoded.kind == .part && decoded.part?.app == app && decoded.part?.workers == workers)
    }

    @Test func bareAndFullRowsEncodeAsJSONEncoderDoes() {
        let bare = WorkerStatus(slot: 3, pid: nil, state: "backoff", generation: 1, restarts: 2, uptimeS: 0)
        var full = WorkerStatus(slot: 0, pid: 100, state: "ready", generation: 3, restarts: 0, uptimeS: 60.125, cpuPercent: 1.5,
                                rssBytes: 30 << 20, cpuSeconds: 2.25, cpuShare: 0.5, statusText: "serving \"all\"", lastExit: "exit 1", cpuPinned: 1)
        full.health = "healthy"
        full.lastProbe = "http 200"
        full.acceptQueue = 7
        full.connections = 12
        // A field added to WorkerStatus must be added to the writer (and set here).
        let unset = Mirror(reflecting: full).children.filter { "\($0.value)" == "nil" }.map { $0.label ?? "?" }
        #expect(unset.isEmpty, "fields left nil in the full row: \(unset)")
        #expect(Mirror(reflecting: full).children.count == 17, "WorkerStatus has fields the writer may not know")
        for workers in [[], [bare], [full], [bare, full, bare]] {
            #expect(Codec.encodeStatusPart(id: 9, app: "web", workers: workers) == Self.viaEncoder(id: 9, app: "web", workers: workers))
        }
    }
}
