//! The backup executor: a configured argv template run as a child, never through a shell.
//! Placeholders are replaced inside single arguments only, so a value can never become another
//! argument or a command; values are also checked to hold no control characters.

use std::collections::BTreeMap;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};

pub const PLACEHOLDERS: &[&str] = &["mountpoint", "vg", "lv", "snapshot", "request_id"];

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TemplateError {
    #[error("unknown placeholder {{{name}}} in argument {arg:?}; expected one of {{mountpoint}}, {{vg}}, {{lv}}, {{snapshot}}, {{request_id}} (write {{{{ and }}}} for literal braces)")]
    Unknown { arg: String, name: String },
    #[error("unclosed '{{' in argument {0:?} (write {{{{ for a literal brace)")]
    Unclosed(String),
    #[error("argument {0:?} contains a NUL byte")]
    Nul(String),
    #[error("the program (first element) must be an absolute path, found {0:?}")]
    RelativeProgram(String),
    #[error("value for {{{key}}} contains a control character: {value:?}")]
    BadValue { key: String, value: String },
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Text(String),
    Hole(&'static str),
}

/// A parsed executor argv: the one reading of `{name}`, `{{` and `}}`, used by the config check
/// and by every run, so a template the check accepts is a template that runs. An empty template
/// means "no executor".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    args: Vec<Vec<Piece>>,
}

impl Template {
    pub fn parse(argv: &[String]) -> Result<Template, TemplateError> {
        if let Some(program) = argv.first() {
            if !program.starts_with('/') {
                return Err(TemplateError::RelativeProgram(program.clone()));
            }
        }
        let args = argv
            .iter()
            .map(|a| parse_arg(a))
            .collect::<Result<_, _>>()?;
        Ok(Template { args })
    }

    /// The argv with every placeholder replaced by its value; the number of arguments never
    /// changes and a value is never read as a template itself.
    pub fn fill(&self, values: &BTreeMap<&str, String>) -> Result<Vec<String>, TemplateError> {
        for (k, v) in values {
            if v.chars().any(char::is_control) {
                return Err(TemplateError::BadValue {
                    key: k.to_string(),
                    value: v.clone(),
                });
            }
        }
        self.args
            .iter()
            .map(|pieces| {
                let mut out = String::new();
                for p in pieces {
                    match p {
                        Piece::Text(t) => out.push_str(t),
                        Piece::Hole(name) => out.push_str(values.get(name).ok_or_else(|| {
                            TemplateError::Unknown {
                                arg: String::new(),
                                name: name.to_string(),
                            }
                        })?),
                    }
                }
                Ok(out)
            })
            .collect()
    }
}

fn parse_arg(arg: &str) -> Result<Vec<Piece>, TemplateError> {
    if arg.contains('\0') {
        return Err(TemplateError::Nul(arg.to_string()));
    }
    let mut pieces = Vec::new();
    let mut text = String::new();
    let mut rest = arg;
    while let Some(i) = rest.find(['{', '}']) {
        text.push_str(&rest[..i]);
        let tail = &rest[i..];
        if let Some(r) = tail.strip_prefix("{{") {
            text.push('{');
            rest = r;
        } else if let Some(r) = tail.strip_prefix("}}") {
            text.push('}');
            rest = r;
        } else if let Some(r) = tail.strip_prefix('}') {
            text.push('}');
            rest = r;
        } else {
            let end = tail
                .find('}')
                .ok_or_else(|| TemplateError::Unclosed(arg.to_string()))?;
            let name = &tail[1..end];
            let hole = PLACEHOLDERS.iter().find(|p| **p == name).ok_or_else(|| {
                TemplateError::Unknown {
                    arg: arg.to_string(),
                    name: name.to_string(),
                }
            })?;
            if !text.is_empty() {
                pieces.push(Piece::Text(std::mem::take(&mut text)));
            }
            pieces.push(Piece::Hole(hole));
            rest = &tail[end + 1..];
        }
    }
    text.push_str(rest);
    if !text.is_empty() {
        pieces.push(Piece::Text(text));
    }
    Ok(pieces)
}

/// [`Template::parse`] then [`Template::fill`].
pub fn substitute(
    template: &[String],
    values: &BTreeMap<&str, String>,
) -> Result<Vec<String>, TemplateError> {
    Template::parse(template)?.fill(values)
}

/// How the executor ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExecOutcome {
    Exited(i32),
    Signalled(i32),
    TimedOut,
    /// Stopped by the caller (cancel, COW guard, lease loss).
    Stopped(String),
}

