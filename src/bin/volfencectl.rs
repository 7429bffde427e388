//! `volfencectl`: talk to volfenced over D-Bus. Exit codes: 0 ok, 1 the daemon refused or failed,
//! 2 bad usage, 3 daemon not running (or no bus), 4 access denied.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use volfence::cli::volfencectl::{Args, Command, SnapCmd};
use volfence::dbus::client::{classify, describe, dict_json, to_json, Agent1Proxy, Failure};
use zbus::Variant;

type Json = BTreeMap<String, serde_json::Value>;

fn main() -> ExitCode {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let bus = args.bus.to_string();
    // A connect may wait for its device up to the agent's connect_timeout (30 s by default).
    let floor = match args.command {
        Command::Connect { .. } | Command::Disconnect { .. } => 90,
        // --wait follows a backup: no client-side limit beyond the agent's executor_timeout.
        Command::Snapshot(SnapCmd::Start { wait: true, .. }) => 7 * 24 * 3600,
        _ => 1,
    };
    let timeout = Duration::from_secs(args.timeout.max(floor));
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
        Command::Connect {
            volume,
            nqn,
            traddr,
            trsvcid,
            paths,
            nsid,
            uuid,
            nguid,
            host_iface,
            host_traddr,
            options,
            migration_source,
            json,
        } => {
            let mut t: std::collections::HashMap<&str, Variant<'_>> = Default::default();
            t.insert("nqn", nqn.as_str().into());
            if let Some(a) = &traddr {
                t.insert("traddr", a.as_str().into());
                t.insert("trsvcid", u32::from(trsvcid).into());
            }
            if !paths.is_empty() {
                t.insert("paths", paths.clone().into());
            }
            if let Some(n) = nsid {
                t.insert("nsid", n.into());
            }
            if let Some(u) = &uuid {
                t.insert("uuid", u.as_str().into());
            }
            if let Some(g) = &nguid {
                t.insert("nguid", g.as_str().into());
            }
            if let Some(i) = &host_iface {
                t.insert("host_iface", i.as_str().into());
            }
            if let Some(a) = &host_traddr {
                t.insert("host_traddr", a.as_str().into());
            }
            // Values go as strings; the agent parses and range-checks each, naming the key.
            let mut o: std::collections::HashMap<&str, Variant<'_>> = options
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str().into()))
                .collect();
            if let Some(n) = &migration_source {
                o.insert("migration_source", n.as_str().into());
            }
            let (_, info) = agent.connect(&volume, t, o).await?;
            let info = dict_json(&info);
            if json {
                print_json(&info);
            } else {
                print_volume(&info);
            }
        }
        Command::Disconnect { volume, timeout_ms } => {
            let mut o: std::collections::HashMap<&str, Variant<'_>> = Default::default();
            if let Some(ms) = timeout_ms {
                o.insert("timeout_ms", ms.into());
            }
            agent.disconnect(&volume, o).await?;
            println!("{volume} disconnected");
        }
        Command::List { json } => {
            let list: Vec<Json> = agent.list_volumes().await?.iter().map(dict_json).collect();
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&list).expect("JSON values serialize")
                );
            } else {
                print_table(&list);
            }
        }
        Command::Claims { all, json } => {
            let list: Vec<Json> = agent
                .list_claims(all)
                .await?
                .iter()
                .map(dict_json)
                .collect();
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&list).expect("JSON values serialize")
                );
            } else {
                print_claims(&list);
            }
        }
        Command::Snapshot(cmd) => snapshot(&conn, &agent, cmd).await?,
        Command::Show { volume, json } => {
            let list: Vec<Json> = agent.list_volumes().await?.iter().map(dict_json).collect();
            let Some(info) = list
                .into_iter()
                .find(|v| v.get("VolumeId").and_then(|v| v.as_str()) == Some(volume.as_str()))
            else {
                eprintln!(
                    "volfencectl: no volume {volume:?} on this host (see `volfencectl list`)"
                );
                std::process::exit(Failure::Failed as i32);
            };
            if json {
                print_json(&info);
            } else {
                print_volume(&info);
            }
        }
    }
    Ok(())
}

