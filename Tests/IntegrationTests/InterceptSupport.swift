import Foundation
import Glibc
import SwarmSystem

// Servers that know nothing of swarm: they bind process.env.PORT themselves.
// Under swarmd their bind() is intercepted and answered with the slot's socket.

enum InterceptApps {
    /// An unmodified Node server: `listen(process.env.PORT)` (libuv binds `::`,
    /// dual stack). On SIGTERM it does what a Node app behind PM2 does: stop
    /// listening, finish what it has, exit.
    static let node = """
        const http = require('http');
        let stopping = false;
        const server = http.createServer((req, res) => {
          if (stopping) res.setHeader('Connection', 'close');
          res.end(process.pid + '\\n');
        });
        server.listen(process.env.PORT);
        process.on('SIGTERM', () => {
          stopping = true;
          server.close(() => process.exit(0));
          setTimeout(() => process.exit(0), 3000).unref();
        });

        """

    /// Python's http.server on ("127.0.0.1", PORT), answering its pid. `prelude`
    /// runs first (in the module, with `port` set); `serve()` serves forever.
    static func python(prelude: String = "", main: String = "serve()") -> String {
        """
        import http.server, os, signal, socket, sys
        port = int(os.environ["PORT"])
        class H(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            def do_GET(self):
                body = ("%d\\n" % os.getpid()).encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
            def log_message(self, *a): pass
        def serve(host="127.0.0.1"):
            http.server.HTTPServer((host, port), H).serve_forever()
        signal.signal(signal.SIGTERM, lambda *a: os._exit(0))
        \(prelude)
        \(main)

        """
    }

    /// A statically linked Go net/http server on ":$PORT" (no libc: nothing but
    /// the kernel boundary can reach its bind).
    static let goSource = """
        package main

        import (
        \t"fmt"
        \t"net/http"
        \t"os"
        )

        func main() {
        \thttp.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) { fmt.Fprintf(w, "%d\\n", os.Getpid()) })
        \tif err := http.ListenAndServe(":"+os.Getenv("PORT"), nil); err != nil {
        \t\tfmt.Fprintln(os.Stderr, err)
        \t\tos.Exit(1)
        \t}
        }

        """

    static var goTool: String? {
        for dir in ["/usr/bin", "/usr/lib/go/bin", "/usr/local/go/bin"] where access("\(dir)/go", X_OK) == 0 { return "\(dir)/go" }
        return nil
    }

    /// Builds `goSource` with CGO_ENABLED=0 into `dir`.
    static func buildGoServer(in dir: String) async throws -> String {
        try await buildStaticGo(goSource, in: dir, name: "goserver")
    }

    /// Builds `source` into `dir/name`, a static binary (CGO_ENABLED=0, Debian's
    /// golang-go, GOPATH mode), executable whatever the umask. The build cache is
    /// shared between test runs (a first build of net/http takes a minute on a busy machine).
    static func buildStaticGo(_ source: String, in dir: String, name: String) async throws -> String {
        guard let go = goTool else {
            throw HarnessError("no go tool: run scripts/deps.sh (it installs Debian's golang-go)")
        }
        let src = dir + "/" + name + ".go"
        try source.write(toFile: src, atomically: true, encoding: .utf8)
        let cache = "/tmp/swarm-it-gocache"
        mkdir(cache, 0o700)
        let out = dir + "/" + name
        let env = childEnvironment(["CGO_ENABLED": "0", "GO111MODULE": "off", "GOCACHE": cache,
                                    "GOPATH": dir + "/gopath", "HOME": dir, "GOFLAGS": ""])
        let build = try Child.spawn(go, ["build", "-o", out, src], env: env, dir: dir, label: "go-build-" + name)
        let code = try await build.wait(timeout: 300, "go build of \(src)")
        guard code == 0 else { throw HarnessError("go build of \(src) failed (\(code)): \(build.stderr)") }
        let binary = FileManager.default.contents(atPath: out) ?? Data()
        guard !binary.isEmpty, binary.range(of: Data("ld-linux".utf8)) == nil else {
            throw HarnessError("\(out) is not statically linked")
        }
        // go build makes the file 0777 & ~umask: under CI's umask 0177 that is 0600.
        chmod(out, 0o755)
        return out
    }

    /// The config of an intercepted app: `intercept` left at its default (on for TCP).
    /// Readiness by delay: these servers are unmodified, and a delay does not depend on
    /// how the listening probe finds a socket held at another fd number than 3.
    static func conf(_ name: String, command: [String], workers: Int, port: UInt16, extra: String = "") -> String {
        Conf.app(name, command: command, workers: workers, port: port,
                 extra: "[ready]\nmode = \"delay\"\ndelay = \"300ms\"\n" + extra)
    }
}

/// The socket inode behind one of `pid`'s fds ("socket:[123]" → 123).
func socketInode(pid: Int32, fd: Int32) -> UInt64? {
    guard let link = try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/\(pid)/fd/\(fd)"),
          link.hasPrefix("socket:[") else { return nil }
    return UInt64(link.dropFirst(8).dropLast())
}

/// `pid`'s fds other than 3 that hold the very socket of its fd 3: where its own bind got swarm's socket.
func substitutedFDs(pid: Int32) -> [Int32] {
    guard let slot = socketInode(pid: pid, fd: 3) else { return [] }
    let entries = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/fd")) ?? []
    return entries.compactMap(Int32.init).filter { $0 != 3 && socketInode(pid: pid, fd: $0) == slot }.sorted()
}

/// Every descendant of `pid` (children first), from /proc/*/stat.
func descendants(of pid: Int32) -> [Int32] {
    var parent: [Int32: Int32] = [:]
    for e in (try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? [] {
        guard let p = Int32(e), let s = ProcState.read(p) else { continue }
        parent[p] = s.ppid
    }
    var out: [Int32] = []
    var frontier = [pid]
    while let next = frontier.popLast() {
        let kids = parent.filter { $0.value == next }.map(\.key).sorted()
        out += kids
        frontier += kids
    }
    return out
}

/// Which pids answer `connections` fresh connections, once all of `expected` do (a delay-ready
/// worker may answer a moment after it was reported ready).
func waitForAnswers(_ port: UInt16, from expected: Set<Int32>, connections: Int = 30, timeout: Double = 20) async throws -> [Int32: Int] {
    var last: [Int32: Int] = [:]
    return try await waitUntil(timeout: timeout, "pids \(expected.sorted()) to answer on \(port) (last: \(last))") {
        last = (try? answeringPids(port, connections: connections)) ?? [:]
        return Set(last.keys) == expected ? last : nil
    }
}

/// O_NONBLOCK of one of `pid`'s fds, from its fdinfo (octal "flags:").
func isNonBlocking(pid: Int32, fd: Int32) -> Bool? {
    for line in readText("/proc/\(pid)/fdinfo/\(fd)").split(separator: "\n") where line.hasPrefix("flags:") {
        let octal = line.dropFirst("flags:".count).filter { $0 != " " && $0 != "\t" }
        return Int(octal, radix: 8).map { $0 & Int(O_NONBLOCK) != 0 }
    }
    return nil
}

/// The one child each of `parents` has started (waits for all of them).
func childrenOf(_ parents: [Int32], timeout: Double = 10) async throws -> [Int32] {
    try await waitUntil(timeout: timeout, "each of \(parents) to have a child") { () -> [Int32]? in
        let found = parents.flatMap { descendants(of: $0) }
        return found.count == parents.count ? found : nil
    }
}
