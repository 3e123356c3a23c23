import Foundation
import SwarmProtocol
import Testing

/// SplitMix64: small, fast, and the same sequence on every machine for a seed.
struct SplitMix64: RandomNumberGenerator {
    private var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

/// The seed of a fuzz run: fixed so CI is repeatable, or SWARM_FUZZ_SEED to explore.
func fuzzSeed(default seed: UInt64) -> UInt64 {
    ProcessInfo.processInfo.environment["SWARM_FUZZ_SEED"].flatMap { UInt64($0, radix: 16) } ?? seed
}

/// Frames a client might send: valid requests and every way of breaking them.
struct RequestFrameGenerator {
    var rng: SplitMix64
    let valid: [[UInt8]]

    init(seed: UInt64) {
        rng = SplitMix64(seed: seed)
        var valid: [[UInt8]] = []
        for verb in Verb.allCases {
            valid.append(Array(Codec.encode(Request(id: 1, verb: verb)).dropLast()))
            valid.append(Array(Codec.encode(Request(id: .max, verb: verb, files: ["/etc/swarm/a.conf"], name: "web", replace: false,
                                                    count: 3, lines: 10, follow: true)).dropLast()))
        }
        self.valid = valid
    }

    static let tokens = ["{", "}", "[", "]", ",", ":", "\"v\"", "\"id\"", "\"verb\"", "\"count\"", "\"files\"", "1", "2", "-1", "0",
                         "1e999", "-0.0", "18446744073709551616", "99999999999999999999999999", "null", "true", "false", "\"ping\"",
                         "\"scale\"", "\"\\ud800\"", "\"\\u0000\"", "\"", "\\", " ", "\t", "\r", "\n", "nan", "Infinity", "\u{FEFF}"]

    mutating func pick<T>(_ items: [T]) -> T { items[Int.random(in: 0..<items.count, using: &rng)] }
    mutating func int(_ range: Range<Int>) -> Int { Int.random(in: range, using: &rng) }

