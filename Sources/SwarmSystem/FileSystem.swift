import Glibc

public enum FileType: String, Sendable {
    case regular = "regular file"
    case directory
    case symlink = "symbolic link"
    case fifo = "FIFO"
    case socket
    case characterDevice = "character device"
    case blockDevice = "block device"
    case unknown = "unknown file type"

    init(mode: mode_t) {
        switch mode & S_IFMT {
        case S_IFREG: self = .regular
        case S_IFDIR: self = .directory
        case S_IFLNK: self = .symlink
        case S_IFIFO: self = .fifo
        case S_IFSOCK: self = .socket
        case S_IFCHR: self = .characterDevice
        case S_IFBLK: self = .blockDevice
        default: self = .unknown
        }
    }
}

/// What stat(2) says about a file.
public struct FileStatus: Equatable, Sendable {
    public var type: FileType
    /// Permission bits, with setuid/setgid/sticky (mode & 07777).
    public var permissions: UInt32
    public var owner: UInt32
    public var group: UInt32
    public var size: Int64
    public var device: UInt64
    public var inode: UInt64
    public var links: UInt64

    init(_ st: stat) {
        type = FileType(mode: st.st_mode)
        permissions = UInt32(st.st_mode & 0o7777)
        owner = st.st_uid
        group = st.st_gid
        size = Int64(st.st_size)
        device = UInt64(st.st_dev)
        inode = UInt64(st.st_ino)
        links = UInt64(st.st_nlink)
    }

    /// Writable by its group or by anyone.
    public var isWritableByOthers: Bool { permissions & 0o022 != 0 }

    /// "0755"
    public var modeText: String { octal(permissions) }

    /// The same file (device and inode).
    public func isSameFile(as other: FileStatus) -> Bool { device == other.device && inode == other.inode }
}

func octal(_ mode: UInt32) -> String {
    let s = String(mode, radix: 8)
    return String(repeating: "0", count: max(0, 4 - s.count)) + s
}

/// Refusals of the file-safety rules (see `TrustedDirectory`), and a full disk.
public enum FileError: Error, Equatable, CustomStringConvertible {
    /// A directory swarm must trust belongs to another user.
    case foreignOwner(path: String, owner: UInt32, mode: UInt32, expected: [UInt32])
    /// A directory swarm must trust can be written by its group or by anyone.
    case writableByOthers(path: String, owner: UInt32, mode: UInt32)
    /// Expected a directory; found something else (a symlink, a file…).
    case notADirectory(path: String, found: FileType)
    /// Expected a regular file; found a FIFO, a symlink, a device, a directory….
    case notARegularFile(path: String, found: FileType)
    /// Larger than the caller is willing to read.
    case tooLarge(path: String, size: Int64, limit: Int64)
    /// ENOSPC or EDQUOT: nothing of this write was kept.
    case noSpace(path: String, call: String, errno: Int32)
    /// A name inside a directory that is not one plain component.
    case badName(directory: String, name: String)

    public var description: String {
        switch self {
        case let .foreignOwner(path, owner, mode, expected):
            let want = expected.map(Users.describe).joined(separator: " or ")
            return "refusing to trust \(path): it is owned by \(Users.describe(owner)), not by \(want) (mode \(octal(mode))); "
                + "another user could plant files there. Fix its owner (chown) or use another directory"
        case let .writableByOthers(path, owner, mode):
            return "refusing to trust \(path): mode \(octal(mode)) makes it writable by its group or other users (owner \(Users.describe(owner))); "
                + "run 'chmod go-w \(path)' or use another directory"
        case let .notADirectory(path, found):
            return "refusing \(path): expected a directory, found a \(found.rawValue)\(found == .symlink ? " (symlinks are not followed: give the real path)" : "")"
        case let .notARegularFile(path, found):
            return "refusing \(path): expected a regular file, found a \(found.rawValue)\(found == .symlink ? " (symlinks are not followed)" : "")"
        case let .tooLarge(path, size, limit):
            return "refusing \(path): \(size) bytes is more than the limit of \(limit)"
        case let .noSpace(path, call, errno):
            return "\(call) \(path): no space left (\(errnoName(errno))); nothing of this write was kept"
        case let .badName(directory, name):
            return "'\(name)' is not a plain file name inside \(directory)"
        }
    }
}

