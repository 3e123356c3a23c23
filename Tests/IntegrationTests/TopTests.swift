import Foundation
import Glibc
import SwarmProtocol
import SwarmSystem
import Testing

/// A tmux server of this test's own (its socket in the test dir): sessions,
/// keys and the pane's text, the way a user's terminal would show them.
final class Tmux {
    let socket: String
    let tmux: String

    init(dir: String) throws {
        guard let t = ([String])(["/usr/bin/tmux", "/bin/tmux"]).first(where: { access($0, X_OK) == 0 }) else {
            throw HarnessError("tmux is not installed (scripts/deps.sh installs it)")
        }
        tmux = t
        socket = dir + "/tmux.sock"
    }

    @discardableResult
    func run(_ args: [String]) throws -> String {
        let r = try runSync(tmux, ["-S", socket, "-f", "/dev/null"] + args)
        guard r.code == 0 else { throw HarnessError("tmux \(args.joined(separator: " ")) exited \(r.code): \(r.out)") }
        return r.out
    }

    /// A detached session running `script` (sh) at `columns`×`rows`.
    func start(_ session: String, script: String, columns: Int = 120, rows: Int = 32) throws {
        try run(["new-session", "-d", "-s", session, "-x", "\(columns)", "-y", "\(rows)", "/bin/sh \(script)"])
    }

    func capture(_ session: String) throws -> String { try run(["capture-pane", "-p", "-t", session]) }

    func keys(_ session: String, _ keys: String...) throws { try run(["send-keys", "-t", session] + keys) }

    /// The pid of the program the pane's shell runs (its only child).
    func programPid(_ session: String) throws -> Int32? {
        guard let sh = Int32(try run(["list-panes", "-t", session, "-F", "#{pane_pid}"]).trimmingCharacters(in: .whitespacesAndNewlines)) else { return nil }
        return readText("/proc/\(sh)/task/\(sh)/children").split(separator: " ").first.flatMap { Int32($0) }
    }

    /// Waits until the pane shows what `probe` looks for; the failure shows the pane.
    @discardableResult
    func waitFor<T>(_ session: String, _ what: String, timeout: Double = 15, _ probe: @escaping (String) -> T?) async throws -> T {
        var last = ""
        do {
            return try await waitUntil(timeout: timeout, what, every: 0.05) { () -> T? in
                last = try self.capture(session)
                return probe(last)
            }
        } catch {
            throw HarnessError("\(error)\npane:\n\(last)")
        }
    }

    /// Only our server: its socket names it.
    func kill() { _ = try? runSync(tmux, ["-S", socket, "kill-server"]) }
}

