//! volfence's test doubles, kept out of the product crate so that its release binaries and the
//! .deb contain none of them. Each models what the real part enforces, not what the agent sends:
//! - [`nvme`]: the NVMe-oF host driver plus udev, changing a fake root as the kernel does;
//! - [`lvm`]: the LVM commands and mount(2);
//! - [`resv`]: NVMe reservations at the target, as nvmet keeps them for several hosts;
//! - [`sim`]: an in-memory API server for the lease and claim protocols, with network faults,
//!   for the randomized safety simulation under tokio's paused clock;
//! - [`host`]: a throwaway host root.

pub mod host;
pub mod lvm;
pub mod nvme;
pub mod resv;
pub mod sim;
