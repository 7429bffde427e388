//! `events.k8s.io/v1`: the same storage as core/v1 Events, as the real server keeps it, converted
//! both ways by the rules of pkg/apis/events/v1/conversion.go (`regarding` is `involvedObject`,
//! `note` is `message`, `reportingController` is `reportingComponent`, the `deprecated*` fields
//! are the core ones). What is written through this group also meets the strict checks of
//! ValidateEventCreate / ValidateEventUpdate that the core API skips for compatibility.

use serde_json::{json, Map, Value};

use super::kinds::Kind;
use super::status::{ApiFail, Cause};

pub const GROUP: &str = "events.k8s.io";
pub const API_VERSION: &str = "events.k8s.io/v1";

/// (events.k8s.io/v1 name, core/v1 name) of the fields whose names differ.
const RENAMED: [(&str, &str); 7] = [
    ("regarding", "involvedObject"),
    ("note", "message"),
    ("reportingController", "reportingComponent"),
    ("deprecatedSource", "source"),
    ("deprecatedFirstTimestamp", "firstTimestamp"),
    ("deprecatedLastTimestamp", "lastTimestamp"),
    ("deprecatedCount", "count"),
];

fn rename(obj: &Value, from_v1: bool) -> Map<String, Value> {
    let mut out = Map::new();
    for (k, v) in obj.as_object().into_iter().flatten() {
        let name = RENAMED
            .iter()
            .find(|(v1, core)| if from_v1 { v1 == k } else { core == k })
            .map_or(k.as_str(), |(v1, core)| if from_v1 { core } else { v1 });
        out.insert(name.to_string(), v.clone());
    }
    out
}

/// A core/v1 Event as `events.k8s.io/v1` serves it.
pub fn from_core(core: &Value) -> Value {
    let mut v = rename(core, false);
    v.insert("apiVersion".into(), json!(API_VERSION));
    v.insert("kind".into(), json!("Event"));
    // Go serializes these non-pointer fields even when empty.
    for (k, empty) in [
        ("regarding", json!({})),
        ("deprecatedSource", json!({})),
        ("deprecatedFirstTimestamp", Value::Null),
        ("deprecatedLastTimestamp", Value::Null),
    ] {
        v.entry(k).or_insert(empty);
    }
    if v.get("deprecatedCount") == Some(&json!(0)) {
        v.remove("deprecatedCount");
    }
    Value::Object(v)
}

/// An `events.k8s.io/v1` Event as core/v1 stores it.
pub fn to_core(v1: &Value) -> Value {
    let mut c = rename(v1, true);
    c.insert("apiVersion".into(), json!(Kind::Event.api_version()));
    c.insert("kind".into(), json!("Event"));
    for (k, empty) in [("involvedObject", json!({})), ("source", json!({}))] {
        if c.get(k).is_none_or(Value::is_null) {
            c.insert(k.into(), empty);
        }
    }
    for k in ["firstTimestamp", "lastTimestamp"] {
        if c.get(k) == Some(&Value::Null) {
            c.remove(k);
        }
    }
    Value::Object(c)
}

fn set(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::String(s) => !s.is_empty(),
        Value::Number(n) => n.as_i64() != Some(0),
        Value::Object(m) => m.values().any(set),
        _ => true,
    }
}

/// validateV1EventSeries, on the core form.
fn series(core: &Value) -> Vec<Cause> {
    let s = &core["series"];
    let mut c = Vec::new();
    if s.is_null() {
        return c;
    }
    if s["count"].as_i64().unwrap_or(0) < 2 {
        c.push(Cause::invalid(
            "series.count",
            &json!(""),
            "should be at least 2",
        ));
    }
    if !set(&s["lastObservedTime"]) {
        c.push(Cause::required("series.lastObservedTime"));
    }
    c
}

/// The checks ValidateEventCreate adds for this group (the legacy ones run at admission for
/// every version).
pub fn create_causes(core: &Value) -> Vec<Cause> {
    let mut c = series(core);
    if !set(&core["eventTime"]) {
        c.push(Cause::required("eventTime"));
    }
    let ty = core["type"].as_str().unwrap_or_default();
    if ty != "Normal" && ty != "Warning" {
        c.push(Cause::invalid(
            "type",
            &json!(""),
            &format!("has invalid value: {ty}"),
        ));
    }
    for (core_name, v1_name) in [
        ("firstTimestamp", "deprecatedFirstTimestamp"),
        ("lastTimestamp", "deprecatedLastTimestamp"),
        ("count", "deprecatedCount"),
        ("source", "deprecatedSource"),
    ] {
        if set(&core[core_name]) {
            c.push(Cause::invalid(v1_name, &json!(""), "needs to be unset"));
        }
    }
    c
}

