//! One coordinator process: configuration, start-up, serving, and graceful shutdown.

use raftstream_api::dial::DialAddresses;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use openraft::{BasicNode, SnapshotPolicy};
use raftstream_proto::v1::admin_service_server::AdminServiceServer;
use raftstream_proto::v1::executor_service_server::ExecutorServiceServer;
use raftstream_proto::v1::job_service_server::JobServiceServer;
use raftstream_proto::v1::raft_service_server::RaftServiceServer;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::context::CoordinatorContext;
use crate::leader::sessions::ExecutorSessions;
use crate::leader::{ExecutorSettings, LeaderDuties};
use crate::raft::{open_stores, CoordinatorRaft, ElectionTrigger, GrpcRaftNetwork, LeaderContact};
use crate::removal::Removal;
use crate::service::{AdminServiceImpl, ExecutorServiceImpl, JobServiceImpl, RaftServiceImpl};
use raftstream_api::ids::NodeId;

const MAX_GRPC_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

/// Raft timing and log-compaction settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RaftSettings {
    pub heartbeat_interval_ms: u64,
    pub election_timeout_min_ms: u64,
    pub election_timeout_max_ms: u64,
    /// Build a snapshot after this many applied entries.
    pub snapshot_after_entries: u64,
    /// Entries kept in the log behind a snapshot, so slightly lagging followers need no snapshot.
    pub entries_kept_behind_snapshot: u64,
    /// Snapshots are sent in chunks of at most this size.
    pub snapshot_chunk_bytes: u64,
    /// How long a client write may wait for commit.
    pub write_timeout_ms: u64,
}

impl Default for RaftSettings {
    fn default() -> Self {
        RaftSettings {
            heartbeat_interval_ms: 50,
            election_timeout_min_ms: 150,
            election_timeout_max_ms: 300,
            snapshot_after_entries: 10_000,
            entries_kept_behind_snapshot: 1_000,
            snapshot_chunk_bytes: 1024 * 1024,
            write_timeout_ms: 5_000,
        }
    }
}

/// Everything one coordinator needs to start. Loaded from YAML/JSON or built from flags.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CoordinatorConfig {
    pub node_id: NodeId,
    /// Where to listen for gRPC (clients, peers and executors share the port).
    pub listen_address: SocketAddr,
    /// The address peers and clients use to reach this node; defaults to `listen_address`.
    #[serde(default)]
    pub advertise_address: Option<String>,
    pub data_dir: PathBuf,
    /// The initial voters (node id -> address), used only when bootstrapping a new cluster.
    #[serde(default)]
    pub initial_members: BTreeMap<NodeId, String>,
    /// Whether a node with empty storage initializes the cluster from `initial_members`. Leave it
    /// off when (re)joining an existing cluster with an empty data dir: the leader then brings the
    /// node up to date.
    #[serde(default)]
    pub bootstrap: bool,
    #[serde(default)]
    pub raft: RaftSettings,
    #[serde(default)]
    pub executors: ExecutorSettings,
    /// Peers' advertised addresses this node dials somewhere else (a NAT; the chaos harness's
    /// fault proxy): advertised -> dialled.
    #[serde(default)]
    pub dial_addresses: BTreeMap<String, String>,
    /// Where to serve HTTP: `/metrics`, `/healthz`, `/readyz` (none: no HTTP listener).
    #[serde(default)]
    pub http_listen_address: Option<SocketAddr>,
}

