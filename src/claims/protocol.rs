//! Taking, keeping and letting go of a volume's claim. Every write is a compare-and-swap on the
//! version read; a 409 means "re-read and re-decide", never "retry the same write". A claim is
//! written only when it changes hands (connect, release, takeover), never on a timer: liveness
//! comes from the holder's host lease.

use std::future::Future;
use std::time::Duration;

use super::record::{object_name, Claim, Migration, RecordError};
use crate::fence::observer::Verdict;
use crate::fence::takeover::{self, ClaimApi, ClaimRead, Takeover};
use crate::fence::{ApiError, FenceError, FenceGuard, Holder, LeaseApi, LeaseRecord};

/// What the protocol needs from the API server for claims.
pub trait ClaimStore: Send + Sync {
    /// A consistent read (GET) of `volume_id`'s claim, checked.
    fn read(
        &self,
        volume_id: &str,
    ) -> impl Future<Output = Result<Option<Claim>, ClaimError>> + Send;
    /// Creates it; `AlreadyExists` if someone was first.
    fn create(&self, claim: &Claim) -> impl Future<Output = Result<Claim, ApiError>> + Send;
    /// Writes it only if it still has `claim.version`; `Conflict` otherwise.
    fn replace(&self, claim: &Claim) -> impl Future<Output = Result<Claim, ApiError>> + Send;
    /// Deletes it only if it still has `claim.version`.
    fn delete(&self, claim: &Claim) -> impl Future<Output = Result<(), ApiError>> + Send;
    /// The claims this node holds (selected by its label).
    fn mine(&self) -> impl Future<Output = Result<Vec<Claim>, ClaimError>> + Send;
    /// Every claim (for people: `volfencectl claims --all`).
    fn all(&self) -> impl Future<Output = Result<Vec<Claim>, ClaimError>> + Send;
    /// Whether Node `node` exists (for people: `volfencectl claims`); None when the server
    /// could not say (no permission, unreachable).
    fn node_exists(&self, node: &str) -> impl Future<Output = Option<bool>> + Send;
    /// Records an Event on `volume_id`'s claim (best effort).
    fn event(
        &self,
        volume_id: &str,
        reason: &str,
        message: &str,
        warning: bool,
    ) -> impl Future<Output = ()> + Send;
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClaimError {
    /// Another live host holds the volume.
    #[error("volume {volume} is claimed by {holder} (node {node}, epoch {epoch}{}): disconnect it there first, or wait until that host has fenced itself", since.as_ref().map(|s| format!(", since {s}")).unwrap_or_default())]
    Conflict {
        volume: String,
        holder: String,
        node: String,
        epoch: u64,
        since: Option<String>,
    },
    /// A live migration cannot begin or join as asked.
    #[error("volume {volume}: {reason}")]
    Migration { volume: String, reason: String },
    /// The holding this decision was made in ended.
    #[error("not fenced: {0}")]
    NotFenced(#[from] FenceError),
    /// The API server did not let us decide.
    #[error("claim of volume {volume}: {source}")]
    Api {
        volume: String,
        #[source]
        source: ApiError,
    },
    /// The stored claim is not one this agent can trust.
    #[error(transparent)]
    Record(#[from] RecordError),
}

/// How one acquire ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Acquired {
    /// It was free (or absent): created with our epoch.
    Taken(Claim),
    /// Already ours in this holding.
    Reused(Claim),
    /// Ours from an older epoch or boot: stamped with this holding.
    Restamped(Claim),
    /// Another host's, whose lease expired by the observer rule: moved to us by the proven
    /// takeover. Names the previous holder and epoch.
    TakenOver {
        claim: Claim,
        from: String,
        from_epoch: u64,
    },
    /// A live migration's destination: held together with the source (the claim's holder),
    /// for `window` at most from now.
    Joined { claim: Claim, window: Duration },
}

impl Acquired {
    pub fn claim(&self) -> &Claim {
        match self {
            Acquired::Taken(c) | Acquired::Reused(c) | Acquired::Restamped(c) => c,
            Acquired::TakenOver { claim, .. } | Acquired::Joined { claim, .. } => claim,
        }
    }
}

/// What the holder's host lease looks like, by this host's wall clock: a hint for people
/// (`volfencectl claims`), never used for a decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HolderLease {
    /// Renewed within its duration, by the holder the claim names.
    Renewing,
    /// Not renewed for longer than its duration (`renewed` ago).
    LooksExpired { renewed: Duration },
    /// Held by another boot of the holder's node: the claim is from before a reboot.
    OtherBoot { now: String },
    /// No host lease of that name.
    Missing,
}

impl std::fmt::Display for HolderLease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HolderLease::Renewing => write!(f, "renewing"),
            HolderLease::LooksExpired { renewed } => write!(
                f,
                "looks expired (wall clock: renewed {}s ago)",
                renewed.as_secs()
            ),
            HolderLease::OtherBoot { now } => write!(f, "held by another boot ({now})"),
            HolderLease::Missing => write!(f, "missing"),
        }
    }
}

