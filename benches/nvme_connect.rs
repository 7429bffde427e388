//! Connect benchmark (issue 4), against a real kernel: the VM tier runs it (tests/vm, case
//! 40-nvme) with an nvmet-tcp target on 127.0.0.1 and the agent on the system bus. One process,
//! the same run, rounds alternating which path goes first:
//! - the agent: `Connect` over D-Bus until it returns a usable device;
//! - the kernel's own path: the options written to /dev/nvme-fabrics, the reply read, then a wait
//!   until udev has made the namespace's by-id link.
//!
//! Both waits are on events (inotify on /dev/disk/by-id for the raw path, as a udev-aware program
//! would), so neither burns CPU that udev needs, and each starts once udev has no event queued
//! (the previous round's teardown processed). The client is compiled, like the programs that
//! call the agent in production (a CSI driver, `volfencectl`): the figure is the agent and the
//! bus, not a scripting language's marshalling. Prints medians, their ratio (goal ≤ 1.05) with a
//! bootstrap 95% interval, the median of per-round ratios, the ratio per block of 30 consecutive
//! rounds (how far the host's drift moves it), and what a bare call over the bus costs.
//!
//! usage: nvme_connect NQN PORT UUID ROUNDS (as root, with volfenced on the system bus)

use std::collections::HashMap;
use std::fs::OpenOptions;
use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::path::Path;
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
use volfence::dbus::client::Agent1Proxy;
use zbus::proxy::CacheProperties;
use zbus::Variant;

const BY_ID: &str = "/dev/disk/by-id";
const UDEV_RUN: &str = "/run/udev";
const VOLUME: &str = "bench-vol";
/// Consecutive rounds per block for the per-block ratios (150 rounds: 5 blocks).
const BLOCK_ROUNDS: usize = 30;

struct Args {
    nqn: String,
    port: u16,
    uuid: String,
    rounds: usize,
}

fn parse_args() -> Option<Args> {
    let a: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let [nqn, port, uuid, rounds] = a.as_slice() else {
        return None;
    };
    Some(Args {
        nqn: nqn.clone(),
        port: port.parse().ok()?,
        uuid: uuid.clone(),
        rounds: rounds.parse().ok().filter(|&r| r >= 1)?,
    })
}

/// Woken by every change in /dev/disk/by-id, where udev makes its links, and in /run/udev, where
/// udevd keeps its `queue` file while events are pending (what `udevadm settle` watches).
struct LinkDir(Inotify);

impl LinkDir {
    fn new() -> LinkDir {
        let ino =
            Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC).expect("inotify_init1");
        let mask = AddWatchFlags::IN_CREATE
            | AddWatchFlags::IN_DELETE
            | AddWatchFlags::IN_MOVED_TO
            | AddWatchFlags::IN_MOVED_FROM;
        for dir in [BY_ID, UDEV_RUN] {
            ino.add_watch(dir, mask)
                .unwrap_or_else(|e| panic!("inotify on {dir}: {e}"));
        }
        LinkDir(ino)
    }

    /// Until udev has no event queued: each timed path starts from a quiet udev, not while the
    /// previous round's teardown is still being processed.
    fn settle(&self) {
        let queue = Path::new(UDEV_RUN).join("queue");
        self.wait("udev to settle", || !queue.exists());
    }

    fn wait(&self, what: &str, pred: impl Fn() -> bool) {
        let end = Instant::now() + Duration::from_secs(30);
        while !pred() {
            let left = end.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "timed out waiting for {what}");
            let timeout = PollTimeout::try_from(left).unwrap_or(PollTimeout::MAX);
            let mut fds = [PollFd::new(self.0.as_fd(), PollFlags::POLLIN)];
            match poll(&mut fds, timeout) {
                Ok(_) | Err(nix::errno::Errno::EINTR) => {}
                Err(e) => panic!("poll on inotify: {e}"),
            }
            // Drained; EAGAIN when the wake was not ours.
            while self.0.read_events().is_ok_and(|ev| !ev.is_empty()) {}
        }
    }
}

fn read_line(path: &str) -> String {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{path}: {e}"))
        .trim()
        .to_string()
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    }
}

