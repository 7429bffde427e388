//! managedFields: which manager set which field (FieldsV1), kept per manager and operation as
//! the server does, and the conflicts a server-side apply meets.

use std::collections::BTreeSet;

use serde_json::{json, Map, Value};

/// A field's path: `["spec", "holderIdentity"]`. Lists are leaves (the kinds served here have
/// no list with a merge key in what their writers set).
pub type Path = Vec<String>;

/// Server-owned metadata: never anyone's field.
const SERVER_OWNED: [&str; 7] = [
    "name",
    "namespace",
    "uid",
    "resourceVersion",
    "creationTimestamp",
    "managedFields",
    "generateName",
];

/// The leaf paths `v` sets.
pub fn leaves(v: &Value) -> BTreeSet<Path> {
    let mut out = BTreeSet::new();
    walk(v, &mut Vec::new(), &mut out);
    out
}

fn walk(v: &Value, at: &mut Path, out: &mut BTreeSet<Path>) {
    match v {
        Value::Object(m) if !m.is_empty() => {
            for (k, child) in m {
                if at.is_empty() && (k == "apiVersion" || k == "kind" || k == "status") {
                    continue;
                }
                if at.len() == 1 && at[0] == "metadata" && SERVER_OWNED.contains(&k.as_str()) {
                    continue;
                }
                at.push(k.clone());
                walk(child, at, out);
                at.pop();
            }
        }
        Value::Null => {}
        _ => {
            if !at.is_empty() {
                out.insert(at.clone());
            }
        }
    }
}

/// FieldsV1 JSON (`{"f:spec": {"f:holderIdentity": {}}}`) of a set of paths.
pub fn to_fields_v1(paths: &BTreeSet<Path>) -> Value {
    let mut root = Map::new();
    for p in paths {
        let mut cur = &mut root;
        for part in p {
            cur = cur
                .entry(format!("f:{part}"))
                .or_insert_with(|| json!({}))
                .as_object_mut()
                .expect("object");
        }
    }
    Value::Object(root)
}

/// The paths a FieldsV1 document names (its leaves).
pub fn from_fields_v1(v: &Value) -> BTreeSet<Path> {
    fn go(v: &Value, at: &mut Path, out: &mut BTreeSet<Path>) {
        let Some(m) = v.as_object().filter(|m| !m.is_empty()) else {
            if !at.is_empty() {
                out.insert(at.clone());
            }
            return;
        };
        for (k, child) in m {
            let Some(name) = k.strip_prefix("f:") else {
                continue;
            };
            at.push(name.to_string());
            go(child, at, out);
            at.pop();
        }
    }
    let mut out = BTreeSet::new();
    go(v, &mut Vec::new(), &mut out);
    out
}

fn value_at<'a>(obj: &'a Value, p: &Path) -> Option<&'a Value> {
    p.iter().try_fold(obj, |v, k| v.get(k))
}

