//! `kubectl` against the API emulator, as a user runs it: discovery, tables, watch, delete,
//! label (a strategic merge patch) and server-side apply. With `KUBECONFIG` set, against that
//! cluster, in a namespace of its own. The emulator serves no OpenAPI document, so `create -f`
//! and `apply -f` run with `--validate=false` (the server validates either way).

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::kubectl;

struct Target {
    _emu: Option<volfence_kube_emulator::Emulator>,
    kubeconfig: std::path::PathBuf,
    ns: String,
    _dir: tempfile::TempDir,
    _rt: tokio::runtime::Runtime,
}

impl Drop for Target {
    fn drop(&mut self) {
        let _ = Command::new("/usr/bin/kubectl")
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(["delete", "namespace", &self.ns, "--wait=false"])
            .output();
    }
}

fn target() -> Target {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (emu, kubeconfig) = match std::env::var_os("KUBECONFIG") {
        Some(p) => (None, std::path::PathBuf::from(p)),
        None => {
            let emu = rt
                .block_on(volfence_kube_emulator::Emulator::start(
                    "127.0.0.1:0".parse().unwrap(),
                ))
                .unwrap();
            let p = dir.path().join("kubeconfig");
            std::fs::write(&p, emu.kubeconfig("user")).unwrap();
            (Some(emu), p)
        }
    };
    let ns = format!("volfence-kubectl-{}", std::process::id());
    kubectl(&kubeconfig, &["create", "namespace", &ns]);
    Target {
        _emu: emu,
        kubeconfig,
        ns,
        _dir: dir,
        _rt: rt,
    }
}

fn lease_yaml(ns: &str, name: &str, holder: &str) -> String {
    format!(
        "apiVersion: coordination.k8s.io/v1\nkind: Lease\nmetadata:\n  name: {name}\n  namespace: {ns}\nspec:\n  holderIdentity: {holder}\n  leaseDurationSeconds: 10\n"
    )
}

