use super::*;

fn settings(text: &str) -> Result<Settings, ConfigError> {
    let (raw, origins) = parse_str(Path::new("test.toml"), text)?;
    raw.validate("host-a", &origins)
}

#[test]
fn empty_file_gives_documented_defaults() {
    let s = settings("").unwrap();
    assert_eq!(s.node.name, "host-a");
    assert_eq!(s.fence.backend, FenceBackend::Standalone);
    assert_eq!(s.fence.lease_duration, Duration::from_secs(10));
    assert_eq!(s.fence.renew_interval, Duration::from_millis(2500));
    assert_eq!(s.fence.safety_margin, Duration::from_secs(2));
    assert_eq!(s.fence.on_lease_loss, LeaseLossAction::Disconnect);
    assert_eq!(s.dbus, BusSpec::System);
    assert_eq!(s.metrics.listen, Some("127.0.0.1:9477".parse().unwrap()));
    assert_eq!(
        s.snapshots.mount_root,
        PathBuf::from("/run/volfence/snapshots")
    );
}

#[test]
fn durations() {
    assert_eq!(parse_duration("10s").unwrap(), Duration::from_secs(10));
    assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
    assert_eq!(parse_duration("1m30s").unwrap(), Duration::from_secs(90));
    assert_eq!(parse_duration("2h").unwrap(), Duration::from_secs(7200));
    for bad in ["", "10", "s", "10 s", "1.5s", "10sec", "-1s"] {
        assert!(parse_duration(bad).is_err(), "{bad:?} accepted");
    }
}

#[test]
fn typo_in_key_names_file_line_column_and_suggests() {
    let e = settings("[fence]\nbackend = \"standalone\"\nleas_duration = \"10s\"\n").unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, ConfigError::UnknownKey { .. }), "{msg}");
    assert_eq!(
        msg,
        "test.toml:3:1: unknown key `fence.leas_duration` (did you mean `fence.lease_duration`?)"
    );
}

#[test]
fn unknown_section_suggests() {
    let msg = settings("[fense]\nbackend = \"standalone\"\n")
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("unknown key `fense`") && msg.contains("did you mean `fence`"),
        "{msg}"
    );
}

#[test]
fn unknown_key_far_from_everything_has_no_suggestion() {
    let msg = settings("[fence]\nzzzzzzzzzzzzzzzz = 1\n")
        .unwrap_err()
        .to_string();
    assert_eq!(msg, "test.toml:2:1: unknown key `fence.zzzzzzzzzzzzzzzz`");
}

#[test]
fn wrong_type_names_key_and_expectation() {
    let msg = settings("[fence]\nlease_duration = 10\n")
        .unwrap_err()
        .to_string();
    assert!(
        msg.starts_with("test.toml:2:18: `fence.lease_duration`:"),
        "{msg}"
    );
    assert!(msg.contains("duration string"), "{msg}");
    let msg = settings("[fence]\nlease_duration = \"10\"\n")
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("`fence.lease_duration`") && msg.contains("\"10s\""),
        "{msg}"
    );
}

#[test]
fn syntax_error_has_location() {
    let msg = settings("[fence\n").unwrap_err().to_string();
    assert!(msg.starts_with("test.toml:1:"), "{msg}");
    assert!(msg.contains("syntax"), "{msg}");
}

#[test]
fn validation_error_points_at_the_key() {
    let msg = settings("[fence]\nlease_duration = \"10s\"\nrenew_interval = \"5s\"\n")
        .unwrap_err()
        .to_string();
    assert!(
        msg.starts_with("test.toml:3:1: `fence.renew_interval`: 2 × renew_interval"),
        "{msg}"
    );
    let msg = settings("[fence]\nsafety_margin = \"0s\"\n")
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("`fence.safety_margin`: must be greater than 0s"),
        "{msg}"
    );
    let msg = settings("[fence]\non_lease_loss = \"reboot\"\n")
        .unwrap_err()
        .to_string();
    assert!(msg.contains("watchdog_device"), "{msg}");
    let msg = settings("[fence]\non_lease_loss = \"panic\"\n")
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("expected one of \"refuse\", \"disconnect\", \"reboot\", found \"panic\""),
        "{msg}"
    );
}

#[test]
fn node_name_must_be_a_kubernetes_name() {
    for bad in ["Node_A", "-a", "a-", ""] {
        let text = format!("[node]\nname = {bad:?}\n");
        let msg = settings(&text).unwrap_err().to_string();
        assert!(msg.contains("`node.name`"), "{msg}");
    }
    assert_eq!(
        settings("[node]\nname = \"worker-1.rack2\"\n")
            .unwrap()
            .node
            .name,
        "worker-1.rack2"
    );
}

