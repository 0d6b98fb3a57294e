//! The subtasks running on this executor: started from the leader's deployments, stopped when the
//! leader moves them (epoch fencing through [`Assignments`]), and told about checkpoints. They keep
//! running while the session with the leader is down.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;

use raftstream_api::ids::{Epoch, JobId};
use raftstream_api::messages::{ExecutorCommand, SubtaskMetrics, TaskRef, TaskReport};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::assignments::{Assignments, Changes, SubtaskId};
use crate::checkpoint::{delete_each, CheckpointStore};
use crate::runtime::deployment::{chain_members, SubtaskDeployment};
use crate::runtime::task::{run_subtask, TaskControl, TaskEnd, TaskEnvironment, TaskError};

/// Checkpoint messages queued per subtask.
const CONTROL_CAPACITY: usize = 256;

const RUNNING: u8 = 0;
const FINISHED: u8 = 1;
const FAILED: u8 = 2;
const RESTORE_FAILED: u8 = 3;

/// A subtask's entry; the subtasks of a chain share one task, so their entries share its control
/// queue, cancellation and outcome.
#[derive(Clone)]
struct RunningTask {
    /// Which task runs it.
    task_id: u64,
    epoch: Epoch,
    control: mpsc::Sender<TaskControl>,
    cancel: CancellationToken,
    outcome: Arc<AtomicU8>,
    failure: Arc<std::sync::Mutex<String>>,
}

/// The subtasks of this executor.
pub struct TaskManager {
    assignments: Assignments,
    running: HashMap<SubtaskId, RunningTask>,
    environment: TaskEnvironment,
    shutdown: CancellationToken,
    next_task_id: u64,
}

impl TaskManager {
    /// A manager whose subtasks stop when `shutdown` is cancelled.
    pub fn new(environment: TaskEnvironment, shutdown: CancellationToken) -> Self {
        TaskManager {
            assignments: Assignments::default(),
            running: HashMap::new(),
            environment,
            shutdown,
            next_task_id: 0,
        }
    }

    /// What heartbeats report: every held subtask, and those of them that finished.
    /// What the running tasks counted.
    pub fn metrics(&self) -> Vec<SubtaskMetrics> {
        self.environment.metrics.report()
    }

    pub fn report(&self) -> (Vec<TaskRef>, Vec<TaskRef>) {
        let held = self.assignments.running();
        let finished = held
            .iter()
            .filter(|task| {
                self.running.get(&SubtaskId::of(task)).is_some_and(|running| {
                    running.epoch == task.epoch && running.outcome.load(Ordering::Acquire) == FINISHED
                })
            })
            .cloned()
            .collect();
        (held, finished)
    }

    /// Failure statuses of held subtasks, repeated until the leader moves them (a status sent
    /// while no session was open would otherwise be lost).
    pub fn failures(&self) -> Vec<TaskReport> {
        self.assignments
            .running()
            .into_iter()
            .filter_map(|task| {
                let running = self.running.get(&SubtaskId::of(&task))?;
                let outcome = running.outcome.load(Ordering::Acquire);
                if running.epoch != task.epoch || !matches!(outcome, FAILED | RESTORE_FAILED) {
                    return None;
                }
                let reason = running.failure.lock().map(|reason| reason.clone()).unwrap_or_default();
                Some(TaskReport::Failed {
                    task,
                    cannot_restore: outcome == RESTORE_FAILED,
                    reason,
                })
            })
            .collect()
    }

    /// Waits at most `timeout` for every subtask and background task to stop after the executor's
    /// shutdown cancelled them (a sink finishing its write, a state upload), then gives up on the
    /// rest, naming how many.
    pub async fn drain(self, timeout: std::time::Duration) {
        let tracker = self.environment.tracker.clone();
        drop(self);
        tracker.close();
        if tokio::time::timeout(timeout, tracker.wait()).await.is_err() {
            tracing::warn!(
                still_running = tracker.len(),
                timeout_ms = timeout.as_millis() as u64,
                "subtasks did not stop in time; exiting without them"
            );
        }
    }

    /// Drops everything (this executor registered anew: the cluster released its placements).
    pub fn clear(&mut self) {
        let changes = self.assignments.clear();
        self.stop(&changes);
    }