@Suite("swarmctl top under tmux: renders, refreshes, keys, restores the terminal")
struct TopTests {
    @Test("top shows every app and the selected one's workers, follows a kill -9, moves with j/k, shows a log, reloads after y, quits with q or SIGTERM, restores the terminal, redraws on resize")
    func topUnderTmux() async throws {
        try await withSwarm { s in
            let tmux = try Tmux(dir: s.dir)
            defer { tmux.kill() }
            let port = try Ports.free()
            try await s.startDaemon()
            try await s.ctlOK("start", try s.write("web.conf", Conf.python("web", workers: 2, port: port)))
            try await s.ctlOK("start", try s.signalApp("ticker", workers: 1, env: ["TICK": "1"]))
            let web = try await s.waitReady("web", workers: 2)
            try await s.waitReady("ticker", workers: 1)

            // The shell prints how top exited and the terminal's settings after it.
            let script = try s.write("top.sh", """
                SWARM_SOCKET=\(s.socket) \(Paths.swarmctl) top --interval 0.3
                echo "TOP-EXIT=$?"
                stty -a | tr ' ;' '\\n\\n' | grep -E -x -- '-?(icanon|echo|isig)' | tr '\\n' ' '
                echo STTY-DONE
                sleep 300

                """)
            try tmux.start("top", script: script)
            let first = try await tmux.waitFor("top", "top to show web and its two workers") { pane in
                pane.contains("> web") && pane.contains("Workers of web") && web.allSatisfy { pane.contains(" \($0) ") } ? pane : nil
            }
            #expect(first.contains("ticker") && first.contains("q quit"), "\(first)")

            // kill -9 one worker: the view refreshes with the new pid and a restart.
            kill(web[0], SIGKILL)
            let newPid = try await waitUntil(timeout: 20, "web slot 0 to be replaced") {
                let w = try s.quickStatus().apps.first { $0.name == "web" }?.workers.first { $0.slot == 0 }
                return w?.pid != web[0] && w?.state == "ready" ? w?.pid : nil
            }
            try await tmux.waitFor("top", "the new pid \(newPid) with 1 restart in the pane") { pane in
                pane.split(separator: "\n").first { $0.contains(" \(newPid) ") && $0.contains("killed by SIGKILL") }.map { _ in true }
            }
            let row = try tmux.capture("top").split(separator: "\n").first { $0.contains(" \(newPid) ") } ?? ""
            #expect(row.split(separator: " ").contains("1"), "restarts column: \(row)")
            #expect(!(try tmux.capture("top")).contains(" \(web[0]) "), "the killed pid is still shown")

            // j moves the selection; k moves it back.
            try tmux.keys("top", "j")
            try await tmux.waitFor("top", "ticker selected") { $0.contains("> ticker") && $0.contains("Workers of ticker") ? true : nil }
            try tmux.keys("top", "k")
            try await tmux.waitFor("top", "web selected again") { $0.contains("> web") && $0.contains("Workers of web") ? true : nil }
            try tmux.keys("top", "Down")
            try await tmux.waitFor("top", "ticker selected by the down arrow") { $0.contains("> ticker") ? true : nil }

            // Enter follows its log; q goes back.
            try tmux.keys("top", "Enter")
            try await tmux.waitFor("top", "ticker's log lines") { $0.contains("Log of ticker") && $0.contains("tick ") ? true : nil }
            try tmux.keys("top", "q")
            try await tmux.waitFor("top", "back to the apps") { $0.contains("Workers of ticker") ? true : nil }

            // r asks first; anything but y cancels; y reloads.
            try tmux.keys("top", "r")
            try await tmux.waitFor("top", "the reload question") { $0.contains("Reload ticker?") ? true : nil }
            try tmux.keys("top", "n")
            try await tmux.waitFor("top", "the reload cancelled") { $0.contains("reload of ticker cancelled") ? true : nil }
            #expect(try s.quickStatus().apps.first { $0.name == "ticker" }?.generation == 1)
            try tmux.keys("top", "r")
            try await tmux.waitFor("top", "the reload question again") { $0.contains("Reload ticker?") ? true : nil }
            try tmux.keys("top", "y")
            try await tmux.waitFor("top", "the reload's answer", timeout: 30) { $0.contains("ticker: reloaded") ? true : nil }
            #expect(try s.quickStatus().apps.first { $0.name == "ticker" }?.generation == 2)

            // SIGWINCH: drawn again at the new size, the footer on the last row.
            try tmux.run(["resize-window", "-t", "top", "-x", "90", "-y", "20"])
            try await tmux.waitFor("top", "a redraw at 90x20") { pane in
                let lines = pane.split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
                let visible = lines.last == "" ? Array(lines.dropLast()) : lines
                return visible.count == 20 && visible.last?.contains("up/down") == true && visible.allSatisfy { $0.count <= 90 } ? true : nil
            }

            // q quits, and the shell gets its terminal back as it was.
            try tmux.keys("top", "q")
            let after = try await tmux.waitFor("top", "top to exit and stty to report") { $0.contains("STTY-DONE") ? $0 : nil }
            #expect(after.contains("TOP-EXIT=0"), "\(after)")
            #expect(after.contains("isig icanon echo") && !after.contains("-icanon") && !after.contains("-echo"), "\(after)")
            #expect(!after.contains("Workers of"), "the alternate screen was not left: \(after)")

            // SIGTERM while it runs: the same restore.
            try tmux.start("term", script: script)
            try await tmux.waitFor("term", "a second top") { $0.contains("> web") ? true : nil }
            let pid = try #require(try tmux.programPid("term"))
            kill(pid, SIGTERM)
            let termed = try await tmux.waitFor("term", "top to exit on SIGTERM") { $0.contains("STTY-DONE") ? $0 : nil }
            #expect(termed.contains("TOP-EXIT=0") && termed.contains("isig icanon echo") && !termed.contains("-icanon"), "\(termed)")
        }
    }

    @Test("top without a terminal prints plain snapshots: one, or --count of them --interval apart")
    func plainWhenNotATerminal() async throws {
        try await withSwarm { s in
            let port = try Ports.free()
            try await s.startDaemon()
            try await s.ctlOK("start", try s.write("web.conf", Conf.python("web", workers: 2, port: port)))
            let pids = try await s.waitReady("web", workers: 2)
            let one = try await s.ctlOK("top").out
            #expect(!one.contains("\u{1b}"), "escape codes in plain output")
            #expect(one.components(separatedBy: "swarmd pid").count == 2, "\(one)")
            #expect(one.contains("web  running  2/2") && pids.allSatisfy { one.contains(" \($0) ") }, "\(one)")
            let three = try await s.ctlOK("top", "--interval", "0.2", "--count", "3").out
            #expect(three.components(separatedBy: "swarmd pid").count == 4, "\(three)")
            let bad = try await s.ctl("top", "--interval", "0")
            #expect(bad.code == 64 && bad.err.contains("--interval"), "\(bad)")
        }
    }
}
