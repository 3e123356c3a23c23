import CSwarmSpawn
import Glibc

/// A socket's identity: its inode in sockfs. Every fd for the socket, in
/// any process and at any number, links to it (`/proc/PID/fd/N ->
/// socket:[INODE]`), and an epoll set's entry for it names it (`ino:`).
/// A worker that dups fd 3 to fd 7 (uvicorn `--fd`, Go's
/// `net.FileListener`), receives it at the number its own `bind` chose
/// (bind interception) or in a forked child still holds the same socket.
public struct SocketIdentity: Hashable, Sendable, CustomStringConvertible {
    public var inode: UInt64
    /// The socket's device (sockfs) as fstat encodes it.
    public var device: UInt64

    public init(inode: UInt64, device: UInt64) {
        self.inode = inode
        self.device = device
    }

    /// The identity of the socket this process holds at `fd`.
    public static func of(fd: Int32) throws -> SocketIdentity {
        var st = stat()
        // Not trapping on EBADF: the probe runs on the daemon's loop, and a socket closed under it must not stop swarmd.
        _ = try Posix.check("fstat", subject: "fd \(fd)") { fstat(fd, &st) }
        guard st.st_mode & S_IFMT == S_IFSOCK else { throw SystemError("fstat", errno: ENOTSOCK, subject: "fd \(fd)") }
        return SocketIdentity(inode: UInt64(st.st_ino), device: UInt64(st.st_dev))
    }

    public var description: String { "socket:[\(inode)]" }

    /// Whether a kernel-internal device number (fdinfo's `sdev:`, MAJOR<<20 | MINOR)
    /// is this socket's device (fstat's encoding: glibc's gnu_dev_major/minor).
    func isDevice(kernelEncoded d: UInt64) -> Bool {
        let major = ((device >> 8) & 0xfff) | ((device >> 32) & ~UInt64(0xfff))
        let minor = (device & 0xff) | ((device >> 12) & ~UInt64(0xff))
        return d >> 20 == major && d & 0xfffff == minor
    }
}

/// What a `listening` readiness probe looks for, and where.
public struct ListeningQuery: Sendable {
    /// The worker: the process swarmd spawned.
    public var pid: pid_t
    /// The worker's sockets, as swarmd holds them.
    public var sockets: Set<SocketIdentity>
    /// The worker's own cgroup directory, whose cgroup.procs lists every
    /// process the worker started; nil: its children in /proc instead.
    public var cgroup: String?
    /// The fd numbers the worker was given its sockets at (3, 4, …), for a
    /// kernel that cannot compare sockets (the shell's fake).
    public var execFDs: Set<Int32>

    public init(pid: pid_t, sockets: Set<SocketIdentity>, cgroup: String?, execFDs: Set<Int32>) {
        self.pid = pid
        self.sockets = sockets
        self.cgroup = cgroup
        self.execFDs = execFDs
    }
}

/// Why a probe calls a worker listening: which process waits on which socket, and how.
public struct ListeningEvidence: Equatable, Sendable, CustomStringConvertible {
    public enum Wait: Equatable, Sendable {
        /// Epoll set `epoll` of the process watches the socket (registered as fd `fd`).
        case epoll(epoll: Int32, fd: Int32)
        /// Thread `thread` is blocked in accept/accept4 on fd `fd`.
        case accept(thread: pid_t, fd: Int32)
        /// Thread `thread` is blocked in poll/ppoll with fd `fd` in its set.
        case poll(thread: pid_t, fd: Int32)
        /// Thread `thread` is blocked in select/pselect6 with fd `fd` among its readfds.
        case select(thread: pid_t, fd: Int32)
        /// A kernel that does not say how (the shell's fake).
        case reported
    }

    /// The process that waits: the worker or one of its descendants.
    public var pid: pid_t
    public var wait: Wait
    /// The socket's inode (0 when not known).
    public var inode: UInt64

    public init(pid: pid_t, wait: Wait, inode: UInt64) {
        self.pid = pid
        self.wait = wait
        self.inode = inode
    }

