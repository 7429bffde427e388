//! The volume API on a private bus, served in-process over the fake kernel, driven by the real
//! `volfencectl`: Connect/Disconnect/ListVolumes, per-volume objects through the ObjectManager,
//! PropertiesChanged, named errors and the uid check.

mod nvme_env;
mod support;

use std::sync::Arc;
use std::time::Duration;

use nvme_env::{Env, MIB};
use support::{ctl, text, volfencectl_as_nobody, Level, PrivateBus};
use volfence::dbus::{self, AgentInfo};

/// An idle snapshot manager over the fake LVM (this test is about volumes).
fn snapshots(env: &Env) -> volfence::snapshot::Snapshots {
    let lvm = volfence::lvm::Lvm::new(Arc::new(volfence_testkit::lvm::FakeLvm::new(
        env.host.clone(),
    )));
    volfence::snapshot::Snapshots::new(
        env.host.clone(),
        lvm,
        Arc::new(volfence_testkit::lvm::FakeMounter::new(env.host.clone())),
        env.settings.snapshots.clone(),
        env.state.path(),
        env.fence.clone(),
        None,
    )
}

/// The agent's objects on `bus`, over `volumes` (no publisher: a test starts its own).
async fn serve(
    bus: &PrivateBus,
    env: &Env,
    volumes: &volfence::nvme::volumes::Volumes,
) -> (
    zbus::Connection,
    zbus::object_server::InterfaceRef<dbus::AgentIface>,
) {
    let conn = zbus::connection::Builder::address(bus.address.as_str())
        .build()
        .await
        .unwrap();
    let info = AgentInfo {
        node: "nvme-test".into(),
        fence_backend: "standalone".into(),
        bus: bus.address.clone(),
        warnings: vec![],
        hardware_watchdog: false,
    };
    let iface = dbus::serve(
        &conn,
        info,
        env.fence.clone(),
        Level::new("info"),
        dbus::Served {
            volumes: volumes.clone(),
            snapshots: snapshots(env),
            claims: None,
            resv: None,
            host_ids: None,
        },
    )
    .await
    .unwrap();
    (conn, iface)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn volumes_over_dbus_and_volfencectl() {
    let bus = PrivateBus::start();
    let env = Env::new().await;
    let nqn = "nqn.2024-01.io.volfence.test:dbus";
    env.add_target(nqn, &[4420, 4421], &[1], 64 * MIB);
    let volumes = env.volumes();
    let (conn, iface) = serve(&bus, &env, &volumes).await;
    tokio::spawn(dbus::volumes::publish_volumes(
        conn.clone(),
        volumes.clone(),
        iface,
        env.shutdown.clone(),
    ));
    let client = zbus::connection::Builder::address(bus.address.as_str())
        .build()
        .await
        .unwrap();
    let om = zbus::fdo::ObjectManagerProxy::builder(&client)
        .destination(dbus::BUS_NAME)
        .path(dbus::MANAGER_PATH)
        .build()
        .await
        .unwrap();
    use futures::StreamExt;
    let mut added = om.receive_interfaces_added().await.unwrap();

    let a = &bus.address;
    let out = ctl(
        a,
        &[
            "connect",
            "vol-1",
            "--nqn",
            nqn,
            "--traddr",
            "127.0.0.1",
            "--path",
            "127.0.0.1:4421",
            "--nsid",
            "1",
            "-o",
            "ctrl_loss_tmo=10",
            "--json",
        ],
    )
    .await;
    assert!(out.status.success(), "{}", text(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["State"], "live");
    assert_eq!(v["Nsid"], 1);
    assert_eq!(v["SizeBytes"], 64 * MIB);
    assert_eq!(v["Paths"].as_array().unwrap().len(), 2);
    assert!(v["StablePath"]
        .as_str()
        .unwrap()
        .starts_with("/dev/disk/by-id/nvme-uuid."));
    assert_eq!(v["ObjectPath"], "/org/volfence/Agent1/volumes/vol_2d1");

    // Announced through the ObjectManager with its properties.
    let ev = tokio::time::timeout(Duration::from_secs(5), added.next())
        .await
        .unwrap()
        .unwrap();
    let args = ev.args().unwrap();
    assert_eq!(
        args.object_path.as_str(),
        "/org/volfence/Agent1/volumes/vol_2d1"
    );
    // Announced once the connect ended, with the final view: no `connecting` object first.
    let props = &args.interfaces_and_properties["org.volfence.Volume1"];
    assert_eq!(props["State"].downcast_ref::<&str>().unwrap(), "live");
    assert_eq!(
        props["Device"].downcast_ref::<&str>().unwrap(),
        v["Device"].as_str().unwrap()
    );

    // Table and show.
    let out = ctl(a, &["list"]).await;
    let t = text(&out);
    assert!(
        out.status.success() && t.contains("VOLUME") && t.contains("vol-1") && t.contains("live"),
        "{t}"
    );
    let out = ctl(a, &["show", "vol-1"]).await;
    assert!(text(&out).contains("path:        nvme"), "{}", text(&out));
    let out = ctl(a, &["show", "nope"]).await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));

    // PropertiesChanged when a path goes down.
    let vol = zbus::proxy::Builder::<zbus::fdo::PropertiesProxy>::new(&client)
        .destination(dbus::BUS_NAME)
        .path("/org/volfence/Agent1/volumes/vol_2d1")
        .build()
        .await
        .unwrap();
    let mut changed = vol.receive_properties_changed().await.unwrap();
    volumes.refresh();
    env.set_port(nqn, 4421, false);
    volumes.refresh();
    let ev = tokio::time::timeout(Duration::from_secs(5), changed.next())
        .await
        .unwrap()
        .unwrap();
    let args = ev.args().unwrap();
    assert_eq!(args.interface_name.as_str(), "org.volfence.Volume1");
    // One signal carries the whole change: the state and the path that caused it.
    let changed = args.changed_properties();
    assert_eq!(
        changed["State"].downcast_ref::<&str>().unwrap(),
        "degraded",
        "{changed:?}"
    );
    let paths: Vec<(String, String, String)> =
        changed["Paths"].try_clone().unwrap().try_into().unwrap();
    assert!(
        paths.iter().any(|p| p.2 != "live") && paths.len() == 2,
        "{paths:?}"
    );
    let state = vol
        .get("org.volfence.Volume1".try_into().unwrap(), "State")
        .await
        .unwrap();
    assert_eq!(state.downcast_ref::<&str>().unwrap(), "degraded");
    env.set_port(nqn, 4421, true);

    // Named errors, with the key in the message; exit code 1.
    let out = ctl(
        a,
        &[
            "connect",
            "vol-2",
            "--nqn",
            "nqn.bad",
            "--traddr",
            "127.0.0.1",
            "--nsid",
            "1",
        ],
    )
    .await;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out).contains("org.volfence.Error.InvalidArgument: nqn:"),
        "{}",
        text(&out)
    );
    let out = ctl(
        a,
        &[
            "connect",
            "vol-2",
            "--nqn",
            nqn,
            "--traddr",
            "127.0.0.1",
            "--nsid",
            "1",
            "-o",
            "queue_size=8",
        ],
    )
    .await;
    assert!(
        text(&out).contains("InvalidArgument: queue_size: expected an integer 16..=1024"),
        "{}",
        text(&out)
    );
    let out = ctl(
        a,
        &[
            "connect",
            "vol-2",
            "--nqn",
            nqn,
            "--traddr",
            "127.0.0.1",
            "--nsid",
            "1",
            "-o",
            "bogus=1",
        ],
    )
    .await;
    assert!(
        text(&out).contains("unknown option key \"bogus\""),
        "{}",
        text(&out)
    );
    let out = ctl(
        a,
        &[
            "connect",
            "vol-3",
            "--nqn",
            nqn,
            "--traddr",
            "127.0.0.1",
            "--nsid",
            "3",
            "-o",
            "timeout_ms=1500",
        ],
    )
    .await;
    assert!(
        text(&out).contains("org.volfence.Error.DeviceNotFound"),
        "{}",
        text(&out)
    );

    // Non-root callers may list but not connect.
    let (b2, nqn2) = (a.clone(), nqn.to_string());
    let out = tokio::task::spawn_blocking(move || {
        volfencectl_as_nobody(&b2)
            .args([
                "connect",
                "vol-9",
                "--nqn",
                &nqn2,
                "--traddr",
                "127.0.0.1",
                "--nsid",
                "1",
            ])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    if out.status.code() != Some(3) {
        // (3 = the sandbox has no unprivileged user that can reach the bus)
        assert_eq!(out.status.code(), Some(4), "{}", text(&out));
    }

    // Status shows the count and the missing watchdog.
    let out = ctl(a, &["status", "--json"]).await;
    let s: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(s["Volumes"], 1);
    assert!(
        s["Warnings"].to_string().contains("no hardware watchdog"),
        "{s}"
    );

    let mut removed = om.receive_interfaces_removed().await.unwrap();
    let out = ctl(a, &["disconnect", "vol-1"]).await;
    assert!(out.status.success(), "{}", text(&out));
    let ev = tokio::time::timeout(Duration::from_secs(5), removed.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        ev.args().unwrap().object_path.as_str(),
        "/org/volfence/Agent1/volumes/vol_2d1"
    );
    let out = ctl(a, &["disconnect", "vol-1"]).await;
    assert!(
        out.status.success(),
        "disconnecting twice succeeds: {}",
        text(&out)
    );
    let out = ctl(a, &["list", "--json"]).await;
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "[]");
    assert!(env.controllers_of(nqn).is_empty());
}

