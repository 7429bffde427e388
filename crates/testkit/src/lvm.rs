//! A fake LVM (the `lvs`/`lvcreate`/`lvremove` commands) and a fake mount(2), for tests. They
//! behave like the real ones where the agent can tell: `lvs` prints LVM's JSON report (the format
//! captured in tests/fixtures/lvm/), unknown VGs and LVs fail with LVM's exit code and message, a
//! snapshot is a point-in-time copy of its origin's device, thick snapshots fill their COW area
//! as the origin is written, and mounts appear in the fake `/proc/self/mountinfo`.
//!
//! A fake device file is a 4 KiB superblock (ext4 or xfs magic) followed by the filesystem's
//! files as JSON, which the fake mount writes out read-only under the mount point.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Mutex;

use volfence::fence::FenceGuard;
use volfence::host::Host;
use volfence::lvm::{CmdOutput, LvmRunner, LvmTeardown};
use volfence::snapshot::mount::{Fs, MountTeardown, Mounter, MOUNTINFO};

#[derive(Debug, Clone)]
struct Lv {
    vg: String,
    name: String,
    attr: String,
    size: u64,
    origin: String,
    pool: String,
    data_percent: Option<f64>,
    tags: Vec<String>,
}

pub struct FakeLvm {
    host: Host,
    lvs: Mutex<Vec<Lv>>,
    /// argv of every call, for "exactly once" checks.
    pub calls: Mutex<Vec<Vec<String>>>,
}

fn ok(stdout: String) -> std::io::Result<CmdOutput> {
    Ok(CmdOutput {
        code: 0,
        stdout,
        stderr: String::new(),
    })
}

fn fail(code: i32, stderr: String) -> std::io::Result<CmdOutput> {
    Ok(CmdOutput {
        code,
        stdout: String::new(),
        stderr,
    })
}

/// Bytes of a fake device holding `files` on filesystem `fs`.
pub fn fake_fs_image(fs: Fs, files: &BTreeMap<String, String>) -> Vec<u8> {
    let mut img = vec![0u8; 4096];
    match fs {
        Fs::Xfs => img[..4].copy_from_slice(b"XFSB"),
        Fs::Ext4 => {
            img[1080] = 0x53;
            img[1081] = 0xEF;
        }
    }
    img.extend(serde_json::to_vec(files).expect("map serializes"));
    img
}

fn read_files(dev: &Path) -> std::io::Result<BTreeMap<String, String>> {
    let b = std::fs::read(dev)?;
    if b.len() < 4096 {
        return Ok(BTreeMap::new());
    }
    serde_json::from_slice(&b[4096..]).map_err(std::io::Error::other)
}

impl FakeLvm {
    pub fn new(host: Host) -> FakeLvm {
        FakeLvm {
            host,
            lvs: Mutex::new(Vec::new()),
            calls: Mutex::new(Vec::new()),
        }
    }

    fn dev(&self, vg: &str, lv: &str) -> std::path::PathBuf {
        self.host.path(volfence::host::paths::DEV).join(vg).join(lv)
    }

    /// An LV with a filesystem holding `files`; `thin` puts it in pool "pool".
    pub fn add_lv(
        &self,
        vg: &str,
        name: &str,
        size: u64,
        thin: bool,
        fs: Fs,
        files: &[(&str, &str)],
    ) {
        let files: BTreeMap<String, String> = files
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let dev = self.dev(vg, name);
        std::fs::create_dir_all(dev.parent().unwrap()).unwrap();
        std::fs::write(&dev, fake_fs_image(fs, &files)).unwrap();
        self.lvs.lock().unwrap().push(Lv {
            vg: vg.into(),
            name: name.into(),
            attr: if thin {
                "Vwi-aotz--".into()
            } else {
                "-wi-ao----".into()
            },
            size,
            origin: String::new(),
            pool: if thin { "pool".into() } else { String::new() },
            data_percent: thin.then_some(10.0),
            tags: Vec::new(),
        });
    }

    /// Writes a file into an LV's filesystem (as the application on the origin would); every
    /// thick snapshot of it uses `cow_per_write` more percent of its COW area.
    pub fn write_file(&self, vg: &str, lv: &str, name: &str, content: &str, cow_per_write: f64) {
        let dev = self.dev(vg, lv);
        let mut files = read_files(&dev).unwrap();
        files.insert(name.into(), content.into());
        let head = std::fs::read(&dev).unwrap()[..4096].to_vec();
        let mut img = head;
        img.extend(serde_json::to_vec(&files).unwrap());
        std::fs::write(&dev, img).unwrap();
        for s in self.lvs.lock().unwrap().iter_mut() {
            if s.vg == vg && s.origin == lv && s.attr.starts_with('s') {
                let p = s.data_percent.unwrap_or(0.0) + cow_per_write;
                s.data_percent = Some(p.min(100.0));
                if p >= 100.0 {
                    // LVM invalidates a full snapshot.
                    s.attr.replace_range(4..5, "I");
                }
            }
        }
    }

