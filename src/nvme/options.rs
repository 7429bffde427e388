//! What gets written to `/dev/nvme-fabrics`: a typed, validated option set whose `Display` is the
//! exact option string. Nothing that could split the string (`,` `=` whitespace, control
//! characters) ever reaches the kernel: every value is checked, not escaped.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::nqn::validate_nqn;
use crate::config::NvmeSettings;

/// A value handed in from D-Bus (`a{sv}`) or the CLI, before it is checked.
#[derive(Debug, Clone, PartialEq)]
pub enum OptValue {
    Str(String),
    Int(i64),
    Bool(bool),
    StrList(Vec<String>),
}

impl OptValue {
    fn kind(&self) -> &'static str {
        match self {
            OptValue::Str(_) => "a string",
            OptValue::Int(_) => "an integer",
            OptValue::Bool(_) => "a boolean",
            OptValue::StrList(_) => "a list of strings",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OptionsError {
    /// A key this API does not know.
    #[error("unknown {section} key {key:?}; known keys: {known}")]
    UnknownKey {
        section: &'static str,
        key: String,
        known: String,
    },
    /// A value of the wrong type or outside its range.
    #[error("{key}: expected {expected}, found {found}")]
    Invalid {
        key: String,
        expected: String,
        found: String,
    },
    /// A required key is missing.
    #[error("{0} is required")]
    Missing(&'static str),
}

fn invalid(key: &str, expected: impl Into<String>, found: impl fmt::Debug) -> OptionsError {
    OptionsError::Invalid {
        key: key.to_string(),
        expected: expected.into(),
        found: format!("{found:?}"),
    }
}

/// One network path to the subsystem: the address the kernel keys controllers by.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PathAddr {
    pub traddr: IpAddr,
    pub trsvcid: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_traddr: Option<IpAddr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_iface: Option<String>,
}

impl fmt::Display for PathAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.traddr {
            IpAddr::V6(a) => write!(f, "[{a}]:{}", self.trsvcid)?,
            IpAddr::V4(a) => write!(f, "{a}:{}", self.trsvcid)?,
        }
        if let Some(h) = &self.host_iface {
            write!(f, " via {h}")?;
        }
        Ok(())
    }
}

/// Which namespace of the subsystem is the volume. Never a kernel device name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Selector {
    Nsid(u32),
    Uuid(String),
    Nguid(String),
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Selector::Nsid(n) => write!(f, "nsid {n}"),
            Selector::Uuid(u) => write!(f, "uuid {u}"),
            Selector::Nguid(g) => write!(f, "nguid {g}"),
        }
    }
}

/// Where a volume lives: subsystem, paths and namespace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Target {
    pub nqn: String,
    pub paths: Vec<PathAddr>,
    pub namespace: Selector,
}

/// Per-call overrides of the `[nvme]` defaults.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Overrides {
    pub nr_io_queues: Option<u32>,
    pub queue_size: Option<u32>,
    pub keep_alive_tmo: Option<u32>,
    pub reconnect_delay: Option<u32>,
    pub ctrl_loss_tmo: Option<i32>,
    pub fast_io_fail_tmo: Option<i32>,
    pub duplicate_connect: bool,
    pub hdr_digest: Option<bool>,
    pub data_digest: Option<bool>,
    pub dhchap_secret: Option<String>,
    pub dhchap_ctrl_secret: Option<String>,
    pub tls: bool,
    pub keyring: Option<u32>,
    pub tls_key: Option<u32>,
    /// How long to wait for the block device (default `[nvme] connect_timeout`).
    pub timeout: Option<Duration>,
}

/// The host's identity towards targets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostIdentity {
    pub hostnqn: String,
    pub hostid: String,
}

/// The exact option set of one controller connect. `to_string()` is what the kernel reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectArgs {
    pub nqn: String,
    pub path: PathAddr,
    pub hostnqn: String,
    pub hostid: String,
    pub nr_io_queues: Option<u32>,
    pub queue_size: Option<u32>,
    pub keep_alive_tmo: Option<u32>,
    pub reconnect_delay: Option<u32>,
    pub ctrl_loss_tmo: Option<i32>,
    pub fast_io_fail_tmo: Option<i32>,
    pub duplicate_connect: bool,
    pub hdr_digest: bool,
    pub data_digest: bool,
    pub dhchap_secret: Option<String>,
    pub dhchap_ctrl_secret: Option<String>,
    pub tls: bool,
    pub keyring: Option<u32>,
    pub tls_key: Option<u32>,
}

