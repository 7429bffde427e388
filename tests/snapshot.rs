//! Snapshot jobs over the fake LVM (LVM's JSON report, point-in-time copies, COW filling) and the
//! fake mount (mountinfo), with a real executor process.

mod nvme_env;
mod support;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use volfence::config::Settings;
use volfence::host::Host;
use volfence::lvm::Lvm;
use volfence::snapshot::job::Phase;
use volfence::snapshot::mount::Fs;
use volfence::snapshot::{SnapError, Snapshots, StartRequest};
use volfence_testkit::lvm::{FakeLvm, FakeMounter};

struct Rig {
    root: tempfile::TempDir,
    host: Host,
    lvm: Arc<FakeLvm>,
    mounter: Arc<FakeMounter>,
    settings: Settings,
    out: PathBuf,
    fence: volfence::fence::Fence,
    _shutdown: tokio_util::sync::CancellationToken,
}

/// The executor: records its run, waits for `<out>/go-<id>` (bounded), copies what the snapshot
/// shows, and fails for request ids starting with "fail".
const EXECUTOR: &str = r#"
out=$1; mp=$2; id=$3
echo "$id" >> "$out/runs"
i=0; while [ ! -e "$out/go-$id" ] && [ $i -lt 600 ]; do sleep 0.05; i=$((i+1)); done
cat "$mp/before.txt" > "$out/$id.before" 2>/dev/null
[ -e "$mp/after.txt" ] && echo present > "$out/$id.after"
echo "BACKUP_TARGET=$BACKUP_TARGET" > "$out/$id.env"
case $id in fail*) exit 4;; esac
exit 0
"#;

async fn rig() -> Rig {
    let root = tempfile::tempdir().unwrap();
    let host = Host::new(root.path());
    let out = root.path().join("out");
    std::fs::create_dir_all(&out).unwrap();
    let mut settings = Settings::defaults("snap-test");
    settings.snapshots.executor = vec![
        "/bin/sh".into(),
        "-c".into(),
        EXECUTOR.into(),
        "executor".into(),
        out.to_string_lossy().into_owned(),
        "{mountpoint}".into(),
        "{request_id}".into(),
    ];
    settings.snapshots.executor_env =
        [("BACKUP_TARGET".to_string(), "s3://bucket".to_string())].into();
    settings.snapshots.default_size = "8M".into();
    let lvm = Arc::new(FakeLvm::new(host.clone()));
    lvm.add_lv(
        "vg0",
        "ext",
        64 << 20,
        false,
        Fs::Ext4,
        &[("before.txt", "written before")],
    );
    lvm.add_lv(
        "vg0",
        "xfs",
        512 << 20,
        false,
        Fs::Xfs,
        &[("before.txt", "xfs before")],
    );
    lvm.add_lv(
        "vg0",
        "thin",
        128 << 20,
        true,
        Fs::Ext4,
        &[("before.txt", "thin before")],
    );
    let mounter = Arc::new(FakeMounter::new(host.clone()));
    let shutdown = tokio_util::sync::CancellationToken::new();
    let fence = nvme_env::held_fence(root.path().join("lease"), &shutdown).await;
    Rig {
        root,
        host,
        lvm,
        mounter,
        settings,
        out,
        fence,
        _shutdown: shutdown,
    }
}

