//! Fixtures for the host seam: a throwaway root with the few files every component reads.

use std::path::Path;

use volfence::host::{paths, Host};

/// Creates the kernel files a fresh host has: boot id, hostname and the kernel's UUID source
/// (for identities generated on first start, such as the NVMe host ID).
pub fn populate(root: &Path, boot_id: &str, hostname: &str) -> std::io::Result<Host> {
    let host = Host::new(root);
    let random = "5f0c2b8e-7d3a-4b1e-9c2d-0a1b2c3d4e5f";
    for (p, v) in [
        (paths::BOOT_ID, boot_id),
        (paths::HOSTNAME, hostname),
        (paths::RANDOM_UUID, random),
    ] {
        let p = host.path(p);
        std::fs::create_dir_all(p.parent().unwrap())?;
        std::fs::write(p, format!("{v}\n"))?;
    }
    Ok(host)
}
