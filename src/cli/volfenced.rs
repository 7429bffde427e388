//! `volfenced`'s command line: here, not in the binary, so its man page is made from it.

use std::path::PathBuf;

use clap::Parser;

#[derive(Parser, Debug)]
#[command(
    name = "volfenced",
    version,
    about = "volfence host agent: NVMe/TCP volume fencing and online LVM snapshots"
)]
pub struct Args {
    /// Read only this file (default: /etc/volfence/config.toml plus /etc/volfence/config.d/*.toml)
    #[arg(long, value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// Validate the configuration, print the result and exit (0 valid, 1 invalid)
    #[arg(long)]
    pub check_config: bool,
    /// Override [dbus] bus: system, session or a D-Bus address
    #[arg(long, value_name = "BUS")]
    pub bus: Option<String>,
    /// Root directory of the host (for tests against a fake host tree)
    #[arg(long, value_name = "DIR", default_value = "/", hide = true)]
    pub host_root: PathBuf,
}
