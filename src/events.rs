//! Kubernetes Events the agent records: on its Lease (fence transitions) and on the
//! PersistentVolumeClaim of a volume whose snapshot failed. Best effort for the caller; the
//! snapshot reporter is retried by the job manager until it is recorded.

use std::time::{SystemTime, UNIX_EPOCH};

use futures::future::BoxFuture;
use k8s_openapi::api::core::v1::{Event, PersistentVolumeClaim};
use kube::{Api, Client};
use serde_json::{json, Value};

use crate::snapshot::{FailureReport, FailureReporter};
use crate::time::rfc3339;

/// The API server refuses an Event note longer than this (bytes).
const NOTE_LIMIT: usize = 1024;
/// ... and a reportingInstance (or action, reason) longer than this (characters).
const FIELD_LIMIT: usize = 128;
/// Longest object name: a DNS subdomain.
const NAME_LIMIT: usize = 253;

/// `s` if it fits in `max` bytes; else a prefix of it and a hash of all of it, so two long
/// names that share a prefix stay apart. Stable across runs and versions (FNV-1a).
pub fn bounded(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let hash = s.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    let mut end = max - 17;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}-{hash:016x}", &s[..end])
}

/// What an Event says, apart from where it is recorded.
pub struct EventSpec<'a> {
    pub reason: &'a str,
    pub action: &'a str,
    pub message: &'a str,
    pub warning: bool,
}

/// A `core/v1` Event about `involved` (an ObjectReference), recorded in `namespace` by this
/// agent on `node`: what `kubectl describe` and `kubectl get events` show.
pub fn event_object(
    namespace: &str,
    involved: Value,
    spec: &EventSpec<'_>,
    node: &str,
    at: SystemTime,
) -> Value {
    let nanos = at.duration_since(UNIX_EPOCH).unwrap_or_default().as_nanos();
    // The name gets a '.' and up to 16 hex digits.
    let base = bounded(
        involved["name"].as_str().unwrap_or("volfence"),
        NAME_LIMIT - 17,
    );
    let mut message = spec.message;
    if message.len() > NOTE_LIMIT {
        let mut end = NOTE_LIMIT;
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        message = &message[..end];
    }
    let now = rfc3339(at, false);
    json!({
        "metadata": {"name": format!("{base}.{nanos:x}"), "namespace": namespace},
        "involvedObject": involved,
        "reason": spec.reason,
        "message": message,
        "type": if spec.warning { "Warning" } else { "Normal" },
        "source": {"component": "volfenced", "host": node},
        "reportingComponent": "volfence.io/volfenced",
        "reportingInstance": bounded(node, FIELD_LIMIT),
        "action": spec.action,
        "firstTimestamp": now,
        "lastTimestamp": now,
        "eventTime": rfc3339(at, true),
        "count": 1,
    })
}

/// Creates an Event; the error says what could not be recorded.
pub async fn record(client: &Client, event: Value) -> Result<(), String> {
    let ns = event["metadata"]["namespace"].as_str().unwrap_or_default();
    let api: Api<Event> = Api::namespaced(client.clone(), ns);
    let ev: Event = serde_json::from_value(event.clone()).map_err(|e| e.to_string())?;
    api.create(&crate::fence::kube::post_params(), &ev)
        .await
        .map(|_| ())
        .map_err(|e| format!("creating event in namespace {ns}: {e}"))
}

/// Reports failed snapshots as `Warning SnapshotFailed` Events on the volume's claim, read once
/// (a GET, for its uid: `kubectl describe pvc` matches events by uid) when a job fails.
pub struct KubeSnapshotEvents {
    client: Client,
    node: String,
}

impl KubeSnapshotEvents {
    pub fn new(client: Client, node: &str) -> KubeSnapshotEvents {
        KubeSnapshotEvents {
            client,
            node: node.to_string(),
        }
    }
}

