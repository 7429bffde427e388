//! The two things about NVMe a file cannot imitate: the fabrics write/reply and the stream of
//! udev events. Everything else is plain sysfs reads under the host root.

use std::io::{Read, Write};
use std::os::fd::AsFd;

use tokio::sync::broadcast;

use super::sysfs::{CLASS_NVME, FABRICS_DEV};
use crate::host::Host;

/// Blocking calls into the kernel's NVMe-oF host driver. Run them on a blocking thread.
pub trait Fabrics: Send + Sync {
    /// Writes `options` to `/dev/nvme-fabrics` and reads the reply (`instance=N,cntlid=M`) from
    /// the same open file, as the kernel requires.
    fn connect(&self, options: &str) -> std::io::Result<String>;
    /// `echo 1 > /sys/class/nvme/<name>/delete_controller`; returns once the kernel has torn
    /// the controller down.
    fn delete_controller(&self, name: &str) -> std::io::Result<()>;
}

/// The real kernel, reached through the host root.
pub struct KernelFabrics {
    host: Host,
}

impl KernelFabrics {
    pub fn new(host: Host) -> KernelFabrics {
        KernelFabrics { host }
    }
}

impl Fabrics for KernelFabrics {
    fn connect(&self, options: &str) -> std::io::Result<String> {
        let mut f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(self.host.path(FABRICS_DEV))?;
        // One write: the kernel parses the whole buffer as one option string.
        f.write_all(options.as_bytes())?;
        let mut reply = String::new();
        f.read_to_string(&mut reply)?;
        Ok(reply)
    }

    fn delete_controller(&self, name: &str) -> std::io::Result<()> {
        let path = self
            .host
            .path(CLASS_NVME)
            .join(name)
            .join("delete_controller");
        std::fs::OpenOptions::new()
            .write(true)
            .open(path)?
            .write_all(b"1")
    }
}

/// One device event, after udev processed it (rules ran, links made).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Uevent {
    /// add, remove, change, bind, unbind
    pub action: String,
    /// nvme, nvme-subsystem, block
    pub subsystem: String,
    /// nvme0, nvme0n1, nvme-subsys0
    pub sysname: String,
    /// /dev/nvme0n1
    pub devname: Option<String>,
    /// Links udev made (/dev/disk/by-id/…)
    pub devlinks: Vec<String>,
}

/// Capacity of the event channel; a receiver that lags rescans sysfs instead.
pub const EVENT_BUFFER: usize = 1024;

pub fn event_channel() -> broadcast::Sender<Uevent> {
    broadcast::channel(EVENT_BUFFER).0
}

/// Forwards udev's (not the kernel's) events for nvme, nvme-subsystem and block devices to
/// `tx`. libudev's monitor is not `Send`, so it lives on its own thread for the process's
/// lifetime. The socket is open when this returns: no event after it is missed.
pub fn spawn_udev_monitor(tx: broadcast::Sender<Uevent>) -> std::io::Result<()> {
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("udev-monitor".into())
        .spawn(move || {
            let socket = udev::MonitorBuilder::new()
                .and_then(|b| b.match_subsystem("nvme"))
                .and_then(|b| b.match_subsystem("nvme-subsystem"))
                .and_then(|b| b.match_subsystem("block"))
                .and_then(|b| b.listen());
            let socket = match socket {
                Ok(s) => {
                    let _ = ready_tx.send(Ok(()));
                    s
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return;
                }
            };
            loop {
                let mut fds = [nix::poll::PollFd::new(
                    socket.as_fd(),
                    nix::poll::PollFlags::POLLIN,
                )];
                match nix::poll::poll(&mut fds, nix::poll::PollTimeout::NONE) {
                    Ok(_) | Err(nix::errno::Errno::EINTR) => {}
                    Err(e) => {
                        tracing::error!("udev monitor: poll failed: {e}; device waits fall back to their deadlines");
                        return;
                    }
                }
                for ev in socket.iter() {
                    let text = |v: Option<&std::ffi::OsStr>| {
                        v.map(|s| s.to_string_lossy().into_owned())
                            .unwrap_or_default()
                    };
                    let e = Uevent {
                        action: text(ev.action()),
                        subsystem: text(ev.subsystem()),
                        sysname: ev.sysname().to_string_lossy().into_owned(),
                        devname: ev.devnode().map(|p| p.to_string_lossy().into_owned()),
                        devlinks: text(ev.property_value("DEVLINKS"))
                            .split_whitespace()
                            .map(str::to_string)
                            .collect(),
                    };
                    tracing::trace!(?e, "uevent");
                    // No receivers is fine: nobody is waiting right now.
                    let _ = tx.send(e);
                }
            }
        })?;
    ready_rx
        .recv()
        .unwrap_or_else(|_| Err(std::io::Error::other("udev monitor thread died")))
}

/// Wakes when udev makes (or renames into place) an `nvme-*` link in a directory — the by-id
/// links a connect waits for. udev creates them while it processes a device's event, before its
/// `RUN` programs and before it announces the event, so a wait on links alone would lag behind
/// a program that watches the directory. inotify, so a wait never polls.
pub struct LinkWatch {
    fd: tokio::io::unix::AsyncFd<InotifyFd>,
}

struct InotifyFd(nix::sys::inotify::Inotify);

impl std::os::fd::AsRawFd for InotifyFd {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.0.as_fd().as_raw_fd()
    }
}

impl LinkWatch {
    /// Watches `dir`; `None` if it cannot (no such directory yet: the udev events still end the
    /// wait, only a little later).
    pub fn new(dir: &std::path::Path) -> Option<LinkWatch> {
        use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
        let ino = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC).ok()?;
        ino.add_watch(dir, AddWatchFlags::IN_CREATE | AddWatchFlags::IN_MOVED_TO)
            .ok()?;
        // SAFETY: the Inotify owns its fd until it is dropped with the AsyncFd, and as_raw_fd
        // always returns that same fd.
        let fd = unsafe {
            tokio::io::unix::AsyncFd::register_with_interest(
                InotifyFd(ino),
                tokio::io::Interest::READABLE,
            )
        }
        .ok()?;
        Some(LinkWatch { fd })
    }

    /// Until an `nvme-*` entry appears.
    pub async fn nvme_link(&self) {
        loop {
            let Ok(mut ready) = self.fd.readable().await else {
                return std::future::pending().await;
            };
            match ready.get_inner().0.read_events() {
                Ok(evs) => {
                    if evs.iter().any(|e| {
                        e.name
                            .as_ref()
                            .is_some_and(|n| n.as_encoded_bytes().starts_with(b"nvme-"))
                    }) {
                        return;
                    }
                }
                Err(nix::errno::Errno::EAGAIN) => ready.clear_ready(),
                Err(_) => return std::future::pending().await,
            }
        }
    }
}
