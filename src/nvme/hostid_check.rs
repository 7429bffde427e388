//! One NVMe host ID per host, across the cluster. Two hosts with one host ID are one registrant
//! to every target: their reservations cannot fence each other, and each would take the
//! other's key for its own (docs/fencing.md). Each agent labels its host lease with its host ID
//! ([`HOST_ID_LABEL`]) and lists the leases with that label — a consistent read at every new
//! holding, once its own lease carries the label, and from the API server's cache every
//! [`RECHECK`] after that. Another node's lease renewed within its duration is a duplicate: the
//! agent refuses every Connect until a check finds none. Of two hosts that start together at
//! least one sees the other, since each lists after its own labelled write.

use std::future::Future;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use crate::fence::{ApiError, LeaseRecord};

/// The host lease's label holding the agent's NVMe host ID (a UUID: a valid label value).
pub const HOST_ID_LABEL: &str = "volfence.io/nvme-host-id";
/// How often a host that found no duplicate looks again (a host that starts later with our ID
/// sees us at once; this is for us to see it).
pub const RECHECK: Duration = Duration::from_secs(600);

/// The leases carrying one host ID, as the cluster room reads them.
pub trait HostIdPeers: Send + Sync {
    /// Every lease labelled with `host_id`, ours included: a consistent read, or the API
    /// server's cache (`consistent` false: cheap, may lag).
    fn leases_with_host_id(
        &self,
        host_id: &str,
        consistent: bool,
    ) -> impl Future<Output = Result<Vec<LeaseRecord>, ApiError>> + Send;
    /// A Warning Event on this host's lease, for people (best effort).
    fn warn(&self, reason: &str, message: &str) -> impl Future<Output = ()> + Send;
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HostIdError {
    #[error("NVMe host ID {host_id} is also node {node}'s (its host lease was renewed at {renewed}): two hosts with one host ID are one registrant to the target and cannot fence each other; give one of them its own host ID (/etc/nvme/hostid or [nvme] hostid) and restart its agent")]
    Duplicate {
        host_id: String,
        node: String,
        renewed: String,
    },
}

/// What one list of the labelled leases says.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Finding {
    /// Another node's lease, held and renewed within its duration.
    pub duplicate: Option<HostIdError>,
    /// Other leases with our host ID that are not held now (a host gone, renamed or reinstalled
    /// with its old ID): harmless until that host runs again, said in the journal.
    pub stale: Vec<String>,
}

/// Decides on `leases` (the list for `host_id`) for the host whose lease is `own`, at `now`.
/// A lease whose renew time cannot be read counts as live: doubt refuses.
pub fn decide(host_id: &str, own: &str, leases: &[LeaseRecord], now: SystemTime) -> Finding {
    let mut f = Finding::default();
    for l in leases.iter().filter(|l| l.name != own) {
        let held = l.holder.as_deref().is_some_and(|h| !h.is_empty());
        let renewed = l.renew_time.clone().unwrap_or_default();
        let duration = Duration::from_secs(u64::try_from(l.lease_duration_seconds).unwrap_or(0));
        let live = held && crate::time::age(&renewed, now).is_none_or(|age| age <= duration);
        if live {
            if f.duplicate.is_none() {
                f.duplicate = Some(HostIdError::Duplicate {
                    host_id: host_id.to_string(),
                    node: l.name.clone(),
                    renewed: if renewed.is_empty() {
                        "an unknown time".into()
                    } else {
                        renewed
                    },
                });
            }
        } else {
            f.stale.push(l.name.clone());
        }
    }
    f
}

/// This host's standing: refused while a duplicate is known.
pub struct HostIdCheck {
    host_id: String,
    own: String,
    found: Mutex<Finding>,
}

impl HostIdCheck {
    pub fn new(host_id: &str, own_lease: &str) -> HostIdCheck {
        HostIdCheck {
            host_id: host_id.to_ascii_lowercase(),
            own: own_lease.to_string(),
            found: Mutex::default(),
        }
    }

    pub fn host_id(&self) -> &str {
        &self.host_id
    }

    /// Err while another live host has our host ID (Connect refuses then).
    pub fn refusal(&self) -> Result<(), HostIdError> {
        match &self.found.lock().unwrap().duplicate {
            Some(e) => Err(e.clone()),
            None => Ok(()),
        }
    }

