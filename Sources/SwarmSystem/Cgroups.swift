import CSwarmSpawn
import Glibc

// A cgroup v2 per worker: the one thing a worker's descendants cannot leave
// by setsid, double fork or setpgid. It gives swarmd "kill everything this
// worker started" (cgroup.kill), "everything has exited" (cgroup.events,
// pollable) and the CPU and memory of the whole tree (pre-fork servers).
//
// Layout (one instance = one swarmd state dir, so two swarmds never touch
// each other's workers, and a restarted swarmd finds its own leftovers):
//
//   <own>/supervisor                     swarmd itself, when it had to leave <own> (below)
//   <base>/<instance>/<app>/<slot>.<worker>
//
// <base> is chosen in this order:
//  1. swarmd's own cgroup is not the root ("/") and is writable by it: it
//     was delegated (systemd `Delegate=yes`, or a container's cgroup), so
//     <base> = <own>/swarm. Enabling controllers (memory, cpu, pids) for
//     the workers in <own> needs <own> to hold no processes (cgroup v2's
//     "no internal processes" rule), so swarmd first moves itself into
//     <own>/supervisor; that is done only when there are controllers to enable.
//  2. swarmd is in the root cgroup (no systemd, a hybrid layout like these
//     machines' /sys/fs/cgroup/unified, or the root of a cgroup namespace):
//     <base> = <mount>/swarm-<uid>. The root cgroup is exempt from the
//     no-internal-processes rule, and the uid keeps users apart.
//  3. Otherwise (own cgroup not writable: a login session of a non-root
//     user, a read-only cgroupfs): unavailable, with the reason; the daemon
//     falls back to process groups and says so in status.
//
// Joining: swarmd opens the worker's cgroup.procs (O_WRONLY|O_CLOEXEC) before
// the spawn and the child writes "0" to it first thing (SpawnPlan.cgroupProcsFD).
// One write(2) is async-signal-safe and fits the existing clone(CLONE_VM |
// CLONE_VFORK) spawn; clone3's CLONE_INTO_CGROUP would be atomic but needs a
// second spawn path (clone3 has no CLONE_VFORK-on-own-stack wrapper in glibc),
// and nothing runs in the child before the write that could fork anyway.

/// Why swarmd cannot give workers cgroups: shown in `status`.
public struct CgroupUnavailable: Error, CustomStringConvertible, Equatable {
    public var reason: String
    public init(_ reason: String) { self.reason = reason }
    public var description: String { "cgroups unavailable: \(reason)" }
}

/// Where the unified (v2) hierarchy is mounted and where swarmd is in it.
public struct CgroupHierarchy: Equatable, Sendable {
    /// The mount point: /sys/fs/cgroup (pure v2) or /sys/fs/cgroup/unified (hybrid).
    public var mount: String
    /// swarmd's cgroup, as /proc/self/cgroup names it ("/" or "/system.slice/swarmd.service").
    public var own: String

    public init(mount: String, own: String) {
        self.mount = mount
        self.own = own
    }

    /// The directory of a cgroup path ("/a/b") in the mount.
    public func directory(_ cgroup: String) -> String {
        cgroup == "/" ? mount : mount + cgroup
    }
}

public enum Cgroups {
    /// The controllers swarmd enables for its workers where they are offered.
    static let wantedControllers = ["cpu", "memory", "pids"]