    pub fn names(&self) -> Vec<String> {
        self.lvs
            .lock()
            .unwrap()
            .iter()
            .map(|l| format!("{}/{}", l.vg, l.name))
            .collect()
    }

    fn report(&self, vg: Option<&str>) -> String {
        let lvs = self.lvs.lock().unwrap();
        let rows: Vec<String> = lvs
            .iter()
            .filter(|l| vg.is_none_or(|v| v == l.vg))
            .map(|l| {
                format!(
                    "{{\"vg_name\":\"{}\", \"lv_name\":\"{}\", \"lv_attr\":\"{}\", \"lv_size\":\"{}\", \"origin\":\"{}\", \"pool_lv\":\"{}\", \"data_percent\":\"{}\", \"lv_path\":\"/dev/{}/{}\", \"lv_tags\":\"{}\"}}",
                    l.vg, l.name, l.attr, l.size, l.origin, l.pool,
                    l.data_percent.map(|p| format!("{p:.2}")).unwrap_or_default(),
                    l.vg, l.name, l.tags.join(",")
                )
            })
            .collect();
        format!(
            "  {{\n      \"report\": [\n          {{\n              \"lv\": [\n                  {}\n              ]\n          }}\n      ]\n  }}\n",
            rows.join(",\n                  ")
        )
    }
}

impl LvmRunner for FakeLvm {
    fn lvs(&self, argv: &[String]) -> std::io::Result<CmdOutput> {
        self.run_tool("lvs", argv)
    }
    fn lvcreate(&self, _guard: &FenceGuard, argv: &[String]) -> std::io::Result<CmdOutput> {
        self.run_tool("lvcreate", argv)
    }
}

impl LvmTeardown for FakeLvm {
    fn lvremove(&self, argv: &[String]) -> std::io::Result<CmdOutput> {
        self.run_tool("lvremove", argv)
    }
}

impl FakeLvm {
    /// What the tool would do. Fixtures call it directly for what another process (or an older
    /// agent) did; the agent reaches it only through the traits.
    pub fn run_tool(&self, tool: &str, argv: &[String]) -> std::io::Result<CmdOutput> {
        if argv.first().map(String::as_str) != Some(tool) {
            return fail(127, format!("fake lvm: {argv:?} is not a {tool} command"));
        }
        self.calls.lock().unwrap().push(argv.to_vec());
        let arg = |flag: &str| {
            argv.iter()
                .position(|a| a == flag)
                .and_then(|i| argv.get(i + 1))
                .cloned()
        };
        match argv[0].as_str() {
            "lvs" => {
                let vg = argv.last().filter(|a| {
                    !a.starts_with('-') && !a.contains(',') && *a != "json" && *a != "b"
                });
                if let Some(vg) = vg {
                    if !self.lvs.lock().unwrap().iter().any(|l| &l.vg == vg) {
                        return fail(5, format!("  Volume group \"{vg}\" not found\n  Cannot process volume group {vg}\n"));
                    }
                }
                ok(self.report(vg.map(String::as_str)))
            }
            "lvcreate" => {
                let name = arg("-n").unwrap_or_default();
                let origin = argv.last().cloned().unwrap_or_default();
                let Some((vg, lv)) = origin.split_once('/') else {
                    return fail(3, format!("  Invalid origin {origin}\n"));
                };
                let mut lvs = self.lvs.lock().unwrap();
                let Some(o) = lvs.iter_mut().find(|l| l.vg == vg && l.name == lv) else {
                    return fail(5, format!("  Failed to find logical volume \"{origin}\"\n"));
                };
                if o.attr.starts_with('-') {
                    o.attr.replace_range(0..1, "o");
                }
                let thin = o.attr.starts_with('V');
                let size = o.size;
                if lvs.iter().any(|l| l.vg == vg && l.name == name) {
                    return fail(
                        5,
                        format!(
                            "  Logical Volume \"{name}\" already exists in volume group \"{vg}\"\n"
                        ),
                    );
                }
                let thick = arg("-L").or(arg("-l"));
                if !thin && thick.is_none() {
                    return fail(
                        3,
                        "  Please specify either size or extents (not both).\n".into(),
                    );
                }
                lvs.push(Lv {
                    vg: vg.into(),
                    name: name.clone(),
                    attr: if thin {
                        "Vwi-a-tz-k".into()
                    } else {
                        "swi-a-s---".into()
                    },
                    size,
                    origin: lv.into(),
                    pool: if thin { "pool".into() } else { String::new() },
                    data_percent: Some(0.0),
                    tags: arg("--addtag").into_iter().collect(),
                });
                drop(lvs);
                // Point in time: the snapshot's device holds the origin's content as of now.
                std::fs::copy(self.dev(vg, lv), self.dev(vg, &name))?;
                ok(format!("  Logical volume \"{name}\" created.\n"))
            }
            "lvremove" => {
                let target = argv.last().cloned().unwrap_or_default();
                let (vg, lv) = target.split_once('/').unwrap_or(("", ""));
                let mut lvs = self.lvs.lock().unwrap();
                let Some(i) = lvs.iter().position(|l| l.vg == vg && l.name == lv) else {
                    return fail(5, format!("  Failed to find logical volume \"{target}\"\n"));
                };
                lvs.remove(i);
                let _ = std::fs::remove_file(self.dev(vg, lv));
                ok(format!("  Logical volume \"{lv}\" successfully removed.\n"))
            }
            other => fail(127, format!("fake lvm: no such command {other}")),
        }
    }
}

