import CSystemd
import Glibc
import SwarmSystem

/// The daemon's one reactor, on libsystemd's sd-event: signals, fds, one
/// timer, and the service watchdog, all dispatched on the calling thread.
public final class EventLoop {
    let event: OpaquePointer
    private var timer: OpaquePointer?
    private var timerHandler: (() -> Void)?

    public init() throws {
        var e: OpaquePointer?
        let r = sd_event_new(&e)
        guard r >= 0, let e else { throw SystemError("sd_event_new", errno: -r) }
        event = e
        // Pings WATCHDOG=1 from the loop itself when WATCHDOG_USEC is set: a stalled loop is caught.
        _ = sd_event_set_watchdog(event, 1)
    }

    deinit {
        sd_event_unref(event)
    }

    /// sd-event dispatches one source per iteration, the most urgent pending
    /// one first, and among equals the one pending longest. Every source of
    /// swarmd's shares one priority, so each kind (signals, child exits,
    /// timers, control clients, worker output) gets its turn within one round
    /// of whatever else is pending: each handler does a bounded amount of work
    /// and re-arms itself (a deferred source) if more is left. A higher
    /// priority for signals would let a storm of SIGCHLD starve everything else.
    public enum Priority {
        public static let signals: Int64 = 0
        public static let normal: Int64 = 0
        public static let output: Int64 = 0
    }

    /// A registered callback; `cancel()` removes it.
    public final class Source {
        var source: OpaquePointer?
        let handler: Handler
        init(handler: Handler) { self.handler = handler }

        public func cancel() {
            if let s = source {
                source = nil
                _ = sd_event_source_set_enabled(s, Int32(SD_EVENT_OFF))
                sd_event_source_unref(s)
                Unmanaged.passUnretained(handler).release()
            }
        }

        /// Stop (or resume) dispatching without removing.
        public func setEnabled(_ on: Bool) {
            if let s = source { _ = sd_event_source_set_enabled(s, on ? Int32(SD_EVENT_ON) : Int32(SD_EVENT_OFF)) }
        }

        public func setPriority(_ p: Int64) {
            if let s = source { _ = sd_event_source_set_priority(s, p) }
        }

        deinit { cancel() }
    }

    final class Handler {
        let io: ((UInt32) -> Void)?
        let signal: ((Int32) -> Void)?
        let defer_: (() -> Void)?
        init(io: ((UInt32) -> Void)? = nil, signal: ((Int32) -> Void)? = nil, defer_: (() -> Void)? = nil) {
            self.io = io
            self.signal = signal
            self.defer_ = defer_
        }
    }

    /// Retains `handler` for the source's life and registers it with `add`,
    /// which receives the userdata pointer the C callback gets back.
    private func register(_ handler: Handler, _ call: String, subject: String? = nil,
                          _ add: (inout OpaquePointer?, UnsafeMutableRawPointer) -> Int32) throws -> Source {
        let src = Source(handler: handler)
        var s: OpaquePointer?
        let user = Unmanaged.passRetained(handler).toOpaque()
        let r = add(&s, user)
        guard r >= 0 else {
            Unmanaged.passUnretained(handler).release()
            throw SystemError(call, errno: -r, subject: subject)
        }
        src.source = s
        return src
    }

    private static func handler(_ user: UnsafeMutableRawPointer?) -> Handler {
        Unmanaged<Handler>.fromOpaque(user!).takeUnretainedValue()
    }

    private func addTime(at usec: UInt64, _ h: Handler) throws -> Source {
        try register(h, "sd_event_add_time") { s, user in
            // Accuracy 1 µs: 0 means sd-event's default of 250 ms, which delayed every
            // restart, readiness probe and spawn-batch continuation by up to a quarter second.
            sd_event_add_time(event, &s, CLOCK_MONOTONIC, usec, 1, { _, _, user in
                EventLoop.handler(user).defer_?()
                return 0
            }, user)
        }
    }