    /// The cgroup2 mount: /sys/fs/cgroup if it is cgroup2, else /sys/fs/cgroup/unified if that is.
    public static func findMount() -> String? {
        for path in ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"] where swarm_is_cgroup2(path) == 1 {
            return path
        }
        return nil
    }

    /// The v2 path in /proc/self/cgroup's "0::/path" line.
    public static func parseOwnCgroup(_ procSelfCgroup: String) -> String? {
        for line in procSelfCgroup.split(separator: "\n") where line.hasPrefix("0::") {
            var path = String(line.dropFirst(3))
            // A cgroup removed under us reads "/x (deleted)"; moving out of it is still possible.
            if path.hasSuffix(" (deleted)") { path = String(path.dropLast(10)) }
            return path.hasPrefix("/") ? path : nil
        }
        return nil
    }

    public static func hierarchy() -> Result<CgroupHierarchy, CgroupUnavailable> {
        guard let mount = findMount() else {
            return .failure(CgroupUnavailable("no cgroup2 file system at /sys/fs/cgroup or /sys/fs/cgroup/unified"))
        }
        guard let text = ProcFS.read("/proc/self/cgroup"), let own = parseOwnCgroup(text) else {
            return .failure(CgroupUnavailable("/proc/self/cgroup has no \"0::\" (cgroup v2) line"))
        }
        return .success(CgroupHierarchy(mount: mount, own: own))
    }

    /// A name for one swarmd instance from its state directory: stable across
    /// restarts (so the next swarmd finds the leftovers), distinct between
    /// state dirs, and a valid cgroup name whatever the path holds.
    public static func instanceName(stateDirectory: String) -> String {
        var hash: UInt64 = 0xcbf2_9ce4_8422_2325  // FNV-1a
        for byte in stateDirectory.utf8 {
            hash ^= UInt64(byte)
            hash = hash &* 0x0000_0100_0000_01b3
        }
        let hex = String(hash, radix: 16)
        return "i" + String(repeating: "0", count: 16 - hex.count) + hex
    }

    /// A name usable as one path component of a cgroup: not empty, no '/',
    /// not "." or "..", no control characters, not a "cgroup.*"/controller
    /// interface-file name, at most 200 bytes.
    public static func validateName(_ name: String) throws {
        func bad(_ why: String) -> SystemError { SystemError("cgroup name", errno: EINVAL, subject: "\"\(name)\": \(why)") }
        if name.isEmpty { throw bad("empty") }
        if name == "." || name == ".." { throw bad("a relative path") }
        if name.utf8.count > 200 { throw bad("longer than 200 bytes") }
        if name.utf8.contains(where: { $0 == UInt8(ascii: "/") || $0 < 0x20 || $0 == 0x7f }) { throw bad("contains '/' or a control character") }
        // Interface files live beside child cgroups: "memory.max" as a name would collide.
        if name.contains(".") && !name.hasPrefix("."), let prefix = name.split(separator: ".").first,
           ["cgroup", "cpu", "cpuset", "memory", "io", "pids", "rdma", "hugetlb", "misc", "irq"].contains(String(prefix)) {
            throw bad("looks like a cgroup interface file")
        }
    }

    /// Finds (or makes) this instance's root for worker cgroups. Idempotent:
    /// a re-exec'd swarmd calls it again and gets the same root (it looks
    /// through the "supervisor" leaf it moved itself into).
    public static func setUp(instance: String, hierarchy given: CgroupHierarchy? = nil) -> Result<CgroupRoot, CgroupUnavailable> {
        let h: CgroupHierarchy
        if let given { h = given } else {
            switch hierarchy() {
            case .success(let found): h = found
            case .failure(let why): return .failure(why)
            }
        }
        do { try validateName(instance) } catch { return .failure(CgroupUnavailable("instance name: \(error)")) }
        var own = h.own
        // We moved ourselves here earlier (before a re-exec): the delegated cgroup is the parent.
        if own.hasSuffix("/supervisor") {
            own = String(own.dropLast("/supervisor".count))
            if own.isEmpty { own = "/" }
        }
        let ownDir = h.directory(own)
        var notes: [String] = []
        let base: String
        if own != "/" {
            guard access(ownDir, W_OK) == 0, access(ownDir + "/cgroup.procs", W_OK) == 0 else {
                return .failure(CgroupUnavailable("swarmd's cgroup \(ownDir) is not writable by uid \(geteuid()) (not delegated: run swarmd as a systemd service with Delegate=yes, or as root)"))
            }
            base = ownDir + "/swarm"
            // Controllers for the workers must be enabled in <own> itself, which then may hold no process.
            let offered = controllers(of: ownDir).filter { wantedControllers.contains($0) }
            if !offered.isEmpty {
                let missing = offered.filter { !subtreeControl(of: ownDir).contains($0) }
                if !missing.isEmpty {
                    do {
                        try makeDirectory(ownDir + "/supervisor")
                        if h.own != own + "/supervisor" {
                            try writeFile(ownDir + "/supervisor/cgroup.procs", "0")
                        }
                        try writeFile(ownDir + "/cgroup.subtree_control", missing.map { "+" + $0 }.joined(separator: " "))
                    } catch let e as SystemError {
                        // Membership, cgroup.kill and cpu.stat need no controller: go on without them.
                        notes.append("controllers \(missing.joined(separator: ",")) not enabled in \(ownDir): \(e)")
                    } catch {}
                }
            }
        } else {
            base = h.mount + "/swarm-\(geteuid())"
        }
        let rootDir = base + "/" + instance
        do {
            try makeDirectory(base)
            enableControllers(in: base, notes: &notes)
            try makeDirectory(rootDir)
            enableControllers(in: rootDir, notes: &notes)
        } catch let e as SystemError {
            let why: String
            switch e.errno {
            case EROFS: why = "the cgroup file system is read-only"
            case EACCES, EPERM: why = "no permission (not delegated to uid \(geteuid()))"
            default: why = "cannot create the worker root"
            }
            return .failure(CgroupUnavailable("\(why): \(e)"))
        } catch {
            return .failure(CgroupUnavailable("\(error)"))
        }
        return .success(CgroupRoot(hierarchy: h, path: rootDir, controllers: subtreeControl(of: rootDir), notes: notes))
    }

    // MARK: - File helpers (cgroupfs: small files, never blocking)

    static func controllers(of dir: String) -> [String] {
        (ProcFS.read(dir + "/cgroup.controllers") ?? "").split(whereSeparator: { $0 == " " || $0 == "\n" }).map(String.init)
    }

    static func subtreeControl(of dir: String) -> [String] {
        (ProcFS.read(dir + "/cgroup.subtree_control") ?? "").split(whereSeparator: { $0 == " " || $0 == "\n" }).map(String.init)
    }

    /// Best effort: the workers below get what this cgroup is offered.
    static func enableControllers(in dir: String, notes: inout [String]) {
        let missing = controllers(of: dir).filter { wantedControllers.contains($0) && !subtreeControl(of: dir).contains($0) }
        guard !missing.isEmpty else { return }
        do {
            try writeFile(dir + "/cgroup.subtree_control", missing.map { "+" + $0 }.joined(separator: " "))
        } catch {
            notes.append("controllers \(missing.joined(separator: ",")) not enabled in \(dir): \(error)")
        }
    }

    static func makeDirectory(_ path: String) throws {
        if mkdir(path, 0o755) < 0 && errno != EEXIST { throw SystemError("mkdir", errno: errno, subject: path) }
    }

    static func writeFile(_ path: String, _ text: String) throws {
        let fd = Glibc.open(path, O_WRONLY | O_CLOEXEC)
        if fd < 0 { throw SystemError("open", errno: errno, subject: path) }
        defer { Glibc.close(fd) }
        let bytes = Array(text.utf8)
        while true {
            let n = bytes.withUnsafeBytes { Glibc.write(fd, $0.baseAddress, $0.count) }
            if n == bytes.count { return }
            if n < 0 && errno == EINTR { continue }
            throw SystemError("write \"\(text)\"", errno: n < 0 ? errno : EIO, subject: path)
        }
    }

    /// Subdirectories (child cgroups) of a cgroup directory. By the entries'
    /// d_type (kernfs fills it in): a cgroup holds ~30 interface files, and
    /// an lstat of each made `status` cost a millisecond per hundred workers.
    static func children(of dir: String) -> [String] {
        guard let d = opendir(dir) else { return [] }
        defer { closedir(d) }
        var names: [String] = []
        while let entry = readdir(d) {
            let type = entry.pointee.d_type
            guard type == UInt8(DT_DIR) || type == UInt8(DT_UNKNOWN) else { continue }
            let name = withUnsafePointer(to: entry.pointee.d_name) { $0.withMemoryRebound(to: CChar.self, capacity: 256) { String(cString: $0) } }
            if name == "." || name == ".." { continue }
            if type == UInt8(DT_UNKNOWN) {
                var st = stat()
                guard lstat(dir + "/" + name, &st) == 0, (st.st_mode & S_IFMT) == S_IFDIR else { continue }
            }
            names.append(name)
        }
        return names.sorted()
    }

    /// The processes in a cgroup and every cgroup below it.
    static func members(of dir: String) -> [pid_t] {
        var pids = parsePids(readSmall(dir + "/cgroup.procs") ?? [])
        for child in children(of: dir) { pids += members(of: dir + "/" + child) }
        return pids
    }

    static func parsePids(_ bytes: [UInt8]) -> [pid_t] {
        var pids: [pid_t] = []
        var value: pid_t = 0
        var digits = false
        for b in bytes {
            if b >= 0x30 && b <= 0x39 {
                value = value &* 10 &+ pid_t(b - 0x30)
                digits = true
            } else {
                if digits { pids.append(value) }
                value = 0
                digits = false
            }
        }
        if digits { pids.append(value) }
        return pids
    }

    /// A small kernel file (cgroupfs, /proc) read whole, through a 4 KiB
    /// buffer: status reads several per worker, and a general-purpose read
    /// (64 KiB zeroed per call) cost more than the syscalls themselves.
    static func readSmall(_ path: String) -> [UInt8]? {
        let fd = Glibc.open(path, O_RDONLY | O_CLOEXEC)
        if fd < 0 { return nil }
        defer { Glibc.close(fd) }
        return readAll(fd)
    }

    /// `readSmall` of `name` under an open directory: status reads three
    /// files per worker, and walking eight path components for each
    /// (/sys/fs/cgroup/…/APP/SLOT.ID/FILE) was most of their cost.
    static func readSmall(at dir: Int32, _ name: String) -> [UInt8]? {
        let fd = openat(dir, name, O_RDONLY | O_CLOEXEC)
        if fd < 0 { return nil }
        defer { Glibc.close(fd) }
        return readAll(fd)
    }

    /// O_PATH (Glibc does not export it to Swift): a handle for *at() calls, no read access checked.
    static let openPath: Int32 = 0o10000000

    /// /proc, opened once: `PID/statm` from it is two path components.
    static let procDirectory: Int32 = Glibc.open("/proc", Cgroups.openPath | O_DIRECTORY | O_CLOEXEC)

    static func readAll(_ fd: Int32, from offset: Int = -1) -> [UInt8]? {
        withUnsafeTemporaryAllocation(byteCount: 4096, alignment: 8) { raw -> [UInt8]? in
            var out: [UInt8] = []
            while out.count < 16 << 20 {
                let n = offset >= 0 ? pread(fd, raw.baseAddress, raw.count, off_t(offset + out.count)) : Glibc.read(fd, raw.baseAddress, raw.count)
                if n < 0 {
                    if errno == EINTR { continue }
                    return out.isEmpty ? nil : out
                }
                if n == 0 { break }
                out.append(contentsOf: UnsafeRawBufferPointer(rebasing: raw[0..<n]))
                // A kept fd is re-read at 0 on every status: a seq_file fills the
                // buffer unless the next record does not fit, and these files'
                // records are single short lines, so a read that leaves more than
                // a line's room unused is the end (and saves the EOF read).
                if offset >= 0 && n < raw.count - 256 { break }
            }
            return out
        }
    }

    /// Resident set size from /proc/PID/statm (its second field, in pages).
    static func residentBytes(pid: pid_t) -> Int64? {
        residentBytes(statm: procDirectory >= 0 ? readSmall(at: procDirectory, "\(pid)/statm") : readSmall("/proc/\(pid)/statm"))
    }

    static func residentBytes(statm: [UInt8]?) -> Int64? {
        guard let bytes = statm, let space = bytes.firstIndex(of: 0x20) else { return nil }
        var pages: Int64 = 0
        var j = space + 1
        var digits = false
        while j < bytes.count, bytes[j] >= 0x30, bytes[j] <= 0x39 {
            pages = pages &* 10 &+ Int64(bytes[j] - 0x30)
            j += 1
            digits = true
        }
        return digits ? pages * ProcFS.pageSize : nil
    }

    /// The first number after `key` ("usage_usec ") in a flat-keyed file (cpu.stat).
    static func value(of key: String, in bytes: [UInt8]) -> UInt64? {
        let k = Array(key.utf8)
        var i = 0
        while i + k.count <= bytes.count {
            if (i == 0 || bytes[i - 1] == 0x0a) && bytes[i..<(i + k.count)].elementsEqual(k) {
                var v: UInt64 = 0
                var j = i + k.count
                while j < bytes.count, bytes[j] >= 0x30, bytes[j] <= 0x39 {
                    v = v &* 10 &+ UInt64(bytes[j] - 0x30)
                    j += 1
                }
                return v
            }
            while i < bytes.count, bytes[i] != 0x0a { i += 1 }
            i += 1
        }
        return nil
    }

    /// "populated" from a cgroup.events text.
    static func parsePopulated(_ events: String) -> Bool? {
        for line in events.split(separator: "\n") where line.hasPrefix("populated ") {
            return line.hasSuffix(" 1")
        }
        return nil
    }

    /// Removes a cgroup and the cgroups below it, deepest first. EBUSY while
    /// any process is left in them; a cgroup already gone is not an error.
    static func removeTree(_ dir: String) throws {
        // A worker's cgroup is nearly always a leaf: one rmdir, no listing of its ~30 interface files.
        if rmdir(dir) == 0 || errno == ENOENT { return }
        for child in children(of: dir) { try removeTree(dir + "/" + child) }
        if rmdir(dir) < 0 && errno != ENOENT { throw SystemError("rmdir", errno: errno, subject: dir) }
    }

    /// Waits (poll on cgroup.events, POLLPRI) until the cgroup is empty. For
    /// start-up clean-up and tests; the event loop watches `eventsFD` instead.
    static func waitEmpty(_ dir: String, timeoutNanoseconds: Int64) -> Bool {
        let fd = Glibc.open(dir + "/cgroup.events", O_RDONLY | O_CLOEXEC)
        if fd < 0 { return errno == ENOENT }
        defer { Glibc.close(fd) }
        let deadline = Posix.monotonicNanoseconds() + timeoutNanoseconds
        while true {
            if let populated = readPopulated(fd), !populated { return true }
            let left = deadline - Posix.monotonicNanoseconds()
            if left <= 0 { return false }
            var p = pollfd(fd: fd, events: Int16(POLLPRI), revents: 0)
            // Also wake every 50 ms: a notification between read and poll is not lost for long.
            _ = poll(&p, 1, Int32(min(left / 1_000_000 + 1, 50)))
        }
    }

    static func readPopulated(_ fd: Int32) -> Bool? {
        var buf = [UInt8](repeating: 0, count: 256)
        let n = buf.withUnsafeMutableBytes { pread(fd, $0.baseAddress, $0.count, 0) }
        guard n > 0 else { return nil }
        return parsePopulated(String(decoding: buf[0..<n], as: UTF8.self))
    }

    /// Kills every process in the cgroup tree: cgroup.kill (Linux 5.14+), or
    /// else rounds of "freeze, SIGKILL each member, thaw" until it is empty
    /// (bounded: a fork bomb cannot keep this loop going forever).
    @discardableResult
    static func killTree(_ dir: String, useCgroupKill: Bool = true) throws -> KillMethod {
        if useCgroupKill && access(dir + "/cgroup.kill", W_OK) == 0 {
            try writeFile(dir + "/cgroup.kill", "1")
            return .cgroupKill
        }
        let canFreeze = access(dir + "/cgroup.freeze", W_OK) == 0
        var signalled = 0
        for _ in 0..<100 {
            // Frozen, no member can fork while we read the list; SIGKILL reaches frozen tasks.
            if canFreeze { try? writeFile(dir + "/cgroup.freeze", "1") }
            let pids = members(of: dir)
            for pid in pids where Glibc.kill(pid, SIGKILL) == 0 { signalled += 1 }
            if canFreeze { try? writeFile(dir + "/cgroup.freeze", "0") }
            if pids.isEmpty { return .signals(signalled) }
            var ts = timespec(tv_sec: 0, tv_nsec: 2_000_000)
            nanosleep(&ts, nil)
        }
        if members(of: dir).isEmpty { return .signals(signalled) }
        throw SystemError("kill (every member of the cgroup, 100 rounds)", errno: EAGAIN, subject: dir)
    }

    public enum KillMethod: Equatable {
        /// One write to cgroup.kill: the kernel killed the whole tree.
        case cgroupKill
        /// The fallback: this many SIGKILLs sent, member by member.
        case signals(Int)
    }
}

