//! The fence: a per-host lease whose validity is tracked on the monotonic clock only, and the
//! [`FenceGuard`] every device operation must hold. Nothing outside this module can make a guard,
//! and the kernel seam's calls that give access to a device take one (`Fabrics::connect`,
//! `LvmRunner::lvcreate`, `Mounter::mount_ro`; teardown is on the `*Teardown` traits), so "touch
//! a device without the fence" does not compile.
//!
//! Timing (D = lease duration, R = renew interval, M = safety margin): after a successful renew the
//! lease is valid until `instant the request was sent + D − M`. A renew that fails, times out or is
//! refused extends nothing. When validity runs out the fence turns `fenced`: no new guards, every
//! outstanding guard is cancelled, and the configured loss action runs.

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::{FenceSettings, LeaseLossAction};

pub mod lease;
pub mod observer;
pub mod record;
pub mod standalone;
pub mod takeover;
pub mod watchdog;

pub use lease::{ApiError, LeaseApi, LeaseRecord};

/// What the fence is doing, as shown on D-Bus (`FenceState`) and in metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FenceState {
    /// Trying to obtain the lease; no guards.
    Acquiring,
    /// Lease valid and the last renew succeeded.
    Held,
    /// Lease still valid, but the last renew failed: guards still granted until validity ends.
    Expiring,
    /// Validity ran out; guards cancelled; the loss action ran. Acquiring again from here.
    Fenced,
    /// Someone else holds what this host should hold (same node name, or a second agent).
    Conflict,
}

impl FenceState {
    pub const ALL: [FenceState; 5] = [
        FenceState::Acquiring,
        FenceState::Held,
        FenceState::Expiring,
        FenceState::Fenced,
        FenceState::Conflict,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            FenceState::Acquiring => "acquiring",
            FenceState::Held => "held",
            FenceState::Expiring => "expiring",
            FenceState::Fenced => "fenced",
            FenceState::Conflict => "conflict",
        }
    }
}

impl fmt::Display for FenceState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A snapshot of the fence, published on every change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FenceStatus {
    pub state: FenceState,
    /// Fencing token of the current (or last) holding; 0 before the first acquisition.
    pub epoch: u64,
    /// End of local validity; `None` when no guard can be granted.
    pub valid_until: Option<Instant>,
    /// Human-readable reason for the current state.
    pub message: String,
}

impl FenceStatus {
    /// Milliseconds of validity left, 0 if none.
    pub fn valid_for(&self, now: Instant) -> Duration {
        self.valid_until
            .map_or(Duration::ZERO, |v| v.saturating_duration_since(now))
    }
}

/// Why a guard could not be given or is no longer good.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FenceError {
    /// The lease is not held (state given).
    #[error("the host lease is not held (fence state {state}): device operations are refused")]
    NotHeld { state: FenceState },
    /// The guard's deadline passed (validity ran out while the operation was running).
    #[error("fence guard for epoch {epoch} expired: the lease was not renewed in time")]
    Expired { epoch: u64 },
    /// The lease was lost and the guard cancelled.
    #[error("fence guard for epoch {epoch} was cancelled: the lease was lost")]
    Cancelled { epoch: u64 },
}

/// Failures of a lease backend.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BackendError {
    /// Another holder owns the lease; retrying later may succeed.
    #[error("lease held by {holder}")]
    HeldByOther { holder: String },
    /// A configuration problem that waiting will not fix (two hosts with one node name, …).
    #[error("conflict: {0}")]
    Conflict(String),
    /// The lease is ours no more (taken over, replaced).
    #[error("lease lost: {0}")]
    Lost(String),
    /// The backend could not be reached or answered with an error; retry.
    #[error("{0}")]
    Unavailable(String),
    /// The backend is still starting (its watch has not listed yet): retry, nothing is wrong.
    #[error("{0}")]
    NotReady(String),
}

/// The outcome of a successful acquire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Acquired {
    pub epoch: u64,
    /// True when this incarnation already held it (agent restart, same boot): same epoch.
    pub resumed: bool,
}