/// Runs `argv` with exactly `env` (plus PATH) in its own process group; every output line goes
/// to the journal with the job's fields. `stop` ends it early (the group gets SIGTERM, then
/// SIGKILL after 5 s). `started` receives the pid.
pub async fn run(
    argv: &[String],
    env: &BTreeMap<String, String>,
    timeout: Duration,
    request_id: &str,
    snapshot: &str,
    stop: impl std::future::Future<Output = String>,
    started: impl FnOnce(u32),
) -> std::io::Result<ExecOutcome> {
    let mut cmd = tokio::process::Command::new(&argv[0]);
    cmd.args(&argv[1..])
        .env_clear()
        .env(
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        )
        .envs(env)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let mut child = cmd.spawn()?;
    let pid = child.id().unwrap_or(0);
    started(pid);
    tracing::info!(
        REQUEST_ID = request_id,
        SNAPSHOT = snapshot,
        EXECUTOR_PID = pid,
        "executor started: {}",
        argv.join(" ")
    );
    let stream = |r: Option<Box<dyn tokio::io::AsyncRead + Unpin + Send>>, stream: &'static str| {
        let (rid, snap) = (request_id.to_string(), snapshot.to_string());
        tokio::spawn(async move {
            let Some(r) = r else { return };
            let mut lines = BufReader::new(r).lines();
            while let Ok(Some(l)) = lines.next_line().await {
                tracing::info!(
                    REQUEST_ID = rid.as_str(),
                    SNAPSHOT = snap.as_str(),
                    STREAM = stream,
                    "executor: {l}"
                );
            }
        })
    };
    let out = stream(child.stdout.take().map(|s| Box::new(s) as _), "stdout");
    let err = stream(child.stderr.take().map(|s| Box::new(s) as _), "stderr");
    let kill_group = |sig: nix::sys::signal::Signal| {
        if pid > 0 {
            let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pid as i32), sig);
        }
    };
    let outcome = tokio::select! {
        st = child.wait() => {
            let st = st?;
            use std::os::unix::process::ExitStatusExt;
            match (st.code(), st.signal()) {
                (Some(c), _) => ExecOutcome::Exited(c),
                (None, Some(s)) => ExecOutcome::Signalled(s),
                _ => ExecOutcome::Exited(-1),
            }
        }
        _ = tokio::time::sleep(timeout) => ExecOutcome::TimedOut,
        why = stop => ExecOutcome::Stopped(why),
    };
    if matches!(outcome, ExecOutcome::TimedOut | ExecOutcome::Stopped(_)) {
        kill_group(nix::sys::signal::Signal::SIGTERM);
        if tokio::time::timeout(Duration::from_secs(5), child.wait())
            .await
            .is_err()
        {
            kill_group(nix::sys::signal::Signal::SIGKILL);
            let _ = child.wait().await;
        }
    }
    // Whatever the executor left running in its group goes too: the snapshot is about to be
    // unmounted.
    kill_group(nix::sys::signal::Signal::SIGKILL);
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        let _ = out.await;
        let _ = err.await;
    })
    .await;
    Ok(outcome)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vals() -> BTreeMap<&'static str, String> {
        [
            (
                "mountpoint",
                "/run/volfence/snapshots/vfsnap-r1".to_string(),
            ),
            ("vg", "vg0".to_string()),
            ("lv", "data".to_string()),
            ("snapshot", "vfsnap-r1".to_string()),
            ("request_id", "r1".to_string()),
        ]
        .into_iter()
        .collect()
    }

    fn t(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn placeholders_fill_single_arguments() {
        let out = substitute(
            &t(&[
                "/usr/bin/restic",
                "backup",
                "{mountpoint}",
                "--tag={vg}/{lv}",
                "{{literal}}",
            ]),
            &vals(),
        )
        .unwrap();
        assert_eq!(
            out,
            t(&[
                "/usr/bin/restic",
                "backup",
                "/run/volfence/snapshots/vfsnap-r1",
                "--tag=vg0/data",
                "{literal}"
            ])
        );
    }

    #[test]
    fn injection_attempts_stay_one_argument() {
        let mut v = vals();
        for evil in [
            "a b",
            "x; rm -rf /",
            "$(reboot)",
            "`id`",
            "--delete",
            "a' \"b",
            "{vg}",
        ] {
            v.insert("request_id", evil.to_string());
            let out = substitute(&t(&["/bin/echo", "{request_id}"]), &v).unwrap();
            assert_eq!(
                out,
                t(&["/bin/echo", evil]),
                "a value is one argument, verbatim, never re-expanded"
            );
        }
        v.insert("request_id", "a\nb".into());
        assert!(matches!(
            substitute(&t(&["/bin/x", "{request_id}"]), &v),
            Err(TemplateError::BadValue { .. })
        ));
        assert!(matches!(
            substitute(&t(&["/bin/x", "{nope}"]), &vals()),
            Err(TemplateError::Unknown { .. })
        ));
        assert!(matches!(
            substitute(&t(&["/bin/x", "{vg"]), &vals()),
            Err(TemplateError::Unclosed(_))
        ));
    }

    #[tokio::test]
    async fn runs_times_out_and_stops() {
        let env: BTreeMap<String, String> =
            [("BACKUP_TARGET".to_string(), "s3://x".to_string())].into();
        let argv = t(&[
            "/bin/sh",
            "-c",
            "echo \"target=$BACKUP_TARGET home=${HOME:-unset}\"; exit 3",
        ]);
        let r = run(
            &argv,
            &env,
            Duration::from_secs(10),
            "r",
            "s",
            std::future::pending(),
            |_| {},
        )
        .await
        .unwrap();
        assert_eq!(r, ExecOutcome::Exited(3));
        let argv = t(&["/bin/sleep", "30"]);
        let r = run(
            &argv,
            &env,
            Duration::from_millis(300),
            "r",
            "s",
            std::future::pending(),
            |_| {},
        )
        .await
        .unwrap();
        assert_eq!(r, ExecOutcome::TimedOut);
        let stop = async {
            tokio::time::sleep(Duration::from_millis(200)).await;
            "cancelled".to_string()
        };
        let mut pid = 0;
        let r = run(&argv, &env, Duration::from_secs(30), "r", "s", stop, |p| {
            pid = p
        })
        .await
        .unwrap();
        assert_eq!(r, ExecOutcome::Stopped("cancelled".into()));
        assert!(pid > 0);
        assert!(
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), None).is_err(),
            "the executor is gone"
        );
    }
}
