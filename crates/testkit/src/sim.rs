//! An in-memory API server for the lease protocol, with per-client network faults, used by unit
//! tests and the randomized safety simulation under tokio's paused clock.
//!
//! It keeps what matters of the real server's semantics: one global resourceVersion sequence,
//! compare-and-swap writes (409 on a stale resourceVersion, 409 AlreadyExists, 404), a per-client
//! watch cache fed in commit order after the client's latency, and requests that can commit even
//! though their response is lost. Faults per client: one-way latency, partition (requests and
//! watch events lost; the watch relists after healing) and freeze (a SIGSTOPped process: nothing
//! is sent or processed until it resumes, then queued work goes out late).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use volfence::claims::{Claim, ClaimError, ClaimStore};
use volfence::fence::lease::{ApiError, LeaseApi, LeaseRecord};
use volfence::fence::observer::{Observer, Verdict};
use volfence::fence::takeover::{ClaimApi, ClaimRead};

/// xorshift64*: small, seeded, reproducible draws for the simulations' schedules.
#[derive(Debug, Clone)]
pub struct Rng(pub u64);

impl Rng {
    pub fn draw(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.draw() % n
    }
    pub fn millis(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(lo + self.below(hi - lo + 1))
    }
}

/// Network conditions of one client; change them at any time.
#[derive(Debug, Clone, Default)]
pub struct Net {
    /// One-way delay of requests, responses and watch events.
    pub latency: Duration,
    /// Nothing gets through either way.
    pub partitioned: bool,
    /// The client process is stopped.
    pub frozen: bool,
    /// Per mille of claim requests the server refuses without committing them: 429 Too Many
    /// Requests, 503, or a spurious 409 (a write raced by nobody the client knows of).
    pub errors_per_mille: u64,
}

/// How long a request into a partition takes to fail (the client's connect/read timeout).
pub const PARTITION_TIMEOUT: Duration = Duration::from_secs(1);

struct View {
    net: Net,
    cache: HashMap<String, LeaseRecord>,
    observer: Observer,
    /// Events were lost (partition, freeze): relist before trusting the cache.
    stale: bool,
    /// Watch only this lease (the agent's own, as the product does); None: every lease.
    only: Option<String>,
    /// Draws for injected errors (xorshift).
    dice: u64,
}

#[derive(Default)]
struct State {
    rv: u64,
    leases: BTreeMap<String, LeaseRecord>,
    /// role → (owner, resourceVersion), for the simulation's takeover compare-and-swap.
    claims: BTreeMap<String, (String, u64)>,
    /// Volume claims as the product's claims code stores them ([`ClaimStore`]), by volume id.
    volumes: BTreeMap<String, Claim>,
    views: Vec<Arc<Mutex<View>>>,
    events: Vec<String>,
    requests: HashMap<String, u64>,
}

impl State {
    /// Commits a lease write: the next resourceVersion, stored, and broadcast by the caller.
    fn write_lease(&mut self, mut r: LeaseRecord) -> (LeaseRecord, Option<LeaseRecord>) {
        self.rv += 1;
        r.resource_version = self.rv.to_string();
        self.leases.insert(r.name.clone(), r.clone());
        (r.clone(), Some(r))
    }
}

/// The server. Cheap to clone.
#[derive(Clone)]
pub struct SimServer {
    state: Arc<Mutex<State>>,
    lease_duration: Duration,
    grace: Duration,
}

/// One client (one host's agent): implements [`LeaseApi`].
#[derive(Clone)]
pub struct SimApi {
    server: SimServer,
    view: Arc<Mutex<View>>,
    name: String,
}

impl SimServer {
    pub fn new(lease_duration: Duration, grace: Duration) -> SimServer {
        SimServer {
            state: Arc::default(),
            lease_duration,
            grace,
        }
    }

    /// A new client whose watch starts with a full list.
    pub fn client(&self, name: &str, net: Net) -> SimApi {
        self.make_client(name, net, None)
    }

    /// A client that watches only its own lease (named `name`), as the agent does: other
    /// leases it knows only from its reads.
    pub fn agent_client(&self, name: &str, net: Net) -> SimApi {
        self.make_client(name, net, Some(name.to_string()))
    }

    /// The volume claims as stored.
    pub fn volume_claims(&self) -> BTreeMap<String, Claim> {
        self.state.lock().unwrap().volumes.clone()
    }