/// Where the lease lives (a file for `standalone`, a Kubernetes Lease for `kubernetes`).
pub trait LeaseBackend: Send {
    /// Short description for logs and `Status()` (e.g. "file /var/lib/volfence/fence.lock").
    fn describe(&self) -> String;
    /// Takes or resumes the lease. `after_loss`: this incarnation lost it before, so resuming the
    /// old epoch is not allowed.
    fn acquire(
        &mut self,
        after_loss: bool,
    ) -> impl std::future::Future<Output = Result<Acquired, BackendError>> + Send;
    /// Extends the lease. Must fail (not block forever) when the backend is unreachable.
    fn renew(&mut self) -> impl std::future::Future<Output = Result<(), BackendError>> + Send;
    /// Gives the lease up on orderly shutdown (best effort).
    fn release(&mut self) -> impl std::future::Future<Output = ()> + Send;
}

/// Identity of this holder incarnation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    pub node: String,
    pub boot_id: String,
}

impl Holder {
    /// `holderIdentity` as written to the lease: `<node>/<boot_id>`.
    pub fn identity(&self) -> String {
        format!("{}/{}", self.node, self.boot_id)
    }
}

/// Timing of the lease protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    pub lease_duration: Duration,
    pub renew_interval: Duration,
    pub safety_margin: Duration,
}

impl Timing {
    pub fn from_settings(s: &FenceSettings) -> Timing {
        Timing {
            lease_duration: s.lease_duration,
            renew_interval: s.renew_interval,
            safety_margin: s.safety_margin,
        }
    }

    /// Local validity after a renew sent at `sent`.
    pub fn valid_until(&self, sent: Instant) -> Instant {
        sent + self.lease_duration - self.safety_margin
    }
}

/// The proof that the lease was valid when it was taken. No public constructor: only
/// [`Fence::guard`] makes one. Device functions take `&FenceGuard`.
#[derive(Clone)]
pub struct FenceGuard {
    node: String,
    incarnation: String,
    epoch: u64,
    deadline: Instant,
    cancel: CancellationToken,
    fence: Fence,
}

impl fmt::Debug for FenceGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FenceGuard")
            .field("node", &self.node)
            .field("epoch", &self.epoch)
            .field("deadline", &self.deadline)
            .finish()
    }
}

impl FenceGuard {
    pub fn node(&self) -> &str {
        &self.node
    }
    /// The boot id of the holder incarnation.
    pub fn incarnation(&self) -> &str {
        &self.incarnation
    }
    pub fn epoch(&self) -> u64 {
        self.epoch
    }
    /// Instant after which this guard is worthless.
    pub fn deadline(&self) -> Instant {
        self.deadline
    }
    /// Call before each step that touches a device.
    pub fn check(&self) -> Result<(), FenceError> {
        if self.cancel.is_cancelled() {
            return Err(FenceError::Cancelled { epoch: self.epoch });
        }
        if Instant::now() >= self.deadline {
            return Err(FenceError::Expired { epoch: self.epoch });
        }
        Ok(())
    }
    /// A fresh guard for the same holding, if the lease is still valid in this epoch. Long
    /// operations (a connect waiting for udev, a backup) take one before each step: a guard's own
    /// deadline is the validity at the moment it was issued, shorter than the operation.
    pub fn refresh(&self) -> Result<FenceGuard, FenceError> {
        let g = self.fence.guard()?;
        if g.epoch != self.epoch || self.cancel.is_cancelled() {
            return Err(FenceError::Cancelled { epoch: self.epoch });
        }
        Ok(g)
    }

    /// Resolves when this holding ends: the lease was lost (the fence cancels every guard of the
    /// epoch), or at a guard's deadline the lease could not be shown valid any more. Race long
    /// waits against it; unlike [`Self::invalidated`] it follows renewals.
    pub async fn until_lost(&self) -> FenceError {
        let mut g = self.clone();
        loop {
            tokio::select! {
                _ = g.cancel.cancelled() => return FenceError::Cancelled { epoch: self.epoch },
                _ = tokio::time::sleep_until(g.deadline) => match g.refresh() {
                    Ok(next) => g = next,
                    Err(e) => return e,
                },
            }
        }
    }

