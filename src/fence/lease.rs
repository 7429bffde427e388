//! The host-lease protocol over a `coordination.k8s.io/v1` Lease named after the node.
//!
//! Written against [`LeaseApi`], the few operations the protocol needs, so the same code runs with
//! the real `kube` client (through the one shared watch cache), against the project's API server
//! emulator, and inside the randomized safety simulation.
//!
//! - absent → create with `leaseTransitions = 1` (epoch 1; 0 means "never held");
//! - held by this very incarnation (`<node>/<boot_id>`) → resume, same epoch;
//! - held by anyone else (including this node name with another boot id) → take over with epoch + 1
//!   only once the observer rule says it expired (no resourceVersion change for D + grace on our
//!   clock); if it keeps changing and names our node, two hosts share a node name: `conflict`,
//!   never a fight;
//! - every write carries the resourceVersion it was based on (compare-and-swap).

use std::future::Future;

use super::observer::Verdict;
use super::{Acquired, BackendError, Holder, LeaseBackend};

/// The fields of a Lease the protocol reads and writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseRecord {
    pub name: String,
    /// Empty for a record not yet created.
    pub resource_version: String,
    pub holder: Option<String>,
    pub lease_duration_seconds: i32,
    /// The epoch.
    pub lease_transitions: i32,
    /// Informational wall-clock times (RFC 3339, microseconds); never used for decisions.
    pub acquire_time: Option<String>,
    pub renew_time: Option<String>,
}

/// API failures, as the API server reports them.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiError {
    /// 409 on a write whose resourceVersion is stale.
    #[error("409 Conflict: the lease changed since it was read")]
    Conflict,
    /// 409 on a create of a lease that exists.
    #[error("409 AlreadyExists")]
    AlreadyExists,
    /// 404.
    #[error("404 NotFound")]
    NotFound,
    /// 404 because the namespace itself does not exist (the server says `namespaces "X" not
    /// found`): waiting will not fix it.
    #[error("namespace {0} does not exist")]
    NamespaceMissing(String),
    /// 403: the agent's identity may not do this; the server's message names verb and resource.
    #[error("403 Forbidden: {0}")]
    Forbidden(String),
    /// Anything else: unreachable, 5xx, timeout, refused.
    #[error("{0}")]
    Unavailable(String),
}

/// What the protocol needs from the API: the shared cache (never a GET) and two writes.
pub trait LeaseApi: Send + Sync {
    /// False until the shared watch has listed the namespace once: no decision before that.
    fn synced(&self) -> bool;
    /// Why the watch has not listed (yet), when the server said why (403, missing namespace).
    fn watch_error(&self) -> Option<ApiError> {
        None
    }
    /// The lease as the shared watch last saw it.
    fn cached(&self, name: &str) -> Option<LeaseRecord>;
    /// A consistent read (GET) of one lease, also given to the observer: the takeover's
    /// confirmation, never the renew path.
    fn read(
        &self,
        name: &str,
    ) -> impl Future<Output = Result<Option<LeaseRecord>, ApiError>> + Send;
    /// The observer's verdict on `name`, by this host's monotonic clock.
    fn verdict(&self, name: &str) -> Verdict;
    /// Create (fails with `AlreadyExists` if present).
    fn create(
        &self,
        rec: &LeaseRecord,
    ) -> impl Future<Output = Result<LeaseRecord, ApiError>> + Send;
    /// Write `rec`'s spec, only if the lease still has `rec.resource_version`.
    fn replace(
        &self,
        rec: &LeaseRecord,
    ) -> impl Future<Output = Result<LeaseRecord, ApiError>> + Send;
    /// Wall-clock time for the informational `renewTime`/`acquireTime` fields.
    fn now_rfc3339(&self) -> String;
    /// Records a Kubernetes Event on the lease (best effort).
    fn event(
        &self,
        name: &str,
        reason: &str,
        message: &str,
        warning: bool,
    ) -> impl Future<Output = ()> + Send;
}

/// [`LeaseBackend`] over a Kubernetes Lease.
pub struct KubeLease<A: LeaseApi> {
    api: A,
    name: String,
    holder: Holder,
    lease_duration_seconds: i32,
    /// Our last successful write (its resourceVersion is the next write's precondition).
    current: Option<LeaseRecord>,
    namespace: String,
    /// When this conflict episode's `LeaseConflict` Event was recorded: one per episode (and a
    /// reminder an hour later), not one per retry.
    conflict_reported: Option<tokio::time::Instant>,
}

