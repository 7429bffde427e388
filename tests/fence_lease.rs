//! The host lease protocol (fence::lease::KubeLease) over the lease simulator: create, resume,
//! reboot takeover, a node name used twice, compare-and-swap renew, and the operator's messages.

use std::time::Duration;

use volfence::fence::lease::{ApiError, KubeLease};
use volfence::fence::{Acquired, BackendError, Holder, LeaseBackend};
use volfence_testkit::sim::{Net, SimApi, SimServer};

fn holder(node: &str, boot: &str) -> Holder {
    Holder {
        node: node.into(),
        boot_id: boot.into(),
    }
}

fn lease(server: &SimServer, node: &str, boot: &str) -> KubeLease<SimApi> {
    KubeLease::new(
        server.client(node, Net::default()),
        "volfence-system",
        holder(node, boot),
        10,
    )
}

#[tokio::test(start_paused = true)]
async fn create_resume_and_reboot_takeover_after_d() {
    let server = SimServer::new(Duration::from_secs(10), Duration::ZERO);
    let mut a = lease(&server, "n1", "boot1");
    assert_eq!(
        a.acquire(false).await.unwrap(),
        Acquired {
            epoch: 1,
            resumed: false
        }
    );
    a.renew().await.unwrap();
    // agent restart, same boot: same epoch
    let mut a2 = lease(&server, "n1", "boot1");
    assert_eq!(
        a2.acquire(false).await.unwrap(),
        Acquired {
            epoch: 1,
            resumed: true
        }
    );
    // reboot: a new boot id waits for the observer rule, then takes over with epoch + 1
    let mut b = lease(&server, "n1", "boot2");
    assert!(matches!(
        b.acquire(false).await,
        Err(BackendError::HeldByOther { .. })
    ));
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(
        b.acquire(false).await.unwrap(),
        Acquired {
            epoch: 2,
            resumed: false
        }
    );
    // the old incarnation, if it were still alive, finds out on its next renew (once its
    // watch has delivered the takeover; before that a 409 alone extends nothing)
    tokio::time::sleep(Duration::from_millis(1)).await;
    assert!(matches!(a2.renew().await, Err(BackendError::Lost(_))));
}

#[tokio::test(start_paused = true)]
async fn same_node_name_renewed_elsewhere_is_a_conflict_not_a_fight() {
    let server = SimServer::new(Duration::from_secs(10), Duration::ZERO);
    let mut a = lease(&server, "n1", "bootA");
    a.acquire(false).await.unwrap();
    let mut b = lease(&server, "n1", "bootB");
    assert!(matches!(
        b.acquire(false).await,
        Err(BackendError::HeldByOther { .. })
    ));
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(2500)).await;
        a.renew().await.unwrap();
        if let Err(BackendError::Conflict(m)) = b.acquire(false).await {
            assert!(m.contains("two hosts use the node name"), "{m}");
            assert_eq!(server.holder("n1").unwrap(), "n1/bootA");
            assert!(server.events().iter().any(|e| e.contains("LeaseConflict")));
            break;
        }
    }
    let conflicts = || {
        server
            .events()
            .iter()
            .filter(|e| e.contains("LeaseConflict"))
            .count()
    };
    assert_eq!(conflicts(), 1, "conflict never reported");
    // An hour of retries (one per renew interval) is one episode: no new Event ...
    for _ in 0..1400 {
        tokio::time::sleep(Duration::from_millis(2500)).await;
        a.renew().await.unwrap();
        assert!(matches!(
            b.acquire(false).await,
            Err(BackendError::Conflict(_))
        ));
    }
    assert_eq!(conflicts(), 1, "{:?}", server.events());
    // ... until the reminder an hour after the first.
    for _ in 0..40 {
        tokio::time::sleep(Duration::from_millis(2500)).await;
        a.renew().await.unwrap();
        let _ = b.acquire(false).await;
    }
    assert_eq!(conflicts(), 2, "{:?}", server.events());
}

#[test]
fn a_missing_namespace_and_a_forbidden_verb_say_what_fixes_them() {
    let server = SimServer::new(Duration::from_secs(10), Duration::ZERO);
    let l = lease(&server, "n1", "boot1");
    let m = l.explain(&ApiError::NamespaceMissing("kube-node-lease".into()));
    assert!(
        m.contains("namespace kube-node-lease does not exist"),
        "{m}"
    );
    assert!(
        m.contains("kubectl create namespace") && m.contains("lease_namespace"),
        "{m}"
    );
    let m = l.explain(&ApiError::Forbidden(
        r#"leases.coordination.k8s.io is forbidden: User "u" cannot list resource "leases""#.into(),
    ));
    assert!(
        m.contains("cannot list resource") && m.contains("get, list, watch"),
        "{m}"
    );
}

#[tokio::test(start_paused = true)]
async fn renew_is_compare_and_swap() {
    let server = SimServer::new(Duration::from_secs(10), Duration::ZERO);
    let mut a = lease(&server, "n1", "boot1");
    a.acquire(false).await.unwrap();
    // an unrelated writer bumps the resourceVersion: one 409, then the retry succeeds
    server.touch("n1");
    tokio::time::sleep(Duration::from_millis(1)).await;
    assert!(matches!(a.renew().await, Err(BackendError::Unavailable(m)) if m.contains("409")));
    a.renew().await.unwrap();
    server.delete("n1");
    assert!(matches!(a.renew().await, Err(BackendError::Lost(_))));
}
