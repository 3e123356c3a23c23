import CSwarmSpawn
import Glibc

/// What to exec and how: prepared in Swift, carried out by the C child.
public struct SpawnPlan {
    public var executable: String
    public var argv: [String]
    public var environment: [String]
    /// Fill in LISTEN_PID with the child's own pid.
    public var setListenPID: Bool
    public var cwd: String?
    /// Become fds 3, 4, … in the child.
    public var fds: [Int32]
    public var stdin: Int32
    public var stdout: Int32
    public var stderr: Int32
    /// Signal the child gets if swarmd dies.
    public var parentDeathSignal: Int32 = SIGKILL
    public var ids: (uid: uid_t, gid: gid_t)?
    public var noNewPrivileges = false
    public var limits: [(resource: Int32, soft: UInt64, hard: UInt64)] = []
    /// Scheduling niceness to start with (nil: `Spawner.childPriority`, else swarmd's own).
    public var nice: Int32?
    /// The one CPU the worker may run on (nil: any swarmd may use).
    public var cpu: Int32?
    // Kernel mechanisms (Cgroups.swift, BindInterceptor.swift).
    /// `WorkerCgroup.procsFD`: the child joins that cgroup before anything else. -1 with
    /// `cgroupDirFD` -1 too: it stays in swarmd's.
    public var cgroupProcsFD: Int32 = -1
    /// The same cgroup's directory (`WorkerCgroup.openDirectory()`): the child is
    /// created in it (clone3 CLONE_INTO_CGROUP) instead of joining it; where clone3
    /// cannot, it joins by `cgroupProcsFD`, or by the directory's cgroup.procs,
    /// or the spawn fails. -1: it joins by `cgroupProcsFD`.
    public var cgroupDirFD: Int32 = -1
    /// Join the cgroup by cgroup.procs even where clone3 could create the child
    /// in `cgroupDirFD` (what happens on kernels before 5.7): for tests of that path.
    public var joinCgroupOnly = false
    /// Return once the child is on its own fd table and leads its own process
    /// group, instead of after its exec: swarmd's loop goes on while the child
    /// makes its way to exec on another CPU. An exec (or earlier step) that
    /// fails is then not thrown but found when the child is reaped, with exit
    /// status 127: `Spawner.takeExecFailure(pid:)`. Spawns that join their
    /// cgroup by cgroup.procs wait all the same (spawn.c); one that intercepts
    /// bind() returns once the child has sent its listener.
    public var returnBeforeExec = false
    /// Intercept the worker's bind() calls; spawn with `Spawner.spawnWorker` to get the notification fd.
    public var interceptBind = false
    /// Set by `spawnWorker`: the child's end of the socketpair the notification fd comes back on.
    var interceptSocket: Int32 = -1

    public init(executable: String, argv: [String], environment: [String], setListenPID: Bool, cwd: String?, fds: [Int32],
                stdin: Int32, stdout: Int32, stderr: Int32) {
        self.executable = executable
        self.argv = argv
        self.environment = environment
        self.setListenPID = setListenPID
        self.cwd = cwd
        self.fds = fds
        self.stdin = stdin
        self.stdout = stdout
        self.stderr = stderr
    }
}

public struct SpawnError: Error, CustomStringConvertible {
    public var step: String
    public var errno: Int32
    public var executable: String

    public var description: String {
        "\(step == "execve" ? "exec of \(executable)" : step) failed: \(String(cString: strerror(errno))) (\(errnoName(errno)))"
    }
}

public enum Spawner {
    static let stepNames = ["none", "fork", "setpgid", "prctl(PR_SET_PDEATHSIG)", "moving fds", "setting stdio", "setrlimit",
                            "chdir", "setgroups", "setgid", "setuid", "prctl(PR_SET_NO_NEW_PRIVS)", "execve",
                            "sched_setaffinity", "sched_setscheduler(SCHED_OTHER)"]