    /// Resolves when the guard stops being good (lease lost or deadline reached): race long
    /// operations against it.
    pub async fn invalidated(&self) -> FenceError {
        tokio::select! {
            _ = self.cancel.cancelled() => FenceError::Cancelled { epoch: self.epoch },
            _ = tokio::time::sleep_until(self.deadline) => FenceError::Expired { epoch: self.epoch },
        }
    }
}

/// Called by the fence loop after every successful renew: the only liveness proof (systemd
/// `WATCHDOG=1`, hardware watchdog feed).
pub trait Heartbeat: Send + Sync {
    fn beat(&self);
}

impl<F: Fn() + Send + Sync> Heartbeat for F {
    fn beat(&self) {
        self()
    }
}

/// Told about every renew attempt: how long it took, whether it extended validity, and how long
/// the current holding has lasted.
pub trait RenewRecorder: Send + Sync {
    fn renew(&self, latency: Duration, ok: bool, holding_age: Duration);
}

struct NoRecorder;
impl RenewRecorder for NoRecorder {
    fn renew(&self, _: Duration, _: bool, _: Duration) {}
}

/// A boxed `()` future, so loss handlers can be async without a futures crate.
pub type BoxedUnit = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

/// Runs when validity ran out. The device layer registers what `disconnect` means.
pub trait LossHandler: Send + Sync {
    fn lease_lost(&self, epoch: u64, action: LeaseLossAction) -> BoxedUnit;
}

struct Shared {
    holder: Holder,
    tx: watch::Sender<FenceStatus>,
    /// Every state or epoch change, none coalesced (the watch keeps only the latest).
    transitions: tokio::sync::broadcast::Sender<FenceStatus>,
    /// Parent of every guard's token for the current holding; replaced on each acquisition.
    epoch_token: Mutex<CancellationToken>,
}

/// Cloneable handle: read the state, subscribe to changes, obtain guards.
#[derive(Clone)]
pub struct Fence {
    shared: Arc<Shared>,
}

impl fmt::Debug for Fence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Fence")
            .field("status", &*self.shared.tx.borrow())
            .finish()
    }
}

impl Fence {
    pub fn holder(&self) -> &Holder {
        &self.shared.holder
    }

    pub fn status(&self) -> FenceStatus {
        self.shared.tx.borrow().clone()
    }

    pub fn subscribe(&self) -> watch::Receiver<FenceStatus> {
        self.shared.tx.subscribe()
    }

    /// Every transition (state or epoch change), in order, for signals, events and metrics.
    pub fn transitions(&self) -> tokio::sync::broadcast::Receiver<FenceStatus> {
        self.shared.transitions.subscribe()
    }

    /// A guard for one device operation, if the lease is valid now.
    pub fn guard(&self) -> Result<FenceGuard, FenceError> {
        let status = self.shared.tx.borrow().clone();
        let now = Instant::now();
        match (status.state, status.valid_until) {
            (FenceState::Held | FenceState::Expiring, Some(until)) if now < until => {
                Ok(FenceGuard {
                    node: self.shared.holder.node.clone(),
                    incarnation: self.shared.holder.boot_id.clone(),
                    epoch: status.epoch,
                    deadline: until,
                    cancel: self.shared.epoch_token.lock().unwrap().child_token(),
                    fence: self.clone(),
                })
            }
            (FenceState::Held | FenceState::Expiring, _) => Err(FenceError::NotHeld {
                state: FenceState::Expiring,
            }),
            (state, _) => Err(FenceError::NotHeld { state }),
        }
    }
}

/// The loop that owns the lease. Exactly one per daemon; it is the only writer of [`FenceStatus`].
pub struct FenceLoop<B: LeaseBackend> {
    backend: B,
    timing: Timing,
    action: LeaseLossAction,
    shared: Arc<Shared>,
    heartbeat: Box<dyn Heartbeat>,
    loss: Box<dyn LossHandler>,
    recorder: Arc<dyn RenewRecorder>,
    /// False when a previous incarnation's validity lapsed: never resume its epoch.
    resume_allowed: bool,
}

