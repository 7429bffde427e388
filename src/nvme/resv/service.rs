//! The reservations of this host's volumes: each check reads the Report, asks the policy what
//! to send, sends it, and reads again until the target matches the claim. What the last check
//! saw is kept per volume for the bus and `volfencectl show`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use super::codec::{self, Report};
use super::policy::{self, Role, Want};
use super::{host_id_string, Mode, ReservationDevice, ReservationType, ResvError, Status};
use crate::fence::FenceGuard;
use crate::metrics::Metrics;
use crate::nvme::volumes::VolumeInfo;

/// Rounds of Report → commands before a check gives up (each round is decided on a fresh
/// Report; more than a few means other hosts keep changing it).
const MAX_ROUNDS: usize = 8;

/// Whether a volume's namespace takes reservation commands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Support {
    /// Not checked yet.
    #[default]
    Unknown,
    Yes,
    /// The target answered that it has no reservations (or the device takes no passthrough).
    No,
    /// `nvme.reservations = "off"`.
    Off,
}

impl Support {
    pub fn as_str(self) -> &'static str {
        match self {
            Support::Unknown => "unknown",
            Support::Yes => "yes",
            Support::No => "no",
            Support::Off => "off",
        }
    }
}

/// A volume's reservation as this host last saw it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct View {
    pub support: Support,
    /// The key this host registers in its current holding (0 before the first check).
    pub key: u64,
    pub registered: bool,
    /// Who holds the reservation: "" (nobody), "this host", or another host's ID.
    pub holder: String,
    pub rtype: Option<ReservationType>,
    /// Host IDs of the other registrants.
    pub others: Vec<String>,
    pub generation: u32,
    /// Why the last check did not end as the claim wants, or "".
    pub problem: String,
}

/// Where a volume's commands go.
struct Target {
    volume: String,
    device: String,
    nsid: u32,
}

impl Target {
    fn of(v: &VolumeInfo) -> Result<Target, ResvError> {
        let device = std::path::Path::new(&v.device)
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .filter(|n| !n.is_empty())
            .ok_or_else(|| ResvError::NoDevice {
                volume: v.volume_id.clone(),
            })?;
        Ok(Target {
            volume: v.volume_id.clone(),
            device,
            nsid: v.nsid,
        })
    }
}

/// Completion statuses that mean "this namespace has no reservations": Invalid Command Opcode
/// (a target without them, nvmet before 6.13 or without `resv_enable`) and Invalid Field.
fn unsupported(s: Status) -> bool {
    matches!(s.0 & 0x7ff, 0x01 | 0x02)
}

pub struct Reservations {
    device: Arc<dyn ReservationDevice>,
    host_id: [u8; 16],
    mode: Mode,
    metrics: Option<Arc<Metrics>>,
    views: Mutex<BTreeMap<String, View>>,
    /// Volumes whose Connect or Disconnect decides their reservation: the routine check
    /// leaves them.
    busy: Mutex<BTreeSet<String>>,
    /// One volume's commands at a time: a Connect's and the routine check's would otherwise
    /// decide on each other's Reports.
    serial: tokio::sync::Mutex<()>,
    changes: tokio::sync::broadcast::Sender<String>,
}

/// Marks a volume as a Connect's or a Disconnect's until dropped.
pub struct Busy<'a> {
    resv: &'a Reservations,
    volume: String,
}

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        self.resv.busy.lock().unwrap().remove(&self.volume);
    }
}

impl Reservations {
    pub fn new(
        device: Arc<dyn ReservationDevice>,
        hostid: &str,
        mode: Mode,
        metrics: Option<Arc<Metrics>>,
    ) -> Result<Reservations, ResvError> {
        Ok(Reservations {
            device,
            host_id: super::host_id_bytes(hostid)?,
            mode,
            metrics,
            views: Mutex::default(),
            busy: Mutex::default(),
            serial: tokio::sync::Mutex::new(()),
            changes: tokio::sync::broadcast::channel(64).0,
        })
    }

    pub fn mode(&self) -> Mode {
        self.mode
    }

    pub fn host_id(&self) -> &[u8; 16] {
        &self.host_id
    }

    /// The key of this host in the holding `guard` belongs to.
    pub fn key_for(&self, guard: &FenceGuard) -> u64 {
        super::key(&self.host_id, guard.epoch())
    }

    pub fn view(&self, volume: &str) -> Option<View> {
        self.views.lock().unwrap().get(volume).cloned()
    }

    /// Volume ids whose [`Reservations::view`] changed.
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<String> {
        self.changes.subscribe()
    }

    pub fn forget(&self, volume: &str) {
        if self.views.lock().unwrap().remove(volume).is_some() {
            let _ = self.changes.send(volume.to_string());
        }
    }

