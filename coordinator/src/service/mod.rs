//! The gRPC services of a coordinator. Protobuf types stop here: handlers convert requests into
//! commands and state into replies.

mod admin_service;
mod convert;
mod executor_service;
mod job_service;
mod raft_service;

use std::future::Future;

use tonic::transport::Channel;
use tonic::Status;

use crate::context::CoordinatorContext;
use crate::error::CoordinatorError;

pub use admin_service::AdminServiceImpl;
pub use executor_service::ExecutorServiceImpl;
pub use job_service::JobServiceImpl;
pub use raft_service::RaftServiceImpl;

pub use raftstream_api::metadata::FORWARDED_METADATA;

/// Whether a request was already forwarded by a follower.
pub fn is_forwarded<T>(request: &tonic::Request<T>) -> bool {
    request.metadata().contains_key(FORWARDED_METADATA)
}

/// Wraps a message for forwarding to the leader.
fn forwarded_request<T>(message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert(FORWARDED_METADATA, tonic::metadata::MetadataValue::from_static("1"));
    request
}

/// If `error` says another node leads and this request may still be forwarded, where to send it.
fn forward_target(error: &CoordinatorError, already_forwarded: bool) -> Option<String> {
    match error {
        CoordinatorError::NotLeader {
            leader_address: Some(address),
            ..
        } if !already_forwarded => Some(address.clone()),
        _ => None,
    }
}

/// Answers a request this node could not serve because another node leads: sends `message` to
/// that leader through `call` (marked as forwarded, so it is forwarded at most once) and returns
/// its reply. Without a known leader, or when the request was itself forwarded, the client gets
/// `error`.
pub async fn forward_to_leader<M, R, Call, Reply>(
    context: &CoordinatorContext,
    error: CoordinatorError,
    already_forwarded: bool,
    message: M,
    call: Call,
) -> Result<tonic::Response<R>, Status>
where
    Call: FnOnce(Channel, tonic::Request<M>) -> Reply,
    Reply: Future<Output = Result<tonic::Response<R>, Status>>,
{
    let address = forward_target(&error, already_forwarded).ok_or_else(|| Status::from(error))?;
    let channel = context.channel(&address)?;
    call(channel, forwarded_request(message)).await.map_err(|status| {
        CoordinatorError::ForwardFailed {
            leader_address: address,
            status,
        }
        .into()
    })
}
