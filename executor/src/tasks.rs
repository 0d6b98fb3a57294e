//! The subtasks running on this executor: started from the leader's deployments, stopped when the
//! leader moves them (epoch fencing through [`Assignments`]), and told about checkpoints. They keep
//! running while the session with the leader is down.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;

use raftstream_proto::v1 as pb;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::assignments::{Assignments, Changes, SubtaskId};
use crate::runtime::task::{run_subtask, SubtaskDeployment, TaskControl, TaskEnd, TaskEnvironment, TaskError};

/// Checkpoint messages queued per subtask.
const CONTROL_CAPACITY: usize = 256;

const RUNNING: u8 = 0;
const FINISHED: u8 = 1;
const FAILED: u8 = 2;
const RESTORE_FAILED: u8 = 3;

/// The status name the leader understands for a failed outcome.
fn status_name(outcome: u8) -> &'static str {
    if outcome == RESTORE_FAILED {
        "RestoreFailed"
    } else {
        "Failed"
    }
}

struct RunningTask {
    epoch: u64,
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
}

fn subtask_id(task: &pb::TaskRef) -> SubtaskId {
    SubtaskId {
        job_id: task.job_id.clone(),
        operator_id: task.operator_id.clone(),
        subtask_index: task.subtask_index,
    }
}

impl TaskManager {
    /// A manager whose subtasks stop when `shutdown` is cancelled.
    pub fn new(environment: TaskEnvironment, shutdown: CancellationToken) -> Self {
        TaskManager {
            assignments: Assignments::default(),
            running: HashMap::new(),
            environment,
            shutdown,
        }
    }

    /// What heartbeats report: every held subtask, and those of them that finished.
    pub fn report(&self) -> (Vec<pb::TaskRef>, Vec<pb::TaskRef>) {
        let held = self.assignments.running();
        let finished = held
            .iter()
            .filter(|task| {
                self.running.get(&subtask_id(task)).is_some_and(|running| {
                    running.epoch == task.epoch && running.outcome.load(Ordering::Acquire) == FINISHED
                })
            })
            .cloned()
            .collect();
        (held, finished)
    }

    /// Failure statuses of held subtasks, repeated until the leader moves them (a status sent
    /// while no session was open would otherwise be lost).
    pub fn failures(&self) -> Vec<pb::TaskStatus> {
        self.assignments
            .running()
            .into_iter()
            .filter_map(|task| {
                let running = self.running.get(&subtask_id(&task))?;
                let outcome = running.outcome.load(Ordering::Acquire);
                if running.epoch != task.epoch || !matches!(outcome, FAILED | RESTORE_FAILED) {
                    return None;
                }
                let reason = running.failure.lock().map(|reason| reason.clone()).unwrap_or_default();
                Some(pb::TaskStatus {
                    task: Some(task),
                    status: status_name(outcome).to_owned(),
                    reason,
                })
            })
            .collect()
    }

    /// Drops everything (this executor registered anew: the cluster released its placements).
    pub fn clear(&mut self) {
        let changes = self.assignments.clear();
        self.stop(&changes);
    }

    fn stop(&mut self, changes: &Changes) {
        for (subtask, epoch) in &changes.stopped {
            tracing::info!(job_id = %subtask.job_id, operator_id = %subtask.operator_id, subtask_index = subtask.subtask_index, epoch, "subtask stopped");
            if let Some(running) = self.running.get(subtask) {
                if running.epoch == *epoch {
                    running.cancel.cancel();
                    self.running.remove(subtask);
                }
            }
        }
    }

