import Glibc

/// A directory swarm keeps state, logs or a socket in, held open by fd.
///
/// The rules (issue 13 items 3 and 5): the directory itself is opened with
/// O_DIRECTORY|O_NOFOLLOW and refused unless one of the expected uids owns
/// it and neither its group nor others may write to it (whoever can write
/// there can plant an `apps.json` naming their command, or a symlink in
/// `logs/` pointing at a file root owns). Every file inside is reached
/// relative to the fd with O_NOFOLLOW|O_NONBLOCK|O_CLOEXEC, and only regular
/// files are read or written: a FIFO cannot hang the caller, a symlink is
/// never followed, a device is never opened. Reads are bounded (fstat
/// first); writes are whole or nothing.
public final class TrustedDirectory {
    /// The path as given (for messages and for callers that need it).
    public let path: String
    public let fd: Int32
    /// What fstat said when it was opened and checked.
    public let status: FileStatus

    /// Opens (with `create`, first makes: mkdir -p, relative paths relative
    /// to the current directory) and checks the directory. `owners`: the uids
    /// that may own it (default: this process's effective uid).
    public convenience init(path: String, owners: [uid_t]? = nil, create mode: mode_t? = nil) throws {
        if let mode { try FileSystem.makeDirectories(path, mode: mode) }
        let fd = try TrustedDirectory.openDirectory(at: AT_FDCWD, path, display: path)
        try self.init(fd: fd, path: path, owners: owners ?? [geteuid()])
    }

    /// A directory opened without the owner and mode checks, for the
    /// compatibility shims that took any path (still O_NOFOLLOW inside).
    init(unchecked path: String) throws {
        self.path = path
        fd = try TrustedDirectory.openDirectory(at: AT_FDCWD, path, display: path, followLast: true)
        status = try FileSystem.status(fd: fd)
    }

    private init(fd: Int32, path: String, owners: [uid_t]) throws {
        self.fd = fd
        self.path = path
        do {
            status = try FileSystem.status(fd: fd)
            try TrustedDirectory.check(status, path: path, owners: owners)
        } catch {
            Posix.close(fd)
            throw error
        }
    }

    deinit { Posix.close(fd) }

    /// Checks a directory without keeping it open: the one-shot form of the
    /// rules (swarmctl uses it on the default socket's directory).
    @discardableResult
    public static func verify(path: String, owners: [uid_t]) throws -> FileStatus {
        try TrustedDirectory(path: path, owners: owners).status
    }

    static func check(_ st: FileStatus, path: String, owners: [uid_t]) throws {
        guard st.type == .directory else { throw FileError.notADirectory(path: path, found: st.type) }
        guard owners.contains(st.owner) else {
            throw FileError.foreignOwner(path: path, owner: st.owner, mode: st.permissions, expected: owners)
        }
        guard !st.isWritableByOthers else { throw FileError.writableByOthers(path: path, owner: st.owner, mode: st.permissions) }
    }

    /// openat(O_DIRECTORY|O_NOFOLLOW); a symlink or a file there is a `FileError`.
    static func openDirectory(at dirfd: Int32, _ name: String, display: String, followLast: Bool = false) throws -> Int32 {
        let flags = O_RDONLY | O_DIRECTORY | O_CLOEXEC | (followLast ? 0 : O_NOFOLLOW)
        let (fd, e) = Posix.retryingEINTR("open", subject: display, trapProgrammingErrors: true) { openat(dirfd, name, flags, 0) }
        if fd >= 0 { return fd }
        if e == ELOOP || e == ENOTDIR {
            var st = stat()
            if fstatat(dirfd, name, &st, AT_SYMLINK_NOFOLLOW) == 0, FileType(mode: st.st_mode) != .directory {
                throw FileError.notADirectory(path: display, found: FileType(mode: st.st_mode))
            }
        }
        throw SystemError("open", errno: e, subject: display)
    }

    /// The path of an entry, for messages.
    public func pathOf(_ name: String) -> String {
        path.hasSuffix("/") ? path + name : path + "/" + name
    }

    func checkName(_ name: String) throws {
        guard !name.isEmpty, name != ".", name != "..", !name.contains("/"), !name.utf8.contains(0) else {
            throw FileError.badName(directory: path, name: name)
        }
    }

