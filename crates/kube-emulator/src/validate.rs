//! What the real server checks on a write, with its words: object names, Lease specs and their
//! MicroTimes, core/v1 Events (legacyValidateEvent: the rules that apply to the core API), and
//! the resourceVersion an update carries.

use serde_json::Value;

use super::kinds::Kind;
use super::status::{ApiFail, Cause};

/// DNS-1123 subdomain: what most object names must be.
pub fn dns1123_subdomain(s: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if s.len() > 253 {
        errs.push("must be no more than 253 characters".to_string());
    }
    let ok = !s.is_empty()
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        });
    if !ok {
        errs.push("a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')".to_string());
    }
    errs
}

/// DNS-1123 label: what a Namespace's name must be.
pub fn dns1123_label(s: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if s.len() > 63 {
        errs.push("must be no more than 63 characters".to_string());
    }
    let ok = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !s.starts_with('-')
        && !s.ends_with('-');
    if !ok {
        errs.push("a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')".to_string());
    }
    errs
}

/// validation.IsQualifiedName: `[prefix/]name`, as for an Event's reportingController.
pub fn qualified_name(s: &str) -> Vec<String> {
    const FMT: &str = "must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')";
    let parts: Vec<&str> = s.split('/').collect();
    let name = match parts.as_slice() {
        [n] => *n,
        [p, n] => {
            if p.is_empty() {
                return vec![format!("prefix part must be non-empty")];
            }
            let mut errs: Vec<String> = dns1123_subdomain(p)
                .into_iter()
                .map(|e| format!("prefix part {e}"))
                .collect();
            errs.extend(qualified_name(n));
            return errs;
        }
        _ => return vec![format!("a qualified name {FMT}")],
    };
    let mut errs = Vec::new();
    if name.is_empty() {
        errs.push("name part must be non-empty".to_string());
    } else if name.len() > 63 {
        errs.push("name part must be no more than 63 characters".to_string());
    }
    let ok = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric());
    if !ok {
        errs.push(format!("name part {FMT}"));
    }
    errs
}

/// The name rule for a kind's objects.
pub fn name_errors(kind: Kind, name: &str) -> Vec<Cause> {
    let errs = match kind {
        Kind::Namespace => dns1123_label(name),
        _ => dns1123_subdomain(name),
    };
    errs.into_iter()
        .map(|e| Cause::invalid("metadata.name", &Value::String(name.into()), &e))
        .collect()
}

/// The layout `metav1.MicroTime` is decoded with: exactly six fractional digits.
const MICRO_LAYOUT: &str = "2006-01-02T15:04:05.000000Z07:00";

/// Does `s` decode as a MicroTime (RFC 3339, six fractional digits, `Z` or an offset)?
pub fn is_micro_time(s: &str) -> bool {
    let b = s.as_bytes();
    let digits =
        |r: std::ops::Range<usize>| b.get(r).is_some_and(|d| d.iter().all(u8::is_ascii_digit));
    let head = b.len() >= 27
        && digits(0..4)
        && b[4] == b'-'
        && digits(5..7)
        && b[7] == b'-'
        && digits(8..10)
        && b[10] == b'T'
        && digits(11..13)
        && b[13] == b':'
        && digits(14..16)
        && b[16] == b':'
        && digits(17..19)
        && b[19] == b'.'
        && digits(20..26);
    head && {
        let zone = &s[26..];
        zone == "Z"
            || (zone.len() == 6
                && (zone.starts_with('+') || zone.starts_with('-'))
                && digits(27..29)
                && b[29] == b':'
                && digits(30..32))
    }
}

/// A body that does not decode as the kind: 400, as the server's decoder answers.
fn undecodable(kind: Kind, detail: String) -> ApiFail {
    ApiFail::new(
        400,
        "BadRequest",
        format!(
            "{k} in version \"v1\" cannot be handled as a {k}: {detail}",
            k = kind.kind()
        ),
    )
}

