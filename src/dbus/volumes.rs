//! Volumes on the bus: `Connect`/`Disconnect`/`ListVolumes` on the agent, one
//! `org.volfence.Volume1` object per volume under `/org/volfence/Agent1/volumes/`, announced
//! through the ObjectManager, and `VolumeLost` when every path of a volume is gone.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use zbus::object_server::InterfaceRef;
use zbus::{interface, Connection, OwnedObjectPath, OwnedVariant, Variant};

use super::{var, Agent, Error};
use crate::claims::VolumeClaims;
use crate::nvme::options::OptValue;
use crate::nvme::resv::service::{Reservations, Support};
use crate::nvme::volumes::{NvmeError, VolumeEvent, VolumeInfo, Volumes};

pub const VOLUME_INTERFACE: &str = "org.volfence.Volume1";
pub const VOLUMES_PATH: &str = "/org/volfence/Agent1/volumes";

impl From<NvmeError> for Error {
    fn from(e: NvmeError) -> Self {
        let msg = e.to_string();
        match e {
            NvmeError::Invalid(_) => Error::InvalidArgument(msg),
            NvmeError::NotFenced(_) => Error::NotFenced(msg),
            NvmeError::Busy(_) => Error::Busy(msg),
            NvmeError::Timeout(_) => Error::Timeout(msg),
            NvmeError::NotFound(_) => Error::DeviceNotFound(msg),
            NvmeError::Auth(_) => Error::AuthenticationFailed(msg),
            NvmeError::Kernel { .. } | NvmeError::Host(_) => Error::Failed(msg),
        }
    }
}

/// `/org/volfence/Agent1/volumes/<id>`, with every byte outside `[A-Za-z0-9]` as `_xx` (hex),
/// as systemd escapes unit names in object paths.
pub fn volume_path(id: &str) -> OwnedObjectPath {
    escaped_path(VOLUMES_PATH, id)
}

/// `<base>/<id>` with `id` escaped for an object path.
pub fn escaped_path(base: &str, id: &str) -> OwnedObjectPath {
    let mut p = String::from(base);
    p.push('/');
    for b in id.bytes() {
        if b.is_ascii_alphanumeric() {
            p.push(b as char);
        } else {
            p.push_str(&format!("_{b:02x}"));
        }
    }
    OwnedObjectPath::try_from(p).expect("escaped paths are valid")
}

/// An `a{sv}` from the bus as checked-later option values; the key is named on a type error.
pub fn to_options(map: HashMap<String, OwnedVariant>) -> Result<BTreeMap<String, OptValue>, Error> {
    let mut out = BTreeMap::new();
    for (k, v) in map {
        let o = match &*v {
            Variant::Str(s) => OptValue::Str(s.to_string()),
            Variant::Bool(b) => OptValue::Bool(*b),
            Variant::U8(n) => OptValue::Int(i64::from(*n)),
            Variant::I16(n) => OptValue::Int(i64::from(*n)),
            Variant::U16(n) => OptValue::Int(i64::from(*n)),
            Variant::I32(n) => OptValue::Int(i64::from(*n)),
            Variant::U32(n) => OptValue::Int(i64::from(*n)),
            Variant::I64(n) => OptValue::Int(*n),
            Variant::U64(n) => OptValue::Int(i64::try_from(*n).unwrap_or(i64::MAX)),
            Variant::Array(a) => {
                let items: Option<Vec<String>> = a
                    .inner()
                    .iter()
                    .map(|x| match x {
                        Variant::Str(s) => Some(s.to_string()),
                        _ => None,
                    })
                    .collect();
                OptValue::StrList(items.ok_or_else(|| {
                    Error::InvalidArgument(format!("{k}: expected an array of strings (as)"))
                })?)
            }
            other => {
                return Err(Error::InvalidArgument(format!(
                "{k}: expected a string, integer, boolean or array of strings, found signature {}",
                other.value_signature()
            )))
            }
        };
        out.insert(k, o);
    }
    Ok(out)
}