/// The checks ValidateEventUpdate adds for this group: only the series (and the metadata the
/// store keeps) may change.
pub fn update_causes(old: &Value, new: &Value) -> Vec<Cause> {
    let mut c = series(new);
    for f in [
        "involvedObject",
        "reason",
        "message",
        "source",
        "firstTimestamp",
        "lastTimestamp",
        "count",
        "type",
        "eventTime",
        "action",
        "related",
        "reportingComponent",
        "reportingInstance",
    ] {
        let norm = |v: &Value| if set(v) { v.clone() } else { Value::Null };
        if norm(&old[f]) != norm(&new[f]) {
            c.push(Cause {
                field: f.into(),
                reason: "FieldValueInvalid",
                message: format!("{f}: Invalid value: {}: field is immutable", new[f]),
            });
        }
    }
    c
}

/// A failure as the real server words it for this group: `events.events.k8s.io "x" not found`,
/// `Event.events.k8s.io "x" is invalid`.
pub fn qualify(mut f: ApiFail) -> ApiFail {
    for (plain, qualified) in [
        ("events \"", "events.events.k8s.io \""),
        ("Event \"", "Event.events.k8s.io \""),
        ("on events \"", "on events.events.k8s.io \""),
    ] {
        if f.message.starts_with(plain) || f.message.contains(&format!(" {plain}")) {
            f.message = f.message.replacen(plain, qualified, 1);
            break;
        }
    }
    if let Some(Value::Object(d)) = f.details.as_mut() {
        if d.contains_key("kind") {
            d.insert("group".into(), json!(GROUP));
        }
    }
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What kube-runtime's Recorder sends, stored as the core API shows it and read back.
    #[test]
    fn converts_both_ways_as_the_real_server() {
        let v1 = json!({
            "metadata": {"name": "n1.1", "namespace": "ns"},
            "eventTime": "2026-12-03T10:00:00.000000Z",
            "regarding": {"kind": "Lease", "name": "n1", "namespace": "ns"},
            "note": "held by n2",
            "reason": "LeaseConflict",
            "action": "Acquire",
            "type": "Warning",
            "reportingController": "volfence.io/volfenced",
            "reportingInstance": "n1",
        });
        let core = to_core(&v1);
        assert_eq!(core["involvedObject"]["name"], "n1");
        assert_eq!(core["message"], "held by n2");
        assert_eq!(core["reportingComponent"], "volfence.io/volfenced");
        assert_eq!(core["source"], json!({}));
        assert!(core.get("note").is_none() && core.get("regarding").is_none());
        assert!(create_causes(&core).is_empty());
        let back = from_core(&core);
        assert_eq!(back["apiVersion"], API_VERSION);
        for k in [
            "regarding",
            "note",
            "reportingController",
            "eventTime",
            "action",
        ] {
            assert_eq!(back[k], v1[k], "{k}");
        }
        assert_eq!(back["deprecatedSource"], json!({}));
        assert!(back["deprecatedFirstTimestamp"].is_null());
    }

    #[test]
    fn strict_checks_name_the_fields_of_this_group() {
        let core = to_core(&json!({
            "metadata": {"name": "x"},
            "type": "Bad",
            "deprecatedCount": 3,
            "deprecatedSource": {"component": "c"},
            "series": {"count": 1},
        }));
        let msgs: Vec<String> = create_causes(&core)
            .into_iter()
            .map(|c| c.message)
            .collect();
        for want in [
            "series.count: Invalid value: \"\": should be at least 2",
            "series.lastObservedTime: Required value",
            "eventTime: Required value",
            "type: Invalid value: \"\": has invalid value: Bad",
            "deprecatedCount: Invalid value: \"\": needs to be unset",
            "deprecatedSource: Invalid value: \"\": needs to be unset",
        ] {
            assert!(msgs.iter().any(|m| m == want), "{want} in {msgs:?}");
        }
        let old = to_core(&json!({"note": "a", "reason": "R"}));
        let mut new = old.clone();
        new["message"] = json!("b");
        new["series"] = json!({"count": 2, "lastObservedTime": "2026-12-03T10:00:01.000000Z"});
        let msgs: Vec<String> = update_causes(&old, &new)
            .into_iter()
            .map(|c| c.message)
            .collect();
        assert_eq!(msgs, ["message: Invalid value: \"b\": field is immutable"]);
    }
}
