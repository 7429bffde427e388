//! The D-Bus boundary: a thin `org.volfence.Agent1` interface over the daemon's handles. Errors from
//! the rest of the agent are mapped to named D-Bus errors here, once.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant as StdInstant;

use tokio_util::sync::CancellationToken;
use zbus::connection::Builder;
use zbus::fdo::{DBusProxy, RequestNameFlags, RequestNameReply};
use zbus::message::Header;
use zbus::object_server::{InterfaceRef, SignalEmitter};
use zbus::{interface, Connection, OwnedVariant, Variant};

use crate::claims::{Acquired, ClaimError, VolumeClaims};
use crate::config::BusSpec;
use crate::fence::{Fence, FenceError, FenceStatus};
use crate::nvme::hostid_check::{HostIdCheck, HostIdError};
use crate::nvme::resv::policy::Role;
use crate::nvme::resv::service::Reservations;
use crate::nvme::resv::ResvError;
use crate::nvme::volumes::Volumes;
use crate::snapshot::Snapshots;

pub mod client;
mod read_only;
pub mod snapshots;
pub mod volumes;

pub use read_only::ReadOnlyProps;
/// The agent object as served: read-only properties answer `PropertyReadOnly` to `Set`.
pub type AgentIface = ReadOnlyProps<Agent>;

/// Well-known bus name, also the interface name of the agent object.
pub const BUS_NAME: &str = "org.volfence.Agent1";
pub const INTERFACE: &str = "org.volfence.Agent1";
/// The agent object.
pub const AGENT_PATH: &str = "/org/volfence/Agent1";
/// The ObjectManager, root of the per-volume and per-job objects.
pub const MANAGER_PATH: &str = "/org/volfence";
/// Prefix of the named errors.
pub const ERROR_PREFIX: &str = "org.volfence.Error";

/// Errors as callers see them: `org.volfence.Error.<Variant>`.
#[derive(Debug, zbus::DBusError)]
#[zbus(prefix = "org.volfence.Error")]
pub enum Error {
    #[zbus(error)]
    ZBus(zbus::Error),
    /// The caller may not call this method (only root may change the agent).
    AccessDenied(String),
    /// The host does not hold a valid lease: device operations are refused.
    NotFenced(String),
    /// An argument was malformed or out of range.
    InvalidArgument(String),
    /// An operation did not finish within its deadline.
    Timeout(String),
    /// The device or volume asked for does not exist.
    DeviceNotFound(String),
    /// Another operation holds the object.
    Busy(String),
    /// The target refused this host's credentials, or did not prove its own.
    AuthenticationFailed(String),
    /// Another live host holds the volume's claim; the message names it, its epoch and since
    /// when.
    Conflict(String),
    /// The target's reservation of the volume could not be made to match its claim (another
    /// host's key holds it, or `nvme.reservations = "require"` and the namespace has none):
    /// the volume was not left connected.
    Reservation(String),
    /// Another live host in the cluster has this host's NVMe host ID: the target could not tell
    /// the two apart, so nothing is connected; the message names the other node.
    DuplicateHostId(String),
    /// Anything else; the message says what.
    Failed(String),
}

impl From<FenceError> for Error {
    fn from(e: FenceError) -> Self {
        Error::NotFenced(e.to_string())
    }
}

impl From<ResvError> for Error {
    fn from(e: ResvError) -> Self {
        Error::Reservation(e.to_string())
    }
}

impl From<HostIdError> for Error {
    fn from(e: HostIdError) -> Self {
        Error::DuplicateHostId(e.to_string())
    }
}

impl From<ClaimError> for Error {
    fn from(e: ClaimError) -> Self {
        let msg = e.to_string();
        match e {
            ClaimError::Conflict { .. } | ClaimError::Migration { .. } => Error::Conflict(msg),
            ClaimError::NotFenced(_) => Error::NotFenced(msg),
            ClaimError::Api { .. } | ClaimError::Record(_) => Error::Failed(msg),
        }
    }
}

impl From<zbus::fdo::Error> for Error {
    fn from(e: zbus::fdo::Error) -> Self {
        Error::ZBus(zbus::Error::FDO(Box::new(e)))
    }
}

