//! What this host must send so the target's reservation matches its claim: a pure function from
//! the Report and what the claim allows to the next commands. The caller runs them, reads the
//! Report again and asks again, until nothing is left (a command refused because another host
//! moved in between is decided afresh on the new Report).
//!
//! nvmet's rules this follows (drivers/nvme/target/pr.c, checked on a 7.3 target in the VM tier):
//! registrants are host IDs; a preempt by a non-holder removes every registrant with the named
//! key; preempting the holder's key makes us the holder; a holder's preempt of another key only
//! changes the type and removes nobody, so a holder evicts others by going through an
//! all-registrants type (whose preempt with key 0 removes every other registrant).

use super::codec::{self, AcquireAction, Command, RegisterAction, Report};
use super::ReservationType;

/// The type every holder takes: the registrants (the claim's holders) write, nobody else.
pub const RTYPE: ReservationType = ReservationType::WriteExclusiveRegistrantsOnly;

/// What the claim lets this host be at the target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The claim's only holder: ours is the only key, and we hold the reservation.
    Sole,
    /// One of a live migration's two holders: registered, whoever holds the reservation.
    Shared,
}

/// Why the claim allows a step. A takeover (the claim was just taken, or a migration just
/// collapsed onto us) may remove another holder; a routine check only restores our own part.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Want {
    pub key: u64,
    pub role: Role,
    pub takeover: bool,
}

/// One command, named for the log and the metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    pub op: &'static str,
    pub cmd: Command,
}

/// Nothing this host may do makes the reservation match: another host holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForeignHolder {
    pub host_id: [u8; 16],
    pub key: u64,
}

/// The next commands (empty: the reservation already matches), or why there are none.
pub fn plan(report: &Report, me: &[u8; 16], want: Want) -> Result<Vec<Step>, ForeignHolder> {
    let mine = report.registrants.iter().find(|r| &r.host_id == me);
    let key = want.key;
    // Our registration first: every other command is refused without it.
    match mine {
        None => {
            if want.role == Role::Sole && !want.takeover {
                // A routine check never joins a reservation another host holds: a host that
                // was preempted and registered again could write again.
                if let Some(h) = report.holder() {
                    return Err(ForeignHolder {
                        host_id: h.host_id,
                        key: h.key,
                    });
                }
            }
            return Ok(vec![Step {
                op: "register",
                cmd: codec::register(RegisterAction::Register, 0, key, false),
            }]);
        }
        Some(r) if r.key != key => {
            // Our older epoch's key (or the key of a registration we lost track of): replaced,
            // keeping what it holds.
            return Ok(vec![Step {
                op: "replace",
                cmd: codec::register(RegisterAction::Replace, r.key, key, false),
            }]);
        }
        Some(_) => {}
    }
    if want.role == Role::Shared {
        return Ok(vec![]);
    }
    let others: Vec<_> = report
        .registrants
        .iter()
        .filter(|r| &r.host_id != me)
        .collect();
    let foreign = |r: &codec::Registrant| ForeignHolder {
        host_id: r.host_id,
        key: r.key,
    };
    match (report.rtype, report.holder()) {
        // Nobody holds it. In a takeover the other registrants go first (a non-holder's
        // preempt removes them); a routine check only takes the reservation (whoever else is
        // registered was left by a migration that ended: its collapse removed it, or will).
        (None, _) | (_, None) => match others.first() {
            Some(o) if want.takeover => Ok(vec![preempt(
                AcquireAction::Preempt,
                RTYPE,
                key,
                o.key,
                "evict",
            )]),
            _ => Ok(vec![acquire(key)]),
        },
        // All-registrants, with us among them (left half-way by the holder's eviction below):
        // a preempt with key 0 removes every other registrant and makes us the holder.
        (Some(t), Some(_)) if t.all_registrants() => match others.first() {
            Some(o) if !want.takeover => Err(foreign(o)),
            _ => Ok(vec![preempt(
                AcquireAction::PreemptAndAbort,
                RTYPE,
                key,
                0,
                "evict",
            )]),
        },
        (Some(t), Some(h)) if h.host_id == *me => {
            if want.takeover && !others.is_empty() {
                // Others registered while we hold (a migration's partner that did not
                // unregister): a holder's preempt cannot remove them, so through the
                // all-registrants type.
                return Ok(vec![
                    preempt(
                        AcquireAction::Preempt,
                        ReservationType::WriteExclusiveAllRegistrants,
                        key,
                        key,
                        "retype",
                    ),
                    preempt(AcquireAction::PreemptAndAbort, RTYPE, key, 0, "evict"),
                ]);
            }
            if t == RTYPE {
                return Ok(vec![]);
            }
            Ok(vec![preempt(
                AcquireAction::Preempt,
                RTYPE,
                key,
                key,
                "retype",
            )])
        }
        (Some(_), Some(h)) => {
            if !want.takeover {
                return Err(foreign(h));
            }
            // The takeover at the target: first every other non-holder (the holder's preempt
            // would leave them), then the holder, whose commands in flight are waited for.
            if let Some(o) = others.iter().find(|r| !r.holder && r.key != h.key) {
                return Ok(vec![preempt(
                    AcquireAction::Preempt,
                    RTYPE,
                    key,
                    o.key,
                    "evict",
                )]);
            }
            Ok(vec![preempt(
                AcquireAction::PreemptAndAbort,
                RTYPE,
                key,
                h.key,
                "preempt_abort",
            )])
        }
    }
}

