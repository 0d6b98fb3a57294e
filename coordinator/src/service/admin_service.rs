//! `AdminService`: cluster status and membership changes.

use std::collections::BTreeSet;
use std::time::Duration;

use openraft::error::{ChangeMembershipError, ClientWriteError, RaftError};
use openraft::{BasicNode, ServerState};
use raftstream_api::ids::{ExecutorId, NodeId};
use raftstream_proto::v1 as pb;
use raftstream_proto::v1::admin_service_client::AdminServiceClient;
use tonic::{Request, Response, Status};

use super::{forwarded_request, is_forwarded, reply_or_forward, unexpected_outcome};
use crate::clock::now_ms;
use crate::context::CoordinatorContext;
use crate::error::CoordinatorError;
use crate::leader::sessions::ExecutorSessions;
use crate::state_machine::{Command, Response as Applied};

/// How long a membership change waits before asking again while another one commits.
const MEMBERSHIP_RETRY: Duration = Duration::from_millis(25);

type MembershipWriteError = RaftError<NodeId, ClientWriteError<NodeId, BasicNode>>;

/// How long cluster status waits for each peer's own status.
const PEER_STATUS_TIMEOUT: Duration = Duration::from_millis(1_000);

/// The `AdminService` of one coordinator.
#[derive(Clone)]
pub struct AdminServiceImpl {
    context: CoordinatorContext,
    sessions: ExecutorSessions,
}

fn state_name(state: ServerState) -> &'static str {
    match state {
        ServerState::Leader => "Leader",
        ServerState::Follower => "Follower",
        ServerState::Candidate => "Candidate",
        ServerState::Learner => "Learner",
        ServerState::Shutdown => "Shutdown",
    }
}

impl AdminServiceImpl {
    /// The admin service over a coordinator's shared context.
    pub fn new(context: CoordinatorContext, sessions: ExecutorSessions) -> Self {
        AdminServiceImpl { context, sessions }
    }

    /// Runs a membership change, waiting while the previous one is still being committed:
    /// openraft refuses a change until the last joint configuration has become the new one, so
    /// a change asked for right after another (two replacements in a row) would otherwise fail.
    /// `Err(Elapsed)` when it took longer than four write timeouts.
    async fn when_no_change_in_progress<Change, Outcome>(
        &self,
        change: impl Fn() -> Change,
    ) -> Result<Result<Outcome, MembershipWriteError>, tokio::time::error::Elapsed>
    where
        Change: std::future::Future<Output = Result<Outcome, MembershipWriteError>>,
    {
        let deadline = tokio::time::Instant::now() + self.context.write_timeout * 4;
        loop {
            let outcome = tokio::time::timeout_at(deadline, change()).await?;
            let in_progress = matches!(
                &outcome,
                Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(
                    ChangeMembershipError::InProgress(_)
                )))
            );
            if !in_progress || tokio::time::Instant::now() >= deadline {
                return Ok(outcome);
            }
            tokio::time::sleep(MEMBERSHIP_RETRY).await;
        }
    }

    fn local_status(&self) -> pb::NodeStatus {
        let metrics = self.context.raft.metrics().borrow().clone();
        pb::NodeStatus {
            node_id: self.context.node_id.0,
            address: self.context.address.clone(),
            state: state_name(metrics.state).to_owned(),
            term: metrics.current_term,
            leader_id: metrics.current_leader.map(|leader| leader.0),
            last_log_index: metrics.last_log_index,
            committed_index: self.context.committed.get(),
            applied_index: metrics.last_applied.map(|log_id| log_id.index),
            snapshot_index: metrics.snapshot.map(|log_id| log_id.index),
            purged_index: metrics.purged.map(|log_id| log_id.index),
            error: metrics
                .running_state
                .err()
                .map(|fatal| fatal.to_string())
                .unwrap_or_default(),
        }
    }

    async fn peer_status(&self, node_id: u64, address: String) -> pb::NodeStatus {
        let unreachable = |error: String| pb::NodeStatus {
            node_id,
            address: address.clone(),
            state: "unreachable".to_owned(),
            error,
            ..pb::NodeStatus::default()
        };
        let channel = match self.context.channel(&address) {
            Ok(channel) => channel,
            Err(error) => return unreachable(error.to_string()),
        };
        let mut client = AdminServiceClient::new(channel);
        let call = client.node_status(pb::NodeStatusRequest {});
        match tokio::time::timeout(PEER_STATUS_TIMEOUT, call).await {
            Ok(Ok(reply)) => reply
                .into_inner()
                .status
                .unwrap_or_else(|| unreachable("empty reply".to_owned())),
            Ok(Err(status)) => unreachable(status.message().to_owned()),
            Err(_) => unreachable(format!("no answer within {PEER_STATUS_TIMEOUT:?}")),
        }
    }

    fn admin_client(&self, address: &str) -> Result<AdminServiceClient<tonic::transport::Channel>, Status> {
        Ok(AdminServiceClient::new(self.context.channel(address)?))
    }
}

