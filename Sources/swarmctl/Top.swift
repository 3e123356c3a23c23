import ArgumentParser
import Glibc
import SwarmProtocol
import SwarmSystem

struct Top: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "A live view of every app and worker: state, CPU, memory, restarts, accept queue, health, uptime.",
        discussion: """
            Keys: up/down or k/j pick an app; Enter or l follows its log (q, h, Esc or left go back); \
            r reloads it (after y to confirm); q or Ctrl-C quits. The terminal is restored on quit, SIGINT, SIGTERM \
            and SIGHUP; SIGWINCH redraws at the new size. When stdin or stdout is not a terminal (or with --plain), \
            top prints one plain snapshot, or one every --interval seconds.
            """)
    @OptionGroup var global: GlobalOptions
    @Option(help: ArgumentHelp("Seconds between refreshes (default 1; plain output: one snapshot unless given).", valueName: "seconds"))
    var interval: Double?
    @Option(help: ArgumentHelp("Stop after this many refreshes.", valueName: "n")) var count: Int?
    @Flag(help: "Plain text, no full-screen view, even on a terminal.") var plain = false

    func validate() throws {
        if let interval { guard interval >= 0.1, interval <= 3600 else { throw ValidationError("--interval must be between 0.1 and 3600 seconds") } }
        if let count { guard count >= 1 else { throw ValidationError("--count must be 1 or more") } }
    }

    func run() throws {
        try execute {
            if plain || !Console.isTerminal(.output) || !Posix.isTerminal(0) {
                try runPlain()
            } else {
                try TopScreen(global: global, interval: interval ?? 1, count: count).run()
            }
        }
    }

    func runPlain() throws {
        let snapshots = count ?? (interval == nil ? 1 : Int.max)
        var source = StatusSource(global: global)
        for i in 0..<snapshots {
            if i > 0 { Posix.sleep(nanoseconds: Int64((interval ?? 1) * 1e9)) }
            let report = try source.fetch()
            var lines = TopView.plain(report, clock: TopView.clock())
            if i + 1 < snapshots { lines.append("") }
            printLines(lines)
        }
    }
}

/// One connection to swarmd, reconnected when it was lost.
struct StatusSource {
    let global: GlobalOptions
    var client: Client?

    init(global: GlobalOptions) { self.global = global }

    mutating func fetch() throws -> StatusReport {
        let c = try client ?? Client(global)
        client = c
        do {
            var parts = StatusAssembler()
            let r = try c.call(c.request(.status)) { parts.add($0) }
            guard let s = r.status else { throw CtlError(description: "swarmd sent no status") }
            return parts.report(s)
        } catch {
            client = nil
            throw error
        }
    }

    mutating func logs(_ app: String, lines: Int) throws -> [LogLine] {
        let c = try client ?? Client(global)
        client = c
        var got: [LogLine] = []
        do {
            _ = try c.call(c.request(.logs, name: app, lines: lines, follow: false)) { got += $0.log ?? [] }
        } catch {
            client = nil
            throw error
        }
        return got
    }
}

/// What top shows, as lines: no terminal codes but the few `paint` adds.
/// Every text from swarmd is escaped here.
enum TopView {
    static let keysHelp = "up/down j/k select  Enter/l log  r reload  q quit"

    static func clock() -> String {
        var t = time_t(Posix.realtimeNanoseconds() / 1_000_000_000)
        var tmv = tm()
        localtime_r(&t, &tmv)
        func two(_ v: Int32) -> String { v < 10 ? "0\(v)" : "\(v)" }
        return "\(two(tmv.tm_hour)):\(two(tmv.tm_min)):\(two(tmv.tm_sec))"
    }

    static func header(_ r: StatusReport, clock: String) -> String {
        let workers = r.apps.reduce(0) { $0 + $1.workers.filter { $0.pid != nil }.count }
        return "swarmd pid \(r.daemon.pid)  up \(StatusTable.duration(r.daemon.uptimeS))  rss \(StatusTable.bytes(r.daemon.rssBytes))  "
            + "\(r.apps.count) apps  \(workers) workers  \(clock)"
    }

