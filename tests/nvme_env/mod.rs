//! Where the NVMe tests run: the fake kernel (plain `cargo test`) or, with
//! `VOLFENCE_REAL_KERNEL=1` (the VM tier), the real one with an nvmet-tcp target on 127.0.0.1
//! made through configfs. The test bodies are the same for both.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use volfence::config::Settings;
use volfence::fence::standalone::FileLease;
use volfence::fence::{Fence, FenceGuard, FenceLoop, Holder, LogOnlyLoss, Timing};
use volfence::host::Host;
use volfence::nvme::identity;
use volfence::nvme::kernel::{KernelFabrics, NvmeFabrics, Uevent};
use volfence::nvme::options::{parse_overrides, parse_target, HostIdentity, OptValue};
use volfence::nvme::volumes::{ConnectRequest, Volumes};
use volfence_testkit::nvme::FakeKernel;

pub const LOCAL: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
pub const MIB: u64 = 1 << 20;

pub fn real() -> bool {
    std::env::var("VOLFENCE_REAL_KERNEL").is_ok_and(|v| v == "1")
}

/// A subsystem made in configfs: NQN, ports, namespace ids (for teardown).
type Made = (String, Vec<u16>, Vec<u32>);

/// The target side: nvmet in configfs, or the fake kernel's target table.
enum TargetCtl {
    Fake(FakeKernel),
    Nvmet {
        dir: PathBuf,
        made: std::sync::Mutex<Vec<Made>>,
    },
}

const NVMET: &str = "/sys/kernel/config/nvmet";

fn wr(p: impl AsRef<std::path::Path>, v: &str) {
    std::fs::write(p.as_ref(), v)
        .unwrap_or_else(|e| panic!("write {:?} to {}: {e}", v, p.as_ref().display()));
}

pub struct Env {
    pub host: Host,
    pub fabrics: Arc<dyn NvmeFabrics>,
    pub events: broadcast::Sender<Uevent>,
    pub identity: HostIdentity,
    pub settings: Settings,
    pub state: tempfile::TempDir,
    pub fence: Fence,
    target: TargetCtl,
    _root: Option<tempfile::TempDir>,
    pub shutdown: CancellationToken,
}

impl Env {
    pub async fn new() -> Env {
        Env::with_multipath(true).await
    }

    /// `multipath`: the fake kernel's `nvme_core.multipath` (the real kernel decides its own).
    pub async fn with_multipath(multipath: bool) -> Env {
        let settings = Settings::defaults("nvme-test");
        let events = volfence::nvme::kernel::event_channel();
        let state = tempfile::tempdir().unwrap();
        let (host, fabrics, identity, target, root): (
            Host,
            Arc<dyn NvmeFabrics>,
            HostIdentity,
            TargetCtl,
            _,
        ) = if real() {
            let host = Host::system();
            volfence::nvme::kernel::spawn_udev_monitor(events.clone()).expect("udev monitor");
            let (id, _, _) = identity::load(&host, &settings.nvme).expect("host identity");
            let work = PathBuf::from(
                std::env::var("VOLFENCE_NVMET_DIR").unwrap_or_else(|_| "/run/vmtest/nvmet".into()),
            );
            std::fs::create_dir_all(&work).unwrap();
            (
                host.clone(),
                Arc::new(KernelFabrics::new(host)),
                id,
                TargetCtl::Nvmet {
                    dir: work,
                    made: Default::default(),
                },
                None,
            )
        } else {
            let root = tempfile::tempdir().unwrap();
            let host = Host::new(root.path());
            let fake = FakeKernel::new(host.clone(), events.clone(), multipath);
            let id = HostIdentity {
                hostnqn: "nqn.2014-08.org.nvmexpress:uuid:5f0c2b8e-7d3a-4b1e-9c2d-0a1b2c3d4e5f"
                    .into(),
                hostid: "5f0c2b8e-7d3a-4b1e-9c2d-0a1b2c3d4e5f".into(),
            };
            (
                host,
                Arc::new(fake.clone()),
                id,
                TargetCtl::Fake(fake),
                Some(root),
            )
        };
        let shutdown = CancellationToken::new();
        let fence = held_fence(state.path().join("lease"), &shutdown).await;
        Env {
            host,
            fabrics,
            events,
            identity,
            settings,
            state,
            fence,
            target,
            _root: root,
            shutdown,
        }
    }

    pub fn fake(&self) -> Option<&FakeKernel> {
        match &self.target {
            TargetCtl::Fake(f) => Some(f),
            TargetCtl::Nvmet { .. } => None,
        }
    }

