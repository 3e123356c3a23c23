import SwarmCore
import SwarmSystem
// The event loop and the service-manager calls live in SwarmSystemd (swarmctl must not link libsystemd);
// exported here so every file of the daemon sees them as before the split.
@_exported import SwarmSystemd

/// A cgroup per worker, so that nothing a worker starts outlives it: a child
/// that calls setsid, double-forks or changes its process group is still in
/// the worker's cgroup, and a SIGKILL of the worker's group becomes a kill
/// of the whole tree (cgroup.kill). The cgroup also gives the CPU and memory
/// of pre-fork servers (a master and its children). Where no cgroup can be
/// made, workers run as before (a process group each) and status says why.
final class WorkerCgroups {
    let loop: EventLoop
    var report: (NoteLevel, String) -> Void = { _, _ in }
    private(set) var root: CgroupRoot?
    private(set) var unavailable: String?
    private var byWorker: [WorkerID: WorkerCgroup] = [:]
    private var appOf: [ObjectIdentifier: String] = [:]
    private var workerByPid: [Int32: WorkerID] = [:]
    /// Empty cgroups of gone workers, per app, handed to the app's next new
    /// workers: an rmdir and a mkdir per restart were ~0.8 ms of swarmd's CPU
    /// (issue 18). The core asks for a restart's spawn before it reports the old
    /// worker gone, so in a storm each cgroup freed serves the next restart.
    private var spare: [String: [WorkerCgroup]] = [:]
    /// Spare cgroups kept per app: at least this many, and as many as the app
    /// has slots (`slotsOf`), so that a storm's replacements reuse every
    /// cgroup freed. With 64 for all, half the cgroups of a 4,096-worker storm
    /// were removed and made anew, and the kernel workers that release removed
    /// cgroups (at ordinary priority, behind the dying) held the cgroup_mutex
    /// that swarmd's next spawns into a cgroup waited for: 30-190 ms at times.
    static let sparePerApp = 64
    /// The number of slots of an app (set by the Manager).
    var slotsOf: (String) -> Int = { _ in 0 }
    /// Cgroups of gone workers with processes still in them, removed once empty.
    private var draining: [ObjectIdentifier: (cgroup: WorkerCgroup, source: EventLoop.Source)] = [:]

    init(loop: EventLoop) { self.loop = loop }

    /// Finds this swarmd's root; on a fresh start, first kills and removes
    /// what a swarmd that died without cleaning up left in it.
    func setUp(stateDirectory: String, fresh: Bool) {
        switch Cgroups.setUp(instance: Cgroups.instanceName(stateDirectory: stateDirectory)) {
        case let .failure(why):
            unavailable = why.reason
            report(.warning, "\(why); a worker's children are held together by its process group only (a child that leaves it survives the worker)")
        case let .success(root):
            self.root = root
            for note in root.notes { report(.info, "cgroups: \(note)") }
            guard fresh else { return }
            let left = root.cleanUpLeftovers()
            if !left.cgroups.isEmpty {
                report(.notice, "cgroups: a previous swarmd left \(left.cgroups.count) worker cgroup(s) behind; killed \(left.killed.count) process(es) still in them")
            }
            for (name, why) in left.failed { report(.error, "cgroups: Failed to clean up \(root.path)/\(name): \(why), ignoring") }
        }
    }

    /// What status shows.
    var summary: String { root?.path ?? "unavailable: \(unavailable ?? "not set up")" }

    /// A new cgroup for a worker about to be spawned (nil: none, the reason reported).
    func create(for r: SpawnRequest) -> WorkerCgroup? {
        guard let root else { return nil }
        while let cg = spare[r.app]?.popLast() {
            do {
                try cg.reuse()
                return cg
            } catch {
                report(.debug, "Failed to reuse \(cg.path): \(error); making a new cgroup")
                remove(cg)
            }
        }
        do {
            let cg = try root.createWorker(app: r.app, slot: r.slot, worker: r.worker.raw)
            appOf[ObjectIdentifier(cg)] = r.app
            return cg
        } catch {
            report(.warning, "Failed to make a cgroup for \(r.app)[\(r.slot)]: \(error); it runs in a process group only")
            return nil
        }
    }

