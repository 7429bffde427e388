//! The real `volfenced` and `volfencectl` binaries on a private D-Bus, against a fake host root.

mod support;

use std::io::{Read, Write};
use std::os::unix::net::UnixDatagram;
use std::process::{Command, Stdio};
use std::time::Duration;

use nix::sys::signal::Signal;
use support::*;

#[test]
fn status_answers_with_node_fence_state_and_standalone_warning() {
    let bus = PrivateBus::start();
    let host = FakeHost::new("worker-7", BOOT_A, "");
    let mut d = Daemon::start(&host, &bus.address, &[]);
    let s = wait_for_state(&bus.address, "held", &d);
    assert_eq!(s["NodeName"], "worker-7");
    assert_eq!(s["Epoch"], 1);
    assert_eq!(s["FenceBackend"], "standalone");
    assert_eq!(s["Holder"], format!("worker-7/{BOOT_A}"));
    assert!(s["ValidForMs"].as_u64().unwrap() > 0);
    assert!(
        s["Warnings"][0]
            .as_str()
            .unwrap()
            .contains("NO cross-host fencing"),
        "{s}"
    );
    // the human form carries the same facts
    let out = volfencectl(&bus.address).arg("status").output().unwrap();
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    assert!(
        t.contains("on node worker-7") && t.contains("held, epoch 1") && t.contains("WARNING"),
        "{t}"
    );
    assert!(
        d.log().contains("NO cross-host fencing"),
        "loud startup warning missing:\n{}",
        d.log()
    );

    d.signal(Signal::SIGTERM);
    let st = d.wait_exit(Duration::from_secs(10));
    assert_eq!(st.code(), Some(0), "log:\n{}", d.log());
    // name released: the CLI says "not running" with its documented exit code
    let out = volfencectl(&bus.address).arg("status").output().unwrap();
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert!(
        text(&out).contains("volfenced is not running"),
        "{}",
        text(&out)
    );
}

#[test]
fn sigint_also_stops_cleanly() {
    let bus = PrivateBus::start();
    let host = FakeHost::new("n1", BOOT_A, "");
    let mut d = Daemon::start(&host, &bus.address, &[]);
    wait_for_state(&bus.address, "held", &d);
    d.signal(Signal::SIGINT);
    assert_eq!(
        d.wait_exit(Duration::from_secs(10)).code(),
        Some(0),
        "{}",
        d.log()
    );
}

#[test]
fn restart_in_same_boot_resumes_epoch_and_reboot_bumps_it() {
    let bus = PrivateBus::start();
    let host = FakeHost::new("n1", BOOT_A, "");
    for (boot, want) in [(BOOT_A, 1), (BOOT_A, 1), (BOOT_B, 2), (BOOT_B, 2)] {
        host.set_boot_id(boot);
        let mut d = Daemon::start(&host, &bus.address, &[]);
        let s = wait_for_state(&bus.address, "held", &d);
        assert_eq!(s["Epoch"], want, "boot {boot}");
        d.signal(Signal::SIGTERM);
        assert_eq!(d.wait_exit(Duration::from_secs(10)).code(), Some(0));
    }
}

#[test]
fn second_instance_on_the_same_bus_exits_non_zero_and_says_why() {
    let bus = PrivateBus::start();
    let h1 = FakeHost::new("n1", BOOT_A, "");
    let d1 = Daemon::start(&h1, &bus.address, &[]);
    wait_for_state(&bus.address, "held", &d1);
    let h2 = FakeHost::new("n2", BOOT_B, "");
    let mut d2 = Daemon::start(&h2, &bus.address, &[]);
    let st = d2.wait_exit(Duration::from_secs(10));
    assert_eq!(st.code(), Some(1));
    assert!(
        d2.log().contains("is another volfenced running?"),
        "{}",
        d2.log()
    );
    // the first one is unaffected
    assert_eq!(status(&bus.address).unwrap()["NodeName"], "n1");
}

#[test]
fn second_agent_on_the_same_host_is_a_conflict_not_a_second_holder() {
    let bus1 = PrivateBus::start();
    let bus2 = PrivateBus::start();
    let host = FakeHost::new("n1", BOOT_A, "");
    let d1 = Daemon::start(&host, &bus1.address, &[]);
    wait_for_state(&bus1.address, "held", &d1);
    let d2 = Daemon::start(&host, &bus2.address, &[]);
    let s = wait_for_state(&bus2.address, "conflict", &d2);
    assert!(
        s["FenceMessage"]
            .as_str()
            .unwrap()
            .contains("only one volfenced"),
        "{s}"
    );
    assert_eq!(status(&bus1.address).unwrap()["FenceState"], "held");
}

