import Foundation
import Glibc
import SwarmProtocol
import Testing

// The README's "Running your server" rows that serve on the inherited fd 3,
// tried with the real servers: gunicorn (both recipes), waitress, hypercorn
// (PyPI, in the venv scripts/deps.sh makes) and a Rust std-only server.
// Rows that rely on bind interception are in the intercept tests.

enum Recipes {
    /// The venv scripts/deps.sh fills (SWARM_TEST_VENV overrides).
    static var venv: String { ProcessInfo.processInfo.environment["SWARM_TEST_VENV"] ?? "/var/tmp/swarm-venv" }

    static func tool(_ name: String) throws -> String {
        let path = venv + "/bin/" + name
        guard access(path, X_OK) == 0 else { throw HarnessError("\(path) is missing: run scripts/deps.sh (it installs gunicorn, uvicorn, hypercorn and waitress there)") }
        return path
    }

    static let wsgi = """
        import os
        def app(environ, start_response):
            body = ("%d\\n" % os.getpid()).encode()
            start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
            return [body]
        """

    static let asgi = """
        import os
        async def app(scope, receive, send):
            if scope["type"] != "http":
                return
            body = ("%d\\n" % os.getpid()).encode()
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode())]})
            await send({"type": "http.response.body", "body": body})
        """

    /// A std-only Rust HTTP server on fd 3 (the README's recipe; Rust 1.63, Debian 12's, compiles it).
    static let rust = """
        use std::io::{BufRead, BufReader, Write};
        use std::net::TcpListener;
        use std::os::unix::io::FromRawFd;

        fn main() {
            // SAFETY: fd 3 is the listening socket swarmd passed (LISTEN_FDS=1); nothing else owns it.
            let listener = unsafe { TcpListener::from_raw_fd(3) };
            for stream in listener.incoming() {
                let mut stream = match stream { Ok(s) => s, Err(_) => continue };
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut line = String::new();
                while reader.read_line(&mut line).map(|n| n > 0).unwrap_or(false) {
                    if line == "\\r\\n" || line == "\\n" { break; }
                    line.clear();
                }
                let body = format!("{}\\n", std::process::id());
                let _ = write!(stream, "HTTP/1.1 200 OK\\r\\nContent-Length: {}\\r\\nConnection: close\\r\\n\\r\\n{}", body.len(), body);
            }
        }
        """

    static func rustc() throws -> String {
        let home = ProcessInfo.processInfo.environment["HOME"] ?? "/root"
        let dirs = (ProcessInfo.processInfo.environment["PATH"] ?? "").split(separator: ":").map(String.init) + [home + "/.cargo/bin", "/usr/bin"]
        guard let found = dirs.map({ $0 + "/rustc" }).first(where: { access($0, X_OK) == 0 }) else {
            throw HarnessError("rustc is missing: run scripts/deps.sh (it installs Debian's rustc)")
        }
        return found
    }

    /// Whether `pid` is `ancestor` or runs below it.
    static func descends(_ pid: Int32, from ancestors: Set<Int32>) -> Bool {
        var p = pid
        for _ in 0..<32 {
            if ancestors.contains(p) { return true }
            guard let s = ProcState.read(p), s.ppid > 1 else { return false }
            p = s.ppid
        }
        return false
    }
}