/// What the bus shows of a volume's claim: holder, the holder's epoch, and a migration as
/// "to <node> until <time>" (this host is its source) or "from <node> until <time>".
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClaimShown {
    pub holder: String,
    pub epoch: u64,
    pub migration: String,
}

impl ClaimShown {
    pub fn of(claims: Option<&dyn VolumeClaims>, id: &str) -> ClaimShown {
        let Some(c) = claims.and_then(|c| c.held(id).map(|h| (c.node().to_string(), h))) else {
            return ClaimShown::default();
        };
        let (me, claim) = c;
        let migration = claim.migration.as_ref().map_or_else(String::new, |m| {
            if m.node() == me {
                format!("from {} until {}", claim.node(), m.deadline)
            } else {
                format!("to {} until {}", m.node(), m.deadline)
            }
        });
        ClaimShown {
            holder: claim.holder,
            epoch: claim.epoch,
            migration,
        }
    }
}

/// What the bus shows of a volume's reservation at the target (docs/fencing.md): whether the
/// namespace supports them (unknown | yes | no | off), this host's key (hex) and whether it is
/// registered, the holder ("" | "this host" | a host ID), the type, the other registrants' host
/// IDs, and why the last check did not end as the claim wants.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResvShown {
    pub support: String,
    pub key: String,
    pub registered: bool,
    pub holder: String,
    pub rtype: String,
    pub others: Vec<String>,
    pub problem: String,
}

impl ResvShown {
    pub fn of(resv: Option<&Reservations>, id: &str) -> ResvShown {
        let Some(r) = resv else {
            return ResvShown {
                support: Support::Off.as_str().into(),
                ..ResvShown::default()
            };
        };
        let v = r.view(id).unwrap_or_default();
        ResvShown {
            support: v.support.as_str().into(),
            key: if v.key == 0 {
                String::new()
            } else {
                format!("{:#018x}", v.key)
            },
            registered: v.registered,
            holder: v.holder,
            rtype: v.rtype.map_or("", |t| t.as_str()).into(),
            others: v.others,
            problem: v.problem,
        }
    }

    fn insert(&self, m: &mut HashMap<String, OwnedVariant>) {
        m.insert("ResvSupport".into(), var(self.support.as_str()));
        m.insert("ResvKey".into(), var(self.key.as_str()));
        m.insert("ResvRegistered".into(), var(self.registered));
        m.insert("ResvHolder".into(), var(self.holder.as_str()));
        m.insert("ResvType".into(), var(self.rtype.as_str()));
        m.insert("ResvOthers".into(), var(self.others.clone()));
        m.insert("ResvProblem".into(), var(self.problem.as_str()));
    }
}

/// A volume as an `a{sv}` (`Connect`'s reply, `ListVolumes`).
pub fn info_dict(
    i: &VolumeInfo,
    claim: &ClaimShown,
    resv: &ResvShown,
) -> HashMap<String, OwnedVariant> {
    let mut m = HashMap::new();
    resv.insert(&mut m);
    m.insert("ClaimHolder".into(), var(claim.holder.as_str()));
    m.insert("ClaimEpoch".into(), var(claim.epoch));
    m.insert("Migration".into(), var(claim.migration.as_str()));
    m.insert("VolumeId".into(), var(i.volume_id.as_str()));
    m.insert(
        "ObjectPath".into(),
        var(volume_path(&i.volume_id).into_inner()),
    );
    m.insert("Nqn".into(), var(i.nqn.as_str()));
    m.insert("Nsid".into(), var(i.nsid));
    m.insert("Uuid".into(), var(i.uuid.as_str()));
    m.insert("Nguid".into(), var(i.nguid.as_str()));
    m.insert("Device".into(), var(i.device.as_str()));
    m.insert("StablePath".into(), var(i.stable_path.as_str()));
    m.insert("SizeBytes".into(), var(i.size_bytes));
    m.insert("State".into(), var(i.state.as_str()));
    m.insert("Paths".into(), var(paths(i)));
    m.insert("Epoch".into(), var(i.epoch));
    m
}

