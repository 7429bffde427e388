//! The object store and every write to it, as the real server's registry makes them: one global
//! resourceVersion, history kept for watches and consistent reads at an older version,
//! admission of namespaces, validation, preconditions, and managedFields.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Mutex;

use serde_json::{json, Value};
use tokio::sync::{broadcast, watch};

use super::fields;
use super::kinds::Kind;
use super::patch;
use super::selectors::{FieldSelector, LabelSelector};
use super::status::{ApiFail, Cause};
use super::validate;
use super::Faults;

pub type Key = (Kind, String, String); // kind, namespace ("" if cluster-scoped), name

#[derive(Debug, Clone)]
pub struct Change {
    pub rv: u64,
    pub kind: Kind,
    pub namespace: String,
    pub name: String,
    pub event: &'static str,
    pub object: Value,
    /// The object before this change (None for ADDED): what a read at an older version sees.
    pub previous: Option<Value>,
}

pub const HISTORY: usize = 10_000;

pub struct Store {
    pub rv: u64,
    pub objects: BTreeMap<Key, Value>,
    pub history: VecDeque<Change>,
    pub uid: u64,
}

impl Store {
    /// The oldest resourceVersion the history can still reconstruct.
    pub fn oldest(&self) -> u64 {
        self.history.front().map_or(self.rv, |c| c.rv - 1)
    }

    /// The objects of `kind` as they were at `rv`, or None when the history no longer reaches.
    pub fn at(&self, kind: Kind, rv: u64) -> Option<BTreeMap<Key, Value>> {
        if rv < self.oldest() {
            return None;
        }
        let mut objs: BTreeMap<Key, Value> = self
            .objects
            .iter()
            .filter(|((k, _, _), _)| *k == kind)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        for c in self.history.iter().rev().take_while(|c| c.rv > rv) {
            if c.kind != kind {
                continue;
            }
            let key = (c.kind, c.namespace.clone(), c.name.clone());
            match &c.previous {
                None => {
                    objs.remove(&key);
                }
                Some(p) => {
                    objs.insert(key, p.clone());
                }
            }
        }
        Some(objs)
    }
}

pub struct Shared {
    pub store: Mutex<Store>,
    pub changes: broadcast::Sender<Change>,
    pub faults: Mutex<HashMap<String, Faults>>,
    pub paused: watch::Sender<bool>,
    pub requests: Mutex<HashMap<String, BTreeMap<String, u64>>>,
}

/// Who writes: the field manager of the request.
pub struct Writer<'a> {
    pub manager: &'a str,
}

/// How a PATCH body is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatchType {
    Merge,
    Strategic,
    Json,
}

impl PatchType {
    /// From a request's Content-Type (apply is not a patch type here: it has its own path).
    pub fn from_media(content_type: &str) -> Option<PatchType> {
        match content_type.split(';').next().unwrap_or_default().trim() {
            "application/merge-patch+json" => Some(PatchType::Merge),
            "application/strategic-merge-patch+json" => Some(PatchType::Strategic),
            "application/json-patch+json" => Some(PatchType::Json),
            _ => None,
        }
    }
}

/// Whole seconds, as the server writes Time fields (creationTimestamp, deletionTimestamp).
fn now_rfc3339() -> String {
    format!("{:.0}", jiff::Timestamp::now())
}

/// The fields an update changed or added: what the updater comes to own.
fn changed(before: &Value, after: &Value) -> std::collections::BTreeSet<fields::Path> {
    fields::leaves(after)
        .into_iter()
        .filter(|p| {
            let at = |v: &Value| p.iter().try_fold(v, |v, k| v.get(k)).cloned();
            at(before) != at(after)
        })
        .collect()
}

impl Shared {
    fn commit(
        &self,
        st: &mut Store,
        key: &Key,
        event: &'static str,
        object: Value,
        previous: Option<Value>,
    ) {
        let change = Change {
            rv: st.rv,
            kind: key.0,
            namespace: key.1.clone(),
            name: key.2.clone(),
            event,
            object,
            previous,
        };
        st.history.push_back(change.clone());
        if st.history.len() > HISTORY {
            st.history.pop_front();
        }
        let _ = self.changes.send(change);
    }

