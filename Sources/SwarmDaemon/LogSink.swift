import DequeModule
import Glibc
import SwarmCore
import SwarmProtocol
import SwarmSystem

/// Where one app's worker output goes: a log file with size-based rotation
/// (or the journal), a bounded in-memory tail for `logs -n` and reload
/// errors, and the clients following it.
final class LogSink {
    let app: String
    let directory: TrustedDirectory
    let name: String
    var path: String { directory.pathOf(name) }
    var maxSize: Int64
    var keep: Int
    let journal: JournalWriter?
    private var file: AppendFile?
    /// Last lines, bounded by count and bytes. A deque: dropping the oldest
    /// line is O(1), not a shift of the whole tail for every line logged.
    private var recent: Deque<LogLine> = []
    /// A copy, for `logs -n`, reload errors and the hand-over (rare).
    var tail: [LogLine] { Array(recent) }
    private var tailBytes = 0
    static let tailLines = 2000
    static let tailByteLimit = 512 << 10
    var followers: [ObjectIdentifier: (LogLine) -> Void] = [:]
    /// Lines that could not be written to the file.
    private(set) var writeErrors = 0
    /// Lines lost in the current failure episode.
    private var lostLines = 0
    private var lastFailureReport: Int64?
    private(set) var lastError: String?
    var report: (NoteLevel, String) -> Void = { _, _ in }

    init(app: String, directory: TrustedDirectory, maxSize: Int64, keep: Int, journal: JournalWriter?) {
        self.app = app
        self.directory = directory
        self.name = "\(app).log"
        self.maxSize = maxSize
        self.keep = keep
        self.journal = journal
    }


    /// The tail a previous swarmd had (daemon-reexec), before any new line.
    func restoreTail(_ lines: [LogLine]) {
        recent = Deque(lines.suffix(LogSink.tailLines))
        tailBytes = recent.reduce(0) { $0 + $1.text.utf8.count + 64 }
        while tailBytes > LogSink.tailByteLimit, !recent.isEmpty { tailBytes -= recent.removeFirst().text.utf8.count + 64 }
    }

    func append(_ line: LogLine, priority: Int?) {
        recent.append(line)
        tailBytes += line.text.utf8.count + 64
        while recent.count > LogSink.tailLines || tailBytes > LogSink.tailByteLimit {
            tailBytes -= recent.removeFirst().text.utf8.count + 64
        }
        if let journal {
            journal.send([
                ("MESSAGE", line.text),
                ("PRIORITY", String(priority ?? (line.stream == "stderr" ? 4 : 6))),
                ("SYSLOG_IDENTIFIER", app),
                ("SWARM_APP", app),
                ("SWARM_WORKER", String(line.slot)),
                ("SWARM_PID", String(line.pid)),
                ("SWARM_STREAM", line.stream),
            ])
        } else {
            writeFile(line.formatted + "\n")
        }
        for follower in followers.values { follower(line) }
    }

    /// Appends one line: written whole or not at all (`AppendFile` cuts a
    /// short write off again). The lines lost while writing fails are
    /// counted and, once it works again, a marker line says how many.
    private func writeFile(_ text: String) {
        if file == nil { openFile() }
        guard let file else { return lose(lastError ?? "the log file cannot be opened") }
        do {
            if lostLines > 0 {
                let marker = "\(rfc3339(Posix.realtimeNanoseconds())) \(app)[-] 0 E swarmd: \(lostLines) log lines lost (\(lastError ?? "write failed"))\n"
                try file.append(Array(marker.utf8))
                report(.notice, "\(path): writing again; \(lostLines) lines were lost")
                lostLines = 0
            }
            try file.append(Array(text.utf8))
        } catch {
            return lose("\(error)")
        }
        if file.size >= maxSize { rotate() }
    }

    private func lose(_ why: String) {
        writeErrors += 1
        // On a nearly full disk writing flaps (a short line fits, the next does not):
        // one report per minute at most, however often it flaps.
        let now = Posix.monotonicNanoseconds()
        if lostLines == 0 && (lastFailureReport.map { now - $0 > 60_000_000_000 } ?? true) {
            lastFailureReport = now
            report(.error, "Failed to write \(path): \(why); dropping \(app)'s log lines until it works again")
        }
        lostLines += 1
        lastError = why
    }