async fn find_job(agent: &Agent1Proxy<'_>, id: &str) -> zbus::Result<Option<Json>> {
    Ok(agent
        .list_snapshots()
        .await?
        .iter()
        .map(dict_json)
        .find(|j| j.get("RequestId").and_then(|v| v.as_str()) == Some(id)))
}

fn no_job(id: &str) -> ! {
    eprintln!("volfencectl: no snapshot job {id:?} (see `volfencectl snapshot list`)");
    std::process::exit(Failure::Failed as i32);
}

async fn snapshot(
    conn: &zbus::Connection,
    agent: &Agent1Proxy<'_>,
    cmd: SnapCmd,
) -> zbus::Result<()> {
    use futures::StreamExt;
    match cmd {
        SnapCmd::Start {
            request_id,
            vg,
            lv,
            size,
            keep,
            claim,
            wait,
            json,
        } => {
            let mut o: std::collections::HashMap<&str, Variant<'_>> = Default::default();
            if let Some(s) = &size {
                o.insert("size", s.as_str().into());
            }
            if keep {
                o.insert("keep", true.into());
            }
            if let Some(c) = &claim {
                o.insert("claim", c.as_str().into());
            }
            let path = agent.start_snapshot(&request_id, &vg, &lv, o).await?;
            if wait {
                let job = volfence::dbus::client::Job1Proxy::builder(conn)
                    .path(path.clone())
                    .build()
                    .await?;
                // Subscribed before reading the phase: the end cannot slip between the two.
                let mut done = job.receive_completed().await?;
                let mut phases = job.receive_phase_changed().await;
                let mut cow = job.receive_cow_percent_changed().await;
                let mut last = String::new();
                loop {
                    let p = job.phase().await?;
                    // The end is printed once, as the job's summary below.
                    if p == "succeeded" || p == "failed" {
                        break;
                    }
                    if p != last {
                        eprintln!("{request_id}: {p} — {}", job.message().await?);
                        last = p.clone();
                    }
                    tokio::select! {
                        _ = done.next() => {}
                        _ = phases.next() => {}
                        Some(c) = cow.next() => {
                            if let Ok(c) = c.get().await { eprintln!("{request_id}: COW {c:.1}%"); }
                        }
                    }
                }
            }
            let j = find_job(agent, &request_id)
                .await?
                .unwrap_or_else(|| no_job(&request_id));
            if json {
                print_json(&j);
            } else {
                print_job(&j);
            }
            if wait && text(&j, "Phase") == "failed" {
                std::process::exit(Failure::Failed as i32);
            }
        }
        SnapCmd::Status { request_id, json } => {
            let j = find_job(agent, &request_id)
                .await?
                .unwrap_or_else(|| no_job(&request_id));
            if json {
                print_json(&j);
            } else {
                print_job(&j);
            }
        }
        SnapCmd::List { json } => {
            let list: Vec<Json> = agent
                .list_snapshots()
                .await?
                .iter()
                .map(dict_json)
                .collect();
            if json {
                print_json(&list);
            } else if list.is_empty() {
                println!("no snapshot jobs");
            } else {
                println!("{:<24} {:<10} {:<24} MESSAGE", "REQUEST", "PHASE", "ORIGIN");
                for j in &list {
                    println!(
                        "{:<24} {:<10} {:<24} {}",
                        text(j, "RequestId"),
                        text(j, "Phase"),
                        format!("{}/{}", text(j, "Vg"), text(j, "Lv")),
                        text(j, "Message")
                    );
                }
            }
        }
        SnapCmd::Cancel { request_id } => {
            let Some(j) = find_job(agent, &request_id).await? else {
                no_job(&request_id)
            };
            let path = text(&j, "ObjectPath");
            let job = volfence::dbus::client::Job1Proxy::builder(conn)
                .path(path)
                .build()
                .await?;
            job.cancel().await?;
            println!("{request_id}: cancel requested");
        }
        SnapCmd::Release { request_id } => {
            agent.release(&request_id).await?;
            println!("{request_id}: released");
        }
    }
    Ok(())
}

