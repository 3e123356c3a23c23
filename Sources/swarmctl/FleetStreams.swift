import Glibc
import SwarmProtocol
import SwarmSystem

/// A following verb (`events`, `logs -f`) on several hosts: the same
/// `swarmctl` command line per host (through its own ssh), their lines merged as they arrive — text lines prefixed with
/// the host's name, JSON records given a `host` field. A host whose stream
/// fails or ends is reported on stderr, naming it, and the others go on.
/// Exit 0 when every stream ended cleanly (or ^C/SIGTERM came with none
/// failed); otherwise the worst exit code of the failed ones.
///
/// Memory stays bounded whatever the terminal's speed: a line is written out
/// (a blocking write) before the next read, so a slow reader leaves the bytes
/// in the kernel's pipes, then in ssh's and swarmd's buffers, where swarmd's
/// per-client limit turns a reader that falls too far behind into a `dropped`
/// event. swarmctl holds at most one read and one unfinished line per host.
enum FleetStreams {
    static let readSize = 64 << 10
    /// A line longer than this (none is: swarmd bounds its records) is written out in pieces.
    static let lineLimit = 1 << 20
    /// Lines kept of a host's stderr to say why it failed.
    static let reasonLimit = 8 << 10

    final class Stream {
        let host: RemoteHost
        /// The text prefix: the host's name (its full address if that name is not unique).
        let name: String
        let pid: pid_t
        var out: Int32?
        var err: Int32?
        var pendingOut: [UInt8] = []
        var pendingErr: [UInt8] = []
        var exitCode: Int32?

        init(_ host: RemoteHost, name: String, args: [String]) throws {
            self.host = host
            self.name = name
            let spawned = try HostRun.spawn(host, args)
            pid = spawned.pid
            out = spawned.out
            err = spawned.err
        }

        deinit {
            out.map(Posix.close)
            err.map(Posix.close)
        }

        var isOpen: Bool { out != nil || err != nil }

        /// Reaps it if it has exited; true once it has.
        func reap() -> Bool {
            guard exitCode == nil else { return true }
            let result: Posix.WaitResult?
            do { result = try Posix.reap(pid) } catch { exitCode = 1; return true }
            switch result {
            case let .exited(_, code)?: exitCode = code
            case let .signaled(_, sig, _)?: exitCode = 128 + sig
            case nil: return false
            }
            return true
        }
    }

    /// Each host's name as the text prefix shows it: the host part of its
    /// address when no other listed host has the same, else the whole address.
    static func names(_ hosts: [RemoteHost]) -> [String] {
        var count: [String: Int] = [:]
        for h in hosts { count[h.host, default: 0] += 1 }
        return hosts.map { count[$0.host] == 1 ? $0.host : $0.description }
    }

    /// `{"host":"ssh://…",` spliced in front of a JSON object's first member.
    static func withHost(_ line: ArraySlice<UInt8>, _ host: String) -> [UInt8] {
        guard line.first == UInt8(ascii: "{") else { return Array(line) }
        var quoted: [UInt8] = [UInt8(ascii: "\"")]
        for b in host.utf8 {
            if b == UInt8(ascii: "\"") || b == UInt8(ascii: "\\") { quoted.append(UInt8(ascii: "\\")) }
            // RemoteHost.parse refuses control characters: nothing else needs escaping.
            quoted.append(b)
        }
        quoted.append(UInt8(ascii: "\""))
        let rest = line.dropFirst().drop { $0 == UInt8(ascii: " ") }
        let separator: [UInt8] = rest.first == UInt8(ascii: "}") ? [] : [UInt8(ascii: ",")]
        return Array("{\"host\":".utf8) + quoted + separator + rest
    }

