import Foundation
import Glibc
import SwarmConfig
import SwarmCore
import Testing

/// A fresh directory under /tmp, removed by `remove()`.
struct TempDir {
    let path: String

    init() throws {
        path = "/tmp/swarm-config-tests-\(UInt64.random(in: 0 ... .max))"
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
    }

    func write(_ name: String, _ text: String) throws {
        try text.write(toFile: path + "/" + name, atomically: false, encoding: .utf8)
    }

    func writeBytes(_ name: String, _ bytes: [UInt8]) throws {
        try Data(bytes).write(to: URL(fileURLWithPath: path + "/" + name))
    }

    func mkfifo(_ name: String) throws {
        guard Glibc.mkfifo(path + "/" + name, 0o600) == 0 else {
            throw POSIXError(POSIXErrorCode(rawValue: errno) ?? .EIO)
        }
    }

    func remove() { try? FileManager.default.removeItem(atPath: path) }
}

/// Loads `path` on another thread and gives up after `seconds`: a load that
/// blocks (on a FIFO) must fail the test, not hang the suite. On timeout the
/// FIFO at `unblock` is opened for writing so the stuck thread can finish.
func loadWithDeadline(_ path: String, environment: ConfigEnvironment, seconds: Double = 5,
                      unblock: String? = nil) -> Result<AppSpec, ConfigError>? {
    final class Box: @unchecked Sendable { var result: Result<AppSpec, ConfigError>? }
    let box = Box()
    let done = DispatchSemaphore(value: 0)
    Thread.detachNewThread {
        box.result = Result { () throws(ConfigError) in try AppConfig.load(path: path, environment: environment) }
        done.signal()
    }
    if done.wait(timeout: .now() + seconds) == .timedOut {
        if let unblock {
            let fd = open(unblock, O_WRONLY | O_NONBLOCK)
            if fd >= 0 { close(fd) }
        }
        return nil
    }
    return box.result
}

struct LoadedAnyway: Error {}

@Suite struct ConfigFileTests {
    let minimal = "name = \"w\"\ncommand = [\"/bin/sh\"]\n"

    func environment(_ dir: TempDir) -> ConfigEnvironment {
        fakeEnvironment(executables: ["/bin/sh"], directories: [dir.path])
    }

    func loadError(_ path: String, _ dir: TempDir, unblock: String? = nil) throws -> ConfigError {
        let result = try #require(loadWithDeadline(path, environment: environment(dir), unblock: unblock),
                                  "AppConfig.load(\(path)) did not return within 5 s")
        switch result {
        case let .failure(error): return error
        case .success: Issue.record("\(path) loaded"); throw LoadedAnyway()
        }
    }

    @Test func aFIFOIsRefusedWithoutBlocking() throws {
        let dir = try TempDir()
        defer { dir.remove() }
        try dir.mkfifo("w.conf")
        let error = try loadError(dir.path + "/w.conf", dir, unblock: dir.path + "/w.conf")
        #expect(error.file == dir.path + "/w.conf" && error.line == 0, "\(error)")
        #expect(error.message.contains("not a regular file (a FIFO)"), "\(error)")
    }

    @Test func aSymlinkToAFIFOIsRefusedAndToAFileFollowed() throws {
        let dir = try TempDir()
        defer { dir.remove() }
        try dir.mkfifo("fifo")
        try FileManager.default.createSymbolicLink(atPath: dir.path + "/link.conf", withDestinationPath: dir.path + "/fifo")
        let error = try loadError(dir.path + "/link.conf", dir, unblock: dir.path + "/fifo")
        #expect(error.message.contains("a FIFO"), "\(error)")

        try dir.write("real.conf", minimal)
        try FileManager.default.createSymbolicLink(atPath: dir.path + "/good.conf", withDestinationPath: "real.conf")
        let spec = try AppConfig.load(path: dir.path + "/good.conf", environment: environment(dir))
        #expect(spec.name == "w")
        #expect(spec.sourcePath == dir.path + "/good.conf")
    }

    @Test func directoriesAndDevicesAreRefused() throws {
        let dir = try TempDir()
        defer { dir.remove() }
        try FileManager.default.createDirectory(atPath: dir.path + "/d.conf", withIntermediateDirectories: false)
        #expect(try loadError(dir.path + "/d.conf", dir).message.contains("not a regular file (a directory)"))
        let null = try loadError("/dev/null", dir)
        #expect(null.file == "/dev/null" && null.message.contains("a character device"), "\(null)")
    }

    @Test func aHugeFileIsRefusedByItsSizeNotRead() throws {
        let dir = try TempDir()
        defer { dir.remove() }
        // Sparse: 100 MB that take no disk. The size in the message comes from fstat.
        let fd = open(dir.path + "/big.conf", O_WRONLY | O_CREAT, 0o600)
        try #require(fd >= 0)
        #expect(ftruncate(fd, 100_000_000) == 0)
        close(fd)
        let error = try loadError(dir.path + "/big.conf", dir)
        #expect(error.message == "file is larger than 1048576 bytes (100000000 bytes)", "\(error)")

        // The limit itself is fine.
        try dir.write("edge.conf", minimal + String(repeating: "#", count: AppConfig.maxFileSize - minimal.utf8.count))
        #expect(try AppConfig.load(path: dir.path + "/edge.conf", environment: environment(dir)).name == "w")
    }

    @Test func invalidUTF8NamesItsLine() throws {
        let dir = try TempDir()
        defer { dir.remove() }
        try dir.writeBytes("w.conf", Array(minimal.utf8) + Array("workers = 1\n# caf".utf8) + [0xE9] + Array("\n".utf8))
        let error = try loadError(dir.path + "/w.conf", dir)
        #expect(error.line == 4 && error.message == "not UTF-8 text", "\(error)")
    }

    @Test func missingFileSaysSo() throws {
        let dir = try TempDir()
        defer { dir.remove() }
        let error = try loadError(dir.path + "/nope.conf", dir)
        #expect(error.message == "no such file", "\(error)")
    }
}
