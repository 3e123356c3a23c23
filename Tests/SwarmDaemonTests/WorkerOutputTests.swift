import Foundation
import Glibc
@testable import SwarmDaemon
import SwarmCore
import SwarmProtocol
import SwarmSystem
import Testing

/// Core events as text, for comparing (Event is not Equatable).
func describe(_ e: SwarmCore.Event) -> String {
    switch e {
    case let .ready(pid): return "ready \(pid)"
    case let .watchdogPing(pid): return "watchdog \(pid)"
    case let .stopping(pid): return "stopping \(pid)"
    case let .status(pid, text): return "status \(pid) \(text)"
    case let .exited(pid, status): return "exited \(pid) \(status)"
    default: return "\(e)"
    }
}

final class OutputFixture {
    let dir: TempDir
    let kernel = FakeKernel()
    let loop: EventLoop
    let output: WorkerOutput
    let reports = Reports()
    /// Held apart from the fixture: its deinit's `closeAll` still asks for the
    /// policy and may deliver, and an unowned self cannot be read while deiniting.
    private final class Shared { var policy = LogPolicy(); var delivered: [String] = [] }
    private let shared = Shared()
    var policy: LogPolicy { get { shared.policy } set { shared.policy = newValue } }
    var delivered: [String] { shared.delivered }
    private var opened: [Int32] = []

    nonisolated(unsafe) static var counter = 0

    init() throws {
        dir = try TempDir()
        try Posix.mkdirs(dir.path + "/logs", mode: 0o750)
        loop = try EventLoop()
        OutputFixture.counter += 1
        output = WorkerOutput(loop: loop, kernel: kernel, logDirectory: try TrustedDirectory(path: dir.path + "/logs"),
                              notifyPath: "@swarmd-tests-\(getpid())-\(OutputFixture.counter)-\(UInt32.random(in: 0...UInt32.max))")
        policy.target = "file"
        output.policy = { [shared] _ in shared.policy }
        output.deliver = { [shared] e in shared.delivered.append(describe(e)) }
        output.report = reports.sink
    }

    deinit {
        for fd in opened { Posix.close(fd) }
        output.closeAll()
    }

    /// A pipe whose read end the output watches as `pid`'s `stream`; the write end is the test's.
    func workerPipe(app: String = "web", slot: Int = 0, pid: Int32, stream: String = "stdout") throws -> Int32 {
        let p = try pipePair()
        output.watch(fd: p.read, app: app, slot: slot, pid: pid, stream: stream)
        opened.append(p.write)
        return p.write
    }

    func closeWriter(_ fd: Int32) {
        opened.removeAll { $0 == fd }
        Posix.close(fd)
    }

    func tail(_ app: String = "web") -> [LogLine] { output.sinks[app]?.tail ?? [] }

    func run(until what: String, _ done: () -> Bool) throws { try runLoop(loop, until: what, done) }
}

@Suite("WorkerOutput")
struct WorkerOutputTests {
    @Test func linesReachTheSinkWithAppSlotPidAndStream() throws {
        let f = try OutputFixture()
        let w = try f.workerPipe(slot: 2, pid: 4242, stream: "stderr")
        try writeAll(w, "hello\n<3>bad thing\npartial")
        try f.run(until: "two lines in the tail") { f.tail().count == 2 }
        let time = rfc3339(f.kernel.wallClock())
        #expect(f.tail()[0] == LogLine(time: time, app: "web", slot: 2, pid: 4242, stream: "stderr", text: "hello"))
        #expect(f.tail()[1].text == "bad thing", "the sd-daemon priority prefix is taken off")
        f.closeWriter(w)
        try f.run(until: "the partial last line at end of file") { f.tail().count == 3 }
        #expect(f.tail()[2].text == "partial")
        let file = try String(contentsOfFile: f.dir.path + "/logs/web.log", encoding: .utf8)
        #expect(file == f.tail().map { $0.formatted + "\n" }.joined())
    }