/// A loss handler for hosts with nothing attached yet: logs what the action means.
pub struct LogOnlyLoss;

impl LossHandler for LogOnlyLoss {
    fn lease_lost(&self, epoch: u64, action: LeaseLossAction) -> BoxedUnit {
        Box::pin(async move {
            tracing::warn!(
                EPOCH = epoch,
                ACTION = action.as_str(),
                "lease lost: no device operations until it is regained"
            );
        })
    }
}

impl<B: LeaseBackend> FenceLoop<B> {
    pub fn new(
        backend: B,
        holder: Holder,
        timing: Timing,
        action: LeaseLossAction,
        heartbeat: Box<dyn Heartbeat>,
        loss: Box<dyn LossHandler>,
    ) -> (FenceLoop<B>, Fence) {
        let (tx, _) = watch::channel(FenceStatus {
            state: FenceState::Acquiring,
            epoch: 0,
            valid_until: None,
            message: format!("acquiring the lease ({})", backend.describe()),
        });
        let shared = Arc::new(Shared {
            holder,
            tx,
            transitions: tokio::sync::broadcast::channel(64).0,
            epoch_token: Mutex::new(CancellationToken::new()),
        });
        let fence = Fence {
            shared: shared.clone(),
        };
        (
            FenceLoop {
                backend,
                timing,
                action,
                shared,
                heartbeat,
                loss,
                resume_allowed: true,
                recorder: Arc::new(NoRecorder),
            },
            fence,
        )
    }

    /// Reports every renew attempt to `recorder` (metrics).
    pub fn with_recorder(mut self, recorder: Arc<dyn RenewRecorder>) -> Self {
        self.recorder = recorder;
        self
    }

    /// Forbids resuming the previous holding's epoch: the agent was down longer than that
    /// holding's validity, so observers may already have acted on it.
    pub fn forbid_resume(mut self) -> Self {
        self.resume_allowed = false;
        self
    }

    fn publish(
        &self,
        state: FenceState,
        epoch: u64,
        valid_until: Option<Instant>,
        message: String,
    ) {
        let (prev, prev_epoch) = {
            let p = self.shared.tx.borrow();
            (p.state, p.epoch)
        };
        if prev != state {
            tracing::info!(
                EPOCH = epoch,
                FENCE_STATE = state.as_str(),
                FENCE_PREVIOUS = prev.as_str(),
                "fence {prev} -> {state}: {message}"
            );
        }
        let status = FenceStatus {
            state,
            epoch,
            valid_until,
            message,
        };
        if prev != state || prev_epoch != epoch {
            let _ = self.shared.transitions.send(status.clone());
        }
        self.shared.tx.send_replace(status);
    }