/// This swarmd instance's root: `<base>/<instance>`.
public final class CgroupRoot {
    public let hierarchy: CgroupHierarchy
    /// The directory, e.g. /sys/fs/cgroup/unified/swarm-0/i0123456789abcdef.
    public let path: String
    /// Controllers enabled for the workers (empty on these machines: v1 holds them).
    public let controllers: [String]
    /// What did not work but did not make cgroups unavailable (for the log).
    public let notes: [String]

    init(hierarchy: CgroupHierarchy, path: String, controllers: [String], notes: [String]) {
        self.hierarchy = hierarchy
        self.path = path
        self.controllers = controllers
        self.notes = notes
    }

    /// One O_PATH fd per app directory, shared by its workers' cgroups (an fd
    /// per worker would be an fd per worker more in swarmd's table).
    private var appDirectories: [String: CgroupDirectory] = [:]

    /// The app's directory, opened once; opened again after it was removed and made anew.
    func appDirectory(_ app: String, fresh: Bool = false) -> CgroupDirectory? {
        if !fresh, let d = appDirectories[app] { return d }
        let d = CgroupDirectory(path: path + "/" + app)
        appDirectories[app] = d
        return d
    }

    /// Makes `<root>/<app>/<slot>.<worker>`, relative to the app's directory
    /// fd (a full path walks every component again, and the app's directory
    /// is made only when it is missing: for its first worker, or after it
    /// was removed when it emptied). A leftover of the same name (ids restart
    /// with swarmd) is killed and replaced, so the new worker's counters
    /// start at zero. No file of the new cgroup is opened: a spawn creates
    /// its child in the directory (`openDirectory`), and only a fallback
    /// joins by cgroup.procs (`openProcsFD`).
    public func createWorker(app: String, slot: Int, worker: UInt64) throws -> WorkerCgroup {
        try Cgroups.validateName(app)
        guard slot >= 0 else { throw SystemError("cgroup name", errno: EINVAL, subject: "slot \(slot)") }
        let appDir = path + "/" + app
        let name = "\(slot).\(worker)"
        let dir = appDir + "/" + name
        var parent = appDirectories[app]
        var made: Int32 = ENOENT
        if let p = parent, p.fd >= 0 { made = mkdirat(p.fd, name, 0o755) == 0 ? 0 : errno }
        if made == ENOENT {
            if mkdir(appDir, 0o755) == 0 {
                var notes: [String] = []
                Cgroups.enableControllers(in: appDir, notes: &notes)
            } else if errno != EEXIST {
                throw SystemError("mkdir", errno: errno, subject: appDir)
            }
            parent = appDirectory(app, fresh: true)
            made = mkdir(dir, 0o755) == 0 ? 0 : errno
        }
        if made == EEXIST {
            try Cgroups.killTree(dir)
            _ = Cgroups.waitEmpty(dir, timeoutNanoseconds: 2_000_000_000)
            try Cgroups.removeTree(dir)
            try Cgroups.makeDirectory(dir)
        } else if made != 0 {
            throw SystemError("mkdir", errno: made, subject: dir)
        }
        // Made just now in a cgroup directory: the kernel made it a cgroup, nothing to check.
        let cgroup = try WorkerCgroup(path: dir, hasMemory: controllers.contains("memory"),
                                      in: parent, name: name, verify: false)
        cgroup.neverKilled = true
        return cgroup
    }

