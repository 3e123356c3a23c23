import Glibc
import SwarmCore
import SwarmProtocol
import SwarmSystem

/// Output read from an app's workers in the current second, against `[logs] rate`.
struct OutputBudget {
    var bytes: Int64 = 0
    var pausedAt: Int64?
    var pauses = 0
    /// Total time reading was paused.
    var throttledNS: Int64 = 0
}

/// A worker's stdout or stderr pipe; it may outlive the worker (children holding it).
final class OutputPipe {
    let fd: Int32
    let app: String
    let slot: Int
    let pid: Int32
    let stream: String
    /// Its key in `WorkerOutput.pipes` and its token in the pipes' epoll set.
    let token: UInt64
    var splitter = LineSplitter()

    init(token: UInt64, fd: Int32, app: String, slot: Int, pid: Int32, stream: String) {
        self.token = token
        self.fd = fd
        self.app = app
        self.slot = slot
        self.pid = pid
        self.stream = stream
    }
}

/// The read end of a worker's `SWARM_READY_FD` pipe ([ready] mode = "fd").
final class ReadyPipe {
    let worker: WorkerID
    let app: String
    let slot: Int
    let pid: Int32
    let fd: Int32
    var source: EventLoop.Source?

    init(worker: WorkerID, app: String, slot: Int, pid: Int32, fd: Int32) {
        self.worker = worker
        self.app = app
        self.slot = slot
        self.pid = pid
        self.fd = fd
    }
}

/// Everything workers say: stdout/stderr pipes (into log sinks, under a rate
/// budget per app), readiness pipes, and sd_notify datagrams. It turns what
/// it reads into core events through `deliver`, and decides nothing itself.
final class WorkerOutput {
    let loop: EventLoop
    let kernel: Kernel
    let logDirectory: TrustedDirectory
    /// swarmd's journal connection, when worker output goes to the journal.
    var journal: JournalWriter?
    var journalSocket = "/run/systemd/journal/socket"
    /// A core event read from a worker (ready, watchdog, status, stopping).
    var deliver: (SwarmCore.Event) -> Void = { _ in }
    /// The log policy of an app, or nil if it is not known.
    var policy: (String) -> LogPolicy? = { _ in nil }
    /// Which worker a pid is, for sd_notify senders.
    var isWorker: (Int32) -> Bool = { _ in false }
    var report: (NoteLevel, String) -> Void = { _, _ in }

    private var pipes: [UInt64: OutputPipe] = [:]
    private var pipesByPid: [Int32: [UInt64]] = [:]
    private var pipesByApp: [String: Set<UInt64>] = [:]
    private var nextToken: UInt64 = 1
    /// Every stdout and stderr pipe, in one epoll set that is one source of the loop.
    private var pipeSet: (set: EpollSet, source: EventLoop.Source)?
    private(set) var budgets: [String: OutputBudget] = [:]
    /// Apps whose budget has anything to reset at the next second.
    private var chargedApps: Set<String> = []
    private(set) var sinks: [String: LogSink] = [:]
    private(set) var readyPipes: [WorkerID: ReadyPipe] = [:]
    private var readBuffer = [UInt8](repeating: 0, count: 65536)

    private(set) var notifyPath: String
    private(set) var notifyFD: Int32 = -1
    private var notifySource: EventLoop.Source?

    init(loop: EventLoop, kernel: Kernel, logDirectory: TrustedDirectory, notifyPath: String) {
        self.loop = loop
        self.kernel = kernel
        self.logDirectory = logDirectory
        self.notifyPath = notifyPath
    }

    var pipeCount: Int { pipes.count }

    // MARK: - sd_notify

    /// A re-executed swarmd keeps the socket path its workers were told.
    func adoptNotifyPath(_ path: String) { notifyPath = path }

    /// Binds the datagram socket workers' NOTIFY_SOCKET names (or adopts the
    /// one a previous swarmd bound).
    func openNotifySocket(adopting fd: Int32? = nil) throws {
        notifyFD = try fd ?? Sockets.bindDatagram(notifyPath)
        notifySource = try loop.addReader(notifyFD) { [weak self] _ in self?.receiveNotifications() }
    }

