//! `JobService`: submit, read and cancel jobs. Writes go through Raft on the leader; a follower
//! forwards them. Linearizable reads are confirmed by the leader (read-index); local reads are not.

use raftstream_proto::v1 as pb;
use raftstream_proto::v1::job_service_client::JobServiceClient;
use tonic::{Request, Response, Status};

use super::convert::{checkpoints_and_savepoints, job_to_proto, jobs_in_submission_order};

use super::{is_forwarded, reply_or_forward, unexpected_outcome};
use crate::clock::now_ms;
use crate::context::CoordinatorContext;
use crate::error::CoordinatorError;
use crate::leader::sessions::ExecutorSessions;
use crate::state_machine::{Command, Rejection, Response as Applied};
use raftstream_api::checkpoint::SavepointRef;
use raftstream_api::convert::task_ref_to_proto;
use raftstream_api::convert::{checkpoint_to_proto, subtask_metrics_to_proto};
use raftstream_api::ids::{CheckpointId, JobId, OperatorId, RequestId};
use raftstream_api::messages::ExecutorCommand;
use raftstream_api::messages::TaskRef;
use raftstream_api::spec::parse_job_spec;

const MAX_REQUEST_ID_CHARS: usize = 128;

/// How long `TakeSavepoint` waits for the savepoint before it answers that it is still being
/// taken (its outcome then shows in `job checkpoints`).
const SAVEPOINT_PATIENCE: std::time::Duration = std::time::Duration::from_secs(120);

/// The `JobService` of one coordinator.
#[derive(Clone)]
pub struct JobServiceImpl {
    context: CoordinatorContext,
    /// The executors' sessions with this node (only the leader's have any): a deleted
    /// savepoint's files are deleted by the executors.
    sessions: ExecutorSessions,
}

impl JobServiceImpl {
    /// The job service over a coordinator's shared context.
    pub fn new(context: CoordinatorContext, sessions: ExecutorSessions) -> Self {
        JobServiceImpl { context, sessions }
    }

    /// Waits until this node applied the outcome of the job's savepoint request `ticket`.
    async fn savepoint_outcome(&self, job_id: &JobId, ticket: u64) -> Result<CheckpointId, Status> {
        let deadline = tokio::time::Instant::now() + SAVEPOINT_PATIENCE;
        loop {
            let outcome = {
                let applied = self.context.applied.read();
                let job = applied
                    .state
                    .jobs
                    .get(job_id)
                    .ok_or_else(|| CoordinatorError::Rejected(Rejection::UnknownJob { job_id: *job_id }))?;
                job.last_savepoint
                    .as_ref()
                    .filter(|outcome| outcome.ticket >= ticket)
                    .map(|outcome| outcome.result.clone())
            };
            match outcome {
                Some(Ok(savepoint_id)) => return Ok(savepoint_id),
                Some(Err(reason)) => {
                    return Err(Status::aborted(format!("the savepoint of job {job_id} failed: {reason}")))
                }
                None if tokio::time::Instant::now() >= deadline => {
                    return Err(Status::deadline_exceeded(format!(
                        "the savepoint of job {job_id} is still being taken after {SAVEPOINT_PATIENCE:?}; `job checkpoints {job_id}` lists it once taken"
                    )))
                }
                // Applied state has no change notification; a savepoint takes one checkpoint,
                // so a few polls per checkpoint cost nothing.
                None => tokio::time::sleep(std::time::Duration::from_millis(20)).await,
            }
        }
    }

    fn job_reply(&self, job_id: &JobId) -> Result<pb::Job, Status> {
        let applied = self.context.applied.read();
        let job = applied
            .state
            .jobs
            .get(job_id)
            .ok_or_else(|| CoordinatorError::Rejected(Rejection::UnknownJob { job_id: *job_id }))?;
        Ok(job_to_proto(&applied.state, job))
    }

    /// Confirms that this node may serve a read of `consistency` from its own state: a local
    /// read always, a linearizable one once the leader's read-index says so.
    async fn prepare_read(&self, consistency: i32) -> Result<(), CoordinatorError> {
        if consistency == pb::ReadConsistency::Local as i32 {
            return Ok(());
        }
        self.context.ensure_linearizable().await
    }
}

pub(super) fn parse_request_id(text: &str) -> Result<Option<RequestId>, CoordinatorError> {
    if text.is_empty() {
        return Ok(None);
    }
    if text.chars().count() > MAX_REQUEST_ID_CHARS {
        return Err(CoordinatorError::InvalidRequest(format!(
            "request_id is longer than {MAX_REQUEST_ID_CHARS} characters"
        )));
    }
    Ok(Some(RequestId(text.to_owned())))
}

