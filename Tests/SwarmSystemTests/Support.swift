import Foundation
import Glibc
@testable import SwarmSystem
import Testing

struct TestFailure: Error, CustomStringConvertible {
    var description: String
    init(_ d: String) { description = d }
}

/// A fresh directory under /tmp (0700, ours), removed afterwards.
func withTempDir<T>(_ body: (String) throws -> T) throws -> T {
    var template = Array("/tmp/swarm-system-test-XXXXXX".utf8CString)
    guard let p = mkdtemp(&template) else { throw TestFailure("mkdtemp: \(String(cString: strerror(errno)))") }
    let dir = String(cString: p)
    defer { removeTree(dir) }
    return try body(dir)
}

func removeTree(_ path: String) {
    _ = try? FileManager.default.removeItem(atPath: path)
}

func writeFile(_ path: String, _ text: String, mode: mode_t = 0o644) throws {
    let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode)
    guard fd >= 0 else { throw TestFailure("open \(path): \(String(cString: strerror(errno)))") }
    defer { close(fd) }
    let bytes = Array(text.utf8)
    guard write(fd, bytes, bytes.count) == bytes.count else { throw TestFailure("write \(path)") }
}

func readText(_ path: String) throws -> String {
    try String(contentsOfFile: path, encoding: .utf8)
}

/// Runs `body` on a thread of its own and waits at most `seconds`: a file
/// operation that blocks (a FIFO) fails the test instead of hanging it.
/// `unblock` is called on timeout to release the stuck thread.
final class ResultBox<T>: @unchecked Sendable { var result: Result<T, Error>? }

func withDeadline<T>(_ seconds: Double, _ what: String, unblock: @escaping () -> Void = {}, _ body: @escaping () throws -> T) throws -> T {
    let box = ResultBox<T>()
    let done = DispatchSemaphore(value: 0)
    let thread = Thread {
        box.result = Result { try body() }
        done.signal()
    }
    thread.start()
    if done.wait(timeout: .now() + seconds) == .timedOut {
        unblock()
        _ = done.wait(timeout: .now() + 5)
        throw TestFailure("\(what) did not return within \(seconds) s: it blocked")
    }
    return try box.result!.get()
}

let isRoot = geteuid() == 0

/// A tmpfs of `size` mounted on a new directory, unmounted afterwards (root only).
func withSmallTmpfs<T>(size: String, _ body: (String) throws -> T) throws -> T {
    try withTempDir { dir in
        let mnt = dir + "/mnt"
        guard mkdir(mnt, 0o700) == 0 else { throw TestFailure("mkdir \(mnt)") }
        let r = mount("tmpfs", mnt, "tmpfs", 0, "size=\(size),mode=0700")
        guard r == 0 else { throw TestFailure("mount tmpfs on \(mnt): \(String(cString: strerror(errno)))") }
        defer { umount2(mnt, Int32(MNT_DETACH)) }
        return try body(mnt)
    }
}
