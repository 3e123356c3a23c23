import Foundation
import Glibc
@testable import SwarmSystem
import Testing

@Suite("Trusted directories: who owns them, who may write there")
struct TrustedDirectoryRuleTests {
    @Test("a missing directory is created (mkdir -p) with the mode asked for, and is trusted")
    func createsMissing() throws {
        try withTempDir { tmp in
            let path = tmp + "/a/b/state"
            let d = try TrustedDirectory(path: path, create: 0o700)
            #expect(d.status.type == .directory)
            #expect(d.status.permissions == 0o700)
            #expect(d.status.owner == geteuid())
            #expect(FileSystem.isDirectory(path))
        }
    }

    @Test("relative paths are relative to the base directory, not to '/'")
    func relativePaths() throws {
        try withTempDir { tmp in
            let base = try TrustedDirectory(path: tmp)
            try FileSystem.makeDirectories("run/x/./y", mode: 0o755, relativeTo: base)
            #expect(FileSystem.isDirectory(tmp + "/run/x/y"))
            #expect(!FileSystem.exists("/run/x/y"), "the old helper made /run/x/y")
            // Existing parents, "..", repeated slashes.
            try FileSystem.makeDirectories("run//x/../z", mode: 0o755, relativeTo: base)
            #expect(FileSystem.isDirectory(tmp + "/run/z"))
            // A file in the way is named.
            try writeFile(tmp + "/file", "x")
            #expect(throws: FileError.notADirectory(path: tmp + "/file", found: .regular)) {
                try FileSystem.makeDirectories("file", mode: 0o755, relativeTo: base)
            }
        }
    }

    @Test("Posix.mkdirs of an absolute path still works (the compatibility shim)")
    func mkdirsShim() throws {
        try withTempDir { tmp in
            try Posix.mkdirs(tmp + "/p/q", mode: 0o750)
            #expect(FileSystem.isDirectory(tmp + "/p/q"))
        }
    }

    @Test("a directory writable by its group or by others is refused, naming the path, owner and mode")
    func writableByOthers() throws {
        try withTempDir { tmp in
            for mode: mode_t in [0o770, 0o777, 0o1777, 0o720, 0o702] {
                let path = tmp + "/open-\(String(mode, radix: 8))"
                #expect(mkdir(path, 0o700) == 0)
                #expect(chmod(path, mode) == 0)
                do {
                    _ = try TrustedDirectory(path: path)
                    Issue.record("mode \(String(mode, radix: 8)) was trusted")
                } catch let e as FileError {
                    #expect(e == .writableByOthers(path: path, owner: geteuid(), mode: UInt32(mode)))
                    #expect(e.description.contains(path) && e.description.contains(octal(UInt32(mode))), "\(e)")
                    #expect(e.description.contains("uid \(geteuid())"), "\(e)")
                }
            }
            // Readable by all is fine.
            let ok = tmp + "/ok"
            #expect(mkdir(ok, 0o755) == 0)
            #expect(chmod(ok, 0o755) == 0)
            #expect(try TrustedDirectory(path: ok).status.permissions == 0o755)
        }
    }

    @Test("a directory owned by another user is refused (root chowns it to nobody)", .enabled(if: isRoot, "needs root to chown to nobody"))
    func foreignOwner() throws {
        try withTempDir { tmp in
            let path = tmp + "/theirs"
            #expect(mkdir(path, 0o755) == 0)
            #expect(chmod(path, 0o755) == 0)
            #expect(chown(path, 65534, 65534) == 0)
            do {
                _ = try TrustedDirectory(path: path, create: 0o700)
                Issue.record("a directory of uid 65534 was trusted by root")
            } catch let e as FileError {
                #expect(e == .foreignOwner(path: path, owner: 65534, mode: 0o755, expected: [0]))
                let text = e.description
                #expect(text.contains(path) && text.contains("uid 65534") && text.contains("0755"), "\(text)")
                #expect(text.contains("nobody"), "the owner's name is given: \(text)")
            }
            // The owner named as expected is accepted.
            #expect(try TrustedDirectory(path: path, owners: [0, 65534]).status.owner == 65534)
            // A subdirectory is held to the same rules.
            let mine = try TrustedDirectory(path: tmp)
            #expect(throws: FileError.self) { try mine.subdirectory("theirs") }
        }
    }

    @Test("a symlink in place of the directory is refused, never followed")
    func symlinkedDirectory() throws {
        try withTempDir { tmp in
            #expect(mkdir(tmp + "/real", 0o700) == 0)
            #expect(symlink(tmp + "/real", tmp + "/link") == 0)
            #expect(throws: FileError.notADirectory(path: tmp + "/link", found: .symlink)) { try TrustedDirectory(path: tmp + "/link") }
            let d = try TrustedDirectory(path: tmp)
            #expect(throws: FileError.notADirectory(path: tmp + "/link", found: .symlink)) { try d.subdirectory("link") }
            // A file in place of a directory.
            try writeFile(tmp + "/f", "")
            #expect(throws: FileError.notADirectory(path: tmp + "/f", found: .regular)) { try TrustedDirectory(path: tmp + "/f") }
        }
    }

    @Test("verify: a missing directory is ENOENT, not a refusal")
    func verifyMissing() throws {
        try withTempDir { tmp in
            do {
                try TrustedDirectory.verify(path: tmp + "/nope", owners: [geteuid()])
                Issue.record("a missing directory verified")
            } catch let e as SystemError {
                #expect(e.errno == ENOENT && e.subject == tmp + "/nope", "\(e)")
            }
        }
    }

    @Test("names inside must be one plain component")
    func badNames() throws {
        try withTempDir { tmp in
            let d = try TrustedDirectory(path: tmp)
            for name in ["", ".", "..", "a/b", "../etc/passwd"] {
                #expect(throws: FileError.badName(directory: tmp, name: name)) { _ = try d.readFile(name, limit: 10) }
            }
        }
    }
}

