//! The `standalone` backend: the lease is an exclusive `flock` on a file in the state directory,
//! and the epoch a counter next to it. It keeps two agents on ONE host apart and gives the same
//! epoch semantics as the Kubernetes lease, but it cannot see other hosts: no cross-host fencing.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

use super::{Acquired, BackendError, Holder, LeaseBackend};
use crate::host::write_atomic;

pub const LOCK_FILE: &str = "fence.lock";
pub const EPOCH_FILE: &str = "fence-epoch.json";

/// What the epoch file records.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EpochRecord {
    /// `holderIdentity` of the last incarnation that acquired.
    pub holder: String,
    pub epoch: u64,
}

pub struct FileLease {
    dir: PathBuf,
    holder: Holder,
    lock: Option<Flock<File>>,
    epoch: u64,
    /// (dev, inode, mtime) of the epoch record as this holding left it: a renew that finds it
    /// unchanged needs no file descriptor (an exhausted fd table must not cost the lease).
    record_stamp: Option<(u64, u64, i64, i64)>,
}

fn stamp(path: &Path) -> Option<(u64, u64, i64, i64)> {
    std::fs::metadata(path)
        .ok()
        .map(|m| (m.dev(), m.ino(), m.mtime(), m.mtime_nsec()))
}

impl FileLease {
    /// `dir` is the state directory, already resolved under the host root.
    pub fn new(dir: impl Into<PathBuf>, holder: Holder) -> FileLease {
        FileLease {
            dir: dir.into(),
            holder,
            lock: None,
            epoch: 0,
            record_stamp: None,
        }
    }

    fn lock_path(&self) -> PathBuf {
        self.dir.join(LOCK_FILE)
    }

    fn epoch_path(&self) -> PathBuf {
        self.dir.join(EPOCH_FILE)
    }

    fn read_record(path: &Path) -> Result<Option<EpochRecord>, BackendError> {
        match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| {
                // Losing the counter could reissue an epoch: refuse rather than guess.
                BackendError::Conflict(format!("{}: unreadable epoch record ({e}); move it aside only if no volume is attached", path.display()))
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(BackendError::Unavailable(format!("cannot read {}: {e}", path.display()))),
        }
    }

    fn acquire_sync(&mut self, after_loss: bool) -> Result<Acquired, BackendError> {
        let unavailable = |what: &str, p: &Path, e: std::io::Error| {
            BackendError::Unavailable(format!("cannot {what} {}: {e}", p.display()))
        };
        std::fs::create_dir_all(&self.dir).map_err(|e| unavailable("create", &self.dir, e))?;
        let path = self.lock_path();
        if self.lock.is_none() {
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(&path)
                .map_err(|e| unavailable("open", &path, e))?;
            let mut locked = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
                Ok(l) => l,
                Err((_, Errno::EWOULDBLOCK)) => {
                    let pid = std::fs::read_to_string(&path).unwrap_or_default();
                    return Err(BackendError::Conflict(format!(
                        "another agent (pid {}) holds {}: only one volfenced may run per host",
                        pid.trim(),
                        path.display()
                    )));
                }
                Err((_, e)) => {
                    return Err(BackendError::Unavailable(format!(
                        "flock {}: {e}",
                        path.display()
                    )))
                }
            };
            locked
                .set_len(0)
                .and_then(|_| write!(&mut *locked, "{}", std::process::id()))
                .ok();
            self.lock = Some(locked);
        }
        let me = self.holder.identity();
        let previous = Self::read_record(&self.epoch_path())?;
        let (epoch, resumed) = match previous {
            Some(r) if r.holder == me && !after_loss => (r.epoch, true),
            Some(r) => (r.epoch + 1, false),
            None => (1, false),
        };
        if !resumed {
            let rec = EpochRecord { holder: me, epoch };
            write_atomic(
                &self.epoch_path(),
                &serde_json::to_vec(&rec).expect("serializable"),
            )
            .map_err(|e| BackendError::Unavailable(e.to_string()))?;
        }
        self.epoch = epoch;
        self.record_stamp = stamp(&self.epoch_path());
        Ok(Acquired { epoch, resumed })
    }

    fn renew_sync(&mut self) -> Result<(), BackendError> {
        let Some(lock) = &self.lock else {
            return Err(BackendError::Lost("lock not held".into()));
        };
        let path = self.lock_path();
        // If the lock file was removed or replaced, another agent could lock the new one.
        let ours = lock.metadata().map(|m| (m.dev(), m.ino())).ok();
        let current = std::fs::metadata(&path).map(|m| (m.dev(), m.ino())).ok();
        if ours.is_none() || ours != current {
            self.lock = None;
            return Err(BackendError::Lost(format!(
                "{} was removed or replaced",
                path.display()
            )));
        }
        if self.record_stamp.is_some() && stamp(&self.epoch_path()) == self.record_stamp {
            return Ok(());
        }
        match Self::read_record(&self.epoch_path())? {
            Some(r) if r.holder == self.holder.identity() && r.epoch == self.epoch => {
                self.record_stamp = stamp(&self.epoch_path());
                Ok(())
            }
            other => {
                self.lock = None;
                Err(BackendError::Lost(format!(
                    "{} now says {:?}, expected epoch {} for {}",
                    self.epoch_path().display(),
                    other,
                    self.epoch,
                    self.holder.identity()
                )))
            }
        }
    }
}