    fn make_client(&self, name: &str, net: Net, only: Option<String>) -> SimApi {
        let dice = name.bytes().fold(0x9E37_79B9_7F4A_7C15_u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        }) | 1;
        let view = Arc::new(Mutex::new(View {
            net,
            cache: HashMap::new(),
            observer: Observer::new(self.lease_duration, self.grace),
            stale: true,
            only,
            dice,
        }));
        self.state.lock().unwrap().views.push(view.clone());
        SimApi {
            server: self.clone(),
            view,
            name: name.to_string(),
        }
    }

    pub fn holder(&self, lease: &str) -> Option<String> {
        self.state
            .lock()
            .unwrap()
            .leases
            .get(lease)
            .and_then(|l| l.holder.clone())
    }

    pub fn lease(&self, lease: &str) -> Option<LeaseRecord> {
        self.state.lock().unwrap().leases.get(lease).cloned()
    }

    pub fn events(&self) -> Vec<String> {
        self.state.lock().unwrap().events.clone()
    }

    /// Requests sent by one client (by name), for request-rate accounting.
    pub fn requests(&self, client: &str) -> u64 {
        self.state
            .lock()
            .unwrap()
            .requests
            .get(client)
            .copied()
            .unwrap_or(0)
    }

    /// Another writer changes the lease (e.g. `kubectl annotate`): only the resourceVersion moves.
    pub fn touch(&self, lease: &str) {
        let mut st = self.state.lock().unwrap();
        st.rv += 1;
        let rv = st.rv.to_string();
        if let Some(l) = st.leases.get_mut(lease) {
            l.resource_version = rv;
            let l = l.clone();
            drop(st);
            self.broadcast(l);
        }
    }

    pub fn delete(&self, lease: &str) {
        let views = {
            let mut st = self.state.lock().unwrap();
            st.leases.remove(lease);
            st.views.clone()
        };
        for v in &views {
            let mut v = v.lock().unwrap();
            v.cache.remove(lease);
            v.observer.forget(lease);
        }
    }

    pub fn set_claim(&self, role: &str, owner: &str) {
        let mut st = self.state.lock().unwrap();
        st.rv += 1;
        let rv = st.rv;
        st.claims.insert(role.into(), (owner.into(), rv));
    }

    pub fn claim(&self, role: &str) -> Option<String> {
        self.state
            .lock()
            .unwrap()
            .claims
            .get(role)
            .map(|c| c.0.clone())
    }

    /// Delivers a committed change to every client's watch after its latency.
    fn broadcast(&self, rec: LeaseRecord) {
        let views = self.state.lock().unwrap().views.clone();
        for view in views {
            let latency = view.lock().unwrap().net.latency;
            let rec = rec.clone();
            tokio::spawn(async move {
                tokio::time::sleep(latency).await;
                let mut v = view.lock().unwrap();
                if v.only.as_ref().is_some_and(|o| *o != rec.name) {
                    // not watched
                } else if v.net.partitioned || v.net.frozen {
                    v.stale = true;
                } else {
                    apply(&mut v, rec);
                }
            });
        }
    }
}

fn rv_num(rv: &str) -> u64 {
    rv.parse().unwrap_or(0)
}

fn apply(v: &mut View, rec: LeaseRecord) {
    let newer = v
        .cache
        .get(&rec.name)
        .is_none_or(|c| rv_num(&c.resource_version) < rv_num(&rec.resource_version));
    if newer {
        v.observer.observe(
            &rec.name,
            &rec.resource_version,
            rec.holder.as_deref(),
            Instant::now(),
        );
        v.cache.insert(rec.name.clone(), rec);
    }
}

impl SimApi {
    pub fn net(&self) -> Net {
        self.view.lock().unwrap().net.clone()
    }

    pub fn set_net(&self, f: impl FnOnce(&mut Net)) {
        f(&mut self.view.lock().unwrap().net);
    }

    /// Relists if events were lost and the client can reach the server again.
    fn refresh(&self) {
        let mut v = self.view.lock().unwrap();
        if v.stale && !v.net.partitioned && !v.net.frozen {
            let leases: Vec<LeaseRecord> = self
                .server
                .state
                .lock()
                .unwrap()
                .leases
                .values()
                .cloned()
                .collect();
            for rec in leases {
                if v.only.as_ref().is_none_or(|o| *o == rec.name) {
                    apply(&mut v, rec);
                }
            }
            v.stale = false;
        }
    }

