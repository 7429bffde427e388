//! ReadWriteOnce across hosts: one claim per volume in the API server, stamped with the holder's
//! host-lease epoch. A Connect takes the claim first (a live holder elsewhere is a conflict, a
//! releasing one a short wait, a fenced one a takeover by the proven protocol); a Disconnect
//! marks it releasing, removes the device, then deletes it. docs/claims.md has the argument.
//!
//! The Kubernetes side ([`ClaimStore`]) is implemented by the Kubernetes room; nothing here
//! imports it.

pub mod protocol;
pub mod record;

use futures::future::BoxFuture;

pub use protocol::{Acquired, ClaimError, ClaimStore, ClaimView, Claims, HolderLease, Recheck};
pub use record::Claim;

use crate::fence::{FenceGuard, LeaseApi};

/// The claims as the D-Bus methods and the daemon use them, with their Events and log lines.
pub trait VolumeClaims: Send + Sync {
    fn acquire<'a>(
        &'a self,
        guard: &'a FenceGuard,
        volume_id: &'a str,
    ) -> BoxFuture<'a, Result<Acquired, ClaimError>>;
    fn begin_release<'a>(
        &'a self,
        volume_id: &'a str,
    ) -> BoxFuture<'a, Result<Option<Claim>, ClaimError>>;
    fn release<'a>(&'a self, volume_id: &'a str) -> BoxFuture<'a, Result<(), ClaimError>>;
    fn recheck<'a>(
        &'a self,
        guard: &'a FenceGuard,
        volume_id: &'a str,
    ) -> BoxFuture<'a, Result<Recheck, ClaimError>>;
    fn mine(&self) -> BoxFuture<'_, Result<Vec<Claim>, ClaimError>>;
    fn list(&self, all: bool) -> BoxFuture<'_, Result<Vec<ClaimView>, ClaimError>>;
}

impl<S: ClaimStore + 'static, L: LeaseApi + 'static> VolumeClaims for Claims<S, L> {
    fn acquire<'a>(
        &'a self,
        guard: &'a FenceGuard,
        volume_id: &'a str,
    ) -> BoxFuture<'a, Result<Acquired, ClaimError>> {
        Box::pin(async move {
            let got = Claims::acquire(self, guard, volume_id).await;
            if let Some(m) = self.metrics() {
                match &got {
                    Ok(Acquired::Taken(_)) => m.observe_claim("taken"),
                    Ok(Acquired::Reused(_)) => m.observe_claim("reused"),
                    Ok(Acquired::Restamped(_)) => m.observe_claim("restamped"),
                    Ok(Acquired::TakenOver { .. }) => m.observe_claim("taken_over"),
                    Err(ClaimError::Conflict { .. }) => m.observe_claim("conflict"),
                    Err(_) => {}
                }
            }
            match &got {
                Ok(Acquired::TakenOver {
                    from, from_epoch, ..
                }) => {
                    let msg = format!(
                        "volume {volume_id} taken over from {from} (epoch {from_epoch}), whose host lease expired, by {} (epoch {})",
                        guard.node(),
                        guard.epoch()
                    );
                    tracing::warn!(VOLUME = volume_id, EPOCH = guard.epoch(), "{msg}");
                    self.store()
                        .event(volume_id, "VolumeTakenOver", &msg, true)
                        .await;
                }
                Err(e @ ClaimError::Conflict { .. }) => {
                    let msg = format!("connect on {} refused: {e}", guard.node());
                    tracing::warn!(VOLUME = volume_id, "{msg}");
                    self.store()
                        .event(volume_id, "VolumeConflict", &msg, true)
                        .await;
                }
                _ => {}
            }
            got
        })
    }
    fn begin_release<'a>(
        &'a self,
        volume_id: &'a str,
    ) -> BoxFuture<'a, Result<Option<Claim>, ClaimError>> {
        Box::pin(Claims::begin_release(self, volume_id))
    }
    fn release<'a>(&'a self, volume_id: &'a str) -> BoxFuture<'a, Result<(), ClaimError>> {
        Box::pin(Claims::release(self, volume_id))
    }
    fn recheck<'a>(
        &'a self,
        guard: &'a FenceGuard,
        volume_id: &'a str,
    ) -> BoxFuture<'a, Result<Recheck, ClaimError>> {
        Box::pin(async move {
            let got = Claims::recheck(self, guard, volume_id).await;
            if let (Some(m), Ok(Recheck::Lost(_))) = (self.metrics(), &got) {
                m.observe_claim("lost");
            }
            if let Ok(Recheck::Lost(c)) = &got {
                let msg = format!(
                    "volume {volume_id} is held by {} (epoch {}) now: {} (epoch {}) disconnects it and does not take it back",
                    c.holder,
                    c.epoch,
                    guard.node(),
                    guard.epoch()
                );
                tracing::error!(VOLUME = volume_id, EPOCH = guard.epoch(), "{msg}");
                self.store()
                    .event(volume_id, "VolumeLost", &msg, true)
                    .await;
            }
            got
        })
    }
    fn mine(&self) -> BoxFuture<'_, Result<Vec<Claim>, ClaimError>> {
        Box::pin(Claims::mine(self))
    }
    fn list(&self, all: bool) -> BoxFuture<'_, Result<Vec<ClaimView>, ClaimError>> {
        Box::pin(Claims::list(self, all))
    }
}