impl ConnectArgs {
    /// Combines defaults from config with per-call overrides; every value is validated again, so
    /// a `ConnectArgs` that exists is safe to write.
    pub fn new(
        target: &Target,
        path: &PathAddr,
        id: &HostIdentity,
        defaults: &NvmeSettings,
        o: &Overrides,
    ) -> Result<ConnectArgs, OptionsError> {
        validate_nqn(&target.nqn).map_err(|e| invalid("nqn", "a valid NQN", e.to_string()))?;
        validate_nqn(&id.hostnqn).map_err(|e| invalid("hostnqn", "a valid NQN", e.to_string()))?;
        validate_uuid("hostid", &id.hostid)?;
        if let Some(i) = &path.host_iface {
            validate_iface(i)?;
        }
        let args = ConnectArgs {
            nqn: target.nqn.clone(),
            path: path.clone(),
            hostnqn: id.hostnqn.clone(),
            hostid: id.hostid.clone(),
            nr_io_queues: o.nr_io_queues.or(defaults.nr_io_queues.map(|v| v.get())),
            queue_size: o.queue_size.or(defaults.queue_size.map(|v| v.get())),
            keep_alive_tmo: Some(o.keep_alive_tmo.unwrap_or(defaults.keep_alive_tmo)),
            reconnect_delay: Some(o.reconnect_delay.unwrap_or(defaults.reconnect_delay)),
            ctrl_loss_tmo: Some(o.ctrl_loss_tmo.unwrap_or(defaults.ctrl_loss_tmo)),
            fast_io_fail_tmo: o.fast_io_fail_tmo.or(defaults.fast_io_fail_tmo),
            duplicate_connect: o.duplicate_connect,
            hdr_digest: o.hdr_digest.unwrap_or(defaults.hdr_digest),
            data_digest: o.data_digest.unwrap_or(defaults.data_digest),
            dhchap_secret: o.dhchap_secret.clone(),
            dhchap_ctrl_secret: o.dhchap_ctrl_secret.clone(),
            tls: o.tls,
            keyring: o.keyring,
            tls_key: o.tls_key,
        };
        args.validate()?;
        Ok(args)
    }

    fn validate(&self) -> Result<(), OptionsError> {
        if let Some(q) = self.nr_io_queues {
            if !(1..=1024).contains(&q) {
                return Err(invalid("nr_io_queues", "1..=1024", q));
            }
        }
        if let Some(q) = self.queue_size {
            if !(16..=1024).contains(&q) {
                return Err(invalid("queue_size", "16..=1024 (the kernel's range)", q));
            }
        }
        if self.reconnect_delay == Some(0) {
            return Err(invalid("reconnect_delay", "at least 1 (seconds)", 0));
        }
        for (k, v) in [
            ("ctrl_loss_tmo", self.ctrl_loss_tmo),
            ("fast_io_fail_tmo", self.fast_io_fail_tmo),
        ] {
            if let Some(v) = v {
                if v < -1 {
                    return Err(invalid(k, "seconds, or -1 for \"forever\"", v));
                }
            }
        }
        if let (Some(loss), Some(delay)) = (self.ctrl_loss_tmo, self.reconnect_delay) {
            if loss >= 0 && (loss as u32) < delay {
                return Err(invalid(
                    "ctrl_loss_tmo",
                    format!("-1 or at least reconnect_delay ({delay}s)"),
                    loss,
                ));
            }
        }
        for (k, v) in [
            ("dhchap_secret", &self.dhchap_secret),
            ("dhchap_ctrl_secret", &self.dhchap_ctrl_secret),
        ] {
            if let Some(v) = v {
                validate_dhchap(k, v)?;
            }
        }
        if self.dhchap_ctrl_secret.is_some() && self.dhchap_secret.is_none() {
            return Err(invalid(
                "dhchap_ctrl_secret",
                "to come with dhchap_secret (bidirectional authentication needs both)",
                "only dhchap_ctrl_secret",
            ));
        }
        if (self.keyring.is_some() || self.tls_key.is_some()) && !self.tls {
            return Err(invalid(
                "keyring/tls_key",
                "tls = true (they only apply to TLS connections)",
                "tls = false",
            ));
        }
        Ok(())
    }

    /// The identity of the controller this connect makes: the kernel refuses a second controller
    /// with the same key unless `duplicate_connect` is given.
    pub fn key(&self) -> ControllerKey {
        ControllerKey {
            nqn: self.nqn.clone(),
            path: self.path.clone(),
            hostnqn: self.hostnqn.clone(),
        }
    }
}

/// Subsystem + path + host: what makes two controllers "the same connection".
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ControllerKey {
    pub nqn: String,
    pub path: PathAddr,
    pub hostnqn: String,
}