/// The object `Connect` names in its reply exists when the reply arrives, and is gone when
/// `Disconnect` returns: the calls themselves see to it, not the publisher that follows later
/// changes (not running here, so nothing else could have made or removed the object).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_object_a_connect_names_exists_when_it_replies() {
    let bus = PrivateBus::start();
    let env = Env::new().await;
    let nqn = "nqn.2024-01.io.volfence.test:dbusobj";
    env.add_target(nqn, &[4424], &[1], 16 * MIB);
    let volumes = env.volumes();
    let (_conn, _iface) = serve(&bus, &env, &volumes).await;
    let client = zbus::connection::Builder::address(bus.address.as_str())
        .build()
        .await
        .unwrap();
    let agent = volfence::dbus::client::Agent1Proxy::builder(&client)
        .cache_properties(zbus::proxy::CacheProperties::No)
        .build()
        .await
        .unwrap();
    let target = std::collections::HashMap::from([
        ("nqn", zbus::Variant::from(nqn)),
        ("traddr", "127.0.0.1".into()),
        ("trsvcid", 4424u32.into()),
        ("nsid", 1u32.into()),
    ]);
    let (device, info) = agent
        .connect("vol-o", target, Default::default())
        .await
        .unwrap();
    let path = zbus::OwnedObjectPath::try_from(info["ObjectPath"].clone()).unwrap();
    let props = zbus::fdo::PropertiesProxy::builder(&client)
        .destination(dbus::BUS_NAME)
        .path(path.clone())
        .build()
        .await
        .unwrap();
    let iface = zbus::names::InterfaceName::from_static_str("org.volfence.Volume1").unwrap();
    let all = props.get_all(iface.clone()).await.unwrap();
    assert_eq!(all["State"].downcast_ref::<&str>().unwrap(), "live");
    assert_eq!(all["Device"].downcast_ref::<&str>().unwrap(), device);
    agent.disconnect("vol-o", Default::default()).await.unwrap();
    let gone = props.get_all(iface).await.unwrap_err();
    assert!(
        matches!(
            gone,
            zbus::fdo::Error::UnknownObject(_) | zbus::fdo::Error::UnknownInterface(_)
        ),
        "{gone:?}"
    );
}