    /// The worker runs in `cgroup` now.
    func spawned(_ id: WorkerID, pid: Int32, in cgroup: WorkerCgroup) {
        cgroup.closeProcsFD()
        cgroup.spawnedAfterOrphans = orphansReaped
        byWorker[id] = cgroup
        workerByPid[pid] = id
    }

    /// The spawn failed: nothing runs in the new cgroup.
    func abandon(_ cgroup: WorkerCgroup) {
        cgroup.forgetExitedCPU()
        recycle(cgroup)
    }

    /// A re-executed swarmd finds the cgroups of the workers handed over (by
    /// the pid's own cgroup: a reused one is named after its first worker).
    func adopt(_ id: WorkerID, app: String, slot: Int, pid: Int32) {
        guard let root, let cg = root.openWorker(pid: pid) ?? (try? root.openWorker(app: app, slot: slot, worker: id.raw)) else { return }
        appOf[ObjectIdentifier(cg)] = app
        byWorker[id] = cg
        workerByPid[pid] = id
    }

    /// Children of swarmd reaped that were no worker's main process (a
    /// worker's orphans, which the subreaper inherits): their CPU was in some
    /// worker's cgroup, but the rusage of that worker's main process misses it.
    private(set) var orphansReaped: UInt64 = 0

    /// A child of swarmd was reaped, with its CPU time (wait4's rusage) if
    /// known: a worker's main process hands it to its cgroup, so a reuse
    /// knows what the cgroup's counter holds without reading cpu.stat.
    /// The pid names the worker no more: what is left in its cgroup is
    /// `gone`'s to kill, which follows in the same batch of the core's actions
    /// (the exit's group SIGKILL does not reach `killTree`, so the cgroup is
    /// looked at once per exit, and an empty one is never written cgroup.kill).
    func reaped(pid: Int32, cpuMicroseconds: UInt64?) {
        guard let cg = workerByPid.removeValue(forKey: pid).flatMap({ byWorker[$0] }) else {
            orphansReaped &+= 1
            return
        }
        cg.mainExited(cpuMicroseconds: cpuMicroseconds, orphansSinceSpawn: orphansReaped != cg.spawnedAfterOrphans)
    }

    /// SIGKILL to a live worker's process group reaches its whole tree.
    func killTree(ofPid pid: Int32) {
        guard let id = workerByPid[pid], let cg = byWorker[id] else { return }
        do { try cg.kill() } catch {
            report(.warning, "Failed to kill \(cg.path): \(error), ignoring")
        }
    }

    /// The worker's cgroup directory (the listening probe reads its cgroup.procs), if it has one.
    func path(of id: WorkerID) -> String? { byWorker[id]?.path }

    /// What the worker's tree uses. The files read stay open for the next
    /// status (a third of the cost of opening them again) while the workers
    /// holding them are within `usageFilesBudget`; beyond it they are opened per read.
    func usage(ofPid pid: Int32) -> CgroupUsage? {
        guard let cg = workerByPid[pid].flatMap({ byWorker[$0] }) else { return nil }
        let held = cg.holdsUsageFiles
        let usage = cg.usage(keepingFilesOpen: held || (mayKeepMoreUsageFiles && usageFilesHeld < usageFilesBudget), mainPid: pid)
        if !held && cg.holdsUsageFiles { usageFilesHeld += 1 }
        return usage
    }

    /// Workers whose usage files are held open now.
    private(set) var usageFilesHeld = 0
    /// At most a quarter of the fd limit goes to usage files (3 per worker):
    /// the workers' pipes and sockets need the rest. Read once, after swarmd
    /// raised its soft limit.
    lazy var usageFilesBudget: Int = fileLimit / 12
    /// RLIMIT_NOFILE, read once after swarmd raised its soft limit.
    lazy var fileLimit: Int = Int(clamping: Posix.fileLimit() ?? 1024)

