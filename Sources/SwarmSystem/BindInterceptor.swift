import CSwarmSpawn
import Glibc

// Bind interception: a worker's own bind() to its app's port gets swarmd's
// listening socket instead of a fresh one, so servers that know nothing of
// socket activation (Node's listen(PORT), Python's http.server, a static Go
// binary) share swarm's per-slot socket unmodified.
//
// The spawn child installs a seccomp filter that stops at every bind() (of
// the native ABI) and hands the filter's notification fd to swarmd. The
// filter is inherited by every thread and every descendant, and it stays
// after exec. For each bind, swarmd reads the sockaddr from the caller's
// memory, and if it names a rule's port on an address the rule covers, puts
// the rule's socket at the caller's fd number (SECCOMP_IOCTL_NOTIF_ADDFD with
// SETFD, which closes the caller's own socket) and answers "0". The caller's
// listen() on that socket is stopped too and answered "0" without running
// it: run, it would set swarm's backlog to the program's own (Python's
// http.server asks for 5). Any other bind or listen continues in the kernel
// untouched.
//
// Trust: the caller can change its sockaddr after swarmd read it (another
// thread); that only changes whether it gets swarm's socket, which it could
// have used as fd 3 anyway, so nothing is decided on that memory that the
// kernel does not check again for a continued call.
//
// Consequences for workers:
//  - A non-root swarmd (no CAP_SYS_ADMIN) can install the filter only under
//    PR_SET_NO_NEW_PRIVS: setuid/setgid bits and file capabilities of the
//    programs such a worker runs are ignored (sudo, ping with caps fail).
//    A root swarmd installs it before dropping to the app's user: no change.
//  - O_NONBLOCK is a property of the open file description, shared by every
//    holder of swarm's socket: by default the interceptor copies the caller's
//    choice (of its own socket) onto swarm's before handing it over, which is
//    what that program expects; a second worker of the same slot (during a
//    reload) sees that flag too. A daemon that tracks who holds the socket
//    decides instead (`nonBlockingPolicy`).
//  - Binds of other ABIs (x32, i386 programs on x86_64) are not intercepted.

/// An address and port as a bind() call passed them.
public struct BindAddress: Equatable, CustomStringConvertible, Sendable {
    /// AF_INET or AF_INET6: the sockaddr's family.
    public var family: Int32
    /// 4 bytes (AF_INET) or 16 (AF_INET6), network order.
    public var bytes: [UInt8]
    public var port: UInt16

    public init(family: Int32, bytes: [UInt8], port: UInt16) {
        self.family = family
        self.bytes = bytes
        self.port = port
    }

    /// The IPv4 address, for AF_INET and for v4-mapped IPv6 (::ffff:a.b.c.d).
    public var ipv4: [UInt8]? {
        if bytes.count == 4 { return bytes }
        if bytes.count == 16, bytes[0..<10].allSatisfy({ $0 == 0 }), bytes[10] == 0xff, bytes[11] == 0xff { return Array(bytes[12..<16]) }
        return nil
    }

    public var isWildcard: Bool {
        if let v4 = ipv4 { return v4 == [0, 0, 0, 0] }
        return bytes.allSatisfy { $0 == 0 }
    }

    public var isLoopback: Bool {
        if let v4 = ipv4 { return v4 == [127, 0, 0, 1] }
        return bytes == [UInt8](repeating: 0, count: 15) + [1]
    }

    public var description: String {
        var buf = [CChar](repeating: 0, count: 64)
        let af = bytes.count == 4 ? AF_INET : AF_INET6
        _ = bytes.withUnsafeBytes { inet_ntop(af, $0.baseAddress, &buf, socklen_t(buf.count)) }
        let host = String(cString: buf)
        return af == AF_INET ? "\(host):\(port)" : "[\(host)]:\(port)"
    }

    public enum DecodeFailure: Error, Equatable {
        /// Shorter than the family field or than that family's sockaddr.
        case tooShort(family: Int32, length: Int)
        /// Not AF_INET or AF_INET6 (AF_UNIX, AF_NETLINK, …): not ours.
        case otherFamily(Int32)
    }