    /// The cgroup of a worker that already runs (after a re-exec).
    public func openWorker(app: String, slot: Int, worker: UInt64) throws -> WorkerCgroup {
        try Cgroups.validateName(app)
        return try WorkerCgroup(path: path + "/\(app)/\(slot).\(worker)", hasMemory: controllers.contains("memory"),
                                in: appDirectory(app), name: "\(slot).\(worker)")
    }

    /// The cgroup a running process is in, if it is one of this root's worker
    /// cgroups (after a re-exec: a reused cgroup keeps the name of its first
    /// worker, so the name cannot be derived from the worker that runs there now).
    public func openWorker(pid: pid_t) -> WorkerCgroup? {
        guard let text = ProcFS.read("/proc/\(pid)/cgroup"), let own = Cgroups.parseOwnCgroup(text) else { return nil }
        let dir = hierarchy.directory(own)
        let parts = dir.dropFirst(path.count + 1).split(separator: "/")
        guard dir.hasPrefix(path + "/"), parts.count == 2 else { return nil }
        return try? WorkerCgroup(path: dir, hasMemory: controllers.contains("memory"),
                                 in: appDirectory(String(parts[0])), name: String(parts[1]))
    }

    /// The worker cgroups that exist now, as "app/slot.worker".
    public func workerCgroups() -> [String] {
        Cgroups.children(of: path).flatMap { app in Cgroups.children(of: path + "/" + app).map { app + "/" + $0 } }
    }