impl fmt::Display for ConnectArgs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "transport=tcp,traddr={},trsvcid={},nqn={}",
            self.path.traddr, self.path.trsvcid, self.nqn
        )?;
        if let Some(h) = &self.path.host_traddr {
            write!(f, ",host_traddr={h}")?;
        }
        if let Some(h) = &self.path.host_iface {
            write!(f, ",host_iface={h}")?;
        }
        write!(f, ",hostnqn={},hostid={}", self.hostnqn, self.hostid)?;
        let nums: [(&str, Option<i64>); 6] = [
            ("nr_io_queues", self.nr_io_queues.map(i64::from)),
            ("queue_size", self.queue_size.map(i64::from)),
            ("keep_alive_tmo", self.keep_alive_tmo.map(i64::from)),
            ("reconnect_delay", self.reconnect_delay.map(i64::from)),
            ("ctrl_loss_tmo", self.ctrl_loss_tmo.map(i64::from)),
            ("fast_io_fail_tmo", self.fast_io_fail_tmo.map(i64::from)),
        ];
        for (k, v) in nums {
            if let Some(v) = v {
                write!(f, ",{k}={v}")?;
            }
        }
        for (k, on) in [
            ("duplicate_connect", self.duplicate_connect),
            ("hdr_digest", self.hdr_digest),
            ("data_digest", self.data_digest),
            ("tls", self.tls),
        ] {
            if on {
                write!(f, ",{k}")?;
            }
        }
        if let Some(s) = &self.dhchap_secret {
            write!(f, ",dhchap_secret={s}")?;
        }
        if let Some(s) = &self.dhchap_ctrl_secret {
            write!(f, ",dhchap_ctrl_secret={s}")?;
        }
        if let Some(k) = self.keyring {
            write!(f, ",keyring={k}")?;
        }
        if let Some(k) = self.tls_key {
            write!(f, ",tls_key={k}")?;
        }
        Ok(())
    }
}

impl ConnectArgs {
    /// The option string with secrets masked, for logs.
    pub fn redacted(&self) -> String {
        let mut c = self.clone();
        for s in [&mut c.dhchap_secret, &mut c.dhchap_ctrl_secret]
            .into_iter()
            .flatten()
        {
            *s = "<redacted>".into();
        }
        c.to_string()
    }
}

/// `DHHC-1:<hash 00..03>:<base64>:` as nvme-cli's gen-dhchap-key prints.
fn validate_dhchap(key: &str, v: &str) -> Result<(), OptionsError> {
    let expected = "a DH-HMAC-CHAP secret \"DHHC-1:0N:<base64>:\"";
    let masked = format!("{} characters (not shown)", v.len());
    let Some(rest) = v.strip_prefix("DHHC-1:") else {
        return Err(invalid(key, expected, masked));
    };
    let parts: Vec<&str> = rest.split(':').collect();
    let ok = parts.len() == 3
        && matches!(parts[0], "00" | "01" | "02" | "03")
        && parts[1].len() >= 4
        && parts[1]
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/' || b == b'=')
        && parts[2].is_empty();
    if !ok {
        return Err(invalid(key, expected, masked));
    }
    Ok(())
}

/// Network interface names: what `ip link` accepts (1..=15 bytes, no `/`, no whitespace), and
/// nothing the option parser would split on.
fn validate_iface(i: &str) -> Result<(), OptionsError> {
    let ok = !i.is_empty()
        && i.len() <= 15
        && i != "."
        && i != ".."
        && i.bytes()
            .all(|b| b.is_ascii_graphic() && !matches!(b, b'/' | b',' | b'=' | b':'));
    if ok {
        Ok(())
    } else {
        Err(invalid(
            "host_iface",
            "a network interface name (1-15 printable characters, no '/', ',', '=' or ':')",
            i,
        ))
    }
}

/// 8-4-4-4-12 hex digits.
pub fn validate_uuid(key: &str, s: &str) -> Result<(), OptionsError> {
    let groups: Vec<&str> = s.split('-').collect();
    let ok = groups.len() == 5
        && groups
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(g, n)| g.len() == n && g.bytes().all(|b| b.is_ascii_hexdigit()));
    if ok {
        Ok(())
    } else {
        Err(invalid(key, "a UUID (8-4-4-4-12 hex digits)", s))
    }
}

/// An NGUID as sysfs prints it: 32 hex digits, dashes allowed.
fn validate_nguid(s: &str) -> Result<String, OptionsError> {
    let hex: String = s.chars().filter(|c| *c != '-').collect();
    if hex.len() == 32 && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(hex.to_ascii_lowercase())
    } else {
        Err(invalid("nguid", "32 hex digits (dashes allowed)", s))
    }
}

/// `addr:port` with IPv6 in brackets: `10.0.0.5:4420`, `[fd00::5]:4420`.
pub fn parse_addr_port(key: &str, s: &str) -> Result<(IpAddr, u16), OptionsError> {
    let expected = "ADDRESS:PORT, IPv6 in brackets (\"10.0.0.5:4420\", \"[fd00::5]:4420\")";
    let (a, p) = if let Some(rest) = s.strip_prefix('[') {
        rest.split_once("]:")
            .ok_or_else(|| invalid(key, expected, s))?
    } else {
        match s.rsplit_once(':') {
            // An unbracketed IPv6 address is ambiguous: is the last group the port?
            Some((a, _)) if a.contains(':') => return Err(invalid(key, expected, s)),
            Some(ap) => ap,
            None => return Err(invalid(key, expected, s)),
        }
    };
    let addr: IpAddr = a.parse().map_err(|_| invalid(key, expected, s))?;
    check_unicast(key, addr)?;
    let port = parse_port(key, p)?;
    Ok((addr, port))
}

