import Crypto
import Foundation

/// The digests swarmd shows: lowercase hex SHA-256, what `sha256sum` prints,
/// so an operator can compare a config file with what `describe` and
/// `status --json` report (swift-crypto, the one SHA-256 in the build).
enum Digest {
    static func sha256Hex(_ data: [UInt8]) -> String {
        hex(SHA256.hash(data: data))
    }

    static func hex<D: Sequence>(_ digest: D) -> String where D.Element == UInt8 {
        digest.map { String(format: "%02x", $0) }.joined()
    }
}
