//! Volume failover and the cost of a claim (not a timed test): `cargo bench --bench
//! claims_failover`. Real agents (`daemon::run_with` over fake kernels, private buses) on the
//! API emulator, driven over D-Bus by `volfencectl` as an operator would.
//!
//! 1. Failover: D = 10 s, R = 2.5 s, M = 2 s, grace 0. A holds a volume and is partitioned
//!    from the API server at a random phase of its renew cycle; B retries its Connect every
//!    100 ms from that moment. Measured: partition → B's Connect succeeded, and A's fence →
//!    partition. Goal: ≤ D + 1 s = 11 s, median and worst (`VOLFENCE_BENCH_TRIALS`, default 20).
//!    Anchors: Kubernetes' force detach 6 min, Self Node Remediation ~180 s, Longhorn's RWX
//!    fast failover ~16 s.
//! 2. Claim overhead: Connect + Disconnect on one agent with claims (kubernetes backend)
//!    against the same on an agent without (standalone), `VOLFENCE_BENCH_ROUNDS` (default 30)
//!    each: the claim's cost per Connect, against the Connect itself.

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use support::agents::{Agent, Api};
use support::{ctl, text};
use volfence::config::{FenceBackend, LeaseLossAction};
use volfence_kube_emulator::Faults;

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

fn production_timing(s: &mut volfence::config::Settings) {
    s.fence.lease_duration = Duration::from_secs(10);
    s.fence.renew_interval = Duration::from_millis(2500);
    s.fence.safety_margin = Duration::from_secs(2);
    s.fence.observer_grace = Duration::ZERO;
}

fn stats(mut v: Vec<Duration>) -> (Duration, Duration, Duration) {
    v.sort();
    (v[0], v[v.len() / 2], v[v.len() - 1])
}

async fn failover(trials: u64) {
    let api = Api::start("bench-failover").await;
    let emu = api.emu.as_ref().expect("the emulator (fault injection)");
    let a = Agent::start_with(
        &api,
        "node-a",
        "0f5e2c1a-8b7d-4e3f-9a2b-00000000b001",
        LeaseLossAction::Disconnect,
        production_timing,
    )
    .await;
    let b = Agent::start_with(
        &api,
        "node-b",
        "0f5e2c1a-8b7d-4e3f-9a2b-00000000b002",
        LeaseLossAction::Disconnect,
        production_timing,
    )
    .await;
    let (mut moved, mut fenced) = (Vec::new(), Vec::new());
    let mut seed = 0x2545_f491_4f6c_dd1d_u64;
    for t in 0..trials {
        let vol = format!("vol-f{t}");
        let out = a.connect(&vol, 1).await;
        assert!(out.status.success(), "{}", text(&out));
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        tokio::time::sleep(Duration::from_millis(seed % 2500)).await;
        emu.faults(
            "node-a",
            Faults {
                partition: true,
                ..Faults::default()
            },
        );
        let cut = Instant::now();
        let (fence_at, took) = tokio::join!(
            async {
                a.until_state("fenced").await;
                cut.elapsed()
            },
            async {
                loop {
                    if b.connect(&vol, 1).await.status.success() {
                        break cut.elapsed();
                    }
                    assert!(cut.elapsed() < Duration::from_secs(60), "never moved");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        );
        println!("  trial {t}: A fenced at {fence_at:.2?}, B connected at {took:.2?}");
        moved.push(took);
        fenced.push(fence_at);
        emu.faults("node-a", Faults::default());
        a.until_state("held").await;
        assert!(b.disconnect(&vol).await.status.success());
    }
    let (lo, med, hi) = stats(moved);
    let (flo, fmed, fhi) = stats(fenced);
    println!("failover at D=10s, R=2.5s, M=2s, grace 0 over {trials} trials (real agents, API emulator):");
    println!(
        "  partition -> B's Connect succeeded: min {lo:.2?}  median {med:.2?}  worst {hi:.2?}   ratio to D+1s: {:.2} (goal <= 1: {})",
        hi.as_secs_f64() / 11.0,
        if hi <= Duration::from_secs(11) { "met" } else { "MISSED" }
    );
    println!("  partition -> A fenced itself:       min {flo:.2?}  median {fmed:.2?}  worst {fhi:.2?}   (D - M = 8s after its last renew)");
    a.stop().await;
    b.stop().await;
}

async fn overhead(rounds: u64) {
    let api = Api::start("bench-overhead").await;
    let claimed = Agent::start(
        &api,
        "node-c",
        "0f5e2c1a-8b7d-4e3f-9a2b-00000000b003",
        LeaseLossAction::Disconnect,
    )
    .await;
    let plain = Agent::start_with(
        &api,
        "node-d",
        "0f5e2c1a-8b7d-4e3f-9a2b-00000000b004",
        LeaseLossAction::Disconnect,
        |s| s.fence.backend = FenceBackend::Standalone,
    )
    .await;
    let lap = |label: &'static str, who: &Agent| {
        let bus = who.bus.address.clone();
        async move {
            let (mut c, mut d) = (Vec::new(), Vec::new());
            for r in 0..rounds {
                let vol = format!("vol-o{r}");
                let t = Instant::now();
                let out = ctl(
                    &bus,
                    &[
                        "connect",
                        &vol,
                        "--nqn",
                        support::agents::NQN,
                        "--traddr",
                        "127.0.0.1",
                        "--nsid",
                        "2",
                    ],
                )
                .await;
                assert!(out.status.success(), "{label}: {}", text(&out));
                c.push(t.elapsed());
                let t = Instant::now();
                assert!(ctl(&bus, &["disconnect", &vol]).await.status.success());
                d.push(t.elapsed());
            }
            (stats(c).1, stats(d).1)
        }
    };
    let (cc, cd) = lap("claims", &claimed).await;
    let (pc, pd) = lap("standalone", &plain).await;
    println!(
        "claim overhead over {rounds} rounds (median, through volfencectl and D-Bus, fake kernel):"
    );
    println!(
        "  Connect:    with claim {cc:.2?}, without {pc:.2?}: +{:.2?} ({:.2}x)",
        cc.saturating_sub(pc),
        cc.as_secs_f64() / pc.as_secs_f64()
    );
    println!(
        "  Disconnect: with claim {cd:.2?}, without {pd:.2?}: +{:.2?} ({:.2}x)",
        cd.saturating_sub(pd),
        cd.as_secs_f64() / pd.as_secs_f64()
    );
    claimed.stop().await;
    plain.stop().await;
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        overhead(env("VOLFENCE_BENCH_ROUNDS", 30)).await;
        failover(env("VOLFENCE_BENCH_TRIALS", 20)).await;
    });
}
