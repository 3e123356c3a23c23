import Foundation
import Glibc
import SwarmSystem
import Testing

/// A root of its own per test (instance "test-PID-N"): removed with
/// everything in it when the test ends, passed or failed.
func withTestRoot(_ body: (CgroupRoot, Scratch) throws -> Void) throws {
    let instance = "test-\(getpid())-\(counter.next())"
    let root: CgroupRoot
    switch Cgroups.setUp(instance: instance) {
    case .success(let r): root = r
    case .failure(let why): throw KernelTestError("Cgroups.setUp(instance: \(instance)) failed: \(why)")
    }
    let scratch = Scratch("cg")
    defer {
        let left = root.cleanUpLeftovers(timeoutNanoseconds: 5_000_000_000)
        root.removeIfEmpty()
        scratch.cleanUp()
        if !left.failed.isEmpty { Issue.record("clean-up of \(root.path) left \(left.failed)") }
        // The shared base (swarm-UID) goes too when no other test process uses it.
        if let slash = root.path.lastIndex(of: "/") { _ = rmdir(String(root.path[..<slash])) }
    }
    try body(root, scratch)
}

func subdirectories(_ path: String) -> [String] {
    ((try? FileManager.default.contentsOfDirectory(atPath: path)) ?? []).filter {
        var isDir: ObjCBool = false
        return FileManager.default.fileExists(atPath: path + "/" + $0, isDirectory: &isDir) && isDir.boolValue
    }
}

/// A worker whose descendants leave its process group and session: a
/// setsid + double-forked grandchild (its parent exits), a setpgid child,
/// and `setsid sh -c 'sleep 1000 &'`. Each survivor writes its pid to a file
/// in argv[1] (named after its role), so a test knows exactly who must be in
/// the cgroup: the worker and these four.
let escapingWorker = """
import os, sys, time
d = sys.argv[1]
def mark(name):
    with open(d + "/" + name + ".tmp", "w") as f: f.write(str(os.getpid()))
    os.rename(d + "/" + name + ".tmp", d + "/" + name)
if os.fork() == 0:
    os.setsid()
    mark("session")
    if os.fork() == 0:
        if os.fork() == 0:
            mark("grandchild")
            time.sleep(1000)
        os._exit(0)
    time.sleep(1000)
    os._exit(0)
if os.fork() == 0:
    os.setpgid(0, 0)
    mark("group")
    time.sleep(1000)
    os._exit(0)
os.system("setsid -w sh -c 'sleep 1000 & echo $! > %s/sleep.tmp; mv %s/sleep.tmp %s/sleep'" % (d, d, d))
time.sleep(1000)
"""

/// Starts the escaping worker in `cg`, in a directory of its own; returns
/// its 5 processes once each has started and the cgroup holds exactly them.
func startEscapingWorker(_ cg: WorkerCgroup, _ scratch: Scratch) throws -> (Worker, [Identity]) {
    let dir = scratch.file("escape-\(counter.next())")
    try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: false)
    let w = try Worker([python, "-c", escapingWorker, dir], scratch: scratch, cgroup: cg)
    var expected: Set<pid_t> = []
    try waitFor("the worker's 4 escapes started and alone in \(cg.path) (output: \(w.output))") {
        let pids = ["session", "grandchild", "group", "sleep"].compactMap { name -> pid_t? in
            guard let text = try? String(contentsOfFile: dir + "/" + name, encoding: .utf8) else { return nil }
            return pid_t(text.trimmingCharacters(in: .whitespacesAndNewlines))
        }
        guard pids.count == 4 else { return false }
        expected = Set(pids + [w.pid])
        // `sleep` may still be the shell that forked it until it execs: wait for its name.
        let sleepComm = (try? String(contentsOfFile: "/proc/\(pids[3])/comm", encoding: .utf8)) ?? ""
        return Set(cg.members()) == expected && sleepComm.hasPrefix("sleep")
    }
    return (w, expected.compactMap { Identity(pid: $0) })
}

