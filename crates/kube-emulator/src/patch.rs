//! The three patch types the real server takes besides apply: JSON merge patch (RFC 7386),
//! strategic merge patch (its directives, for the kinds served here whose lists have no merge
//! key), and JSON patch (RFC 6902).

use serde_json::{json, Value};

/// RFC 7386 JSON merge patch.
pub fn merge(target: &mut Value, patch: &Value) {
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
                    merge(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        other => *target = other.clone(),
    }
}

/// Strategic merge patch: a merge patch plus `$patch: replace|delete` on maps and
/// `$deleteFromPrimitiveList/<key>` and `$setElementOrder/<key>` on lists. The kinds served here
/// (Lease, Event, Namespace, Node, PV, PVC as the agent and kubectl write them) have no list with
/// a patch merge key in the fields patched, so other lists are replaced, as the server does for
/// lists without one.
pub fn strategic(target: &mut Value, patch: &Value) -> Result<(), String> {
    let Value::Object(p) = patch else {
        *target = patch.clone();
        return Ok(());
    };
    match p.get("$patch").and_then(Value::as_str) {
        Some("replace") => {
            let mut v = patch.clone();
            v.as_object_mut().expect("object").remove("$patch");
            *target = v;
            return Ok(());
        }
        Some("delete") => {
            *target = Value::Null;
            return Ok(());
        }
        Some(other) => return Err(format!("unknown patch type: {other}")),
        None => {}
    }
    if !target.is_object() {
        *target = json!({});
    }
    let t = target.as_object_mut().expect("object");
    for (k, v) in p {
        if let Some(list) = k.strip_prefix("$deleteFromPrimitiveList/") {
            let drop: Vec<Value> = v.as_array().cloned().unwrap_or_default();
            if let Some(Value::Array(a)) = t.get_mut(list) {
                a.retain(|x| !drop.contains(x));
            }
            continue;
        }
        if k.starts_with("$setElementOrder/") || k == "$retainKeys" {
            continue;
        }
        if v.is_null() {
            t.remove(k);
            continue;
        }
        let slot = t.entry(k.clone()).or_insert(Value::Null);
        strategic(slot, v)?;
        if slot.is_null() {
            t.remove(k);
        }
    }
    Ok(())
}

/// An RFC 6901 pointer's tokens.
fn tokens(path: &str) -> Result<Vec<String>, String> {
    if path.is_empty() {
        return Ok(vec![]);
    }
    let rest = path
        .strip_prefix('/')
        .ok_or_else(|| format!("invalid JSON pointer {path:?}: must start with '/'"))?;
    Ok(rest
        .split('/')
        .map(|t| t.replace("~1", "/").replace("~0", "~"))
        .collect())
}

fn parent<'a>(doc: &'a mut Value, toks: &[String]) -> Result<&'a mut Value, String> {
    let mut cur = doc;
    for t in toks {
        cur = match cur {
            Value::Object(m) => m
                .get_mut(t)
                .ok_or_else(|| format!("missing value at {t:?}"))?,
            Value::Array(a) => {
                let i: usize = t.parse().map_err(|_| format!("invalid index {t:?}"))?;
                a.get_mut(i)
                    .ok_or_else(|| format!("index {i} out of range"))?
            }
            _ => return Err(format!("cannot descend into a scalar at {t:?}")),
        };
    }
    Ok(cur)
}

fn get(doc: &Value, path: &str) -> Result<Value, String> {
    doc.pointer(path)
        .cloned()
        .ok_or_else(|| format!("missing value at {path:?}"))
}

fn remove(doc: &mut Value, path: &str) -> Result<Value, String> {
    let toks = tokens(path)?;
    let (last, up) = toks
        .split_last()
        .ok_or("cannot remove the whole document")?;
    match parent(doc, up)? {
        Value::Object(m) => m
            .remove(last)
            .ok_or_else(|| format!("missing value at {path:?}")),
        Value::Array(a) => {
            let i: usize = last
                .parse()
                .map_err(|_| format!("invalid index {last:?}"))?;
            (i < a.len())
                .then(|| a.remove(i))
                .ok_or_else(|| format!("index {i} out of range"))
        }
        _ => Err(format!("cannot remove from a scalar at {path:?}")),
    }
}

