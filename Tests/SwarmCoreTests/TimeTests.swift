import Testing
@testable import SwarmCore

@Suite("Time")
struct TimeTests {
    @Test func instantArithmetic() {
        let a = Instant.zero + .milliseconds(1500)
        #expect(a.nanoseconds == 1_500_000_000)
        #expect(a - .zero == .milliseconds(1500))
        #expect(Instant.zero - a == .milliseconds(-1500))
        #expect(Instant.zero < a)
        #expect(a.description == "1.5s")
    }

    @Test func durationNanosecondsSaturate() {
        #expect(Duration.seconds(2).nanoseconds == 2_000_000_000)
        #expect(Duration.nanoseconds(-7).nanoseconds == -7)
        #expect(Duration.seconds(Int64.max).nanoseconds == .max)
        #expect(Duration.seconds(Int64.min).nanoseconds == .min)
        #expect(Duration.milliseconds(250).seconds == 0.25)
    }

    @Test(arguments: [
        (Duration.zero, "0s"), (.seconds(7200), "2h"), (.seconds(120), "2m"), (.seconds(10), "10s"),
        (.milliseconds(250), "250ms"), (.microseconds(3), "3us"), (.nanoseconds(5), "5ns"), (.milliseconds(1500), "1500ms"),
    ])
    func humanReadable(d: Duration, text: String) {
        #expect(d.humanReadable == text)
    }
}
