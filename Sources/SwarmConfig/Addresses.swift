/// A numeric `HOST:PORT` (`[::1]:PORT` for IPv6) for swarmd's own listeners
/// (`--agent`), checked like a `[[socket]] listen`; the error says what is wrong.
public func parseTCPAddress(_ text: String) throws -> (host: String, port: UInt16) {
    switch parseListen(text, relativeTo: "/") {
    case let .success(.tcp(host, port)): return (host, port)
    case .success: throw AddressError(message: "'\(text)': a TCP address is needed here (HOST:PORT), not a unix socket")
    case let .failure(e): throw AddressError(message: e.message)
    }
}

public struct AddressError: Error, CustomStringConvertible {
    public let message: String
    public var description: String { message }
}