fn paths(i: &VolumeInfo) -> Vec<(String, String, String)> {
    i.paths
        .iter()
        .map(|p| (p.controller.clone(), p.address.clone(), p.state.clone()))
        .collect()
}

/// `org.volfence.Volume1`: reads the manager's current view on every get.
pub struct VolumeObject {
    volumes: Volumes,
    claims: Option<Arc<dyn VolumeClaims>>,
    resv: Option<Arc<Reservations>>,
    id: String,
}

impl VolumeObject {
    fn info(&self) -> VolumeInfo {
        self.volumes.get(&self.id).unwrap_or_else(|| VolumeInfo {
            volume_id: self.id.clone(),
            nqn: String::new(),
            nsid: 0,
            uuid: String::new(),
            nguid: String::new(),
            device: String::new(),
            stable_path: String::new(),
            size_bytes: 0,
            state: crate::nvme::volumes::VolumeState::Disconnecting,
            paths: Vec::new(),
            epoch: 0,
        })
    }
}

#[interface(name = "org.volfence.Volume1")]
impl VolumeObject {
    #[zbus(property(emits_changed_signal = "const"))]
    fn volume_id(&self) -> String {
        self.id.clone()
    }
    #[zbus(property(emits_changed_signal = "const"))]
    fn nqn(&self) -> String {
        self.info().nqn
    }
    #[zbus(property)]
    fn nsid(&self) -> u32 {
        self.info().nsid
    }
    #[zbus(property)]
    fn uuid(&self) -> String {
        self.info().uuid
    }
    /// `/dev/nvmeXnY`; empty while the block device is gone.
    #[zbus(property)]
    fn device(&self) -> String {
        self.info().device
    }
    /// `/dev/disk/by-id/nvme-uuid.…`: the name to hand to a VM.
    #[zbus(property)]
    fn stable_path(&self) -> String {
        self.info().stable_path
    }
    #[zbus(property)]
    fn size_bytes(&self) -> u64 {
        self.info().size_bytes
    }
    /// connecting | live | degraded | reconnecting | dead | disconnecting
    #[zbus(property)]
    fn state(&self) -> String {
        self.info().state.as_str().to_string()
    }
    /// (controller, address, controller state) per path.
    #[zbus(property)]
    fn paths(&self) -> Vec<(String, String, String)> {
        paths(&self.info())
    }
    /// Fence epoch of the connect.
    #[zbus(property)]
    fn epoch(&self) -> u64 {
        self.info().epoch
    }
    /// The claim's holder, `<node>/<boot_id>` (empty without claims).
    #[zbus(property)]
    fn claim_holder(&self) -> String {
        ClaimShown::of(self.claims.as_deref(), &self.id).holder
    }
    /// The holder's host-lease epoch in the claim.
    #[zbus(property)]
    fn claim_epoch(&self) -> u64 {
        ClaimShown::of(self.claims.as_deref(), &self.id).epoch
    }
    /// A live migration in progress: "to <node> until <time>" or "from <node> until <time>".
    #[zbus(property)]
    fn migration(&self) -> String {
        ClaimShown::of(self.claims.as_deref(), &self.id).migration
    }
    /// Whether the namespace takes reservations: unknown | yes | no | off.
    #[zbus(property)]
    fn resv_support(&self) -> String {
        self.resv_shown().support
    }
    /// This host's reservation key in its current holding, hex ("" before the first check).
    #[zbus(property)]
    fn resv_key(&self) -> String {
        self.resv_shown().key
    }
    #[zbus(property)]
    fn resv_registered(&self) -> bool {
        self.resv_shown().registered
    }
    /// "" (nobody), "this host", or the holder's host ID.
    #[zbus(property)]
    fn resv_holder(&self) -> String {
        self.resv_shown().holder
    }
    /// The reservation's type (write-exclusive-registrants-only, ...), "" if none.
    #[zbus(property)]
    fn resv_type(&self) -> String {
        self.resv_shown().rtype
    }
    /// Host IDs of the other registrants.
    #[zbus(property)]
    fn resv_others(&self) -> Vec<String> {
        self.resv_shown().others
    }
    /// Why the last check did not end as the claim wants ("" if it did).
    #[zbus(property)]
    fn resv_problem(&self) -> String {
        self.resv_shown().problem
    }
}

