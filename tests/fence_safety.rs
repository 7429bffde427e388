//! Randomized safety simulation of the fence protocol.
//!
//! Three hosts run the real `FenceLoop`, `KubeLease` and takeover (`fence::takeover::take_over`)
//! code against the simulated API server under tokio's paused clock. Each host initially owns one
//! role (its volumes). A host takes over another host's role only through the product's protocol:
//! its own guard is valid, its observer says the other host's lease has not changed for D
//! (+ grace), a consistent read made after the claim was read confirms that, and a
//! compare-and-swap on the claim's version moves the role. Random partitions, latency spikes, freezes (SIGSTOP), agent
//! restarts and reboots are injected.
//!
//! Property: at no instant do two hosts hold a valid guard for the same role (a host "holds"
//! a role when it took it in its current epoch and its guard is valid now).
//!
//! `VOLFENCE_SIM_SCHEDULES` (default 150) sets the number of schedules; `VOLFENCE_SIM_SEED`
//! the first seed. CI runs the default; run thousands locally:
//! `VOLFENCE_SIM_SCHEDULES=5000 cargo test --release --test fence_safety -- --nocapture`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use volfence::config::LeaseLossAction;
use volfence::fence::lease::KubeLease;
use volfence::fence::takeover::{take_over, Takeover};
use volfence::fence::{Fence, FenceLoop, Holder, LogOnlyLoss, Timing};
use volfence_testkit::sim::{Net, Rng, SimApi, SimServer};

const T: Timing = Timing {
    lease_duration: Duration::from_secs(10),
    renew_interval: Duration::from_millis(2500),
    safety_margin: Duration::from_secs(2),
};
const HOSTS: usize = 3;
const RUN: Duration = Duration::from_secs(150);

/// Roles a host took, with the epoch it took them in.
type Roles = Arc<Mutex<HashMap<String, u64>>>;

