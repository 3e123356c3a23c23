import CSwarmSpawn
import Glibc

/// What /proc says about a process.
public enum ProcFS {
    public static let clockTicks = Int64(sysconf(Int32(_SC_CLK_TCK)))
    public static let pageSize = Int64(sysconf(Int32(_SC_PAGESIZE)))

    static func read(_ path: String, limit: Int = 1 << 20) -> String? {
        guard let bytes = try? Posix.readFile(path, limit: limit) else { return nil }
        return String(decoding: bytes, as: UTF8.self)
    }

    /// Resident set size in bytes.
    public static func rss(pid: pid_t) -> Int64? {
        guard let statm = read("/proc/\(pid)/statm") else { return nil }
        let parts = statm.split(separator: " ")
        guard parts.count > 1, let pages = Int64(parts[1]) else { return nil }
        return pages * pageSize
    }

    /// User + system CPU time in clock ticks, and the start time in ticks since boot.
    public static func cpuTicks(pid: pid_t) -> (cpu: Int64, start: Int64)? {
        guard let stat = read("/proc/\(pid)/stat"), let close = stat.lastIndex(of: ")") else { return nil }
        let fields = stat[stat.index(after: close)...].split(separator: " ")
        // fields[0] is state (field 3); utime is field 14, stime 15, starttime 22.
        guard fields.count > 19, let ut = Int64(fields[11]), let st = Int64(fields[12]), let start = Int64(fields[19]) else { return nil }
        return (ut + st, start)
    }

    /// CPU ticks and resident bytes from one read of /proc/PID/stat.
    public static func usage(pid: pid_t) -> (cpuTicks: Int64, rss: Int64)? {
        guard let stat = read("/proc/\(pid)/stat"), let close = stat.lastIndex(of: ")") else { return nil }
        let fields = stat[stat.index(after: close)...].split(separator: " ")
        // fields[0] is field 3 (state): utime 14, stime 15, rss 24 (pages).
        guard fields.count > 21, let ut = Int64(fields[11]), let st = Int64(fields[12]), let pages = Int64(fields[21]) else { return nil }
        return (ut + st, pages * pageSize)
    }

    /// The CPUs this process may run on (its affinity mask), ascending; empty if unknown.
    public static func allowedCPUs() -> [Int] {
        var cpus = [Int32](repeating: 0, count: 1024)
        let n = swarm_allowed_cpus(&cpus, Int32(cpus.count))
        return n > 0 ? cpus.prefix(Int(n)).map(Int.init) : []
    }

    /// How many CPUs this process may use: its affinity mask, bounded by a cgroup v2 cpu.max quota.
    public static func usableCPUs() -> Int {
        var count = allowedCPUs().count
        if count == 0 { count = Int(sysconf(Int32(_SC_NPROCESSORS_ONLN))) }
        if let quota = cgroupQuota() { count = min(count, max(1, Int(quota.rounded(.up)))) }
        return max(1, count)
    }

    /// cpu.max of this process's cgroup (v2), as a number of CPUs; nil if unlimited.
    static func cgroupQuota() -> Double? {
        guard let cg = read("/proc/self/cgroup") else { return nil }
        for line in cg.split(separator: "\n") where line.hasPrefix("0::") {
            let path = String(line.dropFirst(3))
            var dir = "/sys/fs/cgroup" + (path == "/" ? "" : path)
            // The limit may be set on an ancestor.
            var best: Double?
            while dir.hasPrefix("/sys/fs/cgroup") {
                if let max = read(dir + "/cpu.max") {
                    let parts = max.split(whereSeparator: { $0 == " " || $0 == "\n" })
                    if parts.count == 2, parts[0] != "max", let q = Double(parts[0]), let p = Double(parts[1]), p > 0 {
                        best = min(best ?? .infinity, q / p)
                    }
                }
                guard let slash = dir.lastIndex(of: "/"), dir != "/sys/fs/cgroup" else { break }
                dir = String(dir[..<slash])
            }
            return best
        }
        return nil
    }

