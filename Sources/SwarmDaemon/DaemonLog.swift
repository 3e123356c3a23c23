import Glibc
import Logging
import SwarmSystem

/// swarmd's own messages: to the journal under systemd (with the priority),
/// else one line each on stderr, which a service manager or a terminal reads.
public struct DaemonLogHandler: LogHandler {
    nonisolated(unsafe) static var journal: JournalWriter?
    nonisolated(unsafe) public static var minimumLevel: Logger.Level = .info

    public var metadata: Logger.Metadata = [:]
    public var logLevel: Logger.Level {
        get { DaemonLogHandler.minimumLevel }
        set { DaemonLogHandler.minimumLevel = newValue }
    }
    let label: String

    public init(label: String) { self.label = label }

    public subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    public func log(level: Logger.Level, message: Logger.Message, metadata: Logger.Metadata?, source: String,
                    file: String, function: String, line: UInt) {
        let priority: Int
        switch level {
        case .trace, .debug: priority = 7
        case .info: priority = 6
        case .notice: priority = 5
        case .warning: priority = 4
        case .error: priority = 3
        case .critical: priority = 2
        }
        if let journal = DaemonLogHandler.journal {
            journal.send([("MESSAGE", "\(message)"), ("PRIORITY", String(priority)), ("SYSLOG_IDENTIFIER", "swarmd")])
            return
        }
        // "<N>" lets journald (via stderr) or a reader recover the priority.
        let text = Systemd.underSystemd ? "<\(priority)>\(message)\n" : "swarmd[\(getpid())]: \(level): \(message)\n"
        _ = text.withCString { fputs($0, stderr) }
    }
}