impl Rig {
    fn snapshots(&self) -> Snapshots {
        Snapshots::new(
            self.host.clone(),
            Lvm::new(self.lvm.clone()),
            self.mounter.clone(),
            self.settings.snapshots.clone(),
            &self.root.path().join("state"),
            self.fence.clone(),
            None,
        )
    }
    fn go(&self, id: &str) {
        std::fs::write(self.out.join(format!("go-{id}")), "").unwrap();
    }
    fn runs(&self, id: &str) -> usize {
        std::fs::read_to_string(self.out.join("runs"))
            .unwrap_or_default()
            .lines()
            .filter(|l| *l == id)
            .count()
    }
    fn out_file(&self, name: &str) -> Option<String> {
        std::fs::read_to_string(self.out.join(name)).ok()
    }
    fn mounts_under_root(&self) -> Vec<String> {
        volfence::snapshot::mount::mounts(&self.host)
            .into_iter()
            .map(|m| m.mount_point)
            .filter(|m| m.starts_with("/run/volfence/snapshots/"))
            .collect()
    }
    fn snapshot_lvs(&self) -> Vec<String> {
        self.lvm
            .names()
            .into_iter()
            .filter(|n| n.contains("/vfsnap-"))
            .collect()
    }
    fn assert_clean(&self) {
        assert!(
            self.mounts_under_root().is_empty(),
            "{:?}",
            self.mounts_under_root()
        );
        assert!(self.snapshot_lvs().is_empty(), "{:?}", self.snapshot_lvs());
        let left: Vec<_> = std::fs::read_dir(self.host.path("/run/volfence/snapshots"))
            .map(|rd| rd.flatten().map(|e| e.file_name()).collect())
            .unwrap_or_default();
        assert!(left.is_empty(), "mount points left: {left:?}");
    }
}

fn req(id: &str, lv: &str) -> StartRequest {
    StartRequest {
        request_id: id.into(),
        vg: "vg0".into(),
        lv: lv.into(),
        size: None,
        keep: false,
        claim: None,
    }
}

