//! Registration and the session with the coordinator leader.

use std::path::PathBuf;
use std::time::Duration;

use raftstream_api::client::{ClientError, ClusterClient};
use raftstream_api::convert::{
    executor_command_from_proto, subtask_metrics_to_proto, task_ref_to_proto, task_report_to_proto,
};
use raftstream_api::dial::DialAddresses;
use raftstream_api::messages::TaskReport;
use raftstream_api::metadata::LEADER_HINT_METADATA;
use raftstream_proto::v1 as pb;
use raftstream_proto::v1::executor_service_client::ExecutorServiceClient;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tonic::transport::Endpoint;
use tracing::Instrument;

use crate::checkpoint::{CheckpointStorage, StorageConfigError};
use crate::runtime::exchange::{ExchangeHub, ExchangeServiceImpl};
use crate::runtime::task::TaskEnvironment;
use crate::runtime::user_functions::FunctionRuntime;
use crate::task_manager::TaskManager;

const FIRST_BACKOFF: Duration = Duration::from_millis(20);
/// The longest wait between registration attempts. A registration is one small request; waiting
/// longer only delays the executor's first work after the coordinators (re)start together.
const MAX_BACKOFF: Duration = Duration::from_millis(500);
const OUTBOUND_CAPACITY: usize = 64;
/// How often a heartbeat carries the tasks' metrics.
const METRICS_INTERVAL: Duration = Duration::from_secs(1);

/// Heartbeat intervals without any message from the leader after which the session is given up.
const SILENT_HEARTBEATS: u32 = 3;
const REGISTER_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(1);
const REPORT_CAPACITY: usize = 4_096;
/// How long an executor asked to stop waits for its subtasks to stop.
const SHUTDOWN_DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// How to run one executor.
#[derive(Debug, Clone)]
pub struct ExecutorConfig {
    /// Stable across restarts when absent: generated once and kept in `data_dir`.
    pub executor_id: Option<String>,
    pub coordinators: Vec<String>,
    pub listen_address: String,
    pub slots: u32,
    pub data_dir: PathBuf,
    /// Where checkpointed state goes, as a URL (`file:///dir`, a directory path, `s3://bucket/prefix`);
    /// every executor of a job must reach the same store, since a subtask may be restored on
    /// another executor. Default: `<data_dir>/checkpoints`, enough for a single executor.
    pub checkpoint_store: Option<String>,
    /// Advertised addresses (coordinators', other executors') this executor dials elsewhere.
    pub dial: std::collections::BTreeMap<String, String>,
    /// How long a drain asked for by the process itself (SIGTERM) may take before it exits
    /// anyway.
    pub drain_timeout: Duration,
    /// Where to serve HTTP: `/metrics`, `/healthz`, `/readyz` (none: no HTTP listener).
    pub http_listen_address: Option<std::net::SocketAddr>,
    /// The most memory one instance of a user function may have, whatever its job asks for.
    pub max_function_memory_mib: u64,
}

