//! Snapshot jobs on the bus, udisks2's Job pattern: `StartSnapshot` returns a job object under
//! `/org/volfence/Agent1/jobs/`, which carries the phase and emits `Completed` once.

use std::collections::{HashMap, HashSet};

use tokio_util::sync::CancellationToken;
use zbus::message::Header;
use zbus::object_server::{InterfaceRef, SignalEmitter};
use zbus::{interface, Connection, OwnedObjectPath, OwnedVariant};

use super::{require_root, var, Error};
use crate::snapshot::job::Job;
use crate::snapshot::{JobEvent, SnapError, Snapshots};

pub const JOBS_PATH: &str = "/org/volfence/Agent1/jobs";

impl From<SnapError> for Error {
    fn from(e: SnapError) -> Self {
        let msg = e.to_string();
        match e {
            SnapError::Invalid(_) => Error::InvalidArgument(msg),
            SnapError::Lvm(
                crate::lvm::LvmError::BadName { .. } | crate::lvm::LvmError::BadSize(_),
            ) => Error::InvalidArgument(msg),
            SnapError::Lvm(crate::lvm::LvmError::NoSuchLv { .. }) | SnapError::NotFound(_) => {
                Error::DeviceNotFound(msg)
            }
            SnapError::NotFenced(_) => Error::NotFenced(msg),
            SnapError::Busy(_) => Error::Busy(msg),
            SnapError::Lvm(_) | SnapError::Mount(_) | SnapError::Host(_) => Error::Failed(msg),
        }
    }
}

pub fn job_path(id: &str) -> OwnedObjectPath {
    super::volumes::escaped_path(JOBS_PATH, id)
}

pub fn job_dict(j: &Job) -> HashMap<String, OwnedVariant> {
    let mut m = HashMap::new();
    m.insert("RequestId".into(), var(j.request_id.as_str()));
    m.insert(
        "ObjectPath".into(),
        var(job_path(&j.request_id).into_inner()),
    );
    m.insert("Vg".into(), var(j.vg.as_str()));
    m.insert("Lv".into(), var(j.lv.as_str()));
    m.insert("Snapshot".into(), var(j.snapshot.as_str()));
    m.insert("Mountpoint".into(), var(j.mountpoint.as_str()));
    m.insert("Phase".into(), var(j.phase().as_str()));
    m.insert("Message".into(), var(j.message.as_str()));
    m.insert("StartedAt".into(), var(j.started_at.as_str()));
    m.insert("FinishedAt".into(), var(j.finished_at.as_str()));
    m.insert("CowPercent".into(), var(j.cow_percent));
    m.insert("Keep".into(), var(j.keep));
    m.insert("Released".into(), var(j.released));
    m.insert("Thin".into(), var(j.size.is_none()));
    m.insert("Claim".into(), var(j.claim.as_deref().unwrap_or_default()));
    m
}

/// `org.volfence.Job1`.
pub struct JobObject {
    snapshots: Snapshots,
    id: String,
}

impl JobObject {
    fn job(&self) -> Option<Job> {
        self.snapshots.get(&self.id)
    }
}

#[interface(name = "org.volfence.Job1")]
impl JobObject {
    #[zbus(property(emits_changed_signal = "const"))]
    fn request_id(&self) -> String {
        self.id.clone()
    }
    #[zbus(property(emits_changed_signal = "const"))]
    fn vg(&self) -> String {
        self.job().map(|j| j.vg).unwrap_or_default()
    }
    #[zbus(property(emits_changed_signal = "const"))]
    fn lv(&self) -> String {
        self.job().map(|j| j.lv).unwrap_or_default()
    }
    #[zbus(property(emits_changed_signal = "const"))]
    fn snapshot(&self) -> String {
        self.job().map(|j| j.snapshot).unwrap_or_default()
    }
    #[zbus(property(emits_changed_signal = "const"))]
    fn mountpoint(&self) -> String {
        self.job().map(|j| j.mountpoint).unwrap_or_default()
    }
    /// pending | running | succeeded | failed
    #[zbus(property)]
    fn phase(&self) -> String {
        self.job()
            .map(|j| j.phase().as_str().to_string())
            .unwrap_or_default()
    }
    #[zbus(property)]
    fn message(&self) -> String {
        self.job().map(|j| j.message).unwrap_or_default()
    }
    #[zbus(property)]
    fn started_at(&self) -> String {
        self.job().map(|j| j.started_at).unwrap_or_default()
    }
    #[zbus(property)]
    fn finished_at(&self) -> String {
        self.job().map(|j| j.finished_at).unwrap_or_default()
    }
    /// COW use of a thick snapshot, percent.
    #[zbus(property)]
    fn cow_percent(&self) -> f64 {
        self.job().map(|j| j.cow_percent).unwrap_or_default()
    }
    #[zbus(property(emits_changed_signal = "const"))]
    fn keep(&self) -> bool {
        self.job().map(|j| j.keep).unwrap_or_default()
    }
    /// `namespace/name` of the PersistentVolumeClaim the origin backs, or "".
    #[zbus(property(emits_changed_signal = "const"))]
    fn claim(&self) -> String {
        self.job().and_then(|j| j.claim).unwrap_or_default()
    }

