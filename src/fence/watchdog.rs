//! The optional hardware watchdog (sbd-style): armed once the lease is first held, fed only
//! after successful renews, so a hung or dead agent, or a lost lease, resets the host before any
//! observer may act. A clean shutdown disarms it with the magic close ('V').
//!
//! Timeout: whole seconds, at most D − M − R. The last feed comes at most R after the last
//! successful renew was sent (the renew budget), so the reset happens by send + D − M, before
//! validity could have been trusted any longer.

use std::fs::File;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use super::Timing;

nix::ioctl_readwrite!(wdioc_settimeout, b'W', 6, nix::libc::c_int);

#[derive(Debug, thiserror::Error)]
pub enum WatchdogError {
    /// The device could not be opened.
    #[error("cannot open watchdog {}: {source}", path.display())]
    Open {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The file is not a watchdog, or refuses the timeout.
    #[error("{}: cannot set the watchdog timeout to {secs}s ({errno}); is it a watchdog device?", path.display())]
    Timeout {
        path: PathBuf,
        secs: i32,
        errno: nix::errno::Errno,
    },
    /// The lease timing leaves no room for a watchdog timeout.
    #[error("lease_duration − safety_margin − renew_interval is {0:?}: the watchdog timeout needs at least 1s")]
    NoRoom(Duration),
}

/// The timeout the fence timing allows, in whole seconds.
pub fn timeout_for(t: &Timing) -> Result<i32, WatchdogError> {
    let room = t
        .lease_duration
        .saturating_sub(t.safety_margin)
        .saturating_sub(t.renew_interval);
    let secs = room.as_secs();
    if secs < 1 {
        return Err(WatchdogError::NoRoom(room));
    }
    Ok(i32::try_from(secs).unwrap_or(i32::MAX))
}

/// An open, not yet armed watchdog. Opening a Linux watchdog device arms it, so `open` is
/// deferred until the first feed.
pub struct Watchdog {
    path: PathBuf,
    secs: i32,
    file: Mutex<Option<File>>,
}

impl Watchdog {
    /// Checks the timing now; the device is opened (armed) on the first feed.
    pub fn new(path: &Path, timing: &Timing) -> Result<Watchdog, WatchdogError> {
        Ok(Watchdog {
            path: path.to_path_buf(),
            secs: timeout_for(timing)?,
            file: Mutex::new(None),
        })
    }

    pub fn timeout_secs(&self) -> i32 {
        self.secs
    }

    fn arm(&self) -> Result<File, WatchdogError> {
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(&self.path)
            .map_err(|source| WatchdogError::Open {
                path: self.path.clone(),
                source,
            })?;
        let mut secs = self.secs;
        // SAFETY: WDIOC_SETTIMEOUT reads and writes one c_int through the pointer given.
        unsafe { wdioc_settimeout(file.as_raw_fd(), &mut secs) }.map_err(|errno| {
            WatchdogError::Timeout {
                path: self.path.clone(),
                secs: self.secs,
                errno,
            }
        })?;
        tracing::info!(
            "hardware watchdog {} armed with a {}s timeout",
            self.path.display(),
            secs
        );
        Ok(file)
    }

    /// Feeds (arming on first use). Called only after a successful renew.
    pub fn feed(&self) -> Result<(), WatchdogError> {
        let mut f = self.file.lock().unwrap();
        if f.is_none() {
            *f = Some(self.arm()?);
        }
        if let Some(file) = f.as_mut() {
            file.write_all(b"1").map_err(|source| WatchdogError::Open {
                path: self.path.clone(),
                source,
            })?;
        }
        Ok(())
    }

    /// Clean shutdown: magic close, so the host is not reset.
    pub fn disarm(&self) {
        if let Some(mut file) = self.file.lock().unwrap().take() {
            match file.write_all(b"V") {
                Ok(()) => tracing::info!("hardware watchdog {} disarmed", self.path.display()),
                Err(e) => tracing::error!(
                    "cannot disarm the hardware watchdog {}: {e}; the host will reset",
                    self.path.display()
                ),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeout_leaves_room_for_the_last_renew() {
        let t = Timing {
            lease_duration: Duration::from_secs(10),
            renew_interval: Duration::from_millis(2500),
            safety_margin: Duration::from_secs(2),
        };
        assert_eq!(timeout_for(&t).unwrap(), 5);
        let tight = Timing {
            lease_duration: Duration::from_secs(4),
            renew_interval: Duration::from_secs(1),
            safety_margin: Duration::from_millis(2500),
        };
        assert!(matches!(timeout_for(&tight), Err(WatchdogError::NoRoom(_))));
    }

    #[test]
    fn a_regular_file_is_not_a_watchdog() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("watchdog");
        std::fs::write(&p, "").unwrap();
        let t = Timing {
            lease_duration: Duration::from_secs(10),
            renew_interval: Duration::from_millis(2500),
            safety_margin: Duration::from_secs(2),
        };
        let w = Watchdog::new(&p, &t).unwrap();
        let e = w.feed().unwrap_err().to_string();
        assert!(e.contains("is it a watchdog device?"), "{e}");
        let missing = Watchdog::new(&dir.path().join("none"), &t).unwrap();
        assert!(missing
            .feed()
            .unwrap_err()
            .to_string()
            .contains("cannot open watchdog"));
    }
}