#[test]
fn bus_forms() {
    assert_eq!(
        settings("[dbus]\nbus = \"session\"\n").unwrap().dbus,
        BusSpec::Session
    );
    assert_eq!(
        settings("[dbus]\nbus = \"unix:path=/tmp/b\"\n")
            .unwrap()
            .dbus,
        BusSpec::Address("unix:path=/tmp/b".into())
    );
    assert!(settings("[dbus]\nbus = \"sytem\"\n")
        .unwrap_err()
        .to_string()
        .contains("`dbus.bus`"));
}

#[test]
fn executor_placeholders_are_checked() {
    let ok = settings("[snapshots]\nexecutor = [\"/usr/bin/restic\", \"backup\", \"{mountpoint}\", \"--tag={request_id}\"]\n").unwrap();
    assert_eq!(ok.snapshots.executor.len(), 4);
    let msg = settings("[snapshots]\nexecutor = [\"/bin/x\", \"{mnt}\"]\n")
        .unwrap_err()
        .to_string();
    assert!(msg.contains("unknown placeholder {mnt}"), "{msg}");
    let msg = settings("[snapshots]\nexecutor = [\"restic\"]\n")
        .unwrap_err()
        .to_string();
    assert!(msg.contains("absolute path"), "{msg}");
}

#[test]
fn metrics_can_be_disabled_and_address_checked() {
    assert_eq!(
        settings("[metrics]\nenabled = false\n")
            .unwrap()
            .metrics
            .listen,
        None
    );
    let msg = settings("[metrics]\nlisten = \"localhost\"\n")
        .unwrap_err()
        .to_string();
    assert!(msg.contains("`metrics.listen`"), "{msg}");
}

#[test]
fn dropins_merge_in_name_order_and_errors_name_the_dropin() {
    let dir = tempfile::tempdir().unwrap();
    let main = dir.path().join("config.toml");
    std::fs::write(
        &main,
        "[fence]\nlease_duration = \"20s\"\n[node]\nname = \"a\"\n",
    )
    .unwrap();
    let d = dir.path().join("config.d");
    std::fs::create_dir(&d).unwrap();
    std::fs::write(d.join("20-late.toml"), "[node]\nname = \"c\"\n").unwrap();
    std::fs::write(
        d.join("10-early.toml"),
        "[node]\nname = \"b\"\n[fence]\nsafety_margin = \"3s\"\n",
    )
    .unwrap();
    std::fs::write(d.join("ignored.txt"), "garbage").unwrap();
    let src = Source::Directory { main: main.clone() };
    let loaded = load(&src, "x").unwrap();
    assert_eq!(loaded.settings.node.name, "c");
    assert_eq!(
        loaded.settings.fence.lease_duration,
        Duration::from_secs(20)
    );
    assert_eq!(loaded.settings.fence.safety_margin, Duration::from_secs(3));
    assert_eq!(loaded.files.len(), 3);

    std::fs::write(
        d.join("30-bad.toml"),
        "[fence]\n\nsafety_margin = \"30s\"\n",
    )
    .unwrap();
    let msg = load(&src, "x").unwrap_err().to_string();
    assert!(
        msg.contains("30-bad.toml:3:1: `fence.safety_margin`"),
        "{msg}"
    );
}

#[test]
fn missing_main_file_in_directory_mode_uses_defaults_but_explicit_file_must_exist() {
    let dir = tempfile::tempdir().unwrap();
    let main = dir.path().join("config.toml");
    let loaded = load(&Source::Directory { main: main.clone() }, "h").unwrap();
    assert!(loaded.files.is_empty());
    let msg = load(&Source::File(main), "h").unwrap_err().to_string();
    assert!(
        msg.contains("config.toml: cannot read configuration"),
        "{msg}"
    );
}

#[test]
fn shipped_example_parses_and_documents_every_key() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config.toml.example");
    let text = std::fs::read_to_string(&path).unwrap();
    let loaded = load(&Source::File(path.clone()), "example-host").unwrap();
    let defaults = settings("")
        .unwrap_or_else(|e| panic!("{e}"))
        .with_node("example-host");
    assert_eq!(loaded.settings, defaults);
    // Uncommenting every documented default (keys without a default excepted) changes nothing.
    let no_default = [
        "name",
        "hostnqn",
        "hostid",
        "watchdog_device",
        "kubeconfig",
        "nr_io_queues",
        "queue_size",
        "fast_io_fail_tmo",
        "executor",
        "executor_env",
    ];
    let uncommented: String = text
        .lines()
        .map(|l| match l.strip_prefix('#') {
            Some(rest)
                if rest.starts_with(|c: char| c.is_ascii_lowercase())
                    && rest.contains(" = ")
                    && !no_default
                        .iter()
                        .any(|k| rest.starts_with(&format!("{k} ="))) =>
            {
                rest
            }
            _ => l,
        })
        .map(|l| format!("{l}\n"))
        .collect();
    let (raw, origins) = parse_str(&path, &uncommented).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(raw.validate("example-host", &origins).unwrap(), defaults);
    // every key appears in the example, commented with its default
    for key in KNOWN_KEYS {
        let (section, leaf) = key.split_once('.').unwrap_or((key, ""));
        assert!(
            text.contains(&format!("[{section}]")),
            "section [{section}] not documented"
        );
        if !leaf.is_empty() {
            assert!(
                text.lines().any(|l| l
                    .trim_start_matches('#')
                    .trim_start()
                    .starts_with(&format!("{leaf} ="))),
                "key {key} not documented in config.toml.example"
            );
        }
    }
}