/// kubectl with `input` on its standard input, whatever its exit status.
fn kubectl_with_input(kc: &std::path::Path, args: &[&str], input: &str) -> std::process::Output {
    use std::io::Write;
    let mut child = Command::new("/usr/bin/kubectl")
        .arg("--kubeconfig")
        .arg(kc)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

/// kubectl with `input` on its standard input, which must succeed: its standard output.
fn kubectl_stdin(kc: &std::path::Path, args: &[&str], input: &str) -> String {
    let out = kubectl_with_input(kc, args, input);
    assert!(
        out.status.success(),
        "kubectl {args:?}: {}",
        support::text(&out)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn get_describe_label_apply_and_delete_as_a_user_does() {
    let t = target();
    let kc = &t.kubeconfig;
    let ns = t.ns.as_str();
    // Discovery works: resources by name, short name and group.
    let all = kubectl(kc, &["get", "namespaces"]);
    assert!(
        all.starts_with("NAME") && all.contains("STATUS") && all.contains(ns),
        "{all}"
    );
    assert!(
        all.contains("kube-node-lease") && all.contains("Active"),
        "{all}"
    );
    let created = kubectl_stdin(
        kc,
        &["create", "--validate=false", "-f", "-"],
        &lease_yaml(ns, "node-a", "node-a/boot-1"),
    );
    assert_eq!(created.trim(), "lease.coordination.k8s.io/node-a created");
    let table = kubectl(kc, &["get", "leases.coordination.k8s.io", "-n", ns]);
    let lines: Vec<&str> = table.lines().collect();
    assert!(
        lines[0].starts_with("NAME") && lines[0].contains("HOLDER") && lines[0].contains("AGE"),
        "{table}"
    );
    assert!(
        lines[1].starts_with("node-a") && lines[1].contains("node-a/boot-1"),
        "{table}"
    );
    let across = kubectl(kc, &["get", "leases", "-A"]);
    assert!(
        across.starts_with("NAMESPACE") && across.contains(ns),
        "{across}"
    );
    let one = kubectl(
        kc,
        &[
            "get",
            "lease",
            "node-a",
            "-n",
            ns,
            "-o",
            "jsonpath={.spec.holderIdentity}",
        ],
    );
    assert_eq!(one, "node-a/boot-1");

    // kubectl label: a strategic merge patch; then select on it.
    kubectl(
        kc,
        &[
            "label",
            "lease",
            "node-a",
            "-n",
            ns,
            "volfence.io/role=node",
        ],
    );
    let selected = kubectl(
        kc,
        &[
            "get",
            "leases",
            "-n",
            ns,
            "-l",
            "volfence.io/role=node",
            "-o",
            "name",
        ],
    );
    assert_eq!(selected.trim(), "lease.coordination.k8s.io/node-a");
    let none = kubectl(
        kc,
        &[
            "get",
            "leases",
            "-n",
            ns,
            "-l",
            "volfence.io/role notin (node)",
            "-o",
            "name",
        ],
    );
    assert_eq!(none.trim(), "");
    let by_field = kubectl(
        kc,
        &[
            "get",
            "leases",
            "-n",
            ns,
            "--field-selector",
            "metadata.name=node-a",
            "-o",
            "name",
        ],
    );
    assert_eq!(by_field.trim(), "lease.coordination.k8s.io/node-a");

    // Server-side apply, then the managed fields name both managers.
    kubectl_stdin(
        kc,
        &[
            "apply",
            "--server-side",
            "--validate=false",
            "--field-manager=ops",
            "-f",
            "-",
        ],
        &lease_yaml(ns, "node-b", "node-b/boot-1"),
    );
    let conflict = kubectl_with_input(
        kc,
        &[
            "apply",
            "--server-side",
            "--validate=false",
            "--field-manager=other",
            "-f",
            "-",
        ],
        &lease_yaml(ns, "node-b", "node-b/boot-2"),
    );
    assert!(!conflict.status.success(), "{}", support::text(&conflict));
    assert!(
        support::text(&conflict).contains("conflict"),
        "{}",
        support::text(&conflict)
    );
    let managers = kubectl(
        kc,
        &[
            "get",
            "lease",
            "node-b",
            "-n",
            ns,
            "--show-managed-fields",
            "-o",
            "jsonpath={.metadata.managedFields[*].manager}",
        ],
    );
    assert_eq!(managers, "ops");

    let described = kubectl(kc, &["describe", "lease", "node-a", "-n", ns]);
    assert!(
        described.contains("Holder Identity:") && described.contains("node-a/boot-1"),
        "{described}"
    );
    let deleted = kubectl(kc, &["delete", "lease", "node-a", "-n", ns]);
    assert_eq!(
        deleted.trim(),
        "lease.coordination.k8s.io \"node-a\" deleted"
    );
    let gone = Command::new("/usr/bin/kubectl")
        .arg("--kubeconfig")
        .arg(kc)
        .args(["get", "lease", "node-a", "-n", ns])
        .output()
        .unwrap();
    assert!(!gone.status.success());
    assert!(
        support::text(&gone).contains("leases.coordination.k8s.io \"node-a\" not found"),
        "{}",
        support::text(&gone)
    );
}

#[test]
fn get_watch_shows_a_change_as_it_happens() {
    let t = target();
    let kc = &t.kubeconfig;
    let ns = t.ns.as_str();
    kubectl_stdin(
        kc,
        &["create", "--validate=false", "-f", "-"],
        &lease_yaml(ns, "node-w", "node-w/boot-1"),
    );
    let mut watch = Command::new("/usr/bin/kubectl")
        .arg("--kubeconfig")
        .arg(kc)
        .args(["get", "leases", "-n", ns, "-w"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let out = watch.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let mut seen = Vec::new();
    let mut wait_for = |what: &str| {
        let end = Instant::now() + Duration::from_secs(20);
        while !seen.iter().any(|l: &String| l.contains(what)) {
            let left = end.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(l) => seen.push(l),
                Err(_) => panic!("{what:?} not shown by kubectl get -w; it showed {seen:?}"),
            }
        }
    };
    wait_for("node-w/boot-1");
    kubectl(
        kc,
        &[
            "patch",
            "lease",
            "node-w",
            "-n",
            ns,
            "--type",
            "merge",
            "-p",
            r#"{"spec":{"holderIdentity":"node-w/boot-2"}}"#,
        ],
    );
    wait_for("node-w/boot-2");
    let _ = watch.kill();
    let _ = watch.wait();
}