    /// Decodes the bytes of a sockaddr as the kernel would accept them for a TCP bind.
    public static func decode(_ raw: [UInt8]) -> Result<BindAddress, DecodeFailure> {
        guard raw.count >= 2 else { return .failure(.tooShort(family: -1, length: raw.count)) }
        let family = Int32(raw.withUnsafeBytes { $0.loadUnaligned(as: sa_family_t.self) })
        let port = UInt16(raw[2]) << 8 | UInt16(raw.count > 3 ? raw[3] : 0)
        switch family {
        case AF_INET:
            // The kernel's own minimum for each family (inet_bind, inet6_bind).
            guard raw.count >= MemoryLayout<sockaddr_in>.size else { return .failure(.tooShort(family: family, length: raw.count)) }
            return .success(BindAddress(family: family, bytes: Array(raw[4..<8]), port: port))
        case AF_INET6:
            guard raw.count >= 24 else { return .failure(.tooShort(family: family, length: raw.count)) }
            return .success(BindAddress(family: family, bytes: Array(raw[8..<24]), port: port))
        default:
            return .failure(.otherFamily(family))
        }
    }
}

/// "A bind to this port on one of these addresses gets this socket."
public struct BindRule: Sendable {
    public var port: UInt16
    /// The configured address (4 or 16 bytes).
    public var address: [UInt8]
    /// swarmd's listening socket for it (slot k's): what the caller gets.
    public var listenFD: Int32

    public init(address: String, port: UInt16, listenFD: Int32) throws {
        var v4 = in_addr()
        var v6 = in6_addr()
        if inet_pton(AF_INET, address, &v4) == 1 {
            self.address = withUnsafeBytes(of: &v4) { Array($0) }
        } else if inet_pton(AF_INET6, address, &v6) == 1 {
            self.address = withUnsafeBytes(of: &v6) { Array($0) }
        } else {
            throw SystemError("inet_pton", errno: EINVAL, subject: address)
        }
        self.port = port
        self.listenFD = listenFD
    }

    /// The port, on the configured address, a wildcard (0.0.0.0, ::) or
    /// loopback (127.0.0.1, ::1), in either family or v4-mapped. Port 0
    /// ("any port": Go's start-up probes of ::1 and ::ffff:127.0.0.1) never matches.
    public func matches(_ a: BindAddress) -> Bool {
        guard a.port != 0, a.port == port else { return false }
        if a.isWildcard || a.isLoopback { return true }
        let configured = BindAddress(family: address.count == 4 ? AF_INET : AF_INET6, bytes: address, port: port)
        if let mine = configured.ipv4, let theirs = a.ipv4 { return mine == theirs }
        return configured.bytes == a.bytes
    }
}

/// One bind() (or listen(): then `address` is the backlog) waiting for swarmd's answer.
public struct BindCall: Equatable, Sendable {
    public var id: UInt64
    /// The calling thread (any thread of any process under the filter).
    public var pid: pid_t
    public var syscall: UInt32
    /// args[0]: the caller's socket fd.
    public var fd: Int32
    /// args[1]: the sockaddr's address in the caller.
    public var address: UInt64
    /// args[2] as passed (a socklen_t in the low 32 bits).
    public var addressLength: UInt64
}

/// Why a bind was left to the kernel.
public enum BindContinueReason: Error, Equatable, Sendable {
    /// An address/port no rule covers (another port, port 0, another address).
    case noRule(BindAddress)
    /// addrlen above sizeof(sockaddr_storage) or below the family's sockaddr: the kernel answers EINVAL itself.
    case badLength(UInt64)
    /// The sockaddr pointer could not be read (EFAULT: a bad pointer): the kernel answers EFAULT itself.
    case unreadable(errno: Int32)
    /// Not AF_INET/AF_INET6.
    case otherFamily(Int32)
    /// The fd is not a TCP socket of the sockaddr's family (UDP on the same port, a Unix socket, …).
    case notTCP(domain: Int32, type: Int32)
    /// The caller's fd could not be looked at (EBADF: not an fd; EPERM: ptrace rules).
    case cannotInspect(errno: Int32)
    /// Neither bind() nor listen() (the filter stops only those).
    case notBind(UInt32)
    /// A listen() on a socket that is not one of the rules' (the program's own socket).
    case notSwarmSocket
}