impl Settings {
    fn with_node(mut self, n: &str) -> Self {
        self.node.name = n.into();
        self
    }
}

#[test]
fn durations_are_bounded_with_a_clear_error_never_a_panic() {
    let huge = "\"18446744073709551615s\"";
    for (section, key) in [
        ("fence", "lease_duration"),
        ("fence", "renew_interval"),
        ("fence", "safety_margin"),
        ("fence", "observer_grace"),
        ("daemon", "shutdown_timeout"),
        ("kubernetes", "request_timeout"),
        ("nvme", "connect_timeout"),
        ("snapshots", "executor_timeout"),
    ] {
        let msg = settings(&format!("[{section}]\n{key} = {huge}\n"))
            .unwrap_err()
            .to_string();
        assert!(
            msg.starts_with(&format!("test.toml:2:1: `{section}.{key}`: "))
                && msg.contains("at most")
                || msg.contains(" to "),
            "{msg}"
        );
        assert!(msg.contains("found 18446744073709551615s"), "{msg}");
    }
    assert!(settings("[fence]\nobserver_grace = \"1h\"\n").is_ok());
    assert!(settings("[nvme]\nconnect_timeout = \"1h\"\n").is_ok());
}

#[test]
fn a_relation_between_keys_blames_the_key_the_file_set() {
    let msg = settings("[fence]\nlease_duration = \"3s\"\n")
        .unwrap_err()
        .to_string();
    assert!(
        msg.starts_with("test.toml:2:1: `fence.lease_duration`: 2 × renew_interval"),
        "{msg}"
    );
    let msg = settings("[nvme]\nreconnect_delay = 100\n")
        .unwrap_err()
        .to_string();
    assert!(
        msg.starts_with("test.toml:2:1: `nvme.reconnect_delay`: ctrl_loss_tmo must be -1"),
        "{msg}"
    );
    let msg = settings("[nvme]\nreconnect_delay = 10\nctrl_loss_tmo = 5\n")
        .unwrap_err()
        .to_string();
    assert!(
        msg.starts_with("test.toml:3:1: `nvme.ctrl_loss_tmo`"),
        "{msg}"
    );
}

#[test]
fn a_date_time_value_is_refused_at_its_position() {
    for text in [
        "[node]\nname = 1979-05-27T07:32:00Z\n",
        "[fence]\nlease_duration = 1979-05-27\n",
        "[snapshots]\nexecutor = [\"/bin/x\", 07:32:00]\n",
    ] {
        let msg = settings(text).unwrap_err().to_string();
        assert!(msg.starts_with("test.toml:2:"), "{msg}");
        assert!(msg.contains("date-time"), "{msg}");
        assert!(!msg.contains("merged"), "{msg}");
    }
}

#[test]
fn snapshot_sizes_and_executor_templates_use_the_runtime_parsers() {
    for bad in ["10%PVS", "100s", "0", "101%ORIGIN", "1.2.3G"] {
        let msg = settings(&format!("[snapshots]\ndefault_size = {bad:?}\n"))
            .unwrap_err()
            .to_string();
        assert!(
            msg.starts_with("test.toml:2:1: `snapshots.default_size`: snapshot size"),
            "{msg}"
        );
    }
    let ok = settings("[snapshots]\nexecutor = [\"/bin/echo\", \"{{x}}\", \"{lv}}}\"]\n").unwrap();
    let argv = crate::snapshot::executor::substitute(
        &ok.snapshots.executor,
        &[("lv", "data".to_string())].into_iter().collect(),
    )
    .unwrap();
    assert_eq!(argv, ["/bin/echo", "{x}", "data}"]);
    let msg = settings("[snapshots]\nexecutor = [\"/bin/echo\", \"{x}}\"]\n")
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("unknown placeholder {x} in argument \"{x}}\""),
        "{msg}"
    );
    for text in [
        "[snapshots]\nexecutor = [\"/bin/echo\", \"a\\u0000b\"]\n",
        "[snapshots]\nexecutor = [\"/bin/echo\"]\nexecutor_env = { A = \"x\\u0000\" }\n",
    ] {
        let msg = settings(text).unwrap_err().to_string();
        assert!(msg.contains("NUL"), "{msg}");
    }
}