    /// A symlink, a FIFO or anything but a regular file in its place is refused.
    private func openFile() {
        do { file = try directory.openAppendFile(name, mode: 0o640) } catch {
            lastError = "\(error)"
        }
    }

    /// app.log → app.log.1 → … → app.log.<keep>; the oldest is removed.
    func rotate() {
        file?.close()
        file = nil
        do {
            if keep == 0 {
                try directory.remove(name)
            } else {
                try directory.remove("\(name).\(keep)")
                if keep > 1 {
                    for i in stride(from: keep - 1, through: 1, by: -1) { try directory.renameIfPresent("\(name).\(i)", to: "\(name).\(i + 1)") }
                }
                try directory.renameIfPresent(name, to: "\(name).1")
            }
        } catch {
            report(.warning, "Failed to rotate \(path): \(error), ignoring")
        }
        openFile()
    }

    func close() {
        file?.close()
        file = nil
    }

    /// After an outside rotation (logrotate's `create` mode renamed the file):
    /// the next lines go to a file of this name again, not to the renamed one.
    func reopen() {
        close()
        openFile()
    }
}

/// Splits a pipe's bytes into lines, bounding a line's length.
struct LineSplitter {
    static let maxLine = 16 << 10
    private var partial: [UInt8] = []

    mutating func feed(_ bytes: UnsafeRawBufferPointer, _ emit: (String) -> Void) {
        var start = 0
        for i in 0..<bytes.count where bytes[i] == UInt8(ascii: "\n") {
            if partial.isEmpty {
                // A line longer than the bound is cut even when it arrived in one read.
                var from = start
                while i - from > LineSplitter.maxLine {
                    emit(String(decoding: UnsafeRawBufferPointer(rebasing: bytes[from..<from + LineSplitter.maxLine]), as: UTF8.self))
                    from += LineSplitter.maxLine
                }
                emit(String(decoding: UnsafeRawBufferPointer(rebasing: bytes[from..<i]), as: UTF8.self))
            } else {
                partial.append(contentsOf: bytes[start..<i])
                emit(String(decoding: partial, as: UTF8.self))
                partial.removeAll(keepingCapacity: true)
            }
            start = i + 1
        }
        if start < bytes.count {
            partial.append(contentsOf: bytes[start..<bytes.count])
            while partial.count >= LineSplitter.maxLine {
                emit(String(decoding: partial[0..<LineSplitter.maxLine], as: UTF8.self))
                partial.removeFirst(LineSplitter.maxLine)
            }
        }
    }

    mutating func flush(_ emit: (String) -> Void) {
        if !partial.isEmpty { emit(String(decoding: partial, as: UTF8.self)) }
        partial = []
    }
}

/// "<3>text" → (3, "text"): the sd-daemon priority prefix.
func splitPriority(_ line: String) -> (Int?, String) {
    let u = Array(line.utf8.prefix(3))
    if u.count == 3, u[0] == UInt8(ascii: "<"), u[2] == UInt8(ascii: ">"), u[1] >= UInt8(ascii: "0"), u[1] <= UInt8(ascii: "7") {
        return (Int(u[1] - UInt8(ascii: "0")), String(line.dropFirst(3)))
    }
    return (nil, line)
}

func rfc3339(_ ns: Int64) -> String {
    var t = time_t(ns / 1_000_000_000)
    var tmv = tm()
    gmtime_r(&t, &tmv)
    let us = (ns % 1_000_000_000) / 1000
    func pad(_ v: Int32, _ w: Int) -> String {
        let s = String(v)
        return String(repeating: "0", count: max(0, w - s.count)) + s
    }
    let usText = String(us)
    return "\(tmv.tm_year + 1900)-\(pad(tmv.tm_mon + 1, 2))-\(pad(tmv.tm_mday, 2))T\(pad(tmv.tm_hour, 2)):\(pad(tmv.tm_min, 2)):\(pad(tmv.tm_sec, 2)).\(String(repeating: "0", count: 6 - usText.count))\(usText)Z"
}
