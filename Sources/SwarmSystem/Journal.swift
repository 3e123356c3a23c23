import Glibc

// No libsystemd here: the native protocol is a datagram, and swarmctl links this module.
/// Sends structured entries to journald's native socket (or another
/// socket of the same protocol, for tests) with sendmsg: one datagram an
/// entry, fields "KEY=value\n" (values with a newline use the binary form).
public final class JournalWriter {
    let fd: Int32
    var address: sockaddr_un
    let addressLength: socklen_t
    public private(set) var dropped = 0

    public init(socketPath: String = "/run/systemd/journal/socket") throws {
        fd = try Posix.check("socket") { socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue) | Int32(SOCK_NONBLOCK.rawValue), 0) }
        address = try Sockets.unixAddress(socketPath)
        addressLength = Sockets.unixAddressLength(socketPath)
        var size: Int32 = 8 << 20
        _ = setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &size, socklen_t(MemoryLayout<Int32>.size))
    }

    deinit { Posix.close(fd) }

    public static func encode(_ fields: [(String, String)]) -> [UInt8] {
        var out: [UInt8] = []
        for (key, value) in fields {
            out.append(contentsOf: key.utf8)
            if value.utf8.contains(UInt8(ascii: "\n")) {
                out.append(UInt8(ascii: "\n"))
                var len = UInt64(value.utf8.count).littleEndian
                withUnsafeBytes(of: &len) { out.append(contentsOf: $0) }
                out.append(contentsOf: value.utf8)
            } else {
                out.append(UInt8(ascii: "="))
                out.append(contentsOf: value.utf8)
            }
            out.append(UInt8(ascii: "\n"))
        }
        return out
    }

    /// Never blocks: an entry the socket cannot take now is counted as dropped.
    public func send(_ fields: [(String, String)]) {
        let bytes = JournalWriter.encode(fields)
        let r = bytes.withUnsafeBytes { buf in
            withUnsafePointer(to: &address) { addr in
                addr.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                    sendto(fd, buf.baseAddress, buf.count, Int32(MSG_DONTWAIT) | Int32(MSG_NOSIGNAL), $0, addressLength)
                }
            }
        }
        if r < 0 { dropped += 1 }
    }
}
