//! NVMe persistent reservations: the storage-side fence (docs/fencing.md). A volume's holder
//! registers a key derived from its host ID and claim epoch and holds Write Exclusive –
//! Registrants Only; a host that takes the volume over preempts the old key, after which the
//! target refuses the old holder's writes whatever its agent does.

pub mod codec;
pub mod passthru;

use thiserror::Error;

use crate::fence::FenceGuard;

#[derive(Debug, Error)]
pub enum ResvError {
    #[error("reservation report: {what}")]
    Decode { what: String },
}

/// Reservation types (Reservation Acquire RTYPE).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReservationType {
    WriteExclusive = 1,
    ExclusiveAccess = 2,
    WriteExclusiveRegistrantsOnly = 3,
    ExclusiveAccessRegistrantsOnly = 4,
    WriteExclusiveAllRegistrants = 5,
    ExclusiveAccessAllRegistrants = 6,
}

impl ReservationType {
    pub fn from_u8(t: u8) -> Option<ReservationType> {
        use ReservationType::*;
        Some(match t {
            1 => WriteExclusive,
            2 => ExclusiveAccess,
            3 => WriteExclusiveRegistrantsOnly,
            4 => ExclusiveAccessRegistrantsOnly,
            5 => WriteExclusiveAllRegistrants,
            6 => ExclusiveAccessAllRegistrants,
            _ => return None,
        })
    }

    /// Every registrant is a holder (types 5 and 6).
    pub fn all_registrants(self) -> bool {
        matches!(
            self,
            ReservationType::WriteExclusiveAllRegistrants
                | ReservationType::ExclusiveAccessAllRegistrants
        )
    }
}

/// How a command completed: the NVMe status field as the passthrough ioctl returns it
/// (SC bits 7:0, SCT 10:8, MORE 13, DNR 14); 0 is success.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Status(pub u16);

impl Status {
    pub fn is_success(self) -> bool {
        self.0 & 0x7ff == 0
    }

    /// Reservation Conflict (generic status 0x83): the target refused the command because of
    /// a reservation (a write from a non-registrant, or a register/acquire with a wrong key).
    pub fn is_reservation_conflict(self) -> bool {
        self.0 & 0x7ff == codec::SC_RESERVATION_CONFLICT
    }

    /// Do Not Retry.
    pub fn dnr(self) -> bool {
        self.0 & 0x4000 != 0
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 & 0x7ff {
            0 => write!(f, "success"),
            codec::SC_RESERVATION_CONFLICT => write!(f, "reservation conflict ({:#06x})", self.0),
            _ => write!(
                f,
                "NVMe status {:#06x} (sct {:#x}, sc {:#04x})",
                self.0,
                (self.0 >> 8) & 7,
                self.0 & 0xff
            ),
        }
    }
}

/// Reservation commands that change who may write a namespace (register, acquire, preempt,
/// release): they take the fence's guard. Blocking; run them on a blocking thread.
pub trait ReservationCommands: Send + Sync {
    fn submit(
        &self,
        guard: &FenceGuard,
        device: &str,
        nsid: u32,
        cmd: &codec::Command,
    ) -> std::io::Result<Status>;

    /// Reservation Report (extended data structure): reads, changes nothing.
    fn report(&self, device: &str, nsid: u32) -> std::io::Result<(Status, Vec<u8>)>;
}

/// Giving up this host's own registration, which must work without the lease: a fenced host
/// still disconnects.
pub trait ReservationTeardown: Send + Sync {
    fn unregister(&self, device: &str, nsid: u32, key: u64) -> std::io::Result<Status>;
}

/// The reservation key of host `host_id` holding a claim in `epoch`: never 0 (0 means "no
/// key" to the target), different for different hosts and for each epoch of one host (a
/// 64-bit mix of both: two hosts or two epochs share a key with probability 2^-64). Keys are
/// not secrets: every registrant reads them in a Report.
pub fn key(host_id: &[u8; 16], epoch: u64) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325_u64;
    for b in b"volfence-resv-v1"
        .iter()
        .chain(host_id)
        .chain(&epoch.to_le_bytes())
    {
        h = (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
    }
    // splitmix64's finalizer: every input bit reaches every output bit.
    h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^= h >> 31;
    h.max(1)
}

#[cfg(test)]
mod tests;
