//! Volumes: which controllers and namespace make up each volume this agent connected, kept in
//! atomic records under the state directory and checked against sysfs.
//!
//! Rules:
//! - A connect writes its record (phase `connecting`) before it writes to `/dev/nvme-fabrics`, and
//!   the controller name right after the kernel replies, so a crash at any point leaves a record
//!   that lets the next start adopt what the kernel made. Nothing is reconnected at startup.
//! - The agent only touches controllers named in its records ("owned"). A controller to the same
//!   subsystem and path that no record names was made by someone else: reported, never used or
//!   deleted.
//! - A controller shared by several volumes (two namespaces of one subsystem) is deleted only with
//!   the last of them.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

use super::kernel::{LinkWaiter, LinkWatch, NvmeFabrics, Uevent};
use super::options::{
    validate_volume_id, ConnectArgs, ControllerKey, HostIdentity, OptionsError, Overrides,
    PathAddr, Selector, Target,
};
use super::sysfs::{self, parse_fabrics_reply, Controller, CtrlState, Namespace, Topology};
use crate::config::NvmeSettings;
use crate::fence::{FenceError, FenceGuard};
use crate::host::records::RecordDir;
use crate::host::{paths, Host, HostError};
use crate::metrics::Metrics;

/// How often controller states are re-read: the kernel sends no uevent when a controller goes
/// from live to connecting or resetting, so this is the one place sysfs is polled.
pub const HEALTH_INTERVAL: Duration = Duration::from_secs(1);

/// Quiet time after a device event before the health view re-reads sysfs.
pub const EVENT_SETTLE: Duration = Duration::from_millis(100);

/// Joining a multipath head that exists: sysfs is re-read at these intervals (doubling) until
/// the kernel's scan has added this controller's path, for which it sends no uevent.
const JOIN_POLL_FIRST: Duration = Duration::from_millis(2);
const JOIN_POLL_MAX: Duration = Duration::from_millis(50);

mod connect;
mod disconnect;
mod error;
mod health;
mod record;
mod recovery;
mod topology;

pub use error::NvmeError;
use record::PendingSave;
pub use record::{OwnedCtrl, Phase, Record};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum VolumeState {
    Connecting,
    /// Every path live.
    Live,
    /// Some paths live.
    Degraded,
    /// Controllers exist but none is live (the kernel is reconnecting; I/O is queued).
    Reconnecting,
    /// No controller left: every path is gone.
    Dead,
    Disconnecting,
}

impl VolumeState {
    pub const ALL: [VolumeState; 6] = [
        VolumeState::Connecting,
        VolumeState::Live,
        VolumeState::Degraded,
        VolumeState::Reconnecting,
        VolumeState::Dead,
        VolumeState::Disconnecting,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            VolumeState::Connecting => "connecting",
            VolumeState::Live => "live",
            VolumeState::Degraded => "degraded",
            VolumeState::Reconnecting => "reconnecting",
            VolumeState::Dead => "dead",
            VolumeState::Disconnecting => "disconnecting",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathInfo {
    pub controller: String,
    pub address: String,
    pub state: String,
}

/// A volume as callers see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeInfo {
    pub volume_id: String,
    pub nqn: String,
    pub nsid: u32,
    pub uuid: String,
    pub nguid: String,
    /// `/dev/nvme0n1`, empty when the block device is gone.
    pub device: String,
    /// `/dev/disk/by-id/nvme-uuid.…`, empty until udev made it.
    pub stable_path: String,
    pub size_bytes: u64,
    pub state: VolumeState,
    pub paths: Vec<PathInfo>,
    pub epoch: u64,
}

/// What changed, for the D-Bus publisher and metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VolumeEvent {
    Added(String),
    Changed(String),
    Removed(String),
    /// The volume is lost to this host: every path is gone, or another host holds its claim
    /// now (it is disconnected next).
    Lost {
        id: String,
        nqn: String,
    },
}

struct Inner {
    host: Host,
    fabrics: Arc<dyn NvmeFabrics>,
    events: broadcast::Sender<Uevent>,
    identity: HostIdentity,
    defaults: NvmeSettings,
    records: RecordDir,
    /// This boot's id, for new records; empty when it could not be read (then recovery, which
    /// reads it again and fails with the reason, stops the agent before any connect).
    boot_id: String,
    volumes: Mutex<BTreeMap<String, (Record, VolumeInfo)>>,
    /// What each record file holds, so an unchanged record (an idempotent connect) is not
    /// rewritten and fsynced.
    on_disk: Mutex<HashMap<String, Record>>,
    volume_locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// One per connection (subsystem, path, host NQN). Every decision about that connection's
    /// controller — make it, share it, let go of it, delete it — is taken under it, so a connect
    /// and a disconnect of two volumes that share a controller agree on who still uses it.
    key_locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    topology: Mutex<TopoCache>,
    changes: broadcast::Sender<VolumeEvent>,
    metrics: Option<Arc<Metrics>>,
    /// The by-id link watch, made on the first connect that finds the directory.
    links: Mutex<Option<LinkWatch>>,
}

