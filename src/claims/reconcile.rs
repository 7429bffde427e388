//! Keeping this host's claims and its attached volumes in step: at startup (claims without a
//! device are released) and at every new holding (each attached volume keeps its claim in the
//! new epoch, or goes if another host holds it now). The daemon runs it on the real volumes;
//! the claims safety simulation on its own.

use std::sync::Arc;

use futures::future::BoxFuture;

use super::{window, Recheck, VolumeClaims};
use crate::fence::FenceGuard;

/// The volumes attached on this host, as the claims see them. Detaching is teardown: it runs
/// without the fence.
pub trait Attachments: Send + Sync {
    /// Ids of the volumes attached here.
    fn attached(&self) -> Vec<String>;
    /// Says `id` is lost to this host (signal, log), before it is detached.
    fn report_lost(&self, id: &str);
    fn detach<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<(), String>>;
}

/// Releases this node's claims whose volume is not attached here (a crash after a device was
/// removed and before its claim was released). Logs what it could not do.
pub async fn release_stale(claims: &dyn VolumeClaims, devices: &dyn Attachments) {
    let mine = match claims.mine().await {
        Ok(m) => m,
        Err(e) => {
            tracing::warn!("cannot list this node's claims yet: {e}");
            return;
        }
    };
    let attached = devices.attached();
    for c in mine.iter().filter(|c| !attached.contains(&c.volume_id)) {
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

/// At a new holding (`guard`'s): stale claims released, every attached volume re-checked — kept
/// (re-stamped; a migration's window goes on) or, when another host holds it now, reported and
/// detached, never taken back. False if some volume could not be decided (try again later).
pub async fn at_new_holding(
    claims: &Arc<dyn VolumeClaims>,
    devices: &Arc<dyn Attachments>,
    guard: &FenceGuard,
) -> bool {
    release_stale(claims.as_ref(), devices.as_ref()).await;
    let mut complete = true;
    for id in devices.attached() {
        match claims.recheck(guard, &id).await {
            Ok(Recheck::Kept(c)) => {
                if let Some(left) = claims.window_left(&c) {
                    window::open(claims.clone(), devices.clone(), id.clone(), left);
                }
            }
            Ok(Recheck::Lost(_)) => {
                devices.report_lost(&id);
                if let Err(e) = devices.detach(&id).await {
                    complete = false;
                    tracing::error!(VOLUME = id.as_str(), "{e}");
                }
            }
            Err(e) => {
                complete = false;
                tracing::warn!(VOLUME = id.as_str(), "{e}");
            }
        }
    }
    complete
}
