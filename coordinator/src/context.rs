//! The coordinator's handle on its own Raft node, shared by the gRPC services and the leader
//! duties: propose a command and wait for it to apply, confirm leadership for a read, read the
//! applied state, reach peers. Neither the services nor the duties own it, so it lives beside both.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::error::{CheckIsLeaderError, ClientWriteError, RaftError};
use openraft::raft::ClientWriteResponse;
use openraft::BasicNode;
use tonic::transport::{Channel, Endpoint};

use crate::error::CoordinatorError;
use crate::metrics::{CoordinatorMetrics, ProposalOutcome};
use crate::raft::{CommittedIndex, CoordinatorRaft, SharedAppliedState, TypeConfig};
use crate::state_machine::{Command, Response};
use raftstream_api::dial::DialAddresses;
use raftstream_api::ids::NodeId;

/// What every service of one coordinator shares.
#[derive(Clone)]
pub struct CoordinatorContext {
    pub node_id: NodeId,
    pub address: String,
    pub raft: CoordinatorRaft,
    pub applied: SharedAppliedState,
    pub committed: CommittedIndex,
    /// How long a write may wait for commit before the caller is told the outcome is unknown.
    pub write_timeout: Duration,
    /// How this node reaches the addresses other nodes advertise.
    pub dial: DialAddresses,
    /// What `/metrics` counts as it happens (proposals, leader changes, checkpoint outcomes).
    pub metrics: CoordinatorMetrics,
    channels: Arc<Mutex<HashMap<String, Channel>>>,
}

fn not_leader(node_id: NodeId, forward: openraft::error::ForwardToLeader<NodeId, BasicNode>) -> CoordinatorError {
    CoordinatorError::NotLeader {
        node_id,
        leader_id: forward.leader_id,
        leader_address: forward.leader_node.map(|node| node.addr),
    }
}

impl CoordinatorContext {
    /// The address of the leader this node knows of.
    pub fn leader_address(&self) -> Option<String> {
        let metrics = self.raft.metrics().borrow().clone();
        let leader = metrics.current_leader?;
        metrics
            .membership_config
            .membership()
            .get_node(&leader)
            .map(|node| node.addr.clone())
    }

    /// The error of a request only the leader serves, naming the leader this node knows of.
    pub fn not_leader(&self) -> CoordinatorError {
        CoordinatorError::NotLeader {
            node_id: self.node_id,
            leader_id: self.raft.metrics().borrow().current_leader,
            leader_address: self.leader_address(),
        }
    }

    /// The context of the coordinator `node_id`, reachable at `address`.
    pub fn new(
        node_id: NodeId,
        address: String,
        raft: CoordinatorRaft,
        applied: SharedAppliedState,
        committed: CommittedIndex,
        write_timeout: Duration,
    ) -> Self {
        CoordinatorContext {
            node_id,
            address,
            raft,
            applied,
            committed,
            write_timeout,
            dial: DialAddresses::default(),
            metrics: CoordinatorMetrics::default(),
            channels: Arc::default(),
        }
    }

    /// Proposes a command through Raft and waits until it is committed and applied.
    pub async fn propose(&self, command: Command) -> Result<Response, CoordinatorError> {
        let started = std::time::Instant::now();
        let write = self.raft.client_write(command);
        let written = match tokio::time::timeout(self.write_timeout, write).await {
            Ok(outcome) => self.write_outcome(outcome),
            Err(_) => Err(CoordinatorError::RaftUnavailable(format!(
                "not committed within {:?}; the write may or may not take effect, retry with the same request id",
                self.write_timeout
            ))),
        };
        let outcome = match &written {
            Ok(_) => ProposalOutcome::Committed,
            Err(CoordinatorError::NotLeader { .. }) => ProposalOutcome::NotLeader,
            Err(_) => ProposalOutcome::Failed,
        };
        self.metrics.proposal(outcome, started.elapsed());
        Ok(written?.data?)
    }

    /// Maps the outcome of a Raft write (a command or a membership change) to our errors.
    pub fn write_outcome(
        &self,
        outcome: Result<ClientWriteResponse<TypeConfig>, RaftError<NodeId, ClientWriteError<NodeId, BasicNode>>>,
    ) -> Result<ClientWriteResponse<TypeConfig>, CoordinatorError> {
        match outcome {
            Ok(reply) => Ok(reply),
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(forward))) => {
                Err(not_leader(self.node_id, forward))
            }
            Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(error))) => {
                Err(CoordinatorError::InvalidRequest(error.to_string()))
            }
            Err(RaftError::Fatal(fatal)) => Err(CoordinatorError::RaftUnavailable(fatal.to_string())),
        }
    }

    /// Raft read-index: returns once this node is confirmed leader by a quorum and has applied
    /// everything committed before the read began.
    pub async fn ensure_linearizable(&self) -> Result<(), CoordinatorError> {
        let check = self.raft.ensure_linearizable();
        let outcome = tokio::time::timeout(self.write_timeout, check)
            .await
            .map_err(|_| CoordinatorError::RaftUnavailable("leadership not confirmed in time".to_owned()))?;
        match outcome {
            Ok(_) => Ok(()),
            Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(forward))) => {
                Err(not_leader(self.node_id, forward))
            }
            Err(RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(error))) => {
                Err(CoordinatorError::RaftUnavailable(error.to_string()))
            }
            Err(RaftError::Fatal(fatal)) => Err(CoordinatorError::RaftUnavailable(fatal.to_string())),
        }
    }

    /// A cached, lazily connected channel to another coordinator (at its advertised address).
    pub fn channel(&self, address: &str) -> Result<Channel, CoordinatorError> {
        let address = self.dial.resolve(address);
        let mut channels = self
            .channels
            .lock()
            .map_err(|_| CoordinatorError::Internal("channel cache lock poisoned".into()))?;
        if let Some(channel) = channels.get(address) {
            return Ok(channel.clone());
        }
        let channel = Endpoint::from_shared(format!("http://{address}"))
            .map_err(|error| CoordinatorError::Internal(format!("bad peer address {address:?}: {error}")))?
            .connect_timeout(Duration::from_millis(500))
            .tcp_nodelay(true)
            .connect_lazy();
        channels.insert(address.to_owned(), channel.clone());
        Ok(channel)
    }
}
