//! LVM through its own tools (`lvs`, `lvcreate`, `lvremove`), run with an argument vector and
//! JSON reports. Parsers are pure; running is behind [`LvmRunner`] (reads, and `lvcreate` with the fence's
//! guard) and [`LvmTeardown`] (`lvremove`), so tests replay real output.

use std::fmt;
use std::sync::Arc;

use serde::Deserialize;

use crate::fence::FenceGuard;

#[derive(Debug, thiserror::Error)]
pub enum LvmError {
    /// A VG or LV name LVM would refuse.
    #[error("{what} {name:?}: {why}")]
    BadName {
        what: &'static str,
        name: String,
        why: &'static str,
    },
    /// The LV does not exist.
    #[error("logical volume {vg}/{lv} does not exist")]
    NoSuchLv { vg: String, lv: String },
    /// The tool could not be started.
    #[error("cannot run {cmd}: {source}")]
    Spawn {
        cmd: String,
        #[source]
        source: std::io::Error,
    },
    /// The tool failed; its stderr says why.
    #[error("{cmd} failed (exit {code}): {stderr}")]
    Failed {
        cmd: String,
        code: i32,
        stderr: String,
    },
    /// The report was not what LVM prints.
    #[error("cannot parse the output of {cmd}: {why}")]
    Parse { cmd: String, why: String },
    /// A size that is neither `-L` nor `-l` syntax.
    #[error(
        "snapshot size {0:?}: expected a positive size like \"512M\" / \"1.5G\" or extents like \"20%ORIGIN\" (1-100 % of ORIGIN, VG or FREE)"
    )]
    BadSize(String),
}

/// What one run of a tool gave back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CmdOutput {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// LVM's tools that read or add, each called by its name so that one cannot be run through
/// another (blocking). `lvcreate` adds a device and takes the fence's guard. The real one is
/// [`SystemLvm`]; `argv[0]` is the tool's name.
///
/// ```compile_fail
/// use volfence::lvm::LvmRunner;
/// fn snapshot_unfenced(lvm: &dyn LvmRunner, argv: &[String]) {
///     let _ = lvm.lvcreate(argv);
/// }
/// ```
/// With the guard it compiles:
/// ```
/// use volfence::{fence::FenceGuard, lvm::LvmRunner};
/// fn snapshot_fenced(lvm: &dyn LvmRunner, guard: &FenceGuard, argv: &[String]) {
///     let _ = lvm.lvcreate(guard, argv);
/// }
/// ```
pub trait LvmRunner: Send + Sync {
    /// `lvs`: reads only.
    fn lvs(&self, argv: &[String]) -> std::io::Result<CmdOutput>;
    /// `lvcreate`: only with the lease held.
    fn lvcreate(&self, guard: &FenceGuard, argv: &[String]) -> std::io::Result<CmdOutput>;
}

/// `lvremove`: teardown, which must work without the lease (a fenced host still cleans up).
pub trait LvmTeardown: Send + Sync {
    fn lvremove(&self, argv: &[String]) -> std::io::Result<CmdOutput>;
}

/// Both sides, as [`Lvm`] holds them.
pub trait LvmTools: LvmRunner + LvmTeardown {}
impl<T: LvmRunner + LvmTeardown> LvmTools for T {}

/// Runs the real tools from PATH, no shell.
pub struct SystemLvm;

impl SystemLvm {
    fn exec(tool: &str, argv: &[String]) -> std::io::Result<CmdOutput> {
        if argv.first().map(String::as_str) != Some(tool) {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("{argv:?}: expected a {tool} command"),
            ));
        }
        let out = std::process::Command::new(tool)
            .args(&argv[1..])
            // The agent's own fds (D-Bus, sockets) are not LVM's business.
            .env("LVM_SUPPRESS_FD_WARNINGS", "1")
            .stdin(std::process::Stdio::null())
            .output()?;
        Ok(CmdOutput {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        })
    }
}

impl LvmRunner for SystemLvm {
    fn lvs(&self, argv: &[String]) -> std::io::Result<CmdOutput> {
        SystemLvm::exec("lvs", argv)
    }
    fn lvcreate(&self, _guard: &FenceGuard, argv: &[String]) -> std::io::Result<CmdOutput> {
        SystemLvm::exec("lvcreate", argv)
    }
}

impl LvmTeardown for SystemLvm {
    fn lvremove(&self, argv: &[String]) -> std::io::Result<CmdOutput> {
        SystemLvm::exec("lvremove", argv)
    }
}

