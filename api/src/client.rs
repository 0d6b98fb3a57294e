//! A client for a coordinator cluster: any reachable node works (followers forward to the leader),
//! and unavailable answers are retried on the next node with backoff, up to a deadline.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use raftstream_proto::v1 as pb;
use raftstream_proto::v1::admin_service_client::AdminServiceClient;
use raftstream_proto::v1::executor_service_client::ExecutorServiceClient;
use raftstream_proto::v1::job_service_client::JobServiceClient;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};

use crate::checkpoint::SavepointRef;

const FIRST_BACKOFF: Duration = Duration::from_millis(25);
const MAX_BACKOFF: Duration = Duration::from_millis(500);

/// Why a cluster call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("no coordinator addresses given")]
    NoAddresses,
    #[error("invalid coordinator address {address:?}: {reason}")]
    InvalidAddress { address: String, reason: String },
    #[error(
        "no coordinator leader reachable at {addresses} after {attempts} attempts over {waited:?}; last error: {last}"
    )]
    Unavailable {
        addresses: String,
        attempts: u32,
        waited: Duration,
        last: String,
    },
    #[error("{}: {}", code_name(.0.code()), .0.message())]
    Rejected(Status),
    /// A request the client refuses before sending it, with the reason.
    #[error("INVALID_ARGUMENT: {0}")]
    Invalid(String),
}

fn code_name(code: Code) -> &'static str {
    match code {
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::NotFound => "NOT_FOUND",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        _ => "ERROR",
    }
}

/// The entry of `running` (a `GetJobMetrics` reply's running subtasks) for `subtask` at its
/// placed epoch: `None` while that placement still deploys or restores.
pub fn running_entry<'a>(running: &'a [pb::SubtaskRunning], subtask: &pb::Subtask) -> Option<&'a pb::SubtaskRunning> {
    running.iter().find(|entry| {
        entry.task.as_ref().is_some_and(|task| {
            task.operator_id == subtask.operator_id
                && task.subtask_index == subtask.subtask_index
                && task.epoch == subtask.epoch
        })
    })
}

impl ClientError {
    /// The gRPC code behind this error (UNAVAILABLE when nothing answered).
    pub fn code(&self) -> Code {
        match self {
            ClientError::Rejected(status) => status.code(),
            ClientError::Unavailable { .. } => Code::Unavailable,
            ClientError::NoAddresses | ClientError::InvalidAddress { .. } | ClientError::Invalid(_) => {
                Code::InvalidArgument
            }
        }
    }
}

fn retryable(status: &Status) -> bool {
    matches!(
        status.code(),
        Code::Unavailable | Code::Unknown | Code::Cancelled | Code::DeadlineExceeded | Code::Aborted
    )
}

/// A handle on the cluster, cheap to clone.
#[derive(Debug)]
pub struct ClusterClient {
    addresses: Vec<String>,
    channels: Vec<Channel>,
    next: AtomicUsize,
    retry_for: Duration,
    attempt_timeout: Duration,
}

/// How a job is submitted besides its spec.
#[derive(Debug, Clone, Default)]
pub struct SubmitOptions {
    /// Start from this savepoint's state (operators matched by id).
    pub from_savepoint: Option<SavepointRef>,
    /// Drop the savepoint's state of operators the job no longer has instead of refusing.
    pub allow_unmatched_state: bool,
}

impl ClusterClient {
    /// A client for the coordinators at `addresses` (host:port), retrying for up to `retry_for`.
    pub fn new(addresses: &[String], retry_for: Duration) -> Result<Self, ClientError> {
        if addresses.is_empty() {
            return Err(ClientError::NoAddresses);
        }
        let channels = addresses
            .iter()
            .map(|address| {
                let endpoint = Endpoint::from_shared(format!("http://{address}")).map_err(|error| {
                    ClientError::InvalidAddress {
                        address: address.clone(),
                        reason: error.to_string(),
                    }
                })?;
                Ok(endpoint
                    .connect_timeout(Duration::from_millis(500))
                    .tcp_nodelay(true)
                    .connect_lazy())
            })
            .collect::<Result<Vec<_>, ClientError>>()?;
        Ok(ClusterClient {
            addresses: addresses.to_vec(),
            channels,
            next: AtomicUsize::new(0),
            retry_for,
            attempt_timeout: Duration::from_secs(12),
        })
    }