/// Run-time log level control, provided by the logging setup.
pub trait LogControl: Send + Sync {
    fn level(&self) -> String;
    fn set_level(&self, filter: &str) -> Result<(), String>;
}

impl LogControl for crate::logging::LogHandle {
    fn level(&self) -> String {
        crate::logging::LogHandle::level(self)
    }
    fn set_level(&self, filter: &str) -> Result<(), String> {
        crate::logging::LogHandle::set_level(self, filter).map_err(|e| e.to_string())
    }
}

/// Static facts about this agent, shown by `Status()`.
#[derive(Debug, Clone)]
pub struct AgentInfo {
    pub node: String,
    pub fence_backend: String,
    pub bus: String,
    /// Conditions under which the agent promises less than an operator might assume.
    pub warnings: Vec<String>,
    /// A hardware watchdog backs the fence (without one, a hung agent leaves devices attached).
    pub hardware_watchdog: bool,
}

/// `org.volfence.Agent1` at `/org/volfence/Agent1`.
pub struct Agent {
    info: AgentInfo,
    fence: Fence,
    log: Arc<dyn LogControl>,
    started: StdInstant,
    volumes: Volumes,
    /// The volumes' objects, shared with the publisher (see [`volumes::VolumeObjects`]).
    volume_objects: volumes::VolumeObjects,
    snapshots: Snapshots,
    /// The volumes' claims (None with the standalone backend: one host, nothing to share).
    claims: Option<Arc<dyn VolumeClaims>>,
    /// The volumes' reservations at the target (None: no reservation command is sent).
    resv: Option<Arc<Reservations>>,
    /// Whether this host's NVMe host ID is its own in the cluster (None: standalone).
    host_ids: Option<Arc<HostIdCheck>>,
}

fn var<'a>(v: impl Into<Variant<'a>>) -> OwnedVariant {
    OwnedVariant::try_from(v.into()).expect("plain values carry no file descriptors")
}

/// Only root (uid 0) may call mutating methods. The bus policy says so too; this holds even on a
/// bus whose policy is looser (a session bus, a misinstalled policy file).
async fn require_root(conn: &Connection, header: &Header<'_>) -> Result<(), Error> {
    let member = header.member().map(|m| m.to_string()).unwrap_or_default();
    let sender = header
        .sender()
        .ok_or_else(|| Error::AccessDenied(format!("{member}: caller has no unique name")))?;
    // A unique name is never reused on a bus (its guid), so a caller's uid cannot go stale:
    // asking the bus once per caller saves a round trip on every later call.
    static UIDS: std::sync::LazyLock<std::sync::Mutex<HashMap<(String, String), u32>>> =
        std::sync::LazyLock::new(Default::default);
    let key = (conn.server_guid().to_string(), sender.to_string());
    let cached = UIDS.lock().unwrap().get(&key).copied();
    let uid = match cached {
        Some(uid) => uid,
        None => {
            let uid = DBusProxy::new(conn)
                .await?
                .get_connection_unix_user(sender.clone().into())
                .await?;
            let mut uids = UIDS.lock().unwrap();
            if uids.len() >= 1024 {
                uids.clear(); // callers come and go; only the live ones matter
            }
            uids.insert(key, uid);
            uid
        }
    };
    if uid != 0 {
        return Err(Error::AccessDenied(format!(
            "{member} may only be called by root (caller uid {uid})"
        )));
    }
    Ok(())
}

impl Agent {
    /// The registry `Connect` and the volume publisher share.
    pub(crate) fn volume_objects(&self) -> volumes::VolumeObjects {
        self.volume_objects.clone()
    }

    pub(crate) fn claims(&self) -> Option<Arc<dyn VolumeClaims>> {
        self.claims.clone()
    }

    /// Brings volume `id`'s object in line with the manager. A bus failure here does not undo
    /// the connect or disconnect that was done: it is logged, and the publisher's next pass
    /// over the volume tries again.
    async fn sync_volume_object(&self, conn: &Connection, id: &str) {
        let ids = std::collections::HashSet::from([id.to_string()]);
        if let Err(e) = self
            .volume_objects
            .sync(conn.object_server(), &self.volumes, Some(ids))
            .await
        {
            tracing::error!(VOLUME = id, "volume {id}: its D-Bus object: {e}");
        }
    }

