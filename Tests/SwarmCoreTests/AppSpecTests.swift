import Testing
@testable import SwarmCore

@Suite("AppSpec")
struct AppSpecTests {
    @Test func signalNames() {
        #expect(Signal(name: "term") == .term)
        #expect(Signal(name: "SIGHUP") == .hup)
        #expect(Signal(name: "sigusr2") == .usr2)
        #expect(Signal(name: "NOPE") == nil)
        #expect(Signal.kill.description == "SIGKILL")
        #expect(Signal(42).description == "signal 42")
    }

    @Test func listenAddresses() {
        #expect(ListenAddress.tcp(host: "127.0.0.1", port: 80).description == "127.0.0.1:80")
        #expect(ListenAddress.tcp(host: "::1", port: 8080).description == "[::1]:8080")
        #expect(ListenAddress.unix(path: "/run/a.sock").description == "unix:/run/a.sock")
        #expect(SocketSpec(name: "s", listen: .unix(path: "/x")).effectiveBalance == .shared)
        #expect(SocketSpec(name: "s", listen: .tcp(host: "0.0.0.0", port: 1)).effectiveBalance == .reuseport)
    }

    @Test func defaults() {
        let spec = AppSpec(name: "web", command: ["bin/web", "--port", "{port:http}"], workers: 2)
        #expect(spec.executable == "bin/web")
        #expect(spec.restart.mode == .always)
        #expect(spec.restart.initialDelay == .milliseconds(100))
        #expect(spec.stop.signal == .term && spec.stop.timeout == .seconds(10))
        #expect(spec.ready.mode == .listening)
        #expect(spec.reload.surge == 1)
        #expect(RestartMode(rawValue: "on-failure") == .onFailure)
    }
}
