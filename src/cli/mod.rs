//! The `raftstream` subcommands. Tables for people, JSON (`--output json`) for scripts.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand, ValueEnum};
use raftstream_api::checkpoint::SavepointRef;
use raftstream_api::client::ClusterClient;
use serde_json::json;
use tokio_util::sync::CancellationToken;

mod cluster;
pub(crate) mod functions;
mod job;
mod output;

use cluster::{run_cluster_command, run_coordinator_command};
use job::run_job_command;
use output::print_value;
pub use output::{job_json, print_table};

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
    /// Task slots this executor offers; each runs one parallel slice of a job (default: the
    /// cores available to this process).
    #[arg(long)]
    pub slots: Option<u32>,
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
    /// The most memory one instance of a user function may have (MiB), whatever its job asks.
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u64).range(1..=65536))]
    pub max_function_memory_mib: u64,
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
    Stream(crate::bench::stream::StreamBenchArgs),
    /// Rescale and drain times of a running job with keyed state, on a local cluster of real
    /// processes; records replayed by a drain.
    Elastic(crate::bench::elastic::ElasticBenchArgs),
    /// A word count with one hot word, one-phase against two-phase aggregation: throughput, the
    /// hot subtask's share of the input, the hottest keys, on a local cluster of real processes.
    Skew(crate::bench::skew::SkewBenchArgs),
    /// The word count with the built-in operators against the same logic as user functions
    /// (Rust, JavaScript, Python): lines/s and lines per executor CPU-second, as ratios to the built-in.
    Functions(crate::bench::functions::FunctionsBenchArgs),
    /// The word count's user-function calls alone, in this process: time per line in each
    /// language's flat_map and reduce and in the host's work around them.
    FunctionCalls(crate::bench::function_calls::FunctionCallsBenchArgs),
    /// Records a kill -9 makes the job process again, with checkpoints by time only and with
    /// `max_records`, at a source far faster than the bound allows per interval, on a local
    /// cluster of real processes.
    Replay(crate::bench::replay::ReplayBenchArgs),
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
                slots: args.slots.unwrap_or_else(available_cores),
                data_dir: args.data_dir.context("--data-dir is required")?,
                checkpoint_store: args.checkpoint_store,
                dial: parse_dial(&args.dial)?,
                drain_timeout: Duration::from_secs(args.drain_timeout_secs),
                http_listen_address: parse_http_listen(args.http_listen.as_deref())?,
                max_function_memory_mib: args.max_function_memory_mib,
            };
            raftstream_executor::run_executor(config, shutdown, drain).await?;
            Ok(())
        }
        TopCommand::Cluster(command) => run_cluster_command(command, shutdown).await,
        TopCommand::Job(command) => run_job_command(command).await,
        TopCommand::Demo(args) => crate::demo::run_demo(args).await,
        TopCommand::Bench(BenchCommand::Raft(args)) => crate::bench::run_raft_bench(args).await,
        TopCommand::Bench(BenchCommand::Stream(args)) => crate::bench::stream::run_stream_bench(args).await,
        TopCommand::Bench(BenchCommand::Elastic(args)) => crate::bench::elastic::run_elastic_bench(args).await,
        TopCommand::Bench(BenchCommand::Skew(args)) => crate::bench::skew::run_skew_bench(args).await,
        TopCommand::Bench(BenchCommand::Replay(args)) => crate::bench::replay::run_replay_bench(args).await,
        TopCommand::Bench(BenchCommand::Functions(args)) => crate::bench::functions::run_functions_bench(args).await,
        TopCommand::Bench(BenchCommand::FunctionCalls(args)) => {
            crate::bench::function_calls::run_function_calls_bench(args).await
        }
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

/// The cores this process may use (its CPU affinity and cgroup quota count): an executor's
/// default slot count, one parallel slice of a job per core as in Flink.
fn available_cores() -> u32 {
    std::thread::available_parallelism()
        .ok()
        .and_then(|cores| u32::try_from(cores.get()).ok())
        .unwrap_or(1)
}
