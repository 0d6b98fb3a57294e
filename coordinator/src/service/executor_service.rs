//! `ExecutorService`: executor registration (any node; followers forward) and the session stream
//! (leader only: heartbeats in, assignments and cancellations out).

use std::pin::Pin;

use futures::Stream;
use raftstream_api::messages::TaskReport;
use raftstream_proto::v1 as pb;
use raftstream_proto::v1::executor_service_client::ExecutorServiceClient;
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status, Streaming};

use super::{is_forwarded, unexpected_outcome};
use crate::clock::now_ms;
use crate::context::CoordinatorContext;
use crate::error::CoordinatorError;
use crate::leader::sessions::{assigned_tasks, ExecutorEvent, ExecutorSessions, SessionEnded};
use crate::leader::{reconcile, ExecutorSettings};
use crate::state_machine::{Command, Response as Applied};
use raftstream_api::convert::{
    checkpoint_ack_from_proto, executor_command_to_proto, subtask_metrics_from_proto, task_ref_from_proto,
    task_status_from_proto,
};
use raftstream_api::ids::ExecutorId;
use raftstream_api::messages::ExecutorCommand;

const MAX_EXECUTOR_ID_CHARS: usize = 128;
const MAX_SLOTS: u32 = 1_024;

/// The `ExecutorService` of one coordinator.
#[derive(Clone)]
pub struct ExecutorServiceImpl {
    context: CoordinatorContext,
    sessions: ExecutorSessions,
    settings: ExecutorSettings,
}

impl ExecutorServiceImpl {
    /// The executor service over a coordinator's shared context and the leader's sessions.
    pub fn new(context: CoordinatorContext, sessions: ExecutorSessions, settings: ExecutorSettings) -> Self {
        ExecutorServiceImpl {
            context,
            sessions,
            settings,
        }
    }

    fn not_leader(&self) -> CoordinatorError {
        self.context.not_leader()
    }
}

fn validate_registration(request: &pb::RegisterExecutorRequest) -> Result<(), CoordinatorError> {
    let id = &request.executor_id;
    if id.is_empty()
        || id.chars().count() > MAX_EXECUTOR_ID_CHARS
        || !id.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    {
        return Err(CoordinatorError::InvalidRequest(format!(
            "executor_id {id:?} must be 1-{MAX_EXECUTOR_ID_CHARS} characters of letters, digits, '-', '_' or '.'"
        )));
    }
    if request.slots == 0 || request.slots > MAX_SLOTS {
        return Err(CoordinatorError::InvalidRequest(format!(
            "slots is {}, must be between 1 and {MAX_SLOTS}",
            request.slots
        )));
    }
    let has_port = request
        .address
        .rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
    if !has_port {
        return Err(CoordinatorError::InvalidRequest(format!(
            "address {:?} is not host:port",
            request.address
        )));
    }
    Ok(())
}

type SessionStream = Pin<Box<dyn Stream<Item = Result<pb::CoordinatorMessage, Status>> + Send>>;

#[tonic::async_trait]
impl pb::executor_service_server::ExecutorService for ExecutorServiceImpl {
    #[tracing::instrument(skip_all, fields(node_id = self.context.node_id.0))]
    async fn register(
        &self,
        request: Request<pb::RegisterExecutorRequest>,
    ) -> Result<Response<pb::RegisterExecutorResponse>, Status> {
        let forwarded = is_forwarded(&request);
        let message = request.into_inner();
        validate_registration(&message)?;
        let executor_id = ExecutorId(message.executor_id.clone());
        let command = Command::RegisterExecutor {
            executor_id: executor_id.clone(),
            address: message.address.clone(),
            slots: message.slots,
            at_ms: now_ms(),
        };
        match self.context.propose(command).await {
            Ok(Applied::ExecutorRegistered { .. }) => {
                self.sessions.touch(&executor_id);
                tracing::info!(executor_id = %executor_id, address = %message.address, slots = message.slots, "executor registered");
                Ok(Response::new(pb::RegisterExecutorResponse {
                    leader_id: self.context.node_id.0,
                    heartbeat_interval_ms: self.settings.heartbeat_interval_ms,
                    lease_timeout_ms: self.settings.lease_timeout_ms,
                    leader_address: self.context.address.clone(),
                }))
            }
            Ok(other) => Err(unexpected_outcome("register", &other)),
            Err(error) => {
                forward!(self.context, error, forwarded, message, ExecutorServiceClient::register)
            }
        }
    }

    type SessionStream = SessionStream;