fn parse_port(key: &str, p: &str) -> Result<u16, OptionsError> {
    match p.parse::<u16>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(invalid(key, "a TCP port 1..=65535", p)),
    }
}

fn parse_ip(key: &str, s: &str) -> Result<IpAddr, OptionsError> {
    let ip: IpAddr = s
        .parse()
        .map_err(|_| invalid(key, "an IPv4 or IPv6 address (no host names)", s))?;
    check_unicast(key, ip)?;
    Ok(ip)
}

/// A target or host address must name one host: not 0.0.0.0/::, the broadcast address or a
/// multicast group (the kernel would try to reach them all the same).
fn check_unicast(key: &str, ip: IpAddr) -> Result<(), OptionsError> {
    let one_host = match ip {
        IpAddr::V4(v4) => !(v4.is_unspecified() || v4.is_broadcast() || v4.is_multicast()),
        IpAddr::V6(v6) => !(v6.is_unspecified() || v6.is_multicast()),
    };
    if one_host {
        Ok(())
    } else {
        Err(invalid(
            key,
            "the unicast address of one host (not unspecified, broadcast or multicast)",
            ip,
        ))
    }
}

/// Paths one volume may have. Real multipath setups have two to four; each path is a
/// fabrics write and a controller, so a caller may not ask for thousands.
pub const MAX_PATHS: usize = 16;

/// The well-known discovery subsystem: a discovery controller has no namespaces to attach.
pub const DISCOVERY_NQN: &str = "nqn.2014-08.org.nvmexpress.discovery";

/// Typed reads from an `a{sv}`-like map, each error naming the key.
struct Fields<'a> {
    section: &'static str,
    map: &'a BTreeMap<String, OptValue>,
}

impl<'a> Fields<'a> {
    fn check_known(&self, known: &[&str]) -> Result<(), OptionsError> {
        for k in self.map.keys() {
            if !known.contains(&k.as_str()) {
                return Err(OptionsError::UnknownKey {
                    section: self.section,
                    key: k.clone(),
                    known: known.join(", "),
                });
            }
        }
        Ok(())
    }
    fn str(&self, k: &str) -> Result<Option<&'a str>, OptionsError> {
        match self.map.get(k) {
            None => Ok(None),
            Some(OptValue::Str(s)) => Ok(Some(s)),
            Some(v) => Err(invalid(k, "a string", v.kind())),
        }
    }
    fn int(&self, k: &str, lo: i64, hi: i64) -> Result<Option<i64>, OptionsError> {
        let v = match self.map.get(k) {
            None => return Ok(None),
            Some(OptValue::Int(n)) => *n,
            // The CLI passes `-o key=value` as strings; accept decimal text as well.
            Some(OptValue::Str(s)) => s
                .parse()
                .map_err(|_| invalid(k, format!("an integer {lo}..={hi}"), s))?,
            Some(v) => return Err(invalid(k, "an integer", v.kind())),
        };
        if v < lo || v > hi {
            return Err(invalid(k, format!("an integer {lo}..={hi}"), v));
        }
        Ok(Some(v))
    }
    fn bool(&self, k: &str) -> Result<Option<bool>, OptionsError> {
        match self.map.get(k) {
            None => Ok(None),
            Some(OptValue::Bool(b)) => Ok(Some(*b)),
            Some(OptValue::Str(s)) => match s.as_str() {
                "true" | "yes" | "1" => Ok(Some(true)),
                "false" | "no" | "0" => Ok(Some(false)),
                _ => Err(invalid(k, "true or false", s)),
            },
            Some(v) => Err(invalid(k, "a boolean", v.kind())),
        }
    }
}

pub const TARGET_KEYS: &[&str] = &[
    "nqn",
    "traddr",
    "trsvcid",
    "host_traddr",
    "host_iface",
    "paths",
    "nsid",
    "uuid",
    "nguid",
];

pub const OPTION_KEYS: &[&str] = &[
    "nr_io_queues",
    "queue_size",
    "keep_alive_tmo",
    "reconnect_delay",
    "ctrl_loss_tmo",
    "fast_io_fail_tmo",
    "duplicate_connect",
    "hdr_digest",
    "data_digest",
    "dhchap_secret",
    "dhchap_ctrl_secret",
    "tls",
    "keyring",
    "tls_key",
    "timeout_ms",
];