    /// Keeps the routine check off `volume` while a Connect or Disconnect decides it (a check
    /// between a Disconnect's unregister and its device removal would register again).
    pub fn busy(&self, volume: &str) -> Busy<'_> {
        self.busy.lock().unwrap().insert(volume.to_string());
        Busy {
            resv: self,
            volume: volume.to_string(),
        }
    }

    pub fn is_busy(&self, volume: &str) -> bool {
        self.busy.lock().unwrap().contains(volume)
    }

    fn set_view(&self, volume: &str, v: View) {
        let changed = self
            .views
            .lock()
            .unwrap()
            .insert(volume.to_string(), v.clone())
            != Some(v);
        if changed {
            let _ = self.changes.send(volume.to_string());
        }
    }

    fn observe(&self, op: &'static str, r: &std::io::Result<Status>) {
        if let Some(m) = &self.metrics {
            let result = match r {
                Ok(s) if s.is_success() => "ok",
                Ok(s) if s.is_reservation_conflict() => "conflict",
                _ => "error",
            };
            m.observe_reservation(op, result);
        }
    }

    fn view_of(&self, r: &Report, key: u64, problem: String) -> View {
        let mine = r.registrants.iter().find(|x| x.host_id == self.host_id);
        let holder = match r.holder() {
            None => String::new(),
            Some(h) if h.host_id == self.host_id => "this host".to_string(),
            Some(h) => host_id_string(&h.host_id),
        };
        View {
            support: Support::Yes,
            key,
            registered: mine.is_some(),
            holder,
            rtype: r.rtype,
            others: r
                .registrants
                .iter()
                .filter(|x| x.host_id != self.host_id)
                .map(|x| host_id_string(&x.host_id))
                .collect(),
            generation: r.generation,
            problem,
        }
    }

    /// Reads the Report: None if the namespace has no reservations.
    fn read(&self, t: &Target) -> Result<Option<Report>, ResvError> {
        let got = self.device.report(&t.device, t.nsid);
        self.observe("report", &got.as_ref().map(|(s, _)| *s).map_err(clone_io));
        match got {
            // Not an NVMe passthrough device (ENOTTY), or a kernel without it.
            Err(e) if e.raw_os_error() == Some(libc_enotty()) => Ok(None),
            Err(source) => Err(ResvError::Io {
                volume: t.volume.clone(),
                op: "report",
                device: t.device.clone(),
                source,
            }),
            Ok((s, _)) if unsupported(s) => Ok(None),
            Ok((s, _)) if !s.is_success() => Err(ResvError::Refused {
                volume: t.volume.clone(),
                op: "report",
                status: s,
            }),
            Ok((_, buf)) => codec::decode_report(&buf).map(Some),
        }
    }

    /// Makes the target's reservation of `volume` match `role` in `guard`'s holding: with
    /// `takeover`, other hosts' keys are removed (the claim was just taken, or a migration
    /// collapsed onto this host); without, only this host's own part is restored.
    pub async fn secure(
        self: &Arc<Self>,
        guard: &FenceGuard,
        volume: &VolumeInfo,
        role: Role,
        takeover: bool,
    ) -> Result<View, ResvError> {
        self.decide(guard, volume, role, takeover, false).await
    }

    /// [`Reservations::secure`] for the routine check: nothing is sent for a volume that a
    /// Connect or Disconnect has taken meanwhile (its last view is returned).
    pub async fn check(
        self: &Arc<Self>,
        guard: &FenceGuard,
        volume: &VolumeInfo,
        role: Role,
        takeover: bool,
    ) -> Result<View, ResvError> {
        self.decide(guard, volume, role, takeover, true).await
    }

    async fn decide(
        self: &Arc<Self>,
        guard: &FenceGuard,
        volume: &VolumeInfo,
        role: Role,
        takeover: bool,
        routine: bool,
    ) -> Result<View, ResvError> {
        if self.mode == Mode::Off {
            let v = View {
                support: Support::Off,
                ..View::default()
            };
            self.set_view(&volume.volume_id, v.clone());
            return Ok(v);
        }
        let t = Target::of(volume)?;
        let _serial = self.serial.lock().await;
        if routine && self.is_busy(&volume.volume_id) {
            return Ok(self.view(&volume.volume_id).unwrap_or_default());
        }
        let me = self.clone();
        let guard = guard.clone();
        let want = Want {
            key: self.key_for(&guard),
            role,
            takeover,
        };
        let got = tokio::task::spawn_blocking(move || me.secure_blocking(&guard, &t, want))
            .await
            .unwrap_or_else(|e| {
                Err(ResvError::Io {
                    volume: volume.volume_id.clone(),
                    op: "check",
                    device: volume.device.clone(),
                    source: std::io::Error::other(e.to_string()),
                })
            });
        match &got {
            Ok(v) => self.set_view(&volume.volume_id, v.clone()),
            Err(e) => {
                let mut v = self.view(&volume.volume_id).unwrap_or_default();
                v.problem = e.to_string();
                if let ResvError::ForeignHolder { holder, .. } = e {
                    v.holder = holder.clone();
                    if let Some(m) = &self.metrics {
                        m.reservation_conflicts.inc();
                    }
                }
                self.set_view(&volume.volume_id, v);
            }
        }
        got
    }

    fn secure_blocking(
        &self,
        guard: &FenceGuard,
        t: &Target,
        want: Want,
    ) -> Result<View, ResvError> {
        for _ in 0..MAX_ROUNDS {
            let Some(report) = self.read(t)? else {
                if self.mode == Mode::Require {
                    return Err(ResvError::Unsupported {
                        volume: t.volume.clone(),
                        why: "the target answers Reservation Report with Invalid Command Opcode"
                            .into(),
                    });
                }
                return Ok(View {
                    support: Support::No,
                    ..View::default()
                });
            };
            let steps = match policy::plan(&report, &self.host_id, want) {
                Ok(s) => s,
                Err(f) => {
                    return Err(ResvError::ForeignHolder {
                        volume: t.volume.clone(),
                        holder: host_id_string(&f.host_id),
                        key: f.key,
                    })
                }
            };
            if steps.is_empty() {
                return Ok(self.view_of(&report, want.key, String::new()));
            }
            for step in steps {
                // The lease may have run out since the caller's check: nothing is sent then.
                guard.check().map_err(|e| ResvError::Io {
                    volume: t.volume.clone(),
                    op: step.op,
                    device: t.device.clone(),
                    source: std::io::Error::other(e.to_string()),
                })?;
                let got = self.device.submit(guard, &t.device, t.nsid, &step.cmd);
                self.observe(step.op, &got.as_ref().map(|s| *s).map_err(clone_io));
                match got {
                    Ok(s) if s.is_success() => {
                        tracing::info!(
                            VOLUME = t.volume.as_str(),
                            "volume {}: reservation {} on {} (key {:#018x})",
                            t.volume,
                            step.op,
                            t.device,
                            want.key
                        );
                    }
                    // Another host changed it between our Report and this command: decided
                    // again on a fresh Report.
                    Ok(s) if s.is_reservation_conflict() => {
                        tracing::debug!(
                            VOLUME = t.volume.as_str(),
                            "volume {}: reservation {}: {s}; reading again",
                            t.volume,
                            step.op
                        );
                        break;
                    }
                    Ok(status) => {
                        return Err(ResvError::Refused {
                            volume: t.volume.clone(),
                            op: step.op,
                            status,
                        })
                    }
                    Err(source) => {
                        return Err(ResvError::Io {
                            volume: t.volume.clone(),
                            op: step.op,
                            device: t.device.clone(),
                            source,
                        })
                    }
                }
            }
        }
        Err(ResvError::Unsettled {
            volume: t.volume.clone(),
            rounds: MAX_ROUNDS,
        })
    }

    /// Unregisters this host's key before the volume's device goes (teardown: no lease
    /// needed; a registration another host already removed is nothing to undo). Returns what
    /// went wrong, for the log: a Disconnect goes on regardless.
    pub async fn give_up(self: &Arc<Self>, volume: &VolumeInfo) -> Result<(), ResvError> {
        self.forget(&volume.volume_id);
        if self.mode == Mode::Off {
            return Ok(());
        }
        let t = Target::of(volume)?;
        let _serial = self.serial.lock().await;
        let me = self.clone();
        tokio::task::spawn_blocking(move || me.give_up_blocking(&t))
            .await
            .unwrap_or_else(|e| {
                Err(ResvError::Io {
                    volume: volume.volume_id.clone(),
                    op: "unregister",
                    device: volume.device.clone(),
                    source: std::io::Error::other(e.to_string()),
                })
            })
    }

    fn give_up_blocking(&self, t: &Target) -> Result<(), ResvError> {
        let Some(report) = self.read(t)? else {
            return Ok(());
        };
        let Some(mine) = report
            .registrants
            .iter()
            .find(|r| r.host_id == self.host_id)
        else {
            return Ok(());
        };
        let got = self.device.unregister(&t.device, t.nsid, mine.key);
        self.observe("unregister", &got.as_ref().map(|s| *s).map_err(clone_io));
        match got {
            Ok(s) if s.is_success() => {
                tracing::info!(
                    VOLUME = t.volume.as_str(),
                    "volume {}: reservation key {:#018x} unregistered",
                    t.volume,
                    mine.key
                );
                Ok(())
            }
            Ok(status) => Err(ResvError::Refused {
                volume: t.volume.clone(),
                op: "unregister",
                status,
            }),
            Err(source) => Err(ResvError::Io {
                volume: t.volume.clone(),
                op: "unregister",
                device: t.device.clone(),
                source,
            }),
        }
    }
}

fn clone_io(e: &std::io::Error) -> std::io::Error {
    std::io::Error::new(e.kind(), e.to_string())
}

fn libc_enotty() -> i32 {
    nix::errno::Errno::ENOTTY as i32
}
