import Foundation
import Glibc
@testable import SwarmDaemon
import SwarmProtocol
import SwarmSystem
import Testing

@Suite("LogSink's in-memory tail")
struct LogSinkTailTests {
    func line(_ i: Int, bytes: Int = 8) -> LogLine {
        LogLine(time: "t", app: "web", slot: 0, pid: 1, stream: "stdout", text: "\(i) " + String(repeating: "x", count: bytes))
    }

    @Test("keeps the newest 2,000 lines, oldest first, after 10,000 appends")
    func boundedByCount() throws {
        let dir = try TempDir()
        let sink = LogSink(app: "web", directory: try TrustedDirectory(path: dir.path), maxSize: 1 << 30, keep: 1, journal: nil)
        for i in 0..<10_000 { sink.append(line(i), priority: nil) }
        let tail = sink.tail
        #expect(tail.count == LogSink.tailLines)
        #expect(tail.first?.text.hasPrefix("8000 ") == true && tail.last?.text.hasPrefix("9999 ") == true)
        #expect(zip(tail, tail.dropFirst()).allSatisfy { Int($0.text.split(separator: " ")[0])! + 1 == Int($1.text.split(separator: " ")[0])! })
    }

    @Test("keeps at most 512 KiB of long lines, and a restored tail is held to both bounds")
    func boundedByBytes() throws {
        let dir = try TempDir()
        let sink = LogSink(app: "web", directory: try TrustedDirectory(path: dir.path), maxSize: 1 << 30, keep: 1, journal: nil)
        for i in 0..<1_000 { sink.append(line(i, bytes: 4_000), priority: nil) }
        let bytes = sink.tail.reduce(0) { $0 + $1.text.utf8.count + 64 }
        #expect(bytes <= LogSink.tailByteLimit && bytes > LogSink.tailByteLimit - 4_100, "\(bytes) bytes kept")
        #expect(sink.tail.last?.text.hasPrefix("999 ") == true)

        let restored = LogSink(app: "web", directory: try TrustedDirectory(path: dir.path), maxSize: 1 << 30, keep: 1, journal: nil)
        restored.restoreTail((0..<3_000).map { line($0, bytes: 400) })
        #expect(restored.tail.count <= LogSink.tailLines)
        #expect(restored.tail.reduce(0) { $0 + $1.text.utf8.count + 64 } <= LogSink.tailByteLimit)
        #expect(restored.tail.last?.text.hasPrefix("2999 ") == true)
    }
}