    /// A Connect whose reservation failed: the device goes (our key with it) and the claim is
    /// released, so nothing of it blocks another host. Failures are logged; the reconcile task
    /// releases a claim left without a device.
    async fn undo_connect(&self, conn: &Connection, info: &crate::nvme::volumes::VolumeInfo) {
        let id = info.volume_id.as_str();
        if let Some(r) = &self.resv {
            if let Err(e) = r.give_up(info).await {
                tracing::warn!(VOLUME = id, "{e}");
            }
        }
        if let Err(e) = self.volumes.disconnect(id, None).await {
            tracing::error!(
                VOLUME = id,
                "volume {id}: disconnecting after its reservation failed: {e}"
            );
            return;
        }
        if let Some(c) = &self.claims {
            if let Err(e) = c.release(id).await {
                tracing::warn!(VOLUME = id, "volume {id}: releasing its claim: {e}");
            }
        }
        self.sync_volume_object(conn, id).await;
    }
}

#[interface(name = "org.volfence.Agent1")]
impl Agent {
    /// Agent version.
    #[zbus(property(emits_changed_signal = "const"))]
    fn version(&self) -> String {
        env!("CARGO_PKG_VERSION").to_string()
    }

    /// Kubernetes node name this agent fences.
    #[zbus(property(emits_changed_signal = "const"))]
    fn node_name(&self) -> String {
        self.info.node.clone()
    }

    /// acquiring | held | expiring | fenced | conflict
    #[zbus(property)]
    fn fence_state(&self) -> String {
        self.fence.status().state.as_str().to_string()
    }

    /// Fencing token of the current (or last) holding; 0 before the first.
    #[zbus(property)]
    fn epoch(&self) -> u64 {
        self.fence.status().epoch
    }

    /// Milliseconds of local lease validity left (changes continuously: read it, no signal).
    #[zbus(property(emits_changed_signal = "false"))]
    fn valid_for_ms(&self) -> u64 {
        self.fence
            .status()
            .valid_for(tokio::time::Instant::now())
            .as_millis() as u64
    }

    /// Current log filter.
    #[zbus(property)]
    fn log_level(&self) -> String {
        self.log.level()
    }

    /// Everything `volfencectl status` shows, as one dictionary.
    async fn status(&self) -> HashMap<String, OwnedVariant> {
        let s = self.fence.status();
        let mut m = HashMap::new();
        m.insert("Version".into(), var(env!("CARGO_PKG_VERSION")));
        m.insert("NodeName".into(), var(self.info.node.as_str()));
        m.insert("FenceState".into(), var(s.state.as_str()));
        m.insert("FenceMessage".into(), var(s.message.as_str()));
        m.insert("FenceBackend".into(), var(self.info.fence_backend.as_str()));
        m.insert("Holder".into(), var(self.fence.holder().identity()));
        m.insert("Epoch".into(), var(s.epoch));
        m.insert(
            "ValidForMs".into(),
            var(s.valid_for(tokio::time::Instant::now()).as_millis() as u64),
        );
        m.insert("Pid".into(), var(std::process::id()));
        m.insert(
            "UptimeMs".into(),
            var(self.started.elapsed().as_millis() as u64),
        );
        m.insert("LogLevel".into(), var(self.log.level()));
        m.insert("Bus".into(), var(self.info.bus.as_str()));
        let vols = self.volumes.list();
        let mut warnings = self.info.warnings.clone();
        if !vols.is_empty() && !self.info.hardware_watchdog {
            warnings.push(format!("{} volume(s) attached and no hardware watchdog (fence.watchdog_device): if this agent hangs, nothing stops their I/O when the lease runs out", vols.len()));
        }
        m.insert("Warnings".into(), var(warnings));
        m.insert("Volumes".into(), var(vols.len() as u32));
        let foreign: Vec<String> = self
            .volumes
            .foreign_controllers()
            .iter()
            .map(|c| {
                format!(
                    "{} {} {}:{} {}",
                    c.name,
                    c.subsysnqn,
                    c.address.traddr,
                    c.address.trsvcid,
                    c.state.as_str()
                )
            })
            .collect();
        m.insert("ForeignControllers".into(), var(foreign));
        m.insert(
            "HostNqn".into(),
            var(self.volumes.identity().hostnqn.as_str()),
        );
        m
    }

