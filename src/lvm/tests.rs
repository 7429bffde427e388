use super::*;

#[test]
fn names_follow_lvm_rules() {
    for ok in ["vg0", "data", "a+b_c.d-e", "vfsnap-r1"] {
        validate_name("LV name", ok).unwrap();
    }
    let long = "x".repeat(128);
    for (bad, why) in [
        ("", "1 to 127"),
        (long.as_str(), "1 to 127"),
        ("-data", "start with '-'"),
        ("..", "not names"),
        ("a/b", "only A-Z"),
        ("a b", "only A-Z"),
        ("snapshot", "reserved"),
        ("pvmove0", "reserved"),
        ("data_tmeta", "reserves"),
    ] {
        let e = validate_name("LV name", bad).unwrap_err().to_string();
        assert!(e.contains(why), "{bad:?}: {e}");
        assert!(e.starts_with("LV name"), "{e}");
    }
    // VG names may carry the LV-only reserved words.
    validate_name("VG name", "snapshot").unwrap();
}

#[test]
fn sizes() {
    assert_eq!(
        SnapSize::parse("20%ORIGIN").unwrap(),
        SnapSize::Extents("20%ORIGIN".into())
    );
    assert_eq!(
        SnapSize::parse("512M").unwrap(),
        SnapSize::Bytes("512M".into())
    );
    assert_eq!(
        SnapSize::parse("1.5g").unwrap(),
        SnapSize::Bytes("1.5g".into())
    );
    for bad in [
        "",
        "%ORIGIN",
        "20%",
        "20%BOGUS",
        "M",
        "12Q",
        "1,2G",
        "-5M",
        "0",
        "0M",
        "0.0G",
        "0%ORIGIN",
        "101%ORIGIN",
        "10%PVS",
        "100s",
        "1.2.3G",
        ".5G",
        "5.G",
        " 5G",
        "5G ",
        "1kib",
    ] {
        assert!(SnapSize::parse(bad).is_err(), "{bad:?}");
    }
}

#[test]
fn argument_vectors() {
    assert_eq!(
        lvcreate_snapshot_argv(
            "vg",
            "data",
            "vfsnap-1",
            Some(&SnapSize::Extents("20%ORIGIN".into()))
        ),
        [
            "lvcreate",
            "-y",
            "-s",
            "-n",
            "vfsnap-1",
            "--addtag",
            "volfence_snapshot",
            "-l",
            "20%ORIGIN",
            "vg/data"
        ]
    );
    assert_eq!(
        lvcreate_snapshot_argv(
            "vg",
            "data",
            "vfsnap-1",
            Some(&SnapSize::Bytes("8M".into()))
        ),
        [
            "lvcreate",
            "-y",
            "-s",
            "-n",
            "vfsnap-1",
            "--addtag",
            "volfence_snapshot",
            "-L",
            "8M",
            "vg/data"
        ]
    );
    assert_eq!(
        lvcreate_snapshot_argv("vg", "thin", "vfsnap-2", None),
        [
            "lvcreate",
            "-y",
            "-s",
            "-n",
            "vfsnap-2",
            "--addtag",
            "volfence_snapshot",
            "-kn",
            "-ay",
            "vg/thin"
        ]
    );
    assert_eq!(
        lvremove_argv("vg", "vfsnap-1"),
        ["lvremove", "-y", "-f", "vg/vfsnap-1"]
    );
    assert_eq!(lvs_argv(Some("vg")).last().unwrap(), "vg");
}

/// `lvs` output captured from LVM 2.03.16 in the VM (tests/vm/cases/50-snapshot.sh).
const ORIGINS: &str = include_str!("../../tests/fixtures/lvm/lvs-origins.json");
const NO_VG_STDERR: &str = include_str!("../../tests/fixtures/lvm/lvs-novg.stderr");

