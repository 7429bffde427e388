//! [`LeaseApi`] on the real `kube` client: one watch over the lease namespace feeds one reflector
//! store and the observer; the protocol reads only that cache (never a polling GET) and writes
//! with JSON merge patches that carry the resourceVersion they were based on.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

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
    // kube retries 429/503/504 by itself (up to 15 times, backing off to minutes). The fence
    // must see each answer when it comes: a renew that failed is a failed renew, and the loop
    // retries on its own schedule, within D − M.
    config.default_retry = false;
    // Named in the API server's audit log and in managedFields, not as a generic kube-rs client.
    config.headers.push((
        hyper::header::USER_AGENT,
        hyper::header::HeaderValue::from_static(USER_AGENT),
    ));
    Client::try_from(config).map_err(|e| KubeError::Client(e.to_string()))
}

/// The User-Agent of every request: `volfenced/<version>`.
pub const USER_AGENT: &str = concat!("volfenced/", env!("CARGO_PKG_VERSION"));
/// The field manager of every write, so `kubectl get -o yaml --show-managed-fields` names us.
pub const FIELD_MANAGER: &str = "volfenced";

pub fn post_params() -> PostParams {
    PostParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..PostParams::default()
    }
}

pub fn patch_params() -> PatchParams {
    PatchParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..PatchParams::default()
    }
}

/// The leases of one namespace as this host sees them, plus the writes the protocol makes.
#[derive(Clone)]
pub struct KubeLeases {
    api: Api<Lease>,
    client: Client,
    store: Store<Lease>,
    observer: Arc<Mutex<Observer>>,
    synced: Arc<AtomicBool>,
    /// The watch's last failure until it lists again: why the fence cannot decide.
    watch_error: Arc<Mutex<Option<ApiError>>>,
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
        let watch_error = Arc::new(Mutex::new(None::<ApiError>));
        let (obs, sy, we) = (observer.clone(), synced.clone(), watch_error.clone());
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
                        *we.lock().unwrap() = None;
                        if !sy.swap(true, Ordering::SeqCst) {
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
            client,
            store,
            observer,
            synced,
            watch_error,
            namespace: namespace.to_string(),
            node: node.to_string(),
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
        kube::Error::Api(s) => status_error(&s),
        other => ApiError::Unavailable(other.to_string()),
    }
}

/// A Status the server answered with, as the protocol needs to tell them apart: a missing
/// namespace is a 404 whose details name the namespace, not the object.
fn status_error(s: &kube::core::Status) -> ApiError {
    let details = s.details.as_ref();
    match s.code {
        409 if s.is_already_exists() => ApiError::AlreadyExists,
        409 => ApiError::Conflict,
        404 if details.is_some_and(|d| d.kind == "namespaces") => {
            ApiError::NamespaceMissing(details.map(|d| d.name.clone()).unwrap_or_default())
        }
        404 => ApiError::NotFound,
        403 => ApiError::Forbidden(s.message.clone()),
        code => ApiError::Unavailable(format!("{code} {}: {}", s.reason, s.message)),
    }
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
    match status.map(status_error) {
        Some(a @ (ApiError::NamespaceMissing(_) | ApiError::Forbidden(_))) => a,
        _ => ApiError::Unavailable(e.to_string()),
    }
}

impl LeaseApi for KubeLeases {
    fn synced(&self) -> bool {
        self.synced.load(Ordering::SeqCst)
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
            .map_err(api_error)
    }

    async fn replace(&self, rec: &LeaseRecord) -> Result<LeaseRecord, ApiError> {
        // The resourceVersion in a merge patch is a precondition: 409 if the lease moved on.
        let patch =
            json!({"metadata": {"resourceVersion": rec.resource_version}, "spec": spec_json(rec)});
        self.api
            .patch(&rec.name, &patch_params(), &Patch::Merge(&patch))
            .await
            .map(|l| record(&l))
            .map_err(api_error)
    }