fn parse_job_id(text: &str) -> Result<JobId, CoordinatorError> {
    if text.trim().is_empty() {
        return Err(CoordinatorError::InvalidRequest("job_id is empty".to_owned()));
    }
    JobId::parse(text.trim()).map_err(|error| CoordinatorError::InvalidRequest(error.to_string()))
}

#[tonic::async_trait]
impl pb::job_service_server::JobService for JobServiceImpl {
    #[tracing::instrument(skip_all, fields(node_id = self.context.node_id.0))]
    async fn submit_job(
        &self,
        request: Request<pb::SubmitJobRequest>,
    ) -> Result<Response<pb::SubmitJobResponse>, Status> {
        let forwarded = is_forwarded(&request);
        let message = request.into_inner();
        let graph = parse_job_spec(&message.spec).map_err(CoordinatorError::from)?;
        let request_id = parse_request_id(&message.request_id)?;
        let from_savepoint = Some(message.from_savepoint.trim())
            .filter(|text| !text.is_empty())
            .map(SavepointRef::parse)
            .transpose()
            .map_err(|error| CoordinatorError::InvalidRequest(error.to_string()))?;
        let command = Command::SubmitJob {
            request_id,
            graph,
            at_ms: now_ms(),
            from_savepoint,
            allow_unmatched_state: message.allow_unmatched_state,
        };
        let outcome = self.context.propose(command).await;
        let call = leader_call!(JobServiceClient::submit_job);
        reply_or_forward(
            &self.context,
            outcome,
            forwarded,
            message,
            call,
            |applied| match applied {
                Applied::JobSubmitted { job_id } => {
                    tracing::debug!(job_id = %job_id, "job submitted");
                    Ok(pb::SubmitJobResponse {
                        job: Some(self.job_reply(&job_id)?),
                    })
                }
                other => Err(unexpected_outcome("submit", &other)),
            },
        )
        .await
    }

    #[tracing::instrument(skip_all, fields(node_id = self.context.node_id.0))]
    async fn get_job(&self, request: Request<pb::GetJobRequest>) -> Result<Response<pb::GetJobResponse>, Status> {
        let forwarded = is_forwarded(&request);
        let message = request.into_inner();
        let job_id = parse_job_id(&message.job_id)?;
        if let Err(error) = self.prepare_read(message.consistency).await {
            return forward!(self.context, error, forwarded, message, JobServiceClient::get_job);
        }
        Ok(Response::new(pb::GetJobResponse {
            job: Some(self.job_reply(&job_id)?),
        }))
    }

    #[tracing::instrument(skip_all, fields(node_id = self.context.node_id.0))]
    async fn get_job_metrics(
        &self,
        request: Request<pb::GetJobMetricsRequest>,
    ) -> Result<Response<pb::GetJobMetricsResponse>, Status> {
        let forwarded = is_forwarded(&request);
        let message = request.into_inner();
        let job_id = parse_job_id(&message.job_id)?;
        // Executors report to the leader only.
        if !self.sessions.is_leading() {
            return forward!(
                self.context,
                self.context.not_leader(),
                forwarded,
                message,
                JobServiceClient::get_job_metrics
            );
        }
        let current: std::collections::BTreeMap<_, _> = {
            let applied = self.context.applied.read();
            let job = applied
                .state
                .jobs
                .get(&job_id)
                .ok_or_else(|| CoordinatorError::Rejected(Rejection::UnknownJob { job_id }))?;
            job.assignments
                .iter()
                .map(|(subtask, assignment)| (subtask.clone(), assignment.epoch))
                .collect()
        };
        let is_current = |task: &TaskRef| current.get(&task.subtask) == Some(&task.epoch);
        let subtasks = self
            .sessions
            .job_metrics(&job_id, is_current)
            .iter()
            .map(subtask_metrics_to_proto)
            .collect();
        let running = self
            .sessions
            .job_running(&job_id, |subtask| current.get(subtask).copied())
            .into_iter()
            .map(|(task, restore_ms)| pb::SubtaskRunning {
                task: Some(task_ref_to_proto(&task)),
                restore_ms: restore_ms.unwrap_or(0),
            })
            .collect();
        Ok(Response::new(pb::GetJobMetricsResponse { subtasks, running }))
    }