/// What one notification came to.
public enum BindOutcome: Equatable, Sendable {
    /// Nothing was pending (a spurious wake-up).
    case idle
    /// Every process under the filter has exited: close the interceptor.
    case hungUp
    /// The caller got the rule's socket at its fd; `nonBlocking` is the flag copied onto that socket.
    case substituted(pid: pid_t, fd: Int32, address: BindAddress, rule: Int, nonBlocking: Bool)
    /// A listen() on the rule's socket (which listens already): answered 0, swarm's backlog kept.
    case keptListening(pid: pid_t, fd: Int32, rule: Int)
    /// The kernel ran the call itself.
    case continued(pid: pid_t, reason: BindContinueReason)
    /// The caller died (or its bind was interrupted) before the answer (ENOENT): nothing to do.
    case targetGone(pid: pid_t, during: String)
    /// Anything else; the call was answered "continue" where still possible.
    case failed(SystemError)
}

/// Why this process cannot intercept bind().
public struct InterceptUnavailable: Error, CustomStringConvertible, Equatable {
    public var reason: String
    public var errno: Int32
    public var description: String { "bind interception unavailable: \(reason)" }
}

/// One worker's seccomp notification fd. Not thread-safe: owned by the event loop.
public final class BindInterceptor {
    /// Non-blocking, close-on-exec. Watch it for EPOLLIN (a bind waits: call
    /// `handleOne`) and EPOLLHUP (every process under it has exited: `close`).
    public private(set) var fd: Int32
    /// The worker's main pid, for messages.
    public let pid: pid_t

    /// Decides the O_NONBLOCK of a rule's socket before the caller gets it
    /// (`callerWantsNonBlocking`: the flag of the socket it bound). nil: copy
    /// the caller's choice. The flag belongs to the open file description, so
    /// a daemon whose other workers hold the same socket decides here.
    public var nonBlockingPolicy: ((_ rule: BindRule, _ callerWantsNonBlocking: Bool) -> Void)?

    /// Sets or clears O_NONBLOCK on `fd` (a no-op when it is already so).
    public static func setNonBlocking(_ fd: Int32, _ on: Bool) {
        let flags = fcntl(fd, F_GETFL)
        guard flags >= 0 else { return }
        let wanted = on ? flags | O_NONBLOCK : flags & ~O_NONBLOCK
        if wanted != flags { _ = fcntl(fd, F_SETFL, wanted) }
    }

    public static func isNonBlocking(_ fd: Int32) -> Bool {
        let flags = fcntl(fd, F_GETFL)
        return flags >= 0 && flags & O_NONBLOCK != 0
    }

    /// Takes ownership of `notifyFD` (from `Spawner.spawnWorker`, or handed over by a re-exec).
    public init(notifyFD: Int32, pid: pid_t) {
        self.fd = notifyFD
        self.pid = pid
        _ = try? Posix.setNonBlocking(notifyFD)
    }

    deinit { close() }

    /// Closing while a bind waits makes that bind fail with ENOSYS in the caller:
    /// close only after the worker is gone, or when giving up on it.
    public func close() {
        if fd >= 0 { Posix.close(fd) }
        fd = -1
    }

    /// For a re-exec: the fd leaves this object (which no longer closes it).
    public func take() -> Int32 {
        let f = fd
        fd = -1
        return f
    }

    public enum Received: Equatable {
        case call(BindCall)
        case idle
        case hungUp
        /// ENOENT: the caller was gone before the notification was received.
        case gone
        case failed(SystemError)
    }

    /// Takes one pending notification, never blocking.
    public func receive() -> Received {
        guard fd >= 0 else { return .failed(SystemError("SECCOMP_IOCTL_NOTIF_RECV", errno: EBADF, subject: "closed interceptor of pid \(pid)")) }
        var c = swarm_bind_call()
        let r = swarm_notif_recv(fd, &c)
        if r == 0 { return .idle }
        if r < 0 {
            let e = errno
            if e == EPIPE { return .hungUp }
            if e == ENOENT { return .gone }
            return .failed(SystemError("SECCOMP_IOCTL_NOTIF_RECV", errno: e, subject: "worker \(pid)"))
        }
        return .call(BindCall(id: c.id, pid: c.pid, syscall: c.nr, fd: c.fd, address: c.addr, addressLength: c.addrlen))
    }

    /// Receives one notification and answers it.
    public func handleOne(rules: [BindRule]) -> BindOutcome {
        switch receive() {
        case .call(let call): return respond(to: call, rules: rules)
        case .idle: return .idle
        case .hungUp: return .hungUp
        case .gone: return .targetGone(pid: 0, during: "SECCOMP_IOCTL_NOTIF_RECV")
        case .failed(let e): return .failed(e)
        }
    }