    async fn one_way(&self) -> Result<(), ApiError> {
        // a stopped process sends nothing; it resumes where it was
        while self.view.lock().unwrap().net.frozen {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let net = self.net();
        if net.partitioned {
            tokio::time::sleep(PARTITION_TIMEOUT).await;
            return Err(ApiError::Unavailable(
                "connection timed out (partitioned)".into(),
            ));
        }
        tokio::time::sleep(net.latency).await;
        if self.net().partitioned {
            return Err(ApiError::Unavailable(
                "connection reset (partitioned)".into(),
            ));
        }
        Ok(())
    }

    /// Sends a request: it commits at the server after the latency; the reply may still be lost.
    async fn call<T>(
        &self,
        f: impl FnOnce(&mut State) -> Result<(T, Option<LeaseRecord>), ApiError>,
    ) -> Result<T, ApiError> {
        *self
            .server
            .state
            .lock()
            .unwrap()
            .requests
            .entry(self.name.clone())
            .or_default() += 1;
        self.one_way().await?;
        let (out, changed) = {
            let mut st = self.server.state.lock().unwrap();
            f(&mut st)?
        };
        if let Some(rec) = changed {
            self.server.broadcast(rec);
        }
        self.one_way()
            .await
            .map_err(|_| ApiError::Unavailable("response lost".into()))?;
        Ok(out)
    }

    /// A claim request: like [`SimApi::call`], but the server may refuse it first (the fault
    /// `errors_per_mille`), without committing anything.
    async fn claim_call<T>(
        &self,
        f: impl FnOnce(&mut State) -> Result<T, ApiError>,
    ) -> Result<T, ApiError> {
        let refused = {
            let mut v = self.view.lock().unwrap();
            v.dice ^= v.dice << 13;
            v.dice ^= v.dice >> 7;
            v.dice ^= v.dice << 17;
            let roll = v.dice % 1000;
            (roll < v.net.errors_per_mille).then_some(roll % 3)
        };
        self.call(move |st| match refused {
            Some(0) => Err(ApiError::Unavailable(
                "429 Too Many Requests (retry after 1s)".into(),
            )),
            Some(1) => Err(ApiError::Unavailable("503 Service Unavailable".into())),
            Some(_) => Err(ApiError::Conflict),
            None => f(st).map(|t| (t, None)),
        })
        .await
    }

    async fn get(&self, name: &str) -> Result<Option<LeaseRecord>, ApiError> {
        let n = name.to_string();
        let rec = self
            .call(move |st| Ok((st.leases.get(&n).cloned(), None)))
            .await?;
        if let Some(r) = &rec {
            apply(&mut self.view.lock().unwrap(), r.clone());
        }
        Ok(rec)
    }
}

/// Roles stand in for volume claims: a holder and a version on the global sequence.
impl ClaimApi for SimApi {
    async fn read_claim(&self, role: &str) -> Result<Option<ClaimRead>, ApiError> {
        let role = role.to_string();
        let c = self
            .call(move |st| Ok((st.claims.get(&role).cloned(), None)))
            .await?;
        Ok(c.map(|(holder, v)| ClaimRead {
            holder,
            version: v.to_string(),
        }))
    }

    /// A decision delayed by a freeze or a slow network fails here if the claim changed since
    /// it was read.
    async fn swap_claim(
        &self,
        role: &str,
        expected_version: &str,
        new_holder: &str,
    ) -> Result<(), ApiError> {
        let (role, new) = (role.to_string(), new_holder.to_string());
        let expected = expected_version.to_string();
        self.call(move |st| {
            match st.claims.get(&role) {
                Some((_, v)) if v.to_string() == expected => {}
                _ => return Err(ApiError::Conflict),
            }
            st.rv += 1;
            let rv = st.rv;
            st.claims.insert(role, (new, rv));
            Ok(((), None))
        })
        .await
    }
}

impl LeaseApi for SimApi {
    fn synced(&self) -> bool {
        true
    }

    async fn read(&self, name: &str) -> Result<Option<LeaseRecord>, ApiError> {
        self.get(name).await
    }

    fn cached(&self, name: &str) -> Option<LeaseRecord> {
        self.refresh();
        self.view.lock().unwrap().cache.get(name).cloned()
    }