@Suite("Files in a trusted directory: only regular files, never blocking, bounded, whole")
struct SafeFileTests {
    @Test("a FIFO is refused at once for reading, writing and appending (no hang)")
    func fifo() throws {
        try withTempDir { tmp in
            let d = try TrustedDirectory(path: tmp)
            let fifo = tmp + "/apps.json"
            #expect(mkfifo(fifo, 0o600) == 0)
            // If an open blocks, a writer opened from here releases it.
            let unblock = { let fd = open(fifo, O_RDWR | O_NONBLOCK); if fd >= 0 { close(fd) } }
            for (what, op) in [("readFile", { _ = try d.readFile("apps.json", limit: 1 << 20) }),
                               ("openAppendFile", { _ = try d.openAppendFile("apps.json") }),
                               ("openFile(.write)", { _ = try d.openFile("apps.json", .write) })] as [(String, () throws -> Void)] {
                let outcome: Error? = try withDeadline(5, "\(what) of a FIFO", unblock: unblock) {
                    do { try op() } catch { return error }
                    return nil
                }
                #expect(outcome as? FileError == .notARegularFile(path: fifo, found: .fifo), "\(what): \(String(describing: outcome))")
                #expect("\(outcome!)".contains("FIFO") && "\(outcome!)".contains(fifo))
            }
            // The atomic write replaces the FIFO by a file, without opening it.
            try withDeadline(5, "writeFileAtomically over a FIFO", unblock: unblock) {
                try d.writeFileAtomically("apps.json", Array("{}\n".utf8))
            }
            #expect(try d.statusOfEntry("apps.json")?.type == .regular)
            #expect(try readText(fifo) == "{}\n")
        }
    }