struct Agent {
    api: SimApi,
    fence: Fence,
    roles: Roles,
    stop: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

fn trace(msg: impl FnOnce() -> String) {
    if std::env::var_os("VOLFENCE_SIM_TRACE").is_some() {
        println!("{}", msg());
    }
}

fn node(i: usize) -> String {
    format!("host-{i}")
}

fn role(i: usize) -> String {
    format!("vol-{i}")
}

#[derive(Default)]
struct Stats {
    violations: Vec<String>,
    takeovers: u64,
    /// (time from the victim's cut to takeover, margin by which it had already fenced itself)
    failovers: Vec<(Duration, Duration)>,
}

/// Shared between agents: when each host's guard validity last ended, and when it was cut off
/// (partitioned or frozen; present only while the cut lasts).
#[derive(Default)]
struct World {
    cut_at: HashMap<String, Instant>,
    /// Latest validity of each holding, by (node, epoch).
    valid_until: HashMap<(String, u64), Instant>,
    /// The epoch in which each node took each role.
    role_epoch: HashMap<(String, String), u64>,
}

fn start_agent(
    server: &SimServer,
    i: usize,
    boot: u32,
    net: Net,
    first_start: bool,
    stats: Arc<Mutex<Stats>>,
    world: Arc<Mutex<World>>,
) -> Agent {
    let api = server.client(&node(i), net);
    let holder = Holder {
        node: node(i),
        boot_id: format!("boot{boot}"),
    };
    let backend = KubeLease::new(api.clone(), "volfence-system", holder.clone(), 10);
    let (lp, fence) = FenceLoop::new(
        backend,
        holder,
        T,
        LeaseLossAction::Disconnect,
        Box::new(|| {}),
        Box::new(LogOnlyLoss),
    );
    let stop = CancellationToken::new();
    let roles: Roles = Arc::default();
    let mut tasks = vec![tokio::spawn(lp.run(stop.clone()))];

    // Record every validity this host is given (for the margin measurement).
    let (w, mut rx, name) = (world.clone(), fence.subscribe(), node(i));
    tasks.push(tokio::spawn(async move {
        loop {
            let st = rx.borrow_and_update().clone();
            trace(|| {
                format!(
                    "{:?} {name} {} epoch {} valid_until {:?} {}",
                    Instant::now(),
                    st.state,
                    st.epoch,
                    st.valid_until,
                    st.message
                )
            });
            if let Some(vu) = st.valid_until {
                let mut w = w.lock().unwrap();
                let e = w.valid_until.entry((name.clone(), st.epoch)).or_insert(vu);
                *e = (*e).max(vu);
            }
            if rx.changed().await.is_err() {
                return;
            }
        }
    }));

    // The role logic: keep own role (first start only), take over expired hosts' roles.
    let (a, f, r) = (api.clone(), fence.clone(), roles.clone());
    tasks.push(tokio::spawn(async move {
        let mut own_taken = !first_start;
        loop {
            tokio::time::sleep(Duration::from_millis(50)).await;
            if a.net().frozen {
                continue; // a stopped process decides nothing
            }
            let Ok(guard) = f.guard() else { continue };
            if !own_taken {
                r.lock().unwrap().insert(role(i), guard.epoch());
                world
                    .lock()
                    .unwrap()
                    .role_epoch
                    .insert((node(i), role(i)), guard.epoch());
                own_taken = true;
            }
            for x in 0..HOSTS {
                if x == i {
                    continue;
                }
                let victim = node(x);
                // Move every role the victim owns, by the product's takeover protocol.
                for k in 0..HOSTS {
                    let rl = role(k);
                    let g = match take_over(&a, &guard, &rl, &[&victim], &node(i)).await {
                        Ok(Takeover::Taken(g)) => g,
                        _ => continue,
                    };
                    let now = Instant::now();
                    r.lock().unwrap().insert(rl.clone(), g.epoch());
                    trace(|| {
                        format!(
                            "{now:?} {} took {rl} from {victim} in epoch {}",
                            node(i),
                            g.epoch()
                        )
                    });
                    let mut st = stats.lock().unwrap();
                    st.takeovers += 1;
                    // The victim's holding that had the role must be over, by at least M.
                    let mut w = world.lock().unwrap();
                    let holding = w
                        .role_epoch
                        .get(&(victim.clone(), rl.clone()))
                        .map(|e| (victim.clone(), *e));
                    if let Some(vu) = holding.and_then(|h| w.valid_until.get(&h)).copied() {
                        if vu > now {
                            st.violations.push(format!(
                                "took {rl} from {victim} {:?} before its holding's validity ended",
                                vu - now
                            ));
                        }
                        if let Some(cut) = w.cut_at.get(&victim) {
                            st.failovers.push((
                                now.saturating_duration_since(*cut),
                                now.saturating_duration_since(vu),
                            ));
                        }
                    }
                    w.role_epoch.insert((node(i), rl.clone()), g.epoch());
                }
            }
        }
    }));
    Agent {
        api,
        fence,
        roles,
        stop,
        tasks,
    }
}

impl Agent {
    fn crash(self) {
        self.stop.cancel();
        for t in self.tasks {
            t.abort();
        }
    }
}

/// Holders of each role with a valid guard in the epoch they took it.
fn holders(agents: &[Option<Agent>]) -> HashMap<String, Vec<usize>> {
    let mut out: HashMap<String, Vec<usize>> = HashMap::new();
    for (i, a) in agents.iter().enumerate() {
        let Some(a) = a else { continue };
        let Ok(g) = a.fence.guard() else { continue };
        if g.check().is_err() {
            continue;
        }
        for (r, e) in a.roles.lock().unwrap().iter() {
            if *e == g.epoch() {
                out.entry(r.clone()).or_default().push(i);
            }
        }
    }
    out
}

async fn schedule(seed: u64, stats: Arc<Mutex<Stats>>) {
    let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let server = SimServer::new(T.lease_duration, Duration::ZERO);
    for i in 0..HOSTS {
        server.set_claim(&role(i), &node(i));
    }
    let world: Arc<Mutex<World>> = Arc::default();
    let nets: Vec<Arc<Mutex<Net>>> = (0..HOSTS)
        .map(|_| {
            Arc::new(Mutex::new(Net {
                latency: Duration::from_millis(rng.below(30)),
                ..Net::default()
            }))
        })
        .collect();
    let mut boots = [0u32; HOSTS];
    let mut agents: Vec<Option<Agent>> = (0..HOSTS)
        .map(|i| {
            Some(start_agent(
                &server,
                i,
                0,
                nets[i].lock().unwrap().clone(),
                true,
                stats.clone(),
                world.clone(),
            ))
        })
        .collect();

    let start = Instant::now();
    let mut next_fault = start + rng.millis(3000, 15000);
    let mut reverts: Vec<(Instant, usize, Net)> = Vec::new();
    while Instant::now() - start < RUN {
        tokio::time::sleep(Duration::from_millis(10)).await;
        let now = Instant::now();
        // check the property
        for (r, hs) in holders(&agents) {
            if hs.len() > 1 {
                for h in &hs {
                    let a = agents[*h].as_ref().unwrap();
                    let st = a.fence.status();
                    trace(|| {
                        format!(
                            "VIOLATION {r}: host-{h} epoch {} state {} valid_until {:?} roles {:?}",
                            st.epoch,
                            st.state,
                            st.valid_until,
                            a.roles.lock().unwrap()
                        )
                    });
                }
                stats.lock().unwrap().violations.push(format!(
                    "seed {seed}: role {r} held by hosts {hs:?} at {:?}",
                    now - start
                ));
            }
        }
        // revert faults whose time has come
        reverts.retain(|(at, i, net)| {
            if *at <= now {
                world.lock().unwrap().cut_at.remove(&node(*i));
                *nets[*i].lock().unwrap() = net.clone();
                if let Some(a) = &agents[*i] {
                    let n = net.clone();
                    a.api.set_net(|x| *x = n);
                }
                false
            } else {
                true
            }
        });
        if now < next_fault {
            continue;
        }
        next_fault = now + rng.millis(500, 8000);
        let i = rng.below(HOSTS as u64) as usize;
        if reverts.iter().any(|(_, h, _)| *h == i) {
            continue; // one fault per host at a time, so a revert restores the healthy state
        }
        let base = nets[i].lock().unwrap().clone();
        let dur = rng.millis(500, 30000);
        trace(|| format!("{now:?} fault on {} for {dur:?}", node(i)));
        let mut faulty = base.clone();
        match rng.below(6) {
            0 | 1 => {
                faulty.partitioned = true;
                world.lock().unwrap().cut_at.insert(node(i), now);
            }
            2 => faulty.latency = rng.millis(100, 6000),
            3 => {
                faulty.frozen = true;
                world.lock().unwrap().cut_at.insert(node(i), now);
            }
            4 => {
                // agent crash + restart, same boot
                if let Some(a) = agents[i].take() {
                    a.crash();
                }
                let a = start_agent(
                    &server,
                    i,
                    boots[i],
                    base.clone(),
                    false,
                    stats.clone(),
                    world.clone(),
                );
                agents[i] = Some(a);
                continue;
            }
            _ => {
                // reboot: new boot id, after a down time
                if let Some(a) = agents[i].take() {
                    a.crash();
                }
                tokio::time::sleep(rng.millis(0, 5000)).await;
                boots[i] += 1;
                let a = start_agent(
                    &server,
                    i,
                    boots[i],
                    base.clone(),
                    false,
                    stats.clone(),
                    world.clone(),
                );
                agents[i] = Some(a);
                continue;
            }
        }
        *nets[i].lock().unwrap() = faulty.clone();
        if let Some(a) = &agents[i] {
            a.api.set_net(|x| *x = faulty);
        }
        reverts.push((now + dur, i, base));
    }
    for a in agents.into_iter().flatten() {
        a.crash();
    }
}

fn run_schedules(first: u64, n: u64) -> Stats {
    let stats = Arc::new(Mutex::new(Stats::default()));
    for seed in first..first + n {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap();
        rt.block_on(schedule(seed, stats.clone()));
    }
    Arc::try_unwrap(stats).ok().unwrap().into_inner().unwrap()
}

#[test]
fn no_two_hosts_ever_hold_a_valid_guard_for_the_same_role() {
    let n: u64 = std::env::var("VOLFENCE_SIM_SCHEDULES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(150);
    let first: u64 = std::env::var("VOLFENCE_SIM_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    let t0 = std::time::Instant::now();
    let stats = run_schedules(first, n);
    let min_margin = stats.failovers.iter().map(|f| f.1).min();
    println!(
        "fence safety simulation: {n} schedules (seeds {first}..{}), {} takeovers, {} violations, smallest margin {:?}, {:.1}s",
        first + n,
        stats.takeovers,
        stats.violations.len(),
        min_margin,
        t0.elapsed().as_secs_f64()
    );
    assert!(
        stats.violations.is_empty(),
        "{} violations, first: {:?}",
        stats.violations.len(),
        &stats.violations[..stats.violations.len().min(5)]
    );
    // the faults must actually provoke takeovers, or the test proves nothing
    assert!(
        stats.takeovers >= n / 4,
        "only {} takeovers in {n} schedules",
        stats.takeovers
    );
    if let Some(m) = min_margin {
        assert!(
            m >= T.safety_margin - Duration::from_millis(200),
            "a host was taken over only {m:?} after it fenced itself"
        );
    }
}