struct TopoCache {
    topo: Arc<Topology>,
    dirty: bool,
}

/// The volume manager. Cheap to clone.
#[derive(Clone)]
pub struct Volumes {
    inner: Arc<Inner>,
}

/// A parsed `Connect` request.
#[derive(Debug, Clone)]
pub struct ConnectRequest {
    pub volume_id: String,
    pub target: Target,
    pub overrides: Overrides,
}

fn key_string(k: &ControllerKey) -> String {
    format!(
        "{}|{}|{:?}|{:?}|{}",
        k.nqn, k.path.traddr, k.path.trsvcid, k.path.host_iface, k.hostnqn
    )
}

/// Does sysfs controller `c` implement connection `key`?
fn matches_key(c: &Controller, key: &ControllerKey) -> bool {
    c.subsysnqn == key.nqn
        && c.transport == "tcp"
        && c.address.traddr.parse().ok() == Some(key.path.traddr)
        && c.address.trsvcid.parse().ok() == Some(key.path.trsvcid)
        && c.address.host_iface == key.path.host_iface
        && c.address
            .host_traddr
            .as_deref()
            .and_then(|a| a.parse().ok())
            == key.path.host_traddr
        && c.hostnqn.as_deref().is_none_or(|h| h == key.hostnqn)
}

/// Is `c` still the controller recorded as `o`? By what the kernel keeps for a controller's
/// life: its name (reused only after it is gone) with its sysfs inode (never reused while the
/// directory exists), subsystem and path. Not by cntlid: the target assigns one per association,
/// so a controller that reconnects may come back with another (the lowest free one).
fn is_same(c: &Controller, o: &OwnedCtrl, nqn: &str) -> bool {
    c.name == o.name
        && c.ino == o.ino
        && c.subsysnqn == nqn
        && c.address.traddr.parse().ok() == Some(o.path.traddr)
        && c.address.trsvcid.parse().ok() == Some(o.path.trsvcid)
}

/// The connection a recorded controller implements, as the per-connection lock knows it.
fn owned_key(r: &Record, o: &OwnedCtrl) -> String {
    key_string(&ControllerKey {
        nqn: r.target.nqn.clone(),
        path: o.path.clone(),
        hostnqn: r.hostnqn.clone(),
    })
}

fn select<'a>(topo: &'a Topology, target: &Target, ctrls: &[String]) -> Option<&'a Namespace> {
    let reaches = |ns: &&Namespace| ns.controllers.iter().any(|c| ctrls.contains(c));
    match &target.namespace {
        Selector::Nsid(n) => topo.by_nsid(&target.nqn, *n).find(reaches),
        Selector::Uuid(u) | Selector::Nguid(u) => topo.by_id(&target.nqn, u).find(reaches),
    }
}

fn head_exists(topo: &Topology, target: &Target) -> bool {
    match &target.namespace {
        Selector::Nsid(n) => topo.by_nsid(&target.nqn, *n).any(|ns| ns.multipath),
        Selector::Uuid(u) | Selector::Nguid(u) => topo.by_id(&target.nqn, u).any(|ns| ns.multipath),
    }
}

/// A multipath head for the target exists, reached by other controllers only, while one of
/// `ctrls` is live in its subsystem: the kernel's scan is about to add our path to it, and
/// nothing will announce that (a hidden path disk's uevents stay suppressed, block/genhd.c).
fn joining_head(topo: &Topology, target: &Target, ctrls: &[String]) -> bool {
    head_exists(topo, target)
        && ctrls.iter().any(|c| {
            topo.controllers
                .get(c)
                .is_some_and(|c| c.subsysnqn == target.nqn && c.state == CtrlState::Live)
        })
}

