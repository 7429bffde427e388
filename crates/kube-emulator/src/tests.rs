//! The emulator as the real `kube` client sees it.

use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::{Patch, PatchParams, PostParams, WatchEvent, WatchParams};
use kube::{Api, Client};
use serde_json::json;

use super::*;

async fn client(emu: &Emulator, who: &str) -> Client {
    let kc: kube::config::Kubeconfig = serde_yaml_free(&emu.kubeconfig(who));
    let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .unwrap();
    Client::try_from(cfg).unwrap()
}

/// Kubeconfig text → struct, through kube's own reader (a temp file).
fn serde_yaml_free(text: &str) -> kube::config::Kubeconfig {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("kubeconfig");
    std::fs::write(&p, text).unwrap();
    kube::config::Kubeconfig::read_from(&p).unwrap()
}

fn lease(name: &str, holder: &str) -> Lease {
    serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {"holderIdentity": holder, "leaseDurationSeconds": 10, "leaseTransitions": 1},
    }))
    .unwrap()
}

async fn emulator() -> Emulator {
    let emu = Emulator::start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    for ns in ["ns", "vms", "other-ns"] {
        emu.ensure_namespace(ns).unwrap();
    }
    emu
}

#[tokio::test]
async fn crud_with_resource_versions_and_status_errors() {
    let emu = emulator().await;
    let api: Api<Lease> = Api::namespaced(client(&emu, "a").await, "ns");
    let created = api
        .create(&PostParams::default(), &lease("n1", "n1/b"))
        .await
        .unwrap();
    let rv1 = created.metadata.resource_version.clone().unwrap();
    assert_eq!(created.metadata.namespace.as_deref(), Some("ns"));
    assert!(created.metadata.uid.is_some() && created.metadata.creation_timestamp.is_some());

    // create again: 409 AlreadyExists as a Status
    let e = api
        .create(&PostParams::default(), &lease("n1", "x"))
        .await
        .unwrap_err();
    assert!(
        matches!(&e, kube::Error::Api(s) if s.is_already_exists() && s.code == 409),
        "{e:?}"
    );

    // get, 404 Status
    assert_eq!(
        api.get("n1")
            .await
            .unwrap()
            .spec
            .unwrap()
            .holder_identity
            .as_deref(),
        Some("n1/b")
    );
    let e = api.get("nope").await.unwrap_err();
    assert!(
        matches!(&e, kube::Error::Api(s) if s.is_not_found() && s.message == "leases.coordination.k8s.io \"nope\" not found"),
        "{e:?}"
    );

    // merge patch with the right resourceVersion bumps it; with a stale one is a 409 Conflict
    let p = json!({"metadata": {"resourceVersion": rv1}, "spec": {"renewTime": "2026-11-21T22:00:00.000000Z"}});
    let patched = api
        .patch("n1", &PatchParams::default(), &Patch::Merge(&p))
        .await
        .unwrap();
    let rv2 = patched.metadata.resource_version.clone().unwrap();
    assert_ne!(rv1, rv2);
    assert_eq!(
        patched.spec.as_ref().unwrap().holder_identity.as_deref(),
        Some("n1/b"),
        "merge keeps other fields"
    );
    let e = api
        .patch("n1", &PatchParams::default(), &Patch::Merge(&p))
        .await
        .unwrap_err();
    assert!(
        matches!(&e, kube::Error::Api(s) if s.is_conflict()),
        "{e:?}"
    );

    // PUT with a stale resourceVersion: 409; with the current one: ok
    let mut stale = patched.clone();
    stale.metadata.resource_version = Some(rv1.clone());
    assert!(
        matches!(api.replace("n1", &PostParams::default(), &stale).await, Err(kube::Error::Api(s)) if s.is_conflict())
    );
    let mut fresh = patched.clone();
    fresh.spec.as_mut().unwrap().lease_transitions = Some(2);
    let replaced = api
        .replace("n1", &PostParams::default(), &fresh)
        .await
        .unwrap();
    assert_eq!(replaced.spec.unwrap().lease_transitions, Some(2));

    // list carries a resourceVersion; delete; 404 after
    let list = api.list(&Default::default()).await.unwrap();
    assert_eq!(list.items.len(), 1);
    assert!(list.metadata.resource_version.is_some());
    api.delete("n1", &Default::default()).await.unwrap();
    assert!(matches!(api.get("n1").await, Err(kube::Error::Api(s)) if s.is_not_found()));
    emu.shutdown();
}