@Suite("Recipes: real servers on swarm's fd 3")
struct RecipesTests {
    /// Starts `command` as a 2-worker app on one port and checks that it serves from
    /// processes of those workers (`own`: the workers answer themselves, no pre-fork
    /// children), then reloads it (under fresh-connection load with `drains`) and checks again.
    func serve(_ name: String, _ command: [String], ready: String, own: Bool, drains: Bool,
               files: [String: String] = [:], env: [String: String] = [:], extra: String = "",
               port chosen: UInt16? = nil, sourceLocation: SourceLocation = #_sourceLocation) async throws {
        try await withSwarm { s in
            for (file, text) in files { try s.write(file, text) }
            let port = try chosen ?? Ports.free()
            // cwd defaults to the config's folder: the test dir, where the app's files are.
            let conf = try s.write("\(name).conf", Conf.app(name, command: command, workers: 2, port: port,
                                                            env: env.merging(["PATH": "\(Recipes.venv)/bin:/usr/local/bin:/usr/bin:/bin"]) { a, _ in a },
                                                            extra: "[ready]\nmode = \"\(ready)\"\ntimeout = \"20s\"\n" + extra))
            try await s.startDaemon()
            let start = try await s.ctl("start", conf)
            guard start.code == 0 else { throw HarnessError("\(name) did not start: \(start)") }
            var workers = try await s.waitReady(name, workers: 2)
            func check(_ when: String) throws {
                let answered = try answeringPids(port, connections: 24)
                #expect(answered.keys.allSatisfy { Recipes.descends($0, from: Set(workers)) },
                        "\(name) \(when): answers \(answered) come from the workers \(workers) or their children", sourceLocation: sourceLocation)
                if own {
                    #expect(Set(answered.keys) == Set(workers), "\(name) \(when): both workers answer: \(answered) vs \(workers)", sourceLocation: sourceLocation)
                } else {
                    #expect(answered.count >= 2, "\(name) \(when): several processes answer: \(answered)", sourceLocation: sourceLocation)
                }
            }
            try check("after start")
            if drains {
                let (_, report) = try await withTraffic(Traffic(port: port, keepAlive: 0, fresh: 2, pause: 0.005)) {
                    try await s.ctlOK("reload", name)
                    workers = try await expectReplaced(s, name, workers: 2, before: workers, generation: 2)
                }
                print("\(name): reload under load: \(report)")
                #expect(report.failed == 0 && report.ok > 20, "\(name): requests during the reload: \(report)", sourceLocation: sourceLocation)
            } else {
                try await s.ctlOK("reload", name)
                workers = try await expectReplaced(s, name, workers: 2, before: workers, generation: 2)
            }
            try check("after reload")
        }
    }

    @Test("gunicorn, plain: it reads LISTEN_FDS itself (2 gunicorn workers under each swarm worker), ready by sd_notify")
    func gunicornPlain() async throws {
        try await serve("gplain", [try Recipes.tool("gunicorn"), "--workers", "2", "wsgi:app"], ready: "notify", own: false, drains: true,
                        files: ["wsgi.py": Recipes.wsgi])
    }

    @Test("gunicorn --bind fd://{fd:http}, fixed: LISTEN_FDS dropped for it with env -u, so fd 3 is used once")
    func gunicornBindFD() async throws {
        try await serve("gfd", ["/usr/bin/env", "-u", "LISTEN_FDS", try Recipes.tool("gunicorn"), "--bind", "fd://{fd:http}", "wsgi:app"],
                        ready: "notify", own: false, drains: true, files: ["wsgi.py": Recipes.wsgi])
    }

    @Test("gunicorn --bind fd://{fd:http} as the README used to say: fd 3 used twice, EBADF, and start says so with gunicorn's lines")
    func gunicornOldRecipeFails() async throws {
        let gunicorn = try Recipes.tool("gunicorn")
        try await withSwarm { s in
            try s.write("wsgi.py", Recipes.wsgi)
            let port = try Ports.free()
            try await s.startDaemon()
            let r = try await s.quick(["start", "--name", "gold", "--listen", "127.0.0.1:\(port)", "--env", "PATH=\(Recipes.venv)/bin:/usr/bin:/bin",
                                       "--", gunicorn, "--bind", "fd://{fd:http}", "wsgi:app"])
            #expect(r.code == 1 && r.err.contains("failed to start: exited with status 1"), "\(r)")
            #expect(r.err.contains("Bad file descriptor"), "gunicorn's own error reaches the user: \(r)")
            try await s.ctlOK("delete", "gold")
        }
    }

    @Test("waitress: serve(app, sockets=[socket.socket(fileno=3)]), ready in listening mode")
    func waitress() async throws {
        let python = try Recipes.tool("python3")
        try await serve("waitress", [python, "-c", "import socket, waitress, wsgi; waitress.serve(wsgi.app, sockets=[socket.socket(fileno=3)])"],
                        ready: "listening", own: true, drains: false, files: ["wsgi.py": Recipes.wsgi])
    }

    @Test("hypercorn --workers 0 --bind fd://{fd:http}: serves in its own process, ready in listening mode, drains on SIGTERM")
    func hypercorn() async throws {
        try await serve("hyper", [try Recipes.tool("hypercorn"), "--workers", "0", "--bind", "fd://{fd:http}", "asgi:app"],
                        ready: "listening", own: true, drains: true, files: ["asgi.py": Recipes.asgi])
    }

    @Test("Rust, std only: TcpListener::from_raw_fd(3), blocking accept, ready in listening mode")
    func rustStd() async throws {
        let rustc = try Recipes.rustc()
        let dir = NSTemporaryDirectory() + "swit-rust-\(getpid())-\(Ports.counter.next())"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try Recipes.rust.write(toFile: dir + "/main.rs", atomically: true, encoding: .utf8)
        let built = try Child.spawn(rustc, ["-O", "-o", dir + "/server", dir + "/main.rs"], dir: dir, label: "rustc")
        let code = try await built.wait(timeout: 120, "rustc to build the example server")
        guard code == 0 else { throw HarnessError("rustc failed (\(code)): \(built.stderr)") }
        chmod(dir + "/server", 0o755)
        try await serve("rust", [dir + "/server"], ready: "listening", own: true, drains: false)
    }

    static let nginx: String? = ["/usr/sbin/nginx", "/usr/bin/nginx"].first { (path: String) in access(path, X_OK) == 0 }

    @Test("nginx: NGINX=\"3;\" hands it fd 3 (its own inheritance protocol), stop by SIGQUIT (graceful)",
          .enabled(if: nginx != nil, "nginx is not installed (apt-get install nginx-light)"))
    func nginxInheritsFD3() async throws {
        let port = try Ports.free()
        let conf = """
            daemon off;
            worker_processes 1;
            error_log stderr notice;
            events {}
            http {
                access_log off;
                server {
                    listen 127.0.0.1:\(port);
                    location / { return 200 "$pid\\n"; }
                }
            }
            """
        // Each nginx master needs a pid file of its own; its argv has no slot placeholder, so sh names it.
        try await serve("nginx", ["/bin/sh", "-c", "exec \(Self.nginx!) -c \"$(pwd)/site.nginx\" -g \"pid $(pwd)/nginx.$SWARM_WORKER.$SWARM_GENERATION.pid;\""],
                        ready: "delay", own: false, drains: true, files: ["site.nginx": conf], env: ["NGINX": "3;"],
                        extra: "[stop]\nsignal = \"SIGQUIT\"\n", port: port)
    }
}