/// Parses `Connect`'s target dictionary. `traddr`/`trsvcid` give the first path, `paths`
/// (`["addr:port", …]`) more; `host_traddr`/`host_iface` apply to every path.
pub fn parse_target(map: &BTreeMap<String, OptValue>) -> Result<Target, OptionsError> {
    let f = Fields {
        section: "target",
        map,
    };
    f.check_known(TARGET_KEYS)?;
    let nqn = f.str("nqn")?.ok_or(OptionsError::Missing("target.nqn"))?;
    validate_nqn(nqn).map_err(|e| invalid("nqn", "a valid NQN", e.to_string()))?;
    if nqn == DISCOVERY_NQN {
        return Err(invalid(
            "nqn",
            "the NQN of an I/O subsystem (the discovery subsystem has no namespaces)",
            nqn,
        ));
    }
    let host_traddr = f
        .str("host_traddr")?
        .map(|s| parse_ip("host_traddr", s))
        .transpose()?;
    let host_iface = f.str("host_iface")?.map(str::to_string);
    if let Some(i) = &host_iface {
        validate_iface(i)?;
    }
    let mut addrs = Vec::new();
    match (f.str("traddr")?, map.get("trsvcid")) {
        (Some(a), port) => {
            let port = match port {
                None => 4420,
                Some(OptValue::Int(n)) => u16::try_from(*n)
                    .ok()
                    .filter(|p| *p > 0)
                    .ok_or_else(|| invalid("trsvcid", "a TCP port 1..=65535", n))?,
                Some(OptValue::Str(s)) => parse_port("trsvcid", s)?,
                Some(v) => return Err(invalid("trsvcid", "a port number", v.kind())),
            };
            addrs.push((parse_ip("traddr", a)?, port));
        }
        (None, Some(_)) => return Err(OptionsError::Missing("target.traddr (trsvcid was given)")),
        (None, None) => {}
    }
    match map.get("paths") {
        None => {}
        Some(OptValue::StrList(l)) => {
            for p in l {
                addrs.push(parse_addr_port("paths", p)?);
            }
        }
        Some(OptValue::Str(p)) => addrs.push(parse_addr_port("paths", p)?),
        Some(v) => return Err(invalid("paths", "a list of \"ADDRESS:PORT\"", v.kind())),
    }
    if addrs.is_empty() {
        return Err(OptionsError::Missing("target.traddr or target.paths"));
    }
    if addrs.len() > MAX_PATHS {
        return Err(invalid(
            "paths",
            format!("at most {MAX_PATHS} paths"),
            format!("{} paths", addrs.len()),
        ));
    }
    let mut paths: Vec<PathAddr> = Vec::new();
    for (traddr, trsvcid) in addrs {
        let p = PathAddr {
            traddr,
            trsvcid,
            host_traddr,
            host_iface: host_iface.clone(),
        };
        if paths.contains(&p) {
            return Err(invalid("paths", "distinct addresses", p.to_string()));
        }
        paths.push(p);
    }
    let nsid = f.int("nsid", 1, i64::from(u32::MAX - 1))?;
    let uuid = f.str("uuid")?;
    let nguid = f.str("nguid")?;
    let namespace = match (nsid, uuid, nguid) {
        (Some(n), None, None) => Selector::Nsid(n as u32),
        (None, Some(u), None) => {
            validate_uuid("uuid", u)?;
            Selector::Uuid(u.to_ascii_lowercase())
        }
        (None, None, Some(g)) => Selector::Nguid(validate_nguid(g)?),
        (None, None, None) => {
            return Err(OptionsError::Missing(
                "one of target.nsid, target.uuid or target.nguid",
            ))
        }
        _ => {
            return Err(invalid(
                "nsid/uuid/nguid",
                "exactly one of them",
                "more than one",
            ))
        }
    };
    Ok(Target {
        nqn: nqn.to_string(),
        paths,
        namespace,
    })
}

/// Parses `Connect`'s options dictionary.
pub fn parse_overrides(map: &BTreeMap<String, OptValue>) -> Result<Overrides, OptionsError> {
    let f = Fields {
        section: "option",
        map,
    };
    f.check_known(OPTION_KEYS)?;
    let u32_ = |k: &str, lo: i64, hi: i64| -> Result<Option<u32>, OptionsError> {
        Ok(f.int(k, lo, hi)?.map(|v| v as u32))
    };
    let i32_ = |k: &str| -> Result<Option<i32>, OptionsError> {
        Ok(f.int(k, -1, i64::from(i32::MAX))?.map(|v| v as i32))
    };
    let secret = |k: &str| -> Result<Option<String>, OptionsError> {
        let v = f.str(k)?;
        if let Some(v) = v {
            validate_dhchap(k, v)?;
        }
        Ok(v.map(str::to_string))
    };
    Ok(Overrides {
        nr_io_queues: u32_("nr_io_queues", 1, 1024)?,
        queue_size: u32_("queue_size", 16, 1024)?,
        keep_alive_tmo: u32_("keep_alive_tmo", 0, 65535)?,
        reconnect_delay: u32_("reconnect_delay", 1, i64::from(i32::MAX))?,
        ctrl_loss_tmo: i32_("ctrl_loss_tmo")?,
        fast_io_fail_tmo: i32_("fast_io_fail_tmo")?,
        duplicate_connect: f.bool("duplicate_connect")?.unwrap_or(false),
        hdr_digest: f.bool("hdr_digest")?,
        data_digest: f.bool("data_digest")?,
        dhchap_secret: secret("dhchap_secret")?,
        dhchap_ctrl_secret: secret("dhchap_ctrl_secret")?,
        tls: f.bool("tls")?.unwrap_or(false),
        keyring: u32_("keyring", 1, i64::from(i32::MAX))?,
        tls_key: u32_("tls_key", 1, i64::from(i32::MAX))?,
        timeout: f
            .int("timeout_ms", 1, 3_600_000)?
            .map(|ms| Duration::from_millis(ms as u64)),
    })
}

