//! The daemon's real wiring (`daemon::run_with`: fence loop, volume manager, snapshot manager,
//! D-Bus, supervision, shutdown) started in-process over the testkit's fake kernel, LVM and
//! mount, and driven by the real `volfencectl` on a private bus: what `tests/daemon.rs` cannot
//! reach with the binary, because a file cannot imitate `/dev/nvme-fabrics`.

mod support;

use std::sync::Arc;
use std::time::Duration;

use support::{ctl, text, Level, PrivateBus};
use tokio_util::sync::CancellationToken;
use volfence::config::{BusSpec, Settings};
use volfence::daemon::{self, Parts};
use volfence::host::Host;
use volfence_testkit::lvm::{FakeLvm, FakeMounter};
use volfence_testkit::nvme::FakeKernel;

async fn until_held(
    bus: &str,
    agent: &mut tokio::task::JoinHandle<Result<(), daemon::DaemonError>>,
) {
    for _ in 0..200 {
        if agent.is_finished() {
            panic!(
                "the agent stopped before it held its lease: {:?}",
                agent.await
            );
        }
        let out = ctl(bus, &["status", "--json"]).await;
        if out.status.success() {
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
            if v["FenceState"] == "held" {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the in-process agent never held its lease");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_real_wiring_over_the_fake_kernel_connects_serves_and_stops() {
    let bus = PrivateBus::start();
    let root = tempfile::tempdir().unwrap();
    volfence_testkit::host::populate(root.path(), "0f5e2c1a-8b7d-4e3f-9a2b-1c0d9e8f7a6b", "wired")
        .unwrap();
    let host = Host::new(root.path());
    let mut settings = Settings::defaults("wired");
    settings.dbus = BusSpec::Address(bus.address.clone());
    settings.metrics.listen = None;
    let uevents = volfence::nvme::kernel::event_channel();
    let kernel = FakeKernel::new(host.clone(), uevents.clone(), true);
    let nqn = "nqn.2024-01.io.volfence.test:wired";
    kernel.add_target(
        nqn,
        &[("127.0.0.1".parse().unwrap(), 4420)],
        vec![FakeKernel::namespace(nqn, 1, 32 << 20)],
    );
    let parts = Parts {
        fabrics: Arc::new(kernel.clone()),
        uevents,
        udev_monitor: false,
        lvm: Arc::new(FakeLvm::new(host.clone())),
        mounter: Arc::new(FakeMounter::new(host.clone())),
        reservations: Arc::new(kernel.clone()),
    };
    let opts = daemon::Options {
        settings,
        host: host.clone(),
        config_files: vec![],
        log: Level::new("info"),
    };
    let stop = CancellationToken::new();
    let s = stop.clone();
    let mut agent = tokio::spawn(async move {
        daemon::run_with(opts, parts, async move {
            s.cancelled().await;
            "test stop"
        })
        .await
    });
    let a = bus.address.as_str();
    until_held(a, &mut agent).await;

    let out = ctl(
        a,
        &[
            "connect",
            "vol-w",
            "--nqn",
            nqn,
            "--traddr",
            "127.0.0.1",
            "--nsid",
            "1",
            "--json",
        ],
    )
    .await;
    assert!(out.status.success(), "{}", text(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["State"], "live");
    let dev = v["Device"].as_str().unwrap().to_string();
    assert!(host.path(&dev).exists(), "{dev} in the fake /dev");
    assert_eq!(kernel.controllers().len(), 1);
    let out = ctl(a, &["list", "--json"]).await;
    assert!(text(&out).contains("vol-w"), "{}", text(&out));

    // A stop ends the supervised tasks in order and returns Ok; the volume stays connected
    // (a restart adopts it), and its record says so.
    stop.cancel();
    let ended = tokio::time::timeout(Duration::from_secs(10), agent)
        .await
        .expect("the agent stops within its shutdown timeout")
        .unwrap();
    ended.unwrap();
    assert_eq!(kernel.controllers().len(), 1, "a stop does not disconnect");
    assert!(ctl(a, &["status"]).await.status.code() != Some(0));
}
