//! ReadWriteOnce across hosts: one claim per volume in the API server, stamped with the holder's
//! host-lease epoch. A Connect takes the claim first (a live holder elsewhere is a conflict, a
//! releasing one a short wait, a fenced one a takeover by the proven protocol); a Disconnect
//! marks it releasing, removes the device, then deletes it. docs/claims.md has the argument.
//!
//! The Kubernetes side ([`ClaimStore`]) is implemented by the Kubernetes room; nothing here
//! imports it.

pub mod local;
pub mod protocol;
pub mod reconcile;
pub mod record;
pub mod window;

use futures::future::BoxFuture;

pub use protocol::{
    Acquired, ClaimError, ClaimStore, ClaimView, Claims, HolderLease, Recheck, Released,
};
pub use record::Claim;

use crate::fence::{FenceGuard, LeaseApi};

/// The claims as the D-Bus methods and the daemon use them, with their Events and log lines.
pub trait VolumeClaims: Send + Sync {
    /// Takes the claim for a Connect; with `migration_source`, joins that node's claim as a
    /// live migration's destination.
    fn acquire<'a>(
        &'a self,
        guard: &'a FenceGuard,
        volume_id: &'a str,
        migration_source: Option<&'a str>,
    ) -> BoxFuture<'a, Result<Acquired, ClaimError>>;
    fn begin_release<'a>(
        &'a self,
        volume_id: &'a str,
    ) -> BoxFuture<'a, Result<Option<Claim>, ClaimError>>;
    fn release<'a>(&'a self, volume_id: &'a str) -> BoxFuture<'a, Result<Released, ClaimError>>;
    fn recheck<'a>(
        &'a self,
        guard: &'a FenceGuard,
        volume_id: &'a str,
    ) -> BoxFuture<'a, Result<Recheck, ClaimError>>;
    fn mine(&self) -> BoxFuture<'_, Result<Vec<Claim>, ClaimError>>;
    fn list(&self, all: bool) -> BoxFuture<'_, Result<Vec<ClaimView>, ClaimError>>;
    /// The claim as the server has it now (a consistent read).
    fn read<'a>(&'a self, volume_id: &'a str) -> BoxFuture<'a, Result<Option<Claim>, ClaimError>>;
    /// A migration's window ended with both hosts attached: this host (its destination) has
    /// disconnected; it leaves the claim to the source, with an Event.
    fn expire_migration<'a>(&'a self, volume_id: &'a str) -> BoxFuture<'a, Result<(), ClaimError>>;
    /// This node's name (the host lease's).
    fn node(&self) -> &str;
    /// What this host last knew of `volume_id`'s claim (for the bus, never for a decision).
    fn held(&self, volume_id: &str) -> Option<Claim>;
    /// Records what a read found (None: this host holds no part of it).
    fn observed(&self, volume_id: &str, claim: Option<Claim>);
    /// Volume ids whose [`VolumeClaims::held`] changed.
    fn subscribe(&self) -> tokio::sync::broadcast::Receiver<String>;
    /// Marks `volume_id`'s migration window open; false if it is open already.
    fn open_window(&self, volume_id: &str) -> bool;
    fn close_window(&self, volume_id: &str);
    /// When this host is `claim`'s migration destination: how long its window has left.
    fn window_left(&self, claim: &Claim) -> Option<std::time::Duration>;
}

