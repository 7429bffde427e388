//! `volfencectl`'s command line: here, not in the binary, so its man page is made from it.

use clap::{Parser, Subcommand};

use crate::config::BusSpec;

#[derive(Parser, Debug)]
#[command(
    name = "volfencectl",
    version,
    about = "Control and inspect the volfence agent"
)]
pub struct Args {
    /// Bus to reach volfenced on: system, session or a D-Bus address
    #[arg(long, global = true, env = "VOLFENCE_BUS", default_value = "system", value_parser = parse_bus)]
    pub bus: BusSpec,
    /// Give up on a call after this many seconds
    #[arg(long, global = true, default_value_t = 25, value_name = "SECONDS")]
    pub timeout: u64,
    #[command(subcommand)]
    pub command: Command,
}

fn parse_bus(s: &str) -> Result<BusSpec, String> {
    BusSpec::parse(s)
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Show the agent's state: node, fence state, epoch, lease validity, warnings
    Status {
        /// Print JSON instead of text
        #[arg(long)]
        json: bool,
    },
    /// Change the daemon's log filter at run time (root only), e.g. `debug` or `volfence=trace`
    SetLogLevel {
        /// A level (error, warn, info, debug, trace) or a tracing filter
        level: String,
    },
    /// Connect an NVMe/TCP volume and wait until its block device is usable (root only)
    Connect {
        /// Volume id ([A-Za-z0-9._-], e.g. the PV name)
        volume: String,
        /// Subsystem NQN
        #[arg(long)]
        nqn: String,
        /// Target address (IPv4 or IPv6)
        #[arg(long, value_name = "ADDRESS")]
        traddr: Option<String>,
        /// Target port
        #[arg(long, default_value_t = 4420, requires = "traddr", value_name = "PORT")]
        trsvcid: u16,
        /// A further path, ADDRESS:PORT ([v6]:PORT); repeat for multipath
        #[arg(long = "path", value_name = "ADDRESS:PORT")]
        paths: Vec<String>,
        /// Namespace id
        #[arg(long, conflicts_with_all = ["uuid", "nguid"])]
        nsid: Option<u32>,
        /// Namespace UUID
        #[arg(long, conflicts_with = "nguid")]
        uuid: Option<String>,
        /// Namespace NGUID
        #[arg(long)]
        nguid: Option<String>,
        /// Local interface to connect from
        #[arg(long, value_name = "IFACE")]
        host_iface: Option<String>,
        /// Local address to connect from
        #[arg(long, value_name = "ADDRESS")]
        host_traddr: Option<String>,
        /// Connect option KEY=VALUE (ctrl_loss_tmo=30, nr_io_queues=4, timeout_ms=10000, ...)
        #[arg(short = 'o', long = "option", value_parser = parse_kv, value_name = "KEY=VALUE")]
        options: Vec<(String, String)>,
        /// Live migration: share the volume with NODE, which holds it, until NODE disconnects
        /// or [claims] migration_timeout passes
        #[arg(long, value_name = "NODE")]
        migration_source: Option<String>,
        /// Print JSON instead of text
        #[arg(long)]
        json: bool,
    },
    /// Disconnect a volume (succeeds if it is not connected; root only)
    Disconnect {
        /// Volume id
        volume: String,
        /// Wait at most this long for the device to go, in milliseconds
        #[arg(long, value_name = "MS")]
        timeout_ms: Option<u64>,
    },
    /// List the volumes this agent holds
    List {
        /// Print JSON instead of text
        #[arg(long)]
        json: bool,
    },
    /// Show one volume: device, paths, claim and NVMe reservation
    Show {
        /// Volume id
        volume: String,
        /// Print JSON instead of text
        #[arg(long)]
        json: bool,
    },
    /// List volume claims: this node's, or every claim with --all (kubernetes backend)
    Claims {
        /// Every host's claims, not only this node's
        #[arg(long)]
        all: bool,
        /// Print JSON instead of text
        #[arg(long)]
        json: bool,
    },
    /// Online snapshots of LVM volumes with a backup executor
    #[command(subcommand)]
    Snapshot(SnapCmd),
}

#[derive(Subcommand, Debug)]
pub enum SnapCmd {
    /// Start a snapshot job (same request id again: the same job; root only)
    Start {
        /// The job's request id (the caller's idempotency key)
        request_id: String,
        /// Volume group of the origin LV
        vg: String,
        /// The origin logical volume
        lv: String,
        /// Thick snapshot size ("512M", "20%ORIGIN"); default from config; thin: ignored
        #[arg(long)]
        size: Option<String>,
        /// Keep the snapshot mounted after the executor, until `release`
        #[arg(long)]
        keep: bool,
        /// The PersistentVolumeClaim the origin backs (namespace/name): a failure is recorded
        /// as a Kubernetes Event on it
        #[arg(long, value_name = "NAMESPACE/NAME")]
        claim: Option<String>,
        /// Follow the job until it ends; exit 1 if it failed
        #[arg(long)]
        wait: bool,
        /// Print JSON instead of text
        #[arg(long)]
        json: bool,
    },
    /// Show one job
    Status {
        /// The job's request id (the caller's idempotency key)
        request_id: String,
        /// Print JSON instead of text
        #[arg(long)]
        json: bool,
    },
    /// List jobs
    List {
        /// Print JSON instead of text
        #[arg(long)]
        json: bool,
    },
    /// Stop a running job (root only)
    Cancel {
        /// The job's request id
        request_id: String,
    },
    /// Unmount and remove a kept snapshot (root only)
    Release {
        /// The job's request id
        request_id: String,
    },
}

fn parse_kv(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("expected KEY=VALUE, found {s:?}"))
}