/// A claim with its holder's host lease, as `volfencectl claims` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimView {
    pub claim: Claim,
    pub holder_lease: HolderLease,
    /// Whether the holder's Node object exists (None: could not tell).
    pub holder_node: Option<bool>,
}

/// What a release did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Released {
    /// The claim is gone: the volume is free.
    Deleted,
    /// This host was a migration's source: the destination `to` holds it alone now.
    HandedOver { to: String },
    /// This host was a migration's destination: `holder` (the source) holds it alone again.
    Left { holder: String },
    /// Nothing of it was ours (absent, or another host's).
    NotOurs,
}

/// What a re-check after a new holding found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recheck {
    /// Still ours, now stamped with this holding.
    Kept(Claim),
    /// Another host holds it: the device must go.
    Lost(Claim),
}

/// How many times a decision is re-made after a 409 before the caller is told: each 409 is
/// progress by someone else, so this bounds a pathological race, not ordinary contention.
const MAX_ROUNDS: usize = 64;
/// How often a claim (and its holder's lease) is read again while waiting: for a releasing
/// claim's handoff, or for the verdict on a holder that missed a renew.
const HANDOFF_POLL: Duration = Duration::from_millis(200);

/// The claims of one host: its store, the host-lease view the takeover decides by, and who it
/// is.
pub struct Claims<S, L> {
    store: S,
    leases: L,
    me: Holder,
    handoff_wait: Duration,
    migration_timeout: Duration,
    metrics: Option<std::sync::Arc<crate::metrics::Metrics>>,
    local: super::local::Local,
}

/// The longest migration window when none is configured ([claims] migration_timeout).
pub const DEFAULT_MIGRATION_TIMEOUT: Duration = Duration::from_secs(300);

impl<S: ClaimStore, L: LeaseApi> Claims<S, L> {
    pub fn new(store: S, leases: L, me: Holder, handoff_wait: Duration) -> Claims<S, L> {
        Claims {
            store,
            leases,
            me,
            handoff_wait,
            migration_timeout: DEFAULT_MIGRATION_TIMEOUT,
            metrics: None,
            local: Default::default(),
        }
    }

    /// How long a migration's destination may share a volume with its source.
    pub fn with_migration_timeout(mut self, t: Duration) -> Self {
        self.migration_timeout = t;
        self
    }

    pub fn me(&self) -> &Holder {
        &self.me
    }

    /// What this host last knew of its own claims (for the bus, never for a decision).
    pub fn local(&self) -> &super::local::Local {
        &self.local
    }

    pub fn with_metrics(mut self, m: std::sync::Arc<crate::metrics::Metrics>) -> Self {
        self.metrics = Some(m);
        self
    }

    pub fn metrics(&self) -> Option<&crate::metrics::Metrics> {
        self.metrics.as_deref()
    }

    fn ours(&self, guard: &FenceGuard, volume_id: &str, base: Option<&Claim>) -> Claim {
        Claim {
            name: object_name(volume_id),
            volume_id: volume_id.to_string(),
            version: base.map(|c| c.version.clone()).unwrap_or_default(),
            holder: self.me.identity(),
            epoch: guard.epoch(),
            generation: base.map_or(1, |c| c.generation.saturating_add(1)),
            acquired: Some(self.leases.now_rfc3339()),
            releasing: false,
            migration: None,
        }
    }

    /// How long is left of our migration window on `m` (its deadline was written by this host,
    /// by this host's clock), at most the configured timeout.
    pub fn window_left(&self, m: &Migration) -> Duration {
        crate::time::until(&m.deadline, std::time::SystemTime::now())
            .unwrap_or(Duration::ZERO)
            .min(self.migration_timeout)
    }

