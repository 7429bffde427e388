//! ReadWriteOnce across hosts: two real agents (`daemon::run_with`, distinct node names and host
//! identities, each over its own fake kernel and private bus) share one API server and claim
//! volumes through it. Driven by `volfencectl` as an operator would.
//!
//! Against the in-process emulator by default. With `KUBECONFIG` set the tests without fault
//! injection run against that cluster instead, in namespaces of their own that they delete.

mod nvme_env;
mod support;

use std::time::Duration;

use support::agents::{Agent, Api, NQN};
use support::{ctl, text};
use tokio_util::sync::CancellationToken;
use volfence::config::LeaseLossAction;
use volfence_kube_emulator::Faults;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_holder_is_a_conflict_and_a_disconnect_hands_the_volume_over() {
    let api = Api::start("conflict").await;
    let a = Agent::start(
        &api,
        "node-a",
        "0f5e2c1a-8b7d-4e3f-9a2b-000000000001",
        LeaseLossAction::Disconnect,
    )
    .await;
    let b = Agent::start(
        &api,
        "node-b",
        "0f5e2c1a-8b7d-4e3f-9a2b-000000000002",
        LeaseLossAction::Disconnect,
    )
    .await;

    let out = a.connect("vol-x", 1).await;
    assert!(out.status.success(), "{}", text(&out));
    let claim = api.claim("vol-x").await.expect("a claim for vol-x");
    let spec = claim.spec.unwrap();
    assert!(spec.holder_identity.unwrap().starts_with("node-a/"));
    assert_eq!(spec.lease_transitions, Some(1));
    let labels = claim.metadata.labels.unwrap();
    assert_eq!(labels["volfence.io/holder-node"], "node-a");
    // Connecting again is idempotent and writes nothing.
    let rv = claim.metadata.resource_version;
    assert!(a.connect("vol-x", 1).await.status.success());
    assert_eq!(
        api.claim("vol-x").await.unwrap().metadata.resource_version,
        rv
    );

    let out = b.connect("vol-x", 1).await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let said = text(&out);
    assert!(said.contains("org.volfence.Error.Conflict"), "{said}");
    assert!(
        said.contains("node-a") && said.contains("epoch 1"),
        "{said}"
    );
    assert!(
        b.kernel.controllers().is_empty(),
        "a refused connect touches no device"
    );
    assert!(api
        .event_reasons()
        .await
        .contains(&"VolumeConflict".to_string()));

    // Who holds what, as an operator asks: A's own claims, and every claim from B.
    let out = ctl(&a.bus.address, &["claims", "--json"]).await;
    assert!(out.status.success(), "{}", text(&out));
    let mine: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(mine.as_array().unwrap().len(), 1, "{mine}");
    assert_eq!(mine[0]["VolumeId"], "vol-x");
    assert_eq!(mine[0]["Node"], "node-a");
    assert_eq!(mine[0]["Epoch"], 1);
    assert_eq!(mine[0]["HolderLease"], "renewing");
    // No Node object named node-a (a node removed from the cluster): said, as a hint.
    if api.emu.is_some() {
        assert_eq!(mine[0]["HolderNode"], "gone", "{mine}");
        let nodes: kube::Api<k8s_openapi::api::core::v1::Node> = kube::Api::all(api.client().await);
        let n: k8s_openapi::api::core::v1::Node =
            serde_json::from_value(serde_json::json!({"metadata": {"name": "node-a"}})).unwrap();
        nodes.create(&Default::default(), &n).await.unwrap();
        let out = ctl(&a.bus.address, &["claims", "--json"]).await;
        let mine: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(mine[0]["HolderNode"], "present", "{mine}");
    }
    let out = ctl(&b.bus.address, &["claims"]).await;
    assert_eq!(text(&out).trim(), "no claims");
    let out = ctl(&b.bus.address, &["claims", "--all"]).await;
    let table = text(&out);
    assert!(
        table.contains("vol-x") && table.contains("node-a/") && table.contains("renewing"),
        "{table}"
    );

    // A's Disconnect releases the claim (no object left); B's Connect then takes it.
    let out = a.disconnect("vol-x").await;
    assert!(out.status.success(), "{}", text(&out));
    assert!(api.claim("vol-x").await.is_none(), "no garbage claim");
    let out = b.connect("vol-x", 1).await;
    assert!(out.status.success(), "{}", text(&out));
    assert!(api
        .claim("vol-x")
        .await
        .unwrap()
        .spec
        .unwrap()
        .holder_identity
        .unwrap()
        .starts_with("node-b/"));
    assert!(b.disconnect("vol-x").await.status.success());
    // Disconnecting what is not connected is fine, and leaves others' claims alone.
    assert!(b.disconnect("vol-x").await.status.success());
    a.stop().await;
    b.stop().await;
    api.cleanup().await;
}