/// Why an executor could not start.
#[derive(Debug, thiserror::Error)]
pub enum ExecutorError {
    #[error("invalid executor config: {0}")]
    InvalidConfig(String),
    #[error("executor data dir {path}: {source}")]
    DataDir { path: PathBuf, source: std::io::Error },
    #[error(transparent)]
    CheckpointStoreConfig(#[from] StorageConfigError),
    #[error("checkpoint store {store} is not usable")]
    CheckpointStoreUnusable {
        store: String,
        source: crate::checkpoint::CheckpointStoreError,
    },
    #[error("binding {address}: {source}")]
    Bind { address: String, source: std::io::Error },
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("gRPC server: {0}")]
    Serve(#[from] tonic::transport::Error),
    #[error(transparent)]
    Http(#[from] raftstream_observability::HttpError),
}

fn executor_id(config: &ExecutorConfig) -> Result<String, ExecutorError> {
    if let Some(id) = &config.executor_id {
        return Ok(id.clone());
    }
    let path = config.data_dir.join("executor-id");
    match std::fs::read_to_string(&path) {
        Ok(text) if !text.trim().is_empty() => Ok(text.trim().to_owned()),
        Ok(_) | Err(_) => {
            let id = format!("executor-{:08x}", rand::random::<u32>());
            std::fs::write(&path, &id).map_err(|source| ExecutorError::DataDir {
                path: path.clone(),
                source,
            })?;
            Ok(id)
        }
    }
}

/// Runs an executor until `shutdown` is cancelled, or until the leader says it was drained.
/// When `drain` is cancelled (the first SIGTERM), it asks the cluster to drain it: its subtasks
/// move to other executors through a checkpoint taken for the move, then the leader tells it to
/// exit; after `drain_timeout` it exits anyway.
pub async fn run_executor(
    config: ExecutorConfig,
    shutdown: CancellationToken,
    drain: CancellationToken,
) -> Result<(), ExecutorError> {
    if config.slots == 0 {
        return Err(ExecutorError::InvalidConfig("--slots must be at least 1".to_owned()));
    }
    std::fs::create_dir_all(&config.data_dir).map_err(|source| ExecutorError::DataDir {
        path: config.data_dir.clone(),
        source,
    })?;
    let executor_id = executor_id(&config)?;
    let storage = match &config.checkpoint_store {
        Some(url) => CheckpointStorage::from_url(url)?,
        None => CheckpointStorage::local_directory(config.data_dir.join("checkpoints")),
    };
    storage
        .probe(&executor_id)
        .await
        .map_err(|source| ExecutorError::CheckpointStoreUnusable {
            store: storage.describe(),
            source,
        })?;
    let listener = tokio::net::TcpListener::bind(&config.listen_address)
        .await
        .map_err(|source| ExecutorError::Bind {
            address: config.listen_address.clone(),
            source,
        })?;
    let address = listener
        .local_addr()
        .map_err(|source| ExecutorError::Bind {
            address: config.listen_address.clone(),
            source,
        })?
        .to_string();
    let http_listener = match config.http_listen_address {
        Some(address) => Some(raftstream_observability::bind(address).await?),
        None => None,
    };
    let span = tracing::info_span!("executor", executor_id = %executor_id);
    if let Ok(defects) = std::env::var(crate::defects::VARIABLE) {
        span.in_scope(|| tracing::error!(%defects, "DEFECTS INJECTED ON PURPOSE: this executor is wrong by design"));
    }
    span.in_scope(
        || tracing::info!(%address, slots = config.slots, checkpoint_store = %storage.describe(), "executor starting"),
    );

    // The executor's own port: health checks and data exchange between subtasks.
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter
        .set_service_status("", tonic_health::ServingStatus::Serving)
        .await;
    let hub = ExchangeHub::default();
    let dial = DialAddresses::new(config.dial.clone());
    let exchange = ExchangeServiceImpl {
        hub: hub.clone(),
        shutdown: shutdown.clone(),
    };
    let storage = std::sync::Arc::new(storage);
    let function_store = crate::function_store::FunctionStoreServiceImpl {
        executor_id: executor_id.clone(),
        store: storage.clone(),
    };
    let functions = std::sync::Arc::new(
        FunctionRuntime::new(
            storage.clone(),
            &config.data_dir.join("function-cache"),
            config.max_function_memory_mib << 20,
        )
        .map_err(|error| ExecutorError::InvalidConfig(format!("user functions: {error}")))?,
    );
    let server_shutdown = shutdown.clone();
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .tcp_nodelay(true)
            .add_service(health_service)
            .add_service(raftstream_proto::v1::exchange_service_server::ExchangeServiceServer::new(exchange))
            .add_service(
                raftstream_proto::v1::function_store_service_server::FunctionStoreServiceServer::new(function_store)
                    .max_decoding_message_size(2 * raftstream_api::function_upload::FUNCTION_CHUNK_BYTES),
            )
            .serve_with_incoming_shutdown(tonic::transport::server::TcpIncoming::from(listener), async move {
                server_shutdown.cancelled().await
            }),
    );

    // Acks and statuses of every subtask, waiting for the session; failures are also repeated
    // with each heartbeat, so what a full queue drops is not lost for good.
    let (reports, report_receiver) = mpsc::channel(REPORT_CAPACITY);
    let environment = TaskEnvironment {
        hub,
        local_address: address.clone(),
        dial: dial.clone(),
        store: storage,
        reports,
        tracker: tokio_util::task::TaskTracker::new(),
        metrics: crate::runtime::metrics::MetricsRegistry::default(),
        functions,
    };
    let in_session = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let http = http_listener.map(|listener| {
        let service = raftstream_observability::HttpService::new(
            crate::observe::registry(
                environment.metrics.clone(),
                in_session.clone(),
                environment.functions.clone(),
            ),
            crate::observe::readiness(in_session.clone()),
        );
        tokio::spawn(raftstream_observability::serve(listener, service, shutdown.clone()).instrument(span.clone()))
    });
    let tasks = TaskManager::new(environment, shutdown.clone());
    let drain_watch = tokio::spawn(
        drain_on_request(
            executor_id.clone(),
            config.coordinators.clone(),
            config.drain_timeout,
            drain,
            shutdown.clone(),
        )
        .instrument(span.clone()),
    );
    let session = Session {
        executor_id: executor_id.clone(),
        address,
        slots: config.slots,
        // Registering commits one Raft entry: a coordinator that takes a second for it is cut
        // off or paused, and the next one is tried (the default waits 12 s per attempt).
        cluster: ClusterClient::new(&config.coordinators, Duration::from_secs(3600))?
            .with_attempt_timeout(REGISTER_ATTEMPT_TIMEOUT),
        coordinators: config.coordinators.clone(),
        dial,
        in_session,
    };
    let tasks = session
        .run(tasks, report_receiver, shutdown)
        .instrument(span.clone())
        .await;
    tasks.drain(SHUTDOWN_DRAIN_TIMEOUT).instrument(span).await;
    drain_watch.abort();
    if let Some(http) = http {
        match http.await {
            Ok(served) => served?,
            Err(join_error) => tracing::warn!(error = %join_error, "executor HTTP task failed"),
        }
    }
    match server.await {
        Ok(result) => result?,
        Err(join_error) => tracing::warn!(error = %join_error, "executor server task failed"),
    }
    Ok(())
}

/// Once `drain` is cancelled, asks the cluster to drain this executor, then waits for the leader
/// to say it is drained (which cancels `shutdown`) at most `timeout`.
async fn drain_on_request(
    executor_id: String,
    coordinators: Vec<String>,
    timeout: Duration,
    drain: CancellationToken,
    shutdown: CancellationToken,
) {
    tokio::select! {
        _ = shutdown.cancelled() => return,
        _ = drain.cancelled() => {}
    }
    tracing::info!(
        ?timeout,
        "asked to stop: draining (moving every subtask elsewhere) before exiting; a second signal exits at once"
    );
    let deadline = tokio::time::Instant::now() + timeout;
    tokio::select! {
        _ = shutdown.cancelled() => return,
        asked = ask_to_drain(&executor_id, &coordinators, timeout) => match asked {
            Ok(jobs_to_move) => tracing::info!(jobs_to_move, "drain requested"),
            Err(error) => tracing::warn!(error = %raftstream_observability::chain(&error), "could not ask the cluster to drain this executor"),
        },
    }
    tokio::select! {
        _ = shutdown.cancelled() => {}
        _ = tokio::time::sleep_until(deadline) => {
            tracing::warn!(?timeout, "not drained in time: exiting anyway");
            shutdown.cancel();
        }
    }
}

/// Asks the cluster (retrying up to `timeout` while no leader answers) to drain this executor.
async fn ask_to_drain(executor_id: &str, coordinators: &[String], timeout: Duration) -> Result<u32, ClientError> {
    let client = ClusterClient::new(coordinators, timeout)?;
    // One id per request: a later drain of a restarted executor with the same id must not be
    // answered from the first one.
    let request_id = format!("drain-{executor_id}-{:016x}", rand::random::<u64>());
    client.drain_executor(executor_id, &request_id).await
}

struct Session {
    executor_id: String,
    address: String,
    slots: u32,
    cluster: ClusterClient,
    coordinators: Vec<String>,
    dial: DialAddresses,
    /// Set while a session with the leader is open (`/readyz`).
    in_session: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

enum SessionEnd {
    Shutdown,
    /// The leader no longer knows this executor as alive: register again.
    MustRegister,
    /// Connection lost or leader changed: reconnect, keep everything.
    Lost(Option<String>),
}

impl Session {
    /// Runs the session until `shutdown`; gives the subtasks back to be drained.
    async fn run(
        self,
        tasks: TaskManager,
        reports: mpsc::Receiver<TaskReport>,
        shutdown: CancellationToken,
    ) -> TaskManager {
        let mut tasks = tasks;
        let mut reports = reports;
        self.session_loop(&mut tasks, &mut reports, &shutdown).await;
        tasks
    }