    static let appHeader = ["APP", "STATE", "READY", "GEN", "CPU%", "RSS", "RESTARTS"]
    static let workerHeader = ["SLOT", "PID", "STATE", "HEALTH", "CPU%", "RSS", "RESTARTS", "QUEUE", "UPTIME", "LAST EXIT"]

    static func appRow(_ a: AppStatus) -> [String] {
        let cpu = a.workers.compactMap(\.cpuPercent)
        let rss = a.workers.compactMap(\.rssBytes)
        return [TerminalText.escape(a.name), TerminalText.escape(a.state), "\(a.workersReady)/\(a.workersWanted)", "\(a.generation)",
                cpu.isEmpty ? "-" : fixed(cpu.reduce(0, +), 1), rss.isEmpty ? "-" : StatusTable.bytes(rss.reduce(0, +)),
                "\(a.workers.reduce(0) { $0 + $1.restarts })"]
    }

    static func workerRow(_ w: WorkerStatus) -> [String] {
        let lastExit = w.pid == nil || w.restarts > 0 ? w.lastExit.map(TerminalText.escape) ?? "-" : "-"
        return ["\(w.slot)", w.pid.map(String.init) ?? "-", TerminalText.escape(w.state), w.health.map(TerminalText.escape) ?? "-",
                w.cpuPercent.map { fixed($0, 1) } ?? "-", w.rssBytes.map(StatusTable.bytes) ?? "-", "\(w.restarts)",
                w.acceptQueue.map(String.init) ?? "0", w.pid == nil ? "-" : StatusTable.duration(w.uptimeS), lastExit]
    }

    /// The plain snapshot: every app with its workers.
    static func plain(_ r: StatusReport, clock: String) -> [String] {
        var out = [header(r, clock: clock)]
        if r.apps.isEmpty { out.append("(no apps)") }
        for a in r.apps {
            out.append("")
            out += Columns.format([appHeader, appRow(a)], indent: 0)
            out += Columns.format([workerHeader] + a.workers.map(workerRow), indent: 2)
        }
        return out
    }

    /// The full screen: apps (the selected one marked), then the selected app's workers.
    static func screen(_ r: StatusReport, selected: Int, rows: Int, columns: Int, footer: String, clock: String) -> [String] {
        var out = [header(r, clock: clock), ""]
        let appLines = Columns.format([appHeader] + r.apps.map(appRow), indent: 2)
        out.append(appLines[0])
        for (i, line) in appLines.dropFirst().enumerated() {
            out.append(i == selected ? reverse(">" + line.dropFirst(), width: columns) : line)
        }
        if r.apps.isEmpty { out.append("  (no apps; start one with: swarmctl start app.conf)") }
        if r.apps.indices.contains(selected) {
            let a = r.apps[selected]
            out.append("")
            out.append("Workers of \(TerminalText.escape(a.name))  (config \(TerminalText.escape(a.config)))")
            let lines = Columns.format([workerHeader] + a.workers.map(workerRow), indent: 2)
            let room = max(1, rows - out.count - 2)
            if lines.count > room {
                out += lines.prefix(room - 1)
                out.append("  … \(lines.count - room + 1) more workers (a taller window shows them)")
            } else {
                out += lines
            }
        }
        return fit(out, rows: rows, columns: columns, footer: footer)
    }

    static func logScreen(_ app: String, _ lines: [LogLine], rows: Int, columns: Int, footer: String) -> [String] {
        var out = ["Log of \(TerminalText.escape(app)), following  (q, h, Esc or left: back)"]
        out += lines.suffix(max(0, rows - 2)).map(\.formatted)
        return fit(out, rows: rows, columns: columns, footer: footer)
    }

    /// Exactly `rows` lines, none wider than `columns`, the footer last.
    static func fit(_ lines: [String], rows: Int, columns: Int, footer: String) -> [String] {
        var out = Array(lines.prefix(max(0, rows - 1))).map { cut($0, columns) }
        while out.count < rows - 1 { out.append("") }
        out.append(cut(footer, columns))
        return out
    }