    public struct Leftovers: Equatable {
        /// The cgroups found ("app/slot.worker").
        public var cgroups: [String] = []
        /// Processes that were still in them and were killed.
        public var killed: [pid_t] = []
        /// Cgroups that could not be emptied or removed in time, with why.
        public var failed: [String: String] = [:]
    }

    /// After a swarmd that died without cleaning up (kill -9, a crash): kill
    /// what is left in every worker cgroup and remove them. Call it before
    /// starting any worker on a fresh start, never after a re-exec hand-over
    /// (it would kill the workers handed over).
    public func cleanUpLeftovers(timeoutNanoseconds: Int64 = 5_000_000_000) -> Leftovers {
        var report = Leftovers()
        let deadline = Posix.monotonicNanoseconds() + timeoutNanoseconds
        let found = workerCgroups()
        report.cgroups = found
        for name in found {
            let dir = path + "/" + name
            report.killed += Cgroups.members(of: dir)
            do { try Cgroups.killTree(dir) } catch { report.failed[name] = "\(error)"; continue }
        }
        for name in found where report.failed[name] == nil {
            let dir = path + "/" + name
            let left = max(0, deadline - Posix.monotonicNanoseconds())
            guard Cgroups.waitEmpty(dir, timeoutNanoseconds: left) else {
                report.failed[name] = "still populated after the kill: \(Cgroups.members(of: dir).count) process(es)"
                continue
            }
            do { try Cgroups.removeTree(dir) } catch { report.failed[name] = "\(error)" }
        }
        for app in Cgroups.children(of: path) { _ = rmdir(path + "/" + app) }  // ENOTEMPTY: something failed above
        return report
    }

    /// Removes an app's directory once its last worker cgroup is gone (ENOTEMPTY/EBUSY otherwise: ignored).
    public func removeAppIfEmpty(_ app: String) {
        guard (try? Cgroups.validateName(app)) != nil else { return }
        _ = rmdir(path + "/" + app)
    }

