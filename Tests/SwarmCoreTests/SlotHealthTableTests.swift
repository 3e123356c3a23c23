import Foundation
import Testing
@testable import SwarmCore

/// `SlotHealthTable` keeps the retry deadlines of unhealthy slots in a heap,
/// so that `AppHealthBook.deadline` needs no walk over every slot's entry.
/// Held here against that walk, over random changes made through every way
/// the core changes entries.
@Suite("Slot health table")
struct SlotHealthTableTests {
    /// What `deadline` computed before the table: a walk over every entry.
    func walked(_ t: SlotHealthTable) -> Instant? {
        var best: Instant?
        for (_, h) in t where h.verdict != nil && h.replacement == nil {
            if let r = h.retryAt, best.map({ r < $0 }) ?? true { best = r }
        }
        return best
    }

    /// A small deterministic generator (the same sequence on every machine).
    struct Steps {
        var state: UInt64
        mutating func next(_ n: Int) -> Int {
            state = state &* 6_364_136_223_846_793_005 &+ 1_442_695_040_888_963_407
            return Int((state >> 33) % UInt64(n))
        }
    }

    @Test(arguments: [1, 2, 3, 4, 5, 6, 7, 8])
    func theEarliestRetryIsAlwaysTheOneAWalkFinds(seed: UInt64) throws {
        var t = SlotHealthTable()
        var rng = Steps(state: seed)
        for step in 0..<3_000 {
            let k = rng.next(64)
            let at = Instant(nanoseconds: Int64(rng.next(10_000)) * 1_000_000)
            switch rng.next(8) {
            case 0: t[k] = nil
            case 1: t[k] = SlotHealth(worker: WorkerID(UInt64(rng.next(1_000))))
            case 2: t[k]?.verdict = .unhealthy("http 503 ×3")
            case 3: t[k]?.verdict = nil
            case 4: t[k]?.retryAt = at
            case 5: t[k]?.replacement = rng.next(2) == 0 ? nil : WorkerID(UInt64(rng.next(1_000)))
            case 6:
                // As `updateHealth` does: an entry made on first use through the default subscript.
                t[k, default: SlotHealth(worker: WorkerID(7))].verdict = .hung("queue 3 for 10 s")
                t[k, default: SlotHealth(worker: WorkerID(7))].retryAt = at
            default:
                // As `healthTick` does: entries dropped while iterating a copy.
                for (key, h) in t where h.worker.raw % 5 == UInt64(rng.next(5)) { t[key] = nil }
            }
            #expect(t.earliestRetry == walked(t), "seed \(seed), step \(step)")
        }
    }

    @Test func itIsCodedAsThePlainDictionaryAndRebuildsItsHeapWhenDecoded() throws {
        var t = SlotHealthTable()
        t[3] = SlotHealth(worker: WorkerID(30))
        t[3]?.verdict = .unhealthy("tcp refused ×3")
        t[3]?.retryAt = Instant(nanoseconds: 5_000)
        t[9] = SlotHealth(worker: WorkerID(90))
        t[9]?.verdict = .hung("queue 1 for 10 s")
        t[9]?.retryAt = Instant(nanoseconds: 2_000)
        t[9]?.replacement = WorkerID(91)
        let data = try JSONEncoder().encode(t)
        // What a swarmd image from before the table wrote (and reads): a dictionary of entries.
        let plain = try JSONDecoder().decode([Int: SlotHealth].self, from: data)
        #expect(plain == t.entries)
        let back = try JSONDecoder().decode(SlotHealthTable.self, from: try JSONEncoder().encode(plain))
        #expect(back == t)
        #expect(back.earliestRetry == Instant(nanoseconds: 5_000), "slot 9 has a replacement: its retry does not count")
    }
}
