import Glibc
import SwarmCore
import SwarmSystem

/// Bind interception in the daemon (README "Servers that bind their own
/// port"): a worker of an app with an intercepting `[[socket]]` is spawned
/// under a seccomp filter that stops its `bind()` and `listen()` calls; this
/// part owns each worker's notification fd on the event loop, answers the
/// calls with the worker's slot's own socket (the one fd 3 carries), and
/// keeps the sockets' O_NONBLOCK flag what each worker expects.
///
/// One interceptor per worker, whose filter covers the worker's whole tree.
/// It is registered on the one event loop at the same priority as every
/// other source and answers at most `perWakeUp` calls per dispatch (the io
/// source is level-triggered: the rest come on a later iteration). Nothing
/// here blocks: `BindInterceptor` polls before each receive.
///
/// The rules are looked up per call from the socket table (app, slot), not
/// remembered as fd numbers: a socket closed and its number reused (start
/// --replace, a released slot) can never be handed to a worker.
final class BindInterception {
    let loop: EventLoop
    var report: (NoteLevel, String) -> Void = { _, _ in }
    /// The socket table, for the rules of each call.
    var sockets: ((String) -> AppSockets?) = { _ in nil }

    /// Calls answered per interceptor per dispatch.
    static let perWakeUp = 8
    /// Interceptors kept for processes that outlived their worker (until they exit too).
    static let maxOrphans = 256

    /// nil: available. Set once, by `probe`.
    private(set) var unavailable: String?
    private(set) var probed = false
    /// Workers' filters need PR_SET_NO_NEW_PRIVS (swarmd lacks CAP_SYS_ADMIN).
    private(set) var needsNoNewPrivileges = false

    final class Record {
        /// nil once the worker is gone (its leftover processes are still under the filter).
        var worker: WorkerID?
        let app: String
        let slot: Int
        let interceptor: BindInterceptor
        var source: EventLoop.Source?
        var substitutions = 0

        init(worker: WorkerID?, app: String, slot: Int, interceptor: BindInterceptor) {
            self.worker = worker
            self.app = app
            self.slot = slot
            self.interceptor = interceptor
        }
    }

    private var byWorker: [WorkerID: Record] = [:]
    /// Records of gone workers whose filter still has processes, oldest first.
    private var orphans: [Record] = []
    let flags = NonBlockingFlags()

    init(loop: EventLoop) { self.loop = loop }

    // MARK: Availability

    /// Once at start-up: can this swarmd intercept binds here at all?
    func probe(kernel: Kernel) {
        probed = true
        switch (kernel as? BindInterceptingKernel)?.probeBindInterception() {
        case let .success(r)?:
            needsNoNewPrivileges = r.needsNoNewPrivileges
            unavailable = nil
        case let .failure(why)?:
            unavailable = "\(why.reason) (\(errnoName(why.errno)))"
        case nil:
            unavailable = "this kernel interface cannot intercept bind()"
        }
        if let unavailable {
            report(.warning, "bind interception unavailable: \(unavailable); workers get their sockets as fd 3… only (LISTEN_FDS), and a server that binds its port itself fails with EADDRINUSE")
        } else if needsNoNewPrivileges {
            report(.info, "bind interception: swarmd lacks CAP_SYS_ADMIN, so intercepted workers run with no_new_privs (setuid programs they start do not gain privilege)")
        }
    }

    var isAvailable: Bool { probed && unavailable == nil }

    /// Whether a worker of `spec` is spawned under the filter.
    func wants(_ spec: AppSpec) -> Bool {
        isAvailable && spec.sockets.contains { $0.intercept && $0.listen.isTCP }
    }

    // MARK: Workers

    /// A worker was spawned with a notification fd: watch it.
    func adopt(fd: Int32, worker: WorkerID?, app: String, slot: Int, pid: Int32) {
        let record = Record(worker: worker, app: app, slot: slot, interceptor: BindInterceptor(notifyFD: fd, pid: pid))
        record.interceptor.nonBlockingPolicy = { [weak self, weak record] rule, wanted in
            guard let self, let record else { return }
            self.flags.bound(record.worker, socket: rule.listenFD, wantsNonBlocking: wanted)
        }
        do {
            record.source = try loop.addReader(fd, events: Self.notifyEvents, priority: EventLoop.Priority.normal) { [weak self, weak record] _ in
                guard let self, let record else { return }
                self.serve(record)
            }
        } catch {
            // Unwatched, the worker's binds would wait forever: closing makes them fail (ENOSYS) instead.
            report(.error, "Failed to watch the bind notifications of \(app)[\(slot)] pid \(pid): \(error); its bind() calls fail with ENOSYS")
            record.interceptor.close()
            return
        }
        if let worker { byWorker[worker] = record } else { keepOrphan(record) }
    }