    /// fork + exec through the C target; exec failures come back as errors.
    public static func spawn(_ plan: SpawnPlan) throws -> pid_t {
        precondition(!plan.interceptBind || plan.interceptSocket >= 0, "SpawnPlan.interceptBind needs Spawner.spawnWorker")
        var cStrings: [UnsafeMutablePointer<CChar>] = []
        defer { cStrings.forEach { free($0) } }
        func dup(_ s: String) -> UnsafeMutablePointer<CChar> {
            let p = strdup(s)!
            cStrings.append(p)
            return p
        }
        var argv: [UnsafeMutablePointer<CChar>?] = plan.argv.map { dup($0) } + [nil]
        var listenSlot: UnsafeMutablePointer<CChar>?
        var envp: [UnsafeMutablePointer<CChar>?] = plan.environment.map { dup($0) }
        if plan.setListenPID {
            // Room for the digits, written by the child before exec.
            let slot = dup("LISTEN_PID=" + String(repeating: "0", count: 24))
            listenSlot = slot
            envp.append(slot)
        }
        envp.append(nil)
        let path = dup(plan.executable)
        let cwd = plan.cwd.map { dup($0) }
        var fds = plan.fds
        var limits = plan.limits.map { swarm_rlimit(resource: $0.resource, soft: $0.soft, hard: $0.hard) }
        // The real-time guard is swarmd's, not its children's: a worker that makes itself real-time gets the limit swarmd was given.
        if let original = originalRealtimeLimit, !limits.contains(where: { $0.resource == Int32(__RLIMIT_RTTIME.rawValue) }) {
            limits.append(swarm_rlimit(resource: Int32(__RLIMIT_RTTIME.rawValue), soft: original.soft, hard: original.hard))
        }
        var err: Int32 = 0
        var step: Int32 = 0
        let pid: pid_t = argv.withUnsafeMutableBufferPointer { argvBuf in
            envp.withUnsafeMutableBufferPointer { envBuf in
                fds.withUnsafeMutableBufferPointer { fdBuf in
                    limits.withUnsafeMutableBufferPointer { limBuf in
                        var req = swarm_spawn_request()
                        req.path = UnsafePointer(path)
                        req.argv = UnsafePointer(argvBuf.baseAddress)
                        req.envp = UnsafePointer(envBuf.baseAddress)
                        req.listen_pid_slot = listenSlot
                        req.cwd = cwd.map { UnsafePointer($0) }
                        req.fds = UnsafePointer(fdBuf.baseAddress)
                        req.nfds = Int32(fdBuf.count)
                        req.stdin_fd = plan.stdin
                        req.stdout_fd = plan.stdout
                        req.stderr_fd = plan.stderr
                        req.pdeathsig = plan.parentDeathSignal
                        if let ids = plan.ids {
                            req.set_ids = 1
                            req.uid = ids.uid
                            req.gid = ids.gid
                        }
                        req.no_new_privs = plan.noNewPrivileges ? 1 : 0
                        req.rlimits = UnsafePointer(limBuf.baseAddress)
                        req.nrlimits = Int32(limBuf.count)
                        if let nice = plan.nice ?? childPriority {
                            req.set_nice = 1
                            req.nice = nice
                        }
                        req.cpu = plan.cpu ?? -1
                        req.join_cgroup = plan.cgroupProcsFD >= 0 ? 1 : 0
                        req.cgroup_procs_fd = plan.cgroupProcsFD
                        req.cgroup_dir_fd = plan.cgroupDirFD
                        req.intercept_bind = plan.interceptBind ? 1 : 0
                        req.intercept_sock = plan.interceptSocket
                        req.no_clone3 = plan.joinCgroupOnly ? 1 : 0
                        req.no_wait_exec = plan.returnBeforeExec ? 1 : 0
                        req.reset_policy = resetChildPolicy ? 1 : 0
                        return swarm_spawn(&req, &err, &step)
                    }
                }
            }
        }
        if pid < 0 { throw SpawnError(step: stepName(step), errno: err, executable: plan.executable) }
        return pid
    }

    static func stepName(_ step: Int32) -> String {
        Int(step) < stepNames.count ? stepNames[Int(step)] : kernelStepNames[step] ?? "step \(step)"
    }

    /// Why the reaped child `pid`, spawned with `returnBeforeExec`, never ran its
    /// program; nil when it did (or is no such child). Call it for each such
    /// child reaped: a failed one's spawn memory is held until then.
    /// With `ticket` (`lastExecTicket` right after the spawn) the child's arena
    /// is found at once; without, every child still held is looked through.
    public static func takeExecFailure(pid: pid_t, ticket: Int32? = nil) -> SpawnError? {
        var err: Int32 = 0
        var step: Int32 = 0
        var path = [CChar](repeating: 0, count: 4096)
        let found = ticket.map { swarm_spawn_take_failure_ticket($0, pid, &err, &step, &path, path.count) }
            ?? swarm_spawn_take_failure(pid, &err, &step, &path, path.count)
        guard found == 1 else { return nil }
        let executable = path.withUnsafeBufferPointer { String(cString: $0.baseAddress!) }
        return SpawnError(step: stepName(step), errno: err, executable: executable)
    }