    @Test("a symlink is never followed: reads and appends refuse it, the atomic write replaces the link itself")
    func symlink() throws {
        try withTempDir { tmp in
            let d = try TrustedDirectory(path: tmp)
            let victim = tmp + "/victim"
            try writeFile(victim, "root's file\n", mode: 0o600)
            #expect(Glibc.symlink(victim, tmp + "/web.log") == 0)
            #expect(throws: FileError.notARegularFile(path: tmp + "/web.log", found: .symlink)) { _ = try d.openAppendFile("web.log") }
            #expect(throws: FileError.notARegularFile(path: tmp + "/web.log", found: .symlink)) { _ = try d.readFile("web.log", limit: 100) }
            #expect(try readText(victim) == "root's file\n", "the link's target is untouched")
            // A dangling link is refused as well (O_CREAT through it would create the target).
            #expect(Glibc.symlink(tmp + "/created-through-link", tmp + "/dangling.log") == 0)
            #expect(throws: FileError.self) { _ = try d.openAppendFile("dangling.log") }
            #expect(!FileSystem.exists(tmp + "/created-through-link"))

            #expect(Glibc.symlink(victim, tmp + "/apps.json") == 0)
            try d.writeFileAtomically("apps.json", Array("new\n".utf8))
            #expect(try readText(victim) == "root's file\n")
            #expect(try FileSystem.status(tmp + "/apps.json", followSymlinks: false).type == .regular)
            #expect(try readText(tmp + "/apps.json") == "new\n")
        }
    }

    @Test("a device node is refused without being opened", .enabled(if: isRoot, "needs root for mknod"))
    func device() throws {
        try withTempDir { tmp in
            let d = try TrustedDirectory(path: tmp)
            #expect(mknod(tmp + "/null", S_IFCHR | 0o666, dev_t((1 << 8) | 3) /* makedev(1, 3): /dev/null */) == 0)
            #expect(throws: FileError.notARegularFile(path: tmp + "/null", found: .characterDevice)) { _ = try d.readFile("null", limit: 10) }
            #expect(throws: FileError.notARegularFile(path: tmp + "/null", found: .characterDevice)) { _ = try d.openAppendFile("null") }
            #expect(mkdir(tmp + "/sub", 0o700) == 0)
            #expect(throws: FileError.notARegularFile(path: tmp + "/sub", found: .directory)) { _ = try d.readFile("sub", limit: 10) }
        }
    }

    @Test("reads are bounded: fstat first, and again while reading")
    func boundedRead() throws {
        try withTempDir { tmp in
            let d = try TrustedDirectory(path: tmp)
            try writeFile(tmp + "/big", String(repeating: "x", count: 5000))
            #expect(throws: FileError.tooLarge(path: tmp + "/big", size: 5000, limit: 4096)) { _ = try d.readFile("big", limit: 4096) }
            #expect(try d.readFile("big", limit: 5000)?.count == 5000)
            #expect(try d.readFile("missing", limit: 10) == nil)
            try writeFile(tmp + "/empty", "")
            #expect(try d.readFile("empty", limit: 10) == [])
        }
    }

    @Test("atomic write: the new content, the mode asked for, no temp file left; rename and remove in the directory")
    func atomicWrite() throws {
        try withTempDir { tmp in
            let d = try TrustedDirectory(path: tmp)
            try d.writeFileAtomically("apps.json", Array("one\n".utf8), mode: 0o600)
            try d.writeFileAtomically("apps.json", Array("two\n".utf8), mode: 0o600)
            #expect(try readText(tmp + "/apps.json") == "two\n")
            #expect(try FileSystem.status(tmp + "/apps.json").permissions == 0o600)
            #expect(try d.entries() == ["apps.json"], "no temp file left")
            try d.rename("apps.json", to: "apps.json.1")
            #expect(try d.renameIfPresent("apps.json", to: "x") == false)
            #expect(try d.remove("apps.json.1"))
            #expect(try d.remove("apps.json.1") == false)
            #expect(try d.entries().isEmpty)
            // The path-based shim, relative directory part included.
            try Posix.writeFileAtomically(tmp + "/shim.json", Array("s".utf8))
            #expect(try readText(tmp + "/shim.json") == "s")
        }
    }