    #[tracing::instrument(skip_all, fields(node_id = self.context.node_id.0))]
    async fn list_jobs(&self, request: Request<pb::ListJobsRequest>) -> Result<Response<pb::ListJobsResponse>, Status> {
        let forwarded = is_forwarded(&request);
        let message = request.into_inner();
        if let Err(error) = self.prepare_read(message.consistency).await {
            return forward!(self.context, error, forwarded, message, JobServiceClient::list_jobs);
        }
        let applied = self.context.applied.read();
        let jobs = jobs_in_submission_order(&applied.state)
            .into_iter()
            .map(|job| job_to_proto(&applied.state, job))
            .collect();
        Ok(Response::new(pb::ListJobsResponse { jobs }))
    }

    #[tracing::instrument(skip_all, fields(node_id = self.context.node_id.0))]
    async fn cancel_job(
        &self,
        request: Request<pb::CancelJobRequest>,
    ) -> Result<Response<pb::CancelJobResponse>, Status> {
        let forwarded = is_forwarded(&request);
        let message = request.into_inner();
        let job_id = parse_job_id(&message.job_id)?;
        let request_id = parse_request_id(&message.request_id)?;
        let command = Command::CancelJob {
            request_id,
            job_id,
            at_ms: now_ms(),
        };
        let outcome = self.context.propose(command).await;
        let call = leader_call!(JobServiceClient::cancel_job);
        reply_or_forward(&self.context, outcome, forwarded, message, call, |_| {
            tracing::debug!(job_id = %job_id, "job cancel requested");
            Ok(pb::CancelJobResponse {
                job: Some(self.job_reply(&job_id)?),
            })
        })
        .await
    }

    #[tracing::instrument(skip_all, fields(node_id = self.context.node_id.0))]
    async fn rescale_job(
        &self,
        request: Request<pb::RescaleJobRequest>,
    ) -> Result<Response<pb::RescaleJobResponse>, Status> {
        let forwarded = is_forwarded(&request);
        let message = request.into_inner();
        let job_id = parse_job_id(&message.job_id)?;
        let request_id = parse_request_id(&message.request_id)?;
        let operator_id = Some(message.operator_id.trim())
            .filter(|operator| !operator.is_empty())
            .map(OperatorId::from);
        let command = Command::RequestRescale {
            request_id,
            job_id,
            operator_id: operator_id.clone(),
            parallelism: message.parallelism,
            at_ms: now_ms(),
            auto: false,
            reason: String::new(),
        };
        let parallelism = message.parallelism;
        let outcome = self.context.propose(command).await;
        let call = leader_call!(JobServiceClient::rescale_job);
        reply_or_forward(&self.context, outcome, forwarded, message, call, |_| {
            tracing::info!(job_id = %job_id, operator_id = ?operator_id, parallelism, "rescale requested");
            Ok(pb::RescaleJobResponse {
                job: Some(self.job_reply(&job_id)?),
            })
        })
        .await
    }

    #[tracing::instrument(skip_all, fields(node_id = self.context.node_id.0))]
    async fn list_checkpoints(
        &self,
        request: Request<pb::ListCheckpointsRequest>,
    ) -> Result<Response<pb::ListCheckpointsResponse>, Status> {
        let forwarded = is_forwarded(&request);
        let message = request.into_inner();
        let job_id = parse_job_id(&message.job_id)?;
        if let Err(error) = self.prepare_read(message.consistency).await {
            return forward!(
                self.context,
                error,
                forwarded,
                message,
                JobServiceClient::list_checkpoints
            );
        }
        let applied = self.context.applied.read();
        let checkpoints = checkpoints_and_savepoints(&applied.state, &job_id);
        if checkpoints.is_empty() && !applied.state.jobs.contains_key(&job_id) {
            return Err(CoordinatorError::Rejected(Rejection::UnknownJob { job_id }).into());
        }
        Ok(Response::new(pb::ListCheckpointsResponse { checkpoints }))
    }

    #[tracing::instrument(skip_all, fields(node_id = self.context.node_id.0))]
    async fn take_savepoint(
        &self,
        request: Request<pb::TakeSavepointRequest>,
    ) -> Result<Response<pb::TakeSavepointResponse>, Status> {
        let forwarded = is_forwarded(&request);
        let message = request.into_inner();
        let job_id = parse_job_id(&message.job_id)?;
        let command = Command::RequestSavepoint {
            request_id: parse_request_id(&message.request_id)?,
            job_id,
            stop: message.stop,
            at_ms: now_ms(),
        };
        let ticket = match self.context.propose(command).await {
            Ok(Applied::SavepointRequested { ticket, .. }) => ticket,
            Ok(other) => return Err(unexpected_outcome("savepoint", &other)),
            Err(error) => {
                return forward!(
                    self.context,
                    error,
                    forwarded,
                    message,
                    JobServiceClient::take_savepoint
                )
            }
        };
        tracing::info!(job_id = %job_id, ticket, stop = message.stop, "savepoint requested");
        let savepoint_id = self.savepoint_outcome(&job_id, ticket).await?;
        let savepoint = SavepointRef { job_id, savepoint_id };
        let applied = self.context.applied.read();
        let record = applied
            .state
            .savepoints
            .get(&savepoint)
            .ok_or_else(|| CoordinatorError::Rejected(Rejection::UnknownSavepoint { savepoint }))?;
        let mut view = checkpoint_to_proto(&job_id, &record.checkpoint);
        view.savepoint = true;
        let job = applied
            .state
            .jobs
            .get(&job_id)
            .map(|job| job_to_proto(&applied.state, job));
        Ok(Response::new(pb::TakeSavepointResponse {
            savepoint: Some(view),
            job,
        }))
    }

