//! `volfenced`: parse arguments, load configuration, start logging, run the daemon.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use volfence::cli::volfenced::Args;
use volfence::config::{self, BusSpec, Source};
use volfence::host::Host;
use volfence::{daemon, logging};

fn main() -> ExitCode {
    let args = Args::parse();
    let host = Host::new(&args.host_root);
    let source = match &args.config {
        Some(p) => Source::File(p.clone()),
        None => Source::Directory {
            main: PathBuf::from(config::DEFAULT_CONFIG_FILE),
        },
    };
    let default_node = host
        .hostname()
        .ok()
        .or_else(|| {
            nix::unistd::gethostname()
                .ok()
                .map(|h| h.to_string_lossy().into_owned())
        })
        .unwrap_or_default();
    let mut loaded = match config::load(&source, &default_node) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("volfenced: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Some(b) = &args.bus {
        match BusSpec::parse(b) {
            Ok(b) => loaded.settings.dbus = b,
            Err(m) => {
                eprintln!("volfenced: --bus: {m}");
                return ExitCode::FAILURE;
            }
        }
    }
    if args.check_config {
        let files: Vec<String> = loaded
            .files
            .iter()
            .map(|p| p.display().to_string())
            .collect();
        println!(
            "configuration OK ({}); node {}, fence backend {}",
            if files.is_empty() {
                "built-in defaults".into()
            } else {
                files.join(", ")
            },
            loaded.settings.node.name,
            loaded.settings.fence.backend.as_str()
        );
        return ExitCode::SUCCESS;
    }
    let log = match logging::init(&loaded.settings.log) {
        Ok(l) => Arc::new(l),
        Err(e) => {
            eprintln!("volfenced: {e}");
            return ExitCode::FAILURE;
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("volfenced: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let opts = daemon::Options {
        settings: loaded.settings,
        host,
        config_files: loaded.files,
        log,
    };
    match runtime.block_on(daemon::run(opts)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            if !logging::stderr_is_journal() {
                eprintln!("volfenced: {e}");
            }
            ExitCode::FAILURE
        }
    }
}
