import Glibc
@testable import SwarmDaemon
import SwarmSystem

/// The shell's kernel in these tests: a clock that moves only when a test
/// advances it, spawns that return made-up pids (and never fork), reaps from
/// a script, and a log of every call in the order the shell made it, so a
/// test can check what the shell asked for and in which order.
final class FakeKernel: Kernel {
    /// One call the shell made, in order (steering writes included).
    enum Call: Equatable {
        case spawn(pid: pid_t, executable: String)
        case signal(pid: pid_t, signal: Int32, group: Bool)
        case reap
        case isListening(pid: pid_t)
        case usage(pid: pid_t)
        case rss(pid: pid_t)
        case setGroupPriority(pgid: pid_t, nice: Int32)
        case established(pid: pid_t, port: UInt16)
        case makeSteering(maxSlots: Int)
        case hashSteering(fd: Int32, sockets: Int, ipv6: Bool)
        case notify(String)
        case steering(FakeSteering.Write)
    }

    private(set) var calls: [Call] = []
    func record(_ call: Call) { calls.append(call) }

    // MARK: - Clock

    /// Far above the real CLOCK_MONOTONIC, so a timer the shell arms with a
    /// fake deadline never fires by itself in a test's short loop runs.
    var clock: Int64 = 1_000_000 * 1_000_000_000
    var wall: Int64 = 1_780_000_000 * 1_000_000_000

    func advance(_ ns: Int64) {
        clock += ns
        wall += ns
    }

    func advance(seconds: Double) { advance(Int64(seconds * 1e9)) }

    func now() -> Int64 { clock }
    func wallClock() -> Int64 { wall }

    // MARK: - Processes

    var nextPid: pid_t = 40_000
    private(set) var spawned: [SpawnPlan] = []
    /// Thrown by the next spawns, while set.
    var spawnError: Error?

    /// What a started worker would hold: its own copies of the fds the plan
    /// passes (stdout, stderr, fds 3…), so pipes stay open until it "exits".
    final class FakeProcess {
        let pid: pid_t
        let plan: SpawnPlan
        let stdout: Int32
        let stderr: Int32
        /// The plan's fds as the worker's 3, 4, …
        let fds: [Int32]

        init(pid: pid_t, plan: SpawnPlan) {
            self.pid = pid
            self.plan = plan
            stdout = fcntl(plan.stdout, F_DUPFD_CLOEXEC, 0)
            stderr = fcntl(plan.stderr, F_DUPFD_CLOEXEC, 0)
            fds = plan.fds.map { fcntl($0, F_DUPFD_CLOEXEC, 0) }
        }

        func close() {
            for fd in [stdout, stderr] + fds where fd >= 0 { Glibc.close(fd) }
        }
    }

    private(set) var processes: [pid_t: FakeProcess] = [:]

    deinit { for p in processes.values { p.close() } }

    func spawn(_ plan: SpawnPlan) throws -> pid_t {
        if let spawnError { throw spawnError }
        let pid = nextPid
        nextPid += 1
        spawned.append(plan)
        processes[pid] = FakeProcess(pid: pid, plan: plan)
        record(.spawn(pid: pid, executable: plan.executable))
        return pid
    }

    func signal(_ pid: pid_t, _ signal: Int32, group: Bool) throws {
        record(.signal(pid: pid, signal: signal, group: group))
    }

    var signals: [(pid: pid_t, signal: Int32, group: Bool)] {
        calls.compactMap { if case let .signal(p, s, g) = $0 { return (p, s, g) } else { return nil } }
    }

    /// Exits `reap()` reports, oldest first.
    var zombies: [Posix.WaitResult] = []
    private var zombieHead = 0
    private(set) var reapCalls = 0
    var zombiesLeft: Int { zombies.count - zombieHead }

    func exit(_ pid: pid_t, code: Int32 = 0) { zombies.append(.exited(pid, code)) }

    func reap() -> Posix.WaitResult? {
        reapCalls += 1
        record(.reap)
        guard zombieHead < zombies.count else { return nil }
        zombieHead += 1
        let z = zombies[zombieHead - 1]
        // A reaped process holds nothing any more.
        switch z {
        case let .exited(pid, _), let .signaled(pid, _, _): processes.removeValue(forKey: pid)?.close()
        }
        return z
    }

