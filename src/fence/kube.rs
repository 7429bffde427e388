//! [`LeaseApi`] on the real `kube` client: one watch over the lease namespace feeds one reflector
//! store and the observer; the protocol reads only that cache (never a polling GET) and writes
//! with JSON merge patches that carry the resourceVersion they were based on.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::{Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Client};
use serde_json::json;
use tokio::time::Instant;

use super::lease::{ApiError, LeaseApi, LeaseRecord};
use super::observer::{Observer, Verdict};
use crate::config::KubernetesSettings;

#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    /// The kubeconfig could not be read or used.
    #[error("kubeconfig {path}: {message}")]
    Kubeconfig { path: String, message: String },
    /// No kubeconfig given and none could be inferred.
    #[error("no Kubernetes configuration: set [kubernetes] kubeconfig, KUBECONFIG, or run in a cluster ({0})")]
    Infer(String),
    /// The client could not be built.
    #[error("cannot create the Kubernetes client: {0}")]
    Client(String),
}

/// Builds a client from `[kubernetes]`: the kubeconfig file if set, else the usual inference
/// (in-cluster service account, `KUBECONFIG`, `~/.kube/config`).
pub async fn client(settings: &KubernetesSettings) -> Result<Client, KubeError> {
    let mut config = match &settings.kubeconfig {
        Some(path) => {
            let p = path.display().to_string();
            let kc = Kubeconfig::read_from(path).map_err(|e| KubeError::Kubeconfig {
                path: p.clone(),
                message: e.to_string(),
            })?;
            kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
                .await
                .map_err(|e| KubeError::Kubeconfig {
                    path: p,
                    message: e.to_string(),
                })?
        }
        None => kube::Config::infer()
            .await
            .map_err(|e| KubeError::Infer(e.to_string()))?,
    };
    config.connect_timeout = Some(settings.request_timeout);
    Client::try_from(config).map_err(|e| KubeError::Client(e.to_string()))
}

/// The leases of one namespace as this host sees them, plus the writes the protocol makes.
#[derive(Clone)]
pub struct KubeLeases {
    api: Api<Lease>,
    client: Client,
    store: Store<Lease>,
    observer: Arc<Mutex<Observer>>,
    synced: Arc<AtomicBool>,
    namespace: String,
    node: String,
}

impl KubeLeases {
    /// Starts the one shared watch over `namespace`. Returns at once; until the initial list is
    /// in, [`LeaseApi::synced`] is false and the protocol takes no decision. The returned future
    /// drives the watch for the agent's whole life: run it as a critical task.
    pub fn start(
        client: Client,
        namespace: &str,
        node: &str,
        lease_duration: Duration,
        grace: Duration,
    ) -> (
        KubeLeases,
        impl std::future::Future<Output = String> + Send + 'static,
    ) {
        let api: Api<Lease> = Api::namespaced(client.clone(), namespace);
        let (store, writer) = reflector::store();
        let observer = Arc::new(Mutex::new(Observer::new(lease_duration, grace)));
        let synced = Arc::new(AtomicBool::new(false));
        let (obs, sy) = (observer.clone(), synced.clone());
        let stream = watcher(api.clone(), watcher::Config::default())
            .default_backoff()
            .reflect(writer);
        let drive = async move {
            let mut stream = std::pin::pin!(stream);
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
                        if !sy.swap(true, Ordering::SeqCst) {
                            tracing::info!("lease watch synced");
                        }
                    }
                    Ok(watcher::Event::Init) => {}
                    // The watcher backs off and relists by itself; the observer keeps counting.
                    Err(e) => tracing::warn!("lease watch: {e}"),
                }
            }
            "the lease watch ended".to_string()
        };
        let leases = KubeLeases {
            api,
            client,
            store,
            observer,
            synced,
            namespace: namespace.to_string(),
            node: node.to_string(),
        };
        (leases, drive)
    }

    /// A consistent read (GET) of one lease, also recorded by the observer.
    pub async fn get(&self, name: &str) -> Result<Option<LeaseRecord>, ApiError> {
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
            Err(e) => Err(api_error(e)),
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

fn api_error(e: kube::Error) -> ApiError {
    match e {
        kube::Error::Api(s) if s.is_already_exists() => ApiError::AlreadyExists,
        kube::Error::Api(s) if s.is_conflict() || s.code == 409 => ApiError::Conflict,
        kube::Error::Api(s) if s.is_not_found() => ApiError::NotFound,
        other => ApiError::Unavailable(other.to_string()),
    }
}

impl LeaseApi for KubeLeases {
    fn synced(&self) -> bool {
        self.synced.load(Ordering::SeqCst)
    }

    fn cached(&self, name: &str) -> Option<LeaseRecord> {
        self.store
            .get(&ObjectRef::new(name).within(&self.namespace))
            .map(|l| record(&l))
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
            .create(&PostParams::default(), &lease)
            .await
            .map(|l| record(&l))
            .map_err(api_error)
    }

    async fn replace(&self, rec: &LeaseRecord) -> Result<LeaseRecord, ApiError> {
        // The resourceVersion in a merge patch is a precondition: 409 if the lease moved on.
        let patch =
            json!({"metadata": {"resourceVersion": rec.resource_version}, "spec": spec_json(rec)});
        self.api
            .patch(&rec.name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map(|l| record(&l))
            .map_err(api_error)
    }

    fn now_rfc3339(&self) -> String {
        rfc3339(SystemTime::now(), true)
    }

    async fn event(&self, name: &str, reason: &str, message: &str, warning: bool) {
        let involved = json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "name": name, "namespace": self.namespace});
        let spec = crate::events::EventSpec {
            reason,
            action: reason,
            message,
            warning,
        };
        let ev = crate::events::event_object(
            &self.namespace,
            involved,
            &spec,
            &self.node,
            SystemTime::now(),
        );
        if let Err(e) = crate::events::record(&self.client, ev).await {
            tracing::warn!("cannot record event {reason} on lease {name}: {e}");
        }
    }
}

/// RFC 3339 UTC (`2026-11-21T22:00:00Z`, or with microseconds for MicroTime fields).
pub fn rfc3339(t: SystemTime, micros: bool) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // civil_from_days (Howard Hinnant)
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let (h, m, s) = (rem / 3600, rem % 3600 / 60, rem % 60);
    if micros {
        format!(
            "{year:04}-{month:02}-{day:02}T{h:02}:{m:02}:{s:02}.{:06}Z",
            d.subsec_micros()
        )
    } else {
        format!("{year:04}-{month:02}-{day:02}T{h:02}:{m:02}:{s:02}Z")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_formats_known_instants() {
        assert_eq!(rfc3339(UNIX_EPOCH, false), "1970-01-01T00:00:00Z");
        let t = UNIX_EPOCH + Duration::from_micros(1_795_298_400_123_456);
        assert_eq!(rfc3339(t, true), "2026-11-21T22:00:00.123456Z");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(rfc3339(leap, false), "2000-02-29T00:00:00Z");
    }
}
