//! A restart rebuilds the agent's claims from the API server and its devices: what needs no
//! fence (an interrupted Disconnect finished, a claim whose device is gone released) is done
//! before READY=1; what needs the fence (re-stamping, re-claiming, letting go of a volume taken
//! over) at the first holding. Its own test binary: NOTIFY_SOCKET is process-wide.
//!
//! Against the in-process emulator by default; with `KUBECONFIG` set against that cluster.

mod nvme_env;
mod support;

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use support::agents::{Agent, Api};
use support::{ctl, text};
use tokio::net::UnixDatagram;
use volfence::config::LeaseLossAction;

const BOOT_A: &str = "0f5e2c1a-8b7d-4e3f-9a2b-0000000000a1";
const BOOT_B: &str = "0f5e2c1a-8b7d-4e3f-9a2b-0000000000b1";
const BOOT_GHOST: &str = "0f5e2c1a-8b7d-4e3f-9a2b-0000000000f1";

/// Waits for the next `READY=1` on the notify socket, as systemd does for `Type=notify`.
async fn ready(sock: &UnixDatagram) {
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let n = tokio::time::timeout(left, sock.recv(&mut buf))
            .await
            .expect("READY=1 within 30 s")
            .unwrap();
        if String::from_utf8_lossy(&buf[..n])
            .lines()
            .any(|l| l == "READY=1")
        {
            return;
        }
    }
}

fn holder(l: &Lease) -> String {
    l.spec.clone().unwrap().holder_identity.unwrap_or_default()
}

/// Volume ids the agent on `bus` lists.
async fn listed(bus: &str) -> Vec<String> {
    let out = ctl(bus, &["list", "--json"]).await;
    assert!(out.status.success(), "{}", text(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut ids: Vec<String> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["VolumeId"].as_str().unwrap().to_string())
        .collect();
    ids.sort();
    ids
}

/// Sets the phase of the record of `volume` under `root` (the agent's runtime directory).
fn set_phase(root: &std::path::Path, volume: &str, phase: &str) {
    let p = root.join(format!("run/volfence/volumes/{volume}.json"));
    let mut r: serde_json::Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
    r["phase"] = phase.into();
    std::fs::write(&p, serde_json::to_vec(&r).unwrap()).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_settles_claims_without_devices_before_ready_and_the_rest_at_its_first_holding() {
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter("info")
        .try_init();
    let api = Api::start("restart").await;
    let dir = tempfile::tempdir().unwrap();
    let sock_path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    // Before any agent runs: the only writer of the environment in this process.
    std::env::set_var("NOTIFY_SOCKET", &sock_path);

    let a = Agent::start(&api, "node-a", BOOT_A, LeaseLossAction::Disconnect).await;
    ready(&sock).await;
    let b = Agent::start(&api, "node-b", BOOT_B, LeaseLossAction::Disconnect).await;
    ready(&sock).await;
    let vols = [
        ("vol-keep", 1),
        ("vol-cut", 2),
        ("vol-gone", 3),
        ("vol-bare", 4),
        ("vol-taken", 5),
    ];
    for (v, n) in vols {
        let out = a.connect(v, n).await;
        assert!(out.status.success(), "{v}: {}", text(&out));
    }
    let kept = api.claim("vol-keep").await.unwrap();

    let root = a.root().to_path_buf();
    let parked = a.crash().await;
    // What a crash leaves, by the step it came in:
    // - vol-cut: in its Disconnect, after the record said so, before the device went;
    set_phase(&root, "vol-cut", "disconnecting");
    // - vol-gone: in its Disconnect, after its record went (its namespace shares the
    //   controller with the others, which stays), before the claim;
    std::fs::remove_file(root.join("run/volfence/volumes/vol-gone.json")).unwrap();
    // - vol-bare and vol-taken: an operator deleted their claims while the agent was down
    //   (kubectl delete lease), and node-b took vol-taken.
    let claims: kube::Api<Lease> = kube::Api::namespaced(api.client().await, &api.claims);
    for v in ["vol-bare", "vol-taken"] {
        claims
            .delete(
                &volfence::claims::record::object_name(v),
                &Default::default(),
            )
            .await
            .unwrap();
    }
    let out = b.connect("vol-taken", 5).await;
    assert!(out.status.success(), "{}", text(&out));

    // Its lease is held under another identity when it comes back (as by another boot of this
    // node): the first holding waits for the observer rule, seconds after READY=1, so what
    // is settled at READY=1 was settled before it.
    let leases: kube::Api<Lease> = kube::Api::namespaced(api.client().await, &api.leases);
    let ghost = serde_json::json!({"spec": {"holderIdentity": format!("node-a/{BOOT_GHOST}")}});
    leases
        .patch(
            "node-a",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(&ghost),
        )
        .await
        .unwrap();
    let a = parked.restart();
    ready(&sock).await;
    // At READY=1, before anything else may have run: no claim without a device is left, the
    // interrupted Disconnect is finished, and the bus lists what is still connected.
    assert!(api.claim("vol-cut").await.is_none(), "vol-cut's claim left");
    assert!(
        api.claim("vol-gone").await.is_none(),
        "vol-gone's claim left"
    );
    assert!(
        !root.join("run/volfence/volumes/vol-cut.json").exists(),
        "vol-cut's interrupted Disconnect not finished at READY=1"
    );
    a.until_state("acquiring").await;
    let at_ready = listed(&a.bus.address).await;
    assert!(
        ["vol-bare", "vol-keep"]
            .iter()
            .all(|v| at_ready.contains(&v.to_string()))
            && !at_ready.contains(&"vol-cut".to_string())
            && !at_ready.contains(&"vol-gone".to_string()),
        "listed at READY=1: {at_ready:?}"
    );

    // At the first holding, once the other identity's lease expired: epoch 2.
    a.until_state("held").await;
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let bare = api.claim("vol-bare").await;
        let done = bare
            .as_ref()
            .is_some_and(|l| holder(l).starts_with("node-a/"))
            && !listed(&a.bus.address)
                .await
                .contains(&"vol-taken".to_string());
        if done {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "first holding not reconciled: vol-bare {bare:?}, listed {:?}",
            listed(&a.bus.address).await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        listed(&a.bus.address).await,
        ["vol-bare", "vol-keep"],
        "vol-taken let go"
    );
    assert!(holder(&api.claim("vol-taken").await.unwrap()).starts_with("node-b/"));
    let keep = api.claim("vol-keep").await.unwrap();
    assert_eq!(
        holder(&keep),
        holder(&kept),
        "vol-keep kept by the same holder"
    );
    let epoch = |l: &Lease| {
        l.metadata.annotations.as_ref().unwrap()[volfence::claims::record::EPOCH_ANNOTATION].clone()
    };
    assert_eq!(
        (epoch(&kept).as_str(), epoch(&keep).as_str()),
        ("1", "2"),
        "vol-keep re-stamped with the new epoch"
    );
    assert!(api
        .event_reasons()
        .await
        .contains(&"VolumeLost".to_string()));
    a.stop().await;
    b.stop().await;
    api.cleanup().await;
}