    /// A volume manager on this host, with its records in `state` (its runtime directory; a
    /// second one is "after a restart").
    pub fn volumes(&self) -> Volumes {
        Volumes::new(
            self.host.clone(),
            self.fabrics.clone(),
            self.events.clone(),
            self.identity.clone(),
            self.settings.nvme.clone(),
            self.state.path().to_path_buf(),
            None,
        )
    }

    pub fn guard(&self) -> FenceGuard {
        self.fence.guard().expect("the test fence is held")
    }

    /// Exports `nqn` on `ports` with namespaces `nsids` of `size` bytes each.
    pub fn add_target(&self, nqn: &str, ports: &[u16], nsids: &[u32], size: u64) {
        match &self.target {
            TargetCtl::Fake(f) => f.add_target(
                nqn,
                &ports.iter().map(|p| (LOCAL, *p)).collect::<Vec<_>>(),
                nsids
                    .iter()
                    .map(|n| FakeKernel::namespace(nqn, *n, size))
                    .collect(),
            ),
            TargetCtl::Nvmet { dir, made } => {
                let s = format!("{NVMET}/subsystems/{nqn}");
                std::fs::create_dir(&s).unwrap();
                wr(format!("{s}/attr_allow_any_host"), "1");
                for n in nsids {
                    // A file on tmpfs needs buffered_io (no O_DIRECT); see the VM notes.
                    let img = dir.join(format!("{}-{n}.img", nqn.replace(':', "_")));
                    std::fs::File::create(&img).unwrap().set_len(size).unwrap();
                    let nd = format!("{s}/namespaces/{n}");
                    std::fs::create_dir(&nd).unwrap();
                    wr(format!("{nd}/device_path"), img.to_str().unwrap());
                    wr(format!("{nd}/buffered_io"), "1");
                    wr(format!("{nd}/enable"), "1");
                }
                for p in ports {
                    let pd = format!("{NVMET}/ports/{p}");
                    if !std::path::Path::new(&pd).exists() {
                        std::fs::create_dir(&pd).unwrap();
                        wr(format!("{pd}/addr_trtype"), "tcp");
                        wr(format!("{pd}/addr_adrfam"), "ipv4");
                        wr(format!("{pd}/addr_traddr"), "127.0.0.1");
                        wr(format!("{pd}/addr_trsvcid"), &p.to_string());
                    }
                    std::os::unix::fs::symlink(&s, format!("{pd}/subsystems/{nqn}")).unwrap();
                }
                made.lock()
                    .unwrap()
                    .push((nqn.to_string(), ports.to_vec(), nsids.to_vec()));
            }
        }
    }

    /// Lets only this host reach `nqn`, and only with DH-HMAC-CHAP: `host_secret` (and the
    /// controller proving `ctrl_secret`). nvmet needs NVME_TARGET_AUTH (Debian's 6.12, not 6.1).
    pub fn require_dhchap(&self, nqn: &str, host_secret: &str, ctrl_secret: Option<&str>) {
        match &self.target {
            TargetCtl::Fake(f) => f.require_dhchap(nqn, host_secret, ctrl_secret),
            TargetCtl::Nvmet { .. } => {
                let h = format!("{NVMET}/hosts/{}", self.identity.hostnqn);
                let _ = std::fs::create_dir(&h);
                assert!(
                    std::path::Path::new(&format!("{h}/dhchap_key")).exists(),
                    "this kernel's nvmet has no DH-HMAC-CHAP (NVME_TARGET_AUTH)"
                );
                wr(format!("{h}/dhchap_key"), host_secret);
                if let Some(c) = ctrl_secret {
                    wr(format!("{h}/dhchap_ctrl_key"), c);
                }
                let s = format!("{NVMET}/subsystems/{nqn}");
                wr(format!("{s}/attr_allow_any_host"), "0");
                std::os::unix::fs::symlink(
                    &h,
                    format!("{s}/allowed_hosts/{}", self.identity.hostnqn),
                )
                .unwrap();
            }
        }
    }

    /// Takes the subsystem off a port (or puts it back).
    pub fn set_port(&self, nqn: &str, port: u16, up: bool) {
        match &self.target {
            TargetCtl::Fake(f) => f.set_port(nqn, (LOCAL, port), up),
            TargetCtl::Nvmet { .. } => {
                let link = format!("{NVMET}/ports/{port}/subsystems/{nqn}");
                if up {
                    std::os::unix::fs::symlink(format!("{NVMET}/subsystems/{nqn}"), link).unwrap();
                } else {
                    std::fs::remove_file(link).unwrap();
                }
            }
        }
    }

    /// What `nvme connect` would do: a controller made outside the agent, same host identity.
    pub fn foreign_connect(&self, nqn: &str, port: u16) -> String {
        let line = format!(
            "transport=tcp,traddr=127.0.0.1,trsvcid={port},nqn={nqn},hostnqn={},hostid={}",
            self.identity.hostnqn, self.identity.hostid
        );
        let reply = self
            .fabrics
            .connect(&self.guard(), &line)
            .expect("foreign connect");
        let i = reply
            .trim()
            .split(',')
            .find_map(|f| f.strip_prefix("instance="))
            .unwrap();
        format!("nvme{i}")
    }

