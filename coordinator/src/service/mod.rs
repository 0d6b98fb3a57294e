//! The gRPC services of a coordinator. Protobuf types stop here: handlers convert requests into
//! commands and state into replies.

/// The call that forwards a request to the leader's `Client::method` (for [`forward_to_leader`]
/// and [`reply_or_forward`]). A macro because each names a different generated client and method.
macro_rules! leader_call {
    ($client:ident :: $method:ident) => {
        |leader, request| async move { $client::new(leader).$method(request).await }
    };
}

/// Answers a request this node could not serve (`error`: another node leads) by forwarding
/// `message` to the leader's `Client::method`; see [`forward_to_leader`].
macro_rules! forward {
    ($context:expr, $error:expr, $forwarded:expr, $message:expr, $client:ident :: $method:ident) => {
        $crate::service::forward_to_leader(&$context, $error, $forwarded, $message, leader_call!($client::$method))
            .await
    };
}

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
use crate::state_machine::Response as Applied;

pub use admin_service::AdminServiceImpl;
pub use executor_service::ExecutorServiceImpl;
pub use job_service::JobServiceImpl;
pub use raft_service::RaftServiceImpl;

use raftstream_api::metadata::FORWARDED_METADATA;

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

/// The error for a command applied with an outcome its request never expects: a bug in this
/// coordinator, not in the request, so the caller sees an internal error naming both.
pub fn unexpected_outcome(request: &str, applied: &Applied) -> Status {
    CoordinatorError::Internal(format!("{request} answered {applied:?}")).into()
}

/// The shape of every write: `outcome` is what this node did with the request (a proposal, a
/// membership change); when it succeeded the client gets `answer` of it, and when this node could
/// not do it because another node leads, the request goes to that leader through `call` (see
/// [`forward_to_leader`]).
pub async fn reply_or_forward<T, M, R, Call, Reply>(
    context: &CoordinatorContext,
    outcome: Result<T, CoordinatorError>,
    already_forwarded: bool,
    message: M,
    call: Call,
    answer: impl FnOnce(T) -> Result<R, Status>,
) -> Result<tonic::Response<R>, Status>
where
    Call: FnOnce(Channel, tonic::Request<M>) -> Reply,
    Reply: Future<Output = Result<tonic::Response<R>, Status>>,
{
    match outcome {
        Ok(done) => answer(done).map(tonic::Response::new),
        Err(error) => forward_to_leader(context, error, already_forwarded, message, call).await,
    }
}