fn membership_error(error: impl std::fmt::Display) -> Status {
    CoordinatorError::InvalidRequest(error.to_string()).into()
}

#[tonic::async_trait]
impl pb::admin_service_server::AdminService for AdminServiceImpl {
    async fn cluster_status(
        &self,
        request: Request<pb::ClusterStatusRequest>,
    ) -> Result<Response<pb::ClusterStatusResponse>, Status> {
        let metrics = self.context.raft.metrics().borrow().clone();
        // The leader's view of the membership is authoritative (a follower may lag behind a
        // change); a node that cannot reach the leader answers with its own view.
        if !is_forwarded(&request) && metrics.state != ServerState::Leader {
            if let Some(address) = self.context.leader_address() {
                if let Ok(mut client) = self.admin_client(&address) {
                    let call = client.cluster_status(forwarded_request(pb::ClusterStatusRequest {}));
                    if let Ok(Ok(reply)) = tokio::time::timeout(PEER_STATUS_TIMEOUT * 2, call).await {
                        return Ok(reply);
                    }
                }
            }
        }
        let membership = metrics.membership_config.membership().clone();
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        let members: Vec<pb::Member> = membership
            .nodes()
            .map(|(node_id, node)| pb::Member {
                node_id: node_id.0,
                address: node.addr.clone(),
                role: if voters.contains(node_id) { "voter" } else { "learner" }.to_owned(),
            })
            .collect();
        let statuses = members.iter().map(|member| {
            let (node_id, address) = (member.node_id, member.address.clone());
            async move {
                if node_id == self.context.node_id.0 {
                    self.local_status()
                } else {
                    self.peer_status(node_id, address).await
                }
            }
        });
        let mut nodes = futures::future::join_all(statuses).await;
        if !members.iter().any(|member| member.node_id == self.context.node_id.0) {
            nodes.push(self.local_status());
        }
        // Prefer the highest term any node reports, since this node may be partitioned.
        let leader_node = nodes
            .iter()
            .filter(|node| node.state == "Leader")
            .max_by_key(|node| node.term);
        let leader_id = leader_node
            .map(|node| node.node_id)
            .or(metrics.current_leader.map(|leader| leader.0));
        let term = nodes.iter().map(|node| node.term).max().unwrap_or(metrics.current_term);
        Ok(Response::new(pb::ClusterStatusResponse {
            leader_id,
            term,
            members,
            nodes,
        }))
    }

    async fn node_status(
        &self,
        _request: Request<pb::NodeStatusRequest>,
    ) -> Result<Response<pb::NodeStatusResponse>, Status> {
        Ok(Response::new(pb::NodeStatusResponse {
            status: Some(self.local_status()),
        }))
    }

    #[tracing::instrument(skip_all, fields(node_id = self.context.node_id.0))]
    async fn add_learner(
        &self,
        request: Request<pb::AddLearnerRequest>,
    ) -> Result<Response<pb::AddLearnerResponse>, Status> {
        let forwarded = is_forwarded(&request);
        let message = request.into_inner();
        let has_port = message
            .address
            .rsplit_once(':')
            .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
        if !has_port {
            return Err(membership_error(format!(
                "address {:?} is not host:port",
                message.address
            )));
        }
        let metrics = self.context.raft.metrics().borrow().clone();
        if metrics
            .membership_config
            .membership()
            .voter_ids()
            .any(|id| id == NodeId(message.node_id))
        {
            return Err(membership_error(format!("node {} is already a voter", message.node_id)));
        }
        let node = BasicNode::new(message.address.clone());
        let outcome = self
            .when_no_change_in_progress(|| {
                self.context
                    .raft
                    .add_learner(NodeId(message.node_id), node.clone(), true)
            })
            .await
            .map_err(|_| {
                Status::unavailable("the learner did not catch up in time; it keeps catching up in the background")
            })?;
        let (learner, address) = (message.node_id, message.address.clone());
        let outcome = self.context.write_outcome(outcome);
        let call = leader_call!(AdminServiceClient::add_learner);
        reply_or_forward(&self.context, outcome, forwarded, message, call, |reply| {
            tracing::info!(learner, %address, "learner added");
            Ok(pb::AddLearnerResponse {
                log_index: reply.log_id.index,
            })
        })
        .await
    }