    /// `cur` with this holding as its migration's destination until `deadline`.
    fn joining(&self, guard: &FenceGuard, cur: &Claim, deadline: &str) -> Claim {
        Claim {
            migration: Some(Migration {
                holder: self.me.identity(),
                epoch: guard.epoch(),
                deadline: deadline.to_string(),
            }),
            ..cur.clone()
        }
    }

    fn migration_refused(volume_id: &str, reason: String) -> ClaimError {
        ClaimError::Migration {
            volume: volume_id.to_string(),
            reason,
        }
    }

    fn api(volume_id: &str) -> impl Fn(ApiError) -> ClaimError + '_ {
        move |source| ClaimError::Api {
            volume: volume_id.to_string(),
            source,
        }
    }

    fn conflict(c: &Claim) -> ClaimError {
        ClaimError::Conflict {
            volume: c.volume_id.clone(),
            holder: c.holder.clone(),
            node: c.node().to_string(),
            epoch: c.epoch,
            since: c.acquired.clone(),
        }
    }

    /// Makes `volume_id`'s claim ours in `guard`'s holding, or says who holds it. With
    /// `migration_source`, joins the claim that live node holds as a migration's destination.
    pub async fn acquire(
        &self,
        guard: &FenceGuard,
        volume_id: &str,
        migration_source: Option<&str>,
    ) -> Result<Acquired, ClaimError> {
        let api = Self::api(volume_id);
        let me = self.me.node.as_str();
        let mut waited_since: Option<tokio::time::Instant> = None;
        let mut rounds = 0;
        while rounds < MAX_ROUNDS {
            rounds += 1;
            guard.refresh()?;
            let Some(cur) = self.store.read(volume_id).await? else {
                match self.store.create(&self.ours(guard, volume_id, None)).await {
                    Ok(c) => return Ok(Acquired::Taken(c)),
                    Err(ApiError::AlreadyExists) => continue,
                    Err(e) => return Err(api(e)),
                }
            };
            if cur.node() == me {
                if cur.holder == self.me.identity() && cur.epoch == guard.epoch() && !cur.releasing
                {
                    return Ok(Acquired::Reused(cur));
                }
                let next = Claim {
                    migration: cur.migration.clone(),
                    ..self.ours(guard, volume_id, Some(&cur))
                };
                match self.store.replace(&next).await {
                    Ok(c) => return Ok(Acquired::Restamped(c)),
                    Err(ApiError::Conflict | ApiError::NotFound) => continue,
                    Err(e) => return Err(api(e)),
                }
            }
            // A sighting of each holder's lease (a consistent read): agents watch only their
            // own lease, so the observer counts a peer's silence from its first sighting here.
            self.leases.read(cur.node()).await.map_err(&api)?;
            let holder_expired = matches!(self.leases.verdict(cur.node()), Verdict::Expired { .. });
            let other_destination = cur
                .migration
                .as_ref()
                .filter(|m| m.node() != me)
                .map(|m| m.node().to_string());
            if let Some(m) = cur.migration.as_ref().filter(|m| m.node() == me) {
                // We are this claim's migration destination already.
                if migration_source.is_some_and(|s| s != cur.node()) {
                    return Err(Self::migration_refused(
                        volume_id,
                        format!(
                            "this node is migrating it from {}, not from {}",
                            cur.node(),
                            migration_source.unwrap_or_default()
                        ),
                    ));
                }
                // A plain Connect here after the source died is the volume moving here for
                // good: the takeover below. Otherwise the same migration, re-stamped if needed.
                if !(holder_expired && migration_source.is_none()) {
                    if m.holder == self.me.identity() && m.epoch == guard.epoch() {
                        let window = self.window_left(m);
                        return Ok(Acquired::Joined { claim: cur, window });
                    }
                    match self
                        .store
                        .replace(&self.joining(guard, &cur, &m.deadline))
                        .await
                    {
                        Ok(c) => {
                            let window = self.window_left(m);
                            return Ok(Acquired::Joined { claim: c, window });
                        }
                        Err(ApiError::Conflict | ApiError::NotFound) => continue,
                        Err(e) => return Err(api(e)),
                    }
                }
            }
            let destination_expired = match &other_destination {
                None => true,
                Some(d) => {
                    self.leases.read(d).await.map_err(&api)?;
                    matches!(self.leases.verdict(d), Verdict::Expired { .. })
                }
            };
            if !(holder_expired && destination_expired) {
                if let Some(source) = migration_source {
                    if source != cur.node() {
                        return Err(Self::migration_refused(
                            volume_id,
                            format!(
                                "it is held by {} (node {}), not by the migration source {source}",
                                cur.holder,
                                cur.node()
                            ),
                        ));
                    }
                    if let Some(m) = &cur.migration {
                        return Err(Self::migration_refused(
                            volume_id,
                            format!("it is already migrating from {} to {} (until {}): one migration at a time", cur.node(), m.node(), m.deadline),
                        ));
                    }
                    if !cur.releasing {
                        let now = std::time::SystemTime::now();
                        let deadline = crate::time::rfc3339(now + self.migration_timeout, false);
                        match self
                            .store
                            .replace(&self.joining(guard, &cur, &deadline))
                            .await
                        {
                            Ok(c) => {
                                return Ok(Acquired::Joined {
                                    claim: c,
                                    window: self.migration_timeout,
                                })
                            }
                            Err(ApiError::Conflict | ApiError::NotFound) => continue,
                            Err(e) => return Err(api(e)),
                        }
                    }
                }
                if let Some(d) = &other_destination {
                    return Err(Self::migration_refused(
                        volume_id,
                        format!("it is migrating from {} (epoch {}) to {d}: refused until the migration ends", cur.holder, cur.epoch),
                    ));
                }
                if !cur.releasing {
                    // A holder that missed a renew renews soon (a conflict) or counts as
                    // expired within D/2 + grace (a takeover): the verdict is read again
                    // instead of refusing now, so a volume moves when the rule allows, not at
                    // the caller's next retry (kubelet's back off doubles up to 2 minutes).
                    if let Verdict::Live {
                        overdue: true,
                        expires_in,
                        ..
                    } = self.leases.verdict(cur.node())
                    {
                        rounds -= 1; // waiting is not a decision lost to someone else
                                     // Read again at the next poll, or right when the rule would allow.
                        let next = HANDOFF_POLL.min(expires_in + Duration::from_millis(1));
                        tokio::time::sleep(next).await;
                        continue;
                    }
                    return Err(Self::conflict(&cur));
                }
                // An ordinary drain-and-move: the holder's Disconnect will delete it.
                let since = *waited_since.get_or_insert_with(|| {
                    if let Some(m) = &self.metrics {
                        m.claim_handoff_waits.inc();
                    }
                    tokio::time::Instant::now()
                });
                if since.elapsed() >= self.handoff_wait {
                    return Err(Self::conflict(&cur));
                }
                rounds -= 1;
                tokio::time::sleep(HANDOFF_POLL).await;
                continue;
            }
            let attempt = Attempt {
                store: &self.store,
                leases: &self.leases,
                next: self.ours(guard, volume_id, Some(&cur)),
                based_on: cur.version.clone(),
            };
            let victims: Vec<&str> = std::iter::once(cur.node())
                .chain(other_destination.as_deref())
                .collect();
            match takeover::take_over(&attempt, guard, &cur.name, &victims, me)
                .await
                .map_err(&api)?
            {
                Takeover::Taken(_) => {
                    let claim = self.store.read(volume_id).await?.ok_or_else(|| {
                        api(ApiError::Unavailable(
                            "the claim vanished right after the takeover".into(),
                        ))
                    })?;
                    return Ok(Acquired::TakenOver {
                        claim,
                        from: cur.holder.clone(),
                        from_epoch: cur.epoch,
                    });
                }
                Takeover::Raced | Takeover::NotVictims => continue,
                Takeover::HolderAlive | Takeover::HolderSpoke => return Err(Self::conflict(&cur)),
                Takeover::Fenced(e) => return Err(ClaimError::NotFenced(e)),
            }
        }
        Err(api(ApiError::Unavailable(format!(
            "the claim changed under {MAX_ROUNDS} decisions in a row"
        ))))
    }

    /// Marks our claim releasing before the device goes (so a Connect elsewhere waits for the
    /// handoff instead of failing). `None` when the claim is not ours: nothing to let go.
    pub async fn begin_release(&self, volume_id: &str) -> Result<Option<Claim>, ClaimError> {
        let api = Self::api(volume_id);
        for _ in 0..MAX_ROUNDS {
            let Some(cur) = self.store.read(volume_id).await? else {
                return Ok(None);
            };
            if cur.node() != self.me.node {
                return Ok(None);
            }
            // Releasing hands the volume to the migration's destination, never to a third host.
            if cur.releasing || cur.migration.is_some() {
                return Ok(Some(cur));
            }
            let next = Claim {
                releasing: true,
                ..cur.clone()
            };
            match self.store.replace(&next).await {
                Ok(c) => return Ok(Some(c)),
                Err(ApiError::Conflict | ApiError::NotFound) => continue,
                Err(e) => return Err(api(e)),
            }
        }
        Err(api(ApiError::Unavailable(format!(
            "the claim changed under {MAX_ROUNDS} reads in a row"
        ))))
    }

    /// Deletes our claim (on the version read: a claim that moved on is not ours to delete).
    /// During a migration, the source's release leaves the destination the sole holder and the
    /// destination's release leaves the source. Idempotent.
    pub async fn release(&self, volume_id: &str) -> Result<Released, ClaimError> {
        let api = Self::api(volume_id);
        for _ in 0..MAX_ROUNDS {
            let Some(cur) = self.store.read(volume_id).await? else {
                return Ok(Released::NotOurs);
            };
            if let Some(m) = cur.migration.clone() {
                let (next, done) = if cur.node() == self.me.node {
                    // The source lets go: the destination is the sole holder now.
                    let to = m.holder.clone();
                    let next = Claim {
                        holder: m.holder,
                        epoch: m.epoch,
                        generation: cur.generation.saturating_add(1),
                        acquired: Some(self.leases.now_rfc3339()),
                        releasing: false,
                        migration: None,
                        ..cur.clone()
                    };
                    (next, Released::HandedOver { to })
                } else if m.node() == self.me.node {
                    // The destination leaves: the source stays the holder.
                    let next = Claim {
                        migration: None,
                        ..cur.clone()
                    };
                    (
                        next,
                        Released::Left {
                            holder: cur.holder.clone(),
                        },
                    )
                } else {
                    return Ok(Released::NotOurs);
                };
                match self.store.replace(&next).await {
                    Ok(_) => return Ok(done),
                    Err(ApiError::NotFound) => return Ok(Released::NotOurs),
                    Err(ApiError::Conflict) => continue,
                    Err(e) => return Err(api(e)),
                }
            }
            if cur.node() != self.me.node {
                return Ok(Released::NotOurs);
            }
            match self.store.delete(&cur).await {
                Ok(()) => return Ok(Released::Deleted),
                Err(ApiError::NotFound) => return Ok(Released::NotOurs),
                Err(ApiError::Conflict) => continue,
                Err(e) => return Err(api(e)),
            }
        }
        Err(api(ApiError::Unavailable(format!(
            "the claim changed under {MAX_ROUNDS} reads in a row"
        ))))
    }

    /// After a new holding begins, for a volume still connected here: keeps its claim (re-stamped
    /// with the new epoch, or created if none exists). `Lost` when another host holds it now:
    /// a claim that was taken over is never taken back.
    pub async fn recheck(
        &self,
        guard: &FenceGuard,
        volume_id: &str,
    ) -> Result<Recheck, ClaimError> {
        if let Some(cur) = self.store.read(volume_id).await? {
            if !cur.held_by(&self.me.node) {
                return Ok(Recheck::Lost(cur));
            }
        }
        match self.acquire(guard, volume_id, None).await {
            Ok(a) => Ok(Recheck::Kept(a.claim().clone())),
            Err(ClaimError::Conflict { .. } | ClaimError::Migration { .. }) => {
                match self.store.read(volume_id).await? {
                    Some(cur) => Ok(Recheck::Lost(cur)),
                    None => Err(ClaimError::Api {
                        volume: volume_id.to_string(),
                        source: ApiError::Unavailable(
                            "the claim changed while it was re-checked".into(),
                        ),
                    }),
                }
            }
            Err(e) => Err(e),
        }
    }

    /// This node's claims (or every claim), each with what its holder's host lease looks like.
    pub async fn list(&self, all: bool) -> Result<Vec<ClaimView>, ClaimError> {
        let claims = if all {
            self.store.all().await?
        } else {
            self.store.mine().await?
        };
        let mut leases: std::collections::BTreeMap<String, Option<LeaseRecord>> =
            Default::default();
        let mut nodes: std::collections::BTreeMap<String, Option<bool>> = Default::default();
        let mut out = Vec::with_capacity(claims.len());
        for claim in claims {
            let node = claim.node().to_string();
            if !leases.contains_key(&node) {
                let rec = self
                    .leases
                    .read(&node)
                    .await
                    .map_err(|source| ClaimError::Api {
                        volume: claim.volume_id.clone(),
                        source,
                    })?;
                leases.insert(node.clone(), rec);
            }
            let holder_lease = match &leases[&node] {
                None => HolderLease::Missing,
                Some(l) if l.holder.as_deref() != Some(claim.holder.as_str()) => {
                    HolderLease::OtherBoot {
                        now: l.holder.clone().unwrap_or_default(),
                    }
                }
                Some(l) => {
                    let renewed = l
                        .renew_time
                        .as_deref()
                        .and_then(|t| crate::time::age(t, std::time::SystemTime::now()));
                    let limit =
                        Duration::from_secs(u64::try_from(l.lease_duration_seconds).unwrap_or(0));
                    match renewed {
                        Some(r) if r > limit => HolderLease::LooksExpired { renewed: r },
                        _ => HolderLease::Renewing,
                    }
                }
            };
            if !nodes.contains_key(&node) {
                let exists = self.store.node_exists(&node).await;
                nodes.insert(node.clone(), exists);
            }
            out.push(ClaimView {
                claim,
                holder_lease,
                holder_node: nodes[&node],
            });
        }
        Ok(out)
    }

    /// This node's claims as the server has them.
    pub async fn mine(&self) -> Result<Vec<Claim>, ClaimError> {
        self.store.mine().await
    }

    pub fn store(&self) -> &S {
        &self.store
    }
}

