//! Online snapshots of LVM volumes: snapshot, read-only mount, backup executor, cleanup; one job
//! per request id, persisted, with a phase machine that never goes backwards ([`job`]). The
//! rules for restarts are in docs/snapshots.md.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use crate::config::SnapshotSettings;
use crate::fence::{Fence, FenceError, FenceGuard};
use crate::host::records::RecordDir;
use crate::host::{Host, HostError};
use crate::lvm::{Lvm, LvmError, SnapSize};
use crate::metrics::Metrics;

pub mod executor;
pub mod job;
pub mod mount;
mod recovered;

use executor::ExecOutcome;
use job::{Job, Phase};
use mount::{MountError, MountSyscalls};

/// How often a thick snapshot's COW use is read while the executor runs (LVM has no event
/// for it; dmeventd itself polls).
pub const COW_INTERVAL: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum SnapError {
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Lvm(#[from] LvmError),
    #[error("not fenced: {0}")]
    NotFenced(#[from] FenceError),
    #[error("{0}")]
    Busy(String),
    #[error("{0}")]
    NotFound(String),
    #[error(transparent)]
    Mount(#[from] MountError),
    #[error(transparent)]
    Host(#[from] HostError),
}

/// A `StartSnapshot` request.
#[derive(Debug, Clone)]
pub struct StartRequest {
    pub request_id: String,
    pub vg: String,
    pub lv: String,
    /// Thick snapshot size (`"512M"`, `"20%ORIGIN"`); default from config; ignored for thin.
    pub size: Option<String>,
    pub keep: bool,
    /// The PersistentVolumeClaim the origin backs (`namespace/name`), if any.
    pub claim: Option<PvcRef>,
}

impl StartRequest {
    /// What can be said about a request without the LVM or the fence: callers check it before
    /// they take a guard, so a bad request is named as such whatever the fence state.
    pub fn validate(&self) -> Result<(), SnapError> {
        validate_request_id(&self.request_id)?;
        crate::lvm::validate_name("VG name", &self.vg)?;
        crate::lvm::validate_name("LV name", &self.lv)?;
        if let Some(size) = &self.size {
            SnapSize::parse(size)?;
        }
        Ok(())
    }
}

/// A PersistentVolumeClaim, named as `namespace/name`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PvcRef {
    pub namespace: String,
    pub name: String,
}

impl std::fmt::Display for PvcRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

impl std::str::FromStr for PvcRef {
    type Err = SnapError;
    fn from_str(s: &str) -> Result<PvcRef, SnapError> {
        let bad = |why: &str| SnapError::Invalid(format!("claim {s:?}: {why}"));
        let (ns, name) = s
            .split_once('/')
            .ok_or_else(|| bad("expected namespace/name of a PersistentVolumeClaim"))?;
        if !crate::names::is_dns1123_label(ns) {
            return Err(bad(&format!("namespace {ns:?} is not a DNS-1123 label (lowercase letters, digits and '-', at most 63, starting and ending with a letter or digit)")));
        }
        if !crate::names::is_dns1123_subdomain(name) {
            return Err(bad(&format!("name {name:?} is not a DNS-1123 subdomain (lowercase letters, digits, '-' and '.', at most 253, each dot-separated part starting and ending with a letter or digit)")));
        }
        Ok(PvcRef {
            namespace: ns.to_string(),
            name: name.to_string(),
        })
    }
}

/// A failed snapshot of a claimed volume, to be reported where its users look.
#[derive(Debug, Clone, PartialEq)]
pub struct FailureReport {
    pub claim: PvcRef,
    pub request_id: String,
    pub origin: String,
    pub message: String,
}

/// Records [`FailureReport`]s (the agent: a Kubernetes Event on the claim). `Err` is retried.
pub trait FailureReporter: Send + Sync {
    fn snapshot_failed(
        &self,
        report: FailureReport,
    ) -> futures::future::BoxFuture<'static, Result<(), String>>;
}

/// How long a failure report is retried (backing off up to a minute) before waiting for the
/// next start of the agent.
const REPORT_PATIENCE: Duration = Duration::from_secs(30 * 60);

#[derive(Debug, Clone, PartialEq)]
pub enum JobEvent {
    Changed(String),
    Completed {
        request_id: String,
        success: bool,
        message: String,
    },
}

struct Entry {
    job: Job,
    cancel: CancellationToken,
}

struct Inner {
    host: Host,
    lvm: Lvm,
    mounter: Arc<dyn MountSyscalls>,
    settings: SnapshotSettings,
    records: RecordDir,
    jobs: Mutex<BTreeMap<String, Entry>>,
    changes: broadcast::Sender<JobEvent>,
    metrics: Option<Arc<Metrics>>,
    fence: Fence,
    reporter: Option<Arc<dyn FailureReporter>>,
}

/// The job manager. Cheap to clone.
#[derive(Clone)]
pub struct Snapshots {
    inner: Arc<Inner>,
}

fn now() -> String {
    crate::time::rfc3339(std::time::SystemTime::now(), false)
}

/// Request ids name files and D-Bus objects: the volume-id rules.
pub(crate) fn validate_request_id(id: &str) -> Result<(), SnapError> {
    crate::nvme::options::validate_volume_id(id)
        .map_err(|e| SnapError::Invalid(e.to_string().replacen("volume_id", "request_id", 1)))
}

impl Snapshots {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        host: Host,
        lvm: Lvm,
        mounter: Arc<dyn MountSyscalls>,
        settings: SnapshotSettings,
        state_dir: &Path,
        fence: Fence,
        metrics: Option<Arc<Metrics>>,
    ) -> Snapshots {
        Snapshots {
            inner: Arc::new(Inner {
                host,
                lvm,
                mounter,
                settings,
                records: RecordDir::new(state_dir.join("snapshots")),
                jobs: Mutex::new(BTreeMap::new()),
                changes: broadcast::channel(256).0,
                metrics,
                fence,
                reporter: None,
            }),
        }
    }

    /// Reports failures of claimed volumes' snapshots through `reporter`. Before `recover`.
    pub fn with_reporter(mut self, reporter: Arc<dyn FailureReporter>) -> Snapshots {
        Arc::get_mut(&mut self.inner)
            .expect("with_reporter before the manager is shared")
            .reporter = Some(reporter);
        self
    }

    pub fn subscribe(&self) -> broadcast::Receiver<JobEvent> {
        self.inner.changes.subscribe()
    }

    pub fn list(&self) -> Vec<Job> {
        self.inner
            .jobs
            .lock()
            .unwrap()
            .values()
            .map(|e| e.job.clone())
            .collect()
    }

    pub fn get(&self, id: &str) -> Option<Job> {
        self.inner
            .jobs
            .lock()
            .unwrap()
            .get(id)
            .map(|e| e.job.clone())
    }

    fn persist(&self, job: &Job) -> Result<(), HostError> {
        self.inner.records.write(&job.request_id, job)
    }

    /// Applies `f` to the job and persists it, both under the lock; announces. The only way
    /// jobs change. Persisting under the lock keeps the disk in step with memory: two updates
    /// cannot reach the disk out of order, and what a reader sees is already on disk (a
    /// restart right after it finds the same).
    fn update<R>(&self, id: &str, f: impl FnOnce(&mut Job) -> R) -> Option<R> {
        let r = {
            let mut jobs = self.inner.jobs.lock().unwrap();
            let e = jobs.get_mut(id)?;
            let r = f(&mut e.job);
            if let Err(err) = self.persist(&e.job) {
                tracing::error!(REQUEST_ID = id, "persisting snapshot job: {err}");
            }
            r
        };
        let _ = self.inner.changes.send(JobEvent::Changed(id.to_string()));
        self.publish_phase_gauge();
        Some(r)
    }

    fn publish_phase_gauge(&self) {
        if let Some(m) = &self.inner.metrics {
            let jobs = self.inner.jobs.lock().unwrap();
            for p in [
                Phase::Pending,
                Phase::Running,
                Phase::Succeeded,
                Phase::Failed,
            ] {
                let n = jobs.values().filter(|e| e.job.phase() == p).count();
                m.snapshot_jobs
                    .get_or_create(&crate::metrics::StateLabel { state: p.as_str() })
                    .set(n as i64);
            }
        }
    }

    fn advance(&self, id: &str, to: Phase, message: &str) -> bool {
        let r = self.update(id, |j| j.advance(to, message, &now()));
        match r {
            Some(Ok(())) => {
                tracing::info!(
                    REQUEST_ID = id,
                    PHASE = to.as_str(),
                    "snapshot job {id}: {} ({message})",
                    to.as_str()
                );
                if to.is_terminal() {
                    let _ = self.inner.changes.send(JobEvent::Completed {
                        request_id: id.to_string(),
                        success: to == Phase::Succeeded,
                        message: message.to_string(),
                    });
                }
                if to == Phase::Failed {
                    self.spawn_report(id);
                }
                true
            }
            Some(Err(e)) => {
                tracing::warn!(REQUEST_ID = id, "{e}");
                false
            }
            None => false,
        }
    }

    /// Reports a failed job of a claimed volume, once: retried with backoff, marked in the
    /// record when done, so a restart retries only an unreported one.
    fn spawn_report(&self, id: &str) {
        let Some(reporter) = self.inner.reporter.clone() else {
            return;
        };
        let Some(job) = self.get(id) else { return };
        let Some(claim) = job.claim.as_deref() else {
            return;
        };
        if job.phase() != Phase::Failed || job.failure_reported {
            return;
        }
        let Ok(claim) = claim.parse::<PvcRef>() else {
            tracing::error!(
                REQUEST_ID = id,
                "snapshot job {id}: recorded claim {claim:?} is not namespace/name; no Event"
            );
            return;
        };
        let report = FailureReport {
            claim,
            request_id: id.to_string(),
            origin: job.origin(),
            message: job.message.clone(),
        };
        let me = self.clone();
        tokio::spawn(async move {
            let give_up = Instant::now() + REPORT_PATIENCE;
            let mut delay = Duration::from_secs(1);
            loop {
                match reporter.snapshot_failed(report.clone()).await {
                    Ok(()) => {
                        me.update(&report.request_id, |j| j.failure_reported = true);
                        return;
                    }
                    Err(e) if Instant::now() + delay < give_up => {
                        tracing::warn!(
                            REQUEST_ID = report.request_id.as_str(),
                            "reporting the failed snapshot on claim {}: {e}; retrying in {delay:?}",
                            report.claim
                        );
                        tokio::time::sleep(delay).await;
                        delay = (delay * 2).min(Duration::from_secs(60));
                    }
                    Err(e) => {
                        tracing::error!(REQUEST_ID = report.request_id.as_str(), "reporting the failed snapshot on claim {}: {e}; giving up until the agent starts again", report.claim);
                        return;
                    }
                }
            }
        });
    }

    async fn blocking<T: Send + 'static>(&self, f: impl FnOnce(Lvm) -> T + Send + 'static) -> T {
        let lvm = self.inner.lvm.clone();
        tokio::task::spawn_blocking(move || f(lvm))
            .await
            .expect("lvm task")
    }

    /// Starts a job, or returns the existing one for the same request id.
    pub async fn start(&self, guard: &FenceGuard, req: StartRequest) -> Result<Job, SnapError> {
        req.validate()?;
        if let Some(j) = self.get(&req.request_id) {
            if (j.vg.as_str(), j.lv.as_str()) != (req.vg.as_str(), req.lv.as_str()) {
                return Err(SnapError::Invalid(format!(
                    "request_id {:?} was already used for {}/{}; use a new request id",
                    req.request_id, j.vg, j.lv
                )));
            }
            return Ok(j);
        }
        if self.inner.settings.executor.is_empty() {
            return Err(SnapError::Invalid(
                "no backup executor configured (snapshots.executor in config.toml)".into(),
            ));
        }
        let size = req
            .size
            .clone()
            .unwrap_or_else(|| self.inner.settings.default_size.clone());
        SnapSize::parse(&size)?;
        guard.check()?;
        let (vg, lv) = (req.vg.clone(), req.lv.clone());
        let origin = self.blocking(move |l| l.get(&vg, &lv)).await?;
        if origin.is_thick_snapshot() || origin.name.starts_with(&self.inner.settings.name_prefix) {
            return Err(SnapError::Invalid(format!(
                "{}/{} is itself a snapshot",
                req.vg, req.lv
            )));
        }
        let snapshot = format!("{}{}", self.inner.settings.name_prefix, req.request_id);
        crate::lvm::validate_name("LV name", &snapshot).map_err(|e| {
            SnapError::Invalid(format!(
                "request_id {:?} makes a snapshot name LVM refuses: {e}",
                req.request_id
            ))
        })?;
        let mountpoint = self.inner.settings.mount_root.join(&snapshot);
        let mut job = Job::new(
            &req.request_id,
            &req.vg,
            &req.lv,
            &snapshot,
            &mountpoint.to_string_lossy(),
            (!origin.is_thin()).then_some(size),
            req.keep,
        );
        job.claim = req.claim.as_ref().map(PvcRef::to_string);
        {
            let mut jobs = self.inner.jobs.lock().unwrap();
            if let Some(j) = jobs.get(&req.request_id) {
                return Ok(j.job.clone()); // a concurrent identical request won
            }
            if let Some(busy) = jobs.values().find(|e| {
                e.job.origin() == job.origin()
                    && (!e.job.phase().is_terminal() || (e.job.keep && !e.job.released))
            }) {
                return Err(SnapError::Busy(format!(
                    "{} already has snapshot job {} ({}); one at a time per origin",
                    job.origin(),
                    busy.job.request_id,
                    if busy.job.phase().is_terminal() {
                        "kept until Release"
                    } else {
                        busy.job.phase().as_str()
                    }
                )));
            }
            // On disk first, under the lock, as every update: a job that cannot be recorded
            // (state directory full) is not started and leaves nothing behind, so a retry
            // with the same request id really starts it and the origin is not left Busy.
            self.persist(&job)?;
            jobs.insert(
                req.request_id.clone(),
                Entry {
                    job: job.clone(),
                    cancel: CancellationToken::new(),
                },
            );
        }
        let _ = self
            .inner
            .changes
            .send(JobEvent::Changed(req.request_id.clone()));
        self.spawn_run(req.request_id.clone(), guard.clone());
        Ok(job)
    }

    fn spawn_run(&self, id: String, guard: FenceGuard) {
        let me = self.clone();
        tokio::spawn(async move { me.run_job(&id, guard).await });
    }

    fn cancel_token(&self, id: &str) -> Option<CancellationToken> {
        self.inner
            .jobs
            .lock()
            .unwrap()
            .get(id)
            .map(|e| e.cancel.clone())
    }

    fn observe_step(&self, step: &'static str, since: Instant) {
        if let Some(m) = &self.inner.metrics {
            m.snapshot_step_seconds
                .get_or_create(&crate::metrics::OpLabel { op: step })
                .observe(since.elapsed().as_secs_f64());
        }
        tracing::info!(
            STEP = step,
            "snapshot step {step} took {:.3}s",
            since.elapsed().as_secs_f64()
        );
    }

    async fn run_job(&self, id: &str, guard: FenceGuard) {
        let Some(job) = self.get(id) else { return };
        if job.phase() != Phase::Pending
            || !self.advance(id, Phase::Running, "creating the snapshot")
        {
            return; // never a second run of one job
        }
        let cancel = self.cancel_token(id).unwrap_or_default();
        let result = self.steps(&job, &guard, &cancel).await;
        let (success, mut message) = match result {
            Ok(msg) => (true, msg),
            Err(msg) => (false, msg),
        };
        let keep = job.keep && success;
        if !keep {
            let t = Instant::now();
            if let Err(e) = self.cleanup(id).await {
                message = format!("{message}; cleanup failed: {e}");
            }
            self.observe_step("cleanup", t);
        } else {
            message = format!(
                "{message}; kept mounted at {} until Release",
                job.mountpoint
            );
        }
        self.advance(
            id,
            if success {
                Phase::Succeeded
            } else {
                Phase::Failed
            },
            &message,
        );
    }

    /// Create, mount, run. Ok(message) or Err(message); resources are recorded as they appear.
    async fn steps(
        &self,
        job: &Job,
        guard: &FenceGuard,
        cancel: &CancellationToken,
    ) -> Result<String, String> {
        let id = job.request_id.as_str();
        let fresh = guard.refresh().map_err(|e| e.to_string())?;
        let t = Instant::now();
        let size = job
            .size
            .as_deref()
            .map(SnapSize::parse)
            .transpose()
            .map_err(|e| e.to_string())?;
        let (vg, lv, snap) = (job.vg.clone(), job.lv.clone(), job.snapshot.clone());
        // Recorded before lvcreate: a crash in between leaves a record that points at it.
        self.update(id, |j| j.resources.snapshot_lv = true);
        self.blocking(move |l| l.create_snapshot(&fresh, &vg, &lv, &snap, size.as_ref()))
            .await
            .map_err(|e| e.to_string())?;
        self.observe_step("create", t);
        let (vg, snap) = (job.vg.clone(), job.snapshot.clone());
        let info = self
            .blocking(move |l| l.get(&vg, &snap))
            .await
            .map_err(|e| e.to_string())?;

        let fresh = guard.refresh().map_err(|e| e.to_string())?;
        let t = Instant::now();
        self.update(id, |j| j.message = "mounting".into());
        let fs = mount::probe(&self.inner.host, &info.path).map_err(|e| e.to_string())?;
        let root = self.inner.host.path(&self.inner.settings.mount_root);
        let target = mount::make_mount_point(&root, &job.snapshot).map_err(|e| e.to_string())?;
        self.update(id, |j| j.resources.mounted = true);
        let (m, dev, tgt) = (
            self.inner.mounter.clone(),
            self.inner.host.path(&info.path),
            target.clone(),
        );
        tokio::task::spawn_blocking(move || m.mount_ro(&fresh, &dev, &tgt, fs))
            .await
            .expect("mount task")
            .map_err(|e| {
                format!(
                    "mount {} ({}) on {}: {e}",
                    info.path,
                    fs.as_str(),
                    target.display()
                )
            })?;
        self.observe_step("mount", t);

        guard.refresh().map_err(|e| e.to_string())?;
        let values: BTreeMap<&str, String> = [
            // Where the files are for this process (the same path on a real host).
            ("mountpoint", target.to_string_lossy().into_owned()),
            ("vg", job.vg.clone()),
            ("lv", job.lv.clone()),
            ("snapshot", job.snapshot.clone()),
            ("request_id", job.request_id.clone()),
        ]
        .into();
        let argv = executor::substitute(&self.inner.settings.executor, &values)
            .map_err(|e| e.to_string())?;
        self.update(id, |j| j.message = "executor running".into());
        let t = Instant::now();
        let stop = self.stop_reasons(job, guard, cancel);
        let (me, rid) = (self.clone(), id.to_string());
        let outcome = executor::run(
            &argv,
            &self.inner.settings.executor_env,
            self.inner.settings.executor_timeout,
            id,
            &job.snapshot,
            stop,
            move |pid| {
                let (stamp, boot) = (me.inner.host.process(pid), me.inner.host.boot_id().ok());
                me.update(&rid, |j| {
                    j.resources.executor_pid = Some(pid);
                    j.resources.executor_stamp = stamp;
                    j.resources.executor_boot = boot;
                });
            },
        )
        .await
        .map_err(|e| format!("cannot start the executor {}: {e}", argv[0]))?;
        self.update(id, |j| {
            j.resources.executor_pid = None;
            j.resources.executor_stamp = None;
            j.resources.executor_boot = None;
        });
        self.observe_step("executor", t);
        match outcome {
            ExecOutcome::Exited(0) => Ok("executor succeeded".into()),
            ExecOutcome::Exited(c) => Err(format!("executor exited with status {c}")),
            ExecOutcome::Signalled(s) => Err(format!("executor killed by signal {s}")),
            ExecOutcome::TimedOut => Err(format!(
                "executor timed out after {}",
                crate::config::format_duration(self.inner.settings.executor_timeout)
            )),
            ExecOutcome::Stopped(why) => Err(why),
        }
    }

    /// Resolves with the reason the executor must stop: Cancel(), lease loss, or COW space.
    fn stop_reasons(
        &self,
        job: &Job,
        guard: &FenceGuard,
        cancel: &CancellationToken,
    ) -> impl std::future::Future<Output = String> + Send + 'static {
        let (me, guard, cancel, job) = (self.clone(), guard.clone(), cancel.clone(), job.clone());
        async move {
            let cow = async {
                if job.size.is_none() {
                    return std::future::pending::<String>().await; // thin: no COW area
                }
                let limit = f64::from(me.inner.settings.cow_abort_percent);
                let mut tick = tokio::time::interval(COW_INTERVAL);
                loop {
                    tick.tick().await;
                    let (vg, snap) = (job.vg.clone(), job.snapshot.clone());
                    let Ok(info) = me.blocking(move |l| l.get(&vg, &snap)).await else {
                        continue;
                    };
                    let used = info.data_percent.unwrap_or(0.0);
                    me.update(&job.request_id, |j| j.cow_percent = used);
                    if info.is_invalid() || used >= limit {
                        if let Some(m) = &me.inner.metrics {
                            m.snapshot_cow_aborts.inc();
                        }
                        return format!(
                            "snapshot space exhausted ({used:.1}% used, limit {limit}%)"
                        );
                    }
                }
            };
            tokio::select! {
                _ = cancel.cancelled() => "cancelled".to_string(),
                e = guard.until_lost() => format!("lease lost: {e}"),
                why = cow => why,
            }
        }
    }

    /// Unmounts (lazily only if a plain unmount fails, and says so) and removes the snapshot LV,
    /// recording each step so a restart continues where this stopped.
    async fn cleanup(&self, id: &str) -> Result<(), String> {
        let Some(job) = self.get(id) else {
            return Ok(());
        };
        let target = self.inner.host.path(&job.mountpoint);
        let mut notes = Vec::new();
        if job.resources.mounted || self.is_mounted(&job.mountpoint) {
            if self.is_mounted(&job.mountpoint) {
                let (m, t) = (self.inner.mounter.clone(), target.clone());
                let r = tokio::task::spawn_blocking(move || -> Result<bool, String> {
                    match m.umount(&t, false) {
                        Ok(()) => Ok(false),
                        Err(e) => {
                            tracing::warn!("unmount {}: {e}; detaching lazily", t.display());
                            m.umount(&t, true).map_err(|e2| {
                                format!("unmount {}: {e}; lazy unmount: {e2}", t.display())
                            })?;
                            Ok(true)
                        }
                    }
                })
                .await
                .expect("umount task");
                if r? {
                    notes.push(format!("{} was busy: detached lazily", job.mountpoint));
                }
            }
            mount::remove_mount_point(&target).map_err(|e| e.to_string())?;
            self.update(id, |j| j.resources.mounted = false);
        }
        if job.resources.snapshot_lv {
            let (vg, snap, origin) = (job.vg.clone(), job.snapshot.clone(), job.lv.clone());
            let r = self
                .blocking(move |l| match l.get(&vg, &snap) {
                    Ok(info) if info.is_our_snapshot_of(&origin) => {
                        l.remove(&vg, &snap).map(|_| true)
                    }
                    Ok(_) => Ok(false),
                    Err(LvmError::NoSuchLv { .. }) => Ok(true),
                    Err(e) => Err(e),
                })
                .await;
            if !r.map_err(|e| e.to_string())? {
                return Err(format!(
                    "{}/{} is not a snapshot of {} tagged {}: not removing it",
                    job.vg,
                    job.snapshot,
                    job.lv,
                    crate::lvm::SNAPSHOT_TAG
                ));
            }
            self.update(id, |j| j.resources.snapshot_lv = false);
        }
        if !notes.is_empty() {
            let n = notes.join("; ");
            tracing::warn!(REQUEST_ID = id, "{n}");
            self.update(id, |j| j.message = format!("{}; {n}", j.message));
        }
        Ok(())
    }

    fn is_mounted(&self, mountpoint: &str) -> bool {
        mount::mounts(&self.inner.host)
            .iter()
            .any(|m| m.mount_point == mountpoint)
    }

    /// Stops a running job (it ends `Failed`, "cancelled"); a pending one fails at once.
    pub fn cancel(&self, id: &str) -> Result<Job, SnapError> {
        let job = self
            .get(id)
            .ok_or_else(|| SnapError::NotFound(format!("no snapshot job {id:?}")))?;
        match job.phase() {
            Phase::Pending => {
                self.advance(id, Phase::Failed, "cancelled before it started");
            }
            Phase::Running => {
                if let Some(t) = self.cancel_token(id) {
                    t.cancel();
                }
            }
            _ => {}
        }
        Ok(self.get(id).expect("job exists"))
    }

    /// Ends a kept job's hold: unmount and remove its snapshot.
    pub async fn release(&self, id: &str) -> Result<Job, SnapError> {
        let job = self
            .get(id)
            .ok_or_else(|| SnapError::NotFound(format!("no snapshot job {id:?}")))?;
        if !job.phase().is_terminal() {
            return Err(SnapError::Busy(format!(
                "snapshot job {id} is {}; Release is for finished jobs",
                job.phase().as_str()
            )));
        }
        self.cleanup(id).await.map_err(SnapError::Invalid)?;
        self.update(id, |j| j.released = true);
        Ok(self.get(id).expect("job exists"))
    }

    /// Startup: reload jobs; `Running` without a live executor → `Failed` ("agent restarted") and
    /// cleanup; `Pending` resumes once the fence is held; leftovers (snapshot LVs with the name
    /// prefix, mounts under the mount root) that no job accounts for are removed.
    pub async fn recover(&self) -> Result<(), SnapError> {
        let settings = &self.inner.settings;
        let loaded = self
            .inner
            .records
            .load::<Job>(|stem, j| recovered::check(j, stem, settings).map_err(|e| e.to_string()))
            .into_iter()
            .map(|l| l.record);
        {
            let mut jobs = self.inner.jobs.lock().unwrap();
            for j in loaded {
                jobs.insert(
                    j.request_id.clone(),
                    Entry {
                        job: j,
                        cancel: CancellationToken::new(),
                    },
                );
            }
        }
        for job in self.list() {
            let id = job.request_id.clone();
            match job.phase() {
                Phase::Running => {
                    // Our executors die with us (own process group, killed on drop); one that
                    // survived a SIGKILL of the agent is stopped before cleanup, if it is
                    // provably still that process.
                    let boot = self.inner.host.boot_id().unwrap_or_default();
                    if let Some(pid) =
                        recovered::executor_still_running(&self.inner.host, &job.resources, &boot)
                    {
                        let _ = nix::sys::signal::killpg(
                            nix::unistd::Pid::from_raw(pid as i32),
                            nix::sys::signal::Signal::SIGKILL,
                        );
                    } else if let Some(pid) = job.resources.executor_pid {
                        tracing::info!(
                            REQUEST_ID = id.as_str(),
                            "executor pid {pid} of the interrupted job is gone (or is another process now): not signalled"
                        );
                    }
                    self.update(&id, |j| {
                        j.resources.executor_pid = None;
                        j.resources.executor_stamp = None;
                        j.resources.executor_boot = None;
                    });
                    let mut msg = "agent restarted while the job was running".to_string();
                    if let Err(e) = self.cleanup(&id).await {
                        msg = format!("{msg}; cleanup failed: {e}");
                    }
                    self.advance(&id, Phase::Failed, &msg);
                }
                Phase::Pending => {
                    let me = self.clone();
                    tokio::spawn(async move {
                        let mut rx = me.inner.fence.subscribe();
                        loop {
                            if let Ok(g) = me.inner.fence.guard() {
                                tracing::info!(
                                    REQUEST_ID = id.as_str(),
                                    "resuming pending snapshot job {id}"
                                );
                                me.run_job(&id, g).await;
                                return;
                            }
                            if rx.changed().await.is_err() {
                                return;
                            }
                        }
                    });
                }
                _ if job.keep && !job.released => {
                    tracing::info!(
                        REQUEST_ID = id.as_str(),
                        "snapshot job {id}: kept at {} until Release",
                        job.mountpoint
                    );
                }
                _ if job.resources.mounted || job.resources.snapshot_lv => {
                    if let Err(e) = self.cleanup(&id).await {
                        tracing::error!(REQUEST_ID = id.as_str(), "finishing cleanup: {e}");
                    }
                }
                _ => {}
            }
            if job.phase() == Phase::Failed {
                // Failed before the restart, and its Event may not have been recorded yet.
                self.spawn_report(&job.request_id);
            }
        }
        self.remove_leftovers().await;
        self.publish_phase_gauge();
        Ok(())
    }

    async fn remove_leftovers(&self) {
        let jobs = self.list();
        let accounted = |snap: &str| {
            jobs.iter().any(|j| {
                j.snapshot == snap && (!j.phase().is_terminal() || (j.keep && !j.released))
            })
        };
        let root = self
            .inner
            .settings
            .mount_root
            .to_string_lossy()
            .into_owned();
        for m in mount::mounts(&self.inner.host) {
            let Some(name) = m.mount_point.strip_prefix(&format!("{root}/")) else {
                continue;
            };
            if name.contains('/') || accounted(name) {
                continue;
            }
            tracing::warn!("leftover snapshot mount {}: unmounting", m.mount_point);
            let target = self.inner.host.path(&m.mount_point);
            let mounter = self.inner.mounter.clone();
            let t2 = target.clone();
            let r = tokio::task::spawn_blocking(move || {
                mounter
                    .umount(&t2, false)
                    .or_else(|_| mounter.umount(&t2, true))
            })
            .await;
            if let Ok(Err(e)) = r {
                tracing::error!("unmount {}: {e}", m.mount_point);
            }
            let _ = mount::remove_mount_point(&target);
        }
        let prefix = self.inner.settings.name_prefix.clone();
        let lvs = self.blocking(|l| l.list(None)).await;
        match lvs {
            Ok(lvs) => {
                for lv in lvs.into_iter().filter(|l| {
                    l.name.starts_with(&prefix)
                        && !l.origin.is_empty()
                        && l.is_our_snapshot_of(&l.origin)
                }) {
                    if accounted(&lv.name) {
                        continue;
                    }
                    tracing::warn!(
                        "leftover snapshot {}/{} (origin {}): removing",
                        lv.vg,
                        lv.name,
                        lv.origin
                    );
                    let (vg, name) = (lv.vg.clone(), lv.name.clone());
                    if let Err(e) = self.blocking(move |l| l.remove(&vg, &name)).await {
                        tracing::error!("{e}");
                    }
                }
            }
            Err(e) => tracing::warn!("looking for leftover snapshots: {e}"),
        }
    }
}