    /// Answers one received bind() (see the file comment). Every path ends in
    /// exactly one answer, or in the caller being gone.
    public func respond(to call: BindCall, rules: [BindRule]) -> BindOutcome {
        if call.syscall == UInt32(SWARM_NR_LISTEN) { return respondToListen(call, rules: rules) }
        guard call.syscall == UInt32(SWARM_NR_BIND) else { return answerContinue(call, .notBind(call.syscall)) }
        let storage = UInt64(MemoryLayout<sockaddr_storage>.size)
        guard call.addressLength >= 2, call.addressLength <= storage else { return answerContinue(call, .badLength(call.addressLength)) }
        var raw = [UInt8](repeating: 0, count: Int(call.addressLength))
        let n = raw.withUnsafeMutableBytes { swarm_read_remote(call.pid, call.address, $0.baseAddress, $0.count) }
        if n != raw.count {
            let e = n < 0 ? errno : EFAULT
            return answerContinue(call, .unreadable(errno: e))
        }
        let address: BindAddress
        switch BindAddress.decode(raw) {
        case .success(let a): address = a
        case .failure(.tooShort): return answerContinue(call, .badLength(call.addressLength))
        case .failure(.otherFamily(let f)): return answerContinue(call, .otherFamily(f))
        }
        guard let ruleIndex = rules.firstIndex(where: { $0.matches(address) }) else { return answerContinue(call, .noRule(address)) }
        let rule = rules[ruleIndex]

        // Look at the caller's socket through a duplicate: its family and type
        // (a UDP socket on the same port is not ours), its O_NONBLOCK and close-on-exec.
        let inspected: (nonBlocking: Bool, cloexec: Bool)
        switch inspect(call: call, family: address.family) {
        case .success(let i): inspected = i
        case .failure(let reason): return answerContinue(call, reason)
        }
        // Everything above was read from the right process only if the call is still pending (no pid reuse).
        if swarm_notif_id_valid(fd, call.id) < 0 { return .targetGone(pid: call.pid, during: "SECCOMP_IOCTL_NOTIF_ID_VALID") }

        if let nonBlockingPolicy {
            nonBlockingPolicy(rule, inspected.nonBlocking)
        } else {
            BindInterceptor.setNonBlocking(rule.listenFD, inspected.nonBlocking)
        }
        if swarm_notif_addfd(fd, call.id, rule.listenFD, call.fd, inspected.cloexec ? 1 : 0) < 0 {
            let e = errno
            if e == ENOENT { return .targetGone(pid: call.pid, during: "SECCOMP_IOCTL_NOTIF_ADDFD") }
            let failure = SystemError("SECCOMP_IOCTL_NOTIF_ADDFD", errno: e, subject: "fd \(call.fd) of pid \(call.pid)")
            _ = swarm_notif_send(fd, call.id, 1, 0, 0)
            return .failed(failure)
        }
        if swarm_notif_send(fd, call.id, 0, 0, 0) < 0 {
            let e = errno
            if e == ENOENT { return .targetGone(pid: call.pid, during: "SECCOMP_IOCTL_NOTIF_SEND") }
            return .failed(SystemError("SECCOMP_IOCTL_NOTIF_SEND", errno: e, subject: "pid \(call.pid)"))
        }
        return .substituted(pid: call.pid, fd: call.fd, address: address, rule: ruleIndex, nonBlocking: inspected.nonBlocking)
    }

    /// listen(): on one of the rules' sockets, "0" without running it; else the kernel's.
    private func respondToListen(_ call: BindCall, rules: [BindRule]) -> BindOutcome {
        let tgid = Self.threadGroup(of: call.pid) ?? call.pid
        let pidfd = swarm_pidfd_open(tgid)
        if pidfd < 0 { return answerContinue(call, .cannotInspect(errno: errno)) }
        defer { Posix.close(pidfd) }
        let dup = swarm_pidfd_getfd(pidfd, call.fd)
        if dup < 0 { return answerContinue(call, .cannotInspect(errno: errno)) }
        defer { Posix.close(dup) }
        func identity(_ fd: Int32) -> (UInt64, UInt64)? {
            var st = stat()
            return fstat(fd, &st) == 0 ? (UInt64(st.st_dev), UInt64(st.st_ino)) : nil
        }
        guard let theirs = identity(dup),
              let ruleIndex = rules.firstIndex(where: { identity($0.listenFD).map { $0 == theirs } ?? false }) else {
            return answerContinue(call, .notSwarmSocket)
        }
        if swarm_notif_id_valid(fd, call.id) < 0 { return .targetGone(pid: call.pid, during: "SECCOMP_IOCTL_NOTIF_ID_VALID") }
        if swarm_notif_send(fd, call.id, 0, 0, 0) < 0 {
            let e = errno
            if e == ENOENT { return .targetGone(pid: call.pid, during: "SECCOMP_IOCTL_NOTIF_SEND") }
            return .failed(SystemError("SECCOMP_IOCTL_NOTIF_SEND", errno: e, subject: "pid \(call.pid)"))
        }
        return .keptListening(pid: call.pid, fd: call.fd, rule: ruleIndex)
    }

