//! The daemon's own long-lived tasks (the others belong to their rooms), each named as the
//! supervisor reports it when it stops.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::broadcast::{self, error::RecvError};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::notify::Notifier;
use super::TaskResult;
use futures::future::BoxFuture;

use crate::claims::reconcile::{self, Attachments};
use crate::claims::VolumeClaims;
use crate::dbus;
use crate::fence::{record, Fence, FenceState, FenceStatus};
use crate::metrics::Metrics;
use crate::nvme::hostid_check::{HostIdCheck, HostIdPeers, RECHECK};
use crate::nvme::volumes::Volumes;

/// systemd's STATUS= and the fence metrics, from every fence transition. STATUS= lines come
/// only from here, so READY cannot overwrite a newer one.
pub async fn status(
    mut rx: broadcast::Receiver<FenceStatus>,
    first: FenceStatus,
    metrics: Arc<Metrics>,
    notifier: Notifier,
    bus: String,
    shutdown: CancellationToken,
) -> TaskResult {
    let mut prev = None;
    let mut st = first;
    loop {
        if prev != Some(st.state) {
            notifier.status(&format!(
                "fence {} (epoch {}): {}; D-Bus {} on {bus}",
                st.state,
                st.epoch,
                st.message,
                dbus::BUS_NAME
            ));
        }
        metrics.observe_fence(prev, &st);
        prev = Some(st.state);
        st = tokio::select! {
            _ = shutdown.cancelled() => return ("status", Ok(())),
            r = rx.recv() => match r {
                Ok(next) => next,
                Err(RecvError::Lagged(_)) => continue,
                Err(RecvError::Closed) => return ("status", Ok(())),
            },
        };
    }
}

/// Keeps the validity record current, so a restarted agent can tell whether its holding lapsed.
pub async fn validity_record(
    mut rx: watch::Receiver<FenceStatus>,
    runtime_dir: PathBuf,
    boot_id: String,
    shutdown: CancellationToken,
) -> TaskResult {
    // Written on every renew: a lasting fault (disk full) is one line a minute, not one per
    // renew. A missing record only makes a restarted agent take a new epoch.
    let mut throttle = crate::logging::Throttle::new(Duration::from_secs(60));
    loop {
        let st = rx.borrow_and_update().clone();
        if let Some(until) = st.valid_until {
            let left = until.saturating_duration_since(tokio::time::Instant::now());
            if let Err(e) = record::write(&runtime_dir, &boot_id, st.epoch, left) {
                if let Some(n) = throttle.due() {
                    tracing::warn!("{e} ({n} more failures since the last such line)");
                }
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return ("validity-record", Ok(())),
            r = rx.changed() => if r.is_err() { return ("validity-record", Ok(())) },
        }
    }
}

/// The real volumes as the claims see them (this is where the two rooms meet).
impl Attachments for Volumes {
    fn attached(&self) -> Vec<String> {
        self.list().into_iter().map(|v| v.volume_id).collect()
    }
    fn report_lost(&self, id: &str) {
        Volumes::report_lost(self, id);
    }
    fn detach<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move { self.disconnect(id, None).await.map_err(|e| e.to_string()) })
    }
}

/// At every new holding (the first, and each after a loss): stale claims are released, and
/// every volume still connected keeps its claim in the new epoch — or, if another host holds it
/// now, is disconnected and reported, never taken back.
pub async fn claims_reconcile(
    claims: Arc<dyn VolumeClaims>,
    devices: Arc<dyn Attachments>,
    mut rx: watch::Receiver<FenceStatus>,
    fence: Fence,
    shutdown: CancellationToken,
) -> TaskResult {
    let mut done_epoch = 0;
    loop {
        let st = rx.borrow_and_update().clone();
        if st.state == FenceState::Held && st.epoch != done_epoch {
            if let Ok(guard) = fence.guard() {
                if reconcile::at_new_holding(&claims, &devices, &guard).await {
                    done_epoch = guard.epoch();
                }
            }
        }
        // Not complete: try again at the next fence change (every renew changes validity).
        tokio::select! {
            _ = shutdown.cancelled() => return ("claims-reconcile", Ok(())),
            r = rx.changed() => if r.is_err() { return ("claims-reconcile", Ok(())) },
        }
    }
}

/// Whether another live host has this host's NVMe host ID: a consistent list at every new
/// holding (this host's lease carries the label by then), the cache's every RECHECK after it.
/// A failed list is tried again at the next fence change (every renew is one).
pub async fn host_id_check<P: HostIdPeers>(
    check: Arc<HostIdCheck>,
    peers: P,
    mut rx: watch::Receiver<FenceStatus>,
    shutdown: CancellationToken,
) -> TaskResult {
    let mut done_epoch = 0;
    let mut next = tokio::time::Instant::now() + RECHECK;
    let mut failing = false;
    loop {
        let st = rx.borrow_and_update().clone();
        let held = st.state == FenceState::Held;
        let due = tokio::time::Instant::now() >= next;
        if held && (st.epoch != done_epoch || due) {
            match check.run(&peers, st.epoch != done_epoch).await {
                Ok(()) => {
                    done_epoch = st.epoch;
                    next = tokio::time::Instant::now() + RECHECK;
                    failing = false;
                }
                Err(e) if !std::mem::replace(&mut failing, true) => {
                    tracing::warn!(
                        "cannot list the leases with NVMe host ID {}: {e}; trying again",
                        check.host_id()
                    );
                }
                Err(_) => {}
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return ("host-id-check", Ok(())),
            r = rx.changed() => if r.is_err() { return ("host-id-check", Ok(())) },
            _ = tokio::time::sleep_until(next) => {}
        }
    }
}
