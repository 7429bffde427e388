//! [`LeaseApi`] on the real `kube` client. The agent watches exactly one Lease, its own (a field
//! selector on its name), into the one Lease reflector store; the fence reads only that cache
//! and writes with JSON merge patches that carry the resourceVersion they were based on.
//!
//! Other hosts' leases are never watched: at 5,000 hosts renewing every 2.5 s a namespace-wide
//! watch would deliver 2,000 events/s to every agent. A peer's lease is read (a consistent GET)
//! only when a claim it holds is in question, and every read is a sighting for the observer: the
//! same resourceVersion seen again means no write since the first sighting, so the observer rule
//! holds on sightings as well as on a watch. A refused Connect costs one GET of the holder's
//! lease; the takeover's own confirming GET is the last sighting before the swap.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime};

use futures::{FutureExt, StreamExt};
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::{ListParams, Patch};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::Api;
use serde_json::json;
use tokio::time::Instant;

use super::client::{patch_params, post_params};
use super::error::StatusError;
use super::events::{EventSpec, Events};
use crate::fence::observer::{Observer, Verdict};
use crate::fence::{ApiError, LeaseApi, LeaseRecord};
use crate::nvme::hostid_check::{HostIdPeers, HOST_ID_LABEL};

/// Peers' last sightings kept at most: one per host whose claim was in question lately.
const MAX_PEERS: usize = 4096;

/// This host's lease as it watches it, other hosts' leases as last read, and the writes the
/// protocol makes.
#[derive(Clone)]
pub struct KubeLeases {
    api: Api<Lease>,
    events: Events,
    /// The name of our own lease: the only one watched.
    own: String,
    /// Ready (kube-runtime's own gate) once the first list is in.
    store: Store<Lease>,
    observer: Arc<Mutex<Observer>>,
    /// Other hosts' leases as the last consistent read returned them.
    sightings: Arc<Mutex<HashMap<String, LeaseRecord>>>,
    /// The watch's last failure until it lists again: why the fence cannot decide.
    watch_error: Arc<Mutex<Option<ApiError>>>,
    /// Watch events received, for the scaling benchmark and for people.
    received: Arc<AtomicU64>,
    namespace: String,
    /// This host's NVMe host ID, labelled on every write of its lease (see hostid_check).
    host_id: Arc<OnceLock<String>>,
}

impl KubeLeases {
    /// Starts the watch of this host's own lease (`cluster.node()`) in `namespace`. Returns at
    /// once; until the initial list is in, [`LeaseApi::synced`] is false and the protocol takes
    /// no decision. The returned future drives the watch for the agent's whole life: run it as
    /// a critical task.
    pub fn start(
        cluster: &super::Cluster,
        namespace: &str,
        lease_duration: Duration,
        grace: Duration,
    ) -> (
        KubeLeases,
        impl std::future::Future<Output = String> + Send + 'static,
    ) {
        let api: Api<Lease> = Api::namespaced(cluster.client().clone(), namespace);
        let own = cluster.node().to_string();
        let (store, writer) = reflector::store();
        let observer = Arc::new(Mutex::new(Observer::new(lease_duration, grace)));
        let watch_error = Arc::new(Mutex::new(None::<ApiError>));
        let received = Arc::new(AtomicU64::new(0));
        let (obs, we, rc) = (observer.clone(), watch_error.clone(), received.clone());
        let only_ours = watcher::Config::default().fields(&format!("metadata.name={own}"));
        let stream = watcher(api.clone(), only_ours)
            .default_backoff()
            .reflect(writer);
        let drive = async move {
            let mut stream = std::pin::pin!(stream);
            let mut listed = false;
            while let Some(ev) = stream.next().await {
                rc.fetch_add(1, Ordering::Relaxed);
                match ev {
                    Ok(watcher::Event::Apply(l) | watcher::Event::InitApply(l)) => {
                        let name = l.metadata.name.clone().unwrap_or_default();
                        let rv = l.metadata.resource_version.clone().unwrap_or_default();
                        let holder = l.spec.as_ref().and_then(|s| s.holder_identity.clone());
                        obs.lock()
                            .unwrap()
                            .observe(&name, &rv, holder.as_deref(), Instant::now());
                    }
                    Ok(watcher::Event::Delete(l)) => obs
                        .lock()
                        .unwrap()
                        .forget(&l.metadata.name.unwrap_or_default()),
                    Ok(watcher::Event::InitDone) => {
                        *we.lock().unwrap() = None;
                        if !std::mem::replace(&mut listed, true) {
                            tracing::info!("lease watch synced");
                        }
                    }
                    Ok(watcher::Event::Init) => {}
                    // The watcher backs off and relists by itself; the observer keeps counting.
                    // One line per change of cause, not one per back-off step.
                    Err(e) => {
                        let why = watch_failure(&e);
                        let mut last = we.lock().unwrap();
                        if last.as_ref() != Some(&why) {
                            tracing::warn!("lease watch: {why}");
                            *last = Some(why);
                        }
                    }
                }
            }
            "the lease watch ended".to_string()
        };
        let leases = KubeLeases {
            api,
            events: cluster.events().clone(),
            own,
            store,
            observer,
            sightings: Arc::default(),
            watch_error,
            received,
            namespace: namespace.to_string(),
            host_id: Arc::default(),
        };
        (leases, drive)
    }

