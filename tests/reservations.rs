//! The storage-side fence, whole: two real agents (distinct host IDs, each over its own fake
//! kernel) share one API server and one target whose reservations are testkit's model of nvmet
//! (`FakeReservations`, checked against a real 7.3 target by tests/nvme_resv.rs). What the
//! target lets each host write is read from the model after every step: a connect reserves, a
//! takeover preempts the old holder, a migration's destination registers and its collapse
//! evicts the source, a host that lost its claim never registers again, and a namespace that
//! forgot its reservations gets them back from the routine check.

mod nvme_env;
mod support;

use std::time::{Duration, Instant};

use support::agents::{Agent, Api, NQN};
use support::text;
use volfence::config::LeaseLossAction;
use volfence::nvme::resv::codec;
use volfence::nvme::resv::keeper::CHECK_INTERVAL;
use volfence::nvme::resv::policy::{plan, Role, Want};
use volfence::nvme::resv::{host_id_bytes, Mode, ReservationType};
use volfence_kube_emulator::Faults;
use volfence_testkit::resv::FakeReservations;

/// The host ID the agent's controllers connected with (the identity module's persistent one).
fn host_id(a: &Agent) -> [u8; 16] {
    let class = a.root().join("sys/class/nvme");
    for e in std::fs::read_dir(&class).unwrap() {
        if let Ok(id) = std::fs::read_to_string(e.unwrap().path().join("hostid")) {
            return host_id_bytes(id.trim()).unwrap();
        }
    }
    panic!("no controller under {}", class.display());
}

fn holder(r: &FakeReservations, nsid: u32) -> Option<[u8; 16]> {
    r.report(NQN, nsid)?.holder().map(|h| h.host_id)
}

fn registered(r: &FakeReservations, nsid: u32) -> Vec<[u8; 16]> {
    r.report(NQN, nsid)
        .map(|x| x.registrants.iter().map(|g| g.host_id).collect())
        .unwrap_or_default()
}

