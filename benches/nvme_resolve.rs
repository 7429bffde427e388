//! Volume resolution at scale: 1,000 namespaces (100 subsystems × 10) in a fake sysfs laid out
//! by the fake kernel exactly as the real one lays it out. Measures the cached lookup (by NQN +
//! NSID and by UUID) and a full rescan, against reading one namespace's `nsid` attribute by a
//! known path (the cheapest possible kernel-side lookup) in the same run.
//!
//! Goals (issue 4): cached ≤ 50 µs, full rescan ≤ 20 ms. `cargo bench --bench nvme_resolve`.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use volfence::config::Settings;
use volfence::host::Host;
use volfence::nvme::kernel::event_channel;
use volfence::nvme::options::{HostIdentity, Selector};
use volfence::nvme::volumes::Volumes;
use volfence_testkit::nvme::FakeKernel;

const SUBSYSTEMS: usize = 100;
const PER_SUBSYSTEM: u32 = 10;

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    let root = tempfile::tempdir().unwrap();
    let host = Host::new(root.path());
    let events = event_channel();
    let fake = FakeKernel::new(host.clone(), events.clone(), true);
    let local = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let id = HostIdentity {
        hostnqn: "nqn.2014-08.org.nvmexpress:uuid:5f0c2b8e-7d3a-4b1e-9c2d-0a1b2c3d4e5f".into(),
        hostid: "5f0c2b8e-7d3a-4b1e-9c2d-0a1b2c3d4e5f".into(),
    };
    let nqn = |i: usize| format!("nqn.2024-01.io.volfence.bench:s{i:03}");
    for i in 0..SUBSYSTEMS {
        let n = nqn(i);
        let ns = (1..=PER_SUBSYSTEM)
            .map(|k| FakeKernel::namespace(&n, k, 1 << 30))
            .collect();
        fake.add_target(&n, &[(local, 4420)], ns);
        fake.connect_foreign(&format!(
            "transport=tcp,traddr=127.0.0.1,trsvcid=4420,nqn={n},hostnqn={},hostid={}",
            id.hostnqn, id.hostid
        ))
        .unwrap();
    }
    let volumes = Volumes::new(
        host.clone(),
        Arc::new(fake.clone()),
        events,
        id,
        Settings::defaults("bench").nvme,
        root.path().join("run"),
        None,
    );
    let topo = volumes.rescan();
    assert_eq!(topo.namespaces.len(), SUBSYSTEMS * PER_SUBSYSTEM as usize);
    let uuids: Vec<String> = topo
        .namespaces
        .iter()
        .filter_map(|n| n.uuid.clone())
        .collect();

    // Full rescans.
    let scans: Vec<Duration> = (0..30)
        .map(|_| {
            let t = Instant::now();
            std::hint::black_box(volumes.rescan());
            t.elapsed()
        })
        .collect();

    // One volume's view (what a connect's device wait and the health re-read do): its
    // controller and the heads it reaches, among all of the host's.
    let one = vec![topo.namespaces[0].controllers[0].clone()];
    let views: Vec<Duration> = (0..200)
        .map(|_| {
            let t = Instant::now();
            std::hint::black_box(volfence::nvme::sysfs::scan_controllers(&host, &one));
            t.elapsed()
        })
        .collect();

    // Cached lookups (the cache is clean: nothing marked it stale).
    let lookups = 20_000;
    let t = Instant::now();
    for k in 0..lookups {
        let sel = Selector::Nsid((k % PER_SUBSYSTEM as usize) as u32 + 1);
        std::hint::black_box(volumes.resolve(&nqn(k % SUBSYSTEMS), &sel).unwrap());
    }
    let per_nsid = t.elapsed() / lookups as u32;
    let t = Instant::now();
    for k in 0..lookups {
        let u = &uuids[k % uuids.len()];
        std::hint::black_box(volumes.resolve(&nqn(0), &Selector::Uuid(u.clone())));
    }
    let per_uuid = t.elapsed() / lookups as u32;

    // The kernel-side floor: one attribute read by a known path.
    let head = host.path("/sys/class/nvme-subsystem/nvme-subsys0/nvme0n1/nsid");
    let t = Instant::now();
    for _ in 0..lookups {
        std::hint::black_box(std::fs::read_to_string(&head).unwrap());
    }
    let per_read = t.elapsed() / lookups as u32;

    let scan = median(scans);
    println!(
        "nvme_resolve: {} namespaces in {SUBSYSTEMS} subsystems",
        topo.namespaces.len()
    );
    println!(
        "cached lookup by nqn+nsid: {:.2} µs (goal ≤ 50 µs, ratio to goal {:.3}); by uuid: {:.2} µs",
        per_nsid.as_secs_f64() * 1e6,
        per_nsid.as_secs_f64() * 1e6 / 50.0,
        per_uuid.as_secs_f64() * 1e6
    );
    println!(
        "full rescan: median {:.2} ms (goal ≤ 20 ms, ratio to goal {:.3})",
        scan.as_secs_f64() * 1e3,
        scan.as_secs_f64() * 1e3 / 20.0
    );
    let view = median(views);
    println!(
        "one volume's view (1 controller, {PER_SUBSYSTEM} heads): median {:.1} µs; full rescan / \
         that = {:.0}",
        view.as_secs_f64() * 1e6,
        scan.as_secs_f64() / view.as_secs_f64()
    );
    println!(
        "one sysfs attribute read by known path: {:.2} µs; cached lookup / that read = {:.3}; \
         full rescan / that read = {:.0} (a rescan reads ~{} attributes)",
        per_read.as_secs_f64() * 1e6,
        per_nsid.as_secs_f64() / per_read.as_secs_f64(),
        scan.as_secs_f64() / per_read.as_secs_f64(),
        // 3 per namespace (nsid, uuid, nguid), 6 per controller, 1 per subsystem
        topo.namespaces.len() * 3 + topo.controllers.len() * 6 + SUBSYSTEMS
    );
}