    @Test("append: whole records, the size tracked from the file's own")
    func append() throws {
        try withTempDir { tmp in
            let d = try TrustedDirectory(path: tmp)
            try writeFile(tmp + "/web.log", "old\n")
            let f = try d.openAppendFile("web.log", mode: 0o640)
            #expect(f.size == 4)
            try f.append(Array("a\n".utf8))
            try f.append(Array("b\n".utf8))
            #expect(f.size == 8)
            f.close()
            #expect(try readText(tmp + "/web.log") == "old\na\nb\n")
            let g = try d.openAppendFile("new.log", mode: 0o640)
            #expect(g.size == 0)
            #expect(try FileSystem.status(tmp + "/new.log").permissions == 0o640)
        }
    }
}

@Suite("A full disk (a 64 KiB tmpfs)", .serialized)
struct FullDiskTests {
    @Test("the atomic write reports noSpace and leaves the old file and no temp file", .enabled(if: isRoot, "needs root to mount a tmpfs"))
    func atomicWriteOnFullDisk() throws {
        try withSmallTmpfs(size: "64k") { mnt in
            let d = try TrustedDirectory(path: mnt)
            try d.writeFileAtomically("apps.json", Array("precious\n".utf8))
            let big = [UInt8](repeating: UInt8(ascii: "x"), count: 200 << 10)
            do {
                try d.writeFileAtomically("apps.json", big)
                Issue.record("200 KiB fit in a 64 KiB tmpfs")
            } catch let e as FileError {
                guard case let .noSpace(path, _, errno) = e else { Issue.record("not noSpace: \(e)"); return }
                #expect(path == mnt + "/apps.json" && errno == ENOSPC, "\(e)")
                #expect(e.description.contains("no space left"), "\(e)")
            }
            #expect(try readText(mnt + "/apps.json") == "precious\n")
            #expect(try d.entries() == ["apps.json"], "the temp file was removed")
        }
    }

    @Test("appends on a full disk: each line whole or not at all, never a torn line", .enabled(if: isRoot, "needs root to mount a tmpfs"))
    func appendOnFullDisk() throws {
        try withSmallTmpfs(size: "64k") { mnt in
            let d = try TrustedDirectory(path: mnt)
            let f = try d.openAppendFile("web.log")
            // 1000-byte lines do not divide the 4 KiB pages: the write that fills the disk is short.
            let line = Array((String(repeating: "y", count: 999) + "\n").utf8)
            var written = 0
            var failure: Error?
            for _ in 0..<200 {
                do { try f.append(line); written += 1 } catch { failure = error; break }
            }
            guard let failure else { Issue.record("200 KB of lines fit in a 64 KiB tmpfs"); return }
            #expect(failure as? FileError == .noSpace(path: mnt + "/web.log", call: "write", errno: ENOSPC), "\(failure)")
            #expect(written > 10, "some lines fit first: \(written)")
            let st = try FileSystem.status(mnt + "/web.log")
            #expect(st.size == Int64(written * line.count), "the partial line was cut off: \(st.size) bytes for \(written) lines")
            #expect(f.size == st.size)
            let text = try readText(mnt + "/web.log")
            #expect(text.hasSuffix("\n") && text.split(separator: "\n").allSatisfy { $0.count == 999 })
            // Once there is room again, appending goes on.
            f.close()
            // truncate first: a concurrent test's fork can briefly hold a copy of the fd, and
            // unlink alone frees the pages only when the last copy closes.
            #expect(truncate(mnt + "/web.log", 0) == 0)
            try d.remove("web.log")
            let g = try d.openAppendFile("web.log")
            try g.append(line)
            #expect(g.size == Int64(line.count))
        }
    }
}
