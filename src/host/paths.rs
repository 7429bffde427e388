//! Absolute host paths, in one place. Resolve them with [`super::Host::path`], never directly.

pub const BOOT_ID: &str = "/proc/sys/kernel/random/boot_id";
pub const RANDOM_UUID: &str = "/proc/sys/kernel/random/uuid";
pub const HOSTNAME: &str = "/proc/sys/kernel/hostname";
pub const STATE_DIR: &str = "/var/lib/volfence";
pub const RUNTIME_DIR: &str = "/run/volfence";
pub const SNAPSHOT_MOUNT_ROOT: &str = "/run/volfence/snapshots";
pub const NVME_HOSTNQN_FILE: &str = "/etc/nvme/hostnqn";
pub const NVME_HOSTID_FILE: &str = "/etc/nvme/hostid";
pub const WATCHDOG_DEVICE: &str = "/dev/watchdog";
pub const DEV: &str = "/dev";
pub const NVME_CLASS: &str = "/sys/class/nvme";
pub const NVME_SUBSYSTEM_CLASS: &str = "/sys/class/nvme-subsystem";
pub const NVME_FABRICS: &str = "/dev/nvme-fabrics";
pub const NVME_MULTIPATH_PARAM: &str = "/sys/module/nvme_core/parameters/multipath";
pub const DISK_BY_ID: &str = "/dev/disk/by-id";
pub const MOUNTINFO: &str = "/proc/self/mountinfo";
pub const PROC: &str = "/proc";