    #[tracing::instrument(skip_all, fields(node_id = self.context.node_id.0))]
    async fn session(
        &self,
        request: Request<Streaming<pb::ExecutorMessage>>,
    ) -> Result<Response<SessionStream>, Status> {
        if !self.sessions.is_leading() {
            return Err(self.not_leader().into());
        }
        let mut inbound = request.into_inner();
        let first = inbound
            .message()
            .await?
            .ok_or_else(|| Status::invalid_argument("session closed before its first message"))?;
        let executor_id = ExecutorId(first.executor_id.clone());
        let initial = {
            let applied = self.context.applied.read();
            match applied.state.executors.get(&executor_id) {
                Some(executor) if executor.alive => assigned_tasks(&applied.state, &executor_id),
                Some(_) => {
                    return Err(Status::failed_precondition(format!(
                        "executor {executor_id} was declared dead; register again"
                    )))
                }
                None => {
                    return Err(Status::failed_precondition(format!(
                        "executor {executor_id} is not registered; register first"
                    )))
                }
            }
        };
        let (generation, outbox, leadership) = self
            .sessions
            .attach(&executor_id)
            .ok_or_else(|| Status::from(self.not_leader()))?;
        tracing::info!(executor_id = %executor_id, subtasks = initial.len(), "executor session opened");
        let sessions = self.sessions.clone();
        sessions.report(ExecutorEvent::SessionOpened {
            executor_id: executor_id.clone(),
        });
        let context = self.context.clone();
        sessions.send(&executor_id, ExecutorCommand::Assignments(initial));
        let reader_id = executor_id.clone();
        tokio::spawn(async move {
            let mut next = Some(first);
            let ended = loop {
                let message = match next.take() {
                    Some(message) => message,
                    None => tokio::select! {
                        biased;
                        _ = leadership.cancelled() => break SessionEnded::Closed,
                        received = inbound.message() => match received {
                            Ok(Some(message)) => message,
                            Ok(None) => break SessionEnded::Closed,
                            Err(status) => {
                                tracing::info!(executor_id = %reader_id, error = %status.message(), "executor session broken; the executor is suspect until it reconnects");
                                break SessionEnded::Broken;
                            }
                        },
                    },
                };
                match message.body {
                    Some(pb::executor_message::Body::Heartbeat(heartbeat)) => {
                        sessions.touch(&reader_id);
                        let term = context.raft.metrics().borrow().current_term;
                        sessions.send(&reader_id, ExecutorCommand::HeartbeatAck { term });
                        if !heartbeat.metrics.is_empty() {
                            sessions.set_metrics(
                                &reader_id,
                                heartbeat
                                    .metrics
                                    .iter()
                                    .filter_map(subtask_metrics_from_proto)
                                    .collect(),
                            );
                        }
                        let reported: Vec<_> = heartbeat.running_tasks.iter().filter_map(task_ref_from_proto).collect();
                        sessions.set_finished(
                            &reader_id,
                            heartbeat
                                .finished_tasks
                                .iter()
                                .filter_map(task_ref_from_proto)
                                .collect(),
                        );
                        let corrections = reconcile(&context.applied.read().state, &reader_id, &reported);
                        for command in corrections {
                            match &command {
                                ExecutorCommand::Assign(deployment) => {
                                    tracing::info!(executor_id = %reader_id, task = ?deployment.task, "starting a subtask the executor does not run")
                                }
                                other => {
                                    tracing::info!(executor_id = %reader_id, command = ?other, "correcting what the executor runs")
                                }
                            }
                            sessions.send(&reader_id, command);
                        }
                    }
                    Some(pb::executor_message::Body::CheckpointAck(ack)) => {
                        sessions.touch(&reader_id);
                        if let Some((task, checkpoint_id, ack)) = checkpoint_ack_from_proto(&ack) {
                            sessions.report(ExecutorEvent::Ack {
                                job_id: task.job_id,
                                checkpoint_id,
                                ack,
                            });
                        }
                    }
                    Some(pb::executor_message::Body::CheckpointWanted(wanted)) => {
                        sessions.touch(&reader_id);
                        if let Some(TaskReport::CheckpointWanted { task, trigger }) =
                            raftstream_api::convert::checkpoint_wanted_from_proto(&wanted)
                        {
                            sessions.report(ExecutorEvent::CheckpointWanted { task, trigger });
                        }
                    }
                    Some(pb::executor_message::Body::TaskStatus(status)) => {
                        sessions.touch(&reader_id);
                        match task_status_from_proto(&status) {
                            Some(TaskReport::Running { task, restore_ms }) => sessions.set_running(task, restore_ms),
                            Some(TaskReport::InputEnded(task)) => sessions.report(ExecutorEvent::InputEnded { task }),
                            Some(TaskReport::Finished(task)) => {
                                sessions.add_finished(&reader_id, task.clone());
                                sessions.report(ExecutorEvent::Finished { task });
                            }
                            Some(TaskReport::Failed {
                                task,
                                cannot_restore,
                                reason,
                            }) => sessions.report(ExecutorEvent::TaskFailed {
                                task,
                                reason,
                                fatal: cannot_restore,
                            }),
                            Some(TaskReport::CheckpointAck { .. } | TaskReport::CheckpointWanted { .. }) | None => {}
                        }
                    }
                    None => {}
                }
            };
            sessions.detach(&reader_id, generation, ended);
        });
        // The stream ends when the outbox closes: on a newer session of the same executor, its
        // death, or the end of this node's leadership; the executor then reconnects.
        let stream =
            tokio_stream::wrappers::ReceiverStream::new(outbox).map(|command| Ok(executor_command_to_proto(&command)));
        Ok(Response::new(Box::pin(stream)))
    }
}
