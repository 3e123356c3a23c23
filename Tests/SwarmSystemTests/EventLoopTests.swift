import Glibc
import SwarmSystem
import SwarmSystemd
import Testing

@Suite("EventLoop sources")
struct EventLoopTests {
    @Test("a periodic source may cancel itself from its own handler: it stops, and nothing touches the freed source")
    func periodicCancelsItself() throws {
        let loop = try EventLoop()
        var fired = 0
        var periodic: EventLoop.Source?
        periodic = try loop.addPeriodic(every: 1_000_000) {
            fired += 1
            if fired == 3 {
                periodic?.cancel()
                periodic = nil
            }
        }
        let deadline = Posix.monotonicNanoseconds() + 2_000_000_000
        // Run well past the third firing: a fourth would mean the cancel did not hold.
        while Posix.monotonicNanoseconds() < deadline, fired < 3 { _ = try loop.runOnce(timeout: 10_000_000) }
        let after = Posix.monotonicNanoseconds() + 50_000_000
        while Posix.monotonicNanoseconds() < after { _ = try loop.runOnce(timeout: 5_000_000) }
        #expect(fired == 3, "fired \(fired) times")
        #expect(periodic == nil)
    }
}