/// Paths, metadata and directory entries by path. Inside a directory swarm
/// keeps state in, use `TrustedDirectory` instead: it never follows symlinks.
public enum FileSystem {
    /// stat(2), or lstat(2) when not following symlinks.
    public static func status(_ path: String, followSymlinks: Bool = true) throws -> FileStatus {
        var st = stat()
        if followSymlinks {
            try Posix.syscall("stat", subject: path) { stat(path, &st) }
        } else {
            try Posix.syscall("lstat", subject: path) { lstat(path, &st) }
        }
        return FileStatus(st)
    }

    /// As `status`, nil when nothing is there (ENOENT, or ENOTDIR on the way).
    public static func statusIfPresent(_ path: String, followSymlinks: Bool = true) throws -> FileStatus? {
        do { return try status(path, followSymlinks: followSymlinks) } catch let e as SystemError where e.errno == ENOENT || e.errno == ENOTDIR {
            return nil
        }
    }

    /// fstat(2).
    public static func status(fd: Int32) throws -> FileStatus {
        var st = stat()
        try Posix.syscall("fstat", subject: "fd \(fd)") { fstat(fd, &st) }
        return FileStatus(st)
    }

    /// A regular file this process may execute (access(X_OK) and stat).
    public static func isExecutableFile(_ path: String) -> Bool {
        access(path, X_OK) == 0 && (try? status(path))?.type == .regular
    }

    public static func isDirectory(_ path: String) -> Bool {
        (try? status(path))?.type == .directory
    }

    public static func exists(_ path: String, followSymlinks: Bool = true) -> Bool {
        (try? statusIfPresent(path, followSymlinks: followSymlinks)) != nil
    }

    public enum Access {
        case read, write, execute, exists
        var mode: Int32 {
            switch self {
            case .read: return R_OK
            case .write: return W_OK
            case .execute: return X_OK
            case .exists: return F_OK
            }
        }
    }

    /// access(2): whether the real uid may.
    public static func isAccessible(_ path: String, _ what: Access) -> Bool {
        access(path, what.mode) == 0
    }

    public static func unlink(_ path: String) throws {
        try Posix.syscall("unlink", subject: path) { Glibc.unlink(path) }
    }

    /// unlink(2) that treats "already gone" as done; false when nothing was there.
    @discardableResult
    public static func removeIfPresent(_ path: String) throws -> Bool {
        do { try unlink(path) } catch let e as SystemError where e.errno == ENOENT { return false }
        return true
    }

    public static func rename(_ from: String, to: String) throws {
        try Posix.syscall("rename", subject: "\(from) to \(to)") { Glibc.rename(from, to) }
    }

    public static func changeMode(_ path: String, _ mode: mode_t) throws {
        try Posix.syscall("chmod", subject: path) { chmod(path, mode) }
    }

    /// chown(2); nil keeps that id.
    public static func changeOwner(_ path: String, uid: uid_t?, gid: gid_t?) throws {
        try Posix.syscall("chown", subject: path) { chown(path, uid ?? uid_t.max, gid ?? gid_t.max) }
    }

    public static func readLink(_ path: String) throws -> String {
        var buf = [CChar](repeating: 0, count: Int(PATH_MAX) + 1)
        let n = try Posix.syscall("readlink", subject: path) { readlink(path, &buf, buf.count - 1) }
        buf[n] = 0
        return String(cString: buf)
    }

