//! Reservation commands through the product's seam (`nvme::resv`), one body for two targets:
//! plain `cargo test` runs it on the model (testkit's `FakeReservations`); the VM tier's
//! reservations boot (Linux 7.3, `tests/vm/cases/70-reservations.sh`) runs it with
//! `VOLFENCE_REAL_KERNEL=1` on a real nvmet namespace with `resv_enable`, through the
//! passthrough ioctl on two initiators' devices (host A and host B: their own host IDs), and
//! checks the model against the target at every step: the same status, the same Report.

mod nvme_env;

use std::os::unix::fs::OpenOptionsExt;

use volfence::fence::FenceGuard;
use volfence::host::Host;
use volfence::nvme::resv::codec::{self, AcquireAction, RegisterAction, ReleaseAction, Report};
use volfence::nvme::resv::passthru::KernelReservations;
use volfence::nvme::resv::ReservationType::WriteExclusiveRegistrantsOnly as WERO;
use volfence::nvme::resv::{self, ReservationCommands, ReservationTeardown, Status};
use volfence_testkit::resv::FakeReservations;

const MODEL_NQN: &str = "nqn.2026-12.io.volfence.test:resv";

fn uuid_bytes(s: &str) -> [u8; 16] {
    let hex: String = s.chars().filter(|c| *c != '-').collect();
    let mut out = [0u8; 16];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap();
    }
    out
}

/// One host's side: its device and host ID, and how its writes fare.
struct Side {
    device: String,
    host_id: [u8; 16],
}

struct Bench {
    real: Option<KernelReservations>,
    nsid: u32,
    model: FakeReservations,
    a: Side,
    b: Side,
}

impl Bench {
    fn new() -> Bench {
        let model = FakeReservations::new();
        model.enable(MODEL_NQN, 1);
        if nvme_env::real() {
            // Set up by the VM case: "DEVICE=HOSTID,DEVICE=HOSTID" and the namespace id.
            let devs = std::env::var("VOLFENCE_RESV_DEVICES").expect("VOLFENCE_RESV_DEVICES");
            let mut sides = devs.split(',').map(|d| {
                let (dev, id) = d.split_once('=').expect("DEVICE=HOSTID");
                Side {
                    device: dev.to_string(),
                    host_id: uuid_bytes(id),
                }
            });
            let (a, b) = (sides.next().unwrap(), sides.next().unwrap());
            Bench {
                real: Some(KernelReservations::new(Host::system())),
                nsid: 1,
                model,
                a,
                b,
            }
        } else {
            Bench {
                real: None,
                nsid: 1,
                model,
                a: Side {
                    device: "nvme0n1".into(),
                    host_id: [0xa; 16],
                },
                b: Side {
                    device: "nvme1n1".into(),
                    host_id: [0xb; 16],
                },
            }
        }
    }

    fn side(&self, a: bool) -> &Side {
        if a {
            &self.a
        } else {
            &self.b
        }
    }

    /// Runs `cmd` from A (`a`) or B on the model and, in the VM, on the target: the statuses
    /// must agree; returns the target's (or the model's).
    fn run(&self, guard: &FenceGuard, a: bool, cmd: codec::Command) -> Status {
        let s = self.side(a);
        let (model, _) = self.model.execute(&s.host_id, MODEL_NQN, 1, &cmd);
        let Some(k) = &self.real else { return model };
        let got = k.submit(guard, &s.device, self.nsid, &cmd).unwrap();
        // The real target adds MORE (an error log entry) to some; the model does not keep one.
        assert_eq!(
            got.0 & !0x2000,
            model.0,
            "{cmd:?}: target {got}, model {model}"
        );
        got
    }

    fn report(&self, a: bool) -> Report {
        let model = self.model.report(MODEL_NQN, 1).unwrap();
        let Some(k) = &self.real else { return model };
        let (s, buf) = k.report(&self.side(a).device, self.nsid).unwrap();
        assert!(s.is_success(), "report: {s}");
        let got = codec::decode_report(&buf).unwrap();
        assert_eq!(got, model, "the target's Report against the model's");
        got
    }

