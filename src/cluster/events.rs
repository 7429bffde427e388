//! Kubernetes Events, through kube-runtime's `Recorder` (`events.k8s.io/v1`, which `kubectl
//! describe` and `kubectl get events` show through the core API): on the node's Lease (fence
//! transitions) and on the PersistentVolumeClaim of a volume whose snapshot failed. Best effort
//! for the fence; the snapshot reporter is retried by the job manager until it is recorded.

use futures::future::BoxFuture;
use k8s_openapi::api::core::v1::{ObjectReference, PersistentVolumeClaim};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{Api, Client};

use super::error::StatusError;
use crate::names::bounded;
use crate::snapshot::{FailureReport, FailureReporter};

/// The API server refuses an Event note longer than this (bytes).
const NOTE_LIMIT: usize = 1024;
/// ... and a reportingInstance (or action, reason) longer than this (characters).
const FIELD_LIMIT: usize = 128;
/// `reportingController` of every Event (a qualified name, as the server requires).
pub const CONTROLLER: &str = "volfence.io/volfenced";

/// `message` cut on a character boundary to what the server accepts as a note.
fn note(message: &str) -> String {
    let mut end = message.len().min(NOTE_LIMIT);
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    message[..end].to_string()
}

/// Who records: this agent, on this node (bounded to what the server accepts).
pub fn reporter(node: &str) -> Reporter {
    Reporter {
        controller: CONTROLLER.into(),
        instance: Some(bounded(node, FIELD_LIMIT)),
    }
}

/// What an Event says, apart from where it is recorded.
pub struct EventSpec<'a> {
    pub reason: &'a str,
    pub action: &'a str,
    pub message: &'a str,
    pub warning: bool,
}

impl EventSpec<'_> {
    fn event(&self) -> Event {
        Event {
            type_: if self.warning {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: self.reason.into(),
            note: Some(note(self.message)),
            action: self.action.into(),
            secondary: None,
        }
    }
}

/// This agent's Recorder. A repeat of the same reason and action on the same object becomes
/// the first Event's series (one object, a count), as Kubernetes' own components record.
#[derive(Clone)]
pub struct Events {
    recorder: Recorder,
    client: Client,
    node: String,
}

impl Events {
    pub fn new(client: Client, node: &str) -> Events {
        Events {
            recorder: Recorder::new(client.clone(), reporter(node)),
            client,
            node: node.to_string(),
        }
    }

    /// An Event on the Lease `namespace/name` (a host lease or a claim), logged if it fails.
    pub async fn on_lease(&self, namespace: &str, name: &str, spec: &EventSpec<'_>) {
        let regarding = ObjectReference {
            api_version: Some("coordination.k8s.io/v1".into()),
            kind: Some("Lease".into()),
            name: Some(name.into()),
            namespace: Some(namespace.into()),
            ..ObjectReference::default()
        };
        if let Err(e) = self.publish(&regarding, spec).await {
            tracing::warn!(
                "cannot record event {} on lease {namespace}/{name}: {e}",
                spec.reason
            );
        }
    }

    pub async fn publish(
        &self,
        regarding: &ObjectReference,
        spec: &EventSpec<'_>,
    ) -> Result<(), StatusError> {
        self.recorder
            .publish(&spec.event(), regarding)
            .await
            .map_err(|e| StatusError::from_kube(&e))
    }
}

/// Reports failed snapshots as `Warning SnapshotFailed` Events on the volume's claim, read once
/// (a GET, for its uid: `kubectl describe pvc` matches events by uid) when a job fails.
pub struct KubeSnapshotEvents {
    events: Events,
}

impl KubeSnapshotEvents {
    pub fn new(events: Events) -> KubeSnapshotEvents {
        KubeSnapshotEvents { events }
    }
}

impl FailureReporter for KubeSnapshotEvents {
    fn snapshot_failed(&self, r: FailureReport) -> BoxFuture<'static, Result<(), String>> {
        let (client, node) = (self.events.client.clone(), self.events.node.clone());
        Box::pin(async move {
            let pvcs: Api<PersistentVolumeClaim> =
                Api::namespaced(client.clone(), &r.claim.namespace);
            let pvc = pvcs.get_opt(&r.claim.name).await.map_err(|e| {
                format!(
                    "reading PersistentVolumeClaim {}: {}",
                    r.claim,
                    StatusError::from_kube(&e)
                )
            })?;
            let Some(pvc) = pvc else {
                // Nothing to attach it to; the failure stays in the job, the journal and D-Bus.
                tracing::warn!(
                    REQUEST_ID = r.request_id.as_str(),
                    "PersistentVolumeClaim {} does not exist: no Event for the failed snapshot",
                    r.claim
                );
                return Ok(());
            };
            let regarding = ObjectReference {
                api_version: Some("v1".into()),
                kind: Some("PersistentVolumeClaim".into()),
                namespace: Some(r.claim.namespace.clone()),
                name: Some(r.claim.name.clone()),
                uid: pvc.metadata.uid,
                resource_version: pvc.metadata.resource_version,
                ..ObjectReference::default()
            };
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
            // Each failed job is its own Event: in the shared Recorder's series a second job's
            // failure would only raise the first one's count, and its note would be lost.
            Recorder::new(client, reporter(&node))
                .publish(&spec.event(), &regarding)
                .await
                .map_err(|e| {
                    format!(
                        "recording the event on PersistentVolumeClaim {}: {}",
                        r.claim,
                        StatusError::from_kube(&e)
                    )
                })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notes_fit_the_limit_on_a_character_boundary() {
        let long = "é".repeat(700); // 1,400 bytes: cut on a character boundary
        let spec = EventSpec {
            reason: "SnapshotFailed",
            action: "Snapshot",
            message: &long,
            warning: true,
        };
        let ev = spec.event();
        assert_eq!(ev.type_, EventType::Warning);
        let n = ev.note.unwrap();
        assert!(n.len() <= NOTE_LIMIT && n.len() >= NOTE_LIMIT - 1);
        assert!(n.chars().all(|c| c == 'é'));
        assert_eq!(note("short"), "short");
    }

    #[test]
    fn long_node_names_fit_what_the_server_accepts() {
        let node = format!("{}.example.com", "n".repeat(200)); // a valid 212-character node name
        let r = reporter(&node);
        assert_eq!(r.controller, CONTROLLER);
        let inst = r.instance.unwrap();
        assert_eq!(inst.len(), FIELD_LIMIT);
        assert!(inst.starts_with("nnnn"));
        // Two nodes that share a 111-character prefix still get different instances.
        let other = format!("{}.example.org", "n".repeat(200));
        assert_ne!(bounded(&node, FIELD_LIMIT), bounded(&other, FIELD_LIMIT));
        assert_eq!(reporter("node-1").instance.as_deref(), Some("node-1"));
    }
}