    /// Connects a volume (idempotent) and waits until its block device is usable. Root only;
    /// needs the fence. Returns the device and the same dictionary `ListVolumes` gives.
    async fn connect(
        &self,
        volume_id: String,
        target: HashMap<String, OwnedVariant>,
        options: HashMap<String, OwnedVariant>,
        #[zbus(connection)] conn: &Connection,
        #[zbus(header)] header: Header<'_>,
    ) -> Result<(String, HashMap<String, OwnedVariant>), Error> {
        require_root(conn, &header).await?;
        // A bad request is InvalidArgument whatever the fence says: validate before the guard.
        let mut options = options;
        let source = volumes::migration_source(&mut options, self.claims.as_deref())?;
        let req = volumes::connect_request(volume_id, target, options)?;
        let guard = self.fence.guard()?;
        if let Some(h) = &self.host_ids {
            h.refusal()?;
        }
        let id = req.volume_id.clone();
        // The routine reservation check leaves the volume to this Connect until it returns.
        let _busy = self.resv.as_ref().map(|r| r.busy(&id));
        // A Connect of a volume attached already (idempotent) never takes it away on failure.
        let attached_before = self.volumes.get(&id).is_some();
        let mut window = None;
        if let Some(c) = &self.claims {
            if let Acquired::Joined { window: w, .. } =
                c.acquire(&guard, &id, source.as_deref()).await?
            {
                window = Some(w);
            }
        }
        let info = match self.volumes.connect(&guard, req).await {
            Ok(info) => info,
            Err(e) => {
                // A claim for a volume that is not connected here would block every other host.
                if let Some(c) = &self.claims {
                    if !self.volumes.list().iter().any(|v| v.volume_id == id) {
                        if let Err(r) = c.release(&id).await {
                            tracing::warn!(
                                VOLUME = id.as_str(),
                                "the connect failed and its claim could not be released: {r}"
                            );
                        }
                    }
                }
                return Err(e.into());
            }
        };
        if let Some(r) = &self.resv {
            // After the claim's CAS: the takeover's last step is at the target. A migration's
            // destination only registers; any other holding of the claim is this host's alone.
            let role = if window.is_some() {
                Role::Shared
            } else {
                Role::Sole
            };
            let t = StdInstant::now();
            let secured = r.secure(&guard, &info, role, role == Role::Sole).await;
            // The reservation's share of a Connect (the connect benchmark's laps stop before it).
            tracing::info!(
                VOLUME = id.as_str(),
                "volume {id}: reservation step of Connect took {:.1} ms",
                t.elapsed().as_secs_f64() * 1e3
            );
            if let Err(e) = secured {
                if attached_before {
                    // In use already: the routine check keeps trying, the bus shows why.
                    tracing::error!(VOLUME = id.as_str(), "{e}");
                } else {
                    tracing::error!(VOLUME = id.as_str(), "{e}: disconnecting it again");
                    self.undo_connect(conn, &info).await;
                }
                return Err(e.into());
            }
        }
        if let (Some(c), Some(w)) = (&self.claims, window) {
            crate::claims::window::open(c.clone(), Arc::new(self.volumes.clone()), id.clone(), w);
        }
        // The reply names the volume's object: it exists before the caller can ask it.
        self.sync_volume_object(conn, &info.volume_id).await;
        let shown = volumes::ClaimShown::of(self.claims.as_deref(), &id);
        let resv = volumes::ResvShown::of(self.resv.as_deref(), &id);
        Ok((
            info.device.clone(),
            volumes::info_dict(&info, &shown, &resv),
        ))
    }