impl Volumes {
    /// The manager over `fabrics` and the udev `events` channel (subscribe-able before any wait).
    pub fn new(
        host: Host,
        fabrics: Arc<dyn NvmeFabrics>,
        events: broadcast::Sender<Uevent>,
        identity: HostIdentity,
        defaults: NvmeSettings,
        runtime_dir: PathBuf,
        metrics: Option<Arc<Metrics>>,
    ) -> Volumes {
        Volumes {
            inner: Arc::new(Inner {
                records: RecordDir::new(runtime_dir.join("volumes")),
                boot_id: host.boot_id().unwrap_or_default(),
                host,
                fabrics,
                events,
                identity,
                defaults,
                volumes: Mutex::new(BTreeMap::new()),
                on_disk: Mutex::new(HashMap::new()),
                volume_locks: Mutex::new(HashMap::new()),
                key_locks: Mutex::new(HashMap::new()),
                topology: Mutex::new(TopoCache {
                    topo: Arc::new(Topology::default()),
                    dirty: true,
                }),
                changes: broadcast::channel(256).0,
                metrics,
                links: Mutex::new(None),
            }),
        }
    }

    pub fn identity(&self) -> &HostIdentity {
        &self.inner.identity
    }

    /// Every volume change, in order.
    pub fn subscribe(&self) -> broadcast::Receiver<VolumeEvent> {
        self.inner.changes.subscribe()
    }

    pub fn list(&self) -> Vec<VolumeInfo> {
        let v = self.inner.volumes.lock().unwrap();
        v.values().map(|(_, i)| i.clone()).collect()
    }

    pub fn get(&self, id: &str) -> Option<VolumeInfo> {
        self.inner
            .volumes
            .lock()
            .unwrap()
            .get(id)
            .map(|(_, i)| i.clone())
    }

    fn owned_names(&self, except: Option<&str>) -> HashSet<String> {
        let v = self.inner.volumes.lock().unwrap();
        v.iter()
            .filter(|(id, _)| Some(id.as_str()) != except)
            .flat_map(|(_, (r, _))| r.controller_names())
            .collect()
    }

    fn lock_for(
        map: &Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
        k: &str,
    ) -> Arc<tokio::sync::Mutex<()>> {
        map.lock()
            .unwrap()
            .entry(k.to_string())
            .or_default()
            .clone()
    }

    /// Persists `r` and updates the in-memory view from `topo`.
    fn store(&self, r: Record, topo: &Topology) -> Result<VolumeInfo, HostError> {
        let (info, events) = self.store_unannounced(r, topo)?;
        self.announce(events);
        Ok(info)
    }

    /// [`Self::store`] without telling the subscribers: the caller passes the events to
    /// [`Self::announce`].
    fn store_unannounced(
        &self,
        r: Record,
        topo: &Topology,
    ) -> Result<(VolumeInfo, Vec<VolumeEvent>), HostError> {
        self.save(&r)?;
        Ok(self
            .apply_unannounced(r, topo, false)
            .expect("unconditional updates apply"))
    }

    /// Recomputes a volume's view. With `only_if_current`, applies only if the stored record is
    /// still `r`: a health refresh must never resurrect a volume a disconnect just forgot, nor
    /// undo a phase a connect just stored.
    fn apply(&self, r: Record, topo: &Topology, only_if_current: bool) -> Option<VolumeInfo> {
        let (info, events) = self.apply_unannounced(r, topo, only_if_current)?;
        self.announce(events);
        Some(info)
    }

    /// [`Self::apply`] without telling the subscribers: the caller passes the events to
    /// [`Self::announce`].
    fn apply_unannounced(
        &self,
        r: Record,
        topo: &Topology,
        only_if_current: bool,
    ) -> Option<(VolumeInfo, Vec<VolumeEvent>)> {
        let info = self.describe(&r, topo);
        let id = r.volume_id.clone();
        let prev = {
            let mut v = self.inner.volumes.lock().unwrap();
            if only_if_current && v.get(&id).is_none_or(|(cur, _)| *cur != r) {
                return None;
            }
            v.insert(id.clone(), (r, info.clone()))
        };
        let mut events: Vec<VolumeEvent> = match &prev {
            None => vec![VolumeEvent::Added(id.clone())],
            Some((_, old)) if *old != info => vec![VolumeEvent::Changed(id.clone())],
            _ => vec![],
        };
        let before = prev.map(|(_, i)| i.state);
        let was_dead = before == Some(VolumeState::Dead);
        let paths_text = || {
            info.paths
                .iter()
                .map(|p| format!("{} {}", p.address, p.state))
                .collect::<Vec<_>>()
                .join(", ")
        };
        match (before, info.state) {
            (Some(b), now) if b == now => {}
            (Some(VolumeState::Live | VolumeState::Degraded), VolumeState::Reconnecting) => {
                tracing::warn!(
                    VOLUME = id.as_str(),
                    "volume {id}: reconnecting: no path is live, I/O waits for the kernel to reconnect ({})",
                    paths_text()
                )
            }
            (Some(VolumeState::Live | VolumeState::Reconnecting), VolumeState::Degraded) => {
                tracing::warn!(
                    VOLUME = id.as_str(),
                    "volume {id}: degraded: {}",
                    paths_text()
                )
            }
            // (From dead only a connect revives it, and that logs its own line.)
            (Some(VolumeState::Degraded | VolumeState::Reconnecting), VolumeState::Live) => {
                tracing::info!(VOLUME = id.as_str(), "volume {id}: live again")
            }
            _ => {}
        }
        if info.state == VolumeState::Dead && !was_dead {
            tracing::error!(
                VOLUME = id.as_str(),
                NQN = info.nqn.as_str(),
                "volume {id}: every path to {} is gone",
                info.nqn
            );
            if let Some(m) = &self.inner.metrics {
                m.nvme_volumes_lost.inc();
            }
            events.push(VolumeEvent::Lost {
                id,
                nqn: info.nqn.clone(),
            });
        }
        self.publish_state_gauge();
        Some((info, events))
    }

