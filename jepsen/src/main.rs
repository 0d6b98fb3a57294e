//! `raftstream-jepsen`: a seeded chaos run against a local cluster of real processes.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Parser;
use raftstream_jepsen::config::RunConfig;
use raftstream_jepsen::job_table::{check_job_table, JobInput, JobOutput};
use raftstream_jepsen::network::NetMode;
use raftstream_jepsen::run::{parse_faults, run};
use tracing_subscriber::EnvFilter;

/// Starts coordinators and executors from the `raftstream` binary, runs workloads while injecting
/// seeded faults, heals, settles, and checks the histories. Exits 1 on any anomaly.
#[derive(Debug, Parser)]
#[command(name = "raftstream-jepsen", version)]
struct Args {
    /// Seed of the fault schedule and the clients' choices: the same seed, the same schedule.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// How long faults are injected: `90s`, `2m`, `30m`.
    #[arg(long, default_value = "2m", value_parser = parse_duration)]
    time_limit: Duration,
    /// Fault kinds: kill, pause, restart-all, partition, delay, rescale, drain.
    #[arg(long, default_value = "kill,pause,restart-all,partition,delay,rescale,drain")]
    faults: String,
    /// Workloads: metadata, stream, checkpoints.
    #[arg(long, default_value = "metadata,stream,checkpoints")]
    workload: String,
    /// Coordinators.
    #[arg(long, default_value_t = 3)]
    nodes: u64,
    /// Executors.
    #[arg(long, default_value_t = 2)]
    executors: u32,
    /// Concurrent metadata clients.
    #[arg(long, default_value_t = 4)]
    clients: u32,
    /// Where the cluster's files, the history and `report.json` go.
    #[arg(long, default_value = "jepsen-out")]
    out: PathBuf,
    /// The `raftstream` binary (default: next to this one).
    #[arg(long)]
    binary: Option<PathBuf>,
    /// Switch on a bug in the executors on purpose (replay-from-start), to see the checkers fail.
    #[arg(long)]
    inject_defect: Option<String>,
    /// Instead of a timed run: start the proxied cluster and take fault commands on
    /// 127.0.0.1:PORT (jepsen/scripts/fault.sh) until Ctrl-C.
    #[arg(long, value_name = "PORT")]
    serve: Option<u16>,
    /// Where faults act on the links: `proxy` (a TCP proxy per link in this process; no root
    /// needed) or `netns` (a network namespace per process, iptables DROP for partitions, netem
    /// for delays; needs root).
    #[arg(long, value_enum, default_value = "proxy")]
    net: NetMode,
    /// Instead of a run: check the metadata history of an earlier run again (DIR/history.json).
    #[arg(long, value_name = "DIR")]
    check: Option<PathBuf>,
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (number, unit) = text.split_at(text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len()));
    let value: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration like 90s, 2m or 1h"))?;
    let seconds = match unit {
        "s" | "" => value,
        "m" => value * 60,
        "h" => value * 3_600,
        other => return Err(format!("unknown unit {other:?} in {text:?}: use s, m or h")),
    };
    if seconds < 10 {
        return Err(format!("{text:?} is too short: at least 10s"));
    }
    Ok(Duration::from_secs(seconds))
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn")))
        .with_writer(std::io::stderr)
        .init();
    match run_from(Args::parse()).await {
        Ok(clean) if clean => std::process::ExitCode::SUCCESS,
        Ok(_) => std::process::ExitCode::from(1),
        Err(error) => {
            eprintln!("error: {error:#}");
            std::process::ExitCode::from(2)
        }
    }
}

async fn run_from(args: Args) -> anyhow::Result<bool> {
    if let Some(directory) = &args.check {
        let path = directory.join("history.json");
        let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
        let history: Vec<raftstream_jepsen::history::Operation<JobInput, JobOutput>> =
            serde_json::from_str(&text).with_context(|| format!("{} is not a metadata history", path.display()))?;
        let anomalies = check_job_table(&history);
        println!("{} operations, {} anomalies", history.len(), anomalies.len());
        for anomaly in &anomalies {
            println!("  {}: {}", anomaly.kind, anomaly.explanation);
        }
        return Ok(anomalies.is_empty());
    }
    let faults = parse_faults(&args.faults).map_err(anyhow::Error::msg)?;
    let workloads: Vec<&str> = args.workload.split(',').map(str::trim).collect();
    if let Some(unknown) = workloads
        .iter()
        .find(|name| !matches!(**name, "metadata" | "stream" | "checkpoints"))
    {
        bail!("unknown workload {unknown:?}; available: metadata, stream, checkpoints");
    }
    let binary = match args.binary {
        Some(binary) => binary,
        None => std::env::current_exe()
            .context("locating this binary")?
            .with_file_name("raftstream"),
    };
    if !binary.is_file() {
        bail!(
            "no raftstream binary at {}: build it (cargo build) or pass --binary",
            binary.display()
        );
    }
    if let Some(defect) = &args.inject_defect {
        if !raftstream_executor::defects::KNOWN.contains(&defect.as_str()) {
            bail!(
                "unknown defect {defect:?}; available: {}",
                raftstream_executor::defects::KNOWN.join(", ")
            );
        }
    }
    let out = std::path::absolute(&args.out)?;
    let _out_lock = raftstream_jepsen::out_dir::OutDirLock::acquire(&out)?;
    let config = RunConfig {
        seed: args.seed,
        time_limit: args.time_limit,
        faults,
        metadata: workloads.contains(&"metadata"),
        stream: workloads.contains(&"stream"),
        checkpoints: workloads.contains(&"checkpoints"),
        nodes: args.nodes,
        executors: args.executors,
        clients: args.clients,
        out: out.clone(),
        binary,
        inject_defect: args.inject_defect,
        net: args.net,
    };
    if let Some(port) = args.serve {
        raftstream_jepsen::serve::serve(config, port).await?;
        return Ok(true);
    }
    let report = run(config).await?;
    print!("{}", report.summary());
    println!("report: {}", out.join("report.json").display());
    Ok(report.anomalies().is_empty())
}
