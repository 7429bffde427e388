//! `labelSelector` and `fieldSelector`, parsed and matched as the real server does
//! (k8s.io/apimachinery/pkg/labels and pkg/fields): a bad selector is a 400 before anything is
//! read, whether or not the collection holds anything.

use serde_json::Value;

use super::kinds::Kind;
use super::status::ApiFail;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Op {
    Exists,
    NotExists,
    Eq(String),
    NotEq(String),
    In(Vec<String>),
    NotIn(Vec<String>),
    Gt(i64),
    Lt(i64),
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Requirement {
    key: String,
    op: Op,
}

/// A parsed label selector; the empty one matches everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LabelSelector(Vec<Requirement>);

fn bad(msg: String) -> ApiFail {
    ApiFail::new(400, "BadRequest", msg)
}

/// Splits on commas outside parentheses.
fn split_top(s: &str) -> Result<Vec<&str>, String> {
    let (mut depth, mut start, mut out) = (0i32, 0, Vec::new());
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
        if depth < 0 {
            return Err(format!("unexpected ')' in {s:?}"));
        }
    }
    if depth != 0 {
        return Err(format!("found '(', expected: ')' in {s:?}"));
    }
    out.push(&s[start..]);
    Ok(out)
}

fn valid_key(k: &str) -> bool {
    let (prefix, name) = match k.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, k),
    };
    let name_ok = !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric());
    let prefix_ok = prefix.is_none_or(|p| {
        !p.is_empty()
            && p.len() <= 253
            && p.split('.').all(|l| {
                !l.is_empty()
                    && l.chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                    && !l.starts_with('-')
                    && !l.ends_with('-')
            })
    });
    name_ok && prefix_ok
}

fn valid_value(v: &str) -> bool {
    v.is_empty()
        || (v.len() <= 63
            && v.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
            && v.starts_with(|c: char| c.is_ascii_alphanumeric())
            && v.ends_with(|c: char| c.is_ascii_alphanumeric()))
}

fn requirement(term: &str) -> Result<Requirement, String> {
    let t = term.trim();
    let set = |rest: &str, key: &str| -> Result<Vec<String>, String> {
        let inner = rest
            .trim()
            .strip_prefix('(')
            .and_then(|r| r.strip_suffix(')'))
            .ok_or_else(|| format!("found '{rest}', expected: '('"))?;
        let vals: Vec<String> = inner.split(',').map(|v| v.trim().to_string()).collect();
        if let Some(v) = vals.iter().find(|v| !valid_value(v)) {
            return Err(format!("invalid label value: \"{v}\" for key \"{key}\""));
        }
        Ok(vals)
    };
    let (key, op) = if let Some(k) = t.strip_prefix('!') {
        (k.trim().to_string(), Op::NotExists)
    } else if let Some((k, v)) = t.split_once("!=") {
        (k.trim().to_string(), Op::NotEq(v.trim().to_string()))
    } else if let Some((k, v)) = t.split_once("==") {
        (k.trim().to_string(), Op::Eq(v.trim().to_string()))
    } else if let Some((k, v)) = t.split_once('=') {
        (k.trim().to_string(), Op::Eq(v.trim().to_string()))
    } else if let Some((k, v)) = t.split_once(" notin ") {
        let k = k.trim().to_string();
        let vals = set(v, &k)?;
        (k, Op::NotIn(vals))
    } else if let Some((k, v)) = t.split_once(" in ") {
        let k = k.trim().to_string();
        let vals = set(v, &k)?;
        (k, Op::In(vals))
    } else if let Some((k, v)) = t.split_once('>') {
        let n = v.trim().parse().map_err(|_| {
            format!("for 'Gt', 'Lt' operators, the value must be an integer: {v:?}")
        })?;
        (k.trim().to_string(), Op::Gt(n))
    } else if let Some((k, v)) = t.split_once('<') {
        let n = v.trim().parse().map_err(|_| {
            format!("for 'Gt', 'Lt' operators, the value must be an integer: {v:?}")
        })?;
        (k.trim().to_string(), Op::Lt(n))
    } else {
        (t.to_string(), Op::Exists)
    };
    if !valid_key(&key) {
        return Err(format!("invalid label key \"{key}\""));
    }
    if let Op::Eq(v) | Op::NotEq(v) = &op {
        if !valid_value(v) {
            return Err(format!("invalid label value: \"{v}\" for key \"{key}\""));
        }
    }
    Ok(Requirement { key, op })
}

impl LabelSelector {
    pub fn parse(s: &str) -> Result<LabelSelector, ApiFail> {
        if s.trim().is_empty() {
            return Ok(LabelSelector::default());
        }
        let terms = split_top(s).map_err(|e| bad(format!("unable to parse requirement: {e}")))?;
        terms
            .into_iter()
            .map(|t| requirement(t).map_err(|e| bad(format!("unable to parse requirement: {e}"))))
            .collect::<Result<_, _>>()
            .map(LabelSelector)
    }

    pub fn matches(&self, obj: &Value) -> bool {
        let labels = &obj["metadata"]["labels"];
        self.0.iter().all(|r| {
            let v = labels[&r.key].as_str();
            match &r.op {
                Op::Exists => v.is_some(),
                Op::NotExists => v.is_none(),
                Op::Eq(want) => v == Some(want.as_str()),
                Op::NotEq(want) => v != Some(want.as_str()),
                Op::In(set) => v.is_some_and(|v| set.iter().any(|s| s == v)),
                Op::NotIn(set) => v.is_none_or(|v| !set.iter().any(|s| s == v)),
                Op::Gt(n) => v
                    .and_then(|v| v.parse::<i64>().ok())
                    .is_some_and(|v| v > *n),
                Op::Lt(n) => v
                    .and_then(|v| v.parse::<i64>().ok())
                    .is_some_and(|v| v < *n),
            }
        })
    }
}