@Suite("Cgroups", .serialized)
struct CgroupsTests {
    @Test func parsesOwnCgroupAndValidatesNames() throws {
        #expect(Cgroups.parseOwnCgroup("12:pids:/x\n0::/system.slice/swarmd.service\n") == "/system.slice/swarmd.service")
        #expect(Cgroups.parseOwnCgroup("0::/\n") == "/")
        #expect(Cgroups.parseOwnCgroup("0::/gone (deleted)\n") == "/gone")
        #expect(Cgroups.parseOwnCgroup("1:name=systemd:/\n") == nil)
        for bad in ["", ".", "..", "a/b", "../x", "cgroup.procs", "memory.max", "line\nbreak"] {
            #expect(throws: SystemError.self, "\(bad.debugDescription) must be refused") { try Cgroups.validateName(bad) }
        }
        for good in ["web", "api-2", "my.app", ".hidden-app", "0.17"] { try Cgroups.validateName(good) }
        let a = Cgroups.instanceName(stateDirectory: "/var/lib/swarm")
        #expect(a == Cgroups.instanceName(stateDirectory: "/var/lib/swarm"))
        #expect(a != Cgroups.instanceName(stateDirectory: "/var/lib/swarm2"))
        try Cgroups.validateName(a)
    }

    @Test(.enabled(if: isRoot, "\(rootOnly)"))
    func findsTheUnifiedHierarchyAndItsOwnCgroup() throws {
        let h = try Cgroups.hierarchy().get()
        #expect(["/sys/fs/cgroup", "/sys/fs/cgroup/unified"].contains(h.mount))
        #expect(FileManager.default.fileExists(atPath: h.directory(h.own) + "/cgroup.procs"))
        // Not String(contentsOfFile:): it stops early on a large kernfs file.
        let procs = String(decoding: try Posix.readFile(h.directory(h.own) + "/cgroup.procs"), as: UTF8.self)
        #expect(procs.split(separator: "\n").contains(Substring("\(getpid())")), "our pid must be in \(h.directory(h.own))/cgroup.procs")
    }

    @Test(.enabled(if: isRoot, "\(rootOnly)"))
    func anOwnCgroupThatIsNotWritableIsUnavailableWithTheReason() throws {
        let h = try Cgroups.hierarchy().get()
        let result = Cgroups.setUp(instance: "test-\(getpid())-x", hierarchy: CgroupHierarchy(mount: h.mount, own: "/no-such-cgroup-\(getpid())"))
        guard case .failure(let why) = result else { Issue.record("expected unavailable, got \(result)"); return }
        #expect(why.description.contains("not writable"), "\(why)")
        #expect(why.description.contains("Delegate=yes"), "\(why)")
    }

    @Test("a child is created in a fresh cgroup (clone3); in a cgroup once killed it joins by cgroup.procs instead, and lives",
          .enabled(if: isRoot, "\(rootOnly)"))
    func aChildIsCreatedInAFreshCgroupAndJoinsAKilledOne() throws {
        try withTestRoot { root, scratch in
            let cg = try root.createWorker(app: "web", slot: 0, worker: 1)
            #expect(cg.neverKilled)
            let dir = cg.openDirectory()
            #expect(dir >= 0, "a fresh cgroup's directory opens")
            if dir >= 0 { close(dir) }
            // The bind interceptor's handshake too: the child must get as far as exec.
            let first = try Worker(["/bin/sleep", "1000"], scratch: scratch, cgroup: cg, createdInCgroup: true, interceptBind: true)
            defer { first.stop() }
            let own = try String(contentsOfFile: "/proc/\(first.pid)/cgroup", encoding: .utf8)
            #expect(own.hasSuffix("/web/0.1\n"), "created in its cgroup: \(own)")
            try cg.kill()
            #expect(cg.waitUntilEmpty(timeoutNanoseconds: 5_000_000_000))
            first.reap()
            #expect(!cg.neverKilled)
            #expect(cg.openDirectory() == -1, "a killed cgroup is joined, not created in (Linux SIGKILLs such children)")
            try cg.reuse()
            let second = try Worker(["/bin/sleep", "1000"], scratch: scratch, cgroup: cg, createdInCgroup: true)
            defer { second.stop() }
            try waitFor("the second worker to be in its cgroup") {
                (try? String(contentsOfFile: "/proc/\(second.pid)/cgroup", encoding: .utf8))?.hasSuffix("/web/0.1\n") == true
            }
            #expect(!second.reap(), "the worker in the once-killed cgroup lives")
            try cg.kill()
            #expect(cg.waitUntilEmpty(timeoutNanoseconds: 5_000_000_000))
            second.reap()
            try cg.remove()
        }
    }

