//! [`LeaseApi`] on the real `kube` client: one watch over the lease namespace feeds the one
//! Lease reflector store and the observer; the protocol reads only that cache (never a polling
//! GET) and writes with JSON merge patches that carry the resourceVersion they were based on.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use futures::{FutureExt, StreamExt};
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::Patch;
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

/// The leases of one namespace as this host sees them, plus the writes the protocol makes.
#[derive(Clone)]
pub struct KubeLeases {
    api: Api<Lease>,
    events: Events,
    /// Ready (kube-runtime's own gate) once the first list is in.
    store: Store<Lease>,
    observer: Arc<Mutex<Observer>>,
    /// The watch's last failure until it lists again: why the fence cannot decide.
    watch_error: Arc<Mutex<Option<ApiError>>>,
    namespace: String,
}

impl KubeLeases {
    /// Starts the one shared watch over `namespace`. Returns at once; until the initial list is
    /// in, [`LeaseApi::synced`] is false and the protocol takes no decision. The returned future
    /// drives the watch for the agent's whole life: run it as a critical task.
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
        let (store, writer) = reflector::store();
        let observer = Arc::new(Mutex::new(Observer::new(lease_duration, grace)));
        let watch_error = Arc::new(Mutex::new(None::<ApiError>));
        let (obs, we) = (observer.clone(), watch_error.clone());
        let stream = watcher(api.clone(), watcher::Config::default())
            .default_backoff()
            .reflect(writer);
        let drive = async move {
            let mut stream = std::pin::pin!(stream);
            let mut listed = false;
            while let Some(ev) = stream.next().await {
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
            store,
            observer,
            watch_error,
            namespace: namespace.to_string(),
        };
        (leases, drive)
    }

    async fn get(&self, name: &str) -> Result<Option<LeaseRecord>, ApiError> {
        match self.api.get_opt(name).await {
            Ok(Some(l)) => {
                let rec = record(&l);
                self.observer.lock().unwrap().observe(
                    name,
                    &rec.resource_version,
                    rec.holder.as_deref(),
                    Instant::now(),
                );
                Ok(Some(rec))
            }
            Ok(None) => Ok(None),
            Err(e) => Err(StatusError::from_kube(&e).into()),
        }
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
            "metadata": {"name": rec.name, "namespace": self.namespace, "labels": {"app.kubernetes.io/managed-by": "volfence"}},
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
        let patch =
            json!({"metadata": {"resourceVersion": rec.resource_version}, "spec": spec_json(rec)});
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
