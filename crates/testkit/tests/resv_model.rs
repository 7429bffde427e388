//! The reservation model against the real target: the sequence `tests/vm/capture-resv.sh` ran
//! on Linux 7.3's nvmet, replayed on the model with the product's encoders, gives the same
//! Report bytes at every step, the same refusals, and the same write access.

use volfence::nvme::resv::codec::{self, AcquireAction, RegisterAction, ReleaseAction};
use volfence::nvme::resv::ReservationType::WriteExclusiveRegistrantsOnly as WERO;
use volfence_testkit::resv::FakeReservations;

const NQN: &str = "nqn.2026-12.io.volfence:capture";
const A: [u8; 16] = [0x11; 16];
const B: [u8; 16] = [0x22; 16];

fn captured(name: &str) -> Vec<u8> {
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/nvme-resv-7.3")
        .join(format!("{name}.bin"));
    std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// A Report of 4096 bytes (NUMD 1023), as nvme-cli asked for the captured ones.
fn report_bytes(t: &FakeReservations, host: &[u8; 16]) -> Vec<u8> {
    let mut cmd = codec::report();
    cmd.cdw10 = 1023;
    cmd.data = vec![0; 4096];
    let (s, data) = t.execute(host, NQN, 1, &cmd);
    assert!(s.is_success(), "report: {s}");
    data
}

fn same(got: Vec<u8>, name: &str) {
    let want = captured(name);
    assert_eq!(got.len(), want.len(), "{name}: length");
    if let Some(i) = (0..got.len()).find(|i| got[*i] != want[*i]) {
        panic!(
            "{name}: byte {i} is {:#04x}, the target sent {:#04x}",
            got[i], want[i]
        );
    }
}

#[test]
fn the_model_answers_the_captured_sequence_byte_for_byte() {
    let t = FakeReservations::new();
    t.enable(NQN, 1);
    let ok = |host: &[u8; 16], cmd: codec::Command| {
        let (s, _) = t.execute(host, NQN, 1, &cmd);
        assert!(s.is_success(), "{cmd:?}: {s}");
    };
    same(report_bytes(&t, &A), "empty");
    ok(
        &A,
        codec::register(RegisterAction::Register, 0, 0xa1, false),
    );
    same(report_bytes(&t, &A), "a-registered");
    ok(&A, codec::acquire(AcquireAction::Acquire, WERO, 0xa1, 0));
    ok(
        &B,
        codec::register(RegisterAction::Register, 0, 0xb1, false),
    );
    same(report_bytes(&t, &A), "a-holds-b-registered");
    assert!(
        t.may_write(&A, NQN, 1) && t.may_write(&B, NQN, 1),
        "both registrants write (type 3)"
    );
    ok(
        &B,
        codec::acquire(AcquireAction::PreemptAndAbort, WERO, 0xb1, 0xa1),
    );
    same(report_bytes(&t, &B), "b-preempted-a");
    // A's write is refused (a-write-after-preempt.txt), B's goes through.
    assert!(!t.may_write(&A, NQN, 1) && t.may_write(&B, NQN, 1));
    // The probe: A's replace with its old key is a reservation conflict ...
    let (s, _) = t.execute(
        &A,
        NQN,
        1,
        &codec::register(RegisterAction::Replace, 0xa1, 0xa2, false),
    );
    assert!(s.is_reservation_conflict(), "{s}");
    ok(&B, codec::release(ReleaseAction::Release, WERO, 0xb1));
    same(report_bytes(&t, &B), "b-released");
}

#[test]
fn a_preempted_host_that_registers_again_may_write_again() {
    // What the probe showed and why the agent never re-registers a volume whose claim it lost.
    let t = FakeReservations::new();
    t.enable(NQN, 1);
    for (h, k) in [(&A, 0xa1), (&B, 0xb1)] {
        t.execute(
            h,
            NQN,
            1,
            &codec::register(RegisterAction::Register, 0, k, false),
        );
    }
    t.execute(
        &A,
        NQN,
        1,
        &codec::acquire(AcquireAction::Acquire, WERO, 0xa1, 0),
    );
    t.execute(
        &B,
        NQN,
        1,
        &codec::acquire(AcquireAction::PreemptAndAbort, WERO, 0xb1, 0xa1),
    );
    assert!(!t.may_write(&A, NQN, 1));
    let (s, _) = t.execute(
        &A,
        NQN,
        1,
        &codec::register(RegisterAction::Register, 0, 0xa3, false),
    );
    assert!(s.is_success(), "{s}");
    assert!(
        t.may_write(&A, NQN, 1),
        "type 3 lets every registrant write"
    );
}

#[test]
fn refusals_as_nvmet_gives_them() {
    let t = FakeReservations::new();
    // No resv_enable: not a reservation-capable namespace.
    let (s, _) = t.execute(&A, NQN, 1, &codec::report());
    assert_eq!(s.0, 0x4001, "invalid opcode");
    t.enable(NQN, 1);
    // Acquire without registering, register twice with another key, report without EDS.
    let (s, _) = t.execute(
        &A,
        NQN,
        1,
        &codec::acquire(AcquireAction::Acquire, WERO, 0xa1, 0),
    );
    assert!(s.is_reservation_conflict());
    t.execute(
        &A,
        NQN,
        1,
        &codec::register(RegisterAction::Register, 0, 0xa1, false),
    );
    let (s, _) = t.execute(
        &A,
        NQN,
        1,
        &codec::register(RegisterAction::Register, 0, 0xa2, false),
    );
    assert!(s.is_reservation_conflict());
    let (s, _) = t.execute(
        &A,
        NQN,
        1,
        &codec::register(RegisterAction::Register, 0, 0xa1, false),
    );
    assert!(s.is_success(), "the same key again is fine");
    let mut no_eds = codec::report();
    no_eds.cdw11 = 0;
    assert_eq!(
        t.execute(&A, NQN, 1, &no_eds).0 .0,
        0x4018,
        "host identifier inconsistent"
    );
    // Re-enabling the namespace (a target restart) forgets everything.
    t.execute(
        &A,
        NQN,
        1,
        &codec::acquire(AcquireAction::Acquire, WERO, 0xa1, 0),
    );
    t.enable(NQN, 1);
    let r = t.report(NQN, 1).unwrap();
    assert_eq!((r.generation, r.rtype, r.registrants.len()), (0, None, 0));
}