    /// Edge-triggered, as the output pipes are: when thousands of workers die
    /// at once their notification fds all hang up, and level-triggered each
    /// was returned by every `epoll_wait` until its turn came to be closed
    /// (one dispatch per loop iteration): O(N²) per storm, half of swarmd's
    /// CPU in a 4,096-worker kill storm. So a wake-up reads until idle or hung
    /// up, and one that stops at `perWakeUp` re-arms the fd.
    static let notifyEvents = IOEvents.readable | IOEvents.edgeTriggered

    /// Answers up to `perWakeUp` pending calls of one worker's tree.
    private func serve(_ record: Record) {
        let interceptor = record.interceptor
        let named = rules(app: record.worker == nil ? nil : record.app, slot: record.slot)
        let rules = named.map(\.rule)
        for _ in 0..<Self.perWakeUp {
            guard interceptor.fd >= 0 else { return }
            let outcome = interceptor.handleOne(rules: rules)
            switch outcome {
            case .idle:
                return
            case .hungUp:
                // Every process under the filter has exited.
                close(record)
                return
            case let .substituted(pid, fd, address, rule, nonBlocking):
                record.substitutions += 1
                report(.debug, "\(record.app)[\(record.slot)]: pid \(pid)'s bind(\(address)) on fd \(fd) got the slot's socket '\(named[rule].name)' (O_NONBLOCK \(nonBlocking ? "on" : "off"))")
            case .keptListening, .continued:
                break
            case let .targetGone(pid, during):
                report(.debug, "\(record.app)[\(record.slot)]: pid \(pid) was gone before its bind() was answered (\(during))")
            case let .failed(error):
                report(.warning, "\(record.app)[\(record.slot)]: Failed to answer a bind() of pid \(record.interceptor.pid)'s tree: \(error), continuing it")
                if error.call == "SECCOMP_IOCTL_NOTIF_RECV" {
                    // The notification fd itself is unusable: stop watching it rather than spin.
                    close(record)
                    return
                }
            }
        }
        // Its turn's answers spent with calls maybe left: reported again after the other pending sources.
        if let source = record.source { loop.setIOEvents(source, Self.notifyEvents) }
    }

    /// The worker is gone for good (`workerGone`): its records are freed; a
    /// filter that still has processes stays watched (every call continues)
    /// until they exit, so their binds never hang or fail with ENOSYS.
    func gone(_ worker: WorkerID) {
        flags.gone(worker)
        guard let record = byWorker.removeValue(forKey: worker) else { return }
        record.worker = nil
        guard record.interceptor.fd >= 0 else { return }
        keepOrphan(record)
    }

    private func keepOrphan(_ record: Record) {
        orphans.append(record)
        while orphans.count > Self.maxOrphans {
            let oldest = orphans.removeFirst()
            report(.notice, "\(oldest.app)[\(oldest.slot)]: more than \(Self.maxOrphans) gone workers' processes still run; their binds now fail with ENOSYS")
            close(oldest)
        }
    }

    private func close(_ record: Record) {
        record.source?.cancel()
        record.source = nil
        record.interceptor.close()
        if record.worker == nil { orphans.removeAll { $0 === record } }
    }

    func closeAll() {
        for r in Array(byWorker.values) + orphans {
            r.source?.cancel()
            r.interceptor.close()
        }
        byWorker = [:]
        orphans = []
    }

    /// Rules for a call from slot `slot` of `app` (nil app: a gone worker's leftovers: none).
    func rules(app: String?, slot: Int) -> [NamedRule] {
        guard let app, let table = sockets(app) else { return [] }
        var rules: [NamedRule] = []
        for e in table.entries where e.spec.intercept {
            guard case let .tcp(host, _) = e.spec.listen, let port = e.port, let fd = e.fd(ofSlot: slot),
                  let rule = try? BindRule(address: host, port: port, listenFD: fd) else { continue }
            rules.append(NamedRule(name: e.spec.name, rule: rule))
        }
        return rules
    }

    struct NamedRule {
        var name: String
        var rule: BindRule
    }

    // MARK: Re-exec

    struct Handed: Codable {
        var worker: UInt64?
        var app: String
        var slot: Int
        var pid: Int32
        var fd: Int32
    }