    /// At a clean exit: the root itself, if nothing is left in it. Returns whether it is gone.
    @discardableResult
    public func removeIfEmpty() -> Bool {
        // Empty worker cgroups too: kept for reuse, or left by a swarmd before a re-exec.
        for app in Cgroups.children(of: path) {
            for worker in Cgroups.children(of: path + "/" + app) { _ = rmdir(path + "/" + app + "/" + worker) }
            _ = rmdir(path + "/" + app)
        }
        return rmdir(path) == 0 || errno == ENOENT
    }
}

/// CPU and memory of a worker's whole tree.
public struct CgroupUsage: Equatable {
    /// cpu.stat usage_usec: every process that ever ran in the cgroup, including exited ones.
    public var cpuMicroseconds: UInt64
    public var memoryBytes: Int64
    public enum MemorySource: Equatable {
        /// memory.current (the memory controller is enabled): page cache and kernel memory included.
        case memoryCurrent
        /// No memory controller: the sum of the members' resident sets (shared pages counted in each).
        case residentSum
    }
    public var memorySource: MemorySource
    /// Processes in the tree now (nil: not counted, memory.current needs no list).
    public var processes: Int?
}

/// An app's cgroup directory held open (O_PATH): its workers' files are
/// read relative to it. Closed when the last worker cgroup using it goes.
final class CgroupDirectory {
    let path: String
    let fd: Int32
    init(path: String) {
        self.path = path
        fd = Glibc.open(path, Cgroups.openPath | O_DIRECTORY | O_CLOEXEC)
    }
    deinit { if fd >= 0 { Glibc.close(fd) } }
}

/// One worker's cgroup. Not thread-safe: owned by the event loop.
public final class WorkerCgroup {
    public let path: String
    /// The app's directory and this cgroup's name in it ("SLOT.ID"), for reads relative to it.
    let parent: CgroupDirectory?
    let name: String
    /// Open O_WRONLY on cgroup.procs (`openProcsFD`), for `SpawnPlan.cgroupProcsFD`.
    /// Close it (`closeProcsFD`) once the worker is spawned: everything it
    /// starts is in the cgroup by inheritance. -1 until opened, and once closed.
    public private(set) var procsFD: Int32 = -1
    /// cgroup.events, read-only: it polls EPOLLPRI (and EPOLLERR) when
    /// "populated" changes. Put it in the event loop; `populated()` reads the value.
    /// Opened on first use: only a gone worker's leftovers are watched, and an
    /// fd per live worker made every spawn copy (and close) a larger fd table.
    public var eventsFD: Int32 {
        if eventsFDStorage < 0 { eventsFDStorage = Glibc.open(path + "/cgroup.events", O_RDONLY | O_CLOEXEC) }
        return eventsFDStorage
    }
    private var eventsFDStorage: Int32 = -1

    /// `eventsFD` for the event loop to watch, or why it cannot be opened
    /// (EMFILE near the fd limit, the cgroup gone).
    public func openedEventsFD() throws -> Int32 {
        let fd = eventsFD
        if fd < 0 { throw SystemError("open", errno: errno, subject: path + "/cgroup.events") }
        return fd
    }
    /// The memory controller is enabled: memory.current is there to read.
    let hasMemory: Bool
    /// cpu.stat usage_usec when the cgroup was last handed to a new worker:
    /// a reused cgroup's counter includes its earlier workers.
    public private(set) var cpuBaseline: UInt64 = 0
    /// The files `usage(keepingFilesOpen: true)` reads, held open between
    /// status requests: opening and closing three files per worker was three
    /// quarters of a 1,000-worker status (kernfs and /proc lookups, issue 18);
    /// a pread at offset 0 of a kept fd costs a third of that.
    private var usageFiles: UsageFiles?
    private struct UsageFiles {
        var procs: Int32 = -1
        var cpuStat: Int32 = -1
        var memoryCurrent: Int32 = -1
        /// /proc/PID/statm of the worker's main process (a pid's proc fd stays that process's).
        var statm: (pid: pid_t, fd: Int32)?

        mutating func close() {
            for fd in [procs, cpuStat, memoryCurrent, statm?.fd ?? -1] where fd >= 0 { Glibc.close(fd) }
            self = UsageFiles()
        }
    }
    /// Whether `usage` holds files open now (the caller budgets fds by it).
    public var holdsUsageFiles: Bool { usageFiles != nil }

    /// Opens nothing (`openProcsFD` does, when a child must join). `verify`:
    /// check that `path` is a cgroup (it has cgroup.events).
    init(path: String, hasMemory: Bool = false, in parent: CgroupDirectory? = nil, name: String = "", verify: Bool = true) throws {
        self.path = path
        self.hasMemory = hasMemory
        self.parent = (parent.map { $0.fd >= 0 } ?? false) && !name.isEmpty ? parent : nil
        self.name = name
        if verify, access(path + "/cgroup.events", F_OK) != 0 {
            throw SystemError("access", errno: errno, subject: path + "/cgroup.events")
        }
    }

    deinit { close() }

    /// Made by this swarmd and never killed since. Linux 6.18 (seen on
    /// 6.18.44) SIGKILLs every child created by clone3(CLONE_INTO_CGROUP) in a
    /// cgroup that once had `cgroup.kill` written, even long after and with
    /// the cgroup empty (a kill sequence count compared against the wrong
    /// cgroup's), while a child that joins by writing cgroup.procs is spared.
    public internal(set) var neverKilled = false