    public var description: String {
        let socket = inode == 0 ? "" : " (socket:[\(inode)])"
        switch wait {
        case let .epoll(epoll, fd): return "pid \(pid): epoll fd \(epoll) watches fd \(fd)\(socket)"
        case let .accept(thread, fd): return "pid \(pid): thread \(thread) waits in accept on fd \(fd)\(socket)"
        case let .poll(thread, fd): return "pid \(pid): thread \(thread) waits in poll on fd \(fd)\(socket)"
        case let .select(thread, fd): return "pid \(pid): thread \(thread) waits in select on fd \(fd)\(socket)"
        case .reported: return "pid \(pid) waits on its listening fds"
        }
    }
}

/// What one probe found and what it cost.
public struct ListeningProbeOutcome: Sendable {
    public var evidence: ListeningEvidence?
    /// /proc and cgroup operations made: each open-and-read of a file, each
    /// further read of it, each readlink, each directory read.
    public var reads: Int
    /// Processes looked at (the worker and descendants).
    public var processes: Int
    /// The read budget ran out before the probe was done.
    public var budgetSpent: Bool
    /// The first failure that is not a process or thread being gone (EACCES:
    /// swarmd may not inspect the worker, e.g. no CAP_SYS_PTRACE for another user's).
    public var problem: SystemError?

    public init(evidence: ListeningEvidence?, reads: Int = 0, processes: Int = 0, budgetSpent: Bool = false, problem: SystemError? = nil) {
        self.evidence = evidence
        self.reads = reads
        self.processes = processes
        self.budgetSpent = budgetSpent
        self.problem = problem
    }
}

/// The `listening` readiness probe: whether a worker, or a process it
/// started (pre-fork servers: gunicorn, hypercorn, nginx), waits for
/// connections on one of its sockets, compared by socket identity.
///
/// Its cost is bounded whatever the worker looks like: a probe makes at
/// most `Limits.reads` reads; of a process it reads `Limits.threadsPerProcess`
/// threads' system calls: the main thread and the oldest few every time
/// (servers tend to start their acceptor early), then a window that moves
/// on at each probe, so a worker of 2,000 threads is covered in a few dozen
/// probes instead of 2,000 reads each time; it skips the threads of a
/// process that holds none of the sockets (it cannot accept on them); and
/// it looks at `Limits.processes` processes, a window over the descendants
/// moving likewise. A worker that waits in epoll (most servers) is found by
/// the first probe after it starts waiting.
/// Not thread-safe: owned by the event loop.
public final class ListeningProber {
    public struct Limits: Sendable {
        /// Reads per probe, all processes together.
        public var reads = 512
        /// Processes per probe: the worker and a window of its descendants.
        public var processes = 16
        /// fds looked at per process (the listening socket comes early).
        public var fdsPerProcess = 256
        /// Epoll sets read per process.
        public var epollSetsPerProcess = 8
        /// Threads per process per probe: the main thread, the oldest others, and a moving window.
        public var threadsPerProcess = 64
        /// Of those, the oldest threads (the main one included), looked at in every probe.
        public var firstThreads = 8
        /// Descendants found through /proc children (no cgroup), at most.
        public var descendantsListed = 64

        public init() {}
    }

    public let limits: Limits

    private struct Cursor {
        /// Directory offset in /proc/PID/task where the next thread window starts.
        var threads: Int64 = 0
        /// Where the next window over the descendants starts.
        var descendants = 0
        var usedAt: Int64 = 0
    }

    private var cursors: [pid_t: Cursor] = [:]
    private var lastPrune: Int64 = 0
    private var left = 0
    private var used = 0
    private var spent = false
    private var problem: SystemError?
    /// The errno of the last counted call that failed.
    private var lastErrno: Int32 = 0
    private var buffer = [UInt8](repeating: 0, count: 64 << 10)
    private var dirBuffer = [UInt8](repeating: 0, count: 8 << 10)

    public init(limits: Limits = Limits()) {
        self.limits = limits
    }

