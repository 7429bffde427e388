//! `volfence-kube-emulator`: the project's Kubernetes API server emulator as a process, for the
//! VM tier and manual experiments. Not shipped in the package.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;
use volfence_kube_emulator::Emulator;

#[derive(Parser, Debug)]
#[command(
    version,
    about = "Kubernetes API server emulator (discovery, Namespaces, Leases, Nodes, PersistentVolumes, PersistentVolumeClaims, Pods, Events) with fault injection"
)]
struct Args {
    /// Address to listen on (loopback only makes sense: there is no authentication)
    #[arg(long, default_value = "127.0.0.1:6443")]
    listen: SocketAddr,
    /// Write a kubeconfig for each `--client` here: PATH.<client> (or PATH itself for one client)
    #[arg(long, value_name = "PATH")]
    kubeconfig: Option<PathBuf>,
    /// Client identities (bearer tokens) to write kubeconfigs for; faults are set per client
    #[arg(long = "client", value_name = "NAME")]
    clients: Vec<String>,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let emu = match Emulator::start(args.listen).await {
        Ok(e) => e,
        Err(e) => {
            eprintln!(
                "volfence-kube-emulator: cannot listen on {}: {e}",
                args.listen
            );
            return std::process::ExitCode::FAILURE;
        }
    };
    if let Some(path) = &args.kubeconfig {
        for c in &args.clients {
            let p = if args.clients.len() == 1 {
                path.clone()
            } else {
                PathBuf::from(format!("{}.{c}", path.display()))
            };
            if let Err(e) = std::fs::write(&p, emu.kubeconfig(c)) {
                eprintln!("volfence-kube-emulator: cannot write {}: {e}", p.display());
                return std::process::ExitCode::FAILURE;
            }
        }
    }
    println!("listening on {}", emu.url());
    let _ = tokio::signal::ctrl_c().await;
    emu.shutdown();
    std::process::ExitCode::SUCCESS
}
