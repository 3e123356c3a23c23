import SwarmCore
import SwarmProtocol
import SwarmSystem

/// The lifecycle events part of the shell: what `EventDeriver` derives is
/// numbered, stamped, kept in a small ring, streamed to the control clients
/// that subscribed (`events`), and handed to the hooks.
///
/// A subscriber that reads too slowly never holds the loop or grows
/// swarmd's memory: while more than `ControlServer.readPause` of its replies
/// are unread, its events are counted, not queued, and the next one it gets
/// is preceded by a `dropped` record with the count. One that takes nothing
/// at all for `ControlServer.stallTimeout` is closed by the control server,
/// like any client that does not read its replies.
final class LifecycleEvents {
    final class Subscriber {
        weak var client: ControlClient?
        let requestID: UInt64
        /// nil: every app.
        let app: String?
        var dropped = 0

        init(client: ControlClient, requestID: UInt64, app: String?) {
            self.client = client
            self.requestID = requestID
            self.app = app
        }
    }

    /// Events kept for `events -n N` and new subscribers.
    static let ringSize = 512

    let deriver = EventDeriver()
    let hooks: HookRunner
    private(set) var ring: [EventRecord] = []
    private var ringHead = 0
    private(set) var seq: UInt64 = 0
    private var subscribers: [ObjectIdentifier: Subscriber] = [:]

    init(loop: EventLoop, kernel: Kernel) {
        hooks = HookRunner(loop: loop, kernel: kernel)
    }

    var subscriberCount: Int { subscribers.count }

    /// The last `count` kept events of `app` (nil: all), oldest first.
    func recent(_ count: Int, app: String?) -> [EventRecord] {
        guard count > 0 else { return [] }
        let ordered = ring.count < LifecycleEvents.ringSize ? ring : Array(ring[ringHead...] + ring[..<ringHead])
        return Array(ordered.filter { app == nil || $0.app == app }.suffix(count))
    }

    func stamp(_ d: LifecycleDraft, wallClock: Int64) -> EventRecord {
        seq += 1
        return EventRecord(seq: seq, time: Timestamp.rfc3339(nanosecondsSinceEpoch: wallClock), kind: d.kind, app: d.app,
                           slot: d.slot, pid: d.pid, generation: d.generation, message: d.message,
                           details: d.details.isEmpty ? nil : d.details)
    }

    func keep(_ r: EventRecord) {
        if ring.count < LifecycleEvents.ringSize {
            ring.append(r)
        } else {
            ring[ringHead] = r
            ringHead = (ringHead + 1) % LifecycleEvents.ringSize
        }
    }

    func subscribe(_ client: ControlClient, requestID: UInt64, app: String?) {
        subscribers[ObjectIdentifier(client)] = Subscriber(client: client, requestID: requestID, app: app)
    }

    func unsubscribe(_ client: ControlClient) {
        subscribers[ObjectIdentifier(client)] = nil
    }

    /// Sends `r` to every subscriber it concerns, through `send`.
    func fanOut(_ r: EventRecord, send: (ControlClient, Response) -> Void) {
        for (key, sub) in subscribers {
            guard let client = sub.client, !client.closed else {
                subscribers[key] = nil
                continue
            }
            if let app = sub.app, app != r.app { continue }
            if client.queuedBytes > ControlServer.readPause {
                sub.dropped += 1
                continue
            }
            if sub.dropped > 0 {
                var d = Response(id: sub.requestID, kind: .record)
                d.record = EventRecord(seq: r.seq, time: r.time, kind: "dropped", app: sub.app ?? "",
                                       message: "\(sub.dropped) events dropped: this client reads too slowly",
                                       details: ["count": String(sub.dropped)])
                sub.dropped = 0
                send(client, d)
            }
            var resp = Response(id: sub.requestID, kind: .record)
            resp.record = r
            send(client, resp)
        }
    }
}

extension Manager {
    /// Numbers and publishes what the deriver found for the event just handled.
    func publishLifecycle() {
        let drafts = lifecycle.deriver.take()
        guard !drafts.isEmpty else { return }
        let wall = kernel.wallClock()
        for d in drafts {
            let r = lifecycle.stamp(d, wallClock: wall)
            lifecycle.keep(r)
            lifecycle.fanOut(r) { client, response in control.send(client, response) }
            // Not while shutting down: swarmd would not outlive them (they die with it, SIGKILL).
            if !supervisor.shuttingDown, let spec = supervisor.apps[r.app]?.spec { lifecycle.hooks.run(r, spec: spec) }
        }
    }

    /// An event of the shell's own (config errors, drains), published at once.
    func shellEvent(_ d: LifecycleDraft) {
        lifecycle.deriver.add(d)
        // Inside a feed, the feed publishes it in order; outside, now.
        if !feeding { publishLifecycle() }
    }

    func setUpLifecycle() {
        lifecycle.hooks.report = { [weak self] level, text in self?.note(level, text) }
    }

    /// `events`: the last `lines` kept events, then (unless `follow` is false) every new one.
    func subscribeEvents(_ request: Request, _ client: ControlClient) {
        let id = request.id
        var app: String?
        if let name = request.name, name != "all" {
            guard AppName.isSelector(name) else { return control.send(client, .failure(id, "events: '\(name)' is not an app name")) }
            app = name
        }
        let count = max(0, min(request.lines ?? 0, LifecycleEvents.ringSize))
        for r in lifecycle.recent(count, app: app) {
            var resp = Response(id: id, kind: .record)
            resp.record = r
            control.send(client, resp)
        }
        guard request.follow ?? true else { return control.send(client, .success(id)) }
        client.subscribedToEvents = true
        lifecycle.subscribe(client, requestID: id, app: app)
    }
}
