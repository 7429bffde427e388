//! Test fixtures: a private dbus-daemon, a fake host root, and the real `volfenced` binary
//! started against both.
#![allow(dead_code)]

pub mod agents;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

pub const BOOT_A: &str = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0";
pub const BOOT_B: &str = "9a8b7c6d-5e4f-3a2b-1c0d-e1f2a3b4c5d6";

/// A private bus of the session type whose policy lets any local user connect, so a test can
/// call as a non-root user and see the daemon's own uid check answer.
pub struct PrivateBus {
    pub dir: tempfile::TempDir,
    pub address: String,
    child: Child,
}

impl PrivateBus {
    pub fn start() -> PrivateBus {
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let sock = dir.path().join("bus");
        let conf = dir.path().join("bus.conf");
        std::fs::write(
            &conf,
            format!(
                r#"<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-BUS Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>session</type>
  <listen>unix:path={}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/>
    <allow own="*"/>
    <allow send_type="method_call"/>
    <allow send_type="signal"/>
    <allow send_requested_reply="true" send_type="method_return"/>
    <allow send_requested_reply="true" send_type="error"/>
    <allow receive_type="method_call"/>
    <allow receive_type="method_return"/>
    <allow receive_type="error"/>
    <allow receive_type="signal"/>
    <allow send_destination="org.freedesktop.DBus"/>
  </policy>
</busconfig>
"#,
                sock.display()
            ),
        )
        .unwrap();
        let child = Command::new("dbus-daemon")
            .arg(format!("--config-file={}", conf.display()))
            .arg("--nofork")
            .arg("--nopidfile")
            // Built with systemd support it says READY=1 too: the notify socket is the agent's.
            .env_remove("NOTIFY_SOCKET")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("dbus-daemon (apt package dbus-daemon) must be installed");
        wait_until(Duration::from_secs(10), || sock.exists()).expect("private bus socket");
        std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o777)).unwrap();
        PrivateBus {
            address: format!("unix:path={}", sock.display()),
            dir,
            child,
        }
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for PrivateBus {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Polls `f` until true or the deadline passes (for external processes, which send no events
/// we could wait on).
pub fn wait_until(limit: Duration, mut f: impl FnMut() -> bool) -> Result<(), ()> {
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if f() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    if f() {
        Ok(())
    } else {
        Err(())
    }
}

/// A fake host: root dir with boot id and hostname, and a config file keeping everything inside.
pub struct FakeHost {
    pub root: tempfile::TempDir,
    pub config: PathBuf,
}

impl FakeHost {
    pub fn new(hostname: &str, boot_id: &str, extra_config: &str) -> FakeHost {
        let root = tempfile::tempdir().unwrap();
        volfence_testkit::host::populate(root.path(), boot_id, hostname).unwrap();
        let config = root.path().join("config.toml");
        std::fs::write(
            &config,
            format!(
                "[metrics]\nenabled = false\n[daemon]\nshutdown_timeout = \"5s\"\n{extra_config}"
            ),
        )
        .unwrap();
        FakeHost { root, config }
    }

    pub fn set_boot_id(&self, id: &str) {
        std::fs::write(
            self.root.path().join("proc/sys/kernel/random/boot_id"),
            format!("{id}\n"),
        )
        .unwrap();
    }

    pub fn path(&self, abs: &str) -> PathBuf {
        volfence::host::Host::new(self.root.path()).path(abs)
    }
}

pub fn volfenced() -> Command {
    Command::new(env!("CARGO_BIN_EXE_volfenced"))
}

pub fn volfencectl(bus: &str) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_volfencectl"));
    c.args(["--bus", bus]);
    c
}

/// `volfencectl` run as uid/gid 65534 (nobody), to test what an unprivileged caller gets.
pub fn volfencectl_as_nobody(bus: &str) -> Command {
    let mut c = Command::new("setpriv");
    c.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(env!("CARGO_BIN_EXE_volfencectl"))
        .args(["--bus", bus]);
    c
}

/// A running daemon; killed on drop if the test did not stop it.
pub struct Daemon {
    pub child: Child,
    pub log: PathBuf,
}

impl Daemon {
    pub fn start(host: &FakeHost, bus: &str, envs: &[(&str, &str)]) -> Daemon {
        Self::start_with(host, bus, envs, |_| {})
    }

    /// [`Daemon::start`] with a last say over the command (resource limits, ...).
    pub fn start_with(
        host: &FakeHost,
        bus: &str,
        envs: &[(&str, &str)],
        adjust: impl FnOnce(&mut Command),
    ) -> Daemon {
        let log = host
            .root
            .path()
            .join(format!("daemon-{}.log", std::process::id()));
        let log_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        let mut cmd = volfenced();
        cmd.arg("--config")
            .arg(&host.config)
            .args(["--bus", bus])
            .arg("--host-root")
            .arg(host.root.path())
            .env("RUST_LOG", "info")
            .env_remove("NOTIFY_SOCKET")
            .env_remove("WATCHDOG_USEC")
            .env_remove("JOURNAL_STREAM")
            .stdout(Stdio::null())
            .stderr(log_file);
        for (k, v) in envs {
            cmd.env(k, v);
        }
        adjust(&mut cmd);
        Daemon {
            child: cmd.spawn().unwrap(),
            log,
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.child.id() as i32), sig).unwrap();
    }

    pub fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        let end = Instant::now() + limit;
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st;
            }
            if Instant::now() > end {
                let _ = self.child.kill();
                panic!("daemon did not exit within {limit:?}; log:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `volfencectl status --json`, parsed; None while the daemon does not answer.
pub fn status(bus: &str) -> Option<serde_json::Value> {
    let out = volfencectl(bus)
        .args(["status", "--json"])
        .output()
        .unwrap();
    out.status
        .success()
        .then(|| serde_json::from_slice(&out.stdout).unwrap())
}

/// Waits until `status` shows `state`, returns that status.
pub fn wait_for_state(bus: &str, state: &str, daemon: &Daemon) -> serde_json::Value {
    let mut last = None;
    let ok = wait_until(Duration::from_secs(15), || {
        last = status(bus);
        last.as_ref().is_some_and(|s| s["FenceState"] == state)
    });
    assert!(
        ok.is_ok(),
        "state {state} not reached; last status {last:?}; log:\n{}",
        daemon.log()
    );
    last.unwrap()
}

pub fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

pub fn repo_file(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

/// Makes namespace `ns` if it is not there (a real cluster keeps it for the next run).
pub async fn ensure_namespace(client: &kube::Client, ns: &str) {
    use k8s_openapi::api::core::v1::Namespace;
    let api: kube::Api<Namespace> = kube::Api::all(client.clone());
    let obj: Namespace =
        serde_json::from_value(serde_json::json!({"metadata": {"name": ns}})).unwrap();
    match api.create(&kube::api::PostParams::default(), &obj).await {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 409 => {}
        Err(e) => panic!("creating namespace {ns}: {e}"),
    }
}

/// `kubectl --kubeconfig <kc> <args>`: what a user sees. Panics with kubectl's output when it fails.
pub fn kubectl(kubeconfig: &std::path::Path, args: &[&str]) -> String {
    let bin = std::env::var_os("KUBECTL").unwrap_or_else(|| "/usr/bin/kubectl".into());
    let out = Command::new(&bin)
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "{}: {e} (kubectl is part of this machine kind; set KUBECTL)",
                std::path::Path::new(&bin).display()
            )
        });
    assert!(out.status.success(), "kubectl {args:?}: {}", text(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `volfencectl` on `bus` from async code (off the runtime's threads).
pub async fn ctl(bus: &str, args: &[&str]) -> Output {
    let (bus, args): (String, Vec<String>) = (
        bus.to_string(),
        args.iter().map(|s| s.to_string()).collect(),
    );
    tokio::task::spawn_blocking(move || volfencectl(&bus).args(&args).output().unwrap())
        .await
        .unwrap()
}

/// Behaves like the daemon's log handle: keeps the level it was given.
pub struct Level(pub std::sync::Mutex<String>);

impl Level {
    pub fn new(level: &str) -> std::sync::Arc<Level> {
        std::sync::Arc::new(Level(std::sync::Mutex::new(level.into())))
    }
}

impl volfence::dbus::LogControl for Level {
    fn level(&self) -> String {
        self.0.lock().unwrap().clone()
    }
    fn set_level(&self, f: &str) -> Result<(), String> {
        *self.0.lock().unwrap() = f.to_string();
        Ok(())
    }
}
