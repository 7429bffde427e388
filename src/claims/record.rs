//! A claim as the API server keeps it: which host holds a volume, in which of its holdings
//! (epoch), and whether it is letting go. Read back records are checked as strictly as input.

use crate::names::{is_dns1123_label, is_dns1123_subdomain};

/// The annotation that names the volume (its id need not be a valid object name).
pub const VOLUME_ANNOTATION: &str = "volfence.io/volume-id";
/// The holder's host-lease epoch at the time it took or re-stamped the claim.
pub const EPOCH_ANNOTATION: &str = "volfence.io/holder-epoch";
/// Present ("true") while the holder's Disconnect runs: a handoff, not a conflict.
pub const RELEASING_ANNOTATION: &str = "volfence.io/releasing";
/// During a live migration: the second holder, `<node>/<boot_id>`.
pub const MIGRATION_HOLDER_ANNOTATION: &str = "volfence.io/migration-holder";
/// The second holder's host-lease epoch when it joined.
pub const MIGRATION_EPOCH_ANNOTATION: &str = "volfence.io/migration-epoch";
/// When the second holder leaves if the source has not (RFC 3339, by the second holder's own
/// clock: it alone acts on it).
pub const MIGRATION_DEADLINE_ANNOTATION: &str = "volfence.io/migration-deadline";
/// The holder's node, so each agent selects only its own claims.
pub const NODE_LABEL: &str = "volfence.io/holder-node";
/// During a live migration, the destination's node, so it finds the claims it shares.
pub const MIGRATION_NODE_LABEL: &str = "volfence.io/migration-node";
/// What every claim carries, so `kubectl get leases -l volfence.io/claim` lists them.
pub const CLAIM_LABEL: &str = "volfence.io/claim";

/// One volume's claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    /// The object's name (see [`object_name`]).
    pub name: String,
    pub volume_id: String,
    /// The resourceVersion it was read at; empty for one not yet created. Every write is
    /// conditional on it.
    pub version: String,
    /// `<node>/<boot_id>` of the holder.
    pub holder: String,
    /// The holder's host-lease epoch when it took (or re-stamped) the claim.
    pub epoch: u64,
    /// How often the claim changed hands or was re-stamped (leaseTransitions).
    pub generation: i32,
    /// When the holder took it (RFC 3339, microseconds): for people, never for decisions.
    pub acquired: Option<String>,
    /// The holder's Disconnect is in progress.
    pub releasing: bool,
    /// A live migration's destination, holding the volume together with the holder for a
    /// bounded window.
    pub migration: Option<Migration>,
}

/// The second holder of a claim during a live migration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Migration {
    /// `<node>/<boot_id>` of the destination.
    pub holder: String,
    /// The destination's host-lease epoch when it joined (or re-stamped).
    pub epoch: u64,
    /// RFC 3339: when the destination leaves if the source is still attached.
    pub deadline: String,
}

impl Migration {
    pub fn node(&self) -> &str {
        node_of(&self.holder)
    }
}

fn node_of(holder: &str) -> &str {
    holder.split_once('/').map_or("", |(n, _)| n)
}

impl Claim {
    /// The holder's node: the name of its host lease.
    pub fn node(&self) -> &str {
        node_of(&self.holder)
    }

    /// Is `node` one of this claim's holders (the holder, or a migration's destination)?
    pub fn held_by(&self, node: &str) -> bool {
        self.node() == node || self.migration.as_ref().is_some_and(|m| m.node() == node)
    }
}

/// What is wrong with a record read back.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    #[error("claim {name}: {field} is {found:?}, expected {expected}")]
    Field {
        name: String,
        field: &'static str,
        found: String,
        expected: &'static str,
    },
    /// The object under this volume's name belongs to another volume id (a hashed name's
    /// collision, or an object someone else made).
    #[error("claim {name} names volume {found:?}, not {wanted:?}")]
    OtherVolume {
        name: String,
        wanted: String,
        found: String,
    },
}