/// Why a coordinator could not start or stopped abnormally.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error(transparent)]
    Dashboard(#[from] raftstream_dashboard::DashboardError),
    #[error("invalid coordinator config: {0}")]
    InvalidConfig(String),
    #[error("reading config file {path}: {source}")]
    ConfigFile { path: PathBuf, source: std::io::Error },
    #[error("opening storage in {path}: {source}")]
    Storage {
        path: PathBuf,
        source: openraft::StorageError<NodeId>,
    },
    #[error("creating data dir {path}: {source}")]
    DataDir { path: PathBuf, source: std::io::Error },
    #[error("starting Raft: {0}")]
    Raft(String),
    #[error("binding {address}: {source}")]
    Bind {
        address: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Http(#[from] raftstream_observability::HttpError),
    #[error("gRPC server: {0}")]
    Serve(#[from] tonic::transport::Error),
    #[error("reflection service: {0}")]
    Reflection(String),
    #[error("{0}; stopped serving (start it again only with an empty data dir, to join as a new member)")]
    RemovedFromCluster(String),
}

impl CoordinatorConfig {
    /// Reads a config file (YAML or JSON) and validates it.
    pub fn from_file(path: &Path) -> Result<Self, NodeError> {
        let text = std::fs::read_to_string(path).map_err(|source| NodeError::ConfigFile {
            path: path.to_owned(),
            source,
        })?;
        let config: CoordinatorConfig = serde_yaml::from_str(&text)
            .map_err(|error| NodeError::InvalidConfig(format!("{}: {error}", path.display())))?;
        config.validate()?;
        Ok(config)
    }

    /// The address other nodes use for this one.
    pub fn advertised(&self) -> String {
        self.advertise_address
            .clone()
            .unwrap_or_else(|| self.listen_address.to_string())
    }

    /// Checks the settings that would otherwise fail obscurely later.
    pub fn validate(&self) -> Result<(), NodeError> {
        let raft = &self.raft;
        if raft.heartbeat_interval_ms == 0 || raft.election_timeout_min_ms <= raft.heartbeat_interval_ms {
            return Err(NodeError::InvalidConfig(format!(
                "raft.election_timeout_min_ms ({}) must exceed raft.heartbeat_interval_ms ({}), which must be above 0",
                raft.election_timeout_min_ms, raft.heartbeat_interval_ms
            )));
        }
        if raft.election_timeout_max_ms <= raft.election_timeout_min_ms {
            return Err(NodeError::InvalidConfig(
                "raft.election_timeout_max_ms must exceed raft.election_timeout_min_ms".into(),
            ));
        }
        if raft.snapshot_after_entries == 0 || raft.snapshot_chunk_bytes == 0 || raft.write_timeout_ms == 0 {
            return Err(NodeError::InvalidConfig(
                "raft.snapshot_after_entries, raft.snapshot_chunk_bytes and raft.write_timeout_ms must be above 0"
                    .into(),
            ));
        }
        let executors = &self.executors;
        if executors.heartbeat_interval_ms == 0 || executors.lease_timeout_ms <= executors.heartbeat_interval_ms {
            return Err(NodeError::InvalidConfig(format!(
                "executors.lease_timeout_ms ({}) must exceed executors.heartbeat_interval_ms ({}), which must be above 0",
                executors.lease_timeout_ms, executors.heartbeat_interval_ms
            )));
        }
        if executors.session_break_grace_ms == 0 || executors.session_break_grace_ms > executors.lease_timeout_ms {
            return Err(NodeError::InvalidConfig(format!(
                "executors.session_break_grace_ms ({}) must be above 0 and at most executors.lease_timeout_ms ({})",
                executors.session_break_grace_ms, executors.lease_timeout_ms
            )));
        }
        if self.bootstrap && !self.initial_members.contains_key(&self.node_id) {
            return Err(NodeError::InvalidConfig(format!(
                "bootstrap is on but node {} is not among initial_members {:?}",
                self.node_id,
                self.initial_members.keys().collect::<Vec<_>>()
            )));
        }
        Ok(())
    }

    fn openraft_config(&self) -> Result<openraft::Config, NodeError> {
        let config = openraft::Config {
            cluster_name: "raftstream".to_owned(),
            heartbeat_interval: self.raft.heartbeat_interval_ms,
            election_timeout_min: self.raft.election_timeout_min_ms,
            election_timeout_max: self.raft.election_timeout_max_ms,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(self.raft.snapshot_after_entries),
            max_in_snapshot_log_to_keep: self.raft.entries_kept_behind_snapshot,
            snapshot_max_chunk_size: self.raft.snapshot_chunk_bytes,
            // Elections start only after a pre-vote a quorum granted (raft::pre_vote): openraft's
            // own timer would stand with a new term whenever a node stops hearing the leader,
            // and a node that was merely partitioned or paused would then depose it on return.
            enable_elect: false,
            ..openraft::Config::default()
        };
        config
            .validate()
            .map_err(|error| NodeError::InvalidConfig(error.to_string()))
    }
}

/// Runs one coordinator until `shutdown` is cancelled.
pub async fn run_coordinator(config: CoordinatorConfig, shutdown: CancellationToken) -> Result<(), NodeError> {
    let span = tracing::info_span!("coordinator", node_id = config.node_id.0);
    if let Ok(failpoints) = std::env::var(crate::failpoints::VARIABLE) {
        span.in_scope(
            || tracing::warn!(%failpoints, "FAILPOINTS SET: this coordinator perturbs its timing on purpose"),
        );
    }
    serve(config, shutdown).instrument(span).await
}

async fn serve(config: CoordinatorConfig, shutdown: CancellationToken) -> Result<(), NodeError> {
    config.validate()?;
    let node_id = config.node_id;
    std::fs::create_dir_all(&config.data_dir).map_err(|source| NodeError::DataDir {
        path: config.data_dir.clone(),
        source,
    })?;
    let database_path = config.data_dir.join("raft-db");
    let (log_store, state_machine) = open_stores(&database_path).map_err(|source| NodeError::Storage {
        path: database_path.clone(),
        source,
    })?;
    let committed = log_store.committed_index();
    let applied = state_machine.shared_state();
    let snapshot_stats = state_machine.snapshot_stats();

    let raft_config = Arc::new(config.openraft_config()?);
    let dial = DialAddresses::new(config.dial_addresses.clone());
    let network = GrpcRaftNetwork { dial: dial.clone() };
    // The election trigger and the pre-vote service read the last log id from the same store.
    let log_for_pre_votes = log_store.clone();
    let raft = CoordinatorRaft::new(node_id, raft_config, network, log_store, state_machine)
        .await
        .map_err(|error| NodeError::Raft(error.to_string()))?;

    let listener = tokio::net::TcpListener::bind(config.listen_address)
        .await
        .map_err(|source| NodeError::Bind {
            address: config.listen_address,
            source,
        })?;
    let listener_address = listener.local_addr().map_err(|source| NodeError::Bind {
        address: config.listen_address,
        source,
    })?;
    let address = config.advertised();
    let mut context = CoordinatorContext::new(
        node_id,
        address.clone(),
        raft.clone(),
        applied,
        committed,
        Duration::from_millis(config.raft.write_timeout_ms),
    );
    context.dial = dial.clone();

    let http_listener = match config.http_listen_address {
        Some(address) => Some(raftstream_observability::bind(address).await?),
        None => None,
    };

    if config.bootstrap {
        bootstrap_if_pristine(&raft, &config).await?;
    }
    let leader_contact = LeaderContact::default();
    let mut background = tokio::task::JoinSet::new();
    let events = crate::events::ClusterEvents::default();
    background.spawn(crate::events::observe(
        context.clone(),
        events.clone(),
        shutdown.clone(),
    ));
    if let Some(listener) = http_listener {
        let registry = context.metrics.registry(crate::metrics::ScrapeSources {
            node_id: context.node_id,
            raft: context.raft.clone(),
            applied: context.applied.clone(),
            committed: context.committed.clone(),
            snapshots: snapshot_stats,
        });
        // The dashboard asks this node's own gRPC services, which read through the leader.
        let own_grpc = match listener_address {
            address if address.ip().is_unspecified() => {
                std::net::SocketAddr::new(std::net::Ipv4Addr::LOCALHOST.into(), address.port())
            }
            address => address,
        };
        let dashboard = raftstream_dashboard::routes(
            node_id.0,
            &own_grpc.to_string(),
            std::sync::Arc::new(move || events.entries()),
        )?;
        let service =
            raftstream_observability::HttpService::new(registry, readiness(context.clone())).with_routes(dashboard);
        let http_shutdown = shutdown.clone();
        background.spawn(async move {
            if let Err(error) = raftstream_observability::serve(listener, service, http_shutdown).await {
                tracing::error!(error = %raftstream_observability::chain(&error), "the HTTP listener stopped");
            }
        });
    }
    let removal = Removal::default();
    // Silent for several election timeouts: a member would have heard from some leader by then.
    let silence = Duration::from_millis(config.raft.election_timeout_max_ms.saturating_mul(4).max(1_000));
    background.spawn(crate::removal::watch(
        context.clone(),
        leader_contact.clone(),
        silence,
        removal.clone(),
        shutdown.clone(),
    ));
    // openraft 0.9 sets the leader lease to the maximum election timeout.
    let leader_lease = Duration::from_millis(config.raft.election_timeout_max_ms);
    let election_trigger = ElectionTrigger::new(
        raft.clone(),
        leader_contact.clone(),
        log_for_pre_votes.clone(),
        dial.clone(),
        leader_lease,
        Duration::from_millis(config.raft.election_timeout_min_ms),
    );
    background.spawn(election_trigger.run(shutdown.child_token()));
    let sessions = ExecutorSessions::default();
    let duties = LeaderDuties::new(context.clone(), sessions.clone(), config.executors.clone());
    background.spawn(
        duties
            .run(shutdown.child_token())
            .instrument(tracing::info_span!("duties", node_id = node_id.0)),
    );

    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter.set_serving::<JobServiceServer<JobServiceImpl>>().await;
    health_reporter
        .set_serving::<AdminServiceServer<AdminServiceImpl>>()
        .await;
    health_reporter
        .set_serving::<RaftServiceServer<RaftServiceImpl>>()
        .await;
    health_reporter
        .set_serving::<ExecutorServiceServer<ExecutorServiceImpl>>()
        .await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(raftstream_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|error| NodeError::Reflection(error.to_string()))?;

    tracing::info!(%address, data_dir = %config.data_dir.display(), "coordinator serving");
    // Nagle's algorithm with delayed ACKs adds ~40 ms to every small Raft message; the builder's
    // own nodelay flag does not reach a listener we bound ourselves.
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    let server_shutdown = shutdown.clone();
    let served = tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .add_service(health_service)
        .add_service(reflection)
        .add_service(
            JobServiceServer::new(JobServiceImpl::new(context.clone(), sessions.clone()))
                .max_decoding_message_size(MAX_GRPC_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_GRPC_MESSAGE_BYTES),
        )
        .add_service(AdminServiceServer::new(AdminServiceImpl::new(
            context.clone(),
            sessions.clone(),
        )))
        .add_service(ExecutorServiceServer::new(ExecutorServiceImpl::new(
            context.clone(),
            sessions,
            config.executors.clone(),
        )))
        .add_service(
            RaftServiceServer::new(RaftServiceImpl::new(
                raft.clone(),
                leader_contact,
                log_for_pre_votes,
                leader_lease,
            ))
            .max_decoding_message_size(MAX_GRPC_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_GRPC_MESSAGE_BYTES),
        )
        .serve_with_incoming_shutdown(incoming, async move { server_shutdown.cancelled().await })
        .await;
    shutdown.cancel();
    if tokio::time::timeout(Duration::from_secs(5), async {
        while background.join_next().await.is_some() {}
    })
    .await
    .is_err()
    {
        tracing::warn!("background tasks did not stop within 5 s");
    }
    tracing::info!("shutting down Raft");
    if let Err(error) = raft.shutdown().await {
        tracing::warn!(error = %raftstream_observability::chain(&error), "Raft did not shut down cleanly");
    }
    served?;
    match removal.reason() {
        Some(reason) => Err(NodeError::RemovedFromCluster(reason)),
        None => Ok(()),
    }
}

/// Counts every change of the leader this node knows of, for `/metrics`.
/// `/readyz` on a coordinator: it is a member of a cluster and knows its leader.
fn readiness(context: CoordinatorContext) -> raftstream_observability::ReadinessCheck {
    use raftstream_observability::Readiness;
    std::sync::Arc::new(move || {
        let metrics = context.raft.metrics().borrow().clone();
        let member = metrics
            .membership_config
            .membership()
            .nodes()
            .any(|(node_id, _)| *node_id == context.node_id);
        match (member, metrics.current_leader) {
            (false, _) => Readiness::NotReady(format!("node {} is not a member of a cluster", context.node_id)),
            (true, None) => Readiness::NotReady("no leader is known".to_owned()),
            (true, Some(_)) => Readiness::Ready,
        }
    })
}

async fn bootstrap_if_pristine(raft: &CoordinatorRaft, config: &CoordinatorConfig) -> Result<(), NodeError> {
    let members: BTreeMap<NodeId, BasicNode> = config
        .initial_members
        .iter()
        .map(|(id, address)| (*id, BasicNode::new(address.clone())))
        .collect();
    // openraft: initializing several nodes with the same membership is safe; a node that already
    // holds state answers NotAllowed, which is the normal restart path.
    match raft.initialize(members).await {
        Ok(()) => {
            tracing::info!(members = ?config.initial_members, "initialized a new cluster");
            Ok(())
        }
        Err(openraft::error::RaftError::APIError(openraft::error::InitializeError::NotAllowed(_))) => {
            tracing::info!("storage already initialized; rejoining the cluster");
            Ok(())
        }
        Err(error) => Err(NodeError::Raft(error.to_string())),
    }
}
