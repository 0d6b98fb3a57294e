//! The `raftstream` subcommands. Tables for people, JSON (`--output json`) for scripts.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand, ValueEnum};
use raftstream_api::checkpoint::SavepointRef;
use raftstream_api::client::{running_entry, ClusterClient, SubmitOptions};
use raftstream_coordinator::node::{run_coordinator, CoordinatorConfig, RaftSettings};
use raftstream_proto::v1 as pb;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::local_cluster::LocalCluster;

/// The coordinators `cluster up` starts by default, and so where the other commands look first.
pub const DEFAULT_COORDINATORS: &str = "127.0.0.1:7101,127.0.0.1:7102,127.0.0.1:7103";

/// Raftstream: fault-tolerant stream processing coordinated by Raft.
#[derive(Debug, Parser)]
#[command(name = "raftstream", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: TopCommand,
    /// How logs (on stderr) are written: text for people, json (one object per line, with the
    /// node/job/operator/subtask ids of the spans around each event) for log pipelines.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true, env = "RAFTSTREAM_LOG_FORMAT")]
    pub log_format: LogFormat,
}

/// `--log-format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum TopCommand {
    /// Run one coordinator node.
    Coordinator(CoordinatorArgs),
    /// Run one executor (task slots for stream jobs); `executor drain ID` drains one.
    #[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
    Executor {
        #[command(subcommand)]
        action: Option<ExecutorAction>,
        #[command(flatten)]
        args: ExecutorArgs,
    },
    /// Local clusters and cluster administration.
    #[command(subcommand)]
    Cluster(ClusterCommand),
    /// Submit, inspect and cancel jobs.
    #[command(subcommand)]
    Job(JobCommand),
    /// Start a local cluster, submit a job, kill the leader, show that nothing was lost.
    Demo(crate::demo::DemoArgs),
    /// Benchmarks that print figures.
    #[command(subcommand)]
    Bench(BenchCommand),
}

/// How to run one coordinator: a config file, or flags.
#[derive(Debug, Args)]
pub struct CoordinatorArgs {
    /// YAML/JSON config file; when given, the other flags must be absent.
    #[arg(long, conflicts_with_all = ["id", "listen", "peers", "data_dir", "bootstrap"])]
    pub config: Option<PathBuf>,
    /// This node's Raft id.
    #[arg(long)]
    pub id: Option<u64>,
    /// gRPC listen address (host:port).
    #[arg(long)]
    pub listen: Option<String>,
    /// Initial voters as id=host:port, comma separated (used with --bootstrap).
    #[arg(long, value_delimiter = ',')]
    pub peers: Vec<String>,
    /// Where the RocksDB log and state live.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Initialize a new cluster from --peers if this node's storage is empty.
    #[arg(long)]
    pub bootstrap: bool,
    /// HTTP listen address (host:port) for /metrics, /healthz and /readyz; with --config, it
    /// overrides the file's `http_listen_address`.
    #[arg(long, alias = "metrics-listen", value_name = "ADDR")]
    pub http_listen: Option<String>,
}

/// How to run one executor.
#[derive(Debug, Args)]
pub struct ExecutorArgs {
    /// Coordinator addresses; any reachable one works.
    #[arg(long, value_delimiter = ',', env = "RAFTSTREAM_COORDINATORS", default_value = DEFAULT_COORDINATORS)]
    pub coordinators: Vec<String>,
    /// Task slots this executor offers.
    #[arg(long, default_value_t = 4)]
    pub slots: u32,
    /// gRPC listen address of the executor (data exchange between subtasks, health checks).
    #[arg(long, default_value = "127.0.0.1:0")]
    pub listen: String,
    /// Where the executor keeps its id.
    #[arg(long, required = true)]
    pub data_dir: Option<PathBuf>,
    /// Checkpoint storage shared by all executors of a job: a directory, file:///dir or
    /// s3://bucket/prefix (S3 settings from the AWS_* environment variables; default:
    /// <data-dir>/checkpoints).
    #[arg(long, alias = "checkpoint-dir", value_name = "URL")]
    pub checkpoint_store: Option<String>,
    /// Executor id; generated once and kept in the data dir when absent.
    #[arg(long)]
    pub id: Option<String>,
    /// ADVERTISED=DIALLED: reach an address another node advertises somewhere else (a NAT, or the
    /// chaos harness's fault proxy); repeatable.
    #[arg(long, value_name = "ADVERTISED=DIALLED")]
    pub dial: Vec<String>,
    /// On SIGTERM the executor drains itself (its subtasks move to other executors through a
    /// checkpoint taken for the move) before it exits, waiting at most this long; a second
    /// SIGTERM exits at once.
    #[arg(long, default_value_t = 60)]
    pub drain_timeout_secs: u64,
    /// HTTP listen address (host:port) for /metrics, /healthz and /readyz.
    #[arg(long, alias = "metrics-listen", value_name = "ADDR")]
    pub http_listen: Option<String>,
}

/// `executor ...` besides running one.
#[derive(Debug, Subcommand)]
pub enum ExecutorAction {
    /// Move every subtask off an executor through a checkpoint taken for the move (nothing is
    /// processed twice), then have it exit; it takes no new work meanwhile.
    Drain {
        executor_id: String,
        #[command(flatten)]
        client: ClientArgs,
    },
}