/// The object name of `volume_id`'s claim: the id itself when it is a valid object name, else
/// `h-` and a hash of it (FNV-1a, 64 bits; stable across versions). The id is always in
/// [`VOLUME_ANNOTATION`] too, and a read checks it.
pub fn object_name(volume_id: &str) -> String {
    if is_dns1123_subdomain(volume_id) && !volume_id.starts_with("h-") {
        return volume_id.to_string();
    }
    let hash = volume_id.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    format!("h-{hash:016x}")
}

/// A label value for `node` (label values are at most 63 characters): the name when it fits,
/// else a prefix and a hash of all of it.
pub fn node_label(node: &str) -> String {
    let fits = node.len() <= 63
        && node
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'));
    if fits {
        node.to_string()
    } else {
        crate::names::bounded(node, 63)
    }
}

/// The fields of a Lease a claim is stored in, as read.
pub struct Stored<'a> {
    pub name: &'a str,
    pub version: &'a str,
    pub holder: Option<&'a str>,
    pub generation: Option<i32>,
    pub acquired: Option<String>,
    pub volume_id: Option<&'a str>,
    pub epoch: Option<&'a str>,
    pub releasing: Option<&'a str>,
    pub migration_holder: Option<&'a str>,
    pub migration_epoch: Option<&'a str>,
    pub migration_deadline: Option<&'a str>,
}

/// A stored claim checked field by field; `wanted`, when given, is the volume the caller
/// asked for.
pub fn parse(s: Stored<'_>, wanted: Option<&str>) -> Result<Claim, RecordError> {
    let bad = |field: &'static str, found: &str, expected: &'static str| RecordError::Field {
        name: s.name.to_string(),
        field,
        found: found.to_string(),
        expected,
    };
    let volume_id = s.volume_id.unwrap_or_default();
    if crate::nvme::options::validate_volume_id(volume_id).is_err() {
        return Err(bad(
            "annotation volfence.io/volume-id",
            volume_id,
            "a volume id (1-128 characters from [A-Za-z0-9._-])",
        ));
    }
    if let Some(w) = wanted {
        if w != volume_id {
            return Err(RecordError::OtherVolume {
                name: s.name.to_string(),
                wanted: w.to_string(),
                found: volume_id.to_string(),
            });
        }
    }
    let holder = s.holder.unwrap_or_default();
    if !valid_holder(holder) {
        return Err(bad(
            "spec.holderIdentity",
            holder,
            "<node>/<boot_id> of the holding host",
        ));
    }
    let epoch_of = |text: Option<&str>, field: &'static str| {
        let text = text.unwrap_or_default();
        text.parse::<u64>()
            .ok()
            .filter(|e| *e > 0)
            .ok_or_else(|| bad(field, text, "a host-lease epoch (a positive integer)"))
    };
    let epoch = epoch_of(s.epoch, "annotation volfence.io/holder-epoch")?;
    let migration = match (s.migration_holder, s.migration_epoch, s.migration_deadline) {
        (None, None, None) => None,
        (h, e, d) => {
            let h = h.unwrap_or_default();
            if !valid_holder(h) || node_of(h) == node_of(holder) {
                return Err(bad(
                    "annotation volfence.io/migration-holder",
                    h,
                    "<node>/<boot_id> of a second host",
                ));
            }
            let epoch = epoch_of(e, "annotation volfence.io/migration-epoch")?;
            let d = d.unwrap_or_default();
            if crate::time::age(d, std::time::SystemTime::now()).is_none() {
                return Err(bad(
                    "annotation volfence.io/migration-deadline",
                    d,
                    "an RFC 3339 time",
                ));
            }
            Some(Migration {
                holder: h.to_string(),
                epoch,
                deadline: d.to_string(),
            })
        }
    };
    let generation = s.generation.filter(|g| *g > 0).ok_or_else(|| {
        bad(
            "spec.leaseTransitions",
            &format!("{:?}", s.generation),
            "a positive integer",
        )
    })?;
    let releasing = match s.releasing {
        None => false,
        Some("true") => true,
        Some(other) => {
            return Err(bad(
                "annotation volfence.io/releasing",
                other,
                "\"true\" or absent",
            ))
        }
    };
    Ok(Claim {
        name: s.name.to_string(),
        volume_id: volume_id.to_string(),
        version: s.version.to_string(),
        holder: holder.to_string(),
        epoch,
        generation,
        acquired: s.acquired,
        releasing,
        migration,
    })
}