impl LeaseBackend for FileLease {
    fn describe(&self) -> String {
        format!(
            "standalone file lease {}, no cross-host fencing",
            self.lock_path().display()
        )
    }

    async fn acquire(&mut self, after_loss: bool) -> Result<Acquired, BackendError> {
        self.acquire_sync(after_loss)
    }

    async fn renew(&mut self) -> Result<(), BackendError> {
        self.renew_sync()
    }

    async fn release(&mut self) {
        // Keep the epoch record: a restart in the same boot resumes the same epoch.
        self.lock = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn holder(boot: &str) -> Holder {
        Holder {
            node: "n1".into(),
            boot_id: boot.into(),
        }
    }

    #[tokio::test]
    async fn first_acquire_is_epoch_1_restart_resumes_reboot_bumps() {
        let dir = tempfile::tempdir().unwrap();
        let mut a = FileLease::new(dir.path(), holder("boot-a"));
        assert_eq!(
            a.acquire(false).await.unwrap(),
            Acquired {
                epoch: 1,
                resumed: false
            }
        );
        a.renew().await.unwrap();
        a.release().await;
        drop(a);
        let mut again = FileLease::new(dir.path(), holder("boot-a"));
        assert_eq!(
            again.acquire(false).await.unwrap(),
            Acquired {
                epoch: 1,
                resumed: true
            }
        );
        again.release().await;
        let mut rebooted = FileLease::new(dir.path(), holder("boot-b"));
        assert_eq!(
            rebooted.acquire(false).await.unwrap(),
            Acquired {
                epoch: 2,
                resumed: false
            }
        );
        // regaining after a loss never resumes
        rebooted.release().await;
        assert_eq!(
            rebooted.acquire(true).await.unwrap(),
            Acquired {
                epoch: 3,
                resumed: false
            }
        );
    }

    #[tokio::test]
    async fn second_agent_on_the_host_is_a_conflict() {
        let dir = tempfile::tempdir().unwrap();
        let mut a = FileLease::new(dir.path(), holder("boot-a"));
        a.acquire(false).await.unwrap();
        let mut b = FileLease::new(dir.path(), holder("boot-a"));
        let e = b.acquire(false).await.unwrap_err();
        assert!(
            matches!(&e, BackendError::Conflict(m) if m.contains("only one volfenced")),
            "{e}"
        );
    }

    #[tokio::test]
    async fn replaced_lock_file_is_a_loss() {
        let dir = tempfile::tempdir().unwrap();
        let mut a = FileLease::new(dir.path(), holder("boot-a"));
        a.acquire(false).await.unwrap();
        std::fs::remove_file(dir.path().join(LOCK_FILE)).unwrap();
        assert!(matches!(a.renew().await, Err(BackendError::Lost(_))));
    }

    #[tokio::test]
    async fn corrupt_epoch_record_is_refused_not_reset() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(EPOCH_FILE), "{not json").unwrap();
        let mut a = FileLease::new(dir.path(), holder("boot-a"));
        let e = a.acquire(false).await.unwrap_err().to_string();
        assert!(e.contains("unreadable epoch record"), "{e}");
    }
}
