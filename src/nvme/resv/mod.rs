//! NVMe persistent reservations: the storage-side fence (docs/fencing.md). A volume's holder
//! registers a key derived from its host ID and claim epoch and holds Write Exclusive –
//! Registrants Only; a host that takes the volume over preempts the old key, after which the
//! target refuses the old holder's writes whatever its agent does.

pub mod codec;
pub mod keeper;
pub mod passthru;
pub mod policy;
pub mod service;

use thiserror::Error;

use crate::fence::FenceGuard;

#[derive(Debug, Error)]
pub enum ResvError {
    #[error("reservation report: {what}")]
    Decode { what: String },
    #[error("volume {volume}: reservation {op} on {device}: {source}")]
    Io {
        volume: String,
        op: &'static str,
        device: String,
        source: std::io::Error,
    },
    #[error("volume {volume}: the target refused reservation {op}: {status}")]
    Refused {
        volume: String,
        op: &'static str,
        status: Status,
    },
    #[error("volume {volume}: its namespace does not support reservations ({why}), and nvme.reservations = \"require\"")]
    Unsupported { volume: String, why: String },
    #[error("volume {volume}: its reservation is held by host ID {holder} (key {key:#018x}), which this host's claim does not know: left as it is")]
    ForeignHolder {
        volume: String,
        holder: String,
        key: u64,
    },
    #[error("volume {volume}: the reservation still did not match after {rounds} rounds of commands (other hosts changing it)")]
    Unsettled { volume: String, rounds: usize },
    #[error("volume {volume} has no block device to send reservation commands to")]
    NoDevice { volume: String },
    #[error("host ID {hostid:?}: expected a UUID (32 hex digits, dashes allowed)")]
    HostId { hostid: String },
}

/// `nvme.reservations`: whether Connect reserves the namespace at the target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Never: no reservation command is sent.
    Off,
    /// Where the namespace supports them; a namespace without is connected and shown so.
    Prefer,
    /// A namespace without reservation support is not connected.
    Require,
}

impl Mode {
    pub fn parse(s: &str) -> Option<Mode> {
        match s {
            "off" => Some(Mode::Off),
            "prefer" => Some(Mode::Prefer),
            "require" => Some(Mode::Require),
            _ => None,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Off => "off",
            Mode::Prefer => "prefer",
            Mode::Require => "require",
        }
    }
}

/// The 16 bytes of a host ID as the target compares them (the UUID's bytes in order).
pub fn host_id_bytes(hostid: &str) -> Result<[u8; 16], ResvError> {
    let hex: String = hostid.chars().filter(|c| *c != '-').collect();
    let bad = || ResvError::HostId {
        hostid: hostid.to_string(),
    };
    if hex.len() != 32 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(bad());
    }
    let mut out = [0u8; 16];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).map_err(|_| bad())?;
    }
    Ok(out)
}

/// A host ID as people read it (the UUID form).
pub fn host_id_string(id: &[u8; 16]) -> String {
    let h: String = id.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
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

    /// The type as `volfencectl show` and the bus name it.
    pub fn as_str(self) -> &'static str {
        use ReservationType::*;
        match self {
            WriteExclusive => "write-exclusive",
            ExclusiveAccess => "exclusive-access",
            WriteExclusiveRegistrantsOnly => "write-exclusive-registrants-only",
            ExclusiveAccessRegistrantsOnly => "exclusive-access-registrants-only",
            WriteExclusiveAllRegistrants => "write-exclusive-all-registrants",
            ExclusiveAccessAllRegistrants => "exclusive-access-all-registrants",
        }
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

/// The kernel seam's reservation side: both halves on one device.
pub trait ReservationDevice: ReservationCommands + ReservationTeardown {}
impl<T: ReservationCommands + ReservationTeardown> ReservationDevice for T {}

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