    /// A subdirectory, created when missing (with `create`), held to the same rules.
    public func subdirectory(_ name: String, owners: [uid_t]? = nil, create mode: mode_t? = nil) throws -> TrustedDirectory {
        try checkName(name)
        let display = pathOf(name)
        var made = false
        if let mode {
            let (r, e) = Posix.retryingEINTR("mkdir", subject: display, trapProgrammingErrors: true) { mkdirat(fd, name, mode) }
            if r < 0 && e != EEXIST { throw SystemError("mkdir", errno: e, subject: display) }
            made = r == 0
        }
        let sub = try TrustedDirectory.openDirectory(at: fd, name, display: display)
        if made, let mode {
            // Exactly the mode asked for, whatever the umask.
            do { try Posix.syscall("chmod", subject: display) { fchmod(sub, mode) } } catch { Posix.close(sub); throw error }
        }
        return try TrustedDirectory(fd: sub, path: display, owners: owners ?? [geteuid()])
    }

    /// fstatat(AT_SYMLINK_NOFOLLOW) of an entry; nil when there is none.
    public func statusOfEntry(_ name: String) throws -> FileStatus? {
        try checkName(name)
        var st = stat()
        let (r, e) = Posix.retryingEINTR("stat", subject: pathOf(name), trapProgrammingErrors: true) { fstatat(fd, name, &st, AT_SYMLINK_NOFOLLOW) }
        if r < 0 {
            if e == ENOENT { return nil }
            throw SystemError("stat", errno: e, subject: pathOf(name))
        }
        return FileStatus(st)
    }

    public enum Access {
        case read
        /// Write at the end (O_APPEND).
        case append
        /// Write from the start (the file is not truncated).
        case write

        var flags: Int32 {
            switch self {
            case .read: return O_RDONLY
            case .append: return O_WRONLY | O_APPEND
            case .write: return O_WRONLY
            }
        }
    }

    /// Opens a regular file inside, never blocking and never following a
    /// symlink: anything else there is `FileError.notARegularFile`. With
    /// `create`, a missing file is made with that mode. The fd is the
    /// caller's to close; O_NONBLOCK stays set (it changes nothing for a
    /// regular file).
    public func openFile(_ name: String, _ access: Access, create mode: mode_t? = nil) throws -> (fd: Int32, status: FileStatus) {
        try checkName(name)
        let display = pathOf(name)
        // Look before opening: opening a device can have effects of its own (a tape rewinds, a tty becomes ours).
        let before = try statusOfEntry(name)
        if let st = before, st.type != .regular { throw FileError.notARegularFile(path: display, found: st.type) }
        let flags = access.flags | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC | O_NOCTTY | (mode != nil ? O_CREAT : 0)
        let (f, e) = Posix.retryingEINTR("open", subject: display, trapProgrammingErrors: true) { openat(fd, name, flags, mode ?? 0) }
        guard f >= 0 else {
            // Swapped since we looked: ELOOP is a symlink, ENXIO a FIFO without a reader.
            if e == ELOOP { throw FileError.notARegularFile(path: display, found: .symlink) }
            if e == ENXIO { throw FileError.notARegularFile(path: display, found: .fifo) }
            if e == ENOSPC || e == EDQUOT { throw FileError.noSpace(path: display, call: "open", errno: e) }
            throw SystemError("open", errno: e, subject: display)
        }
        do {
            var st = try FileSystem.status(fd: f)
            guard st.type == .regular else { throw FileError.notARegularFile(path: display, found: st.type) }
            if before == nil, let mode, st.permissions != UInt32(mode) {
                // Made by this open: exactly the mode asked for, whatever the umask.
                try Posix.syscall("chmod", subject: display) { fchmod(f, mode) }
                st = try FileSystem.status(fd: f)
            }
            return (f, st)
        } catch {
            Posix.close(f)
            throw error
        }
    }