    @Test func theRateBudgetPausesReadingUntilTheNextSecond() throws {
        let f = try OutputFixture()
        f.policy.rate = 1000
        let w = try f.workerPipe(pid: 10)
        let line = String(repeating: "a", count: 99) + "\n"
        try writeAll(w, String(repeating: line, count: 30))
        try f.run(until: "30 lines read") { f.tail().count == 30 }
        #expect(f.output.budgets["web"]?.pausedAt != nil, "3,000 bytes against a 1,000 B/s budget")
        #expect(f.reports.count(containing: "[logs] rate") == 1)

        try writeAll(w, String(repeating: line, count: 5))
        let late = try f.workerPipe(pid: 11)
        try writeAll(late, "from a worker started while paused\n")
        try spin(f.loop)
        #expect(f.tail().count == 30, "read \(f.tail().count - 30) lines while the budget was spent")

        f.kernel.advance(seconds: 1)
        f.output.refillBudgets()
        try f.run(until: "reading resumes after the refill") { f.tail().count == 36 }
        #expect(f.output.throttledSeconds("web") == 1.0)
        #expect(f.output.budgets["web"]?.pausedAt == nil, "535 bytes are within the new second's budget")

        try writeAll(w, String(repeating: line, count: 30))
        try f.run(until: "30 more lines") { f.tail().count == 66 }
        #expect(f.output.budgets["web"]?.pausedAt != nil)
        #expect(f.reports.count(containing: "[logs] rate") == 1, "the notice is not repeated at every pause")
    }

    @Test func throttledSecondsCountsTheOpenPause() throws {
        let f = try OutputFixture()
        f.policy.rate = 100
        let w = try f.workerPipe(pid: 10)
        #expect(f.output.throttledSeconds("web") == nil)
        try writeAll(w, String(repeating: "b", count: 200) + "\n")
        try f.run(until: "the line is read") { f.tail().count == 1 }
        f.kernel.advance(seconds: 0.5)
        #expect(f.output.throttledSeconds("web") == 0.5)
        f.kernel.advance(seconds: 0.5)
        f.output.refillBudgets()
        f.kernel.advance(seconds: 5)
        #expect(f.output.throttledSeconds("web") == 1.0, "the pause ended at the refill")
        f.output.refillBudgets()
        #expect(f.output.budgets["web"]?.bytes == 0)
    }

    @Test func drainReadsOnlyThatWorkersPipes() throws {
        let f = try OutputFixture()
        let a = try f.workerPipe(pid: 1)
        let aErr = try f.workerPipe(pid: 1, stream: "stderr")
        let b = try f.workerPipe(slot: 1, pid: 2)
        try writeAll(a, "a1\na2\n")
        try writeAll(aErr, "a3\n")
        try writeAll(b, "b1\n")
        f.output.drain(pid: 1)
        #expect(Set(f.tail().map(\.text)) == ["a1", "a2", "a3"])
        #expect(f.tail().allSatisfy { $0.pid == 1 })
        try f.run(until: "b's line through the loop") { f.tail().count == 4 }
        #expect(f.tail().last?.pid == 2)
    }

    @Test func aClosedPipeIsForgotten() throws {
        let f = try OutputFixture()
        let out = try f.workerPipe(pid: 5)
        let err = try f.workerPipe(pid: 5, stream: "stderr")
        #expect(f.output.pipeCount == 2)
        try writeAll(out, "last words\n")
        f.closeWriter(out)
        f.closeWriter(err)
        try f.run(until: "both pipes closed") { f.output.pipeCount == 0 }
        #expect(f.tail().map(\.text) == ["last words"])
        #expect(f.output.pipesForHandover.isEmpty, "a closed pipe would be handed to a re-executed swarmd")
    }

    @Test func aHungUpPipeIsReadToItsEndAndClosedInItsFirstTurn() throws {
        let f = try OutputFixture()
        let w = try f.workerPipe(pid: 5)
        try writeAll(w, "first\nlast words, no newline")
        f.closeWriter(w)
        // One iteration dispatches one source: the pipe's only one.
        try f.loop.runOnce(timeout: 1_000_000_000)
        #expect(f.output.pipeCount == 0, "a hung-up pipe stayed open after its turn: epoll would report it at every iteration")
        #expect(f.tail().map(\.text) == ["first", "last words, no newline"])
    }