    /// The calling thread's last `spawn`, if it returned before the exec: its
    /// ticket for `takeExecFailure` and `swarm_spawn_execing`; else nil.
    public static var lastExecTicket: Int32? {
        let t = swarm_spawn_last_ticket()
        return t >= 0 ? t : nil
    }

    /// Reserves the low fd numbers a child's fds are placed on, so that a
    /// spawn copies a few dozen fds instead of the caller's whole table (two
    /// pipes per live worker in swarmd): spawn.c says how. Call once, early,
    /// before the process opens many fds; later calls do nothing. Without it
    /// (or if it fails) spawning works as before, copying the table.
    @discardableResult
    public static func reserveDescriptorSlots() -> Bool {
        swarm_spawn_reserve_slots() == 0
    }

    /// The fds every child copies, [0, ceiling); nil before `reserveDescriptorSlots`.
    public static var descriptorCeiling: Int32? {
        let c = swarm_spawn_slot_ceiling()
        return c >= 0 ? c : nil
    }

    public static func setChildSubreaper() throws {
        try Posix.check("prctl(PR_SET_CHILD_SUBREAPER)") { swarm_set_child_subreaper() }
    }
}

extension Spawner {
    /// Sets the niceness of every thread of `pid` (Linux niceness is per thread).
    /// Lowering it needs CAP_SYS_NICE (or RLIMIT_NICE); throws the first refusal.
    public static func renice(pid: pid_t, to nice: Int32) throws(SystemError) {
        try forEveryThread(of: pid) { t in
            setpriority(__priority_which_t(PRIO_PROCESS.rawValue), id_t(t), nice) < 0
                ? SystemError("setpriority", errno: errno, subject: "thread \(t) to nice \(nice)") : nil
        }
    }

    /// Calls `change` for every thread of `pid` (scheduling is per thread);
    /// throws the first refusal once all were tried. Returns how many took it.
    @discardableResult
    static func forEveryThread(of pid: pid_t, _ change: (Int32) -> SystemError?) throws(SystemError) -> Int {
        var refused: SystemError?
        var took = 0
        for tid in ProcFS.listDirectory("/proc/\(pid)/task") ?? ["\(pid)"] {
            guard let t = Int32(tid) else { continue }
            if let e = change(t) {
                if refused == nil { refused = e }
            } else {
                took += 1
            }
        }
        if let refused { throw refused }
        return took
    }

    /// The niceness a child starts at when its plan names none, once
    /// `raiseOwnPriority` has lifted this process above it; nil: the child
    /// inherits this process's. Set at start-up, before any spawn.
    nonisolated(unsafe) public private(set) static var childPriority: Int32?

    /// Lifts this process `steps` nice levels above `original` (its niceness
    /// now, unless a previous image of it, re-executed, says what it was
    /// started with), at most to -20, and makes every child start at
    /// `original` again. Returns the niceness it runs at; throws when the
    /// kernel refused (no CAP_SYS_NICE, RLIMIT_NICE too low), and the process
    /// keeps its niceness (its children then start at `original` all the same,
    /// which a child may always lower itself to).
    ///
    /// Why a supervisor should outrank its workers: when every worker dies at
    /// once (an OOM kill, a bad deploy) the daemon has to reap and respawn
    /// thousands of them while the first replacements, at equal weight, take
    /// the CPUs; a respawn that waits behind them is a worker not serving.
    /// The daemon's own work is small and bounded, so the raise costs the
    /// workers nothing in steady state.
    @discardableResult
    public static func raiseOwnPriority(by steps: Int32, original given: Int32? = nil) throws(SystemError) -> Int32 {
        let original = given ?? currentPriority
        let target = max(-20, original - max(0, steps))
        childPriority = original
        try renice(pid: getpid(), to: target)
        return target
    }