    /// Disconnects a volume; succeeds if it is not connected. Root only; allowed while fenced.
    /// Options: `timeout_ms` (u/t).
    async fn disconnect(
        &self,
        volume_id: String,
        options: HashMap<String, OwnedVariant>,
        #[zbus(connection)] conn: &Connection,
        #[zbus(header)] header: Header<'_>,
    ) -> Result<(), Error> {
        require_root(conn, &header).await?;
        let timeout = crate::nvme::options::parse_disconnect(&volumes::to_options(options)?)
            .map_err(|e| Error::InvalidArgument(e.to_string()))?;
        crate::nvme::options::validate_volume_id(&volume_id)
            .map_err(|e| Error::InvalidArgument(e.to_string()))?;
        // Marked releasing first, so a Connect elsewhere waits for the handoff instead of
        // failing. Best effort: a Disconnect must work while the API server is away.
        if let Some(c) = &self.claims {
            if let Err(e) = c.begin_release(&volume_id).await {
                tracing::warn!(VOLUME = volume_id.as_str(), "{e}");
            }
        }
        let _busy = self.resv.as_ref().map(|r| r.busy(&volume_id));
        if let Some(r) = &self.resv {
            // Our key goes before the device: once it is gone no command reaches the target.
            let attached = self
                .volumes
                .list()
                .into_iter()
                .find(|v| v.volume_id == volume_id);
            if let Some(info) = attached {
                if let Err(e) = r.give_up(&info).await {
                    tracing::warn!(
                        VOLUME = volume_id.as_str(),
                        "{e}: disconnecting anyway (the next holder preempts the key)"
                    );
                }
            }
        }
        self.volumes.disconnect(&volume_id, timeout).await?;
        if let Some(c) = &self.claims {
            c.release(&volume_id).await.map_err(|e| {
                Error::Failed(format!("volume {volume_id} is disconnected, but its claim is not released yet ({e}): call Disconnect again"))
            })?;
        }
        // Gone from the bus when the caller hears so, as it appeared for `Connect`.
        self.sync_volume_object(conn, &volume_id).await;
        Ok(())
    }

    /// Volume claims (with the `kubernetes` backend): this node's, or with `all` every claim,
    /// as dictionaries: VolumeId, Name, Holder, Node, Epoch (t), Generation (i), Since,
    /// Releasing (b), HolderLease (what the holder's host lease looks like by this host's wall
    /// clock: a hint for people), HolderNode (present | gone | unknown: the holder's Node
    /// object), Migration ("to <holder> until <time>", or empty).
    async fn list_claims(&self, all: bool) -> Result<Vec<HashMap<String, OwnedVariant>>, Error> {
        let Some(c) = &self.claims else {
            return Err(Error::Failed(
                "claims need the kubernetes fence backend (this agent runs standalone: one host, nothing to claim)".into(),
            ));
        };
        let views = c.list(all).await?;
        Ok(views
            .into_iter()
            .map(|v| {
                let c = v.claim;
                let node = c.node().to_string();
                HashMap::from([
                    ("VolumeId".to_string(), var(c.volume_id)),
                    ("Name".to_string(), var(c.name)),
                    ("Holder".to_string(), var(c.holder)),
                    ("Node".to_string(), var(node)),
                    ("Epoch".to_string(), var(c.epoch)),
                    ("Generation".to_string(), var(c.generation)),
                    ("Since".to_string(), var(c.acquired.unwrap_or_default())),
                    ("Releasing".to_string(), var(c.releasing)),
                    ("HolderLease".to_string(), var(v.holder_lease.to_string())),
                    (
                        "HolderNode".to_string(),
                        var(match v.holder_node {
                            Some(true) => "present",
                            Some(false) => "gone",
                            None => "unknown",
                        }),
                    ),
                    (
                        "Migration".to_string(),
                        var(c.migration.as_ref().map_or_else(String::new, |m| {
                            format!("to {} until {}", m.holder, m.deadline)
                        })),
                    ),
                ])
            })
            .collect())
    }

    /// Every volume this agent holds, as dictionaries (see `Connect`).
    async fn list_volumes(&self) -> Vec<HashMap<String, OwnedVariant>> {
        self.volumes
            .list()
            .iter()
            .map(|i| {
                let shown = volumes::ClaimShown::of(self.claims.as_deref(), &i.volume_id);
                let resv = volumes::ResvShown::of(self.resv.as_deref(), &i.volume_id);
                volumes::info_dict(i, &shown, &resv)
            })
            .collect()
    }

