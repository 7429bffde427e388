//! NVMe over Fabrics (TCP): connect, disconnect and resolve volumes through `/dev/nvme-fabrics`,
//! sysfs and udev.

pub mod hostid_check;
pub mod identity;
pub mod kernel;
pub mod nqn;
pub mod options;
pub mod resv;
pub mod sysfs;
pub mod volumes;
