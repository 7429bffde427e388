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
use crate::claims::{Recheck, VolumeClaims};
use crate::dbus;
use crate::fence::{record, Fence, FenceState, FenceStatus};
use crate::metrics::Metrics;
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

/// Releases this node's claims whose volume is not connected here (a crash after a device was
/// removed and before its claim was released). Logs what it could not do.
pub async fn release_stale_claims(claims: &dyn VolumeClaims, volumes: &Volumes) {
    let mine = match claims.mine().await {
        Ok(m) => m,
        Err(e) => {
            tracing::warn!("cannot list this node's claims yet: {e}");
            return;
        }
    };
    let connected: Vec<String> = volumes.list().into_iter().map(|v| v.volume_id).collect();
    for c in mine.iter().filter(|c| !connected.contains(&c.volume_id)) {
        match claims.release(&c.volume_id).await {
            Ok(_) => tracing::info!(
                VOLUME = c.volume_id.as_str(),
                "released the claim of volume {}: it is not connected on this host",
                c.volume_id
            ),
            Err(e) => tracing::warn!(VOLUME = c.volume_id.as_str(), "{e}"),
        }
    }
}

/// At every new holding (the first, and each after a loss): stale claims are released, and
/// every volume still connected keeps its claim in the new epoch — or, if another host holds it
/// now, is disconnected and reported, never taken back.
pub async fn claims_reconcile(
    claims: Arc<dyn VolumeClaims>,
    volumes: Volumes,
    mut rx: watch::Receiver<FenceStatus>,
    fence: Fence,
    shutdown: CancellationToken,
) -> TaskResult {
    let mut done_epoch = 0;
    loop {
        let st = rx.borrow_and_update().clone();
        if st.state == FenceState::Held && st.epoch != done_epoch {
            if let Ok(guard) = fence.guard() {
                release_stale_claims(claims.as_ref(), &volumes).await;
                let mut complete = true;
                for v in volumes.list() {
                    match claims.recheck(&guard, &v.volume_id).await {
                        Ok(Recheck::Kept(c)) => {
                            // A migration this host joined before it restarted: its window goes on.
                            if let Some(left) = claims.window_left(&c) {
                                crate::claims::window::open(
                                    claims.clone(),
                                    volumes.clone(),
                                    v.volume_id.clone(),
                                    left,
                                );
                            }
                        }
                        Ok(Recheck::Lost(_)) => {
                            volumes.report_lost(&v.volume_id);
                            if let Err(e) = volumes.disconnect(&v.volume_id, None).await {
                                tracing::error!(VOLUME = v.volume_id.as_str(), "{e}");
                            }
                        }
                        Err(e) => {
                            complete = false;
                            tracing::warn!(VOLUME = v.volume_id.as_str(), "{e}");
                        }
                    }
                }
                if complete {
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
