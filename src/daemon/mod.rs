//! The daemon's lifecycle: start the long-lived tasks, tell systemd when we are ready, supervise
//! them together (the first unexpected exit stops everything, non-zero, so systemd restarts us),
//! and shut down in order on SIGTERM/SIGINT within a bounded time.

use std::path::PathBuf;
use std::sync::Arc;

use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::broadcast;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::claims::{Claims, VolumeClaims};
use crate::cluster::{Cluster, KubeClaims, KubeLeases};
use crate::config::LeaseLossAction;
use crate::config::{FenceBackend, Settings};
use crate::dbus::{self, AgentInfo, LogControl};
use crate::fence::lease::KubeLease;
use crate::fence::record;
use crate::fence::standalone::FileLease;
use crate::fence::watchdog::Watchdog;
use crate::fence::{
    Acquired, BackendError, BoxedUnit, FenceLoop, Holder, LeaseBackend, LogOnlyLoss, LossHandler,
    Timing,
};
use crate::host::{Host, HostError};
use crate::lvm::LvmTools;
use crate::metrics::{self, Metrics};
use crate::nvme::hostid_check::HostIdCheck;
use crate::nvme::kernel::{NvmeFabrics, Uevent};
use crate::nvme::resv::service::Reservations;
use crate::nvme::resv::ReservationDevice;
use crate::nvme::{self, volumes::Volumes};
use crate::snapshot::mount::MountSyscalls;
use crate::snapshot::Snapshots;

pub mod notify;
mod tasks;