    /// The notification fds for the next swarmd (they stay open across the exec).
    var forHandover: [Handed] {
        var out: [Handed] = []
        for r in Array(byWorker.values) + orphans where r.interceptor.fd >= 0 {
            out.append(Handed(worker: r.worker?.raw, app: r.app, slot: r.slot, pid: r.interceptor.pid, fd: r.interceptor.fd))
        }
        return out
    }

    func resume(_ handed: [Handed]) {
        for h in handed {
            adopt(fd: h.fd, worker: h.worker.map(WorkerID.init), app: h.app, slot: h.slot, pid: h.pid)
        }
    }

    var watchedCount: Int { byWorker.count + orphans.count }
}

/// O_NONBLOCK lives in the open file description, which every holder of a
/// socket shares (fd 3 of each worker of the slot, swarmd's own fd, an
/// intercepted worker's fd): one worker's `fcntl` is every other's. What
/// holds (README "The non-blocking flag"):
///  - A worker spawned while no other live worker holds its socket finds
///    the flag off, whatever the previous worker did.
///  - An intercepted worker gets the flag of the socket it bound (libuv and
///    Go: on; Python's http.server: off), also while another worker holds it:
///    the newer worker wins, the older one (a reload's old worker, about to
///    be stopped) sees the change too.
///  - When a holder is gone, the flag goes back to what the newest remaining
///    holder wanted (after a rolled-back reload: the old worker's).
final class NonBlockingFlags {
    struct Holder {
        var worker: WorkerID
        /// What it wanted: its own bind's flag, or what the socket had when
        /// another worker's bind changed it (nil: never changed under it).
        var wants: Bool?
    }

    /// Per socket (by inode): its fd in swarmd and its live holders, oldest first.
    private var sockets: [UInt64: (fd: Int32, holders: [Holder])] = [:]
    private var byWorker: [WorkerID: [UInt64]] = [:]

    static func inode(_ fd: Int32) -> UInt64? {
        var st = stat()
        return fstat(fd, &st) == 0 ? UInt64(st.st_ino) : nil
    }

    /// Before spawning `worker` on `fds`: a socket no live worker holds gets the flag off.
    func spawning(_ worker: WorkerID, fds: [Int32]) {
        var inodes: [UInt64] = []
        for fd in fds {
            guard let ino = Self.inode(fd) else { continue }
            if sockets[ino]?.holders.isEmpty ?? true { BindInterceptor.setNonBlocking(fd, false) }
            sockets[ino, default: (fd, [])].holders.append(Holder(worker: worker, wants: nil))
            sockets[ino]?.fd = fd
            inodes.append(ino)
        }
        byWorker[worker, default: []] += inodes
    }

    /// The spawn failed: it holds nothing.
    func spawnFailed(_ worker: WorkerID) { gone(worker, restore: false) }

    /// A worker's (or its leftovers', `worker` nil) bind gets `fd`: the flag becomes its choice.
    func bound(_ worker: WorkerID?, socket fd: Int32, wantsNonBlocking wanted: Bool) {
        guard let ino = Self.inode(fd) else {
            BindInterceptor.setNonBlocking(fd, wanted)
            return
        }
        let current = BindInterceptor.isNonBlocking(fd)
        if var entry = sockets[ino] {
            for i in entry.holders.indices {
                if entry.holders[i].worker == worker {
                    entry.holders[i].wants = wanted
                } else if entry.holders[i].wants == nil, current != wanted {
                    entry.holders[i].wants = current
                }
            }
            sockets[ino] = entry
        }
        BindInterceptor.setNonBlocking(fd, wanted)
    }

    func gone(_ worker: WorkerID, restore: Bool = true) {
        for ino in byWorker.removeValue(forKey: worker) ?? [] {
            guard var entry = sockets[ino] else { continue }
            entry.holders.removeAll { $0.worker == worker }
            if entry.holders.isEmpty {
                sockets[ino] = nil
                continue
            }
            sockets[ino] = entry
            if restore, let wanted = entry.holders.last(where: { $0.wants != nil })?.wants {
                BindInterceptor.setNonBlocking(entry.fd, wanted)
            }
        }
    }

    /// A re-executed swarmd: `worker` holds `fds` (what it wanted is not handed over).
    func restore(_ worker: WorkerID, fds: [Int32]) {
        for fd in fds {
            guard let ino = Self.inode(fd) else { continue }
            sockets[ino, default: (fd, [])].holders.append(Holder(worker: worker, wants: nil))
            byWorker[worker, default: []].append(ino)
        }
    }

    func holders(ofSocket fd: Int32) -> [Holder] {
        Self.inode(fd).flatMap { sockets[$0]?.holders } ?? []
    }
}