fn acquire(key: u64) -> Step {
    Step {
        op: "acquire",
        cmd: codec::acquire(AcquireAction::Acquire, RTYPE, key, 0),
    }
}

fn preempt(
    action: AcquireAction,
    rtype: ReservationType,
    key: u64,
    victim: u64,
    op: &'static str,
) -> Step {
    Step {
        op,
        cmd: codec::acquire(action, rtype, key, victim),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nvme::resv::codec::{Registrant, OP_ACQUIRE, OP_REGISTER};

    const ME: [u8; 16] = [0xa; 16];
    const OTHER: [u8; 16] = [0xb; 16];

    fn reg(host_id: [u8; 16], key: u64, holder: bool) -> Registrant {
        Registrant {
            cntlid: 1,
            holder,
            key,
            host_id,
        }
    }

    fn report(rtype: Option<ReservationType>, registrants: Vec<Registrant>) -> Report {
        Report {
            generation: 1,
            rtype,
            ptpl: false,
            registrants,
        }
    }

    fn want(role: Role, takeover: bool) -> Want {
        Want {
            key: 7,
            role,
            takeover,
        }
    }

    fn ops(steps: &[Step]) -> Vec<&'static str> {
        steps.iter().map(|s| s.op).collect()
    }

    #[test]
    fn an_empty_namespace_is_registered_then_acquired() {
        let r = report(None, vec![]);
        let s = plan(&r, &ME, want(Role::Sole, false)).unwrap();
        assert_eq!(ops(&s), ["register"]);
        assert_eq!(s[0].cmd.opcode, OP_REGISTER);
        let r = report(None, vec![reg(ME, 7, false)]);
        let s = plan(&r, &ME, want(Role::Sole, false)).unwrap();
        assert_eq!(ops(&s), ["acquire"]);
        assert_eq!(s[0].cmd.opcode, OP_ACQUIRE);
        assert_eq!((s[0].cmd.cdw10 >> 8) & 0xff, RTYPE as u32);
        let r = report(Some(RTYPE), vec![reg(ME, 7, true)]);
        assert!(plan(&r, &ME, want(Role::Sole, false)).unwrap().is_empty());
    }

    #[test]
    fn a_routine_check_never_joins_another_hosts_reservation() {
        // The case the real target showed: a preempted host that registers again could write.
        let r = report(Some(RTYPE), vec![reg(OTHER, 9, true)]);
        let e = plan(&r, &ME, want(Role::Sole, false)).unwrap_err();
        assert_eq!(
            e,
            ForeignHolder {
                host_id: OTHER,
                key: 9
            }
        );
        let r = report(Some(RTYPE), vec![reg(OTHER, 9, true), reg(ME, 7, false)]);
        assert!(plan(&r, &ME, want(Role::Sole, false)).is_err());
    }

    #[test]
    fn a_takeover_preempts_and_aborts_the_old_holder() {
        let r = report(Some(RTYPE), vec![reg(OTHER, 9, true)]);
        assert_eq!(
            ops(&plan(&r, &ME, want(Role::Sole, true)).unwrap()),
            ["register"]
        );
        let r = report(Some(RTYPE), vec![reg(OTHER, 9, true), reg(ME, 7, false)]);
        let s = plan(&r, &ME, want(Role::Sole, true)).unwrap();
        assert_eq!(ops(&s), ["preempt_abort"]);
        assert_eq!(s[0].cmd.cdw10 & 7, AcquireAction::PreemptAndAbort as u32);
        assert_eq!(&s[0].cmd.data[8..16], &9u64.to_le_bytes());
    }

    #[test]
    fn a_takeover_evicts_non_holders_before_the_holder() {
        let third = [0xc; 16];
        let r = report(
            Some(RTYPE),
            vec![reg(OTHER, 9, true), reg(third, 5, false), reg(ME, 7, false)],
        );
        let s = plan(&r, &ME, want(Role::Sole, true)).unwrap();
        assert_eq!(ops(&s), ["evict"]);
        assert_eq!(&s[0].cmd.data[8..16], &5u64.to_le_bytes());
    }

    #[test]
    fn a_holder_with_a_leftover_partner_goes_through_all_registrants() {
        let r = report(Some(RTYPE), vec![reg(ME, 7, true), reg(OTHER, 9, false)]);
        // Routine: the partner stays (the migration's collapse decides).
        assert!(plan(&r, &ME, want(Role::Sole, false)).unwrap().is_empty());
        let s = plan(&r, &ME, want(Role::Sole, true)).unwrap();
        assert_eq!(ops(&s), ["retype", "evict"]);
        assert_eq!(
            (s[0].cmd.cdw10 >> 8) & 0xff,
            ReservationType::WriteExclusiveAllRegistrants as u32
        );
        assert_eq!(&s[1].cmd.data[8..16], &0u64.to_le_bytes());
    }

    #[test]
    fn an_old_epochs_key_is_replaced_not_doubled() {
        let r = report(Some(RTYPE), vec![reg(ME, 3, true)]);
        let s = plan(&r, &ME, want(Role::Sole, false)).unwrap();
        assert_eq!(ops(&s), ["replace"]);
        assert_eq!(&s[0].cmd.data[0..8], &3u64.to_le_bytes());
        assert_eq!(&s[0].cmd.data[8..16], &7u64.to_le_bytes());
    }

    #[test]
    fn a_migration_destination_only_registers() {
        let r = report(Some(RTYPE), vec![reg(OTHER, 9, true)]);
        assert_eq!(
            ops(&plan(&r, &ME, want(Role::Shared, false)).unwrap()),
            ["register"]
        );
        let r = report(Some(RTYPE), vec![reg(OTHER, 9, true), reg(ME, 7, false)]);
        assert!(plan(&r, &ME, want(Role::Shared, false)).unwrap().is_empty());
    }

    #[test]
    fn a_wrong_type_is_corrected_by_the_holder() {
        let r = report(
            Some(ReservationType::WriteExclusive),
            vec![reg(ME, 7, true)],
        );
        assert_eq!(
            ops(&plan(&r, &ME, want(Role::Sole, false)).unwrap()),
            ["retype"]
        );
    }
}
