//! Wall-clock time as Kubernetes writes it (RFC 3339, UTC): for people and for the API's
//! informational fields, never compared across hosts for a decision. A leaf: it imports nothing
//! of the agent. jiff (already in the tree through k8s-openapi) does the calendar.

use std::time::{Duration, SystemTime};

use jiff::Timestamp;

/// RFC 3339 UTC (`2026-11-21T22:00:00Z`, or with microseconds for MicroTime fields).
pub fn rfc3339(t: SystemTime, micros: bool) -> String {
    let ts = Timestamp::try_from(t).unwrap_or(Timestamp::UNIX_EPOCH);
    if micros {
        format!("{ts:.6}")
    } else {
        format!("{ts:.0}")
    }
}

/// How long before `now` the RFC 3339 instant `s` was (zero if it is in the future); None
/// when `s` is not RFC 3339.
pub fn age(s: &str, now: SystemTime) -> Option<Duration> {
    let then: Timestamp = s.parse().ok()?;
    let now = Timestamp::try_from(now).ok()?;
    let d = now.duration_since(then);
    Some(Duration::try_from(d).unwrap_or(Duration::ZERO))
}

/// How long after `now` the RFC 3339 instant `s` is (zero if it is past); None when `s` is not
/// RFC 3339.
pub fn until(s: &str, now: SystemTime) -> Option<Duration> {
    let then: Timestamp = s.parse().ok()?;
    let now = Timestamp::try_from(now).ok()?;
    let d = then.duration_since(now);
    Some(Duration::try_from(d).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    #[test]
    fn rfc3339_formats_known_instants() {
        assert_eq!(rfc3339(UNIX_EPOCH, false), "1970-01-01T00:00:00Z");
        let t = UNIX_EPOCH + Duration::from_micros(1_795_298_400_123_456);
        assert_eq!(rfc3339(t, true), "2026-11-21T22:00:00.123456Z");
        assert_eq!(rfc3339(t, false), "2026-11-21T22:00:00Z");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(rfc3339(leap, false), "2000-02-29T00:00:00Z");
        assert_eq!(
            rfc3339(UNIX_EPOCH + Duration::from_secs(1), true),
            "1970-01-01T00:00:01.000000Z"
        );
    }

    #[test]
    fn ages_of_what_the_server_wrote() {
        let now = UNIX_EPOCH + Duration::from_secs(1_795_298_460);
        assert_eq!(
            age("2026-11-21T22:00:00.000000Z", now),
            Some(Duration::from_secs(60))
        );
        assert_eq!(
            age("2026-11-21T22:00:00Z", now),
            Some(Duration::from_secs(60))
        );
        assert_eq!(age("2026-11-21T23:00:00Z", now), Some(Duration::ZERO));
        assert_eq!(age("yesterday", now), None);
    }
}
