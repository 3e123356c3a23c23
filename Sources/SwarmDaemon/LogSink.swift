import Glibc
import SwarmCore
import SwarmProtocol
import SwarmSystem

/// Where one app's worker output goes: a log file with size-based rotation
/// (or the journal), a bounded in-memory tail for `logs -n` and reload
/// errors, and the clients following it.
final class LogSink {
    let app: String
    let path: String
    var maxSize: Int64
    var keep: Int
    let journal: JournalWriter?
    private var fd: Int32 = -1
    private var size: Int64 = 0
    /// Last lines, bounded by count and bytes.
    private(set) var tail: [LogLine] = []
    private var tailBytes = 0
    static let tailLines = 2000
    static let tailByteLimit = 512 << 10
    var followers: [ObjectIdentifier: (LogLine) -> Void] = [:]
    /// Lines that could not be written to the file.
    private(set) var writeErrors = 0
    /// Lines lost in the current failure episode.
    private var lostLines = 0
    private(set) var lastError: String?
    private var openError: String?
    var report: (NoteLevel, String) -> Void = { _, _ in }

    init(app: String, directory: String, maxSize: Int64, keep: Int, journal: JournalWriter?) {
        self.app = app
        self.path = "\(directory)/\(app).log"
        self.maxSize = maxSize
        self.keep = keep
        self.journal = journal
    }

    deinit { if fd >= 0 { Posix.close(fd) } }

    /// The tail a previous swarmd had (daemon-reexec), before any new line.
    func restoreTail(_ lines: [LogLine]) {
        tail = Array(lines.suffix(LogSink.tailLines))
        tailBytes = tail.reduce(0) { $0 + $1.text.utf8.count + 64 }
        while tailBytes > LogSink.tailByteLimit, !tail.isEmpty { tailBytes -= tail.removeFirst().text.utf8.count + 64 }
    }

    func append(_ line: LogLine, priority: Int?) {
        tail.append(line)
        tailBytes += line.text.utf8.count + 64
        while tail.count > LogSink.tailLines || tailBytes > LogSink.tailByteLimit {
            tailBytes -= tail.removeFirst().text.utf8.count + 64
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

    /// Appends one line: written whole or not at all. A failed or short
    /// write (a full disk) is cut back off the file; the lines lost meanwhile
    /// are counted and, once writing works again, a marker line says how many.
    private func writeFile(_ text: String) {
        if fd < 0 { openFile() }
        guard fd >= 0 else { return lose(openError ?? "the log file cannot be opened") }
        if lostLines > 0 {
            let marker = "\(rfc3339(Posix.realtimeNanoseconds())) \(app)[-] 0 E swarmd: \(lostLines) log lines lost (\(lastError ?? "write failed"))\n"
            guard append(Array(marker.utf8)) else { return lose(lastError ?? "write failed") }
            report(.notice, "\(path): writing again; \(lostLines) lines were lost")
            lostLines = 0
        }
        guard append(Array(text.utf8)) else { return lose(lastError ?? "write failed") }
        if size >= maxSize { rotate() }
    }

    /// One write(2) of the whole line; false (and the file as it was) if the
    /// kernel took less.
    private func append(_ bytes: [UInt8]) -> Bool {
        let n = bytes.withUnsafeBytes { buf -> Int in
            while true {
                let r = Glibc.write(fd, buf.baseAddress, buf.count)
                if r < 0 && errno == EINTR { continue }
                return r
            }
        }
        if n == bytes.count {
            size += Int64(n)
            return true
        }
        let e = n < 0 ? errno : ENOSPC
        if n > 0 { _ = ftruncate(fd, off_t(size)) }
        lastError = "write: \(String(cString: strerror(e))) (\(errnoName(e)))"
        return false
    }

    private func lose(_ why: String) {
        writeErrors += 1
        if lostLines == 0 {
            report(.error, "Failed to write \(path): \(why); dropping \(app)'s log lines until it works again")
        }
        lostLines += 1
        lastError = why
    }

    /// Opens the log without following a symlink and only if it is a regular
    /// file: a FIFO (no reader) fails at once instead of blocking the loop.
    private func openFile() {
        let f = Glibc.open(path, O_WRONLY | O_CREAT | O_APPEND | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC, 0o640)
        guard f >= 0 else {
            let e = errno
            openError = e == ELOOP ? "it is a symbolic link" : "open: \(String(cString: strerror(e))) (\(errnoName(e)))"
            return
        }
        var st = stat()
        guard fstat(f, &st) == 0, (st.st_mode & S_IFMT) == S_IFREG else {
            Posix.close(f)
            openError = "it is not a regular file"
            return
        }
        fd = f
        openError = nil
        size = Int64(st.st_size)
    }

    /// app.log → app.log.1 → … → app.log.<keep>; the oldest is removed.
    func rotate() {
        if fd >= 0 { Posix.close(fd) }
        fd = -1
        if keep == 0 {
            unlink(path)
        } else {
            unlink("\(path).\(keep)")
            if keep > 1 {
                for i in stride(from: keep - 1, through: 1, by: -1) { rename("\(path).\(i)", "\(path).\(i + 1)") }
            }
            if rename(path, "\(path).1") != 0 && errno != ENOENT {
                report(.warning, "Failed to rotate \(path): \(String(cString: strerror(errno))), ignoring")
            }
        }
        size = 0
        openFile()
    }

    func close() {
        if fd >= 0 { Posix.close(fd) }
        fd = -1
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
                emit(String(decoding: UnsafeRawBufferPointer(rebasing: bytes[start..<i]), as: UTF8.self))
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
