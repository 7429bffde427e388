//! Lease state machine under tokio's paused clock, against an in-memory lease store that behaves
//! like one: a single owner, an epoch bumped on every new holding, and an "unreachable" switch.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::*;

#[derive(Default)]
struct Store {
    owner: Option<String>,
    epoch: u64,
    reachable: bool,
    renews: usize,
}

#[derive(Clone)]
struct MemLease {
    me: String,
    store: Arc<Mutex<Store>>,
    latency: Duration,
}

impl LeaseBackend for MemLease {
    fn describe(&self) -> String {
        "memory".into()
    }
    async fn acquire(&mut self, after_loss: bool) -> Result<Acquired, BackendError> {
        tokio::time::sleep(self.latency).await;
        let mut s = self.store.lock().unwrap();
        if !s.reachable {
            return Err(BackendError::Unavailable("unreachable".into()));
        }
        match s.owner.clone() {
            Some(o) if o == self.me && !after_loss => Ok(Acquired {
                epoch: s.epoch,
                resumed: true,
            }),
            Some(o) if o != self.me => Err(BackendError::HeldByOther { holder: o }),
            _ => {
                s.owner = Some(self.me.clone());
                s.epoch += 1;
                Ok(Acquired {
                    epoch: s.epoch,
                    resumed: false,
                })
            }
        }
    }
    async fn renew(&mut self) -> Result<(), BackendError> {
        tokio::time::sleep(self.latency).await;
        let mut s = self.store.lock().unwrap();
        if !s.reachable {
            return Err(BackendError::Unavailable("unreachable".into()));
        }
        if s.owner.as_deref() != Some(&self.me) {
            return Err(BackendError::Lost("taken over".into()));
        }
        s.renews += 1;
        Ok(())
    }
    async fn release(&mut self) {}
}

