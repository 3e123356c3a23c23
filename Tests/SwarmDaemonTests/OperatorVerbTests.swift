import Foundation
import Glibc
@testable import SwarmDaemon
import SwarmCore
import SwarmProtocol
import SwarmSystem
import Testing

/// describe, signal and reopen-logs in the shell, on the fake kernel: which
/// pids get which signal, what describe hands out, which file a reopen opens.
@Suite struct OperatorVerbTests {
    @Test func describeMasksBeforeEncodingAndStatusHasCommandCwdAndLogPath() throws {
        let f = try ManagerFixture()
        let path = try f.config(workers: 2, extra: "[env]\nDB_PASSWORD = \"pw-1\"\nDSN = \"mysql://u:pw-2@h/db\"\nPLAIN = \"x\"\n")
        let pids = try f.startReady(path, workers: 2)
        let r = try f.call { Request(id: $0, verb: .describe, name: "web") }
        let d = try #require(r.describe, "\(r)")
        #expect(!String(decoding: Codec.encode(r), as: UTF8.self).contains("pw-"))
        #expect(d.env == [EnvEntry(key: "DB_PASSWORD", value: "********", masked: true),
                          EnvEntry(key: "DSN", value: "mysql://u:********@h/db", masked: true),
                          EnvEntry(key: "PLAIN", value: "x", masked: false)])
        #expect(d.slots.map(\.pid) == pids && d.slots.map(\.slot) == [0, 1])
        #expect(d.command == ["/bin/true", "serve"] && d.config == path)
        #expect(d.configSHA256?.count == 64 && d.configChanged == false)
        #expect(d.logs.path == f.dir.path + "/state/logs/web.log")
        let app = try #require(try f.manager.statusReport(only: "web").apps.first)
        #expect(app.command == ["/bin/true", "serve"] && app.cwd == f.dir.path && app.logPath == d.logs.path)
        // A reaped worker's exit is kept for its slot (restart "never": the slot then stays empty).
        f.exit(pids[1], code: 3)
        let slot1 = try #require(try f.call { Request(id: $0, verb: .describe, name: "web") }.describe?.slots[1])
        #expect(slot1.exits?.map(\.pid) == [pids[1]] && slot1.exits?.first?.status == "exited with status 3", "\(slot1)")
        let unknown = try f.call { Request(id: $0, verb: .describe, name: "nope") }
        #expect(unknown.ok == false && unknown.error == "no app named 'nope'")
    }

    @Test func signalGoesToTheNamedSlotOrEveryWorkerAndToTheGroupOnlyWhenAsked() throws {
        let f = try ManagerFixture()
        let pids = try f.startReady(try f.config(workers: 3), workers: 3)
        func signal(_ slot: Int?, _ sig: String, group: Bool? = nil) throws -> Response {
            try f.call { id in
                var q = Request(id: id, verb: .signal, name: "web")
                q.slot = slot
                q.signal = sig
                q.group = group
                return q
            }
        }
        let before = f.kernel.signals.count
        let one = try signal(1, "HUP")
        #expect(one.ok == true && one.message == "web:1: sent SIGHUP to slot 1 pid \(pids[1])", "\(one)")
        #expect(f.kernel.signals.dropFirst(before).map { "\($0.pid) \($0.signal) \($0.group)" } == ["\(pids[1]) 1 false"])
        let all = try signal(nil, "RTMIN+1", group: true)
        #expect(all.ok == true, "\(all)")
        #expect(f.kernel.signals.dropFirst(before + 1).map { "\($0.pid) \($0.signal) \($0.group)" } == pids.map { "\($0) 35 true" })
        let count = f.kernel.signals.count
        for (slot, sig, says) in [(Int?.some(3), "HUP", "web has no slot 3 (slots: 0-2)"), (nil, "0", "no such signal number"),
                                  (nil, "NOPE", "not a signal name"), (nil, "33", "no such signal number")] {
            let r = try signal(slot, sig)
            #expect(r.ok == false && r.error?.contains(says) == true, "\(sig): \(r)")
        }
        #expect(f.kernel.signals.count == count, "a refused signal reached the kernel")
        let noSignal = try f.call { Request(id: $0, verb: .signal, name: "web") }
        #expect(noSignal.ok == false && noSignal.error == "signal needs a signal name or number")
    }

    @Test func reopenOpensTheFileByNameAgainOnRequestAndOnSIGUSR1() throws {
        let f = try ManagerFixture()
        try f.startReady(try f.config(), workers: 1)
        let sink = f.manager.output.sink(for: "web")
        let line = LogLine(time: "2026-12-02T00:00:00.000000Z", app: "web", slot: 0, pid: 1, stream: "stdout", text: "one")
        sink.append(line, priority: nil)
        let log = sink.path
        #expect(readFileText(log).contains("one"))
        try FileSystem.rename(log, to: log + ".1")
        let r = try f.call { Request(id: $0, verb: .reopenLogs) }
        #expect(r.ok == true && r.message == "reopened \(log)", "\(r)")
        sink.append(LogLine(time: line.time, app: "web", slot: 0, pid: 1, stream: "stdout", text: "two"), priority: nil)
        #expect(readFileText(log).contains("two") && !readFileText(log + ".1").contains("two"))
        try FileSystem.rename(log, to: log + ".2")
        f.manager.onSignal(SIGUSR1)
        sink.append(LogLine(time: line.time, app: "web", slot: 0, pid: 1, stream: "stdout", text: "three"), priority: nil)
        #expect(readFileText(log).contains("three") && !readFileText(log + ".2").contains("three"))
        #expect(Manager.handledSignals.contains(SIGUSR1))
    }
}

private func readFileText(_ path: String) -> String {
    String(decoding: (try? Posix.readFile(path)) ?? [], as: UTF8.self)
}