    var listening: Set<pid_t> = []
    func isListening(pid: pid_t, fds: Set<Int32>) -> Bool {
        record(.isListening(pid: pid))
        return listening.contains(pid)
    }

    var usageOf: [pid_t: (cpuTicks: Int64, rss: Int64)] = [:]
    /// Nanoseconds each usage read takes (the clock moves on by that much).
    var usageReadCost: Int64 = 0
    func usage(pid: pid_t) -> (cpuTicks: Int64, rss: Int64)? {
        record(.usage(pid: pid))
        clock += usageReadCost
        return usageOf[pid]
    }

    var rssOf: [pid_t: Int64] = [:]
    func rss(pid: pid_t) -> Int64? {
        record(.rss(pid: pid))
        return rssOf[pid]
    }

    var workerPriority: Int32 = 3
    func setGroupPriority(_ pgid: pid_t, to nice: Int32) -> Bool {
        record(.setGroupPriority(pgid: pgid, nice: nice))
        return true
    }

    var connectionsHeld: [pid_t: Int] = [:]
    func establishedConnections(pid: pid_t, localPort port: UInt16, listener: Int32) throws -> Int {
        record(.established(pid: pid, port: port))
        return connectionsHeld[pid] ?? 0
    }

    // MARK: - Steering

    /// Thrown by makeSteering, while set (no CAP_BPF).
    var steeringError: Error?
    private(set) var steerings: [FakeSteering] = []

    func makeSteering(maxSlots: Int) throws -> ReuseportSteering {
        record(.makeSteering(maxSlots: maxSlots))
        if let steeringError { throw steeringError }
        let s = FakeSteering(kernel: self, maxSlots: maxSlots)
        steerings.append(s)
        return s
    }

    func attachHashSteering(to fd: Int32, liveSockets n: Int, ipv6: Bool) throws {
        record(.hashSteering(fd: fd, sockets: n, ipv6: ipv6))
    }

    // MARK: - Service manager

    /// Whether a service manager listens (sd_notify's answer).
    var underServiceManager = true
    func notify(_ state: String) -> Bool {
        record(.notify(state))
        return underServiceManager
    }

    var notifications: [String] {
        calls.compactMap { if case let .notify(s) = $0 { return s } else { return nil } }
    }
}

/// A reuseport group's index → socket array, as the eBPF map would hold it.
final class FakeSteering: ReuseportSteering {
    enum Write: Equatable {
        case attach(fd: Int32)
        case set(index: Int, fd: Int32)
        case clear(index: Int)
        case count(Int)
        case handOver(index: Int, quota: Int)
    }

    private weak var kernel: FakeKernel?
    let maxSlots: Int
    private(set) var writes: [Write] = []
    private(set) var map: [Int: Int32] = [:]
    private(set) var liveCount = 0
    private(set) var attachedTo: Int32?
    private(set) var pendingHandOver: (index: Int, quota: Int)?

    init(kernel: FakeKernel, maxSlots: Int) {
        self.kernel = kernel
        self.maxSlots = maxSlots
    }

    private func write(_ w: Write) {
        writes.append(w)
        kernel?.record(.steering(w))
    }

    var handoverFDs: [Int32] { [] }

    func attach(to fd: Int32) throws {
        attachedTo = fd
        write(.attach(fd: fd))
    }

    func setSocket(_ fd: Int32, at index: Int) throws {
        precondition(index < maxSlots, "index \(index) beyond the map's \(maxSlots)")
        map[index] = fd
        write(.set(index: index, fd: fd))
    }

    func clearSocket(at index: Int) throws {
        map[index] = nil
        write(.clear(index: index))
    }

    func setLiveCount(_ n: Int) throws {
        liveCount = n
        write(.count(n))
    }

    func handOver(toIndex index: Int, quota: Int) throws {
        pendingHandOver = (index, quota)
        write(.handOver(index: index, quota: quota))
    }

    /// The sockets the program chooses among: indices 0..<liveCount, each set.
    var liveSockets: [Int32?] { (0..<liveCount).map { map[$0] } }
}