    /// Bounded per dispatch, so a chatty worker cannot hold the loop.
    func receiveNotifications() {
        var buf = [UInt8](repeating: 0, count: 4096)
        for _ in 0..<64 {
            let (n, pid) = buf.withUnsafeMutableBytes { Sockets.receiveWithCredentials(notifyFD, $0) }
            if n < 0 {
                if errno == EAGAIN || errno == EWOULDBLOCK { return }
                continue
            }
            guard pid > 0, isWorker(pid) else { continue }
            for event in WorkerOutput.notifyEvents(String(decoding: buf[0..<n], as: UTF8.self), pid: pid) { deliver(event) }
        }
    }

    /// The core events one sd_notify datagram carries.
    static func notifyEvents(_ text: String, pid: Int32) -> [SwarmCore.Event] {
        var events: [SwarmCore.Event] = []
        for line in text.split(separator: "\n") {
            if line == "READY=1" { events.append(.ready(pid: pid)) }
            else if line == "WATCHDOG=1" { events.append(.watchdogPing(pid: pid)) }
            else if line == "STOPPING=1" { events.append(.stopping(pid: pid)) }
            else if line.hasPrefix("STATUS=") { events.append(.status(pid: pid, String(line.dropFirst(7)))) }
        }
        return events
    }

    // MARK: - Readiness pipes

    func watchReadyPipe(_ ready: ReadyPipe) {
        readyPipes[ready.worker] = ready
        do {
            ready.source = try loop.addReader(ready.fd) { [weak self] _ in self?.readReadyPipe(ready.worker) }
        } catch {
            report(.error, "Failed to watch the readiness pipe of \(ready.app)[\(ready.slot)]: \(error), ignoring")
        }
    }

    func readReadyPipe(_ worker: WorkerID) {
        guard let ready = readyPipes[worker] else { return }
        var buf = [UInt8](repeating: 0, count: 256)
        let n = (try? buf.withUnsafeMutableBytes { try Posix.read(ready.fd, into: $0) }) ?? 0
        if n > 0 && buf[0..<n].contains(UInt8(ascii: "\n")) {
            closeReadyPipe(worker)
            deliver(.ready(pid: ready.pid))
        } else if n <= 0 {
            closeReadyPipe(worker)
        }
    }

    func closeReadyPipe(_ worker: WorkerID) {
        guard let ready = readyPipes.removeValue(forKey: worker) else { return }
        ready.source?.cancel()
        Posix.close(ready.fd)
    }

    // MARK: - stdout and stderr

    func watch(fd: Int32, app: String, slot: Int, pid: Int32, stream: String) {
        let key = nextToken
        nextToken += 1
        let pipe = OutputPipe(token: key, fd: fd, app: app, slot: slot, pid: pid, stream: stream)
        do {
            let paused = budgets[app]?.pausedAt != nil
            try pipeEpollSet().add(fd, events: paused ? WorkerOutput.pausedEvents : WorkerOutput.pipeEvents, token: key)
        } catch {
            report(.error, "Failed to watch output of \(app)[\(slot)]: \(error), ignoring")
            Posix.close(fd)
            return
        }
        pipes[key] = pipe
        pipesByPid[pid, default: []].append(key)
        pipesByApp[app, default: []].insert(key)
    }

    private func pipeEpollSet() throws -> EpollSet {
        if let p = pipeSet { return p.set }
        let set = try EpollSet()
        let source = try loop.addReader(set.fd, priority: EventLoop.Priority.output) { [weak self] _ in self?.servicePipes() }
        pipeSet = (set, source)
        return set
    }

    /// The pipes ready now, up to `EpollSet.batch` of them in one dispatch: when
    /// thousands of workers die at once, their 2 × N hung-up pipes are handled a
    /// batch per turn of the loop, and a `status` or a signal waits for one
    /// batch, not for one loop iteration per pipe (as 2 × N sources of the loop
    /// did: 8,192 dispatches, 0.3 s, ahead of a control request that arrived
    /// after them). More than a batch ready: the set stays readable, and the
    /// loop comes back to it after the other pending sources.
    func servicePipes() {
        guard let set = pipeSet?.set else { return }
        let ready: [(token: UInt64, events: UInt32)]
        do { ready = try set.ready() } catch {
            return report(.error, "Failed to read the output pipes' epoll set: \(error)")
        }
        for (key, _) in ready {
            // Paused by its app's budget (a hang-up is reported even then): read when the budget refills.
            guard let pipe = pipes[key], budgets[pipe.app]?.pausedAt == nil else { continue }
            service(key, reads: WorkerOutput.readsPerDispatch)
        }
    }