/// A parsed field selector for one kind; only the labels the real server indexes are accepted.
#[derive(Debug, Clone, Default)]
pub struct FieldSelector {
    kind: Option<Kind>,
    terms: Vec<(String, bool, String)>, // label, equal?, value
}

/// A field selector value: `\,`, `\=` and `\\` are escapes (fields.EscapeValue).
fn unescape(v: &str) -> String {
    let mut out = String::new();
    let mut chars = v.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            if let Some(n) = chars.next() {
                out.push(n);
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Splits on a delimiter not preceded by a backslash.
fn split_unescaped(s: &str, delim: char) -> Vec<&str> {
    let (mut out, mut start, mut escaped) = (Vec::new(), 0, false);
    for (i, c) in s.char_indices() {
        if escaped {
            escaped = false;
        } else if c == '\\' {
            escaped = true;
        } else if c == delim {
            out.push(&s[start..i]);
            start = i + c.len_utf8();
        }
    }
    out.push(&s[start..]);
    out
}

impl FieldSelector {
    pub fn parse(kind: Kind, s: &str) -> Result<FieldSelector, ApiFail> {
        let mut terms = Vec::new();
        if s.trim().is_empty() {
            return Ok(FieldSelector::default());
        }
        for term in split_unescaped(s, ',') {
            let (label, eq, value) = if let Some((k, v)) = term.split_once("!=") {
                (k, false, v)
            } else if let Some((k, v)) = term.split_once("==") {
                (k, true, v)
            } else if let Some((k, v)) = term.split_once('=') {
                (k, true, v)
            } else {
                return Err(bad(format!(
                    "invalid selector: '{s}'; can't understand '{term}'"
                )));
            };
            let label = label.trim();
            if !kind.field_labels().contains(&label) {
                return Err(bad(unknown_field(kind, label)));
            }
            terms.push((label.to_string(), eq, unescape(value)));
        }
        Ok(FieldSelector {
            kind: Some(kind),
            terms,
        })
    }

    pub fn matches(&self, obj: &Value) -> bool {
        let Some(kind) = self.kind else { return true };
        self.terms.iter().all(|(label, eq, want)| {
            let v = kind.field_value(label, obj).unwrap_or_default();
            (v == *want) == *eq
        })
    }
}

/// The real server's words: kinds with their own field label conversion (Event, Namespace, Node)
/// say it one way, the metadata-only default another.
fn unknown_field(kind: Kind, label: &str) -> String {
    if kind.converts_field_labels() {
        format!("field label not supported: {label}")
    } else {
        format!("\"{label}\" is not a known field selector: only \"metadata.name\", \"metadata.namespace\"")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn label_selectors_as_kubectl_writes_them() {
        let obj = json!({"metadata": {"labels": {"app": "volfence", "tier": "node", "n": "5"}}});
        for (sel, want) in [
            ("", true),
            ("app=volfence", true),
            ("app==volfence", true),
            ("app!=volfence", false),
            ("app in (a, volfence)", true),
            ("app notin (volfence)", false),
            ("missing notin (x)", true),
            ("app", true),
            ("!app", false),
            ("!missing", true),
            ("app=volfence,tier=node", true),
            ("app=volfence,tier=other", false),
            ("n>4", true),
            ("n<5", false),
            ("volfence.io/holder=x", false),
        ] {
            let s = LabelSelector::parse(sel).unwrap_or_else(|e| panic!("{sel}: {}", e.message));
            assert_eq!(s.matches(&obj), want, "{sel}");
        }
        for bad in ["app in (a", "a b c", "=x", "app=bad value!", "-x=y", "n>x"] {
            let e = LabelSelector::parse(bad).unwrap_err();
            assert_eq!(e.code, 400, "{bad}");
        }
    }

    #[test]
    fn field_selectors_know_each_kinds_labels() {
        let ev = json!({"metadata": {"name": "e1", "namespace": "ns"}, "reason": "LeaseLost",
            "involvedObject": {"kind": "Lease", "name": "n1", "fieldPath": "spec"}, "source": {"component": "volfenced"}});
        for (sel, want) in [
            ("reason=LeaseLost", true),
            ("reason==LeaseLost", true),
            ("reason!=LeaseLost", false),
            ("involvedObject.kind=Lease,involvedObject.name=n1", true),
            ("involvedObject.fieldPath=spec", true),
            ("source=volfenced", true),
            ("metadata.namespace=other", false),
        ] {
            let s = FieldSelector::parse(Kind::Event, sel).unwrap();
            assert_eq!(s.matches(&ev), want, "{sel}");
        }
        let e = FieldSelector::parse(Kind::Lease, "spec.holderIdentity=x").unwrap_err();
        assert_eq!(
            e.message,
            "\"spec.holderIdentity\" is not a known field selector: only \"metadata.name\", \"metadata.namespace\""
        );
        let e = FieldSelector::parse(Kind::Event, "message=x").unwrap_err();
        assert_eq!(
            (e.code, e.message.as_str()),
            (400, "field label not supported: message")
        );
        assert!(FieldSelector::parse(Kind::Lease, "metadata.name").is_err());
        let s = FieldSelector::parse(Kind::Lease, r"metadata.name=a\,b").unwrap();
        assert!(s.matches(&json!({"metadata": {"name": "a,b"}})));
    }
}