    @Test func aPipeLeftWithDataAfterItsTurnIsReportedAgain() throws {
        let f = try OutputFixture()
        let w = try f.workerPipe(pid: 5)
        // More than one turn's reads (4 × 64 KiB) written before the loop runs, then nothing:
        // no further edge comes from the writer, so only the re-arm brings the rest.
        let size = fcntl(w, 1031 /* F_SETPIPE_SZ */, 1 << 20)
        try #require(size >= 1 << 20, "F_SETPIPE_SZ: \(String(cString: strerror(errno)))")
        let line = String(repeating: "x", count: 1023) + "\n"
        let lines = WorkerOutput.readsPerDispatch * 64 + 64
        try writeAll(w, String(repeating: line, count: lines))
        try f.loop.runOnce(timeout: 1_000_000_000)
        #expect(f.tail().count == WorkerOutput.readsPerDispatch * 64, "one turn reads at most its share")
        try runLoop(f.loop, until: "\(lines) lines read, the last ones after the re-arm", within: 5) { f.tail().count == lines }
        f.closeWriter(w)
        try f.run(until: "the pipe closed") { f.output.pipeCount == 0 }
    }

    @Test func manyHungUpPipesCloseInTimeLinearInTheirNumber() throws {
        // 4,096 workers killed at once hang up 8,192 pipes together. Level-triggered, every
        // iteration's epoll_wait returned every one not yet closed (one closes per iteration): O(N²).
        _ = Posix.raiseFileLimit()
        func cpuToClose(_ n: Int) throws -> Double {
            let f = try OutputFixture()
            var writers: [Int32] = []
            for i in 0..<n { writers.append(try f.workerPipe(slot: i, pid: Int32(1000 + i))) }
            for w in writers { f.closeWriter(w) }
            let start = threadCPUSeconds()
            try runLoop(f.loop, until: "\(n) hung-up pipes closed", within: 60) { f.output.pipeCount == 0 }
            return threadCPUSeconds() - start
        }
        _ = try cpuToClose(64)  // warm-up: first-use costs out of the figures
        let small = try cpuToClose(128)
        let large = try cpuToClose(2048)
        // Linear: 16×; quadratic: 256×. The bound leaves room for noise and cache effects.
        #expect(large < 64 * max(small, 0.0005), "closing 2,048 hung-up pipes cost \(large) s of CPU, 128 cost \(small) s")
    }

    @Test("1,000 pipes hung up together take a batch per turn of the loop: a source ready after them is served within a few turns, not behind each pipe")
    func hungUpPipesAreABatchPerTurnNotASourceEach() throws {
        _ = Posix.raiseFileLimit()
        let f = try OutputFixture()
        let n = 1000
        var writers: [Int32] = []
        for i in 0..<n { writers.append(try f.workerPipe(slot: i, pid: Int32(1000 + i))) }
        for w in writers { f.closeWriter(w) }
        try f.loop.runOnce(timeout: 1_000_000_000)
        #expect(f.output.pipeCount == n - EpollSet.batch, "one turn closes one batch: \(n - f.output.pipeCount) closed")
        // Ready after the hang-ups, as a control request arriving in a kill storm.
        var pair: [Int32] = [-1, -1]
        try #require(socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0, &pair) == 0)
        defer { Posix.close(pair[0]); Posix.close(pair[1]) }
        var served = false
        let source = try f.loop.addReader(pair[0]) { _ in
            served = true
            var b: UInt8 = 0
            _ = Glibc.read(pair[0], &b, 1)
        }
        defer { source.cancel() }
        #expect(Glibc.write(pair[1], "x", 1) == 1)
        var turns = 0
        while !served && turns < 2 * n {
            try f.loop.runOnce(timeout: 1_000_000_000)
            turns += 1
        }
        #expect(served && turns <= 3, "served after \(turns) turns, with \(f.output.pipeCount) pipes still open")
        try f.run(until: "every pipe closed") { f.output.pipeCount == 0 }
    }

    @Test func notifyDatagramsBecomeCoreEvents() {
        let events = WorkerOutput.notifyEvents("READY=1\nSTATUS=serving 5 clients\nWATCHDOG=1\nSTOPPING=1\nERRNO=3\nREADY=0", pid: 7)
        #expect(events.map(describe) == ["ready 7", "status 7 serving 5 clients", "watchdog 7", "stopping 7"])
        #expect(WorkerOutput.notifyEvents("", pid: 7).isEmpty)
    }

