//! A Kubernetes API server emulator: the real REST protocol over HTTP on loopback, for the
//! resources the agent uses, answering as a real kube-apiserver does. Tests run it in-process;
//! the VM tier runs the `volfence-kube-emulator` binary. The agent talks to it through the real
//! `kube` client and a kubeconfig, and users through `kubectl`, so the same tests can point at a
//! real cluster instead.
//!
//! Served: discovery (legacy and aggregated), `/version`, `/readyz`, `/livez`; Namespaces,
//! Leases (`coordination.k8s.io/v1`), Nodes, PersistentVolumes, PersistentVolumeClaims and Events
//! (core/v1, and `events.k8s.io/v1` over the same storage, converted as the real server does):
//! get, list and watch (label and field selectors, pagination, resourceVersion semantics), create,
//! update, merge/strategic/JSON patch, server-side apply, delete with preconditions; Tables for
//! `kubectl get`; managedFields per manager. Writes are admitted and validated as the real server
//! does (kinds.rs, validate.rs, store.rs say where each rule comes from).
//!
//! Fault injection per client, keyed by bearer token: added latency, error responses, dropped
//! connections, a full partition (requests and watch streams hang until healed), and a global
//! pause/resume. In-process through [`Emulator::faults`]; over HTTP through
//! `PUT /emulator/v1/faults/<token>` (JSON [`Faults`]) and `POST /emulator/v1/{pause,resume}`.

mod events_v1;
mod fields;
mod kinds;
mod patch;
mod protobuf;
mod selectors;
mod status;
mod store;
mod table;
mod validate;
mod watch;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::{broadcast, watch as watch_channel};
use tokio_util::sync::CancellationToken;

use kinds::Kind;
use status::{fail, full, reason_for, ApiFail, Body};
use store::{PatchType, Shared, Store, Writer};
use table::Render;

/// Faults applied to one client's requests.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Faults {
    /// Added before every request is handled (and before each watch event is sent).
    pub latency_ms: u64,
    /// Answer every request with this HTTP status and a matching Status object.
    pub error_code: Option<u16>,
    /// Close the connection without answering.
    pub drop: bool,
    /// Nothing gets through: requests and watch streams hang until the partition is lifted.
    pub partition: bool,
}

struct Route {
    kind: Kind,
    namespace: String,
    name: Option<String>,
    /// Events asked for through `events.k8s.io/v1`: the core storage, converted.
    events_v1: bool,
}

fn route(path: &str) -> Option<Route> {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (core, events_v1, rest): (bool, bool, &[&str]) = match segs.as_slice() {
        ["api", "v1", rest @ ..] => (true, false, rest),
        ["apis", "coordination.k8s.io", "v1", rest @ ..] => (false, false, rest),
        ["apis", events_v1::GROUP, "v1", rest @ ..] => (true, true, rest),
        _ => return None,
    };
    let (namespace, rest) = match rest {
        ["namespaces", ns, rest @ ..] if !rest.is_empty() => (ns.to_string(), rest),
        _ => (String::new(), rest),
    };
    let (plural, name) = match rest {
        [p] => (*p, None),
        [p, n] => (*p, Some(n.to_string())),
        _ => return None,
    };
    let kind = Kind::from_path(core, plural).filter(|k| !events_v1 || *k == Kind::Event)?;
    if kind.namespaced() == namespace.is_empty() && name.is_some() {
        return None;
    }
    if !kind.namespaced() && !namespace.is_empty() {
        return None;
    }
    Some(Route {
        kind,
        namespace,
        name,
        events_v1,
    })
}

