//! The one client: built once from `[kubernetes]`, named in every request, and never retrying
//! by itself.

use kube::api::{PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::Client;

use crate::config::KubernetesSettings;

#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    /// The kubeconfig could not be read or used.
    #[error("kubeconfig {path}: {message}")]
    Kubeconfig { path: String, message: String },
    /// No kubeconfig given and none could be inferred.
    #[error("no Kubernetes configuration: set [kubernetes] kubeconfig, KUBECONFIG, or run in a cluster ({0})")]
    Infer(String),
    /// The client could not be built.
    #[error("cannot create the Kubernetes client: {0}")]
    Client(String),
}

/// Builds a client from `[kubernetes]`: the kubeconfig file if set, else the usual inference
/// (in-cluster service account, `KUBECONFIG`, `~/.kube/config`).
pub async fn client(settings: &KubernetesSettings) -> Result<Client, KubeError> {
    let mut config = match &settings.kubeconfig {
        Some(path) => {
            let p = path.display().to_string();
            let kc = Kubeconfig::read_from(path).map_err(|e| KubeError::Kubeconfig {
                path: p.clone(),
                message: e.to_string(),
            })?;
            kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
                .await
                .map_err(|e| KubeError::Kubeconfig {
                    path: p,
                    message: e.to_string(),
                })?
        }
        None => kube::Config::infer()
            .await
            .map_err(|e| KubeError::Infer(e.to_string()))?,
    };
    config.connect_timeout = Some(settings.request_timeout);
    // kube retries 429/503/504 by itself (up to 15 times, backing off to minutes). The fence
    // must see each answer when it comes: a renew that failed is a failed renew, and the loop
    // retries on its own schedule, within D − M.
    config.default_retry = false;
    // Named in the API server's audit log and in managedFields, not as a generic kube-rs client.
    config.headers.push((
        hyper::header::USER_AGENT,
        hyper::header::HeaderValue::from_static(USER_AGENT),
    ));
    Client::try_from(config).map_err(|e| KubeError::Client(e.to_string()))
}

/// The User-Agent of every request: `volfenced/<version>`.
pub const USER_AGENT: &str = concat!("volfenced/", env!("CARGO_PKG_VERSION"));
/// The field manager of every write, so `kubectl get -o yaml --show-managed-fields` names us.
pub const FIELD_MANAGER: &str = "volfenced";

pub fn post_params() -> PostParams {
    PostParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..PostParams::default()
    }
}

pub fn patch_params() -> PatchParams {
    PatchParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..PatchParams::default()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use k8s_openapi::api::coordination::v1::Lease;
    use kube::Api;
    use serde_json::json;

    use super::*;

    /// What the server sees of a write: the agent's name in User-Agent and as field manager.
    #[tokio::test]
    async fn writes_name_the_agent_to_the_server() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let dir = tempfile::tempdir().unwrap();
        let kc = dir.path().join("kubeconfig");
        std::fs::write(
            &kc,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: http://127.0.0.1:{port}\n\
                 users:\n- name: u\n  user: {{}}\ncontexts:\n- name: x\n  context:\n    cluster: c\n    user: u\n\
                 current-context: x\n"
            ),
        )
        .unwrap();
        let settings = KubernetesSettings {
            kubeconfig: Some(kc),
            request_timeout: Duration::from_secs(5),
        };
        let client = client(&settings).await.unwrap();
        let server = tokio::spawn(async move {
            let (mut sock, _) = listener.accept().await.unwrap();
            let mut head = Vec::new();
            let mut buf = [0u8; 4096];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = sock.read(&mut buf).await.unwrap();
                assert!(n > 0, "connection closed before the request head");
                head.extend_from_slice(&buf[..n]);
            }
            let _ = sock
                .write_all(b"HTTP/1.1 500 Internal Server Error\r\ncontent-length: 0\r\n\r\n")
                .await;
            String::from_utf8_lossy(&head).to_lowercase()
        });
        let api: Api<Lease> = Api::namespaced(client, "ns");
        let lease: Lease = serde_json::from_value(json!({"metadata": {"name": "n1"}})).unwrap();
        let _ = api.create(&post_params(), &lease).await;
        let head = server.await.unwrap();
        assert!(
            head.contains(&format!("user-agent: {}", USER_AGENT.to_lowercase())),
            "{head}"
        );
        assert!(head.contains("fieldmanager=volfenced"), "{head}");
    }
}
