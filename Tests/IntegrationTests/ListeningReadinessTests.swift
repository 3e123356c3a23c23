import Foundation
import Glibc
import SwarmProtocol
import Testing

/// A Python worker blocked in accept() on fd 3, with no selector: the
/// "listening" probe must see it in /proc/PID/task/*/syscall.
let blockingAcceptWorker = """
import os, socket, time
time.sleep(float(os.environ.get("START_DELAY_S", "0")))
s = socket.socket(fileno=3)
s.setblocking(True)
while True:
    c, _ = s.accept()
    c.recv(65536)
    body = ("%d\\n" % os.getpid()).encode()
    c.sendall(b"HTTP/1.1 200 OK\\r\\nContent-Length: %d\\r\\nConnection: close\\r\\n\\r\\n" % len(body) + body)
    c.close()

"""

/// An asyncio worker: epoll watches fd 3 once it serves.
let asyncioWorker = """
import asyncio, os, socket
async def handle(reader, writer):
    await reader.readuntil(b"\\r\\n\\r\\n")
    body = ("%d\\n" % os.getpid()).encode()
    writer.write(b"HTTP/1.1 200 OK\\r\\nContent-Length: %d\\r\\nConnection: close\\r\\n\\r\\n" % len(body) + body)
    await writer.drain()
    writer.close()
async def main():
    await asyncio.sleep(float(os.environ.get("START_DELAY_S", "0")))
    server = await asyncio.start_server(handle, sock=socket.socket(fileno=3))
    async with server:
        await server.serve_forever()
asyncio.run(main())

"""

@Suite("Readiness: listening mode needs no change to the app")
struct ListeningReadinessTests {
    /// Starts one app whose worker only begins waiting on fd 3 after a delay,
    /// and checks it is reported ready only then, and answers.
    func check(_ s: Swarm, command: [String], env: [String: String] = [:], delay: Double) async throws {
        let port = try Ports.free()
        let conf = try s.write("app.conf", Conf.app("app", command: command, workers: 2, port: port, env: env,
                                                       extra: "[ready]\nmode = \"listening\"\ntimeout = \"10s\""))
        try await s.startDaemon()
        let started = Date()
        try await s.ctlOK("start", conf)
        let waited = elapsed(since: started)
        #expect(waited >= delay, "start returned after \(waited)s, before the workers listened (after \(delay)s)")
        let pids = try await s.waitReady("app", workers: 2)
        let answering = try answeringPids(port, connections: 16)
        #expect(Set(answering.keys).isSubset(of: Set(pids)) && !answering.isEmpty)
    }

    @Test("a Python worker blocked in accept()")
    func blockingAccept() async throws {
        try await withSwarm { s in
            let script = try s.write("blocking.py", blockingAcceptWorker)
            try await check(s, command: [Paths.python, script], env: ["START_DELAY_S": "0.7"], delay: 0.7)
        }
    }

    @Test("a Python asyncio worker (epoll)")
    func asyncio() async throws {
        try await withSwarm { s in
            let script = try s.write("aio.py", asyncioWorker)
            try await check(s, command: [Paths.python, script], env: ["START_DELAY_S": "0.7"], delay: 0.7)
        }
    }

    @Test("a Python ThreadingHTTPServer (poll via selectors)")
    func selectors() async throws {
        try await withSwarm { s in
            try await check(s, command: [Paths.python, Paths.pythonApps + "/server.py"], env: ["SERVER_START_DELAY_MS": "700"], delay: 0.7)
        }
    }

    @Test("a Node server (libuv epoll)")
    func node() async throws {
        try await withSwarm { s in
            try await check(s, command: [Paths.node, Paths.nodeApps + "/server.js"], env: ["SERVER_START_DELAY_MS": "700"], delay: 0.7)
        }
    }

    @Test("a SwiftNIO server (epoll)")
    func nio() async throws {
        let nio = Paths.binDir + "/swarm-example-nio"
        try #require(access(nio, X_OK) == 0, "\(nio) is missing: run `swift build` first")
        try await withSwarm { s in
            try await check(s, command: [nio], delay: 0)
        }
    }

    @Test("a worker that never listens misses its readiness timeout")
    func neverListens() async throws {
        try await withSwarm { s in
            let port = try Ports.free()
            let conf = try s.write("idle.conf", Conf.app("idle", command: ["/bin/sleep", "1000"], workers: 1, port: port,
                                                           extra: "[ready]\nmode = \"listening\"\ntimeout = \"1s\"\n[restart]\ninitial_delay = \"5s\""))
            try await s.startDaemon()
            let r = try await s.ctl("start", conf)
            #expect(r.code == 1)
            #expect(r.err.contains("was not ready within 1s"), "\(r)")
        }
    }
}