    async fn session_loop(
        &self,
        tasks: &mut TaskManager,
        reports: &mut mpsc::Receiver<TaskReport>,
        shutdown: &CancellationToken,
    ) {
        let mut registration: Option<pb::RegisterExecutorResponse> = None;
        let mut leader_address: Option<String> = None;
        let mut backoff = FIRST_BACKOFF;
        let mut next_coordinator = 0usize;
        loop {
            if shutdown.is_cancelled() {
                return;
            }
            if registration.is_none() {
                let request = pb::RegisterExecutorRequest {
                    executor_id: self.executor_id.clone(),
                    address: self.address.clone(),
                    slots: self.slots,
                };
                let registered = tokio::select! {
                    biased;
                    _ = shutdown.cancelled() => return,
                    registered = self.cluster.register_executor(request) => registered,
                };
                match registered {
                    Ok(reply) => {
                        tracing::info!(executor_id = %self.executor_id, leader = reply.leader_id, leader_address = %reply.leader_address, "registered");
                        // A (re)registration starts from nothing: the cluster released whatever we held.
                        tasks.clear();
                        leader_address = Some(reply.leader_address.clone());
                        registration = Some(reply);
                    }
                    Err(error) => {
                        tracing::warn!(error = %raftstream_observability::chain(&error), "registration failed; retrying");
                        if !sleep_or_shutdown(&shutdown, backoff).await {
                            return;
                        }
                        backoff = (backoff * 2).min(MAX_BACKOFF);
                        continue;
                    }
                }
            }
            let heartbeat_interval = Duration::from_millis(
                registration
                    .as_ref()
                    .map_or(250, |reply| reply.heartbeat_interval_ms.max(10)),
            );
            let target = leader_address
                .as_deref()
                .map(|advertised| self.dial.resolve(advertised).to_owned())
                .unwrap_or_else(|| {
                    next_coordinator += 1;
                    self.coordinators[next_coordinator % self.coordinators.len()].clone()
                });
            let ended = self
                .session_with(&target, heartbeat_interval, tasks, reports, shutdown, &mut backoff)
                .await;
            self.in_session.store(false, std::sync::atomic::Ordering::Relaxed);
            match ended {
                SessionEnd::Shutdown => return,
                SessionEnd::MustRegister => {
                    registration = None;
                    leader_address = None;
                }
                SessionEnd::Lost(hint) => {
                    leader_address = hint;
                    if !sleep_or_shutdown(&shutdown, backoff).await {
                        return;
                    }
                    // Reconnecting must finish well inside the lease a new leader grants, or a
                    // mere coordinator failover would get this executor declared dead: never wait
                    // longer than one heartbeat interval between attempts.
                    backoff = (backoff * 2).min(heartbeat_interval);
                }
            }
        }
    }

