//! A fake NVMe-oF host driver plus udev, for tests and benchmarks. It changes a fake root the way
//! the kernel and udev change the real one, so the agent's discovery, idempotency and restart code
//! runs unchanged against it:
//! - connect parses the option string like `nvmf_parse_options`, refuses what the kernel refuses
//!   (unknown target or port: ECONNREFUSED; the same connection twice: EALREADY; DH-HMAC-CHAP as
//!   nvme-tcp against nvmet: no secret where one is required ENOKEY, a wrong one EKEYREJECTED),
//!   creates `/sys/class/nvme/nvmeN`, the subsystem, heads and path nodes (native multipath) or
//!   per-controller namespaces, and replies `instance=N,cntlid=M`;
//! - "udev" then, on its own thread and a little later, creates `/dev` nodes and `/dev/disk/by-id`
//!   links and only then sends the events, as udevd does after its rules ran (and after its `RUN`
//!   programs: [`FakeKernel::set_udev_run_time`]);
//! - delete_controller tears down synchronously and sends remove events;
//! - a target port going down moves its controllers to `connecting` and, after their
//!   `ctrl_loss_tmo`, deletes them, like the kernel's reconnect worker.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Error, ErrorKind};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use tokio::sync::broadcast;

use volfence::fence::FenceGuard;
use volfence::host::Host;
use volfence::nvme::kernel::{Fabrics, FabricsTeardown, Uevent};
use volfence::nvme::resv::codec::{self, Command};
use volfence::nvme::resv::{ReservationCommands, ReservationTeardown, Status};

use crate::resv::FakeReservations;
use volfence::nvme::sysfs::{parse_kv, BY_ID, CLASS_NVME, CLASS_SUBSYS};

#[derive(Debug, Clone)]
pub struct FakeNamespace {
    pub nsid: u32,
    pub uuid: String,
    pub nguid: String,
    pub size_bytes: u64,
}

#[derive(Debug, Clone)]
struct FakeTarget {
    nqn: String,
    ports: BTreeMap<(IpAddr, u16), bool>,
    namespaces: Vec<FakeNamespace>,
    serial: String,
    /// DH-HMAC-CHAP: the host's secret the target requires, and the controller's own, if any.
    dhchap: Option<(String, Option<String>)>,
}

#[derive(Debug, Clone)]
struct FakeCtrl {
    nqn: String,
    traddr: IpAddr,
    trsvcid: u16,
    host_traddr: Option<String>,
    host_iface: Option<String>,
    hostnqn: String,
    subsys: u32,
    cntlid: u16,
    ctrl_loss_tmo: i64,
    /// Bumped on every state change, so a pending loss timer can tell it is stale.
    generation: u64,
}

#[derive(Default)]
struct State {
    targets: Vec<FakeTarget>,
    ctrls: BTreeMap<u32, FakeCtrl>,
    subsystems: BTreeMap<String, u32>,
    /// (subsystem instance, nsid) -> head instance
    heads: BTreeMap<(u32, u32), u32>,
    next_head: u32,
    connects: u64,
    /// While set, connects block after the controller exists and before the reply (a crash
    /// window test).
    hold_connect: bool,
    /// While set, udev does not process new devices.
    udev_paused: bool,
    pending_udev: Vec<Box<dyn FnOnce() + Send>>,
    /// How long udev's `RUN` programs take for a block device: between its links and its event.
    udev_run_time: Duration,
    /// How long udev takes between two of a block device's links.
    udev_link_gap: Duration,
}

struct Inner {
    host: Host,
    multipath: bool,
    udev_delay: Duration,
    events: broadcast::Sender<Uevent>,
    state: Mutex<State>,
    held: Condvar,
    /// The targets' reservations (None: no namespace has `resv_enable`).
    reservations: Mutex<Option<FakeReservations>>,
}

/// Cloneable handle to the fake kernel.
#[derive(Clone)]
pub struct FakeKernel {
    inner: Arc<Inner>,
}