    /// Calls `handler` with the ready epoll events while `fd` is readable (level-triggered).
    public func addReader(_ fd: Int32, events: UInt32 = UInt32(EPOLLIN.rawValue), priority: Int64 = 0, _ handler: @escaping (UInt32) -> Void) throws -> Source {
        let src = try register(Handler(io: handler), "sd_event_add_io", subject: "fd \(fd)") { s, user in
            sd_event_add_io(event, &s, fd, events, { _, _, revents, user in
                EventLoop.handler(user).io?(revents)
                return 0
            }, user)
        }
        if priority != 0 { src.setPriority(priority) }
        return src
    }

    public func setIOEvents(_ source: Source, _ events: UInt32) {
        if let s = source.source { _ = sd_event_source_set_io_events(s, events) }
    }

    /// The signal must already be blocked.
    public func addSignal(_ sig: Int32, _ handler: @escaping (Int32) -> Void) throws -> Source {
        let src = try register(Handler(signal: handler), "sd_event_add_signal", subject: "signal \(sig)") { s, user in
            sd_event_add_signal(event, &s, sig, { _, info, user in
                EventLoop.handler(user).signal?(Int32(bitPattern: info!.pointee.ssi_signo))
                return 0
            }, user)
        }
        src.setPriority(Priority.signals)
        return src
    }

    /// Runs `handler` once per `trigger()`, on a later loop iteration: how a
    /// handler that stopped at its budget continues after the other pending
    /// sources had their turn.
    ///
    /// Each trigger makes a fresh sd-event defer source: sd-event orders equal
    /// priorities by when a source became pending, and a defer source stays
    /// "pending" from its creation on, so a reused one would always sort as
    /// the oldest and run ahead of everything else.
    public final class Deferred {
        let event: OpaquePointer
        let priority: Int64
        /// One handler for every source this makes; each source points at it unretained.
        private var box: Handler!
        private var current: OpaquePointer?

        init(event: OpaquePointer, priority: Int64, handler: @escaping () -> Void) {
            self.event = event
            self.priority = priority
            box = Handler(defer_: { [unowned self] in
                // sd-event tolerates the unref of the source it is dispatching.
                if let s = self.current { sd_event_source_unref(s) }
                self.current = nil
                handler()
            })
        }

        public var isTriggered: Bool { current != nil }

        public func trigger() {
            guard current == nil else { return }
            var s: OpaquePointer?
            let r = sd_event_add_defer(event, &s, { _, user in
                EventLoop.handler(user).defer_?()
                return 0
            }, Unmanaged.passUnretained(box).toOpaque())
            guard r >= 0, let s else { return }
            _ = sd_event_source_set_enabled(s, Int32(SD_EVENT_ONESHOT))
            if priority != 0 { _ = sd_event_source_set_priority(s, priority) }
            current = s
        }

        public func cancel() {
            if let s = current {
                _ = sd_event_source_set_enabled(s, Int32(SD_EVENT_OFF))
                sd_event_source_unref(s)
            }
            current = nil
        }

        deinit { cancel() }
    }

    public func addDeferred(priority: Int64 = Priority.normal, _ handler: @escaping () -> Void) -> Deferred {
        Deferred(event: event, priority: priority, handler: handler)
    }

    /// Runs `handler` after every dispatch, before the loop sleeps.
    public func addPost(_ handler: @escaping () -> Void) throws -> Source {
        try register(Handler(defer_: handler), "sd_event_add_post") { s, user in
            sd_event_add_post(event, &s, { _, user in
                EventLoop.handler(user).defer_?()
                return 0
            }, user)
        }
    }

    private lazy var coreTimer = OneShotTimer(loop: self) { [weak self] in self?.timerHandler?() }

    /// The one timer: fires `handler` at `deadline` (CLOCK_MONOTONIC ns); nil disarms.
    public func setTimer(at deadline: Int64?, _ handler: @escaping () -> Void) throws {
        timerHandler = handler
        try coreTimer.set(at: deadline)
    }