/// The decoder's part of a Lease: MicroTime fields and integer fields.
pub fn decode_lease(obj: &Value) -> Result<(), ApiFail> {
    let spec = &obj["spec"];
    for f in ["acquireTime", "renewTime"] {
        match &spec[f] {
            Value::Null => {}
            Value::String(s) if is_micro_time(s) => {}
            Value::String(s) => {
                return Err(undecodable(
                    Kind::Lease,
                    format!("parsing time \"{s}\" as \"{MICRO_LAYOUT}\": cannot parse \"{s}\" as a MicroTime"),
                ))
            }
            other => {
                return Err(undecodable(
                    Kind::Lease,
                    format!("spec.{f}: expected a string, got {other}"),
                ))
            }
        }
    }
    for f in ["leaseDurationSeconds", "leaseTransitions"] {
        match &spec[f] {
            Value::Null => {}
            Value::Number(n) if n.as_i64().is_some_and(|v| i32::try_from(v).is_ok()) => {}
            other => {
                return Err(undecodable(
                    Kind::Lease,
                    format!("spec.{f}: expected an int32, got {other}"),
                ))
            }
        }
    }
    Ok(())
}

/// ValidateLeaseSpec.
pub fn lease(obj: &Value) -> Vec<Cause> {
    let mut causes = Vec::new();
    let spec = &obj["spec"];
    if let Some(d) = spec["leaseDurationSeconds"].as_i64() {
        if d <= 0 {
            causes.push(Cause::invalid(
                "spec.leaseDurationSeconds",
                &spec["leaseDurationSeconds"],
                "must be greater than 0",
            ));
        }
    }
    if let Some(t) = spec["leaseTransitions"].as_i64() {
        if t < 0 {
            causes.push(Cause::invalid(
                "spec.leaseTransitions",
                &spec["leaseTransitions"],
                "must be greater than or equal to 0",
            ));
        }
    }
    causes
}

/// legacyValidateEvent, which is all the core/v1 API applies (ValidateEventCreate returns after
/// it for that version): with an eventTime, the reporting fields are required and bounded; without
/// one, only the namespaces must agree. `type` is never restricted here.
pub fn event(obj: &Value, namespace: &str) -> Vec<Cause> {
    let s = |v: &Value| v.as_str().unwrap_or_default().to_string();
    let mut c = Vec::new();
    let involved_ns = s(&obj["involvedObject"]["namespace"]);
    let mismatch = || {
        Cause::invalid(
            "involvedObject.namespace",
            &Value::String(involved_ns.clone()),
            "does not match event.namespace",
        )
    };
    if s(&obj["eventTime"]).is_empty() {
        if involved_ns.is_empty() {
            if !namespace.is_empty() && namespace != "default" {
                c.push(mismatch());
            }
        } else if namespace != involved_ns {
            c.push(mismatch());
        }
    } else {
        if involved_ns.is_empty() && namespace != "default" && namespace != "kube-system" {
            c.push(mismatch());
        }
        // The core API's name for reportingController.
        let controller = s(&obj["reportingComponent"]);
        if controller.is_empty() {
            c.push(Cause::required("reportingComponent"));
        }
        for e in qualified_name(&controller) {
            c.push(Cause::invalid(
                "reportingComponent",
                &Value::String(controller.clone()),
                &e,
            ));
        }
        for (field, limit) in [("reportingInstance", 128), ("action", 128), ("reason", 128)] {
            let v = s(&obj[field]);
            if v.is_empty() {
                c.push(Cause::required(field));
            }
            // Bytes, as Go's len(), whatever the message says.
            if v.len() > limit {
                c.push(Cause::invalid(
                    field,
                    &Value::String(String::new()),
                    &format!("can have at most {limit} characters"),
                ));
            }
        }
        if s(&obj["message"]).len() > 1024 {
            c.push(Cause::invalid(
                "message",
                &Value::String(String::new()),
                "can have at most 1024 characters",
            ));
        }
    }
    for e in dns1123_subdomain(namespace) {
        c.push(Cause::invalid(
            "namespace",
            &Value::String(namespace.into()),
            &e,
        ));
    }
    c
}