fn valid_holder(holder: &str) -> bool {
    holder.split_once('/').is_some_and(|(node, boot)| {
        is_dns1123_subdomain(node) && !boot.is_empty() && !boot.contains('/')
    })
}

/// Is `s` usable as a claims namespace (a DNS label)?
pub fn valid_namespace(s: &str) -> bool {
    is_dns1123_label(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored<'a>(holder: &'a str, epoch: &'a str) -> Stored<'a> {
        Stored {
            name: "vol-a",
            version: "7",
            holder: Some(holder),
            generation: Some(2),
            acquired: None,
            volume_id: Some("vol-a"),
            epoch: Some(epoch),
            releasing: None,
            migration_holder: None,
            migration_epoch: None,
            migration_deadline: None,
        }
    }

    #[test]
    fn names_are_readable_when_they_can_be_and_hashed_otherwise() {
        assert_eq!(object_name("vol-a"), "vol-a");
        assert_eq!(object_name("pvc-0a1b.v2"), "pvc-0a1b.v2");
        for odd in ["Vol_A", "-a", "a..b", "h-0123456789abcdef"] {
            let n = object_name(odd);
            assert!(n.starts_with("h-") && n.len() == 18, "{odd} -> {n}");
            assert!(is_dns1123_subdomain(&n));
        }
        assert_ne!(object_name("Vol_A"), object_name("Vol_B"));
        assert_eq!(node_label("node-1"), "node-1");
        let long = format!("{}.example.com", "n".repeat(80));
        assert_eq!(node_label(&long).len(), 63);
    }

    #[test]
    fn records_read_back_are_checked_like_input() {
        let c = parse(stored("node-a/boot-1", "3"), Some("vol-a")).unwrap();
        assert_eq!((c.node(), c.epoch, c.generation), ("node-a", 3, 2));
        assert!(!c.releasing);
        for (holder, epoch, field) in [
            ("node-a", "3", "spec.holderIdentity"),
            ("Node_A/boot", "3", "spec.holderIdentity"),
            ("node-a/boot", "0", "annotation volfence.io/holder-epoch"),
            ("node-a/boot", "x", "annotation volfence.io/holder-epoch"),
        ] {
            let e = parse(stored(holder, epoch), None).unwrap_err();
            assert!(
                matches!(&e, RecordError::Field { field: f, .. } if *f == field),
                "{e}"
            );
        }
        let mut s = stored("node-a/boot", "1");
        s.releasing = Some("yes");
        assert!(parse(s, None)
            .unwrap_err()
            .to_string()
            .contains("releasing"));
        let mut s = stored("node-a/boot", "1");
        s.migration_holder = Some("node-b/boot-b");
        s.migration_epoch = Some("4");
        s.migration_deadline = Some("2026-12-03T17:00:00Z");
        let m = parse(s, None).unwrap().migration.unwrap();
        assert_eq!((m.node(), m.epoch), ("node-b", 4));
        for (h, e, d, field) in [
            (
                "node-a/other-boot",
                "4",
                "2026-12-03T17:00:00Z",
                "migration-holder",
            ),
            (
                "node-b/boot-b",
                "0",
                "2026-12-03T17:00:00Z",
                "migration-epoch",
            ),
            ("node-b/boot-b", "4", "soon", "migration-deadline"),
        ] {
            let mut s = stored("node-a/boot", "1");
            s.migration_holder = Some(h);
            s.migration_epoch = Some(e);
            s.migration_deadline = Some(d);
            let err = parse(s, None).unwrap_err().to_string();
            assert!(err.contains(field), "{err}");
        }
        let mut s = stored("node-a/boot", "1");
        s.migration_epoch = Some("4");
        assert!(parse(s, None)
            .unwrap_err()
            .to_string()
            .contains("migration-holder"));
        let e = parse(stored("node-a/boot", "1"), Some("vol-b")).unwrap_err();
        assert_eq!(
            e.to_string(),
            "claim vol-a names volume \"vol-a\", not \"vol-b\""
        );
    }
}