/// Mounts a fake device by writing its files under the target (read-only) and a mountinfo line.
pub struct FakeMounter {
    host: Host,
    /// Mount points that refuse a plain unmount (busy), to exercise the lazy fallback.
    pub busy: Mutex<Vec<String>>,
    next_id: Mutex<u32>,
}

impl FakeMounter {
    pub fn new(host: Host) -> FakeMounter {
        let mi = host.path(MOUNTINFO);
        std::fs::create_dir_all(mi.parent().unwrap()).unwrap();
        if !mi.exists() {
            std::fs::write(
                &mi,
                "22 1 0:21 / /run rw,nosuid,nodev shared:5 - tmpfs tmpfs rw,size=1G\n",
            )
            .unwrap();
        }
        FakeMounter {
            host,
            busy: Mutex::new(Vec::new()),
            next_id: Mutex::new(100),
        }
    }

    fn host_path(&self, p: &Path) -> String {
        format!(
            "/{}",
            p.strip_prefix(self.host.root()).unwrap_or(p).display()
        )
    }
}

impl Mounter for FakeMounter {
    fn mount_ro(
        &self,
        _guard: &FenceGuard,
        dev: &Path,
        target: &Path,
        fs: Fs,
    ) -> std::io::Result<()> {
        let files = read_files(dev)?;
        for (name, content) in &files {
            let p = target.join(name);
            std::fs::write(&p, content)?;
            let mut perm = std::fs::metadata(&p)?.permissions();
            perm.set_readonly(true);
            std::fs::set_permissions(&p, perm)?;
        }
        let mut id = self.next_id.lock().unwrap();
        *id += 1;
        let line = format!(
            "{} 22 253:{} / {} ro,nosuid,nodev,noexec - {} {} ro,{}\n",
            *id,
            *id,
            self.host_path(target),
            fs.as_str(),
            self.host_path(dev),
            fs.ro_options()
        );
        let mi = self.host.path(MOUNTINFO);
        let mut text = std::fs::read_to_string(&mi)?;
        text.push_str(&line);
        std::fs::write(&mi, text)
    }
}

impl MountTeardown for FakeMounter {
    fn umount(&self, target: &Path, lazy: bool) -> std::io::Result<()> {
        let t = self.host_path(target);
        if !lazy && self.busy.lock().unwrap().contains(&t) {
            return Err(std::io::Error::from_raw_os_error(nix::libc::EBUSY));
        }
        let mi = self.host.path(MOUNTINFO);
        let text = std::fs::read_to_string(&mi)?;
        let entries = volfence::snapshot::mount::parse_mountinfo(&text);
        if !entries.iter().any(|e| e.mount_point == t) {
            return Err(std::io::Error::from_raw_os_error(nix::libc::EINVAL));
        }
        let kept: String = text
            .lines()
            .filter(|l| {
                volfence::snapshot::mount::parse_mountinfo(l)
                    .first()
                    .is_none_or(|e| e.mount_point != t)
            })
            .map(|l| format!("{l}\n"))
            .collect();
        std::fs::write(&mi, kept)?;
        if let Ok(rd) = std::fs::read_dir(target) {
            for e in rd.flatten() {
                let _ = std::fs::remove_file(e.path());
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use volfence::lvm::{lvs_argv, parse_lvs};

    const ORIGINS: &str = include_str!("../../../tests/fixtures/lvm/lvs-origins.json");
    const NO_VG_STDERR: &str = include_str!("../../../tests/fixtures/lvm/lvs-novg.stderr");

    #[test]
    fn the_fake_prints_what_lvm_prints() {
        let dir = tempfile::tempdir().unwrap();
        let fake = FakeLvm::new(Host::new(dir.path()));
        fake.add_lv("vgsnap", "ext", 100663296, false, Fs::Ext4, &[]);
        let out = fake.lvs(&lvs_argv(Some("vgsnap"))).unwrap();
        let real_line = ORIGINS
            .lines()
            .find(|l| l.contains("\"lv_name\":\"ext\""))
            .unwrap();
        assert!(
            out.stdout.contains(real_line.trim().trim_end_matches(',')),
            "{}",
            out.stdout
        );
        assert_eq!(
            parse_lvs(&out.stdout).unwrap(),
            vec![parse_lvs(ORIGINS).unwrap()[0].clone()]
        );
        let miss = fake.lvs(&lvs_argv(Some("novg"))).unwrap();
        assert_eq!((miss.code, miss.stderr.as_str()), (5, NO_VG_STDERR));
    }
}