    /// The whole file, refused when larger than `limit` (checked by fstat
    /// before reading, and again while reading: it may grow); nil when missing.
    public func readFile(_ name: String, limit: Int) throws -> [UInt8]? {
        let opened: (fd: Int32, status: FileStatus)
        do { opened = try openFile(name, .read) } catch let e as SystemError where e.errno == ENOENT { return nil }
        defer { Posix.close(opened.fd) }
        let display = pathOf(name)
        if opened.status.size > Int64(limit) { throw FileError.tooLarge(path: display, size: opened.status.size, limit: Int64(limit)) }
        var out: [UInt8] = []
        out.reserveCapacity(Int(opened.status.size))
        var chunk = [UInt8](repeating: 0, count: min(max(Int(opened.status.size) + 1, 4096), 1 << 20))
        while true {
            let n = try chunk.withUnsafeMutableBytes { buf in
                try Posix.syscall("read", subject: display) { Glibc.read(opened.fd, buf.baseAddress, buf.count) }
            }
            if n == 0 { return out }
            if out.count + n > limit { throw FileError.tooLarge(path: display, size: Int64(out.count + n), limit: Int64(limit)) }
            out.append(contentsOf: chunk[0..<n])
        }
    }

    private static var tempCounter = 0

    /// Replaces `name` with `bytes` so that a reader sees the old file or the
    /// new one, never a mixture, also after a crash: a temp file made with
    /// O_EXCL|O_NOFOLLOW, every byte written, fsync, renameat over the name,
    /// fsync of the directory. Every step is checked; on any failure the temp
    /// file is removed and the old file is untouched. A full disk is
    /// `FileError.noSpace`.
    public func writeFileAtomically(_ name: String, _ bytes: [UInt8], mode: mode_t = 0o600) throws {
        try checkName(name)
        let display = pathOf(name)
        TrustedDirectory.tempCounter += 1
        // O_EXCL refuses a name that exists: pid, counter and clock keep ours unique.
        let temp = ".\(name).tmp-\(getpid())-\(TrustedDirectory.tempCounter)-\(Posix.monotonicNanoseconds() % 1_000_000_000)"
        let flags = O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK
        let (f, e) = Posix.retryingEINTR("open", subject: pathOf(temp), trapProgrammingErrors: true) { openat(fd, temp, flags, mode) }
        guard f >= 0 else {
            if e == ENOSPC || e == EDQUOT { throw FileError.noSpace(path: pathOf(temp), call: "open", errno: e) }
            throw SystemError("open", errno: e, subject: pathOf(temp))
        }
        func noSpace(_ body: () throws -> Void) throws {
            do { try body() } catch let e as SystemError where e.isNoSpace {
                throw FileError.noSpace(path: display, call: e.call, errno: e.errno)
            }
        }
        do {
            try noSpace {
                try Posix.syscall("chmod", subject: pathOf(temp)) { fchmod(f, mode) }
                try Posix.writeFully(f, bytes, subject: pathOf(temp))
                try Posix.sync(f, subject: pathOf(temp))
            }
        } catch {
            Posix.close(f)
            _ = unlinkat(fd, temp, 0)
            throw error
        }
        // close can report a deferred write error (NFS): it counts.
        if Glibc.close(f) < 0 && Glibc.errno != EINTR {
            let ce = Glibc.errno
            _ = unlinkat(fd, temp, 0)
            if ce == ENOSPC || ce == EDQUOT { throw FileError.noSpace(path: display, call: "close", errno: ce) }
            throw SystemError("close", errno: ce, subject: pathOf(temp))
        }
        do {
            try Posix.syscall("rename", subject: "\(pathOf(temp)) to \(display)") { renameat(fd, temp, fd, name) }
        } catch {
            _ = unlinkat(fd, temp, 0)
            throw error
        }
        try noSpace { try Posix.sync(fd, subject: path) }
    }

    /// renameat(2) of two entries of this directory.
    public func rename(_ name: String, to newName: String) throws {
        try checkName(name)
        try checkName(newName)
        try Posix.syscall("rename", subject: "\(pathOf(name)) to \(pathOf(newName))") { renameat(fd, name, fd, newName) }
    }

    /// renameat(2) that treats a missing source as done; false when there was none.
    @discardableResult
    public func renameIfPresent(_ name: String, to newName: String) throws -> Bool {
        do { try rename(name, to: newName) } catch let e as SystemError where e.errno == ENOENT { return false }
        return true
    }