    #[tracing::instrument(skip_all, fields(node_id = self.context.node_id.0))]
    async fn change_membership(
        &self,
        request: Request<pb::ChangeMembershipRequest>,
    ) -> Result<Response<pb::ChangeMembershipResponse>, Status> {
        let forwarded = is_forwarded(&request);
        let message = request.into_inner();
        let voters: BTreeSet<NodeId> = message.voter_ids.iter().copied().map(NodeId).collect();
        if voters.is_empty() {
            return Err(membership_error("voter_ids must name at least one node"));
        }
        let metrics = self.context.raft.metrics().borrow().clone();
        let known: BTreeSet<NodeId> = metrics
            .membership_config
            .membership()
            .nodes()
            .map(|(id, _)| *id)
            .collect();
        // Only the leader's view decides: a follower may not have the entry that added the
        // learner yet (a client that added it through another node asks here right after), so
        // it forwards the request as it is.
        if metrics.current_leader != Some(self.context.node_id) {
            return forward!(
                self.context,
                self.context.not_leader(),
                forwarded,
                message,
                AdminServiceClient::change_membership
            );
        }
        if let Some(unknown) = voters.iter().find(|id| !known.contains(id)) {
            return Err(membership_error(format!(
                "node {unknown} is not a member; add it as a learner first"
            )));
        }
        let outcome = self
            .when_no_change_in_progress(|| self.context.raft.change_membership(voters.clone(), false))
            .await
            .map_err(|_| Status::unavailable("membership change not committed in time; check cluster status"))?;
        let outcome = self.context.write_outcome(outcome);
        let call = leader_call!(AdminServiceClient::change_membership);
        reply_or_forward(&self.context, outcome, forwarded, message, call, |reply| {
            tracing::info!(voters = ?voters, "membership changed");
            Ok(pb::ChangeMembershipResponse {
                log_index: reply.log_id.index,
            })
        })
        .await
    }

    async fn drain_executor(
        &self,
        request: Request<pb::DrainExecutorRequest>,
    ) -> Result<Response<pb::DrainExecutorResponse>, Status> {
        let forwarded = is_forwarded(&request);
        let message = request.into_inner();
        let executor_id = message.executor_id.trim();
        if executor_id.is_empty() {
            return Err(CoordinatorError::InvalidRequest("executor_id is empty".to_owned()).into());
        }
        let command = Command::DrainExecutor {
            request_id: super::job_service::parse_request_id(&message.request_id)?,
            executor_id: ExecutorId(executor_id.to_owned()),
            at_ms: now_ms(),
        };
        let outcome = self.context.propose(command).await;
        let call = leader_call!(AdminServiceClient::drain_executor);
        reply_or_forward(
            &self.context,
            outcome,
            forwarded,
            message,
            call,
            |applied| match applied {
                Applied::ExecutorDraining {
                    executor_id,
                    jobs_to_move,
                } => {
                    tracing::info!(%executor_id, jobs_to_move, "executor draining");
                    Ok(pb::DrainExecutorResponse { jobs_to_move })
                }
                other => Err(unexpected_outcome("drain", &other)),
            },
        )
        .await
    }

    async fn list_executors(
        &self,
        request: Request<pb::ListExecutorsRequest>,
    ) -> Result<Response<pb::ListExecutorsResponse>, Status> {
        if !self.sessions.is_leading() {
            let metrics = self.context.raft.metrics().borrow().clone();
            let leader_address = metrics.current_leader.and_then(|leader| {
                metrics
                    .membership_config
                    .membership()
                    .get_node(&leader)
                    .map(|node| node.addr.clone())
            });
            let error = CoordinatorError::NotLeader {
                node_id: self.context.node_id,
                leader_id: metrics.current_leader,
                leader_address,
            };
            let message = pb::ListExecutorsRequest {};
            return forward!(
                self.context,
                error,
                is_forwarded(&request),
                message,
                AdminServiceClient::list_executors
            );
        }
        let applied = self.context.applied.read();
        let executors = applied
            .state
            .executors
            .values()
            .map(|executor| {
                let (connected, age) = self.sessions.contact(&executor.executor_id);
                pb::ExecutorInfo {
                    executor_id: executor.executor_id.0.clone(),
                    address: executor.address.clone(),
                    slots: executor.slots,
                    used_slots: applied.state.used_slots(&executor.executor_id),
                    alive: executor.alive,
                    connected,
                    last_heartbeat_age_ms: age.map(|age| u64::try_from(age.as_millis()).unwrap_or(u64::MAX)),
                    draining: executor.draining,
                }
            })
            .collect();
        let leading_for_ms = self
            .sessions
            .leading_for()
            .map_or(0, |age| u64::try_from(age.as_millis()).unwrap_or(u64::MAX));
        Ok(Response::new(pb::ListExecutorsResponse {
            executors,
            leading_for_ms,
        }))
    }
}
