//! What the kernel says about NVMe controllers, subsystems and namespaces, read from sysfs under
//! the host root. The parsers are pure; [`scan`] walks the tree once and builds a [`Topology`]
//! indexed by what volumes are resolved by (subsystem NQN + NSID, UUID, NGUID), never by kernel
//! device names, which change across reconnects.
//!
//! Layout (both multipath modes):
//! - `/sys/class/nvme/nvmeN/`: one controller; `subsysnqn`, `transport`, `address`, `state`,
//!   `cntlid`, `hostnqn`. With native multipath its namespaces appear as hidden path nodes
//!   `nvme<S>c<N>n<H>`; without, as block devices `nvmeNn<H>` directly below it.
//! - `/sys/class/nvme-subsystem/nvme-subsysS/`: `subsysnqn`, links to its controllers, and with
//!   multipath the head block devices `nvme<S>n<H>` (the `/dev` nodes volumes use).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use crate::host::Host;

pub use crate::host::paths::{
    DISK_BY_ID as BY_ID, NVME_CLASS as CLASS_NVME, NVME_FABRICS as FABRICS_DEV,
    NVME_SUBSYSTEM_CLASS as CLASS_SUBSYS,
};

/// `state` of a controller, as `nvme_ctrl_state_show` prints it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum CtrlState {
    New,
    Live,
    Resetting,
    Connecting,
    Deleting,
    DeletingNoio,
    Dead,
    Unknown,
}

impl CtrlState {
    pub fn parse(s: &str) -> CtrlState {
        match s.trim() {
            "new" => CtrlState::New,
            "live" => CtrlState::Live,
            "resetting" => CtrlState::Resetting,
            "connecting" => CtrlState::Connecting,
            "deleting" => CtrlState::Deleting,
            "deleting (no IO)" => CtrlState::DeletingNoio,
            "dead" => CtrlState::Dead,
            _ => CtrlState::Unknown,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            CtrlState::New => "new",
            CtrlState::Live => "live",
            CtrlState::Resetting => "resetting",
            CtrlState::Connecting => "connecting",
            CtrlState::Deleting => "deleting",
            CtrlState::DeletingNoio => "deleting (no IO)",
            CtrlState::Dead => "dead",
            CtrlState::Unknown => "unknown",
        }
    }
    /// Still a connection (or trying to be one); deleting and dead ones are on their way out.
    pub fn is_alive(self) -> bool {
        matches!(
            self,
            CtrlState::New | CtrlState::Live | CtrlState::Resetting | CtrlState::Connecting
        )
    }
}

/// `instance=N,cntlid=M` from a read of `/dev/nvme-fabrics` after a connect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FabricsReply {
    pub instance: u32,
    pub cntlid: u16,
}

pub fn parse_fabrics_reply(s: &str) -> Option<FabricsReply> {
    let kv = parse_kv(s);
    Some(FabricsReply {
        instance: kv.get("instance")?.parse().ok()?,
        cntlid: kv.get("cntlid")?.parse().ok()?,
    })
}