async fn until_phase(
    s: &Snapshots,
    id: &str,
    want: impl Fn(Phase, &str) -> bool,
) -> volfence::snapshot::job::Job {
    for _ in 0..600 {
        if let Some(j) = s.get(id) {
            if want(j.phase(), &j.message) {
                return j;
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("job {id} never reached the wanted state: {:?}", s.get(id));
}

async fn running(s: &Snapshots, id: &str) {
    until_phase(s, id, |p, m| p == Phase::Running && m == "executor running").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn executor_sees_the_snapshot_not_later_writes() {
    let r = rig().await;
    let s = r.snapshots();
    for (id, lv, before) in [
        ("r-ext", "ext", "written before"),
        ("r-xfs", "xfs", "xfs before"),
        ("r-thin", "thin", "thin before"),
    ] {
        let mut events = s.subscribe();
        let job = s
            .start(&r.fence.guard().unwrap(), req(id, lv))
            .await
            .unwrap();
        assert_eq!(job.snapshot, format!("vfsnap-{id}"));
        assert_eq!(
            job.size.is_none(),
            lv == "thin",
            "thin snapshots take no size"
        );
        running(&s, id).await;
        assert_eq!(
            r.mounts_under_root(),
            vec![format!("/run/volfence/snapshots/vfsnap-{id}")]
        );
        let mi = std::fs::read_to_string(r.host.path("/proc/self/mountinfo")).unwrap();
        let want = if lv == "xfs" {
            "ro,nouuid,norecovery"
        } else {
            "ro,noload"
        };
        assert!(mi.contains(want), "{mi}");
        r.lvm
            .write_file("vg0", lv, "after.txt", "written after", 1.0);
        r.go(id);
        let done = until_phase(&s, id, |p, _| p.is_terminal()).await;
        assert_eq!(done.phase(), Phase::Succeeded, "{}", done.message);
        assert!(!done.started_at.is_empty() && !done.finished_at.is_empty());
        assert_eq!(r.out_file(&format!("{id}.before")).as_deref(), Some(before));
        assert_eq!(
            r.out_file(&format!("{id}.after")),
            None,
            "the snapshot predates after.txt"
        );
        assert_eq!(
            r.out_file(&format!("{id}.env")).as_deref(),
            Some("BACKUP_TARGET=s3://bucket\n")
        );
        assert_eq!(r.runs(id), 1);
        r.assert_clean();
        // Completed is announced once (it may follow the phase the poll above saw by a moment).
        let mut completed = 0;
        let quiet = Duration::from_millis(300);
        while let Ok(Ok(ev)) = tokio::time::timeout(quiet, events.recv()).await {
            if let volfence::snapshot::JobEvent::Completed {
                request_id,
                success,
                ..
            } = ev
            {
                assert!(success && request_id == id);
                completed += 1;
            }
        }
        assert_eq!(completed, 1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_job_per_request_and_per_origin() {
    let r = rig().await;
    let s = r.snapshots();
    let g = r.fence.guard().unwrap();
    let a = s.start(&g, req("same", "ext")).await.unwrap();
    let b = s.start(&g, req("same", "ext")).await.unwrap();
    assert_eq!(a.request_id, b.request_id);
    running(&s, "same").await;
    let e = s.start(&g, req("other", "ext")).await.unwrap_err();
    assert!(
        matches!(e, SnapError::Busy(_)) && e.to_string().contains("one at a time"),
        "{e}"
    );
    let e = s.start(&g, req("same", "xfs")).await.unwrap_err();
    assert!(e.to_string().contains("already used for vg0/ext"), "{e}");
    r.go("same");
    until_phase(&s, "same", |p, _| p.is_terminal()).await;
    // The terminal job answers again; it never runs twice.
    assert_eq!(
        s.start(&g, req("same", "ext")).await.unwrap().phase(),
        Phase::Succeeded
    );
    assert_eq!(r.runs("same"), 1);
    // A new request id makes a new job.
    s.start(&g, req("again", "ext")).await.unwrap();
    r.go("again");
    until_phase(&s, "again", |p, _| p.is_terminal()).await;
    assert_eq!(r.runs("again"), 1);
    r.assert_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_are_named() {
    let r = rig().await;
    let s = r.snapshots();
    let g = r.fence.guard().unwrap();
    let e = s
        .start(
            &g,
            StartRequest {
                vg: "bad/vg".into(),
                ..req("x", "ext")
            },
        )
        .await
        .unwrap_err();
    assert!(e.to_string().starts_with("VG name \"bad/vg\""), "{e}");
    let e = s.start(&g, req("x", "missing")).await.unwrap_err();
    assert_eq!(e.to_string(), "logical volume vg0/missing does not exist");
    let e = s
        .start(
            &g,
            StartRequest {
                vg: "novg".into(),
                ..req("x", "ext")
            },
        )
        .await
        .unwrap_err();
    assert_eq!(e.to_string(), "logical volume novg/ext does not exist");
    let e = s.start(&g, req("x;reboot", "ext")).await.unwrap_err();
    assert!(e.to_string().starts_with("request_id: expected"), "{e}");
    let e = s
        .start(
            &g,
            StartRequest {
                size: Some("lots".into()),
                ..req("x", "ext")
            },
        )
        .await
        .unwrap_err();
    assert!(e.to_string().contains("snapshot size \"lots\""), "{e}");
    assert!(s.list().is_empty(), "no job was made for a bad request");
    assert_eq!(r.runs("x"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_executor_fails_the_job_and_cleans_up() {
    let r = rig().await;
    let s = r.snapshots();
    s.start(&r.fence.guard().unwrap(), req("fail-1", "ext"))
        .await
        .unwrap();
    r.go("fail-1");
    let j = until_phase(&s, "fail-1", |p, _| p.is_terminal()).await;
    assert_eq!(
        (j.phase(), j.message.as_str()),
        (Phase::Failed, "executor exited with status 4")
    );
    r.assert_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cow_guard_aborts_before_lvm_invalidates() {
    let r = rig().await;
    let s = r.snapshots();
    s.start(&r.fence.guard().unwrap(), req("cow", "ext"))
        .await
        .unwrap();
    running(&s, "cow").await;
    for k in 0..3 {
        r.lvm
            .write_file("vg0", "ext", &format!("big{k}"), "x", 30.0);
    }
    let j = until_phase(&s, "cow", |p, _| p.is_terminal()).await;
    assert_eq!(j.phase(), Phase::Failed);
    assert!(
        j.message
            .starts_with("snapshot space exhausted (90.0% used, limit 80%)"),
        "{}",
        j.message
    );
    assert!(j.cow_percent >= 80.0);
    r.assert_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_and_keep_release() {
    let r = rig().await;
    let s = r.snapshots();
    let g = r.fence.guard().unwrap();
    s.start(&g, req("c1", "ext")).await.unwrap();
    running(&s, "c1").await;
    s.cancel("c1").unwrap();
    let j = until_phase(&s, "c1", |p, _| p.is_terminal()).await;
    assert_eq!(
        (j.phase(), j.message.as_str()),
        (Phase::Failed, "cancelled")
    );
    r.assert_clean();

    s.start(
        &g,
        StartRequest {
            keep: true,
            ..req("k1", "xfs")
        },
    )
    .await
    .unwrap();
    r.go("k1");
    let j = until_phase(&s, "k1", |p, _| p.is_terminal()).await;
    assert_eq!(j.phase(), Phase::Succeeded);
    assert!(j.message.contains("kept mounted"), "{}", j.message);
    assert_eq!(r.mounts_under_root().len(), 1);
    assert_eq!(r.snapshot_lvs(), vec!["vg0/vfsnap-k1".to_string()]);
    // Still busy for the origin until released; a busy mount is detached lazily, and says so.
    assert!(matches!(
        s.start(&g, req("k2", "xfs")).await,
        Err(SnapError::Busy(_))
    ));
    r.mounter
        .busy
        .lock()
        .unwrap()
        .push("/run/volfence/snapshots/vfsnap-k1".into());
    let j = s.release("k1").await.unwrap();
    assert!(
        j.released && j.message.contains("detached lazily"),
        "{}",
        j.message
    );
    r.assert_clean();
    assert_eq!(s.get("k1").unwrap().phase(), Phase::Succeeded);
}

#[test]
fn restart_while_running_fails_the_job_and_leaks_nothing() {
    let rt1 = tokio::runtime::Runtime::new().unwrap();
    let r = rt1.block_on(rig());
    // The fence lives on its own runtime, as the daemon's would across the "restart".
    let s1 = r.snapshots();
    rt1.block_on(async {
        s1.start(&r.fence.guard().unwrap(), req("killed", "ext"))
            .await
            .unwrap();
        running(&s1, "killed").await;
    });
    // Leftovers from an older crash that no record mentions: a snapshot LV and a mount, made as
    // the agent makes them (its lvcreate, with its tag).
    let size = volfence::lvm::SnapSize::parse("8M").unwrap();
    let orphan = volfence::lvm::lvcreate_snapshot_argv("vg0", "thin", "vfsnap-orphan", Some(&size));
    let _ = r.lvm.run_tool("lvcreate", &orphan);
    let orphan_thick =
        volfence::lvm::lvcreate_snapshot_argv("vg0", "xfs", "vfsnap-orphan2", Some(&size));
    r.lvm.run_tool("lvcreate", &orphan_thick).unwrap();
    let mp = volfence::snapshot::mount::make_mount_point(
        &r.host.path("/run/volfence/snapshots"),
        "vfsnap-orphan2",
    )
    .unwrap();
    volfence::snapshot::mount::Mounter::mount_ro(
        &*r.mounter,
        &r.fence.guard().unwrap(),
        &r.host.path("/dev/vg0/vfsnap-orphan2"),
        &mp,
        Fs::Xfs,
    )
    .unwrap();
    let fence = r.fence.clone();
    // SIGKILL: every task of the old agent stops mid-step; its executor dies with it.
    rt1.shutdown_background();
    drop(s1);

    let rt2 = tokio::runtime::Runtime::new().unwrap();
    rt2.block_on(async {
        let shutdown = tokio_util::sync::CancellationToken::new();
        let fence2 = nvme_env::held_fence(r.root.path().join("lease2"), &shutdown).await;
        drop(fence);
        let s2 = Snapshots::new(
            r.host.clone(),
            Lvm::new(r.lvm.clone()),
            r.mounter.clone(),
            r.settings.snapshots.clone(),
            &r.root.path().join("state"),
            fence2.clone(),
            None,
        );
        s2.recover().await.unwrap();
        let j = s2.get("killed").unwrap();
        assert_eq!(j.phase(), Phase::Failed);
        assert!(j.message.starts_with("agent restarted"), "{}", j.message);
        r.assert_clean();
        r.go("killed");
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(r.runs("killed"), 1, "no second executor");
        // The same request id again returns the failed job; it is not re-run.
        let again = s2
            .start(&fence2.guard().unwrap(), req("killed", "ext"))
            .await
            .unwrap();
        assert_eq!(again.phase(), Phase::Failed);
        assert_eq!(r.runs("killed"), 1);
        shutdown.cancel();
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_job_resumes_after_restart() {
    let r = rig().await;
    let job = volfence::snapshot::job::Job::new(
        "resume",
        "vg0",
        "ext",
        "vfsnap-resume",
        "/run/volfence/snapshots/vfsnap-resume",
        Some("8M".into()),
        false,
    );
    let dir = r.root.path().join("state/snapshots");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("resume.json"), serde_json::to_vec(&job).unwrap()).unwrap();
    std::fs::write(dir.join("broken.json"), b"{not json").unwrap();
    let s = r.snapshots();
    s.recover().await.unwrap();
    assert!(
        dir.join("broken.json.unreadable").exists(),
        "an unreadable record is kept aside"
    );
    running(&s, "resume").await;
    r.go("resume");
    let j = until_phase(&s, "resume", |p, _| p.is_terminal()).await;
    assert_eq!(j.phase(), Phase::Succeeded, "{}", j.message);
    r.assert_clean();
}

/// Until the job's failure Event is marked recorded (bounded).
async fn until_reported(s: &Snapshots, id: &str) -> volfence::snapshot::job::Job {
    for _ in 0..500 {
        if let Some(j) = s.get(id).filter(|j| j.failure_reported) {
            return j;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the failure of {id} was never reported: {:?}", s.get(id));
}

/// The claim's Events as `kubectl describe pvc` selects them.
async fn claim_events(
    client: &kube::Client,
    ns: &str,
    name: &str,
    uid: &str,
) -> Vec<k8s_openapi::api::core::v1::Event> {
    let api: kube::Api<k8s_openapi::api::core::v1::Event> =
        kube::Api::namespaced(client.clone(), ns);
    let sel = format!("involvedObject.kind=PersistentVolumeClaim,involvedObject.name={name},involvedObject.uid={uid}");
    api.list(&kube::api::ListParams::default().fields(&sel))
        .await
        .unwrap()
        .items
}

/// The emulator (or the cluster `KUBECONFIG` names), a client of it, and a fresh claim in
/// `volfence-test`.
struct ClaimCluster {
    emu: Option<volfence_kube_emulator::Emulator>,
    client: kube::Client,
    kubeconfig: PathBuf,
    ns: String,
    name: String,
    uid: String,
    _dir: tempfile::TempDir,
}

async fn claim_cluster() -> ClaimCluster {
    use k8s_openapi::api::core::v1::PersistentVolumeClaim;
    let dir = tempfile::tempdir().unwrap();
    let (emu, path, name) = match std::env::var_os("KUBECONFIG") {
        Some(p) => (
            None,
            PathBuf::from(p),
            format!("disk-{}", std::process::id()),
        ),
        None => {
            let emu = volfence_kube_emulator::Emulator::start("127.0.0.1:0".parse().unwrap())
                .await
                .unwrap();
            let p = dir.path().join("kubeconfig");
            std::fs::write(&p, emu.kubeconfig("snap")).unwrap();
            (Some(emu), p, "disk-a".to_string())
        }
    };
    let client = volfence::cluster::client(&volfence::config::KubernetesSettings {
        kubeconfig: Some(path.clone()),
        request_timeout: Duration::from_secs(5),
    })
    .await
    .unwrap();
    let ns = "volfence-test".to_string();
    support::ensure_namespace(&client, &ns).await;
    let pvcs: kube::Api<PersistentVolumeClaim> = kube::Api::namespaced(client.clone(), &ns);
    let pvc: PersistentVolumeClaim = serde_json::from_value(serde_json::json!({
        "metadata": {"name": name},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}},
    }))
    .unwrap();
    let pvc = pvcs
        .create(&kube::api::PostParams::default(), &pvc)
        .await
        .unwrap();
    ClaimCluster {
        emu,
        client,
        kubeconfig: path,
        ns,
        name,
        uid: pvc.metadata.uid.unwrap(),
        _dir: dir,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_snapshot_of_a_claimed_volume_is_an_event_on_the_claim() {
    use volfence_kube_emulator::Faults;
    let r = rig().await;
    let k = claim_cluster().await;
    let claim: volfence::snapshot::PvcRef = format!("{}/{}", k.ns, k.name).parse().unwrap();
    let reporter = Arc::new(
        volfence::cluster::Cluster::from_client(k.client.clone(), "snap-test").snapshot_reporter(),
    );
    let claimed = |id: &str, lv: &str| StartRequest {
        claim: Some(claim.clone()),
        ..req(id, lv)
    };
    let events = || claim_events(&k.client, &k.ns, &k.name, &k.uid);

    // The API server answers 503 at first: the report waits and is retried, not dropped.
    if let Some(emu) = &k.emu {
        emu.faults(
            "snap",
            Faults {
                error_code: Some(503),
                ..Default::default()
            },
        );
    }
    let s = r.snapshots().with_reporter(reporter.clone());
    let g = r.fence.guard().unwrap();
    s.start(&g, claimed("fail-claimed", "ext")).await.unwrap();
    r.go("fail-claimed");
    let j = until_phase(&s, "fail-claimed", |p, _| p.is_terminal()).await;
    assert_eq!(j.phase(), Phase::Failed);
    assert_eq!(j.claim.as_deref(), Some(claim.to_string().as_str()));
    if let Some(emu) = &k.emu {
        for _ in 0..250 {
            if emu.request_counts("snap").get("GET").copied().unwrap_or(0) > 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(!s.get("fail-claimed").unwrap().failure_reported);
        emu.faults("snap", Faults::default());
    }
    until_reported(&s, "fail-claimed").await;
    let evs = events().await;
    assert_eq!(evs.len(), 1, "{evs:?}");
    let ev = &evs[0];
    assert_eq!(ev.type_.as_deref(), Some("Warning"));
    assert_eq!(ev.reason.as_deref(), Some("SnapshotFailed"));
    assert_eq!(ev.reporting_instance.as_deref(), Some("snap-test"));
    let msg = ev.message.as_deref().unwrap_or_default();
    assert!(
        msg.contains("fail-claimed") && msg.contains("vg0/ext") && msg.contains("exit"),
        "{msg}"
    );
    // Where an operator looks: the claim's description lists the Event.
    let (kc, ns, name) = (k.kubeconfig.clone(), k.ns.clone(), k.name.clone());
    let described = tokio::task::spawn_blocking(move || {
        support::kubectl(&kc, &["describe", "pvc", "-n", &ns, &name])
    })
    .await
    .unwrap();
    assert!(
        described.contains("SnapshotFailed") && described.contains("fail-claimed"),
        "{described}"
    );

    // A success is not an event; a failure without a claim is not either.
    s.start(&g, claimed("ok-claimed", "xfs")).await.unwrap();
    r.go("ok-claimed");
    let j = until_phase(&s, "ok-claimed", |p, _| p.is_terminal()).await;
    assert_eq!(j.phase(), Phase::Succeeded, "{}", j.message);
    s.start(&g, req("fail-unclaimed", "xfs")).await.unwrap();
    r.go("fail-unclaimed");
    until_phase(&s, "fail-unclaimed", |p, _| p.is_terminal()).await;

    // Failed while the agent had no way to report (stopped before it could): the next start
    // records it, once.
    let quiet = r.snapshots();
    quiet.recover().await.unwrap();
    quiet
        .start(&g, claimed("fail-later", "thin"))
        .await
        .unwrap();
    r.go("fail-later");
    until_phase(&quiet, "fail-later", |p, _| p.is_terminal()).await;
    let s2 = r.snapshots().with_reporter(reporter.clone());
    s2.recover().await.unwrap();
    until_reported(&s2, "fail-later").await;
    let s3 = r.snapshots().with_reporter(reporter.clone());
    s3.recover().await.unwrap();
    assert!(s3.get("fail-later").unwrap().failure_reported, "persisted");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(events().await.len(), 2, "one event per failed claimed job");
    assert!(!s3.get("fail-unclaimed").unwrap().failure_reported);
    r.assert_clean();

    // A claim that does not exist: logged, not retried for ever, no event anywhere.
    let gone: volfence::snapshot::PvcRef = format!("{}/gone", k.ns).parse().unwrap();
    s3.start(
        &g,
        StartRequest {
            claim: Some(gone),
            ..req("fail-gone", "ext")
        },
    )
    .await
    .unwrap();
    r.go("fail-gone");
    until_phase(&s3, "fail-gone", |p, _| p.is_terminal()).await;
    until_reported(&s3, "fail-gone").await;
    assert_eq!(events().await.len(), 2);
}

#[test]
fn claims_are_namespace_and_name() {
    let c: volfence::snapshot::PvcRef = "vms/disk-a.v2".parse().unwrap();
    assert_eq!(
        (c.namespace.as_str(), c.name.as_str()),
        ("vms", "disk-a.v2")
    );
    for (bad, says) in [
        ("disk-a", "expected namespace/name"),
        ("VMs/disk", "namespace \"VMs\" is not a DNS-1123 label"),
        ("vms/disk/x", "name \"disk/x\" is not a DNS-1123 subdomain"),
        ("vms/-disk", "name \"-disk\""),
        ("vms/", "name \"\""),
        ("vms/a,b=c", "name \"a,b=c\""),
    ] {
        let e = bad.parse::<volfence::snapshot::PvcRef>().unwrap_err();
        assert!(
            e.to_string().starts_with(&format!("claim {bad:?}: ")) && e.to_string().contains(says),
            "{bad}: {e}"
        );
    }
    assert!(format!("vms/{}", "a".repeat(254))
        .parse::<volfence::snapshot::PvcRef>()
        .is_err());
}

/// A tmpfs of `kib` KiB mounted on `dir` (the test runs as root, as the agent does), unmounted on
/// drop. None where mounting is not allowed.
struct SmallFs(PathBuf);
impl SmallFs {
    fn mount(dir: &std::path::Path, kib: u32) -> Option<SmallFs> {
        std::fs::create_dir_all(dir).unwrap();
        nix::mount::mount(
            Some("tmpfs"),
            dir,
            Some("tmpfs"),
            nix::mount::MsFlags::empty(),
            Some(format!("size={kib}k").as_str()),
        )
        .ok()
        .map(|_| SmallFs(dir.to_path_buf()))
    }
}
impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_that_cannot_be_recorded_leaves_nothing_behind() {
    let r = rig().await;
    let state = r.root.path().join("state");
    let Some(_fs) = SmallFs::mount(&state, 64) else {
        panic!("cannot mount a tmpfs (the test needs root, as the agent does)");
    };
    // Fill it: the next write of a job record gets ENOSPC.
    let filler = state.join("filler");
    let mut f = std::fs::File::create(&filler).unwrap();
    let chunk = vec![0u8; 4096];
    while std::io::Write::write_all(&mut f, &chunk).is_ok() {}
    drop(f);
    let s = r.snapshots();
    let err = s
        .start(&r.fence.guard().unwrap(), req("r-full", "ext"))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("No space left on device"), "{err}");
    assert!(s.get("r-full").is_none(), "{:?}", s.get("r-full"));
    assert!(s.list().is_empty(), "{:?}", s.list());
    r.assert_clean();
    // Space again: the same request id really starts and runs, and the origin is not Busy.
    std::fs::remove_file(&filler).unwrap();
    s.start(&r.fence.guard().unwrap(), req("r-full", "ext"))
        .await
        .unwrap();
    running(&s, "r-full").await;
    r.go("r-full");
    let done = until_phase(&s, "r-full", |p, _| p.is_terminal()).await;
    assert_eq!(done.phase(), Phase::Succeeded, "{}", done.message);
    assert_eq!(r.runs("r-full"), 1);
    r.assert_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_sets_aside_records_the_agent_did_not_write() {
    let r = rig().await;
    let s = r.snapshots();
    s.start(&r.fence.guard().unwrap(), req("r-ok", "ext"))
        .await
        .unwrap();
    running(&s, "r-ok").await;
    r.go("r-ok");
    until_phase(&s, "r-ok", |p, _| p.is_terminal()).await;
    let dir = r.root.path().join("state/snapshots");
    let good: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("r-ok.json")).unwrap()).unwrap();
    // A job found Running with its resources recorded is cleaned up at startup: each record
    // below would, if trusted, remove the origin, unmount a foreign mount, write outside the
    // state directory, or SIGKILL the agent's own process group.
    let outside = r.host.path("/srv/data");
    std::fs::create_dir_all(&outside).unwrap();
    volfence::snapshot::mount::Mounter::mount_ro(
        &*r.mounter,
        &r.fence.guard().unwrap(),
        &r.host.path("/dev/vg0/xfs"),
        &outside,
        Fs::Xfs,
    )
    .unwrap();
    let mut bad = Vec::new();
    for (id, f) in [
        (
            "h-origin",
            (|j: &mut serde_json::Value| j["snapshot"] = "ext".into()) as fn(&mut _),
        ),
        ("h-mount", |j| j["mountpoint"] = "/srv/data".into()),
        ("h-pid0", |j| j["resources"]["executor_pid"] = 0.into()),
        ("h-dotdot", |j| j["request_id"] = "../../escape".into()),
    ] {
        let mut j = good.clone();
        j["request_id"] = id.into();
        j["snapshot"] = format!("vfsnap-{id}").into();
        j["mountpoint"] = format!("/run/volfence/snapshots/vfsnap-{id}").into();
        j["phase"] = "running".into();
        j["resources"] =
            serde_json::json!({"snapshot_lv": true, "mounted": true, "executor_pid": null});
        f(&mut j);
        std::fs::write(dir.join(format!("{id}.json")), j.to_string()).unwrap();
        bad.push(id);
    }
    let s2 = r.snapshots();
    s2.recover().await.unwrap();
    assert!(
        r.lvm.names().contains(&"vg0/ext".to_string()),
        "{:?}",
        r.lvm.names()
    );
    assert!(
        volfence::snapshot::mount::mounts(&r.host)
            .iter()
            .any(|m| m.mount_point == "/srv/data"),
        "a mount outside mount_root was touched"
    );
    assert!(!r.root.path().join("escape.json").exists());
    for id in bad {
        assert!(s2.get(id).is_none(), "{id} was loaded");
        assert!(
            dir.join(format!("{id}.json.unreadable")).exists(),
            "{id} not set aside"
        );
    }
    assert_eq!(s2.get("r-ok").unwrap().phase(), Phase::Succeeded);
}