    fn unregister(&self, a: bool, key: u64) -> Status {
        let s = self.side(a);
        let cmd = codec::register(RegisterAction::Unregister, key, 0, false);
        let (model, _) = self.model.execute(&s.host_id, MODEL_NQN, 1, &cmd);
        let Some(k) = &self.real else { return model };
        let got = k.unregister(&s.device, self.nsid, key).unwrap();
        assert_eq!(
            got.0 & !0x2000,
            model.0,
            "unregister: target {got}, model {model}"
        );
        got
    }

    /// Does a write from A (`a`) or B reach the namespace? In the VM an O_DIRECT write of one
    /// block to its device (EBADE is the kernel's "reservation conflict").
    fn writes(&self, a: bool) -> bool {
        let s = self.side(a);
        let model = self.model.may_write(&s.host_id, MODEL_NQN, 1);
        if self.real.is_none() {
            return model;
        }
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(nix::libc::O_DIRECT)
            .open(format!("/dev/{}", s.device))
            .unwrap();
        let mut buf = vec![0u8; 8192];
        let off = buf.as_ptr().align_offset(4096);
        let block = &mut buf[off..off + 4096];
        block[..16].copy_from_slice(b"volfence-resv-ok");
        let got = match f.write(block) {
            Ok(n) => n == 4096,
            Err(e) if e.raw_os_error() == Some(nix::libc::EBADE) => false,
            Err(e) => panic!("write to /dev/{}: {e}", s.device),
        };
        assert_eq!(
            got, model,
            "write from {}: target {got}, model {model}",
            s.device
        );
        got
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_acquire_preempt_release_on_the_target_as_on_the_model() {
    let shutdown = tokio_util::sync::CancellationToken::new();
    let dir = tempfile::tempdir().unwrap();
    let fence = nvme_env::held_fence(dir.path().join("lease"), &shutdown).await;
    let guard = fence.guard().unwrap();
    let t = Bench::new();
    let (ka, kb) = (resv::key(&t.a.host_id, 1), resv::key(&t.b.host_id, 1));

    let r = t.report(true);
    assert!(r.registrants.is_empty() && r.rtype.is_none(), "{r:?}");
    assert!(
        t.writes(true) && t.writes(false),
        "no reservation: both write"
    );

    // A holds Write Exclusive – Registrants Only; B registers: both may write.
    assert!(t
        .run(
            &guard,
            true,
            codec::register(RegisterAction::Register, 0, ka, false)
        )
        .is_success());
    assert!(t
        .run(
            &guard,
            true,
            codec::acquire(AcquireAction::Acquire, WERO, ka, 0)
        )
        .is_success());
    assert!(t
        .run(
            &guard,
            false,
            codec::register(RegisterAction::Register, 0, kb, false)
        )
        .is_success());
    let r = t.report(false);
    assert_eq!(r.holder().map(|h| h.host_id), Some(t.a.host_id));
    assert_eq!(r.registrants.len(), 2);
    assert!(t.writes(true) && t.writes(false));

    // B takes it over: A's key preempted, A's writes refused, B's go through.
    assert!(t
        .run(
            &guard,
            false,
            codec::acquire(AcquireAction::PreemptAndAbort, WERO, kb, ka)
        )
        .is_success());
    let r = t.report(false);
    assert_eq!(
        r.holder().map(|h| (h.host_id, h.key)),
        Some((t.b.host_id, kb))
    );
    assert_eq!(r.registrants.len(), 1);
    assert!(!t.writes(true), "A writes after the preempt");
    assert!(t.writes(false));

    // A's old key is worth nothing now: replace and unregister with it are conflicts.
    let s = t.run(
        &guard,
        true,
        codec::register(
            RegisterAction::Replace,
            ka,
            resv::key(&t.a.host_id, 2),
            false,
        ),
    );
    assert!(s.is_reservation_conflict(), "{s}");
    assert!(t.unregister(true, ka).is_reservation_conflict());

    // B lets go: release, then unregister without the fence (teardown); nothing is left.
    assert!(t
        .run(
            &guard,
            false,
            codec::release(ReleaseAction::Release, WERO, kb)
        )
        .is_success());
    assert!(t.unregister(false, kb).is_success());
    let r = t.report(true);
    assert!(r.registrants.is_empty() && r.rtype.is_none(), "{r:?}");
    assert!(t.writes(true) && t.writes(false));
    shutdown.cancel();
}