/// 95% interval of median(a)/median(b) by resampling rounds (pairs kept together). A fixed seed:
/// the same rounds give the same interval.
fn ratio_interval(a: &[f64], b: &[f64]) -> (f64, f64) {
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let n = a.len();
    let mut ratios: Vec<f64> = (0..2000)
        .map(|_| {
            let idx: Vec<usize> = (0..n).map(|_| (next() % n as u64) as usize).collect();
            let ra: Vec<f64> = idx.iter().map(|&i| a[i]).collect();
            let rb: Vec<f64> = idx.iter().map(|&i| b[i]).collect();
            median(&ra) / median(&rb)
        })
        .collect();
    ratios.sort_by(f64::total_cmp);
    (ratios[50], ratios[1949])
}

struct Bench {
    args: Args,
    line: String,
    link: String,
    dir: LinkDir,
    agent: Agent1Proxy<'static>,
    bus: zbus::fdo::DBusProxy<'static>,
    peer: zbus::fdo::PeerProxy<'static>,
    rt: tokio::runtime::Runtime,
}

impl Bench {
    fn target(&self) -> HashMap<&str, Variant<'_>> {
        HashMap::from([
            ("nqn", Variant::from(self.args.nqn.as_str())),
            ("traddr", Variant::from("127.0.0.1")),
            ("trsvcid", Variant::from(u32::from(self.args.port))),
            ("nsid", Variant::from(1u32)),
        ])
    }

    /// The kernel's own path; returns (until usable, the fabrics write alone).
    fn raw(&self) -> (Duration, Duration) {
        self.dir.settle();
        let t0 = Instant::now();
        let mut f = OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/nvme-fabrics")
            .expect("/dev/nvme-fabrics");
        f.write_all(self.line.as_bytes())
            .expect("write to /dev/nvme-fabrics");
        let mut buf = [0u8; 256];
        let n = f.read(&mut buf).expect("read /dev/nvme-fabrics");
        drop(f);
        let write = t0.elapsed();
        self.dir
            .wait("the raw path's link", || Path::new(&self.link).exists());
        let took = t0.elapsed();
        let reply = String::from_utf8_lossy(&buf[..n]).to_string();
        let instance = reply
            .trim()
            .split(',')
            .find_map(|f| f.strip_prefix("instance="))
            .unwrap_or_else(|| panic!("fabrics reply {reply:?} has no instance"))
            .to_string();
        std::fs::write(
            format!("/sys/class/nvme/nvme{instance}/delete_controller"),
            "1",
        )
        .expect("delete_controller");
        self.dir.wait("the raw path's link to go", || {
            !Path::new(&self.link).exists()
        });
        (took, write)
    }

    /// The agent's Connect; returns (until usable, the same call again).
    fn agent(&self) -> (Duration, Duration) {
        let none = || HashMap::<&str, Variant<'_>>::new();
        self.dir.settle();
        let r = self.rt.block_on(async {
            let t0 = Instant::now();
            let (dev, _) = self
                .agent
                .connect(VOLUME, self.target(), none())
                .await
                .expect("Connect");
            let took = t0.elapsed();
            assert!(Path::new(&dev).exists(), "{dev} does not exist");
            // The same call again finds the volume connected and does no kernel work: what the
            // call itself costs (bus, arguments, reply).
            let t1 = Instant::now();
            self.agent
                .connect(VOLUME, self.target(), none())
                .await
                .expect("Connect again");
            let again = t1.elapsed();
            self.agent
                .disconnect(VOLUME, none())
                .await
                .expect("Disconnect");
            (took, again)
        });
        self.dir
            .wait("the agent's link to go", || !Path::new(&self.link).exists());
        r
    }

    /// What a call over the bus costs here, for reading the figures: GetId (answered by the bus
    /// daemon: one hop each way), Peer.Ping (two hops each way and zbus's dispatch, none of the
    /// agent's code) and ListVolumes (no volume connected: the agent's code, no work).
    fn bus_calls(&self) -> [Duration; 3] {
        self.rt.block_on(async {
            let t = Instant::now();
            self.bus.get_id().await.expect("GetId");
            let t0 = Instant::now();
            self.peer.ping().await.expect("Ping");
            let t1 = Instant::now();
            self.agent.list_volumes().await.expect("ListVolumes");
            [t0 - t, t1 - t0, t1.elapsed()]
        })
    }
}

