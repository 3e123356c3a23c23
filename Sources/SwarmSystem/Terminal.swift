import Glibc

/// A terminal put in raw mode for a full-screen program (`swarmctl top`):
/// keys arrive one by one, unechoed, Ctrl-C as a byte. `restore` puts back
/// exactly the settings found, on every way out the caller handles.
public final class RawTerminal {
    public let fd: Int32
    private var saved: termios
    private var restored = false

    public init(fd: Int32) throws {
        var t = termios()
        guard tcgetattr(fd, &t) == 0 else { throw SystemError("tcgetattr", errno: errno, subject: "fd \(fd)") }
        self.fd = fd
        saved = t
        var raw = t
        raw.c_lflag &= ~tcflag_t(ICANON | ECHO | ISIG | IEXTEN)
        raw.c_iflag &= ~tcflag_t(IXON | ICRNL)
        withUnsafeMutableBytes(of: &raw.c_cc) { cc in
            cc[Int(VMIN)] = 1
            cc[Int(VTIME)] = 0
        }
        guard tcsetattr(fd, TCSANOW, &raw) == 0 else { throw SystemError("tcsetattr", errno: errno, subject: "fd \(fd)") }
    }

    public func restore() {
        guard !restored else { return }
        restored = true
        _ = tcsetattr(fd, TCSANOW, &saved)
    }

    deinit { restore() }

    /// Rows and columns of the terminal on `fd` (TIOCGWINSZ), nil when it is not one.
    public static func size(of fd: Int32) -> (rows: Int, columns: Int)? {
        var ws = winsize()
        guard ioctl(fd, UInt(TIOCGWINSZ), &ws) == 0, ws.ws_row > 0, ws.ws_col > 0 else { return nil }
        return (Int(ws.ws_row), Int(ws.ws_col))
    }
}

/// The write end of the self-pipe: a signal handler may only call async-signal-safe write(2).
nonisolated(unsafe) private var signalPipeWriteFD: Int32 = -1

/// Signals as readable events (a self-pipe: Glibc's module has no signalfd):
/// each handled signal writes its number into a pipe a poll loop watches
/// beside its other fds. One per process.
public final class SignalDescriptor {
    public let fd: Int32
    private let writeFD: Int32

    /// `interruptingSystemCalls`: the handler is installed without `SA_RESTART`,
    /// so a blocking call it interrupts (a `write` to a terminal that does not
    /// read) fails with `EINTR` and the caller can look at the signal instead
    /// of staying blocked.
    public init(_ signals: [Int32], interruptingSystemCalls: Bool = false) throws {
        let fds = try Posix.pipe(nonBlockingRead: true)
        // A full pipe drops the byte rather than block the handler.
        try Posix.setNonBlocking(fds.write)
        fd = fds.read
        writeFD = fds.write
        signalPipeWriteFD = fds.write
        for s in signals {
            var action = sigaction()
            action.__sigaction_handler.sa_handler = { sig in
                var byte = UInt8(truncatingIfNeeded: sig)
                _ = Glibc.write(signalPipeWriteFD, &byte, 1)
            }
            sigemptyset(&action.sa_mask)
            action.sa_flags = interruptingSystemCalls ? 0 : SA_RESTART
            _ = sigaction(s, &action, nil)
        }
    }

    deinit {
        Glibc.close(fd)
        Glibc.close(writeFD)
    }

    /// The signals that arrived since the last call.
    public func take() -> [Int32] {
        var got: [Int32] = []
        var buf = [UInt8](repeating: 0, count: 64)
        while true {
            let n = buf.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress, $0.count) }
            guard n > 0 else { break }
            got += buf[0..<n].map { Int32($0) }
        }
        return got
    }
}