    /// Starts an online snapshot job of `vg/lv` (idempotent per request id) and returns its
    /// object. Options: `size` (s, thick snapshots: "512M", "20%ORIGIN"), `keep` (b), `claim`
    /// (s, `namespace/name` of the PersistentVolumeClaim the origin backs: a failure becomes a
    /// Kubernetes Event on it). Root only; needs the fence.
    async fn start_snapshot(
        &self,
        request_id: String,
        vg: String,
        lv: String,
        options: HashMap<String, OwnedVariant>,
        #[zbus(connection)] conn: &Connection,
        #[zbus(header)] header: Header<'_>,
    ) -> Result<zbus::OwnedObjectPath, Error> {
        require_root(conn, &header).await?;
        let mut size = None;
        let mut keep = false;
        let mut claim = None;
        for (k, v) in volumes::to_options(options)? {
            use crate::nvme::options::OptValue;
            match (k.as_str(), v) {
                ("size", OptValue::Str(s)) => size = Some(s),
                ("keep", OptValue::Bool(b)) => keep = b,
                ("claim", OptValue::Str(s)) => {
                    claim = Some(s.parse::<crate::snapshot::PvcRef>()?);
                }
                (k, v) => {
                    return Err(Error::InvalidArgument(format!(
                        "{k}: StartSnapshot knows size (s), keep (b) and claim (s), found {v:?}"
                    )))
                }
            }
        }
        let req = crate::snapshot::StartRequest {
            request_id,
            vg,
            lv,
            size,
            keep,
            claim,
        };
        req.validate()?;
        let guard = self.fence.guard()?;
        let job = self.snapshots.start(&guard, req).await?;
        // The object exists before the caller gets its path.
        snapshots::ensure_published(conn, &self.snapshots, &job.request_id).await?;
        Ok(snapshots::job_path(&job.request_id))
    }

    /// Every snapshot job the agent remembers, as dictionaries.
    async fn list_snapshots(&self) -> Vec<HashMap<String, OwnedVariant>> {
        self.snapshots
            .list()
            .iter()
            .map(snapshots::job_dict)
            .collect()
    }

    /// Unmounts and removes a kept (`keep = true`) snapshot. Root only.
    async fn release(
        &self,
        request_id: String,
        #[zbus(connection)] conn: &Connection,
        #[zbus(header)] header: Header<'_>,
    ) -> Result<(), Error> {
        require_root(conn, &header).await?;
        self.snapshots.release(&request_id).await?;
        Ok(())
    }

    /// Every path of a volume is gone (its controllers were given up by the kernel).
    #[zbus(signal)]
    async fn volume_lost(
        emitter: &SignalEmitter<'_>,
        volume_id: &str,
        nqn: &str,
    ) -> zbus::Result<()>;

    /// Changes the log filter at run time (`info`, `debug`, `volfence=trace,zbus=warn`). Root only.
    async fn set_log_level(
        &self,
        level: String,
        #[zbus(connection)] conn: &Connection,
        #[zbus(header)] header: Header<'_>,
        #[zbus(signal_emitter)] emitter: SignalEmitter<'_>,
    ) -> Result<(), Error> {
        require_root(conn, &header).await?;
        self.log.set_level(&level).map_err(Error::InvalidArgument)?;
        tracing::info!("log level set to {level:?} over D-Bus");
        self.log_level_changed(&emitter).await?;
        Ok(())
    }

    /// Emitted on every fence state transition.
    #[zbus(signal, name = "FenceStateChanged")]
    async fn fence_transition(
        emitter: &SignalEmitter<'_>,
        state: &str,
        epoch: u64,
        message: &str,
    ) -> zbus::Result<()>;
}