/// Records that `manager` (with `operation`, `Update` or `Apply`) set `paths` on `obj` at
/// `time`: its entry gains them (an apply's entry is replaced: it owns what it last applied),
/// every other manager loses them.
pub fn record(obj: &mut Value, manager: &str, operation: &str, paths: &BTreeSet<Path>, time: &str) {
    let api_version = obj["apiVersion"].clone();
    let mut entries: Vec<Value> = obj["metadata"]["managedFields"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let mut mine = BTreeSet::new();
    let mut kept = Vec::new();
    for e in entries.drain(..) {
        let owned = from_fields_v1(&e["fieldsV1"]);
        if e["manager"] == manager && e["operation"] == operation {
            if operation == "Update" {
                mine = owned;
            }
            continue;
        }
        let rest: BTreeSet<Path> = owned.difference(paths).cloned().collect();
        // A field that is gone from the object is nobody's any more.
        let rest: BTreeSet<Path> = rest
            .into_iter()
            .filter(|p| value_at(obj, p).is_some())
            .collect();
        if !rest.is_empty() {
            let mut e = e;
            e["fieldsV1"] = to_fields_v1(&rest);
            kept.push(e);
        }
    }
    mine.extend(paths.iter().cloned());
    mine.retain(|p| value_at(obj, p).is_some());
    if !mine.is_empty() {
        kept.push(json!({
            "manager": manager,
            "operation": operation,
            "apiVersion": api_version,
            "time": time,
            "fieldsType": "FieldsV1",
            "fieldsV1": to_fields_v1(&mine),
        }));
    }
    obj["metadata"]["managedFields"] = Value::Array(kept);
}

/// What `manager` applied last (its Apply entry), to remove what it no longer applies.
pub fn applied_by(obj: &Value, manager: &str) -> BTreeSet<Path> {
    obj["metadata"]["managedFields"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["manager"] == manager && e["operation"] == "Apply")
        .flat_map(|e| from_fields_v1(&e["fieldsV1"]))
        .collect()
}

/// Fields `config` would change that another manager owns: `(manager, path)`.
pub fn conflicts(obj: &Value, config: &Value, manager: &str) -> Vec<(String, Path)> {
    let mut out = Vec::new();
    let wanted = leaves(config);
    for e in obj["metadata"]["managedFields"]
        .as_array()
        .into_iter()
        .flatten()
    {
        if e["manager"] == manager {
            continue;
        }
        for p in from_fields_v1(&e["fieldsV1"]).intersection(&wanted) {
            if value_at(obj, p) != value_at(config, p) {
                out.push((
                    e["manager"].as_str().unwrap_or_default().to_string(),
                    p.clone(),
                ));
            }
        }
    }
    out
}

/// Removes `p` from `obj` (and the maps it leaves empty).
pub fn remove(obj: &mut Value, p: &Path) {
    fn go(v: &mut Value, p: &[String]) {
        let Some(m) = v.as_object_mut() else { return };
        match p {
            [] => {}
            [last] => {
                m.remove(last);
            }
            [first, rest @ ..] => {
                if let Some(child) = m.get_mut(first) {
                    go(child, rest);
                    if child.as_object().is_some_and(Map::is_empty) {
                        m.remove(first);
                    }
                }
            }
        }
    }
    go(obj, p);
}

/// The manager of a write without `fieldManager`: the User-Agent up to its first `/`, printable
/// characters only, at most 128 bytes.
pub fn manager_from_user_agent(ua: Option<&str>) -> String {
    let prefix: String = ua
        .unwrap_or_default()
        .split('/')
        .next()
        .unwrap_or_default()
        .chars()
        .filter(|c| !c.is_control())
        .collect();
    let mut end = prefix.len().min(128);
    while !prefix.is_char_boundary(end) {
        end -= 1;
    }
    prefix[..end].to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ownership_moves_with_the_writes() {
        let mut obj = json!({"apiVersion": "coordination.k8s.io/v1", "metadata": {"name": "n1"},
            "spec": {"holderIdentity": "a", "leaseDurationSeconds": 10}});
        let all = leaves(&obj);
        assert_eq!(all.len(), 2);
        record(&mut obj, "volfenced", "Update", &all, "t0");
        let p: BTreeSet<Path> = [vec!["spec".to_string(), "holderIdentity".to_string()]].into();
        obj["spec"]["holderIdentity"] = json!("b");
        record(&mut obj, "kubectl", "Update", &p, "t1");
        let mf = obj["metadata"]["managedFields"].as_array().unwrap();
        assert_eq!(mf.len(), 2);
        assert_eq!(mf[0]["manager"], "volfenced");
        assert_eq!(
            mf[0]["fieldsV1"],
            json!({"f:spec": {"f:leaseDurationSeconds": {}}})
        );
        assert_eq!(
            mf[1]["fieldsV1"],
            json!({"f:spec": {"f:holderIdentity": {}}})
        );
        let c = conflicts(&obj, &json!({"spec": {"holderIdentity": "c"}}), "volfenced");
        assert_eq!(
            c,
            vec![(
                "kubectl".to_string(),
                vec!["spec".into(), "holderIdentity".into()]
            )]
        );
        assert_eq!(
            manager_from_user_agent(Some("kubectl/v1.32.0 (linux/amd64)")),
            "kubectl"
        );
        assert_eq!(manager_from_user_agent(None), "");
    }
}