    /// Puts every thread of this process under SCHED_RR at `priority` (1–99),
    /// above every process of ordinary policy, whatever their number; its
    /// children leave it for SCHED_OTHER (at `childPriority`'s niceness) before
    /// they exec. Needs CAP_SYS_NICE (or RLIMIT_RTPRIO); throws the first refusal.
    ///
    /// Why, beyond `raiseOwnPriority`: niceness is a share of the CPU. When
    /// 4,096 workers are killed at once, 4,096 dying processes are runnable
    /// together, and even at nice -20 swarmd's share of the 2 CPUs is about 2 %
    /// until they are gone; a real-time policy is served before all of them.
    ///
    /// A real-time thread that never sleeps would keep a CPU from every
    /// ordinary process, so the policy comes with a guard (`realtimeGuard`).
    public static func raiseToRealtime(priority: Int32) throws(SystemError) {
        var param = sched_param(sched_priority: priority)
        var took = 0
        // Children are reset even if only some threads took it: any of them may spawn.
        defer {
            if took > 0 {
                resetChildPolicy = true
                // Under SCHED_RR, a brk that waited for children at ordinary priority in execve held swarmd
                // for 100-370 ms in a 4,096-worker storm (perf); a heap that is kept needs no brk.
                swarm_hold_heap()
            }
        }
        try installRealtimeGuard()
        try forEveryThread(of: getpid()) { t in
            guard sched_setscheduler(t, SCHED_RR, &param) < 0 else {
                took += 1
                return nil
            }
            return SystemError("sched_setscheduler(SCHED_RR)", errno: errno, subject: "thread \(t) at priority \(priority)")
        }
    }

    /// CPU time a real-time thread of swarmd may use without a blocking call
    /// before the kernel's SIGXCPU moves it back under SCHED_OTHER
    /// (RLIMIT_RTTIME). swarmd's longest busy spell, the start of 4,096
    /// workers, sleeps every few milliseconds; only a loop that spins reaches it.
    public static let realtimeGuard: Duration = .seconds(5)

    /// RLIMIT_RTTIME as it was before the guard, which children get back
    /// before they exec; nil: no guard was installed.
    nonisolated(unsafe) public private(set) static var originalRealtimeLimit: (soft: UInt64, hard: UInt64)?
    /// Whether children must leave swarmd's real-time policy before they exec
    /// (spawn.c): once any thread took it, for good.
    nonisolated(unsafe) static var resetChildPolicy = false

    private static func installRealtimeGuard() throws(SystemError) {
        let microseconds = UInt64(realtimeGuard.components.seconds) * 1_000_000
        var soft: UInt64 = 0, hard: UInt64 = 0
        let original = originalRealtimeLimit
        guard swarm_rttime_guard(microseconds, &soft, &hard) == 0 else {
            throw SystemError("setrlimit(RLIMIT_RTTIME)", errno: errno, subject: "\(microseconds) µs, the real-time guard")
        }
        originalRealtimeLimit = original ?? (soft, hard)
    }

    /// Whether the guard moved a thread back under SCHED_OTHER since the last
    /// call; then every thread leaves the real-time policy for good.
    public static func leaveRealtimeIfGuardFired() -> Bool {
        guard swarm_rttime_tripped() != 0 else { return false }
        var param = sched_param(sched_priority: 0)
        try? forEveryThread(of: getpid()) { t in
            sched_setscheduler(t, SCHED_OTHER, &param) < 0 ? SystemError("sched_setscheduler(SCHED_OTHER)", errno: errno, subject: "thread \(t)") : nil
        }
        return true
    }

    /// Runs `body` (an exec of a new swarmd image) with RLIMIT_RTTIME as it
    /// was before the guard, so that the new image finds the original; the
    /// guard is back when `body` returns.
    public static func withoutRealtimeGuard<T>(_ body: () -> T) -> T {
        guard let original = originalRealtimeLimit else { return body() }
        var saved = rlimit()
        getrlimit(__rlimit_resource_t(__RLIMIT_RTTIME.rawValue), &saved)
        var limit = rlimit(rlim_cur: rlim_t(original.soft), rlim_max: rlim_t(original.hard))
        setrlimit(__rlimit_resource_t(__RLIMIT_RTTIME.rawValue), &limit)
        defer { setrlimit(__rlimit_resource_t(__RLIMIT_RTTIME.rawValue), &saved) }
        return body()
    }

    /// The calling thread's niceness (Linux keeps one per thread).
    public static var currentPriority: Int32 {
        getpriority(__priority_which_t(PRIO_PROCESS.rawValue), 0)
    }

    /// Whether this process may make a niced child normal again.
    public static var canRaisePriority: Bool {
        geteuid() == 0
    }
}