fn print_job(j: &Json) {
    println!(
        "{}: {} — {}",
        text(j, "RequestId"),
        text(j, "Phase"),
        text(j, "Message")
    );
    println!("  origin:     {}/{}", text(j, "Vg"), text(j, "Lv"));
    println!(
        "  snapshot:   {} ({})",
        text(j, "Snapshot"),
        if text(j, "Thin") == "true" {
            "thin"
        } else {
            "thick"
        }
    );
    println!("  mountpoint: {}", text(j, "Mountpoint"));
    if !text(j, "Claim").is_empty() {
        println!("  claim:      {}", text(j, "Claim"));
    }
    println!("  started:    {}", text(j, "StartedAt"));
    println!("  finished:   {}", text(j, "FinishedAt"));
    println!("  COW used:   {}%", text(j, "CowPercent"));
    if text(j, "Keep") == "true" {
        println!(
            "  kept:       {}",
            if text(j, "Released") == "true" {
                "released"
            } else {
                "until release"
            }
        );
    }
}

fn print_json<T: serde::Serialize>(v: &T) {
    println!(
        "{}",
        serde_json::to_string_pretty(v).expect("JSON values serialize")
    );
}

fn text(m: &Json, k: &str) -> String {
    m.get(k)
        .map(|v| {
            v.as_str()
                .map(str::to_string)
                .unwrap_or_else(|| v.to_string())
        })
        .unwrap_or_default()
}

fn path_lines(m: &Json) -> Vec<String> {
    m.get("Paths")
        .and_then(|p| p.as_array())
        .map(|a| {
            a.iter()
                .filter_map(|p| p.as_array())
                .map(|f| {
                    f.iter()
                        .map(|x| x.as_str().unwrap_or_default())
                        .collect::<Vec<_>>()
                        .join(" ")
                })
                .collect()
        })
        .unwrap_or_default()
}

fn print_volume(m: &Json) {
    let mib = m.get("SizeBytes").and_then(|v| v.as_u64()).unwrap_or(0) as f64 / (1u64 << 20) as f64;
    println!("{}: {}", text(m, "VolumeId"), text(m, "State"));
    println!("  device:      {}", text(m, "Device"));
    println!("  stable path: {}", text(m, "StablePath"));
    println!("  subsystem:   {} nsid {}", text(m, "Nqn"), text(m, "Nsid"));
    println!("  uuid:        {}", text(m, "Uuid"));
    println!("  size:        {mib:.1} MiB");
    println!("  epoch:       {}", text(m, "Epoch"));
    let holder = text(m, "ClaimHolder");
    if !holder.is_empty() {
        println!("  claim:       {holder}, epoch {}", text(m, "ClaimEpoch"));
    }
    let migration = text(m, "Migration");
    if !migration.is_empty() {
        println!("  migration:   {migration}");
    }
    for p in path_lines(m) {
        println!("  path:        {p}");
    }
    for l in reservation_lines(m) {
        println!("  reservation: {l}");
    }
}