    /// Probes once; the windows move on for the next probe of the same worker.
    public func probe(_ query: ListeningQuery) -> ListeningProbeOutcome {
        left = limits.reads
        used = 0
        spent = false
        problem = nil
        var wanted: [UInt64: SocketIdentity] = [:]
        for s in query.sockets { wanted[s.inode] = s }
        guard !wanted.isEmpty else { return ListeningProbeOutcome(evidence: nil) }
        let now = Posix.monotonicNanoseconds()
        prune(now: now)
        var examined = 1
        func outcome(_ e: ListeningEvidence?) -> ListeningProbeOutcome {
            ListeningProbeOutcome(evidence: e, reads: used, processes: examined, budgetSpent: spent, problem: problem)
        }
        var workerGone = false
        if let e = examine(query.pid, wanted: wanted, now: now, gone: &workerGone) { return outcome(e) }
        // A worker that is gone has no descendants to look at: it is about to be reaped.
        guard !workerGone else { return outcome(nil) }
        let others = descendants(of: query.pid, cgroup: query.cgroup)
        guard !others.isEmpty, limits.processes > 1 else { return outcome(nil) }
        var c = cursors[query.pid] ?? Cursor()
        let start = c.descendants % others.count
        let take = min(others.count, limits.processes - 1)
        c.descendants = start + take
        c.usedAt = now
        cursors[query.pid] = c
        for i in 0..<take {
            guard left > 0 else { spent = true; break }
            examined += 1
            var gone = false
            if let e = examine(others[(start + i) % others.count], wanted: wanted, now: now, gone: &gone) { return outcome(e) }
        }
        return outcome(nil)
    }

    /// The identities of the sockets `pid` holds at `fds` (for a caller that
    /// knows only the fd numbers a worker was given).
    public static func identities(ofFDs fds: Set<Int32>, in pid: pid_t) -> Set<SocketIdentity> {
        var out: Set<SocketIdentity> = []
        for fd in fds {
            var st = stat()
            guard stat("/proc/\(pid)/fd/\(fd)", &st) == 0, st.st_mode & S_IFMT == S_IFSOCK else { continue }
            out.insert(SocketIdentity(inode: UInt64(st.st_ino), device: UInt64(st.st_dev)))
        }
        return out
    }

    // MARK: - One process

    private func examine(_ pid: pid_t, wanted: [UInt64: SocketIdentity], now: Int64, gone: inout Bool) -> ListeningEvidence? {
        guard let dirResult = call("open", "/proc/\(pid)", { openat(AT_FDCWD, "/proc/\(pid)", O_RDONLY | O_DIRECTORY | O_CLOEXEC) }) else {
            if lastErrno == ENOENT || lastErrno == ESRCH { gone = true }
            return nil
        }
        // Every later look-up is relative to this directory: a pid reused mid-probe is never mixed up with the process first opened.
        let dir = Int32(dirResult)
        defer { Posix.close(dir) }
        guard let fds = numericEntries(at: dir, "fd", pid: pid, from: 0, max: limits.fdsPerProcess, excluding: nil)?.names else { return nil }
        var held: [Int32: UInt64] = [:]
        var epolls: [Int32] = []
        var link = [CChar](repeating: 0, count: 64)
        for fd in fds {
            guard let n = call("readlink", "/proc/\(pid)/fd/\(fd)", { readlinkat(dir, "fd/\(fd)", &link, link.count) }) else {
                if spent { return nil }
                continue
            }
            if let inode = Self.socketInode(link, count: n), wanted[inode] != nil {
                held[fd] = inode
            } else if Self.isEventpoll(link, count: n) {
                epolls.append(fd)
            }
        }
        for ep in epolls.prefix(limits.epollSetsPerProcess) {
            if let e = epollWatches(at: dir, pid: pid, epoll: ep, wanted: wanted, held: held) { return e }
            if spent { return nil }
        }
        // A thread can wait in accept/poll/select on the socket only through an fd of its own.
        guard !held.isEmpty, limits.threadsPerProcess > 0 else { return nil }
        if let e = threadWaits(at: dir, pid: pid, tid: pid, path: "syscall", held: held) { return e }
        guard limits.threadsPerProcess > 1, !spent else { return nil }
        var c = cursors[pid] ?? Cursor()
        c.usedAt = now
        defer { cursors[pid] = c }
        // The oldest threads every time (servers often start their acceptor early), then a window that moves on.
        var tids: [Int32] = []
        var rest: Int64? = 0  // directory offset where the moving part starts; nil: no thread beyond the oldest
        let oldest = min(limits.firstThreads, limits.threadsPerProcess) - 1
        if oldest > 0 {
            guard let head = numericEntries(at: dir, "task", pid: pid, from: 0, max: oldest, excluding: pid) else { return nil }
            tids = head.names
            rest = head.next == 0 ? nil : head.next
        }
        let window = limits.threadsPerProcess - 1 - tids.count
        if let rest, window > 0, !spent {
            let from = max(c.threads, rest)
            if let w = numericEntries(at: dir, "task", pid: pid, from: from, max: window, excluding: pid) {
                tids += w.names
                c.threads = w.next
                if w.names.count < window, w.next == 0, from != rest,
                   let more = numericEntries(at: dir, "task", pid: pid, from: rest, max: window - w.names.count, excluding: pid) {
                    // The window reached the last thread: it goes on from the first of the moving part in the same probe.
                    let seen = Set(tids)
                    tids += more.names.filter { !seen.contains($0) }
                    c.threads = more.next
                }
            }
        }
        for tid in tids {
            if let e = threadWaits(at: dir, pid: pid, tid: tid, path: "task/\(tid)/syscall", held: held) { return e }
            if spent { return nil }
        }
        return nil
    }