/// `key=value,key=value` (the `address` attribute, the fabrics reply).
pub fn parse_kv(s: &str) -> BTreeMap<String, String> {
    s.trim()
        .split(',')
        .filter_map(|f| f.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

/// The `address` attribute of a TCP controller:
/// `traddr=127.0.0.1,trsvcid=4420[,host_traddr=…][,host_iface=…][,src_addr=…]`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CtrlAddress {
    pub traddr: String,
    pub trsvcid: String,
    pub host_traddr: Option<String>,
    pub host_iface: Option<String>,
    /// The local address the kernel bound (informational; not part of the identity).
    pub src_addr: Option<String>,
}

pub fn parse_address(s: &str) -> CtrlAddress {
    let mut kv = parse_kv(s);
    CtrlAddress {
        traddr: kv.remove("traddr").unwrap_or_default(),
        trsvcid: kv.remove("trsvcid").unwrap_or_default(),
        host_traddr: kv.remove("host_traddr"),
        host_iface: kv.remove("host_iface"),
        src_addr: kv.remove("src_addr"),
    }
}

/// Splits `nvme<a>n<b>` (a namespace block device) into (a, b).
pub fn parse_ns_name(n: &str) -> Option<(u32, u32)> {
    let (a, b) = n.strip_prefix("nvme")?.split_once('n')?;
    Some((digits(a)?, digits(b)?))
}

/// Splits `nvme<s>c<c>n<h>` (a hidden multipath path node) into (s, c, h).
pub fn parse_path_name(n: &str) -> Option<(u32, u32, u32)> {
    let (s, rest) = n.strip_prefix("nvme")?.split_once('c')?;
    let (c, h) = rest.split_once('n')?;
    Some((digits(s)?, digits(c)?, digits(h)?))
}

/// `nvme<N>` (a controller).
pub fn parse_ctrl_name(n: &str) -> Option<u32> {
    digits(n.strip_prefix("nvme")?)
}

fn digits(s: &str) -> Option<u32> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// NGUIDs and UUIDs compare as lowercase hex without dashes.
pub fn normalize_id(s: &str) -> String {
    s.chars()
        .filter(|c| *c != '-')
        .flat_map(char::to_lowercase)
        .collect()
}

fn is_zero_id(s: &str) -> bool {
    normalize_id(s).bytes().all(|b| b == b'0')
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Controller {
    pub name: String,
    pub instance: u32,
    pub subsysnqn: String,
    pub transport: String,
    pub address: CtrlAddress,
    pub state: CtrlState,
    pub cntlid: Option<u16>,
    pub hostnqn: Option<String>,
    /// Inode of its sysfs directory: unlike the name and the cntlid, never another controller's
    /// within a boot (kernfs ids are allocated cyclically, with a generation in the high bits).
    pub ino: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Namespace {
    /// Block device name (`nvme0n1`): a multipath head, or the plain namespace without multipath.
    pub block: String,
    pub subsysnqn: String,
    pub nsid: u32,
    pub uuid: Option<String>,
    pub nguid: Option<String>,
    /// Its sysfs directory (size and other attributes are read on demand, not on every scan).
    pub dir: std::path::PathBuf,
    /// Controllers that reach this namespace.
    pub controllers: Vec<String>,
    pub multipath: bool,
}

impl Namespace {
    /// Capacity in bytes (`size` counts 512-byte sectors whatever the LBA size); 0 if the
    /// namespace is gone.
    pub fn size_bytes(&self) -> u64 {
        attr(&self.dir, "size")
            .and_then(|s| s.trim().parse::<u64>().ok())
            .unwrap_or(0)
            * 512
    }
}

/// One consistent read of the NVMe part of sysfs, with the lookups volumes need.
#[derive(Debug, Clone, Default)]
pub struct Topology {
    pub controllers: BTreeMap<String, Controller>,
    pub namespaces: Vec<Namespace>,
    by_nsid: HashMap<(String, u32), Vec<usize>>,
    by_id: HashMap<String, Vec<usize>>,
}

impl Topology {
    /// Builds the indexes.
    pub fn new(controllers: BTreeMap<String, Controller>, namespaces: Vec<Namespace>) -> Topology {
        let mut t = Topology {
            controllers,
            namespaces,
            ..Default::default()
        };
        for (i, ns) in t.namespaces.iter().enumerate() {
            t.by_nsid
                .entry((ns.subsysnqn.clone(), ns.nsid))
                .or_default()
                .push(i);
            for id in [&ns.uuid, &ns.nguid].into_iter().flatten() {
                t.by_id.entry(normalize_id(id)).or_default().push(i);
            }
        }
        t
    }

    /// Namespaces of subsystem `nqn` with `nsid` (one with multipath; one per controller without).
    pub fn by_nsid(&self, nqn: &str, nsid: u32) -> impl Iterator<Item = &Namespace> {
        self.by_nsid
            .get(&(nqn.to_string(), nsid))
            .into_iter()
            .flatten()
            .map(|i| &self.namespaces[*i])
    }

    /// Namespaces of subsystem `nqn` whose UUID or NGUID is `id` (any format).
    pub fn by_id<'a>(&'a self, nqn: &str, id: &str) -> impl Iterator<Item = &'a Namespace> {
        let nqn = nqn.to_string();
        self.by_id
            .get(&normalize_id(id))
            .into_iter()
            .flatten()
            .map(|i| &self.namespaces[*i])
            .filter(move |ns| ns.subsysnqn == nqn)
    }
}

/// Reads the sysfs attribute `dir/name` (see [`read_attr`]).
fn attr(dir: &Path, name: &str) -> Option<String> {
    read_attr(std::fs::File::open(dir.join(name)).ok()?)
}

/// An open sysfs directory: its attributes are opened relative to it, so a scan resolves one
/// path component per read instead of the whole path (with its class symlink) every time.
struct DirFd(std::os::fd::OwnedFd);

impl DirFd {
    fn open(dir: &Path) -> Option<DirFd> {
        use nix::fcntl::OFlag;
        nix::fcntl::open(
            dir,
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        )
        .ok()
        .map(DirFd)
    }

    /// The directory's inode number (0 if it cannot be had).
    fn ino(&self) -> u64 {
        nix::sys::stat::fstat(&self.0).map_or(0, |st| st.st_ino)
    }

    /// `rel` may name a file in a subdirectory (`nvme0n1/uuid`).
    fn attr(&self, rel: &str) -> Option<String> {
        use nix::fcntl::OFlag;
        let fd = nix::fcntl::openat(
            &self.0,
            rel,
            OFlag::O_RDONLY | OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        )
        .ok()?;
        read_attr(std::fs::File::from(fd))
    }
}

/// An open attribute's value (at most a page, as sysfs serves) without the trailing newline.
/// One read: sysfs hands over the whole attribute in the first read, so there is no size
/// probe, no growing buffer and no read just to see the end — a full scan reads thousands of
/// these, and on a slow guest each system call is tens of microseconds.
fn read_attr(mut f: std::fs::File) -> Option<String> {
    use std::io::Read;
    let mut buf = [0u8; 4096];
    let n = loop {
        match f.read(&mut buf) {
            Ok(n) => break n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return None,
        }
    };
    let text = std::str::from_utf8(&buf[..n]).ok()?;
    Some(text.trim_end_matches('\n').to_string())
}

fn read_dir_names(dir: &Path) -> Vec<String> {
    match std::fs::read_dir(dir) {
        Ok(rd) => rd
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .collect(),
        Err(_) => Vec::new(),
    }
}

/// The namespace `block` below the open directory `parent` (at `parent_path`).
fn read_namespace(
    parent: &DirFd,
    parent_path: &Path,
    block: &str,
    subsysnqn: &str,
    multipath: bool,
) -> Option<Namespace> {
    // A namespace being torn down can vanish between readdir and read: skip it, it is gone.
    let nsid = parent.attr(&format!("{block}/nsid"))?.trim().parse().ok()?;
    let id = |n: &str| {
        parent
            .attr(&format!("{block}/{n}"))
            .filter(|v| !v.is_empty() && !is_zero_id(v))
    };
    Some(Namespace {
        block: block.to_string(),
        subsysnqn: subsysnqn.to_string(),
        nsid,
        uuid: id("uuid"),
        nguid: id("nguid"),
        dir: parent_path.join(block),
        controllers: Vec::new(),
        multipath,
    })
}

/// Reads every controller, subsystem and namespace. Tolerates entries that disappear mid-walk
/// (the kernel tears them down asynchronously).
pub fn scan(host: &Host) -> Topology {
    let names: Vec<String> = read_dir_names(&host.path(CLASS_NVME))
        .into_iter()
        .filter(|n| parse_ctrl_name(n).is_some())
        .collect();
    read_topology(host, &names, false)
}

/// Only the controllers `names` (those that exist), the multipath heads their paths reach and
/// their own namespaces: what one volume's view needs. Its cost follows the volume, not the
/// host — a full [`scan`] of a thousand namespaces is thousands of reads. A head shows only the
/// controllers among `names` that reach it. A name given twice (two volumes sharing a
/// controller) is read once.
pub fn scan_controllers(host: &Host, names: &[String]) -> Topology {
    let names: std::collections::BTreeSet<&String> = names
        .iter()
        .filter(|n| parse_ctrl_name(n).is_some())
        .collect();
    let names: Vec<String> = names.into_iter().cloned().collect();
    read_topology(host, &names, true)
}

fn read_topology(host: &Host, names: &[String], only_reached: bool) -> Topology {
    let class = host.path(CLASS_NVME);
    let mut controllers = BTreeMap::new();
    let mut namespaces = Vec::new();
    // head name -> controllers reaching it, from the path nodes
    let mut head_paths: HashMap<String, Vec<String>> = HashMap::new();
    for (c, heads, own) in par_map(names, |n| read_controller(&class, n))
        .into_iter()
        .flatten()
    {
        for h in heads {
            head_paths.entry(h).or_default().push(c.name.clone());
        }
        namespaces.extend(own);
        controllers.insert(c.name.clone(), c);
    }
    let subsys_class = host.path(CLASS_SUBSYS);
    let subsystems: Vec<String> = if only_reached {
        // Head `nvme<S>n<H>` belongs to subsystem `nvme-subsys<S>` (drivers/nvme/host/core.c).
        let reached: std::collections::BTreeSet<String> = head_paths
            .keys()
            .filter_map(|h| parse_ns_name(h))
            .map(|(s, _)| format!("nvme-subsys{s}"))
            .collect();
        reached.into_iter().collect()
    } else {
        read_dir_names(&subsys_class)
    };
    let wanted = |head: &str| !only_reached || head_paths.contains_key(head);
    for mut ns in par_map(&subsystems, |s| read_heads(&subsys_class, s, &wanted))
        .into_iter()
        .flatten()
    {
        let mut ctrls = head_paths.remove(&ns.block).unwrap_or_default();
        ctrls.sort();
        ns.controllers = ctrls;
        namespaces.push(ns);
    }
    namespaces.sort_by(|a, b| a.block.cmp(&b.block));
    Topology::new(controllers, namespaces)
}

/// [`Controller::ino`] of controller `name`, read alone (0 when it is gone).
pub fn controller_ino(host: &Host, name: &str) -> u64 {
    DirFd::open(&host.path(CLASS_NVME).join(name)).map_or(0, |d| d.ino())
}

/// Controller `name`, the heads its hidden path nodes reach, and (without native multipath)
/// its own namespaces.
fn read_controller(class: &Path, name: &str) -> Option<(Controller, Vec<String>, Vec<Namespace>)> {
    let instance = parse_ctrl_name(name)?;
    let dir = class.join(name);
    let fd = DirFd::open(&dir)?;
    let subsysnqn = fd.attr("subsysnqn")?;
    let mut heads = Vec::new();
    let mut own = Vec::new();
    for child in read_dir_names(&dir) {
        if let Some((s, _, h)) = parse_path_name(&child) {
            heads.push(format!("nvme{s}n{h}"));
        } else if parse_ns_name(&child).is_some() {
            if let Some(mut ns) = read_namespace(&fd, &dir, &child, &subsysnqn, false) {
                ns.controllers.push(name.to_string());
                own.push(ns);
            }
        }
    }
    let c = Controller {
        instance,
        transport: fd.attr("transport").unwrap_or_default(),
        address: parse_address(&fd.attr("address").unwrap_or_default()),
        state: CtrlState::parse(&fd.attr("state").unwrap_or_default()),
        cntlid: fd.attr("cntlid").and_then(|s| s.trim().parse().ok()),
        hostnqn: fd.attr("hostnqn"),
        ino: fd.ino(),
        subsysnqn,
        name: name.to_string(),
    };
    Some((c, heads, own))
}

/// The multipath heads of subsystem `sname` that are `wanted`.
fn read_heads(
    subsys_class: &Path,
    sname: &str,
    wanted: &(dyn Fn(&str) -> bool + Sync),
) -> Vec<Namespace> {
    let dir = subsys_class.join(sname);
    let Some(fd) = DirFd::open(&dir) else {
        return Vec::new();
    };
    let Some(nqn) = fd.attr("subsysnqn") else {
        return Vec::new();
    };
    read_dir_names(&dir)
        .into_iter()
        .filter(|child| parse_ns_name(child).is_some() && wanted(child))
        .filter_map(|child| read_namespace(&fd, &dir, &child, &nqn, true))
        .collect()
}

/// `items.iter().map(f)`, in order, on up to four threads when there are enough items to pay
/// for them: a full rescan of hundreds of subsystems is thousands of small sysfs reads, each
/// a syscall round trip, and the goal for 1,000 namespaces is 20 ms.
fn par_map<T: Sync, R: Send>(items: &[T], f: impl Fn(&T) -> R + Sync) -> Vec<R> {
    const MIN_PER_THREAD: usize = 32;
    // Asked once: std reads the cgroup's CPU quota files on every call.
    static CPUS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    let by_items = items.len() / MIN_PER_THREAD;
    if by_items < 2 {
        return items.iter().map(f).collect();
    }
    let cpus = *CPUS.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let threads = cpus.min(4).min(by_items);
    if threads < 2 {
        return items.iter().map(f).collect();
    }
    let f = &f;
    std::thread::scope(|s| {
        let parts: Vec<_> = items
            .chunks(items.len().div_ceil(threads))
            .map(|part| s.spawn(move || part.iter().map(f).collect::<Vec<R>>()))
            .collect();
        parts
            .into_iter()
            .flat_map(|p| p.join().expect("a sysfs scan thread panicked"))
            .collect()
    })
}

/// The by-id names udev gives a namespace from the kernel's `wwid`, best first:
/// `nvme-uuid.<uuid>`, else `nvme-eui.<nguid>` (the kernel's own order). Empty when the
/// namespace has neither.
fn id_link_names(ns: &Namespace) -> Vec<String> {
    let mut names = Vec::new();
    if let Some(u) = &ns.uuid {
        names.push(format!("nvme-uuid.{u}"));
    }
    if let Some(g) = &ns.nguid {
        names.push(format!("nvme-eui.{}", normalize_id(g)));
    }
    names
}

/// Whether `/dev/disk/by-id/<link>` resolves to the namespace's device node, and it exists.
fn points_to(host: &Host, link: &str, ns: &Namespace) -> bool {
    let by_id = host.path(BY_ID);
    let dev = host.path(crate::host::paths::DEV).join(&ns.block);
    // udev's links are relative (`../../nvme0n1`) and /dev/disk/by-id is a plain directory:
    // resolved by name, one readlink, not a canonicalize that reads every path component.
    std::fs::read_link(by_id.join(link)).is_ok_and(|target| {
        let resolved = if target.is_absolute() {
            host.path(&target)
        } else {
            by_id.join(&target)
        };
        lexical(&resolved) == dev && dev.exists()
    })
}

/// The udev-made stable name of a namespace, if udev has made it: the link
/// 60-persistent-storage.rules names after the kernel's `wwid` (`nvme-$attr{wwid}`), which is
/// `nvme-uuid.<uuid>`, else `nvme-eui.<nguid>`, else — a namespace with neither — whatever its
/// `wwid` says (`eui.<eui64>`, or `nvme.<vid>-<serial>-<model>-<nsid>`), read from sysfs.
/// Never `nvme-<model>_<serial>`, which every namespace of the subsystem claims, nor its
/// `_<nsid>` form: a serial can itself end in `_<n>`, so the two cannot be told apart by name.
pub fn stable_link(host: &Host, ns: &Namespace) -> Option<String> {
    let mut names = id_link_names(ns);
    if names.is_empty() {
        names.push(format!("nvme-{}", attr(&ns.dir, "wwid")?));
    }
    names
        .into_iter()
        .find(|p| points_to(host, p, ns))
        .map(|p| format!("{BY_ID}/{p}"))
}

/// Whether udev has made the link a connect promises ([`stable_link`]). udev makes a
/// device's links one at a time, in the order of its own hash table, so the first link to
/// appear is not necessarily this one.
pub fn stable_link_made(host: &Host, ns: &Namespace) -> bool {
    stable_link(host, ns).is_some()
}

/// `p` with `.` and `..` resolved by name.
fn lexical(p: &Path) -> PathBuf {
    use std::path::Component;
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(parse_ns_name("nvme0n1"), Some((0, 1)));
        assert_eq!(parse_ns_name("nvme12n345"), Some((12, 345)));
        assert_eq!(parse_ns_name("nvme0c0n1"), None);
        assert_eq!(parse_ns_name("nvme0"), None);
        assert_eq!(parse_ns_name("nvme-subsys0"), None);
        assert_eq!(parse_path_name("nvme0c1n2"), Some((0, 1, 2)));
        assert_eq!(parse_path_name("nvme0n1"), None);
        assert_eq!(parse_ctrl_name("nvme7"), Some(7));
        assert_eq!(parse_ctrl_name("nvme7n1"), None);
        assert_eq!(parse_ctrl_name("nvme-fabrics"), None);
    }

    #[test]
    fn states() {
        for s in [
            "new",
            "live",
            "resetting",
            "connecting",
            "deleting",
            "deleting (no IO)",
            "dead",
        ] {
            assert_eq!(CtrlState::parse(&format!("{s}\n")).as_str(), s);
        }
        assert_eq!(CtrlState::parse("bogus"), CtrlState::Unknown);
    }

    #[test]
    fn par_map_keeps_order_and_every_item() {
        for n in [0, 1, 63, 64, 65, 129, 1000] {
            let items: Vec<usize> = (0..n).collect();
            let out = par_map(&items, |i| i * 2);
            assert_eq!(
                out,
                items.iter().map(|i| i * 2).collect::<Vec<_>>(),
                "{n} items"
            );
        }
    }

    #[test]
    fn ids_normalize() {
        assert_eq!(
            normalize_id("0AB1E5A0-1111-2222-3333-444455556666"),
            "0ab1e5a0111122223333444455556666"
        );
        assert!(is_zero_id("00000000-0000-0000-0000-000000000000"));
    }
}