    @Test("a cgroup whose worker died on its own is not written cgroup.kill and is reused unkilled: the next child is created in it (clone3) and lives",
          .enabled(if: isRoot, "\(rootOnly)"))
    func aReusedCgroupThatWasNeverKilledCreatesItsNextChildInIt() throws {
        try withTestRoot { root, scratch in
            let cg = try root.createWorker(app: "web", slot: 0, worker: 1)
            let first = try Worker(["/bin/sleep", "1000"], scratch: scratch, cgroup: cg, createdInCgroup: true)
            defer { first.stop() }
            _ = kill(first.pid, SIGKILL)   // as in a kill -9 storm: not swarmd's kill()
            try waitFor("the first worker to be reaped") { first.reap() }
            #expect(try cg.populated() == false, "the reaped worker left its cgroup empty")
            // What swarmd does after every exit: the empty cgroup gets no cgroup.kill, so it stays clone3-able.
            #expect(try cg.killIfPopulated() == nil, "nothing to kill in an empty cgroup")
            #expect(cg.neverKilled, "an empty cgroup is not written cgroup.kill")
            try cg.reuse()
            #expect(cg.neverKilled, "reuse alone does not count as a kill")
            let dir = cg.openDirectory()
            #expect(dir >= 0, "the reused, never-killed cgroup opens for clone3")
            if dir >= 0 { close(dir) }
            let second = try Worker(["/bin/sleep", "1000"], scratch: scratch, cgroup: cg, createdInCgroup: true)
            defer { second.stop() }
            let own = try String(contentsOfFile: "/proc/\(second.pid)/cgroup", encoding: .utf8)
            #expect(own.hasSuffix("/web/0.1\n"), "created in its cgroup: \(own)")
            // Linux SIGKILLs a clone3 child of a once-killed cgroup before it can exec: this one gets to sleep.
            try waitFor("the child created in the reused cgroup to exec sleep") {
                (try? String(contentsOfFile: "/proc/\(second.pid)/comm", encoding: .utf8)) == "sleep\n"
            }
            #expect(!second.reap(), "the child created in the reused cgroup lives")
            #expect(try cg.killIfPopulated() != nil, "a populated cgroup is killed")
            #expect(!cg.neverKilled)
            #expect(cg.waitUntilEmpty(timeoutNanoseconds: 5_000_000_000))
            second.reap()
            try cg.reuse()
            #expect(!cg.neverKilled, "once killed, always joined by cgroup.procs")
            #expect(cg.openDirectory() == -1)
            try cg.remove()
        }
    }

    @Test("a never-killed spare cgroup removed from outside is refused by reuse (swarmd then makes a fresh one) instead of failing every spawn it is handed to",
          .enabled(if: isRoot, "\(rootOnly)"))
    func aSpareRemovedFromOutsideIsRefusedByReuse() throws {
        try withTestRoot { root, _ in
            let cg = try root.createWorker(app: "web", slot: 0, worker: 7)
            #expect(cg.neverKilled)
            try cg.reuse()
            #expect(rmdir(cg.path) == 0)
            do {
                try cg.reuse()
                Issue.record("reuse of a removed cgroup succeeded")
            } catch let e as SystemError {
                #expect(e.errno == ENOENT && e.subject == cg.path, "\(e)")
            }
            cg.close()
        }
    }