    /// The kind's own checks on an object about to be stored.
    fn admit(kind: Kind, namespace: &str, name: &str, obj: &mut Value) -> Result<(), ApiFail> {
        let mut causes = validate::name_errors(kind, name);
        match kind {
            Kind::Lease => {
                validate::decode_lease(obj)?;
                causes.extend(validate::lease(obj));
            }
            Kind::Event => causes.extend(validate::event(obj, namespace)),
            Kind::Namespace => {
                if obj["status"]["phase"].is_null() {
                    obj["status"]["phase"] = json!("Active");
                }
                if obj["spec"]["finalizers"].is_null() {
                    obj["spec"]["finalizers"] = json!(["kubernetes"]);
                }
            }
            _ => {}
        }
        if causes.is_empty() {
            Ok(())
        } else {
            Err(ApiFail::invalid(kind, name, causes))
        }
    }

    /// NamespaceLifecycle admission: nothing is created in a namespace that does not exist.
    fn namespace_exists(st: &Store, namespace: &str) -> Result<(), ApiFail> {
        if namespace.is_empty()
            || st
                .objects
                .contains_key(&(Kind::Namespace, String::new(), namespace.to_string()))
        {
            return Ok(());
        }
        Err(ApiFail {
            code: 404,
            reason: "NotFound",
            message: format!("namespaces \"{namespace}\" not found"),
            details: Some(json!({"name": namespace, "kind": "namespaces"})),
        })
    }

    pub fn create(
        &self,
        kind: Kind,
        namespace: &str,
        obj: Value,
        w: &Writer,
    ) -> Result<Value, ApiFail> {
        self.create_as(kind, namespace, obj, (w, "Update"), None)
    }

    /// A create by `w` with `operation`; `owned` is what it comes to own (default: every field
    /// it set).
    fn create_as(
        &self,
        kind: Kind,
        namespace: &str,
        mut obj: Value,
        (w, operation): (&Writer, &str),
        owned: Option<std::collections::BTreeSet<fields::Path>>,
    ) -> Result<Value, ApiFail> {
        let name = obj["metadata"]["name"].as_str().map(str::to_string);
        let name = match (name, obj["metadata"]["generateName"].as_str()) {
            (Some(n), _) if !n.is_empty() => n,
            (_, Some(prefix)) if !prefix.is_empty() => {
                let uid = self.store.lock().unwrap().uid;
                format!("{prefix}{:05x}", uid & 0xfffff)
            }
            _ => {
                return Err(ApiFail::invalid(
                    kind,
                    "",
                    vec![Cause {
                        field: "metadata.name".into(),
                        reason: "FieldValueRequired",
                        message: "metadata.name: Required value: name or generateName is required"
                            .into(),
                    }],
                ))
            }
        };
        if kind.namespaced() {
            match obj["metadata"]["namespace"].as_str() {
                Some(ns) if !ns.is_empty() && ns != namespace => {
                    return Err(ApiFail::new(400, "BadRequest", "the namespace of the provided object does not match the namespace sent on the request"));
                }
                _ => obj["metadata"]["namespace"] = json!(namespace),
            }
        }
        Self::admit(kind, namespace, &name, &mut obj)?;
        let mut st = self.store.lock().unwrap();
        Self::namespace_exists(&st, namespace)?;
        let key = (kind, namespace.to_string(), name.clone());
        if st.objects.contains_key(&key) {
            return Err(ApiFail::for_object(
                409,
                "AlreadyExists",
                kind,
                &name,
                format!("{} \"{name}\" already exists", kind.qualified()),
            ));
        }
        st.rv += 1;
        st.uid += 1;
        obj["apiVersion"] = json!(kind.api_version());
        obj["kind"] = json!(kind.kind());
        let meta = obj["metadata"]
            .as_object_mut()
            .expect("metadata is an object");
        meta.remove("generateName");
        meta.remove("managedFields");
        meta.insert("name".into(), json!(name));
        meta.insert("resourceVersion".into(), json!(st.rv.to_string()));
        meta.insert(
            "uid".into(),
            json!(format!("00000000-0000-4000-8000-{:012x}", st.uid)),
        );
        meta.insert("creationTimestamp".into(), json!(now_rfc3339()));
        let owned = owned.unwrap_or_else(|| fields::leaves(&obj));
        fields::record(&mut obj, w.manager, operation, &owned, &now_rfc3339());
        st.objects.insert(key.clone(), obj.clone());
        self.commit(&mut st, &key, "ADDED", obj.clone(), None);
        Ok(obj)
    }