    /// Epoll set `epoll`'s entries (fdinfo `tfd:` lines): one for a wanted socket.
    private func epollWatches(at dir: Int32, pid: pid_t, epoll: Int32, wanted: [UInt64: SocketIdentity],
                              held: [Int32: UInt64]) -> ListeningEvidence? {
        guard let n = readFile(at: dir, "fdinfo/\(epoll)", subject: "/proc/\(pid)/fdinfo/\(epoll)") else { return nil }
        let text = String(decoding: buffer[0..<n], as: UTF8.self)
        for line in text.split(separator: "\n") where line.hasPrefix("tfd:") {
            // tfd: FD events: MASK data: DATA  pos:POS ino:HEX sdev:HEX
            let fields = line.split(whereSeparator: { $0 == " " || $0 == "\t" })
            guard fields.count > 1, let tfd = Int32(fields[1]) else { continue }
            var ino: UInt64?
            var sdev: UInt64?
            for f in fields.dropFirst(2) {
                if f.hasPrefix("ino:") { ino = UInt64(f.dropFirst(4), radix: 16) }
                if f.hasPrefix("sdev:") { sdev = UInt64(f.dropFirst(5), radix: 16) }
            }
            if let ino {
                guard let identity = wanted[ino] else { continue }
                if let sdev, !identity.isDevice(kernelEncoded: sdev) { continue }
                return ListeningEvidence(pid: pid, wait: .epoll(epoll: epoll, fd: tfd), inode: ino)
            }
            // A kernel without ino: in fdinfo: the entry's fd number, if it is one of the sockets now.
            if let inode = held[tfd] { return ListeningEvidence(pid: pid, wait: .epoll(epoll: epoll, fd: tfd), inode: inode) }
        }
        return nil
    }