    /// Arms (or, paused, disarms) a pipe in the set; epoll reports what it
    /// holds at once if it is ready (EPOLL_CTL_MOD re-checks).
    private func arm(_ pipe: OutputPipe, paused: Bool = false) {
        try? pipeSet?.set.modify(pipe.fd, events: paused ? WorkerOutput.pausedEvents : WorkerOutput.pipeEvents, token: pipe.token)
    }

    /// Edge-triggered: epoll reports a pipe once per change (a write, the last
    /// writer gone), not at every loop iteration while it stays readable or hung
    /// up. Level-triggered, the 8,192 pipes of 4,096 workers killed at once were
    /// all returned by every `epoll_wait` until each had its turn to be closed,
    /// one dispatch per iteration: O(N) per iteration, O(N²) per storm. The price
    /// is that a pipe is read until it is empty (EAGAIN) or at its end, and one
    /// left with data (its turn's reads spent) is re-armed to be reported again.
    static let pipeEvents = IOEvents.readable | IOEvents.edgeTriggered
    /// A pipe whose app's budget is spent: nothing but the hang-up epoll always reports.
    static let pausedEvents = IOEvents.edgeTriggered
    /// Reads (64 KiB each) of one pipe per dispatch: a chatty worker gets no more
    /// than this before the other pending sources had their turn.
    static let readsPerDispatch = 4

    /// Reads the pipe until it is empty or closed, at most `reads` times; a pipe
    /// still holding data after that is re-armed, so epoll reports it again once
    /// the other pending sources had their turn. A pipe whose writers are all gone
    /// is read to its end and closed in this one call: a dying worker's last lines
    /// reach the log, and its pipe leaves the epoll set at once.
    func service(_ key: UInt64, reads: Int, heedingBudget: Bool = true) {
        for _ in 0..<reads {
            guard read(key) else { return }
            // Paused by the app's budget: re-arming at the refill makes epoll report what is left then.
            if heedingBudget, let pipe = pipes[key], budgets[pipe.app]?.pausedAt != nil { return }
        }
        if let pipe = pipes[key] { arm(pipe) }
    }

    /// Reads what the pipe holds (at most 64 KiB); false once it is empty (EAGAIN) or closed.
    @discardableResult
    func read(_ key: UInt64) -> Bool {
        guard let pipe = pipes[key] else { return false }
        let n: Int
        do { n = try readBuffer.withUnsafeMutableBytes { try Posix.read(pipe.fd, into: $0) } } catch {
            if (error as? SystemError)?.errno == EAGAIN { return false }
            n = 0
        }
        let emit = emitter(for: pipe)
        if n == 0 {
            pipe.splitter.flush(emit)
            close(key)
            return false
        }
        readBuffer.withUnsafeBytes { pipe.splitter.feed(UnsafeRawBufferPointer(rebasing: $0[0..<n]), emit) }
        charge(app: pipe.app, bytes: n)
        return true
    }

    /// Where a pipe's complete lines go: its app's sink, stamped now.
    private func emitter(for pipe: OutputPipe) -> (String) -> Void {
        let sink = self.sink(for: pipe.app)
        let time = rfc3339(kernel.wallClock())
        return { text in
            let (priority, message) = splitPriority(text)
            sink.append(LogLine(time: time, app: pipe.app, slot: pipe.slot, pid: pipe.pid, stream: pipe.stream, text: message), priority: priority)
        }
    }