    fn verdict(&self, name: &str) -> Verdict {
        self.refresh();
        self.view
            .lock()
            .unwrap()
            .observer
            .verdict(name, Instant::now())
    }

    async fn create(&self, rec: &LeaseRecord) -> Result<LeaseRecord, ApiError> {
        let rec = rec.clone();
        self.call(move |st| {
            if st.leases.contains_key(&rec.name) {
                return Err(ApiError::AlreadyExists);
            }
            Ok(st.write_lease(rec))
        })
        .await
    }

    async fn replace(&self, rec: &LeaseRecord) -> Result<LeaseRecord, ApiError> {
        let rec = rec.clone();
        self.call(move |st| {
            let cur = st.leases.get(&rec.name).ok_or(ApiError::NotFound)?;
            if cur.resource_version != rec.resource_version {
                return Err(ApiError::Conflict);
            }
            Ok(st.write_lease(rec))
        })
        .await
    }

    fn now_rfc3339(&self) -> String {
        // Informational only; the simulation has no wall clock worth trusting either.
        "2026-01-01T00:00:00.000000Z".into()
    }

    async fn event(&self, name: &str, reason: &str, message: &str, _warning: bool) {
        self.server
            .state
            .lock()
            .unwrap()
            .events
            .push(format!("{name} {reason}: {message}"));
    }
}

fn api_err(volume: &str) -> impl Fn(ApiError) -> ClaimError + '_ {
    move |source| ClaimError::Api {
        volume: volume.to_string(),
        source,
    }
}

/// The product's claims code on the simulated server: compare-and-swap on a version from the
/// global sequence, 404/409 as the real server answers them.
impl ClaimStore for SimApi {
    async fn read(&self, volume_id: &str) -> Result<Option<Claim>, ClaimError> {
        let id = volume_id.to_string();
        self.claim_call(move |st| Ok(st.volumes.get(&id).cloned()))
            .await
            .map_err(api_err(volume_id))
    }

    async fn create(&self, claim: &Claim) -> Result<Claim, ApiError> {
        let c = claim.clone();
        self.claim_call(move |st| {
            if st.volumes.contains_key(&c.volume_id) {
                return Err(ApiError::AlreadyExists);
            }
            st.rv += 1;
            let c = Claim {
                version: st.rv.to_string(),
                ..c
            };
            st.volumes.insert(c.volume_id.clone(), c.clone());
            Ok(c)
        })
        .await
    }

    async fn replace(&self, claim: &Claim) -> Result<Claim, ApiError> {
        let c = claim.clone();
        self.claim_call(move |st| {
            let cur = st.volumes.get(&c.volume_id).ok_or(ApiError::NotFound)?;
            if cur.version != c.version {
                return Err(ApiError::Conflict);
            }
            st.rv += 1;
            let c = Claim {
                version: st.rv.to_string(),
                ..c
            };
            st.volumes.insert(c.volume_id.clone(), c.clone());
            Ok(c)
        })
        .await
    }

    async fn delete(&self, claim: &Claim) -> Result<(), ApiError> {
        let c = claim.clone();
        self.claim_call(move |st| {
            let cur = st.volumes.get(&c.volume_id).ok_or(ApiError::NotFound)?;
            if cur.version != c.version {
                return Err(ApiError::Conflict);
            }
            st.volumes.remove(&c.volume_id);
            Ok(())
        })
        .await
    }

    async fn mine(&self) -> Result<Vec<Claim>, ClaimError> {
        let me = self.name.clone();
        self.claim_call(move |st| {
            Ok(st
                .volumes
                .values()
                .filter(|c| c.held_by(&me))
                .cloned()
                .collect())
        })
        .await
        .map_err(api_err("*"))
    }

    async fn all(&self) -> Result<Vec<Claim>, ClaimError> {
        self.claim_call(|st| Ok(st.volumes.values().cloned().collect()))
            .await
            .map_err(api_err("*"))
    }

    async fn node_exists(&self, _node: &str) -> Option<bool> {
        None // the simulation has no Node objects
    }

    async fn event(&self, volume_id: &str, reason: &str, message: &str, _warning: bool) {
        self.server
            .state
            .lock()
            .unwrap()
            .events
            .push(format!("{volume_id} {reason}: {message}"));
    }
}
