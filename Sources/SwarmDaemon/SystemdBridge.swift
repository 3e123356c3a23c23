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
