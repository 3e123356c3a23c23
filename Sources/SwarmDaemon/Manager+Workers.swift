import Foundation
import Glibc
import SwarmCore
import SwarmSystem

extension Manager {
    /// Performs `.spawn`: the core decided everything (slot, generation,
    /// priority, CPU); the shell adds the fds and the host's facts.
    func spawn(_ r: SpawnRequest) {
        spawnRate.note(now: kernel.now())
        do {
            let pid = try startProcess(r)
            workers[r.worker] = pid
            events.append(.spawned(r.worker, pid: pid))
        } catch {
            interception.flags.spawnFailed(r.worker)
            events.append(.spawnFailed(r.worker, reason: Manager.spawnFailureReason(error)))
        }
    }

    static func spawnFailureReason(_ error: Error) -> String {
        if let e = error as? SpawnError, e.errno == EAGAIN { return "\(e) — the process limit is reached" }
        return "\(error)"
    }

    func startProcess(_ r: SpawnRequest) throws -> pid_t {
        let spec = r.spec
        let app = sockets[spec.name]
        let entries = app?.entries ?? []
        let listenFDs = try app?.bindSlot(r.slot) ?? []
        let passed = entries.map { WorkerLaunch.PassedSocket(name: $0.spec.name, port: $0.port) }
        var fds = listenFDs
        var ready: (read: Int32, write: Int32)?
        if spec.ready.mode == .fd {
            let p = try Posix.pipe()
            ready = p
            fds.append(p.write)
        }
        defer { if let ready { Posix.close(ready.write) } }
        var opened: [Int32] = []
        defer { for fd in opened { Posix.close(fd) } }
        let out = try Posix.pipe()
        opened += [out.write]
        let err: (read: Int32, write: Int32)
        do { err = try Posix.pipe() } catch {
            Posix.close(out.read)
            throw error
        }
        opened += [err.write]
        // The lowest free fds are handed out: this one's number is about how many swarmd holds.
        cgroups.openedForWorker(err.write)

        var plan = SpawnPlan(
            executable: spec.executable,
            argv: WorkerLaunch.argv(spec, sockets: passed),
            environment: WorkerLaunch.environment(slot: r.slot, shared: sharedEnvironment(r, sockets: passed,
                                                  readyFD: ready != nil ? Int32(3 + listenFDs.count) : nil)),
            setListenPID: !listenFDs.isEmpty, cwd: spec.cwd, fds: fds,
            stdin: devNull, stdout: out.write, stderr: err.write)
        if let user = spec.user, let ids = Users.lookupUser(user) {
            let gid = spec.group.flatMap { Users.lookupGroup($0) } ?? ids.gid
            plan.ids = (ids.uid, gid)
        } else if let group = spec.group, let gid = Users.lookupGroup(group) {
            plan.ids = (getuid(), gid)
        }
        plan.noNewPrivileges = spec.noNewPrivileges
        plan.nice = r.nice
        plan.cpu = r.cpu.map(Int32.init)
        plan.limits = spec.limits.compactMap { l in WorkerLaunch.rlimitResource(l.name).map { ($0, l.soft, l.hard) } }
        // swarmd raised its own fd limit; workers get the one it was given, unless their app sets one.
        if let original = originalNoFile, !spec.limits.contains(where: { $0.name == "nofile" }) {
            plan.limits.append((7, original.soft, original.hard))
        }
        let cgroup = cgroups.create(for: r)
        let cgroupDirectory = cgroup?.openDirectory() ?? -1
        defer { if cgroupDirectory >= 0 { Posix.close(cgroupDirectory) } }
        plan.cgroupDirFD = cgroupDirectory
        // Before the spawn: a worker alone on its sockets finds O_NONBLOCK off.
        interception.flags.spawning(r.worker, fds: listenFDs)
        let pid: pid_t
        var notifyFD: Int32?
        do {
            // Without the directory the child joins by cgroup.procs.
            if let cgroup, cgroupDirectory < 0 { try cgroup.openProcsFD() }
            plan.cgroupProcsFD = cgroup?.procsFD ?? -1
            // The loop goes on while the child execs: a failed exec is seen at its reap.
            plan.returnBeforeExec = true
            if interception.wants(spec), let k = kernel as? BindInterceptingKernel {
                plan.interceptBind = true
                let spawned = try k.spawnWorker(plan)
                pid = spawned.pid
                notifyFD = spawned.bindNotifyFD
            } else {
                pid = try kernel.spawn(plan)
            }
        } catch {
            Posix.close(out.read)
            Posix.close(err.read)
            if let ready { Posix.close(ready.read) }
            if let cgroup { cgroups.abandon(cgroup) }
            throw error
        }
        if let cgroup { cgroups.spawned(r.worker, pid: pid, in: cgroup) }
        if let notifyFD { interception.adopt(fd: notifyFD, worker: r.worker, app: spec.name, slot: r.slot, pid: pid) }
        output.watch(fd: out.read, app: spec.name, slot: r.slot, pid: pid, stream: "stdout")
        output.watch(fd: err.read, app: spec.name, slot: r.slot, pid: pid, stream: "stderr")
        if let ready {
            output.watchReadyPipe(ReadyPipe(worker: r.worker, app: spec.name, slot: r.slot, pid: pid, fd: ready.read))
        }
        return pid
    }

