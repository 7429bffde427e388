//! The OS seam. Every path the agent touches is resolved under one root directory, so tests run the
//! real code against a fixture tree (afterburn's pattern) and nothing hard-codes `/sys` or `/dev`.
//! What a file cannot imitate (the fabrics write/reply, mount(2), running lvm, uevents) gets a small
//! trait of its own next to the code that needs it.

use std::io::Write;
use std::path::{Path, PathBuf};

pub mod paths;
pub mod records;

/// Failures reading or writing the host's files.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    /// A file under the root could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A file under the root could not be written.
    #[error("cannot write {}: {source}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A file held something other than what the kernel writes there.
    #[error("{}: expected {expected}, found {found:?}", path.display())]
    Malformed {
        path: PathBuf,
        expected: &'static str,
        found: String,
    },
}

/// One process's identity within a boot (see [`Host::process`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ProcessStamp {
    pub pgrp: u32,
    pub start_ticks: u64,
}

/// The host as seen through a root directory (`/` in production).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Host {
    root: PathBuf,
}

impl Host {
    pub fn new(root: impl Into<PathBuf>) -> Host {
        Host { root: root.into() }
    }

    /// The real host.
    pub fn system() -> Host {
        Host::new("/")
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Resolves an absolute host path (as written in config or by the kernel) under the root.
    pub fn path(&self, abs: impl AsRef<Path>) -> PathBuf {
        let abs = abs.as_ref();
        self.root.join(abs.strip_prefix("/").unwrap_or(abs))
    }

    /// Reads a small text file (sysfs/procfs attribute), without the trailing newline.
    pub fn read_attr(&self, abs: impl AsRef<Path>) -> Result<String, HostError> {
        let path = self.path(abs);
        std::fs::read_to_string(&path)
            .map(|s| s.trim_end_matches('\n').to_string())
            .map_err(|source| HostError::Read { path, source })
    }

    /// Who `pid` is, as `/proc/<pid>/stat` says: its process group and its start time (clock
    /// ticks after boot). A pid alone names whoever has it now; with the start time (and the
    /// boot id) it names one process. None if there is no such process.
    pub fn process(&self, pid: u32) -> Option<ProcessStamp> {
        let stat = self
            .read_attr(Path::new(paths::PROC).join(pid.to_string()).join("stat"))
            .ok()?;
        // `pid (comm) state ppid pgrp ...`: comm may hold spaces and ')'; fields follow the last.
        let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
        Some(ProcessStamp {
            pgrp: fields.get(2)?.parse().ok()?,
            start_ticks: fields.get(19)?.parse().ok()?,
        })
    }

    /// This boot's id: what distinguishes an agent restart (same boot) from a reboot.
    pub fn boot_id(&self) -> Result<String, HostError> {
        let id = self.read_attr(paths::BOOT_ID)?;
        let valid = id.len() == 36 && id.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-');
        if !valid {
            return Err(HostError::Malformed {
                path: self.path(paths::BOOT_ID),
                expected: "a UUID",
                found: id,
            });
        }
        Ok(id)
    }

    /// The kernel's hostname, the default node name.
    pub fn hostname(&self) -> Result<String, HostError> {
        self.read_attr(paths::HOSTNAME)
    }

    /// Replaces `abs` atomically: write a temporary file, fsync, rename, fsync the directory, so a
    /// crash leaves either the old or the new content, never a torn file.
    pub fn write_atomic(&self, abs: impl AsRef<Path>, data: &[u8]) -> Result<(), HostError> {
        write_atomic(&self.path(abs), data)
    }
}

/// [`Host::write_atomic`] for a path already under the root.
pub fn write_atomic(path: &Path, data: &[u8]) -> Result<(), HostError> {
    let err = |source| HostError::Write {
        path: path.to_path_buf(),
        source,
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp.{}", std::process::id()));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_resolve_under_root() {
        let h = Host::new("/tmp/fake");
        assert_eq!(
            h.path("/sys/class/nvme"),
            PathBuf::from("/tmp/fake/sys/class/nvme")
        );
        assert_eq!(
            Host::system().path("/dev/nvme-fabrics"),
            PathBuf::from("/dev/nvme-fabrics")
        );
    }

    #[test]
    fn boot_id_and_hostname_from_fixture() {
        let dir = tempfile::tempdir().unwrap();
        let h = Host::new(dir.path());
        for (p, v) in [
            (paths::BOOT_ID, "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0\n"),
            (paths::HOSTNAME, "worker-1\n"),
        ] {
            std::fs::create_dir_all(h.path(p).parent().unwrap()).unwrap();
            std::fs::write(h.path(p), v).unwrap();
        }
        assert_eq!(h.boot_id().unwrap(), "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0");
        assert_eq!(h.hostname().unwrap(), "worker-1");
        std::fs::write(h.path(paths::BOOT_ID), "garbage\n").unwrap();
        let e = h.boot_id().unwrap_err().to_string();
        assert!(
            e.contains("boot_id: expected a UUID, found \"garbage\""),
            "{e}"
        );
    }

    #[test]
    fn atomic_write_replaces_whole_file() {
        let dir = tempfile::tempdir().unwrap();
        let h = Host::new(dir.path());
        h.write_atomic("/state.json", b"one").unwrap();
        h.write_atomic("/state.json", b"two").unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.path().join("state.json")).unwrap(),
            "two"
        );
        let leftovers: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(leftovers.len(), 1);
    }
}
