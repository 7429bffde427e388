//! Fixtures for the host seam: a throwaway root with the few files every component reads.

use std::path::Path;

use volfence::host::{paths, Host};

/// Creates the kernel files a fresh host has: boot id, hostname and the kernel's UUID source
/// (for identities generated on first start, such as the NVMe host ID). Two hosts populated
/// with different names or boot ids get different "random" UUIDs, as two machines would: a
/// target tells their registrations apart by them.
pub fn populate(root: &Path, boot_id: &str, hostname: &str) -> std::io::Result<Host> {
    let host = Host::new(root);
    let random = uuid_of(&format!("{hostname}/{boot_id}"));
    for (p, v) in [
        (paths::BOOT_ID, boot_id),
        (paths::HOSTNAME, hostname),
        (paths::RANDOM_UUID, random.as_str()),
    ] {
        let p = host.path(p);
        std::fs::create_dir_all(p.parent().unwrap())?;
        std::fs::write(p, format!("{v}\n"))?;
    }
    Ok(host)
}

/// A version-4-shaped UUID from `seed` (FNV-1a, twice): stable for one seed, distinct for two.
fn uuid_of(seed: &str) -> String {
    let fnv = |salt: u8| {
        seed.bytes()
            .chain([salt])
            .fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
                (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
            })
    };
    let (hi, lo) = (fnv(1), fnv(2));
    let hex = format!("{hi:016x}{lo:016x}");
    format!(
        "{}-{}-4{}-a{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[13..16],
        &hex[17..20],
        &hex[20..32]
    )
}