/// LVM's name rules (lvm(8) "VALID NAMES"): `[A-Za-z0-9+_.-]`, not starting with `-`, not `.`
/// or `..`, at most 127 characters; LV names also not `snapshot`/`pvmove` and without the
/// suffixes LVM reserves for its hidden sub-volumes.
pub fn validate_name(what: &'static str, name: &str) -> Result<(), LvmError> {
    let bad = |why| {
        Err(LvmError::BadName {
            what,
            name: name.to_string(),
            why,
        })
    };
    if name.is_empty() || name.len() > 127 {
        return bad("expected 1 to 127 characters");
    }
    if name == "." || name == ".." {
        return bad("\".\" and \"..\" are not names");
    }
    if name.starts_with('-') {
        return bad("must not start with '-'");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'_' | b'.' | b'-'))
    {
        return bad("only A-Z a-z 0-9 + _ . - are allowed");
    }
    if what == "LV name" {
        if name == "snapshot" || name == "pvmove" || name.starts_with("pvmove") {
            return bad("reserved by LVM");
        }
        const RESERVED: &[&str] = &[
            "_cdata", "_cmeta", "_corig", "_mlog", "_mimage", "_pmspare", "_rimage", "_rmeta",
            "_tdata", "_tmeta", "_vorigin", "_vdata",
        ];
        if RESERVED.iter().any(|r| name.contains(r)) {
            return bad("contains a suffix LVM reserves for hidden volumes");
        }
    }
    Ok(())
}

/// One row of `lvs`.
#[derive(Debug, Clone, PartialEq)]
pub struct LvInfo {
    pub vg: String,
    pub name: String,
    pub attr: String,
    pub size_bytes: u64,
    pub origin: String,
    pub pool: String,
    /// Snapshot COW use (thick) or data use (thin), in percent.
    pub data_percent: Option<f64>,
    pub path: String,
    /// LV tags (`lv_tags`).
    pub tags: Vec<String>,
}

/// The tag every snapshot this agent creates carries: what it removes must carry it too.
pub const SNAPSHOT_TAG: &str = "volfence_snapshot";

impl LvInfo {
    /// A snapshot of `origin` that this agent made (its tag): the only kind it ever removes.
    pub fn is_our_snapshot_of(&self, origin: &str) -> bool {
        self.origin == origin && self.tags.iter().any(|t| t == SNAPSHOT_TAG)
    }
    /// A thick (COW) snapshot.
    pub fn is_thick_snapshot(&self) -> bool {
        self.attr.starts_with('s') || self.attr.starts_with('S')
    }
    /// A thin volume (its snapshots need no size).
    pub fn is_thin(&self) -> bool {
        self.attr.starts_with('V')
    }
    /// LVM invalidated the snapshot (COW space ran out).
    pub fn is_invalid(&self) -> bool {
        self.attr.as_bytes().get(4) == Some(&b'I') || self.attr.starts_with('S')
    }
}

#[derive(Deserialize)]
struct Report {
    report: Vec<ReportSection>,
}

#[derive(Deserialize)]
struct ReportSection {
    #[serde(default)]
    lv: Vec<BTreeRow>,
}

type BTreeRow = std::collections::BTreeMap<String, String>;

/// The fields [`lvs_argv`] asks for.
pub const LVS_FIELDS: &str =
    "vg_name,lv_name,lv_attr,lv_size,origin,pool_lv,data_percent,lv_path,lv_tags";

/// Parses `lvs --reportformat json --units b --nosuffix -o LVS_FIELDS`.
pub fn parse_lvs(json: &str) -> Result<Vec<LvInfo>, String> {
    let r: Report = serde_json::from_str(json).map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    for row in r.report.into_iter().flat_map(|s| s.lv) {
        let get = |k: &str| row.get(k).cloned().unwrap_or_default();
        let size = get("lv_size");
        out.push(LvInfo {
            vg: get("vg_name"),
            name: get("lv_name"),
            attr: get("lv_attr"),
            size_bytes: size
                .trim()
                .parse()
                .map_err(|_| format!("lv_size {size:?} is not a byte count"))?,
            origin: get("origin"),
            pool: get("pool_lv"),
            data_percent: get("data_percent").trim().parse().ok(),
            path: get("lv_path"),
            tags: get("lv_tags")
                .split(',')
                .filter(|t| !t.is_empty())
                .map(str::to_string)
                .collect(),
        });
    }
    Ok(out)
}

/// `lvs` for one VG (or all).
pub fn lvs_argv(vg: Option<&str>) -> Vec<String> {
    let mut v: Vec<String> = [
        "lvs",
        "--reportformat",
        "json",
        "--units",
        "b",
        "--nosuffix",
        "-a",
        "-o",
        LVS_FIELDS,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    if let Some(vg) = vg {
        v.push(vg.to_string());
    }
    v
}

/// Size of a thick snapshot: `-L 512M` or `-l 20%ORIGIN`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SnapSize {
    Bytes(String),
    Extents(String),
}

