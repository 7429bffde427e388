//! Read-only mounts of snapshots: filesystem detection from the superblock (not guessed from
//! names), the options each filesystem needs to mount a crash-consistent snapshot read-only,
//! `/proc/self/mountinfo` parsing, and mount points that never leave the mount root.

use std::io::Read;
use std::path::{Path, PathBuf};

use crate::fence::FenceGuard;
use crate::host::Host;

#[derive(Debug, thiserror::Error)]
pub enum MountError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The device has no filesystem volfence knows how to mount safely.
    #[error("{}: no ext2/3/4 or xfs filesystem found (first bytes do not match a known superblock)", .0.display())]
    UnknownFilesystem(PathBuf),
    /// The mount point would be outside the mount root.
    #[error("mount point {}: must be a plain directory directly under {} (no symlinks)", path.display(), root.display())]
    Escape { path: PathBuf, root: PathBuf },
    #[error("mount {src} on {}: {source}", target.display())]
    Mount {
        src: String,
        target: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("unmount {}: {source}", target.display())]
    Umount {
        target: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fs {
    Ext4,
    Xfs,
}

impl Fs {
    pub fn as_str(self) -> &'static str {
        match self {
            Fs::Ext4 => "ext4",
            Fs::Xfs => "xfs",
        }
    }
    /// Options for a read-only mount of a snapshot taken while the origin was mounted: the log
    /// must not be replayed (it would write), and xfs refuses a second mount of the same UUID.
    pub fn ro_options(self) -> &'static str {
        match self {
            Fs::Xfs => "nouuid,norecovery",
            Fs::Ext4 => "noload",
        }
    }
}

/// Identifies the filesystem from its superblock: xfs `XFSB` at 0, ext2/3/4 magic 0xEF53 at 1080.
pub fn detect_fs(head: &[u8]) -> Option<Fs> {
    if head.len() >= 4 && &head[0..4] == b"XFSB" {
        return Some(Fs::Xfs);
    }
    if head.len() >= 1082 && head[1080] == 0x53 && head[1081] == 0xEF {
        return Some(Fs::Ext4);
    }
    None
}

/// Reads the first 4 KiB of a device under the host root.
pub fn probe(host: &Host, dev: &str) -> Result<Fs, MountError> {
    let path = host.path(dev);
    let mut buf = vec![0u8; 4096];
    let mut f = std::fs::File::open(&path).map_err(|source| MountError::Io {
        path: path.clone(),
        source,
    })?;
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(source) => return Err(MountError::Io { path, source }),
        }
    }
    detect_fs(&buf[..n]).ok_or(MountError::UnknownFilesystem(path))
}

/// One line of mountinfo: the fields this agent needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    pub mount_point: String,
    pub fstype: String,
    pub source: String,
    pub options: String,
}

/// `\040`-style octal escapes, as the kernel writes spaces and tabs in paths.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 4 <= b.len() {
            let oct = &s[i + 1..i + 4];
            if let Ok(v) = u8::from_str_radix(oct, 8) {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Parses `/proc/self/mountinfo` (proc(5)): `id parent maj:min root mountpoint options
/// [optional…] - fstype source superoptions`.
pub fn parse_mountinfo(text: &str) -> Vec<MountEntry> {
    text.lines()
        .filter_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            let f: Vec<&str> = left.split(' ').collect();
            let r: Vec<&str> = right.split(' ').collect();
            if f.len() < 6 || r.len() < 2 {
                return None;
            }
            Some(MountEntry {
                mount_point: unescape(f[4]),
                options: f[5].to_string(),
                fstype: r[0].to_string(),
                source: unescape(r[1]),
            })
        })
        .collect()
}

pub use crate::host::paths::MOUNTINFO;

pub fn mounts(host: &Host) -> Vec<MountEntry> {
    std::fs::read_to_string(host.path(MOUNTINFO))
        .map(|t| parse_mountinfo(&t))
        .unwrap_or_default()
}

/// `mount(2)`: what a file cannot imitate. Mounting exposes a device, so it takes the fence's
/// guard.
///
/// ```compile_fail
/// use std::path::Path;
/// use volfence::snapshot::mount::{Fs, Mounter};
/// fn mount_unfenced(m: &dyn Mounter) {
///     let _ = m.mount_ro(Path::new("/dev/vg/snap"), Path::new("/run/s"), Fs::Ext4);
/// }
/// ```
/// With the guard it compiles:
/// ```
/// use std::path::Path;
/// use volfence::{fence::FenceGuard, snapshot::mount::{Fs, Mounter}};
/// fn mount_fenced(m: &dyn Mounter, guard: &FenceGuard) {
///     let _ = m.mount_ro(guard, Path::new("/dev/vg/snap"), Path::new("/run/s"), Fs::Ext4);
/// }
/// ```
pub trait Mounter: Send + Sync {
    fn mount_ro(
        &self,
        guard: &FenceGuard,
        dev: &Path,
        target: &Path,
        fs: Fs,
    ) -> std::io::Result<()>;
}

/// `umount2(2)`: teardown, which must work without the lease.
pub trait MountTeardown: Send + Sync {
    fn umount(&self, target: &Path, lazy: bool) -> std::io::Result<()>;
}

/// Both sides, as the snapshot manager holds them.
pub trait MountSyscalls: Mounter + MountTeardown {}
impl<T: Mounter + MountTeardown> MountSyscalls for T {}

/// The kernel's mount, in the agent's (the host's) mount namespace.
pub struct SystemMounter;