    fn stop(&mut self, changes: &Changes) {
        for (subtask, epoch) in &changes.stopped {
            tracing::info!(job_id = %subtask.job_id, operator_id = %subtask.subtask.operator_id, subtask_index = subtask.subtask.subtask_index, epoch = epoch.0, "subtask stopped");
            if let Some(running) = self.running.get(subtask) {
                if running.epoch == *epoch {
                    running.cancel.cancel();
                    self.running.remove(subtask);
                }
            }
        }
    }

    /// Acts on one command from the leader.
    pub fn apply(&mut self, command: ExecutorCommand) {
        match command {
            ExecutorCommand::Assign(deployment) => {
                let task = deployment.task.clone();
                let changes = self.assignments.assign(&task);
                self.stop(&changes);
                if changes.started.iter().any(|(_, epoch)| *epoch == task.epoch) {
                    tracing::info!(job_id = %task.job_id, operator_id = %task.subtask.operator_id, subtask_index = task.subtask.subtask_index, epoch = task.epoch.0, "subtask assigned");
                    self.start(SubtaskDeployment::from_deployment(*deployment));
                }
                if !changes.refused.is_empty() {
                    let reason = format!(
                        "epoch {} of {}[{}] already ran on this executor and was stopped; a stopped run never resumes",
                        task.epoch, task.subtask.operator_id, task.subtask.subtask_index
                    );
                    tracing::warn!(job_id = %task.job_id, reason, "assignment refused");
                    // The leader restarts the job at new epochs on this failure; if the report is
                    // lost, its next reconciliation sends the assignment again and it is refused
                    // again.
                    let _ = self.environment.reports.try_send(TaskReport::Failed {
                        task,
                        cannot_restore: false,
                        reason,
                    });
                }
            }
            ExecutorCommand::Assignments(wanted) => {
                let changes = self.assignments.keep_only(&wanted);
                self.stop(&changes);
            }
            ExecutorCommand::Cancel(task) => {
                let changes = self.assignments.cancel(&task);
                self.stop(&changes);
            }
            ExecutorCommand::TriggerCheckpoint {
                job_id,
                checkpoint_id,
                options,
            } => {
                self.tell_job(&job_id, |_| TaskControl::Trigger { checkpoint_id, options });
            }
            ExecutorCommand::CheckpointComplete {
                job_id,
                checkpoint_id,
                acknowledged,
                oldest_retained,
            } => {
                // A chain's task publishes only if every subtask it runs was acknowledged.
                self.tell_job(&job_id, |members| TaskControl::Complete {
                    checkpoint_id,
                    acknowledged: members
                        .iter()
                        .all(|(subtask, epoch)| acknowledged.contains(&subtask.at(*epoch))),
                    oldest_retained,
                });
            }
            ExecutorCommand::DiscardJobState(job_id) => {
                self.assignments.forget_job(&job_id);
                self.environment.metrics.job_ended(&job_id);
                self.discard_state(job_id.to_string(), "the ended job's");
            }
            ExecutorCommand::DiscardSavepointState(savepoint) => {
                self.discard_state(savepoint.state_prefix(), "the deleted savepoint's");
            }
            ExecutorCommand::CheckpointAborted {
                job_id,
                checkpoint_id,
                reason,
            } => {
                tracing::info!(job_id = %job_id, checkpoint_id = checkpoint_id.0, reason = %reason, "checkpoint aborted");
                self.tell_job(&job_id, |_| TaskControl::Aborted(checkpoint_id));
            }
            // The session's keepalive: the session loop notes it, the subtasks need nothing.
            ExecutorCommand::HeartbeatAck { .. } => {}
            ExecutorCommand::Drained => {
                tracing::info!(
                    running = self.running.len(),
                    "drained: every subtask moved to other executors; exiting"
                );
                self.shutdown.cancel();
            }
        }
    }

    /// Deletes, in the background, every state file under `prefix` from the checkpoint store
    /// (an ended job's, or a deleted savepoint's: `whose` says which, for the log). Executors
    /// sharing a store may all do it: deleting what is gone already is not an error.
    fn discard_state(&self, prefix: String, whose: &'static str) {
        let store = self.environment.store.clone();
        self.environment.tracker.spawn(async move {
            let locations = match store.list(&prefix).await {
                Ok(locations) => locations,
                Err(error) => {
                    tracing::warn!(prefix, error = %raftstream_observability::chain(&error), "could not list {whose} checkpoint state");
                    return;
                }
            };
            let deleted = delete_each(store.as_ref(), &locations).await;
            tracing::info!(prefix, deleted, "{whose} checkpoint state deleted");
        });
    }

