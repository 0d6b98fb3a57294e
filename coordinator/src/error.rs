//! The coordinator's errors and their mapping to gRPC status codes.

use crate::state_machine::Rejection;
use raftstream_api::ids::NodeId;
use raftstream_api::spec::SpecError;

pub use raftstream_api::metadata::LEADER_HINT_METADATA;

/// Everything a coordinator request can fail with.
#[derive(Debug, thiserror::Error)]
pub enum CoordinatorError {
    /// The job spec is invalid; nothing was stored.
    #[error("invalid job spec: {0}")]
    InvalidSpec(#[from] SpecError),
    /// A request field is malformed.
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// The state machine refused the command; nothing changed.
    #[error(transparent)]
    Rejected(#[from] Rejection),
    /// This node is not the leader and could not (or must not) forward.
    #[error("node {node_id} is not the leader{}", leader_hint(.leader_id, .leader_address))]
    NotLeader {
        node_id: NodeId,
        leader_id: Option<NodeId>,
        leader_address: Option<String>,
    },
    /// Forwarding to the leader failed.
    #[error("forwarding to leader {leader_address} failed: {status}")]
    ForwardFailed {
        leader_address: String,
        status: tonic::Status,
    },
    /// Raft could not complete the request in time or is shutting down.
    #[error("Raft is unavailable: {0}")]
    RaftUnavailable(String),
    /// A broken invariant or unreadable storage: a bug or corruption, not the caller's fault.
    #[error("internal error: {0}")]
    Internal(String),
}

fn leader_hint(leader_id: &Option<NodeId>, leader_address: &Option<String>) -> String {
    match (leader_id, leader_address) {
        (Some(id), Some(address)) => format!("; the leader is node {id} at {address}"),
        (Some(id), None) => format!("; the leader is node {id}"),
        _ => "; no leader is known (election in progress?)".to_owned(),
    }
}

fn rejection_code(rejection: &Rejection) -> tonic::Code {
    match rejection {
        Rejection::UnknownJob { .. }
        | Rejection::UnknownExecutor { .. }
        | Rejection::UnknownSubtask { .. }
        | Rejection::UnknownSavepoint { .. } => tonic::Code::NotFound,
        Rejection::NoSlots { .. } | Rejection::InvalidRescale { .. } | Rejection::InvalidSavepointRestore { .. } => {
            tonic::Code::InvalidArgument
        }
        Rejection::NotEnoughSlots { .. } => tonic::Code::ResourceExhausted,
        Rejection::JobAlreadyEnded { .. }
        | Rejection::IllegalTransition { .. }
        | Rejection::ExecutorDead { .. }
        | Rejection::ExecutorDraining { .. }
        | Rejection::NoFreeSlot { .. }
        | Rejection::SliceElsewhere { .. }
        | Rejection::CheckpointIdNotIncreasing { .. }
        | Rejection::CheckpointEpochTooNew { .. }
        | Rejection::CheckpointNotTriggered { .. }
        | Rejection::CheckpointPlacementChanged { .. }
        | Rejection::StaleEpoch { .. }
        | Rejection::PlacementReleased { .. }
        | Rejection::DeploymentOutdated { .. }
        | Rejection::InvalidSavepoint { .. }
        | Rejection::JobNotActive { .. } => tonic::Code::FailedPrecondition,
    }
}

impl From<CoordinatorError> for tonic::Status {
    fn from(error: CoordinatorError) -> Self {
        let message = error.to_string();
        match error {
            CoordinatorError::InvalidSpec(_) | CoordinatorError::InvalidRequest(_) => {
                tonic::Status::invalid_argument(message)
            }
            CoordinatorError::Rejected(rejection) => tonic::Status::new(rejection_code(&rejection), message),
            CoordinatorError::NotLeader { leader_address, .. } => {
                let mut status = tonic::Status::unavailable(message);
                if let Some(address) = leader_address.and_then(|address| address.parse().ok()) {
                    status.metadata_mut().insert(LEADER_HINT_METADATA, address);
                }
                status
            }
            // The leader's own answer passes through unchanged, so a client sees the same code
            // whichever node it asked.
            CoordinatorError::ForwardFailed { status, leader_address } => match status.code() {
                tonic::Code::Unavailable
                | tonic::Code::Unknown
                | tonic::Code::DeadlineExceeded
                | tonic::Code::Cancelled => tonic::Status::unavailable(format!(
                    "forwarding to leader {leader_address} failed: {}",
                    status.message()
                )),
                _ => status,
            },
            CoordinatorError::RaftUnavailable(_) => tonic::Status::unavailable(message),
            CoordinatorError::Internal(_) => tonic::Status::internal(message),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state_machine::JobStatus;
    use raftstream_api::ids::JobId;

    #[test]
    fn errors_map_to_the_grpc_codes_clients_expect() {
        let job_id = JobId::from_number(3);
        let ended = CoordinatorError::Rejected(Rejection::JobAlreadyEnded {
            job_id,
            status: JobStatus::Finished,
        });
        let status = tonic::Status::from(ended);
        assert_eq!(status.code(), tonic::Code::FailedPrecondition);
        assert!(status.message().contains("job-3 is Finished"), "{}", status.message());
        assert_eq!(
            tonic::Status::from(CoordinatorError::Rejected(Rejection::UnknownJob { job_id })).code(),
            tonic::Code::NotFound
        );
        let not_leader = tonic::Status::from(CoordinatorError::NotLeader {
            node_id: NodeId(2),
            leader_id: Some(NodeId(1)),
            leader_address: Some("127.0.0.1:7101".to_owned()),
        });
        assert_eq!(not_leader.code(), tonic::Code::Unavailable);
        assert!(
            not_leader.message().contains("node 1 at 127.0.0.1:7101"),
            "{}",
            not_leader.message()
        );
        assert_eq!(
            not_leader
                .metadata()
                .get(LEADER_HINT_METADATA)
                .and_then(|value| value.to_str().ok()),
            Some("127.0.0.1:7101")
        );
    }
}