impl VolumeObject {
    fn resv_shown(&self) -> ResvShown {
        ResvShown::of(self.resv.as_deref(), &self.id)
    }
}

/// One `PropertiesChanged` for a volume's reservation properties.
async fn emit_resv(
    iface: &InterfaceRef<super::ReadOnlyProps<VolumeObject>>,
    r: &ResvShown,
) -> zbus::Result<()> {
    let changed: HashMap<&str, Variant<'_>> = HashMap::from([
        ("ResvSupport", r.support.as_str().into()),
        ("ResvKey", r.key.as_str().into()),
        ("ResvRegistered", r.registered.into()),
        ("ResvHolder", r.holder.as_str().into()),
        ("ResvType", r.rtype.as_str().into()),
        ("ResvOthers", r.others.clone().into()),
        ("ResvProblem", r.problem.as_str().into()),
    ]);
    properties_changed(iface, changed).await
}

/// One `PropertiesChanged` for a volume's claim properties.
async fn emit_claim(
    iface: &InterfaceRef<super::ReadOnlyProps<VolumeObject>>,
    c: &ClaimShown,
) -> zbus::Result<()> {
    let changed: HashMap<&str, Variant<'_>> = HashMap::from([
        ("ClaimHolder", c.holder.as_str().into()),
        ("ClaimEpoch", c.epoch.into()),
        ("Migration", c.migration.as_str().into()),
    ]);
    properties_changed(iface, changed).await
}

/// One `PropertiesChanged` with every property that differs, so a watcher sees a change (a
/// connect ending: device, paths, state) at once and the bus carries one message, not eight.
async fn emit_changes(
    iface: &InterfaceRef<super::ReadOnlyProps<VolumeObject>>,
    old: &VolumeInfo,
    new: &VolumeInfo,
) -> zbus::Result<()> {
    let new_paths = paths(new);
    let mut changed: HashMap<&str, Variant<'_>> = HashMap::new();
    if old.nsid != new.nsid {
        changed.insert("Nsid", new.nsid.into());
    }
    if old.uuid != new.uuid {
        changed.insert("Uuid", new.uuid.as_str().into());
    }
    if old.device != new.device {
        changed.insert("Device", new.device.as_str().into());
    }
    if old.stable_path != new.stable_path {
        changed.insert("StablePath", new.stable_path.as_str().into());
    }
    if old.size_bytes != new.size_bytes {
        changed.insert("SizeBytes", new.size_bytes.into());
    }
    if old.state != new.state {
        changed.insert("State", new.state.as_str().into());
    }
    if old.paths != new.paths {
        changed.insert("Paths", Variant::from(&new_paths));
    }
    if old.epoch != new.epoch {
        changed.insert("Epoch", new.epoch.into());
    }
    if changed.is_empty() {
        return Ok(());
    }
    properties_changed(iface, changed).await
}

async fn properties_changed(
    iface: &InterfaceRef<super::ReadOnlyProps<VolumeObject>>,
    changed: HashMap<&str, Variant<'_>>,
) -> zbus::Result<()> {
    zbus::fdo::Properties::properties_changed(
        iface.signal_emitter(),
        zbus::names::InterfaceName::from_static_str_unchecked(VOLUME_INTERFACE),
        changed,
        std::borrow::Cow::Borrowed(&[]),
    )
    .await
}