impl Mounter for SystemMounter {
    fn mount_ro(
        &self,
        _guard: &FenceGuard,
        dev: &Path,
        target: &Path,
        fs: Fs,
    ) -> std::io::Result<()> {
        use nix::mount::{mount, MsFlags};
        mount(
            Some(dev),
            target,
            Some(fs.as_str()),
            MsFlags::MS_RDONLY | MsFlags::MS_NODEV | MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
            Some(fs.ro_options()),
        )
        .map_err(std::io::Error::from)
    }
}

impl MountTeardown for SystemMounter {
    fn umount(&self, target: &Path, lazy: bool) -> std::io::Result<()> {
        use nix::mount::{umount2, MntFlags};
        let flags = if lazy {
            MntFlags::MNT_DETACH
        } else {
            MntFlags::empty()
        };
        umount2(target, flags).map_err(std::io::Error::from)
    }
}

/// Creates `<root>/<name>` as a real directory, refusing anything that is or passes through a
/// symlink, so a mount can never land outside the root.
pub fn make_mount_point(root: &Path, name: &str) -> Result<PathBuf, MountError> {
    let target = root.join(name);
    let escape = || MountError::Escape {
        path: target.clone(),
        root: root.to_path_buf(),
    };
    if name.is_empty() || name.contains('/') || name == "." || name == ".." {
        return Err(escape());
    }
    std::fs::create_dir_all(root).map_err(|source| MountError::Io {
        path: root.to_path_buf(),
        source,
    })?;
    // The root itself must not be a symlink either.
    let meta = std::fs::symlink_metadata(root).map_err(|source| MountError::Io {
        path: root.to_path_buf(),
        source,
    })?;
    if !meta.is_dir() {
        return Err(escape());
    }
    match std::fs::symlink_metadata(&target) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => return Err(escape()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => std::fs::create_dir(&target)
            .map_err(|source| MountError::Io {
                path: target.clone(),
                source,
            })?,
        Err(source) => {
            return Err(MountError::Io {
                path: target,
                source,
            })
        }
    }
    Ok(target)
}

/// Removes an (unmounted, empty) mount point; a missing one is fine.
pub fn remove_mount_point(target: &Path) -> Result<(), MountError> {
    match std::fs::remove_dir(target) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(MountError::Io {
            path: target.to_path_buf(),
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn superblocks() {
        let mut x = vec![0u8; 4096];
        x[..4].copy_from_slice(b"XFSB");
        assert_eq!(detect_fs(&x), Some(Fs::Xfs));
        let mut e = vec![0u8; 4096];
        e[1080] = 0x53;
        e[1081] = 0xEF;
        assert_eq!(detect_fs(&e), Some(Fs::Ext4));
        assert_eq!(detect_fs(&[0u8; 4096]), None);
        assert_eq!(detect_fs(b"XFS"), None);
    }

    #[test]
    fn mountinfo_lines() {
        let text = "22 1 0:21 / /run rw,nosuid,nodev shared:5 - tmpfs tmpfs rw,size=1G\n\
                    95 22 253:3 / /run/volfence/snapshots/vfsnap-a\\040b ro,nosuid,nodev,noexec - xfs /dev/mapper/vg-vfsnap--a ro,nouuid,norecovery\n\
                    garbage\n";
        let m = parse_mountinfo(text);
        assert_eq!(m.len(), 2);
        assert_eq!(m[1].mount_point, "/run/volfence/snapshots/vfsnap-a b");
        assert_eq!(m[1].fstype, "xfs");
        assert_eq!(m[1].source, "/dev/mapper/vg-vfsnap--a");
        assert!(m[1].options.starts_with("ro"));
    }

    #[test]
    fn mount_points_stay_under_the_root() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("snaps");
        let p = make_mount_point(&root, "vfsnap-1").unwrap();
        assert!(p.is_dir());
        make_mount_point(&root, "vfsnap-1").unwrap(); // idempotent
        for bad in ["", "..", "a/b"] {
            assert!(make_mount_point(&root, bad).is_err(), "{bad:?}");
        }
        std::os::unix::fs::symlink("/etc", root.join("evil")).unwrap();
        let e = make_mount_point(&root, "evil").unwrap_err();
        assert!(e.to_string().contains("no symlinks"), "{e}");
        let link_root = d.path().join("linkroot");
        std::os::unix::fs::symlink(d.path(), &link_root).unwrap();
        assert!(make_mount_point(&link_root, "x").is_err());
        remove_mount_point(&p).unwrap();
        remove_mount_point(&p).unwrap();
    }
}

#[cfg(test)]
mod captured {
    /// /proc/self/mountinfo from the VM while a job's snapshot was mounted (Linux 6.1).
    #[test]
    fn real_mountinfo() {
        let m = super::parse_mountinfo(include_str!("../../tests/fixtures/lvm/mountinfo.txt"));
        let snap = m
            .iter()
            .find(|e| e.mount_point == "/run/volfence/snapshots/vfsnap-r-kill")
            .unwrap();
        assert_eq!(
            (snap.fstype.as_str(), snap.source.as_str()),
            ("ext4", "/dev/vgsnap/vfsnap-r-kill")
        );
        assert!(
            snap.options.starts_with("ro,nosuid,nodev,noexec"),
            "{}",
            snap.options
        );
        let xfs = m
            .iter()
            .find(|e| e.mount_point == "/run/vmtest/o-xfs")
            .unwrap();
        assert_eq!(
            (xfs.fstype.as_str(), xfs.source.as_str()),
            ("xfs", "/dev/mapper/vgsnap-xfs")
        );
        assert!(m.len() > 10);
    }
}
