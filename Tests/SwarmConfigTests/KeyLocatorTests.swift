@testable import SwarmConfig
import Testing

@Suite struct KeyLocatorTests {
    @Test func dottedKeysAtTopLevel() {
        let locator = KeyLocator(text: """
            name = "web"
            restart.policy = "always"
            restart . max_delay = "1s"
            env.NODE_ENV = "production"
            """)
        #expect(locator.line(of: "name") == 1)
        #expect(locator.line(of: "restart.policy") == 2)
        #expect(locator.line(of: "restart.max_delay") == 3)
        #expect(locator.line(of: "env.NODE_ENV") == 4)
        // An unknown key falls back to its closest table (a dotted key defines it
        // too: `env` on line 4, `restart` on line 2), and to nil at the top.
        #expect(locator.line(of: "env.OTHER") == 4)
        #expect(locator.line(of: "restart") == 2)
        #expect(locator.line(of: "nothing") == nil)
    }

    @Test func quotedKeys() {
        let locator = KeyLocator(text: """
            "name" = "web"
            [env]
            "A.B" = "1"
            'C' = "2"
            "has = sign" = "3"
            [ "restart" ]
            "policy" = "never"
            """)
        #expect(locator.line(of: "name") == 1)
        #expect(locator.line(of: "env") == 2)
        #expect(locator.line(of: "env.A.B") == 3)
        #expect(locator.line(of: "env.C") == 4)
        #expect(locator.line(of: "env.has = sign") == 5)
        #expect(locator.line(of: "restart") == 6)
        #expect(locator.line(of: "restart.policy") == 7)
        #expect(locator.line(of: "restart.unknown") == 6)
    }

    @Test func arraysOfTables() {
        let locator = KeyLocator(text: """
            name = "web"

            [[socket]]
            listen = "127.0.0.1:80"

            [[ socket ]]  # the admin socket
            name = "admin"
            listen = "unix:a.sock"
            [restart]
            policy = "always"
            """)
        #expect(locator.line(of: "socket") == 3)
        #expect(locator.line(of: "socket[0]") == 3)
        #expect(locator.line(of: "socket[0].listen") == 4)
        #expect(locator.line(of: "socket[1]") == 6)
        #expect(locator.line(of: "socket[1].name") == 7)
        #expect(locator.line(of: "socket[1].listen") == 8)
        #expect(locator.line(of: "socket[1].backlog") == 6)
        #expect(locator.line(of: "restart.policy") == 10)
    }

    @Test func inlineTablesAndMultiLineValues() {
        let locator = KeyLocator(text: """
            env = { A = "1", B = "x,y" }
            command = [
              "node",   # ]
              "[x]",
            ]
            workers = 2
            cwd = '''
            [stop]
            name = "trap"
            '''
            user = "app"
            """)
        #expect(locator.line(of: "env") == 1)
        #expect(locator.line(of: "env.A") == 1)
        #expect(locator.line(of: "env.B") == 1)
        #expect(locator.line(of: "command") == 2)
        #expect(locator.line(of: "workers") == 6)
        #expect(locator.line(of: "cwd") == 7)
        #expect(locator.line(of: "name") == nil)
        #expect(locator.line(of: "user") == 11)
        #expect(locator.line(of: "stop") == nil)
    }

    @Test func crlfLineEnds() {
        let locator = KeyLocator(text: "name = \"web\"\r\n\r\n[restart]\r\npolicy = \"x\" # c\r\n")
        #expect(locator.line(of: "name") == 1)
        #expect(locator.line(of: "restart") == 3)
        #expect(locator.line(of: "restart.policy") == 4)
    }
}