    pub fn get(&self, kind: Kind, namespace: &str, name: &str) -> Result<Value, ApiFail> {
        self.store
            .lock()
            .unwrap()
            .objects
            .get(&(kind, namespace.to_string(), name.to_string()))
            .cloned()
            .ok_or_else(|| ApiFail::not_found(kind, name))
    }

    /// Stores `next` in place of `cur` after the kind's checks, or returns `cur` for a no-op.
    fn store_update(
        &self,
        st: &mut Store,
        key: &Key,
        cur: Value,
        mut next: Value,
        owned: std::collections::BTreeSet<fields::Path>,
        (w, operation): (&Writer, &str),
    ) -> Result<Value, ApiFail> {
        let (kind, namespace, name) = key;
        for f in ["uid", "creationTimestamp", "name", "namespace"] {
            next["metadata"][f] = cur["metadata"][f].clone();
        }
        if !kind.namespaced() {
            if let Some(m) = next["metadata"].as_object_mut() {
                m.remove("namespace");
            }
        }
        next["apiVersion"] = json!(kind.api_version());
        next["kind"] = json!(kind.kind());
        next["metadata"]["resourceVersion"] = cur["metadata"]["resourceVersion"].clone();
        next["metadata"]["managedFields"] = cur["metadata"]["managedFields"].clone();
        Self::admit(*kind, namespace, name, &mut next)?;
        fields::record(&mut next, w.manager, operation, &owned, &now_rfc3339());
        if next == cur {
            return Ok(cur); // a no-op write does not bump the resourceVersion
        }
        st.rv += 1;
        next["metadata"]["resourceVersion"] = json!(st.rv.to_string());
        st.objects.insert(key.clone(), next.clone());
        self.commit(st, key, "MODIFIED", next.clone(), Some(cur));
        Ok(next)
    }

    /// PUT: a whole object, with the resourceVersion it was read at. A name that does not exist
    /// is created where the kind allows it.
    pub fn replace(
        &self,
        kind: Kind,
        namespace: &str,
        name: &str,
        body: Value,
        w: &Writer,
    ) -> Result<(Value, bool), ApiFail> {
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
        let key = (kind, namespace.to_string(), name.to_string());
        let exists = self.store.lock().unwrap().objects.contains_key(&key);
        if !exists {
            if !kind.create_on_update() {
                return Err(ApiFail::not_found(kind, name));
            }
            let mut body = body;
            body["metadata"]["name"] = json!(name);
            if let Some(m) = body["metadata"].as_object_mut() {
                m.remove("resourceVersion");
            }
            return self.create(kind, namespace, body, w).map(|v| (v, true));
        }
        let want = validate::update_resource_version(kind, name, &body)?;
        let mut st = self.store.lock().unwrap();
        let cur = st
            .objects
            .get(&key)
            .cloned()
            .ok_or_else(|| ApiFail::not_found(kind, name))?;
        if want.map(|r| r.to_string()).as_deref() != cur["metadata"]["resourceVersion"].as_str() {
            return Err(ApiFail::conflict(kind, name));
        }
        let owned = changed(&cur, &body);
        self.store_update(&mut st, &key, cur, body, owned, (w, "Update"))
            .map(|v| (v, false))
    }

    /// PATCH (merge, strategic or JSON patch). A resourceVersion the patch sets is a
    /// precondition.
    pub fn patch(
        &self,
        kind: Kind,
        namespace: &str,
        name: &str,
        body: &Value,
        ptype: PatchType,
        w: &Writer,
    ) -> Result<Value, ApiFail> {
        self.modify(kind, namespace, name, w, |cur| {
            let mut next = cur.clone();
            apply_patch(&mut next, body, ptype)?;
            Ok(next)
        })
    }