    /// Runs until `shutdown` is cancelled, then releases the lease. Returns only then.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let mut after_loss = !self.resume_allowed;
        let mut last_epoch = 0;
        // The last acquire failure logged: a failure that repeats is one warn line, not one per
        // retry; a new cause is a new line.
        let mut last_failure = String::new();
        loop {
            let sent = Instant::now();
            let acquired = tokio::select! {
                _ = shutdown.cancelled() => return,
                // A reply after D − M would start a holding that is already over.
                r = tokio::time::timeout(self.timing.valid_until(sent) - sent, self.backend.acquire(after_loss)) => r,
            };
            let acquired = match acquired {
                Ok(Ok(a)) => a,
                Ok(Err(BackendError::Conflict(msg))) => {
                    tracing::error!(EPOCH = last_epoch, "{msg}");
                    self.publish(FenceState::Conflict, last_epoch, None, msg);
                    if sleep_or_shutdown(self.timing.renew_interval, &shutdown).await {
                        return;
                    }
                    continue;
                }
                Ok(Err(e)) => {
                    let state = if after_loss {
                        FenceState::Fenced
                    } else {
                        FenceState::Acquiring
                    };
                    let why = e.to_string();
                    if why != last_failure {
                        if matches!(e, BackendError::NotReady(_)) {
                            tracing::debug!("cannot acquire the lease yet: {why}");
                        } else {
                            tracing::warn!(EPOCH = last_epoch, "cannot acquire the lease: {why}");
                        }
                        last_failure = why;
                    }
                    self.publish(
                        state,
                        last_epoch,
                        None,
                        format!("cannot acquire the lease: {e}"),
                    );
                    if sleep_or_shutdown(self.timing.renew_interval, &shutdown).await {
                        return;
                    }
                    continue;
                }
                Err(_) => {
                    let state = if after_loss {
                        FenceState::Fenced
                    } else {
                        FenceState::Acquiring
                    };
                    self.publish(state, last_epoch, None, "acquire timed out".into());
                    continue;
                }
            };
            last_epoch = acquired.epoch;
            last_failure.clear();
            *self.shared.epoch_token.lock().unwrap() = CancellationToken::new();
            let mut valid_until = self.timing.valid_until(sent);
            let how = if acquired.resumed {
                "resumed"
            } else {
                "acquired"
            };
            self.publish(
                FenceState::Held,
                acquired.epoch,
                Some(valid_until),
                format!(
                    "lease {how} ({}), epoch {}",
                    self.backend.describe(),
                    acquired.epoch
                ),
            );
            self.heartbeat.beat();
            let held_since = Instant::now();

            // Held: renew every R until validity runs out or shutdown.
            let mut next_renew = sent + self.timing.renew_interval;
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => {
                        self.shared.epoch_token.lock().unwrap().cancel();
                        self.backend.release().await;
                        self.publish(FenceState::Acquiring, acquired.epoch, None, "released on shutdown".into());
                        return;
                    }
                    _ = tokio::time::sleep_until(next_renew.min(valid_until)) => {}
                }
                if Instant::now() >= valid_until {
                    break;
                }
                let sent = Instant::now();
                // A renew may not outlast validity, nor delay the next attempt.
                let budget = self.timing.renew_interval.min(valid_until - sent);
                let result = tokio::time::timeout(budget, self.backend.renew()).await;
                let ok = matches!(result, Ok(Ok(())));
                self.recorder
                    .renew(Instant::now() - sent, ok, Instant::now() - held_since);
                match result {
                    Ok(Ok(())) => {
                        valid_until = self.timing.valid_until(sent);
                        let st = self.shared.tx.borrow().state;
                        if st != FenceState::Held {
                            self.publish(
                                FenceState::Held,
                                acquired.epoch,
                                Some(valid_until),
                                "renew succeeded".into(),
                            );
                        } else {
                            self.shared
                                .tx
                                .send_modify(|s| s.valid_until = Some(valid_until));
                        }
                        self.heartbeat.beat();
                        next_renew = sent + self.timing.renew_interval;
                    }
                    Ok(Err(BackendError::Lost(msg))) => {
                        tracing::error!(EPOCH = acquired.epoch, "{msg}");
                        break;
                    }
                    Ok(Err(e)) => {
                        self.publish(
                            FenceState::Expiring,
                            acquired.epoch,
                            Some(valid_until),
                            format!("renew failed: {e}"),
                        );
                        next_renew = Instant::now() + self.timing.renew_interval / 2;
                    }
                    Err(_) => {
                        self.publish(
                            FenceState::Expiring,
                            acquired.epoch,
                            Some(valid_until),
                            format!("renew timed out after {budget:?}"),
                        );
                        next_renew = Instant::now();
                    }
                }
            }

            // Lost: stop granting, cancel outstanding guards, then act.
            self.publish(
                FenceState::Fenced,
                acquired.epoch,
                None,
                format!("lease lost; on_lease_loss = {}", self.action.as_str()),
            );
            self.shared.epoch_token.lock().unwrap().cancel();
            self.loss.lease_lost(acquired.epoch, self.action).await;
            after_loss = true;
        }
    }
}

/// Sleeps `d`; true if shutdown came first.
async fn sleep_or_shutdown(d: Duration, shutdown: &CancellationToken) -> bool {
    tokio::select! {
        _ = shutdown.cancelled() => true,
        _ = tokio::time::sleep(d) => false,
    }
}

#[cfg(test)]
mod tests;
