//! The agent with the Kubernetes fence backend, through the real `kube` client, against the
//! project's API server emulator (in this process, on loopback). D = 4 s, R = 1 s, M = 1 s.
//!
//! With `KUBECONFIG` set, the same tests run against that cluster instead (namespace
//! `volfence-test` must exist; every test's lease names get a suffix of their own, and a test
//! deletes the leases it named when it ends). Tests that need the emulator's
//! fault injection or request counters say so and skip there.

mod support;

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Event;
use nix::sys::signal::Signal;
use serde_json::Value;
use support::*;
use volfence_kube_emulator::{Emulator, Faults};

const NS: &str = "volfence-test";

struct Cluster {
    rt: tokio::runtime::Runtime,
    /// None: a real cluster from KUBECONFIG.
    emu: Option<Emulator>,
    real: Option<(PathBuf, kube::Client)>,
    dir: tempfile::TempDir,
    suffix: String,
    /// Lease names this test used, deleted at the end on a real cluster.
    named: std::sync::Mutex<std::collections::BTreeSet<String>>,
}

/// Tests in one process (threads) and across processes never share a lease on a real cluster.
static CLUSTERS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

impl Drop for Cluster {
    fn drop(&mut self) {
        if let Some(emu) = &self.emu {
            emu.shutdown();
        }
        let Some((_, client)) = &self.real else {
            return;
        };
        let api: kube::Api<Lease> = kube::Api::namespaced(client.clone(), NS);
        for name in self.named.lock().unwrap().iter() {
            let _ = self
                .rt
                .block_on(api.delete(name, &kube::api::DeleteParams::default()));
        }
    }
}

impl Cluster {
    fn start() -> Cluster {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        match std::env::var_os("KUBECONFIG") {
            Some(path) => {
                let path = PathBuf::from(path);
                let settings = volfence::config::KubernetesSettings {
                    kubeconfig: Some(path.clone()),
                    request_timeout: Duration::from_secs(5),
                };
                let client = rt.block_on(volfence::cluster::client(&settings)).unwrap();
                rt.block_on(ensure_namespace(&client, NS));
                let n = CLUSTERS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let suffix = format!("-{}-{n}", std::process::id());
                Cluster {
                    rt,
                    emu: None,
                    real: Some((path, client)),
                    dir,
                    suffix,
                    named: Default::default(),
                }
            }
            None => {
                let emu = rt
                    .block_on(Emulator::start("127.0.0.1:0".parse().unwrap()))
                    .unwrap();
                emu.ensure_namespace(NS).unwrap();
                Cluster {
                    rt,
                    emu: Some(emu),
                    real: None,
                    dir,
                    suffix: String::new(),
                    named: Default::default(),
                }
            }
        }
    }

    /// The emulator, for tests that need fault injection or request counts.
    fn emulator(&self) -> Option<&Emulator> {
        if self.emu.is_none() {
            eprintln!("skipped against a real cluster: needs the emulator's fault injection and request counters");
        }
        self.emu.as_ref()
    }

    /// Node names carry a per-test suffix on a real cluster, so tests and runs do not meet.
    fn node(&self, n: &str) -> String {
        let name = format!("{n}{}", self.suffix);
        self.named.lock().unwrap().insert(name.clone());
        name
    }

    /// A kubeconfig whose bearer token is `client` (its fault-injection identity).
    fn kubeconfig(&self, client: &str) -> PathBuf {
        if let Some((path, _)) = &self.real {
            return path.clone();
        }
        let p = self.dir.path().join(format!("kubeconfig-{client}"));
        std::fs::write(&p, self.emu.as_ref().unwrap().kubeconfig(client)).unwrap();
        p
    }

    fn host(&self, node: &str, boot: &str, client: &str) -> FakeHost {
        FakeHost::new(
            &self.node(node),
            boot,
            &format!(
                "[fence]\nbackend = \"kubernetes\"\nlease_namespace = \"{NS}\"\nlease_duration = \"4s\"\nrenew_interval = \"1s\"\nsafety_margin = \"1s\"\n[kubernetes]\nkubeconfig = \"{}\"\nrequest_timeout = \"2s\"\n",
                self.kubeconfig(client).display()
            ),
        )
    }

    fn lease(&self, node: &str) -> Option<Value> {
        let name = self.node(node);
        match (&self.emu, &self.real) {
            (Some(emu), _) => emu.object(&format!(
                "/apis/coordination.k8s.io/v1/namespaces/{NS}/leases/{name}"
            )),
            (None, Some((_, client))) => {
                let api: kube::Api<Lease> = kube::Api::namespaced(client.clone(), NS);
                self.rt
                    .block_on(api.get_opt(&name))
                    .unwrap()
                    .map(|l| serde_json::to_value(l).unwrap())
            }
            _ => unreachable!(),
        }
    }

