//! `RaftService`: the receiving end of the Raft network.

use openraft::raft::{AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, VoteRequest};
use raftstream_proto::v1 as pb;
use serde::Serialize;
use tonic::{Request, Response, Status};

use crate::raft::{CoordinatorRaft, LeaderContact, TypeConfig};

/// The `RaftService` of one coordinator.
#[derive(Clone)]
pub struct RaftServiceImpl {
    raft: CoordinatorRaft,
    leader_contact: LeaderContact,
}

impl RaftServiceImpl {
    /// The Raft service feeding `raft`.
    pub fn new(raft: CoordinatorRaft, leader_contact: LeaderContact) -> Self {
        RaftServiceImpl { raft, leader_contact }
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
        let result = self.raft.append_entries(rpc).await;
        // Anything but "higher vote" means we accepted the sender as our leader.
        if matches!(&result, Ok(response) if !matches!(response, AppendEntriesResponse::HigherVote(_))) {
            self.leader_contact.touch();
        }
        encode(&result)
    }

    async fn vote(&self, request: Request<pb::RaftPayload>) -> Result<Response<pb::RaftPayload>, Status> {
        let rpc: VoteRequest<u64> = decode(request.get_ref(), "vote")?;
        encode(&self.raft.vote(rpc).await)
    }

    async fn install_snapshot(&self, request: Request<pb::RaftPayload>) -> Result<Response<pb::RaftPayload>, Status> {
        let rpc: InstallSnapshotRequest<TypeConfig> = decode(request.get_ref(), "install-snapshot")?;
        encode(&self.raft.install_snapshot(rpc).await)
    }
}