/// Both agents connect the same volume at the same instant, 100 times: each time exactly one
/// wins, and the loser's kernel never saw a controller.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_agents_connecting_one_volume_at_once_one_wins_every_time() {
    let api = Api::start("race").await;
    let a = Agent::start(
        &api,
        "node-a",
        "0f5e2c1a-8b7d-4e3f-9a2b-000000000003",
        LeaseLossAction::Disconnect,
    )
    .await;
    let b = Agent::start(
        &api,
        "node-b",
        "0f5e2c1a-8b7d-4e3f-9a2b-000000000004",
        LeaseLossAction::Disconnect,
    )
    .await;
    let mut wins = [0, 0];
    for i in 0..100 {
        let vol = format!("race-{i}");
        let (ra, rb) = tokio::join!(a.connect(&vol, 2), b.connect(&vol, 2));
        let ok = [ra.status.success(), rb.status.success()];
        assert_eq!(
            ok.iter().filter(|x| **x).count(),
            1,
            "round {i}: {} / {}",
            text(&ra),
            text(&rb)
        );
        let (winner, loser, out) = if ok[0] { (&a, &b, &rb) } else { (&b, &a, &ra) };
        assert!(
            text(out).contains("org.volfence.Error.Conflict"),
            "round {i}: {}",
            text(out)
        );
        assert!(loser.kernel.controllers().is_empty(), "round {i}");
        wins[usize::from(!ok[0])] += 1;
        assert!(winner.disconnect(&vol).await.status.success());
    }
    assert!(api.claim("race-99").await.is_none());
    println!("wins: node-a {}, node-b {}", wins[0], wins[1]);
    a.stop().await;
    b.stop().await;
    api.cleanup().await;
}

