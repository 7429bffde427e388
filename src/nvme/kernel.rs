//! The two things about NVMe a file cannot imitate: the fabrics write/reply and the stream of
//! udev events. Everything else is plain sysfs reads under the host root.

use std::io::{Read, Write};
use std::os::fd::AsFd;

use tokio::sync::broadcast;

use super::sysfs::{CLASS_NVME, FABRICS_DEV};
use crate::fence::FenceGuard;
use crate::host::Host;

/// Blocking calls into the kernel's NVMe-oF host driver that give this host access to a device:
/// they take the fence's guard, so code without the lease cannot even name them. Run them on a
/// blocking thread.
///
/// ```compile_fail
/// use volfence::nvme::kernel::Fabrics;
/// fn connect_unfenced(fabrics: &dyn Fabrics) {
///     let _ = fabrics.connect("transport=tcp,traddr=127.0.0.1,trsvcid=4420,nqn=nqn.2014-08.org.example:v");
/// }
/// ```
/// With the guard it compiles:
/// ```
/// use volfence::{fence::FenceGuard, nvme::kernel::Fabrics};
/// fn connect_fenced(fabrics: &dyn Fabrics, guard: &FenceGuard) {
///     let _ = fabrics.connect(guard, "transport=tcp,traddr=127.0.0.1,trsvcid=4420,nqn=nqn.2014-08.org.example:v");
/// }
/// ```
pub trait Fabrics: Send + Sync {
    /// Writes `options` to `/dev/nvme-fabrics` and reads the reply (`instance=N,cntlid=M`) from
    /// the same open file, as the kernel requires.
    fn connect(&self, guard: &FenceGuard, options: &str) -> std::io::Result<String>;
}

/// Teardown, which must work without the lease: a fenced host still removes its controllers.
pub trait FabricsTeardown: Send + Sync {
    /// `echo 1 > /sys/class/nvme/<name>/delete_controller`; returns once the kernel has torn
    /// the controller down.
    fn delete_controller(&self, name: &str) -> std::io::Result<()>;
}

/// Both sides of the fabrics seam, as the volume manager holds them.
pub trait NvmeFabrics: Fabrics + FabricsTeardown {}
impl<T: Fabrics + FabricsTeardown> NvmeFabrics for T {}

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
    fn connect(&self, _guard: &FenceGuard, options: &str) -> std::io::Result<String> {
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
}

impl FabricsTeardown for KernelFabrics {
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
///
/// One watch serves every wait for the life of the manager: closing an inotify instance that
/// holds a watch waits for an SRCU grace period (about 15 ms), which a per-connect watch would
/// add to every connect.
pub struct LinkWatch {
    seen: tokio::sync::watch::Receiver<u64>,
    reader: tokio::task::JoinHandle<()>,
}

struct InotifyFd(nix::sys::inotify::Inotify);

impl std::os::fd::AsRawFd for InotifyFd {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.0.as_fd().as_raw_fd()
    }
}

impl LinkWatch {
    /// Watches `dir` from a task on the current runtime; `None` if it cannot (no such directory
    /// yet: the udev events still end the wait, only a little later).
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
        let (tx, seen) = tokio::sync::watch::channel(0u64);
        let reader = tokio::spawn(async move {
            read_links(&fd, &tx).await;
            // Closing waits for that grace period: not on a runtime thread.
            tokio::task::spawn_blocking(move || drop(fd));
        });
        Some(LinkWatch { seen, reader })
    }

    /// False once the watched directory was removed (or reading failed).
    pub fn is_alive(&self) -> bool {
        !self.reader.is_finished()
    }

    /// A waiter that wakes for every `nvme-*` link made after this call.
    pub fn subscribe(&self) -> LinkWaiter {
        let mut rx = self.seen.clone();
        rx.mark_unchanged();
        LinkWaiter(rx)
    }
}

impl Drop for LinkWatch {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

/// Counts `nvme-*` links made in the watched directory until it is removed or reading fails.
async fn read_links(
    fd: &tokio::io::unix::AsyncFd<InotifyFd>,
    tx: &tokio::sync::watch::Sender<u64>,
) {
    use nix::sys::inotify::AddWatchFlags;
    loop {
        let Ok(mut ready) = fd.readable().await else {
            return;
        };
        match ready.get_inner().0.read_events() {
            Ok(evs) => {
                // The directory is gone (udev removes an emptied one): this watch will never
                // fire again, and the manager makes a new one when the directory is back.
                if evs
                    .iter()
                    .any(|e| e.mask.contains(AddWatchFlags::IN_IGNORED))
                {
                    return;
                }
                if evs.iter().any(|e| {
                    e.name
                        .as_ref()
                        .is_some_and(|n| n.as_encoded_bytes().starts_with(b"nvme-"))
                }) {
                    tx.send_modify(|n| *n += 1);
                }
            }
            Err(nix::errno::Errno::EAGAIN) => ready.clear_ready(),
            // Waits end on udev events alone from here on.
            Err(_) => return,
        }
    }
}

/// See [`LinkWatch::subscribe`].
pub struct LinkWaiter(tokio::sync::watch::Receiver<u64>);

impl LinkWaiter {
    /// Until an `nvme-*` link appears that this waiter has not yet woken for.
    pub async fn nvme_link(&mut self) {
        if self.0.changed().await.is_err() {
            // The watch is gone: only the udev events can end the wait.
            std::future::pending::<()>().await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::FutureExt;
    use std::time::Duration;

    #[tokio::test]
    async fn one_link_watch_wakes_each_waiter_for_links_made_after_it_subscribed() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("by-id");
        std::fs::create_dir(&dir).unwrap();
        let watch = LinkWatch::new(&dir).unwrap();
        let mut first = watch.subscribe();
        std::fs::write(dir.join("wwn-0x1"), "").unwrap();
        std::fs::write(dir.join("nvme-uuid.1"), "").unwrap();
        tokio::time::timeout(Duration::from_secs(5), first.nvme_link())
            .await
            .expect("a new nvme- link wakes a waiter");
        // The link above was seen before this waiter existed: it must not wake it.
        let mut second = watch.subscribe();
        assert!(second.nvme_link().now_or_never().is_none());
        assert!(first.nvme_link().now_or_never().is_none());
        std::fs::write(dir.join("nvme-uuid.2"), "").unwrap();
        for w in [&mut first, &mut second] {
            tokio::time::timeout(Duration::from_secs(5), w.nvme_link())
                .await
                .expect("both waiters wake for the same link");
        }
        // udev removes an emptied by-id directory: the watch reports itself dead, so the
        // manager makes a new one once the directory is back.
        assert!(watch.is_alive());
        std::fs::remove_dir_all(&dir).unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while watch.is_alive() {
            assert!(tokio::time::Instant::now() < deadline, "watch still alive");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(LinkWatch::new(&dir).is_none());
    }
}