#[test]
fn captured_report_parses() {
    let lvs = parse_lvs(ORIGINS).unwrap();
    let by = |n: &str| lvs.iter().find(|l| l.name == n).unwrap();
    assert_eq!(lvs.len(), 7, "hidden sub-volumes are listed with -a");
    let ext = by("ext");
    assert_eq!(
        (ext.size_bytes, ext.attr.as_str(), ext.path.as_str()),
        (100663296, "-wi-ao----", "/dev/vgsnap/ext")
    );
    assert!(!ext.is_thin() && !ext.is_thick_snapshot() && !ext.is_invalid());
    assert_eq!(ext.data_percent, None);
    let thin = by("thin");
    assert!(thin.is_thin());
    assert_eq!(
        (thin.pool.as_str(), thin.data_percent),
        ("pool", Some(3.81))
    );
    assert_eq!(by("pool").attr.chars().next(), Some('t'));
    assert!(
        parse_lvs("{\"report\": [{\"lv\": [{\"lv_size\": \"12x\"}]}]}")
            .unwrap_err()
            .contains("12x")
    );
    assert!(parse_lvs("not json").is_err());
}

/// Replays LVM's own outputs through the runner: the missing VG is LVM's exit 5 and message.
struct Replay(Vec<(Vec<String>, CmdOutput)>);
impl Replay {
    fn replay(&self, argv: &[String]) -> std::io::Result<CmdOutput> {
        Ok(self
            .0
            .iter()
            .find(|(k, _)| k.as_slice() == argv)
            .map(|(_, o)| o.clone())
            .expect("an expected command"))
    }
}
impl LvmRunner for Replay {
    fn lvs(&self, argv: &[String]) -> std::io::Result<CmdOutput> {
        self.replay(argv)
    }
    fn lvcreate(
        &self,
        _: &crate::fence::FenceGuard,
        argv: &[String],
    ) -> std::io::Result<CmdOutput> {
        self.replay(argv)
    }
}
impl LvmTeardown for Replay {
    fn lvremove(&self, argv: &[String]) -> std::io::Result<CmdOutput> {
        self.replay(argv)
    }
}

#[test]
fn lookups_over_replayed_output() {
    let lvs_vg = |vg: &str| lvs_argv(Some(vg));
    let lvm = Lvm::new(Arc::new(Replay(vec![
        (
            lvs_vg("vgsnap"),
            CmdOutput {
                code: 0,
                stdout: ORIGINS.into(),
                stderr: String::new(),
            },
        ),
        (
            lvs_vg("novg"),
            CmdOutput {
                code: 5,
                stdout: String::new(),
                stderr: NO_VG_STDERR.into(),
            },
        ),
    ])));
    assert_eq!(lvm.get("vgsnap", "xfs").unwrap().size_bytes, 335544320);
    assert_eq!(
        lvm.get("vgsnap", "nope").unwrap_err().to_string(),
        "logical volume vgsnap/nope does not exist"
    );
    assert_eq!(
        lvm.get("novg", "ext").unwrap_err().to_string(),
        "logical volume novg/ext does not exist"
    );
    assert!(lvm
        .get("vg/x", "ext")
        .unwrap_err()
        .to_string()
        .starts_with("VG name"));
}

#[test]
fn captured_snapshots_report() {
    let lvs = parse_lvs(include_str!("../../tests/fixtures/lvm/lvs-snapshots.json")).unwrap();
    let thick = lvs.iter().find(|l| l.name == "vfsnap-r-kill").unwrap();
    assert!(thick.is_thick_snapshot() && !thick.is_invalid());
    assert_eq!(
        (thick.origin.as_str(), thick.data_percent, thick.size_bytes),
        ("ext", Some(0.02), 50331648)
    );
    let thin = lvs.iter().find(|l| l.name == "capthin").unwrap();
    assert!(thin.is_thin() && !thin.is_thick_snapshot());
    assert_eq!((thin.origin.as_str(), thin.pool.as_str()), ("thin", "pool"));
}
