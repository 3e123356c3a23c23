import Glibc

/// Why a config (or env) file could not be read, phrased to follow its path.
struct FileReadError: Error, Equatable {
    var message: String
}

/// Reads the small text files a config is made of without trusting what is
/// at the path: a FIFO, a device or a huge file named by mistake must give a
/// clear error, never hang or fill swarmd's memory (swarmd may be PID 1).
enum ConfigFile {
    /// The file's bytes, at most `limit` of them.
    static func read(path: String, limit: Int) -> Result<[UInt8], FileReadError> {
        // O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer
        // before fstat could tell what it is. Symlinks are followed: the user named the path.
        let fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC | O_NOCTTY)
        if fd < 0 {
            let e = errno
            return .failure(FileReadError(message: e == ENOENT ? "no such file" : "cannot open: \(errnoText(e))"))
        }
        defer { close(fd) }
        var st = stat()
        guard fstat(fd, &st) == 0 else { return .failure(FileReadError(message: "cannot fstat: \(errnoText(errno))")) }
        let kind = st.st_mode & S_IFMT
        guard kind == S_IFREG else {
            return .failure(FileReadError(message: "not a regular file (\(fileKind(kind))): swarm reads only regular files"))
        }
        guard st.st_size <= limit else {
            return .failure(FileReadError(message: "file is larger than \(limit) bytes (\(st.st_size) bytes)"))
        }
        // Read up to limit + 1: the file may have grown since fstat.
        var bytes = [UInt8](repeating: 0, count: Int(st.st_size) + 1)
        var filled = 0
        while true {
            if filled == bytes.count {
                guard bytes.count <= limit else {
                    return .failure(FileReadError(message: "file is larger than \(limit) bytes (it grew while being read)"))
                }
                bytes += [UInt8](repeating: 0, count: min(limit + 1, bytes.count * 2 + 4096) - bytes.count)
            }
            let n = bytes.withUnsafeMutableBytes { buf in
                Glibc.read(fd, buf.baseAddress! + filled, buf.count - filled)
            }
            if n < 0 {
                if errno == EINTR { continue }
                return .failure(FileReadError(message: "cannot read: \(errnoText(errno))"))
            }
            if n == 0 { break }
            filled += n
        }
        bytes.removeSubrange(filled...)
        return .success(bytes)
    }

    static func fileKind(_ kind: mode_t) -> String {
        switch kind {
        case S_IFDIR: return "a directory"
        case S_IFIFO: return "a FIFO"
        case S_IFCHR: return "a character device"
        case S_IFBLK: return "a block device"
        case S_IFSOCK: return "a socket"
        case S_IFLNK: return "a symbolic link"
        default: return "mode \(String(kind, radix: 8))"
        }
    }

    static func errnoText(_ e: Int32) -> String {
        "\(String(cString: strerror(e))) (errno \(e))"
    }
}
