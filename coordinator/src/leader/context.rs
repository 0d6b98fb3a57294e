//! What the leader's duties need from the coordinator they run on: propose a command, read the
//! applied state, reach executors, tell the time. A trait, so that each duty runs against a Raft
//! node in production and against the same pure state machine, without sockets, in unit tests.

use std::future::Future;

use super::sessions::ExecutorSessions;
use crate::context::{now_ms, CoordinatorContext};
use crate::error::CoordinatorError;
use crate::state_machine::{Command, Response, State};

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
}