    /// Reaps exited children, `reapsPerTurn` at a time: with more waiting, the
    /// rest are reaped on a later iteration, after the other pending sources
    /// (control requests, timers, SIGTERM) had their turn.
    func reapChildren() {
        for _ in 0..<Manager.reapsPerTurn {
            guard let (r, cpu) = kernel.reapWithCPU() else { return }
            let (pid, status): (Int32, SwarmCore.ExitStatus)
            switch r {
            case let .exited(p, code): (pid, status) = (p, .exited(code))
            case let .signaled(p, s, core): (pid, status) = (p, .signaled(s, coreDumped: core))
            }
            if lifecycle.hooks.reaped(pid, status) { continue }
            // An exec health probe: its result goes to the health checker, not the core.
            if health.exec.reaped(pid: pid, status: status) { continue }
            cgroups.reaped(pid: pid, cpuMicroseconds: cpu)
            output.drain(pid: pid)
            var exit = status
            // Taken for every pid (none is left for a reused one); a child that failed exits with 127.
            if let failure = kernel.takeExecFailure(pid: pid), case .exited(127) = status {
                exit = .spawnFailed(Manager.spawnFailureReason(failure))
            }
            recordExit(pid: pid, exit)
            feed(.exited(pid: pid, exit))
        }
        reapContinuation?.trigger()
    }

    /// Performs `.probeListening`: does the worker, or a process it started,
    /// wait for connections on its slot's sockets? Compared by socket
    /// identity, so a worker that moved its fd 3 elsewhere (a dup, an
    /// intercepted bind) or listens in a child is seen.
    func probeListening(_ id: WorkerID, pid: Int32) {
        guard let w = supervisor.workers[id], let spec = supervisor.spec(of: w) else { return }
        // Not exec'd yet: nothing listens, and reading its fds would wait for the exec
        // (in a kill storm 60-80 ms, for a child queued behind thousands of dying ones).
        if kernel.isExecuting(pid: pid) { return }
        var identities = Set<SocketIdentity>()
        for e in sockets[spec.name]?.entries ?? [] {
            // The socket this slot's workers get (bindSlot): the slot's own with reuseport, else the shared one.
            let fd = e.perSlot[w.slot] ?? e.shared
            do { identities.insert(try SocketIdentity.of(fd: fd)) } catch {
                log.debug("Failed to identify socket \(e.spec.name) of \(spec.name)[\(w.slot)]: \(error), ignoring")
            }
        }
        let query = ListeningQuery(pid: pid, sockets: identities, cgroup: cgroups.path(of: id),
                                   execFDs: Set((0..<spec.sockets.count).map { Int32(3 + $0) }))
        let outcome = kernel.listening(query)
        guard let evidence = outcome.evidence else { return }
        log.debug("\(spec.name)[\(w.slot)] is listening: \(evidence)")
        events.append(.ready(pid: pid))
    }
}

extension Manager {
    /// Runs the 1 s sweep only while something needs it: output budgets to
    /// refill, control clients to time out, accepts to resume. An idle swarmd then sleeps until a
    /// deadline the core asked for (or an fd event), not once a second.
    /// Called after every dispatch; the checks are O(1).
    func armSweep() {
        let needed = output.needsRefill || control.needsSweep
        if needed, sweepSource == nil {
            do {
                sweepSource = try loop.addPeriodic(every: 1_000_000_000) { [weak self] in self?.everySecond() }
            } catch {
                log.error("Failed to arm the 1 s sweep: \(error); output budgets and control time limits wait for the next event")
            }
        } else if !needed, let s = sweepSource {
            s.cancel()
            sweepSource = nil
        }
    }
}

/// A worker environment without SWARM_WORKER, and what it was built from.
struct SharedEnvironment {
    var generation: Int
    var spec: AppSpec
    var sockets: [WorkerLaunch.PassedSocket]
    var readyFD: Int32?
    var notifySocket: String
    var entries: [String]
}

extension Manager {
    /// `WorkerLaunch.sharedEnvironment`, built once per app generation (and
    /// again if anything it is made of changes), not per spawn.
    func sharedEnvironment(_ r: SpawnRequest, sockets: [WorkerLaunch.PassedSocket], readyFD: Int32?) -> [String] {
        if let cached = sharedEnvironments[r.app], cached.generation == r.generation, cached.sockets == sockets, cached.spec == r.spec,
           cached.readyFD == readyFD, cached.notifySocket == output.notifyPath {
            return cached.entries
        }
        let home = r.spec.user.flatMap { Users.record(named: $0)?.home }
        let host = WorkerLaunch.Host(environment: ownEnvironment, notifySocket: output.notifyPath, home: home)
        let entries = WorkerLaunch.sharedEnvironment(r.spec, generation: r.generation, sockets: sockets, host: host, readyFD: readyFD)
        sharedEnvironments[r.app] = SharedEnvironment(generation: r.generation, spec: r.spec, sockets: sockets, readyFD: readyFD,
                                                      notifySocket: output.notifyPath, entries: entries)
        return entries
    }
}
