//! Agents for multi-host tests and benchmarks: one API server (the in-process emulator, or the
//! cluster `KUBECONFIG` names, in namespaces of their own) and whole agents (`daemon::run_with`
//! over their own fake kernel, root and private bus) with distinct node names and host
//! identities.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use super::{ctl, text, Level, PrivateBus};
use tokio_util::sync::CancellationToken;
use volfence::config::{BusSpec, FenceBackend, LeaseLossAction, Settings};
use volfence::daemon::{self, Parts};
use volfence::host::Host;
use volfence_kube_emulator::Emulator;
use volfence_testkit::lvm::{FakeLvm, FakeMounter};
use volfence_testkit::nvme::FakeKernel;

pub const NQN: &str = "nqn.2024-01.io.volfence.test:claims";

/// The API server both agents use, and the namespaces of this test.
pub struct Api {
    pub emu: Option<Emulator>,
    /// Kubeconfig files by client name (the emulator tells clients apart by token).
    dir: tempfile::TempDir,
    pub real: Option<PathBuf>,
    pub leases: String,
    pub claims: String,
}

impl Api {
    pub async fn start(tag: &str) -> Api {
        let dir = tempfile::tempdir().unwrap();
        let (emu, real, leases, claims) = match std::env::var_os("KUBECONFIG") {
            Some(kc) => {
                let suffix = format!("{}-{}", std::process::id(), tag);
                (
                    None,
                    Some(PathBuf::from(kc)),
                    format!("vf-leases-{suffix}"),
                    format!("vf-claims-{suffix}"),
                )
            }
            None => {
                let emu = Emulator::start("127.0.0.1:0".parse().unwrap())
                    .await
                    .unwrap();
                (
                    Some(emu),
                    None,
                    "volfence-system".to_string(),
                    "volfence-claims".to_string(),
                )
            }
        };
        let api = Api {
            emu,
            dir,
            real,
            leases,
            claims,
        };
        let client = api.client().await;
        for ns in [&api.leases, &api.claims] {
            super::ensure_namespace(&client, ns).await;
        }
        api
    }

    pub fn kubeconfig(&self, who: &str) -> PathBuf {
        match (&self.emu, &self.real) {
            (Some(emu), _) => {
                let p = self.dir.path().join(who);
                std::fs::write(&p, emu.kubeconfig(who)).unwrap();
                p
            }
            (None, Some(real)) => real.clone(),
            _ => unreachable!(),
        }
    }

    pub async fn client(&self) -> kube::Client {
        volfence::cluster::client(&volfence::config::KubernetesSettings {
            kubeconfig: Some(self.kubeconfig("test")),
            request_timeout: Duration::from_secs(5),
        })
        .await
        .unwrap()
    }

    /// The claim object of `volume`, as the server has it.
    pub async fn claim(&self, volume: &str) -> Option<k8s_openapi::api::coordination::v1::Lease> {
        let api: kube::Api<k8s_openapi::api::coordination::v1::Lease> =
            kube::Api::namespaced(self.client().await, &self.claims);
        api.get_opt(&volfence::claims::record::object_name(volume))
            .await
            .unwrap()
    }

    pub async fn event_reasons(&self) -> Vec<String> {
        let api: kube::Api<k8s_openapi::api::core::v1::Event> =
            kube::Api::namespaced(self.client().await, &self.claims);
        api.list(&Default::default())
            .await
            .unwrap()
            .items
            .into_iter()
            .filter_map(|e| e.reason)
            .collect()
    }

    /// Namespaces made on a real cluster go again.
    pub async fn cleanup(self) {
        if self.real.is_some() {
            let client = self.client().await;
            let api: kube::Api<k8s_openapi::api::core::v1::Namespace> = kube::Api::all(client);
            for ns in [&self.leases, &self.claims] {
                let _ = api.delete(ns, &Default::default()).await;
            }
        }
    }
}

/// One agent: its own root, fake kernel (with the shared target), bus and node name.
pub struct Agent {
    pub bus: PrivateBus,
    pub kernel: FakeKernel,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<Result<(), daemon::DaemonError>>,
    host: Host,
    settings: Settings,
    root: tempfile::TempDir,
}

/// What a crashed agent leaves behind: its root (records, lease record), its kernel (devices)
/// and its bus; [`Parked::restart`] starts an agent on them again.
pub struct Parked {
    pub bus: PrivateBus,
    pub kernel: FakeKernel,
    pub host: Host,
    settings: Settings,
    root: tempfile::TempDir,
}

impl Agent {
    pub async fn start(api: &Api, node: &str, boot: &str, on_loss: LeaseLossAction) -> Agent {
        Agent::start_with(api, node, boot, on_loss, |_| {}).await
    }

