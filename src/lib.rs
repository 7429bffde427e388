//! volfence: a host agent that fences NVMe/TCP volumes with a per-host lease and takes online LVM
//! snapshots, driven over D-Bus.

pub mod claims;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod daemon;
pub mod dbus;
pub mod fence;
pub mod host;
pub mod logging;
pub mod lvm;
pub mod metrics;
pub mod names;
pub mod nvme;
pub mod snapshot;
pub mod time;