    /// What thread `tid` is blocked in (/proc/PID/task/TID/syscall: number, then arguments in hex).
    private func threadWaits(at dir: Int32, pid: pid_t, tid: pid_t, path: String, held: [Int32: UInt64]) -> ListeningEvidence? {
        guard let n = readFile(at: dir, path, subject: "/proc/\(pid)/\(path)") else { return nil }
        let parts = String(decoding: buffer[0..<n], as: UTF8.self).split(whereSeparator: { $0 == " " || $0 == "\n" })
        guard parts.count >= 3, let nr = Int(parts[0]) else { return nil }  // "running", or not in a system call
        func arg(_ i: Int) -> UInt64? {
            guard i + 1 < parts.count else { return nil }
            let s = parts[i + 1]
            return UInt64(s.hasPrefix("0x") ? s.dropFirst(2) : s[...], radix: 16)
        }
        func found(_ fd: Int32, _ wait: ListeningEvidence.Wait) -> ListeningEvidence? {
            held[fd].map { ListeningEvidence(pid: pid, wait: wait, inode: $0) }
        }
        switch nr {
        case 43, 288:  // accept, accept4
            guard let a = arg(0) else { return nil }
            let fd = Int32(truncatingIfNeeded: a)
            return found(fd, .accept(thread: tid, fd: fd))
        case 7, 271:  // poll, ppoll: struct pollfd { int fd; short events; short revents; }
            guard let addr = arg(0), let count = arg(1), count > 0, count <= 4096,
                  let bytes = readMemory(at: dir, pid: pid, address: addr, count: Int(count) * 8) else { return nil }
            for i in 0..<Int(count) {
                let fd = bytes.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: i * 8, as: Int32.self) }
                if let e = found(fd, .poll(thread: tid, fd: fd)) { return e }
            }
            return nil
        case 23, 270:  // select, pselect6: the readfds bitmap
            guard let nfds = arg(0), nfds > 0, nfds <= 1024, let addr = arg(1), addr != 0,
                  let bytes = readMemory(at: dir, pid: pid, address: addr, count: (Int(nfds) + 7) / 8) else { return nil }
            for fd in held.keys.sorted() where fd >= 0 && Int(fd) < Int(nfds) && (bytes[Int(fd) / 8] >> UInt8(fd % 8)) & 1 != 0 {
                return found(fd, .select(thread: tid, fd: fd))
            }
            return nil
        default:
            return nil
        }
    }

    // MARK: - Descendants

    /// The worker's descendants: its cgroup's members, or (no cgroup) its
    /// children in /proc and theirs. Ascending pids, the worker excluded.
    private func descendants(of pid: pid_t, cgroup: String?) -> [pid_t] {
        if let cgroup, let n = readFile(at: AT_FDCWD, cgroup + "/cgroup.procs", subject: cgroup + "/cgroup.procs") {
            let members = Self.pids(in: buffer[0..<n])
            // Only a cgroup the worker is in is the worker's: anything else would be someone else's processes.
            if members.contains(pid) { return members.filter { $0 != pid }.sorted() }
        }
        // Children forked by the main thread (most servers fork there); /proc lists
        // each thread's own children, and reading every thread's is what this probe avoids.
        var found: [pid_t] = []
        var frontier = [pid]
        var seen: Set<pid_t> = [pid]
        for _ in 0..<3 {
            var next: [pid_t] = []
            for p in frontier {
                guard found.count < limits.descendantsListed, left > limits.reads / 4 else { break }
                let path = "/proc/\(p)/task/\(p)/children"
                guard let n = readFile(at: AT_FDCWD, path, subject: path) else { continue }
                for child in Self.pids(in: buffer[0..<n]) where seen.insert(child).inserted && found.count < limits.descendantsListed {
                    found.append(child)
                    next.append(child)
                }
            }
            frontier = next
            if frontier.isEmpty { break }
        }
        return found.sorted()
    }

    // MARK: - Counted /proc operations

    /// One counted operation: its result, or nil when the budget is spent or
    /// the call failed (a gone process or thread is expected; anything else
    /// is kept as the probe's problem).
    private func call<T: FixedWidthInteger>(_ name: String, _ subject: @autoclosure () -> String, _ body: () -> T) -> Int? {
        guard left > 0 else {
            spent = true
            return nil
        }
        left -= 1
        used += 1
        do {
            return Int(try Posix.syscall(name, subject: subject(), body))
        } catch let e as SystemError {
            lastErrno = e.errno
            if e.errno != ENOENT && e.errno != ESRCH && problem == nil { problem = e }
            return nil
        } catch {
            return nil
        }
    }

    /// Reads a file (relative to `dir`) into `buffer`, at most its size; the byte count.
    private func readFile(at dir: Int32, _ path: String, subject: @autoclosure () -> String) -> Int? {
        guard let opened = call("open", subject(), { openat(dir, path, O_RDONLY | O_CLOEXEC) }) else { return nil }
        let fd = Int32(opened)
        defer { Posix.close(fd) }
        var total = 0
        var first = true
        while total < buffer.count {
            // The open and the first read are one operation; every further read is one more.
            if !first {
                guard left > 0 else { spent = true; break }
                left -= 1
                used += 1
            }
            first = false
            let asked = buffer.count - total
            let n = buffer.withUnsafeMutableBytes { b in
                Posix.retryingEINTR("read", subject: nil, trapProgrammingErrors: false) {
                    Glibc.read(fd, b.baseAddress! + total, b.count - total)
                }
            }
            guard n.result > 0 else {
                if n.result < 0 {
                    if n.errno != ESRCH && n.errno != ENOENT && problem == nil { problem = SystemError("read", errno: n.errno, subject: subject()) }
                    if total == 0 { return nil }
                }
                break
            }
            total += n.result
            // A short read is the end: /proc and cgroup files are seq_files, which fill a read while they have more.
            if n.result < asked { break }
        }
        return total
    }

    /// Up to `max` numeric entries of directory `path` (relative to `dir`)
    /// but `excluding`, from directory offset `offset`, and the offset to go
    /// on from (0: the end was reached).
    private func numericEntries(at dir: Int32, _ path: String, pid: pid_t, from offset: Int64, max: Int,
                                excluding: Int32?) -> (names: [Int32], next: Int64)? {
        guard let opened = call("open", "/proc/\(pid)/\(path)", { openat(dir, path, O_RDONLY | O_DIRECTORY | O_CLOEXEC) }) else { return nil }
        let fd = Int32(opened)
        defer { Posix.close(fd) }
        if offset > 0 && lseek(fd, off_t(offset), SEEK_SET) < 0 { return nil }
        var names: [Int32] = []
        var next = offset
        // Room for about `max` entries (a dirent64 of a short number is 24 to 32 bytes): the kernel makes no more.
        let length = min(dirBuffer.count, max * 32 + 64)
        while names.count < max {
            guard let n = call("getdents64", "/proc/\(pid)/\(path)", {
                dirBuffer.withUnsafeMutableBytes { swarm_getdents64(fd, $0.baseAddress, length) }
            }) else { break }
            if n == 0 {
                next = 0
                break
            }
            var at = 0
            dirBuffer.withUnsafeBytes { b in
                // struct linux_dirent64 { u64 d_ino; s64 d_off; u16 d_reclen; u8 d_type; char d_name[]; }
                while at + 19 < n && names.count < max {
                    let off = b.loadUnaligned(fromByteOffset: at + 8, as: Int64.self)
                    let reclen = Int(b.loadUnaligned(fromByteOffset: at + 16, as: UInt16.self))
                    guard reclen > 0 else { break }
                    var value: Int32 = 0
                    var digits = 0
                    var i = at + 19
                    while i < at + reclen, b[i] != 0 {
                        let c = b[i]
                        guard c >= 0x30 && c <= 0x39, value < Int32.max / 10 else { digits = -1; break }
                        value = value * 10 + Int32(c - 0x30)
                        digits += 1
                        i += 1
                    }
                    if digits > 0 && value != excluding { names.append(value) }
                    next = off
                    at += reclen
                }
            }
        }
        return (names, next)
    }

    /// `count` bytes of the process's memory at `address` (/proc/PID/mem).
    private func readMemory(at dir: Int32, pid: pid_t, address: UInt64, count: Int) -> [UInt8]? {
        guard let opened = call("open", "/proc/\(pid)/mem", { openat(dir, "mem", O_RDONLY | O_CLOEXEC) }) else { return nil }
        let fd = Int32(opened)
        defer { Posix.close(fd) }
        var out = [UInt8](repeating: 0, count: count)
        let r = out.withUnsafeMutableBytes { b in
            Posix.retryingEINTR("pread", subject: nil, trapProgrammingErrors: false) {
                pread(fd, b.baseAddress, count, off_t(Int64(bitPattern: address)))
            }
        }
        return r.result == count ? out : nil
    }

    // MARK: - Parsing

    private static let socketPrefix = Array("socket:[".utf8)
    private static let eventpoll = Array("anon_inode:[eventpoll]".utf8)

    /// The inode of a `socket:[INODE]` link.
    static func socketInode(_ link: [CChar], count: Int) -> UInt64? {
        guard count > socketPrefix.count + 1, UInt8(bitPattern: link[count - 1]) == UInt8(ascii: "]") else { return nil }
        for (i, c) in socketPrefix.enumerated() where UInt8(bitPattern: link[i]) != c { return nil }
        var value: UInt64 = 0
        for i in socketPrefix.count..<(count - 1) {
            let c = UInt8(bitPattern: link[i])
            guard c >= 0x30 && c <= 0x39 else { return nil }
            value = value &* 10 &+ UInt64(c - 0x30)
        }
        return value
    }

    static func isEventpoll(_ link: [CChar], count: Int) -> Bool {
        guard count == eventpoll.count else { return false }
        for (i, c) in eventpoll.enumerated() where UInt8(bitPattern: link[i]) != c { return false }
        return true
    }

    static func pids(in bytes: ArraySlice<UInt8>) -> [pid_t] {
        String(decoding: bytes, as: UTF8.self).split(whereSeparator: { $0 == "\n" || $0 == " " }).compactMap { pid_t($0) }
    }

    /// Cursors of processes not probed for a while (gone, or ready) are dropped.
    private func prune(now: Int64) {
        guard cursors.count > 64, now - lastPrune > 1_000_000_000 else { return }
        lastPrune = now
        cursors = cursors.filter { now - $0.value.usedAt < 10_000_000_000 }
    }
}