    /// Says `id` is lost to this host for a reason outside the kernel (its claim was taken
    /// over), before it is disconnected.
    pub fn report_lost(&self, id: &str) {
        if let Some(i) = self.get(id) {
            self.announce(vec![VolumeEvent::Lost {
                id: id.to_string(),
                nqn: i.nqn,
            }]);
        }
    }

    fn announce(&self, events: Vec<VolumeEvent>) {
        for ev in events {
            // No subscriber is fine.
            let _ = self.inner.changes.send(ev);
        }
    }

    fn publish_state_gauge(&self) {
        if let Some(m) = &self.inner.metrics {
            let v = self.inner.volumes.lock().unwrap();
            for s in VolumeState::ALL {
                let n = v.values().filter(|(_, i)| i.state == s).count();
                m.nvme_volumes
                    .get_or_create(&crate::metrics::StateLabel { state: s.as_str() })
                    .set(n as i64);
            }
        }
    }

    fn describe(&self, r: &Record, topo: &Topology) -> VolumeInfo {
        let live: Vec<&Controller> = r
            .controllers
            .iter()
            .filter_map(|o| {
                topo.controllers
                    .get(&o.name)
                    .filter(|c| is_same(c, o, &r.target.nqn))
            })
            .collect();
        let names: Vec<String> = live.iter().map(|c| c.name.clone()).collect();
        let ns = select(topo, &r.target, &names);
        let device = ns
            .map(|n| format!("{}/{}", paths::DEV, n.block))
            .filter(|d| self.inner.host.path(d).exists())
            .unwrap_or_default();
        let stable = match (ns, device.is_empty()) {
            (Some(n), false) => sysfs::stable_link(&self.inner.host, n).unwrap_or_default(),
            _ => String::new(),
        };
        let n_live = live.iter().filter(|c| c.state == CtrlState::Live).count();
        let state = match r.phase {
            Phase::Connecting => VolumeState::Connecting,
            Phase::Disconnecting => VolumeState::Disconnecting,
            Phase::Connected if live.is_empty() => VolumeState::Dead,
            Phase::Connected if n_live == live.len() && n_live == r.target.paths.len() => {
                VolumeState::Live
            }
            Phase::Connected if n_live > 0 => VolumeState::Degraded,
            Phase::Connected => VolumeState::Reconnecting,
        };
        VolumeInfo {
            volume_id: r.volume_id.clone(),
            nqn: r.target.nqn.clone(),
            nsid: ns.map(|n| n.nsid).unwrap_or(match r.target.namespace {
                Selector::Nsid(n) => n,
                _ => 0,
            }),
            uuid: ns.and_then(|n| n.uuid.clone()).unwrap_or_default(),
            nguid: ns.and_then(|n| n.nguid.clone()).unwrap_or_default(),
            device,
            stable_path: stable,
            size_bytes: ns.map(Namespace::size_bytes).unwrap_or(0),
            state,
            // Every path the volume was asked for, with or without a controller: a path whose
            // controller the kernel gave up stays listed, as gone.
            paths: r
                .target
                .paths
                .iter()
                .map(|p| {
                    let owned = r.controllers.iter().find(|o| &o.path == p);
                    let present = owned.and_then(|o| live.iter().find(|c| c.name == o.name));
                    PathInfo {
                        controller: present.map(|c| c.name.clone()).unwrap_or_default(),
                        address: p.to_string(),
                        state: present.map_or("gone", |c| c.state.as_str()).to_string(),
                    }
                })
                .collect(),
            epoch: r.epoch,
        }
    }
}