    mutating func next() -> [UInt8] {
        var frame = pick(valid)
        switch int(0..<10) {
        case 0: // random bytes
            frame = (0..<int(0..<300)).map { _ in UInt8.random(in: 0...255, using: &rng) }
        case 1: // truncated
            frame = Array(frame.prefix(int(0..<frame.count)))
        case 2: // byte flips
            for _ in 0..<int(1..<6) { frame[int(0..<frame.count)] ^= UInt8(1 << int(0..<8)) }
        case 3: // splice two requests
            let other = pick(valid)
            frame = Array(frame.prefix(int(0..<frame.count)) + other.suffix(int(0..<other.count)))
        case 4: // deep nesting, bare or inside a request
            let depth = pick([100, 512, 513, 1000, 10_000, 100_000])
            let open = pick(["[", "{\"a\":", "[{\"a\":"])
            let nest = String(repeating: open, count: depth)
            frame = Array((int(0..<2) == 0 ? nest : #"{"v":1,"id":1,"verb":"ping","x":"# + nest).utf8)
        case 5: // huge and odd numbers in every numeric field
            let n = pick(["1e999", "-1e999", "18446744073709551616", "-9223372036854775809", "1.0", "1e0", "0x10", "01", "-0",
                          String(repeating: "9", count: 5000)])
            frame = Array(pick([#"{"v":\#(n),"id":1,"verb":"ping"}"#, #"{"v":1,"id":\#(n),"verb":"ping"}"#,
                                #"{"v":1,"id":1,"verb":"scale","count":\#(n)}"#, #"{"v":1,"id":1,"verb":"logs","lines":\#(n)}"#]).utf8)
        case 6: // invalid UTF-8 inside and outside strings
            let bad: [[UInt8]] = [[0xFF], [0xC0, 0x80], [0xED, 0xA0, 0x80], [0xF4, 0x90, 0x80, 0x80], [0xE2, 0x82], [0x80]]
            for _ in 0..<int(1..<4) { frame.insert(contentsOf: pick(bad), at: int(0..<frame.count + 1)) }
        case 7: // token soup
            frame = Array((0..<int(1..<60)).map { _ in pick(Self.tokens) }.joined().utf8)
        case 8: // insert random tokens into a valid request
            for _ in 0..<int(1..<5) { frame.insert(contentsOf: Array(pick(Self.tokens).utf8), at: int(0..<frame.count + 1)) }
        default: // delete or duplicate a random range
            let a = int(0..<frame.count), b = int(a..<frame.count + 1)
            if int(0..<2) == 0 { frame.removeSubrange(a..<b) } else { frame.insert(contentsOf: frame[a..<b], at: b) }
        }
        return frame
    }
}

@Suite struct ProtocolFuzzTests {
    static let seed = fuzzSeed(default: 0x5EED_C0DE_0001)
    static let cases = 20_000

    @Test("request decoder answers 20,000 random frames (seed 0x5EEDC0DE0001, or SWARM_FUZZ_SEED)")
    func requestDecoderAnswersEveryFrame() throws {
        var generator = RequestFrameGenerator(seed: Self.seed)
        var answered = 0, requests = 0, tooLarge = 0, malformed = 0, unsupported = 0
        let started = ContinuousClock.now
        for index in 0..<Self.cases {
            let input = generator.next()
            // Straight to the decoder: a Request or a FrameError, nothing else (typed throws), and no crash.
            do {
                _ = try Codec.decodeRequest(input)
                requests += 1
            } catch {
                switch error {
                case .malformed: malformed += 1
                case .unsupportedVersion: unsupported += 1
                case .tooLarge: Issue.record("decodeRequest has no size limit to report (seed \(Self.seed), case \(index))")
                }
            }
            // Through a reader with a small limit, in random chunks: every line gets an answer.
            var reader = FrameReader(limit: 4096)
            var stream = input + [UInt8(ascii: "\n")]
            let lines = stream.split(separator: UInt8(ascii: "\n"), omittingEmptySubsequences: false).count - 1
            var frames = 0
            var refused = false
            while !stream.isEmpty && !refused {
                let n = generator.int(1..<stream.count + 1)
                reader.append(stream.prefix(n))
                stream.removeFirst(n)
                do {
                    while let frame = try reader.next() {
                        frames += 1
                        _ = try? Codec.decodeRequest(frame)
                    }
                } catch {
                    #expect(error == .tooLarge(limit: 4096), "seed \(Self.seed), case \(index)")
                    #expect(reader.pendingCount <= 4096 + input.count + 1)
                    tooLarge += 1
                    refused = true
                }
            }
            #expect(refused || frames == lines, "seed \(Self.seed), case \(index): \(frames) frames of \(lines) lines")
            answered += 1
        }
        let elapsed = ContinuousClock.now - started
        print("protocol fuzz: seed \(String(Self.seed, radix: 16)), \(answered) frames in \(elapsed): \(requests) requests, "
              + "\(malformed) malformed, \(unsupported) unsupported version, \(tooLarge) refused by the reader")
        #expect(answered == Self.cases)
        #expect(requests > 1000 && malformed > 1000 && unsupported > 0 && tooLarge > 0, "the generator covers every outcome")
    }

    /// Foundation's JSONDecoder traps on exactly this (its limit is 512, passed on the last byte).
    @Test func nesting513DeepAtTheEndOfTheFrame() {
        for frame in [String(repeating: "[", count: 513), #"{"v":1,"x":"# + String(repeating: "[", count: 512)] {
            #expect(throws: FrameError.malformed("nested deeper than 64 levels")) { try Codec.decodeRequest(Array(frame.utf8)) }
            #expect(throws: FrameError.self) { try Codec.decodeResponse(Array(frame.utf8)) }
            #expect(Codec.peekID(Array(frame.utf8)) == 0)
        }
    }

    @Test func nestingUpToTheLimitIsDecoded() throws {
        let x = String(repeating: "[", count: 63) + String(repeating: "]", count: 63)
        let atLimit = Array(#"{"v":1,"id":4,"verb":"ping","x":\#(x)}"#.utf8)
        #expect(try Codec.decodeRequest(atLimit) == Request(id: 4, verb: .ping))
        let deeper = Array(#"{"v":1,"id":4,"verb":"ping","x":[\#(x)]}"#.utf8)
        #expect(throws: FrameError.malformed("nested deeper than 64 levels")) { try Codec.decodeRequest(deeper) }
        // Brackets inside strings are text, not nesting.
        let text = String(repeating: "[{", count: 500) + "\\\"" + String(repeating: "[", count: 500)
        let inString = Array(#"{"v":1,"id":4,"verb":"ping","name":"\#(text)"}"#.utf8)
        #expect(try Codec.decodeRequest(inString).name?.count == 1501)
    }

    @Test(arguments: [65, 512, 513, 514, 10_000, 100_000, 1 << 20])
    func deepNestingIsMalformedNotACrash(depth: Int) {
        for open in ["[", "{\"a\":", "{\"v\":1,\"x\":["] {
            let frame = Array(String(repeating: open, count: depth).utf8)
            #expect(throws: FrameError.self) { try Codec.decodeRequest(frame) }
            _ = Codec.peekID(frame)
            #expect(throws: FrameError.self) { try Codec.decodeResponse(frame) }
        }
        // Balanced and deep inside an otherwise valid request: refused, not a stack overflow.
        let balanced = #"{"v":1,"id":3,"verb":"ping","x":"# + String(repeating: "[", count: depth) + String(repeating: "]", count: depth) + "}"
        #expect(throws: FrameError.self) { try Codec.decodeRequest(Array(balanced.utf8)) }
    }
}