    /// Labels every later write of this host's lease with its NVMe host ID (set once, before
    /// the fence first writes).
    pub fn label_host_id(&self, host_id: &str) {
        let _ = self.host_id.set(host_id.to_ascii_lowercase());
    }

    fn labels(&self) -> serde_json::Value {
        let mut l = json!({"app.kubernetes.io/managed-by": "volfence"});
        if let Some(id) = self.host_id.get() {
            l[HOST_ID_LABEL] = json!(id);
        }
        l
    }

    /// Watch events received so far (the own lease's renewals, and nothing about other hosts).
    pub fn watch_events(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }

    /// A consistent read, which is also a sighting for the observer.
    async fn get(&self, name: &str) -> Result<Option<LeaseRecord>, ApiError> {
        let got = self
            .api
            .get_opt(name)
            .await
            .map_err(|e| ApiError::from(StatusError::from_kube(&e)))?;
        let rec = got.as_ref().map(record);
        let mut observer = self.observer.lock().unwrap();
        match &rec {
            Some(r) => observer.observe(
                name,
                &r.resource_version,
                r.holder.as_deref(),
                Instant::now(),
            ),
            // Gone: a later lease of that name is a new one, counted from its first sighting.
            None => observer.forget(name),
        }
        if name != self.own {
            let mut seen = self.sightings.lock().unwrap();
            match &rec {
                Some(r) => {
                    if seen.len() >= MAX_PEERS && !seen.contains_key(name) {
                        // Forgetting a peer only restarts its count: slower, never unsafe.
                        if let Some(k) = seen.keys().next().cloned() {
                            seen.remove(&k);
                            observer.forget(&k);
                        }
                    }
                    seen.insert(name.to_string(), r.clone());
                }
                None => {
                    seen.remove(name);
                }
            }
        }
        Ok(rec)
    }
}

fn record(l: &Lease) -> LeaseRecord {
    let spec = l.spec.clone().unwrap_or_default();
    let time = |t: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime>| {
        t.and_then(|t| serde_json::to_value(t).ok())
            .and_then(|v| v.as_str().map(str::to_string))
    };
    LeaseRecord {
        name: l.metadata.name.clone().unwrap_or_default(),
        resource_version: l.metadata.resource_version.clone().unwrap_or_default(),
        holder: spec.holder_identity.clone(),
        lease_duration_seconds: spec.lease_duration_seconds.unwrap_or(0),
        lease_transitions: spec.lease_transitions.unwrap_or(0),
        acquire_time: time(spec.acquire_time),
        renew_time: time(spec.renew_time),
    }
}

fn spec_json(rec: &LeaseRecord) -> serde_json::Value {
    json!({
        "holderIdentity": rec.holder,
        "leaseDurationSeconds": rec.lease_duration_seconds,
        "leaseTransitions": rec.lease_transitions,
        "acquireTime": rec.acquire_time,
        "renewTime": rec.renew_time,
    })
}

