import Foundation
import SwarmProtocol
import Testing

@Suite struct QuickStartRequestTests {
    @Test func travelsAsAnOptionalFieldOfStart() throws {
        let q = QuickStartRequest(name: "web", instances: "max", listen: "127.0.0.1:3000", env: ["A=1", "B=x=y"],
                                  command: ["/usr/bin/node", "server.js"], cwd: "/srv/web")
        let frame = Codec.encode(Request(id: 9, verb: .start, replace: true, quickStart: q))
        #expect(String(decoding: frame, as: UTF8.self).contains("\"quick_start\""))
        let back = try Codec.decodeRequest(Array(frame.dropLast()))
        #expect(back.quickStart == q && back.replace == true && back.files == nil)
        // A request of a client that knows nothing of quick starts still decodes.
        let plain = try Codec.decodeRequest(Array(#"{"v":1,"id":1,"verb":"start","files":["/a.conf"]}"#.utf8))
        #expect(plain.quickStart == nil && plain.files == ["/a.conf"])
    }

    @Test func aMissingFieldIsNamed() {
        do {
            _ = try Codec.decodeRequest(Array(#"{"v":1,"id":1,"verb":"start","quick_start":{"name":"web","instances":"1","env":[],"cwd":"/"}}"#.utf8))
            Issue.record("decoded without a command")
        } catch {
            #expect("\(error)".contains("command"), "\(error)")
        }
    }

    @Test func theProgramIsLookedUpAsExecvpWould() {
        let files: Set<String> = ["/opt/node/bin/node", "/usr/bin/node", "/home/me/proj/bin/tool", "/home/me/proj/here"]
        let isExec: (String) -> Bool = { files.contains($0) }
        #expect(QuickStartRequest.resolveProgram("node", searchPath: "/opt/node/bin:/usr/bin", cwd: "/home/me/proj", isExecutable: isExec) == "/opt/node/bin/node")
        #expect(QuickStartRequest.resolveProgram("node", searchPath: "/usr/local/bin:/usr/bin/", cwd: "/", isExecutable: isExec) == "/usr/bin/node")
        #expect(QuickStartRequest.resolveProgram("tool", searchPath: "bin:/usr/bin", cwd: "/home/me/proj", isExecutable: isExec) == "/home/me/proj/bin/tool")
        #expect(QuickStartRequest.resolveProgram("here", searchPath: "/usr/bin:", cwd: "/home/me/proj", isExecutable: isExec) == "/home/me/proj/here",
                "an empty PATH entry is the current directory")
        #expect(QuickStartRequest.resolveProgram("nodee", searchPath: "/opt/node/bin:/usr/bin", cwd: "/", isExecutable: isExec) == nil)
        #expect(QuickStartRequest.resolveProgram("./server", searchPath: "/usr/bin", cwd: "/", isExecutable: isExec) == "./server",
                "a name with a slash is swarmd's to resolve against --cwd")
    }
}