/// `Disconnect`'s options: `timeout_ms`, read as `Connect` reads it (integer or decimal text).
pub fn parse_disconnect(
    map: &BTreeMap<String, OptValue>,
) -> Result<Option<Duration>, OptionsError> {
    let f = Fields {
        section: "options",
        map,
    };
    f.check_known(&["timeout_ms"])?;
    Ok(f.int("timeout_ms", 1, 3_600_000)?
        .map(|ms| Duration::from_millis(ms as u64)))
}

/// Volume ids name files and D-Bus objects: `[A-Za-z0-9._-]`, 1..=128, no leading dot.
pub fn validate_volume_id(id: &str) -> Result<(), OptionsError> {
    let ok = !id.is_empty()
        && id.len() <= 128
        && !id.starts_with('.')
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(invalid(
            "volume_id",
            "1-128 characters from [A-Za-z0-9._-], not starting with '.'",
            id,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Settings;

    fn defaults() -> NvmeSettings {
        Settings::defaults("host-a").nvme
    }

    fn ident() -> HostIdentity {
        HostIdentity {
            hostnqn: "nqn.2014-08.org.nvmexpress:uuid:1b4e28ba-2fa1-11d2-883f-0016d3cca427".into(),
            hostid: "1b4e28ba-2fa1-11d2-883f-0016d3cca427".into(),
        }
    }

    fn map(kv: &[(&str, OptValue)]) -> BTreeMap<String, OptValue> {
        kv.iter().map(|(k, v)| (k.to_string(), v.clone())).collect()
    }

    fn s(v: &str) -> OptValue {
        OptValue::Str(v.into())
    }

    fn target() -> Target {
        parse_target(&map(&[
            ("nqn", s("nqn.2024-01.io.example:vol1")),
            ("traddr", s("127.0.0.1")),
            ("trsvcid", OptValue::Int(4420)),
            ("nsid", OptValue::Int(1)),
        ]))
        .unwrap()
    }

    #[test]
    fn option_string_is_exact() {
        let t = target();
        let a = ConnectArgs::new(
            &t,
            &t.paths[0],
            &ident(),
            &defaults(),
            &Overrides::default(),
        )
        .unwrap();
        assert_eq!(
            a.to_string(),
            "transport=tcp,traddr=127.0.0.1,trsvcid=4420,nqn=nqn.2024-01.io.example:vol1,\
             hostnqn=nqn.2014-08.org.nvmexpress:uuid:1b4e28ba-2fa1-11d2-883f-0016d3cca427,\
             hostid=1b4e28ba-2fa1-11d2-883f-0016d3cca427,keep_alive_tmo=5,reconnect_delay=2,\
             ctrl_loss_tmo=60"
        );
    }

    #[test]
    fn every_option_appears_once() {
        let t = parse_target(&map(&[
            ("nqn", s("nqn.2024-01.io.example:vol1")),
            ("paths", OptValue::StrList(vec!["[fd00::5]:4421".into()])),
            ("host_traddr", s("fd00::1")),
            ("host_iface", s("eth0")),
            ("uuid", s("0AB1E5A0-1111-2222-3333-444455556666")),
        ]))
        .unwrap();
        assert_eq!(
            t.namespace,
            Selector::Uuid("0ab1e5a0-1111-2222-3333-444455556666".into())
        );
        let o = parse_overrides(&map(&[
            ("nr_io_queues", OptValue::Int(4)),
            ("queue_size", s("128")),
            ("ctrl_loss_tmo", OptValue::Int(-1)),
            ("fast_io_fail_tmo", OptValue::Int(0)),
            ("duplicate_connect", OptValue::Bool(true)),
            ("hdr_digest", s("true")),
            ("data_digest", OptValue::Bool(true)),
            ("dhchap_secret", s("DHHC-1:00:ZmFrZXNlY3JldA==:")),
            ("dhchap_ctrl_secret", s("DHHC-1:01:Y3RybHNlY3JldA==:")),
            ("tls", OptValue::Bool(true)),
            ("keyring", OptValue::Int(7)),
            ("tls_key", OptValue::Int(9)),
        ]))
        .unwrap();
        let a = ConnectArgs::new(&t, &t.paths[0], &ident(), &defaults(), &o).unwrap();
        let line = a.to_string();
        assert!(line.starts_with("transport=tcp,traddr=fd00::5,trsvcid=4421,nqn=nqn.2024-01.io.example:vol1,host_traddr=fd00::1,host_iface=eth0,"));
        assert!(line.ends_with(",nr_io_queues=4,queue_size=128,keep_alive_tmo=5,reconnect_delay=2,ctrl_loss_tmo=-1,fast_io_fail_tmo=0,duplicate_connect,hdr_digest,data_digest,tls,dhchap_secret=DHHC-1:00:ZmFrZXNlY3JldA==:,dhchap_ctrl_secret=DHHC-1:01:Y3RybHNlY3JldA==:,keyring=7,tls_key=9"), "{line}");
        assert!(!a.redacted().contains("ZmFrZ"));
        // Every option is a separate comma field with at most one '='.
        for field in line.split(',') {
            assert!(
                field.matches('=').count() <= 1 || field.starts_with("dhchap"),
                "{field}"
            );
        }
    }

    #[test]
    fn nothing_can_inject_an_option() {
        let bad_nqns = [
            "nqn.2024-01.io.example:a,hostnqn=evil",
            "nqn.2024-01.io.example:a\nnqn=x",
            "nqn.2024-01.io.example:a b",
            "nqn.2024-01.io.example:a=b",
        ];
        for n in bad_nqns {
            let e = parse_target(&map(&[
                ("nqn", s(n)),
                ("traddr", s("127.0.0.1")),
                ("nsid", OptValue::Int(1)),
            ]))
            .unwrap_err();
            assert!(e.to_string().starts_with("nqn:"), "{e}");
        }
        let e = parse_target(&map(&[
            ("nqn", s("nqn.2024-01.io.example:a")),
            ("traddr", s("127.0.0.1,nqn=x")),
            ("nsid", OptValue::Int(1)),
        ]))
        .unwrap_err();
        assert!(e.to_string().contains("traddr"), "{e}");
        for iface in ["eth0,tls", "eth0=1", "a b", "", "averyveryverylongname"] {
            let e = parse_target(&map(&[
                ("nqn", s("nqn.2024-01.io.example:a")),
                ("traddr", s("127.0.0.1")),
                ("host_iface", s(iface)),
                ("nsid", OptValue::Int(1)),
            ]))
            .unwrap_err();
            assert!(e.to_string().starts_with("host_iface"), "{e}");
        }
        let e = parse_overrides(&map(&[("dhchap_secret", s("DHHC-1:00:abc,tls:"))])).unwrap_err();
        assert!(e.to_string().starts_with("dhchap_secret"), "{e}");
        assert!(
            !e.to_string().contains("abc"),
            "secrets are not echoed: {e}"
        );
        let e = parse_overrides(&map(&[("queue_size", s("64,tls"))])).unwrap_err();
        assert!(e.to_string().starts_with("queue_size"), "{e}");
        let too_long = format!("nqn.2024-01.io.example:{}", "a".repeat(210));
        let e = parse_target(&map(&[
            ("nqn", s(&too_long)),
            ("traddr", s("127.0.0.1")),
            ("nsid", OptValue::Int(1)),
        ]))
        .unwrap_err();
        assert!(e.to_string().contains("223"), "{e}");
    }

    #[test]
    fn bad_inputs_name_the_key() {
        let cases: Vec<(Vec<(&str, OptValue)>, &str)> = vec![
            (
                vec![("traddr", s("127.0.0.1")), ("nsid", OptValue::Int(1))],
                "target.nqn is required",
            ),
            (
                vec![
                    ("nqn", s("nqn.2024-01.io.example:a")),
                    ("nsid", OptValue::Int(1)),
                ],
                "target.traddr or target.paths is required",
            ),
            (
                vec![
                    ("nqn", s("nqn.2024-01.io.example:a")),
                    ("traddr", s("host.example")),
                    ("nsid", OptValue::Int(1)),
                ],
                "traddr: expected an IPv4 or IPv6 address",
            ),
            (
                vec![
                    ("nqn", s("nqn.2024-01.io.example:a")),
                    ("traddr", s("127.0.0.1")),
                    ("trsvcid", OptValue::Int(70000)),
                    ("nsid", OptValue::Int(1)),
                ],
                "trsvcid: expected a TCP port",
            ),
            (
                vec![
                    ("nqn", s("nqn.2024-01.io.example:a")),
                    ("traddr", s("127.0.0.1")),
                ],
                "one of target.nsid",
            ),
            (
                vec![
                    ("nqn", s("nqn.2024-01.io.example:a")),
                    ("traddr", s("127.0.0.1")),
                    ("nsid", OptValue::Int(0)),
                ],
                "nsid: expected an integer 1..=",
            ),
            (
                vec![
                    ("nqn", s("nqn.2024-01.io.example:a")),
                    ("traddr", s("127.0.0.1")),
                    ("nsid", OptValue::Int(1)),
                    ("uuid", s("x")),
                ],
                "exactly one",
            ),
            (
                vec![
                    ("nqn", s("nqn.2024-01.io.example:a")),
                    ("traddr", s("127.0.0.1")),
                    ("uuid", s("not-a-uuid")),
                ],
                "uuid: expected a UUID",
            ),
            (
                vec![
                    ("nqn", s("nqn.2024-01.io.example:a")),
                    ("paths", OptValue::StrList(vec!["fd00::1:4420".into()])),
                    ("nsid", OptValue::Int(1)),
                ],
                "paths: expected ADDRESS:PORT",
            ),
            (
                vec![
                    ("nqn", s("nqn.2024-01.io.example:a")),
                    ("traddr", s("127.0.0.1")),
                    ("nsid", OptValue::Int(1)),
                    ("nsdi", OptValue::Int(1)),
                ],
                "unknown target key \"nsdi\"",
            ),
        ];
        for (kv, want) in cases {
            let e = parse_target(&map(&kv)).unwrap_err().to_string();
            assert!(e.contains(want), "{e:?} should contain {want:?}");
        }
        let e = parse_overrides(&map(&[("ctrl_loss_tmo", OptValue::Int(-2))])).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("ctrl_loss_tmo: expected an integer -1..="),
            "{e}"
        );
        let t = target();
        let o = Overrides {
            ctrl_loss_tmo: Some(1),
            reconnect_delay: Some(5),
            ..Default::default()
        };
        let e = ConnectArgs::new(&t, &t.paths[0], &ident(), &defaults(), &o).unwrap_err();
        assert!(
            e.to_string().contains("at least reconnect_delay (5s)"),
            "{e}"
        );
        let o = Overrides {
            keyring: Some(3),
            ..Default::default()
        };
        let e = ConnectArgs::new(&t, &t.paths[0], &ident(), &defaults(), &o).unwrap_err();
        assert!(e.to_string().contains("tls = true"), "{e}");
    }

    #[test]
    fn volume_ids() {
        for ok in ["pvc-0a1b", "vol.1", "A_b-C"] {
            validate_volume_id(ok).unwrap();
        }
        for bad in [
            "",
            ".hidden",
            "a/b",
            "a b",
            "x".repeat(129).as_str(),
            "vol\n",
        ] {
            assert!(validate_volume_id(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn addr_port_forms() {
        assert_eq!(
            parse_addr_port("p", "10.0.0.5:4420").unwrap(),
            ("10.0.0.5".parse().unwrap(), 4420)
        );
        assert_eq!(
            parse_addr_port("p", "[fd00::5]:4421").unwrap(),
            ("fd00::5".parse().unwrap(), 4421)
        );
        assert!(parse_addr_port("p", "10.0.0.5").is_err());
        assert!(parse_addr_port("p", "10.0.0.5:0").is_err());
    }

    #[test]
    fn targets_that_name_no_single_io_subsystem_are_refused() {
        let with = |k: &str, v: OptValue| {
            let mut m = map(&[
                ("nqn", s("nqn.2024-01.io.example:vol1")),
                ("traddr", s("10.0.0.5")),
                ("nsid", OptValue::Int(1)),
            ]);
            m.insert(k.to_string(), v);
            parse_target(&m).map(|_| ()).map_err(|e| e.to_string())
        };
        for addr in ["0.0.0.0", "255.255.255.255", "224.0.0.1", "::", "ff02::1"] {
            let e = with("traddr", s(addr)).unwrap_err();
            assert!(e.contains("traddr") && e.contains("unicast"), "{addr}: {e}");
        }
        let e = with("paths", OptValue::StrList(vec!["0.0.0.0:4420".into()])).unwrap_err();
        assert!(e.contains("paths") && e.contains("unicast"), "{e}");
        let e = with("host_traddr", s("255.255.255.255")).unwrap_err();
        assert!(e.contains("host_traddr"), "{e}");
        let many: Vec<String> = (1..=2000)
            .map(|i| format!("10.1.{}.{}:4420", i / 250, i % 250 + 1))
            .collect();
        let e = with("paths", OptValue::StrList(many)).unwrap_err();
        assert!(
            e.contains("at most 16 paths") && e.contains("2001 paths"),
            "{e}"
        );
        let e = with("nqn", s(DISCOVERY_NQN)).unwrap_err();
        assert!(e.contains("discovery"), "{e}");
        for cp in ['\u{200B}', '\u{202E}', '\u{2066}', '\u{FEFF}', '\u{00AD}'] {
            let e = with("nqn", s(&format!("nqn.2024-01.io.example:vol{cp}1"))).unwrap_err();
            assert!(e.contains(&format!("U+{:04X}", u32::from(cp))), "{e}");
        }
        with("nqn", s("nqn.2024-01.io.example:välj")).unwrap();
    }

    #[test]
    fn disconnect_reads_timeout_ms_as_connect_does() {
        assert_eq!(
            parse_disconnect(&map(&[("timeout_ms", s("5000"))])).unwrap(),
            Some(Duration::from_secs(5))
        );
        assert_eq!(
            parse_disconnect(&map(&[("timeout_ms", OptValue::Int(5000))])).unwrap(),
            Some(Duration::from_secs(5))
        );
        for bad in [s("soon"), OptValue::Int(0), OptValue::Bool(true)] {
            assert!(parse_disconnect(&map(&[("timeout_ms", bad)])).is_err());
        }
        let e = parse_disconnect(&map(&[("force", OptValue::Bool(true))])).unwrap_err();
        assert!(e.to_string().contains("timeout_ms"), "{e}");
    }
}
