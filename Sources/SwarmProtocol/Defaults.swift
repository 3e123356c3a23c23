/// The version both binaries report (`swarmctl version`, `swarmd --version`, status).
public enum SwarmVersion {
    public static let current = "0.2.0"
}

/// The rule for app names, shared by the config loader's callers, swarmd and swarmctl.
public enum AppName {
    /// Means every app in commands that take a name.
    public static let all = "all"
    public static let maxLength = 64
    public static let rule = "1 to 64 of a-z, 0-9, _ and -"

    /// Whether `name` may name an app ("all" is not an app name).
    public static func isValid(_ name: String) -> Bool {
        problem(name) == nil
    }

    /// Why `name` cannot name an app; nil when it can.
    public static func problem(_ name: String) -> String? {
        let bytes = name.utf8
        guard !bytes.isEmpty, bytes.count <= maxLength,
              bytes.allSatisfy({ ($0 >= 0x61 && $0 <= 0x7a) || ($0 >= 0x30 && $0 <= 0x39) || $0 == 0x5f || $0 == 0x2d }) else {
            return "'\(TerminalText.escape(name))' is not a valid name: use \(rule)"
        }
        if name == all { return "'all' is reserved (it means every app)" }
        return nil
    }

    /// An app name or "all".
    public static func isSelector(_ word: String) -> Bool { word == all || isValid(word) }
}