    /// Stops the job (it ends `failed`, "cancelled"). Root only.
    async fn cancel(
        &self,
        #[zbus(connection)] conn: &Connection,
        #[zbus(header)] header: Header<'_>,
    ) -> Result<(), Error> {
        require_root(conn, &header).await?;
        self.snapshots.cancel(&self.id)?;
        Ok(())
    }

    /// Once, when the job reaches a terminal phase.
    #[zbus(signal)]
    async fn completed(
        emitter: &SignalEmitter<'_>,
        success: bool,
        message: &str,
    ) -> zbus::Result<()>;
}

async fn emit_changes(
    iface: &InterfaceRef<super::ReadOnlyProps<JobObject>>,
    old: &Job,
    new: &Job,
) -> zbus::Result<()> {
    let e = iface.signal_emitter();
    let o = iface.get().await;
    if old.message != new.message {
        o.message_changed(e).await?;
    }
    if old.started_at != new.started_at {
        o.started_at_changed(e).await?;
    }
    if old.finished_at != new.finished_at {
        o.finished_at_changed(e).await?;
    }
    if old.cow_percent != new.cow_percent {
        o.cow_percent_changed(e).await?;
    }
    // Last: a client that reacts to the phase reads a message that goes with it.
    if old.phase() != new.phase() {
        o.phase_changed(e).await?;
    }
    Ok(())
}

/// Keeps one object per job in step with the manager until `shutdown`.
pub async fn publish_jobs(
    conn: Connection,
    snapshots: Snapshots,
    shutdown: CancellationToken,
) -> zbus::Result<()> {
    use tokio::sync::broadcast::error::RecvError;
    let mut rx = snapshots.subscribe();
    let server = conn.object_server();
    let mut shown: HashMap<String, Job> = HashMap::new();
    let mut sync_all = true;
    loop {
        let mut touched: HashSet<String> = HashSet::new();
        if sync_all {
            touched.extend(snapshots.list().into_iter().map(|j| j.request_id));
            sync_all = false;
        } else {
            let ev = tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                r = rx.recv() => r,
            };
            match ev {
                Ok(JobEvent::Changed(id)) => {
                    touched.insert(id);
                }
                Ok(JobEvent::Completed {
                    request_id,
                    success,
                    message,
                }) => {
                    sync_job(server, &snapshots, &mut shown, &request_id).await?;
                    if let Ok(iface) = server
                        .interface::<_, super::ReadOnlyProps<JobObject>>(job_path(&request_id))
                        .await
                    {
                        JobObject::completed(iface.signal_emitter(), success, &message).await?;
                    }
                    continue;
                }
                Err(RecvError::Lagged(_)) => {
                    sync_all = true;
                    continue;
                }
                Err(RecvError::Closed) => return Ok(()),
            }
        }
        for id in touched {
            sync_job(server, &snapshots, &mut shown, &id).await?;
        }
    }
}

async fn sync_job(
    server: &zbus::ObjectServer,
    snapshots: &Snapshots,
    shown: &mut HashMap<String, Job>,
    id: &str,
) -> zbus::Result<()> {
    let Some(now) = snapshots.get(id) else {
        return Ok(());
    };
    let path = job_path(id);
    match shown.remove(id) {
        None => export(server, snapshots, id).await?,
        Some(old) => {
            if let Ok(iface) = server
                .interface::<_, super::ReadOnlyProps<JobObject>>(&path)
                .await
            {
                emit_changes(&iface, &old, &now).await?;
            }
        }
    }
    shown.insert(id.to_string(), now);
    Ok(())
}

/// Exports a job's object now if the publisher has not yet (it skips ones that exist).
pub async fn ensure_published(
    conn: &Connection,
    snapshots: &Snapshots,
    id: &str,
) -> zbus::Result<()> {
    export(conn.object_server(), snapshots, id).await
}

/// Puts a job's object on the bus; one that is there already stays as it is.
async fn export(server: &zbus::ObjectServer, snapshots: &Snapshots, id: &str) -> zbus::Result<()> {
    let object = JobObject {
        snapshots: snapshots.clone(),
        id: id.to_string(),
    };
    server
        .at(job_path(id), super::ReadOnlyProps::new(object))
        .await
        .map(|_| ())
}