    /// Applies one message from the leader.
    pub fn apply(&mut self, message: &pb::CoordinatorMessage) {
        use pb::coordinator_message::Body;
        match &message.body {
            Some(Body::Assign(assign)) => {
                let deployment = match SubtaskDeployment::from_proto(assign) {
                    Ok(deployment) => deployment,
                    Err(problem) => {
                        tracing::warn!(problem, "unusable assignment ignored");
                        return;
                    }
                };
                let changes = self.assignments.apply(message);
                self.stop(&changes);
                for (subtask, epoch) in &changes.started {
                    if *epoch == deployment.epoch && subtask.operator_id == deployment.operator_id {
                        self.start(subtask.clone(), deployment.clone());
                    }
                }
            }
            Some(Body::Assignments(_)) | Some(Body::Cancel(_)) => {
                let changes = self.assignments.apply(message);
                self.stop(&changes);
            }
            Some(Body::TriggerCheckpoint(trigger)) => {
                self.tell_job(&trigger.job_id, |_| Some(TaskControl::Trigger(trigger.checkpoint_id)));
            }
            Some(Body::CheckpointComplete(complete)) => {
                self.tell_job(&complete.job_id, |(subtask, epoch)| {
                    let acknowledged = complete.acknowledged.iter().any(|task| {
                        task.operator_id == subtask.operator_id
                            && task.subtask_index == subtask.subtask_index
                            && task.epoch == epoch
                    });
                    Some(TaskControl::Complete {
                        checkpoint_id: complete.checkpoint_id,
                        acknowledged,
                    })
                });
            }
            Some(Body::CheckpointAborted(aborted)) => {
                tracing::info!(job_id = %aborted.job_id, checkpoint_id = aborted.checkpoint_id, reason = %aborted.reason, "checkpoint aborted");
                self.tell_job(&aborted.job_id, |_| Some(TaskControl::Aborted(aborted.checkpoint_id)));
            }
            None => {}
        }
    }

    fn tell_job(&self, job_id: &str, message: impl Fn((&SubtaskId, u64)) -> Option<TaskControl>) {
        for (subtask, running) in &self.running {
            if subtask.job_id == job_id {
                if let Some(control) = message((subtask, running.epoch)) {
                    // Control messages are few (one per checkpoint); a subtask that lets this many pile
                    // up is stuck, and a lost one only delays (completions are cumulative, a lost
                    // trigger lets the checkpoint time out).
                    if running.control.try_send(control).is_err() {
                        tracing::warn!(job_id = %subtask.job_id, operator_id = %subtask.operator_id, subtask_index = subtask.subtask_index, "subtask is not taking control messages");
                    }
                }
            }
        }
    }

    fn start(&mut self, subtask: SubtaskId, deployment: SubtaskDeployment) {
        let epoch = deployment.epoch;
        let (control, control_receiver) = mpsc::channel(CONTROL_CAPACITY);
        let cancel = self.shutdown.child_token();
        let outcome = Arc::new(AtomicU8::new(RUNNING));
        let failure = Arc::new(std::sync::Mutex::new(String::new()));
        let span = tracing::info_span!(
            "subtask",
            job_id = %deployment.job_id,
            operator_id = %deployment.operator_id,
            subtask_index = deployment.subtask_index,
            epoch = deployment.epoch
        );
        span.in_scope(|| {
            tracing::info!(
                restore_from = deployment
                    .restore_from
                    .as_ref()
                    .map(|checkpoint| checkpoint.checkpoint_id),
                "subtask starting"
            )
        });
        let task = deployment.task_ref();
        let reports = self.environment.reports.clone();
        let environment = self.environment.clone();
        let task_cancel = cancel.clone();
        let task_outcome = outcome.clone();
        let task_failure = failure.clone();
        tokio::spawn(
            async move {
                match run_subtask(deployment, environment, control_receiver, task_cancel).await {
                    Ok(TaskEnd::Finished) => {
                        tracing::info!("subtask finished");
                        task_outcome.store(FINISHED, Ordering::Release);
                        let _ = reports.try_send(pb::executor_message::Body::TaskStatus(pb::TaskStatus {
                            task: Some(task),
                            status: "Finished".to_owned(),
                            reason: String::new(),
                        }));
                    }
                    Ok(TaskEnd::Cancelled) => tracing::debug!("subtask cancelled"),
                    Err(error) => {
                        let outcome = if matches!(error, TaskError::Restore { .. }) {
                            tracing::error!(error = %error, "subtask cannot restore its checkpoint");
                            RESTORE_FAILED
                        } else {
                            tracing::warn!(error = %error, "subtask failed");
                            FAILED
                        };
                        if let Ok(mut reason) = task_failure.lock() {
                            *reason = error.to_string();
                        }
                        task_outcome.store(outcome, Ordering::Release);
                        let _ = reports.try_send(pb::executor_message::Body::TaskStatus(pb::TaskStatus {
                            task: Some(task),
                            status: status_name(outcome).to_owned(),
                            reason: error.to_string(),
                        }));
                    }
                }
            }
            .instrument(span),
        );
        self.running.insert(
            subtask,
            RunningTask {
                epoch,
                control,
                cancel,
                outcome,
                failure,
            },
        );
    }
}