/// A partitioned holder fences itself; only after its lease expired by the observer rule does
/// the other agent take the volume over. When the old holder comes back (here with
/// on_lease_loss = refuse, so its device stayed), it finds the claim gone and disconnects.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn takeover_waits_for_the_holders_fence_and_the_loser_lets_go() {
    let api = Api::start("takeover").await;
    let Some(emu) = api.emu.as_ref() else {
        return; // needs fault injection
    };
    let a = Agent::start(
        &api,
        "node-a",
        "0f5e2c1a-8b7d-4e3f-9a2b-000000000005",
        LeaseLossAction::Refuse,
    )
    .await;
    let b = Agent::start(
        &api,
        "node-b",
        "0f5e2c1a-8b7d-4e3f-9a2b-000000000006",
        LeaseLossAction::Disconnect,
    )
    .await;
    assert!(a.connect("vol-t", 3).await.status.success());

    emu.faults(
        "node-a",
        Faults {
            partition: true,
            ..Faults::default()
        },
    );
    let cut = std::time::Instant::now();
    // B keeps trying from the partition on, while A's fence is watched: B must win only after
    // A has fenced itself (A stops at s + D − M, B may act at s + D: M = 1 s apart).
    let (fenced_at, took) = tokio::join!(
        async {
            a.until_state("fenced").await;
            cut.elapsed()
        },
        async {
            let mut refused = 0;
            loop {
                let out = b.connect("vol-t", 3).await;
                if out.status.success() {
                    break (cut.elapsed(), refused);
                }
                assert!(
                    text(&out).contains("org.volfence.Error.Conflict"),
                    "{}",
                    text(&out)
                );
                refused += 1;
                assert!(cut.elapsed() < Duration::from_secs(30), "never taken over");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    );
    let (took, refused) = took;
    assert!(refused > 0, "B was refused while A's lease was live");
    assert!(
        took > fenced_at,
        "B took over at {took:?}, A fenced at {fenced_at:?}"
    );
    println!(
        "A fenced {fenced_at:?} after the partition, B took over at {took:?} ({refused} refusals)"
    );
    let spec = api.claim("vol-t").await.unwrap().spec.unwrap();
    assert!(spec.holder_identity.unwrap().starts_with("node-b/"));
    assert_eq!(spec.lease_transitions, Some(2));
    assert!(api
        .event_reasons()
        .await
        .contains(&"VolumeTakenOver".to_string()));
    assert_eq!(a.kernel.controllers().len(), 1, "refuse keeps A's device");

    // A's bus says so when it lets go: VolumeLost, as for a volume whose paths are gone.
    let conn = zbus::connection::Builder::address(a.bus.address.as_str())
        .build()
        .await
        .unwrap();
    let proxy = volfence::dbus::client::Agent1Proxy::new(&conn)
        .await
        .unwrap();
    let mut lost = proxy.receive_volume_lost().await.unwrap();
    emu.faults("node-a", Faults::default());
    a.until_state("held").await;
    for _ in 0..100 {
        if a.kernel.controllers().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        a.kernel.controllers().is_empty(),
        "A let go of the volume it lost"
    );
    let signal = tokio::time::timeout(Duration::from_secs(5), futures::StreamExt::next(&mut lost))
        .await
        .expect("VolumeLost within 5 s")
        .unwrap();
    let args = signal.args().unwrap();
    assert_eq!((args.volume_id.as_str(), args.nqn.as_str()), ("vol-t", NQN));
    let holder = api
        .claim("vol-t")
        .await
        .unwrap()
        .spec
        .unwrap()
        .holder_identity
        .unwrap();
    assert!(
        holder.starts_with("node-b/"),
        "A did not take it back: {holder}"
    );
    assert!(api
        .event_reasons()
        .await
        .contains(&"VolumeLost".to_string()));
    a.stop().await;
    b.stop().await;
}

/// The handoff, on the protocol itself: while A's Disconnect runs (its claim marked releasing),
/// B's acquire waits instead of failing, and takes the claim as soon as A deletes it; a release
/// that does not come within handoff_wait is a conflict.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connect_during_a_disconnect_waits_for_the_handoff() {
    use volfence::claims::{Acquired, ClaimError, Claims};
    use volfence::cluster::{Cluster, KubeClaims, KubeLeases};
    use volfence::fence::Holder;
    let api = Api::start("handoff").await;
    let shutdown = CancellationToken::new();
    let dir = tempfile::tempdir().unwrap();
    let side = |node: &'static str, boot: &'static str| {
        let api = &api;
        let dir = dir.path().join(node);
        let shutdown = shutdown.clone();
        async move {
            let cluster = Cluster::from_client(api.client().await, node);
            let (leases, watch) = KubeLeases::start(
                &cluster,
                &api.leases,
                Duration::from_secs(4),
                Duration::ZERO,
            );
            tokio::spawn(watch);
            let claims = Claims::new(
                KubeClaims::new(&cluster, &api.claims, node),
                leases,
                Holder {
                    node: node.into(),
                    boot_id: boot.into(),
                },
                Duration::from_secs(2),
            );
            (claims, nvme_env::held_fence(dir, &shutdown).await)
        }
    };
    let (a, fa) = side("node-a", "boot-a").await;
    let (b, fb) = side("node-b", "boot-b").await;
    let (ga, gb) = (fa.guard().unwrap(), fb.guard().unwrap());
    assert!(matches!(
        a.acquire(&ga, "vol-h", None).await.unwrap(),
        Acquired::Taken(_)
    ));
    let marked = a.begin_release("vol-h").await.unwrap().expect("A's claim");
    assert!(marked.releasing);

    let started = std::time::Instant::now();
    let (got, ()) = tokio::join!(b.acquire(&gb, "vol-h", None), async {
        tokio::time::sleep(Duration::from_millis(600)).await;
        a.release("vol-h").await.unwrap();
    });
    let waited = started.elapsed();
    let Acquired::Taken(c) = got.unwrap() else {
        panic!("B should have taken the released claim")
    };
    assert!(c.holder.starts_with("node-b/"), "{c:?}");
    assert!(waited >= Duration::from_millis(600), "B waited {waited:?}");
    // A's release is idempotent and leaves B's claim alone.
    a.release("vol-h").await.unwrap();
    assert!(api.claim("vol-h").await.is_some());

    // Releasing, but never released: after handoff_wait (2 s) it is a conflict naming B.
    b.begin_release("vol-h").await.unwrap();
    let started = std::time::Instant::now();
    let e = a.acquire(&ga, "vol-h", None).await.unwrap_err();
    assert!(
        matches!(&e, ClaimError::Conflict { node, .. } if node == "node-b"),
        "{e}"
    );
    assert!(started.elapsed() >= Duration::from_secs(2));
    b.release("vol-h").await.unwrap();
    assert!(api.claim("vol-h").await.is_none());
    shutdown.cancel();
    api.cleanup().await;
}