    /// The cgroup's directory, opened for a spawn to create its child in
    /// (the caller closes it); -1 when it cannot be opened, or the cgroup may
    /// have been killed (the child then joins by cgroup.procs).
    public func openDirectory() -> Int32 {
        guard neverKilled else { return -1 }
        // O_PATH: clone3 takes it (seen on 6.18), and it skips kernfs' open; a
        // kernel that refuses it makes the spawn join by cgroup.procs instead.
        if let parent {
            let fd = openat(parent.fd, name, Cgroups.openPath | O_DIRECTORY | O_CLOEXEC)
            if fd >= 0 { return fd }
        }
        return Glibc.open(path, Cgroups.openPath | O_DIRECTORY | O_CLOEXEC)
    }

    /// Closes what `usage(keepingFilesOpen: true)` kept open.
    public func closeUsageFiles() {
        usageFiles?.close()
        usageFiles = nil
    }

    /// Opens cgroup.procs for `SpawnPlan.cgroupProcsFD` (once: it stays open
    /// until `closeProcsFD`), for a child that joins the cgroup instead of
    /// being created in it: one the cgroup may have been killed in, or a spawn
    /// whose directory could not be opened.
    @discardableResult
    public func openProcsFD() throws -> Int32 {
        if procsFD < 0 {
            procsFD = Glibc.open(path + "/cgroup.procs", O_WRONLY | O_CLOEXEC)
            if procsFD < 0 { throw SystemError("open", errno: errno, subject: path + "/cgroup.procs") }
        }
        return procsFD
    }

    public func closeProcsFD() {
        if procsFD >= 0 { Glibc.close(procsFD) }
        procsFD = -1
    }

    /// Closes both fds (remove the eventsFD source from the loop first).
    public func close() {
        closeProcsFD()
        closeUsageFiles()
        if eventsFDStorage >= 0 { Glibc.close(eventsFDStorage) }
        eventsFDStorage = -1
    }

    /// Whether any process is left in the tree (cgroup.events "populated").
    /// Zombies do not count: a killed member that is not yet reaped leaves it empty.
    public func populated() throws -> Bool {
        if eventsFDStorage >= 0, let p = Cgroups.readPopulated(eventsFDStorage) { return p }
        guard let text = ProcFS.read(path + "/cgroup.events"), let p = Cgroups.parsePopulated(text) else {
            throw SystemError("read", errno: errno == 0 ? EIO : errno, subject: path + "/cgroup.events")
        }
        return p
    }

    /// Every process in the tree now.
    public func members() -> [pid_t] { Cgroups.members(of: path) }

    /// Kills every process in the tree (see `Cgroups.killTree`). Returns at
    /// once: wait for `eventsFD` (populated 0) before `remove()`.
    @discardableResult
    public func kill() throws -> Cgroups.KillMethod {
        neverKilled = false
        return try Cgroups.killTree(path)
    }

    /// Kills the tree if anything is left in it (nil: it was empty, nothing
    /// written). A worker's main process that was reaped with nothing left
    /// behind (every worker of a kill -9 storm) leaves an empty cgroup that
    /// nothing but swarmd's next spawn can enter, and a `cgroup.kill` written
    /// then would only cost it `neverKilled`: its next child would join by a
    /// cgroup.procs write (a migration under the kernel's threadgroup lock,
    /// while swarmd waits in vfork) instead of being created in it by clone3.
    @discardableResult
    public func killIfPopulated() throws -> Cgroups.KillMethod? {
        if (try? populated()) == false { return nil }
        return try kill()
    }

    /// The fallback of `kill()`, callable on its own (kernels before 5.14 have no cgroup.kill).
    @discardableResult
    public func killBySignals() throws -> Cgroups.KillMethod {
        neverKilled = false
        return try Cgroups.killTree(path, useCgroupKill: false)
    }

    /// Blocks until empty or the timeout: for clean-up paths and tests, not the event loop.
    public func waitUntilEmpty(timeoutNanoseconds: Int64) -> Bool { Cgroups.waitEmpty(path, timeoutNanoseconds: timeoutNanoseconds) }

    /// A cgroup whose last worker is gone (empty) is handed to a new worker
    /// instead of an rmdir and a mkdir (each a few hundred microseconds of
    /// kernel work per restart): cgroup.procs is opened again if the next
    /// child must join by it, and the CPU
    /// counter so far becomes the baseline `usage()` subtracts. A cgroup whose
    /// workers all exited without swarmd's `kill()` (the common case: a worker
    /// that dies is reaped with its cgroup already empty) keeps `neverKilled`,
    /// so its next child is created in it by clone3 instead of joining it with
    /// a cgroup.procs write while swarmd waits in vfork (issue 18: a kill -9
    /// storm of 4,096 reuses 4,096 cgroups).
    public func reuse() throws {
        if neverKilled {
            // Its next child is created in the directory, which must still be there
            // (removed from outside, it would fail every spawn it is handed to).
            var st = stat()
            let r = parent.map { fstatat($0.fd, name, &st, 0) } ?? stat(path, &st)
            if r < 0 { throw SystemError("stat", errno: errno, subject: path) }
        } else {
            // Its next child joins by cgroup.procs (see neverKilled).
            try openProcsFD()
        }
        if let exited = cpuSinceBaseline {
            cpuBaseline &+= exited
        } else {
            cpuBaseline = read("cpu.stat").flatMap { Cgroups.value(of: "usage_usec ", in: $0) } ?? 0
        }
        cpuSinceBaseline = nil
    }

