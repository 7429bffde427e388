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

/// An API server for `take_over` alone: leases and one claim, with a watch cache that sees a
/// change only when told (`sync`), and a hook that runs between the claim read and the rest, as
/// another host or a late watch would.
struct ClaimServer {
    inner: Mutex<ClaimState>,
    observer: Mutex<observer::Observer>,
}

#[derive(Default, Clone)]
struct ClaimState {
    /// name → (resourceVersion, holder): what a GET returns.
    leases: std::collections::BTreeMap<String, (u64, String)>,
    /// What the watch cache holds.
    cached: std::collections::BTreeMap<String, (u64, String)>,
    /// (holder, version).
    claim: Option<(String, u64)>,
    rv: u64,
    /// Runs once, right after the claim is read.
    after_claim_read: Option<fn(&mut ClaimState)>,
    swaps: usize,
}

impl ClaimState {
    fn renew(&mut self, name: &str) {
        self.rv += 1;
        let holder = format!("{name}/boot");
        self.leases.insert(name.into(), (self.rv, holder));
    }
}

impl ClaimServer {
    fn new(state: ClaimState) -> ClaimServer {
        let s = ClaimServer {
            inner: Mutex::new(state),
            observer: Mutex::new(observer::Observer::new(
                Duration::from_secs(10),
                Duration::from_secs(1),
            )),
        };
        s.sync();
        s
    }
    /// The watch delivers what the server has.
    fn sync(&self) {
        let mut st = self.inner.lock().unwrap();
        st.cached = st.leases.clone();
        for (n, (rv, h)) in &st.cached {
            self.observer
                .lock()
                .unwrap()
                .observe(n, &rv.to_string(), Some(h), Instant::now());
        }
    }
    fn record(name: &str, (rv, holder): &(u64, String)) -> LeaseRecord {
        LeaseRecord {
            name: name.into(),
            resource_version: rv.to_string(),
            holder: Some(holder.clone()),
            lease_duration_seconds: 10,
            lease_transitions: 1,
            acquire_time: None,
            renew_time: None,
        }
    }
}

impl LeaseApi for ClaimServer {
    fn synced(&self) -> bool {
        true
    }
    fn cached(&self, name: &str) -> Option<LeaseRecord> {
        let st = self.inner.lock().unwrap();
        st.cached.get(name).map(|l| Self::record(name, l))
    }
    async fn read(&self, name: &str) -> Result<Option<LeaseRecord>, ApiError> {
        let st = self.inner.lock().unwrap();
        let got = st.leases.get(name).map(|l| Self::record(name, l));
        if let Some(r) = &got {
            self.observer.lock().unwrap().observe(
                name,
                &r.resource_version,
                r.holder.as_deref(),
                Instant::now(),
            );
        }
        Ok(got)
    }
    fn verdict(&self, name: &str) -> observer::Verdict {
        self.observer.lock().unwrap().verdict(name, Instant::now())
    }
    async fn create(&self, _: &LeaseRecord) -> Result<LeaseRecord, ApiError> {
        unreachable!("the takeover writes no lease")
    }
    async fn replace(&self, _: &LeaseRecord) -> Result<LeaseRecord, ApiError> {
        unreachable!("the takeover writes no lease")
    }
    fn now_rfc3339(&self) -> String {
        String::new()
    }
    async fn event(&self, _: &str, _: &str, _: &str, _: bool) {}
}

impl takeover::ClaimApi for ClaimServer {
    async fn read_claim(&self, _: &str) -> Result<Option<takeover::ClaimRead>, ApiError> {
        let mut st = self.inner.lock().unwrap();
        let got = st.claim.clone().map(|(holder, v)| takeover::ClaimRead {
            holder,
            version: v.to_string(),
        });
        if let Some(hook) = st.after_claim_read.take() {
            hook(&mut st);
        }
        Ok(got)
    }
    async fn swap_claim(&self, _: &str, version: &str, new_holder: &str) -> Result<(), ApiError> {
        let mut st = self.inner.lock().unwrap();
        match st.claim.clone() {
            Some((_, v)) if v.to_string() == version => {
                st.rv += 1;
                st.claim = Some((new_holder.into(), st.rv));
                st.swaps += 1;
                Ok(())
            }
            _ => Err(ApiError::Conflict),
        }
    }
}