fn w(path: &Path, v: impl AsRef<str>) {
    if let Some(d) = path.parent() {
        let _ = std::fs::create_dir_all(d);
    }
    let _ = std::fs::write(path, format!("{}\n", v.as_ref()));
}

/// Where removed controller directories are kept (outside /sys), so their inodes stay taken.
const FREED: &str = "/.fake-kernel/freed";

/// The boot id a fake root gets when it has none.
pub const FIRST_BOOT_ID: &str = "3b1f6c2e-9a4d-4e8b-b7c5-1d2e3f405162";

fn einval(msg: &str) -> Error {
    Error::new(ErrorKind::InvalidInput, msg.to_string())
}

impl FakeKernel {
    /// A fake kernel with native multipath on (Debian's default) or off.
    pub fn new(host: Host, events: broadcast::Sender<Uevent>, multipath: bool) -> FakeKernel {
        let mp = host.path(volfence::host::paths::NVME_MULTIPATH_PARAM);
        w(&mp, if multipath { "Y" } else { "N" });
        let _ = std::fs::create_dir_all(host.path(CLASS_NVME));
        let _ = std::fs::create_dir_all(host.path(CLASS_SUBSYS));
        let _ = std::fs::create_dir_all(host.path(BY_ID));
        w(&host.path(volfence::host::paths::NVME_FABRICS), "");
        // A booted kernel has a boot id; a root that already has one keeps it.
        let boot_id = host.path(volfence::host::paths::BOOT_ID);
        if !boot_id.exists() {
            w(&boot_id, FIRST_BOOT_ID);
        }
        FakeKernel {
            inner: Arc::new(Inner {
                host,
                multipath,
                udev_delay: Duration::from_millis(15),
                events,
                state: Mutex::new(State {
                    next_head: 1,
                    ..Default::default()
                }),
                held: Condvar::new(),
                reservations: Mutex::new(None),
            }),
        }
    }

    /// The targets keep reservations in `r` (shared by every host's fake kernel that reaches
    /// the same target): reservation commands on a device go there as from the host ID of the
    /// device's controller.
    pub fn set_reservations(&self, r: FakeReservations) {
        *self.inner.reservations.lock().unwrap() = Some(r);
    }

    /// Exports subsystem `nqn` on the given ports with `namespaces` (nvmet's configfs, in short).
    pub fn add_target(&self, nqn: &str, ports: &[(IpAddr, u16)], namespaces: Vec<FakeNamespace>) {
        let mut st = self.inner.state.lock().unwrap();
        let serial = format!("{:016x}", st.targets.len() as u64 + 0x5eed);
        st.targets.push(FakeTarget {
            nqn: nqn.to_string(),
            ports: ports.iter().map(|p| (*p, true)).collect(),
            namespaces,
            serial,
            dhchap: None,
        });
    }

    /// Requires DH-HMAC-CHAP for `nqn` (nvmet's `hosts/<hostnqn>/dhchap_key`, and
    /// `dhchap_ctrl_key` for the controller's side).
    pub fn require_dhchap(&self, nqn: &str, host_secret: &str, ctrl_secret: Option<&str>) {
        let mut st = self.inner.state.lock().unwrap();
        for t in st.targets.iter_mut().filter(|t| t.nqn == nqn) {
            t.dhchap = Some((host_secret.to_string(), ctrl_secret.map(str::to_string)));
        }
    }

    /// Namespace `nsid` with a UUID derived from the NQN, as nvmet generates one per namespace.
    pub fn namespace(nqn: &str, nsid: u32, size_bytes: u64) -> FakeNamespace {
        let mut h: u64 = 0xcbf29ce484222325;
        for b in nqn.bytes().chain(nsid.to_le_bytes()) {
            h = (h ^ u64::from(b)).wrapping_mul(0x100000001b3);
        }
        let hex = format!("{h:016x}{:016x}", h.rotate_left(17) ^ u64::from(nsid));
        FakeNamespace {
            nsid,
            uuid: format!(
                "{}-{}-{}-{}-{}",
                &hex[0..8],
                &hex[8..12],
                &hex[12..16],
                &hex[16..20],
                &hex[20..32]
            ),
            nguid: hex.clone(),
            size_bytes,
        }
    }

