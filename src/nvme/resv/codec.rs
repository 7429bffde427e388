//! NVMe reservation commands as bytes (NVM Command Set specification, "Reservations"): the
//! command dwords, the data buffers they carry, and the Report's extended data structure.
//! Pure: no I/O, so it is tested on bytes the real target returned.

use super::{ReservationType, ResvError};

/// Opcodes of the NVM command set.
pub const OP_REGISTER: u8 = 0x0d;
pub const OP_REPORT: u8 = 0x0e;
pub const OP_ACQUIRE: u8 = 0x11;
pub const OP_RELEASE: u8 = 0x15;

/// Status code (generic command status type) a reservation conflict is reported with.
pub const SC_RESERVATION_CONFLICT: u16 = 0x83;

/// Size of the Report's extended header and of each extended registrant entry.
pub const EXT_HEADER_LEN: usize = 64;
pub const EXT_ENTRY_LEN: usize = 64;

/// Registrants a Report buffer has room for: a subsystem has at most a few controllers per
/// host; 64 leaves room for a cluster's worth of hosts sharing one namespace.
pub const REPORT_ENTRIES: usize = 64;
pub const REPORT_LEN: usize = EXT_HEADER_LEN + REPORT_ENTRIES * EXT_ENTRY_LEN;

/// Reservation Register actions (CDW10 bits 2:0).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RegisterAction {
    Register = 0,
    Unregister = 1,
    Replace = 2,
}

/// Reservation Acquire actions (CDW10 bits 2:0).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AcquireAction {
    Acquire = 0,
    Preempt = 1,
    PreemptAndAbort = 2,
}

/// Reservation Release actions (CDW10 bits 2:0).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReleaseAction {
    Release = 0,
    Clear = 1,
}

/// One reservation command: what goes into the submission queue entry besides the namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command {
    pub opcode: u8,
    pub cdw10: u32,
    pub cdw11: u32,
    /// Host-to-controller data (Register, Acquire, Release), or the size of the buffer the
    /// controller fills (Report).
    pub data: Vec<u8>,
}

fn keys(a: u64, b: u64) -> Vec<u8> {
    let mut d = Vec::with_capacity(16);
    d.extend_from_slice(&a.to_le_bytes());
    d.extend_from_slice(&b.to_le_bytes());
    d
}

/// Register `new` (current key 0 unless `Replace`/`Unregister`). Persist-through-power-loss is
/// left unchanged (CPTPL 0): nvmet keeps reservations in memory only either way.
pub fn register(action: RegisterAction, current: u64, new: u64, ignore_existing: bool) -> Command {
    Command {
        opcode: OP_REGISTER,
        cdw10: action as u32 | (u32::from(ignore_existing) << 3),
        cdw11: 0,
        data: keys(current, new),
    }
}

/// Acquire (or preempt the holder or registrants with key `preempt`) with our key `current`.
pub fn acquire(
    action: AcquireAction,
    rtype: ReservationType,
    current: u64,
    preempt: u64,
) -> Command {
    Command {
        opcode: OP_ACQUIRE,
        cdw10: action as u32 | (u32::from(rtype as u8) << 8),
        cdw11: 0,
        data: keys(current, preempt),
    }
}

/// Release our reservation of type `rtype`, or clear every registration and reservation.
pub fn release(action: ReleaseAction, rtype: ReservationType, current: u64) -> Command {
    Command {
        opcode: OP_RELEASE,
        cdw10: action as u32 | (u32::from(rtype as u8) << 8),
        cdw11: 0,
        data: current.to_le_bytes().to_vec(),
    }
}

/// Report with the extended data structure (EDS): 128-bit host IDs, which is how nvmet tells
/// registrants apart. NUMD is 0-based, in dwords.
pub fn report() -> Command {
    Command {
        opcode: OP_REPORT,
        cdw10: (REPORT_LEN / 4 - 1) as u32,
        cdw11: 1,
        data: vec![0; REPORT_LEN],
    }
}

