//! NVMe over Fabrics (TCP): connect, disconnect and resolve volumes through `/dev/nvme-fabrics`,
//! sysfs and udev.

pub mod nqn;
pub mod options;