    fn now_rfc3339(&self) -> String {
        crate::time::rfc3339(SystemTime::now(), true)
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

#[cfg(test)]
mod tests {
    use super::*;

    /// What the server sees of a write: the agent's name in User-Agent and as field manager.
    #[tokio::test]
    async fn writes_name_the_agent_to_the_server() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let dir = tempfile::tempdir().unwrap();
        let kc = dir.path().join("kubeconfig");
        std::fs::write(
            &kc,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: http://127.0.0.1:{port}\n\
                 users:\n- name: u\n  user: {{}}\ncontexts:\n- name: x\n  context:\n    cluster: c\n    user: u\n\
                 current-context: x\n"
            ),
        )
        .unwrap();
        let settings = KubernetesSettings {
            kubeconfig: Some(kc),
            request_timeout: Duration::from_secs(5),
        };
        let client = client(&settings).await.unwrap();
        let server = tokio::spawn(async move {
            let (mut sock, _) = listener.accept().await.unwrap();
            let mut head = Vec::new();
            let mut buf = [0u8; 4096];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = sock.read(&mut buf).await.unwrap();
                assert!(n > 0, "connection closed before the request head");
                head.extend_from_slice(&buf[..n]);
            }
            let _ = sock
                .write_all(b"HTTP/1.1 500 Internal Server Error\r\ncontent-length: 0\r\n\r\n")
                .await;
            String::from_utf8_lossy(&head).to_lowercase()
        });
        let api: Api<Lease> = Api::namespaced(client, "ns");
        let lease: Lease = serde_json::from_value(json!({"metadata": {"name": "n1"}})).unwrap();
        let _ = api.create(&post_params(), &lease).await;
        let head = server.await.unwrap();
        assert!(
            head.contains(&format!("user-agent: {}", USER_AGENT.to_lowercase())),
            "{head}"
        );
        assert!(head.contains("fieldmanager=volfenced"), "{head}");
    }

    fn status(body: &str) -> kube::core::Status {
        serde_json::from_str(body).unwrap()
    }

    /// Bodies as a kube-apiserver sends them (v1.24+): the namespace case differs from a
    /// missing object only in `details.kind`.
    #[test]
    fn server_statuses_map_to_what_the_operator_must_do() {
        let missing_ns = status(
            r#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"namespaces \"kube-node-lease\" not found","reason":"NotFound","details":{"name":"kube-node-lease","kind":"namespaces"},"code":404}"#,
        );
        assert_eq!(
            status_error(&missing_ns),
            ApiError::NamespaceMissing("kube-node-lease".into())
        );
        let missing_lease = status(
            r#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"leases.coordination.k8s.io \"n1\" not found","reason":"NotFound","details":{"name":"n1","group":"coordination.k8s.io","kind":"leases"},"code":404}"#,
        );
        assert_eq!(status_error(&missing_lease), ApiError::NotFound);
        let forbidden = status(
            r#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"leases.coordination.k8s.io is forbidden: User \"system:serviceaccount:default:x\" cannot list resource \"leases\" in API group \"coordination.k8s.io\" in the namespace \"kube-node-lease\"","reason":"Forbidden","details":{"group":"coordination.k8s.io","kind":"leases"},"code":403}"#,
        );
        assert!(matches!(status_error(&forbidden),
            ApiError::Forbidden(m) if m.contains("cannot list resource \"leases\"")));
        let exists = status(
            r#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"leases.coordination.k8s.io \"n1\" already exists","reason":"AlreadyExists","details":{"name":"n1","group":"coordination.k8s.io","kind":"leases"},"code":409}"#,
        );
        assert_eq!(status_error(&exists), ApiError::AlreadyExists);
        let conflict = status(
            r#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"Operation cannot be fulfilled on leases.coordination.k8s.io \"n1\": the object has been modified; please apply your changes to the latest version and try again","reason":"Conflict","details":{"name":"n1","group":"coordination.k8s.io","kind":"leases"},"code":409}"#,
        );
        assert_eq!(status_error(&conflict), ApiError::Conflict);
        let busy = status(
            r#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"etcdserver: request timed out","reason":"InternalError","code":500}"#,
        );
        assert!(
            matches!(status_error(&busy), ApiError::Unavailable(m) if m.contains("500") && m.contains("timed out"))
        );
    }
}