    /// The uevent channel this kernel announces devices on: a restarted agent subscribes to the
    /// same one, as it opens udev's socket again.
    pub fn events(&self) -> broadcast::Sender<Uevent> {
        self.inner.events.clone()
    }

    /// Successful connects so far (a test's "no duplicate" check).
    pub fn connects(&self) -> u64 {
        self.inner.state.lock().unwrap().connects
    }

    /// Live controller names.
    pub fn controllers(&self) -> Vec<String> {
        let st = self.inner.state.lock().unwrap();
        st.ctrls.keys().map(|i| format!("nvme{i}")).collect()
    }

    /// Makes the next connects stop after creating the controller, before replying.
    pub fn hold_connects(&self, hold: bool) {
        self.inner.state.lock().unwrap().hold_connect = hold;
        self.inner.held.notify_all();
    }

    /// Makes udev's `RUN` programs for a block device take `t` (lvm's pvscan, say): the device
    /// and its links exist that long before udev announces the event.
    pub fn set_udev_run_time(&self, t: Duration) {
        self.inner.state.lock().unwrap().udev_run_time = t;
    }

    /// Makes udev take `t` between two links of a block device. It makes them in the order of
    /// its own hash table; this fake makes the id link (`nvme-uuid.…`) last, after the
    /// subsystem-wide `nvme-Linux_<serial>` that every namespace of the subsystem claims.
    pub fn set_udev_link_gap(&self, t: Duration) {
        self.inner.state.lock().unwrap().udev_link_gap = t;
    }

    /// Stops (or resumes) udev from processing new devices.
    pub fn pause_udev(&self, paused: bool) {
        let pending = {
            let mut st = self.inner.state.lock().unwrap();
            st.udev_paused = paused;
            if paused {
                Vec::new()
            } else {
                std::mem::take(&mut st.pending_udev)
            }
        };
        for job in pending {
            job();
        }
    }

    /// Reboots this host into boot `boot_id`: its controllers, subsystems and namespaces are gone,
    /// and the kernel hands out names from the lowest again (`nvme0`, `nvme-subsys0`). The
    /// targets freed this host's controllers when their keep-alive ran out, so the next
    /// connects get the same cntlids as in the last boot (lowest free first).
    pub fn reboot(&self, boot_id: &str) {
        let ctrls: Vec<u32> = self
            .inner
            .state
            .lock()
            .unwrap()
            .ctrls
            .keys()
            .copied()
            .collect();
        for i in ctrls {
            let _ = self.remove_ctrl(i);
        }
        self.inner.state.lock().unwrap().next_head = 1;
        w(
            &self.inner.host.path(volfence::host::paths::BOOT_ID),
            boot_id,
        );
    }

