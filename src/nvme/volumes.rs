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

#[derive(Debug, thiserror::Error)]
pub enum NvmeError {
    #[error(transparent)]
    Invalid(#[from] OptionsError),
    #[error("not fenced: {0}")]
    NotFenced(#[from] FenceError),
    /// The volume or its controllers are in use by another operation or another tool.
    #[error("{0}")]
    Busy(String),
    #[error("{0}")]
    Timeout(String),
    #[error("{0}")]
    NotFound(String),
    /// In-band authentication failed: no secret where the target requires one, or a secret
    /// (the host's or the controller's) rejected.
    #[error("{0}")]
    Auth(String),
    /// The kernel refused the connect or delete.
    #[error("{what}: {source}")]
    Kernel {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Host(#[from] HostError),
}

impl NvmeError {
    /// Label for the failures metric.
    pub fn reason(&self) -> &'static str {
        match self {
            NvmeError::Invalid(_) => "invalid_argument",
            NvmeError::NotFenced(_) => "not_fenced",
            NvmeError::Busy(_) => "busy",
            NvmeError::Timeout(_) => "timeout",
            NvmeError::NotFound(_) => "not_found",
            NvmeError::Auth(_) => "authentication",
            NvmeError::Kernel { .. } => "kernel",
            NvmeError::Host(_) => "state_io",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    Connecting,
    Connected,
    Disconnecting,
}

/// A controller this agent made (or adopted), identified by more than its reusable name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OwnedCtrl {
    pub name: String,
    pub cntlid: u16,
    pub path: PathAddr,
    /// Its sysfs directory's inode ([`Controller::ino`]): the name and the cntlid come back
    /// for the next controller to the same target once this one is deleted; this does not.
    pub ino: u64,
}

/// What is persisted per volume: `<runtime_dir>/volumes/<volume_id>.json`. No secrets. It
/// describes kernel state, which a reboot ends: hence the runtime directory, and the boot it
/// belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub volume_id: String,
    pub target: Target,
    pub hostnqn: String,
    /// The boot whose kernel holds the controllers named here. After a reboot the names (and,
    /// on a Linux target, the cntlids, lowest free first) are handed out again: a record of
    /// another boot must never claim what this boot made.
    pub boot_id: String,
    pub phase: Phase,
    pub controllers: Vec<OwnedCtrl>,
    /// Fence epoch of the connect.
    pub epoch: u64,
}

impl Record {
    /// The kernel names of the controllers it owns.
    fn controller_names(&self) -> impl Iterator<Item = String> + '_ {
        self.controllers.iter().map(|c| c.name.clone())
    }

    /// Its controllers for a log line: `nvme0 (cntlid 1, 127.0.0.1:4420), …`.
    fn controllers_text(&self) -> String {
        self.controllers
            .iter()
            .map(|c| format!("{} (cntlid {}, {})", c.name, c.cntlid, c.path))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

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
    /// Every path of the volume is gone.
    Lost(String),
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

    /// The cached topology, rescanned only after a device event marked it stale.
    pub fn topology(&self) -> Arc<Topology> {
        let mut t = self.inner.topology.lock().unwrap();
        if t.dirty {
            t.topo = Arc::new(sysfs::scan(&self.inner.host));
            t.dirty = false;
        }
        t.topo.clone()
    }

    /// A fresh read of sysfs (also refreshes the cache).
    pub fn rescan(&self) -> Arc<Topology> {
        let topo = Arc::new(sysfs::scan(&self.inner.host));
        let mut t = self.inner.topology.lock().unwrap();
        t.topo = topo.clone();
        t.dirty = false;
        topo
    }

    /// Resolves a target's namespace through the cache: never by a remembered kernel name.
    pub fn resolve(&self, nqn: &str, sel: &Selector) -> Option<Namespace> {
        let topo = self.topology();
        let found = match sel {
            Selector::Nsid(n) => topo.by_nsid(nqn, *n).next(),
            Selector::Uuid(u) | Selector::Nguid(u) => topo.by_id(nqn, u).next(),
        };
        found.cloned()
    }

    /// Marks the cache stale; called for every udev event.
    pub fn invalidate(&self) {
        self.inner.topology.lock().unwrap().dirty = true;
    }

    /// Controllers no record owns, for reports.
    pub fn foreign_controllers(&self) -> Vec<Controller> {
        let owned = self.owned_names(None);
        self.rescan()
            .controllers
            .values()
            .filter(|c| !owned.contains(&c.name))
            .cloned()
            .collect()
    }

    fn owned_names(&self, except: Option<&str>) -> HashSet<String> {
        let v = self.inner.volumes.lock().unwrap();
        v.iter()
            .filter(|(id, _)| Some(id.as_str()) != except)
            .flat_map(|(_, (r, _))| r.controller_names())
            .collect()
    }

    fn record_path(&self, id: &str) -> PathBuf {
        self.inner.records.path_of(id)
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

    /// The record file already holds `r`: writing it again would change nothing.
    fn is_on_disk(&self, r: &Record) -> bool {
        self.inner.on_disk.lock().unwrap().get(&r.volume_id) == Some(r)
    }

    fn save(&self, r: &Record) -> Result<(), HostError> {
        if self.is_on_disk(r) {
            return Ok(());
        }
        self.inner.records.write(&r.volume_id, r)?;
        self.inner
            .on_disk
            .lock()
            .unwrap()
            .insert(r.volume_id.clone(), r.clone());
        Ok(())
    }

    fn forget(&self, id: &str) -> Result<(), HostError> {
        self.inner.on_disk.lock().unwrap().remove(id);
        self.inner.records.remove(id)?;
        let removed = self.inner.volumes.lock().unwrap().remove(id).is_some();
        if removed {
            let _ = self
                .inner
                .changes
                .send(VolumeEvent::Removed(id.to_string()));
        }
        Ok(())
    }

    /// Persists an intermediate record and makes it the in-memory one (ownership checks and the
    /// loss handler see it at once). Nothing is announced and sysfs is not re-read: a volume's
    /// view, and its D-Bus object, come when its connect ends.
    fn put_record(&self, r: &Record) -> Result<(), HostError> {
        self.save(r)?;
        self.remember(r);
        Ok(())
    }

    /// [`Self::put_record`] with the write on a blocking thread, so it overlaps what comes next
    /// (a sysfs scan, the wait for the device); `pending` must be settled before the kernel is
    /// asked to act on it and before the next write of the record. `disk` is what is persisted
    /// when recovery needs more than the in-memory record says (see the connect's last write).
    fn put_record_in_background(&self, r: &Record, disk: Record, pending: &mut PendingSave) {
        debug_assert!(pending.0.is_none(), "a record write is still pending");
        self.remember(r);
        // No blocking thread for a write `save` would skip.
        if self.is_on_disk(&disk) {
            return;
        }
        let (me, path) = (self.clone(), self.record_path(&disk.volume_id));
        pending.0 = Some((path, tokio::task::spawn_blocking(move || me.save(&disk))));
    }

    fn remember(&self, r: &Record) {
        let mut v = self.inner.volumes.lock().unwrap();
        match v.get_mut(&r.volume_id) {
            Some(entry) => entry.0 = r.clone(),
            None => {
                let info = self.describe(r, &Topology::default());
                v.insert(r.volume_id.clone(), (r.clone(), info));
            }
        }
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
            events.push(VolumeEvent::Lost(id));
        }
        self.publish_state_gauge();
        Some((info, events))
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

    /// Re-reads sysfs and updates every connected volume's state (health). Volumes in the
    /// middle of a connect or disconnect are left to it: it computes their view when it ends.
    /// Reads only their controllers and what those reach, so its cost follows this agent's
    /// volumes, not every namespace on the host, and nothing when none is connected.
    pub fn refresh(&self) {
        let records: Vec<Record> = self
            .inner
            .volumes
            .lock()
            .unwrap()
            .values()
            .filter(|(r, _)| r.phase == Phase::Connected)
            .map(|(r, _)| r.clone())
            .collect();
        if records.is_empty() {
            return;
        }
        let names: Vec<String> = records.iter().flat_map(Record::controller_names).collect();
        let topo = sysfs::scan_controllers(&self.inner.host, &names);
        for r in records {
            self.apply(r, &topo, true);
        }
    }

    /// Follows udev events (cache invalidation, volume states) and re-reads controller states
    /// every [`HEALTH_INTERVAL`], until `shutdown`.
    pub async fn watch(&self, shutdown: tokio_util::sync::CancellationToken) {
        let mut rx = self.inner.events.subscribe();
        let mut tick = tokio::time::interval(HEALTH_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
                r = rx.recv() => {
                    if let Err(broadcast::error::RecvError::Closed) = r { return; }
                    self.invalidate();
                    // A connect or a path change comes as a burst of events: read sysfs once
                    // after it, not once per event (connects in flight do their own reads).
                    let quiet = tokio::time::sleep(EVENT_SETTLE);
                    tokio::pin!(quiet);
                    loop {
                        tokio::select! {
                            _ = &mut quiet => break,
                            r = rx.recv() => match r {
                                Err(broadcast::error::RecvError::Closed) => return,
                                _ => quiet.as_mut().reset(tokio::time::Instant::now() + EVENT_SETTLE),
                            },
                        }
                    }
                }
            }
            self.refresh();
        }
    }

    /// Rebuilds the view from the records and the kernel. Runs before READY=1; needs no guard
    /// because it only adopts and finishes disconnects, never connects.
    pub async fn recover(&self) -> Result<(), NvmeError> {
        let boot_id = self.inner.host.boot_id()?;
        let mut records = Vec::new();
        let loaded = self.inner.records.load::<Record>(|stem, r| {
            if r.volume_id == stem {
                Ok(())
            } else {
                Err(format!("names volume {:?}, not its file name", r.volume_id))
            }
        });
        for r in loaded.into_iter().map(|l| l.record) {
            if r.boot_id != boot_id {
                tracing::warn!(
                    VOLUME = r.volume_id.as_str(),
                    "volume {}: recorded in boot {}, this is boot {boot_id}; the reboot ended its connection ({}), and this boot hands those controller names out again: forgetting it",
                    r.volume_id,
                    r.boot_id,
                    r.controllers_text()
                );
                self.forget(&r.volume_id)?;
                continue;
            }
            self.inner
                .on_disk
                .lock()
                .unwrap()
                .insert(r.volume_id.clone(), r.clone());
            records.push(r)
        }
        let topo = self.rescan();
        // First pass: everything recorded by name is owned.
        let mut claimed: HashSet<String> =
            records.iter().flat_map(Record::controller_names).collect();
        let mut disconnecting = Vec::new();
        for mut r in records {
            let before = r.controllers.clone();
            r.controllers.retain(|o| {
                topo.controllers
                    .get(&o.name)
                    .is_some_and(|c| is_same(c, o, &r.target.nqn))
            });
            for gone in before.iter().filter(|o| !r.controllers.contains(o)) {
                tracing::warn!(
                    VOLUME = r.volume_id.as_str(),
                    "volume {}: controller {} is gone",
                    r.volume_id,
                    gone.name
                );
            }
            if r.phase == Phase::Connecting {
                // The kernel may have made a controller whose reply the previous agent never
                // read: adopt an unclaimed controller for each path still missing one.
                for path in &r.target.paths {
                    if r.controllers.iter().any(|o| &o.path == path) {
                        continue;
                    }
                    let key = ControllerKey {
                        nqn: r.target.nqn.clone(),
                        path: path.clone(),
                        hostnqn: r.hostnqn.clone(),
                    };
                    if let Some(c) = topo.controllers.values().find(|c| {
                        c.state.is_alive() && !claimed.contains(&c.name) && matches_key(c, &key)
                    }) {
                        tracing::info!(
                            VOLUME = r.volume_id.as_str(),
                            "volume {}: adopting {} left by an interrupted connect",
                            r.volume_id,
                            c.name
                        );
                        claimed.insert(c.name.clone());
                        r.controllers.push(OwnedCtrl {
                            name: c.name.clone(),
                            cntlid: c.cntlid.unwrap_or(0),
                            path: path.clone(),
                            ino: c.ino,
                        });
                    }
                }
                if r.controllers.is_empty() {
                    tracing::info!(VOLUME = r.volume_id.as_str(), "volume {}: its connect was interrupted before the kernel made a controller; forgetting it", r.volume_id);
                    self.forget(&r.volume_id)?;
                    continue;
                }
                r.phase = Phase::Connected;
            }
            if r.phase == Phase::Disconnecting {
                disconnecting.push(r.volume_id.clone());
            }
            let info = self.store(r, &topo)?;
            tracing::info!(
                VOLUME = info.volume_id.as_str(),
                "volume {}: {} ({})",
                info.volume_id,
                info.state.as_str(),
                if info.device.is_empty() {
                    "no device"
                } else {
                    info.device.as_str()
                }
            );
        }
        for id in disconnecting {
            tracing::info!(
                VOLUME = id.as_str(),
                "volume {id}: finishing an interrupted disconnect"
            );
            self.disconnect(&id, None).await?;
        }
        for c in self.foreign_controllers() {
            tracing::warn!(
                "controller {} to {} at {}:{} was not made by volfence: left alone",
                c.name,
                c.subsysnqn,
                c.address.traddr,
                c.address.trsvcid
            );
        }
        Ok(())
    }

    /// Wakes for by-id links made from now on; `None` while there is no by-id directory.
    fn link_waiter(&self) -> Option<LinkWaiter> {
        let mut links = self.inner.links.lock().unwrap();
        if !links.as_ref().is_some_and(LinkWatch::is_alive) {
            *links = LinkWatch::new(&self.inner.host.path(paths::DISK_BY_ID));
        }
        links.as_ref().map(LinkWatch::subscribe)
    }

    /// Connects a volume, or returns it if it is already connected to the same target.
    pub async fn connect(
        &self,
        guard: &FenceGuard,
        req: ConnectRequest,
    ) -> Result<VolumeInfo, NvmeError> {
        let started = Instant::now();
        let result = self.connect_inner(guard, req).await;
        self.observe("connect", started, &result);
        result
    }

    fn observe<T>(&self, op: &'static str, started: Instant, result: &Result<T, NvmeError>) {
        if let Some(m) = &self.inner.metrics {
            let failure = result.as_ref().err().map(NvmeError::reason);
            m.observe_nvme(op, started.elapsed(), failure);
        }
    }

    async fn connect_inner(
        &self,
        guard: &FenceGuard,
        req: ConnectRequest,
    ) -> Result<VolumeInfo, NvmeError> {
        let mut laps = Laps::new();
        validate_volume_id(&req.volume_id)?;
        let args: Vec<ConnectArgs> = req
            .target
            .paths
            .iter()
            .map(|p| {
                ConnectArgs::new(
                    &req.target,
                    p,
                    &self.inner.identity,
                    &self.inner.defaults,
                    &req.overrides,
                )
            })
            .collect::<Result<_, _>>()?;
        let id = req.volume_id.as_str();
        let lock = Self::lock_for(&self.inner.volume_locks, id);
        let Ok(_held) = lock.try_lock() else {
            return Err(NvmeError::Busy(format!(
                "volume {id}: another connect or disconnect of it is running"
            )));
        };
        guard.check()?;
        // Subscribed before anything happens, so no event can slip between a check and a wait.
        let mut events = self.inner.events.subscribe();
        let mut links = self.link_waiter();
        let existing = self
            .inner
            .volumes
            .lock()
            .unwrap()
            .get(id)
            .map(|(r, _)| r.clone());
        let mut record = match existing {
            Some(r) if r.target != req.target => {
                return Err(NvmeError::Busy(format!(
                    "volume {id} is connected to {} {} at {}; disconnect it first",
                    r.target.nqn,
                    r.target.namespace,
                    r.target
                        .paths
                        .iter()
                        .map(|p| p.to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                )))
            }
            Some(r) if r.phase == Phase::Disconnecting => {
                return Err(NvmeError::Busy(format!(
                    "volume {id} is being disconnected"
                )))
            }
            Some(r) => r,
            None => Record {
                volume_id: id.to_string(),
                target: req.target.clone(),
                hostnqn: self.inner.identity.hostnqn.clone(),
                boot_id: self.inner.boot_id.clone(),
                phase: Phase::Connecting,
                controllers: Vec::new(),
                epoch: guard.epoch(),
            },
        };
        let was_connected = record.phase == Phase::Connected;
        let mut progress = ConnectProgress::default();
        laps.lap("prepare");
        let outcome = self
            .ensure_controllers(guard, &mut record, &args, &mut progress, &mut laps)
            .await;
        let outcome = match outcome {
            Ok(()) => {
                let timeout = req
                    .overrides
                    .timeout
                    .unwrap_or(self.inner.defaults.connect_timeout);
                let (r, saved) = tokio::join!(
                    self.wait_for_device(
                        guard,
                        &record,
                        &mut events,
                        links.as_mut(),
                        timeout,
                        progress.first_look()
                    ),
                    progress.pending.settle()
                );
                laps.lap("device");
                saved.map_err(NvmeError::from).and(r)
            }
            // The record must be on disk as written before the rollback rewrites or removes it.
            Err(e) => (progress.pending.settle().await)
                .map_err(NvmeError::from)
                .and(Err(e)),
        };
        match outcome {
            Ok(topo) => {
                record.phase = Phase::Connected;
                record.epoch = guard.epoch();
                // A repeated Connect logs nothing and usually announces nothing; one that made a
                // controller (a dead volume revived) says so.
                let through = (!was_connected || !progress.created.is_empty())
                    .then(|| record.controllers_text());
                let (info, events) = self.store_unannounced(record, &topo)?;
                laps.lap("store");
                let line = through.map(|through| {
                    format!(
                        "volume {id}: connected {} as {} ({}) through {through} in {laps}",
                        info.nqn, info.device, info.stable_path
                    )
                });
                if events.is_empty() && line.is_none() {
                    return Ok(info);
                }
                let (this, id, epoch) = (self.clone(), id.to_string(), guard.epoch());
                // From a task of its own, which runs once this one yields (tokio runs a task
                // spawned from a worker next on that worker): the change event (for the
                // volume's D-Bus object, which `Connect` has already made before replying) and
                // the log line (journald waking up to take it) follow the reply the caller
                // waits for, instead of competing with it. At worst they run alongside.
                tokio::spawn(async move {
                    this.announce(events);
                    if let Some(line) = line {
                        tracing::info!(VOLUME = id.as_str(), EPOCH = epoch, "{line}");
                    }
                });
                Ok(info)
            }
            Err(e) => {
                // Undo what this call made, so a failed connect leaks no controller.
                self.rollback(&mut record, &progress.created, was_connected)
                    .await;
                Err(e)
            }
        }
    }

    async fn rollback(&self, record: &mut Record, created: &[String], was_connected: bool) {
        for name in created {
            let Some(o) = record.controllers.iter().find(|o| &o.name == name) else {
                continue;
            };
            let klock = Self::lock_for(&self.inner.key_locks, &owned_key(record, o));
            let _k = klock.lock().await;
            // Under the connection's lock: another volume's connect that shared the controller
            // meanwhile keeps it.
            if self.owned_names(Some(&record.volume_id)).contains(name) {
                continue;
            }
            if let Err(e) = self.delete_blocking(name).await {
                tracing::error!("rolling back {name}: {e}");
            }
        }
        record.controllers.retain(|c| !created.contains(&c.name));
        let topo = self.rescan();
        if was_connected {
            if let Err(e) = self.store(record.clone(), &topo) {
                tracing::error!("{e}");
            }
        } else if let Err(e) = self.forget(&record.volume_id) {
            tracing::error!("{e}");
        }
    }

    async fn delete_blocking(&self, name: &str) -> Result<(), NvmeError> {
        let (f, n) = (self.inner.fabrics.clone(), name.to_string());
        let r = tokio::task::spawn_blocking(move || f.delete_controller(&n))
            .await
            .unwrap_or_else(|e| Err(std::io::Error::other(e.to_string())));
        match r {
            Ok(()) => Ok(()),
            // Already gone (the kernel's loss timer, or another delete): what we wanted.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(NvmeError::Kernel {
                what: format!("deleting controller {name}"),
                source,
            }),
        }
    }

    /// One owned, alive controller per path: reuse, or make it.
    async fn ensure_controllers(
        &self,
        guard: &FenceGuard,
        record: &mut Record,
        args: &[ConnectArgs],
        progress: &mut ConnectProgress,
        laps: &mut Laps,
    ) -> Result<(), NvmeError> {
        let id = record.volume_id.clone();
        // The record exists before the kernel is asked, so a crash cannot leak what it makes; its
        // write overlaps the scan. (Intermediate records are only persisted; their view is
        // computed once the device is up.)
        self.put_record_in_background(record, record.clone(), &mut progress.pending);
        // A repeated Connect (orchestrators repeat them): the volume's own controllers, read
        // alone, usually show every path alive, and then nothing else on the host is read.
        let own_view = (!record.controllers.is_empty()).then(|| {
            let names: Vec<String> = record.controller_names().collect();
            Arc::new(sysfs::scan_controllers(&self.inner.host, &names))
        });
        let reusable = |record: &Record, a: &ConnectArgs, topo: &Topology| {
            record.controllers.iter().any(|o| {
                o.path == a.path
                    && topo
                        .controllers
                        .get(&o.name)
                        .is_some_and(|c| is_same(c, o, &a.nqn) && c.state.is_alive())
            })
        };
        for (i, a) in args.iter().enumerate() {
            let key = a.key();
            let klock = Self::lock_for(&self.inner.key_locks, &key_string(&key));
            let _k = klock.lock().await;
            if let Some(view) = own_view.as_ref().filter(|v| reusable(record, a, v)) {
                progress.scanned = Some(view.clone());
                laps.lap("scan");
                continue;
            }
            let topo = self.rescan();
            progress.scanned = Some(topo.clone());
            laps.lap("scan");
            if reusable(record, a, &topo) {
                continue;
            }
            // Drop stale entries for this path (the kernel deleted them).
            record.controllers.retain(|o| o.path != a.path);
            let owned = self.owned_names(None);
            if let Some(c) = topo
                .controllers
                .values()
                .find(|c| c.state.is_alive() && matches_key(c, &key))
            {
                if !owned.contains(&c.name) {
                    return Err(NvmeError::Busy(format!(
                        "controller {} to {} at {} was not made by volfence (nvme-cli or another tool?): not using or changing it",
                        c.name, a.nqn, a.path
                    )));
                }
                // Another volume's controller to the same subsystem and path: share it, unless
                // that volume's disconnect kept it to delete (it failed midway: its record still
                // names it and no lock is held; the next Disconnect of it finishes the job).
                let owner = self
                    .inner
                    .volumes
                    .lock()
                    .unwrap()
                    .values()
                    .find_map(|(r, _)| {
                        let o = r.controllers.iter().find(|o| o.name == c.name)?;
                        Some((r.volume_id.clone(), r.phase, o.clone()))
                    });
                if let Some((other, Phase::Disconnecting, _)) = &owner {
                    return Err(NvmeError::Busy(format!(
                        "controller {} to {} at {} belongs to volume {other}, whose disconnect has not finished: disconnect {other} again first",
                        c.name, a.nqn, a.path
                    )));
                }
                if let Some((_, _, o)) = owner {
                    record.controllers.push(o);
                    progress.pending.settle().await?;
                    self.put_record(record)?;
                    continue;
                }
            }
            // A head that exists gets no event when this controller's path joins it.
            progress.joined |= head_exists(&topo, &record.target);
            progress.pending.settle().await?;
            laps.lap("record");
            let fresh = guard.refresh()?;
            let (f, line) = (self.inner.fabrics.clone(), a.to_string());
            tracing::debug!(
                VOLUME = id.as_str(),
                "writing to /dev/nvme-fabrics: {}",
                a.redacted()
            );
            // Not raced against the fence: the kernel finishes a connect it was asked for even if
            // the caller stops waiting, and a controller made after a connect gave up would be
            // nobody's, live on a fenced host. The fence is checked once the reply names it, and
            // the rollback deletes it.
            let reply = tokio::task::spawn_blocking(move || f.connect(&fresh, &line))
                .await
                .unwrap_or_else(|e| Err(std::io::Error::other(e.to_string())));
            let reply = reply.map_err(|source| {
                let what = format!("connecting to {} at {}", a.nqn, a.path);
                match source.raw_os_error() {
                    Some(nix::libc::EALREADY) => NvmeError::Busy(format!(
                        "{what}: the kernel already has this connection (made outside volfence?)"
                    )),
                    // What nvme-tcp answers when DH-HMAC-CHAP fails (seen against nvmet). A TLS
                    // connect can fail with the same errnos for its PSK, which has not been seen
                    // against a real target: it keeps the kernel's answer.
                    Some(nix::libc::ENOKEY) if !a.tls => NvmeError::Auth(format!(
                        "{what}: the target requires authentication{} ({source})",
                        if a.dhchap_secret.is_some() {
                            ""
                        } else {
                            " and no dhchap_secret was given"
                        }
                    )),
                    Some(nix::libc::EKEYREJECTED) if !a.tls => NvmeError::Auth(format!(
                        "{what}: authentication failed{} ({source})",
                        match (&a.dhchap_secret, &a.dhchap_ctrl_secret) {
                            (Some(_), Some(_)) => ": the target rejected dhchap_secret, or the controller did not prove dhchap_ctrl_secret",
                            (Some(_), None) => ": the target rejected dhchap_secret",
                            (None, _) => "",
                        }
                    )),
                    _ => NvmeError::Kernel { what, source },
                }
            })?;
            laps.lap("fabrics");
            let parsed = parse_fabrics_reply(&reply).ok_or_else(|| NvmeError::Kernel {
                what: format!("connecting to {} at {}", a.nqn, a.path),
                source: std::io::Error::other(format!(
                    "unexpected reply from /dev/nvme-fabrics: {reply:?}"
                )),
            })?;
            let name = format!("nvme{}", parsed.instance);
            progress.created.push(name.clone());
            // Recorded before the fence is looked at: the rollback finds its connection by it.
            record.controllers.push(OwnedCtrl {
                ino: sysfs::controller_ino(&self.inner.host, &name),
                name: name.clone(),
                cntlid: parsed.cntlid,
                path: a.path.clone(),
            });
            guard.refresh()?;
            // Once the last controller is recorded, recovery needs nothing more: a crash from
            // here adopts what the record names either way, so the disk says `connected` now
            // and the connect's end has nothing to write. In memory the volume stays connecting
            // (no view, no announcement) until its device is up.
            let disk = if i + 1 == args.len() {
                Record {
                    phase: Phase::Connected,
                    epoch: guard.epoch(),
                    ..record.clone()
                }
            } else {
                record.clone()
            };
            self.put_record_in_background(record, disk, &mut progress.pending);
            laps.lap("record");
            // The connect's end names it at info level; this one line would be a second journal
            // entry while udev works on the device.
            tracing::debug!(
                VOLUME = id.as_str(),
                EPOCH = guard.epoch(),
                "volume {id}: controller {name} (cntlid {}) to {} at {}",
                parsed.cntlid,
                a.nqn,
                a.path
            );
        }
        Ok(())
    }

    /// Waits, on udev events, until the namespace's block device exists and udev has processed
    /// it (a by-id link, or an event for it), starting from `first` (see [`FirstLook`]).
    /// Joining a head that exists is the one wait no event can end: sysfs is re-read (2 ms,
    /// doubling to 50 ms) until this volume's path is in it.
    async fn wait_for_device(
        &self,
        guard: &FenceGuard,
        record: &Record,
        events: &mut broadcast::Receiver<Uevent>,
        mut links: Option<&mut LinkWaiter>,
        timeout: Duration,
        first: FirstLook,
    ) -> Result<Arc<Topology>, NvmeError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let names: Vec<String> = record.controller_names().collect();
        let mut processed: HashSet<String> = HashSet::new();
        let mut first = Some(first);
        // The look that showed this volume's namespace with its device node: later wakes (udev's
        // links, one by one) only wait for udev, and read nothing in sysfs while it stays so.
        let mut showed: Option<Arc<Topology>> = None;
        // Polling only while joining a head: the one wait no event can end.
        let mut poll = JOIN_POLL_FIRST;
        loop {
            let topo = match first.take() {
                Some(FirstLook::Scanned(t)) => t,
                Some(FirstLook::Wake) => Arc::new(Topology::default()),
                Some(FirstLook::Rescan) => self.rescan(),
                // Woken: this volume's controllers and heads are read, not the whole host; all
                // of sysfs only while they do not show the device, to see a head being joined.
                None => {
                    // What woke this changed sysfs: the host's cache is read again when next
                    // asked, even if the event watcher has not seen the event yet.
                    self.invalidate();
                    match showed
                        .take()
                        .filter(|t| self.device_node_of(t, record, &names))
                    {
                        Some(t) => t,
                        None => {
                            let view = Arc::new(sysfs::scan_controllers(&self.inner.host, &names));
                            if select(&view, &record.target, &names).is_some() {
                                view
                            } else {
                                self.rescan()
                            }
                        }
                    }
                }
            };
            let found = select(&topo, &record.target, &names);
            if let Some(ns) = found {
                if self.has_node(ns) {
                    if processed.contains(&ns.block)
                        || sysfs::stable_link_made(&self.inner.host, ns)
                    {
                        return Ok(topo);
                    }
                    showed = Some(topo.clone());
                }
            }
            let joining = found.is_none() && joining_head(&topo, &record.target, &names);
            let wait = poll;
            let next_look = async move {
                if joining {
                    tokio::time::sleep(wait).await;
                } else {
                    std::future::pending::<()>().await;
                }
            };
            tokio::pin!(next_look);
            if joining {
                poll = (poll * 2).min(JOIN_POLL_MAX);
            }
            // Only a block device appearing (or changing) or an nvme by-id link can complete
            // the wait: other events cost no sysfs read.
            let link = async {
                match links.as_deref_mut() {
                    Some(l) => l.nvme_link().await,
                    None => std::future::pending().await,
                }
            };
            tokio::pin!(link);
            loop {
                let ev = tokio::select! {
                    r = events.recv() => r,
                    _ = &mut link => break,
                    _ = &mut next_look => break,
                    _ = tokio::time::sleep_until(deadline) => {
                        return Err(self.timeout_error(record, &self.rescan(), &names, timeout));
                    }
                    e = guard.until_lost() => return Err(e.into()),
                };
                match ev {
                    Ok(ev) if ev.subsystem == "block" && ev.action != "remove" => {
                        processed.insert(ev.sysname);
                        break;
                    }
                    Ok(_) => {}
                    // Missed events: look again.
                    Err(broadcast::error::RecvError::Lagged(_)) => break,
                    // No more events will come: only the deadline or the fence can end this.
                    Err(broadcast::error::RecvError::Closed) => {
                        tokio::select! {
                            _ = &mut next_look => break,
                            _ = tokio::time::sleep_until(deadline) => {
                                return Err(self.timeout_error(record, &self.rescan(), &names, timeout));
                            }
                            e = guard.until_lost() => return Err(e.into()),
                        }
                    }
                }
            }
        }
    }

    /// Whether the namespace `topo` shows for `record` still has its device node.
    fn device_node_of(&self, topo: &Topology, record: &Record, names: &[String]) -> bool {
        select(topo, &record.target, names).is_some_and(|ns| self.has_node(ns))
    }

    fn has_node(&self, ns: &Namespace) -> bool {
        self.inner.host.path(paths::DEV).join(&ns.block).exists()
    }

    fn timeout_error(
        &self,
        record: &Record,
        topo: &Topology,
        names: &[String],
        t: Duration,
    ) -> NvmeError {
        let live = names
            .iter()
            .filter(|n| {
                topo.controllers
                    .get(*n)
                    .is_some_and(|c| c.state == CtrlState::Live)
            })
            .count();
        let in_subsys: Vec<String> = topo
            .namespaces
            .iter()
            .filter(|n| n.subsysnqn == record.target.nqn)
            .map(|n| format!("nsid {}", n.nsid))
            .collect();
        if live > 0
            && select(topo, &record.target, names).is_none()
            && head_exists(topo, &record.target)
        {
            NvmeError::NotFound(format!(
                "{} {} exists (through other controllers) but none of volume {}'s controllers ({}) reaches it within {t:?}",
                record.target.nqn,
                record.target.namespace,
                record.volume_id,
                names.join(", ")
            ))
        } else if live > 0 && select(topo, &record.target, names).is_none() && !in_subsys.is_empty()
        {
            NvmeError::NotFound(format!(
                "subsystem {} has no namespace with {} (it has {})",
                record.target.nqn,
                record.target.namespace,
                in_subsys.join(", ")
            ))
        } else {
            NvmeError::Timeout(format!(
                "volume {}: the block device for {} {} did not appear (udev-processed) within {t:?}",
                record.volume_id, record.target.nqn, record.target.namespace
            ))
        }
    }

    /// Disconnects a volume: deletes its controllers (those no other volume uses), waits until
    /// they and the block device are gone, forgets the record. Disconnecting what is not
    /// connected succeeds. Needs no guard: this is how a host fences itself.
    pub async fn disconnect(&self, id: &str, timeout: Option<Duration>) -> Result<(), NvmeError> {
        let started = Instant::now();
        let result = self.disconnect_inner(id, timeout, false).await;
        self.observe("disconnect", started, &result);
        result
    }

    async fn disconnect_inner(
        &self,
        id: &str,
        timeout: Option<Duration>,
        wait_for_lock: bool,
    ) -> Result<(), NvmeError> {
        validate_volume_id(id)?;
        let lock = Self::lock_for(&self.inner.volume_locks, id);
        let _held = if wait_for_lock {
            lock.lock().await
        } else {
            lock.try_lock().map_err(|_| {
                NvmeError::Busy(format!(
                    "volume {id}: another connect or disconnect of it is running"
                ))
            })?
        };
        let Some(mut record) = self
            .inner
            .volumes
            .lock()
            .unwrap()
            .get(id)
            .map(|(r, _)| r.clone())
        else {
            return Ok(());
        };
        let mut events = self.inner.events.subscribe();
        // Every connection this volume uses, locked in one order (two disconnects never wait on
        // each other crosswise) until its controller is deleted or let go of.
        let mut keys: Vec<String> = record
            .controllers
            .iter()
            .map(|o| owned_key(&record, o))
            .collect();
        keys.sort();
        keys.dedup();
        let mut _connections = Vec::with_capacity(keys.len());
        for k in &keys {
            _connections.push(Self::lock_for(&self.inner.key_locks, k).lock_owned().await);
        }
        record.phase = Phase::Disconnecting;
        let topo = self.rescan();
        let others = self.owned_names(Some(id));
        let device = select(
            &topo,
            &record.target,
            &record
                .controllers
                .iter()
                .map(|c| c.name.clone())
                .collect::<Vec<_>>(),
        )
        .map(|n| n.block.clone());
        let mine: Vec<String> = record
            .controllers
            .iter()
            .filter(|o| !others.contains(&o.name))
            .filter(|o| {
                topo.controllers
                    .get(&o.name)
                    .is_some_and(|c| is_same(c, o, &record.target.nqn))
            })
            .map(|o| o.name.clone())
            .collect();
        // Let go of the controllers another volume still uses, on disk too: that volume's
        // disconnect, next under the connection's lock, then finds itself the last user.
        record.controllers.retain(|o| !others.contains(&o.name));
        self.store(record.clone(), &topo)?;
        for name in &mine {
            self.delete_blocking(name).await?;
        }
        // The kernel's delete is synchronous; the block device's removal is not always.
        let deadline =
            tokio::time::Instant::now() + timeout.unwrap_or(self.inner.defaults.connect_timeout);
        // The device goes away only if nothing else reaches it: another volume's controller, or
        // one made outside volfence that shares the namespace's head.
        let sole_user = device.as_ref().is_some_and(|b| {
            topo.namespaces
                .iter()
                .filter(|n| &n.block == b)
                .all(|n| n.controllers.iter().all(|c| mine.contains(c)))
        });
        loop {
            let topo = self.rescan();
            let ctrls_gone = mine.iter().all(|n| !topo.controllers.contains_key(n));
            let dev_gone = !sole_user
                || device.as_ref().is_none_or(|b| {
                    !topo.namespaces.iter().any(|n| &n.block == b)
                        && !self.inner.host.path(paths::DEV).join(b).exists()
                });
            if ctrls_gone && dev_gone {
                break;
            }
            tokio::select! {
                _ = events.recv() => {}
                _ = tokio::time::sleep_until(deadline) => {
                    return Err(NvmeError::Timeout(format!("volume {id}: controllers {} still present after delete", mine.join(", "))));
                }
            }
        }
        self.forget(id)?;
        tracing::info!(
            VOLUME = id,
            "volume {id}: disconnected (deleted {})",
            if mine.is_empty() {
                "nothing".to_string()
            } else {
                mine.join(", ")
            }
        );
        Ok(())
    }

    /// Disconnects every volume (the `on_lease_loss = "disconnect"` action).
    pub async fn disconnect_all(&self) {
        let ids: Vec<String> = self.inner.volumes.lock().unwrap().keys().cloned().collect();
        for id in ids {
            // Waits for a running connect: its guard was cancelled, so it is unwinding.
            if let Err(e) = self.disconnect_inner(&id, None, true).await {
                tracing::error!(
                    VOLUME = id.as_str(),
                    "lease lost: disconnecting volume {id} failed: {e}"
                );
            }
        }
    }
}

/// A record write still running on a blocking thread.
#[derive(Default)]
struct PendingSave(Option<(PathBuf, tokio::task::JoinHandle<Result<(), HostError>>)>);

/// What one connect has done to the kernel so far, for its wait and its rollback.
#[derive(Default)]
struct ConnectProgress {
    /// Controllers this call made.
    created: Vec<String>,
    /// One of them joined a multipath head that already existed.
    joined: bool,
    pending: PendingSave,
    /// The last sysfs scan before the kernel was asked for anything.
    scanned: Option<Arc<Topology>>,
}

/// Where a device wait starts.
enum FirstLook {
    /// This call made nothing: the scan it just did is current.
    Scanned(Arc<Topology>),
    /// A path joined a head that exists: no event will come, so read sysfs now.
    Rescan,
    /// This call made a controller for a new head, and the events and link watch were set up
    /// before it: nothing can be ready before their first wake, so sysfs is not read while the
    /// kernel is busy scanning.
    Wake,
}

impl ConnectProgress {
    fn first_look(&mut self) -> FirstLook {
        match (self.created.is_empty(), self.joined, self.scanned.take()) {
            (true, _, Some(t)) => FirstLook::Scanned(t),
            (false, false, _) => FirstLook::Wake,
            _ => FirstLook::Rescan,
        }
    }
}

impl PendingSave {
    /// Waits for the write, if any; its error is the caller's.
    async fn settle(&mut self) -> Result<(), HostError> {
        match self.0.take() {
            None => Ok(()),
            Some((path, h)) => h.await.unwrap_or_else(|e| {
                Err(HostError::Write {
                    path,
                    source: std::io::Error::other(e.to_string()),
                })
            }),
        }
    }
}

/// Where a connect's time went (the `connected` log line): `prepare=0.1ms scan=2.0ms record=0.4ms …`.
struct Laps {
    last: Instant,
    laps: Vec<(&'static str, Duration)>,
}

impl Laps {
    fn new() -> Laps {
        Laps {
            last: Instant::now(),
            laps: Vec::new(),
        }
    }
    fn lap(&mut self, name: &'static str) {
        let now = Instant::now();
        self.laps.push((name, now - self.last));
        self.last = now;
    }
}

impl std::fmt::Display for Laps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let total: Duration = self.laps.iter().map(|(_, d)| *d).sum();
        write!(f, "{:.1}ms:", total.as_secs_f64() * 1e3)?;
        for (name, d) in &self.laps {
            write!(f, " {name}={:.1}ms", d.as_secs_f64() * 1e3)?;
        }
        Ok(())
    }
}