/// Against a tree captured from Linux 6.1 in the VM (tests/vm/cases/40-nvme.sh): nvmet-tcp
/// target, native multipath, two paths to one subsystem with two namespaces.
#[cfg(test)]
mod captured {
    use super::*;

    fn fixture() -> std::path::PathBuf {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/nvme-6.1-multipath")
    }

    #[test]
    fn fabrics_replies_and_addresses() {
        let replies = std::fs::read_to_string(fixture().join("fabrics-replies")).unwrap();
        let r: Vec<FabricsReply> = replies
            .lines()
            .map(|l| parse_fabrics_reply(l).unwrap())
            .collect();
        assert_eq!(
            r,
            vec![
                FabricsReply {
                    instance: 0,
                    cntlid: 1
                },
                FabricsReply {
                    instance: 1,
                    cntlid: 2
                }
            ]
        );
        let a = std::fs::read_to_string(fixture().join("sys/class/nvme/nvme1/address")).unwrap();
        let a = parse_address(&a);
        assert_eq!(
            (a.traddr.as_str(), a.trsvcid.as_str(), a.src_addr.as_deref()),
            ("127.0.0.1", "4701", Some("127.0.0.1"))
        );
        assert_eq!(a.host_iface, None);
    }

    #[test]
    fn stable_links_are_resolved_by_name() {
        let root = tempfile::tempdir().unwrap();
        let host = Host::new(root.path());
        let by_id = host.path(BY_ID);
        std::fs::create_dir_all(&by_id).unwrap();
        for d in ["nvme0n1", "nvme1n1"] {
            std::fs::write(host.path("/dev").join(d), "").unwrap();
        }
        let link = |name: &str, to: &str| std::os::unix::fs::symlink(to, by_id.join(name)).unwrap();
        link("nvme-uuid.aaaa", "../../nvme0n1");
        link("nvme-eui.bbbb", "../../nvme1n1");
        // Model `Linux`, serial `serial_1`: udev's subsystem-wide link and its `_<nsid>` form.
        link("nvme-Linux_serial_1", "/dev/nvme1n1");
        link("nvme-Linux_serial_1_1", "/dev/nvme1n1");
        // A namespace with neither uuid nor nguid: its wwid, in its sysfs directory, names the link.
        let ns_dir = root
            .path()
            .join("sys/class/nvme-subsystem/nvme-subsys1/nvme1n1");
        std::fs::create_dir_all(&ns_dir).unwrap();
        let wwid = "nvme.0000-73657269616c5f31-4c696e7578-00000001";
        std::fs::write(ns_dir.join("wwid"), format!("{wwid}\n")).unwrap();
        let ns = |block: &str, uuid: Option<&str>, nguid: Option<&str>| Namespace {
            block: block.into(),
            subsysnqn: "nqn.2024-01.io.volfence.test:links".into(),
            nsid: 1,
            uuid: uuid.map(Into::into),
            nguid: nguid.map(Into::into),
            dir: ns_dir.clone(),
            controllers: vec![],
            multipath: true,
        };
        assert_eq!(
            stable_link(&host, &ns("nvme0n1", Some("aaaa"), Some("bbbb"))).as_deref(),
            Some("/dev/disk/by-id/nvme-uuid.aaaa")
        );
        // The eui link names nvme1n1: a uuid link pointing elsewhere is never taken.
        assert_eq!(
            stable_link(&host, &ns("nvme1n1", Some("aaaa"), Some("bbbb"))).as_deref(),
            Some("/dev/disk/by-id/nvme-eui.bbbb")
        );
        // No ids: not yet made, the model_serial links (absolute targets, under the host's
        // root) point here but are not taken, even the one that ends in `_<nsid>`.
        assert_eq!(stable_link(&host, &ns("nvme1n1", None, None)), None);
        assert!(!stable_link_made(&host, &ns("nvme1n1", None, None)));
        link(&format!("nvme-{wwid}"), "../../nvme1n1");
        assert_eq!(
            stable_link(&host, &ns("nvme1n1", None, None)),
            Some(format!("/dev/disk/by-id/nvme-{wwid}"))
        );
        // What a connect waits for: the id link (other links to the device do not count).
        assert!(stable_link_made(&host, &ns("nvme0n1", Some("aaaa"), None)));
        assert!(!stable_link_made(&host, &ns("nvme0n1", Some("cccc"), None)));
        assert!(stable_link_made(&host, &ns("nvme1n1", None, Some("bbbb"))));
        assert!(stable_link_made(&host, &ns("nvme1n1", None, None)));
        std::fs::remove_file(by_id.join("nvme-eui.bbbb")).unwrap();
        assert!(!stable_link_made(&host, &ns("nvme1n1", None, Some("bbbb"))));
        // The wwid link points at nvme1n1: not taken for another device with that wwid.
        assert_eq!(stable_link(&host, &ns("nvme9n1", None, None)), None);
        assert_eq!(
            lexical(Path::new("/a/dev/disk/by-id/./../../nvme0n1")),
            PathBuf::from("/a/dev/nvme0n1")
        );
    }

