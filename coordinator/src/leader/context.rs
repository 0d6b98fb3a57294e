//! What the leader's duties need from the coordinator they run on: propose a command, read the
//! applied state, reach executors, tell the time. A trait, so that each duty runs against a Raft
//! node in production and against the same pure state machine, without sockets, in unit tests.

use std::future::Future;

use crate::clock::now_ms;
use crate::context::CoordinatorContext;
use crate::error::CoordinatorError;
use crate::leader::sessions::ExecutorSessions;
use crate::metrics::CheckpointEvent;
use crate::state_machine::{Command, Response, State};
use raftstream_api::ids::JobId;

/// The leader's view of its cluster.
pub trait LeaderContext: Clone + Send + Sync + 'static {
    /// Proposes `command` and resolves once it is applied (or refused, or not committed).
    fn propose(&self, command: Command) -> impl Future<Output = Result<Response, CoordinatorError>> + Send;

    /// Reads the applied state. `read` must not block: writers wait for it.
    fn read_state<R>(&self, read: impl FnOnce(&State) -> R) -> R;

    /// The executors' leases and sessions; commands to an executor go through its session.
    fn sessions(&self) -> &ExecutorSessions;

    /// Milliseconds since the Unix epoch, as stamped into commands. Durations the duties measure
    /// themselves (intervals, delays) use the monotonic `tokio::time::Instant` instead.
    fn now_ms(&self) -> u64;

    /// Whether a connection to `address` (an executor's advertised address) is refused: nothing
    /// listens there, so the process that did is gone. A timeout or any other outcome says
    /// nothing (a slow or partitioned host is not a dead process).
    fn nothing_listens_at(&self, address: &str) -> impl Future<Output = bool> + Send {
        connection_refused(address.to_owned())
    }

    /// Counts a checkpoint's progress for `/metrics` (nothing by default: tests count nothing).
    fn count_checkpoint(&self, _job_id: JobId, _event: CheckpointEvent) {}
}

/// How long a probe of an executor's address waits for an answer: a refusal on a live network
/// comes back in a round trip; what takes longer is left to the grace and the lease.
const PROBE_TIMEOUT: std::time::Duration = std::time::Duration::from_millis(200);

/// Whether connecting to `address` is refused (see `LeaderContext::nothing_listens_at`).
pub async fn connection_refused(address: String) -> bool {
    match tokio::time::timeout(PROBE_TIMEOUT, tokio::net::TcpStream::connect(address.as_str())).await {
        Ok(Err(error)) => error.kind() == std::io::ErrorKind::ConnectionRefused,
        Ok(Ok(_)) | Err(_) => false,
    }
}

/// The leader duties of a coordinator: its Raft node and its executors' sessions.
#[derive(Clone)]
pub struct RaftLeaderContext {
    coordinator: CoordinatorContext,
    sessions: ExecutorSessions,
}

impl RaftLeaderContext {
    pub fn new(coordinator: CoordinatorContext, sessions: ExecutorSessions) -> Self {
        RaftLeaderContext { coordinator, sessions }
    }
}

impl LeaderContext for RaftLeaderContext {
    fn propose(&self, command: Command) -> impl Future<Output = Result<Response, CoordinatorError>> + Send {
        self.coordinator.propose(command)
    }

    fn read_state<R>(&self, read: impl FnOnce(&State) -> R) -> R {
        read(&self.coordinator.applied.read().state)
    }

    fn sessions(&self) -> &ExecutorSessions {
        &self.sessions
    }

    fn now_ms(&self) -> u64 {
        now_ms()
    }

    fn nothing_listens_at(&self, address: &str) -> impl Future<Output = bool> + Send {
        connection_refused(self.coordinator.dial.resolve(address).to_owned())
    }

    fn count_checkpoint(&self, job_id: JobId, event: CheckpointEvent) {
        self.coordinator.metrics.checkpoint(job_id, event);
    }
}
