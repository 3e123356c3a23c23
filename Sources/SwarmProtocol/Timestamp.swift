/// Times as the protocol and the log files write them, computed without the
/// C library (no gmtime_r, no time zone files): pure, so both binaries and
/// their tests share it.
public enum Timestamp {
    /// RFC 3339 in UTC with microseconds: "2026-12-01T22:44:39.123456Z".
    public static func rfc3339(nanosecondsSinceEpoch ns: Int64) -> String {
        let (secs, subNS) = ns.quotientAndRemainder(dividingBy: 1_000_000_000)
        let s = subNS < 0 ? secs - 1 : secs
        let micros = (subNS < 0 ? subNS + 1_000_000_000 : subNS) / 1000
        let (days, secOfDay) = floorDivide(s, 86400)
        let (y, m, d) = civil(fromDays: days)
        func pad(_ v: Int64, _ w: Int) -> String {
            let t = String(v)
            return String(repeating: "0", count: max(0, w - t.count)) + t
        }
        return "\(pad(y, 4))-\(pad(m, 2))-\(pad(d, 2))T\(pad(secOfDay / 3600, 2)):\(pad(secOfDay % 3600 / 60, 2)):\(pad(secOfDay % 60, 2)).\(pad(micros, 6))Z"
    }

    static func floorDivide(_ a: Int64, _ b: Int64) -> (Int64, Int64) {
        let (q, r) = a.quotientAndRemainder(dividingBy: b)
        return r < 0 ? (q - 1, r + b) : (q, r)
    }

    /// Days since 1970-01-01 to (year, month, day), proleptic Gregorian
    /// (H. Hinnant's civil_from_days).
    static func civil(fromDays z0: Int64) -> (Int64, Int64, Int64) {
        let z = z0 + 719_468
        let era = (z >= 0 ? z : z - 146_096) / 146_097
        let doe = z - era * 146_097
        let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100)
        let mp = (5 * doy + 2) / 153
        let d = doy - (153 * mp + 2) / 5 + 1
        let m = mp < 10 ? mp + 3 : mp - 9
        return (yoe + era * 400 + (m <= 2 ? 1 : 0), m, d)
    }
}