/// Observers that scale: an agent's watch delivers its own lease and nothing about other hosts;
/// another host's lease is judged from consistent reads (sightings) on this host's clock — the
/// same resourceVersion seen D + grace later is an expired holder, a new one is a live one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_watches_only_its_own_lease_and_judges_others_by_sightings() {
    use volfence::cluster::{Cluster, KubeLeases};
    use volfence::fence::observer::Verdict;
    use volfence::fence::{LeaseApi, LeaseRecord};
    let api = Api::start("sightings").await;
    let d = Duration::from_secs(1);
    let start = |node: &'static str| {
        let api = &api;
        async move {
            let cluster = Cluster::from_client(api.client().await, node);
            let (leases, watch) = KubeLeases::start(&cluster, &api.leases, d, Duration::ZERO);
            tokio::spawn(watch);
            leases
        }
    };
    let (a, b) = (start("node-a").await, start("node-b").await);
    let synced = |l: &KubeLeases| l.synced();
    for _ in 0..100 {
        if synced(&a) && synced(&b) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(a.synced() && b.synced());
    let lease = |node: &str| LeaseRecord {
        name: node.to_string(),
        resource_version: String::new(),
        holder: Some(format!("{node}/boot")),
        lease_duration_seconds: 1,
        lease_transitions: 1,
        acquire_time: Some(a.now_rfc3339()),
        renew_time: Some(a.now_rfc3339()),
    };
    let mut own = a.create(&lease("node-a")).await.unwrap();
    let mut peer = b.create(&lease("node-b")).await.unwrap();
    let settle = || tokio::time::sleep(Duration::from_millis(300));
    settle().await;
    let a_events = a.watch_events();
    assert!(
        a.cached("node-a").is_some(),
        "A's own lease is in its cache"
    );
    // B renews ten times: nothing of it reaches A's watch.
    for _ in 0..10 {
        peer.renew_time = Some(b.now_rfc3339());
        peer = b.replace(&peer).await.unwrap();
    }
    settle().await;
    assert_eq!(
        a.watch_events(),
        a_events,
        "A's watch delivered B's renewals"
    );
    assert_eq!(a.cached("node-b"), None, "A never read B's lease yet");
    assert_eq!(a.verdict("node-b"), Verdict::Unknown);
    // A renews once: its own watch sees that.
    own.renew_time = Some(a.now_rfc3339());
    a.replace(&own).await.unwrap();
    settle().await;
    assert!(
        a.watch_events() > a_events,
        "A's watch missed its own renewal"
    );

    // First sighting of B: live, counted from now.
    a.read("node-b").await.unwrap().unwrap();
    assert!(matches!(a.verdict("node-b"), Verdict::Live { .. }));
    // B renews: the next sighting resets the count.
    tokio::time::sleep(d).await;
    peer.renew_time = Some(b.now_rfc3339());
    peer = b.replace(&peer).await.unwrap();
    a.read("node-b").await.unwrap().unwrap();
    assert!(
        matches!(a.verdict("node-b"), Verdict::Live { .. }),
        "a renewal seen in a sighting is a live holder"
    );
    // B goes silent: the same resourceVersion D later is an expired holder.
    tokio::time::sleep(d + Duration::from_millis(100)).await;
    let seen = a.read("node-b").await.unwrap().unwrap();
    assert_eq!(seen.resource_version, peer.resource_version);
    assert!(
        matches!(a.verdict("node-b"), Verdict::Expired { .. }),
        "{:?}",
        a.verdict("node-b")
    );
    assert_eq!(a.cached("node-b"), Some(seen));
    api.cleanup().await;
}