/// The per-volume objects on the bus, with the view each was last published with. `Connect`
/// and the publisher both go through it, under one lock: `Connect` makes its volume's object
/// before it replies (the reply names it), the publisher follows every other change, and
/// neither can bring back an object the other has removed.
#[derive(Clone)]
pub struct VolumeObjects {
    shown: Arc<tokio::sync::Mutex<HashMap<String, VolumeInfo>>>,
    claims: Option<Arc<dyn VolumeClaims>>,
    resv: Option<Arc<Reservations>>,
}

impl VolumeObjects {
    pub fn new(
        claims: Option<Arc<dyn VolumeClaims>>,
        resv: Option<Arc<Reservations>>,
    ) -> VolumeObjects {
        VolumeObjects {
            shown: Arc::default(),
            claims,
            resv,
        }
    }

    /// Says that `id`'s reservation view changed, if its object is shown.
    pub async fn resv_changed(&self, server: &zbus::ObjectServer, id: &str) -> zbus::Result<()> {
        let _shown = self.shown.lock().await;
        if let Ok(iface) = server
            .interface::<_, super::ReadOnlyProps<VolumeObject>>(&volume_path(id))
            .await
        {
            emit_resv(&iface, &ResvShown::of(self.resv.as_deref(), id)).await?;
        }
        Ok(())
    }

    /// Says that `id`'s claim changed, if its object is shown.
    pub async fn claim_changed(&self, server: &zbus::ObjectServer, id: &str) -> zbus::Result<()> {
        let _shown = self.shown.lock().await;
        if let Ok(iface) = server
            .interface::<_, super::ReadOnlyProps<VolumeObject>>(&volume_path(id))
            .await
        {
            emit_claim(&iface, &ClaimShown::of(self.claims.as_deref(), id)).await?;
        }
        Ok(())
    }

    /// Makes the bus show what the manager has now for `ids` (every volume, shown or not, if
    /// `None`): objects added (InterfacesAdded), changed (one PropertiesChanged) or removed.
    pub async fn sync(
        &self,
        server: &zbus::ObjectServer,
        volumes: &Volumes,
        ids: Option<HashSet<String>>,
    ) -> zbus::Result<()> {
        let mut shown = self.shown.lock().await;
        let ids = ids.unwrap_or_else(|| {
            let mut all: HashSet<String> =
                volumes.list().into_iter().map(|i| i.volume_id).collect();
            all.extend(shown.keys().cloned());
            all
        });
        for id in ids {
            let path = volume_path(&id);
            match (volumes.get(&id), shown.remove(&id)) {
                (Some(now), None) => {
                    // Recorded first: an object added but not announced (the signal failed)
                    // is still removed with its volume.
                    shown.insert(id.clone(), now);
                    server
                        .at(
                            &path,
                            super::ReadOnlyProps::new(VolumeObject {
                                volumes: volumes.clone(),
                                claims: self.claims.clone(),
                                resv: self.resv.clone(),
                                id,
                            }),
                        )
                        .await?;
                }
                (Some(now), Some(old)) => {
                    if let Ok(iface) = server
                        .interface::<_, super::ReadOnlyProps<VolumeObject>>(&path)
                        .await
                    {
                        emit_changes(&iface, &old, &now).await?;
                    }
                    shown.insert(id, now);
                }
                (None, Some(_)) => {
                    server.remove::<VolumeObject, _>(&path).await?;
                }
                (None, None) => {}
            }
        }
        Ok(())
    }
}

