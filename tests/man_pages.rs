//! The shipped man pages are generated: volfenced(8) and volfencectl(8) from the clap definitions
//! the binaries parse with, volfence.toml(5) from config.toml.example. This test regenerates
//! them and fails when the committed files in `man/` differ, so neither can drift from the code.
//! `VOLFENCE_BLESS=1 cargo test --test man_pages` rewrites them.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use clap::CommandFactory;

/// A fixed date: the pages change when their text does, not on every build.
const DATE: &str = "2026-12";

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Roff text: a backslash is `\e`, a line may not start with a control character, `-` is `\-`
/// so it is searchable and copy-pastes as a hyphen-minus, and other than ASCII is `\[uXXXX]`.
fn esc(s: &str) -> String {
    let s: String = s
        .replace('\\', "\\e")
        .replace('-', "\\-")
        .chars()
        .map(|c| {
            if c.is_ascii() {
                c.to_string()
            } else {
                format!("\\[u{:04X}]", u32::from(c))
            }
        })
        .collect();
    s.lines()
        .map(|l| {
            if l.starts_with('.') || l.starts_with('\'') {
                format!("\\&{l}")
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn th(out: &mut String, name: &str, section: u8, title: &str) {
    let version = env!("CARGO_PKG_VERSION");
    writeln!(
        out,
        ".TH {} {section} \"{DATE}\" \"volfence {version}\" \"{title}\"",
        name.to_uppercase()
    )
    .unwrap();
}

/// One argument as an option list entry: `--nqn NQN`, `-o, --option KEY=VALUE`, `VOLUME`.
fn arg_entry(out: &mut String, a: &clap::Arg) {
    if a.is_hide_set() {
        return;
    }
    let value = a
        .get_value_names()
        .map(|v| {
            v.iter()
                .map(|n| n.to_string())
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_else(|| a.get_id().as_str().to_uppercase());
    let takes = a.get_action().takes_values();
    let mut head = Vec::new();
    if let Some(s) = a.get_short() {
        head.push(format!("\\fB\\-{s}\\fR"));
    }
    if let Some(l) = a.get_long() {
        head.push(format!("\\fB\\-\\-{}\\fR", esc(l)));
    }
    let mut head = head.join(", ");
    if head.is_empty() {
        head = format!("\\fI{}\\fR", esc(&value));
    } else if takes {
        write!(head, " \\fI{}\\fR", esc(&value)).unwrap();
    }
    writeln!(out, ".TP\n{head}").unwrap();
    let mut help = a.get_help().map(|h| h.to_string()).unwrap_or_default();
    let defaults: Vec<String> = a
        .get_default_values()
        .iter()
        .map(|d| d.to_string_lossy().into_owned())
        .collect();
    if takes && !defaults.is_empty() && a.get_long() != Some("host-root") {
        write!(help, " (default: {})", defaults.join(", ")).unwrap();
    }
    if let Some(env) = a.get_env() {
        write!(help, " [environment: {}]", env.to_string_lossy()).unwrap();
    }
    writeln!(out, "{}", esc(help.trim())).unwrap();
}

fn synopsis(cmd: &clap::Command, path: &str) -> String {
    let mut s = format!("\\fB{}\\fR", esc(path));
    let option = |a: &clap::Arg| {
        a.get_long().is_some_and(|l| l != "help" && l != "version")
            && !a.is_hide_set()
            && !a.is_global_set()
    };
    if cmd.get_arguments().any(option) {
        s.push_str(" [\\fIOPTIONS\\fR]");
    }
    for a in cmd.get_positionals() {
        write!(s, " \\fI{}\\fR", a.get_id().as_str().to_uppercase()).unwrap();
    }
    if cmd.has_subcommands() {
        s.push_str(" \\fICOMMAND\\fR");
    }
    s
}

/// Every subcommand, depth first, with its own options: the page a user greps for `connect`.
fn commands(out: &mut String, cmd: &clap::Command, path: &str) {
    for sub in cmd.get_subcommands().filter(|s| s.get_name() != "help") {
        let path = format!("{path} {}", sub.get_name());
        writeln!(out, ".SS {}", synopsis(sub, &path)).unwrap();
        if let Some(about) = sub.get_about() {
            writeln!(out, "{}", esc(&about.to_string())).unwrap();
        }
        let args: Vec<_> = sub
            .get_arguments()
            .filter(|a| !a.is_global_set() && !matches!(a.get_id().as_str(), "help" | "version"))
            .collect();
        if !args.is_empty() {
            writeln!(out, ".RS").unwrap();
            for a in args {
                arg_entry(out, a);
            }
            writeln!(out, ".RE").unwrap();
        }
        commands(out, sub, &path);
    }
}

fn program_page(mut cmd: clap::Command, title: &str, description: &str, tail: &str) -> String {
    cmd.build();
    let name = cmd.get_name().to_string();
    let mut out = String::new();
    th(&mut out, &name, 8, title);
    writeln!(
        out,
        ".SH NAME\n{} \\- {}",
        esc(&name),
        esc(&cmd.get_about().unwrap().to_string())
    )
    .unwrap();
    writeln!(out, ".SH SYNOPSIS\n{}", synopsis(&cmd, &name)).unwrap();
    // Already roff: it carries its own font changes and paragraphs.
    writeln!(out, ".SH DESCRIPTION\n{description}").unwrap();
    writeln!(out, ".SH OPTIONS").unwrap();
    for a in cmd.get_arguments() {
        arg_entry(&mut out, a);
    }
    if cmd.has_subcommands() {
        writeln!(out, ".SH COMMANDS").unwrap();
        commands(&mut out, &cmd, &name);
    }
    out.push_str(tail);
    out
}

fn volfenced_page() -> String {
    program_page(
        volfence::cli::volfenced::Args::command(),
        "System Administration",
        "The volfence host agent. It holds this host's lease (the fence: no device is touched \
         unless it is held), connects and disconnects NVMe/TCP volumes, and takes online \
         snapshots of LVM logical volumes. It is driven over D\\-Bus (org.volfence.Agent1, see \
         volfencectl(8)), logs to journald, and serves Prometheus metrics on loopback.\n\
         .PP\n\
         It runs under systemd as volfenced.service (Type=notify, with WatchdogSec): it reports \
         READY=1 once its bus name is owned and pets the systemd watchdog only after a \
         successful lease renew.",
        r#".SH SIGNALS
.TP
\fBSIGTERM\fR, \fBSIGINT\fR
Orderly shutdown within [daemon] shutdown_timeout: stop taking requests, stop the fence loop,
release the lease where the backend allows it. Volumes stay connected.
.SH FILES
.TP
\fI/etc/volfence/config.toml\fR, \fI/etc/volfence/config.d/*.toml\fR
Configuration, see volfence.toml(5).
.TP
\fI/var/lib/volfence\fR
Records that must survive a reboot: epochs, snapshot jobs.
.TP
\fI/run/volfence\fR
Volatile records: the fence's runtime record, NVMe volume records.
.TP
\fI/etc/nvme/hostnqn\fR, \fI/etc/nvme/hostid\fR
This host's NVMe identity, created on first start when absent.
.SH EXIT STATUS
0 after an orderly shutdown or a valid \fB\-\-check\-config\fR; 1 on a configuration or
start\-up error.
.SH SEE ALSO
volfencectl(8), volfence.toml(5), systemctl(1), journalctl(1), busctl(1)
"#,
    )
}

fn volfencectl_page() -> String {
    program_page(
        volfence::cli::volfencectl::Args::command(),
        "System Administration",
        "Controls and inspects volfenced(8) over D\\-Bus. Reading (status, list, show, snapshot \
         list and status) is open to every local user; changing anything (connect, disconnect, \
         snapshot start, cancel, release, set\\-log\\-level) needs root. Every command takes \
         \\fB\\-\\-json\\fR where it prints something.",
        r#".SH EXIT STATUS
.TP
\fB0\fR
Success.
.TP
\fB1\fR
The agent refused the request or it failed (the message names the error, e.g. org.volfence.Error.NotHeld).
.TP
\fB2\fR
Bad usage: an argument was missing or malformed.
.TP
\fB3\fR
volfenced is not running, or the bus cannot be reached.
.TP
\fB4\fR
Access denied: the command needs root.
.SH ENVIRONMENT
.TP
\fBVOLFENCE_BUS\fR
The bus to use when \fB\-\-bus\fR is not given.
.SH SEE ALSO
volfenced(8), volfence.toml(5), busctl(1)
"#,
    )
}

/// volfence.toml(5) from the example configuration: its head comment is the description, each
/// table a subsection, each commented-out key an entry with its default and the comment above it.
fn config_page(example: &str) -> String {
    let mut out = String::new();
    th(&mut out, "volfence.toml", 5, "File Formats");
    out.push_str(".SH NAME\nvolfence.toml \\- configuration of the volfence agent\n");
    out.push_str(
        ".SH SYNOPSIS\n\\fI/etc/volfence/config.toml\\fR, \\fI/etc/volfence/config.d/*.toml\\fR\n",
    );
    out.push_str(".SH DESCRIPTION\n");
    let mut lines = example.lines().peekable();
    lines.next(); // the file's own title line
    let mut para = Vec::new();
    while let Some(l) = lines.next_if(|l| l.starts_with('#')) {
        para.push(l.trim_start_matches('#').trim().to_string());
    }
    out.push_str(&text(&para));
    out.push_str(".SH SETTINGS\n");
    let mut comment: Vec<String> = Vec::new();
    for l in lines {
        let l = l.trim_end();
        if let Some(table) = l.strip_prefix('[').and_then(|t| t.strip_suffix(']')) {
            writeln!(out, ".SS [{}]", esc(table)).unwrap();
            comment.clear();
        } else if let Some((key, value)) = l
            .strip_prefix('#')
            .and_then(|kv| kv.split_once(" = "))
            .filter(|(k, _)| {
                !k.is_empty() && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            })
        {
            writeln!(out, ".TP\n\\fB{}\\fR = {}", esc(key), esc(value)).unwrap();
            out.push_str(&text(&comment));
            comment.clear();
        } else if let Some(c) = l.strip_prefix('#') {
            comment.push(c.strip_prefix(' ').unwrap_or(c).to_string());
        }
    }
    out.push_str(
        ".SH SEE ALSO\nvolfenced(8), volfencectl(8); the annotated example in \
         \\fI/usr/share/doc/volfence/examples/config.toml\\fR\n",
    );
    out
}

/// Comment lines as roff: ordinary lines flow together; an indented line (a table row in the
/// example) starts a line of its own.
fn text(lines: &[String]) -> String {
    let mut out = String::new();
    for l in lines {
        if l.is_empty() {
            out.push_str(".PP\n");
        } else if l.starts_with(' ') {
            writeln!(out, ".br\n{}", esc(l.trim_start())).unwrap();
        } else {
            writeln!(out, "{}", esc(l)).unwrap();
        }
    }
    out
}

fn check(file: &str, generated: &str) -> Option<String> {
    let path = repo().join("man").join(file);
    if std::env::var_os("VOLFENCE_BLESS").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, generated).unwrap();
        return None;
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    (committed != generated).then(|| format!("man/{file}"))
}

#[test]
fn committed_man_pages_are_what_the_code_generates() {
    let example = std::fs::read_to_string(repo().join("config.toml.example")).unwrap();
    let stale: Vec<String> = [
        ("volfenced.8", volfenced_page()),
        ("volfencectl.8", volfencectl_page()),
        ("volfence.toml.5", config_page(&example)),
    ]
    .iter()
    .filter_map(|(f, page)| check(f, page))
    .collect();
    assert!(
        stale.is_empty(),
        "{stale:?} differ from what the clap definitions and config.toml.example give: \
         run `VOLFENCE_BLESS=1 cargo test --test man_pages` and commit the result"
    );
}

/// The pages are well-formed roff as man(1) renders them: no warnings from groff.
#[test]
fn man_pages_render_without_warnings() {
    let Ok(groff) = which("groff") else {
        eprintln!("groff not installed: rendering not checked");
        return;
    };
    for f in ["volfenced.8", "volfencectl.8", "volfence.toml.5"] {
        let out = std::process::Command::new(&groff)
            .args(["-man", "-Tutf8", "-ww", "-z"])
            .arg(repo().join("man").join(f))
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success() && err.trim().is_empty(), "{f}: {err}");
    }
}

fn which(prog: &str) -> Result<PathBuf, ()> {
    std::env::var_os("PATH")
        .and_then(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join(prog))
                .find(|c| Path::new(c).is_file())
        })
        .ok_or(())
}

#[test]
fn the_config_page_lists_every_key_of_the_example() {
    let example = std::fs::read_to_string(repo().join("config.toml.example")).unwrap();
    let page = config_page(&example);
    for key in [
        "lease_duration",
        "on_lease_loss",
        "hostnqn",
        "executor",
        "bus",
        "listen",
    ] {
        assert!(
            page.contains(&format!("\\fB{}\\fR", esc(key))),
            "{key} missing"
        );
    }
}
