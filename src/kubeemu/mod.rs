//! A Kubernetes API server emulator: the real REST protocol over HTTP on loopback, for the
//! resources the agent uses. Tests run it in-process; the VM tier runs the `volfence-kube-emulator`
//! binary. The agent talks to it through the real `kube` client and a kubeconfig, so the same
//! tests can point at a real cluster instead.
//!
//! Served: Leases (`coordination.k8s.io/v1`: get, list, watch, create, update, JSON merge patch,
//! delete), Nodes, PersistentVolumes and PersistentVolumeClaims (get, list, watch, create, merge
//! patch), Events (create, list). One global resourceVersion; 409 Conflict on a stale `metadata.resourceVersion` (PUT, or
//! a merge patch that carries one), 409 AlreadyExists, 404 — each as a `Status` object like the
//! real server's. Watches replay history after `resourceVersion` (410 Expired when it is too
//! old), stream JSON lines, honour `timeoutSeconds` and send bookmarks when asked.
//!
//! Fault injection per client, keyed by bearer token: added latency, error responses, dropped
//! connections, a full partition (requests and watch streams hang until healed), and a global
//! pause/resume. In-process through [`Emulator::faults`]; over HTTP through
//! `PUT /emulator/v1/faults/<token>` (JSON [`Faults`]) and `POST /emulator/v1/{pause,resume}`.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Bytes, Frame, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::{broadcast, watch};
use tokio_util::sync::CancellationToken;

type Body = BoxBody<Bytes, Infallible>;

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

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Kind {
    Lease,
    Node,
    PersistentVolume,
    PersistentVolumeClaim,
    Event,
}

impl Kind {
    fn plural(self) -> &'static str {
        match self {
            Kind::Lease => "leases",
            Kind::Node => "nodes",
            Kind::PersistentVolume => "persistentvolumes",
            Kind::PersistentVolumeClaim => "persistentvolumeclaims",
            Kind::Event => "events",
        }
    }
    fn group(self) -> &'static str {
        match self {
            Kind::Lease => "coordination.k8s.io",
            _ => "",
        }
    }
    fn api_version(self) -> &'static str {
        match self {
            Kind::Lease => "coordination.k8s.io/v1",
            _ => "v1",
        }
    }
    fn kind(self) -> &'static str {
        match self {
            Kind::Lease => "Lease",
            Kind::Node => "Node",
            Kind::PersistentVolume => "PersistentVolume",
            Kind::PersistentVolumeClaim => "PersistentVolumeClaim",
            Kind::Event => "Event",
        }
    }
    fn namespaced(self) -> bool {
        matches!(
            self,
            Kind::Lease | Kind::Event | Kind::PersistentVolumeClaim
        )
    }
    /// `leases.coordination.k8s.io`, as in the real server's messages.
    fn qualified(self) -> String {
        if self.group().is_empty() {
            self.plural().to_string()
        } else {
            format!("{}.{}", self.plural(), self.group())
        }
    }
}

type Key = (Kind, String, String); // kind, namespace ("" if cluster-scoped), name

#[derive(Debug, Clone)]
struct Change {
    rv: u64,
    kind: Kind,
    namespace: String,
    event: &'static str,
    object: Value,
}

const HISTORY: usize = 10_000;
const BOOKMARK_EVERY: Duration = Duration::from_secs(10);

struct Store {
    rv: u64,
    objects: BTreeMap<Key, Value>,
    history: VecDeque<Change>,
    uid: u64,
}

struct Shared {
    store: Mutex<Store>,
    changes: broadcast::Sender<Change>,
    faults: Mutex<HashMap<String, Faults>>,
    paused: watch::Sender<bool>,
    requests: Mutex<HashMap<String, BTreeMap<String, u64>>>,
}

/// A running emulator. Dropping it does not stop it; call [`Emulator::shutdown`].
#[derive(Clone)]
pub struct Emulator {
    shared: Arc<Shared>,
    addr: SocketAddr,
    stop: CancellationToken,
}

/// A Status error.
struct ApiFail {
    code: u16,
    reason: &'static str,
    message: String,
    details: Option<Value>,
}

