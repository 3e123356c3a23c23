import SwarmSystem

/// What swarmd tells its service manager (READY=1, STATUS=, RELOADING=1,
/// STOPPING=1) and what the manager gave it (sockets, the journal). The
/// watchdog (WATCHDOG=1) is pinged by the event loop itself: a stalled loop is caught.
final class SystemdBridge {
    let kernel: Kernel
    /// READY=1 went out (start-up is over).
    private(set) var sentReady: Bool
    private(set) var lastStatus = ""

    init(kernel: Kernel, sentReady: Bool = false) {
        self.kernel = kernel
        self.sentReady = sentReady
    }

    /// Each app's part of STATUS=, kept between dispatches: only the apps the
    /// core says changed are described again.
    private var parts: [String: String] = [:]

    /// Recomputes the parts of the apps in `changed` (nil from `describe`: the
    /// app is gone) and sends STATUS= if the text changed. `order` is the apps'
    /// order in the text.
    func update(changed: Set<String>, order: [String], describe: (String) -> String?) {
        guard !changed.isEmpty || lastStatus.isEmpty else { return }
        for name in changed { parts[name] = describe(name) }
        let text = order.compactMap { parts[$0] }
        status(text.isEmpty ? "no apps" : text.joined(separator: " · "))
    }

    /// The status text changed: tell the manager (once per change).
    func status(_ text: String) {
        guard text != lastStatus else { return }
        lastStatus = text
        kernel.notify("STATUS=\(text)")
    }

    /// Start-up is over: READY=1, once.
    func ready() {
        guard !sentReady else { return }
        sentReady = true
        kernel.notify("READY=1\nSTATUS=\(lastStatus.isEmpty ? "no apps" : lastStatus)")
    }

    /// A re-executed swarmd is up again: READY=1 with the status it computed.
    func readyAgain() {
        sentReady = true
        kernel.notify("READY=1\nSTATUS=\(lastStatus)")
    }

    /// SIGHUP (Type=notify-reload): the manager waits for `reloaded()`.
    func reloading() {
        kernel.notify("RELOADING=1\nMONOTONIC_USEC=\(kernel.now() / 1000)")
    }

    func reloaded() {
        kernel.notify("READY=1\nSTATUS=\(lastStatus)")
    }

    func stopping() {
        kernel.notify("STOPPING=1")
    }
}
