//! [`ClaimStore`] on `coordination.k8s.io/v1` Leases in the claims namespace, one per volume:
//! holderIdentity `<node>/<boot_id>`, leaseTransitions the claim's generation, acquireTime, the
//! volume id, the holder's epoch, the releasing mark and a migration's second holder in
//! annotations, the holders' nodes in labels (each agent lists only its own). No leaseDurationSeconds: a claim does not expire by
//! itself; its holder's host lease does. Reads are GETs (consistent), never a cache.

use std::collections::BTreeMap;

use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::{DeleteParams, ListParams, Preconditions};
use kube::runtime::{watcher, WatchStreamExt};
use kube::Api;
use serde_json::json;

use super::client::post_params;
use super::error::StatusError;
use super::events::{EventSpec, Events};
use crate::claims::record::{
    self, node_label, object_name, Claim, Stored, CLAIM_LABEL, EPOCH_ANNOTATION,
    MIGRATION_DEADLINE_ANNOTATION, MIGRATION_EPOCH_ANNOTATION, MIGRATION_HOLDER_ANNOTATION,
    MIGRATION_NODE_LABEL, NODE_LABEL, RELEASING_ANNOTATION, VOLUME_ANNOTATION,
};
use crate::claims::{ClaimError, ClaimStore};
use crate::fence::ApiError;

/// The claims namespace as this node reads and writes it.
#[derive(Clone)]
pub struct KubeClaims {
    api: Api<Lease>,
    events: Events,
    namespace: String,
    node: String,
}

impl KubeClaims {
    pub fn new(cluster: &super::Cluster, namespace: &str, node: &str) -> KubeClaims {
        KubeClaims {
            api: Api::namespaced(cluster.client().clone(), namespace),
            events: cluster.events().clone(),
            namespace: namespace.to_string(),
            node: node.to_string(),
        }
    }

    /// The claims a label selector lists, checked; one this agent cannot read is logged and
    /// left alone.
    async fn select(
        &self,
        selector: &str,
        keep: impl Fn(&Claim) -> bool + Send,
    ) -> Result<Vec<Claim>, ClaimError> {
        let list = self
            .api
            .list(&ListParams::default().labels(selector))
            .await
            .map_err(|e| ClaimError::Api {
                volume: "*".into(),
                source: api_error(&e),
            })?;
        let mut out = Vec::new();
        for l in list.items {
            match claim_of(&l, None) {
                Ok(c) if keep(&c) => out.push(c),
                Ok(_) => {}
                Err(e) => tracing::warn!("skipping a claim this agent cannot read: {e}"),
            }
        }
        Ok(out)
    }

    fn lease(&self, c: &Claim) -> Result<Lease, ApiError> {
        let mut annotations = BTreeMap::from([
            (VOLUME_ANNOTATION.to_string(), c.volume_id.clone()),
            (EPOCH_ANNOTATION.to_string(), c.epoch.to_string()),
        ]);
        if c.releasing {
            annotations.insert(RELEASING_ANNOTATION.into(), "true".into());
        }
        if let Some(m) = &c.migration {
            annotations.insert(MIGRATION_HOLDER_ANNOTATION.into(), m.holder.clone());
            annotations.insert(MIGRATION_EPOCH_ANNOTATION.into(), m.epoch.to_string());
            annotations.insert(MIGRATION_DEADLINE_ANNOTATION.into(), m.deadline.clone());
        }
        let mut meta = json!({
            "name": c.name,
            "namespace": self.namespace,
            "labels": {
                CLAIM_LABEL: "true",
                NODE_LABEL: node_label(c.node()),
                "app.kubernetes.io/managed-by": "volfence",
            },
            "annotations": annotations,
        });
        if let Some(m) = &c.migration {
            meta["labels"][MIGRATION_NODE_LABEL] = json!(node_label(m.node()));
        }
        if !c.version.is_empty() {
            meta["resourceVersion"] = json!(c.version);
        }
        serde_json::from_value(json!({
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": meta,
            "spec": {
                "holderIdentity": c.holder,
                "leaseTransitions": c.generation,
                "acquireTime": c.acquired,
            },
        }))
        .map_err(|e| ApiError::Unavailable(format!("building claim {}: {e}", c.name)))
    }
}

impl KubeClaims {
    /// Watches this node's claims (held, or shared as a migration's destination; two label
    /// selectors, nothing about other hosts) and tells `seen` each one's state: `Some` while
    /// this node holds part of it, `None` once it does not. For the bus only: decisions read
    /// the server. Runs for the agent's life.
    pub fn watch_mine(
        &self,
        seen: impl Fn(&str, Option<Claim>) + Send + 'static,
    ) -> impl std::future::Future<Output = String> + Send + 'static {
        let label = node_label(&self.node);
        let held = format!("{CLAIM_LABEL}=true,{NODE_LABEL}={label}");
        let shared = format!("{CLAIM_LABEL}=true,{MIGRATION_NODE_LABEL}={label}");
        let stream = |sel: String| {
            watcher(self.api.clone(), watcher::Config::default().labels(&sel)).default_backoff()
        };
        let both = futures::stream::select(stream(held), stream(shared));
        let node = self.node.clone();
        async move {
            let mut both = std::pin::pin!(both);
            let mut last_error = None;
            while let Some(ev) = both.next().await {
                match ev {
                    Ok(watcher::Event::Apply(l) | watcher::Event::InitApply(l)) => {
                        match claim_of(&l, None) {
                            Ok(c) => {
                                let id = c.volume_id.clone();
                                let mine = c.held_by(&node);
                                seen(&id, mine.then_some(c));
                            }
                            Err(e) => tracing::debug!("claims watch: {e}"),
                        }
                    }
                    Ok(watcher::Event::Delete(l)) => {
                        let ann = l.metadata.annotations.unwrap_or_default();
                        if let Some(id) = ann.get(VOLUME_ANNOTATION) {
                            seen(id, None);
                        }
                    }
                    Ok(_) => last_error = None,
                    Err(e) => {
                        let why = e.to_string();
                        if last_error.as_ref() != Some(&why) {
                            tracing::warn!("claims watch: {why}");
                            last_error = Some(why);
                        }
                    }
                }
            }
            "the claims watch ended".to_string()
        }
    }
}

