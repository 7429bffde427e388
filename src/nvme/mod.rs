//! NVMe over Fabrics: names and identities. Connect, disconnect and resolve build on this.

pub mod nqn;