    @Test("a reused cgroup's CPU baseline from its last worker's rusage matches cpu.stat: the next worker starts near 0, not at the last one's CPU",
          .enabled(if: isRoot, "\(rootOnly)"))
    func aReusedCgroupsBaselineFromRusageMatchesCpuStat() throws {
        try withTestRoot { root, scratch in
            let cg = try root.createWorker(app: "web", slot: 0, worker: 1)
            // About a quarter of a second of CPU, then exit: a worker that did some work.
            let busy = try Worker(["/bin/sh", "-c", "i=0; while [ $i -lt 300000 ]; do i=$((i+1)); done"],
                                  scratch: scratch, cgroup: cg, createdInCgroup: true)
            var status: Int32 = 0
            var usage = rusage()
            while wait4(busy.pid, &status, 0, &usage) < 0 && errno == EINTR {}
            busy.markReaped()
            let fromRusage = Posix.cpuMicroseconds(of: usage)
            let fromCgroup = cg.usage().cpuMicroseconds
            #expect(fromRusage > 50_000, "the worker burned CPU: \(fromRusage) µs")
            let slack = max(UInt64(5_000), fromCgroup / 50)
            #expect(fromRusage + slack >= fromCgroup && fromCgroup + slack >= fromRusage,
                    "rusage \(fromRusage) µs against cpu.stat \(fromCgroup) µs")
            cg.mainExited(cpuMicroseconds: fromRusage, orphansSinceSpawn: false)
            try cg.reuse()
            #expect(cg.cpuSinceBaseline == nil, "used up by the reuse")
            let next = try Worker(["/bin/sleep", "1000"], scratch: scratch, cgroup: cg, createdInCgroup: true)
            defer { next.stop() }
            #expect(cg.usage().cpuMicroseconds < slack + 20_000, "the new worker's CPU starts near 0: \(cg.usage().cpuMicroseconds) µs")
            // Orphans reaped meanwhile (their CPU may be here): the baseline is read from cpu.stat.
            next.stop()
            cg.mainExited(cpuMicroseconds: 0, orphansSinceSpawn: true)
            #expect(cg.cpuSinceBaseline == nil)
            try cg.reuse()
            #expect(cg.usage().cpuMicroseconds < 20_000)
            try cg.remove()
        }
    }

    @Test(.enabled(if: isRoot, "\(rootOnly)"))
    func aDelegatedCgroupHoldsTheWorkersBelowItAndSurvivesTheSupervisorLeaf() throws {
        // A cgroup standing in for systemd's Delegate=yes service cgroup (no
        // controllers are offered here, so swarmd does not need to leave it).
        let h = try Cgroups.hierarchy().get()
        let delegated = "/swarm-delegated-test-\(getpid())-\(counter.next())"
        #expect(mkdir(h.directory(delegated), 0o755) == 0)
        defer {
            for dir in [delegated + "/swarm/i-deleg/web/0.1", delegated + "/swarm/i-deleg/web", delegated + "/swarm/i-deleg",
                        delegated + "/swarm", delegated + "/supervisor", delegated] { _ = rmdir(h.directory(dir)) }
            #expect(access(h.directory(delegated), F_OK) != 0, "test cgroup \(delegated) removed")
        }
        let root = try Cgroups.setUp(instance: "i-deleg", hierarchy: CgroupHierarchy(mount: h.mount, own: delegated)).get()
        #expect(root.path == h.directory(delegated) + "/swarm/i-deleg")
        // After a re-exec swarmd may sit in the leaf it moved itself into: same root.
        let again = try Cgroups.setUp(instance: "i-deleg", hierarchy: CgroupHierarchy(mount: h.mount, own: delegated + "/supervisor")).get()
        #expect(again.path == root.path)
        let scratch = Scratch("deleg")
        defer { scratch.cleanUp() }
        let cg = try root.createWorker(app: "web", slot: 0, worker: 1)
        let w = try Worker(["/bin/sleep", "1000"], scratch: scratch, cgroup: cg)
        defer { w.stop() }
        let own = try String(contentsOfFile: "/proc/\(w.pid)/cgroup", encoding: .utf8)
        #expect(own.contains("0::\(delegated)/swarm/i-deleg/web/0.1\n"), "\(own)")
        try cg.kill()
        #expect(cg.waitUntilEmpty(timeoutNanoseconds: 5_000_000_000))
        w.reap()
        try cg.remove()
    }

    @Test(.enabled(if: isRoot, "\(rootOnly)"))
    func killsEveryEscapedProcessAndReportsEmpty() throws {
        try withTestRoot { root, scratch in try killScenario(root, scratch, useCgroupKill: true) }
    }

    @Test(.enabled(if: isRoot, "\(rootOnly)"))
    func theSignalFallbackKillsEveryEscapedProcessToo() throws {
        try withTestRoot { root, scratch in try killScenario(root, scratch, useCgroupKill: false) }
    }

    func killScenario(_ root: CgroupRoot, _ scratch: Scratch, useCgroupKill: Bool) throws {
        let cg = try root.createWorker(app: "web", slot: 0, worker: 1)
        #expect(cg.path == root.path + "/web/0.1")
        let (w, identities) = try startEscapingWorker(cg, scratch)
        defer { w.stop() }
        #expect(cg.procsFD == -1, "closed once the worker is spawned")
        #expect(try cg.populated())
        let members = cg.members()
        #expect(members.contains(w.pid))
        let outside = members.filter { processGroup($0) != processGroup(w.pid) }
        #expect(outside.count == 4, "the escapes left the worker's process group: \(members.map { ($0, processGroup($0) ?? -1) })")
        #expect(identities.count == 5)

        let method = useCgroupKill ? try cg.kill() : try cg.killBySignals()
        if useCgroupKill {
            #expect(method == .cgroupKill)
        } else if case .signals(let n) = method {
            #expect(n >= 5, "every member signalled: \(n)")
        } else {
            Issue.record("fallback used \(method)")
        }
        #expect(cg.waitUntilEmpty(timeoutNanoseconds: 5_000_000_000), "cgroup.events still populated: \(cg.members())")
        #expect(try cg.populated() == false)
        try waitFor("every process of the cgroup dead: \(identities.filter { !$0.isDead })", seconds: 5) {
            w.reap()
            return identities.allSatisfy { $0.isDead }
        }
        try cg.remove()
        #expect(!FileManager.default.fileExists(atPath: cg.path))
        #expect(!FileManager.default.fileExists(atPath: root.path + "/web"), "the app directory goes with its last worker")
    }

    @Test(.enabled(if: isRoot, "\(rootOnly)"))
    func theEventsFDSignalsEmptyThroughPoll() throws {
        try withTestRoot { root, scratch in
            let cg = try root.createWorker(app: "poll", slot: 3, worker: 9)
            let w = try Worker(["/bin/sh", "-c", "setsid sleep 1000 & exec sleep 1000"], scratch: scratch, cgroup: cg)
            defer { w.stop() }
            try waitFor("2 processes in \(cg.path)") { cg.members().count == 2 }
            try cg.kill()
            // What the event loop does: EPOLLPRI on eventsFD, then read the value.
            let deadline = monotonic() + 5
            var sawPriority = false
            while monotonic() < deadline {
                var p = pollfd(fd: cg.eventsFD, events: Int16(POLLPRI), revents: 0)
                if poll(&p, 1, 100) > 0, p.revents & Int16(POLLPRI) != 0 {
                    sawPriority = true
                    if try !cg.populated() { break }
                }
            }
            #expect(sawPriority, "no POLLPRI on cgroup.events within 5 s")
            #expect(try cg.populated() == false)
            w.reap()
            try cg.remove()
        }
    }

    @Test(.enabled(if: isRoot, "\(rootOnly)"))
    func aNewSwarmdKillsAndRemovesTheLeftoversOfAKilledOne() throws {
        try withTestRoot { root, scratch in
            // Workers of a swarmd that then died: nothing killed them, their escapes live on.
            var workers: [Worker] = []
            defer { workers.forEach { $0.stop() } }
            var identities: [Identity] = []
            for (app, slot) in [("web", 0), ("web", 1), ("queue", 0)] {
                let cg = try root.createWorker(app: app, slot: slot, worker: UInt64(10 + slot))
                let (w, ids) = try startEscapingWorker(cg, scratch)
                workers.append(w)
                identities += ids
                cg.close()
            }
            #expect(identities.count == 15)

            // The next swarmd on the same state dir: same instance, same root.
            let instance = String(root.path.split(separator: "/").last!)
            let again = try Cgroups.setUp(instance: instance).get()
            #expect(again.path == root.path)
            #expect(Set(again.workerCgroups()) == ["web/0.10", "web/1.11", "queue/0.10"])
            let report = again.cleanUpLeftovers(timeoutNanoseconds: 5_000_000_000)
            #expect(report.failed.isEmpty, "\(report.failed)")
            #expect(Set(report.cgroups) == ["web/0.10", "web/1.11", "queue/0.10"])
            #expect(Set(report.killed) == Set(identities.map(\.pid)))
            #expect(again.workerCgroups().isEmpty)
            #expect(subdirectories(root.path).isEmpty, "app directories removed too")
            try waitFor("every leftover process dead: \(identities.filter { !$0.isDead })", seconds: 5) {
                workers.forEach { $0.reap() }
                return identities.allSatisfy { $0.isDead }
            }
        }
    }

    @Test(.enabled(if: isRoot, "\(rootOnly)"))
    func aLeftoverWithTheSameNameIsReplacedNotReused() throws {
        try withTestRoot { root, scratch in
            let first = try root.createWorker(app: "web", slot: 0, worker: 1)
            let w = try Worker(["/bin/sh", "-c", "setsid sleep 1000 & exec sleep 1000"], scratch: scratch, cgroup: first)
            defer { w.stop() }
            try waitFor("2 processes in \(first.path)") { first.members().count == 2 }
            let identities = first.members().compactMap { Identity(pid: $0) }
            let second = try root.createWorker(app: "web", slot: 0, worker: 1)
            #expect(second.members().isEmpty)
            try waitFor("the old occupants dead") { w.reap(); return identities.allSatisfy { $0.isDead } }
            try second.remove()
        }
    }

    @Test(.enabled(if: isRoot, "\(rootOnly)"))
    func cpuAndMemoryCoverTheWholeTree() throws {
        // A pre-fork server in miniature: a master and 3 workers, each worker
        // burning 0.3 s of CPU and holding 40 MB; the master does neither.
        let script = """
        import os, sys, time
        for i in range(3):
            if os.fork() == 0:
                block = bytearray(40 * 1024 * 1024)
                for j in range(0, len(block), 4096): block[j] = 1
                while time.process_time() < 0.3: pass
                open(sys.argv[1] + "/ready-%d" % i, "w").close()
                time.sleep(1000)
        time.sleep(1000)
        """
        try withTestRoot { root, scratch in
            let cg = try root.createWorker(app: "prefork", slot: 0, worker: 1)
            let w = try Worker([python, "-c", script, scratch.path], scratch: scratch, cgroup: cg)
            defer { w.stop() }
            try waitFor("3 workers ready (output: \(w.output))", seconds: 30) {
                (0..<3).allSatisfy { FileManager.default.fileExists(atPath: scratch.file("ready-\($0)")) }
            }
            let usage = cg.usage()
            #expect(usage.processes == 4)
            #expect(usage.cpuMicroseconds >= 900_000, "3 × 0.3 s of CPU at least: \(usage)")
            #expect(usage.memoryBytes >= 3 * 40 * 1024 * 1024, "3 × 40 MB at least: \(usage)")
            if !root.controllers.contains("memory") { #expect(usage.memorySource == .residentSum) }
            // The master alone, what /proc of the main pid shows, is a small part of it.
            let master = try #require(ProcFS.usage(pid: w.pid))
            #expect(master.rss * 3 < usage.memoryBytes, "master \(master.rss) B vs tree \(usage.memoryBytes) B")
            #expect(master.cpuTicks * 1_000_000 / ProcFS.clockTicks < 300_000, "the master itself burnt little CPU")
            try cg.kill()
            #expect(cg.waitUntilEmpty(timeoutNanoseconds: 5_000_000_000))
            w.reap()
            try cg.remove()
        }
    }

    @Test(.enabled(if: isRoot, "\(rootOnly)"))
    func usageThroughKeptFilesFollowsTheTreeAndClosesThem() throws {
        // The master waits for "go", then forks a child that holds 40 MB and
        // burns 0.3 s of CPU: what the kept fds read must change with the tree.
        let script = """
        import os, sys, time
        while not os.path.exists(sys.argv[1] + "/go"): time.sleep(0.01)
        if os.fork() == 0:
            block = bytearray(40 * 1024 * 1024)
            for j in range(0, len(block), 4096): block[j] = 1
            while time.process_time() < 0.3: pass
            open(sys.argv[1] + "/ready", "w").close()
            time.sleep(1000)
        time.sleep(1000)
        """
        // Only this cgroup's and this worker's files: other tests open fds meanwhile.
        func openUsageFiles(_ cg: WorkerCgroup, _ pid: pid_t) -> Int {
            let fds = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/fd")) ?? []
            return fds.filter { fd in
                let target = (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/fd/\(fd)")) ?? ""
                return target.hasPrefix(cg.path + "/") || target == "/proc/\(pid)/statm"
            }.count
        }
        try withTestRoot { root, scratch in
            let cg = try root.createWorker(app: "kept", slot: 0, worker: 1)
            let w = try Worker([python, "-c", script, scratch.path], scratch: scratch, cgroup: cg)
            defer { w.stop() }
            try waitFor("the master in \(cg.path)") { cg.members() == [w.pid] }
            #expect(openUsageFiles(cg, w.pid) == 0)
            let alone = cg.usage(keepingFilesOpen: true, mainPid: w.pid)
            #expect(cg.holdsUsageFiles)
            #expect(openUsageFiles(cg, w.pid) >= 2, "cpu.stat and statm or memory.current stay open")
            if !root.controllers.contains("memory") { #expect(alone.processes == 1) }
            #expect(alone.memoryBytes > 0)
            FileManager.default.createFile(atPath: scratch.file("go"), contents: nil)
            try waitFor("the child ready (output: \(w.output))", seconds: 30) { FileManager.default.fileExists(atPath: scratch.file("ready")) }
            let kept = cg.usage(keepingFilesOpen: true, mainPid: w.pid)
            let fresh = cg.usage()
            if !root.controllers.contains("memory") { #expect(kept.processes == 2 && fresh.processes == 2) }
            #expect(kept.cpuMicroseconds >= 300_000, "the child's 0.3 s of CPU: \(kept)")
            #expect(kept.memoryBytes >= alone.memoryBytes + 40 * 1024 * 1024, "the child's 40 MB: \(alone) then \(kept)")
            #expect(kept.cpuMicroseconds <= fresh.cpuMicroseconds, "a later fresh read sees at least as much CPU")
            #expect(abs(kept.memoryBytes - fresh.memoryBytes) < 4 * 1024 * 1024, "kept \(kept) vs fresh \(fresh)")
            cg.closeUsageFiles()
            #expect(!cg.holdsUsageFiles)
            #expect(openUsageFiles(cg, w.pid) == 0, "every usage file closed")
            try cg.kill()
            #expect(cg.waitUntilEmpty(timeoutNanoseconds: 5_000_000_000))
            w.reap()
            try cg.remove()
        }
    }
}

@Suite("Cgroups: spawn")
struct CgroupSpawnTests {
    @Test(.enabled(if: isRoot, "\(rootOnly)"))
    func aCgroupTheChildCannotJoinFailsTheSpawnNamingTheStep() throws {
        try withTestRoot { root, scratch in
            let cg = try root.createWorker(app: "gone", slot: 0, worker: 1)
            let procs = try cg.openProcsFD()
            // Removed before the spawn: the write in the child fails (ENODEV), the spawn reports it.
            _ = rmdir(cg.path)
            let devNull = open("/dev/null", O_RDWR | O_CLOEXEC)
            defer { close(devNull) }
            var plan = SpawnPlan(executable: "/bin/true", argv: ["/bin/true"], environment: [], setListenPID: false, cwd: nil,
                                 fds: [], stdin: devNull, stdout: devNull, stderr: devNull)
            plan.cgroupProcsFD = procs
            do {
                let pid = try Spawner.spawn(plan)
                var status: Int32 = 0
                waitpid(pid, &status, 0)
                Issue.record("spawn into a removed cgroup succeeded")
            } catch let e as SpawnError {
                #expect(e.step.contains("cgroup"), "\(e)")
                #expect(e.errno != 0)
            }
            cg.close()
            _ = scratch
        }
    }

    /// Spawns /bin/sleep with only the cgroup's directory in the plan (no
    /// cgroup.procs fd), as swarmd does for a fresh cgroup.
    func spawnByDirectory(_ dirFD: Int32, joinOnly: Bool = false) throws -> pid_t {
        let devNull = open("/dev/null", O_RDWR | O_CLOEXEC)
        defer { close(devNull) }
        var plan = SpawnPlan(executable: "/bin/sleep", argv: ["/bin/sleep", "30"], environment: [], setListenPID: false, cwd: nil,
                             fds: [], stdin: devNull, stdout: devNull, stderr: devNull)
        plan.cgroupDirFD = dirFD
        plan.joinCgroupOnly = joinOnly
        return try Spawner.spawn(plan)
    }

    func stop(_ pid: pid_t) {
        kill(pid, SIGKILL)
        var status: Int32 = 0
        waitpid(pid, &status, 0)
    }

    @Test("a fresh cgroup is made with no file opened, and its child is created in it through the directory alone",
          .enabled(if: isRoot, "\(rootOnly)"))
    func aFreshCgroupsChildNeedsOnlyTheDirectory() throws {
        try withTestRoot { root, _ in
            let cg = try root.createWorker(app: "web", slot: 0, worker: 1)
            defer { cg.close() }
            #expect(cg.procsFD == -1, "cgroup.procs is opened only for a child that joins")
            let dir = cg.openDirectory()
            #expect(dir >= 0)
            defer { close(dir) }
            let pid = try spawnByDirectory(dir)
            defer { stop(pid) }
            #expect(cg.members() == [pid])
        }
    }

    @Test("where clone3 cannot create the child in its cgroup, the child joins it by the directory's cgroup.procs",
          .enabled(if: isRoot, "\(rootOnly)"))
    func withoutClone3TheChildJoinsByTheDirectorysProcsFile() throws {
        try withTestRoot { root, _ in
            let cg = try root.createWorker(app: "web", slot: 0, worker: 2)
            defer { cg.close() }
            let dir = cg.openDirectory()
            defer { close(dir) }
            let pid = try spawnByDirectory(dir, joinOnly: true)
            defer { stop(pid) }
            #expect(cg.members() == [pid])
        }
    }

    @Test("a spawn that can get into its cgroup neither by clone3 nor by cgroup.procs fails, naming the step, instead of running outside it")
    func aSpawnThatCannotEnterItsCgroupFailsInsteadOfRunningOutside() throws {
        let scratch = Scratch("plain-dir")
        defer { _ = rmdir(scratch.path) }
        // A plain directory: clone3 refuses it as a cgroup, and it has no cgroup.procs to join by.
        let dir = open(scratch.path, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        #expect(dir >= 0)
        defer { close(dir) }
        do {
            let pid = try spawnByDirectory(dir)
            stop(pid)
            Issue.record("spawned pid \(pid) outside any cgroup")
        } catch let e as SpawnError {
            #expect(e.step.contains("cgroup"), "\(e)")
            #expect(e.errno == ENOENT, "\(e)")
        }
    }

    @Test("a worker cgroup is made again in an app directory that was removed when it emptied (the app's directory fd gone stale)",
          .enabled(if: isRoot, "\(rootOnly)"))
    func anAppDirectoryRemovedWhenItEmptiedIsMadeAgain() throws {
        try withTestRoot { root, _ in
            let first = try root.createWorker(app: "api", slot: 0, worker: 1)
            first.close()
            #expect(rmdir(first.path) == 0)
            root.removeAppIfEmpty("api")
            #expect(access(root.path + "/api", F_OK) != 0)
            let second = try root.createWorker(app: "api", slot: 0, worker: 2)
            defer { second.close() }
            #expect(second.path == root.path + "/api/0.2")
            #expect(access(second.path + "/cgroup.events", F_OK) == 0, "a cgroup, made in the new app directory")
            let dir = second.openDirectory()
            defer { close(dir) }
            let pid = try spawnByDirectory(dir)
            defer { stop(pid) }
            #expect(second.members() == [pid])
        }
    }
}