/// One takeover attempt's view: the claim store as the proven protocol needs it, writing
/// `next` (our holder and epoch) on the swap.
struct Attempt<'a, S, L> {
    store: &'a S,
    leases: &'a L,
    next: Claim,
    /// The version this decision was made on: a claim that changed since (a migration joined,
    /// say) is decided again, not swapped.
    based_on: String,
}

impl<S: ClaimStore, L: LeaseApi> LeaseApi for Attempt<'_, S, L> {
    fn synced(&self) -> bool {
        self.leases.synced()
    }
    fn cached(&self, name: &str) -> Option<LeaseRecord> {
        self.leases.cached(name)
    }
    fn read(
        &self,
        name: &str,
    ) -> impl Future<Output = Result<Option<LeaseRecord>, ApiError>> + Send {
        self.leases.read(name)
    }
    fn verdict(&self, name: &str) -> Verdict {
        self.leases.verdict(name)
    }
    fn create(
        &self,
        rec: &LeaseRecord,
    ) -> impl Future<Output = Result<LeaseRecord, ApiError>> + Send {
        self.leases.create(rec)
    }
    fn replace(
        &self,
        rec: &LeaseRecord,
    ) -> impl Future<Output = Result<LeaseRecord, ApiError>> + Send {
        self.leases.replace(rec)
    }
    fn now_rfc3339(&self) -> String {
        self.leases.now_rfc3339()
    }
    fn event(
        &self,
        name: &str,
        reason: &str,
        message: &str,
        warning: bool,
    ) -> impl Future<Output = ()> + Send {
        self.leases.event(name, reason, message, warning)
    }
}

impl<S: ClaimStore, L: LeaseApi> ClaimApi for Attempt<'_, S, L> {
    async fn read_claim(&self, _claim: &str) -> Result<Option<ClaimRead>, ApiError> {
        match self.store.read(&self.next.volume_id).await {
            Ok(c) => Ok(c.map(|c| ClaimRead {
                // Changed since the decision: not the claim we decided to take.
                holder: if c.version == self.based_on {
                    c.node().to_string()
                } else {
                    String::new()
                },
                version: c.version,
            })),
            Err(ClaimError::Api { source, .. }) => Err(source),
            Err(e) => Err(ApiError::Unavailable(e.to_string())),
        }
    }
    async fn swap_claim(
        &self,
        _claim: &str,
        version: &str,
        _new_holder: &str,
    ) -> Result<(), ApiError> {
        let next = Claim {
            version: version.to_string(),
            ..self.next.clone()
        };
        self.store.replace(&next).await.map(|_| ())
    }
}