    /// A read-modify-write under the store's lock: `f` makes the next object from the current
    /// one. A resourceVersion `f` leaves changed is a precondition that failed (409).
    pub fn modify(
        &self,
        kind: Kind,
        namespace: &str,
        name: &str,
        w: &Writer,
        f: impl FnOnce(&Value) -> Result<Value, ApiFail>,
    ) -> Result<Value, ApiFail> {
        let key = (kind, namespace.to_string(), name.to_string());
        let mut st = self.store.lock().unwrap();
        let cur = st
            .objects
            .get(&key)
            .cloned()
            .ok_or_else(|| ApiFail::not_found(kind, name))?;
        let next = f(&cur)?;
        if next["metadata"]["resourceVersion"] != cur["metadata"]["resourceVersion"] {
            return Err(ApiFail::conflict(kind, name));
        }
        let owned = changed(&cur, &next);
        self.store_update(&mut st, &key, cur, next, owned, (w, "Update"))
    }

    /// Server-side apply: `config` is what the manager wants; it owns exactly that afterwards.
    pub fn apply(
        &self,
        kind: Kind,
        namespace: &str,
        name: &str,
        config: Value,
        w: &Writer,
        force: bool,
    ) -> Result<(Value, bool), ApiFail> {
        if w.manager.is_empty() {
            return Err(ApiFail::invalid_options(
                "fieldManager",
                "FieldValueRequired",
                "Required value: is required for apply patch",
            ));
        }
        let key = (kind, namespace.to_string(), name.to_string());
        let mut st = self.store.lock().unwrap();
        let Some(cur) = st.objects.get(&key).cloned() else {
            drop(st);
            let mut obj = config.clone();
            obj["metadata"]["name"] = json!(name);
            // What an apply creates is the applier's, as an Apply.
            let owned = fields::leaves(&config);
            return self
                .create_as(kind, namespace, obj, (w, "Apply"), Some(owned))
                .map(|v| (v, true));
        };
        let conflicts = fields::conflicts(&cur, &config, w.manager);
        if !conflicts.is_empty() && !force {
            return Err(apply_conflict(kind, &conflicts));
        }
        let mut next = cur.clone();
        let wanted = fields::leaves(&config);
        // What this manager applied before and applies no more goes, unless someone else owns it.
        for p in fields::applied_by(&cur, w.manager).difference(&wanted) {
            fields::remove(&mut next, p);
        }
        let mut merged = config.clone();
        if let Some(m) = merged["metadata"].as_object_mut() {
            m.remove("managedFields");
        }
        patch::merge(&mut next, &merged);
        if let Some(want) = config["metadata"]["resourceVersion"].as_str() {
            if Some(want) != cur["metadata"]["resourceVersion"].as_str() {
                return Err(ApiFail::conflict(kind, name));
            }
        }
        self.store_update(&mut st, &key, cur, next, wanted, (w, "Apply"))
            .map(|v| (v, false))
    }