    /// unlinkat(2) of a file (or symlink, FIFO… never what it points to);
    /// false when there was nothing to remove.
    @discardableResult
    public func remove(_ name: String) throws -> Bool {
        try checkName(name)
        let (r, e) = Posix.retryingEINTR("unlink", subject: pathOf(name), trapProgrammingErrors: true) { unlinkat(fd, name, 0) }
        if r < 0 {
            if e == ENOENT { return false }
            throw SystemError("unlink", errno: e, subject: pathOf(name))
        }
        return true
    }

    /// Names of the entries ("." and ".." left out).
    public func entries() throws -> [String] {
        let dup = try Posix.syscall("openat", subject: path) { openat(fd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC, 0) }
        guard let dir = fdopendir(dup) else {
            let e = Glibc.errno
            Posix.close(dup)
            throw SystemError("fdopendir", errno: e, subject: path)
        }
        defer { closedir(dir) }
        var names: [String] = []
        while let entry = readdir(dir) {
            let name = withUnsafePointer(to: entry.pointee.d_name) { $0.withMemoryRebound(to: CChar.self, capacity: 256) { String(cString: $0) } }
            if name != "." && name != ".." { names.append(name) }
        }
        return names
    }

    /// fchown(2) of an entry, not following a symlink.
    public func changeOwner(_ name: String, uid: uid_t?, gid: gid_t?) throws {
        try checkName(name)
        try Posix.syscall("chown", subject: pathOf(name)) { fchownat(fd, name, uid ?? uid_t.max, gid ?? gid_t.max, AT_SYMLINK_NOFOLLOW) }
    }

    /// A log file inside, opened for appending whole lines.
    public func openAppendFile(_ name: String, mode: mode_t = 0o640) throws -> AppendFile {
        let (f, st) = try openFile(name, .append, create: mode)
        return AppendFile(fd: f, path: pathOf(name), size: st.size)
    }
}

/// A file written only at its end, a record (a log line) at a time, each
/// whole or not at all: after a short write (the disk filled up midway) the
/// partial record is cut off again, so a reader never sees a torn line.
/// Meant for files one writer owns (swarmd's logs).
public final class AppendFile {
    public let path: String
    public private(set) var fd: Int32
    /// Bytes in the file, as far as this writer knows.
    public private(set) var size: Int64

    init(fd: Int32, path: String, size: Int64) {
        self.fd = fd
        self.path = path
        self.size = size
    }

    deinit { close() }

    /// Appends `bytes` whole, or throws and leaves the file as it was:
    /// `FileError.noSpace` for a full disk or quota, `SystemError` otherwise.
    public func append(_ bytes: UnsafeRawBufferPointer) throws {
        precondition(fd >= 0, "append to \(path) after close")
        var written = 0
        while written < bytes.count {
            let rest = UnsafeRawBufferPointer(rebasing: bytes[written...])
            let (n, e) = Posix.retryingEINTR("write", subject: path, trapProgrammingErrors: true) { Glibc.write(fd, rest.baseAddress, rest.count) }
            if n > 0 {
                written += n
                continue
            }
            // n == 0 cannot happen for a regular file with room; treat it as full.
            let errno = n == 0 ? ENOSPC : e
            if written > 0 { cutPartialRecord(written) }
            if errno == ENOSPC || errno == EDQUOT || errno == EFBIG {
                throw FileError.noSpace(path: path, call: "write", errno: errno)
            }
            throw SystemError("write", errno: errno, subject: path)
        }
        size += Int64(written)
    }

    public func append(_ bytes: [UInt8]) throws {
        try bytes.withUnsafeBytes { try append($0) }
    }

    /// With O_APPEND the record started at the end, `written` bytes ago.
    private func cutPartialRecord(_ written: Int) {
        let end = lseek(fd, 0, SEEK_CUR)
        if end >= 0 {
            _ = ftruncate(fd, end - off_t(written))
        } else {
            _ = ftruncate(fd, off_t(size))
        }
    }

    public func sync() throws {
        try Posix.sync(fd, subject: path)
    }

    public func close() {
        if fd >= 0 { Posix.close(fd) }
        fd = -1
    }
}
