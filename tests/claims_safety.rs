//! Randomized safety simulation of the volume claims.
//!
//! Three hosts run the product's fence (`FenceLoop`, `KubeLease`), claims (`Claims::acquire`,
//! `begin_release`, `release`), reconciliation at every new holding (`claims::reconcile`) and
//! migration windows (`claims::window`) against the simulated API server under tokio's paused
//! clock, over ten volumes. Each host watches only its own lease, as the agent does. Random
//! connects, disconnects and live migrations; injected partitions, latency spikes, freezes
//! (SIGSTOP), agent crashes (devices stay attached), reboots (devices gone) and API errors (429,
//! 503, spurious 409) on claim requests.
//!
//! Property: at no instant do two hosts both hold a valid guard and an attached volume whose
//! claim they hold in that guard's epoch — except the two holders of a migration the server's
//! claim declares.
//!
//! `VOLFENCE_SIM_SCHEDULES` (default 150) sets the number of schedules; `VOLFENCE_SIM_SEED` the
//! first seed. Thousands locally:
//! `VOLFENCE_SIM_SCHEDULES=2000 cargo test --release --test claims_safety -- --nocapture`.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use volfence::claims::reconcile::{self, Attachments};
use volfence::claims::{window, Acquired, ClaimError, Claims, VolumeClaims};
use volfence::config::LeaseLossAction;
use volfence::fence::lease::KubeLease;
use volfence::fence::{BoxedUnit, Fence, FenceLoop, Holder, LossHandler, Timing};
use volfence_testkit::sim::{Net, Rng, SimApi, SimServer};

const T: Timing = Timing {
    lease_duration: Duration::from_secs(10),
    renew_interval: Duration::from_millis(2500),
    safety_margin: Duration::from_secs(2),
};
const HOSTS: usize = 3;
const VOLUMES: usize = 10;
const RUN: Duration = Duration::from_secs(150);
const WINDOW: Duration = Duration::from_secs(20);

fn node(i: usize) -> String {
    format!("host-{i}")
}

fn volume(k: usize) -> String {
    format!("vol-{k}")
}

/// A host's attached volumes: they survive an agent crash, not a reboot.
#[derive(Default)]
struct Devices(Mutex<HashSet<String>>);

impl Attachments for Devices {
    fn attached(&self) -> Vec<String> {
        self.0.lock().unwrap().iter().cloned().collect()
    }
    fn report_lost(&self, _id: &str) {}
    fn detach<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            self.0.lock().unwrap().remove(id);
            Ok(())
        })
    }
}

/// `on_lease_loss = "disconnect"`: every device goes when the holding ends.
struct DetachAll(Arc<Devices>);

impl LossHandler for DetachAll {
    fn lease_lost(&self, _epoch: u64, _action: LeaseLossAction) -> BoxedUnit {
        let d = self.0.clone();
        Box::pin(async move { d.0.lock().unwrap().clear() })
    }
}

#[derive(Default)]
struct Stats {
    violations: Vec<String>,
    connects: u64,
    conflicts: u64,
    joined: u64,
    takeovers: u64,
    completed: u64,
    expired: u64,
    schedules: u64,
}