    /// DELETE, with the preconditions of its DeleteOptions. A Namespace takes what it holds
    /// with it (at once: the emulator has no namespace controller to drain it slowly).
    pub fn delete(
        &self,
        kind: Kind,
        namespace: &str,
        name: &str,
        options: &Value,
    ) -> Result<Value, ApiFail> {
        let mut st = self.store.lock().unwrap();
        let key = (kind, namespace.to_string(), name.to_string());
        let cur = st
            .objects
            .get(&key)
            .cloned()
            .ok_or_else(|| ApiFail::not_found(kind, name))?;
        let pre = &options["preconditions"];
        let precondition_failed = |what: &str, want: &str, have: &str| {
            ApiFail::cannot_fulfil(
                kind,
                name,
                &format!(
                    "StorageError: invalid object, Code: 4, Key: /registry/{}/{}{name}, ResourceVersion: 0, AdditionalErrorMsg: Precondition failed: {what} in precondition: {want}, {what} in object meta: {have}",
                    kind.plural(),
                    if namespace.is_empty() { String::new() } else { format!("{namespace}/") },
                ),
            )
        };
        let have = |f: &str| cur["metadata"][f].as_str().unwrap_or_default().to_string();
        if let Some(uid) = pre["uid"].as_str() {
            if uid != have("uid") {
                return Err(precondition_failed("UID", uid, &have("uid")));
            }
        }
        if let Some(rv) = pre["resourceVersion"].as_str() {
            if rv != have("resourceVersion") {
                return Err(precondition_failed(
                    "ResourceVersion",
                    rv,
                    &have("resourceVersion"),
                ));
            }
        }
        if kind == Kind::Namespace {
            let inside: Vec<Key> = st
                .objects
                .keys()
                .filter(|(_, ns, _)| ns == name)
                .cloned()
                .collect();
            for k in inside {
                let obj = st.objects.remove(&k).expect("listed above");
                st.rv += 1;
                let mut gone = obj.clone();
                gone["metadata"]["resourceVersion"] = json!(st.rv.to_string());
                self.commit(&mut st, &k, "DELETED", gone, Some(obj));
            }
        }
        let mut obj = st.objects.remove(&key).expect("read above");
        st.rv += 1;
        let previous = obj.clone();
        obj["metadata"]["resourceVersion"] = json!(st.rv.to_string());
        self.commit(&mut st, &key, "DELETED", obj.clone(), Some(previous));
        if kind == Kind::Namespace {
            obj["status"]["phase"] = json!("Terminating");
            return Ok(obj);
        }
        Ok(json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
            "details": {"name": name, "group": kind.group(), "kind": kind.plural(), "uid": obj["metadata"]["uid"]},
        }))
    }

    /// LIST with selectors, resourceVersion semantics and pagination.
    pub fn list(
        &self,
        kind: Kind,
        namespace: &str,
        q: &HashMap<String, String>,
    ) -> Result<Value, ApiFail> {
        let labels = LabelSelector::parse(q.get("labelSelector").map_or("", String::as_str))?;
        let fields = FieldSelector::parse(kind, q.get("fieldSelector").map_or("", String::as_str))?;
        let limit: Option<usize> = match q.get("limit").filter(|l| !l.is_empty()) {
            None => None,
            Some(l) => Some(
                l.parse()
                    .map_err(|_| ApiFail::new(400, "BadRequest", format!("invalid limit {l:?}")))?,
            ),
        }
        .filter(|l| *l > 0);
        let token = q
            .get("continue")
            .filter(|c| !c.is_empty())
            .map(|c| Continue::decode(c))
            .transpose()?;
        let st = self.store.lock().unwrap();
        let rv_param = q.get("resourceVersion").filter(|r| !r.is_empty());
        let exact = q.get("resourceVersionMatch").map(String::as_str) == Some("Exact");
        let at = match (&token, rv_param) {
            (Some(t), _) => Some(t.rv),
            (None, Some(r)) if r != "0" => {
                let n: u64 = r.parse().map_err(|_| {
                    ApiFail::new(400, "BadRequest", format!("invalid resource version: {r}"))
                })?;
                if n > st.rv {
                    return Err(too_large(n, st.rv));
                }
                exact.then_some(n)
            }
            _ => None,
        };
        let objects = match at {
            Some(n) if n < st.rv => st.at(kind, n).ok_or_else(|| {
                if token.is_some() {
                    ApiFail::new(410, "Expired", "The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter.")
                } else {
                    ApiFail::new(410, "Expired", format!("too old resource version: {n} ({})", st.oldest()))
                }
            })?,
            _ => st
                .objects
                .iter()
                .filter(|((k, _, _), _)| *k == kind)
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        };
        let list_rv = at.unwrap_or(st.rv);
        drop(st);
        let start = token.as_ref().map(|t| t.start.clone());
        let matching: Vec<(Key, Value)> = objects
            .into_iter()
            .filter(|((_, ns, _), _)| namespace.is_empty() || ns == namespace)
            .filter(|((_, ns, n), _)| start.as_ref().is_none_or(|s| format!("{ns}/{n}") > *s))
            .filter(|(_, v)| labels.matches(v) && fields.matches(v))
            .collect();
        let total = matching.len();
        let take = limit.unwrap_or(total).min(total);
        let mut meta = json!({"resourceVersion": list_rv.to_string()});
        if take < total {
            let ((_, ns, n), _) = &matching[take - 1];
            meta["continue"] = json!(Continue {
                rv: list_rv,
                start: format!("{ns}/{n}")
            }
            .encode());
            if q.get("labelSelector").is_none_or(|s| s.is_empty())
                && q.get("fieldSelector").is_none_or(|s| s.is_empty())
            {
                meta["remainingItemCount"] = json!(total - take);
            }
        }
        let items: Vec<Value> = matching.into_iter().take(take).map(|(_, v)| v).collect();
        Ok(json!({
            "kind": format!("{}List", kind.kind()),
            "apiVersion": kind.api_version(),
            "metadata": meta,
            "items": items,
        }))
    }
}