    /// Controllers in sysfs connected to `nqn`, with their states.
    pub fn controllers_of(&self, nqn: &str) -> Vec<(String, String)> {
        let t = volfence::nvme::sysfs::scan(&self.host);
        t.controllers
            .values()
            .filter(|c| c.subsysnqn == nqn)
            .map(|c| (c.name.clone(), c.state.as_str().to_string()))
            .collect()
    }

    pub fn delete_controller(&self, name: &str) {
        self.fabrics.delete_controller(name).unwrap();
    }

    /// Reads/writes through a block device path under the host root.
    pub fn dev(&self, dev: &str) -> PathBuf {
        self.host.path(dev)
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        self.shutdown.cancel();
        if let TargetCtl::Nvmet { made, .. } = &self.target {
            // Initiators first: a target torn down under live controllers leaves I/O queued.
            for (nqn, ports, nsids) in made.lock().unwrap().drain(..) {
                for (name, _) in self.controllers_of(&nqn) {
                    let _ = self.fabrics.delete_controller(&name);
                }
                for p in &ports {
                    let _ = std::fs::remove_file(format!("{NVMET}/ports/{p}/subsystems/{nqn}"));
                    let _ = std::fs::remove_dir(format!("{NVMET}/ports/{p}"));
                }
                for n in nsids {
                    let nd = format!("{NVMET}/subsystems/{nqn}/namespaces/{n}");
                    let _ = std::fs::write(format!("{nd}/enable"), "0");
                    let _ = std::fs::remove_dir(nd);
                }
                let s = format!("{NVMET}/subsystems/{nqn}");
                if let Ok(rd) = std::fs::read_dir(format!("{s}/allowed_hosts")) {
                    for link in rd.flatten() {
                        let _ = std::fs::remove_file(link.path());
                    }
                }
                let _ = std::fs::remove_dir(s);
            }
            // Unlinked from every subsystem above: a host entry goes with its secrets.
            let _ = std::fs::remove_dir(format!("{NVMET}/hosts/{}", self.identity.hostnqn));
        }
    }
}

/// A fence held through the standalone backend (a real FenceLoop over a lock file).
pub async fn held_fence(dir: PathBuf, shutdown: &CancellationToken) -> Fence {
    let holder = Holder {
        node: "nvme-test".into(),
        boot_id: "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0".into(),
    };
    std::fs::create_dir_all(&dir).unwrap();
    let timing = Timing {
        lease_duration: Duration::from_secs(20),
        renew_interval: Duration::from_secs(2),
        safety_margin: Duration::from_secs(4),
    };
    let (lp, fence) = FenceLoop::new(
        FileLease::new(&dir, holder.clone()),
        holder,
        timing,
        volfence::config::LeaseLossAction::Refuse,
        Box::new(|| {}),
        Box::new(LogOnlyLoss),
    );
    tokio::spawn(lp.run(shutdown.clone()));
    for _ in 0..200 {
        if fence.guard().is_ok() {
            return fence;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("standalone fence not held after 2s: {:?}", fence.status());
}

pub fn target(
    nqn: &str,
    ports: &[u16],
    sel: (&str, OptValue),
) -> std::collections::BTreeMap<String, OptValue> {
    let mut m = std::collections::BTreeMap::new();
    m.insert("nqn".into(), OptValue::Str(nqn.into()));
    m.insert(
        "paths".into(),
        OptValue::StrList(ports.iter().map(|p| format!("127.0.0.1:{p}")).collect()),
    );
    m.insert(sel.0.into(), sel.1);
    m
}

/// A Connect request for volume `id`: target options `t`, overrides `o`.
pub fn req(id: &str, t: BTreeMap<String, OptValue>, o: &[(&str, OptValue)]) -> ConnectRequest {
    let o: BTreeMap<String, OptValue> = o.iter().map(|(k, v)| (k.to_string(), v.clone())).collect();
    ConnectRequest {
        volume_id: id.into(),
        target: parse_target(&t).unwrap(),
        overrides: parse_overrides(&o).unwrap(),
    }
}

/// A namespace selector by nsid.
pub fn nsid(n: i64) -> (&'static str, OptValue) {
    ("nsid", OptValue::Int(n))
}

/// Polls `f` every 50 ms until it holds; fails the test after `secs`.
pub async fn until(what: &str, secs: u64, mut f: impl FnMut() -> bool) {
    let end = tokio::time::Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(
            tokio::time::Instant::now() < end,
            "timed out after {secs}s waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
