import CSwarmSpawn
import Glibc

/// What swarmd's shell asks of the kernel about processes, time and the
/// service manager: the seam between the shell and Linux. `LinuxKernel` is
/// the real one; the shell's unit tests pass a fake that records calls and
/// answers from a script, so the shell runs without any process.
///
/// I/O on fds the shell owns (pipes, sockets, files) is not here: tests give
/// the shell real pipes and socketpairs, which need no process.
public protocol Kernel: AnyObject {
    /// CLOCK_MONOTONIC in nanoseconds: every deadline.
    func now() -> Int64
    /// CLOCK_REALTIME in nanoseconds: log timestamps only.
    func wallClock() -> Int64

    /// fork + exec as `plan` says; the pid, or a `SpawnError`.
    func spawn(_ plan: SpawnPlan) throws -> pid_t
    /// The reaped `pid`'s exec failure, for a plan with `returnBeforeExec`
    /// (`Spawner.takeExecFailure`); nil when it ran its program.
    func takeExecFailure(pid: pid_t) -> SpawnError?
    /// Whether `pid`, spawned with `returnBeforeExec`, is still on its way to
    /// its exec: nothing it will run is there yet, and a /proc read of its
    /// fds would wait for the exec (the kernel's exec_update_lock).
    func isExecuting(pid: pid_t) -> Bool
    /// kill(2), to the process group `pid` leads when `group`. A process
    /// already gone (ESRCH) is not an error.
    func signal(_ pid: pid_t, _ signal: Int32, group: Bool) throws
    /// One exited child (waitpid WNOHANG), or nil when none is waiting.
    func reap() -> Posix.WaitResult?
    /// `reap`, with the child's CPU time (its own and its waited-for
    /// children's, microseconds) where the kernel tells it.
    func reapWithCPU() -> (result: Posix.WaitResult, cpuMicroseconds: UInt64?)?
    /// Whether a thread of `pid` waits on one of `fds` (listening readiness).
    func isListening(pid: pid_t, fds: Set<Int32>) -> Bool
    /// Listening readiness: whether the worker or a process it started waits
    /// for connections on one of its sockets (by socket identity, at any fd number).
    func listening(_ query: ListeningQuery) -> ListeningProbeOutcome
    func usage(pid: pid_t) -> (cpuTicks: Int64, rss: Int64)?
    func rss(pid: pid_t) -> Int64?
    /// Sets the niceness of every thread of every process in group `pgid`.
    @discardableResult
    func setGroupPriority(_ pgid: pid_t, to nice: Int32) -> Bool
    /// The niceness workers run at: the one swarmd was started with (swarmd
    /// itself may run above it, `Spawner.raiseOwnPriority`).
    var workerPriority: Int32 { get }
    /// Established TCP connections `pid` holds on local port `port`, accepted
    /// from `listener` (swarmd's fd of that socket; reload hand-over).
    func establishedConnections(pid: pid_t, localPort port: UInt16, listener: Int32) throws -> Int

    /// eBPF round-robin over a reuseport group's sockets; throws where the
    /// process may not load BPF (no CAP_BPF).
    func makeSteering(maxSlots: Int) throws -> ReuseportSteering
    /// Classic BPF hash steering over the first `n` sockets of `fd`'s group.
    func attachHashSteering(to fd: Int32, liveSockets n: Int, ipv6: Bool) throws

    /// sd_notify(0, state); false when there is no service manager to tell.
    @discardableResult
    func notify(_ state: String) -> Bool
}

extension Kernel {
    /// A kernel whose spawns report every failure at once (the shell's fake).
    public func takeExecFailure(pid: pid_t) -> SpawnError? { nil }
    public func isExecuting(pid: pid_t) -> Bool { false }

    /// A kernel that does not tell the CPU time (the shell's fake): cgroups read it from cpu.stat.
    public func reapWithCPU() -> (result: Posix.WaitResult, cpuMicroseconds: UInt64?)? {
        reap().map { ($0, nil) }
    }

    /// A kernel that compares fd numbers only (the shell's fake): the worker itself, at the fds it was given.
    public func listening(_ query: ListeningQuery) -> ListeningProbeOutcome {
        let yes = isListening(pid: query.pid, fds: query.execFDs)
        return ListeningProbeOutcome(evidence: yes ? ListeningEvidence(pid: query.pid, wait: .reported, inode: 0) : nil)
    }
}

/// An index-addressed array of sockets a reuseport group's program chooses
/// from. Writes are per entry, so a change of one slot costs one call.
public protocol ReuseportSteering: AnyObject {
    /// Program, state map and socket map, for a re-executed swarmd.
    var handoverFDs: [Int32] { get }
    func attach(to fd: Int32) throws
    func setSocket(_ fd: Int32, at index: Int) throws
    func clearSocket(at index: Int) throws
    /// Connections go round-robin over indices 0..<n.
    func setLiveCount(_ n: Int) throws
    /// The next `quota` new connections go to `index`, then round-robin resumes.
    func handOver(toIndex index: Int, quota: Int) throws
    /// New connections the program steered to each index 0..<n since it was
    /// created; nil when it does not count.
    func connectionCounts(upTo n: Int) throws -> [UInt64]?
    /// Whether `connectionCounts(upTo: n)` would return what it returned last
    /// (nothing counted since); false when that is not known.
    func countsUnchangedSinceLastRead(upTo n: Int) throws -> Bool
}