    /// One list and decision. A change is logged (and a new duplicate reported as an Event);
    /// a failed list keeps what was known.
    pub async fn run<P: HostIdPeers>(&self, peers: &P, consistent: bool) -> Result<(), ApiError> {
        let leases = peers.leases_with_host_id(&self.host_id, consistent).await?;
        let now = decide(&self.host_id, &self.own, &leases, SystemTime::now());
        let (dup, stale) = (now.duplicate.clone(), now.stale.clone());
        let before = std::mem::replace(&mut *self.found.lock().unwrap(), now);
        if stale != before.stale && !stale.is_empty() {
            tracing::warn!(
                "NVMe host ID {} is also on lease(s) {} of host(s) not running now: if one comes back with it, this host refuses Connect",
                self.host_id,
                stale.join(", ")
            );
        }
        if dup != before.duplicate {
            match dup {
                Some(e) => {
                    let msg = format!("{e}: every Connect is refused");
                    tracing::error!("{msg}");
                    peers.warn("DuplicateHostId", &msg).await;
                }
                None => tracing::info!(
                    "NVMe host ID {} is this host's alone again: Connect is allowed",
                    self.host_id
                ),
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "0c1a1a1a-5e1f-4a0b-9c2d-00000000000a";

    fn lease(name: &str, holder: Option<&str>, renewed: Option<&str>) -> LeaseRecord {
        LeaseRecord {
            name: name.into(),
            resource_version: "1".into(),
            holder: holder.map(str::to_string),
            lease_duration_seconds: 15,
            lease_transitions: 1,
            acquire_time: None,
            renew_time: renewed.map(str::to_string),
        }
    }

    fn at(s: &str) -> SystemTime {
        let t: jiff::Timestamp = s.parse().unwrap();
        SystemTime::from(t)
    }

    #[test]
    fn only_our_own_lease_is_no_duplicate() {
        let l = [lease("a", Some("a/boot"), Some("2026-12-04T10:00:00Z"))];
        assert_eq!(
            decide(ID, "a", &l, at("2026-12-04T10:00:01Z")),
            Finding::default()
        );
    }

    #[test]
    fn another_live_lease_is_a_duplicate_naming_the_node() {
        let l = [
            lease("a", Some("a/boot"), Some("2026-12-04T10:00:00Z")),
            lease("b", Some("b/boot"), Some("2026-12-04T10:00:00.5Z")),
        ];
        let f = decide(ID, "a", &l, at("2026-12-04T10:00:10Z"));
        let e = f.duplicate.expect("a duplicate");
        let msg = e.to_string();
        assert!(msg.contains("node b") && msg.contains(ID), "{msg}");
        assert!(f.stale.is_empty());
    }

    #[test]
    fn an_expired_or_released_lease_is_stale_not_a_duplicate() {
        let l = [
            lease("b", Some("b/boot"), Some("2026-12-04T09:00:00Z")),
            lease("c", None, Some("2026-12-04T10:00:00Z")),
            lease("d", Some(""), Some("2026-12-04T10:00:00Z")),
        ];
        let f = decide(ID, "a", &l, at("2026-12-04T10:00:05Z"));
        assert_eq!(f.duplicate, None);
        assert_eq!(f.stale, ["b", "c", "d"]);
    }

    #[test]
    fn a_held_lease_without_a_readable_renew_time_counts_as_live() {
        for renewed in [None, Some("yesterday")] {
            let l = [lease("b", Some("b/boot"), renewed)];
            let f = decide(ID, "a", &l, at("2026-12-04T10:00:05Z"));
            assert!(f.duplicate.is_some(), "{renewed:?}");
        }
    }

    struct Peers(Mutex<Vec<LeaseRecord>>, Mutex<Vec<String>>);
    impl HostIdPeers for Peers {
        async fn leases_with_host_id(
            &self,
            host_id: &str,
            _consistent: bool,
        ) -> Result<Vec<LeaseRecord>, ApiError> {
            assert_eq!(host_id, ID);
            Ok(self.0.lock().unwrap().clone())
        }
        async fn warn(&self, reason: &str, _message: &str) {
            self.1.lock().unwrap().push(reason.to_string());
        }
    }

    #[tokio::test]
    async fn a_found_duplicate_refuses_until_a_check_finds_none_and_is_reported_once() {
        let now = crate::time::rfc3339(SystemTime::now(), true);
        let peers = Peers(
            Mutex::new(vec![lease("b", Some("b/boot"), Some(&now))]),
            Mutex::default(),
        );
        let c = HostIdCheck::new(&ID.to_ascii_uppercase(), "a");
        assert_eq!(c.host_id(), ID);
        assert!(c.refusal().is_ok());
        c.run(&peers, true).await.unwrap();
        c.run(&peers, false).await.unwrap();
        assert!(matches!(c.refusal(), Err(HostIdError::Duplicate { node, .. }) if node == "b"));
        assert_eq!(*peers.1.lock().unwrap(), ["DuplicateHostId"]);
        peers.0.lock().unwrap().clear();
        c.run(&peers, false).await.unwrap();
        assert!(c.refusal().is_ok());
    }
}