    /// `verb` names the stream in what swarmctl says of a failed host ("events", "logs -f").
    static func run(_ args: [String], hosts: [RemoteHost], verb: String) -> Int32 {
        let json = args.contains("--json")
        let signals: SignalDescriptor
        do { signals = try SignalDescriptor([SIGINT, SIGTERM, SIGHUP], interruptingSystemCalls: true) } catch {
            printErr("swarmctl: \(error)")
            return 1
        }
        var stopSignal: Int32?
        let stopRequested: () -> Bool = {
            if stopSignal == nil { stopSignal = signals.take().first }
            return stopSignal != nil
        }
        var failed: [(host: RemoteHost, code: Int32)] = []
        var streams: [Stream] = []
        for (h, name) in zip(hosts, names(hosts)) {
            do { streams.append(try Stream(h, name: name, args: args)) } catch {
                printErr("swarmctl: host \(h): cannot run swarmctl for it: \(error)")
                failed.append((h, 1))
            }
        }
        var outputBroken = false

        func emit(_ s: Stream, _ line: ArraySlice<UInt8>, isError: Bool) {
            var bytes: [UInt8]
            if isError || !json { bytes = Array("[\(s.name)] ".utf8) + line } else { bytes = withHost(line, s.host.description) }
            bytes.append(0x0a)
            if !Console.write(bytes, to: isError ? .error : .output, unless: stopRequested), !isError, stopSignal == nil {
                outputBroken = true
            }
        }
        func take(_ s: Stream, _ chunk: ArraySlice<UInt8>, isError: Bool) {
            if isError { s.pendingErr += chunk } else { s.pendingOut += chunk }
            var pending = isError ? s.pendingErr : s.pendingOut
            var start = pending.startIndex
            while stopSignal == nil, !outputBroken, let nl = pending[start...].firstIndex(of: 0x0a) {
                emit(s, pending[start..<nl], isError: isError)
                start = nl + 1
            }
            pending.removeSubrange(..<start)
            if pending.count > lineLimit {
                emit(s, pending[...], isError: isError)
                pending = []
            }
            if isError { s.pendingErr = pending } else { s.pendingOut = pending }
        }
        /// A stream whose pipes closed: its last unfinished line, then, once reaped, its verdict.
        func finish(_ s: Stream) {
            if !s.pendingOut.isEmpty { emit(s, s.pendingOut[...], isError: false); s.pendingOut = [] }
            if !s.pendingErr.isEmpty { emit(s, s.pendingErr[...], isError: true); s.pendingErr = [] }
            guard let code = s.exitCode, code != 0 else { return }
            failed.append((s.host, code))
            let others = streams.filter { $0 !== s && $0.exitCode == nil }.count
            printErr("swarmctl: host \(s.host): \(verb) stopped (exit \(code))" + (others > 0 ? "; following the other \(others) host\(others == 1 ? "" : "s")" : ""))
        }

        var buf = [UInt8](repeating: 0, count: readSize)
        var closing: [Stream] = []
        while stopSignal == nil, !outputBroken, streams.contains(where: { $0.exitCode == nil }) {
            var set: [(fd: Int32, events: Int16)] = [(signals.fd, Int16(POLLIN))]
            var owners: [(Stream, Bool)] = []
            for s in streams {
                if let fd = s.out { set.append((fd, Int16(POLLIN))); owners.append((s, false)) }
                if let fd = s.err { set.append((fd, Int16(POLLIN))); owners.append((s, true)) }
            }
            // A stream whose pipes closed is reaped as soon as it exits: look again shortly.
            guard let revents = try? Posix.poll(set, timeoutNanoseconds: closing.isEmpty ? nil : 20_000_000) else { break }
            if revents[0] != 0 { _ = stopRequested(); break }
            for (i, r) in revents.dropFirst().enumerated() where r != 0 {
                let (s, isError) = owners[i]
                guard let fd = isError ? s.err : s.out else { continue }
                let got = try? buf.withUnsafeMutableBytes { try Posix.readSome(fd, into: $0) }
                switch got {
                case let .done(n)? where n > 0: take(s, buf[0..<n], isError: isError)
                case .wouldBlock?: break
                default:
                    Posix.close(fd)
                    if isError { s.err = nil } else { s.out = nil }
                    if !s.isOpen { closing.append(s) }
                }
                if stopSignal != nil || outputBroken { break }
            }
            closing.removeAll { s in
                guard s.reap() else { return false }
                finish(s)
                return true
            }
        }

        // ^C, SIGTERM, a broken stdout or the last stream gone: end the rest (those that
        // ended by themselves first have their verdict).
        closing.removeAll { s in
            guard s.reap() else { return false }
            finish(s)
            return true
        }
        let live = streams.filter { $0.exitCode == nil }
        for s in live { _ = try? Posix.kill(s.pid, SIGTERM) }
        let deadline = Posix.monotonicNanoseconds() + 3_000_000_000
        while live.contains(where: { !$0.reap() }) {
            if Posix.monotonicNanoseconds() > deadline {
                for s in live where s.exitCode == nil { _ = try? Posix.kill(s.pid, SIGKILL) }
            }
            Posix.sleep(nanoseconds: 10_000_000)
        }
        if outputBroken {
            printErr("swarmctl: cannot write to stdout: stopped following \(hosts.count) hosts")
            return 1
        }
        guard !failed.isEmpty else { return 0 }
        let list = failed.map { "\($0.host)" }.joined(separator: ", ")
        printErr("swarmctl: \(verb) failed on \(failed.count) of \(hosts.count) hosts: \(list)")
        return failed.map(\.code).max() ?? 1
    }
}