/// How often a conflict that lasts is recorded again as an Event.
pub const CONFLICT_EVENT_EVERY: std::time::Duration = std::time::Duration::from_secs(3600);

impl<A: LeaseApi> KubeLease<A> {
    pub fn new(
        api: A,
        namespace: &str,
        holder: Holder,
        lease_duration_seconds: i32,
    ) -> KubeLease<A> {
        KubeLease {
            api,
            name: holder.node.clone(),
            holder,
            lease_duration_seconds,
            current: None,
            namespace: namespace.to_string(),
            conflict_reported: None,
        }
    }

    pub fn api(&self) -> &A {
        &self.api
    }

    fn take(&self, base: &LeaseRecord, epoch: i32) -> LeaseRecord {
        let now = self.api.now_rfc3339();
        LeaseRecord {
            name: self.name.clone(),
            resource_version: base.resource_version.clone(),
            holder: Some(self.holder.identity()),
            lease_duration_seconds: self.lease_duration_seconds,
            lease_transitions: epoch,
            acquire_time: Some(now.clone()),
            renew_time: Some(now),
        }
    }

    async fn write_acquire(
        &mut self,
        rec: LeaseRecord,
        create: bool,
        resumed: bool,
    ) -> Result<Acquired, BackendError> {
        let result = if create {
            self.api.create(&rec).await
        } else {
            self.api.replace(&rec).await
        };
        match result {
            Ok(written) => {
                let epoch = written.lease_transitions.max(0) as u64;
                self.current = Some(written);
                if !resumed {
                    let msg = format!(
                        "{} acquired lease {}/{} with epoch {epoch}",
                        self.holder.identity(),
                        self.namespace,
                        self.name
                    );
                    self.api
                        .event(&self.name, "LeaseAcquired", &msg, false)
                        .await;
                }
                Ok(Acquired { epoch, resumed })
            }
            // Someone wrote between our read and our write: decide again from the cache.
            Err(e @ (ApiError::Conflict | ApiError::AlreadyExists | ApiError::NotFound)) => Err(
                BackendError::Unavailable(format!("lost a race for lease {}: {e}", self.name)),
            ),
            Err(e) => Err(BackendError::Unavailable(self.explain(&e))),
        }
    }
}

impl<A: LeaseApi> KubeLease<A> {
    /// An API failure as the operator needs to read it: what is wrong and what fixes it.
    pub fn explain(&self, e: &ApiError) -> String {
        let ns = &self.namespace;
        match e {
            ApiError::NamespaceMissing(missing) => format!(
                "namespace {missing} does not exist: create it (kubectl create namespace {missing}) or set [fence] lease_namespace"
            ),
            ApiError::Forbidden(m) => format!(
                "forbidden: {m} (the agent needs get, list, watch, create and patch on leases in namespace {ns})"
            ),
            other => other.to_string(),
        }
    }
}

impl<A: LeaseApi> LeaseBackend for KubeLease<A> {
    fn describe(&self) -> String {
        format!("Lease {}/{}", self.namespace, self.name)
    }

    async fn acquire(&mut self, after_loss: bool) -> Result<Acquired, BackendError> {
        if !self.api.synced() {
            return Err(match self.api.watch_error() {
                Some(why) => BackendError::Unavailable(format!(
                    "the lease watch cannot list namespace {}: {}",
                    self.namespace,
                    self.explain(&why)
                )),
                None => BackendError::NotReady(format!(
                    "waiting for the lease watch to list namespace {}",
                    self.namespace
                )),
            });
        }
        let outcome = self.decide(after_loss).await;
        if !matches!(outcome, Err(BackendError::Conflict(_))) {
            self.conflict_reported = None;
        }
        outcome
    }

    async fn renew(&mut self) -> Result<(), BackendError> {
        self.renew_once().await
    }

    async fn release(&mut self) {
        // Keep holderIdentity: a restart in the same boot resumes the same epoch, and observers
        // see the lease expire after D like any other silence.
        self.current = None;
    }
}

