import SwarmProtocol
import Testing

func bytes(_ s: String) -> [UInt8] { Array(s.utf8) }

/// Every complete frame, stopping at the first error.
func drain(_ reader: inout FrameReader) throws(FrameError) -> [String] {
    var frames: [String] = []
    while let frame = try reader.next() { frames.append(String(decoding: frame, as: UTF8.self)) }
    return frames
}

@Suite struct FrameReaderTests {
    @Test func severalFramesInOneChunk() throws {
        var reader = FrameReader(limit: 100)
        reader.append(bytes("{\"a\":1}\n{\"b\":2}\n\n{\"c\""))
        #expect(try drain(&reader) == ["{\"a\":1}", "{\"b\":2}", ""])
        #expect(reader.pendingCount == 4)
        reader.append(bytes(":3}\n"))
        #expect(try drain(&reader) == ["{\"c\":3}"])
        #expect(reader.pendingCount == 0)
    }

    @Test func frameSplitIntoOneByteAppends() throws {
        var reader = FrameReader(limit: 1000)
        let text = "{\"v\":1,\"id\":5,\"verb\":\"ping\"}\n{\"v\":1,\"id\":6,\"verb\":\"status\"}\n"
        var frames: [String] = []
        for byte in bytes(text) {
            reader.append([byte])
            frames += try drain(&reader)
        }
        #expect(frames == ["{\"v\":1,\"id\":5,\"verb\":\"ping\"}", "{\"v\":1,\"id\":6,\"verb\":\"status\"}"])
        #expect(try Codec.decodeRequest(bytes(frames[1])) == Request(id: 6, verb: .status))
    }

    @Test func emptyLineIsAnEmptyFrame() throws {
        var reader = FrameReader(limit: 10)
        reader.append(bytes("\n"))
        #expect(try reader.next() == [])
        #expect(try reader.next() == nil)
        #expect(throws: FrameError.malformed("not a JSON object")) { try Codec.decodeRequest([]) }
    }

    @Test func frameOfExactlyTheLimit() throws {
        var reader = FrameReader(limit: 16)
        reader.append([UInt8](repeating: UInt8(ascii: "x"), count: 16))
        #expect(try reader.next() == nil)
        reader.append(bytes("\n"))
        #expect(try reader.next()?.count == 16)
    }

    @Test func frameOfLimitPlusOneIsRefused() throws {
        var reader = FrameReader(limit: 16)
        reader.append([UInt8](repeating: UInt8(ascii: "x"), count: 17) + bytes("\n"))
        #expect(throws: FrameError.tooLarge(limit: 16)) { try reader.next() }
    }

    @Test func endlessLineIsRefusedOnceOverTheLimit() throws {
        var reader = FrameReader(limit: 1024)
        var appended = 0
        var refusedAt: Int?
        while appended < 100_000 {
            reader.append([UInt8](repeating: UInt8(ascii: "["), count: 100))
            appended += 100
            do {
                #expect(try reader.next() == nil)
            } catch {
                #expect(error == .tooLarge(limit: 1024))
                refusedAt = appended
                break
            }
        }
        #expect(refusedAt == 1100, "refused as soon as the pending line passed the limit")
        #expect(reader.pendingCount <= 1024 + 100)
    }

    @Test func defaultLimitIsTheProtocolMaximum() {
        #expect(FrameReader().limit == ControlProtocol.maxMessageSize)
    }

    @Test func errorDescriptions() {
        #expect(FrameError.tooLarge(limit: 10).description == "message larger than 10 bytes")
        #expect(FrameError.malformed("x").description == "malformed message: x")
        #expect(FrameError.unsupportedVersion(2).description.contains("unsupported protocol version 2"))
    }
}

@Suite struct DecodeRequestTests {
    @Test(arguments: [
        ("not json", FrameError.malformed("not a JSON object")),
        ("[1, 2]", .malformed("not a JSON object")),
        ("\"v\"", .malformed("not a JSON object")),
        ("{\"v\": 1", .malformed("not a JSON object")),
        ("{}", .malformed("missing field 'v' (protocol version)")),
        ("{\"id\": 1, \"verb\": \"ping\"}", .malformed("missing field 'v' (protocol version)")),
        ("{\"v\": 2, \"id\": 1, \"verb\": \"ping\"}", .unsupportedVersion(2)),
        ("{\"v\": 0}", .unsupportedVersion(0)),
        ("{\"v\": 1, \"id\": 1}", .malformed("missing field 'verb'")),
        ("{\"v\": 1, \"verb\": \"ping\"}", .malformed("missing field 'id'")),
        ("{\"v\": 1, \"id\": 1, \"verb\": \"explode\"}", .malformed("invalid value for field 'verb'")),
        ("{\"v\": 1, \"id\": 1, \"verb\": \"scale\", \"count\": \"three\"}", .malformed("wrong type for field 'count'")),
        ("{\"v\": 1, \"id\": 1, \"verb\": \"scale\", \"count\": 1.5}", .malformed("a number does not fit its field")),
        ("{\"v\": 1, \"id\": -1, \"verb\": \"ping\"}", .malformed("a number does not fit its field")),
        ("{\"v\": 1, \"id\": 1, \"verb\": \"start\", \"files\": \"/a.conf\"}", .malformed("wrong type for field 'files'")),
    ])
    func decodeErrors(text: String, expected: FrameError) {
        #expect(throws: expected) { try Codec.decodeRequest(bytes(text)) }
    }

    @Test func unknownFieldsAreIgnored() throws {
        let request = try Codec.decodeRequest(bytes(#"{"v":1,"id":9,"verb":"scale","count":4,"colour":"blue","nested":{"a":[1,2]}}"#))
        #expect(request == Request(id: 9, verb: .scale, count: 4))
    }

    @Test func nullOptionalsAreAbsent() throws {
        let request = try Codec.decodeRequest(bytes(#"{"v":1,"id":9,"verb":"logs","name":null,"follow":true}"#))
        #expect(request == Request(id: 9, verb: .logs, follow: true))
    }
}