#[tokio::test]
async fn watch_streams_changes_after_a_resource_version_and_expires_old_ones() {
    let emu = emulator().await;
    let api: Api<Lease> = Api::namespaced(client(&emu, "a").await, "ns");
    let first = api
        .create(&PostParams::default(), &lease("n1", "n1/b"))
        .await
        .unwrap();
    let rv = first.metadata.resource_version.clone().unwrap();
    let mut stream = api
        .watch(&WatchParams::default().timeout(5), &rv)
        .await
        .unwrap()
        .boxed();
    let other: Api<Lease> = Api::namespaced(client(&emu, "b").await, "other-ns");
    other
        .create(&PostParams::default(), &lease("x", "x/b"))
        .await
        .unwrap(); // another namespace: not seen
    api.create(&PostParams::default(), &lease("n2", "n2/b"))
        .await
        .unwrap();
    api.delete("n1", &Default::default()).await.unwrap();
    let mut seen = Vec::new();
    while let Some(ev) = stream.next().await {
        match ev.unwrap() {
            WatchEvent::Bookmark(_) => continue,
            WatchEvent::Added(l) => seen.push(format!("ADDED {}", l.metadata.name.unwrap())),
            WatchEvent::Deleted(l) => seen.push(format!("DELETED {}", l.metadata.name.unwrap())),
            other => seen.push(format!("{other:?}")),
        }
        if seen.len() == 2 {
            break;
        }
    }
    assert_eq!(seen, ["ADDED n2", "DELETED n1"]);

    // a resourceVersion older than the history: 410 Expired, as an ERROR event
    let mut old = api
        .watch(&WatchParams::default(), "1")
        .await
        .unwrap()
        .boxed();
    match old.next().await.unwrap().unwrap() {
        WatchEvent::Error(e) => assert_eq!(e.code, 410),
        other => panic!("expected 410, got {other:?}"),
    }
    emu.shutdown();
}

#[tokio::test]
async fn faults_are_per_client() {
    let emu = emulator().await;
    let a: Api<Lease> = Api::namespaced(client(&emu, "a").await, "ns");
    let b: Api<Lease> = Api::namespaced(client(&emu, "b").await, "ns");
    a.create(&PostParams::default(), &lease("n1", "n1/b"))
        .await
        .unwrap();

    emu.faults(
        "a",
        Faults {
            error_code: Some(500),
            ..Default::default()
        },
    ); // kube itself retries 503s
    let e = a.get("n1").await.unwrap_err();
    assert!(
        matches!(&e, kube::Error::Api(s) if s.code == 500 && s.reason == "InternalError"),
        "{e:?}"
    );
    assert!(b.get("n1").await.is_ok(), "client b unaffected");

    emu.faults(
        "a",
        Faults {
            partition: true,
            ..Default::default()
        },
    );
    assert!(
        tokio::time::timeout(Duration::from_millis(300), a.get("n1"))
            .await
            .is_err(),
        "partitioned request must hang"
    );
    assert!(b.get("n1").await.is_ok());

    emu.faults(
        "a",
        Faults {
            drop: true,
            ..Default::default()
        },
    );
    assert!(a.get("n1").await.is_err());

    emu.faults(
        "a",
        Faults {
            latency_ms: 200,
            ..Default::default()
        },
    );
    let t = std::time::Instant::now();
    a.get("n1").await.unwrap();
    assert!(t.elapsed() >= Duration::from_millis(200));

    emu.faults("a", Faults::default());
    emu.pause();
    assert!(
        tokio::time::timeout(Duration::from_millis(300), b.get("n1"))
            .await
            .is_err(),
        "paused server holds requests"
    );
    emu.resume();
    b.get("n1").await.unwrap();
    assert_eq!(emu.request_counts("b").get("GET"), Some(&4));
    emu.shutdown();
}