use notify::Notifier;

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// The NVMe host identity could not be read or written.
    #[error("NVMe host identity: {0}")]
    Identity(#[from] nvme::identity::IdentityError),
    /// Rebuilding the snapshot jobs from their records failed.
    #[error("recovering snapshot jobs: {0}")]
    Snapshots(#[from] crate::snapshot::SnapError),
    /// Rebuilding the volumes from records and sysfs failed.
    #[error("recovering NVMe volumes: {0}")]
    Volumes(#[from] nvme::volumes::NvmeError),
    /// The reservations could not be set up (the host ID is not a UUID).
    #[error("{0}")]
    Reservations(#[from] nvme::resv::ResvError),
    /// The host's identity files could not be read.
    #[error("cannot identify this host: {0}")]
    Host(#[from] HostError),
    /// The hardware watchdog cannot be used with this timing.
    #[error(transparent)]
    Watchdog(#[from] crate::fence::watchdog::WatchdogError),
    /// The Kubernetes client could not be set up.
    #[error(transparent)]
    Kube(#[from] crate::cluster::KubeError),
    /// A state or runtime directory could not be created.
    #[error("cannot create {}: {source}", path.display())]
    Directory {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The metrics endpoint could not start.
    #[error(transparent)]
    Metrics(#[from] metrics::MetricsError),
    /// The bus could not be reached or the name is taken.
    #[error(transparent)]
    Dbus(#[from] dbus::ServeError),
    /// Signal handlers could not be installed.
    #[error("cannot install signal handlers: {0}")]
    Signals(#[source] std::io::Error),
    /// A task that must run for the agent's whole life stopped.
    #[error("critical task {task} stopped: {reason}")]
    TaskDied { task: &'static str, reason: String },
    /// Shutdown did not finish in time.
    #[error("shutdown did not finish within {0:?}")]
    ShutdownTimeout(std::time::Duration),
}

/// Everything `run` needs, decided by `main`.
pub struct Options {
    pub settings: Settings,
    pub host: Host,
    pub config_files: Vec<PathBuf>,
    pub log: Arc<dyn LogControl>,
}

type TaskResult = (&'static str, Result<(), String>);

/// The configured backend, chosen at startup.
enum AnyLease {
    File(FileLease),
    Kube(Box<KubeLease<KubeLeases>>),
}

impl LeaseBackend for AnyLease {
    fn describe(&self) -> String {
        match self {
            AnyLease::File(b) => b.describe(),
            AnyLease::Kube(b) => b.describe(),
        }
    }
    async fn acquire(&mut self, after_loss: bool) -> Result<Acquired, BackendError> {
        match self {
            AnyLease::File(b) => b.acquire(after_loss).await,
            AnyLease::Kube(b) => b.acquire(after_loss).await,
        }
    }
    async fn renew(&mut self) -> Result<(), BackendError> {
        match self {
            AnyLease::File(b) => b.renew().await,
            AnyLease::Kube(b) => b.renew().await,
        }
    }
    async fn release(&mut self) {
        match self {
            AnyLease::File(b) => b.release().await,
            AnyLease::Kube(b) => b.release().await,
        }
    }
}

/// What the agent reaches besides files: the kernel's fabrics device, udev, LVM and mount(2).
/// [`Parts::system`] is the product's; integration tests start the same wiring with the
/// testkit's fake kernel, LVM and mount.
pub struct Parts {
    pub fabrics: Arc<dyn NvmeFabrics>,
    /// Where uevents arrive.
    pub uevents: broadcast::Sender<Uevent>,
    /// Whether the agent starts a netlink udev monitor feeding `uevents` (a fake kernel sends
    /// on the channel itself).
    pub udev_monitor: bool,
    pub lvm: Arc<dyn LvmTools>,
    pub mounter: Arc<dyn MountSyscalls>,
    /// Where NVMe reservation commands go.
    pub reservations: Arc<dyn ReservationDevice>,
}

impl Parts {
    /// The real kernel under `host`, the system's LVM tools and mount(2).
    pub fn system(host: &Host) -> Parts {
        Parts {
            fabrics: Arc::new(nvme::kernel::KernelFabrics::new(host.clone())),
            uevents: nvme::kernel::event_channel(),
            udev_monitor: true,
            lvm: Arc::new(crate::lvm::SystemLvm),
            mounter: Arc::new(crate::snapshot::mount::SystemMounter),
            reservations: Arc::new(nvme::resv::passthru::KernelReservations::new(host.clone())),
        }
    }
}

/// Runs the agent until SIGTERM/SIGINT (Ok) or a critical task dies (Err).
pub async fn run(opts: Options) -> Result<(), DaemonError> {
    let mut sigterm = signal(SignalKind::terminate()).map_err(DaemonError::Signals)?;
    let mut sigint = signal(SignalKind::interrupt()).map_err(DaemonError::Signals)?;
    let stop = async move {
        tokio::select! {
            _ = sigterm.recv() => "SIGTERM",
            _ = sigint.recv() => "SIGINT",
        }
    };
    let parts = Parts::system(&opts.host);
    run_with(opts, parts, stop).await
}

/// The agent's whole wiring over `parts`, until `stop` resolves (it names why: Ok) or a
/// critical task dies (Err).
pub async fn run_with(
    opts: Options,
    parts: Parts,
    stop: impl std::future::Future<Output = &'static str>,
) -> Result<(), DaemonError> {
    let Options {
        settings,
        host,
        config_files,
        log,
    } = opts;
    let Parts {
        fabrics,
        uevents,
        udev_monitor,
        lvm,
        mounter,
        reservations,
    } = parts;
    let notifier = Notifier::from_env();
    notifier.status("starting");
    if config_files.is_empty() {
        tracing::info!("no configuration file found: using the built-in defaults");
    } else {
        tracing::info!(
            "configuration from {}",
            config_files
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }

    let holder = Holder {
        node: settings.node.name.clone(),
        boot_id: host.boot_id()?,
    };
    let mut warnings = Vec::new();
    let state_dir = host.path(&settings.daemon.state_dir);
    let shutdown = CancellationToken::new();
    let mut tasks: JoinSet<TaskResult> = JoinSet::new();
    let metrics = Arc::new(Metrics::new());
    let mut cluster = None;
    let mut claims: Option<Arc<dyn VolumeClaims>> = None;
    let mut lease_peers = None;
    let backend = match settings.fence.backend {
        FenceBackend::Standalone => {
            let w = "standalone fence backend: the lease is a local file; NO cross-host fencing — use only on a single host or for development";
            tracing::warn!("{w}");
            warnings.push(w.to_string());
            AnyLease::File(FileLease::new(&state_dir, holder.clone()))
        }
        FenceBackend::Kubernetes => {
            let c = Cluster::new(&settings.kubernetes, &holder.node).await?;
            let f = &settings.fence;
            let (leases, watch) =
                KubeLeases::start(&c, &f.lease_namespace, f.lease_duration, f.observer_grace);
            let s = shutdown.clone();
            tasks.spawn(async move {
                tokio::select! {
                    _ = s.cancelled() => ("lease-watch", Ok(())),
                    reason = watch => ("lease-watch", Err(reason)),
                }
            });
            let store = KubeClaims::new(&c, &settings.claims.namespace, &holder.node);
            let held: Arc<dyn VolumeClaims> = Arc::new(
                Claims::new(
                    store.clone(),
                    leases.clone(),
                    holder.clone(),
                    settings.claims.handoff_wait,
                )
                .with_migration_timeout(settings.claims.migration_timeout)
                .with_metrics(metrics.clone()),
            );
            // This node's claims as the bus shows them (a migration joined from elsewhere).
            let sink = Arc::downgrade(&held);
            let watch = store.watch_mine(move |id, c| {
                if let Some(h) = sink.upgrade() {
                    h.observed(id, c);
                }
            });
            let s = shutdown.clone();
            tasks.spawn(async move {
                tokio::select! {
                    _ = s.cancelled() => ("claims-watch", Ok(())),
                    reason = watch => ("claims-watch", Err(reason)),
                }
            });
            claims = Some(held);
            cluster = Some(c);
            lease_peers = Some(leases.clone());
            let secs = i32::try_from(f.lease_duration.as_secs()).unwrap_or(i32::MAX);
            AnyLease::Kube(Box::new(KubeLease::new(
                leases,
                &f.lease_namespace,
                holder.clone(),
                secs,
            )))
        }
    };

    // Startup reconciliation: the directories the agent owns exist before anything is served.
    for dir in [&settings.daemon.state_dir, &settings.daemon.runtime_dir] {
        let path = host.path(dir);
        std::fs::create_dir_all(&path).map_err(|source| DaemonError::Directory { path, source })?;
    }

    let timing = Timing::from_settings(&settings.fence);
    if let Some(wd) = notifier.watchdog_interval() {
        // systemd wants a ping at least every WatchdogSec; the fence pings once per renew.
        if timing.renew_interval * 2 > wd {
            tracing::warn!("WatchdogSec={wd:?} is shorter than twice renew_interval ({:?}): systemd may kill a healthy agent", timing.renew_interval);
        }
    }
    let hw_watchdog = match &settings.fence.watchdog_device {
        Some(dev) => Some(Arc::new(Watchdog::new(&host.path(dev), &timing)?)),
        None => None,
    };
    let volumes = start_volumes(
        &host,
        &settings,
        (fabrics, uevents, udev_monitor),
        metrics.clone(),
        &mut warnings,
    )
    .await?;
    // One host ID per host in the cluster, checked through the host leases (labelled before
    // the fence writes its lease for the first time).
    let host_ids = lease_peers.map(|peers| {
        let hostid = &volumes.identity().hostid;
        peers.label_host_id(hostid);
        (Arc::new(HostIdCheck::new(hostid, &holder.node)), peers)
    });
    let (beat_notifier, beat_wd) = (notifier.clone(), hw_watchdog.clone());
    let (fence_loop, fence) = FenceLoop::new(
        backend,
        holder.clone(),
        timing,
        settings.fence.on_lease_loss,
        // The only liveness proof: a renew that succeeded.
        Box::new(move || {
            beat_notifier.watchdog();
            if let Some(wd) = &beat_wd {
                if let Err(e) = wd.feed() {
                    tracing::error!("{e}");
                }
            }
        }),
        Box::new(VolumeLoss(volumes.clone())),
    );
    let fence_loop = fence_loop.with_recorder(metrics.clone());
    let runtime_dir = host.path(&settings.daemon.runtime_dir);
    let fence_loop = match record::read(&runtime_dir, &holder.boot_id) {
        record::Previous::Lapsed { epoch } => {
            tracing::warn!(EPOCH = epoch, "the previous agent's holding (epoch {epoch}) lapsed while no agent ran: not resuming it, a new epoch will be taken");
            fence_loop.forbid_resume()
        }
        _ => fence_loop,
    };

    // Subscribed before the loop runs, so no transition is missed.
    let (signal_rx, status_rx) = (fence.transitions(), fence.transitions());
    let conn = dbus::connect(&settings.dbus)
        .await
        .map_err(dbus::ServeError::from)?;
    let info = AgentInfo {
        node: holder.node.clone(),
        fence_backend: settings.fence.backend.as_str().to_string(),
        bus: settings.dbus.to_string(),
        warnings,
        hardware_watchdog: hw_watchdog.is_some(),
    };
    let snapshots = Snapshots::new(
        host.clone(),
        crate::lvm::Lvm::new(lvm),
        mounter,
        settings.snapshots.clone(),
        &state_dir,
        fence.clone(),
        Some(metrics.clone()),
    );
    // Without Kubernetes (standalone fence) a failure is in the journal and on D-Bus only.
    let snapshots = match &cluster {
        Some(c) => snapshots.with_reporter(Arc::new(c.snapshot_reporter())),
        None => snapshots,
    };
    snapshots.recover().await?;
    if let Some(c) = &claims {
        // A crash between a Disconnect's device removal and its claim's release leaves a claim
        // without a device: release it before serving. The API server may be away: the
        // reconcile task tries again once the lease is held.
        crate::claims::reconcile::release_stale(c.as_ref(), &volumes).await;
        tasks.spawn(tasks::claims_reconcile(
            c.clone(),
            Arc::new(volumes.clone()),
            fence.subscribe(),
            fence.clone(),
            shutdown.clone(),
        ));
    }
    let resv = Arc::new(Reservations::new(
        reservations,
        &volumes.identity().hostid,
        settings.nvme.reservations,
        Some(metrics.clone()),
    )?);
    tasks.spawn({
        let (r, v, c, f, s) = (
            resv.clone(),
            volumes.clone(),
            claims.clone(),
            fence.clone(),
            shutdown.clone(),
        );
        async move {
            nvme::resv::keeper::run(r, v, c, f, s).await;
            ("reservation-check", Ok(()))
        }
    });
    if let Some((check, peers)) = &host_ids {
        tasks.spawn(tasks::host_id_check(
            check.clone(),
            peers.clone(),
            fence.subscribe(),
            shutdown.clone(),
        ));
    }
    let iface = dbus::serve(
        &conn,
        info,
        fence.clone(),
        log,
        dbus::Served {
            volumes: volumes.clone(),
            snapshots: snapshots.clone(),
            claims: claims.clone(),
            resv: Some(resv),
            host_ids: host_ids.map(|(c, _)| c),
        },
    )
    .await?;
    {
        let (c, sn, s) = (conn.clone(), snapshots.clone(), shutdown.clone());
        tasks.spawn(async move {
            (
                "dbus-jobs",
                dbus::snapshots::publish_jobs(c, sn, s)
                    .await
                    .map_err(|e| e.to_string()),
            )
        });
    }
    {
        let (c, v, a, s) = (
            conn.clone(),
            volumes.clone(),
            iface.clone(),
            shutdown.clone(),
        );
        tasks.spawn(async move {
            (
                "dbus-volumes",
                dbus::volumes::publish_volumes(c, v, a, s)
                    .await
                    .map_err(|e| e.to_string()),
            )
        });
    }
    {
        let (v, s) = (volumes.clone(), shutdown.clone());
        tasks.spawn(async move {
            v.watch(s).await;
            ("nvme-health", Ok(()))
        });
    }
    tracing::info!(
        NODE = holder.node.as_str(),
        "serving {} on the {} bus",
        dbus::BUS_NAME,
        settings.dbus
    );

    // After the name: a second agent should be told "another volfenced is running", not that
    // the metrics port is taken.
    if let Some(addr) = settings.metrics.listen {
        let listener = metrics::bind(addr).await?;
        let bound = listener.local_addr().unwrap_or(addr);
        tracing::info!("metrics on http://{bound}/metrics");
        let (m, s) = (metrics.clone(), shutdown.clone());
        tasks.spawn(async move {
            metrics::serve(listener, m, s).await;
            ("metrics", Ok(()))
        });
    }

    {
        let (c, s) = (conn.clone(), shutdown.clone());
        tasks.spawn(async move {
            tokio::select! {
                _ = s.cancelled() => ("dbus-connection", Ok(())),
                reason = dbus::watch_connection(&c) => ("dbus-connection", Err(reason)),
            }
        });
    }
    {
        let s = shutdown.clone();
        tasks.spawn(async move {
            fence_loop.run(s).await;
            ("fence", Ok(()))
        });
    }
    {
        let (rx, s) = (signal_rx, shutdown.clone());
        tasks.spawn(async move {
            (
                "dbus-publisher",
                dbus::publish_fence(iface, rx, s)
                    .await
                    .map_err(|e| e.to_string()),
            )
        });
    }
    tasks.spawn(tasks::status(
        status_rx,
        fence.status(),
        metrics.clone(),
        notifier.clone(),
        settings.dbus.to_string(),
        shutdown.clone(),
    ));
    tasks.spawn(tasks::validity_record(
        fence.subscribe(),
        runtime_dir.clone(),
        holder.boot_id.clone(),
        shutdown.clone(),
    ));

    // STATUS= lines come only from the status task, so READY cannot overwrite a newer one.
    notifier.ready();
    tracing::info!(
        "volfenced {} ready (node {}, pid {})",
        env!("CARGO_PKG_VERSION"),
        holder.node,
        std::process::id()
    );

    let outcome = tokio::select! {
        why = stop => { tracing::info!("{why}: shutting down"); Ok(()) }
        Some(done) = tasks.join_next() => {
            let (task, reason) = match done {
                Ok((task, Ok(()))) => (task, "exited".to_string()),
                Ok((task, Err(e))) => (task, e),
                Err(e) => ("unknown", e.to_string()),
            };
            tracing::error!("critical task {task} stopped ({reason}): shutting down so systemd can restart the agent");
            Err(DaemonError::TaskDied { task, reason })
        }
    };

    notifier.stopping();
    shutdown.cancel();
    let limit = settings.daemon.shutdown_timeout;
    let drained = tokio::time::timeout(limit, async {
        while let Some(done) = tasks.join_next().await {
            if let Ok((task, Err(e))) = done {
                tracing::warn!("{task} ended with an error during shutdown: {e}");
            }
        }
    })
    .await;
    if let Some(wd) = &hw_watchdog {
        wd.disarm();
    }
    dbus::release(&conn).await;
    outcome?;
    drained.map_err(|_| DaemonError::ShutdownTimeout(limit))?;
    tracing::info!("stopped");
    Ok(())
}

/// Host identity, the udev monitor and the volume manager, rebuilt from records and sysfs.
async fn start_volumes(
    host: &Host,
    settings: &Settings,
    (fabrics, events, udev_monitor): (Arc<dyn NvmeFabrics>, broadcast::Sender<Uevent>, bool),
    metrics: Arc<Metrics>,
    warnings: &mut Vec<String>,
) -> Result<Volumes, DaemonError> {
    let runtime_dir = host.path(&settings.daemon.runtime_dir);
    let (identity, nqn_from, id_from) = nvme::identity::load(host, &settings.nvme)?;
    tracing::info!(
        "NVMe host NQN {} ({nqn_from:?}), host ID {} ({id_from:?})",
        identity.hostnqn,
        identity.hostid
    );
    if udev_monitor {
        if let Err(e) = nvme::kernel::spawn_udev_monitor(events.clone()) {
            let w = format!(
                "no udev monitor ({e}): connects will wait until their deadline for devices"
            );
            tracing::error!("{w}");
            warnings.push(w);
        }
    }
    let volumes = Volumes::new(
        host.clone(),
        fabrics,
        events,
        identity,
        settings.nvme.clone(),
        runtime_dir,
        Some(metrics),
    );
    volumes.recover().await?;
    let n = volumes.list().len();
    if n > 0 && settings.fence.watchdog_device.is_none() {
        tracing::warn!("{n} volume(s) attached and no hardware watchdog configured (fence.watchdog_device): if this agent hangs, nothing stops their I/O when the lease runs out");
    }
    Ok(volumes)
}

/// `on_lease_loss`: "disconnect" deletes every controller this agent holds.
struct VolumeLoss(Volumes);

impl LossHandler for VolumeLoss {
    fn lease_lost(&self, epoch: u64, action: LeaseLossAction) -> BoxedUnit {
        let volumes = self.0.clone();
        Box::pin(async move {
            LogOnlyLoss.lease_lost(epoch, action).await;
            if action == LeaseLossAction::Disconnect {
                let n = volumes.list().len();
                tracing::warn!(EPOCH = epoch, "lease lost: disconnecting {n} volume(s)");
                volumes.disconnect_all().await;
            }
        })
    }
}