/// The resourceVersion an update carries, checked before the object is looked at. The 422
/// names the resource, not the kind (rest.BeforeUpdate words it so); a value that is not a
/// number is the storage layer's 500, without a reason.
pub fn update_resource_version(
    kind: Kind,
    name: &str,
    body: &Value,
) -> Result<Option<u64>, ApiFail> {
    let missing = || {
        let mut f = ApiFail::invalid(
            kind,
            name,
            vec![Cause {
                field: "metadata.resourceVersion".into(),
                reason: "FieldValueInvalid",
                message:
                    "metadata.resourceVersion: Invalid value: 0x0: must be specified for an update"
                        .into(),
            }],
        );
        f.message = format!(
            "{} \"{name}\" is invalid: metadata.resourceVersion: Invalid value: 0x0: must be specified for an update",
            kind.qualified()
        );
        if let Some(d) = f.details.as_mut() {
            d["kind"] = Value::String(kind.plural().into());
        }
        f
    };
    match &body["metadata"]["resourceVersion"] {
        Value::Null => Err(missing()),
        Value::String(s) if s.is_empty() => Err(missing()),
        Value::String(s) => s.parse::<u64>().map(Some).map_err(|_| {
            ApiFail::new(
                500,
                "",
                format!("resourceVersion: Invalid value: \"{s}\": strconv.ParseUint: parsing \"{s}\": invalid syntax"),
            )
        }),
        other => Err(undecodable(
            kind,
            format!("metadata.resourceVersion: expected a string, got {other}"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn micro_times_need_six_fractional_digits() {
        assert!(is_micro_time("2026-12-02T10:00:00.123456Z"));
        assert!(is_micro_time("2026-12-02T10:00:00.000000+01:00"));
        for bad in [
            "2026-12-02T10:00:00Z",
            "2026-12-02T10:00:00.123Z",
            "2026-12-02T10:00:00.1234567Z",
            "yesterday",
        ] {
            assert!(!is_micro_time(bad), "{bad}");
        }
    }

    #[test]
    fn events_follow_the_legacy_rules_of_the_core_api() {
        let ok = json!({"involvedObject": {"namespace": "ns"}, "eventTime": "2026-12-02T10:00:00.000000Z",
            "reportingComponent": "volfence.io/volfenced", "reportingInstance": "n1", "action": "A", "reason": "R"});
        assert!(event(&ok, "ns").is_empty());
        // Without eventTime: nothing reporting-related is required, and type is free.
        assert!(event(
            &json!({"involvedObject": {"namespace": "ns"}, "type": "Odd"}),
            "ns"
        )
        .is_empty());
        // A cluster-scoped object's Event lives in default.
        assert!(event(&json!({"involvedObject": {}}), "default").is_empty());
        assert_eq!(
            event(&json!({"involvedObject": {"namespace": "a"}}), "b").len(),
            1
        );
        let strict = json!({"involvedObject": {"namespace": "ns"}, "eventTime": "2026-12-02T10:00:00.000000Z",
            "reportingComponent": "", "reportingInstance": "x".repeat(129), "reason": "R"});
        let msgs: Vec<String> = event(&strict, "ns")
            .into_iter()
            .map(|c| c.message)
            .collect();
        assert!(
            msgs.contains(&"reportingComponent: Required value".to_string()),
            "{msgs:?}"
        );
        assert!(
            msgs.contains(
                &"reportingInstance: Invalid value: \"\": can have at most 128 characters"
                    .to_string()
            ),
            "{msgs:?}"
        );
        assert!(
            msgs.contains(&"action: Required value".to_string()),
            "{msgs:?}"
        );
    }

    #[test]
    fn lease_specs_and_update_versions() {
        let bad = json!({"spec": {"leaseDurationSeconds": 0, "leaseTransitions": -1}});
        let msgs: Vec<String> = lease(&bad).into_iter().map(|c| c.message).collect();
        assert_eq!(
            msgs,
            [
                "spec.leaseDurationSeconds: Invalid value: 0: must be greater than 0",
                "spec.leaseTransitions: Invalid value: -1: must be greater than or equal to 0"
            ]
        );
        assert_eq!(
            update_resource_version(Kind::Lease, "n", &json!({}))
                .unwrap_err()
                .code,
            422
        );
        assert_eq!(
            update_resource_version(
                Kind::Lease,
                "n",
                &json!({"metadata": {"resourceVersion": "x"}})
            )
            .unwrap_err()
            .code,
            500
        );
        assert_eq!(
            update_resource_version(
                Kind::Lease,
                "n",
                &json!({"metadata": {"resourceVersion": "7"}})
            )
            .unwrap(),
            Some(7)
        );
        assert!(qualified_name("volfence.io/volfenced").is_empty());
        assert_eq!(qualified_name("").len(), 2);
    }
}