    /// Takes a target port down (or back up). Controllers through it go `connecting`; each is
    /// deleted after its `ctrl_loss_tmo` unless the port comes back first.
    pub fn set_port(&self, nqn: &str, port: (IpAddr, u16), up: bool) {
        let mut affected = Vec::new();
        {
            let mut st = self.inner.state.lock().unwrap();
            for t in st.targets.iter_mut().filter(|t| t.nqn == nqn) {
                t.ports.insert(port, up);
            }
            let ids: Vec<u32> = st
                .ctrls
                .iter()
                .filter(|(_, c)| c.nqn == nqn && (c.traddr, c.trsvcid) == port)
                .map(|(i, _)| *i)
                .collect();
            for i in ids {
                // A reconnect is a new association: the target tore the old one down with the
                // port and hands out the lowest free cntlid, which another host's (or tool's)
                // controller may have freed meanwhile.
                let cntlid = (1..)
                    .find(|n| !st.ctrls.iter().any(|(j, c)| *j != i && c.cntlid == *n))
                    .expect("a free cntlid");
                let c = st.ctrls.get_mut(&i).expect("listed above");
                c.generation += 1;
                if up {
                    c.cntlid = cntlid;
                }
                affected.push((i, c.generation, c.ctrl_loss_tmo, c.cntlid));
            }
        }
        let host = &self.inner.host;
        for (i, gen, tmo, cntlid) in affected {
            let dir = host.path(CLASS_NVME).join(format!("nvme{i}"));
            w(&dir.join("cntlid"), cntlid.to_string());
            w(&dir.join("state"), if up { "live" } else { "connecting" });
            self.emit(Uevent {
                action: "change".into(),
                subsystem: "nvme".into(),
                sysname: format!("nvme{i}"),
                devname: Some(format!("/dev/nvme{i}")),
                devlinks: vec![],
            });
            if !up && tmo >= 0 {
                let me = self.clone();
                std::thread::spawn(move || {
                    std::thread::sleep(Duration::from_secs(tmo as u64));
                    let current = me
                        .inner
                        .state
                        .lock()
                        .unwrap()
                        .ctrls
                        .get(&i)
                        .map(|c| c.generation);
                    if current == Some(gen) {
                        let _ = me.remove_ctrl(i);
                    }
                });
            }
        }
    }

    fn emit(&self, e: Uevent) {
        let _ = self.inner.events.send(e);
    }

    /// Runs `job` as udev would: later, on another thread, unless paused.
    fn udev(&self, job: Box<dyn FnOnce() + Send>) {
        let mut st = self.inner.state.lock().unwrap();
        if st.udev_paused {
            st.pending_udev.push(job);
            return;
        }
        drop(st);
        let delay = self.inner.udev_delay;
        std::thread::spawn(move || {
            std::thread::sleep(delay);
            job();
        });
    }

    fn sys_ctrl(&self, i: u32) -> PathBuf {
        self.inner.host.path(CLASS_NVME).join(format!("nvme{i}"))
    }
    fn sys_subsys(&self, s: u32) -> PathBuf {
        self.inner
            .host
            .path(CLASS_SUBSYS)
            .join(format!("nvme-subsys{s}"))
    }

    /// Writes the namespace's sysfs attributes now; returns udev's part, to run unlocked.
    fn make_block(
        &self,
        dir: &Path,
        block: &str,
        ns: &FakeNamespace,
        serial: &str,
    ) -> Box<dyn FnOnce() + Send> {
        w(&dir.join("nsid"), ns.nsid.to_string());
        w(&dir.join("uuid"), &ns.uuid);
        // The kernel's wwid: uuid first (drivers/nvme/host/sysfs.c, wwid_show).
        w(&dir.join("wwid"), format!("uuid.{}", ns.uuid));
        let g = &ns.nguid;
        w(
            &dir.join("nguid"),
            format!(
                "{}-{}-{}-{}-{}",
                &g[0..8],
                &g[8..12],
                &g[12..16],
                &g[16..20],
                &g[20..32]
            ),
        );
        w(&dir.join("size"), (ns.size_bytes / 512).to_string());
        let (me, block, ns, serial) = (
            self.clone(),
            block.to_string(),
            ns.clone(),
            serial.to_string(),
        );
        Box::new(move || {
            let host = &me.inner.host;
            let dev = host.path(volfence::host::paths::DEV).join(&block);
            if !dir_exists_for(host, &block) {
                return; // removed before udev got to it
            }
            if let Ok(f) = std::fs::File::create(&dev) {
                let _ = f.set_len(ns.size_bytes);
            }
            // What 60-persistent-storage.rules makes: model_serial (claimed by every namespace of
            // the subsystem; the last one processed has it), model_serial_nsid, and the link
            // named by the kernel's `wwid` (uuid first).
            let links = [
                format!("nvme-Linux_{serial}"),
                format!("nvme-Linux_{serial}_{}", ns.nsid),
                format!("nvme-uuid.{}", ns.uuid),
            ];
            let by_id = host.path(BY_ID);
            let gap = me.inner.state.lock().unwrap().udev_link_gap;
            for (i, l) in links.iter().enumerate() {
                if i > 0 {
                    std::thread::sleep(gap);
                }
                // As udev does: made aside, then renamed into place.
                let (p, tmp) = (by_id.join(l), by_id.join(format!(".#{l}")));
                let _ = std::os::unix::fs::symlink(format!("../../{block}"), &tmp);
                let _ = std::fs::rename(&tmp, &p);
            }
            let run_time = me.inner.state.lock().unwrap().udev_run_time;
            std::thread::sleep(run_time);
            me.emit(Uevent {
                action: "add".into(),
                subsystem: "block".into(),
                sysname: block.clone(),
                devname: Some(format!("/dev/{block}")),
                devlinks: links.iter().map(|l| format!("{BY_ID}/{l}")).collect(),
            });
        })
    }

