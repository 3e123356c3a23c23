import SwarmCore
import Testing

@Suite("Worker launch environment")
struct LaunchTests {
    let host = WorkerLaunch.Host(environment: ["PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "LISTEN_FDS": "9", "ZZ": "last"],
                                 notifySocket: "@swarmd-notify-1")
    let sockets = [WorkerLaunch.PassedSocket(name: "http", port: 8080), WorkerLaunch.PassedSocket(name: "admin", port: nil)]

    /// The environment as it was built before it was shared: every key at once, sorted.
    func builtWhole(_ spec: AppSpec, slot: Int, generation: Int, readyFD: Int32?) -> [String] {
        var env: [String: String] = [:]
        for (k, v) in host.environment where !WorkerLaunch.strippedEnvironment.contains(k) { env[k] = v }
        for (k, v) in spec.env { env[k] = v }
        env["SWARM_APP"] = spec.name
        env["SWARM_WORKER"] = String(slot)
        env["SWARM_GENERATION"] = String(generation)
        env["NOTIFY_SOCKET"] = host.notifySocket
        env["LISTEN_FDS"] = "2"
        env["LISTEN_FDNAMES"] = "http:admin"
        if spec.env["PORT"] == nil { env["PORT"] = "8080" }
        if let readyFD { env["SWARM_READY_FD"] = String(readyFD) }
        return env.map { "\($0.key)=\($0.value)" }.sorted()
    }

    @Test("one shared environment per generation, the slot put in its sorted place, is the environment built whole",
          arguments: [0, 1, 9, 10, 99, 4095])
    func sharedPlusSlotIsTheWholeEnvironment(slot: Int) {
        var spec = makeSpec()
        spec.env = ["SWARM_WORKER": "from-the-config", "A": "1", "SWARM_Z": "2", "SWARM_WORKERS": "3"]
        let shared = WorkerLaunch.sharedEnvironment(spec, generation: 7, sockets: sockets, host: host, readyFD: 5)
        #expect(!shared.contains { $0.hasPrefix("SWARM_WORKER=") }, "the slot is not in the shared part: \(shared)")
        let env = WorkerLaunch.environment(slot: slot, shared: shared)
        #expect(env == builtWhole(spec, slot: slot, generation: 7, readyFD: 5))
        #expect(env.filter { $0.hasPrefix("SWARM_WORKER=") } == ["SWARM_WORKER=\(slot)"], "swarmd's slot wins over the config's")
        let request = SpawnRequest(worker: WorkerID(1), app: spec.name, slot: slot, generation: 7, spec: spec)
        #expect(WorkerLaunch.environment(request, sockets: sockets, host: host, readyFD: 5) == env)
    }

    @Test("the slot goes first or last when every other entry sorts after or before it")
    func slotAtTheEnds() {
        #expect(WorkerLaunch.environment(slot: 2, shared: []) == ["SWARM_WORKER=2"])
        #expect(WorkerLaunch.environment(slot: 2, shared: ["A=1", "B=2"]) == ["A=1", "B=2", "SWARM_WORKER=2"])
        #expect(WorkerLaunch.environment(slot: 2, shared: ["X=1", "Y=2"]) == ["SWARM_WORKER=2", "X=1", "Y=2"])
    }
}
