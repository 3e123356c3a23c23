import Foundation
import SwarmProtocol
import Testing

func roundTrip<T: Codable & Equatable>(_ value: T) throws -> T {
    let bytes = Codec.encode(value)
    #expect(bytes.last == UInt8(ascii: "\n"))
    #expect(bytes.dropLast().contains(UInt8(ascii: "\n")) == false, "a frame is one line")
    return try JSONDecoder().decode(T.self, from: Data(bytes.dropLast()))
}

let sampleStatus = StatusReport(
    daemon: DaemonStatus(pid: 42, version: "1.0.0", uptimeS: 12.5, rssBytes: 1 << 20, socket: "/run/swarm/ctl.sock", stateDir: "/var/lib/swarm"),
    apps: [
        AppStatus(name: "web", state: "running", config: "/etc/swarm/web.conf", generation: 3, workersWanted: 2, workersReady: 1,
                  lastReload: ReloadStatus(ok: false, message: "worker 1 failed\nits log", ageS: 4.25),
                  sockets: [SocketStatus(name: "http", listen: "[::]:8080", balance: "reuseport")],
                  workers: [
                      WorkerStatus(slot: 0, pid: 100, state: "ready", generation: 3, restarts: 0, uptimeS: 60, cpuPercent: 1.5,
                                   rssBytes: 30 << 20, cpuSeconds: 2.25, cpuShare: 0.5, statusText: "serving \"all\"", lastExit: "exit 1"),
                      WorkerStatus(slot: 1, pid: nil, state: "backoff", generation: 3, restarts: 4, uptimeS: 0),
                  ]),
        AppStatus(name: "idle", state: "stopped", config: "/etc/swarm/idle.conf", generation: 1, workersWanted: 0, workersReady: 0,
                  lastReload: nil, sockets: [], workers: []),
    ])

@Suite struct MessagesTests {
    @Test(arguments: Verb.allCases)
    func everyRequestRoundTrips(verb: Verb) throws {
        let full = Request(id: .max, verb: verb, files: ["/a b.conf", "/ünï/çødé.conf"], name: "web", replace: true,
                           count: -3, delta: -2, lines: 100, follow: false)
        #expect(try roundTrip(full) == full)
        #expect(try Codec.decodeRequest(Array(Codec.encode(full).dropLast())) == full)
        let bare = Request(id: 0, verb: verb)
        #expect(try roundTrip(bare) == bare)
        #expect(try Codec.decodeRequest(Array(Codec.encode(bare).dropLast())) == bare)
    }

    @Test func everyResponseRoundTrips() throws {
        var event = Response(id: 7, kind: .event)
        event.event = ProgressEvent(app: "web", kind: "worker-ready", slot: 1, pid: 123, generation: 2, message: "ready")
        var noSlot = Response(id: 8, kind: .event)
        noSlot.event = ProgressEvent(app: "web", kind: "done", slot: nil, pid: nil, generation: 2, message: "")
        var log = Response(id: 9, kind: .log)
        log.log = [LogLine(time: "2024-01-02T03:04:05.123456Z", app: "web", slot: 0, pid: 5, stream: "stderr", text: "boom\t\u{1F4A5}")]
        var status = Response.success(10)
        status.status = sampleStatus
        var version = Response.success(11, "pong")
        version.version = "1.2.3"
        let responses = [Response.success(1), .success(2, "started web"), .failure(3, "no app named 'x'"),
                         .failure(4, "worker 0 exited", details: ["line 1", "line 2"]), event, noSlot, log, status, version]
        for response in responses {
            #expect(try roundTrip(response) == response)
            #expect(try Codec.decodeResponse(Array(Codec.encode(response).dropLast())) == response)
        }
        #expect(throws: FrameError.self) { try Codec.decodeResponse(Array("{}".utf8)) }
    }

    @Test func logLineFormat() {
        let out = LogLine(time: "T", app: "web", slot: 2, pid: 9, stream: "stdout", text: "hi")
        #expect(out.formatted == "T web[2] 9 O hi")
        let err = LogLine(time: "T", app: "web", slot: 2, pid: 9, stream: "stderr", text: "no")
        #expect(err.formatted == "T web[2] 9 E no")
    }

    @Test func statusReportRoundTrips() throws {
        #expect(try roundTrip(sampleStatus) == sampleStatus)
    }