    /// At most `width` visible characters (escape sequences we added are not counted).
    static func cut(_ line: String, _ width: Int) -> String {
        var visible = 0
        var out = ""
        var inEscape = false
        for c in line {
            if c == "\u{1b}" { inEscape = true }
            if inEscape {
                out.append(c)
                if c.isLetter { inEscape = false }
                continue
            }
            if visible >= width { continue }
            out.append(c)
            visible += 1
        }
        return out
    }

    static func reverse(_ line: String, width: Int) -> String {
        "\u{1b}[7m" + line.padding(width) + "\u{1b}[0m"
    }
}

/// The full-screen loop: one poll over stdin, a signalfd and a pending
/// reload's connection, with the next refresh as its only deadline.
final class TopScreen {
    enum Mode: Equatable {
        case apps
        case log(String)
        case confirmReload(String)
    }

    let global: GlobalOptions
    let interval: Double
    let count: Int?
    var source: StatusSource
    var report: StatusReport?
    var selectedName: String?
    var mode = Mode.apps
    var logLines: [LogLine] = []
    var message = ""
    var refreshes = 0
    /// A reload's own connection: its answer arrives while the view goes on.
    var reload: (client: Client, app: String)?

    init(global: GlobalOptions, interval: Double, count: Int?) {
        self.global = global
        self.interval = interval
        self.count = count
        source = StatusSource(global: global)
    }

    var selectedIndex: Int {
        guard let apps = report?.apps, !apps.isEmpty else { return 0 }
        return apps.firstIndex { $0.name == selectedName } ?? 0
    }

    func run() throws {
        let terminal = try RawTerminal(fd: 0)
        let signals = try SignalDescriptor([SIGINT, SIGTERM, SIGHUP, SIGWINCH])
        // The alternate screen, the cursor hidden; both undone on every way out of this function.
        Console.write("\u{1b}[?1049h\u{1b}[?25l")
        defer {
            Console.write("\u{1b}[0m\u{1b}[?25h\u{1b}[?1049l")
            terminal.restore()
        }
        var nextRefresh = Posix.monotonicNanoseconds()
        while true {
            let now = Posix.monotonicNanoseconds()
            if now >= nextRefresh {
                if let count, refreshes >= count { return }
                refresh()
                refreshes += 1
                draw()
                nextRefresh = now + Int64(interval * 1e9)
            }
            var fds: [(fd: Int32, events: Int16)] = [(0, Int16(POLLIN)), (signals.fd, Int16(POLLIN))]
            if let reload { fds.append((reload.client.fd, Int16(POLLIN))) }
            let ready = try Posix.poll(fds, timeoutNanoseconds: max(0, nextRefresh - Posix.monotonicNanoseconds()))
            if ready[1] != 0 {
                for sig in signals.take() {
                    if sig == SIGWINCH { draw() } else { return }
                }
            }
            if ready.count > 2, ready[2] != 0 { reloadAnswered() }
            if ready[0] != 0 {
                var buf = [UInt8](repeating: 0, count: 64)
                let n = buf.withUnsafeMutableBytes { Glibc.read(0, $0.baseAddress, $0.count) }
                if n == 0 { return }
                if n < 0 { continue }
                switch handle(Array(buf[0..<n])) {
                case .quit: return
                case .refreshNow: nextRefresh = 0
                case .redraw: draw()
                case .nothing: break
                }
            }
        }
    }

    enum Reaction { case quit, refreshNow, redraw, nothing }

    /// Keys: one read may hold several (a paste, or keys typed while swarmd answered).
    func handle(_ bytes: [UInt8]) -> Reaction {
        var reaction = Reaction.nothing
        var i = 0
        while i < bytes.count {
            var key = String(UnicodeScalar(bytes[i]))
            if bytes[i] == 0x1b, i + 2 < bytes.count, bytes[i + 1] == UInt8(ascii: "[") || bytes[i + 1] == UInt8(ascii: "O") {
                key = ["A": "up", "B": "down", "C": "right", "D": "left"][String(UnicodeScalar(bytes[i + 2]))] ?? "?"
                i += 3
            } else {
                if bytes[i] == 0x1b { key = "esc" }
                i += 1
            }
            switch press(key) {
            case .quit: return .quit
            case .refreshNow: reaction = .refreshNow
            case .redraw: if reaction == .nothing { reaction = .redraw }
            case .nothing: break
            }
        }
        return reaction
    }

