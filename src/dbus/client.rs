//! Client side, used by `volfencectl` and tests: the proxy and what a failure means to a script.

use std::collections::HashMap;

use zbus::{proxy, OwnedVariant, Variant};

#[proxy(
    interface = "org.volfence.Agent1",
    default_service = "org.volfence.Agent1",
    default_path = "/org/volfence/Agent1"
)]
pub trait Agent1 {
    fn status(&self) -> zbus::Result<HashMap<String, OwnedVariant>>;
    fn set_log_level(&self, level: &str) -> zbus::Result<()>;
    fn connect(
        &self,
        volume_id: &str,
        target: HashMap<&str, Variant<'_>>,
        options: HashMap<&str, Variant<'_>>,
    ) -> zbus::Result<(String, HashMap<String, OwnedVariant>)>;
    fn disconnect(&self, volume_id: &str, options: HashMap<&str, Variant<'_>>) -> zbus::Result<()>;
    fn list_volumes(&self) -> zbus::Result<Vec<HashMap<String, OwnedVariant>>>;
    fn list_claims(&self, all: bool) -> zbus::Result<Vec<HashMap<String, OwnedVariant>>>;
    fn start_snapshot(
        &self,
        request_id: &str,
        vg: &str,
        lv: &str,
        options: HashMap<&str, Variant<'_>>,
    ) -> zbus::Result<zbus::OwnedObjectPath>;
    fn list_snapshots(&self) -> zbus::Result<Vec<HashMap<String, OwnedVariant>>>;
    fn release(&self, request_id: &str) -> zbus::Result<()>;
    #[zbus(property)]
    fn version(&self) -> zbus::Result<String>;
    #[zbus(property)]
    fn node_name(&self) -> zbus::Result<String>;
    #[zbus(property)]
    fn fence_state(&self) -> zbus::Result<String>;
    #[zbus(property)]
    fn epoch(&self) -> zbus::Result<u64>;
    #[zbus(property)]
    fn valid_for_ms(&self) -> zbus::Result<u64>;
    #[zbus(signal, name = "FenceStateChanged")]
    fn fence_transition(&self, state: String, epoch: u64, message: String) -> zbus::Result<()>;
    /// The volume is lost to this host (every path gone, or its claim taken over).
    #[zbus(signal)]
    fn volume_lost(&self, volume_id: String, nqn: String) -> zbus::Result<()>;
}

#[proxy(
    interface = "org.volfence.Job1",
    default_service = "org.volfence.Agent1"
)]
pub trait Job1 {
    fn cancel(&self) -> zbus::Result<()>;
    #[zbus(property)]
    fn phase(&self) -> zbus::Result<String>;
    #[zbus(property)]
    fn message(&self) -> zbus::Result<String>;
    #[zbus(property)]
    fn cow_percent(&self) -> zbus::Result<f64>;
    #[zbus(signal)]
    fn completed(&self, success: bool, message: String) -> zbus::Result<()>;
}

/// Exit codes of `volfencectl`, documented in README.md.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// 1: the daemon answered with an error.
    Failed = 1,
    /// 2: bad command line (clap's own code).
    Usage = 2,
    /// 3: no daemon on this bus (or no bus at all).
    NotRunning = 3,
    /// 4: the caller lacks the rights for this call.
    AccessDenied = 4,
}

/// Classifies a D-Bus failure for the exit code.
pub fn classify(e: &zbus::Error) -> Failure {
    match e {
        zbus::Error::MethodError(name, _, _) => match name.as_str() {
            "org.freedesktop.DBus.Error.ServiceUnknown"
            | "org.freedesktop.DBus.Error.NameHasNoOwner" => Failure::NotRunning,
            "org.freedesktop.DBus.Error.AccessDenied" | "org.volfence.Error.AccessDenied" => {
                Failure::AccessDenied
            }
            _ => Failure::Failed,
        },
        zbus::Error::FDO(f) => match **f {
            zbus::fdo::Error::ServiceUnknown(_) | zbus::fdo::Error::NameHasNoOwner(_) => {
                Failure::NotRunning
            }
            zbus::fdo::Error::AccessDenied(_) => Failure::AccessDenied,
            _ => Failure::Failed,
        },
        zbus::Error::InputOutput(io) => match io.kind() {
            std::io::ErrorKind::PermissionDenied => Failure::AccessDenied,
            _ => Failure::NotRunning,
        },
        zbus::Error::Connection(io, _) if io.kind() == std::io::ErrorKind::PermissionDenied => {
            Failure::AccessDenied
        }
        zbus::Error::Connection(..) | zbus::Error::Address(_) | zbus::Error::Handshake(_) => {
            Failure::NotRunning
        }
        _ => Failure::Failed,
    }
}

/// One line for a person: the D-Bus error name is kept for scripts that grep it.
pub fn describe(e: &zbus::Error, bus: &str) -> String {
    match (classify(e), e) {
        (Failure::NotRunning, _) => format!("volfenced is not running on the {bus} bus ({e})"),
        (_, zbus::Error::MethodError(name, Some(msg), _)) => format!("{name}: {msg}"),
        _ => e.to_string(),
    }
}

/// A D-Bus value as JSON, for `--json` output.
pub fn to_json(v: &Variant<'_>) -> serde_json::Value {
    use serde_json::Value as J;
    match v {
        Variant::U8(x) => J::from(*x),
        Variant::Bool(x) => J::from(*x),
        Variant::I16(x) => J::from(*x),
        Variant::U16(x) => J::from(*x),
        Variant::I32(x) => J::from(*x),
        Variant::U32(x) => J::from(*x),
        Variant::I64(x) => J::from(*x),
        Variant::U64(x) => J::from(*x),
        Variant::F64(x) => J::from(*x),
        Variant::Str(s) => J::from(s.as_str()),
        Variant::ObjectPath(p) => J::from(p.as_str()),
        Variant::Variant(inner) => to_json(inner),
        Variant::Array(a) => J::Array(a.inner().iter().map(to_json).collect()),
        Variant::Structure(s) => J::Array(s.fields().iter().map(to_json).collect()),
        other => J::from(format!("{other:?}")),
    }
}

/// A dictionary from the bus as JSON, keys sorted.
pub fn dict_json(
    m: &HashMap<String, OwnedVariant>,
) -> std::collections::BTreeMap<String, serde_json::Value> {
    m.iter().map(|(k, v)| (k.clone(), to_json(v))).collect()
}