    /// As [`Agent::start`], with `tweak` applied to the settings last.
    pub async fn start_with(
        api: &Api,
        node: &str,
        boot: &str,
        on_loss: LeaseLossAction,
        tweak: impl FnOnce(&mut Settings),
    ) -> Agent {
        let bus = PrivateBus::start();
        let root = tempfile::tempdir().unwrap();
        volfence_testkit::host::populate(root.path(), boot, node).unwrap();
        let host = Host::new(root.path());
        let mut s = Settings::defaults(node);
        s.dbus = BusSpec::Address(bus.address.clone());
        s.metrics.listen = None;
        s.fence.backend = FenceBackend::Kubernetes;
        s.fence.lease_namespace = api.leases.clone();
        // 2 × R + M ≤ D, as the configuration requires.
        s.fence.lease_duration = Duration::from_secs(4);
        s.fence.renew_interval = Duration::from_secs(1);
        s.fence.safety_margin = Duration::from_secs(1);
        s.fence.observer_grace = Duration::ZERO;
        s.fence.on_lease_loss = on_loss;
        s.kubernetes.kubeconfig = Some(api.kubeconfig(node));
        s.claims.namespace = api.claims.clone();
        s.claims.handoff_wait = Duration::from_secs(3);
        // Below the configurable minimum (30 s), so the deadline is seen in seconds.
        s.claims.migration_timeout = Duration::from_secs(5);
        tweak(&mut s);
        let kernel = FakeKernel::new(host.clone(), volfence::nvme::kernel::event_channel(), true);
        kernel.add_target(
            NQN,
            &[("127.0.0.1".parse().unwrap(), 4420)],
            (1..=6)
                .map(|n| FakeKernel::namespace(NQN, n, 16 << 20))
                .collect(),
        );
        let a = Parked {
            bus,
            kernel,
            host,
            settings: s,
            root,
        }
        .launch();
        a.until_state("held").await;
        a
    }

    /// Ends the agent as a crash would: its tasks are dropped mid-step, nothing is cleaned up;
    /// the root and the kernel keep what it had made.
    pub async fn crash(self) -> Parked {
        self.task.abort();
        let _ = self.task.await;
        Parked {
            bus: self.bus,
            kernel: self.kernel,
            host: self.host,
            settings: self.settings,
            root: self.root,
        }
    }

    /// The agent's root directory on this machine.
    pub fn root(&self) -> &std::path::Path {
        self.root.path()
    }

    pub async fn until_state(&self, want: &str) -> serde_json::Value {
        let mut last = String::new();
        for _ in 0..400 {
            assert!(
                !self.task.is_finished(),
                "the agent stopped; last status {last}"
            );
            let out = ctl(&self.bus.address, &["status", "--json"]).await;
            if out.status.success() {
                let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
                if v["FenceState"] == want {
                    return v;
                }
                last = v.to_string();
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("fence state {want} not reached; last status {last}");
    }

    pub async fn connect(&self, volume: &str, nsid: u32) -> std::process::Output {
        self.connect_with(volume, nsid, &[]).await
    }

    /// A live migration's destination Connect, from `source`.
    pub async fn migrate(&self, volume: &str, nsid: u32, source: &str) -> std::process::Output {
        self.connect_with(volume, nsid, &["--migration-source", source])
            .await
    }

    async fn connect_with(&self, volume: &str, nsid: u32, extra: &[&str]) -> std::process::Output {
        let nsid = nsid.to_string();
        let mut args = vec![
            "connect",
            volume,
            "--nqn",
            NQN,
            "--traddr",
            "127.0.0.1",
            "--nsid",
            &nsid,
            "--json",
        ];
        args.extend_from_slice(extra);
        ctl(&self.bus.address, &args).await
    }

    pub async fn show(&self, volume: &str) -> String {
        text(&ctl(&self.bus.address, &["show", volume]).await)
    }

    pub async fn disconnect(&self, volume: &str) -> std::process::Output {
        ctl(&self.bus.address, &["disconnect", volume]).await
    }

    pub async fn stop(self) {
        self.stop.cancel();
        let r = tokio::time::timeout(Duration::from_secs(15), self.task)
            .await
            .expect("the agent stops")
            .unwrap();
        r.unwrap();
    }
}

impl Parked {
    /// Starts an agent on what the last one left; returns at once (before READY=1).
    pub fn restart(self) -> Agent {
        self.launch()
    }

    fn launch(self) -> Agent {
        let parts = Parts {
            fabrics: Arc::new(self.kernel.clone()),
            uevents: self.kernel.events(),
            udev_monitor: false,
            lvm: Arc::new(FakeLvm::new(self.host.clone())),
            mounter: Arc::new(FakeMounter::new(self.host.clone())),
            reservations: Arc::new(self.kernel.clone()),
        };
        let opts = daemon::Options {
            settings: self.settings.clone(),
            host: self.host.clone(),
            config_files: vec![],
            log: Level::new("info"),
        };
        let stop = CancellationToken::new();
        let st = stop.clone();
        let task = tokio::spawn(async move {
            daemon::run_with(opts, parts, async move {
                st.cancelled().await;
                "test stop"
            })
            .await
        });
        Agent {
            bus: self.bus,
            kernel: self.kernel,
            stop,
            task,
            host: self.host,
            settings: self.settings,
            root: self.root,
        }
    }
}
