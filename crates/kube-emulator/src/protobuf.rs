//! The protobuf bodies kubectl's typed commands send (`kubectl create namespace` writes
//! `application/vnd.kubernetes.protobuf` and does not fall back to JSON): the `k8s\0` envelope,
//! its `runtime.Unknown`, and a Namespace's ObjectMeta fields a create carries. Anything else in
//! protobuf is refused with 415, naming what the emulator reads.

use serde_json::{json, Map, Value};

fn varint(b: &[u8], i: &mut usize) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *b.get(*i)?;
        *i += 1;
        v |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

/// A message's length-delimited fields (strings, messages, map entries); the fields read here
/// are all of that wire type, the others are skipped.
enum Field<'a> {
    Bytes(u64, &'a [u8]),
    Other,
}

fn fields(b: &[u8]) -> Option<Vec<Field<'_>>> {
    let mut i = 0;
    let mut out = Vec::new();
    while i < b.len() {
        let key = varint(b, &mut i)?;
        let (num, wire) = (key >> 3, key & 7);
        match wire {
            0 => {
                varint(b, &mut i)?;
                out.push(Field::Other);
            }
            2 => {
                let len = usize::try_from(varint(b, &mut i)?).ok()?;
                let end = i.checked_add(len).filter(|e| *e <= b.len())?;
                out.push(Field::Bytes(num, &b[i..end]));
                i = end;
            }
            1 => i += 8,
            5 => i += 4,
            _ => return None,
        }
    }
    (i == b.len()).then_some(out)
}

fn string(b: &[u8]) -> Option<String> {
    String::from_utf8(b.to_vec()).ok()
}

fn map_entry(b: &[u8]) -> Option<(String, String)> {
    let (mut k, mut v) = (String::new(), String::new());
    for f in fields(b)? {
        match f {
            Field::Bytes(1, x) => k = string(x)?,
            Field::Bytes(2, x) => v = string(x)?,
            _ => {}
        }
    }
    Some((k, v))
}

/// ObjectMeta: name (1), generateName (2), namespace (3), labels (11), annotations (12).
fn object_meta(b: &[u8]) -> Option<Value> {
    let mut m = Map::new();
    let (mut labels, mut annotations) = (Map::new(), Map::new());
    for f in fields(b)? {
        match f {
            Field::Bytes(1, x) => {
                m.insert("name".into(), json!(string(x)?));
            }
            Field::Bytes(2, x) => {
                m.insert("generateName".into(), json!(string(x)?));
            }
            Field::Bytes(3, x) => {
                m.insert("namespace".into(), json!(string(x)?));
            }
            Field::Bytes(11, x) => {
                let (k, v) = map_entry(x)?;
                labels.insert(k, json!(v));
            }
            Field::Bytes(12, x) => {
                let (k, v) = map_entry(x)?;
                annotations.insert(k, json!(v));
            }
            _ => {}
        }
    }
    if !labels.is_empty() {
        m.insert("labels".into(), Value::Object(labels));
    }
    if !annotations.is_empty() {
        m.insert("annotations".into(), Value::Object(annotations));
    }
    Some(Value::Object(m))
}

/// A Namespace: metadata (1), spec (2: finalizers, 1).
fn namespace(b: &[u8]) -> Option<Value> {
    let mut obj = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {}});
    for f in fields(b)? {
        match f {
            Field::Bytes(1, x) => obj["metadata"] = object_meta(x)?,
            Field::Bytes(2, x) => {
                let finalizers: Option<Vec<String>> = fields(x)?
                    .into_iter()
                    .filter_map(|f| match f {
                        Field::Bytes(1, s) => Some(string(s)),
                        _ => None,
                    })
                    .collect();
                obj["spec"] = json!({"finalizers": finalizers?});
            }
            _ => {}
        }
    }
    Some(obj)
}

/// The JSON form of a protobuf body, or why it cannot be read.
pub fn decode(body: &[u8]) -> Result<Value, String> {
    let inner = body
        .strip_prefix(b"k8s\0")
        .ok_or("a protobuf body starts with the k8s\\0 magic")?;
    let mut type_meta = (String::new(), String::new());
    let mut raw: &[u8] = &[];
    for f in fields(inner).ok_or("not a runtime.Unknown message")? {
        match f {
            Field::Bytes(1, tm) => {
                for g in fields(tm).ok_or("bad TypeMeta")? {
                    match g {
                        Field::Bytes(1, v) => type_meta.0 = string(v).unwrap_or_default(),
                        Field::Bytes(2, v) => type_meta.1 = string(v).unwrap_or_default(),
                        _ => {}
                    }
                }
            }
            Field::Bytes(2, r) => raw = r,
            _ => {}
        }
    }
    match (type_meta.0.as_str(), type_meta.1.as_str()) {
        ("v1", "Namespace") => {
            namespace(raw).ok_or_else(|| "a Namespace that does not decode".to_string())
        }
        (v, k) => Err(format!(
            "the emulator reads protobuf only for v1 Namespace, not {v} {k}: send JSON"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shape `kubectl create namespace team-a` sends, built from generated.proto's field
    /// numbers; tests/kubectl.rs sends the real thing.
    #[test]
    fn kubectl_create_namespace_decodes() {
        let mut raw = vec![0x0a];
        let meta = [
            &[0x0a, 6][..],
            b"team-a",
            &[0x5a, 8, 0x0a, 1, b'a', 0x12, 3][..],
            b"one",
        ]
        .concat();
        raw.push(meta.len() as u8);
        raw.extend_from_slice(&meta);
        raw.extend_from_slice(&[0x12, 0, 0x1a, 0]);
        let tm = [&[0x0a, 2][..], b"v1", &[0x12, 9][..], b"Namespace"].concat();
        let mut unknown = vec![0x0a, tm.len() as u8];
        unknown.extend_from_slice(&tm);
        unknown.push(0x12);
        unknown.push(raw.len() as u8);
        unknown.extend_from_slice(&raw);
        let body = [b"k8s\0".as_slice(), &unknown].concat();
        let v = decode(&body).unwrap();
        assert_eq!(v["metadata"]["name"], "team-a");
        assert_eq!(v["metadata"]["labels"]["a"], "one");
        assert!(decode(b"k8s\0\x0a\x04\x0a\x02v1").is_err());
        assert!(decode(b"{}").is_err());
    }
}