impl FailureReporter for KubeSnapshotEvents {
    fn snapshot_failed(&self, r: FailureReport) -> BoxFuture<'static, Result<(), String>> {
        let (client, node) = (self.client.clone(), self.node.clone());
        Box::pin(async move {
            let pvcs: Api<PersistentVolumeClaim> =
                Api::namespaced(client.clone(), &r.claim.namespace);
            let Some(pvc) = pvcs
                .get_opt(&r.claim.name)
                .await
                .map_err(|e| format!("reading PersistentVolumeClaim {}: {e}", r.claim))?
            else {
                // Nothing to attach it to; the failure stays in the job, the journal and D-Bus.
                tracing::warn!(
                    REQUEST_ID = r.request_id.as_str(),
                    "PersistentVolumeClaim {} does not exist: no Event for the failed snapshot",
                    r.claim
                );
                return Ok(());
            };
            let involved = json!({
                "apiVersion": "v1",
                "kind": "PersistentVolumeClaim",
                "namespace": r.claim.namespace,
                "name": r.claim.name,
                "uid": pvc.metadata.uid,
                "resourceVersion": pvc.metadata.resource_version,
            });
            let message = format!(
                "snapshot {} of LV {} on {node} failed: {}",
                r.request_id, r.origin, r.message
            );
            let spec = EventSpec {
                reason: "SnapshotFailed",
                action: "Snapshot",
                message: &message,
                warning: true,
            };
            let ev = event_object(
                &r.claim.namespace,
                involved,
                &spec,
                &node,
                SystemTime::now(),
            );
            record(&client, ev).await
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_names_its_object_and_fits_the_note_limit() {
        let long = "é".repeat(700); // 1,400 bytes: cut on a character boundary
        let spec = EventSpec {
            reason: "SnapshotFailed",
            action: "Snapshot",
            message: &long,
            warning: true,
        };
        let at = UNIX_EPOCH + std::time::Duration::from_secs(1_795_000_000);
        let ev = event_object(
            "vms",
            json!({"kind": "PersistentVolumeClaim", "name": "disk-a", "namespace": "vms"}),
            &spec,
            "node-1",
            at,
        );
        assert_eq!(ev["metadata"]["namespace"], "vms");
        assert!(ev["metadata"]["name"]
            .as_str()
            .unwrap()
            .starts_with("disk-a."));
        assert_eq!(ev["type"], "Warning");
        assert_eq!(ev["reportingInstance"], "node-1");
        let msg = ev["message"].as_str().unwrap();
        assert!(msg.len() <= NOTE_LIMIT && msg.len() >= NOTE_LIMIT - 1);
        assert!(msg.chars().all(|c| c == 'é'));
        // It deserializes as the client's Event type (what `record` sends).
        let typed: Event = serde_json::from_value(ev).unwrap();
        assert_eq!(typed.involved_object.name.as_deref(), Some("disk-a"));
        assert!(typed.event_time.is_some());
    }

    #[test]
    fn long_node_and_object_names_fit_what_the_server_accepts() {
        let spec = EventSpec {
            reason: "LeaseConflict",
            action: "LeaseConflict",
            message: "m",
            warning: true,
        };
        let node = format!("{}.example.com", "n".repeat(200)); // a valid 212-character node name
        let at = UNIX_EPOCH + std::time::Duration::from_secs(1_795_000_000);
        let lease = "l".repeat(253);
        let ev = event_object(
            "kube-node-lease",
            json!({"kind": "Lease", "name": lease, "namespace": "kube-node-lease"}),
            &spec,
            &node,
            at,
        );
        let inst = ev["reportingInstance"].as_str().unwrap();
        assert_eq!(inst.len(), FIELD_LIMIT);
        assert!(inst.starts_with("nnnn"));
        assert!(ev["metadata"]["name"].as_str().unwrap().len() <= NAME_LIMIT);
        // The host field keeps the full name: it has no limit.
        assert_eq!(ev["source"]["host"], node.as_str());
        // Two nodes that share a 111-character prefix still get different instances.
        let other = format!("{}.example.org", "n".repeat(200));
        assert_ne!(bounded(&node, FIELD_LIMIT), bounded(&other, FIELD_LIMIT));
        assert_eq!(bounded("node-1", FIELD_LIMIT), "node-1");
    }
}