impl ApiFail {
    fn new(code: u16, reason: &'static str, message: impl Into<String>) -> ApiFail {
        ApiFail {
            code,
            reason,
            message: message.into(),
            details: None,
        }
    }
    fn for_object(
        code: u16,
        reason: &'static str,
        kind: Kind,
        name: &str,
        message: String,
    ) -> ApiFail {
        ApiFail {
            code,
            reason,
            message,
            details: Some(json!({"name": name, "group": kind.group(), "kind": kind.plural()})),
        }
    }
    fn not_found(kind: Kind, name: &str) -> ApiFail {
        ApiFail::for_object(
            404,
            "NotFound",
            kind,
            name,
            format!("{} \"{name}\" not found", kind.qualified()),
        )
    }
    fn conflict(kind: Kind, name: &str) -> ApiFail {
        ApiFail::for_object(
            409,
            "Conflict",
            kind,
            name,
            format!(
                "Operation cannot be fulfilled on {} \"{name}\": the object has been modified; please apply your changes to the latest version and try again",
                kind.qualified()
            ),
        )
    }
    fn status(&self) -> Value {
        let mut v = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        });
        if let Some(d) = &self.details {
            v["details"] = d.clone();
        }
        v
    }
}

fn reason_for(code: u16) -> &'static str {
    match code {
        400 => "BadRequest",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "NotFound",
        409 => "Conflict",
        410 => "Expired",
        415 => "UnsupportedMediaType",
        429 => "TooManyRequests",
        500 => "InternalError",
        503 => "ServiceUnavailable",
        504 => "Timeout",
        _ => "Unknown",
    }
}

fn full(status: StatusCode, body: &Value) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(serde_json::to_vec(body).expect("JSON"))).boxed())
        .expect("response parts")
}