    /// mkdir -p: every missing directory of `path` is created with exactly
    /// `mode` (fchmod after mkdir: the process's umask does not apply, so a
    /// service started with `UMask=0177` still gets directories it can enter).
    /// Directories that were there are left as they are. A relative path is relative to the current
    /// directory, or to the directory `base` when given.
    public static func makeDirectories(_ path: String, mode: mode_t, relativeTo base: TrustedDirectory? = nil) throws {
        precondition(!path.isEmpty, "makeDirectories: an empty path")
        let dirfd = base?.fd ?? AT_FDCWD
        let shown = { (p: String) in base.map { p.hasPrefix("/") ? p : $0.pathOf(p) } ?? p }
        var current = path.hasPrefix("/") ? "/" : ""
        for part in path.split(separator: "/", omittingEmptySubsequences: true) {
            current += (current.isEmpty || current.hasSuffix("/") ? "" : "/") + part
            if part == "." || part == ".." { continue }
            let (r, e) = Posix.retryingEINTR("mkdir", subject: shown(current), trapProgrammingErrors: true) { mkdirat(dirfd, current, mode) }
            if r < 0 && e != EEXIST { throw SystemError("mkdir", errno: e, subject: shown(current)) }
            if r == 0 { try setModeOfNewDirectory(at: dirfd, current, mode: mode, shown: shown(current)) }
        }
        // EEXIST does not say it is a directory.
        var st = stat()
        try Posix.syscall("stat", subject: shown(path)) { fstatat(dirfd, path, &st, 0) }
        let type = FileType(mode: st.st_mode)
        guard type == .directory else { throw FileError.notADirectory(path: shown(path), found: type) }
    }

    /// chmod of a directory this process has just made, through an
    /// O_NOFOLLOW|O_DIRECTORY fd so that nothing swapped in is changed.
    static func setModeOfNewDirectory(at dirfd: Int32, _ name: String, mode: mode_t, shown: String) throws {
        let fd = try Posix.syscall("open", subject: shown) { openat(dirfd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC, 0) }
        defer { Posix.close(fd) }
        try Posix.syscall("chmod", subject: shown) { fchmod(fd, mode) }
    }

    /// getcwd(3).
    public static func currentDirectory() throws -> String {
        var buf = [CChar](repeating: 0, count: Int(PATH_MAX) + 1)
        guard getcwd(&buf, buf.count) != nil else { throw SystemError("getcwd", errno: Glibc.errno) }
        return String(cString: buf)
    }

    /// `path` made absolute against `directory` (the current directory when
    /// nil): "." components dropped, repeated slashes folded. ".." is kept,
    /// as the kernel resolves it (after symlinks), not as text.
    public static func absolute(_ path: String, relativeTo directory: String? = nil) throws -> String {
        if path.hasPrefix("/") { return normalize(path) }
        let base = try directory ?? currentDirectory()
        return normalize(base + "/" + path)
    }

    /// Folds "//" and "/./"; keeps a leading "/" and drops a trailing one.
    public static func normalize(_ path: String) -> String {
        let absolute = path.hasPrefix("/")
        let parts = path.split(separator: "/", omittingEmptySubsequences: true).filter { $0 != "." }
        let joined = parts.joined(separator: "/")
        if absolute { return "/" + joined }
        return joined.isEmpty ? "." : joined
    }

    /// ("dir", "name") of a path; "." for a bare name, "/" for a name at the root.
    public static func split(_ path: String) -> (directory: String, name: String) {
        let trimmed = path.count > 1 && path.hasSuffix("/") ? String(path.dropLast()) : path
        guard let slash = trimmed.lastIndex(of: "/") else { return (".", trimmed) }
        let dir = String(trimmed[..<slash])
        return (dir.isEmpty ? "/" : dir, String(trimmed[trimmed.index(after: slash)...]))
    }
}

extension FileSystem {
    /// Writes `bytes` into an existing file from its start, without creating
    /// or truncating it: for kernel settings (/proc/sys, cgroup files), where
    /// the write is the command.
    public static func overwrite(_ path: String, with bytes: [UInt8]) throws {
        let fd = try Posix.syscall("open", subject: path) { Glibc.open(path, O_WRONLY | O_CLOEXEC | O_NOCTTY) }
        defer { Posix.close(fd) }
        try Posix.writeFully(fd, bytes, subject: path)
    }

    /// /dev/null, read-write, close-on-exec: stdin (and more) of the programs swarm starts.
    public static func openDevNull() throws -> Int32 {
        try Posix.syscall("open", subject: "/dev/null") { Glibc.open("/dev/null", O_RDWR | O_CLOEXEC | O_NOCTTY) }
    }
}