/// Connects to the configured bus.
pub async fn connect(bus: &BusSpec) -> zbus::Result<Connection> {
    let builder = match bus {
        BusSpec::System => Builder::system(),
        BusSpec::Session => Builder::session(),
        BusSpec::Address(a) => Builder::address(a.as_str()),
    };
    builder.build().await
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// Talking to the bus failed.
    #[error("D-Bus: {0}")]
    Bus(#[from] zbus::Error),
    /// The name is owned by another process.
    #[error("the name {BUS_NAME} is already owned on this bus: is another volfenced running?")]
    NameTaken,
}

/// What the bus drives: the volumes with their claims and reservations, and the snapshots.
pub struct Served {
    pub volumes: Volumes,
    pub snapshots: Snapshots,
    /// None with the standalone backend.
    pub claims: Option<Arc<dyn VolumeClaims>>,
    /// None: no reservation command is sent.
    pub resv: Option<Arc<Reservations>>,
    /// None with the standalone backend.
    pub host_ids: Option<Arc<HostIdCheck>>,
}

/// Exports the objects, then claims the well-known name (so a caller that sees the name sees
/// the objects too).
pub async fn serve(
    conn: &Connection,
    info: AgentInfo,
    fence: Fence,
    log: Arc<dyn LogControl>,
    served: Served,
) -> Result<InterfaceRef<AgentIface>, ServeError> {
    let Served {
        volumes,
        snapshots,
        claims,
        resv,
        host_ids,
    } = served;
    let server = conn.object_server();
    server.at(MANAGER_PATH, zbus::fdo::ObjectManager).await?;
    let agent = Agent {
        info,
        fence,
        log,
        started: StdInstant::now(),
        volumes,
        volume_objects: volumes::VolumeObjects::new(claims.clone(), resv.clone()),
        snapshots,
        claims,
        resv,
        host_ids,
    };
    server.at(AGENT_PATH, ReadOnlyProps::new(agent)).await?;
    let reply = conn
        .request_name_with_flags(BUS_NAME, RequestNameFlags::DO_NOT_QUEUE)
        .await;
    match reply {
        Ok(RequestNameReply::PrimaryOwner) | Ok(RequestNameReply::AlreadyOwner) => {}
        Ok(_) | Err(zbus::Error::NameTaken) => return Err(ServeError::NameTaken),
        Err(e) => return Err(e.into()),
    }
    Ok(server.interface::<_, AgentIface>(AGENT_PATH).await?)
}

/// Publishes every fence transition as PropertiesChanged + `FenceStateChanged` until `shutdown`.
pub async fn publish_fence(
    iface: InterfaceRef<AgentIface>,
    mut rx: tokio::sync::broadcast::Receiver<FenceStatus>,
    shutdown: CancellationToken,
) -> zbus::Result<()> {
    use tokio::sync::broadcast::error::RecvError;
    loop {
        let now = tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            r = rx.recv() => match r {
                Ok(s) => s,
                Err(RecvError::Lagged(n)) => {
                    tracing::warn!("{n} fence transitions were not signalled (D-Bus too slow)");
                    continue;
                }
                Err(RecvError::Closed) => return Ok(()),
            },
        };
        let emitter = iface.signal_emitter();
        {
            let agent = iface.get().await;
            agent.fence_state_changed(emitter).await?;
            agent.epoch_changed(emitter).await?;
        }
        Agent::fence_transition(emitter, now.state.as_str(), now.epoch, &now.message).await?;
    }
}

/// Resolves when the agent can no longer be reached: the bus connection closed or the name was
/// taken away. Both are fatal: a daemon nobody can talk to must exit so systemd restarts it.
pub async fn watch_connection(conn: &Connection) -> String {
    use std::pin::Pin;
    use zbus::export::futures_core::Stream;
    let rule = zbus::MatchRule::builder()
        .msg_type(zbus::message::Type::Signal)
        .sender("org.freedesktop.DBus")
        .interface("org.freedesktop.DBus")
        .member("NameLost")
        .arg(0, BUS_NAME)
        .build();
    let rule = match rule {
        Ok(r) => r,
        Err(e) => return format!("cannot build the NameLost match rule: {e}"),
    };
    let mut stream = match zbus::MessageStream::for_match_rule(rule, conn, None).await {
        Ok(s) => s,
        Err(e) => return format!("cannot watch the bus: {e}"),
    };
    match std::future::poll_fn(|cx| Pin::new(&mut stream).poll_next(cx)).await {
        Some(Ok(_)) => format!("lost the bus name {BUS_NAME}"),
        Some(Err(e)) => format!("D-Bus connection failed: {e}"),
        None => "D-Bus connection closed".to_string(),
    }
}

/// Gives the name up before the process exits, so callers see "not running" at once.
pub async fn release(conn: &Connection) {
    if let Err(e) = conn.release_name(BUS_NAME).await {
        tracing::debug!("releasing {BUS_NAME}: {e}");
    }
}
