import ArgumentParser
import SwarmProtocol

struct Rollback: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Roll an app back to the config of its previous generation, worker by worker, like a reload.",
        discussion: """
            swarmd keeps each app's last 5 config generations (status --json lists them). The previous \
            generation's config (as it ran, env files included) is started under a new generation number through \
            the same rolling, readiness-gated path as reload; if it fails to start, the app stays as it is. \
            A second rollback goes further back, never to the generation just undone. The config file itself is \
            not changed: fix it before the next reload.
            """)
    @OptionGroup var global: GlobalOptions
    @Flag(help: "Print progress events as JSON lines.") var json = false
    @Argument(help: "App name, or 'all'.") var name: String

    func validate() throws { try validateName(name) }

    func run() throws {
        try runRollingVerb(.rollback, name: name, json: json, global: global)
    }
}