fn claim_of(l: &Lease, wanted: Option<&str>) -> Result<Claim, record::RecordError> {
    let spec = l.spec.clone().unwrap_or_default();
    let ann = l.metadata.annotations.clone().unwrap_or_default();
    let acquired = spec
        .acquire_time
        .and_then(|t| serde_json::to_value(t).ok())
        .and_then(|v| v.as_str().map(str::to_string));
    record::parse(
        Stored {
            name: l.metadata.name.as_deref().unwrap_or_default(),
            version: l.metadata.resource_version.as_deref().unwrap_or_default(),
            holder: spec.holder_identity.as_deref(),
            generation: spec.lease_transitions,
            acquired,
            volume_id: ann.get(VOLUME_ANNOTATION).map(String::as_str),
            epoch: ann.get(EPOCH_ANNOTATION).map(String::as_str),
            releasing: ann.get(RELEASING_ANNOTATION).map(String::as_str),
            migration_holder: ann.get(MIGRATION_HOLDER_ANNOTATION).map(String::as_str),
            migration_epoch: ann.get(MIGRATION_EPOCH_ANNOTATION).map(String::as_str),
            migration_deadline: ann.get(MIGRATION_DEADLINE_ANNOTATION).map(String::as_str),
        },
        wanted,
    )
}

fn api_error(e: &kube::Error) -> ApiError {
    StatusError::from_kube(e).into()
}

impl ClaimStore for KubeClaims {
    async fn read(&self, volume_id: &str) -> Result<Option<Claim>, ClaimError> {
        match self.api.get_opt(&object_name(volume_id)).await {
            Ok(Some(l)) => Ok(Some(claim_of(&l, Some(volume_id))?)),
            Ok(None) => Ok(None),
            Err(e) => Err(ClaimError::Api {
                volume: volume_id.to_string(),
                source: api_error(&e),
            }),
        }
    }

    async fn create(&self, claim: &Claim) -> Result<Claim, ApiError> {
        let made = self
            .api
            .create(&post_params(), &self.lease(claim)?)
            .await
            .map_err(|e| api_error(&e))?;
        claim_of(&made, Some(&claim.volume_id)).map_err(|e| ApiError::Unavailable(e.to_string()))
    }

    async fn replace(&self, claim: &Claim) -> Result<Claim, ApiError> {
        // A PUT carries the resourceVersion read: 409 if the claim moved on.
        let put = self
            .api
            .replace(&claim.name, &post_params(), &self.lease(claim)?)
            .await
            .map_err(|e| api_error(&e))?;
        claim_of(&put, Some(&claim.volume_id)).map_err(|e| ApiError::Unavailable(e.to_string()))
    }

    async fn delete(&self, claim: &Claim) -> Result<(), ApiError> {
        let dp = DeleteParams {
            preconditions: Some(Preconditions {
                resource_version: Some(claim.version.clone()),
                uid: None,
            }),
            ..DeleteParams::default()
        };
        self.api
            .delete(&claim.name, &dp)
            .await
            .map(|_| ())
            .map_err(|e| api_error(&e))
    }

    async fn mine(&self) -> Result<Vec<Claim>, ClaimError> {
        // Held, or shared as a migration's destination: two selections (a selector cannot
        // say "either label").
        let label = node_label(&self.node);
        let node = self.node.clone();
        // Another node whose label collides with ours after hashing is not ours.
        let mut out = self
            .select(&format!("{CLAIM_LABEL}=true,{NODE_LABEL}={label}"), |c| {
                c.node() == node
            })
            .await?;
        let node = self.node.clone();
        out.extend(
            self.select(
                &format!("{CLAIM_LABEL}=true,{MIGRATION_NODE_LABEL}={label}"),
                move |c| c.migration.as_ref().is_some_and(|m| m.node() == node),
            )
            .await?,
        );
        Ok(out)
    }

    async fn all(&self) -> Result<Vec<Claim>, ClaimError> {
        self.select(&format!("{CLAIM_LABEL}=true"), |_| true).await
    }

    async fn node_exists(&self, node: &str) -> Option<bool> {
        let nodes: Api<k8s_openapi::api::core::v1::Node> = Api::all(self.api.clone().into_client());
        match nodes.get_opt(node).await {
            Ok(n) => Some(n.is_some()),
            Err(e) => {
                tracing::debug!("node {node}: {}", api_error(&e));
                None
            }
        }
    }

    async fn event(&self, volume_id: &str, reason: &str, message: &str, warning: bool) {
        let spec = EventSpec {
            reason,
            action: reason,
            message,
            warning,
        };
        self.events
            .on_lease(&self.namespace, &object_name(volume_id), &spec)
            .await;
    }
}