fn add(doc: &mut Value, path: &str, value: Value) -> Result<(), String> {
    let toks = tokens(path)?;
    let Some((last, up)) = toks.split_last() else {
        *doc = value;
        return Ok(());
    };
    match parent(doc, up)? {
        Value::Object(m) => {
            m.insert(last.clone(), value);
            Ok(())
        }
        Value::Array(a) => {
            let i = if last == "-" {
                a.len()
            } else {
                last.parse()
                    .map_err(|_| format!("invalid index {last:?}"))?
            };
            if i > a.len() {
                return Err(format!("index {i} out of range"));
            }
            a.insert(i, value);
            Ok(())
        }
        _ => Err(format!("cannot add to a scalar at {path:?}")),
    }
}

/// RFC 6902 JSON patch. An error leaves `doc` as it was.
pub fn json_patch(doc: &mut Value, ops: &Value) -> Result<(), String> {
    let ops = ops
        .as_array()
        .ok_or("a JSON patch is an array of operations")?;
    let mut work = doc.clone();
    for op in ops {
        let path = op["path"].as_str().ok_or("an operation needs a path")?;
        let value = || op.get("value").cloned().ok_or("missing value");
        match op["op"].as_str().unwrap_or_default() {
            "add" => add(&mut work, path, value()?)?,
            "remove" => {
                remove(&mut work, path)?;
            }
            "replace" => {
                remove(&mut work, path)?;
                add(&mut work, path, value()?)?;
            }
            "move" => {
                let from = op["from"].as_str().ok_or("move needs from")?;
                let v = remove(&mut work, from)?;
                add(&mut work, path, v)?;
            }
            "copy" => {
                let from = op["from"].as_str().ok_or("copy needs from")?;
                let v = get(&work, from)?;
                add(&mut work, path, v)?;
            }
            "test" => {
                if get(&work, path)? != value()? {
                    return Err(format!("testing value {path} failed"));
                }
            }
            other => return Err(format!("unexpected kind of operation: {other:?}")),
        }
    }
    *doc = work;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_patch_follows_rfc_6902() {
        let mut d = json!({"metadata": {"labels": {"a": "1"}}, "spec": {"l": [1, 2]}});
        json_patch(
            &mut d,
            &json!([
                {"op": "add", "path": "/metadata/labels/b~1c", "value": "2"},
                {"op": "replace", "path": "/metadata/labels/a", "value": "3"},
                {"op": "add", "path": "/spec/l/-", "value": 3},
                {"op": "remove", "path": "/spec/l/0"},
                {"op": "test", "path": "/spec/l", "value": [2, 3]},
                {"op": "copy", "from": "/spec/l", "path": "/spec/m"},
                {"op": "move", "from": "/spec/m", "path": "/spec/n"},
            ]),
        )
        .unwrap();
        assert_eq!(
            d,
            json!({"metadata": {"labels": {"a": "3", "b/c": "2"}}, "spec": {"l": [2, 3], "n": [2, 3]}})
        );
        let before = d.clone();
        assert!(json_patch(&mut d, &json!([{"op": "remove", "path": "/nope"}])).is_err());
        assert!(json_patch(&mut d, &json!([{"op": "add", "path": "/spec/x", "value": 1}, {"op": "test", "path": "/spec/x", "value": 2}])).is_err());
        assert_eq!(d, before, "a failed patch changes nothing");
    }

    #[test]
    fn strategic_merge_directives() {
        let mut d = json!({"metadata": {"labels": {"a": "1", "b": "2"}, "finalizers": ["x", "y"]}, "spec": {"k": {"v": 1}}});
        strategic(
            &mut d,
            &json!({"metadata": {"labels": {"a": null, "c": "3"}, "$deleteFromPrimitiveList/finalizers": ["x"]},
                    "spec": {"k": {"$patch": "replace", "w": 2}}}),
        )
        .unwrap();
        assert_eq!(
            d,
            json!({"metadata": {"labels": {"b": "2", "c": "3"}, "finalizers": ["y"]}, "spec": {"k": {"w": 2}}})
        );
        strategic(&mut d, &json!({"spec": {"$patch": "delete"}})).unwrap();
        assert!(d.get("spec").is_none());
        assert!(strategic(&mut d, &json!({"$patch": "bogus"})).is_err());
    }
}