    private func answerContinue(_ call: BindCall, _ reason: BindContinueReason) -> BindOutcome {
        if swarm_notif_send(fd, call.id, 1, 0, 0) < 0 {
            let e = errno
            if e == ENOENT { return .targetGone(pid: call.pid, during: "SECCOMP_IOCTL_NOTIF_SEND") }
            return .failed(SystemError("SECCOMP_IOCTL_NOTIF_SEND (continue)", errno: e, subject: "pid \(call.pid)"))
        }
        return .continued(pid: call.pid, reason: reason)
    }

    private func inspect(call: BindCall, family: Int32) -> Result<(nonBlocking: Bool, cloexec: Bool), BindContinueReason> {
        // The notification names a thread; pidfds and fd tables belong to its process.
        let tgid = Self.threadGroup(of: call.pid) ?? call.pid
        let pidfd = swarm_pidfd_open(tgid)
        if pidfd < 0 { return .failure(.cannotInspect(errno: errno)) }
        defer { Posix.close(pidfd) }
        let dup = swarm_pidfd_getfd(pidfd, call.fd)
        if dup < 0 { return .failure(.cannotInspect(errno: errno)) }
        defer { Posix.close(dup) }
        var domain: Int32 = 0, type: Int32 = 0, proto: Int32 = 0
        if swarm_socket_kind(dup, &domain, &type, &proto) < 0 { return .failure(.cannotInspect(errno: errno)) }
        guard domain == family, type == Int32(SOCK_STREAM.rawValue), proto == Int32(IPPROTO_TCP) else {
            return .failure(.notTCP(domain: domain, type: type))
        }
        let nonBlocking = fcntl(dup, F_GETFL) & O_NONBLOCK != 0
        // Close-on-exec belongs to the caller's fd-table entry: only fdinfo shows it.
        var cloexec = false
        if let info = ProcFS.read("/proc/\(tgid)/fdinfo/\(call.fd)") {
            for line in info.split(separator: "\n") where line.hasPrefix("flags:") {
                let octal = line.dropFirst("flags:".count).filter { $0 != " " && $0 != "\t" }
                if let flags = Int(octal, radix: 8) { cloexec = flags & Int(O_CLOEXEC) != 0 }
            }
        }
        return .success((nonBlocking, cloexec))
    }

    static func threadGroup(of tid: pid_t) -> pid_t? {
        guard let status = ProcFS.read("/proc/\(tid)/status") else { return nil }
        for line in status.split(separator: "\n") where line.hasPrefix("Tgid:") {
            return pid_t(line.dropFirst(5).filter { $0 != " " && $0 != "\t" })
        }
        return nil
    }

    public struct ProbeResult: Equatable {
        /// PR_SET_NO_NEW_PRIVS is needed (no CAP_SYS_ADMIN): see the file comment.
        public var needsNoNewPrivileges: Bool
        /// Non-fatal signals do not restart an intercepted bind (Linux 5.19+).
        public var killableWait: Bool
    }

    /// Whether this process can intercept bind() here (kernel, container
    /// policy): a throwaway child installs the filter and binds twice, the
    /// probe answers "continue" once and ADDFD + 0 once. Call it once at
    /// start-up; at most ~2 s if something hangs, ~ms otherwise.
    public static func probe() -> Result<ProbeResult, InterceptUnavailable> {
        var reason = [CChar](repeating: 0, count: 512)
        var flags: UInt32 = 0
        if swarm_intercept_probe(&reason, reason.count, &flags) < 0 {
            return .failure(InterceptUnavailable(reason: String(cString: reason), errno: errno))
        }
        return .success(ProbeResult(needsNoNewPrivileges: flags & UInt32(SWARM_INTERCEPT_NO_NEW_PRIVS) != 0,
                                    killableWait: flags & UInt32(SWARM_INTERCEPT_WAIT_KILLABLE) != 0))
    }
}