/// A live migration: the destination joins the source's claim, a third host and a second
/// migration are refused, the source's Disconnect leaves the destination sole holder, and a
/// window that passes with both attached ends with the destination detached.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_migration_opens_collapses_on_the_sources_disconnect_and_expires_at_its_deadline() {
    let api = Api::start("migration").await;
    let start = |node: &'static str, n: u32| {
        let api = &api;
        async move {
            let boot = format!("0f5e2c1a-8b7d-4e3f-9a2b-00000000010{n}");
            Agent::start(api, node, &boot, LeaseLossAction::Disconnect).await
        }
    };
    let a = start("node-a", 1).await;
    let b = start("node-b", 2).await;
    let c = start("node-c", 3).await;
    let holder_of = |l: &k8s_openapi::api::coordination::v1::Lease| {
        l.spec.clone().unwrap().holder_identity.unwrap_or_default()
    };
    let annotation = |l: &k8s_openapi::api::coordination::v1::Lease, k: &str| {
        l.metadata
            .annotations
            .clone()
            .unwrap_or_default()
            .get(k)
            .cloned()
    };

    assert!(a.connect("vol-m", 1).await.status.success());
    // Bad requests name the option.
    let out = a.migrate("vol-m", 1, "node-a").await;
    let said = text(&out);
    assert!(
        said.contains("InvalidArgument") && said.contains("this node"),
        "{said}"
    );
    let out = ctl(
        &b.bus.address,
        &[
            "connect",
            "vol-m",
            "--nqn",
            NQN,
            "--traddr",
            "127.0.0.1",
            "--nsid",
            "1",
            "-o",
            "migration_source=Node_A",
        ],
    )
    .await;
    let said = text(&out);
    assert!(
        said.contains("InvalidArgument") && said.contains("migration_source"),
        "{said}"
    );
    // Joined from the wrong source: refused, naming the holder.
    let said = text(&b.migrate("vol-m", 1, "node-c").await);
    assert!(
        said.contains("Conflict") && said.contains("not by the migration source node-c"),
        "{said}"
    );

    // B joins A's claim.
    let out = b.migrate("vol-m", 1, "node-a").await;
    assert!(out.status.success(), "{}", text(&out));
    let claim = api.claim("vol-m").await.unwrap();
    assert!(holder_of(&claim).starts_with("node-a/"));
    let m = annotation(&claim, "volfence.io/migration-holder").unwrap();
    assert!(m.starts_with("node-b/"), "{m}");
    assert_eq!(
        claim.metadata.labels.unwrap()["volfence.io/migration-node"],
        "node-b"
    );
    assert!(b
        .show("vol-m")
        .await
        .contains("migration:   from node-a until"));
    let on_a = a.show("vol-m").await;
    assert!(on_a.contains("migration:   to node-b until"), "{on_a}");
    let list = text(&ctl(&b.bus.address, &["list"]).await);
    assert!(list.contains("node-a@1 +migrating"), "{list}");
    // A third host, plain or as a second migration: refused.
    let said = text(&c.connect("vol-m", 1).await);
    assert!(
        said.contains("Conflict") && said.contains("migrating from node-a"),
        "{said}"
    );
    let said = text(&c.migrate("vol-m", 1, "node-a").await);
    assert!(
        said.contains("Conflict") && said.contains("one migration at a time"),
        "{said}"
    );
    assert!(c.kernel.controllers().is_empty());
    // B's own claims include the one it shares.
    let mine: serde_json::Value =
        serde_json::from_slice(&ctl(&b.bus.address, &["claims", "--json"]).await.stdout).unwrap();
    assert_eq!(mine.as_array().unwrap().len(), 1, "{mine}");

    // The source lets go: B holds it alone, and its bus says so.
    assert!(a.disconnect("vol-m").await.status.success());
    let claim = api.claim("vol-m").await.expect("handed over, not deleted");
    assert!(holder_of(&claim).starts_with("node-b/"), "{claim:?}");
    assert_eq!(annotation(&claim, "volfence.io/migration-holder"), None);
    let mut shown = String::new();
    for _ in 0..100 {
        shown = b.show("vol-m").await;
        if shown.contains("claim:       node-b/") && !shown.contains("migration:") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        shown.contains("claim:       node-b/") && !shown.contains("migration:"),
        "{shown}"
    );
    assert!(!b.kernel.controllers().is_empty(), "B keeps its device");

    // Back to A, which never finishes: at the deadline (5 s here) A detaches itself.
    let out = a.migrate("vol-m", 1, "node-b").await;
    assert!(out.status.success(), "{}", text(&out));
    let opened = std::time::Instant::now();
    assert!(!a.kernel.controllers().is_empty());
    let mut left = false;
    for _ in 0..200 {
        if a.kernel.controllers().is_empty() {
            left = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let took = opened.elapsed();
    assert!(left, "A still attached {took:?} after a 5 s window");
    assert!(
        took >= Duration::from_secs(4),
        "left after {took:?}, before the deadline"
    );
    let mut claim = api.claim("vol-m").await.unwrap();
    for _ in 0..50 {
        if annotation(&claim, "volfence.io/migration-holder").is_none() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        claim = api.claim("vol-m").await.unwrap();
    }
    assert!(holder_of(&claim).starts_with("node-b/"));
    assert_eq!(annotation(&claim, "volfence.io/migration-holder"), None);
    assert!(!b.kernel.controllers().is_empty(), "the source stays");
    let reasons = api.event_reasons().await;
    for r in ["MigrationStarted", "MigrationCompleted", "MigrationExpired"] {
        assert!(
            reasons.contains(&r.to_string()),
            "{r} missing from {reasons:?}"
        );
    }

    assert!(b.disconnect("vol-m").await.status.success());
    assert!(api.claim("vol-m").await.is_none());
    for x in [a, b, c] {
        x.stop().await;
    }
    api.cleanup().await;
}
