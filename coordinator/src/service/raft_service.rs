//! `RaftService`: the receiving end of the Raft network.

use raftstream_api::ids::NodeId;
use std::time::Duration;

use openraft::raft::{AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, VoteRequest};
use raftstream_proto::v1 as pb;
use serde::Serialize;
use tonic::{Request, Response, Status};

use crate::raft::pre_vote::{decide, PreVoteRequest, VoterView};
use crate::raft::{CoordinatorRaft, LeaderContact, LogStore, TypeConfig};

/// The `RaftService` of one coordinator.
#[derive(Clone)]
pub struct RaftServiceImpl {
    raft: CoordinatorRaft,
    leader_contact: LeaderContact,
    /// For pre-votes: this node's log, and how long a leader's contact holds.
    log: LogStore,
    leader_lease: Duration,
}

impl RaftServiceImpl {
    /// The Raft service feeding `raft`, whose log is `log`.
    pub fn new(raft: CoordinatorRaft, leader_contact: LeaderContact, log: LogStore, leader_lease: Duration) -> Self {
        RaftServiceImpl {
            raft,
            leader_contact,
            log,
            leader_lease,
        }
    }
}

fn decode<T: serde::de::DeserializeOwned>(payload: &pb::RaftPayload, what: &str) -> Result<T, Status> {
    serde_json::from_slice(&payload.data)
        .map_err(|error| Status::invalid_argument(format!("undecodable {what} request: {error}")))
}

fn encode<T: Serialize>(result: &T) -> Result<Response<pb::RaftPayload>, Status> {
    let data = serde_json::to_vec(result).map_err(|error| Status::internal(format!("encoding Raft reply: {error}")))?;
    Ok(Response::new(pb::RaftPayload { data }))
}

#[tonic::async_trait]
impl pb::raft_service_server::RaftService for RaftServiceImpl {
    async fn append_entries(&self, request: Request<pb::RaftPayload>) -> Result<Response<pb::RaftPayload>, Status> {
        let rpc: AppendEntriesRequest<TypeConfig> = decode(request.get_ref(), "append-entries")?;
        // The leader reached this node: that is contact, even when its RPC times out before the
        // answer is back. openraft gives an AppendEntries the heartbeat interval (50 ms) and then
        // drops it, which cancels this handler, so on a link slower than that, counting contact
        // only from answered requests made every follower stand for election while the leader
        // was plainly alive (a chaos run's delay faults took 10-20 terms each that way).
        // Only a committed vote at least as new as ours is a leader's.
        if rpc.vote.is_committed() && rpc.vote >= self.raft.metrics().borrow().vote {
            self.leader_contact.touch();
        }
        let result = self.raft.append_entries(rpc).await;
        // Anything but "higher vote" means we accepted the sender as our leader.
        if matches!(&result, Ok(response) if !matches!(response, AppendEntriesResponse::HigherVote(_))) {
            self.leader_contact.touch();
        }
        encode(&result)
    }

    async fn vote(&self, request: Request<pb::RaftPayload>) -> Result<Response<pb::RaftPayload>, Status> {
        let rpc: VoteRequest<NodeId> = decode(request.get_ref(), "vote")?;
        encode(&self.raft.vote(rpc).await)
    }

    async fn install_snapshot(&self, request: Request<pb::RaftPayload>) -> Result<Response<pb::RaftPayload>, Status> {
        let rpc: InstallSnapshotRequest<TypeConfig> = decode(request.get_ref(), "install-snapshot")?;
        encode(&self.raft.install_snapshot(rpc).await)
    }

    async fn pre_vote(&self, request: Request<pb::RaftPayload>) -> Result<Response<pb::RaftPayload>, Status> {
        let rpc: PreVoteRequest = decode(request.get_ref(), "pre-vote")?;
        let last_log_id = self
            .log
            .last_log_id()
            .map_err(|error| Status::internal(format!("reading the last log id for a pre-vote: {error}")))?;
        let voter = VoterView {
            is_leader: self.raft.metrics().borrow().state == openraft::ServerState::Leader,
            since_leader: self.leader_contact.elapsed(),
            lease: self.leader_lease,
            last_log_id,
        };
        let answer = decide(&rpc, &voter);
        tracing::debug!(candidate = rpc.candidate_id.0, granted = answer.granted, reason = %answer.reason, "pre-vote");
        encode(&answer)
    }
}