    #[test]
    fn one_volume_view_reads_only_its_controllers() {
        let host = Host::new(fixture());
        let nqn = "nqn.2024-01.io.volfence.vm:capture";
        let full = scan(&host);
        let t = scan_controllers(&host, &["nvme1".to_string(), "nvme1".to_string()]);
        assert_eq!(t.controllers.keys().collect::<Vec<_>>(), vec!["nvme1"]);
        assert_eq!(t.controllers["nvme1"], full.controllers["nvme1"]);
        // Both heads, each as reached by nvme1 only; otherwise as the full scan reads them.
        assert_eq!(t.namespaces.len(), 2);
        for ns in &t.namespaces {
            let mut whole = full
                .namespaces
                .iter()
                .find(|f| f.block == ns.block)
                .unwrap()
                .clone();
            whole.controllers = vec!["nvme1".to_string()];
            assert_eq!(*ns, whole);
        }
        assert_eq!(t.by_nsid(nqn, 2).next().unwrap().block, "nvme0n2");
        // Gone or never there: an empty view, not an error; names that are not controllers are
        // not looked up at all.
        let none = scan_controllers(&host, &["nvme9".to_string(), "../nvme-subsys0".to_string()]);
        assert!(none.controllers.is_empty() && none.namespaces.is_empty());
    }