/// Waits until `f` holds of the model; returns how long it took.
async fn until(what: &str, limit: Duration, f: impl Fn() -> bool) -> Duration {
    let t = Instant::now();
    while !f() {
        assert!(t.elapsed() < limit, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    t.elapsed()
}

async fn two_agents(api: &Api, tag: u8, r: &FakeReservations) -> (Agent, Agent) {
    let boot = |n: u8| format!("0f5e2c1a-8b7d-4e3f-9a2b-0000000052{n:02x}");
    let a = Agent::start(api, "node-a", &boot(tag), LeaseLossAction::Refuse).await;
    let b = Agent::start(api, "node-b", &boot(tag + 1), LeaseLossAction::Disconnect).await;
    a.kernel.set_reservations(r.clone());
    b.kernel.set_reservations(r.clone());
    (a, b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_takeover_cuts_the_old_holder_off_at_the_target_and_it_never_registers_again() {
    let api = Api::start("resv-takeover").await;
    let Some(emu) = api.emu.as_ref() else {
        return; // needs fault injection
    };
    let r = FakeReservations::new();
    r.enable(NQN, 3);
    let (a, b) = two_agents(&api, 1, &r).await;

    let t = Instant::now();
    let out = a.connect("vol-r", 3).await;
    assert!(out.status.success(), "{}", text(&out));
    println!("A's Connect with its reservation: {:?}", t.elapsed());
    let ida = host_id(&a);
    let rep = r.report(NQN, 3).unwrap();
    assert_eq!(holder(&r, 3), Some(ida));
    assert_eq!(
        rep.rtype,
        Some(ReservationType::WriteExclusiveRegistrantsOnly)
    );
    assert_eq!(registered(&r, 3), vec![ida]);
    let shown = a.show("vol-r").await;
    assert!(
        shown.contains("reservation: key 0x") && shown.contains(" registered"),
        "{shown}"
    );
    assert!(
        shown.contains("held by this host (write-exclusive-registrants-only)"),
        "{shown}"
    );

    // B is refused by the claim, and sends nothing to the target.
    let out = b.connect("vol-r", 3).await;
    assert!(
        text(&out).contains("org.volfence.Error.Conflict"),
        "{}",
        text(&out)
    );
    assert_eq!(registered(&r, 3), vec![ida]);

    // A is cut off from the API server (its VM writes on); B takes over once A fenced.
    emu.faults(
        "node-a",
        Faults {
            partition: true,
            ..Faults::default()
        },
    );
    let cut = Instant::now();
    loop {
        let out = b.connect("vol-r", 3).await;
        if out.status.success() {
            break;
        }
        assert!(
            text(&out).contains("org.volfence.Error.Conflict"),
            "{}",
            text(&out)
        );
        assert!(r.may_write(&ida, NQN, 3), "A refused before B took over");
        assert!(cut.elapsed() < Duration::from_secs(30), "never taken over");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let idb = host_id(&b);
    assert_ne!(ida, idb);
    // The target refuses A's writes when B's Connect returns: before B's first write.
    assert!(
        !r.may_write(&ida, NQN, 3),
        "A still writes after the takeover"
    );
    assert!(r.may_write(&idb, NQN, 3));
    assert_eq!(holder(&r, 3), Some(idb));
    assert_eq!(registered(&r, 3), vec![idb]);

    // A comes back: it finds its claim gone and lets go, and never registers again.
    emu.faults("node-a", Faults::default());
    a.until_state("held").await;
    until("A disconnects", Duration::from_secs(10), || {
        a.kernel.controllers().is_empty()
    })
    .await;
    tokio::time::sleep(CHECK_INTERVAL * 2).await;
    assert_eq!(registered(&r, 3), vec![idb], "A registered again");
    assert!(!r.may_write(&ida, NQN, 3));

    // The target forgets (namespace disable/enable): B's routine check restores it.
    r.enable(NQN, 3);
    let gap = until("B restores its reservation", CHECK_INTERVAL * 3, || {
        holder(&r, 3) == Some(idb)
    })
    .await;
    println!(
        "reservation restored {gap:?} after the target forgot it (check every {CHECK_INTERVAL:?})"
    );
    assert_eq!(registered(&r, 3), vec![idb]);

    // B's Disconnect leaves nothing registered.
    let out = b.disconnect("vol-r").await;
    assert!(out.status.success(), "{}", text(&out));
    assert!(registered(&r, 3).is_empty());
    assert_eq!(holder(&r, 3), None);
    a.stop().await;
    b.stop().await;
    api.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_migration_destination_registers_and_the_collapse_leaves_it_alone() {
    let api = Api::start("resv-migration").await;
    let r = FakeReservations::new();
    r.enable(NQN, 4);
    let (a, b) = two_agents(&api, 3, &r).await;
    assert!(a.connect("vol-m", 4).await.status.success());
    let ida = host_id(&a);
    let out = b.migrate("vol-m", 4, "node-a").await;
    assert!(out.status.success(), "{}", text(&out));
    let idb = host_id(&b);
    // Both write during the window (QEMU serialises); A still holds.
    assert_eq!(holder(&r, 4), Some(ida));
    assert_eq!(registered(&r, 4), vec![ida, idb]);
    assert!(r.may_write(&ida, NQN, 4) && r.may_write(&idb, NQN, 4));
    let shown = b.show("vol-m").await;
    assert!(
        shown.contains(&format!("held by {}", fmt_id(&ida))),
        "{shown}"
    );

    // The source leaves: its key goes, the claim collapses onto B, and B holds alone.
    assert!(a.disconnect("vol-m").await.status.success());
    until("B holds alone", CHECK_INTERVAL * 3, || {
        holder(&r, 4) == Some(idb) && registered(&r, 4) == vec![idb]
    })
    .await;
    assert!(!r.may_write(&ida, NQN, 4));
    a.stop().await;
    b.stop().await;
    api.cleanup().await;
}

/// The policy's commands run on the model until it asks for nothing: what a check does.
fn settle(r: &FakeReservations, me: &[u8; 16], want: Want, nsid: u32) -> Vec<&'static str> {
    let mut sent = vec![];
    for _ in 0..8 {
        let rep = r.report(NQN, nsid).unwrap();
        let steps = plan(&rep, me, want).expect("the policy refused");
        if steps.is_empty() {
            return sent;
        }
        for s in steps {
            let (status, _) = r.execute(me, NQN, nsid, &s.cmd);
            assert!(status.is_success(), "{} refused: {status}", s.op);
            sent.push(s.op);
        }
    }
    panic!("did not settle: {sent:?}");
}

#[test]
fn on_the_model_a_collapse_evicts_a_source_that_never_unregistered() {
    let r = FakeReservations::new();
    r.enable(NQN, 1);
    let (a, b) = ([0xa; 16], [0xb; 16]);
    let wa = Want {
        key: 11,
        role: Role::Sole,
        takeover: true,
    };
    assert_eq!(settle(&r, &a, wa, 1), ["register", "acquire"]);
    let wb = Want {
        key: 22,
        role: Role::Shared,
        takeover: false,
    };
    assert_eq!(settle(&r, &b, wb, 1), ["register"]);
    assert!(r.may_write(&a, NQN, 1) && r.may_write(&b, NQN, 1));
    // The source's agent is gone; the claim is B's alone. A holder cannot evict with a plain
    // preempt, a non-holder can: B is not the holder, so one preempt-and-abort does it.
    let wb = Want {
        role: Role::Sole,
        takeover: true,
        ..wb
    };
    assert_eq!(settle(&r, &b, wb, 1), ["preempt_abort"]);
    assert!(!r.may_write(&a, NQN, 1));
    assert_eq!(holder_of(&r), Some(b));
    // A registers again (as a buggy or restarted host might), while B holds: B's next takeover
    // decision removes it through the all-registrants type.
    let (st, _) = r.execute(
        &a,
        NQN,
        1,
        &codec::register(codec::RegisterAction::Register, 0, 11, false),
    );
    assert!(st.is_success());
    assert!(
        r.may_write(&a, NQN, 1),
        "the real target lets a re-registered host write"
    );
    assert_eq!(settle(&r, &b, wb, 1), ["retype", "evict"]);
    assert!(!r.may_write(&a, NQN, 1));
    let rep = r.report(NQN, 1).unwrap();
    assert_eq!(
        rep.rtype,
        Some(ReservationType::WriteExclusiveRegistrantsOnly)
    );
    assert_eq!(rep.registrants.len(), 1);
    // A routine check of A's (a lost claim would never get one; the policy refuses anyway).
    let wa = Want {
        takeover: false,
        ..wa
    };
    assert!(plan(&r.report(NQN, 1).unwrap(), &a, wa).is_err());
}

fn holder_of(r: &FakeReservations) -> Option<[u8; 16]> {
    r.report(NQN, 1)?.holder().map(|h| h.host_id)
}

fn fmt_id(id: &[u8; 16]) -> String {
    volfence::nvme::resv::host_id_string(id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn modes_prefer_require_and_off_on_a_namespace_with_and_without_reservations() {
    let api = Api::start("resv-modes").await;
    let r = FakeReservations::new();
    r.enable(NQN, 2);
    // Namespace 5 has no resv_enable: prefer connects it and says so.
    let a = Agent::start(
        &api,
        "node-p",
        "0f5e2c1a-8b7d-4e3f-9a2b-000000005301",
        LeaseLossAction::Disconnect,
    )
    .await;
    a.kernel.set_reservations(r.clone());
    let out = a.connect("vol-n", 5).await;
    assert!(out.status.success(), "{}", text(&out));
    assert!(a
        .show("vol-n")
        .await
        .contains("reservation: not supported by the namespace"));
    assert!(a.disconnect("vol-n").await.status.success());

    let q = Agent::start_with(
        &api,
        "node-q",
        "0f5e2c1a-8b7d-4e3f-9a2b-000000005302",
        LeaseLossAction::Disconnect,
        |s| s.nvme.reservations = Mode::Require,
    )
    .await;
    q.kernel.set_reservations(r.clone());
    let out = q.connect("vol-q", 5).await;
    let msg = text(&out);
    assert!(!out.status.success());
    assert!(
        msg.contains("org.volfence.Error.Reservation")
            && msg.contains("vol-q")
            && msg.contains("require"),
        "{msg}"
    );
    assert!(
        q.kernel.controllers().is_empty(),
        "the refused volume was left connected"
    );
    assert!(
        api.claim("vol-q").await.is_none(),
        "its claim was left behind"
    );
    // With support, require connects as prefer does.
    assert!(q.connect("vol-q2", 2).await.status.success());
    assert_eq!(registered(&r, 2).len(), 1);
    assert!(q.disconnect("vol-q2").await.status.success());

    let o = Agent::start_with(
        &api,
        "node-o",
        "0f5e2c1a-8b7d-4e3f-9a2b-000000005303",
        LeaseLossAction::Disconnect,
        |s| s.nvme.reservations = Mode::Off,
    )
    .await;
    o.kernel.set_reservations(r.clone());
    assert!(o.connect("vol-o", 2).await.status.success());
    assert!(o
        .show("vol-o")
        .await
        .contains("reservation: off (nvme.reservations)"));
    tokio::time::sleep(CHECK_INTERVAL + Duration::from_millis(500)).await;
    assert!(
        registered(&r, 2).is_empty(),
        "off sent a reservation command"
    );
    assert!(o.disconnect("vol-o").await.status.success());
    a.stop().await;
    q.stop().await;
    o.stop().await;
    api.cleanup().await;
}

/// Two hosts with one NVMe host ID would be one registrant to the target: the later one finds
/// the other's lease carrying that ID and refuses every Connect, naming it; the first is not
/// disturbed. What a user sees with kubectl: both host leases labelled with the ID.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_host_with_the_same_host_id_refuses_connect_naming_the_first() {
    const SAME: &str = "3f2b0c4e-9d1a-4c6b-8e7f-5a4b3c2d1e0f";
    let api = Api::start("resv-dup-hostid").await;
    let r = FakeReservations::new();
    r.enable(NQN, 4);
    let same = |s: &mut volfence::config::Settings| s.nvme.hostid = Some(SAME.to_string());
    let a = Agent::start_with(
        &api,
        "node-a",
        "0f5e2c1a-8b7d-4e3f-9a2b-000000005401",
        LeaseLossAction::Disconnect,
        same,
    )
    .await;
    let b = Agent::start_with(
        &api,
        "node-b",
        "0f5e2c1a-8b7d-4e3f-9a2b-000000005402",
        LeaseLossAction::Disconnect,
        same,
    )
    .await;
    a.kernel.set_reservations(r.clone());
    b.kernel.set_reservations(r.clone());

    let t = Instant::now();
    let out = loop {
        // B's check runs once its lease is held; until then its Connect may still pass.
        let out = b.connect("vol-dup-b", 4).await;
        if !out.status.success() {
            break out;
        }
        assert!(b.disconnect("vol-dup-b").await.status.success());
        assert!(t.elapsed() < Duration::from_secs(10), "B never refused");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let msg = text(&out);
    assert!(
        msg.contains("org.volfence.Error.DuplicateHostId")
            && msg.contains(SAME)
            && msg.contains("node node-a"),
        "{msg}"
    );
    assert!(registered(&r, 4).is_empty(), "B registered: {msg}");
    // A listed before B's lease existed: it connects and reserves as ever.
    let out = a.connect("vol-dup-a", 4).await;
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(registered(&r, 4).len(), 1);

    let kc = api.kubeconfig("admin");
    let labelled = support::kubectl(
        &kc,
        &[
            "get",
            "leases",
            "-n",
            &api.leases,
            "-l",
            &format!("volfence.io/nvme-host-id={SAME}"),
            "-o",
            "name",
        ],
    );
    assert!(
        labelled.contains("lease.coordination.k8s.io/node-a")
            && labelled.contains("lease.coordination.k8s.io/node-b"),
        "{labelled}"
    );
    assert!(a.disconnect("vol-dup-a").await.status.success());
    a.stop().await;
    b.stop().await;
    api.cleanup().await;
}