#[test]
fn losing_the_lease_fences_signals_and_regains_with_a_new_epoch() {
    let bus = PrivateBus::start();
    let host = FakeHost::new(
        "n1",
        BOOT_A,
        "[fence]\nlease_duration = \"2s\"\nrenew_interval = \"500ms\"\nsafety_margin = \"500ms\"\n",
    );
    let d = Daemon::start(&host, &bus.address, &[]);
    wait_for_state(&bus.address, "held", &d);

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let seen = rt.block_on(async {
        use zbus::export::futures_core::Stream;
        let conn = zbus::connection::Builder::address(bus.address.as_str())
            .build()
            .await
            .unwrap();
        let proxy = volfence::dbus::client::Agent1Proxy::new(&conn)
            .await
            .unwrap();
        let mut sigs = proxy.receive_fence_transition().await.unwrap();
        // Replacing the lock file is what another agent would need to get in: it must count as a loss.
        std::fs::remove_file(host.path("/var/lib/volfence/fence.lock")).unwrap();
        let mut seen = Vec::new();
        let collect = async {
            while let Some(sig) =
                std::future::poll_fn(|cx| std::pin::Pin::new(&mut sigs).poll_next(cx)).await
            {
                let a = sig.args().unwrap();
                seen.push((a.state().to_string(), *a.epoch()));
                if a.state() == "held" {
                    break;
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(10), collect)
            .await
            .expect("signals");
        assert_eq!(proxy.epoch().await.unwrap(), 2);
        seen
    });
    assert_eq!(
        seen,
        vec![("fenced".to_string(), 1), ("held".to_string(), 2)],
        "log:\n{}",
        d.log()
    );
}

#[test]
fn mutating_method_checks_the_callers_uid_in_process() {
    // The private bus lets anyone call anything: only the daemon's own check stands.
    let bus = PrivateBus::start();
    let host = FakeHost::new("n1", BOOT_A, "");
    let d = Daemon::start(&host, &bus.address, &[]);
    wait_for_state(&bus.address, "held", &d);
    let out = volfencectl_as_nobody(&bus.address)
        .args(["set-log-level", "debug"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(4), "{}", text(&out));
    assert!(
        text(&out).contains("org.volfence.Error.AccessDenied"),
        "{}",
        text(&out)
    );
    assert!(text(&out).contains("caller uid 65534"), "{}", text(&out));
    // reading is allowed for anyone
    let out = volfencectl_as_nobody(&bus.address)
        .args(["status", "--json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(status(&bus.address).unwrap()["LogLevel"], "info");

    // root may, and a bad filter is an InvalidArgument naming the input
    let out = volfencectl(&bus.address)
        .args(["set-log-level", "debug"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(status(&bus.address).unwrap()["LogLevel"], "debug");
    let out = volfencectl(&bus.address)
        .args(["set-log-level", "volfence=loud"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("org.volfence.Error.InvalidArgument")
            && text(&out).contains("volfence=loud"),
        "{}",
        text(&out)
    );
}

#[test]
fn losing_the_bus_is_fatal_and_exits_non_zero() {
    let mut bus = PrivateBus::start();
    let host = FakeHost::new("n1", BOOT_A, "");
    let mut d = Daemon::start(&host, &bus.address, &[]);
    wait_for_state(&bus.address, "held", &d);
    bus.kill();
    let st = d.wait_exit(Duration::from_secs(10));
    assert_eq!(st.code(), Some(1), "log:\n{}", d.log());
    assert!(
        d.log().contains("critical task dbus-connection stopped"),
        "{}",
        d.log()
    );
}

/// A NOTIFY_SOCKET listener like systemd's.
fn notify_listener(dir: &std::path::Path) -> (UnixDatagram, String) {
    let path = dir.join("notify.sock");
    let sock = UnixDatagram::bind(&path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    (sock, path.display().to_string())
}

fn recv_until(sock: &UnixDatagram, want: &str, log: &mut Vec<String>) -> bool {
    let mut buf = [0u8; 4096];
    while let Ok(n) = sock.recv(&mut buf) {
        let msg = String::from_utf8_lossy(&buf[..n]).to_string();
        let hit = msg.lines().any(|l| l == want);
        log.push(msg);
        if hit {
            return true;
        }
    }
    false
}

#[test]
fn sd_notify_ready_status_watchdog_from_renews_and_stopping() {
    let bus = PrivateBus::start();
    let host = FakeHost::new(
        "n1",
        BOOT_A,
        "[fence]\nlease_duration = \"4s\"\nrenew_interval = \"1s\"\nsafety_margin = \"1s\"\n",
    );
    let (sock, path) = notify_listener(host.root.path());
    let pid_env = String::new();
    let mut d = Daemon::start(
        &host,
        &bus.address,
        &[
            ("NOTIFY_SOCKET", &path),
            ("WATCHDOG_USEC", "10000000"),
            ("WATCHDOG_PID", &pid_env),
        ],
    );
    let mut got = Vec::new();
    assert!(
        recv_until(&sock, "READY=1", &mut got),
        "{got:?}\n{}",
        d.log()
    );
    // READY comes after the name is owned: the CLI answers right away
    assert!(status(&bus.address).is_some());
    assert!(got.iter().any(|m| m.contains("STATUS=")), "{got:?}");
    assert!(recv_until(&sock, "WATCHDOG=1", &mut got), "{got:?}");
    assert!(
        recv_until(&sock, "WATCHDOG=1", &mut got),
        "second renew ping missing: {got:?}"
    );
    d.signal(Signal::SIGTERM);
    assert!(recv_until(&sock, "STOPPING=1", &mut got), "{got:?}");
    assert_eq!(d.wait_exit(Duration::from_secs(10)).code(), Some(0));
}

#[test]
fn no_watchdog_pings_without_watchdog_usec() {
    let bus = PrivateBus::start();
    let host = FakeHost::new(
        "n1",
        BOOT_A,
        "[fence]\nlease_duration = \"4s\"\nrenew_interval = \"1s\"\nsafety_margin = \"1s\"\n",
    );
    let (sock, path) = notify_listener(host.root.path());
    sock.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let _d = Daemon::start(&host, &bus.address, &[("NOTIFY_SOCKET", &path)]);
    let mut got = Vec::new();
    assert!(!recv_until(&sock, "WATCHDOG=1", &mut got), "{got:?}");
    assert!(got.iter().any(|m| m.contains("READY=1")), "{got:?}");
}

#[test]
fn metrics_endpoint_serves_fence_state() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let bus = PrivateBus::start();
    let host = FakeHost::new("n1", BOOT_A, "");
    // later keys win over the fixture's `enabled = false`
    std::fs::write(
        &host.config,
        format!("[daemon]\nshutdown_timeout = \"5s\"\n[metrics]\nlisten = \"127.0.0.1:{port}\"\n"),
    )
    .unwrap();
    let d = Daemon::start(&host, &bus.address, &[]);
    wait_for_state(&bus.address, "held", &d);
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut body = String::new();
    s.read_to_string(&mut body).unwrap();
    assert!(body.starts_with("HTTP/1.1 200"), "{body}");
    assert!(
        body.contains("volfence_fence_state{state=\"held\"} 1"),
        "{body}"
    );
    assert!(body.contains("volfence_fence_epoch 1"), "{body}");
}

#[test]
fn check_config_names_file_line_column_and_suggests_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("typo.toml");
    std::fs::write(
        &f,
        "[fence]\nbackend = \"standalone\"\nleas_duration = \"10s\"\n",
    )
    .unwrap();
    let out = volfenced()
        .arg("--config")
        .arg(&f)
        .arg("--check-config")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr).trim(),
        format!("volfenced: {}:3:1: unknown key `fence.leas_duration` (did you mean `fence.lease_duration`?)", f.display())
    );
    let out = volfenced()
        .arg("--config")
        .arg(repo_file("config.toml.example"))
        .arg("--check-config")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("configuration OK"), "{}", text(&out));
}

#[test]
fn kubernetes_backend_without_a_cluster_configuration_fails_clearly() {
    let bus = PrivateBus::start();
    let host = FakeHost::new("n1", BOOT_A, "[fence]\nbackend = \"kubernetes\"\n[kubernetes]\nkubeconfig = \"/nonexistent/kubeconfig\"\n");
    let mut d = Daemon::start(&host, &bus.address, &[]);
    assert_eq!(d.wait_exit(Duration::from_secs(10)).code(), Some(1));
    assert!(
        d.log().contains("kubeconfig /nonexistent/kubeconfig:"),
        "{}",
        d.log()
    );
}

#[test]
fn cli_without_a_bus_exits_3_with_one_line() {
    let out = volfencectl("unix:path=/nonexistent/bus")
        .arg("status")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(
        err.starts_with("volfencectl: volfenced is not running"),
        "{err}"
    );
    let out = volfencectl("sytem").arg("status").output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
}

#[test]
fn restart_resumes_the_epoch_only_while_the_previous_holding_is_still_valid() {
    let bus = PrivateBus::start();
    let host = FakeHost::new(
        "n1",
        BOOT_A,
        "[fence]\nlease_duration = \"2s\"\nrenew_interval = \"500ms\"\nsafety_margin = \"500ms\"\n",
    );
    let mut d = Daemon::start(&host, &bus.address, &[]);
    assert_eq!(wait_for_state(&bus.address, "held", &d)["Epoch"], 1);
    // crash, back at once: still inside the old validity, so the holding resumes
    d.signal(Signal::SIGKILL);
    d.wait_exit(Duration::from_secs(5));
    let mut d = Daemon::start(&host, &bus.address, &[]);
    assert_eq!(wait_for_state(&bus.address, "held", &d)["Epoch"], 1);
    // crash, back after D − M: observers may have acted, so a new epoch
    d.signal(Signal::SIGKILL);
    d.wait_exit(Duration::from_secs(5));
    std::thread::sleep(Duration::from_millis(2000));
    let d = Daemon::start(&host, &bus.address, &[]);
    assert_eq!(
        wait_for_state(&bus.address, "held", &d)["Epoch"],
        2,
        "{}",
        d.log()
    );
    assert!(d.log().contains("lapsed while no agent ran"), "{}", d.log());
}

/// Opens `n` connections to 127.0.0.1:`port` as uid 65534 and holds them for `hold_s`; every
/// other one sends half a request and never finishes it. Prints the count once all are open.
const FLOODER: &str = r#"
import resource, socket, sys, time
n, port, hold = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
_, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
held = []
for i in range(n):
    s = socket.socket()
    s.setblocking(False)
    try:
        s.connect(("127.0.0.1", port))
    except BlockingIOError:
        pass
    if i % 2:
        try:
            s.send(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
        except OSError:
            pass
    held.append(s)
print(len(held), flush=True)
time.sleep(hold)
"#;

#[test]
fn metrics_flood_by_an_unprivileged_user_leaves_the_fence_held_and_the_log_quiet() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let bus = PrivateBus::start();
    let host = FakeHost::new("n1", BOOT_A, "");
    std::fs::write(
        &host.config,
        format!(
            "[daemon]\nshutdown_timeout = \"5s\"\n[metrics]\nlisten = \"127.0.0.1:{port}\"\n\
             [fence]\nlease_duration = \"4s\"\nrenew_interval = \"1s\"\nsafety_margin = \"1s\"\n"
        ),
    )
    .unwrap();
    // A small descriptor table, so 3,000 held connections would exhaust it many times over.
    let mut d = Daemon::start_with(&host, &bus.address, &[], |cmd| unsafe {
        use std::os::unix::process::CommandExt;
        cmd.pre_exec(|| {
            nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE, 256, 256)
                .map_err(std::io::Error::from)
        });
    });
    let epoch = wait_for_state(&bus.address, "held", &d)["Epoch"].clone();
    let mut flood = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "/usr/bin/python3",
            "-c",
        ])
        .arg(FLOODER)
        .args(["3000", &port.to_string(), "10"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut opened = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(flood.stdout.take().unwrap()),
        &mut opened,
    )
    .unwrap();
    assert_eq!(
        opened.trim(),
        "3000",
        "the flooder could not open its connections"
    );
    // Held for longer than two lease durations: the fence never wavers.
    let end = std::time::Instant::now() + Duration::from_secs(9);
    while std::time::Instant::now() < end {
        let st = status(&bus.address).expect("the agent answers during the flood");
        assert_eq!(st["FenceState"], "held", "{st}\nlog:\n{}", d.log());
        assert_eq!(st["Epoch"], epoch, "{st}");
        std::thread::sleep(Duration::from_millis(250));
    }
    flood.kill().unwrap();
    flood.wait().unwrap();
    // The endpoint serves again once the flood is gone.
    let served = wait_until(Duration::from_secs(40), || {
        let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
            return false;
        };
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let mut body = String::new();
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .is_ok()
            && s.read_to_string(&mut body).is_ok()
            && body.starts_with("HTTP/1.1 200")
    });
    assert!(
        served.is_ok(),
        "metrics never served again; log:\n{}",
        d.log()
    );
    let log = d.log();
    assert!(
        !log.contains("-> fenced") && !log.contains("-> expiring"),
        "{log}"
    );
    assert!(
        log.lines().count() < 30,
        "the flood made the log grow: {} lines\n{log}",
        log.lines().count()
    );
    d.signal(nix::sys::signal::Signal::SIGTERM);
    assert!(
        d.wait_exit(Duration::from_secs(10)).success(),
        "{}",
        d.log()
    );
}

/// `busctl` against a private bus: `(exit status, stdout + stderr)`.
fn busctl(bus: &str, args: &[&str]) -> (bool, String) {
    let out = Command::new("busctl")
        .arg(format!("--address={bus}"))
        .args(args)
        .output()
        .unwrap();
    (out.status.success(), text(&out))
}

#[test]
fn bad_requests_are_invalid_argument_whatever_the_fence_says() {
    let bus1 = PrivateBus::start();
    let bus2 = PrivateBus::start();
    let host = FakeHost::new("n1", BOOT_A, "");
    let d1 = Daemon::start(&host, &bus1.address, &[]);
    wait_for_state(&bus1.address, "held", &d1);
    // The second agent on the host is in conflict: it grants no guard.
    let d2 = Daemon::start(&host, &bus2.address, &[]);
    wait_for_state(&bus2.address, "conflict", &d2);
    let out = volfencectl(&bus2.address)
        .args(["connect", "bad/id", "--nqn", "nqn.2014-08.org.example:x"])
        .args(["--traddr", "10.0.0.5", "--nsid", "1"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("InvalidArgument") && text(&out).contains("volume_id"),
        "{}",
        text(&out)
    );
    let out = volfencectl(&bus2.address)
        .args(["snapshot", "start", "../escape", "vg0", "data"])
        .output()
        .unwrap();
    assert!(
        text(&out).contains("InvalidArgument") && text(&out).contains("request_id"),
        "{}",
        text(&out)
    );
    // A good request while fenced is refused for the fence, as before.
    let out = volfencectl(&bus2.address)
        .args(["connect", "vol-a", "--nqn", "nqn.2014-08.org.example:x"])
        .args(["--traddr", "10.0.0.5", "--nsid", "1"])
        .output()
        .unwrap();
    assert!(text(&out).contains("NotFenced"), "{}", text(&out));
}

#[test]
fn read_only_properties_log_levels_disconnect_options_and_bus_addresses() {
    let bus = PrivateBus::start();
    let host = FakeHost::new("n1", BOOT_A, "");
    let d = Daemon::start(&host, &bus.address, &[]);
    wait_for_state(&bus.address, "held", &d);
    let (ok, out) = busctl(
        &bus.address,
        &[
            "set-property",
            "org.volfence.Agent1",
            "/org/volfence/Agent1",
            "org.volfence.Agent1",
            "FenceState",
            "s",
            "held",
        ],
    );
    assert!(!ok && out.contains("read-only"), "{out}");
    let (ok, out) = busctl(
        &bus.address,
        &[
            "call",
            "org.volfence.Agent1",
            "/org/volfence/Agent1",
            "org.freedesktop.DBus.Properties",
            "Set",
            "ssv",
            "org.volfence.Agent1",
            "NoSuchProperty",
            "s",
            "x",
        ],
    );
    assert!(!ok && out.contains("nknown property"), "{out}");
    for bad in ["", "-x", "info,", "volfence=loud"] {
        let out = volfencectl(&bus.address)
            .args(["set-log-level", "--", bad])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{bad:?}: {}", text(&out));
        assert!(
            text(&out).contains("InvalidArgument"),
            "{bad:?}: {}",
            text(&out)
        );
    }
    assert_eq!(status(&bus.address).unwrap()["LogLevel"], "info");
    let out = volfencectl(&bus.address)
        .args(["set-log-level", "volfence=debug,zbus=warn"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    // Disconnect reads timeout_ms as Connect does: an integer or decimal text.
    for (sig, value) in [("u", "5000"), ("s", "5000")] {
        let (ok, out) = busctl(
            &bus.address,
            &[
                "call",
                "org.volfence.Agent1",
                "/org/volfence/Agent1",
                "org.volfence.Agent1",
                "Disconnect",
                "sa{sv}",
                "vol-x",
                "1",
                "timeout_ms",
                sig,
                value,
            ],
        );
        assert!(ok, "{sig}: {out}");
    }
    let (ok, out) = busctl(
        &bus.address,
        &[
            "call",
            "org.volfence.Agent1",
            "/org/volfence/Agent1",
            "org.volfence.Agent1",
            "Disconnect",
            "sa{sv}",
            "vol-x",
            "1",
            "timeout_ms",
            "s",
            "soon",
        ],
    );
    assert!(!ok && out.contains("timeout_ms"), "{out}");
    for bad in [":", "unix:", "unix:path", "tcp:host=", "nonsense"] {
        let out = volfencectl(bad).arg("status").output().unwrap();
        assert_eq!(out.status.code(), Some(2), "--bus {bad:?}: {}", text(&out));
    }
}