    fn event_reasons(&self) -> Vec<String> {
        match (&self.emu, &self.real) {
            (Some(emu), _) => emu
                .events()
                .iter()
                .map(|e| e["reason"].as_str().unwrap_or_default().to_string())
                .collect(),
            (None, Some((_, client))) => {
                let api: kube::Api<Event> = kube::Api::namespaced(client.clone(), NS);
                let list = self.rt.block_on(api.list(&Default::default())).unwrap();
                list.items
                    .into_iter()
                    .filter(|e| {
                        e.involved_object
                            .name
                            .as_deref()
                            .is_some_and(|n| n.ends_with(&self.suffix))
                    })
                    .filter_map(|e| e.reason)
                    .collect()
            }
            _ => unreachable!(),
        }
    }

    fn holder(&self, node: &str, boot: &str) -> String {
        format!("{}/{boot}", self.node(node))
    }
}

fn stop(mut d: Daemon) {
    d.signal(Signal::SIGTERM);
    assert_eq!(
        d.wait_exit(Duration::from_secs(10)).code(),
        Some(0),
        "{}",
        d.log()
    );
}

#[test]
fn acquire_renew_restart_resumes_and_reboot_takes_over_with_a_new_epoch() {
    let c = Cluster::start();
    let bus = PrivateBus::start();
    let host = c.host("n1", BOOT_A, "n1");
    let d = Daemon::start(&host, &bus.address, &[]);
    let s = wait_for_state(&bus.address, "held", &d);
    assert_eq!(s["Epoch"], 1);
    assert_eq!(s["FenceBackend"], "kubernetes");
    let lease = c.lease("n1").expect("lease created");
    assert_eq!(lease["spec"]["holderIdentity"], c.holder("n1", BOOT_A));
    assert_eq!(lease["spec"]["leaseTransitions"], 1);
    assert_eq!(lease["spec"]["leaseDurationSeconds"], 4);
    let rv = lease["metadata"]["resourceVersion"].clone();
    // What an operator sees of it.
    let kc = c.kubeconfig("admin");
    let seen = kubectl(
        &kc,
        &[
            "get",
            "lease",
            "-n",
            NS,
            &c.node("n1"),
            "-o",
            "jsonpath={.spec.holderIdentity} {.spec.leaseTransitions}",
        ],
    );
    assert_eq!(seen, format!("{} 1", c.holder("n1", BOOT_A)));
    let table = kubectl(&kc, &["get", "leases", "-n", NS]);
    assert!(
        table.starts_with("NAME") && table.contains("HOLDER"),
        "{table}"
    );
    assert!(table.contains(&c.holder("n1", BOOT_A)), "{table}");
    std::thread::sleep(Duration::from_millis(2500));
    assert_ne!(
        c.lease("n1").unwrap()["metadata"]["resourceVersion"],
        rv,
        "renewed"
    );
    assert!(
        c.event_reasons().contains(&"LeaseAcquired".to_string()),
        "{:?}",
        c.event_reasons()
    );
    stop(d);

    // agent restart, same boot: same epoch, at once
    let d = Daemon::start(&host, &bus.address, &[]);
    assert_eq!(wait_for_state(&bus.address, "held", &d)["Epoch"], 1);
    stop(d);

    // reboot: the new incarnation waits for D of silence on its own lease, then epoch + 1
    host.set_boot_id(BOOT_B);
    let t0 = Instant::now();
    let d = Daemon::start(&host, &bus.address, &[]);
    let s = wait_for_state(&bus.address, "held", &d);
    assert!(
        t0.elapsed() >= Duration::from_secs(3),
        "took over after {:?}, before D of silence",
        t0.elapsed()
    );
    assert_eq!(s["Epoch"], 2);
    assert_eq!(
        c.lease("n1").unwrap()["spec"]["holderIdentity"],
        c.holder("n1", BOOT_B)
    );
    stop(d);
}

#[test]
fn two_hosts_with_one_node_name_conflict_and_never_fight() {
    let c = Cluster::start();
    let (bus_a, bus_b) = (PrivateBus::start(), PrivateBus::start());
    let (host_a, host_b) = (c.host("n1", BOOT_A, "a"), c.host("n1", BOOT_B, "b"));
    let a = Daemon::start(&host_a, &bus_a.address, &[]);
    wait_for_state(&bus_a.address, "held", &a);
    let b = Daemon::start(&host_b, &bus_b.address, &[]);
    let s = wait_for_state(&bus_b.address, "conflict", &b);
    assert!(
        s["FenceMessage"]
            .as_str()
            .unwrap()
            .contains("two hosts use the node name"),
        "{s}"
    );
    std::thread::sleep(Duration::from_secs(5)); // longer than D: still no takeover
    let sa = status(&bus_a.address).unwrap();
    assert_eq!(
        (sa["FenceState"].as_str(), sa["Epoch"].as_u64()),
        (Some("held"), Some(1))
    );
    assert_eq!(status(&bus_b.address).unwrap()["FenceState"], "conflict");
    assert_eq!(
        c.lease("n1").unwrap()["spec"]["holderIdentity"],
        c.holder("n1", BOOT_A)
    );
    // Five seconds of retries in conflict are one episode: one Event, not one per retry.
    let conflicts = c
        .event_reasons()
        .iter()
        .filter(|r| *r == "LeaseConflict")
        .count();
    assert_eq!(conflicts, 1, "{:?}", c.event_reasons());
    assert!(
        b.log().contains("two hosts use the node name"),
        "{}",
        b.log()
    );
}