fn fail(f: ApiFail) -> Response<Body> {
    full(
        StatusCode::from_u16(f.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        &f.status(),
    )
}

/// RFC 7386 JSON merge patch.
fn merge_patch(target: &mut Value, patch: &Value) {
    match patch {
        Value::Object(p) => {
            if !target.is_object() {
                *target = json!({});
            }
            let t = target.as_object_mut().expect("object");
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        other => *target = other.clone(),
    }
}

fn now_rfc3339() -> String {
    crate::fence::kube::rfc3339(std::time::SystemTime::now(), false)
}

/// The checks the real server makes on a new `core/v1` Event (ValidateEventCreate): the
/// involved object lives in the Event's namespace; an Event with a reporting controller also has
/// an eventTime, an action, a reporting instance, a reason and a note of at most 1 kB.
fn validate_event(obj: &Value, namespace: &str, name: &str) -> Result<(), ApiFail> {
    let mut errs = Vec::new();
    let s = |v: &Value| v.as_str().unwrap_or_default().to_string();
    let involved_ns = s(&obj["involvedObject"]["namespace"]);
    if !involved_ns.is_empty() && involved_ns != namespace {
        errs.push(format!("involvedObject.namespace: Invalid value: \"{involved_ns}\": does not match event.namespace"));
    }
    if !s(&obj["reportingComponent"]).is_empty() {
        for (field, what) in [
            ("eventTime", "eventTime"),
            ("action", "action"),
            ("reportingInstance", "reportingInstance"),
            ("reason", "reason"),
        ] {
            if s(&obj[field]).is_empty() {
                errs.push(format!("{what}: Required value"));
            }
        }
        let note = s(&obj["message"]);
        if note.len() > 1024 {
            errs.push(format!(
                "message: Too long: may not be more than 1024 bytes (is {})",
                note.len()
            ));
        }
    }
    match s(&obj["type"]).as_str() {
        "" | "Normal" | "Warning" => {}
        t => errs.push(format!(
            "type: Unsupported value: \"{t}\": supported values: \"Normal\", \"Warning\""
        )),
    }
    if errs.is_empty() {
        Ok(())
    } else {
        Err(ApiFail::for_object(
            422,
            "Invalid",
            Kind::Event,
            name,
            format!("Event \"{name}\" is invalid: [{}]", errs.join(", ")),
        ))
    }
}

struct Route {
    kind: Kind,
    namespace: String,
    name: Option<String>,
}

fn route(path: &str) -> Option<Route> {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (core, rest): (bool, &[&str]) = match segs.as_slice() {
        ["api", "v1", rest @ ..] => (true, rest),
        ["apis", "coordination.k8s.io", "v1", rest @ ..] => (false, rest),
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
    let kind = match (core, plural) {
        (false, "leases") => Kind::Lease,
        (true, "nodes") => Kind::Node,
        (true, "persistentvolumes") => Kind::PersistentVolume,
        (true, "persistentvolumeclaims") => Kind::PersistentVolumeClaim,
        (true, "events") => Kind::Event,
        _ => return None,
    };
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

/// `metadata.name=x` field selectors, the only kind the agent uses.
fn field_matches(selector: Option<&String>, obj: &Value) -> Result<bool, ApiFail> {
    let Some(sel) = selector.filter(|s| !s.is_empty()) else {
        return Ok(true);
    };
    for term in sel.split(',') {
        let (k, v) = term.split_once('=').ok_or_else(|| {
            ApiFail::new(
                400,
                "BadRequest",
                format!("unsupported fieldSelector {sel:?}"),
            )
        })?;
        let v = v.trim_start_matches('=');
        let is_event = obj["kind"] == "Event";
        let actual = match k {
            "metadata.name" => obj["metadata"]["name"].as_str(),
            "metadata.namespace" => obj["metadata"]["namespace"].as_str(),
            // The event fields the real server indexes (what `kubectl describe` selects on).
            "involvedObject.kind"
            | "involvedObject.namespace"
            | "involvedObject.name"
            | "involvedObject.uid"
            | "involvedObject.apiVersion"
                if is_event =>
            {
                obj["involvedObject"][&k["involvedObject.".len()..]].as_str()
            }
            "reason" | "type" | "reportingComponent" if is_event => obj[k].as_str(),
            _ => {
                return Err(ApiFail::new(
                    400,
                    "BadRequest",
                    format!("fieldSelector key {k:?} is not supported by the emulator"),
                ))
            }
        };
        if actual != Some(v) {
            return Ok(false);
        }
    }
    Ok(true)
}

impl Shared {
    fn commit(
        &self,
        st: &mut Store,
        kind: Kind,
        namespace: &str,
        event: &'static str,
        object: Value,
    ) {
        let change = Change {
            rv: st.rv,
            kind,
            namespace: namespace.to_string(),
            event,
            object,
        };
        st.history.push_back(change.clone());
        if st.history.len() > HISTORY {
            st.history.pop_front();
        }
        let _ = self.changes.send(change);
    }

    fn create(&self, r: &Route, mut obj: Value) -> Result<Value, ApiFail> {
        let name = obj["metadata"]["name"].as_str().map(str::to_string);
        let name = match (name, obj["metadata"]["generateName"].as_str()) {
            (Some(n), _) if !n.is_empty() => n,
            (_, Some(prefix)) => {
                let uid = self.store.lock().unwrap().uid;
                format!("{prefix}{uid:05x}")
            }
            _ => return Err(ApiFail::new(422, "Invalid", format!("{} \"\" is invalid: metadata.name: Required value: name or generateName is required", r.kind.kind()))),
        };
        if !r.namespace.is_empty() {
            match obj["metadata"]["namespace"].as_str() {
                Some(ns) if ns != r.namespace => {
                    return Err(ApiFail::new(400, "BadRequest", "the namespace of the provided object does not match the namespace sent on the request"));
                }
                _ => obj["metadata"]["namespace"] = json!(r.namespace),
            }
        }
        if r.kind == Kind::Event {
            validate_event(&obj, &r.namespace, &name)?;
        }
        let mut st = self.store.lock().unwrap();
        let key = (r.kind, r.namespace.clone(), name.clone());
        if st.objects.contains_key(&key) {
            return Err(ApiFail::for_object(
                409,
                "AlreadyExists",
                r.kind,
                &name,
                format!("{} \"{name}\" already exists", r.kind.qualified()),
            ));
        }
        st.rv += 1;
        st.uid += 1;
        obj["apiVersion"] = json!(r.kind.api_version());
        obj["kind"] = json!(r.kind.kind());
        obj["metadata"]["name"] = json!(name);
        obj["metadata"]["resourceVersion"] = json!(st.rv.to_string());
        obj["metadata"]["uid"] = json!(format!("00000000-0000-4000-8000-{:012x}", st.uid));
        obj["metadata"]["creationTimestamp"] = json!(now_rfc3339());
        if let Some(m) = obj["metadata"].as_object_mut() {
            m.remove("generateName");
        }
        st.objects.insert(key, obj.clone());
        self.commit(&mut st, r.kind, &r.namespace, "ADDED", obj.clone());
        Ok(obj)
    }

    /// PUT (`patch` = None, `new` = whole object) or merge PATCH.
    fn update(&self, r: &Route, name: &str, body: Value, is_patch: bool) -> Result<Value, ApiFail> {
        let mut st = self.store.lock().unwrap();
        let key = (r.kind, r.namespace.clone(), name.to_string());
        let cur = st
            .objects
            .get(&key)
            .cloned()
            .ok_or_else(|| ApiFail::not_found(r.kind, name))?;
        let cur_rv = cur["metadata"]["resourceVersion"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        // A resourceVersion in the request is a precondition, for PUT and for patches alike.
        if let Some(want) = body["metadata"]["resourceVersion"].as_str() {
            if want != cur_rv {
                return Err(ApiFail::conflict(r.kind, name));
            }
        }
        if let Some(n) = body["metadata"]["name"].as_str() {
            if n != name {
                return Err(ApiFail::new(
                    400,
                    "BadRequest",
                    format!(
                        "the name of the object ({n}) does not match the name on the URL ({name})"
                    ),
                ));
            }
        }
        let mut next = if is_patch {
            let mut v = cur.clone();
            merge_patch(&mut v, &body);
            v
        } else {
            let mut v = body;
            // server-owned fields survive a PUT
            for f in ["uid", "creationTimestamp", "namespace", "name"] {
                v["metadata"][f] = cur["metadata"][f].clone();
            }
            v["apiVersion"] = json!(r.kind.api_version());
            v["kind"] = json!(r.kind.kind());
            v
        };
        for f in ["uid", "creationTimestamp", "name"] {
            next["metadata"][f] = cur["metadata"][f].clone();
        }
        next["metadata"]["resourceVersion"] = json!(cur_rv);
        if next == cur {
            return Ok(cur); // a no-op write does not bump the resourceVersion
        }
        st.rv += 1;
        next["metadata"]["resourceVersion"] = json!(st.rv.to_string());
        st.objects.insert(key, next.clone());
        self.commit(&mut st, r.kind, &r.namespace, "MODIFIED", next.clone());
        Ok(next)
    }

    fn delete(&self, r: &Route, name: &str) -> Result<Value, ApiFail> {
        let mut st = self.store.lock().unwrap();
        let key = (r.kind, r.namespace.clone(), name.to_string());
        let mut obj = st
            .objects
            .remove(&key)
            .ok_or_else(|| ApiFail::not_found(r.kind, name))?;
        st.rv += 1;
        obj["metadata"]["resourceVersion"] = json!(st.rv.to_string());
        self.commit(&mut st, r.kind, &r.namespace, "DELETED", obj.clone());
        Ok(json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
            "details": {"name": name, "group": r.kind.group(), "kind": r.kind.plural(), "uid": obj["metadata"]["uid"]},
        }))
    }

    fn list(&self, r: &Route, q: &HashMap<String, String>) -> Result<Value, ApiFail> {
        let st = self.store.lock().unwrap();
        let mut items = Vec::new();
        for ((k, ns, _), v) in st.objects.iter() {
            if *k == r.kind
                && (r.namespace.is_empty() || *ns == r.namespace)
                && field_matches(q.get("fieldSelector"), v)?
            {
                items.push(v.clone());
            }
        }
        Ok(json!({
            "kind": format!("{}List", r.kind.kind()),
            "apiVersion": r.kind.api_version(),
            "metadata": {"resourceVersion": st.rv.to_string()},
            "items": items,
        }))
    }

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

impl Emulator {
    /// Binds `addr` (use port 0 for any) and serves until [`Emulator::shutdown`].
    pub async fn start(addr: SocketAddr) -> std::io::Result<Emulator> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let (changes, _) = broadcast::channel(4096);
        let (paused, _) = watch::channel(false);
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
        self.shared.create(&r, obj).map_err(|f| f.message)
    }

    /// Merge-patches an object as an administrator would (`kubectl patch --type merge`).
    pub fn patch(&self, path: &str, patch: Value) -> Result<Value, String> {
        let r = route(path).ok_or_else(|| format!("no such object {path}"))?;
        let name = r
            .name
            .clone()
            .ok_or_else(|| format!("{path} is a collection"))?;
        self.shared
            .update(&r, &name, patch, true)
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

        let Some(r) = route(&path) else {
            return Ok(fail(ApiFail::new(
                404,
                "NotFound",
                "the server could not find the requested resource",
            )));
        };
        let method = req.method().clone();
        let ctype = req
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let body = match req.into_body().collect().await {
            Ok(b) => b.to_bytes(),
            Err(e) => return Err(std::io::Error::other(e)),
        };
        let parse = |b: &Bytes| -> Result<Value, ApiFail> {
            serde_json::from_slice(b).map_err(|e| {
                ApiFail::new(
                    400,
                    "BadRequest",
                    format!("the request body is not valid JSON: {e}"),
                )
            })
        };
        let result = match (&method, &r.name) {
            (&Method::GET, None) if watching => return Ok(self.watch(&r, &q, client)),
            (&Method::GET, None) => self.shared.list(&r, &q).map(|v| (StatusCode::OK, v)),
            (&Method::GET, Some(n)) => {
                let st = self.shared.store.lock().unwrap();
                st.objects
                    .get(&(r.kind, r.namespace.clone(), n.clone()))
                    .cloned()
                    .map(|v| (StatusCode::OK, v))
                    .ok_or_else(|| ApiFail::not_found(r.kind, n))
            }
            (&Method::POST, None) => parse(&body).and_then(|v| self.shared.create(&r, v)).map(|v| (StatusCode::CREATED, v)),
            (&Method::PUT, Some(n)) => parse(&body).and_then(|v| self.shared.update(&r, n, v, false)).map(|v| (StatusCode::OK, v)),
            (&Method::PATCH, Some(n)) => {
                if !ctype.starts_with("application/merge-patch+json") {
                    Err(ApiFail::new(415, "UnsupportedMediaType", format!("the emulator supports application/merge-patch+json patches, not {ctype:?}")))
                } else {
                    parse(&body).and_then(|v| self.shared.update(&r, n, v, true)).map(|v| (StatusCode::OK, v))
                }
            }
            (&Method::DELETE, Some(n)) => self.shared.delete(&r, n).map(|v| (StatusCode::OK, v)),
            _ => Err(ApiFail::new(405, "MethodNotAllowed", format!("the server does not allow this method on the requested resource: {method} {path}"))),
        };
        Ok(match result {
            Ok((code, v)) => full(code, &v),
            Err(f) => fail(f),
        })
    }

    fn watch(&self, r: &Route, q: &HashMap<String, String>, client: String) -> Response<Body> {
        let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(256);
        let mut changes = self.shared.changes.subscribe();
        let since: Option<u64> = q
            .get("resourceVersion")
            .filter(|s| !s.is_empty() && *s != "0")
            .and_then(|s| s.parse().ok());
        let timeout = q
            .get("timeoutSeconds")
            .and_then(|s| s.parse::<u64>().ok())
            .map(Duration::from_secs);
        let bookmarks = q.get("allowWatchBookmarks").is_some_and(|v| v == "true");
        let selector = q.get("fieldSelector").cloned();
        let (kind, namespace) = (r.kind, r.namespace.clone());
        let shared = self.shared.clone();
        let stop = self.stop.clone();

        // Backlog: history after `since`, or the current objects as ADDED (no resourceVersion).
        let mut backlog = Vec::new();
        let mut expired = false;
        let mut last_rv;
        {
            let st = shared.store.lock().unwrap();
            last_rv = st.rv;
            match since {
                Some(rv) => {
                    let oldest = st.history.front().map_or(st.rv, |c| c.rv - 1);
                    if rv < oldest {
                        expired = true;
                    } else {
                        backlog.extend(st.history.iter().filter(|c| c.rv > rv).cloned());
                    }
                }
                None => {
                    for ((k, ns, _), v) in st.objects.iter() {
                        if *k == kind {
                            backlog.push(Change {
                                rv: 0,
                                kind,
                                namespace: ns.clone(),
                                event: "ADDED",
                                object: v.clone(),
                            });
                        }
                    }
                }
            }
        }
        let matches = move |c: &Change| -> bool {
            c.kind == kind
                && (namespace.is_empty() || c.namespace == namespace)
                && field_matches(selector.as_ref(), &c.object).unwrap_or(false)
        };
        let line = |event: &str, object: &Value| -> Bytes {
            let mut v =
                serde_json::to_vec(&json!({"type": event, "object": object})).expect("JSON");
            v.push(b'\n');
            Bytes::from(v)
        };
        tokio::spawn(async move {
            let deadline = timeout.map(|t| tokio::time::Instant::now() + t);
            let send = |b: Bytes| {
                let tx = tx.clone();
                let shared = shared.clone();
                let client = client.clone();
                async move {
                    shared.wait_unpartitioned(&client).await;
                    let lat = shared.client_faults(&client).latency_ms;
                    if lat > 0 {
                        tokio::time::sleep(Duration::from_millis(lat)).await;
                    }
                    tx.send(b).await.is_ok()
                }
            };
            if expired {
                let f = ApiFail::new(410, "Expired", "too old resource version");
                let _ = send(line("ERROR", &f.status())).await;
                return;
            }
            for c in backlog.iter().filter(|c| matches(c)) {
                if !send(line(c.event, &c.object)).await {
                    return;
                }
            }
            // Real servers send one about every minute; often enough here to exercise clients.
            let mut bookmark = tokio::time::interval_at(
                tokio::time::Instant::now() + BOOKMARK_EVERY,
                BOOKMARK_EVERY,
            );
            loop {
                let sleep_deadline = async {
                    match deadline {
                        Some(d) => tokio::time::sleep_until(d).await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = sleep_deadline => return,
                    _ = bookmark.tick(), if bookmarks => {
                        let obj = json!({"kind": kind.kind(), "apiVersion": kind.api_version(), "metadata": {"resourceVersion": last_rv.to_string()}});
                        if !send(line("BOOKMARK", &obj)).await { return; }
                    }
                    c = changes.recv() => match c {
                        Ok(c) => {
                            if c.rv <= last_rv && since.is_some() { continue; }
                            last_rv = last_rv.max(c.rv);
                            if matches(&c) && !send(line(c.event, &c.object)).await { return; }
                        }
                        // The watcher fell too far behind: tell the client to relist, as the server does.
                        Err(broadcast::error::RecvError::Lagged(_)) => {
                            let f = ApiFail::new(410, "Expired", "watch fell behind; relist");
                            let _ = send(line("ERROR", &f.status())).await;
                            return;
                        }
                        Err(broadcast::error::RecvError::Closed) => return,
                    },
                }
            }
        });
        let stream = futures::stream::unfold(rx, |mut rx| async move {
            rx.recv()
                .await
                .map(|b| (Ok::<_, Infallible>(Frame::data(b)), rx))
        });
        Response::builder()
            .status(StatusCode::OK)
            .header("content-type", "application/json")
            .header("transfer-encoding", "chunked")
            .body(BodyExt::boxed(StreamBody::new(stream)))
            .expect("response parts")
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
