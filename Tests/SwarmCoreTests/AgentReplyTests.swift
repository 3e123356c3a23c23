@testable import SwarmCore
import Testing

@Suite("HAProxy agent replies")
struct AgentReplyTests {
    let apps: [String: AppHealth] = [
        "web": AppHealth(state: .running, ready: 4, wanted: 4),
        "api": AppHealth(state: .degraded, ready: 1, wanted: 4),
        "cold": AppHealth(state: .crashLoop, ready: 0, wanted: 2),
        "off": AppHealth(state: .stopped, ready: 0, wanted: 2),
    ]

    func reply(_ request: String?, drained: Set<String> = [], names: [String]? = nil) -> String {
        AgentReply.line(request: request, health: { apps[$0] }, appNames: names ?? ["web", "api", "cold", "off"], drained: drained)
    }

    @Test("per app: weight is ready/wanted, 'ready' always said so a past drain ends; no ready worker is down")
    func perApp() {
        #expect(reply("web\n") == "up ready 100%\n")
        #expect(reply("api\r\n") == "up ready 25%\n")
        #expect(reply("  cold ") == "down #no worker ready\n")
        #expect(reply("off") == "down #no worker ready\n")
    }

    @Test("every app when HAProxy sends nothing: stopped apps do not count")
    func allApps() {
        #expect(reply(nil) == "up ready 50%\n", "5 of 10 wanted among running apps")
        #expect(reply("") == "up ready 50%\n")
        #expect(reply(nil, names: []) == "down #no apps\n")
    }

    @Test("drained: the app, or any app when asked for all")
    func drained() {
        #expect(reply("web", drained: ["web"]) == "drain #drained by the operator\n")
        #expect(reply("api", drained: ["web"]) == "up ready 25%\n")
        #expect(reply(nil, drained: ["api"]) == "drain #drained by the operator\n")
    }

    @Test("an unknown or hostile name is down, and is echoed only as printable ASCII")
    func unknown() {
        #expect(reply("nope") == "down #no app 'nope' on this host\n")
        let r = reply("x\u{1b}[2J#y" + String(repeating: "z", count: 200))
        #expect(r.hasPrefix("down #no app 'x?[2J?y") && r.count < 100 && !r.contains("\u{1b}"), "\(r)")
    }

    @Test("the weight is at least 1% while a worker serves and at most 100% during a surge")
    func bounds() {
        let many = ["big": AppHealth(state: .degraded, ready: 1, wanted: 4096), "surge": AppHealth(state: .reloading, ready: 5, wanted: 4)]
        #expect(AgentReply.line(request: "big", health: { many[$0] }, appNames: ["big"], drained: []) == "up ready 1%\n")
        #expect(AgentReply.line(request: "surge", health: { many[$0] }, appNames: ["surge"], drained: []) == "up ready 100%\n")
    }
}