    /// The documented `status --json` schema, written out by hand: renaming a
    /// field breaks every script that reads it.
    @Test func statusSchemaFieldNames() throws {
        let json = """
            {"daemon": {"pid": 42, "version": "1.0.0", "uptime_s": 12.5, "rss_bytes": 1048576,
                        "socket": "/run/swarm/ctl.sock", "state_dir": "/var/lib/swarm"},
             "apps": [
              {"name": "web", "state": "running", "config": "/etc/swarm/web.conf", "generation": 3,
               "workers_wanted": 2, "workers_ready": 1,
               "last_reload": {"ok": false, "message": "worker 1 failed\\nits log", "age_s": 4.25},
               "sockets": [{"name": "http", "listen": "[::]:8080", "balance": "reuseport"}],
               "workers": [
                 {"slot": 0, "pid": 100, "state": "ready", "generation": 3, "restarts": 0, "uptime_s": 60,
                  "cpu_percent": 1.5, "rss_bytes": 31457280, "cpu_seconds": 2.25, "cpu_share": 0.5,
                  "status_text": "serving \\"all\\"", "last_exit": "exit 1"},
                 {"slot": 1, "pid": null, "state": "backoff", "generation": 3, "restarts": 4, "uptime_s": 0}]},
              {"name": "idle", "state": "stopped", "config": "/etc/swarm/idle.conf", "generation": 1,
               "workers_wanted": 0, "workers_ready": 0, "sockets": [], "workers": []}]}
            """
        let decoded = try JSONDecoder().decode(StatusReport.self, from: Data(json.utf8))
        #expect(decoded == sampleStatus)

        // And the encoder writes exactly these names, no camelCase leaking out.
        let object = try #require(try JSONSerialization.jsonObject(with: Data(Codec.encode(sampleStatus))) as? [String: Any])
        #expect(Set(object.keys) == ["daemon", "apps"])
        let daemon = try #require(object["daemon"] as? [String: Any])
        #expect(Set(daemon.keys) == ["pid", "version", "uptime_s", "rss_bytes", "socket", "state_dir"])
        let apps = try #require(object["apps"] as? [[String: Any]])
        #expect(Set(apps[0].keys) == ["name", "state", "config", "generation", "workers_wanted", "workers_ready", "last_reload", "sockets", "workers"])
        #expect(Set(apps[1].keys) == ["name", "state", "config", "generation", "workers_wanted", "workers_ready", "sockets", "workers"])
        let reload = try #require(apps[0]["last_reload"] as? [String: Any])
        #expect(Set(reload.keys) == ["ok", "message", "age_s"])
        let workers = try #require(apps[0]["workers"] as? [[String: Any]])
        #expect(Set(workers[0].keys) == ["slot", "pid", "state", "generation", "restarts", "uptime_s", "cpu_percent", "rss_bytes",
                                         "cpu_seconds", "cpu_share", "status_text", "last_exit"])
        #expect(Set(workers[1].keys) == ["slot", "state", "generation", "restarts", "uptime_s"])
        let sockets = try #require(apps[0]["sockets"] as? [[String: Any]])
        #expect(Set(sockets[0].keys) == ["name", "listen", "balance"])
    }

    @Test func requestAndResponseFieldNames() throws {
        let request = Request(id: 1, verb: .daemonReexec, files: ["/a"], name: "n", replace: true, count: 2, lines: 3, follow: true)
        let text = String(decoding: Codec.encode(request), as: UTF8.self)
        #expect(text == #"{"count":2,"files":["/a"],"follow":true,"id":1,"lines":3,"name":"n","replace":true,"v":1,"verb":"daemon-reexec"}"# + "\n")
        let response = String(decoding: Codec.encode(Response.failure(5, "no", details: ["d"])), as: UTF8.self)
        #expect(response == #"{"details":["d"],"error":"no","id":5,"kind":"result","ok":false,"v":1}"# + "\n")
    }

    @Test func readOnlyVerbs() {
        #expect(Verb.allCases.filter(\.isReadOnly) == [.ping, .version, .status])
    }

    @Test func peekID() {
        #expect(Codec.peekID(Array(#"{"id": 77, "verb": "nope"}"#.utf8)) == 77)
        #expect(Codec.peekID(Array("garbage".utf8)) == 0)
        #expect(Codec.peekID(Array(#"{"id": -1}"#.utf8)) == 0)
    }
}