    @Test func theNotifySocketDeliversOnlyWorkersDatagrams() throws {
        let f = try OutputFixture()
        try f.output.openNotifySocket()
        var known = false
        f.output.isWorker = { pid in known && pid == getpid() }
        let sender = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        #expect(sender >= 0)
        defer { Posix.close(sender) }
        func send(_ text: String) throws {
            var addr = try Sockets.unixAddress(f.output.notifyPath)
            let len = socklen_t(MemoryLayout<sa_family_t>.size + f.output.notifyPath.utf8.count)
            let bytes = Array(text.utf8)
            let n = withUnsafePointer(to: &addr) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { sendto(sender, bytes, bytes.count, 0, $0, len) }
            }
            if n < 0 { throw TestFailure("sendto \(f.output.notifyPath): \(String(cString: strerror(errno)))") }
        }
        try send("READY=1")
        try spin(f.loop, times: 10)
        #expect(f.delivered.isEmpty, "a datagram from a pid that is no worker was delivered")
        known = true
        try send("READY=1\nSTATUS=up")
        try f.run(until: "the worker's datagram") { f.delivered.count == 2 }
        #expect(f.delivered == ["ready \(getpid())", "status \(getpid()) up"])
    }

    @Test func aReadinessPipeDeliversReadyOnANewline() throws {
        let f = try OutputFixture()
        let p = try pipePair()
        defer { Posix.close(p.write) }
        f.output.watchReadyPipe(ReadyPipe(worker: WorkerID(9), app: "web", slot: 0, pid: 99, fd: p.read))
        let ino = try #require(inode(of: p.read))
        try writeAll(p.write, "partial")
        try spin(f.loop, times: 10)
        #expect(f.delivered.isEmpty)
        try writeAll(p.write, "\n")
        try f.run(until: "ready from the pipe") { !f.delivered.isEmpty }
        #expect(f.delivered == ["ready 99"])
        #expect(f.output.readyPipes.isEmpty)
        #expect(inode(of: p.read) != ino, "the readiness pipe is closed once used")

        let q = try pipePair()
        f.output.watchReadyPipe(ReadyPipe(worker: WorkerID(10), app: "web", slot: 1, pid: 100, fd: q.read))
        Posix.close(q.write)
        try f.run(until: "the pipe closed without a newline is dropped") { f.output.readyPipes.isEmpty }
        #expect(f.delivered == ["ready 99"], "end of file is not readiness")
    }

    @Test func forgettingAnAppDropsItsSinkAndBudget() throws {
        let f = try OutputFixture()
        f.policy.rate = 10
        let w = try f.workerPipe(pid: 3)
        try writeAll(w, "more than ten bytes\n")
        try f.run(until: "a line") { f.tail().count == 1 }
        #expect(f.output.budgets["web"] != nil)
        f.output.forget(app: "web")
        #expect(f.output.sinks["web"] == nil)
        #expect(f.output.budgets["web"] == nil)
        #expect(f.output.throttledSeconds("web") == nil)
        f.output.refillBudgets()
        #expect(f.output.budgets["web"] == nil, "a refill brought the forgotten app's budget back")
    }

    @Test func aVeryLongLineIsCutIntoBoundedLines() throws {
        let f = try OutputFixture()
        let w = try f.workerPipe(pid: 3)
        try writeAll(w, String(repeating: "z", count: 40 << 10) + "\n")
        try f.run(until: "the long line") { f.tail().map(\.text).joined().count == 40 << 10 }
        #expect(f.tail().map { $0.text.count } == [16 << 10, 16 << 10, 8 << 10])
    }

    @Test func theLogFileRotatesAtItsSizeKeepingTheConfiguredNumber() throws {
        let f = try OutputFixture()
        f.policy.maxSize = 1000
        f.policy.keep = 2
        let w = try f.workerPipe(pid: 3)
        let line = String(repeating: "r", count: 199) + "\n"
        for _ in 0..<40 { try writeAll(w, line) }
        try f.run(until: "40 lines") { f.tail().count == 40 }
        let logs = try FileManager.default.contentsOfDirectory(atPath: f.dir.path + "/logs").sorted()
        #expect(logs == ["web.log", "web.log.1", "web.log.2"])
    }
}

/// CPU time of the calling thread (the loop's, in these tests), in seconds.
func threadCPUSeconds() -> Double {
    var t = timespec()
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t)
    return Double(t.tv_sec) + Double(t.tv_nsec) / 1e9
}