extension ReuseportSteering {
    public func connectionCounts(upTo n: Int) throws -> [UInt64]? { nil }
    public func countsUnchangedSinceLastRead(upTo n: Int) throws -> Bool { false }
}

extension RoundRobinSteering: ReuseportSteering {
    public var handoverFDs: [Int32] { [program, stateMap, socketMap] + (countMap >= 0 ? [countMap] : []) }

    public func setSocket(_ fd: Int32, at index: Int) throws {
        try Posix.check("bpf(BPF_MAP_UPDATE_ELEM)", subject: "socket index \(index)") {
            swarm_rr_set_socket(socketMap, UInt32(index), fd)
        }
    }

    public func clearSocket(at index: Int) throws {
        try Posix.check("bpf(BPF_MAP_DELETE_ELEM)", subject: "socket index \(index)") {
            swarm_rr_clear_socket(socketMap, UInt32(index))
        }
    }

    public func setLiveCount(_ n: Int) throws { try setLiveSlots(n) }
}

/// The real kernel.
public final class LinuxKernel: Kernel {
    /// The listening probe keeps where its thread and descendant windows stand, per process.
    private let prober = ListeningProber()

    /// Reserves the spawner's fd slots now, before swarmd opens its sockets and pipes (Spawner.swift).
    public init() { Spawner.reserveDescriptorSlots() }

    public func now() -> Int64 { Posix.monotonicNanoseconds() }
    public func wallClock() -> Int64 { Posix.realtimeNanoseconds() }

    /// Spawns that did not wait for their exec, until the pid is reaped.
    private var execTickets: [pid_t: Int32] = [:]
    /// Exec failures read at the reap, until `takeExecFailure` asks.
    private var reapedFailures: [pid_t: SpawnError] = [:]

    public func spawn(_ plan: SpawnPlan) throws -> pid_t { noteTicket(try Spawner.spawn(plan)) }

    func noteTicket(_ pid: pid_t) -> pid_t {
        if let ticket = Spawner.lastExecTicket { execTickets[pid] = ticket }
        return pid
    }

    public func takeExecFailure(pid: pid_t) -> SpawnError? { reapedFailures.removeValue(forKey: pid) }

    public func isExecuting(pid: pid_t) -> Bool {
        guard let ticket = execTickets[pid] else { return false }
        return swarm_spawn_execing(ticket, pid) == 1
    }

    public func signal(_ pid: pid_t, _ signal: Int32, group: Bool) throws {
        try Posix.kill(group ? -pid : pid, signal)
    }

    public func reap() -> Posix.WaitResult? {
        guard let r = Posix.reapOne() else { return nil }
        reaped(r)
        return r
    }

    public func reapWithCPU() -> (result: Posix.WaitResult, cpuMicroseconds: UInt64?)? {
        guard let r = Posix.reapOneWithCPU() else { return nil }
        reaped(r.result)
        return (r.result, r.cpuMicroseconds)
    }

    /// Every reaped child that did not wait for its exec: its report taken (and
    /// its arena freed) whatever its status, so none is left for a reused pid.
    private func reaped(_ r: Posix.WaitResult) {
        let pid: pid_t
        switch r {
        case let .exited(p, _), let .signaled(p, _, _): pid = p
        }
        if let ticket = execTickets.removeValue(forKey: pid), let failure = Spawner.takeExecFailure(pid: pid, ticket: ticket) {
            reapedFailures[pid] = failure
        }
    }

    public func isListening(pid: pid_t, fds: Set<Int32>) -> Bool {
        let sockets = ListeningProber.identities(ofFDs: fds, in: pid)
        return prober.probe(ListeningQuery(pid: pid, sockets: sockets, cgroup: nil, execFDs: fds)).evidence != nil
    }

    public func listening(_ query: ListeningQuery) -> ListeningProbeOutcome { prober.probe(query) }
    public func usage(pid: pid_t) -> (cpuTicks: Int64, rss: Int64)? { ProcFS.usage(pid: pid) }
    public func rss(pid: pid_t) -> Int64? { ProcFS.rss(pid: pid) }

    public func setGroupPriority(_ pgid: pid_t, to nice: Int32) -> Bool {
        // PRIO_PGRP reaches every thread of every process in the group: a
        // pre-fork server's children too, as long as they stay in its group.
        setpriority(__priority_which_t(PRIO_PGRP.rawValue), id_t(pgid), nice) == 0
    }

    public var workerPriority: Int32 { Spawner.childPriority ?? Spawner.currentPriority }

    public func establishedConnections(pid: pid_t, localPort port: UInt16, listener: Int32) throws -> Int {
        try ProcFS.establishedConnections(pid: pid, localPort: port, listener: listener)
    }

    public func makeSteering(maxSlots: Int) throws -> ReuseportSteering { try RoundRobinSteering(maxSlots: maxSlots) }

    public func attachHashSteering(to fd: Int32, liveSockets n: Int, ipv6: Bool) throws {
        if let error = Steering.attach(to: fd, liveSockets: n, ipv6: ipv6) { throw error }
    }

    public func notify(_ state: String) -> Bool { swarm_notify(state) > 0 }
}