/// 409 for an apply that would change fields other managers own, in the server's words.
fn apply_conflict(kind: Kind, conflicts: &[(String, fields::Path)]) -> ApiFail {
    let api_version = kind.api_version();
    let printed: Vec<String> = conflicts
        .iter()
        .map(|(m, p)| {
            format!(
                "conflict with \"{m}\" using {api_version}: .{}",
                p.join(".")
            )
        })
        .collect();
    let message = if printed.len() == 1 {
        format!("Apply failed with 1 conflict: {}", printed[0])
    } else {
        format!(
            "Apply failed with {} conflicts: {}",
            printed.len(),
            printed.join("\n")
        )
    };
    let causes: Vec<Value> = conflicts
        .iter()
        .map(|(m, p)| json!({"reason": "FieldManagerConflict", "message": format!("conflict with \"{m}\" using {api_version}"), "field": format!(".{}", p.join("."))}))
        .collect();
    ApiFail {
        code: 409,
        reason: "Conflict",
        message,
        details: Some(json!({"causes": causes})),
    }
}

/// A merge, strategic-merge or JSON patch applied to `doc`, failing as the real server words it.
pub fn apply_patch(doc: &mut Value, body: &Value, ptype: PatchType) -> Result<(), ApiFail> {
    let applied = match ptype {
        PatchType::Merge => {
            patch::merge(doc, body);
            Ok(())
        }
        PatchType::Strategic => patch::strategic(doc, body),
        PatchType::Json => patch::json_patch(doc, body),
    };
    applied.map_err(|e| {
        let json = ptype == PatchType::Json;
        ApiFail::new(
            if json { 422 } else { 400 },
            if json { "Invalid" } else { "BadRequest" },
            format!("the server rejected our request due to an error in our request: {e}"),
        )
    })
}

/// 504 for a resourceVersion the store has not reached.
pub fn too_large(want: u64, current: u64) -> ApiFail {
    ApiFail {
        code: 504,
        reason: "Timeout",
        message: format!("Timeout: Too large resource version: {want}, current: {current}"),
        details: Some(
            json!({"causes": [{"reason": "ResourceVersionTooLarge", "message": "Too large resource version"}], "retryAfterSeconds": 1}),
        ),
    }
}

/// A continue token: the list's resourceVersion and the last key it returned. Opaque to
/// clients (hex of JSON, where the real server uses base64 of JSON).
struct Continue {
    rv: u64,
    start: String,
}

impl Continue {
    fn encode(&self) -> String {
        let json = json!({"v": "meta.k8s.io/v1", "rv": self.rv, "start": self.start}).to_string();
        json.bytes().map(|b| format!("{b:02x}")).collect()
    }
    fn decode(s: &str) -> Result<Continue, ApiFail> {
        let bad = || {
            ApiFail::new(
                400,
                "BadRequest",
                format!("continue key is not valid: {s:?}"),
            )
        };
        if s.len() % 2 != 0 {
            return Err(bad());
        }
        let bytes: Vec<u8> = (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(s.get(i..i + 2).unwrap_or("zz"), 16))
            .collect::<Result<_, _>>()
            .map_err(|_| bad())?;
        let v: Value = serde_json::from_slice(&bytes).map_err(|_| bad())?;
        match (v["v"].as_str(), v["rv"].as_u64(), v["start"].as_str()) {
            (Some("meta.k8s.io/v1"), Some(rv), Some(start)) => Ok(Continue {
                rv,
                start: start.to_string(),
            }),
            _ => Err(bad()),
        }
    }
}
