//! Logging: journald when stderr is the journal (or when configured), else human-readable stderr.
//! Structured fields (`EPOCH`, `VOLUME`, `NQN`, …) are written upper-case so `journalctl -o
//! verbose` and `journalctl EPOCH=3` show and match them as they are.

use std::sync::Mutex;

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{reload, EnvFilter, Layer, Registry};

use crate::config::{LogSettings, LogTarget};

/// `SYSLOG_IDENTIFIER` of the daemon's journal entries.
pub const SYSLOG_IDENTIFIER: &str = "volfenced";

#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// The filter given is not a tracing filter.
    #[error("invalid log level or filter {filter:?}: {message}")]
    BadFilter { filter: String, message: String },
    /// journald was requested but its socket cannot be used.
    #[error("cannot log to journald: {0}")]
    Journald(#[source] std::io::Error),
    /// A global subscriber was already installed.
    #[error("logging already initialised")]
    AlreadyInitialised,
}

/// Changes the level at run time (D-Bus `SetLogLevel`).
pub struct LogHandle {
    reload: reload::Handle<EnvFilter, Registry>,
    current: Mutex<String>,
    pub journald: bool,
}

impl LogHandle {
    pub fn level(&self) -> String {
        self.current.lock().unwrap().clone()
    }

    pub fn set_level(&self, filter: &str) -> Result<(), LogError> {
        let f = parse_filter(filter)?;
        self.reload
            .reload(f)
            .map_err(|_| LogError::AlreadyInitialised)?;
        *self.current.lock().unwrap() = filter.to_string();
        Ok(())
    }
}

/// The one parser of a log filter, for the config, `RUST_LOG` and `SetLogLevel`: a level, or
/// comma-separated `level` / `target=level` directives (`info`, `volfence=debug,zbus=warn`).
/// Stricter than tracing's own, which takes `""` or `"-x"` as a filter that silences the agent.
pub fn parse_filter(filter: &str) -> Result<EnvFilter, LogError> {
    let bad = |message: String| LogError::BadFilter {
        filter: filter.to_string(),
        message,
    };
    const LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];
    let is_level = |l: &str| LEVELS.iter().any(|v| v.eq_ignore_ascii_case(l));
    let is_target = |t: &str| {
        !t.is_empty()
            && t.split("::").all(|part| {
                part.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
                    && part.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            })
    };
    if filter.trim().is_empty() {
        return Err(bad("expected a level (error, warn, info, debug, trace) or target=level directives, found nothing".into()));
    }
    for d in filter.split(',').map(str::trim) {
        let ok = match d.split_once('=') {
            Some((target, level)) => is_target(target) && is_level(level),
            None => is_level(d),
        };
        if !ok {
            return Err(bad(format!("directive {d:?}: expected a level (off, error, warn, info, debug, trace) or target=level with a Rust module path as target")));
        }
    }
    EnvFilter::try_new(filter).map_err(|e| bad(e.to_string()))
}

/// True when systemd connected our stderr to the journal (`JOURNAL_STREAM=<dev>:<ino>` matches).
pub fn stderr_is_journal() -> bool {
    let Ok(v) = std::env::var("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = v.split_once(':') else {
        return false;
    };
    let Ok(st) = nix::sys::stat::fstat(std::io::stderr()) else {
        return false;
    };
    dev.parse::<u64>().ok() == Some(st.st_dev) && ino.parse::<u64>().ok() == Some(st.st_ino)
}

/// Installs the global subscriber. `RUST_LOG`, when set, wins over the configured level.
pub fn init(settings: &LogSettings) -> Result<LogHandle, LogError> {
    let level = std::env::var("RUST_LOG")
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| settings.level.clone());
    let (filter, reload) = reload::Layer::new(parse_filter(&level)?);
    let journald = match settings.target {
        LogTarget::Journald => true,
        LogTarget::Stderr => false,
        LogTarget::Auto => stderr_is_journal(),
    };
    let (journal_layer, fmt_layer) = if journald {
        let l = tracing_journald::layer()
            .map_err(LogError::Journald)?
            .with_syslog_identifier(SYSLOG_IDENTIFIER.to_string())
            // tracing-journald writes `F_EPOCH` unless told otherwise; the fields are documented
            // (and matched by operators) as `EPOCH=`, `VOLUME=`, `REQUEST_ID=`.
            .with_field_prefix(None);
        (Some(l), None)
    } else {
        use std::io::IsTerminal;
        let l = tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(std::io::stderr().is_terminal())
            .with_target(false);
        (None, Some(l.boxed()))
    };
    tracing_subscriber::registry()
        .with(filter)
        .with(journal_layer)
        .with(fmt_layer)
        .try_init()
        .map_err(|_| LogError::AlreadyInitialised)?;
    Ok(LogHandle {
        reload,
        current: Mutex::new(level),
        journald,
    })
}

/// One log line per window for a condition that can repeat at any rate (accept errors, a failing
/// write on every renew): the first occurrence is logged, later ones are counted and reported with
/// the next line a window later. A local user must not be able to turn a fault into a log flood.
#[derive(Debug)]
pub struct Throttle {
    window: std::time::Duration,
    last: Option<std::time::Instant>,
    suppressed: u64,
}

impl Throttle {
    pub const fn new(window: std::time::Duration) -> Throttle {
        Throttle {
            window,
            last: None,
            suppressed: 0,
        }
    }

    /// `Some(n)` when a line is due now (`n` occurrences were swallowed since the last one),
    /// `None` when this occurrence is only counted.
    pub fn due(&mut self) -> Option<u64> {
        let now = std::time::Instant::now();
        match self.last {
            Some(t) if now.duration_since(t) < self.window => {
                self.suppressed += 1;
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.suppressed))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throttle_logs_once_per_window_and_counts_the_rest() {
        let mut t = Throttle::new(std::time::Duration::from_millis(50));
        assert_eq!(t.due(), Some(0));
        for _ in 0..1000 {
            assert_eq!(t.due(), None);
        }
        std::thread::sleep(std::time::Duration::from_millis(60));
        assert_eq!(t.due(), Some(1000));
        assert_eq!(t.due(), None);
    }
}
