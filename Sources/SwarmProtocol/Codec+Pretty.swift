#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

extension Codec {
    /// Indented JSON with sorted keys, no trailing newline (`status --json`).
    public static func encodePretty<T: Encodable>(_ value: T) -> [UInt8] {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
        // Encoding our own value types cannot fail.
        return Array(try! encoder.encode(value))
    }
}
