//! How one host decides that another host's lease has expired, without trusting the other host's
//! clock: it records, on its own monotonic clock, when it last saw the lease's resourceVersion
//! change. The other host counts as expired once that age reaches D (+ grace). An observer that
//! just started counts from its first sight of the lease. See docs/fencing.md for why this makes
//! the holder stop at least M before any observer may act.

use std::collections::HashMap;
use std::time::Duration;

use tokio::time::Instant;

#[derive(Debug, Clone, PartialEq, Eq)]
struct Seen {
    resource_version: String,
    holder: Option<String>,
    /// Our clock when the resourceVersion last changed (or when we first saw it).
    changed_at: Instant,
    /// resourceVersion changes seen since the first sighting: > 0 means someone is writing it.
    changes: u32,
}

/// What an observer knows about one lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Never seen (no lease object, or not yet observed).
    Unknown,
    /// The holder renewed less than D + grace ago (by our clock).
    Live {
        holder: Option<String>,
        age: Duration,
        changes: u32,
        /// No change for D/2 or more: a live holder renews at least twice per D
        /// (2 × R + M ≤ D), so this one has missed a renew — it renews soon, or expires.
        overdue: bool,
        /// When it counts as expired if nothing changes: D + grace − age.
        expires_in: Duration,
    },
    /// No change for D + grace: the holder has fenced itself (or is gone).
    Expired {
        holder: Option<String>,
        age: Duration,
    },
}

/// Tracks leases by name. Fed from the agent's watch of its own lease and from consistent reads
/// (sightings) of other hosts' leases; never polls.
#[derive(Debug, Clone)]
pub struct Observer {
    lease_duration: Duration,
    grace: Duration,
    seen: HashMap<String, Seen>,
}

impl Observer {
    pub fn new(lease_duration: Duration, grace: Duration) -> Observer {
        Observer {
            lease_duration,
            grace,
            seen: HashMap::new(),
        }
    }

    /// Records a sighting of `name` at `now` (a watch event or the initial list).
    pub fn observe(
        &mut self,
        name: &str,
        resource_version: &str,
        holder: Option<&str>,
        now: Instant,
    ) {
        match self.seen.get_mut(name) {
            Some(s) if s.resource_version == resource_version => {}
            Some(s) => {
                s.resource_version = resource_version.to_string();
                s.holder = holder.map(str::to_string);
                s.changed_at = now;
                s.changes = s.changes.saturating_add(1);
            }
            None => {
                self.seen.insert(
                    name.to_string(),
                    Seen {
                        resource_version: resource_version.to_string(),
                        holder: holder.map(str::to_string),
                        changed_at: now,
                        changes: 0,
                    },
                );
            }
        }
    }

    /// The lease was deleted.
    pub fn forget(&mut self, name: &str) {
        self.seen.remove(name);
    }

    pub fn verdict(&self, name: &str, now: Instant) -> Verdict {
        let Some(s) = self.seen.get(name) else {
            return Verdict::Unknown;
        };
        let age = now.saturating_duration_since(s.changed_at);
        if age >= self.lease_duration + self.grace {
            Verdict::Expired {
                holder: s.holder.clone(),
                age,
            }
        } else {
            Verdict::Live {
                holder: s.holder.clone(),
                age,
                changes: s.changes,
                overdue: age >= self.lease_duration / 2,
                expires_in: self.lease_duration + self.grace - age,
            }
        }
    }

    /// When `name` will count as expired if nothing changes (None if never seen).
    pub fn expires_at(&self, name: &str) -> Option<Instant> {
        self.seen
            .get(name)
            .map(|s| s.changed_at + self.lease_duration + self.grace)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: Duration = Duration::from_secs(10);

    #[test]
    fn counts_from_first_sight_and_resets_on_every_change() {
        let t0 = Instant::now();
        let mut o = Observer::new(D, Duration::from_secs(1));
        assert_eq!(o.verdict("a", t0), Verdict::Unknown);
        // first sight: even if the lease's renewTime is ancient, the age starts now
        o.observe("a", "5", Some("a/boot"), t0);
        assert!(matches!(
            o.verdict("a", t0 + Duration::from_secs(10)),
            Verdict::Live { .. }
        ));
        assert!(matches!(
            o.verdict("a", t0 + Duration::from_secs(11)),
            Verdict::Expired { .. }
        ));
        // the same resourceVersion again (a relist) is not a renew
        o.observe("a", "5", Some("a/boot"), t0 + Duration::from_secs(9));
        assert!(matches!(
            o.verdict("a", t0 + Duration::from_secs(11)),
            Verdict::Expired { .. }
        ));
        // a new resourceVersion is
        o.observe("a", "6", Some("a/boot"), t0 + Duration::from_secs(12));
        assert_eq!(
            o.verdict("a", t0 + Duration::from_secs(13)),
            Verdict::Live {
                holder: Some("a/boot".into()),
                age: Duration::from_secs(1),
                changes: 1,
                overdue: false,
                expires_in: Duration::from_secs(10),
            }
        );
        assert!(matches!(
            o.verdict("a", t0 + Duration::from_secs(17)),
            Verdict::Live { overdue: true, .. }
        ));
        assert_eq!(o.expires_at("a"), Some(t0 + Duration::from_secs(23)));
        o.forget("a");
        assert_eq!(o.verdict("a", t0), Verdict::Unknown);
    }
}
