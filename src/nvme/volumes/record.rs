//! The per-volume record on disk and its in-memory copy: written before the kernel is asked
//! for anything, so that a crash at any point leaves what the next start needs.

use super::*;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    Connecting,
    Connected,
    Disconnecting,
}

/// A controller this agent made (or adopted), identified by more than its reusable name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OwnedCtrl {
    pub name: String,
    pub cntlid: u16,
    pub path: PathAddr,
    /// Its sysfs directory's inode ([`Controller::ino`]): the name and the cntlid come back
    /// for the next controller to the same target once this one is deleted; this does not.
    pub ino: u64,
}

/// What is persisted per volume: `<runtime_dir>/volumes/<volume_id>.json`. No secrets. It
/// describes kernel state, which a reboot ends: hence the runtime directory, and the boot it
/// belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub volume_id: String,
    pub target: Target,
    pub hostnqn: String,
    /// The boot whose kernel holds the controllers named here. After a reboot the names (and,
    /// on a Linux target, the cntlids, lowest free first) are handed out again: a record of
    /// another boot must never claim what this boot made.
    pub boot_id: String,
    pub phase: Phase,
    pub controllers: Vec<OwnedCtrl>,
    /// Fence epoch of the connect.
    pub epoch: u64,
}

impl Record {
    /// The kernel names of the controllers it owns.
    pub(super) fn controller_names(&self) -> impl Iterator<Item = String> + '_ {
        self.controllers.iter().map(|c| c.name.clone())
    }

    /// Its controllers for a log line: `nvme0 (cntlid 1, 127.0.0.1:4420), …`.
    pub(super) fn controllers_text(&self) -> String {
        self.controllers
            .iter()
            .map(|c| format!("{} (cntlid {}, {})", c.name, c.cntlid, c.path))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

impl Volumes {
    pub(super) fn record_path(&self, id: &str) -> PathBuf {
        self.inner.records.path_of(id)
    }

    /// The record file already holds `r`: writing it again would change nothing.
    pub(super) fn is_on_disk(&self, r: &Record) -> bool {
        self.inner.on_disk.lock().unwrap().get(&r.volume_id) == Some(r)
    }

    pub(super) fn save(&self, r: &Record) -> Result<(), HostError> {
        if self.is_on_disk(r) {
            return Ok(());
        }
        self.inner.records.write(&r.volume_id, r)?;
        self.inner
            .on_disk
            .lock()
            .unwrap()
            .insert(r.volume_id.clone(), r.clone());
        Ok(())
    }

    pub(super) fn forget(&self, id: &str) -> Result<(), HostError> {
        self.inner.on_disk.lock().unwrap().remove(id);
        self.inner.records.remove(id)?;
        let removed = self.inner.volumes.lock().unwrap().remove(id).is_some();
        if removed {
            let _ = self
                .inner
                .changes
                .send(VolumeEvent::Removed(id.to_string()));
        }
        Ok(())
    }

    /// Persists an intermediate record and makes it the in-memory one (ownership checks and the
    /// loss handler see it at once). Nothing is announced and sysfs is not re-read: a volume's
    /// view, and its D-Bus object, come when its connect ends.
    pub(super) fn put_record(&self, r: &Record) -> Result<(), HostError> {
        self.save(r)?;
        self.remember(r);
        Ok(())
    }

    /// [`Self::put_record`] with the write on a blocking thread, so it overlaps what comes next
    /// (a sysfs scan, the wait for the device); `pending` must be settled before the kernel is
    /// asked to act on it and before the next write of the record. `disk` is what is persisted
    /// when recovery needs more than the in-memory record says (see the connect's last write).
    pub(super) fn put_record_in_background(
        &self,
        r: &Record,
        disk: Record,
        pending: &mut PendingSave,
    ) {
        debug_assert!(pending.0.is_none(), "a record write is still pending");
        self.remember(r);
        // No blocking thread for a write `save` would skip.
        if self.is_on_disk(&disk) {
            return;
        }
        let (me, path) = (self.clone(), self.record_path(&disk.volume_id));
        pending.0 = Some((path, tokio::task::spawn_blocking(move || me.save(&disk))));
    }

    pub(super) fn remember(&self, r: &Record) {
        let mut v = self.inner.volumes.lock().unwrap();
        match v.get_mut(&r.volume_id) {
            Some(entry) => entry.0 = r.clone(),
            None => {
                let info = self.describe(r, &Topology::default());
                v.insert(r.volume_id.clone(), (r.clone(), info));
            }
        }
    }
}

/// A record write still running on a blocking thread.
#[derive(Default)]
pub(super) struct PendingSave(Option<(PathBuf, tokio::task::JoinHandle<Result<(), HostError>>)>);

impl PendingSave {
    /// Waits for the write, if any; its error is the caller's.
    pub(super) async fn settle(&mut self) -> Result<(), HostError> {
        match self.0.take() {
            None => Ok(()),
            Some((path, h)) => h.await.unwrap_or_else(|e| {
                Err(HostError::Write {
                    path,
                    source: std::io::Error::other(e.to_string()),
                })
            }),
        }
    }
}