    /// A heartbeat; `with_metrics` adds what the tasks counted (about once a second).
    fn heartbeat(&self, tasks: &TaskManager, with_metrics: bool) -> pb::ExecutorMessage {
        let sent_at_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |elapsed| elapsed.as_millis() as u64);
        let (running_tasks, finished_tasks) = tasks.report();
        let metrics = if with_metrics {
            tasks.metrics().iter().map(subtask_metrics_to_proto).collect()
        } else {
            Vec::new()
        };
        self.message(pb::executor_message::Body::Heartbeat(pb::Heartbeat {
            sent_at_ms,
            running_tasks: running_tasks.iter().map(task_ref_to_proto).collect(),
            finished_tasks: finished_tasks.iter().map(task_ref_to_proto).collect(),
            metrics,
        }))
    }

    fn message(&self, body: pb::executor_message::Body) -> pb::ExecutorMessage {
        pb::ExecutorMessage {
            executor_id: self.executor_id.clone(),
            body: Some(body),
        }
    }

    async fn session_with(
        &self,
        target: &str,
        heartbeat_interval: Duration,
        tasks: &mut TaskManager,
        reports: &mut mpsc::Receiver<TaskReport>,
        shutdown: &CancellationToken,
        backoff: &mut Duration,
    ) -> SessionEnd {
        let endpoint = match Endpoint::from_shared(format!("http://{target}")) {
            Ok(endpoint) => endpoint.connect_timeout(Duration::from_millis(500)).tcp_nodelay(true),
            Err(error) => {
                tracing::warn!(target, error = %raftstream_observability::chain(&error), "bad coordinator address");
                return SessionEnd::Lost(None);
            }
        };
        let (outbound, outbound_receiver) = mpsc::channel(OUTBOUND_CAPACITY);
        if outbound.send(self.heartbeat(tasks, false)).await.is_err() {
            return SessionEnd::Lost(None);
        }
        let mut client = ExecutorServiceClient::new(endpoint.connect_lazy());
        // A coordinator behind a partition may accept the connection and then never answer:
        // give it as long as a session may stay silent, then try the next one.
        let open_timeout = heartbeat_interval * SILENT_HEARTBEATS;
        let opened = tokio::select! {
            biased;
            _ = shutdown.cancelled() => return SessionEnd::Shutdown,
            opened = tokio::time::timeout(
                open_timeout,
                client.session(tokio_stream::wrappers::ReceiverStream::new(outbound_receiver)),
            ) => match opened {
                Ok(opened) => opened,
                Err(_) => {
                    tracing::info!(target, timeout_ms = open_timeout.as_millis() as u64, "no answer to the session request; trying another coordinator");
                    return SessionEnd::Lost(None);
                }
            },
        };
        let mut inbound = match opened {
            Ok(response) => response.into_inner(),
            Err(status) if status.code() == tonic::Code::FailedPrecondition => {
                tracing::warn!(reason = %status.message(), "the leader refused the session; registering again");
                return SessionEnd::MustRegister;
            }
            Err(status) => {
                let hint = status
                    .metadata()
                    .get(LEADER_HINT_METADATA)
                    .and_then(|value| value.to_str().ok())
                    .map(str::to_owned);
                tracing::debug!(target, error = %status.message(), ?hint, "no session with this coordinator");
                return SessionEnd::Lost(hint);
            }
        };
        tracing::info!(leader = target, "session open");
        self.in_session.store(true, std::sync::atomic::Ordering::Relaxed);
        *backoff = FIRST_BACKOFF;
        let mut ticker = tokio::time::interval(heartbeat_interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The leader answers every heartbeat. A leader cut off by a partition or paused keeps
        // the stream open without a word, and a new leader would declare this executor dead when
        // the lease it granted ran out; so silence for a few heartbeats ends the session, and the
        // executor finds the leader again while its tasks keep running.
        let silence_limit = heartbeat_interval * SILENT_HEARTBEATS;
        let mut last_heard = tokio::time::Instant::now();
        let mut metrics_sent = tokio::time::Instant::now();
        loop {
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => return SessionEnd::Shutdown,
                _ = ticker.tick() => {
                    if last_heard.elapsed() > silence_limit {
                        tracing::info!(leader = target, silent_ms = last_heard.elapsed().as_millis() as u64, "no word from the leader; reconnecting");
                        return SessionEnd::Lost(None);
                    }
                    let with_metrics = metrics_sent.elapsed() >= METRICS_INTERVAL;
                    if with_metrics {
                        metrics_sent = tokio::time::Instant::now();
                    }
                    if outbound.send(self.heartbeat(tasks, with_metrics)).await.is_err() {
                        return SessionEnd::Lost(None);
                    }
                    for failure in tasks.failures() {
                        if outbound.send(self.message(task_report_to_proto(&failure))).await.is_err() {
                            return SessionEnd::Lost(None);
                        }
                    }
                }
                report = reports.recv() => {
                    let Some(report) = report else { return SessionEnd::Shutdown };
                    if outbound.send(self.message(task_report_to_proto(&report))).await.is_err() {
                        return SessionEnd::Lost(None);
                    }
                }
                received = inbound.message() => match received {
                    Ok(Some(message)) => {
                        last_heard = tokio::time::Instant::now();
                        match executor_command_from_proto(&message) {
                            Ok(command) => tasks.apply(command),
                            Err(error) => tracing::warn!(error = %raftstream_observability::chain(&error), "unusable message from the leader ignored"),
                        }
                    }
                    Ok(None) => {
                        tracing::info!(leader = target, "session closed by the coordinator; reconnecting");
                        return SessionEnd::Lost(None);
                    }
                    Err(status) => {
                        tracing::info!(leader = target, error = %status.message(), "session lost; reconnecting");
                        return SessionEnd::Lost(None);
                    }
                },
            }
        }
    }
}

async fn sleep_or_shutdown(shutdown: &CancellationToken, duration: Duration) -> bool {
    tokio::select! {
        biased;
        _ = shutdown.cancelled() => false,
        _ = tokio::time::sleep(duration) => true,
    }
}
