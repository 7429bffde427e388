//! What the journal says of a volume's health, against the fake kernel. Its own test binary: a
//! subscriber set for one thread misses events whose callsites other tests running at the same
//! time registered first (tracing caches interest per callsite), so it runs alone.

mod nvme_env;

use std::io::Write;

use nvme_env::{nsid, req, target, until, Env, MIB};
use volfence::nvme::options::OptValue;
use volfence::nvme::volumes::{VolumeState, Volumes};

/// The log lines a test reads: a subscriber for this thread only (the test runs on one).
#[derive(Clone, Default)]
struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);
impl Write for Captured {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
impl Captured {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
    fn count(&self, what: &str) -> usize {
        self.text().lines().filter(|l| l.contains(what)).count()
    }
}

/// What the journal says of a volume's health: reconnecting, live again, every path gone, and
/// a Connect that revives it with a new controller says "connected" like the first one did.
#[tokio::test(flavor = "current_thread")]
async fn health_changes_and_a_revival_are_logged() {
    let log = Captured::default();
    let writer = log.clone();
    let _sub = tracing::subscriber::set_default(
        tracing_subscriber::fmt()
            .with_ansi(false)
            .with_max_level(tracing::Level::INFO)
            .with_writer(move || writer.clone())
            .finish(),
    );
    let env = Env::new().await;
    let nqn = "nqn.2024-01.io.volfence.test:logged";
    env.add_target(nqn, &[4446], &[1], 16 * MIB);
    let v = env.volumes();
    let r = || {
        req(
            "vol-l",
            target(nqn, &[4446], nsid(1)),
            &[
                ("ctrl_loss_tmo", OptValue::Int(3)),
                ("reconnect_delay", OptValue::Int(1)),
            ],
        )
    };
    let guard = env.guard();
    v.connect(&guard, r()).await.unwrap();
    let state = |v: &Volumes| {
        v.refresh();
        v.get("vol-l").map(|i| i.state)
    };
    until("connected line", 5, || {
        log.count("volume vol-l: connected") == 1
    })
    .await;
    env.set_port(nqn, 4446, false);
    until("reconnecting", 20, || {
        state(&v) == Some(VolumeState::Reconnecting)
    })
    .await;
    assert_eq!(log.count("volume vol-l: reconnecting"), 1, "{}", log.text());
    env.set_port(nqn, 4446, true);
    until("live again", 20, || state(&v) == Some(VolumeState::Live)).await;
    assert_eq!(log.count("volume vol-l: live again"), 1, "{}", log.text());
    env.set_port(nqn, 4446, false);
    until("dead", 30, || state(&v) == Some(VolumeState::Dead)).await;
    assert_eq!(log.count("every path"), 1, "{}", log.text());
    env.set_port(nqn, 4446, true);
    let back = v.connect(&guard, r()).await.unwrap();
    assert_eq!(back.state, VolumeState::Live);
    until("a second connected line", 5, || {
        log.count("volume vol-l: connected") == 2
    })
    .await;
    v.disconnect("vol-l", None).await.unwrap();
}