/// Keeps the per-volume objects in step with the manager until `shutdown`.
pub async fn publish_volumes(
    conn: Connection,
    volumes: Volumes,
    agent: InterfaceRef<super::AgentIface>,
    shutdown: CancellationToken,
) -> zbus::Result<()> {
    use tokio::sync::broadcast::error::RecvError;
    let mut rx = volumes.subscribe();
    let server = conn.object_server();
    let objects = agent.get().await.volume_objects();
    let claims = agent.get().await.claims();
    // Without claims, a channel that never speaks.
    let (_quiet, quiet_rx) = tokio::sync::broadcast::channel(1);
    let mut claim_rx = claims.as_ref().map_or(quiet_rx, |c| c.subscribe());
    let (_quiet2, quiet_rx2) = tokio::sync::broadcast::channel(1);
    let mut resv_rx = objects.resv.as_ref().map_or(quiet_rx2, |r| r.subscribe());
    let mut sync_all = true;
    loop {
        if sync_all {
            objects.sync(server, &volumes, None).await?;
            sync_all = false;
            continue;
        }
        let ev = tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            r = rx.recv() => r,
            c = claim_rx.recv() => {
                match c {
                    Ok(id) => objects.claim_changed(server, &id).await?,
                    Err(RecvError::Lagged(_)) => sync_all = true,
                    Err(RecvError::Closed) => {}
                }
                continue;
            }
            r = resv_rx.recv() => {
                match r {
                    Ok(id) => objects.resv_changed(server, &id).await?,
                    Err(RecvError::Lagged(_)) => {
                        for v in volumes.list() {
                            objects.resv_changed(server, &v.volume_id).await?;
                        }
                    }
                    Err(RecvError::Closed) => {}
                }
                continue;
            }
        };
        match ev {
            Ok(VolumeEvent::Added(id) | VolumeEvent::Changed(id) | VolumeEvent::Removed(id)) => {
                objects
                    .sync(server, &volumes, Some(HashSet::from([id])))
                    .await?;
            }
            Ok(VolumeEvent::Lost { id, nqn }) => {
                Agent::volume_lost(agent.signal_emitter(), &id, &nqn).await?;
            }
            Err(RecvError::Lagged(_)) => sync_all = true,
            Err(RecvError::Closed) => return Ok(()),
        }
    }
}

/// Takes `migration_source` (a node name) out of `Connect`'s options: the claim's business,
/// not the kernel's. Refused where there are no claims to migrate, and for this node itself.
pub fn migration_source(
    options: &mut HashMap<String, OwnedVariant>,
    claims: Option<&dyn crate::claims::VolumeClaims>,
) -> Result<Option<String>, Error> {
    let Some(v) = options.remove("migration_source") else {
        return Ok(None);
    };
    let node = String::try_from(v).map_err(|_| {
        Error::InvalidArgument(
            "option migration_source: expected a string (the source node's name)".into(),
        )
    })?;
    if !crate::names::is_dns1123_subdomain(&node) {
        return Err(Error::InvalidArgument(format!(
            "option migration_source: expected a node name (lowercase DNS subdomain), found {node:?}"
        )));
    }
    // Without claims (the standalone backend) nothing is exclusive: nothing to join.
    let Some(c) = claims else {
        return Ok(None);
    };
    if node == c.node() {
        return Err(Error::InvalidArgument(format!(
            "option migration_source: {node} is this node; a migration is between two nodes"
        )));
    }
    Ok(Some(node))
}

/// Parses the `Connect` arguments into a request (errors name the key).
pub fn connect_request(
    volume_id: String,
    target: HashMap<String, OwnedVariant>,
    options: HashMap<String, OwnedVariant>,
) -> Result<crate::nvme::volumes::ConnectRequest, Error> {
    crate::nvme::options::validate_volume_id(&volume_id)
        .map_err(|e| Error::InvalidArgument(e.to_string()))?;
    let t = crate::nvme::options::parse_target(&to_options(target)?)
        .map_err(|e| Error::InvalidArgument(e.to_string()))?;
    let o = crate::nvme::options::parse_overrides(&to_options(options)?)
        .map_err(|e| Error::InvalidArgument(e.to_string()))?;
    Ok(crate::nvme::volumes::ConnectRequest {
        volume_id,
        target: t,
        overrides: o,
    })
}