#[tokio::test]
async fn control_endpoint_sets_faults_over_http() {
    let emu = emulator().await;
    let put = |body: &str| {
        let body = body.to_string();
        let addr = emu.addr();
        async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
            let req = format!("PUT /emulator/v1/faults/a HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len());
            s.write_all(req.as_bytes()).await.unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).await.unwrap();
            out
        }
    };
    let out = put(r#"{"error_code": 500}"#).await;
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert_eq!(emu.shared.client_faults("a").error_code, Some(500));
    let out = put(r#"{"eror_code": 500}"#).await;
    assert!(
        out.starts_with("HTTP/1.1 400") && out.contains("unknown field"),
        "{out}"
    );
    emu.shutdown();
}

#[tokio::test]
async fn claims_are_served_and_events_are_validated_like_the_real_server() {
    use k8s_openapi::api::core::v1::{Event, PersistentVolumeClaim};
    let emu = emulator().await;
    emu.create(
        "/api/v1/namespaces/vms/persistentvolumeclaims",
        json!({"metadata": {"name": "disk-a"}, "spec": {"volumeName": "pv-1"}}),
    )
    .unwrap();
    let c = client(&emu, "a").await;
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(c.clone(), "vms");
    let pvc = pvcs.get("disk-a").await.unwrap();
    assert!(pvc.metadata.uid.is_some());
    assert!(pvcs.get_opt("gone").await.unwrap().is_none());
    let other: Api<PersistentVolumeClaim> = Api::namespaced(c.clone(), "other");
    assert!(other.get_opt("disk-a").await.unwrap().is_none());

    let events: Api<Event> = Api::namespaced(c, "vms");
    let ev = |v: serde_json::Value| serde_json::from_value::<Event>(v).unwrap();
    // As the core API validates (legacyValidateEvent): with an eventTime, the reporting fields
    // are required and the involved object may live in another namespace; `type` is free.
    let e = events
        .create(
            &PostParams::default(),
            &ev(json!({
                "metadata": {"name": "bad"},
                "involvedObject": {"kind": "PersistentVolumeClaim", "name": "disk-a", "namespace": "other"},
                "reason": "SnapshotFailed", "type": "Fatal", "eventTime": "2026-12-02T10:00:00.000000Z",
                "reportingComponent": "volfence.io/volfenced", "reportingInstance": "n1",
            })),
        )
        .await
        .unwrap_err();
    let kube::Error::Api(s) = e else {
        panic!("{e}")
    };
    assert_eq!((s.code, s.reason.as_str()), (422, "Invalid"));
    assert_eq!(
        s.message,
        "Event \"bad\" is invalid: action: Required value"
    );
    let d = s.details.unwrap();
    assert_eq!((d.kind.as_str(), d.causes.len()), ("Event", 1));
    assert_eq!(d.causes[0].field, "action");
    assert!(emu.events().is_empty());
    // What an agent on node n1 records about a PVC (the shape of the core/v1 Events it sends).
    let now = format!("{:.0}", jiff::Timestamp::now());
    let good = json!({
        "metadata": {"name": "disk-a.1", "namespace": "vms"},
        "involvedObject": {"kind": "PersistentVolumeClaim", "name": "disk-a", "namespace": "vms"},
        "reason": "SnapshotFailed",
        "message": "m",
        "type": "Warning",
        "source": {"component": "volfenced", "host": "n1"},
        "reportingComponent": "volfence.io/volfenced",
        "reportingInstance": "n1",
        "action": "Snapshot",
        "firstTimestamp": now,
        "lastTimestamp": now,
        "eventTime": format!("{:.6}", jiff::Timestamp::now()),
        "count": 1,
    });
    events
        .create(&PostParams::default(), &ev(good))
        .await
        .unwrap();
    assert_eq!(emu.events().len(), 1);
}

/// events.k8s.io/v1 as a Recorder uses it: a create read back through the core API (what
/// `kubectl describe` lists), a series merge patch, and the strict checks of this group.
#[tokio::test]
async fn events_v1_is_the_core_storage_converted_with_the_strict_checks() {
    use k8s_openapi::api::core::v1::Event as CoreEvent;
    use k8s_openapi::api::events::v1::Event;
    let emu = emulator().await;
    let c = client(&emu, "a").await;
    let v1: Api<Event> = Api::namespaced(c.clone(), "default");
    let at = format!("{:.6}", jiff::Timestamp::now());
    let ev: Event = serde_json::from_value(json!({
        "metadata": {"name": "n1.1", "namespace": "default"},
        "eventTime": at,
        "regarding": {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "name": "n1", "namespace": "default"},
        "note": "held by n2",
        "reason": "LeaseConflict",
        "action": "Acquire",
        "type": "Warning",
        "reportingController": "volfence.io/volfenced",
        "reportingInstance": "n1",
    }))
    .unwrap();
    let made = v1.create(&PostParams::default(), &ev).await.unwrap();
    assert_eq!(made.note.as_deref(), Some("held by n2"));
    assert!(made.metadata.uid.is_some());
    let core: Api<CoreEvent> = Api::namespaced(c.clone(), "default");
    let seen = core
        .list(&kube::api::ListParams::default().fields("involvedObject.name=n1"))
        .await
        .unwrap()
        .items;
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].message.as_deref(), Some("held by n2"));
    assert_eq!(
        seen[0].reporting_component.as_deref(),
        Some("volfence.io/volfenced")
    );

    // The Recorder's second occurrence: the same event with a series, as a merge patch.
    let mut again = made.clone();
    again.series =
        Some(serde_json::from_value(json!({"count": 2, "lastObservedTime": at})).unwrap());
    again.metadata.resource_version = None;
    let patched = v1
        .patch("n1.1", &PatchParams::default(), &Patch::Merge(&again))
        .await
        .unwrap();
    assert_eq!(patched.series.unwrap().count, 2);
    // A note is not rewritten, and a series needs a count of at least 2.
    let s = |e: kube::Error| match e {
        kube::Error::Api(s) => *s,
        e => panic!("{e}"),
    };
    let e = s(v1
        .patch(
            "n1.1",
            &PatchParams::default(),
            &Patch::Merge(json!({"note": "other"})),
        )
        .await
        .unwrap_err());
    assert_eq!((e.code, e.reason.as_str()), (422, "Invalid"));
    assert_eq!(
        e.message,
        "Event.events.k8s.io \"n1.1\" is invalid: message: Invalid value: \"other\": field is immutable"
    );
    // Strict on create: no eventTime, a bad type.
    let mut bad = ev.clone();
    bad.metadata.name = Some("n1.2".into());
    bad.event_time = None;
    bad.type_ = Some("Fatal".into());
    let e = s(v1.create(&PostParams::default(), &bad).await.unwrap_err());
    assert_eq!(e.code, 422);
    assert!(
        e.message.contains("eventTime: Required value"),
        "{}",
        e.message
    );
    assert!(e.message.contains("type: Invalid value"), "{}", e.message);
    let e = s(v1.get("gone").await.unwrap_err());
    assert_eq!(e.message, "events.events.k8s.io \"gone\" not found");
    assert_eq!(emu.events().len(), 1);
}
