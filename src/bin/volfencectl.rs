//! `volfencectl`: talk to volfenced over D-Bus. Exit codes: 0 ok, 1 the daemon refused or failed,
//! 2 bad usage, 3 daemon not running (or no bus), 4 access denied.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use volfence::config::BusSpec;
use volfence::dbus::client::{classify, describe, to_json, Agent1Proxy, Failure};

#[derive(Parser, Debug)]
#[command(
    name = "volfencectl",
    version,
    about = "Control and inspect the volfence agent"
)]
struct Args {
    /// Bus to reach volfenced on: system, session or a D-Bus address
    #[arg(long, global = true, env = "VOLFENCE_BUS", default_value = "system", value_parser = parse_bus)]
    bus: BusSpec,
    /// Give up on a call after this many seconds
    #[arg(long, global = true, default_value_t = 25)]
    timeout: u64,
    #[command(subcommand)]
    command: Command,
}

fn parse_bus(s: &str) -> Result<BusSpec, String> {
    BusSpec::parse(s)
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Show the agent's state: node, fence state, epoch, lease validity, warnings
    Status {
        /// Print JSON instead of text
        #[arg(long)]
        json: bool,
    },
    /// Change the daemon's log filter at run time (root only), e.g. `debug` or `volfence=trace`
    SetLogLevel { level: String },
}

fn main() -> ExitCode {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let bus = args.bus.to_string();
    let timeout = Duration::from_secs(args.timeout.max(1));
    match runtime.block_on(async { tokio::time::timeout(timeout, run(args)).await }) {
        Ok(Ok(())) => ExitCode::SUCCESS,
        Ok(Err(e)) => {
            eprintln!("volfencectl: {}", describe(&e, &bus));
            ExitCode::from(classify(&e) as u8)
        }
        Err(_) => {
            eprintln!("volfencectl: no answer from volfenced on the {bus} bus within {timeout:?}");
            ExitCode::from(Failure::Failed as u8)
        }
    }
}

async fn run(args: Args) -> zbus::Result<()> {
    let conn = volfence::dbus::connect(&args.bus).await?;
    let agent = Agent1Proxy::new(&conn).await?;
    match args.command {
        Command::Status { json } => {
            let status = agent.status().await?;
            let map: BTreeMap<String, serde_json::Value> = status
                .iter()
                .map(|(k, v)| (k.clone(), to_json(v)))
                .collect();
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&map).expect("JSON values serialize")
                );
            } else {
                print_status(&map);
            }
        }
        Command::SetLogLevel { level } => {
            agent.set_log_level(&level).await?;
            println!("log level set to {level}");
        }
    }
    Ok(())
}

fn print_status(m: &BTreeMap<String, serde_json::Value>) {
    let s = |k: &str| {
        m.get(k)
            .map(|v| {
                v.as_str()
                    .map(str::to_string)
                    .unwrap_or_else(|| v.to_string())
            })
            .unwrap_or_default()
    };
    let valid_ms = m.get("ValidForMs").and_then(|v| v.as_u64()).unwrap_or(0);
    println!(
        "volfenced {} on node {} (pid {})",
        s("Version"),
        s("NodeName"),
        s("Pid")
    );
    println!(
        "  fence:     {}, epoch {}, valid for {:.1}s",
        s("FenceState"),
        s("Epoch"),
        valid_ms as f64 / 1000.0
    );
    println!("  backend:   {}", s("FenceBackend"));
    println!("  holder:    {}", s("Holder"));
    println!("  detail:    {}", s("FenceMessage"));
    println!("  log level: {}", s("LogLevel"));
    if let Some(w) = m.get("Warnings").and_then(|w| w.as_array()) {
        for w in w {
            println!("  WARNING:   {}", w.as_str().unwrap_or_default());
        }
    }
}