impl<S: ClaimStore + 'static, L: LeaseApi + 'static> VolumeClaims for Claims<S, L> {
    fn acquire<'a>(
        &'a self,
        guard: &'a FenceGuard,
        volume_id: &'a str,
        migration_source: Option<&'a str>,
    ) -> BoxFuture<'a, Result<Acquired, ClaimError>> {
        Box::pin(async move {
            let got = Claims::acquire(self, guard, volume_id, migration_source).await;
            if let Some(m) = self.metrics() {
                match &got {
                    Ok(Acquired::Taken(_)) => m.observe_claim("taken"),
                    Ok(Acquired::Reused(_)) => m.observe_claim("reused"),
                    Ok(Acquired::Restamped(_)) => m.observe_claim("restamped"),
                    Ok(Acquired::TakenOver { .. }) => m.observe_claim("taken_over"),
                    Ok(Acquired::Joined { .. }) => {
                        m.observe_claim("joined");
                        m.observe_migration("joined");
                    }
                    Err(ClaimError::Conflict { .. }) => m.observe_claim("conflict"),
                    Err(ClaimError::Migration { .. }) => {
                        m.observe_claim("conflict");
                        m.observe_migration("refused");
                    }
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
                Ok(Acquired::Joined { claim, window }) => {
                    let msg = format!(
                        "volume {volume_id}: {} (epoch {}) joins the claim of {} (epoch {}) for a live migration, for at most {}s",
                        guard.node(),
                        guard.epoch(),
                        claim.holder,
                        claim.epoch,
                        window.as_secs()
                    );
                    tracing::info!(VOLUME = volume_id, EPOCH = guard.epoch(), "{msg}");
                    self.store()
                        .event(volume_id, "MigrationStarted", &msg, false)
                        .await;
                }
                Err(e @ (ClaimError::Conflict { .. } | ClaimError::Migration { .. })) => {
                    let msg = format!("connect on {} refused: {e}", guard.node());
                    tracing::warn!(VOLUME = volume_id, "{msg}");
                    self.store()
                        .event(volume_id, "VolumeConflict", &msg, true)
                        .await;
                }
                _ => {}
            }
            if let Ok(a) = &got {
                self.local().set(volume_id, Some(a.claim().clone()));
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
    fn release<'a>(&'a self, volume_id: &'a str) -> BoxFuture<'a, Result<Released, ClaimError>> {
        Box::pin(async move {
            let got = Claims::release(self, volume_id).await;
            if let Ok(Released::HandedOver { to }) = &got {
                let msg = format!(
                    "volume {volume_id}: the migration's source {} disconnected; {to} holds it alone now",
                    self.me().identity()
                );
                tracing::info!(VOLUME = volume_id, "{msg}");
                if let Some(m) = self.metrics() {
                    m.observe_migration("completed");
                }
                self.store()
                    .event(volume_id, "MigrationCompleted", &msg, false)
                    .await;
            }
            if let (Some(m), Ok(Released::Left { .. })) = (self.metrics(), &got) {
                m.observe_migration("left");
            }
            if got.is_ok() {
                self.local().set(volume_id, None);
            }
            got
        })
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
            match &got {
                Ok(Recheck::Kept(c)) => self.local().set(volume_id, Some(c.clone())),
                Ok(Recheck::Lost(_)) => self.local().set(volume_id, None),
                Err(_) => {}
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
    fn read<'a>(&'a self, volume_id: &'a str) -> BoxFuture<'a, Result<Option<Claim>, ClaimError>> {
        Box::pin(self.store().read(volume_id))
    }
    fn expire_migration<'a>(&'a self, volume_id: &'a str) -> BoxFuture<'a, Result<(), ClaimError>> {
        Box::pin(async move {
            if let Released::Left { holder } = Claims::release(self, volume_id).await? {
                let msg = format!(
                    "volume {volume_id}: the live migration to {} did not finish within its window; it disconnected and {holder} holds the volume alone",
                    self.me().identity()
                );
                tracing::warn!(VOLUME = volume_id, "{msg}");
                if let Some(m) = self.metrics() {
                    m.observe_migration("expired");
                }
                self.store()
                    .event(volume_id, "MigrationExpired", &msg, true)
                    .await;
            }
            self.local().set(volume_id, None);
            Ok(())
        })
    }
    fn node(&self) -> &str {
        &self.me().node
    }
    fn held(&self, volume_id: &str) -> Option<Claim> {
        self.local().get(volume_id)
    }
    fn observed(&self, volume_id: &str, claim: Option<Claim>) {
        self.local().set(volume_id, claim);
    }
    fn subscribe(&self) -> tokio::sync::broadcast::Receiver<String> {
        self.local().subscribe()
    }
    fn open_window(&self, volume_id: &str) -> bool {
        self.local().open_window(volume_id)
    }
    fn close_window(&self, volume_id: &str) {
        self.local().close_window(volume_id)
    }
    fn window_left(&self, claim: &Claim) -> Option<std::time::Duration> {
        claim
            .migration
            .as_ref()
            .filter(|m| m.node() == self.me().node)
            .map(|m| Claims::window_left(self, m))
    }
}
