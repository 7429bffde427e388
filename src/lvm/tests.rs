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
    for bad in ["", "%ORIGIN", "20%", "20%BOGUS", "M", "12Q", "1,2G", "-5M"] {
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
        ["lvcreate", "-y", "-s", "-n", "vfsnap-1", "-L", "8M", "vg/data"]
    );
    assert_eq!(
        lvcreate_snapshot_argv("vg", "thin", "vfsnap-2", None),
        ["lvcreate", "-y", "-s", "-n", "vfsnap-2", "-kn", "-ay", "vg/thin"]
    );
    assert_eq!(
        lvremove_argv("vg", "vfsnap-1"),
        ["lvremove", "-y", "-f", "vg/vfsnap-1"]
    );
    assert_eq!(lvs_argv(Some("vg")).last().unwrap(), "vg");
}
