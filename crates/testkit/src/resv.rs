//! NVMe reservations as Linux's nvmet keeps them (drivers/nvme/target/pr.c, 6.13+): per
//! namespace, in target memory only, registrants told apart by host ID (every controller of
//! one host ID is one registrant), one holder. Commands arrive as the product encodes them and
//! are decoded here from the specification's layout; `tests/resv_model.rs` replays the
//! sequence captured from a real target (tests/fixtures/nvme-resv-7.3) and compares bytes.
//!
//! One model serves every host: each command names the host ID it comes from.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use volfence::nvme::resv::codec::{self, Command, Registrant, Report};
use volfence::nvme::resv::{ReservationType, Status};

const DNR: u16 = 0x4000;
const INVALID_OPCODE: u16 = 0x01 | DNR;
const INVALID_FIELD: u16 = 0x02 | DNR;
const HOST_ID_INCONSISTENT: u16 = 0x18 | DNR;
const CONFLICT: u16 = 0x83 | DNR;

#[derive(Debug, Default, Clone)]
struct Namespace {
    generation: u32,
    /// In registration order, as the Report lists them.
    registrants: Vec<([u8; 16], u64)>,
    holder: Option<[u8; 16]>,
    rtype: Option<ReservationType>,
}

impl Namespace {
    fn key_of(&self, host: &[u8; 16]) -> Option<u64> {
        self.registrants
            .iter()
            .find(|(h, _)| h == host)
            .map(|(_, k)| *k)
    }

    fn unregister(&mut self, host: &[u8; 16]) {
        self.registrants.retain(|(h, _)| h != host);
        if self.holder.as_ref() == Some(host) {
            match self.rtype {
                // All-registrants: the reservation stays with another registrant.
                Some(t) if t.all_registrants() && !self.registrants.is_empty() => {
                    self.holder = Some(self.registrants[0].0);
                }
                _ => {
                    self.holder = None;
                    self.rtype = None;
                }
            }
        }
    }

    /// Removes every registrant with `key` but `keep`; false if there was none.
    fn preempt_key(&mut self, key: u64, keep: &[u8; 16]) -> bool {
        let victims: Vec<[u8; 16]> = self
            .registrants
            .iter()
            .filter(|(h, k)| *k == key && h != keep)
            .map(|(h, _)| *h)
            .collect();
        for v in &victims {
            self.unregister(v);
        }
        !victims.is_empty()
    }

    fn register(&mut self, host: &[u8; 16], cdw10: u32, crkey: u64, nrkey: u64) -> u16 {
        let iekey = cdw10 & 8 != 0;
        let status = match cdw10 & 7 {
            0 => match self.key_of(host) {
                Some(k) if k == nrkey => 0,
                Some(_) => CONFLICT,
                None => {
                    self.registrants.push((*host, nrkey));
                    0
                }
            },
            1 => match self.key_of(host) {
                Some(k) if k == crkey || iekey => {
                    self.unregister(host);
                    0
                }
                _ => CONFLICT,
            },
            2 => match self.key_of(host) {
                Some(k) if k == crkey || iekey => {
                    for r in self.registrants.iter_mut().filter(|(h, _)| h == host) {
                        r.1 = nrkey;
                    }
                    0
                }
                _ => CONFLICT,
            },
            _ => INVALID_OPCODE,
        };
        if status == 0 {
            self.generation = self.generation.wrapping_add(1);
        }
        status
    }

    fn acquire(&mut self, host: &[u8; 16], cdw10: u32, crkey: u64, prkey: u64) -> u16 {
        let Some(rtype) = ReservationType::from_u8(((cdw10 >> 8) & 0xff) as u8) else {
            return INVALID_FIELD;
        };
        if cdw10 & 8 != 0 {
            return INVALID_FIELD;
        }
        if self.key_of(host) != Some(crkey) {
            return CONFLICT;
        }
        match cdw10 & 7 {
            0 => match (self.holder, self.rtype) {
                (None, _) => {
                    self.holder = Some(*host);
                    self.rtype = Some(rtype);
                    0
                }
                (Some(h), Some(t)) if h == *host && t == rtype => 0,
                _ => CONFLICT,
            },
            1 | 2 => {
                let status = match (self.holder, self.rtype) {
                    (None, _) => {
                        if self.preempt_key(prkey, &[0xff; 16]) {
                            0
                        } else {
                            CONFLICT
                        }
                    }
                    (Some(_), Some(t)) if t.all_registrants() && prkey == 0 => {
                        let others: Vec<[u8; 16]> = self
                            .registrants
                            .iter()
                            .map(|(h, _)| *h)
                            .filter(|h| h != host)
                            .collect();
                        self.registrants.retain(|(h, _)| !others.contains(h));
                        self.holder = Some(*host);
                        self.rtype = Some(rtype);
                        0
                    }
                    (Some(_), Some(t)) if t.all_registrants() => {
                        if self.preempt_key(prkey, host) {
                            0
                        } else {
                            CONFLICT
                        }
                    }
                    (Some(h), _) if h == *host => {
                        self.rtype = Some(rtype);
                        0
                    }
                    (Some(_), _) if prkey == 0 => INVALID_FIELD,
                    (Some(h), _) if self.key_of(&h) == Some(prkey) => {
                        // The old holder (and every other registrant with its key) goes; the
                        // reservation is ours, not released in between.
                        let victims: Vec<[u8; 16]> = self
                            .registrants
                            .iter()
                            .filter(|(r, k)| *k == prkey && r != host)
                            .map(|(r, _)| *r)
                            .collect();
                        self.registrants.retain(|(r, _)| !victims.contains(r));
                        self.holder = Some(*host);
                        self.rtype = Some(rtype);
                        0
                    }
                    _ => {
                        if self.preempt_key(prkey, host) {
                            0
                        } else {
                            CONFLICT
                        }
                    }
                };
                if status == 0 {
                    self.generation = self.generation.wrapping_add(1);
                }
                status
            }
            _ => INVALID_OPCODE,
        }
    }