    /// Gives up on one node after `timeout` and moves to the next.
    pub fn with_attempt_timeout(mut self, timeout: Duration) -> Self {
        self.attempt_timeout = timeout;
        self
    }

    /// The addresses this client tries.
    pub fn addresses(&self) -> &[String] {
        &self.addresses
    }

    /// Calls `call` on one node after another until one answers with something other than
    /// "unavailable", or the retry deadline passes.
    async fn with_retry<T, F, Fut>(&self, call: F) -> Result<T, ClientError>
    where
        F: Fn(Channel) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let started = Instant::now();
        let mut backoff = FIRST_BACKOFF;
        let mut attempts = 0u32;
        loop {
            let index = self.next.load(Ordering::Relaxed) % self.channels.len();
            attempts += 1;
            let outcome = tokio::time::timeout(self.attempt_timeout, call(self.channels[index].clone())).await;
            let status = match outcome {
                Ok(Ok(reply)) => return Ok(reply.into_inner()),
                Ok(Err(status)) if !retryable(&status) => return Err(ClientError::Rejected(status)),
                Ok(Err(status)) => status,
                Err(_) => Status::deadline_exceeded(format!(
                    "no answer from {} within {:?}",
                    self.addresses[index], self.attempt_timeout
                )),
            };
            // Stay on a node that answers; move on from one that does not.
            self.next.store(index + 1, Ordering::Relaxed);
            let waited = started.elapsed();
            if waited + backoff > self.retry_for {
                return Err(ClientError::Unavailable {
                    addresses: self.addresses.join(","),
                    attempts,
                    waited,
                    last: format!("{} ({})", status.message(), self.addresses[index]),
                });
            }
            tracing::debug!(address = %self.addresses[index], error = %status.message(), ?backoff, "retrying");
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    /// Submits a job spec; `request_id` makes retries create one job.
    pub async fn submit_job(&self, spec: &str, request_id: &str) -> Result<pb::Job, ClientError> {
        self.submit_job_with(spec, request_id, &SubmitOptions::default()).await
    }

    /// Submits a job spec with options (start from a savepoint).
    pub async fn submit_job_with(
        &self,
        spec: &str,
        request_id: &str,
        options: &SubmitOptions,
    ) -> Result<pb::Job, ClientError> {
        let request = pb::SubmitJobRequest {
            spec: spec.to_owned(),
            request_id: request_id.to_owned(),
            from_savepoint: options
                .from_savepoint
                .map(|savepoint| savepoint.to_string())
                .unwrap_or_default(),
            allow_unmatched_state: options.allow_unmatched_state,
        };
        let reply = self.with_retry(|channel| {
            let request = request.clone();
            async move {
                JobServiceClient::new(channel)
                    .max_decoding_message_size(64 << 20)
                    .max_encoding_message_size(64 << 20)
                    .submit_job(request)
                    .await
            }
        });
        reply
            .await?
            .job
            .ok_or_else(|| ClientError::Rejected(Status::internal("empty reply")))
    }

    /// Stores a user function's component (`sha256` is its hash) in the checkpoint store through
    /// the cluster; answers which executor stored it.
    pub async fn upload_function(&self, sha256: &str, bytes: &[u8]) -> Result<pb::UploadFunctionResponse, ClientError> {
        let chunks = crate::function_upload::function_chunks(sha256, bytes);
        self.with_retry(|channel| {
            let chunks = chunks.clone();
            async move {
                JobServiceClient::new(channel)
                    .upload_function(tokio_stream::iter(chunks))
                    .await
            }
        })
        .await
    }

    /// One job.
    pub async fn get_job(&self, job_id: &str, consistency: pb::ReadConsistency) -> Result<pb::Job, ClientError> {
        let request = pb::GetJobRequest {
            job_id: job_id.to_owned(),
            consistency: consistency as i32,
        };
        let reply = self.with_retry(|channel| {
            let request = request.clone();
            async move { JobServiceClient::new(channel).get_job(request).await }
        });
        reply
            .await?
            .job
            .ok_or_else(|| ClientError::Rejected(Status::internal("empty reply")))
    }

    /// What the job's tasks last reported to the leader (records, busy time, hottest keys) and
    /// which subtasks of its current placement run (restored and processing).
    pub async fn get_job_metrics(&self, job_id: &str) -> Result<pb::GetJobMetricsResponse, ClientError> {
        let request = pb::GetJobMetricsRequest {
            job_id: job_id.to_owned(),
        };
        let reply = self.with_retry(|channel| {
            let request = request.clone();
            async move { JobServiceClient::new(channel).get_job_metrics(request).await }
        });
        reply.await
    }

    /// All jobs, oldest first.
    pub async fn list_jobs(&self, consistency: pb::ReadConsistency) -> Result<Vec<pb::Job>, ClientError> {
        let request = pb::ListJobsRequest {
            consistency: consistency as i32,
        };
        let reply = self.with_retry(|channel| {
            let request = request;
            async move {
                JobServiceClient::new(channel)
                    .max_decoding_message_size(256 << 20)
                    .list_jobs(request)
                    .await
            }
        });
        Ok(reply.await?.jobs)
    }

    /// Rescales a running job: `operator_id` (every operator when `None`) to `parallelism`.
    pub async fn rescale_job(
        &self,
        job_id: &str,
        operator_id: Option<&str>,
        parallelism: u32,
        request_id: &str,
    ) -> Result<pb::Job, ClientError> {
        let request = pb::RescaleJobRequest {
            job_id: job_id.to_owned(),
            operator_id: operator_id.unwrap_or_default().to_owned(),
            parallelism,
            request_id: request_id.to_owned(),
        };
        let reply = self.with_retry(|channel| {
            let request = request.clone();
            async move { JobServiceClient::new(channel).rescale_job(request).await }
        });
        reply
            .await?
            .job
            .ok_or_else(|| ClientError::Rejected(Status::internal("empty reply")))
    }

    /// Takes a savepoint of a running job and returns it once taken (with the job as it is
    /// then); with `stop`, the job stops after it (it becomes `Stopped` once every sink
    /// published the savepoint).
    pub async fn take_savepoint(
        &self,
        job_id: &str,
        stop: bool,
        request_id: &str,
    ) -> Result<(pb::Checkpoint, Option<pb::Job>), ClientError> {
        let request = pb::TakeSavepointRequest {
            job_id: job_id.to_owned(),
            stop,
            request_id: request_id.to_owned(),
        };
        let reply = self.with_retry(|channel| {
            let request = request.clone();
            async move { JobServiceClient::new(channel).take_savepoint(request).await }
        });
        let reply = reply.await?;
        let savepoint = reply
            .savepoint
            .ok_or_else(|| ClientError::Rejected(Status::internal("empty reply")))?;
        Ok((savepoint, reply.job))
    }

    /// Deletes a savepoint (and, through the executors, its files); how many executors were told.
    pub async fn delete_savepoint(&self, savepoint: &SavepointRef, request_id: &str) -> Result<u32, ClientError> {
        let request = pb::DeleteSavepointRequest {
            job_id: savepoint.job_id.to_string(),
            savepoint_id: savepoint.savepoint_id.0,
            request_id: request_id.to_owned(),
        };
        let reply = self.with_retry(|channel| {
            let request = request.clone();
            async move { JobServiceClient::new(channel).delete_savepoint(request).await }
        });
        Ok(reply.await?.executors_told)
    }

    /// Cancels a job.
    pub async fn cancel_job(&self, job_id: &str, request_id: &str) -> Result<pb::Job, ClientError> {
        let request = pb::CancelJobRequest {
            job_id: job_id.to_owned(),
            request_id: request_id.to_owned(),
        };
        let reply = self.with_retry(|channel| {
            let request = request.clone();
            async move { JobServiceClient::new(channel).cancel_job(request).await }
        });
        reply
            .await?
            .job
            .ok_or_else(|| ClientError::Rejected(Status::internal("empty reply")))
    }

    /// The completed checkpoints of a job, oldest first.
    pub async fn list_checkpoints(&self, job_id: &str) -> Result<Vec<pb::Checkpoint>, ClientError> {
        let request = pb::ListCheckpointsRequest {
            job_id: job_id.to_owned(),
            consistency: pb::ReadConsistency::Linearizable as i32,
        };
        let reply = self.with_retry(|channel| {
            let request = request.clone();
            async move { JobServiceClient::new(channel).list_checkpoints(request).await }
        });
        Ok(reply.await?.checkpoints)
    }

    /// The cluster as seen from the first node that answers.
    pub async fn cluster_status(&self) -> Result<pb::ClusterStatusResponse, ClientError> {
        self.with_retry(|channel| async move {
            AdminServiceClient::new(channel)
                .cluster_status(pb::ClusterStatusRequest {})
                .await
        })
        .await
    }

    /// Registers an executor (or re-registers it after a restart).
    pub async fn register_executor(
        &self,
        request: pb::RegisterExecutorRequest,
    ) -> Result<pb::RegisterExecutorResponse, ClientError> {
        self.with_retry(|channel| {
            let request = request.clone();
            async move { ExecutorServiceClient::new(channel).register(request).await }
        })
        .await
    }

    /// The executors and their slots, with the leader's view of their heartbeats.
    pub async fn list_executors(&self) -> Result<pb::ListExecutorsResponse, ClientError> {
        self.with_retry(|channel| async move {
            AdminServiceClient::new(channel)
                .list_executors(pb::ListExecutorsRequest {})
                .await
        })
        .await
    }

    /// Drains an executor: its subtasks move elsewhere through a checkpoint taken for the move,
    /// then it exits. Returns how many running jobs move.
    pub async fn drain_executor(&self, executor_id: &str, request_id: &str) -> Result<u32, ClientError> {
        let request = pb::DrainExecutorRequest {
            executor_id: executor_id.to_owned(),
            request_id: request_id.to_owned(),
        };
        let reply = self.with_retry(|channel| {
            let request = request.clone();
            async move { AdminServiceClient::new(channel).drain_executor(request).await }
        });
        Ok(reply.await?.jobs_to_move)
    }

    /// Adds a node as a learner (it starts receiving the log).
    pub async fn add_learner(&self, node_id: u64, address: &str) -> Result<pb::AddLearnerResponse, ClientError> {
        let request = pb::AddLearnerRequest {
            node_id,
            address: address.to_owned(),
        };
        self.with_retry(|channel| {
            let request = request.clone();
            async move { AdminServiceClient::new(channel).add_learner(request).await }
        })
        .await
    }

    /// Makes `voter_ids` the complete set of voters.
    pub async fn change_membership(&self, voter_ids: &[u64]) -> Result<pb::ChangeMembershipResponse, ClientError> {
        let request = pb::ChangeMembershipRequest {
            voter_ids: voter_ids.to_vec(),
        };
        self.with_retry(|channel| {
            let request = request.clone();
            async move { AdminServiceClient::new(channel).change_membership(request).await }
        })
        .await
    }

    /// Replaces voter `dead` (usually a node that is gone for good) by node `new_id` at `address`,
    /// which must be running with an empty data dir: adds it as a learner, which returns once it
    /// has caught up with the log, then makes it a voter in `dead`'s place in one membership
    /// change. Jobs keep running throughout. Safe to repeat after a failure part way.
    pub async fn replace_node(&self, dead: u64, new_id: u64, address: &str) -> Result<NodeReplaced, ClientError> {
        if dead == new_id {
            return Err(ClientError::Invalid(format!(
                "the new node needs an id of its own, not {dead}"
            )));
        }
        let status = self.cluster_status().await?;
        let voters: Vec<u64> = status
            .members
            .iter()
            .filter(|member| member.role == "voter")
            .map(|member| member.node_id)
            .collect();
        if !voters.contains(&dead) {
            return Err(ClientError::Invalid(format!(
                "node {dead} is not a voter (voters: {voters:?})"
            )));
        }
        if voters.contains(&new_id) {
            return Err(ClientError::Invalid(format!("node {new_id} is already a voter")));
        }
        let learner = self.add_learner(new_id, address).await?;
        let mut new_voters: Vec<u64> = voters.iter().copied().filter(|id| *id != dead).collect();
        new_voters.push(new_id);
        new_voters.sort_unstable();
        let changed = self.change_membership(&new_voters).await?;
        Ok(NodeReplaced {
            learner_log_index: learner.log_index,
            membership_log_index: changed.log_index,
            voters: new_voters,
        })
    }
}

/// What [`ClusterClient::replace_node`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeReplaced {
    /// Where the new node joined as a learner.
    pub learner_log_index: u64,
    /// Where the new voters took effect.
    pub membership_log_index: u64,
    pub voters: Vec<u64>,
}