    private func close(_ key: UInt64) {
        guard let pipe = pipes.removeValue(forKey: key) else { return }
        // Closing the only fd of the pipe takes it out of the epoll set.
        Posix.close(pipe.fd)
        if var keys = pipesByPid[pipe.pid] {
            keys.removeAll { $0 == key }
            pipesByPid[pipe.pid] = keys.isEmpty ? nil : keys
        }
        pipesByApp[pipe.app]?.remove(key)
        if pipesByApp[pipe.app]?.isEmpty == true { pipesByApp[pipe.app] = nil }
    }

    /// Reads what an exited worker left in its pipes before its exit is handled
    /// (the pipes' readers run after SIGCHLD), so a reload failure's reply and
    /// the log show its last lines. Bounded: 16 × 64 KiB per pipe (a grandchild
    /// may still hold the write end and keep writing).
    func drain(pid: Int32) {
        for key in pipesByPid[pid] ?? [] { service(key, reads: 16, heedingBudget: false) }
    }

    /// Counts output against the app's `[logs] rate`; over it, stops reading the
    /// app's pipes until the next second (`refillBudgets`).
    func charge(app: String, bytes: Int) {
        let rate = policy(app)?.rate ?? 0
        guard rate > 0 else { return }
        var budget = budgets[app] ?? OutputBudget()
        budget.bytes += Int64(bytes)
        chargedApps.insert(app)
        if budget.bytes >= rate && budget.pausedAt == nil {
            budget.pausedAt = kernel.now()
            budget.pauses += 1
            for key in pipesByApp[app] ?? [] { if let pipe = pipes[key] { arm(pipe, paused: true) } }
            if budget.pauses == 1 || budget.pauses % 60 == 0 {
                report(.notice, "\(app): workers write more than \(rate >> 10) KiB/s of output ([logs] rate); reading it at that pace, the writers wait")
            }
        }
        budgets[app] = budget
    }

    /// Every second: a new budget for the apps that spent some, and reading resumes.
    /// Whether a budget was charged since the last refill: swarmd arms its 1 s sweep only then.
    var needsRefill: Bool { !chargedApps.isEmpty }

    func refillBudgets() {
        let now = kernel.now()
        for app in chargedApps {
            guard var budget = budgets[app] else { continue }
            if let paused = budget.pausedAt {
                budget.throttledNS += now - paused
                budget.pausedAt = nil
                for key in pipesByApp[app] ?? [] { if let pipe = pipes[key] { arm(pipe) } }
            }
            budget.bytes = 0
            budgets[app] = budget
        }
        chargedApps = []
    }

    /// Seconds an app's output has been throttled so far, or nil if never.
    func throttledSeconds(_ app: String) -> Double? {
        guard let b = budgets[app], b.throttledNS > 0 || b.pausedAt != nil else { return nil }
        let open = b.pausedAt.map { kernel.now() - $0 } ?? 0
        return (Double(b.throttledNS + open) / 1e8).rounded() / 10
    }

    // MARK: - Sinks

    func sink(for app: String) -> LogSink {
        if let s = sinks[app] { return s }
        let policy = self.policy(app) ?? LogPolicy()
        let useJournal = policy.target == "journal" || (policy.target == "auto" && journal != nil)
        var writer: JournalWriter? = nil
        if useJournal { writer = journal ?? (try? JournalWriter(socketPath: journalSocket)) }
        let s = LogSink(app: app, directory: logDirectory, maxSize: policy.maxSize, keep: policy.keep, journal: writer)
        s.report = report
        sinks[app] = s
        return s
    }

    /// An app was deleted: its sink and budget go; its pipes close when their writers do.
    func forget(app: String) {
        budgets[app] = nil
        chargedApps.remove(app)
        sinks.removeValue(forKey: app)?.close()
    }

    /// swarmd is exiting: what the pipes still hold is read and a last line
    /// without its newline logged (a worker's child may still hold its pipe
    /// open when the last worker is reaped), then the sinks close.
    func closeAll() {
        for key in Array(pipes.keys) {
            service(key, reads: 16, heedingBudget: false)
            guard let pipe = pipes[key] else { continue }
            pipe.splitter.flush(emitter(for: pipe))
            close(key)
        }
        for sink in sinks.values { sink.close() }
    }

    // MARK: - Hand-over

    var pipesForHandover: [OutputPipe] { Array(pipes.values) }
}
