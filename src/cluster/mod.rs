//! The Kubernetes room: the only code that talks to the API server. It builds the one client
//! (client.rs), owns one reflector store per kind it watches, each gated by kube-runtime's own
//! readiness (leases.rs: this host's own Lease; other hosts' leases are read one by one, only when a
//! claim they hold is in question), records Events through
//! kube-runtime's Recorder (events.rs), and maps every answer of the server into one error type
//! (error.rs); the volumes' claims are Leases of the claims namespace, read with GETs (claims.rs).
//! The domain rooms define the small traits they need ([`crate::fence::LeaseApi`],
//! [`crate::snapshot::FailureReporter`], [`crate::claims::ClaimStore`]); this room implements them, and none of them imports it.

mod claims;
mod client;
mod error;
mod events;
mod leases;

pub use claims::KubeClaims;
pub use client::{client, patch_params, post_params, KubeError, FIELD_MANAGER, USER_AGENT};
pub use error::StatusError;
pub use events::{EventSpec, Events, KubeSnapshotEvents, CONTROLLER};
pub use leases::KubeLeases;

use crate::config::KubernetesSettings;

/// The agent's one client and its Recorder, from which the room's parts are made.
#[derive(Clone)]
pub struct Cluster {
    client: kube::Client,
    events: Events,
    node: String,
}

impl Cluster {
    /// Connects (lazily: no request is made here) as the agent on `node`.
    pub async fn new(settings: &KubernetesSettings, node: &str) -> Result<Cluster, KubeError> {
        Ok(Cluster::from_client(client(settings).await?, node))
    }

    pub fn from_client(client: kube::Client, node: &str) -> Cluster {
        Cluster {
            events: Events::new(client.clone(), node),
            client,
            node: node.to_string(),
        }
    }

    pub fn client(&self) -> &kube::Client {
        &self.client
    }

    /// The node this agent runs on: the name of its host lease.
    pub fn node(&self) -> &str {
        &self.node
    }

    pub fn events(&self) -> &Events {
        &self.events
    }

    /// Failed snapshots as Events on their claims.
    pub fn snapshot_reporter(&self) -> KubeSnapshotEvents {
        KubeSnapshotEvents::new(self.events.clone())
    }
}