fn main() {
    let Some(args) = parse_args() else {
        // `cargo bench` runs every bench: this one needs the real kernel and the agent.
        eprintln!(
            "nvme_connect: needs a real kernel with an NVMe/TCP target and volfenced on the system bus; \
             the VM tier runs it (tests/vm/run.sh, case 40-nvme). usage: nvme_connect NQN PORT UUID ROUNDS"
        );
        return;
    };
    let hostnqn = read_line("/etc/nvme/hostnqn");
    let hostid = read_line("/etc/nvme/hostid");
    let line = format!(
        "transport=tcp,traddr=127.0.0.1,trsvcid={},nqn={},hostnqn={hostnqn},hostid={hostid},\
         keep_alive_tmo=5,reconnect_delay=2,ctrl_loss_tmo=60",
        args.port, args.nqn
    );
    // One thread: the client's own hops stay on it, as in a plain synchronous client.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (agent, bus, peer) = rt.block_on(async {
        let conn = zbus::conn::Builder::system()
            .method_timeout(Duration::from_secs(60))
            .build()
            .await
            .expect("system bus");
        let agent = Agent1Proxy::builder(&conn)
            .cache_properties(CacheProperties::No)
            .build()
            .await
            .expect("agent proxy");
        let bus = zbus::fdo::DBusProxy::new(&conn).await.expect("bus proxy");
        let peer = zbus::fdo::PeerProxy::builder(&conn)
            .destination("org.volfence.Agent1")
            .path("/org/volfence/Agent1")
            .cache_properties(CacheProperties::No)
            .build()
            .await
            .expect("peer proxy");
        (agent, bus, peer)
    });
    let b = Bench {
        link: format!("{BY_ID}/nvme-uuid.{}", args.uuid),
        args,
        line,
        dir: LinkDir::new(),
        agent,
        bus,
        peer,
        rt,
    };

    // Warm-up, not counted.
    b.raw();
    b.agent();
    let (mut agent, mut raw, mut write, mut again) = (vec![], vec![], vec![], vec![]);
    let mut calls: [Vec<f64>; 3] = Default::default();
    for i in 0..b.args.rounds {
        let (a, r) = if i % 2 == 1 {
            let r = b.raw();
            (b.agent(), r)
        } else {
            let a = b.agent();
            (a, b.raw())
        };
        agent.push(ms(a.0));
        again.push(ms(a.1));
        raw.push(ms(r.0));
        write.push(ms(r.1));
        for (v, d) in calls.iter_mut().zip(b.bus_calls()) {
            v.push(ms(d));
        }
        println!(
            "bench round {i}: agent_ms={:.1} raw_ms={:.1} raw_write_ms={:.1}",
            ms(a.0),
            ms(r.0),
            ms(r.1)
        );
    }
    let (ma, mr) = (median(&agent), median(&raw));
    // The interval above treats rounds as independent; this host's speed drifts over minutes,
    // which moves whole stretches of rounds together. The ratio per block of consecutive rounds
    // shows that drift: identical runs in one boot have differed by more than their intervals.
    let block = BLOCK_ROUNDS.min(agent.len());
    let blocks: Vec<String> = agent
        .chunks(block)
        .zip(raw.chunks(block))
        .filter(|(a, _)| a.len() == block)
        .map(|(a, r)| format!("{:.3}", median(a) / median(r)))
        .collect();
    let paired: Vec<f64> = agent.iter().zip(&raw).map(|(a, r)| a / r).collect();
    let (lo, hi) = ratio_interval(&agent, &raw);
    let min = |v: &[f64]| v.iter().copied().fold(f64::INFINITY, f64::min);
    println!(
        "bench connect: rounds={} agent_median_ms={ma:.1} raw_median_ms={mr:.1} ratio={:.3} \
         ratio_95ci={lo:.3}..{hi:.3} agent_min_ms={:.1} raw_min_ms={:.1} raw_write_median_ms={:.1} \
         paired_ratio_median={:.3} bus_getid_median_ms={:.2} dbus_ping_median_ms={:.2} \
         dbus_roundtrip_median_ms={:.2} connect_again_median_ms={:.2} ratio_per_{block}_rounds={}",
        b.args.rounds,
        ma / mr,
        min(&agent),
        min(&raw),
        median(&write),
        median(&paired),
        median(&calls[0]),
        median(&calls[1]),
        median(&calls[2]),
        median(&again),
        blocks.join(","),
    );
}