/// Output style of the client commands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    Table,
    Json,
}

/// Options every client command takes.
#[derive(Debug, Args, Clone)]
pub struct ClientArgs {
    /// Coordinator addresses; any reachable one works.
    #[arg(long, value_delimiter = ',', env = "RAFTSTREAM_COORDINATORS", default_value = DEFAULT_COORDINATORS, global = true)]
    pub coordinators: Vec<String>,
    /// table or json.
    #[arg(long, value_enum, default_value_t = OutputFormat::Table, global = true)]
    pub output: OutputFormat,
    /// How long to keep retrying while no leader is reachable.
    #[arg(long, default_value_t = 15, global = true)]
    pub retry_secs: u64,
}

/// `cluster ...`
#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// Start a local cluster of coordinator processes and keep it running until Ctrl-C.
    Up {
        #[arg(long, default_value_t = 3)]
        nodes: u64,
        /// Where node configs, data and logs go.
        #[arg(long, default_value = "raftstream-cluster")]
        dir: PathBuf,
        /// First port; node n listens on base-port + n - 1 (0: ports chosen by the OS).
        #[arg(long, default_value_t = 7101)]
        base_port: u16,
    },
    /// Members, leader, term and log indexes of every node.
    Status(ClientArgs),
    /// Executors, their slots, and the leader's view of their heartbeats.
    Executors(ClientArgs),
    /// Add a node (already running, with empty storage) as a learner.
    AddLearner {
        #[arg(long)]
        id: u64,
        #[arg(long)]
        address: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Replace a voter (usually a dead one) by a new node running with an empty data dir: adds it
    /// as a learner, waits until it caught up, then swaps it in for the old one. The same as
    /// `add-learner` followed by `change-membership`.
    ReplaceNode {
        /// The voter to remove.
        #[arg(long)]
        dead: u64,
        /// The new node's id.
        #[arg(long)]
        new_id: u64,
        /// The new node's advertised address (host:port).
        #[arg(long)]
        address: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Make exactly these nodes the voters (promotes learners, removes the others).
    ChangeMembership {
        #[arg(long, value_delimiter = ',', required = true)]
        voters: Vec<u64>,
        #[command(flatten)]
        client: ClientArgs,
    },
}

/// `job ...`
#[derive(Debug, Subcommand)]
pub enum JobCommand {
    /// Submit a job spec (YAML or JSON file).
    Submit {
        file: PathBuf,
        /// Reuse to make a retried submit create one job; random when absent.
        #[arg(long)]
        request_id: Option<String>,
        /// Start from a savepoint (JOB:SAVEPOINT, e.g. job-3:17), also at other parallelisms;
        /// operators are matched by id.
        #[arg(long, value_name = "JOB:SAVEPOINT")]
        from_savepoint: Option<SavepointRef>,
        /// Drop the savepoint's state of operators the job no longer has instead of refusing.
        #[arg(long, requires = "from_savepoint")]
        allow_unmatched_state: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// All jobs.
    List(ClientArgs),
    /// One job, with its subtasks.
    Status {
        job_id: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Change the parallelism of a running job, or of one of its operators: it restarts from
    /// its latest completed checkpoint at the new parallelism, exactly once.
    Rescale {
        job_id: String,
        /// The new parallelism.
        #[arg(long)]
        parallelism: u32,
        /// Only this operator (default: every operator).
        #[arg(long)]
        operator: Option<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Cancel a job.
    Cancel {
        job_id: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Take a savepoint of a running job and print its id (`job savepoint delete` deletes one).
    #[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
    Savepoint {
        #[command(subcommand)]
        action: Option<SavepointCommand>,
        /// The running job.
        #[arg(required = true)]
        job_id: Option<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Stop a job with a savepoint: the sources stop after it, every sink publishes it, and the
    /// job ends Stopped; `job submit --from-savepoint` goes on from it.
    Stop {
        job_id: String,
        /// Take a final savepoint (required: without one, use `job cancel`).
        #[arg(long)]
        savepoint: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Completed checkpoints and savepoints of a job.
    Checkpoints {
        job_id: String,
        #[command(flatten)]
        client: ClientArgs,
    },
}

/// `job savepoint ...`
#[derive(Debug, Subcommand)]
pub enum SavepointCommand {
    /// Delete a savepoint and its state files.
    Delete { job_id: String, savepoint_id: u64 },
}

/// `bench ...`
#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Write throughput and latency at 1/16/64 clients, and leader failover time, on a local
    /// three-node cluster.
    Raft(crate::bench::RaftBenchArgs),
    /// Word-count throughput, executor recovery and leader failover on a local cluster of real processes.
    Stream(crate::bench_stream::StreamBenchArgs),
    /// Rescale and drain times of a running job with keyed state, on a local cluster of real
    /// processes; records replayed by a drain.
    Elastic(crate::bench_elastic::ElasticBenchArgs),
    /// A word count with one hot word, one-phase against two-phase aggregation: throughput, the
    /// hot subtask's share of the input, the hottest keys, on a local cluster of real processes.
    Skew(crate::bench_skew::SkewBenchArgs),
    /// Records a kill -9 makes the job process again, with checkpoints by time only and with
    /// `max_records`, at a source far faster than the bound allows per interval, on a local
    /// cluster of real processes.
    Replay(crate::bench_replay::ReplayBenchArgs),
}

fn client_for(args: &ClientArgs) -> anyhow::Result<ClusterClient> {
    Ok(ClusterClient::new(
        &args.coordinators,
        Duration::from_secs(args.retry_secs),
    )?)
}

fn random_request_id() -> String {
    format!("{:032x}", rand::random::<u128>())
}

/// `--dial` entries as a map, each `advertised=dialled`.
fn parse_dial(entries: &[String]) -> anyhow::Result<std::collections::BTreeMap<String, String>> {
    entries
        .iter()
        .map(|entry| {
            let (advertised, dialled) = entry
                .split_once('=')
                .filter(|(advertised, dialled)| !advertised.is_empty() && !dialled.is_empty())
                .with_context(|| format!("--dial {entry:?} is not ADVERTISED=DIALLED (host:port=host:port)"))?;
            Ok((advertised.trim().to_owned(), dialled.trim().to_owned()))
        })
        .collect()
}

/// Runs the parsed command line. `drain` is cancelled at the first stop signal when the command
/// drains before it stops (an executor); `shutdown` then at the second (or at once otherwise).
pub async fn run(cli: Cli, shutdown: CancellationToken, drain: CancellationToken) -> anyhow::Result<()> {
    match cli.command {
        TopCommand::Coordinator(args) => run_coordinator_command(args, shutdown).await,
        TopCommand::Executor {
            action: Some(ExecutorAction::Drain { executor_id, client }),
            ..
        } => {
            let jobs_to_move = client_for(&client)?
                .drain_executor(&executor_id, &random_request_id())
                .await?;
            print_value(
                client.output,
                json!({"executor_id": executor_id, "draining": true, "jobs_to_move": jobs_to_move}),
                || {
                    format!("executor {executor_id} draining: {jobs_to_move} running job(s) move through a checkpoint taken for the move; it exits once it holds nothing")
                },
            );
            Ok(())
        }
        TopCommand::Executor { action: None, args } => {
            let config = raftstream_executor::ExecutorConfig {
                executor_id: args.id,
                coordinators: args.coordinators,
                listen_address: args.listen,
                slots: args.slots,
                data_dir: args.data_dir.context("--data-dir is required")?,
                checkpoint_store: args.checkpoint_store,
                dial: parse_dial(&args.dial)?,
                drain_timeout: Duration::from_secs(args.drain_timeout_secs),
                http_listen_address: parse_http_listen(args.http_listen.as_deref())?,
            };
            raftstream_executor::run_executor(config, shutdown, drain).await?;
            Ok(())
        }
        TopCommand::Cluster(command) => run_cluster_command(command, shutdown).await,
        TopCommand::Job(command) => run_job_command(command).await,
        TopCommand::Demo(args) => crate::demo::run_demo(args).await,
        TopCommand::Bench(BenchCommand::Raft(args)) => crate::bench::run_raft_bench(args).await,
        TopCommand::Bench(BenchCommand::Stream(args)) => crate::bench_stream::run_stream_bench(args).await,
        TopCommand::Bench(BenchCommand::Elastic(args)) => crate::bench_elastic::run_elastic_bench(args).await,
        TopCommand::Bench(BenchCommand::Skew(args)) => crate::bench_skew::run_skew_bench(args).await,
        TopCommand::Bench(BenchCommand::Replay(args)) => crate::bench_replay::run_replay_bench(args).await,
    }
}

/// `--http-listen`, checked: a bad address is an error naming it, not a silent default.
fn parse_http_listen(address: Option<&str>) -> anyhow::Result<Option<std::net::SocketAddr>> {
    address
        .map(|address| {
            address
                .parse()
                .with_context(|| format!("--http-listen {address:?} is not host:port (e.g. 127.0.0.1:9100)"))
        })
        .transpose()
}

async fn run_coordinator_command(args: CoordinatorArgs, shutdown: CancellationToken) -> anyhow::Result<()> {
    let http_listen = parse_http_listen(args.http_listen.as_deref())?;
    let mut config = match args.config {
        Some(path) => CoordinatorConfig::from_file(&path)?,
        None => {
            let node_id = args.id.context("--id is required without --config")?;
            let listen = args.listen.context("--listen is required without --config")?;
            let data_dir = args.data_dir.context("--data-dir is required without --config")?;
            let mut initial_members = std::collections::BTreeMap::new();
            for peer in &args.peers {
                let (id, address) = peer
                    .split_once('=')
                    .with_context(|| format!("--peers entry {peer:?} is not id=host:port"))?;
                let id: u64 = id
                    .trim()
                    .parse()
                    .with_context(|| format!("--peers entry {peer:?}: {id:?} is not a node id"))?;
                initial_members.insert(id, address.trim().to_owned());
            }
            let config = CoordinatorConfig {
                node_id,
                listen_address: listen
                    .parse()
                    .with_context(|| format!("--listen {listen:?} is not host:port"))?,
                advertise_address: None,
                data_dir,
                initial_members,
                bootstrap: args.bootstrap,
                raft: RaftSettings::default(),
                executors: Default::default(),
                dial_addresses: Default::default(),
                http_listen_address: None,
            };
            config.validate()?;
            config
        }
    };
    if http_listen.is_some() {
        config.http_listen_address = http_listen;
    }
    run_coordinator(config, shutdown).await?;
    Ok(())
}

async fn run_cluster_command(command: ClusterCommand, shutdown: CancellationToken) -> anyhow::Result<()> {
    match command {
        ClusterCommand::Up { nodes, dir, base_port } => {
            let binary = std::env::current_exe().context("locating the raftstream binary")?;
            let addresses = if base_port == 0 {
                Vec::new()
            } else {
                (0..nodes)
                    .map(|offset| {
                        let port = u16::try_from(u64::from(base_port) + offset).context("port above 65535")?;
                        Ok(format!("127.0.0.1:{port}"))
                    })
                    .collect::<anyhow::Result<Vec<_>>>()?
            };
            let directory = std::path::absolute(&dir)?;
            let mut cluster = LocalCluster::start(&binary, &directory, nodes, addresses, RaftSettings::default())?;
            let leader = cluster.wait_for_leader(Duration::from_secs(20)).await?;
            println!("Raftstream cluster up: {nodes} coordinators, leader is node {leader}");
            for node in cluster.nodes() {
                println!(
                    "  node {}  {}  pid {}  dashboard http://{}/  metrics http://{}/metrics  log {}",
                    node.node_id,
                    node.address,
                    node.pid().unwrap_or(0),
                    node.http_address,
                    node.http_address,
                    node.log_path().display()
                );
            }
            println!("coordinators: {}", cluster.addresses().join(","));
            println!(
                "try: raftstream job submit examples/wordcount.yaml --coordinators {}",
                cluster.addresses().join(",")
            );
            println!("Ctrl-C stops the cluster (data stays in {}).", directory.display());
            loop {
                tokio::select! {
                    biased;
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(Duration::from_millis(500)) => {
                        if let Err(error) = cluster.check_running() {
                            eprintln!("warning: {error:#}");
                        }
                    }
                }
            }
            cluster.kill_all();
            println!("cluster stopped");
            Ok(())
        }
        ClusterCommand::Status(args) => {
            let status = client_for(&args)?.cluster_status().await?;
            print_cluster_status(&status, args.output);
            Ok(())
        }
        ClusterCommand::Executors(args) => {
            let executors = client_for(&args)?.list_executors().await?.executors;
            match args.output {
                OutputFormat::Json => {
                    let list: Vec<_> = executors
                        .iter()
                        .map(|e| json!({"executor_id": e.executor_id, "address": e.address, "slots": e.slots, "used_slots": e.used_slots,
                                        "alive": e.alive, "draining": e.draining, "connected": e.connected, "last_heartbeat_age_ms": e.last_heartbeat_age_ms}))
                        .collect();
                    println!("{}", serde_json::Value::Array(list));
                }
                OutputFormat::Table => {
                    let rows = executors
                        .iter()
                        .map(|e| {
                            vec![
                                e.executor_id.clone(),
                                e.address.clone(),
                                format!("{}/{}", e.used_slots, e.slots),
                                match (e.alive, e.draining) {
                                    (true, false) => "alive",
                                    (true, true) => "draining",
                                    (false, true) => "drained",
                                    (false, false) => "dead",
                                }
                                .to_owned(),
                                if e.connected { "yes" } else { "no" }.to_owned(),
                                e.last_heartbeat_age_ms
                                    .map_or("-".to_owned(), |age| format!("{age} ms ago")),
                            ]
                        })
                        .collect();
                    print_table(&["EXECUTOR", "ADDRESS", "SLOTS", "STATE", "SESSION", "HEARTBEAT"], rows);
                }
            }
            Ok(())
        }
        ClusterCommand::AddLearner { id, address, client } => {
            let reply = client_for(&client)?.add_learner(id, &address).await?;
            print_value(
                client.output,
                json!({"node_id": id, "address": address, "log_index": reply.log_index}),
                || {
                    format!(
                        "node {id} at {address} added as learner (log index {})",
                        reply.log_index
                    )
                },
            );
            Ok(())
        }
        ClusterCommand::ReplaceNode {
            dead,
            new_id,
            address,
            client,
        } => {
            let replaced = client_for(&client)?.replace_node(dead, new_id, &address).await?;
            print_value(
                client.output,
                json!({
                    "removed": dead,
                    "added": new_id,
                    "address": address,
                    "voters": replaced.voters,
                    "learner_log_index": replaced.learner_log_index,
                    "membership_log_index": replaced.membership_log_index,
                }),
                || {
                    format!(
                        "node {new_id} at {address} replaced node {dead}; voters are now {:?} (log index {})",
                        replaced.voters, replaced.membership_log_index
                    )
                },
            );
            Ok(())
        }
        ClusterCommand::ChangeMembership { voters, client } => {
            let reply = client_for(&client)?.change_membership(&voters).await?;
            print_value(
                client.output,
                json!({"voters": voters, "log_index": reply.log_index}),
                || format!("voters are now {voters:?} (log index {})", reply.log_index),
            );
            Ok(())
        }
    }
}

async fn run_job_command(command: JobCommand) -> anyhow::Result<()> {
    match command {
        JobCommand::Submit {
            file,
            request_id,
            from_savepoint,
            allow_unmatched_state,
            client,
        } => {
            let spec =
                std::fs::read_to_string(&file).with_context(|| format!("reading job spec {}", file.display()))?;
            let request_id = request_id.unwrap_or_else(random_request_id);
            let options = SubmitOptions {
                from_savepoint,
                allow_unmatched_state,
            };
            let job = client_for(&client)?
                .submit_job_with(&spec, &request_id, &options)
                .await?;
            print_value(client.output, job_json(&job), || {
                let from = match &options.from_savepoint {
                    Some(savepoint) => format!(" from savepoint {savepoint}"),
                    None => String::new(),
                };
                format!("submitted {} ({}){from}: {}", job.job_id, job.name, job.status)
            });
        }
        JobCommand::Savepoint {
            action: Some(SavepointCommand::Delete { job_id, savepoint_id }),
            client,
            ..
        } => {
            let savepoint = SavepointRef::parse(&format!("{job_id}:{savepoint_id}"))?;
            let told = client_for(&client)?
                .delete_savepoint(&savepoint, &random_request_id())
                .await?;
            print_value(
                client.output,
                json!({"deleted": savepoint.to_string(), "executors_told": told}),
                || {
                    if told == 0 {
                        format!("deleted savepoint {savepoint}; no executor is connected to delete its files now")
                    } else {
                        format!("deleted savepoint {savepoint}; {told} executor(s) told to delete its files")
                    }
                },
            );
        }
        JobCommand::Savepoint {
            action: None,
            job_id,
            client,
        } => {
            let job_id = job_id.context("which job? (job savepoint JOB_ID)")?;
            let (savepoint, _) = client_for(&client)?
                .take_savepoint(&job_id, false, &random_request_id())
                .await?;
            print_value(client.output, checkpoint_json(&savepoint), || {
                format!(
                    "savepoint {}:{} taken ({} bytes)",
                    savepoint.job_id, savepoint.checkpoint_id, savepoint.size_bytes
                )
            });
        }
        JobCommand::Stop {
            job_id,
            savepoint,
            client,
        } => {
            if !savepoint {
                bail!("`job stop` stops a job with a savepoint: pass --savepoint (or `job cancel {job_id}` to end it without one)");
            }
            let cluster = client_for(&client)?;
            let (savepoint, _) = cluster.take_savepoint(&job_id, true, &random_request_id()).await?;
            let deadline = std::time::Instant::now() + STOP_PATIENCE;
            let job = loop {
                let job = cluster.get_job(&job_id, pb::ReadConsistency::Linearizable).await?;
                if job.status != "Running" || std::time::Instant::now() >= deadline {
                    break job;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            };
            let mut value = checkpoint_json(&savepoint);
            value["status"] = json!(job.status);
            print_value(client.output, value, || {
                format!(
                    "{}: {} with savepoint {}:{} ({})",
                    job.job_id, job.status, savepoint.job_id, savepoint.checkpoint_id, job.status_reason
                )
            });
            if job.status != "Stopped" {
                bail!(
                    "savepoint {}:{} was taken, but job {} is {}: {}",
                    savepoint.job_id,
                    savepoint.checkpoint_id,
                    job.job_id,
                    job.status,
                    job.status_reason
                );
            }
        }
        JobCommand::List(args) => {
            let jobs = client_for(&args)?.list_jobs(pb::ReadConsistency::Linearizable).await?;
            match args.output {
                OutputFormat::Json => println!("{}", serde_json::Value::Array(jobs.iter().map(job_json).collect())),
                OutputFormat::Table => {
                    let rows = jobs
                        .iter()
                        .map(|job| {
                            let placed = job
                                .subtasks
                                .iter()
                                .filter(|subtask| !subtask.executor_id.is_empty())
                                .count();
                            vec![
                                job.job_id.clone(),
                                job.name.clone(),
                                job.status.clone(),
                                format!("{placed}/{}", job.subtasks.len()),
                                job.restart_count.to_string(),
                                job.last_checkpoint_id.map_or("-".to_owned(), |id| id.to_string()),
                            ]
                        })
                        .collect();
                    print_table(&["JOB", "NAME", "STATUS", "PLACED", "RESTARTS", "CHECKPOINT"], rows);
                }
            }
        }
        JobCommand::Status { job_id, client } => {
            let cluster = client_for(&client)?;
            let job = cluster.get_job(&job_id, pb::ReadConsistency::Linearizable).await?;
            // The retained checkpoints, with what triggered each.
            let checkpoints = cluster.list_checkpoints(&job_id).await?;
            // Volatile counts from the leader's memory: a status without them is still useful.
            let reply = cluster.get_job_metrics(&job_id).await.map_err(|error| {
                eprintln!("warning: no metrics from the leader: {error}");
            });
            let running = reply.as_ref().ok().map(|reply| reply.running.clone());
            let metrics = reply.map(|reply| reply.subtasks).unwrap_or_default();
            match client.output {
                OutputFormat::Json => {
                    let mut value = job_json(&job);
                    value["checkpoints"] = checkpoints.iter().map(checkpoint_json).collect();
                    value["metrics"] = metrics.iter().map(subtask_metrics_json).collect();
                    if let Some(running) = &running {
                        value["running"] = running
                            .iter()
                            .map(|running| {
                                let task = running.task.clone().unwrap_or_default();
                                json!({
                                    "subtask": format!("{}[{}]", task.operator_id, task.subtask_index),
                                    "epoch": task.epoch,
                                    "restore_ms": running.restore_ms,
                                })
                            })
                            .collect();
                    }
                    value["hot_keys"] = hot_keys_by_operator(&metrics)
                        .into_iter()
                        .map(|(operator, keys)| {
                            let keys: Vec<serde_json::Value> = keys
                                .iter()
                                .map(|(key, count, share)| json!({"key": key, "count": count, "share": share}))
                                .collect();
                            (operator, serde_json::Value::Array(keys))
                        })
                        .collect::<serde_json::Map<String, serde_json::Value>>()
                        .into();
                    println!("{value}");
                }
                OutputFormat::Table => {
                    print_job(&job, &metrics, running.as_deref());
                    for (index, c) in checkpoints.iter().enumerate() {
                        let label = if index == 0 { "checkpoints:" } else { "" };
                        println!(
                            "{label:<12} {} {} ({}, {} bytes, {} ms)",
                            if c.savepoint { "savepoint" } else { "checkpoint" },
                            c.checkpoint_id,
                            trigger_of(c),
                            c.size_bytes,
                            c.completed_at_ms.saturating_sub(c.triggered_at_ms)
                        );
                    }
                }
            }
        }
        JobCommand::Rescale {
            job_id,
            parallelism,
            operator,
            client,
        } => {
            let job = client_for(&client)?
                .rescale_job(&job_id, operator.as_deref(), parallelism, &random_request_id())
                .await?;
            print_value(client.output, job_json(&job), || {
                format!("{}: {} ({})", job.job_id, job.status, job.status_reason)
            });
        }
        JobCommand::Cancel { job_id, client } => {
            let job = client_for(&client)?.cancel_job(&job_id, &random_request_id()).await?;
            print_value(client.output, job_json(&job), || {
                format!("{}: {}", job.job_id, job.status)
            });
        }
        JobCommand::Checkpoints { job_id, client } => {
            let checkpoints = client_for(&client)?.list_checkpoints(&job_id).await?;
            match client.output {
                OutputFormat::Json => {
                    let list: Vec<_> = checkpoints.iter().map(checkpoint_json).collect();
                    println!("{}", serde_json::Value::Array(list));
                }
                OutputFormat::Table => {
                    let rows = checkpoints
                        .iter()
                        .map(|c| {
                            vec![
                                c.checkpoint_id.to_string(),
                                if c.savepoint { "savepoint" } else { "checkpoint" }.to_owned(),
                                trigger_of(c).to_owned(),
                                c.epoch.to_string(),
                                c.size_bytes.to_string(),
                                c.completed_at_ms.to_string(),
                                // Checkpoints recorded before trigger times were kept show none.
                                if c.triggered_at_ms == 0 {
                                    "-".to_owned()
                                } else {
                                    c.completed_at_ms.saturating_sub(c.triggered_at_ms).to_string()
                                },
                            ]
                        })
                        .collect();
                    print_table(
                        &[
                            "ID",
                            "KIND",
                            "TRIGGER",
                            "EPOCH",
                            "BYTES",
                            "COMPLETED_AT_MS",
                            "DURATION_MS",
                        ],
                        rows,
                    );
                }
            }
        }
    }
    Ok(())
}

fn print_value(output: OutputFormat, value: serde_json::Value, table: impl FnOnce() -> String) {
    match output {
        OutputFormat::Json => println!("{value}"),
        OutputFormat::Table => println!("{}", table()),
    }
}

/// How long `job stop --savepoint` waits, after the savepoint, for every sink to publish it.
const STOP_PATIENCE: Duration = Duration::from_secs(120);

/// What started a checkpoint (`interval` for those recorded before triggers were).
fn trigger_of(checkpoint: &pb::Checkpoint) -> &str {
    if checkpoint.trigger.is_empty() {
        "interval"
    } else {
        &checkpoint.trigger
    }
}

/// The JSON form of a checkpoint or savepoint, as `--output json` prints it.
fn checkpoint_json(c: &pb::Checkpoint) -> serde_json::Value {
    json!({"job_id": c.job_id, "checkpoint_id": c.checkpoint_id, "savepoint": c.savepoint, "trigger": trigger_of(c), "epoch": c.epoch, "size_bytes": c.size_bytes, "triggered_at_ms": c.triggered_at_ms, "completed_at_ms": c.completed_at_ms, "duration_ms": c.completed_at_ms.saturating_sub(c.triggered_at_ms), "task_states": c.task_states.len()})
}

/// The JSON form of a job, as `--output json` prints it.
pub fn job_json(job: &pb::Job) -> serde_json::Value {
    let graph: serde_json::Value = serde_json::from_str(&job.graph_json).unwrap_or(serde_json::Value::Null);
    json!({
        "job_id": job.job_id,
        "name": job.name,
        "status": job.status,
        "status_reason": job.status_reason,
        "restart_count": job.restart_count,
        "submitted_at_ms": job.submitted_at_ms,
        "updated_at_ms": job.updated_at_ms,
        "last_checkpoint_id": job.last_checkpoint_id,
        "restored_checkpoint_id": job.restored_checkpoint_id,
        "restored_at_ms": job.restored_at_ms,
        "from_savepoint": if job.from_savepoint.is_empty() { serde_json::Value::Null } else { json!(job.from_savepoint) },
        "history": job.history.iter().map(|event| json!({"at_ms": event.at_ms, "what": event.what})).collect::<Vec<_>>(),
        "subtasks": job.subtasks.iter().map(|s| json!({
            "operator_id": s.operator_id, "subtask_index": s.subtask_index,
            "executor_id": if s.executor_id.is_empty() { serde_json::Value::Null } else { json!(s.executor_id) },
            "epoch": s.epoch,
        })).collect::<Vec<_>>(),
        "graph": graph,
    })
}

/// One task's counts as JSON.
fn subtask_metrics_json(metrics: &pb::SubtaskMetrics) -> serde_json::Value {
    let task = metrics.task.clone().unwrap_or_default();
    json!({
        "subtask": format!("{}[{}]", task.operator_id, task.subtask_index),
        "epoch": task.epoch,
        "chained": metrics.chained,
        "records_in": metrics.records_in,
        "records_out": metrics.records_out,
        "busy_ms": metrics.busy_ms,
        "records_in_per_second": metrics.records_in_per_second,
        "busy_ratio": metrics.busy_ratio,
        "hot_keys": metrics.hot_keys.iter().map(|hot| json!({"key": hot.key, "count": hot.count, "error": hot.error})).collect::<Vec<_>>(),
        "keys_counted": metrics.keys_counted,
    })
}

/// Per keyed operator, its hottest keys over all its subtasks (each key lives in one subtask),
/// with their estimated count and share of the operator's input, hottest first.
fn hot_keys_by_operator(metrics: &[pb::SubtaskMetrics]) -> BTreeMap<String, Vec<(String, u64, f64)>> {
    let mut counts: BTreeMap<String, (BTreeMap<String, u64>, u64)> = BTreeMap::new();
    for subtask in metrics.iter().filter(|subtask| subtask.keys_counted > 0) {
        let operator = subtask
            .task
            .as_ref()
            .map(|task| task.operator_id.clone())
            .unwrap_or_default();
        let (keys, counted) = counts.entry(operator).or_default();
        *counted += subtask.keys_counted;
        for hot in &subtask.hot_keys {
            *keys.entry(hot.key.clone()).or_default() += hot.count;
        }
    }
    counts
        .into_iter()
        .map(|(operator, (keys, counted))| {
            let mut keys: Vec<(String, u64, f64)> = keys
                .into_iter()
                .map(|(key, count)| (key, count, count as f64 / counted.max(1) as f64))
                .collect();
            keys.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
            keys.truncate(HOT_KEYS_SHOWN);
            (operator, keys)
        })
        .collect()
}

/// Hottest keys `job status` lists per keyed operator.
const HOT_KEYS_SHOWN: usize = 5;

/// `running`: the subtasks the leader knows run (None when it could not be asked).
fn print_job(job: &pb::Job, metrics: &[pb::SubtaskMetrics], running: Option<&[pb::SubtaskRunning]>) {
    println!("job:         {} ({})", job.job_id, job.name);
    println!(
        "status:      {}{}",
        job.status,
        if job.status_reason.is_empty() {
            String::new()
        } else {
            format!(" ({})", job.status_reason)
        }
    );
    println!("restarts:    {}", job.restart_count);
    println!(
        "checkpoint:  {}",
        job.last_checkpoint_id
            .map_or("none completed".to_owned(), |id| id.to_string())
    );
    if let Some(restored) = job.restored_checkpoint_id {
        println!("restored:    checkpoint {restored} (at {} ms)", job.restored_at_ms);
    }
    if !job.from_savepoint.is_empty() {
        println!("started:     from savepoint {}", job.from_savepoint);
    }
    for (index, event) in job.history.iter().enumerate() {
        let label = if index == 0 { "history:" } else { "" };
        println!("{label:<12} {} ms: {}", event.at_ms, event.what);
    }
    for (index, (operator, keys)) in hot_keys_by_operator(metrics).into_iter().enumerate() {
        let label = if index == 0 { "hot keys:" } else { "" };
        let shown: Vec<String> = keys
            .iter()
            .map(|(key, count, share)| format!("{key} {:.1}% ({count})", share * 100.0))
            .collect();
        println!("{label:<12} {operator}: {}", shown.join(", "));
    }
    // An ended job has released its slots.
    let ended = matches!(job.status.as_str(), "Finished" | "Failed" | "Cancelled" | "Stopped");
    let metrics_of = |operator: &str, index: u32| {
        metrics.iter().find(|m| {
            m.task
                .as_ref()
                .is_some_and(|task| task.operator_id == operator && task.subtask_index == index)
        })
    };
    // Chained operators run in their head's task, which reports for the whole chain.
    let chained_into = |operator: &str| {
        metrics.iter().find_map(|m| {
            m.chained
                .iter()
                .any(|member| member == operator)
                .then(|| m.task.as_ref().map(|task| task.operator_id.clone()))
                .flatten()
        })
    };
    let rows = job
        .subtasks
        .iter()
        .map(|s| {
            let counts = match (
                metrics_of(&s.operator_id, s.subtask_index),
                chained_into(&s.operator_id),
            ) {
                (Some(m), _) => vec![
                    m.records_in.to_string(),
                    m.records_out.to_string(),
                    format!("{:.0}", m.records_in_per_second),
                    format!("{:.0}%", m.busy_ratio * 100.0),
                ],
                (None, Some(head)) => vec![format!("(in {head})"), String::new(), String::new(), String::new()],
                (None, None) => vec!["-".to_owned(), "-".to_owned(), "-".to_owned(), "-".to_owned()],
            };
            // Flink's DEPLOYING and INITIALIZING are one STARTING here: placed, restoring its
            // state or opening its channels.
            let state = match running {
                _ if ended => "-",
                _ if s.executor_id.is_empty() => "WAITING",
                Some(running) if running_entry(running, s).is_some() => "RUNNING",
                Some(_) => "STARTING",
                None => "?",
            };
            let mut row = vec![
                format!("{}[{}]", s.operator_id, s.subtask_index),
                state.to_owned(),
                if s.executor_id.is_empty() && ended {
                    "-".to_owned()
                } else if s.executor_id.is_empty() {
                    "(waiting for a slot)".to_owned()
                } else {
                    s.executor_id.clone()
                },
                s.epoch.to_string(),
            ];
            row.extend(counts);
            row
        })
        .collect();
    print_table(
        &["SUBTASK", "STATE", "EXECUTOR", "EPOCH", "IN", "OUT", "IN/S", "BUSY"],
        rows,
    );
}

fn print_cluster_status(status: &pb::ClusterStatusResponse, output: OutputFormat) {
    let nodes: Vec<serde_json::Value> = status
        .nodes
        .iter()
        .map(|n| {
            let role = status.members.iter().find(|m| m.node_id == n.node_id).map_or("not a member", |m| m.role.as_str());
            json!({"node_id": n.node_id, "address": n.address, "role": role, "state": n.state, "term": n.term,
                   "last_log_index": n.last_log_index, "committed_index": n.committed_index, "applied_index": n.applied_index,
                   "snapshot_index": n.snapshot_index, "error": n.error})
        })
        .collect();
    match output {
        OutputFormat::Json => println!(
            "{}",
            json!({"leader_id": status.leader_id, "term": status.term, "nodes": nodes})
        ),
        OutputFormat::Table => {
            println!(
                "leader: {}   term: {}",
                status.leader_id.map_or("none".to_owned(), |id| format!("node {id}")),
                status.term
            );
            let show = |index: Option<u64>| index.map_or("-".to_owned(), |i| i.to_string());
            let rows = status
                .nodes
                .iter()
                .map(|n| {
                    let role = status
                        .members
                        .iter()
                        .find(|m| m.node_id == n.node_id)
                        .map_or("-", |m| m.role.as_str());
                    vec![
                        n.node_id.to_string(),
                        n.address.clone(),
                        role.to_owned(),
                        n.state.clone(),
                        n.term.to_string(),
                        show(n.last_log_index),
                        show(n.committed_index),
                        show(n.applied_index),
                        show(n.snapshot_index),
                    ]
                })
                .collect();
            print_table(
                &[
                    "NODE",
                    "ADDRESS",
                    "ROLE",
                    "STATE",
                    "TERM",
                    "LAST_LOG",
                    "COMMITTED",
                    "APPLIED",
                    "SNAPSHOT",
                ],
                rows,
            );
        }
    }
}

/// Prints rows under headers with aligned columns.
pub fn print_table(headers: &[&str], rows: Vec<Vec<String>>) {
    let mut widths: Vec<usize> = headers.iter().map(|header| header.len()).collect();
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        println!("{}", padded.join("  ").trim_end());
    };
    line(headers.iter().map(|header| (*header).to_owned()).collect());
    for row in rows {
        line(row);
    }
}

/// Fails with a clear message when a flag combination makes no sense.
/// Whether the command drains before it stops: the first stop signal starts the drain, the
/// second stops it at once.
pub fn drains_before_stopping(cli: &Cli) -> bool {
    matches!(cli.command, TopCommand::Executor { action: None, .. })
}

pub fn check_args(cli: &Cli) -> anyhow::Result<()> {
    if let TopCommand::Cluster(ClusterCommand::Up { nodes, .. }) = &cli.command {
        if *nodes == 0 || *nodes > 9 {
            bail!("--nodes must be between 1 and 9");
        }
    }
    Ok(())
}