    #[test]
    fn multipath_topology() {
        let t = scan(&Host::new(fixture()));
        let nqn = "nqn.2024-01.io.volfence.vm:capture";
        assert_eq!(t.controllers.len(), 2);
        let c = &t.controllers["nvme1"];
        assert_eq!(
            (c.state, c.cntlid, c.transport.as_str()),
            (CtrlState::Live, Some(2), "tcp")
        );
        assert_eq!(c.subsysnqn, nqn);
        assert_eq!(t.namespaces.len(), 2, "two heads, not four path nodes");
        let ns1 = t.by_nsid(nqn, 1).next().unwrap();
        assert_eq!(ns1.block, "nvme0n1");
        assert!(ns1.multipath);
        assert_eq!(
            ns1.controllers,
            vec!["nvme0".to_string(), "nvme1".to_string()]
        );
        assert_eq!(ns1.size_bytes(), 64 << 20);
        assert_eq!(ns1.nguid, None, "nvmet leaves the NGUID empty");
        let by_uuid = t
            .by_id(nqn, "20E0E7E9-AD82-494E-A8DA-A85BC6317082")
            .next()
            .unwrap();
        assert_eq!(by_uuid.block, "nvme0n1");
        assert_eq!(t.by_nsid(nqn, 2).next().unwrap().block, "nvme0n2");
        assert!(t.by_nsid(nqn, 3).next().is_none());
        assert!(t.by_nsid("nqn.2024-01.io.other:x", 1).next().is_none());
    }
}