/// What a failed watch says to the operator: the server's own words when it gave a Status.
fn watch_failure(e: &watcher::Error) -> ApiError {
    let status = match e {
        watcher::Error::InitialListFailed(kube::Error::Api(s))
        | watcher::Error::WatchStartFailed(kube::Error::Api(s))
        | watcher::Error::WatchFailed(kube::Error::Api(s)) => Some(s.as_ref()),
        watcher::Error::WatchError(s) => Some(s.as_ref()),
        _ => None,
    };
    match status.map(|s| ApiError::from(StatusError::from_status(s))) {
        Some(a @ (ApiError::NamespaceMissing(_) | ApiError::Forbidden(_))) => a,
        _ => ApiError::Unavailable(e.to_string()),
    }
}

impl LeaseApi for KubeLeases {
    fn synced(&self) -> bool {
        // The reflector's own readiness: set when the first list is in, never unset.
        matches!(self.store.wait_until_ready().now_or_never(), Some(Ok(())))
    }

    fn watch_error(&self) -> Option<ApiError> {
        self.watch_error.lock().unwrap().clone()
    }

    fn cached(&self, name: &str) -> Option<LeaseRecord> {
        if name != self.own {
            return self.sightings.lock().unwrap().get(name).cloned();
        }
        self.store
            .get(&ObjectRef::new(name).within(&self.namespace))
            .map(|l| record(&l))
    }

    async fn read(&self, name: &str) -> Result<Option<LeaseRecord>, ApiError> {
        self.get(name).await
    }

    fn verdict(&self, name: &str) -> Verdict {
        self.observer.lock().unwrap().verdict(name, Instant::now())
    }

    async fn create(&self, rec: &LeaseRecord) -> Result<LeaseRecord, ApiError> {
        let lease: Lease = serde_json::from_value(json!({
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": rec.name, "namespace": self.namespace, "labels": self.labels()},
            "spec": spec_json(rec),
        }))
        .map_err(|e| ApiError::Unavailable(format!("building the Lease: {e}")))?;
        self.api
            .create(&post_params(), &lease)
            .await
            .map(|l| record(&l))
            .map_err(|e| StatusError::from_kube(&e).into())
    }

    async fn replace(&self, rec: &LeaseRecord) -> Result<LeaseRecord, ApiError> {
        // The resourceVersion in a merge patch is a precondition: 409 if the lease moved on.
        // The labels too: a lease an older agent wrote, or a host whose host ID changed.
        let patch = json!({
            "metadata": {"resourceVersion": rec.resource_version, "labels": self.labels()},
            "spec": spec_json(rec),
        });
        self.api
            .patch(&rec.name, &patch_params(), &Patch::Merge(&patch))
            .await
            .map(|l| record(&l))
            .map_err(|e| StatusError::from_kube(&e).into())
    }

    fn now_rfc3339(&self) -> String {
        crate::time::rfc3339(SystemTime::now(), true)
    }

    async fn event(&self, name: &str, reason: &str, message: &str, warning: bool) {
        let spec = EventSpec {
            reason,
            action: reason,
            message,
            warning,
        };
        self.events.on_lease(&self.namespace, name, &spec).await;
    }
}

impl HostIdPeers for KubeLeases {
    async fn leases_with_host_id(
        &self,
        host_id: &str,
        consistent: bool,
    ) -> Result<Vec<LeaseRecord>, ApiError> {
        let lp = ListParams::default().labels(&format!("{HOST_ID_LABEL}={host_id}"));
        // The cache (resourceVersion 0) for the periodic look: no etcd read per host.
        let lp = if consistent { lp } else { lp.match_any() };
        let list = self
            .api
            .list(&lp)
            .await
            .map_err(|e| ApiError::from(StatusError::from_kube(&e)))?;
        Ok(list.items.iter().map(record).collect())
    }

    async fn warn(&self, reason: &str, message: &str) {
        LeaseApi::event(self, &self.own, reason, message, true).await;
    }
}
