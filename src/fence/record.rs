//! The end of local validity, kept in the runtime directory on CLOCK_BOOTTIME, so a restarted
//! agent knows whether its previous incarnation's holding lapsed while it was down. If it did,
//! observers may already have acted on that holding: the new agent must not resume its epoch.
//! (CLOCK_BOOTTIME keeps running across process restarts and suspend; the file goes with /run
//! at reboot, when the new boot id makes a new holding anyway.)

use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::time::{clock_gettime, ClockId};

pub const FILE: &str = "fence-valid-until";

/// Nanoseconds on CLOCK_BOOTTIME.
pub fn boottime_ns() -> u64 {
    clock_gettime(ClockId::CLOCK_BOOTTIME)
        .map(|t| t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64)
        .unwrap_or(0)
}

pub fn path(runtime_dir: &Path) -> PathBuf {
    runtime_dir.join(FILE)
}

/// Records that validity ends `left` from now, for the holding `epoch` of `boot_id`.
pub fn write(
    runtime_dir: &Path,
    boot_id: &str,
    epoch: u64,
    left: Duration,
) -> Result<(), crate::host::HostError> {
    let until = boottime_ns() + left.as_nanos() as u64;
    crate::host::write_atomic(
        &path(runtime_dir),
        format!("{boot_id} {epoch} {until}\n").as_bytes(),
    )
}

/// What the previous incarnation in this boot left behind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Previous {
    /// No record (first start in this boot, or another boot's record).
    None,
    /// Its validity has not ended yet: resuming its epoch is safe.
    StillValid { epoch: u64 },
    /// Its validity ended while no agent ran (or the record is unreadable): do not resume.
    Lapsed { epoch: u64 },
}

pub fn read(runtime_dir: &Path, boot_id: &str) -> Previous {
    let Ok(text) = std::fs::read_to_string(path(runtime_dir)) else {
        return Previous::None;
    };
    let mut it = text.split_whitespace();
    let (Some(b), Some(e), Some(u)) = (it.next(), it.next(), it.next()) else {
        return Previous::Lapsed { epoch: 0 };
    };
    if b != boot_id {
        return Previous::None;
    }
    match (e.parse(), u.parse::<u64>()) {
        (Ok(epoch), Ok(until)) if boottime_ns() < until => Previous::StillValid { epoch },
        (Ok(epoch), Ok(_)) => Previous::Lapsed { epoch },
        _ => Previous::Lapsed { epoch: 0 },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn still_valid_then_lapsed_and_other_boots_ignored() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read(dir.path(), "b1"), Previous::None);
        write(dir.path(), "b1", 3, Duration::from_secs(60)).unwrap();
        assert_eq!(read(dir.path(), "b1"), Previous::StillValid { epoch: 3 });
        assert_eq!(read(dir.path(), "b2"), Previous::None);
        write(dir.path(), "b1", 3, Duration::ZERO).unwrap();
        std::thread::sleep(Duration::from_millis(2));
        assert_eq!(read(dir.path(), "b1"), Previous::Lapsed { epoch: 3 });
        std::fs::write(path(dir.path()), "garbage").unwrap();
        assert_eq!(read(dir.path(), "b1"), Previous::Lapsed { epoch: 0 });
    }
}