impl<A: LeaseApi> KubeLease<A> {
    async fn decide(&mut self, after_loss: bool) -> Result<Acquired, BackendError> {
        let me = self.holder.identity();
        let Some(cur) = self.api.cached(&self.name) else {
            let blank = LeaseRecord {
                name: self.name.clone(),
                resource_version: String::new(),
                holder: None,
                lease_duration_seconds: self.lease_duration_seconds,
                lease_transitions: 0,
                acquire_time: None,
                renew_time: None,
            };
            let rec = self.take(&blank, 1);
            return self.write_acquire(rec, true, false).await;
        };
        let epoch = cur.lease_transitions;
        match cur.holder.as_deref() {
            // This incarnation: an agent restart in the same boot keeps its epoch. After a loss it
            // must not: observers may have acted on the gap.
            Some(h) if h == me && !after_loss => {
                let rec = self.take(&cur, epoch);
                self.write_acquire(rec, false, true).await
            }
            Some(h) if h == me => {
                // Regaining after a loss: say so on the lease, now that the API answers again.
                let msg = format!("{me} lost lease {}/{} epoch {epoch}: it was not renewed within D − M; device operations were stopped", self.namespace, self.name);
                self.api.event(&self.name, "LeaseLost", &msg, true).await;
                let rec = self.take(&cur, epoch + 1);
                self.write_acquire(rec, false, false).await
            }
            None | Some("") => {
                let rec = self.take(&cur, epoch + 1);
                self.write_acquire(rec, false, false).await
            }
            Some(other) => match self.api.verdict(&self.name) {
                Verdict::Expired { .. } => {
                    let rec = self.take(&cur, epoch + 1);
                    self.write_acquire(rec, false, false).await
                }
                Verdict::Live { changes, .. } if changes > 0 => {
                    let other_node = other.split_once('/').map_or(other, |(n, _)| n);
                    let msg = if other_node == self.holder.node {
                        format!(
                            "lease {}/{} keeps being renewed by {other} while this host is {me}: two hosts use the node name {:?}; this agent will not touch devices",
                            self.namespace, self.name, self.holder.node
                        )
                    } else {
                        format!(
                            "lease {}/{} keeps being renewed by {other}, not by this node",
                            self.namespace, self.name
                        )
                    };
                    let due = self
                        .conflict_reported
                        .is_none_or(|t| t.elapsed() >= CONFLICT_EVENT_EVERY);
                    if due {
                        self.api
                            .event(&self.name, "LeaseConflict", &msg, true)
                            .await;
                        self.conflict_reported = Some(tokio::time::Instant::now());
                    }
                    Err(BackendError::Conflict(msg))
                }
                Verdict::Live { .. } | Verdict::Unknown => Err(BackendError::HeldByOther {
                    holder: other.to_string(),
                }),
            },
        }
    }

    async fn renew_once(&mut self) -> Result<(), BackendError> {
        let Some(cur) = self.current.clone() else {
            return Err(BackendError::Lost("no holding to renew".into()));
        };
        let mut next = cur.clone();
        next.renew_time = Some(self.api.now_rfc3339());
        match self.api.replace(&next).await {
            Ok(written) => {
                self.current = Some(written);
                Ok(())
            }
            Err(ApiError::Conflict) => {
                // Someone else wrote our lease. Ours still? Retry on its resourceVersion. Not ours:
                // lost. (A stale cache only makes the retry fail again: safe.)
                match self.api.cached(&self.name) {
                    Some(c)
                        if c.holder.as_deref() == Some(&self.holder.identity())
                            && c.lease_transitions == cur.lease_transitions =>
                    {
                        self.current = Some(c);
                        Err(BackendError::Unavailable(
                            "409 Conflict on renew; retrying on the latest resourceVersion".into(),
                        ))
                    }
                    Some(c) => {
                        self.current = None;
                        let msg = format!(
                            "{} lost lease {}/{} epoch {} to {}",
                            self.holder.identity(),
                            self.namespace,
                            self.name,
                            cur.lease_transitions,
                            c.holder.clone().unwrap_or_default()
                        );
                        self.api.event(&self.name, "LeaseLost", &msg, true).await;
                        Err(BackendError::Lost(format!(
                            "lease {} now held by {} (epoch {})",
                            self.name,
                            c.holder.unwrap_or_default(),
                            c.lease_transitions
                        )))
                    }
                    None => Err(BackendError::Unavailable(
                        "409 Conflict on renew and the lease is not in the cache".into(),
                    )),
                }
            }
            Err(ApiError::NotFound) => {
                self.current = None;
                Err(BackendError::Lost(format!(
                    "lease {} was deleted",
                    self.name
                )))
            }
            Err(e @ ApiError::NamespaceMissing(_)) => {
                self.current = None;
                Err(BackendError::Lost(self.explain(&e)))
            }
            Err(e) => Err(BackendError::Unavailable(self.explain(&e))),
        }
    }
}