/// A spawned worker and, with `SpawnPlan.interceptBind`, its notification fd.
public struct SpawnedWorker {
    public var pid: pid_t
    /// Close-on-exec, non-blocking: give it to `BindInterceptor(notifyFD:pid:)`.
    public var bindNotifyFD: Int32?
    /// The child set PR_SET_NO_NEW_PRIVS to install the filter.
    public var filterNeededNoNewPrivileges = false

    public init(pid: pid_t, bindNotifyFD: Int32? = nil, filterNeededNoNewPrivileges: Bool = false) {
        self.pid = pid
        self.bindNotifyFD = bindNotifyFD
        self.filterNeededNoNewPrivileges = filterNeededNoNewPrivileges
    }
}

/// A `Kernel` that can spawn workers under bind interception. A separate
/// capability so a kernel seam without it (the shell's unit-test fake) simply
/// runs every worker on fd 3 only.
public protocol BindInterceptingKernel: Kernel {
    /// `Spawner.spawnWorker`: the pid and, with `plan.interceptBind`, the notification fd.
    func spawnWorker(_ plan: SpawnPlan) throws -> SpawnedWorker
    /// `BindInterceptor.probe()`, once at start-up.
    func probeBindInterception() -> Result<BindInterceptor.ProbeResult, InterceptUnavailable>
}

extension LinuxKernel: BindInterceptingKernel {
    public func spawnWorker(_ plan: SpawnPlan) throws -> SpawnedWorker {
        let spawned = try Spawner.spawnWorker(plan)
        _ = noteTicket(spawned.pid)   // the thread's last spawn is this one's
        return spawned
    }
    public func probeBindInterception() -> Result<BindInterceptor.ProbeResult, InterceptUnavailable> { BindInterceptor.probe() }
}

let kernelStepNames: [Int32: String] = [
    Int32(SWARM_STEP_CGROUP.rawValue): "joining the worker's cgroup (cgroup.procs)",
    Int32(SWARM_STEP_SECCOMP.rawValue): "seccomp(SECCOMP_SET_MODE_FILTER, SECCOMP_FILTER_FLAG_NEW_LISTENER)",
    Int32(SWARM_STEP_SECCOMP_SEND.rawValue): "sending the seccomp listener to swarmd (sendmsg)",
]

extension Spawner {
    /// `spawn`, plus the bind-interception fd when `plan.interceptBind`.
    public static func spawnWorker(_ plan: SpawnPlan) throws -> SpawnedWorker {
        guard plan.interceptBind else { return SpawnedWorker(pid: try spawn(plan)) }
        var pair: [Int32] = [-1, -1]
        try Posix.check("socketpair(AF_UNIX, SOCK_SEQPACKET)") {
            socketpair(AF_UNIX, Int32(SOCK_SEQPACKET.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0, &pair)
        }
        defer { Posix.close(pair[0]) }
        var withSocket = plan
        withSocket.interceptSocket = pair[1]
        let pid: pid_t
        let ticket: Int32?
        do {
            pid = try spawn(withSocket)
            ticket = lastExecTicket
        } catch {
            Posix.close(pair[1])
            throw error
        }
        Posix.close(pair[1])
        // The child sent it before spawn returned (after its exec, or with returnBeforeExec once sent): it is queued.
        var flags: UInt32 = 0
        let notify = swarm_intercept_receive_listener(pair[0], &flags)
        if notify < 0 {
            let e = errno
            _ = Glibc.kill(pid, SIGKILL)
            var status: Int32 = 0
            while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
            // A child that ran on and failed first (installing the filter, say) says why.
            if let ticket, let failure = takeExecFailure(pid: pid, ticket: ticket) { throw failure }
            throw SpawnError(step: "receiving the seccomp listener from the child", errno: e, executable: plan.executable)
        }
        _ = try? Posix.setNonBlocking(notify)
        return SpawnedWorker(pid: pid, bindNotifyFD: notify,
                             filterNeededNoNewPrivileges: flags & UInt32(SWARM_INTERCEPT_NO_NEW_PRIVS) != 0)
    }
}
