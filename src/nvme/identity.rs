//! The host NQN and host ID this host presents to every target. One identity, decided once at
//! startup: config, else `/etc/nvme/hostnqn` + `/etc/nvme/hostid` (shared with nvme-cli), else
//! generated and written there, as `nvme gen-hostnqn` would.

use std::path::{Path, PathBuf};

use super::nqn::validate_nqn;
use super::options::{validate_uuid, HostIdentity};
use crate::config::NvmeSettings;
use crate::host::paths::RANDOM_UUID;
use crate::host::{Host, HostError};

const UUID_NQN_PREFIX: &str = "nqn.2014-08.org.nvmexpress:uuid:";

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error(transparent)]
    Host(#[from] HostError),
    /// A file held something that is not a host NQN / host ID.
    #[error("{}: expected {expected}, found {found:?}", path.display())]
    Malformed {
        path: PathBuf,
        expected: &'static str,
        found: String,
    },
}

/// Where each part came from, for the startup log line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    Config,
    File(PathBuf),
    Generated(PathBuf),
}

fn read_optional(host: &Host, path: &Path) -> Result<Option<String>, HostError> {
    match host.read_attr(path) {
        Ok(s) if s.trim().is_empty() => Ok(None),
        Ok(s) => Ok(Some(s.trim().to_string())),
        Err(HostError::Read { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

fn persist(host: &Host, abs: &Path, value: &str) -> Result<(), HostError> {
    let path = host.path(abs);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|source| HostError::Write {
            path: dir.to_path_buf(),
            source,
        })?;
    }
    host.write_atomic(abs, format!("{value}\n").as_bytes())
}

fn uuid_from_nqn(nqn: &str) -> Option<String> {
    nqn.strip_prefix(UUID_NQN_PREFIX)
        .filter(|u| validate_uuid("hostid", u).is_ok())
        .map(str::to_ascii_lowercase)
}

fn random_uuid(host: &Host) -> Result<String, IdentityError> {
    let u = host.read_attr(RANDOM_UUID)?;
    validate_uuid("uuid", &u).map_err(|_| IdentityError::Malformed {
        path: host.path(RANDOM_UUID),
        expected: "a UUID",
        found: u.clone(),
    })?;
    Ok(u)
}

/// Decides the identity, persisting what had to be generated.
pub fn load(
    host: &Host,
    s: &NvmeSettings,
) -> Result<(HostIdentity, Origin, Origin), IdentityError> {
    let nqn_path = host.path(&s.hostnqn_file);
    let id_path = host.path(&s.hostid_file);
    let (mut nqn, mut nqn_origin) = match &s.hostnqn {
        Some(q) => (Some(q.clone()), Origin::Config),
        None => (
            read_optional(host, &s.hostnqn_file)?,
            Origin::File(s.hostnqn_file.clone()),
        ),
    };
    if let Some(q) = &nqn {
        validate_nqn(q).map_err(|_| IdentityError::Malformed {
            path: nqn_path.clone(),
            expected: "a host NQN (nqn.2014-08.org.nvmexpress:uuid:<uuid>)",
            found: q.clone(),
        })?;
    }
    let (mut id, mut id_origin) = match &s.hostid {
        Some(i) => (Some(i.clone()), Origin::Config),
        None => (
            read_optional(host, &s.hostid_file)?,
            Origin::File(s.hostid_file.clone()),
        ),
    };
    if let Some(i) = &id {
        validate_uuid("hostid", i).map_err(|_| IdentityError::Malformed {
            path: id_path.clone(),
            expected: "a host ID (UUID)",
            found: i.clone(),
        })?;
    }
    // Fill the gaps the way nvme-cli does: the UUID inside a uuid-form host NQN is the host ID.
    if id.is_none() {
        if let Some(u) = nqn.as_deref().and_then(uuid_from_nqn) {
            id = Some(u);
        } else {
            id = Some(random_uuid(host)?);
        }
        persist(host, &s.hostid_file, id.as_ref().unwrap())?;
        id_origin = Origin::Generated(s.hostid_file.clone());
    }
    let id = id.expect("filled above");
    if nqn.is_none() {
        nqn = Some(format!("{UUID_NQN_PREFIX}{id}"));
        persist(host, &s.hostnqn_file, nqn.as_ref().unwrap())?;
        nqn_origin = Origin::Generated(s.hostnqn_file.clone());
    }
    let nqn = nqn.expect("filled above");
    if let Some(u) = uuid_from_nqn(&nqn) {
        if !u.eq_ignore_ascii_case(&id) {
            tracing::warn!("host NQN {nqn} carries UUID {u} but the host ID is {id}: targets that check both will refuse this host");
        }
    }
    Ok((
        HostIdentity {
            hostnqn: nqn,
            hostid: id,
        },
        nqn_origin,
        id_origin,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Settings;

    fn setup() -> (tempfile::TempDir, Host, NvmeSettings) {
        let dir = tempfile::tempdir().unwrap();
        let host = Host::new(dir.path());
        std::fs::create_dir_all(host.path("/proc/sys/kernel/random")).unwrap();
        std::fs::write(
            host.path(RANDOM_UUID),
            "5f0c2b8e-7d3a-4b1e-9c2d-0a1b2c3d4e5f\n",
        )
        .unwrap();
        (dir, host, Settings::defaults("h").nvme)
    }

    #[test]
    fn generates_once_and_persists() {
        let (_d, host, s) = setup();
        let (id, n, i) = load(&host, &s).unwrap();
        assert_eq!(id.hostid, "5f0c2b8e-7d3a-4b1e-9c2d-0a1b2c3d4e5f");
        assert_eq!(
            id.hostnqn,
            "nqn.2014-08.org.nvmexpress:uuid:5f0c2b8e-7d3a-4b1e-9c2d-0a1b2c3d4e5f"
        );
        assert!(matches!(n, Origin::Generated(_)) && matches!(i, Origin::Generated(_)));
        assert_eq!(
            std::fs::read_to_string(host.path("/etc/nvme/hostnqn")).unwrap(),
            format!("{}\n", id.hostnqn)
        );
        // A second start reads what the first wrote, even though the kernel's UUID changed.
        std::fs::write(
            host.path(RANDOM_UUID),
            "00000000-0000-4000-8000-000000000000",
        )
        .unwrap();
        let (again, n, _) = load(&host, &s).unwrap();
        assert_eq!(again, id);
        assert!(matches!(n, Origin::File(_)));
    }

    #[test]
    fn hostid_comes_from_a_uuid_hostnqn() {
        let (_d, host, s) = setup();
        std::fs::create_dir_all(host.path("/etc/nvme")).unwrap();
        std::fs::write(
            host.path("/etc/nvme/hostnqn"),
            "nqn.2014-08.org.nvmexpress:uuid:AAAAAAAA-bbbb-cccc-dddd-eeeeeeeeeeee\n",
        )
        .unwrap();
        let (id, _, i) = load(&host, &s).unwrap();
        assert_eq!(id.hostid, "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee");
        assert!(matches!(i, Origin::Generated(_)));
    }

    #[test]
    fn config_wins_and_garbage_is_named() {
        let (_d, host, mut s) = setup();
        std::fs::create_dir_all(host.path("/etc/nvme")).unwrap();
        std::fs::write(host.path("/etc/nvme/hostnqn"), "not an nqn\n").unwrap();
        let e = load(&host, &s).unwrap_err().to_string();
        assert!(e.contains("etc/nvme/hostnqn: expected a host NQN"), "{e}");
        s.hostnqn = Some("nqn.2024-01.io.example:host-a".into());
        s.hostid = Some("1b4e28ba-2fa1-11d2-883f-0016d3cca427".into());
        let (id, n, i) = load(&host, &s).unwrap();
        assert_eq!(id.hostnqn, "nqn.2024-01.io.example:host-a");
        assert_eq!((n, i), (Origin::Config, Origin::Config));
    }
}
