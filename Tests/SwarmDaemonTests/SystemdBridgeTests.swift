import Testing
@testable import SwarmDaemon

@Suite("SystemdBridge")
struct SystemdBridgeTests {
    @Test func statusIsSentOnlyWhenItChanges() {
        let k = FakeKernel()
        let b = SystemdBridge(kernel: k)
        b.status("web 1/2 ready")
        b.status("web 1/2 ready")
        b.status("web 2/2 ready")
        b.status("web 2/2 ready")
        #expect(k.notifications == ["STATUS=web 1/2 ready", "STATUS=web 2/2 ready"])
    }

    @Test func readyIsSentOnceWithTheLastStatus() {
        let k = FakeKernel()
        let b = SystemdBridge(kernel: k)
        b.ready()
        #expect(k.notifications == ["READY=1\nSTATUS=no apps"])
        b.status("web 2/2 ready")
        b.ready()
        #expect(b.sentReady)
        #expect(k.notifications == ["READY=1\nSTATUS=no apps", "STATUS=web 2/2 ready"], "READY=1 went out twice")
    }

    @Test func theReloadHandshakeCarriesTheMonotonicClockThenReady() {
        let k = FakeKernel()
        let b = SystemdBridge(kernel: k, sentReady: true)
        b.status("web 1/1 ready")
        k.advance(seconds: 2.5)
        b.reloading()
        b.reloaded()
        b.stopping()
        #expect(k.notifications == ["STATUS=web 1/1 ready", "RELOADING=1\nMONOTONIC_USEC=\(k.now() / 1000)",
                                    "READY=1\nSTATUS=web 1/1 ready", "STOPPING=1"])
    }

    @Test func aReexecutedSwarmdIsReadyAgainWithTheStatusItComputed() {
        let k = FakeKernel()
        let b = SystemdBridge(kernel: k)
        b.status("web 3/3 ready")
        b.readyAgain()
        #expect(b.sentReady)
        #expect(k.notifications.last == "READY=1\nSTATUS=web 3/3 ready")
        b.ready()
        #expect(k.notifications.count == 2, "ready() after readyAgain() sent READY=1 again")
    }
}