    fn release(&mut self, host: &[u8; 16], cdw10: u32, crkey: u64) -> u16 {
        if cdw10 & 8 != 0 {
            return INVALID_FIELD;
        }
        if self.key_of(host) != Some(crkey) {
            return CONFLICT;
        }
        match cdw10 & 7 {
            0 => {
                if self.holder != Some(*host) {
                    return 0;
                }
                if self.rtype.map(|t| t as u32) != Some((cdw10 >> 8) & 0xff) {
                    return CONFLICT;
                }
                self.holder = None;
                self.rtype = None;
                0
            }
            1 => {
                self.registrants.clear();
                self.holder = None;
                self.rtype = None;
                self.generation = self.generation.wrapping_add(1);
                0
            }
            _ => INVALID_OPCODE,
        }
    }

    fn report(&self) -> Report {
        Report {
            generation: self.generation,
            rtype: self.rtype,
            ptpl: false,
            registrants: self
                .registrants
                .iter()
                .map(|(h, k)| Registrant {
                    cntlid: 0xffff,
                    holder: self.holder.as_ref() == Some(h)
                        || self.rtype.is_some_and(|t| t.all_registrants()),
                    key: *k,
                    host_id: *h,
                })
                .collect(),
        }
    }

    fn may_write(&self, host: &[u8; 16]) -> bool {
        use ReservationType::*;
        match (self.holder, self.rtype) {
            (None, _) | (_, None) => true,
            (Some(h), _) if h == *host => true,
            (_, Some(WriteExclusive | ExclusiveAccess)) => false,
            (_, Some(_)) => self.key_of(host).is_some(),
        }
    }
}

fn key_at(data: &[u8], at: usize) -> u64 {
    data.get(at..at + 8)
        .map(|b| u64::from_le_bytes(b.try_into().unwrap()))
        .unwrap_or(0)
}

/// The reservations of every namespace with `resv_enable`, on one target (all subsystems).
#[derive(Clone, Default)]
pub struct FakeReservations {
    namespaces: Arc<Mutex<BTreeMap<(String, u32), Namespace>>>,
}

impl FakeReservations {
    pub fn new() -> FakeReservations {
        FakeReservations::default()
    }

    /// `resv_enable` then `enable` on namespace `nsid` of `nqn`; a namespace enabled again
    /// (`disable`/`enable`, or a target restart) starts with nothing registered, generation 0.
    pub fn enable(&self, nqn: &str, nsid: u32) {
        self.namespaces
            .lock()
            .unwrap()
            .insert((nqn.to_string(), nsid), Namespace::default());
    }

    /// Runs `cmd` from host `host_id` on the namespace, as nvmet does: the status, and the
    /// data (a Report's buffer filled in).
    pub fn execute(
        &self,
        host_id: &[u8; 16],
        nqn: &str,
        nsid: u32,
        cmd: &Command,
    ) -> (Status, Vec<u8>) {
        let mut map = self.namespaces.lock().unwrap();
        let Some(ns) = map.get_mut(&(nqn.to_string(), nsid)) else {
            // Reservation commands on a namespace without resv_enable.
            return (Status(INVALID_OPCODE), cmd.data.clone());
        };
        let d = &cmd.data;
        let status = match cmd.opcode {
            codec::OP_REGISTER => ns.register(host_id, cmd.cdw10, key_at(d, 0), key_at(d, 8)),
            codec::OP_ACQUIRE => ns.acquire(host_id, cmd.cdw10, key_at(d, 0), key_at(d, 8)),
            codec::OP_RELEASE => ns.release(host_id, cmd.cdw10, key_at(d, 0)),
            codec::OP_REPORT => {
                if cmd.cdw11 & 1 == 0 {
                    HOST_ID_INCONSISTENT
                } else if d.len() < codec::EXT_HEADER_LEN {
                    INVALID_FIELD
                } else {
                    let full = codec::encode_report(&ns.report());
                    let mut out = vec![0u8; d.len()];
                    // Entries that do not fit are left out; the header counts them all.
                    let fit = codec::EXT_HEADER_LEN
                        + (d.len() - codec::EXT_HEADER_LEN) / codec::EXT_ENTRY_LEN
                            * codec::EXT_ENTRY_LEN;
                    let n = full.len().min(fit);
                    out[..n].copy_from_slice(&full[..n]);
                    return (Status(0), out);
                }
            }
            _ => INVALID_OPCODE,
        };
        (Status(status), cmd.data.clone())
    }

    /// The target's access check for a write from `host_id` (Reservation Conflict if false).
    pub fn may_write(&self, host_id: &[u8; 16], nqn: &str, nsid: u32) -> bool {
        self.namespaces
            .lock()
            .unwrap()
            .get(&(nqn.to_string(), nsid))
            .is_none_or(|ns| ns.may_write(host_id))
    }

    pub fn report(&self, nqn: &str, nsid: u32) -> Option<Report> {
        self.namespaces
            .lock()
            .unwrap()
            .get(&(nqn.to_string(), nsid))
            .map(Namespace::report)
    }
}