/// xorshift64*, seeded: the fuzz below is the same on every run.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Random mutations of the shipped example (every default uncommented first): values replaced
/// by hostile ones, lines dropped, duplicated or cut. Nothing may panic, and every error must
/// point at a file, line and column.
#[test]
fn fuzzed_example_configs_never_panic_and_every_error_has_a_position() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config.toml.example");
    let example = std::fs::read_to_string(&path).unwrap();
    let base: Vec<String> = example
        .lines()
        .map(|l| match l.strip_prefix('#') {
            Some(rest)
                if rest.starts_with(|c: char| c.is_ascii_lowercase()) && rest.contains(" = ") =>
            {
                rest.to_string()
            }
            _ => l.to_string(),
        })
        .collect();
    let values = [
        "\"18446744073709551615s\"",
        "\"99999999999999999999999h\"",
        "18446744073709551615",
        "-9223372036854775808",
        "-1",
        "0",
        "\"0s\"",
        "\"\"",
        "\"\\u0000\"",
        "\"\\u202e\"",
        "1979-05-27T07:32:00Z",
        "07:32:00",
        "1.5e308",
        "nan",
        "true",
        "[]",
        "[\"/bin/x\", \"{\"]",
        "{ a = 1 }",
        "\"101%ORIGIN\"",
        "\"1.2.3G\"",
        "\"{{x}}\"",
        "\"unix:\"",
        "\"::1:99999\"",
        "\"../../etc\"",
        "\"a\"",
    ];
    let file = Path::new("fuzz.toml");
    let (mut errors, mut oks) = (0, 0);
    let mut rng = Rng(0x5EED_0FC0_FFEE);
    for _ in 0..2000 {
        let mut lines = base.clone();
        for _ in 0..1 + rng.below(3) {
            let i = rng.below(lines.len());
            match rng.below(5) {
                0 | 1 => {
                    if let Some((k, _)) = lines[i].clone().split_once(" = ") {
                        lines[i] = format!("{k} = {}", values[rng.below(values.len())]);
                    }
                }
                2 => {
                    lines.remove(i);
                }
                3 => {
                    let l = lines[i].clone();
                    lines.insert(i, l);
                }
                _ => {
                    let l = &lines[i];
                    let cut = rng.below(l.len() + 1);
                    let cut = (0..=cut)
                        .rev()
                        .find(|c| l.is_char_boundary(*c))
                        .unwrap_or(0);
                    lines[i] = l[..cut].to_string();
                }
            }
        }
        let text = lines.join("\n");
        let outcome = std::panic::catch_unwind(|| {
            let s = parse_str(file, &text).and_then(|(raw, o)| raw.validate("fuzz-host", &o))?;
            // What the daemon computes from the durations must not overflow either.
            let now = tokio::time::Instant::now();
            let _ = now + s.fence.lease_duration * 4 + s.fence.observer_grace;
            let _ = now + s.nvme.connect_timeout + s.snapshots.executor_timeout;
            let _ = now + s.daemon.shutdown_timeout + s.kubernetes.request_timeout;
            Ok::<_, ConfigError>(())
        });
        match outcome {
            Err(_) => panic!("panicked on:\n{text}"),
            Ok(Ok(())) => oks += 1,
            Ok(Err(e)) => {
                errors += 1;
                let msg = e.to_string();
                let pos = msg.strip_prefix("fuzz.toml:").and_then(|r| {
                    let mut it = r.splitn(3, ':');
                    let (l, c) = (it.next()?, it.next()?);
                    (l.parse::<u32>().is_ok() && c.parse::<u32>().is_ok()).then_some(())
                });
                assert!(pos.is_some(), "no file:line:column in {msg:?} for:\n{text}");
            }
        }
    }
    assert!(errors > 600 && oks > 100, "errors {errors}, valid {oks}");
}

#[test]
fn nvme_reservations_default_prefer_and_name_the_choices() {
    use crate::nvme::resv::Mode;
    assert_eq!(settings("").unwrap().nvme.reservations, Mode::Prefer);
    for (v, m) in [
        ("off", Mode::Off),
        ("prefer", Mode::Prefer),
        ("require", Mode::Require),
    ] {
        let s = settings(&format!("[nvme]\nreservations = \"{v}\"\n")).unwrap();
        assert_eq!(s.nvme.reservations, m);
    }
    let msg = settings("[nvme]\nreservations = \"yes\"\n")
        .unwrap_err()
        .to_string();
    assert!(
        msg.starts_with("test.toml:2:1: `nvme.reservations`: expected \"off\", \"prefer\" or \"require\", found \"yes\""),
        "{msg}"
    );
}