    /// How many established TCP connections with local port `port` the
    /// process holds open: its socket inodes (/proc/PID/fd) matched against
    /// the kernel's established sockets (sock_diag).
    /// `listener`: the listening socket the connections came from (swarmd's
    /// fd for it): only its address family is dumped, and a process holding
    /// no socket but it holds no connection, without a dump at all (each dump
    /// walks the kernel's whole established hash: ~2.5 ms per replaced worker
    /// of a reload before this).
    public static func establishedConnections(pid: pid_t, localPort port: UInt16, listener: Int32? = nil) throws -> Int {
        var listenerInode: UInt32?
        var family: Int32 = 0
        if let listener {
            var st = stat()
            if fstat(listener, &st) == 0 { listenerInode = UInt32(truncatingIfNeeded: st.st_ino) }
            var address = sockaddr_storage()
            var length = socklen_t(MemoryLayout<sockaddr_storage>.size)
            let named = withUnsafeMutablePointer(to: &address) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(listener, $0, &length) }
            }
            if named == 0 { family = Int32(address.ss_family) }
        }
        var inodes: [UInt32] = []
        for entry in listDirectory("/proc/\(pid)/fd") ?? [] {
            guard let target = readLink("/proc/\(pid)/fd/\(entry)"), target.hasPrefix("socket:["),
                  let inode = UInt32(target.dropFirst(8).dropLast()), inode != listenerInode else { continue }
            inodes.append(inode)
        }
        guard !inodes.isEmpty else { return 0 }
        inodes.sort()
        let n = inodes.withUnsafeBufferPointer { swarm_count_established(port, family, $0.baseAddress, Int32($0.count)) }
        if n < 0 { throw SystemError("sock_diag(SOCK_DIAG_BY_FAMILY)", errno: errno) }
        return Int(n)
    }

    public static func listDirectory(_ path: String) -> [String]? {
        guard let dir = opendir(path) else { return nil }
        defer { closedir(dir) }
        var names: [String] = []
        while let entry = readdir(dir) {
            let name = withUnsafePointer(to: entry.pointee.d_name) { $0.withMemoryRebound(to: CChar.self, capacity: 256) { String(cString: $0) } }
            if name != "." && name != ".." { names.append(name) }
        }
        return names
    }

    public static func readLink(_ path: String) -> String? {
        var buf = [CChar](repeating: 0, count: 4096)
        let n = readlink(path, &buf, buf.count - 1)
        guard n >= 0 else { return nil }
        buf[n] = 0
        return String(cString: buf)
    }
}

/// User and group database.
public enum Users {
    public static func lookupUser(_ name: String) -> (uid: UInt32, gid: UInt32)? {
        if let n = UInt32(name) {
            if let pw = getpwuid(n) { return (pw.pointee.pw_uid, pw.pointee.pw_gid) }
            return (n, n)
        }
        guard let pw = getpwnam(name) else { return nil }
        return (pw.pointee.pw_uid, pw.pointee.pw_gid)
    }

    public static func lookupGroup(_ name: String) -> UInt32? {
        if let n = UInt32(name) { return n }
        guard let gr = getgrnam(name) else { return nil }
        return gr.pointee.gr_gid
    }

    public static func homeDirectory() -> String? {
        if let h = getenv("HOME") { return String(cString: h) }
        guard let pw = getpwuid(getuid()) else { return nil }
        return String(cString: pw.pointee.pw_dir)
    }
}

extension ProcFS {
    /// Asks the kernel to reclaim this process's clean, file-backed pages
    /// (code and read-only data touched only while starting: argument
    /// parsing, config decoding, runtime metadata scans). They are read
    /// back from the page cache or disk if ever needed again. Returns the
    /// number of bytes advised.
    @discardableResult
    public static func pageOutCleanMappings() -> Int {
        guard let maps = read("/proc/self/maps") else { return 0 }
        var total = 0
        for line in maps.split(separator: "\n") {
            let f = line.split(separator: " ", omittingEmptySubsequences: true)
            // address perms offset dev inode path
            guard f.count >= 6, f[1].hasPrefix("r"), !f[1].contains("w"), f[5].hasPrefix("/") else { continue }
            let range = f[0].split(separator: "-")
            guard range.count == 2, let start = UInt(range[0], radix: 16), let end = UInt(range[1], radix: 16) else { continue }
            if madvise(UnsafeMutableRawPointer(bitPattern: start), Int(end - start), 21 /* MADV_PAGEOUT */) == 0 {
                total += Int(end - start)
            }
        }
        return total
    }
}