    /// Any coordinator: the executors write the checkpoint store, so the upload goes to one that
    /// takes work (else any live one), tried in turn until one stores it.
    #[tracing::instrument(skip_all, fields(node_id = self.context.node_id.0))]
    async fn upload_function(
        &self,
        request: Request<tonic::Streaming<pb::FunctionChunk>>,
    ) -> Result<Response<pb::UploadFunctionResponse>, Status> {
        let mut stream = request.into_inner();
        let function = raftstream_api::function_upload::receive_function(&mut stream).await?;
        let mut executors: Vec<(bool, String)> = {
            let applied = self.context.applied.read();
            applied
                .state
                .executors
                .values()
                .filter(|executor| executor.alive)
                .map(|executor| (!executor.takes_work(), executor.address.clone()))
                .collect()
        };
        executors.sort();
        if executors.is_empty() {
            return Err(Status::unavailable(
                "no live executor to store the function in the checkpoint store: start an executor, then upload again",
            ));
        }
        let chunks = raftstream_api::function_upload::function_chunks(&function.sha256, &function.bytes);
        let mut last_error = None;
        for (_, address) in executors {
            let endpoint = match tonic::transport::Endpoint::from_shared(format!(
                "http://{}",
                self.context.dial.resolve(&address)
            )) {
                Ok(endpoint) => endpoint.connect_timeout(std::time::Duration::from_secs(2)),
                Err(error) => {
                    last_error = Some(Status::internal(format!("executor address {address}: {error}")));
                    continue;
                }
            };
            let stored = async {
                let channel = endpoint
                    .connect()
                    .await
                    .map_err(|error| Status::unavailable(error.to_string()))?;
                pb::function_store_service_client::FunctionStoreServiceClient::new(channel)
                    .store_function(tokio_stream::iter(chunks.clone()))
                    .await
            }
            .await;
            match stored {
                Ok(reply) => {
                    let reply = reply.into_inner();
                    tracing::info!(sha256 = %reply.sha256, size_bytes = reply.size_bytes, stored_by = %reply.stored_by, "function stored");
                    return Ok(Response::new(reply));
                }
                // The bytes are at fault (hash, not a component): another executor says the same.
                Err(status) if status.code() == tonic::Code::InvalidArgument => return Err(status),
                Err(status) => {
                    tracing::warn!(%address, error = %status.message(), "executor could not store the function; trying the next");
                    last_error = Some(status);
                }
            }
        }
        Err(last_error.unwrap_or_else(|| Status::unavailable("no executor stored the function")))
    }

    #[tracing::instrument(skip_all, fields(node_id = self.context.node_id.0))]
    async fn delete_savepoint(
        &self,
        request: Request<pb::DeleteSavepointRequest>,
    ) -> Result<Response<pb::DeleteSavepointResponse>, Status> {
        let forwarded = is_forwarded(&request);
        let message = request.into_inner();
        let savepoint = SavepointRef {
            job_id: parse_job_id(&message.job_id)?,
            savepoint_id: CheckpointId(message.savepoint_id),
        };
        let command = Command::DeleteSavepoint {
            request_id: parse_request_id(&message.request_id)?,
            savepoint,
        };
        let outcome = self.context.propose(command).await;
        let call = leader_call!(JobServiceClient::delete_savepoint);
        reply_or_forward(&self.context, outcome, forwarded, message, call, |_| {
            // The leader's sessions: executors share the checkpoint store, so any one of them
            // deletes the files; all are told in case some cannot reach it.
            let told = self
                .sessions
                .send_to_all(&ExecutorCommand::DiscardSavepointState(savepoint));
            tracing::info!(%savepoint, executors_told = told, "savepoint deleted");
            Ok(pb::DeleteSavepointResponse {
                executors_told: u32::try_from(told).unwrap_or(u32::MAX),
            })
        })
        .await
    }
}