struct Rig {
    fence: Fence,
    store: Arc<Mutex<Store>>,
    beats: Arc<AtomicUsize>,
    losses: Arc<Mutex<Vec<(u64, Instant)>>>,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

struct RecordLoss(Arc<Mutex<Vec<(u64, Instant)>>>);
impl LossHandler for RecordLoss {
    fn lease_lost(&self, epoch: u64, _action: LeaseLossAction) -> BoxedUnit {
        self.0.lock().unwrap().push((epoch, Instant::now()));
        Box::pin(async {})
    }
}

const T: Timing = Timing {
    lease_duration: Duration::from_secs(10),
    renew_interval: Duration::from_millis(2500),
    safety_margin: Duration::from_secs(2),
};

fn rig(latency: Duration) -> Rig {
    let store = Arc::new(Mutex::new(Store {
        reachable: true,
        ..Default::default()
    }));
    let backend = MemLease {
        me: "n1/boot".into(),
        store: store.clone(),
        latency,
    };
    let beats = Arc::new(AtomicUsize::new(0));
    let b = beats.clone();
    let losses = Arc::new(Mutex::new(Vec::new()));
    let (lp, fence) = FenceLoop::new(
        backend,
        Holder {
            node: "n1".into(),
            boot_id: "boot".into(),
        },
        T,
        LeaseLossAction::Disconnect,
        Box::new(move || {
            b.fetch_add(1, Ordering::SeqCst);
        }),
        Box::new(RecordLoss(losses.clone())),
    );
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(lp.run(shutdown.clone()));
    Rig {
        fence,
        store,
        beats,
        losses,
        shutdown,
        task,
    }
}

async fn wait_state(f: &Fence, want: FenceState) {
    let mut rx = f.subscribe();
    rx.wait_for(|s| s.state == want).await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn acquire_gives_guards_with_the_epoch_and_renews_keep_it_valid() {
    let r = rig(Duration::from_millis(50));
    assert!(matches!(
        r.fence.guard(),
        Err(FenceError::NotHeld {
            state: FenceState::Acquiring
        })
    ));
    wait_state(&r.fence, FenceState::Held).await;
    let g = r.fence.guard().unwrap();
    assert_eq!((g.epoch(), g.node(), g.incarnation()), (1, "n1", "boot"));
    g.check().unwrap();
    tokio::time::sleep(Duration::from_secs(60)).await;
    // 60 s of renewing every 2.5 s: validity kept moving, guards still granted
    assert_eq!(r.fence.status().state, FenceState::Held);
    let renews = r.store.lock().unwrap().renews;
    assert!((23..=24).contains(&renews), "{renews} renews in 60 s");
    assert_eq!(r.beats.load(Ordering::SeqCst), renews + 1);
    // the first guard's deadline has passed: it is worthless even though the lease is held
    assert_eq!(g.check(), Err(FenceError::Expired { epoch: 1 }));
    r.fence.guard().unwrap().check().unwrap();
    r.shutdown.cancel();
    r.task.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn unreachable_backend_fences_at_last_send_plus_d_minus_m_and_cancels_guards() {
    let r = rig(Duration::from_millis(100));
    wait_state(&r.fence, FenceState::Held).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let beats_before = r.beats.load(Ordering::SeqCst);
    r.store.lock().unwrap().reachable = false;
    let cut = Instant::now();
    // taken after the last successful renew: its deadline is the lease's final validity
    let guard = r.fence.guard().unwrap();
    // The last successful renew was sent at or before `cut`; validity ends ≤ cut + D − M.
    wait_state(&r.fence, FenceState::Expiring).await;
    assert!(r.fence.guard().is_ok(), "still valid while expiring");
    let err = guard.invalidated().await;
    assert!(
        matches!(
            err,
            FenceError::Cancelled { epoch: 1 } | FenceError::Expired { epoch: 1 }
        ),
        "{err}"
    );
    wait_state(&r.fence, FenceState::Fenced).await;
    let fenced_at = Instant::now();
    assert_eq!(guard.check(), Err(FenceError::Cancelled { epoch: 1 }));
    // the last successful renew was sent in (cut − R − latency, cut]
    let d_m = T.lease_duration - T.safety_margin;
    assert!(
        fenced_at - cut <= d_m,
        "fenced {:?} after the cut",
        fenced_at - cut
    );
    assert!(
        fenced_at - cut >= d_m - T.renew_interval - Duration::from_millis(100),
        "fenced {:?} after the cut",
        fenced_at - cut
    );
    assert_eq!(r.fence.status().state, FenceState::Fenced);
    assert!(matches!(
        r.fence.guard(),
        Err(FenceError::NotHeld {
            state: FenceState::Fenced
        })
    ));
    assert_eq!(r.losses.lock().unwrap().len(), 1);
    assert_eq!(
        r.beats.load(Ordering::SeqCst),
        beats_before,
        "no heartbeat without a renew"
    );

    // Back: a new holding, with a new epoch.
    r.store.lock().unwrap().reachable = true;
    wait_state(&r.fence, FenceState::Held).await;
    assert_eq!(r.fence.guard().unwrap().epoch(), 2);
    r.shutdown.cancel();
    r.task.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn slow_renews_do_not_extend_validity_beyond_send_time() {
    // each request takes 2 s: validity must be measured from the send instant, not the reply
    let latency = Duration::from_secs(2);
    let r = rig(latency);
    wait_state(&r.fence, FenceState::Held).await;
    let mut rx = r.fence.subscribe();
    for _ in 0..20 {
        rx.changed().await.unwrap();
        let until = rx.borrow().valid_until.expect("held");
        assert!(until + latency <= Instant::now() + T.lease_duration - T.safety_margin);
    }
    assert_eq!(r.fence.status().state, FenceState::Held);
    r.shutdown.cancel();
    r.task.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn requests_slower_than_validity_never_give_a_guard() {
    // replies arrive after D − M: the lease would already be invalid when they land
    let r = rig(Duration::from_secs(9));
    tokio::time::sleep(Duration::from_secs(120)).await;
    assert!(r.fence.guard().is_err());
    assert_ne!(r.fence.status().state, FenceState::Held);
    r.shutdown.cancel();
    r.task.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn takeover_by_another_holder_is_a_loss() {
    let r = rig(Duration::ZERO);
    wait_state(&r.fence, FenceState::Held).await;
    let g = r.fence.guard().unwrap();
    r.store.lock().unwrap().owner = Some("n2/other".into());
    assert_eq!(g.invalidated().await, FenceError::Cancelled { epoch: 1 });
    assert_eq!(r.fence.status().state, FenceState::Fenced);
    r.shutdown.cancel();
    r.task.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn shutdown_cancels_guards_and_ends_the_loop() {
    let r = rig(Duration::ZERO);
    wait_state(&r.fence, FenceState::Held).await;
    let g = r.fence.guard().unwrap();
    r.shutdown.cancel();
    r.task.await.unwrap();
    assert_eq!(g.check(), Err(FenceError::Cancelled { epoch: 1 }));
    assert!(r.fence.guard().is_err());
}

#[tokio::test(start_paused = true)]
async fn a_lapsed_previous_incarnation_is_never_resumed() {
    let store = Arc::new(Mutex::new(Store {
        reachable: true,
        owner: Some("n1/boot".into()),
        epoch: 4,
        ..Default::default()
    }));
    let backend = MemLease {
        me: "n1/boot".into(),
        store: store.clone(),
        latency: Duration::ZERO,
    };
    let (lp, fence) = FenceLoop::new(
        backend,
        Holder {
            node: "n1".into(),
            boot_id: "boot".into(),
        },
        T,
        LeaseLossAction::Disconnect,
        Box::new(|| {}),
        Box::new(LogOnlyLoss),
    );
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(lp.forbid_resume().run(shutdown.clone()));
    wait_state(&fence, FenceState::Held).await;
    assert_eq!(
        fence.status().epoch,
        5,
        "same holder, but its validity lapsed: a new epoch"
    );
    shutdown.cancel();
    task.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn long_operations_follow_renewals_and_stop_at_loss() {
    let r = rig(Duration::from_millis(50));
    wait_state(&r.fence, FenceState::Held).await;
    let g = r.fence.guard().unwrap();
    // A 60 s operation outlives every single guard's deadline, but not the holding.
    let lost = tokio::time::timeout(Duration::from_secs(60), g.until_lost()).await;
    assert!(
        lost.is_err(),
        "until_lost fired while the lease was renewed: {lost:?}"
    );
    assert_eq!(g.check(), Err(FenceError::Expired { epoch: 1 }));
    let fresh = g.refresh().unwrap();
    assert_eq!(fresh.epoch(), 1);
    fresh.check().unwrap();
    // The lease is lost: the long wait ends no later than the fence, and no refresh is granted.
    r.store.lock().unwrap().reachable = false;
    let cut = Instant::now();
    let err = g.until_lost().await;
    assert!(
        matches!(
            err,
            FenceError::Cancelled { epoch: 1 } | FenceError::NotHeld { .. }
        ),
        "{err}"
    );
    assert!(Instant::now() - cut <= T.lease_duration - T.safety_margin);
    assert!(g.refresh().is_err());
    // A later holding (a new epoch) does not revive an old guard.
    r.store.lock().unwrap().reachable = true;
    r.store.lock().unwrap().owner = None;
    let mut rx = r.fence.subscribe();
    rx.wait_for(|s| s.state == FenceState::Held && s.epoch == 2)
        .await
        .unwrap();
    assert_eq!(g.refresh().unwrap_err(), FenceError::Cancelled { epoch: 1 });
    r.shutdown.cancel();
    r.task.await.unwrap();
}