    func press(_ key: String) -> Reaction {
        if key == "\u{03}" { return .quit }
        switch mode {
        case let .confirmReload(app):
            mode = .apps
            guard key == "y" || key == "Y" else {
                message = "reload of \(app) cancelled"
                return .redraw
            }
            startReload(app)
            return .redraw
        case .log:
            guard ["q", "h", "esc", "left"].contains(key) else { return .nothing }
            mode = .apps
            return .refreshNow
        case .apps:
            let apps = report?.apps ?? []
            switch key {
            case "q": return .quit
            case "up", "k", "down", "j":
                guard !apps.isEmpty else { return .nothing }
                let step = key == "up" || key == "k" ? -1 : 1
                selectedName = apps[min(max(selectedIndex + step, 0), apps.count - 1)].name
                return .redraw
            case "\r", "\n", "l", "right":
                guard apps.indices.contains(selectedIndex) else { return .nothing }
                mode = .log(apps[selectedIndex].name)
                return .refreshNow
            case "r":
                guard apps.indices.contains(selectedIndex) else { return .nothing }
                if let reload {
                    message = "a reload of \(reload.app) is still running"
                    return .redraw
                }
                mode = .confirmReload(apps[selectedIndex].name)
                return .redraw
            default:
                return .nothing
            }
        }
    }

    func refresh() {
        do {
            if case let .log(app) = mode {
                let rows = RawTerminal.size(of: 1)?.rows ?? 24
                logLines = try source.logs(app, lines: max(1, rows - 2))
            } else {
                report = try source.fetch()
                if selectedName == nil || !(report?.apps.contains { $0.name == selectedName } ?? false) {
                    selectedName = report?.apps.first?.name
                }
            }
        } catch {
            message = "cannot refresh: \(error)"
        }
    }

    func startReload(_ app: String) {
        do {
            let c = try Client(global)
            try c.send(c.request(.reload, name: app))
            reload = (c, app)
            message = "reloading \(app)…"
        } catch {
            message = "reload of \(app) failed: \(error)"
        }
    }

    /// Progress lines are shown as they come; the result ends the reload.
    func reloadAnswered() {
        guard let (client, app) = reload else { return }
        do {
            guard var r = try client.receive() else {
                reload = nil
                message = "reload of \(app): swarmd closed the connection"
                return draw()
            }
            // One read may have brought the last progress line and the result together: the
            // socket then stays quiet, so whatever is already buffered is handled now.
            while true {
                if let e = r.event { message = "reload \(app): \(e.message)" }
                if r.kind == .result {
                    reload = nil
                    message = r.ok == true ? (r.message ?? "\(app): reloaded") : "reload of \(app) failed: \(r.error ?? "?")"
                    break
                }
                guard let next = try client.bufferedResponse() else { break }
                r = next
            }
        } catch {
            reload = nil
            message = "reload of \(app) failed: \(error)"
        }
        draw()
    }

    func draw() {
        let size = RawTerminal.size(of: 1) ?? (24, 80)
        var footer = TopView.keysHelp
        if case let .confirmReload(app) = mode { footer = "Reload \(app)? Rolling restart of every worker. y/N" }
        // The keys first: a long message is what gets cut at the right edge.
        if !message.isEmpty, case .apps = mode { footer += "   |   " + message }
        let lines: [String]
        if case let .log(app) = mode {
            lines = TopView.logScreen(app, logLines, rows: size.rows, columns: size.columns, footer: TerminalText.escape("q back  |  " + message))
        } else if let report {
            lines = TopView.screen(report, selected: selectedIndex, rows: size.rows, columns: size.columns,
                                   footer: TerminalText.escape(footer), clock: TopView.clock())
        } else {
            lines = TopView.fit(["swarmctl top: waiting for swarmd", TerminalText.escape(message)], rows: size.rows, columns: size.columns,
                                footer: TopView.keysHelp)
        }
        // Home, each line then clear to its end: no flicker of a full clear.
        Console.write("\u{1b}[H" + lines.joined(separator: "\u{1b}[K\r\n") + "\u{1b}[K")
    }
}