/// One registered controller, as the Report lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registrant {
    pub cntlid: u16,
    /// This registrant holds the reservation.
    pub holder: bool,
    pub key: u64,
    pub host_id: [u8; 16],
}

/// The Report: generation (bumped by every register, preempt and clear), the reservation's
/// type if one is held, and the registrants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub generation: u32,
    pub rtype: Option<ReservationType>,
    pub ptpl: bool,
    pub registrants: Vec<Registrant>,
}

impl Report {
    pub fn holder(&self) -> Option<&Registrant> {
        self.registrants.iter().find(|r| r.holder)
    }
}

fn le16(b: &[u8]) -> u16 {
    u16::from_le_bytes([b[0], b[1]])
}

/// Decodes an extended Report buffer. The registrant count comes from the header and must fit
/// in the buffer; a type byte the specification does not define is an error, not "none".
pub fn decode_report(buf: &[u8]) -> Result<Report, ResvError> {
    let bad = |what: String| ResvError::Decode { what };
    if buf.len() < EXT_HEADER_LEN {
        return Err(bad(format!(
            "report of {} bytes, shorter than its {EXT_HEADER_LEN}-byte header",
            buf.len()
        )));
    }
    let generation = u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]);
    let rtype = match buf[4] {
        0 => None,
        t => Some(
            ReservationType::from_u8(t)
                .ok_or_else(|| bad(format!("reservation type {t} (expected 0 or 1..=6)")))?,
        ),
    };
    let count = usize::from(le16(&buf[5..7]));
    let ptpl = buf[9] & 1 == 1;
    let need = EXT_HEADER_LEN + count * EXT_ENTRY_LEN;
    if buf.len() < need {
        return Err(bad(format!(
            "report lists {count} registrants ({need} bytes) in a {}-byte buffer",
            buf.len()
        )));
    }
    let registrants = (0..count)
        .map(|i| {
            let e = &buf[EXT_HEADER_LEN + i * EXT_ENTRY_LEN..][..EXT_ENTRY_LEN];
            let mut host_id = [0u8; 16];
            host_id.copy_from_slice(&e[16..32]);
            Registrant {
                cntlid: le16(&e[0..2]),
                holder: e[2] & 1 == 1,
                key: u64::from_le_bytes(e[8..16].try_into().unwrap()),
                host_id,
            }
        })
        .collect::<Vec<_>>();
    if registrants.iter().filter(|r| r.holder).count() > 1
        && rtype.is_some_and(|t| !t.all_registrants())
    {
        return Err(bad(format!(
            "{} registrants hold a reservation of type {}: only an all-registrants type has more than one holder",
            registrants.iter().filter(|r| r.holder).count(),
            rtype.map(|t| t as u8).unwrap_or(0)
        )));
    }
    Ok(Report {
        generation,
        rtype,
        ptpl,
        registrants,
    })
}

/// Encodes a Report as a controller returns it (for the fake kernel, which models the target).
pub fn encode_report(r: &Report) -> Vec<u8> {
    let mut buf = vec![0u8; EXT_HEADER_LEN + r.registrants.len() * EXT_ENTRY_LEN];
    buf[0..4].copy_from_slice(&r.generation.to_le_bytes());
    buf[4] = r.rtype.map(|t| t as u8).unwrap_or(0);
    buf[5..7].copy_from_slice(&(r.registrants.len() as u16).to_le_bytes());
    buf[9] = u8::from(r.ptpl);
    for (i, reg) in r.registrants.iter().enumerate() {
        let e = &mut buf[EXT_HEADER_LEN + i * EXT_ENTRY_LEN..][..EXT_ENTRY_LEN];
        e[0..2].copy_from_slice(&reg.cntlid.to_le_bytes());
        e[2] = u8::from(reg.holder);
        e[8..16].copy_from_slice(&reg.key.to_le_bytes());
        e[16..32].copy_from_slice(&reg.host_id);
    }
    buf
}