    fn remove_block(&self, dir: &Path, block: &str) {
        let host = &self.inner.host;
        let _ = std::fs::remove_dir_all(dir);
        let _ = std::fs::remove_file(host.path(volfence::host::paths::DEV).join(block));
        let by_id = host.path(BY_ID);
        if let Ok(rd) = std::fs::read_dir(&by_id) {
            for e in rd.flatten() {
                if std::fs::read_link(e.path())
                    .map(|t| t.file_name().map(|n| n == block).unwrap_or(false))
                    .unwrap_or(false)
                {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
        self.emit(Uevent {
            action: "remove".into(),
            subsystem: "block".into(),
            sysname: block.to_string(),
            devname: Some(format!("/dev/{block}")),
            devlinks: vec![],
        });
    }

    fn remove_ctrl(&self, i: u32) -> std::io::Result<()> {
        let mut st = self.inner.state.lock().unwrap();
        let Some(c) = st.ctrls.remove(&i) else {
            return Err(Error::from(ErrorKind::NotFound));
        };
        let cdir = self.sys_ctrl(i);
        w(&cdir.join("state"), "deleting");
        let sdir = self.sys_subsys(c.subsys);
        let others = st.ctrls.values().any(|o| o.subsys == c.subsys);
        if self.inner.multipath {
            let _ = std::fs::remove_file(sdir.join(format!("nvme{i}")));
            if !others {
                let heads: Vec<(u32, u32)> = st
                    .heads
                    .keys()
                    .filter(|(s, _)| *s == c.subsys)
                    .cloned()
                    .collect();
                for key in heads {
                    let h = st.heads.remove(&key).unwrap();
                    let block = format!("nvme{}n{h}", c.subsys);
                    self.remove_block(&sdir.join(&block), &block);
                }
            }
        } else if let Ok(rd) = std::fs::read_dir(&cdir) {
            for e in rd.flatten() {
                let n = e.file_name().to_string_lossy().into_owned();
                if volfence::nvme::sysfs::parse_ns_name(&n).is_some() {
                    self.remove_block(&e.path(), &n);
                }
            }
        }
        // sysfs never gives a deleted directory's inode number to another within a boot (kernfs
        // ids are allocated cyclically, with a generation): the directory is moved aside, not
        // freed, so the file system under the fake root cannot reuse its inode either.
        let freed = self
            .inner
            .host
            .path(FREED)
            .join(format!("nvme{i}.{}", st.connects));
        let _ = std::fs::create_dir_all(freed.parent().unwrap());
        if std::fs::rename(&cdir, &freed).is_err() {
            let _ = std::fs::remove_dir_all(&cdir);
        }
        if !others {
            let _ = std::fs::remove_dir_all(&sdir);
            st.subsystems.remove(&c.nqn);
        }
        drop(st);
        self.emit(Uevent {
            action: "remove".into(),
            subsystem: "nvme".into(),
            sysname: format!("nvme{i}"),
            devname: Some(format!("/dev/nvme{i}")),
            devlinks: vec![],
        });
        Ok(())
    }
}

fn dir_exists_for(host: &Host, block: &str) -> bool {
    let Some((a, _)) = volfence::nvme::sysfs::parse_ns_name(block) else {
        return false;
    };
    host.path(CLASS_NVME)
        .join(format!("nvme{a}"))
        .join(block)
        .exists()
        || std::fs::read_dir(host.path(CLASS_SUBSYS))
            .map(|rd| rd.flatten().any(|e| e.path().join(block).exists()))
            .unwrap_or(false)
}

impl Fabrics for FakeKernel {
    fn connect(&self, _guard: &FenceGuard, options: &str) -> std::io::Result<String> {
        self.connect_foreign(options)
    }
}

impl FakeKernel {
    /// A connect made outside the agent (`nvme connect` by someone else), for fixtures: the
    /// kernel does the same as for the agent's, which alone needs the fence.
    pub fn connect_foreign(&self, options: &str) -> std::io::Result<String> {
        // nvmf_parse_options: comma-separated, flags without '=', unknown options rejected.
        const FLAGS: &[&str] = &[
            "duplicate_connect",
            "hdr_digest",
            "data_digest",
            "tls",
            "disable_sqflow",
        ];
        const VALUED: &[&str] = &[
            "transport",
            "traddr",
            "trsvcid",
            "nqn",
            "host_traddr",
            "host_iface",
            "hostnqn",
            "hostid",
            "nr_io_queues",
            "queue_size",
            "keep_alive_tmo",
            "reconnect_delay",
            "ctrl_loss_tmo",
            "fast_io_fail_tmo",
            "dhchap_secret",
            "dhchap_ctrl_secret",
            "keyring",
            "tls_key",
            "nr_write_queues",
            "nr_poll_queues",
            "tos",
        ];
        if options.contains('\n') {
            return Err(einval("newline in options"));
        }
        let mut flags = BTreeSet::new();
        for field in options.split(',') {
            match field.split_once('=') {
                Some((k, _)) if VALUED.contains(&k) => {}
                None if FLAGS.contains(&field) => {
                    flags.insert(field.to_string());
                }
                _ => return Err(einval("unknown option")),
            }
        }
        let kv = parse_kv(options);
        let get = |k: &str| kv.get(k).cloned().ok_or_else(|| einval(k));
        if get("transport")? != "tcp" {
            return Err(einval("transport"));
        }
        let nqn = get("nqn")?;
        let traddr: IpAddr = get("traddr")?.parse().map_err(|_| einval("traddr"))?;
        let trsvcid: u16 = get("trsvcid")?.parse().map_err(|_| einval("trsvcid"))?;
        let hostnqn = get("hostnqn")?;
        let ctrl_loss_tmo: i64 = kv
            .get("ctrl_loss_tmo")
            .map(|v| v.parse().map_err(|_| einval("ctrl_loss_tmo")))
            .transpose()?
            .unwrap_or(600);
        let mut st = self.inner.state.lock().unwrap();
        let Some(ti) = st
            .targets
            .iter()
            .position(|t| t.nqn == nqn && t.ports.get(&(traddr, trsvcid)) == Some(&true))
        else {
            return Err(Error::from_raw_os_error(nix::libc::ECONNREFUSED));
        };
        let host_traddr = kv.get("host_traddr").cloned();
        let host_iface = kv.get("host_iface").cloned();
        let dup = st.ctrls.values().any(|c| {
            c.nqn == nqn
                && c.traddr == traddr
                && c.trsvcid == trsvcid
                && c.hostnqn == hostnqn
                && c.host_traddr == host_traddr
                && c.host_iface == host_iface
        });
        if dup && !flags.contains("duplicate_connect") {
            return Err(Error::from_raw_os_error(nix::libc::EALREADY));
        }
        // After the duplicate check, as nvmf_create_ctrl finds a duplicate before connecting.
        if let Some((key, ctrl_key)) = &st.targets[ti].dhchap {
            let refused = match (kv.get("dhchap_secret"), kv.get("dhchap_ctrl_secret")) {
                (None, _) => Some(nix::libc::ENOKEY),
                (Some(s), _) if s != key => Some(nix::libc::EKEYREJECTED),
                // The host checks the controller: one without that secret cannot answer.
                (_, Some(c)) if ctrl_key.as_ref() != Some(c) => Some(nix::libc::EKEYREJECTED),
                _ => None,
            };
            if let Some(errno) = refused {
                return Err(Error::from_raw_os_error(errno));
            }
        }
        let i = (0..).find(|i| !st.ctrls.contains_key(i)).unwrap();
        let new_subsys = !st.subsystems.contains_key(&nqn);
        let s = match st.subsystems.get(&nqn) {
            Some(s) => *s,
            None => {
                let s = (0..)
                    .find(|s| !st.subsystems.values().any(|v| v == s))
                    .unwrap();
                st.subsystems.insert(nqn.clone(), s);
                s
            }
        };
        // nvmet allocates cntlids lowest free first (one ida for every subsystem).
        let cntlid = (1..)
            .find(|n| !st.ctrls.values().any(|c| c.cntlid == *n))
            .unwrap();
        let target = &st.targets[ti];
        let (namespaces, serial) = (target.namespaces.clone(), target.serial.clone());
        st.ctrls.insert(
            i,
            FakeCtrl {
                nqn: nqn.clone(),
                traddr,
                trsvcid,
                host_traddr: host_traddr.clone(),
                host_iface: host_iface.clone(),
                hostnqn: hostnqn.clone(),
                subsys: s,
                cntlid,
                ctrl_loss_tmo,
                generation: 0,
            },
        );
        st.connects += 1;
        let cdir = self.sys_ctrl(i);
        let sdir = self.sys_subsys(s);
        if new_subsys {
            w(&sdir.join("subsysnqn"), &nqn);
            w(&sdir.join("serial"), &serial);
        }
        w(&cdir.join("subsysnqn"), &nqn);
        w(&cdir.join("transport"), "tcp");
        let mut addr = format!("traddr={traddr},trsvcid={trsvcid}");
        if let Some(h) = &host_traddr {
            addr.push_str(&format!(",host_traddr={h}"));
        }
        if let Some(h) = &host_iface {
            addr.push_str(&format!(",host_iface={h}"));
        }
        addr.push_str(&format!(",src_addr={traddr}"));
        w(&cdir.join("address"), addr);
        w(&cdir.join("cntlid"), cntlid.to_string());
        w(&cdir.join("hostnqn"), &hostnqn);
        w(
            &cdir.join("hostid"),
            kv.get("hostid").cloned().unwrap_or_default(),
        );
        w(&cdir.join("state"), "live");
        w(&cdir.join("delete_controller"), "");
        if self.inner.multipath {
            let _ = std::os::unix::fs::symlink(&cdir, sdir.join(format!("nvme{i}")));
        }
        let mut jobs = Vec::new();
        for ns in &namespaces {
            if self.inner.multipath {
                let (h, new_head) = match st.heads.get(&(s, ns.nsid)) {
                    Some(h) => (*h, false),
                    None => {
                        let h = st.next_head;
                        st.next_head += 1;
                        st.heads.insert((s, ns.nsid), h);
                        let block = format!("nvme{s}n{h}");
                        jobs.push(self.make_block(&sdir.join(&block), &block, ns, &serial));
                        (h, true)
                    }
                };
                let node = cdir.join(format!("nvme{s}c{i}n{h}")).join("nsid");
                if new_head {
                    // Made by the same scan that makes the head, before the head's event.
                    w(&node, ns.nsid.to_string());
                } else {
                    // Joining a head that exists: the kernel's scan work adds the path node
                    // after the reply, and a hidden disk's uevents stay suppressed (block/genhd.c),
                    // so nothing announces it. 6.1 in the VM shows exactly that.
                    let (me, nsid) = (self.clone(), ns.nsid);
                    std::thread::spawn(move || {
                        std::thread::sleep(me.inner.udev_delay);
                        let st = me.inner.state.lock().unwrap();
                        if st.ctrls.get(&i).is_some_and(|c| c.subsys == s) {
                            w(&node, nsid.to_string());
                        }
                    });
                }
            } else {
                let h = st.next_head;
                st.next_head += 1;
                let block = format!("nvme{i}n{h}");
                jobs.push(self.make_block(&cdir.join(&block), &block, ns, &serial));
            }
        }
        // The crash-window hook: the controller exists, the reply has not been read yet.
        while st.hold_connect {
            st = self.inner.held.wait(st).unwrap();
        }
        drop(st);
        self.emit(Uevent {
            action: "add".into(),
            subsystem: "nvme".into(),
            sysname: format!("nvme{i}"),
            devname: Some(format!("/dev/nvme{i}")),
            devlinks: vec![],
        });
        for job in jobs {
            self.udev(job);
        }
        Ok(format!("instance={i},cntlid={cntlid}\n"))
    }
}

impl FakeKernel {
    /// The namespace behind block device `device` and the host ID its controller connected
    /// with, read back from the fake root as the target would know them.
    fn resv_target(&self, device: &str) -> std::io::Result<(String, u32, [u8; 16])> {
        let topo = volfence::nvme::sysfs::scan(&self.inner.host);
        let ns = topo
            .namespaces
            .iter()
            .find(|n| n.block == device)
            .ok_or_else(|| Error::new(ErrorKind::NotFound, format!("no block device {device}")))?;
        let ctrl = ns
            .controllers
            .first()
            .ok_or_else(|| Error::new(ErrorKind::NotFound, format!("{device}: no controller")))?;
        let raw =
            std::fs::read_to_string(self.inner.host.path(CLASS_NVME).join(ctrl).join("hostid"))?;
        let id = volfence::nvme::resv::host_id_bytes(raw.trim())
            .map_err(|e| Error::new(ErrorKind::InvalidData, e.to_string()))?;
        Ok((ns.subsysnqn.clone(), ns.nsid, id))
    }

    fn resv_execute(
        &self,
        device: &str,
        nsid: u32,
        cmd: &Command,
    ) -> std::io::Result<(Status, Vec<u8>)> {
        let (nqn, ns_nsid, id) = self.resv_target(device)?;
        if nsid != ns_nsid {
            // The controller answers for the namespace the command names.
            return Ok((Status(0x400b), cmd.data.clone()));
        }
        let r = self.inner.reservations.lock().unwrap().clone();
        Ok(match r {
            Some(r) => r.execute(&id, &nqn, nsid, cmd),
            // A target without reservations: Invalid Command Opcode, Do Not Retry.
            None => (Status(0x4001), cmd.data.clone()),
        })
    }
}

impl ReservationCommands for FakeKernel {
    fn submit(
        &self,
        _guard: &FenceGuard,
        device: &str,
        nsid: u32,
        cmd: &Command,
    ) -> std::io::Result<Status> {
        self.resv_execute(device, nsid, cmd).map(|(s, _)| s)
    }

    fn report(&self, device: &str, nsid: u32) -> std::io::Result<(Status, Vec<u8>)> {
        self.resv_execute(device, nsid, &codec::report())
    }
}

impl ReservationTeardown for FakeKernel {
    fn unregister(&self, device: &str, nsid: u32, key: u64) -> std::io::Result<Status> {
        let cmd = codec::register(codec::RegisterAction::Unregister, key, 0, false);
        self.resv_execute(device, nsid, &cmd).map(|(s, _)| s)
    }
}

impl FabricsTeardown for FakeKernel {
    fn delete_controller(&self, name: &str) -> std::io::Result<()> {
        let i = volfence::nvme::sysfs::parse_ctrl_name(name).ok_or_else(|| einval(name))?;
        self.remove_ctrl(i)
    }
}
