//! Configuration: `config.toml` plus `config.d/*.toml` drop-ins (name order), or one `--config` file.
//!
//! Each file is parsed into raw serde structs (`deny_unknown_fields`, every field optional), the
//! files are merged key by key (a later file wins), and one [`RawConfig::validate`] turns the result
//! into typed [`Settings`]. Every error names the file, line:column and the dotted key, because the
//! people reading it are editing that file on a host they cannot afford to misconfigure.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::host::paths;
use crate::nvme::nqn::validate_nqn;

/// Main configuration file when `--config` is not given.
pub const DEFAULT_CONFIG_FILE: &str = "/etc/volfence/config.toml";
/// Drop-in directory name, next to the main file.
pub const DROPIN_DIR: &str = "config.d";

/// Where a key was set: file and byte range of the key in that file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    pub file: PathBuf,
    pub line: usize,
    pub column: usize,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.file.display(), self.line, self.column)
    }
}

/// A configuration error. `Display` is the one line an operator needs.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A file could not be read.
    #[error("{}: cannot read configuration: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A file is not valid TOML.
    #[error("{location}: TOML syntax error: {message}")]
    Syntax { location: Location, message: String },
    /// A key that does not exist.
    #[error("{location}: unknown key `{key}`{}", suggestion.as_ref().map(|s| format!(" (did you mean `{s}`?)")).unwrap_or_default())]
    UnknownKey {
        location: Location,
        key: String,
        suggestion: Option<String>,
    },
    /// A key whose value has the wrong type or form.
    #[error("{location}: `{key}`: {message}")]
    Invalid {
        location: Location,
        key: String,
        message: String,
    },
    /// A value that is wrong, found after merging (location known if a file set the key).
    #[error("{}`{key}`: {message}", location.as_ref().map(|l| format!("{l}: ")).unwrap_or_default())]
    Validation {
        location: Option<Location>,
        key: String,
        message: String,
    },
}