    /// Sends each task of the job one message, made from the subtasks (with epochs) it runs.
    fn tell_job(&self, job_id: &JobId, message: impl Fn(&[(&SubtaskId, Epoch)]) -> TaskControl) {
        let mut tasks: BTreeMap<u64, (&RunningTask, Vec<(&SubtaskId, Epoch)>)> = BTreeMap::new();
        for (subtask, running) in self.running.iter().filter(|(subtask, _)| &subtask.job_id == job_id) {
            tasks
                .entry(running.task_id)
                .or_insert_with(|| (running, Vec::new()))
                .1
                .push((subtask, running.epoch));
        }
        for (running, members) in tasks.values() {
            // A finished or failed task has stopped reading; the leader acks for finished ones.
            if running.outcome.load(Ordering::Acquire) != RUNNING {
                continue;
            }
            // Control messages are few (one per checkpoint); a task that lets this many pile up is
            // stuck, and a lost one only delays (completions are cumulative, a lost trigger lets
            // the checkpoint time out).
            if running.control.try_send(message(members)).is_err() {
                tracing::warn!(job_id = %job_id, task = ?members, "task is not taking control messages");
            }
        }
    }

    /// Starts the task of `deployment` with the subtasks chained behind it here; a subtask that
    /// the task of its chain runs gets no task of its own.
    fn start(&mut self, deployment: SubtaskDeployment) {
        let members = chain_members(&deployment, &self.environment.local_address);
        if members.is_empty() {
            tracing::debug!(job_id = %deployment.job_id, operator_id = %deployment.operator_id, subtask_index = deployment.subtask_index, "subtask runs in the task of its chain");
            return;
        }
        self.next_task_id += 1;
        let task_id = self.next_task_id;
        let (control, control_receiver) = mpsc::channel(CONTROL_CAPACITY);
        let cancel = self.shutdown.child_token();
        let outcome = Arc::new(AtomicU8::new(RUNNING));
        let failure = Arc::new(std::sync::Mutex::new(String::new()));
        let span = tracing::info_span!(
            "subtask",
            job_id = %deployment.job_id,
            operator_id = %deployment.operator_id,
            subtask_index = deployment.subtask_index,
            epoch = deployment.epoch.0
        );
        span.in_scope(|| {
            tracing::info!(
                restore_from = deployment
                    .restore_from
                    .as_ref()
                    .map(|checkpoint| checkpoint.checkpoint_id.0),
                chain = ?members.iter().map(|member| member.operator_id.as_str()).collect::<Vec<_>>(),
                "subtask starting"
            )
        });
        let tasks: Vec<TaskRef> = members.iter().map(SubtaskDeployment::task_ref).collect();
        let reports = self.environment.reports.clone();
        let environment = self.environment.clone();
        let task_cancel = cancel.clone();
        let task_outcome = outcome.clone();
        let task_failure = failure.clone();
        self.environment.tracker.spawn(
            async move {
                match run_subtask(deployment, environment, control_receiver, task_cancel).await {
                    Ok(TaskEnd::Finished) => {
                        tracing::info!("subtask finished");
                        task_outcome.store(FINISHED, Ordering::Release);
                        for task in tasks {
                            let _ = reports.try_send(TaskReport::Finished(task));
                        }
                    }
                    Ok(TaskEnd::Cancelled) => tracing::debug!("subtask cancelled"),
                    Err(error) => {
                        let outcome = if matches!(error, TaskError::Restore { .. }) {
                            tracing::error!(error = %raftstream_observability::chain(&error), "subtask cannot restore its checkpoint");
                            RESTORE_FAILED
                        } else {
                            tracing::warn!(error = %raftstream_observability::chain(&error), "subtask failed");
                            FAILED
                        };
                        if let Ok(mut reason) = task_failure.lock() {
                            *reason = error.to_string();
                        }
                        task_outcome.store(outcome, Ordering::Release);
                        for task in tasks {
                            let _ = reports.try_send(TaskReport::Failed {
                                task,
                                cannot_restore: outcome == RESTORE_FAILED,
                                reason: error.to_string(),
                            });
                        }
                    }
                }
            }
            .instrument(span),
        );
        let running = RunningTask {
            task_id,
            epoch: Epoch(0),
            control,
            cancel,
            outcome,
            failure,
        };
        for member in &members {
            let task = member.task_ref();
            let entry = RunningTask {
                epoch: task.epoch,
                ..running.clone()
            };
            self.running.insert(SubtaskId::of(&task), entry);
        }
    }
}