    /// What the cgroup's CPU counter gained since `cpuBaseline`, when that is
    /// known without reading cpu.stat: the last worker's main process was its
    /// only process (or waited for every other), so its rusage at reap is it.
    /// Reading cpu.stat makes the kernel flush the cgroup's per-CPU counters
    /// (css_rstat_flush): 0.3 ms per reuse, a third of swarmd's CPU in a
    /// 4,096-worker kill storm (issue 18). nil: unknown, cpu.stat is read.
    public private(set) var cpuSinceBaseline: UInt64?
    /// `WorkerCgroups`' count of reaped orphans when this cgroup's worker was spawned.
    public var spawnedAfterOrphans: UInt64 = 0

    /// The worker's main process was reaped. `orphansSinceSpawn`: swarmd
    /// reaped some worker's orphans meanwhile, which may have run here.
    public func mainExited(cpuMicroseconds: UInt64?, orphansSinceSpawn: Bool) {
        cpuSinceBaseline = orphansSinceSpawn ? nil : cpuMicroseconds
    }

    /// Something other than one main process ran here (a failed spawn's
    /// child, processes left behind): `reuse` reads cpu.stat.
    public func forgetExitedCPU() { cpuSinceBaseline = nil }

    /// One of the cgroup's files: relative to the app's directory fd, or by
    /// the full path if that is gone (the app directory removed and made again).
    func read(_ file: String) -> [UInt8]? {
        if let parent, let bytes = Cgroups.readSmall(at: parent.fd, name + "/" + file) { return bytes }
        return Cgroups.readSmall(path + "/" + file)
    }

    /// The tree's processes: cgroup.procs, and the child cgroups' only if
    /// there are any (a cgroup directory's link count is 2 + its
    /// subdirectories: one fstatat instead of listing ~30 interface files).
    func treeMembers() -> [pid_t] {
        guard let parent else { return members() }
        var st = stat()
        guard fstatat(parent.fd, name, &st, AT_SYMLINK_NOFOLLOW) == 0, st.st_nlink <= 2,
              let procs = usageFiles != nil ? file("cgroup.procs", \.procs) : Cgroups.readSmall(at: parent.fd, name + "/cgroup.procs")
        else { return members() }
        return Cgroups.parsePids(procs)
    }

    /// CPU and memory of the whole tree. With `keepingFilesOpen` the files
    /// read stay open for the next call (closed by `closeUsageFiles`, `reuse`
    /// and `close`); `mainPid` is the worker's own process, whose statm is kept.
    public func usage(keepingFilesOpen: Bool = false, mainPid: pid_t? = nil) -> CgroupUsage {
        if keepingFilesOpen && usageFiles == nil { usageFiles = UsageFiles() }
        let total = file("cpu.stat", \.cpuStat).flatMap { Cgroups.value(of: "usage_usec ", in: $0) } ?? 0
        let cpu = total >= cpuBaseline ? total - cpuBaseline : total
        if hasMemory, let bytes = file("memory.current", \.memoryCurrent).flatMap({ Cgroups.value(of: "", in: $0) }) {
            return CgroupUsage(cpuMicroseconds: cpu, memoryBytes: Int64(bytes), memorySource: .memoryCurrent, processes: nil)
        }
        let pids = treeMembers()
        let rss = pids.reduce(Int64(0)) { $0 + ((($1 == mainPid) ? mainResidentBytes($1) : Cgroups.residentBytes(pid: $1)) ?? 0) }
        return CgroupUsage(cpuMicroseconds: cpu, memoryBytes: rss, memorySource: .residentSum, processes: pids.count)
    }

    /// One usage file: by its kept fd (opened now if usage files are kept), or opened for this read.
    private func file(_ name: String, _ kept: WritableKeyPath<UsageFiles, Int32>) -> [UInt8]? {
        guard usageFiles != nil else { return read(name) }
        if usageFiles![keyPath: kept] < 0 { usageFiles![keyPath: kept] = openFile(name) }
        let fd = usageFiles![keyPath: kept]
        return fd >= 0 ? Cgroups.readAll(fd, from: 0) : read(name)
    }

    private func openFile(_ name: String) -> Int32 {
        if let parent {
            let fd = openat(parent.fd, self.name + "/" + name, O_RDONLY | O_CLOEXEC)
            if fd >= 0 { return fd }
        }
        return Glibc.open(path + "/" + name, O_RDONLY | O_CLOEXEC)
    }

    private func mainResidentBytes(_ pid: pid_t) -> Int64? {
        guard usageFiles != nil else { return Cgroups.residentBytes(pid: pid) }
        if let kept = usageFiles!.statm, kept.pid != pid {
            Glibc.close(kept.fd)
            usageFiles!.statm = nil
        }
        if usageFiles!.statm == nil {
            let fd = Cgroups.procDirectory >= 0 ? openat(Cgroups.procDirectory, "\(pid)/statm", O_RDONLY | O_CLOEXEC) : -1
            guard fd >= 0 else { return Cgroups.residentBytes(pid: pid) }
            usageFiles!.statm = (pid, fd)
        }
        return Cgroups.residentBytes(statm: Cgroups.readAll(usageFiles!.statm!.fd, from: 0))
    }

    /// rmdir of the tree (children first), then of the app directory if it
    /// became empty. Fails with EBUSY while populated; closes the fds.
    public func remove() throws {
        close()
        try Cgroups.removeTree(path)
        if let slash = path.lastIndex(of: "/") { _ = rmdir(String(path[..<slash])) }
    }
}