    /// Whether this status round may open usage files to keep: only while
    /// fewer than half the fd limit are open. 4,096 workers with a socket each
    /// hold 4 fds apiece (two pipes, the socket, the bind interceptor's
    /// listener); kept usage files on top of that ran a 20,000 limit out, and
    /// the control socket's next accept failed with EMFILE.
    private(set) var mayKeepMoreUsageFiles = true

    /// Called before a status reads every worker's usage.
    func beginUsageRound() {
        mayKeepMoreUsageFiles = Posix.lowestFreeDescriptor() < fileLimit / 2
    }

    /// A new fd numbered `fd` was just opened for a worker: past three quarters
    /// of the limit, the kept usage files make room.
    func openedForWorker(_ fd: Int32) {
        if Int(fd) >= fileLimit / 4 * 3 { releaseAllUsageFiles() }
    }

    /// Workers need the fds more: every kept usage file is closed (status
    /// reads them per request until the next round finds room again).
    func releaseAllUsageFiles() {
        guard usageFilesHeld > 0 else { return }
        for cg in byWorker.values { releaseUsageFiles(cg) }
        mayKeepMoreUsageFiles = false
    }

    private func releaseUsageFiles(_ cg: WorkerCgroup) {
        guard cg.holdsUsageFiles else { return }
        cg.closeUsageFiles()
        usageFilesHeld -= 1
    }

    /// The worker is gone: whatever is left in its cgroup is killed, and the
    /// cgroup removed once empty (cgroup.events says so).
    func gone(_ id: WorkerID, pid: Int32?) {
        if let pid { workerByPid[pid] = nil }
        guard let cg = byWorker.removeValue(forKey: id) else { return }
        releaseUsageFiles(cg)
        let killed: Bool
        do { killed = try cg.killIfPopulated() != nil } catch { killed = true }  // a failed kill still waits for empty
        guard killed else {
            recycle(cg)
            return
        }
        cg.forgetExitedCPU()
        let key = ObjectIdentifier(cg)
        do {
            // An fd that failed to open is reported as that, not handed to the loop as -1.
            let source = try loop.addReader(try cg.openedEventsFD(), events: IOEvents.priority) { [weak self] _ in self?.check(key) }
            draining[key] = (cg, source)
        } catch {
            report(.warning, "Failed to watch \(cg.path): \(error); removing it later")
        }
    }

    private func check(_ key: ObjectIdentifier) {
        guard let (cg, source) = draining[key], (try? cg.populated()) == false else { return }
        source.cancel()
        draining[key] = nil
        recycle(cg)
    }

    /// An empty cgroup: kept for the app's next worker, or removed.
    private func recycle(_ cg: WorkerCgroup) {
        guard let app = appOf[ObjectIdentifier(cg)],
              (spare[app]?.count ?? 0) < max(WorkerCgroups.sparePerApp, slotsOf(app)) else { return remove(cg) }
        cg.closeProcsFD()
        spare[app, default: []].append(cg)
    }

    private func remove(_ cg: WorkerCgroup) {
        appOf[ObjectIdentifier(cg)] = nil
        do { try cg.remove() } catch {
            report(.debug, "Failed to remove \(cg.path): \(error), ignoring")
        }
    }

    /// The app is gone: its spare cgroups go too.
    func forget(app: String) {
        for cg in spare.removeValue(forKey: app) ?? [] { remove(cg) }
    }

    /// At exit: every worker is gone; the root goes if nothing is left in it.
    func removeAll() {
        for (_, d) in draining { d.source.cancel() }
        draining = [:]
        for app in Array(spare.keys) { forget(app: app) }
        root?.removeIfEmpty()
    }
}