// ---------------------------------------------------------------------------------------------
// Raw structs: exactly what a file may contain.

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    pub node: Option<RawNode>,
    pub log: Option<RawLog>,
    pub daemon: Option<RawDaemon>,
    pub fence: Option<RawFence>,
    pub kubernetes: Option<RawKubernetes>,
    pub claims: Option<RawClaims>,
    pub nvme: Option<RawNvme>,
    pub snapshots: Option<RawSnapshots>,
    pub dbus: Option<RawDbus>,
    pub metrics: Option<RawMetrics>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawNode {
    pub name: Option<String>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLog {
    pub level: Option<String>,
    pub target: Option<String>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDaemon {
    pub state_dir: Option<PathBuf>,
    pub runtime_dir: Option<PathBuf>,
    pub shutdown_timeout: Option<DurationStr>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFence {
    pub backend: Option<String>,
    pub lease_namespace: Option<String>,
    pub lease_duration: Option<DurationStr>,
    pub renew_interval: Option<DurationStr>,
    pub safety_margin: Option<DurationStr>,
    pub observer_grace: Option<DurationStr>,
    pub on_lease_loss: Option<String>,
    pub watchdog_device: Option<PathBuf>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawKubernetes {
    pub kubeconfig: Option<PathBuf>,
    pub request_timeout: Option<DurationStr>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawClaims {
    pub namespace: Option<String>,
    pub handoff_wait: Option<DurationStr>,
    pub migration_timeout: Option<DurationStr>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawNvme {
    pub hostnqn: Option<String>,
    pub hostid: Option<String>,
    pub hostnqn_file: Option<PathBuf>,
    pub hostid_file: Option<PathBuf>,
    pub connect_timeout: Option<DurationStr>,
    pub nr_io_queues: Option<u32>,
    pub queue_size: Option<u32>,
    pub keep_alive_tmo: Option<u32>,
    pub reconnect_delay: Option<u32>,
    pub ctrl_loss_tmo: Option<i64>,
    pub fast_io_fail_tmo: Option<i64>,
    pub hdr_digest: Option<bool>,
    pub data_digest: Option<bool>,
    pub reservations: Option<String>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSnapshots {
    pub mount_root: Option<PathBuf>,
    pub executor: Option<Vec<String>>,
    pub executor_timeout: Option<DurationStr>,
    pub executor_env: Option<BTreeMap<String, String>>,
    pub cow_abort_percent: Option<u8>,
    pub default_size: Option<String>,
    pub name_prefix: Option<String>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDbus {
    pub bus: Option<String>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMetrics {
    pub enabled: Option<bool>,
    pub listen: Option<String>,
}

/// Every key a file may set, as dotted paths; used to suggest the nearest valid key.
pub const KNOWN_KEYS: &[&str] = &[
    "node",
    "node.name",
    "log",
    "log.level",
    "log.target",
    "daemon",
    "daemon.state_dir",
    "daemon.runtime_dir",
    "daemon.shutdown_timeout",
    "fence",
    "fence.backend",
    "fence.lease_namespace",
    "fence.lease_duration",
    "fence.renew_interval",
    "fence.safety_margin",
    "fence.observer_grace",
    "fence.on_lease_loss",
    "fence.watchdog_device",
    "kubernetes",
    "kubernetes.kubeconfig",
    "kubernetes.request_timeout",
    "claims",
    "claims.namespace",
    "claims.handoff_wait",
    "claims.migration_timeout",
    "nvme",
    "nvme.hostnqn",
    "nvme.hostid",
    "nvme.hostnqn_file",
    "nvme.hostid_file",
    "nvme.connect_timeout",
    "nvme.nr_io_queues",
    "nvme.queue_size",
    "nvme.keep_alive_tmo",
    "nvme.reconnect_delay",
    "nvme.ctrl_loss_tmo",
    "nvme.fast_io_fail_tmo",
    "nvme.hdr_digest",
    "nvme.data_digest",
    "nvme.reservations",
    "snapshots",
    "snapshots.mount_root",
    "snapshots.executor",
    "snapshots.executor_timeout",
    "snapshots.executor_env",
    "snapshots.cow_abort_percent",
    "snapshots.default_size",
    "snapshots.name_prefix",
    "dbus",
    "dbus.bus",
    "metrics",
    "metrics.enabled",
    "metrics.listen",
];

/// A duration written as a string like `"10s"`, `"500ms"`, `"1m30s"` or `"2h"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DurationStr(pub Duration);

impl<'de> Deserialize<'de> for DurationStr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = DurationStr;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a duration string such as \"10s\", \"500ms\", \"1m30s\"")
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<DurationStr, E> {
                parse_duration(s).map(DurationStr).map_err(E::custom)
            }
        }
        d.deserialize_str(V)
    }
}

/// Parses `"10s"`, `"500ms"`, `"1m30s"`, `"2h"`, `"0s"`. A bare number is refused: the unit matters.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let expected =
        || format!("expected a duration such as \"10s\", \"500ms\" or \"1m30s\", found {s:?}");
    let t = s.trim();
    if t.is_empty() {
        return Err(expected());
    }
    let mut total = Duration::ZERO;
    let mut rest = t;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(expected());
        }
        let n: u64 = rest[..digits].parse().map_err(|_| expected())?;
        rest = &rest[digits..];
        let unit_len = rest.bytes().take_while(u8::is_ascii_alphabetic).count();
        let part = match &rest[..unit_len] {
            "ms" => Duration::from_millis(n),
            "s" => Duration::from_secs(n),
            "m" => Duration::from_secs(n.saturating_mul(60)),
            "h" => Duration::from_secs(n.saturating_mul(3600)),
            _ => return Err(expected()),
        };
        total = total.saturating_add(part);
        rest = &rest[unit_len..];
    }
    Ok(total)
}

const MS: Duration = Duration::from_millis(1);
const HOUR: Duration = Duration::from_secs(3600);

/// Formats a duration the way the config file writes it.
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms % 1000 != 0 {
        format!("{ms}ms")
    } else {
        format!("{}s", ms / 1000)
    }
}

// ---------------------------------------------------------------------------------------------
// Typed settings.

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub node: NodeSettings,
    pub log: LogSettings,
    pub daemon: DaemonSettings,
    pub fence: FenceSettings,
    pub kubernetes: KubernetesSettings,
    pub claims: ClaimsSettings,
    pub nvme: NvmeSettings,
    pub snapshots: SnapshotSettings,
    pub dbus: BusSpec,
    pub metrics: MetricsSettings,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeSettings {
    /// Kubernetes node name; also the name of this host's Lease.
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogSettings {
    /// A tracing filter directive (`info`, `volfence=debug,zbus=warn`). `RUST_LOG` overrides it.
    pub level: String,
    pub target: LogTarget,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogTarget {
    /// journald when stderr is connected to the journal (`JOURNAL_STREAM`), else stderr.
    Auto,
    Journald,
    Stderr,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DaemonSettings {
    pub state_dir: PathBuf,
    pub runtime_dir: PathBuf,
    /// Bound on orderly shutdown after SIGTERM.
    pub shutdown_timeout: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FenceBackend {
    Kubernetes,
    Standalone,
}

impl FenceBackend {
    pub fn as_str(self) -> &'static str {
        match self {
            FenceBackend::Kubernetes => "kubernetes",
            FenceBackend::Standalone => "standalone",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseLossAction {
    Refuse,
    Disconnect,
    Reboot,
}

impl LeaseLossAction {
    pub fn as_str(self) -> &'static str {
        match self {
            LeaseLossAction::Refuse => "refuse",
            LeaseLossAction::Disconnect => "disconnect",
            LeaseLossAction::Reboot => "reboot",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FenceSettings {
    pub backend: FenceBackend,
    pub lease_namespace: String,
    /// D: how long a renew keeps the lease valid.
    pub lease_duration: Duration,
    /// R: time between renews.
    pub renew_interval: Duration,
    /// M: margin for clock-rate drift and scheduling delay; local validity ends at send + D − M.
    pub safety_margin: Duration,
    /// Extra time an observer waits beyond D before it may act on another host's silence.
    pub observer_grace: Duration,
    pub on_lease_loss: LeaseLossAction,
    pub watchdog_device: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KubernetesSettings {
    /// None: in-cluster service account if present, else `KUBECONFIG` / `~/.kube/config`.
    pub kubeconfig: Option<PathBuf>,
    pub request_timeout: Duration,
}

/// Per-volume claims (ReadWriteOnce across hosts); used with the `kubernetes` fence backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimsSettings {
    /// Where the claims (one Lease per volume) live.
    pub namespace: String,
    /// How long a Connect waits for another host's claim that is being released.
    pub handoff_wait: Duration,
    /// How long a live migration's destination may hold a volume together with its source.
    pub migration_timeout: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NvmeSettings {
    pub hostnqn: Option<String>,
    pub hostid: Option<String>,
    pub hostnqn_file: PathBuf,
    pub hostid_file: PathBuf,
    pub connect_timeout: Duration,
    pub nr_io_queues: Option<NonZeroU32>,
    pub queue_size: Option<NonZeroU32>,
    pub keep_alive_tmo: u32,
    pub reconnect_delay: u32,
    /// Seconds; -1 means reconnect forever (the kernel's meaning).
    pub ctrl_loss_tmo: i32,
    pub fast_io_fail_tmo: Option<i32>,
    pub hdr_digest: bool,
    pub data_digest: bool,
    /// Whether Connect reserves the namespace at the target (docs/fencing.md).
    pub reservations: crate::nvme::resv::Mode,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotSettings {
    pub mount_root: PathBuf,
    /// argv template; empty: no executor configured (snapshot requests are refused).
    pub executor: Vec<String>,
    pub executor_timeout: Duration,
    pub executor_env: BTreeMap<String, String>,
    pub cow_abort_percent: u8,
    /// Size of thick snapshots: `lvcreate -L` (`"512M"`) or `-l` (`"10%ORIGIN"`).
    pub default_size: String,
    pub name_prefix: String,
}

/// Which D-Bus to serve on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BusSpec {
    System,
    Session,
    Address(String),
}

impl BusSpec {
    /// `"system"`, `"session"`, or a D-Bus address such as `unix:path=/run/x`.
    pub fn parse(s: &str) -> Result<BusSpec, String> {
        match s {
            "system" => Ok(BusSpec::System),
            "session" => Ok(BusSpec::Session),
            a if is_dbus_address(a) => Ok(BusSpec::Address(a.to_string())),
            other => Err(format!(
                "expected \"system\", \"session\" or a D-Bus address like \"unix:path=/run/volfence/bus\", found {other:?}"
            )),
        }
    }
}

/// The D-Bus address grammar: `transport:key=value,...`, several joined by `;`. unix and tcp
/// need their keys (`path=`, `abstract=`, `host=`...); a bare `:` or `unix:` names no bus.
fn is_dbus_address(a: &str) -> bool {
    !a.is_empty()
        && a.split(';').all(|one| {
            let Some((transport, keys)) = one.split_once(':') else {
                return false;
            };
            let transport_ok = !transport.is_empty()
                && transport
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b == b'-');
            let keys_ok = keys.split(',').all(|kv| {
                kv.split_once('=').is_some_and(|(k, v)| {
                    !k.is_empty()
                        && k.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
                        && !v.is_empty()
                        && !v.contains(char::is_whitespace)
                })
            });
            let keyless =
                keys.is_empty() && matches!(transport, "systemd" | "autolaunch" | "launchd");
            transport_ok && (keys_ok || keyless)
        })
}

impl fmt::Display for BusSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BusSpec::System => f.write_str("system"),
            BusSpec::Session => f.write_str("session"),
            BusSpec::Address(a) => f.write_str(a),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetricsSettings {
    /// None: metrics disabled.
    pub listen: Option<SocketAddr>,
}

// ---------------------------------------------------------------------------------------------
// Loading.

/// A parsed file: its raw content and where each dotted key sits.
struct ParsedFile {
    path: PathBuf,
    table: toml::Table,
    keys: BTreeMap<String, Location>,
}

/// Key locations after merging: the file that set each key last.
#[derive(Debug, Default, Clone)]
pub struct Origins(BTreeMap<String, Location>);

impl Origins {
    pub fn get(&self, key: &str) -> Option<&Location> {
        self.0.get(key)
    }
}

/// The files that make up the configuration, in merge order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// `config.toml` (if present) plus `config.d/*.toml` in `dir`.
    Directory { main: PathBuf },
    /// Exactly one file (`--config PATH`); it must exist.
    File(PathBuf),
}

impl Source {
    /// The files to read, in merge order. A missing main file in directory mode is not an error:
    /// the embedded defaults apply.
    pub fn files(&self) -> Result<Vec<PathBuf>, ConfigError> {
        match self {
            Source::File(p) => Ok(vec![p.clone()]),
            Source::Directory { main } => {
                let mut files = Vec::new();
                if main.exists() {
                    files.push(main.clone());
                }
                let dir = main.parent().unwrap_or(Path::new(".")).join(DROPIN_DIR);
                match std::fs::read_dir(&dir) {
                    Ok(rd) => {
                        let mut dropins: Vec<PathBuf> = rd
                            .filter_map(|e| e.ok().map(|e| e.path()))
                            .filter(|p| p.extension().is_some_and(|e| e == "toml") && p.is_file())
                            .collect();
                        dropins.sort();
                        files.extend(dropins);
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(source) => return Err(ConfigError::Read { path: dir, source }),
                }
                Ok(files)
            }
        }
    }
}

/// Loaded configuration: settings plus the files they came from.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub settings: Settings,
    pub files: Vec<PathBuf>,
}

/// Reads, merges and validates. `default_node_name` is used when `[node] name` is not set.
pub fn load(source: &Source, default_node_name: &str) -> Result<Loaded, ConfigError> {
    let files = source.files()?;
    let mut parsed = Vec::new();
    for path in &files {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.clone(),
            source,
        })?;
        parsed.push(parse_file(path, &text)?);
    }
    let (raw, origins) = merge(parsed)?;
    let settings = raw.validate(default_node_name, &origins)?;
    Ok(Loaded { settings, files })
}

/// Parses one file's text; `path` is only used in errors.
pub fn parse_str(path: &Path, text: &str) -> Result<(RawConfig, Origins), ConfigError> {
    merge(vec![parse_file(path, text)?])
}

fn parse_file(path: &Path, text: &str) -> Result<ParsedFile, ConfigError> {
    let loc = |offset: usize| location(path, text, offset);
    let de = toml::de::DeTable::parse(text).map_err(|e| ConfigError::Syntax {
        location: loc(e.span().map(|s| s.start).unwrap_or(0)),
        message: e.message().trim().to_string(),
    })?;
    let mut spans = Vec::new();
    collect_keys(de.get_ref(), "", &mut spans);
    // No key takes a TOML date-time. Caught here, with its position, because the merged tables
    // are deserialized again without spans.
    if let Some((key, at)) = first_datetime(de.get_ref(), "") {
        return Err(ConfigError::Invalid {
            location: loc(at),
            key,
            message: "found a TOML date-time; no key takes one (quote the value if it is text)"
                .into(),
        });
    }
    let keys = spans
        .iter()
        .map(|(k, key_span, _)| (k.clone(), loc(key_span.start)))
        .collect();

    // Type and unknown-key errors, found by the same structs the daemon uses.
    if let Err(e) = toml::from_str::<RawConfig>(text) {
        let offset = e.span().map(|s| s.start).unwrap_or(0);
        let message = e.message().trim().to_string();
        let key = key_at(&spans, offset);
        if let Some(unknown) = unknown_field(&message) {
            let full = match key.rsplit_once('.') {
                // the span covers the unknown key itself: its parent is the section
                Some((parent, last)) if last == unknown => format!("{parent}.{unknown}"),
                _ if key == unknown => unknown.to_string(),
                _ if key.is_empty() => unknown.to_string(),
                _ => format!("{key}.{unknown}"),
            };
            return Err(ConfigError::UnknownKey {
                location: loc(offset),
                suggestion: suggest(&full),
                key: full,
            });
        }
        return Err(ConfigError::Invalid {
            location: loc(offset),
            key: if key.is_empty() {
                "(top level)".into()
            } else {
                key
            },
            message,
        });
    }
    let table: toml::Table = toml::from_str(text).map_err(|e| ConfigError::Syntax {
        location: loc(e.span().map(|s| s.start).unwrap_or(0)),
        message: e.message().trim().to_string(),
    })?;
    Ok(ParsedFile {
        path: path.to_path_buf(),
        table,
        keys,
    })
}

type KeySpan = (String, Range<usize>, Range<usize>);

fn collect_keys(table: &toml::de::DeTable<'_>, prefix: &str, out: &mut Vec<KeySpan>) {
    for (k, v) in table.iter() {
        let path = if prefix.is_empty() {
            k.get_ref().to_string()
        } else {
            format!("{prefix}.{}", k.get_ref())
        };
        out.push((path.clone(), k.span(), v.span()));
        if let toml::de::DeValue::Table(t) = v.get_ref() {
            collect_keys(t, &path, out);
        }
    }
}

/// The dotted key and offset of the first date-time value, in tables or arrays.
fn first_datetime(table: &toml::de::DeTable<'_>, prefix: &str) -> Option<(String, usize)> {
    fn walk(v: &toml::Spanned<toml::de::DeValue<'_>>, key: &str) -> Option<(String, usize)> {
        match v.get_ref() {
            toml::de::DeValue::Datetime(_) => Some((key.to_string(), v.span().start)),
            toml::de::DeValue::Array(items) => items.iter().find_map(|i| walk(i, key)),
            toml::de::DeValue::Table(t) => first_datetime(t, key),
            _ => None,
        }
    }
    table.iter().find_map(|(k, v)| {
        let key = if prefix.is_empty() {
            k.get_ref().to_string()
        } else {
            format!("{prefix}.{}", k.get_ref())
        };
        walk(v, &key)
    })
}

/// The most specific key whose key or value span contains `offset`.
fn key_at(spans: &[KeySpan], offset: usize) -> String {
    spans
        .iter()
        .filter(|(_, k, v)| k.contains(&offset) || v.contains(&offset) || v.end == offset)
        .max_by_key(|(path, _, _)| path.matches('.').count())
        .map(|(p, _, _)| p.clone())
        .unwrap_or_default()
}

/// serde's "unknown field `x`, expected ..." message → `x`.
fn unknown_field(message: &str) -> Option<&str> {
    let rest = message.strip_prefix("unknown field `")?;
    rest.split('`').next()
}

fn location(path: &Path, text: &str, offset: usize) -> Location {
    let offset = offset.min(text.len());
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let column = before
        .rsplit('\n')
        .next()
        .map(|l| l.chars().count())
        .unwrap_or(0)
        + 1;
    Location {
        file: path.to_path_buf(),
        line,
        column,
    }
}

/// Nearest known key by edit distance, within a third of its length (at least 2 edits); keys in
/// the same section are preferred so `fence.leas_duration` suggests `fence.lease_duration`.
pub fn suggest(key: &str) -> Option<String> {
    let best = KNOWN_KEYS
        .iter()
        .map(|k| (levenshtein(key, k), *k))
        .min_by_key(|(d, _)| *d)?;
    let limit = (key.len() / 3).max(2);
    (best.0 <= limit).then(|| best.1.to_string())
}

fn levenshtein(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != *cb);
            cur[j + 1] = sub.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

fn merge(files: Vec<ParsedFile>) -> Result<(RawConfig, Origins), ConfigError> {
    let mut merged = toml::Table::new();
    let mut origins = BTreeMap::new();
    let mut last_path = PathBuf::new();
    for f in files {
        merge_table(&mut merged, f.table);
        origins.extend(f.keys);
        last_path = f.path;
    }
    // Each file deserialized on its own, so the merge (same keys, same types) deserializes too;
    // map an error anyway rather than panic.
    let raw = RawConfig::deserialize(toml::Value::Table(merged)).map_err(|e| {
        ConfigError::Validation {
            location: None,
            key: format!("(merged with {})", last_path.display()),
            message: e.to_string(),
        }
    })?;
    Ok((raw, Origins(origins)))
}

/// Later tables win key by key; arrays and scalars are replaced whole.
fn merge_table(into: &mut toml::Table, from: toml::Table) {
    for (k, v) in from {
        match (into.get_mut(&k), v) {
            (Some(toml::Value::Table(a)), toml::Value::Table(b)) => merge_table(a, b),
            (_, v) => {
                into.insert(k, v);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Validation.

struct Check<'a> {
    origins: &'a Origins,
}

impl Check<'_> {
    fn err(&self, key: &str, message: impl Into<String>) -> ConfigError {
        ConfigError::Validation {
            location: self.origins.get(key).cloned(),
            key: key.to_string(),
            message: message.into(),
        }
    }

    fn one_of<T: Copy>(
        &self,
        key: &str,
        value: Option<&str>,
        default: T,
        choices: &[(&str, T)],
    ) -> Result<T, ConfigError> {
        let Some(v) = value else { return Ok(default) };
        choices
            .iter()
            .find(|(name, _)| *name == v)
            .map(|(_, t)| *t)
            .ok_or_else(|| {
                let names: Vec<String> = choices.iter().map(|(n, _)| format!("\"{n}\"")).collect();
                self.err(
                    key,
                    format!("expected one of {}, found {v:?}", names.join(", ")),
                )
            })
    }

    /// A duration key: its value (or `default`) within `range`, so every later sum, product and
    /// deadline stays far from overflow.
    fn duration(
        &self,
        key: &str,
        value: Option<DurationStr>,
        default: Duration,
        range: std::ops::RangeInclusive<Duration>,
    ) -> Result<Duration, ConfigError> {
        let d = value.map_or(default, |d| d.0);
        if !range.contains(&d) {
            let (max, found) = (format_duration(*range.end()), format_duration(d));
            let message = match *range.start() {
                Duration::ZERO => format!("expected a duration up to {max}, found {found}"),
                MS => format!("must be greater than 0s and at most {max}, found {found}"),
                min => format!(
                    "expected a duration from {} to {max}, found {found}",
                    format_duration(min)
                ),
            };
            return Err(self.err(key, message));
        }
        Ok(d)
    }

    /// The first of `keys` a file set, else the last of them (what a relation between keys
    /// blames: the value the operator wrote, not a default they never saw).
    fn blame<'k>(&self, keys: &[&'k str]) -> &'k str {
        keys.iter()
            .copied()
            .find(|k| self.origins.get(k).is_some())
            .unwrap_or(keys[keys.len() - 1])
    }

    fn abs_path(
        &self,
        key: &str,
        p: Option<PathBuf>,
        default: &str,
    ) -> Result<PathBuf, ConfigError> {
        let p = p.unwrap_or_else(|| PathBuf::from(default));
        if !p.is_absolute() {
            return Err(self.err(
                key,
                format!(
                    "expected an absolute path, found {:?}",
                    p.display().to_string()
                ),
            ));
        }
        Ok(p)
    }
}

/// Kubernetes object names (RFC 1123 subdomain): the node name names the Lease.
pub fn validate_k8s_name(name: &str) -> Result<(), String> {
    if !crate::names::is_dns1123_subdomain(name) {
        return Err(format!(
            "expected a Kubernetes object name (lowercase letters, digits, '-' and '.', each dot-separated part starting and ending with a letter or digit, at most 253 characters), found {name:?}"
        ));
    }
    Ok(())
}

fn validate_hostid(s: &str) -> Result<(), String> {
    let hex: String = s.chars().filter(|c| *c != '-').collect();
    let groups: Vec<usize> = s.split('-').map(str::len).collect();
    if hex.len() == 32 && hex.chars().all(|c| c.is_ascii_hexdigit()) && groups == [8, 4, 4, 4, 12] {
        Ok(())
    } else {
        Err(format!(
            "expected a UUID like \"1b4e28ba-2fa1-11d2-883f-0016d3cca427\", found {s:?}"
        ))
    }
}

fn validate_lvm_prefix(p: &str) -> Result<(), String> {
    let ok = !p.is_empty()
        && p.len() <= 32
        && !p.starts_with('-')
        && p.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"+_.-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "expected 1-32 characters from [A-Za-z0-9+_.-], not starting with '-', found {p:?}"
        ))
    }
}

impl Settings {
    /// The built-in defaults for a node: what an empty configuration means.
    pub fn defaults(node: &str) -> Settings {
        RawConfig::default()
            .validate(node, &Origins::default())
            .expect("the built-in defaults are valid")
    }
}

impl RawConfig {
    /// The one place raw values become typed settings.
    pub fn validate(
        self,
        default_node_name: &str,
        origins: &Origins,
    ) -> Result<Settings, ConfigError> {
        let c = Check { origins };

        let node = self.node.unwrap_or_default();
        let name = node
            .name
            .unwrap_or_else(|| default_node_name.to_ascii_lowercase());
        validate_k8s_name(&name).map_err(|m| c.err("node.name", m))?;

        let log = self.log.unwrap_or_default();
        let level = log.level.unwrap_or_else(|| "info".into());
        crate::logging::parse_filter(&level).map_err(|e| c.err("log.level", e.to_string()))?;
        let target = c.one_of(
            "log.target",
            log.target.as_deref(),
            LogTarget::Auto,
            &[
                ("auto", LogTarget::Auto),
                ("journald", LogTarget::Journald),
                ("stderr", LogTarget::Stderr),
            ],
        )?;

        let daemon = self.daemon.unwrap_or_default();
        let daemon = DaemonSettings {
            state_dir: c.abs_path("daemon.state_dir", daemon.state_dir, paths::STATE_DIR)?,
            runtime_dir: c.abs_path(
                "daemon.runtime_dir",
                daemon.runtime_dir,
                paths::RUNTIME_DIR,
            )?,
            shutdown_timeout: c.duration(
                "daemon.shutdown_timeout",
                daemon.shutdown_timeout,
                Duration::from_secs(20),
                MS..=Duration::from_secs(600),
            )?,
        };

        let f = self.fence.unwrap_or_default();
        let backend = c.one_of(
            "fence.backend",
            f.backend.as_deref(),
            FenceBackend::Standalone,
            &[
                ("kubernetes", FenceBackend::Kubernetes),
                ("standalone", FenceBackend::Standalone),
            ],
        )?;
        let lease_namespace = f
            .lease_namespace
            .unwrap_or_else(|| "volfence-system".into());
        validate_k8s_name(&lease_namespace)
            .and_then(|_| {
                if lease_namespace.len() > 63 || lease_namespace.contains('.') {
                    Err(format!("expected a namespace name (DNS label, at most 63 characters, no '.'), found {lease_namespace:?}"))
                } else {
                    Ok(())
                }
            })
            .map_err(|m| c.err("fence.lease_namespace", m))?;
        let d = c.duration(
            "fence.lease_duration",
            f.lease_duration,
            Duration::from_secs(10),
            Duration::from_secs(1)..=HOUR,
        )?;
        if d.subsec_nanos() != 0 {
            return Err(c.err(
                "fence.lease_duration",
                format!("expected whole seconds, at least 1s (Lease.spec.leaseDurationSeconds is an integer), found {}", format_duration(d)),
            ));
        }
        let r = c.duration("fence.renew_interval", f.renew_interval, d / 4, MS..=HOUR)?;
        let m = c.duration(
            "fence.safety_margin",
            f.safety_margin,
            Duration::from_secs(2),
            MS..=HOUR,
        )?;
        if 2 * r + m > d {
            let key = c.blame(&[
                "fence.renew_interval",
                "fence.safety_margin",
                "fence.lease_duration",
                "fence.safety_margin",
            ]);
            return Err(c.err(
                key,
                format!(
                    "2 × renew_interval + safety_margin must not exceed lease_duration so a failed renew can be retried before the lease runs out: 2 × {} + {} > {}",
                    format_duration(r),
                    format_duration(m),
                    format_duration(d)
                ),
            ));
        }
        let on_lease_loss = c.one_of(
            "fence.on_lease_loss",
            f.on_lease_loss.as_deref(),
            LeaseLossAction::Disconnect,
            &[
                ("refuse", LeaseLossAction::Refuse),
                ("disconnect", LeaseLossAction::Disconnect),
                ("reboot", LeaseLossAction::Reboot),
            ],
        )?;
        let watchdog_device = match f.watchdog_device {
            Some(p) => Some(c.abs_path("fence.watchdog_device", Some(p), "")?),
            None => None,
        };
        if on_lease_loss == LeaseLossAction::Reboot && watchdog_device.is_none() {
            return Err(c.err(
                "fence.on_lease_loss",
                format!("\"reboot\" resets the host through the hardware watchdog: set fence.watchdog_device (e.g. {:?})", paths::WATCHDOG_DEVICE),
            ));
        }
        let fence = FenceSettings {
            backend,
            lease_namespace,
            lease_duration: d,
            renew_interval: r,
            safety_margin: m,
            observer_grace: c.duration(
                "fence.observer_grace",
                f.observer_grace,
                Duration::ZERO,
                Duration::ZERO..=HOUR,
            )?,
            on_lease_loss,
            watchdog_device,
        };

        let k = self.kubernetes.unwrap_or_default();
        let kubernetes = KubernetesSettings {
            kubeconfig: match k.kubeconfig {
                Some(p) => Some(c.abs_path("kubernetes.kubeconfig", Some(p), "")?),
                None => None,
            },
            request_timeout: c.duration(
                "kubernetes.request_timeout",
                k.request_timeout,
                Duration::from_secs(5),
                MS..=Duration::from_secs(300),
            )?,
        };

        let cl = self.claims.unwrap_or_default();
        let claims_namespace = cl.namespace.unwrap_or_else(|| "volfence-claims".into());
        if !crate::claims::record::valid_namespace(&claims_namespace) {
            return Err(c.err(
                "claims.namespace",
                format!("expected a namespace name (DNS label: lowercase letters, digits and '-', at most 63 characters), found {claims_namespace:?}"),
            ));
        }
        let claims = ClaimsSettings {
            namespace: claims_namespace,
            handoff_wait: c.duration(
                "claims.handoff_wait",
                cl.handoff_wait,
                Duration::from_secs(30),
                Duration::ZERO..=Duration::from_secs(600),
            )?,
            migration_timeout: c.duration(
                "claims.migration_timeout",
                cl.migration_timeout,
                Duration::from_secs(300),
                Duration::from_secs(30)..=Duration::from_secs(3600),
            )?,
        };

        let n = self.nvme.unwrap_or_default();
        if let Some(q) = &n.hostnqn {
            validate_nqn(q).map_err(|e| c.err("nvme.hostnqn", e.to_string()))?;
        }
        if let Some(id) = &n.hostid {
            validate_hostid(id).map_err(|m| c.err("nvme.hostid", m))?;
        }
        let nonzero = |key: &str, v: Option<u32>| -> Result<Option<NonZeroU32>, ConfigError> {
            v.map(|v| NonZeroU32::new(v).ok_or_else(|| c.err(key, "must be at least 1")))
                .transpose()
        };
        let nr_io_queues = nonzero("nvme.nr_io_queues", n.nr_io_queues)?;
        let queue_size = nonzero("nvme.queue_size", n.queue_size)?;
        if let Some(q) = queue_size {
            if !(16..=1024).contains(&q.get()) {
                return Err(c.err(
                    "nvme.queue_size",
                    format!("expected 16..=1024 (the kernel's range), found {q}"),
                ));
            }
        }
        let tmo = |key: &str, v: Option<i64>, default: i32| -> Result<i32, ConfigError> {
            let v = v.unwrap_or(i64::from(default));
            if v < -1 || v > i64::from(i32::MAX) {
                return Err(c.err(
                    key,
                    format!("expected seconds (0 or more) or -1 for \"forever\", found {v}"),
                ));
            }
            Ok(v as i32)
        };
        let connect_timeout = c.duration(
            "nvme.connect_timeout",
            n.connect_timeout,
            Duration::from_secs(30),
            MS..=HOUR,
        )?;
        let nvme = NvmeSettings {
            hostnqn: n.hostnqn,
            hostid: n.hostid,
            hostnqn_file: c.abs_path(
                "nvme.hostnqn_file",
                n.hostnqn_file,
                paths::NVME_HOSTNQN_FILE,
            )?,
            hostid_file: c.abs_path("nvme.hostid_file", n.hostid_file, paths::NVME_HOSTID_FILE)?,
            connect_timeout,
            nr_io_queues,
            queue_size,
            keep_alive_tmo: n.keep_alive_tmo.unwrap_or(5),
            reconnect_delay: n.reconnect_delay.unwrap_or(2),
            ctrl_loss_tmo: tmo("nvme.ctrl_loss_tmo", n.ctrl_loss_tmo, 60)?,
            fast_io_fail_tmo: n
                .fast_io_fail_tmo
                .map(|v| tmo("nvme.fast_io_fail_tmo", Some(v), 0))
                .transpose()?,
            hdr_digest: n.hdr_digest.unwrap_or(false),
            data_digest: n.data_digest.unwrap_or(false),
            reservations: match n.reservations.as_deref() {
                None => crate::nvme::resv::Mode::Prefer,
                Some(m) => crate::nvme::resv::Mode::parse(m).ok_or_else(|| {
                    c.err(
                        "nvme.reservations",
                        format!("expected \"off\", \"prefer\" or \"require\", found {m:?}"),
                    )
                })?,
            },
        };
        if nvme.reconnect_delay == 0 {
            return Err(c.err("nvme.reconnect_delay", "must be at least 1 (seconds)"));
        }
        if nvme.ctrl_loss_tmo >= 0 && (nvme.ctrl_loss_tmo as u32) < nvme.reconnect_delay {
            return Err(c.err(
                c.blame(&["nvme.ctrl_loss_tmo", "nvme.reconnect_delay"]),
                format!(
                    "ctrl_loss_tmo must be -1 (forever) or at least reconnect_delay: ctrl_loss_tmo = {} < reconnect_delay = {}",
                    nvme.ctrl_loss_tmo, nvme.reconnect_delay
                ),
            ));
        }

        let s = self.snapshots.unwrap_or_default();
        let executor = s.executor.unwrap_or_default();
        crate::snapshot::executor::Template::parse(&executor)
            .map_err(|e| c.err("snapshots.executor", e.to_string()))?;
        let executor_env = s.executor_env.unwrap_or_default();
        for (k, v) in &executor_env {
            if k.is_empty() || k.contains('=') || k.contains('\0') {
                return Err(c.err(
                    "snapshots.executor_env",
                    format!("invalid environment variable name {k:?}: expected a non-empty name without '=' or NUL"),
                ));
            }
            if v.contains('\0') {
                return Err(c.err(
                    "snapshots.executor_env",
                    format!("the value of {k} contains a NUL byte"),
                ));
            }
        }
        let cow_abort_percent = s.cow_abort_percent.unwrap_or(80);
        if !(1..=99).contains(&cow_abort_percent) {
            return Err(c.err(
                "snapshots.cow_abort_percent",
                format!("expected 1..=99, found {cow_abort_percent}"),
            ));
        }
        let default_size = s.default_size.unwrap_or_else(|| "20%ORIGIN".into());
        crate::lvm::SnapSize::parse(&default_size)
            .map_err(|e| c.err("snapshots.default_size", e.to_string()))?;
        let name_prefix = s.name_prefix.unwrap_or_else(|| "vfsnap-".into());
        validate_lvm_prefix(&name_prefix).map_err(|m| c.err("snapshots.name_prefix", m))?;
        let executor_timeout = c.duration(
            "snapshots.executor_timeout",
            s.executor_timeout,
            HOUR,
            MS..=7 * 24 * HOUR,
        )?;
        let snapshots = SnapshotSettings {
            mount_root: c.abs_path(
                "snapshots.mount_root",
                s.mount_root,
                paths::SNAPSHOT_MOUNT_ROOT,
            )?,
            executor,
            executor_timeout,
            executor_env,
            cow_abort_percent,
            default_size,
            name_prefix,
        };

        let dbus = match self.dbus.and_then(|d| d.bus) {
            None => BusSpec::System,
            Some(b) => BusSpec::parse(&b).map_err(|m| c.err("dbus.bus", m))?,
        };

        let mt = self.metrics.unwrap_or_default();
        let listen_str = mt.listen.unwrap_or_else(|| "127.0.0.1:9477".into());
        let listen: SocketAddr = listen_str.parse().map_err(|_| {
            c.err(
                "metrics.listen",
                format!(
                    "expected an IP address and port like \"127.0.0.1:9477\", found {listen_str:?}"
                ),
            )
        })?;
        let metrics = MetricsSettings {
            listen: mt.enabled.unwrap_or(true).then_some(listen),
        };

        Ok(Settings {
            node: NodeSettings { name },
            log: LogSettings { level, target },
            daemon,
            fence,
            kubernetes,
            claims,
            nvme,
            snapshots,
            dbus,
            metrics,
        })
    }
}

#[cfg(test)]
mod tests;