struct Agent {
    api: SimApi,
    fence: Fence,
    claims: Arc<dyn VolumeClaims>,
    stop: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Agent {
    fn crash(self) {
        self.stop.cancel();
        for t in self.tasks {
            t.abort();
        }
    }
}

fn start_agent(
    server: &SimServer,
    i: usize,
    boot: u32,
    net: Net,
    devices: Arc<Devices>,
    mut rng: Rng,
    stats: Arc<Mutex<Stats>>,
) -> Agent {
    let api = server.agent_client(&node(i), net);
    let holder = Holder {
        node: node(i),
        boot_id: format!("boot{boot}"),
    };
    let backend = KubeLease::new(api.clone(), "volfence-system", holder.clone(), 10);
    let (lp, fence) = FenceLoop::new(
        backend,
        holder.clone(),
        T,
        LeaseLossAction::Disconnect,
        Box::new(|| {}),
        Box::new(DetachAll(devices.clone())),
    );
    let claims: Arc<dyn VolumeClaims> = Arc::new(
        Claims::new(api.clone(), api.clone(), holder, Duration::from_secs(3))
            .with_migration_timeout(WINDOW),
    );
    let stop = CancellationToken::new();
    let mut tasks = vec![tokio::spawn(lp.run(stop.clone()))];
    let (a, f, c, d) = (api.clone(), fence.clone(), claims.clone(), devices.clone());
    let attachments: Arc<dyn Attachments> = devices.clone();
    let srv = server.clone();
    tasks.push(tokio::spawn(async move {
        let mut reconciled = 0;
        loop {
            tokio::time::sleep(rng.millis(100, 1500)).await;
            if a.net().frozen {
                continue; // a stopped process decides nothing
            }
            let Ok(guard) = f.guard() else { continue };
            if guard.epoch() != reconciled {
                if reconcile::at_new_holding(&c, &attachments, &guard).await {
                    reconciled = guard.epoch();
                }
                continue;
            }
            let attached = d.attached();
            let k = volume(rng.below(VOLUMES as u64) as usize);
            match rng.below(10) {
                0..=3 if !attached.contains(&k) => {
                    stats.lock().unwrap().connects += 1;
                    match c.acquire(&guard, &k, None).await {
                        // The kernel connect takes the guard: refused once it expired, and
                        // then the claim it took goes again.
                        Ok(_) if guard.check().is_ok() => {
                            d.0.lock().unwrap().insert(k);
                        }
                        Ok(_) => {
                            let _ = c.release(&k).await;
                        }
                        Err(ClaimError::Conflict { .. } | ClaimError::Migration { .. }) => {
                            stats.lock().unwrap().conflicts += 1;
                        }
                        Err(_) => {}
                    }
                }
                4..=6 if !attached.is_empty() => {
                    let k = attached[rng.below(attached.len() as u64) as usize].clone();
                    let _ = c.begin_release(&k).await;
                    d.0.lock().unwrap().remove(&k);
                    // A failed release is retried by the reconciliation at the next holding.
                    let _ = c.release(&k).await;
                }
                7..=8 if !attached.contains(&k) => {
                    // A migration from whoever holds it now, as the orchestrator would ask.
                    let Some(source) = srv.volume_claims().get(&k).map(|c| c.node().to_string())
                    else {
                        continue;
                    };
                    if source == node(i) {
                        continue;
                    }
                    match c.acquire(&guard, &k, Some(&source)).await {
                        Ok(Acquired::Joined { window: w, .. }) if guard.check().is_ok() => {
                            d.0.lock().unwrap().insert(k.clone());
                            stats.lock().unwrap().joined += 1;
                            window::open(c.clone(), attachments.clone(), k, w);
                        }
                        Ok(_) if guard.check().is_ok() => {
                            d.0.lock().unwrap().insert(k);
                        }
                        Ok(_) => {
                            let _ = c.release(&k).await;
                        }
                        Err(ClaimError::Conflict { .. } | ClaimError::Migration { .. }) => {
                            stats.lock().unwrap().conflicts += 1;
                        }
                        Err(_) => {}
                    }
                }
                _ => {}
            }
        }
    }));
    Agent {
        api,
        fence,
        claims,
        stop,
        tasks,
    }
}

/// Hosts that may write each volume now: attached, a valid guard, and the claim held in that
/// guard's epoch (as the host itself last wrote or read it).
fn writers(agents: &[Option<Agent>], devices: &[Arc<Devices>]) -> HashMap<String, Vec<usize>> {
    let mut out: HashMap<String, Vec<usize>> = HashMap::new();
    for (i, a) in agents.iter().enumerate() {
        let Some(a) = a else { continue };
        let Ok(g) = a.fence.guard() else { continue };
        if g.check().is_err() {
            continue;
        }
        for v in devices[i].attached() {
            let Some(c) = a.claims.held(&v) else { continue };
            let epoch = if c.node() == node(i) {
                Some(c.epoch)
            } else {
                c.migration
                    .as_ref()
                    .filter(|m| m.node() == node(i))
                    .map(|m| m.epoch)
            };
            if epoch == Some(g.epoch()) {
                out.entry(v).or_default().push(i);
            }
        }
    }
    out
}

async fn schedule(seed: u64, stats: Arc<Mutex<Stats>>) {
    let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let server = SimServer::new(T.lease_duration, Duration::ZERO);
    let nets: Vec<Net> = (0..HOSTS)
        .map(|_| Net {
            latency: Duration::from_millis(rng.below(30)),
            ..Net::default()
        })
        .collect();
    let devices: Vec<Arc<Devices>> = (0..HOSTS).map(|_| Arc::default()).collect();
    let mut boots = [0u32; HOSTS];
    let mut agents: Vec<Option<Agent>> = (0..HOSTS)
        .map(|i| {
            let r = Rng(rng.draw() | 1);
            Some(start_agent(
                &server,
                i,
                0,
                nets[i].clone(),
                devices[i].clone(),
                r,
                stats.clone(),
            ))
        })
        .collect();

    let start = Instant::now();
    let mut next_fault = start + rng.millis(3000, 15000);
    let mut reverts: Vec<(Instant, usize)> = Vec::new();
    while Instant::now() - start < RUN {
        tokio::time::sleep(Duration::from_millis(10)).await;
        let now = Instant::now();
        let declared = server.volume_claims();
        for (v, hs) in writers(&agents, &devices) {
            if hs.len() < 2 {
                continue;
            }
            let migrating = declared.get(&v).is_some_and(|c| {
                c.migration.as_ref().is_some_and(|m| {
                    hs.len() == 2
                        && hs
                            .iter()
                            .all(|h| node(*h) == c.node() || node(*h) == m.node())
                })
            });
            if !migrating {
                if std::env::var_os("VOLFENCE_SIM_TRACE").is_some() {
                    for e in server
                        .events()
                        .iter()
                        .filter(|e| e.starts_with(&format!("{v} ")))
                    {
                        println!("  event {e}");
                    }
                    for h in &hs {
                        let a = agents[*h].as_ref().unwrap();
                        println!(
                            "  host-{h}: fence {:?}, held {:?}",
                            a.fence.status(),
                            a.claims.held(&v)
                        );
                    }
                }
                stats.lock().unwrap().violations.push(format!(
                    "seed {seed}: {v} writable by hosts {hs:?} at {:?}; claim {:?}",
                    now - start,
                    declared.get(&v)
                ));
            }
        }
        reverts.retain(|(at, i)| {
            if *at <= now {
                if let Some(a) = &agents[*i] {
                    let n = nets[*i].clone();
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
        if reverts.iter().any(|(_, h)| *h == i) {
            continue; // one fault per host at a time
        }
        let dur = rng.millis(500, 30000);
        let mut faulty = nets[i].clone();
        match rng.below(7) {
            0 | 1 => faulty.partitioned = true,
            2 => faulty.latency = rng.millis(100, 6000),
            3 => faulty.frozen = true,
            4 => faulty.errors_per_mille = 100 + rng.below(400),
            kind => {
                // 5: agent crash + restart, same boot (the devices stay); 6: reboot, a new boot
                // id after a down time, the devices gone.
                if let Some(a) = agents[i].take() {
                    a.crash();
                }
                if kind == 6 {
                    devices[i].0.lock().unwrap().clear();
                    tokio::time::sleep(rng.millis(0, 5000)).await;
                    boots[i] += 1;
                }
                let r = Rng(rng.draw() | 1);
                agents[i] = Some(start_agent(
                    &server,
                    i,
                    boots[i],
                    nets[i].clone(),
                    devices[i].clone(),
                    r,
                    stats.clone(),
                ));
                continue;
            }
        }
        if let Some(a) = &agents[i] {
            a.api.set_net(|x| *x = faulty);
        }
        reverts.push((now + dur, i));
    }
    for a in agents.into_iter().flatten() {
        a.crash();
    }
    let ev = server.events();
    let count = |r: &str| ev.iter().filter(|e| e.contains(&format!(" {r}: "))).count() as u64;
    let mut st = stats.lock().unwrap();
    st.schedules += 1;
    st.takeovers += count("VolumeTakenOver");
    st.completed += count("MigrationCompleted");
    st.expired += count("MigrationExpired");
}

#[test]
fn no_two_hosts_ever_write_one_volume_outside_a_declared_migration() {
    let n: u64 = std::env::var("VOLFENCE_SIM_SCHEDULES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(150);
    let first: u64 = std::env::var("VOLFENCE_SIM_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    let t0 = std::time::Instant::now();
    let stats = Arc::new(Mutex::new(Stats::default()));
    for seed in first..first + n {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap();
        rt.block_on(schedule(seed, stats.clone()));
    }
    let st = stats.lock().unwrap();
    println!(
        "claims safety simulation: {} schedules (seeds {first}..{}), {} connects, {} conflicts, {} takeovers, migrations {} joined / {} completed / {} expired, {} violations, {:.1}s",
        st.schedules,
        first + n,
        st.connects,
        st.conflicts,
        st.takeovers,
        st.joined,
        st.completed,
        st.expired,
        st.violations.len(),
        t0.elapsed().as_secs_f64()
    );
    assert!(
        st.violations.is_empty(),
        "{} violations, first: {:?}",
        st.violations.len(),
        &st.violations[..st.violations.len().min(5)]
    );
    assert!(
        st.conflicts > n,
        "the schedules must contend: {} conflicts",
        st.conflicts
    );
    assert!(st.joined > 0, "no migration was ever joined");
    assert!(st.takeovers > 0, "the faults never provoked a takeover");
}
