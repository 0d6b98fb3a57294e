//! The Raft network: openraft messages carried over gRPC (`RaftService`) between coordinators.
//!
//! Messages are serialized by us (JSON) into an opaque payload, and a remote Raft error travels
//! back inside the payload so openraft sees it as the peer's answer, not as a network failure.

use raftstream_api::dial::DialAddresses;
use std::time::Duration;

use openraft::error::{InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable};
use openraft::network::{Backoff, RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest,
    VoteResponse,
};
use openraft::BasicNode;
use raftstream_proto::v1::raft_service_client::RaftServiceClient;
use raftstream_proto::v1::RaftPayload;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tonic::transport::{Channel, Endpoint};

use super::TypeConfig;

use raftstream_api::ids::NodeId;

/// Largest gRPC message a coordinator accepts; snapshot chunks and append batches stay below it.
pub const MAX_RAFT_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

/// Creates one [`RaftPeerClient`] per peer, dialling peers through `DialAddresses`.
#[derive(Debug, Clone, Default)]
pub struct GrpcRaftNetwork {
    pub dial: DialAddresses,
}

/// The first wait before replicating again to a peer that was unreachable.
const UNREACHABLE_FIRST_BACKOFF: Duration = Duration::from_millis(25);

/// A lazily connected gRPC client to one peer coordinator.
#[derive(Debug, Clone)]
pub struct RaftPeerClient {
    target: NodeId,
    address: String,
    client: Option<RaftServiceClient<Channel>>,
}

impl RaftNetworkFactory<TypeConfig> for GrpcRaftNetwork {
    type Network = RaftPeerClient;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> Self::Network {
        RaftPeerClient {
            target,
            address: self.dial.resolve(&node.addr).to_owned(),
            client: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
enum TransportError {
    #[error("invalid peer address {address:?}: {reason}")]
    BadAddress { address: String, reason: String },
    #[error("Raft RPC to node {target} at {address} failed: {status}")]
    Rpc {
        target: NodeId,
        address: String,
        status: tonic::Status,
    },
    #[error("Raft RPC to node {target} timed out after {timeout:?}")]
    Timeout { target: NodeId, timeout: Duration },
    #[error("encoding or decoding a Raft message: {0}")]
    Codec(#[from] serde_json::Error),
}

enum RpcKind {
    AppendEntries,
    Vote,
    InstallSnapshot,
}

impl RaftPeerClient {
    fn client(&mut self) -> Result<RaftServiceClient<Channel>, TransportError> {
        if let Some(client) = &self.client {
            return Ok(client.clone());
        }
        let endpoint = Endpoint::from_shared(format!("http://{}", self.address))
            .map_err(|error| TransportError::BadAddress {
                address: self.address.clone(),
                reason: error.to_string(),
            })?
            .connect_timeout(Duration::from_millis(500))
            .tcp_nodelay(true);
        let client = RaftServiceClient::new(endpoint.connect_lazy())
            .max_decoding_message_size(MAX_RAFT_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_RAFT_MESSAGE_BYTES);
        self.client = Some(client.clone());
        Ok(client)
    }

    async fn call<Request, Response, Error>(
        &mut self,
        kind: RpcKind,
        request: &Request,
        option: &RPCOption,
    ) -> Result<Response, RPCError<NodeId, BasicNode, RaftError<NodeId, Error>>>
    where
        Request: Serialize,
        Response: DeserializeOwned,
        Error: std::error::Error + DeserializeOwned,
    {
        let data = serde_json::to_vec(request).map_err(|error| RPCError::Network(NetworkError::new(&error)))?;
        let mut client = self
            .client()
            .map_err(|error| RPCError::Unreachable(Unreachable::new(&error)))?;
        let timeout = option.hard_ttl();
        let call = async {
            let payload = RaftPayload { data };
            match kind {
                RpcKind::AppendEntries => client.append_entries(payload).await,
                RpcKind::Vote => client.vote(payload).await,
                RpcKind::InstallSnapshot => client.install_snapshot(payload).await,
            }
        };
        let reply = match tokio::time::timeout(timeout, call).await {
            Err(_) => {
                let error = TransportError::Timeout {
                    target: self.target,
                    timeout,
                };
                return Err(RPCError::Network(NetworkError::new(&error)));
            }
            Ok(Err(status)) => {
                let unreachable = matches!(status.code(), tonic::Code::Unavailable | tonic::Code::Unknown);
                let error = TransportError::Rpc {
                    target: self.target,
                    address: self.address.clone(),
                    status,
                };
                // A refused connection must not be retried at full speed: openraft backs off on
                // Unreachable.
                return Err(if unreachable {
                    RPCError::Unreachable(Unreachable::new(&error))
                } else {
                    RPCError::Network(NetworkError::new(&error))
                });
            }
            Ok(Ok(reply)) => reply.into_inner(),
        };
        let result: Result<Response, RaftError<NodeId, Error>> = serde_json::from_slice(&reply.data)
            .map_err(|error| RPCError::Network(NetworkError::new(&TransportError::Codec(error))))?;
        result.map_err(|error| RPCError::RemoteError(RemoteError::new(self.target, error)))
    }
}

impl RaftNetwork<TypeConfig> for RaftPeerClient {
    async fn append_entries(
        &mut self,
        request: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        self.call(RpcKind::AppendEntries, &request, &option).await
    }

    async fn install_snapshot(
        &mut self,
        request: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<InstallSnapshotResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId, InstallSnapshotError>>>
    {
        self.call(RpcKind::InstallSnapshot, &request, &option).await
    }

    async fn vote(
        &mut self,
        request: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        self.call(RpcKind::Vote, &request, &option).await
    }

    /// How long replication to an unreachable peer waits before each new attempt: 25 ms, doubling
    /// to 400 ms. openraft's default is a flat 500 ms, so after a whole-cluster restart the leader
    /// (up first) waited half a second for followers that were up a few milliseconds later, and
    /// every commit (executor registrations, placements) waited with it.
    fn backoff(&self) -> Backoff {
        Backoff::new((0u32..).map(|attempt| UNREACHABLE_FIRST_BACKOFF * (1 << attempt.min(4))))
    }
}