/// The volume's NVMe reservation as this host last read it (docs/fencing.md).
fn reservation_lines(m: &Json) -> Vec<String> {
    let support = text(m, "ResvSupport");
    match support.as_str() {
        "" => return vec![],
        "yes" => {}
        "no" => return vec!["not supported by the namespace".into()],
        "off" => return vec!["off (nvme.reservations)".into()],
        other => return vec![other.to_string()],
    }
    let mut out = vec![];
    let key = text(m, "ResvKey");
    let registered = m.get("ResvRegistered").and_then(serde_json::Value::as_bool) == Some(true);
    out.push(format!(
        "key {} {}",
        if key.is_empty() { "-" } else { key.as_str() },
        if registered {
            "registered"
        } else {
            "NOT registered"
        }
    ));
    let holder = text(m, "ResvHolder");
    let rtype = text(m, "ResvType");
    out.push(if holder.is_empty() {
        "held by nobody".to_string()
    } else {
        format!("held by {holder} ({rtype})")
    });
    let others: Vec<&str> = m
        .get("ResvOthers")
        .and_then(serde_json::Value::as_array)
        .map(|a| a.iter().filter_map(serde_json::Value::as_str).collect())
        .unwrap_or_default();
    if !others.is_empty() {
        out.push(format!("also registered: {}", others.join(", ")));
    }
    let problem = text(m, "ResvProblem");
    if !problem.is_empty() {
        out.push(format!("PROBLEM: {problem}"));
    }
    out
}

/// VOLUME HOLDER EPOCH SINCE STATE HOLDER-LEASE, the last one free-form (with the Node hint).
fn print_claims(list: &[Json]) {
    if list.is_empty() {
        println!("no claims");
        return;
    }
    let rows: Vec<[String; 6]> = list
        .iter()
        .map(|m| {
            let releasing = m.get("Releasing").and_then(serde_json::Value::as_bool) == Some(true);
            let migration = text(m, "Migration");
            let state = match (releasing, migration.is_empty()) {
                (true, _) => "releasing".to_string(),
                (false, true) => "held".to_string(),
                (false, false) => format!("migrating {migration}"),
            };
            let mut hint = text(m, "HolderLease");
            if text(m, "HolderNode") == "gone" {
                hint.push_str("; its Node object is gone");
            }
            [
                text(m, "VolumeId"),
                text(m, "Holder"),
                text(m, "Epoch"),
                text(m, "Since"),
                state,
                hint,
            ]
        })
        .collect();
    print_columns(
        &[
            "VOLUME",
            "HOLDER",
            "EPOCH",
            "SINCE",
            "STATE",
            "HOLDER LEASE (wall-clock hint)",
        ],
        &rows,
    );
}

/// Aligned columns, the last one as it is (it may be long).
fn print_columns<const N: usize>(head: &[&str; N], rows: &[[String; N]]) {
    let width: Vec<usize> = (0..N)
        .map(|i| {
            rows.iter()
                .map(|r| r[i].len())
                .chain([head[i].len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |cells: Vec<&str>| {
        cells
            .iter()
            .enumerate()
            .map(|(i, c)| {
                if i + 1 == N {
                    c.to_string()
                } else {
                    format!("{c:<w$}", w = width[i])
                }
            })
            .collect::<Vec<_>>()
            .join("  ")
    };
    println!("{}", line(head.to_vec()));
    for r in rows {
        println!("{}", line(r.iter().map(String::as_str).collect()));
    }
}

fn print_table(list: &[Json]) {
    if list.is_empty() {
        println!("no volumes");
        return;
    }
    let rows: Vec<[String; 7]> = list
        .iter()
        .map(|m| {
            // The claim's holder node and epoch, "+migrating" during a migration.
            let holder = text(m, "ClaimHolder");
            let claim = match holder.split_once('/') {
                None => "-".to_string(),
                Some((node, _)) => {
                    let mig = if text(m, "Migration").is_empty() {
                        ""
                    } else {
                        " +migrating"
                    };
                    format!("{node}@{}{mig}", text(m, "ClaimEpoch"))
                }
            };
            [
                text(m, "VolumeId"),
                text(m, "State"),
                text(m, "Device"),
                text(m, "Nsid"),
                path_lines(m).len().to_string(),
                claim,
                text(m, "Nqn"),
            ]
        })
        .collect();
    print_columns(
        &["VOLUME", "STATE", "DEVICE", "NSID", "PATHS", "CLAIM", "NQN"],
        &rows,
    );
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