#[test]
fn partitioned_from_the_api_server_fences_within_d_minus_m_and_returns_with_a_new_epoch() {
    let c = Cluster::start();
    let Some(emu) = c.emulator() else { return };
    let bus = PrivateBus::start();
    let host = c.host("n1", BOOT_A, "n1");
    let d = Daemon::start(&host, &bus.address, &[]);
    wait_for_state(&bus.address, "held", &d);
    std::thread::sleep(Duration::from_millis(1500));
    emu.faults(
        "n1",
        Faults {
            partition: true,
            ..Default::default()
        },
    );
    let cut = Instant::now();
    wait_for_state(&bus.address, "fenced", &d);
    let took = cut.elapsed();
    // the last successful renew was sent before the cut, so validity ended by cut + D − M (3 s);
    // allow the CLI's polling and process start-up on top
    assert!(
        took <= Duration::from_millis(3600),
        "fenced {took:?} after the cut"
    );
    assert!(
        took >= Duration::from_millis(1500),
        "fenced too early ({took:?}): renews were still valid"
    );
    assert!(d.log().contains("lease lost"), "{}", d.log());

    emu.faults("n1", Faults::default());
    let s = wait_for_state(&bus.address, "held", &d);
    assert_eq!(s["Epoch"], 2, "a new holding after a loss");
    let lost = kubectl(
        &c.kubeconfig("admin"),
        &[
            "get",
            "events",
            "-n",
            NS,
            "--field-selector",
            "reason=LeaseLost",
            "-o",
            "jsonpath={.items[*].involvedObject.name}",
        ],
    );
    assert!(lost.split(' ').any(|n| n == c.node("n1")), "{lost:?}");
    assert!(
        c.event_reasons().contains(&"LeaseLost".to_string()),
        "{:?}",
        c.event_reasons()
    );
}

#[test]
fn steady_state_costs_one_request_per_renew_and_no_polling() {
    let c = Cluster::start();
    let Some(emu) = c.emulator() else { return };
    let bus = PrivateBus::start();
    let host = c.host("n1", BOOT_A, "n1");
    let d = Daemon::start(&host, &bus.address, &[]);
    wait_for_state(&bus.address, "held", &d);
    std::thread::sleep(Duration::from_secs(1));
    let before = emu.request_counts("n1");
    std::thread::sleep(Duration::from_secs(10));
    let after = emu.request_counts("n1");
    let delta =
        |verb: &str| after.get(verb).copied().unwrap_or(0) - before.get(verb).copied().unwrap_or(0);
    let patches = delta("PATCH");
    assert!(
        (8..=12).contains(&patches),
        "{patches} renews in 10 s at R = 1 s: {before:?} → {after:?}"
    );
    assert_eq!(delta("GET"), 0, "no polling GETs: {after:?}");
    assert_eq!(delta("LIST"), 0, "no relists: {after:?}");
    assert_eq!(delta("WATCH"), 0, "long-lived watches: {after:?}");
    // Its own lease, and its own claims (held, and shared as a migration's destination).
    assert_eq!(after.get("WATCH").copied(), Some(3), "{after:?}");
}

#[test]
fn a_forbidden_agent_says_so_in_its_status_and_once_in_its_log() {
    let c = Cluster::start();
    let Some(emu) = c.emulator() else { return };
    emu.faults(
        "n1",
        Faults {
            error_code: Some(403),
            ..Default::default()
        },
    );
    let bus = PrivateBus::start();
    let host = c.host("n1", BOOT_A, "n1");
    let d = Daemon::start(&host, &bus.address, &[]);
    let mut last = None;
    let said = wait_until(Duration::from_secs(15), || {
        last = status(&bus.address);
        last.as_ref().is_some_and(|s| {
            s["FenceMessage"]
                .as_str()
                .is_some_and(|m| m.contains("forbidden"))
        })
    });
    assert!(said.is_ok(), "last status {last:?}; log:\n{}", d.log());
    let s = last.unwrap();
    assert_eq!(s["FenceState"], "acquiring", "{s}");
    let m = s["FenceMessage"].as_str().unwrap();
    assert!(m.contains("the agent needs get, list, watch"), "{m}");
    // Several retries later, still one warn line for the one cause.
    std::thread::sleep(Duration::from_secs(4));
    let warns = d
        .log()
        .lines()
        .filter(|l| l.contains("WARN") && l.contains("cannot acquire the lease"))
        .count();
    assert_eq!(warns, 1, "{}", d.log());
    let ctl = Command::new(env!("CARGO_BIN_EXE_volfencectl"))
        .args(["--bus", &bus.address, "status"])
        .output()
        .unwrap();
    assert!(text(&ctl).contains("forbidden"), "{}", text(&ctl));
    emu.faults("n1", Faults::default());
    wait_for_state(&bus.address, "held", &d);
}