    /// A one-shot timer of a part's own (the core has `setTimer`): `set(at:)`
    /// arms or moves it, nil disarms; it fires once per arming, and a part
    /// with nothing to wait for costs no wake-up.
    public final class OneShotTimer {
        private unowned let loop: EventLoop
        private let handler: () -> Void
        private var source: Source?
        /// What it is armed for (CLOCK_MONOTONIC ns), nil while disarmed.
        public private(set) var deadline: Int64?

        init(loop: EventLoop, handler: @escaping () -> Void) {
            self.loop = loop
            self.handler = handler
        }

        public func set(at deadline: Int64?) throws {
            guard deadline != self.deadline else { return }
            self.deadline = deadline
            guard let deadline else {
                source?.setEnabled(false)
                return
            }
            let usec = UInt64(max(0, deadline + 999) / 1000)
            if let s = source?.source {
                _ = sd_event_source_set_time(s, usec)
                _ = sd_event_source_set_enabled(s, Int32(SD_EVENT_ONESHOT))
                return
            }
            source = try loop.addTime(at: usec, Handler(defer_: { [weak self] in
                guard let self else { return }
                self.deadline = nil
                self.handler()
            }))
        }

        public func cancel() {
            deadline = nil
            source?.cancel()
            source = nil
        }

        deinit { source?.cancel() }
    }

    public func addOneShotTimer(_ handler: @escaping () -> Void) -> OneShotTimer { OneShotTimer(loop: self, handler: handler) }

    /// Calls `handler` every `interval` nanoseconds (housekeeping, not supervision).
    /// The handler may cancel its own source.
    public func addPeriodic(every interval: Int64, _ handler: @escaping () -> Void) throws -> Source {
        // Weak, and read after the handler: a handler that cancelled its source has freed the sd-event source.
        final class Box { weak var owner: Source? }
        let box = Box()
        let h = Handler(defer_: {
            handler()
            if let s = box.owner?.source {
                var usec: UInt64 = 0
                _ = sd_event_now(sd_event_source_get_event(s), CLOCK_MONOTONIC, &usec)
                _ = sd_event_source_set_time(s, usec + UInt64(interval / 1000))
                _ = sd_event_source_set_enabled(s, Int32(SD_EVENT_ON))
            }
        })
        var nowUsec: UInt64 = 0
        _ = sd_event_now(event, CLOCK_MONOTONIC, &nowUsec)
        let src = try addTime(at: nowUsec + UInt64(interval / 1000), h)
        if let s = src.source { _ = sd_event_source_set_enabled(s, Int32(SD_EVENT_ON)) }
        box.owner = src
        return src
    }

    /// Runs until `exit(code:)`.
    public func run() throws -> Int32 {
        let r = sd_event_loop(event)
        guard r >= 0 else { throw SystemError("sd_event_loop", errno: -r) }
        return r
    }

    /// One iteration: waits at most `timeout` ns for something to dispatch.
    /// Returns false once the loop has exited. (For tests that drive the loop.)
    @discardableResult
    public func runOnce(timeout: Int64) throws -> Bool {
        let r = sd_event_run(event, UInt64(max(0, timeout / 1000)))
        guard r >= 0 else { throw SystemError("sd_event_run", errno: -r) }
        return sd_event_get_state(event) != Int32(SD_EVENT_FINISHED)
    }

    public func exit(code: Int32) {
        _ = sd_event_exit(event, code)
    }
}

/// epoll event bits, for callers that do not import the C headers.
public enum IOEvents {
    public static let readable = UInt32(EPOLLIN.rawValue)
    public static let writable = UInt32(EPOLLOUT.rawValue)
    public static let hangup = UInt32(EPOLLHUP.rawValue)
    /// Edge-triggered (EPOLLET): reported once per change of the fd's state, not
    /// while it stays ready. The reader must read until EAGAIN (or end of file), or
    /// re-arm with `setIOEvents` (sd-event never skips an edge-triggered update).
    public static let edgeTriggered = UInt32(EPOLLET.rawValue)
    public static let error = UInt32(EPOLLERR.rawValue)
    /// Urgent data; for cgroup.events, "populated" changed.
    public static let priority = UInt32(EPOLLPRI.rawValue)
}