/// Every way a takeover attempt can end without moving the claim, each with the claim left as it
/// was, and the one way it moves it.
#[tokio::test(start_paused = true)]
async fn take_over_moves_the_claim_only_from_a_silent_holder_with_our_holding() {
    use takeover::{take_over, Takeover};
    let r = rig(Duration::from_millis(50));
    wait_state(&r.fence, FenceState::Held).await;
    let guard = r.fence.guard().unwrap();
    let base = {
        let mut st = ClaimState::default();
        st.renew("x");
        st.renew("z");
        st.rv += 1;
        st.claim = Some(("x".into(), st.rv));
        st
    };
    let attempt = |s: ClaimServer| {
        let g = &guard;
        async move {
            let out = take_over(&s, g, "vol-a", &["x"], "n1").await.unwrap();
            (out, s.inner.lock().unwrap().clone())
        }
    };
    // Every server's watch saw x at t0 (now); `hook` runs right after the claim read.
    let server = |claim: Option<(String, u64)>, hook: Option<fn(&mut ClaimState)>| {
        let mut st = base.clone();
        st.claim = claim;
        st.after_claim_read = hook;
        ClaimServer::new(st)
    };
    let xs = base.claim.clone();
    let (absent, others) = (server(None, None), server(Some(("z".into(), 3)), None));
    // x speaks after the claim was read: the cache has not seen it, the consistent read has.
    let spoke = server(xs.clone(), Some(|st| st.renew("x")));
    // The claim moves between our read and our swap (x re-stamped it): 409, re-decide.
    let raced = server(
        xs.clone(),
        Some(|st| {
            st.rv += 1;
            st.claim = Some(("x".into(), st.rv));
        }),
    );
    let (silent, fenced) = (server(xs.clone(), None), server(xs.clone(), None));

    // x renewed just now: alive by our observer.
    let (out, st) = attempt(server(xs.clone(), None)).await;
    assert!(matches!(out, Takeover::HolderAlive), "{out:?}");
    assert_eq!(st.swaps, 0);

    // From here x has been silent for D + grace (10 s + 1 s).
    tokio::time::sleep(Duration::from_secs(12)).await;
    for s in [absent, others] {
        let (out, st) = attempt(s).await;
        assert!(matches!(out, Takeover::NotVictims), "{out:?}");
        assert_eq!(st.swaps, 0);
    }
    let (out, st) = attempt(spoke).await;
    assert!(matches!(out, Takeover::HolderSpoke), "{out:?}");
    assert_eq!((st.swaps, st.claim.unwrap().0.as_str()), (0, "x"));
    let (out, st) = attempt(raced).await;
    assert!(matches!(out, Takeover::Raced), "{out:?}");
    assert_eq!((st.swaps, st.claim.unwrap().0.as_str()), (0, "x"));

    // Silent holder, our holding: taken, with a guard of the same epoch.
    let (out, st) = attempt(silent).await;
    let Takeover::Taken(fresh) = out else {
        panic!("{out:?}")
    };
    assert_eq!(fresh.epoch(), guard.epoch());
    assert_eq!((st.swaps, st.claim.unwrap().0.as_str()), (1, "n1"));

    // Our holding ended: nothing is swapped, whatever the claim says.
    r.store.lock().unwrap().reachable = false;
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert_eq!(r.fence.status().state, FenceState::Fenced);
    let (out, st) = attempt(fenced).await;
    assert!(matches!(out, Takeover::Fenced(_)), "{out:?}");
    assert_eq!(st.swaps, 0);
    r.shutdown.cancel();
    r.task.await.unwrap();
}