fn query(q: Option<&str>) -> HashMap<String, String> {
    q.unwrap_or("")
        .split('&')
        .filter(|s| !s.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (k.to_string(), percent_decode(v))
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(if b[i] == b'+' { b' ' } else { b[i] });
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl Shared {
    fn client_faults(&self, client: &str) -> Faults {
        self.faults
            .lock()
            .unwrap()
            .get(client)
            .cloned()
            .unwrap_or_default()
    }

    async fn wait_unpartitioned(&self, client: &str) {
        let mut paused = self.paused.subscribe();
        loop {
            let blocked = self.client_faults(client).partition || *paused.borrow_and_update();
            if !blocked {
                return;
            }
            tokio::select! {
                _ = paused.changed() => {}
                _ = tokio::time::sleep(Duration::from_millis(20)) => {}
            }
        }
    }
}

fn client_of<B>(req: &Request<B>) -> String {
    req.headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("anonymous")
        .to_string()
}

/// A running emulator. Dropping it does not stop it; call [`Emulator::shutdown`].
#[derive(Clone)]
pub struct Emulator {
    shared: Arc<Shared>,
    addr: SocketAddr,
    stop: CancellationToken,
}

/// The field manager of writes made through the emulator's own API (test setup).
const ADMIN: &str = "emulator-admin";

impl Emulator {
    /// Binds `addr` (use port 0 for any) and serves until [`Emulator::shutdown`].
    pub async fn start(addr: SocketAddr) -> std::io::Result<Emulator> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let (changes, _) = broadcast::channel(4096);
        let (paused, _) = watch_channel::channel(false);
        let shared = Arc::new(Shared {
            store: Mutex::new(Store {
                rv: 1000,
                objects: BTreeMap::new(),
                history: VecDeque::new(),
                uid: 0,
            }),
            changes,
            faults: Mutex::new(HashMap::new()),
            paused,
            requests: Mutex::new(HashMap::new()),
        });
        let stop = CancellationToken::new();
        let admin = Writer { manager: ADMIN };
        for ns in kinds::INITIAL_NAMESPACES {
            shared
                .create(
                    Kind::Namespace,
                    "",
                    json!({"metadata": {"name": ns}}),
                    &admin,
                )
                .expect("the initial namespaces are valid");
        }
        let emu = Emulator { shared, addr, stop };
        let e = emu.clone();
        tokio::spawn(async move { e.accept(listener).await });
        Ok(emu)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn shutdown(&self) {
        self.stop.cancel();
    }

    /// Sets the faults of one client (bearer token).
    pub fn faults(&self, client: &str, f: Faults) {
        self.shared
            .faults
            .lock()
            .unwrap()
            .insert(client.to_string(), f);
    }

    /// Holds every request (and watch stream) until [`Emulator::resume`].
    pub fn pause(&self) {
        self.shared.paused.send_replace(true);
    }

    pub fn resume(&self) {
        self.shared.paused.send_replace(false);
    }

    /// Requests per client and verb (`GET`, `LIST`, `WATCH`, `PATCH`, …), for request-rate accounting.
    pub fn request_counts(&self, client: &str) -> BTreeMap<String, u64> {
        self.shared
            .requests
            .lock()
            .unwrap()
            .get(client)
            .cloned()
            .unwrap_or_default()
    }

    /// A kubeconfig for this emulator authenticating as `client` (its fault-injection identity).
    pub fn kubeconfig(&self, client: &str) -> String {
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: emulator\n  cluster:\n    server: {}\nusers:\n- name: {client}\n  user:\n    token: {client}\ncontexts:\n- name: {client}\n  context:\n    cluster: emulator\n    user: {client}\ncurrent-context: {client}\n",
            self.url()
        )
    }

    /// Direct access for tests and setup: the object at `path` (e.g.
    /// `/apis/coordination.k8s.io/v1/namespaces/ns/leases/n1`), or None.
    pub fn object(&self, path: &str) -> Option<Value> {
        let r = route(path)?;
        let name = r.name?;
        self.shared
            .store
            .lock()
            .unwrap()
            .objects
            .get(&(r.kind, r.namespace, name))
            .cloned()
    }

    /// Creates an object as an administrator would (`kubectl create`), bypassing faults.
    pub fn create(&self, collection_path: &str, obj: Value) -> Result<Value, String> {
        let r = route(collection_path)
            .ok_or_else(|| format!("no such collection {collection_path}"))?;
        self.shared
            .create(r.kind, &r.namespace, obj, &Writer { manager: ADMIN })
            .map_err(|f| f.message)
    }

    /// Creates a namespace if it does not exist (`kubectl create namespace`).
    pub fn ensure_namespace(&self, name: &str) -> Result<(), String> {
        match self.shared.create(
            Kind::Namespace,
            "",
            json!({"metadata": {"name": name}}),
            &Writer { manager: ADMIN },
        ) {
            Ok(_) => Ok(()),
            Err(f) if f.code == 409 => Ok(()),
            Err(f) => Err(f.message),
        }
    }

    /// Merge-patches an object as an administrator would (`kubectl patch --type merge`).
    pub fn patch(&self, path: &str, patch: Value) -> Result<Value, String> {
        let r = route(path).ok_or_else(|| format!("no such object {path}"))?;
        let name = r
            .name
            .clone()
            .ok_or_else(|| format!("{path} is a collection"))?;
        self.shared
            .patch(
                r.kind,
                &r.namespace,
                &name,
                &patch,
                PatchType::Merge,
                &Writer { manager: ADMIN },
            )
            .map_err(|f| f.message)
    }

    /// Events recorded so far (kubectl get events), oldest first.
    pub fn events(&self) -> Vec<Value> {
        let st = self.shared.store.lock().unwrap();
        st.objects
            .iter()
            .filter(|((k, _, _), _)| *k == Kind::Event)
            .map(|(_, v)| v.clone())
            .collect()
    }

    async fn accept(self, listener: TcpListener) {
        loop {
            let (stream, _) = tokio::select! {
                _ = self.stop.cancelled() => return,
                r = listener.accept() => match r { Ok(c) => c, Err(_) => continue },
            };
            let emu = self.clone();
            tokio::spawn(async move {
                let stop = emu.stop.clone();
                let svc = hyper::service::service_fn(move |req| {
                    let emu = emu.clone();
                    async move { emu.handle(req).await }
                });
                let io = hyper_util::rt::TokioIo::new(stream);
                let conn = hyper::server::conn::http1::Builder::new().serve_connection(io, svc);
                tokio::select! {
                    _ = conn => {}
                    _ = stop.cancelled() => {}
                }
            });
        }
    }

    async fn handle(&self, req: Request<Incoming>) -> Result<Response<Body>, std::io::Error> {
        let client = client_of(&req);
        let path = req.uri().path().to_string();
        if let Some(ctl) = path.strip_prefix("/emulator/v1/") {
            return Ok(self.control(req.method().clone(), ctl, req).await);
        }
        let q = query(req.uri().query());
        let watching = matches!(q.get("watch").map(String::as_str), Some("true" | "1"));
        let collection = route(&path).is_some_and(|r| r.name.is_none());
        let verb = match (req.method(), watching, collection) {
            (_, true, _) => "WATCH".to_string(),
            (&Method::GET, false, true) => "LIST".to_string(),
            (m, _, _) => m.to_string(),
        };
        *self
            .shared
            .requests
            .lock()
            .unwrap()
            .entry(client.clone())
            .or_default()
            .entry(verb)
            .or_default() += 1;

        let faults = self.shared.client_faults(&client);
        self.shared.wait_unpartitioned(&client).await;
        if faults.latency_ms > 0 {
            tokio::time::sleep(Duration::from_millis(faults.latency_ms)).await;
        }
        if faults.drop {
            return Err(std::io::Error::new(
                std::io::ErrorKind::ConnectionReset,
                "fault: dropped",
            ));
        }
        if let Some(code) = faults.error_code {
            return Ok(fail(ApiFail::new(
                code,
                reason_for(code),
                format!("injected fault: {code}"),
            )));
        }
        let header = |h: &str| {
            req.headers()
                .get(h)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string()
        };
        let (accept, ctype, agent) = (
            header("accept"),
            header("content-type"),
            header("user-agent"),
        );
        if req.method() == Method::GET {
            if let Some(r) = self.meta_endpoint(&path, &accept) {
                return Ok(r);
            }
        }
        let Some(r) = route(&path) else {
            return Ok(fail(ApiFail::new(
                404,
                "NotFound",
                "the server could not find the requested resource",
            )));
        };
        let method = req.method().clone();
        let body = match req.into_body().collect().await {
            Ok(b) => b.to_bytes(),
            Err(e) => return Err(std::io::Error::other(e)),
        };
        // kubectl's typed commands write protobuf and do not fall back to JSON.
        let (body, ctype) = if ctype.starts_with("application/vnd.kubernetes.protobuf") {
            match protobuf::decode(&body) {
                Ok(v) => (
                    Bytes::from(serde_json::to_vec(&v).expect("JSON")),
                    "application/json".to_string(),
                ),
                Err(why) => {
                    return Ok(fail(ApiFail::new(
                        415,
                        "UnsupportedMediaType",
                        format!("the body of the request was in an unknown format: {why}"),
                    )))
                }
            }
        } else {
            (body, ctype)
        };
        let manager = match q.get("fieldManager").filter(|m| !m.is_empty()) {
            Some(m) => m.clone(),
            None => fields::manager_from_user_agent(Some(&agent)),
        };
        let mut render = Render::new(r.kind, &accept, q.get("includeObject").map(String::as_str));
        if r.events_v1 {
            render = render.events_v1();
        }
        let result = if r.events_v1 && matches!(method, Method::POST | Method::PUT | Method::PATCH)
        {
            self.write_events_v1(&r, &method, &body, &ctype, &manager, &render)
                .map_err(events_v1::qualify)
        } else {
            self.serve(
                &r, &method, &q, &body, &ctype, &manager, render, client, watching,
            )
            .await
            .map_err(|f| {
                if r.events_v1 {
                    events_v1::qualify(f)
                } else {
                    f
                }
            })
        };
        Ok(result.unwrap_or_else(fail))
    }

    /// Discovery, version and health: what clients ask before any resource.
    fn meta_endpoint(&self, path: &str, accept: &str) -> Option<Response<Body>> {
        let aggregated = accept
            .split(',')
            .next()
            .is_some_and(|t| t.contains("as=APIGroupDiscoveryList") && t.contains("v=v2"));
        let with_type = |v: Value, ctype: &str| {
            let mut r = full(StatusCode::OK, &v);
            r.headers_mut()
                .insert("content-type", ctype.parse().expect("header value"));
            r
        };
        const AGGREGATED: &str =
            "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList";
        Some(match path.trim_end_matches('/') {
            "/api" if aggregated => with_type(kinds::aggregated(true), AGGREGATED),
            "/apis" if aggregated => with_type(kinds::aggregated(false), AGGREGATED),
            "/api" => full(
                StatusCode::OK,
                &kinds::core_versions(&self.addr.to_string()),
            ),
            "/apis" => full(StatusCode::OK, &kinds::group_list()),
            "/api/v1" => full(StatusCode::OK, &kinds::resource_list("")),
            "/apis/coordination.k8s.io/v1" => {
                full(StatusCode::OK, &kinds::resource_list("coordination.k8s.io"))
            }
            "/apis/events.k8s.io/v1" => {
                full(StatusCode::OK, &kinds::resource_list(events_v1::GROUP))
            }
            "/apis/events.k8s.io" => {
                let v = json!({"groupVersion": events_v1::API_VERSION, "version": "v1"});
                full(
                    StatusCode::OK,
                    &json!({"kind": "APIGroup", "apiVersion": "v1", "name": events_v1::GROUP, "versions": [v], "preferredVersion": v}),
                )
            }
            "/apis/coordination.k8s.io" => {
                let v = json!({"groupVersion": "coordination.k8s.io/v1", "version": "v1"});
                full(
                    StatusCode::OK,
                    &json!({"kind": "APIGroup", "apiVersion": "v1", "name": "coordination.k8s.io", "versions": [v], "preferredVersion": v}),
                )
            }
            "/version" => full(StatusCode::OK, &kinds::version()),
            "/readyz" | "/livez" | "/healthz" => Response::builder()
                .status(StatusCode::OK)
                .header("content-type", "text/plain; charset=utf-8")
                .body(Full::new(Bytes::from_static(b"ok")).boxed())
                .expect("response parts"),
            _ => return None,
        })
    }

    /// Writes through `events.k8s.io/v1`: converted to the core form, with this group's strict
    /// checks on top of the core admission.
    fn write_events_v1(
        &self,
        r: &Route,
        method: &Method,
        body: &Bytes,
        ctype: &str,
        manager: &str,
        render: &Render,
    ) -> Result<Response<Body>, ApiFail> {
        let body: Value = serde_json::from_slice(body).map_err(|e| {
            ApiFail::new(
                400,
                "BadRequest",
                format!("the request body is not valid JSON: {e}"),
            )
        })?;
        let w = Writer { manager };
        let (sh, ns) = (&self.shared, r.namespace.as_str());
        let name = r
            .name
            .as_deref()
            .unwrap_or_else(|| body["metadata"]["name"].as_str().unwrap_or(""));
        let invalid = |causes: Vec<status::Cause>| -> Result<(), ApiFail> {
            if causes.is_empty() {
                Ok(())
            } else {
                Err(ApiFail::invalid(Kind::Event, name, causes))
            }
        };
        let stored = match (method, &r.name) {
            (&Method::POST, None) => {
                let core = events_v1::to_core(&body);
                invalid(events_v1::create_causes(&core))?;
                return Ok(full(
                    StatusCode::CREATED,
                    &render.one(sh.create(Kind::Event, ns, core, &w)?),
                ));
            }
            (&Method::PUT, Some(n)) => {
                let next = events_v1::to_core(&body);
                let cur = sh.get(Kind::Event, ns, n)?;
                invalid(events_v1::update_causes(&cur, &next))?;
                sh.replace(Kind::Event, ns, n, next, &w)?.0
            }
            (&Method::PATCH, Some(n)) => {
                let ptype = match PatchType::from_media(ctype) {
                    Some(t) => t,
                    None => {
                        let other = ctype.split(';').next().unwrap_or_default().trim();
                        return Err(ApiFail::new(
                            415,
                            "UnsupportedMediaType",
                            format!("the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/strategic-merge-patch+json (got {other:?}; this emulator does not apply through events.k8s.io)"),
                        ));
                    }
                };
                sh.modify(Kind::Event, ns, n, &w, |cur| {
                    let mut v1 = events_v1::from_core(cur);
                    store::apply_patch(&mut v1, &body, ptype)?;
                    let next = events_v1::to_core(&v1);
                    invalid(events_v1::update_causes(cur, &next))?;
                    Ok(next)
                })?
            }
            _ => return Err(ApiFail::method_not_allowed(method.as_str())),
        };
        Ok(full(StatusCode::OK, &render.one(stored)))
    }

    #[allow(clippy::too_many_arguments)]
    async fn serve(
        &self,
        r: &Route,
        method: &Method,
        q: &HashMap<String, String>,
        body: &Bytes,
        ctype: &str,
        manager: &str,
        render: Render,
        client: String,
        watching: bool,
    ) -> Result<Response<Body>, ApiFail> {
        let parse = |b: &Bytes| -> Result<Value, ApiFail> {
            serde_json::from_slice(b).map_err(|e| {
                ApiFail::new(
                    400,
                    "BadRequest",
                    format!("the request body is not valid JSON: {e}"),
                )
            })
        };
        let w = Writer { manager };
        let sh = &self.shared;
        let (kind, ns) = (r.kind, r.namespace.as_str());
        let (code, v) = match (method, &r.name) {
            (&Method::GET, None) if watching => {
                let req = watch::WatchRequest {
                    kind,
                    namespace: ns.to_string(),
                    client,
                    render,
                };
                return watch::watch(sh.clone(), self.stop.clone(), req, q).await;
            }
            (&Method::GET, None) => (StatusCode::OK, render.list(sh.list(kind, ns, q)?)),
            (&Method::GET, Some(n)) => (StatusCode::OK, render.one(sh.get(kind, ns, n)?)),
            (&Method::POST, None) => (StatusCode::CREATED, sh.create(kind, ns, parse(body)?, &w)?),
            (&Method::PUT, Some(n)) => match sh.replace(kind, ns, n, parse(body)?, &w)? {
                (v, true) => (StatusCode::CREATED, v),
                (v, false) => (StatusCode::OK, v),
            },
            (&Method::PATCH, Some(n)) => {
                let media = ctype.split(';').next().unwrap_or_default().trim();
                let force = q.get("force").is_some_and(|f| f == "true");
                if force && media != "application/apply-patch+yaml" {
                    return Err(ApiFail::invalid_options(
                        "force",
                        "FieldValueForbidden",
                        "Forbidden: may not be specified for non-apply patch",
                    ));
                }
                let ptype = match (PatchType::from_media(media), media) {
                    (Some(t), _) => t,
                    (None, "application/apply-patch+yaml") => {
                        // JSON is YAML; the emulator reads only that form of it.
                        let config = parse(body)?;
                        let manager = q.get("fieldManager").map_or("", String::as_str);
                        return Ok(match sh.apply(kind, ns, n, config, &Writer { manager }, force)? {
                            (v, true) => full(StatusCode::CREATED, &v),
                            (v, false) => full(StatusCode::OK, &v),
                        });
                    }
                    (None, other) => {
                        return Err(ApiFail::new(
                            415,
                            "UnsupportedMediaType",
                            format!("the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml, application/strategic-merge-patch+json (got {other:?})"),
                        ))
                    }
                };
                (
                    StatusCode::OK,
                    sh.patch(kind, ns, n, &parse(body)?, ptype, &w)?,
                )
            }
            (&Method::DELETE, Some(n)) => {
                let options = if body.is_empty() {
                    json!({})
                } else {
                    parse(body)?
                };
                (StatusCode::OK, sh.delete(kind, ns, n, &options)?)
            }
            _ => return Err(ApiFail::method_not_allowed(method.as_str())),
        };
        Ok(full(code, &v))
    }

    async fn control(&self, method: Method, path: &str, req: Request<Incoming>) -> Response<Body> {
        let body = req
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        match (method, path) {
            (Method::POST, "pause") => {
                self.pause();
                full(StatusCode::OK, &json!({"paused": true}))
            }
            (Method::POST, "resume") => {
                self.resume();
                full(StatusCode::OK, &json!({"paused": false}))
            }
            (Method::PUT, p) if p.starts_with("faults/") => {
                match serde_json::from_slice::<Faults>(&body) {
                    Ok(f) => {
                        self.faults(&p["faults/".len()..], f.clone());
                        full(StatusCode::OK, &serde_json::to_value(f).expect("JSON"))
                    }
                    Err(e) => fail(ApiFail::new(
                        400,
                        "BadRequest",
                        format!(
                        "expected a JSON object with latency_ms, error_code, drop, partition: {e}"
                    ),
                    )),
                }
            }
            (Method::GET, p) if p.starts_with("requests/") => full(
                StatusCode::OK,
                &serde_json::to_value(self.request_counts(&p["requests/".len()..])).expect("JSON"),
            ),
            _ => fail(ApiFail::new(
                404,
                "NotFound",
                "emulator control: PUT faults/<token>, POST pause|resume, GET requests/<token>",
            )),
        }
    }
}

#[cfg(test)]
mod tests;
