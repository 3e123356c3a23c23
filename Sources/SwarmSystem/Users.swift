import Glibc

/// One entry of the user database.
public struct UserRecord: Equatable, Sendable {
    public var name: String
    public var uid: UInt32
    public var gid: UInt32
    public var home: String
    public var shell: String
}

extension Users {
    /// The passwd entry of a user name (or of a numeric uid); nil when there is none.
    public static func record(named name: String) -> UserRecord? {
        if let n = UInt32(name) { return record(uid: n) }
        return withPasswdBuffer { pw, buf, result in getpwnam_r(name, &pw, buf.baseAddress!, buf.count, &result) }
    }

    public static func record(uid: UInt32) -> UserRecord? {
        withPasswdBuffer { pw, buf, result in getpwuid_r(uid, &pw, buf.baseAddress!, buf.count, &result) }
    }

    private static func withPasswdBuffer(
        _ body: (inout passwd, UnsafeMutableBufferPointer<CChar>, inout UnsafeMutablePointer<passwd>?) -> Int32
    ) -> UserRecord? {
        var size = 4096
        while size <= 1 << 20 {
            var pw = passwd()
            var result: UnsafeMutablePointer<passwd>?
            let buffer = UnsafeMutableBufferPointer<CChar>.allocate(capacity: size)
            defer { buffer.deallocate() }
            let r = body(&pw, buffer, &result)
            if r == ERANGE {
                size *= 4
                continue
            }
            guard r == 0, result != nil else { return nil }
            return UserRecord(name: String(cString: pw.pw_name), uid: pw.pw_uid, gid: pw.pw_gid,
                              home: String(cString: pw.pw_dir), shell: String(cString: pw.pw_shell))
        }
        return nil
    }

    /// "uid 65534 (nobody)", or "uid 4242" when the database has no name for it.
    public static func describe(_ uid: UInt32) -> String {
        if let name = record(uid: uid)?.name { return "uid \(uid) (\(name))" }
        return "uid \(uid)"
    }

    /// A uid given as a number or a user name.
    public static func uid(_ nameOrNumber: String) -> UInt32? {
        if let n = UInt32(nameOrNumber) { return n }
        return record(named: nameOrNumber)?.uid
    }
}

/// Scheduling priority (niceness) through getpriority/setpriority.
public enum Priority {
    public enum Target: CustomStringConvertible {
        /// One process, or (Linux: niceness is per thread) one thread by its tid.
        case process(pid_t)
        /// Every thread of every process of a process group.
        case processGroup(pid_t)
        /// Every process of a user.
        case user(uid_t)

        var which: __priority_which_t {
            switch self {
            case .process: return __priority_which_t(PRIO_PROCESS.rawValue)
            case .processGroup: return __priority_which_t(PRIO_PGRP.rawValue)
            case .user: return __priority_which_t(PRIO_USER.rawValue)
            }
        }

        var who: id_t {
            switch self {
            case let .process(p), let .processGroup(p): return id_t(p)
            case let .user(u): return id_t(u)
            }
        }

        public var description: String {
            switch self {
            case let .process(p): return "pid \(p)"
            case let .processGroup(p): return "process group \(p)"
            case let .user(u): return "uid \(u)"
            }
        }
    }

    /// This process's (its main thread's) niceness.
    public static var current: Int32 { (try? get(.process(0))) ?? 0 }

    /// getpriority(2): for a group or user, the highest priority (lowest nice) among them.
    public static func get(_ target: Target) throws -> Int32 {
        // -1 is a valid niceness: only errno tells a failure.
        while true {
            Glibc.errno = 0
            let r = getpriority(target.which, target.who)
            let e = Glibc.errno
            if e == 0 { return r }
            if e == EINTR { continue }
            throw SystemError("getpriority", errno: e, subject: target.description)
        }
    }

    /// setpriority(2). Raising priority (lowering nice) needs CAP_SYS_NICE. For
    /// `.processGroup` Linux sets every thread of every member, so the
    /// children of a pre-fork server follow their master.
    public static func set(_ target: Target, to nice: Int32) throws {
        try Posix.syscall("setpriority", subject: "\(target) to \(nice)") { setpriority(target.which, target.who, nice) }
    }
}