impl SnapSize {
    /// The one parser of a thick snapshot's size, used by the config check and by every request:
    /// what it accepts, lvcreate accepts. `N%ORIGIN|VG|FREE` with N in 1..=100 (`-l`), or a
    /// positive number with at most one decimal point and an lvcreate unit letter (`-L`; no
    /// unit means MiB). Sectors (`s`) and `%PVS` (which needs a PV list) are refused.
    pub fn parse(s: &str) -> Result<SnapSize, LvmError> {
        let bad = || LvmError::BadSize(s.to_string());
        if let Some((n, what)) = s.split_once('%') {
            let n: u32 = match n.bytes().all(|b| b.is_ascii_digit()) {
                true => n.parse().map_err(|_| bad())?,
                false => return Err(bad()),
            };
            if !(1..=100).contains(&n) || !matches!(what, "ORIGIN" | "VG" | "FREE") {
                return Err(bad());
            }
            return Ok(SnapSize::Extents(s.to_string()));
        }
        let split = s
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(s.len());
        let (number, unit) = s.split_at(split);
        let well_formed =
            number.matches('.').count() <= 1 && !number.starts_with('.') && !number.ends_with('.');
        let value: f64 = number.parse().map_err(|_| bad())?;
        let positive = value > 0.0 && value.is_finite();
        if !well_formed
            || !positive
            || !matches!(
                unit,
                "" | "b" | "B" | "k" | "K" | "m" | "M" | "g" | "G" | "t" | "T" | "p" | "P"
            )
        {
            return Err(bad());
        }
        Ok(SnapSize::Bytes(s.to_string()))
    }
}

impl fmt::Display for SnapSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SnapSize::Bytes(s) | SnapSize::Extents(s) => f.write_str(s),
        }
    }
}

/// `lvcreate` for a snapshot: thick with a size, thin (origin in a pool) without, and activated
/// (thin snapshots skip activation by default: `-kn` undoes that).
pub fn lvcreate_snapshot_argv(
    vg: &str,
    origin: &str,
    name: &str,
    size: Option<&SnapSize>,
) -> Vec<String> {
    let mut v: Vec<String> = vec![
        "lvcreate".into(),
        "-y".into(),
        "-s".into(),
        "-n".into(),
        name.into(),
        "--addtag".into(),
        SNAPSHOT_TAG.into(),
    ];
    match size {
        Some(SnapSize::Bytes(s)) => v.extend(["-L".into(), s.clone()]),
        Some(SnapSize::Extents(s)) => v.extend(["-l".into(), s.clone()]),
        None => v.extend(["-kn".into(), "-ay".into()]),
    }
    v.push(format!("{vg}/{origin}"));
    v
}

pub fn lvremove_argv(vg: &str, lv: &str) -> Vec<String> {
    vec![
        "lvremove".into(),
        "-y".into(),
        "-f".into(),
        format!("{vg}/{lv}"),
    ]
}

/// Typed calls over the tools.
#[derive(Clone)]
pub struct Lvm {
    tools: Arc<dyn LvmTools>,
}

impl Lvm {
    pub fn new(tools: Arc<dyn LvmTools>) -> Lvm {
        Lvm { tools }
    }

    fn check(
        argv: Vec<String>,
        run: impl FnOnce(&[String]) -> std::io::Result<CmdOutput>,
    ) -> Result<CmdOutput, LvmError> {
        let cmd = argv.join(" ");
        let out = run(&argv).map_err(|source| LvmError::Spawn {
            cmd: cmd.clone(),
            source,
        })?;
        if out.code != 0 {
            return Err(LvmError::Failed {
                cmd,
                code: out.code,
                stderr: out.stderr.trim().to_string(),
            });
        }
        Ok(out)
    }

    /// Every LV of `vg` (or of every VG).
    pub fn list(&self, vg: Option<&str>) -> Result<Vec<LvInfo>, LvmError> {
        let argv = lvs_argv(vg);
        let cmd = argv.join(" ");
        let out = Lvm::check(argv, |a| self.tools.lvs(a))?;
        parse_lvs(&out.stdout).map_err(|why| LvmError::Parse { cmd, why })
    }

    /// One LV; `NoSuchLv` if it is not there.
    pub fn get(&self, vg: &str, lv: &str) -> Result<LvInfo, LvmError> {
        validate_name("VG name", vg)?;
        validate_name("LV name", lv)?;
        let all = match self.list(Some(vg)) {
            Ok(all) => all,
            Err(LvmError::Failed { stderr, .. }) if stderr.contains("not found") => Vec::new(),
            Err(e) => return Err(e),
        };
        all.into_iter()
            .find(|i| i.name == lv)
            .ok_or_else(|| LvmError::NoSuchLv {
                vg: vg.to_string(),
                lv: lv.to_string(),
            })
    }

    pub fn create_snapshot(
        &self,
        guard: &FenceGuard,
        vg: &str,
        origin: &str,
        name: &str,
        size: Option<&SnapSize>,
    ) -> Result<(), LvmError> {
        validate_name("LV name", name)?;
        Lvm::check(lvcreate_snapshot_argv(vg, origin, name, size), |a| {
            self.tools.lvcreate(guard, a)
        })
        .map(|_| ())
    }

    pub fn remove(&self, vg: &str, lv: &str) -> Result<(), LvmError> {
        Lvm::check(lvremove_argv(vg, lv), |a| self.tools.lvremove(a)).map(|_| ())
    }
}

#[cfg(test)]
mod tests;
