//! The leader's checkpoint coordinator: triggers checkpoint N+1 of every running job each
//! `checkpoint.interval_ms`, collects the subtasks' acknowledgements, commits the completed
//! checkpoint through Raft and only then tells the tasks (sinks publish on that message). A
//! checkpoint that times out, or whose job's placements change under it, is aborted. Ids come from
//! the Raft log (`TriggerCheckpoint`), so a new leader continues above whatever the old one had in
//! flight, which it simply never completes.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::checkpoints::{AckOutcome, PendingCheckpoint};
use super::deploy::{executors_of, is_fully_placed, placed_tasks};
use super::sessions::{ExecutorCommand, ExecutorEvent, ExecutorSessions, TaskRef};
use crate::ids::JobId;
use crate::service::{now_ms, CoordinatorContext};
use crate::state_machine::{Command, JobStatus, Response};

const TICK: Duration = Duration::from_millis(10);

struct Coordinator {
    context: CoordinatorContext,
    sessions: ExecutorSessions,
    pending: HashMap<JobId, PendingCheckpoint>,
    last_trigger: HashMap<JobId, Instant>,
    /// Jobs whose sources reported the end of their input: checkpoint them without waiting.
    final_due: HashSet<JobId>,
    started: Instant,
}

/// Runs until `shutdown` is cancelled (this node stopped leading).
pub async fn run(
    context: CoordinatorContext,
    sessions: ExecutorSessions,
    mut events: mpsc::Receiver<ExecutorEvent>,
    shutdown: CancellationToken,
) {
    let mut coordinator = Coordinator {
        context,
        sessions,
        pending: HashMap::new(),
        last_trigger: HashMap::new(),
        final_due: HashSet::new(),
        started: Instant::now(),
    };
    let mut ticker = tokio::time::interval(TICK);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => return,
            event = events.recv() => match event {
                Some(event) => coordinator.on_event(event).await,
                None => return,
            },
            _ = ticker.tick() => coordinator.on_tick().await,
        }
    }
}

impl Coordinator {
    fn tell_job(&self, job_id: &JobId, command: &ExecutorCommand) {
        let executors = {
            let applied = self.context.applied.read();
            applied.state.jobs.get(job_id).map(executors_of).unwrap_or_default()
        };
        for executor_id in executors {
            self.sessions.send(&executor_id, command.clone());
        }
    }

    fn abort(&mut self, job_id: &JobId, reason: &str) {
        if let Some(pending) = self.pending.remove(job_id) {
            tracing::info!(job_id = %job_id, checkpoint_id = pending.checkpoint_id.0, reason, "checkpoint aborted");
            self.tell_job(
                job_id,
                &ExecutorCommand::CheckpointAborted {
                    job_id: *job_id,
                    checkpoint_id: pending.checkpoint_id,
                    reason: reason.to_owned(),
                },
            );
        }
    }

    async fn on_event(&mut self, event: ExecutorEvent) {
        match event {
            ExecutorEvent::Ack {
                job_id,
                checkpoint_id,
                ack,
            } => {
                let Some(pending) = self.pending.get_mut(&job_id) else {
                    tracing::debug!(job_id = %job_id, checkpoint_id = checkpoint_id.0, "ack for no pending checkpoint");
                    return;
                };
                if pending.checkpoint_id != checkpoint_id {
                    tracing::debug!(job_id = %job_id, checkpoint_id = checkpoint_id.0, pending = pending.checkpoint_id.0, "ack for another checkpoint");
                    return;
                }
                match pending.on_ack(ack, now_ms()) {
                    AckOutcome::Pending { .. } => {}
                    AckOutcome::Ignored(reason) => {
                        tracing::info!(job_id = %job_id, checkpoint_id = checkpoint_id.0, reason, "checkpoint ack ignored")
                    }
                    AckOutcome::Complete(checkpoint) => self.complete(job_id, checkpoint).await,
                }
            }
            ExecutorEvent::Finished { task } => {
                let outcome = {
                    let applied = self.context.applied.read();
                    let job = applied.state.jobs.get(&task.job_id);
                    match (self.pending.get_mut(&task.job_id), job) {
                        (Some(pending), Some(job)) => pending.ack_finished(job, &task.subtask, task.epoch, now_ms()),
                        _ => None,
                    }
                };
                if let Some(AckOutcome::Complete(checkpoint)) = outcome {
                    self.complete(task.job_id, checkpoint).await;
                }
            }
            ExecutorEvent::InputEnded { task } => {
                tracing::debug!(job_id = %task.job_id, operator_id = %task.subtask.operator_id, subtask_index = task.subtask.subtask_index, "source input ended: final checkpoint due");
                self.final_due.insert(task.job_id);
            }
            ExecutorEvent::TaskFailed { task, reason, fatal } => {
                // Falling back to an older checkpoint is not safe once a file sink published the
                // output of the newer one: the replay would publish it twice. So a checkpoint that
                // cannot be restored fails the job, with the reason, instead of restarting it.
                let reason = if fatal {
                    format!("{reason}; not falling back to an older checkpoint, whose replay would duplicate output already published")
                } else {
                    reason
                };
                let command = Command::FailSubtask {
                    job_id: task.job_id,
                    subtask: task.subtask.clone(),
                    epoch: task.epoch,
                    reason: reason.clone(),
                    fatal,
                    at_ms: now_ms(),
                };
                match self.context.propose(command).await {
                    Ok(Response::JobTransitioned { .. }) => {
                        tracing::error!(job_id = %task.job_id, reason, "job failed: its checkpoint cannot be restored");
                        self.abort(&task.job_id, "the job failed");
                    }
                    Ok(Response::JobRestarting { restart_count, .. }) => {
                        tracing::warn!(job_id = %task.job_id, operator_id = %task.subtask.operator_id, subtask_index = task.subtask.subtask_index, epoch = task.epoch.0, restart_count, reason, "subtask failed: restarting the job from its last completed checkpoint");
                        self.abort(&task.job_id, "a subtask failed");
                    }
                    Ok(other) => tracing::warn!(response = ?other, "unexpected answer to FailSubtask"),
                    Err(error) => {
                        tracing::info!(job_id = %task.job_id, error = %error, reason, "subtask failure not acted on")
                    }
                }
            }
        }
    }

    async fn complete(&mut self, job_id: JobId, checkpoint: crate::state_machine::CompletedCheckpoint) {
        let Some(pending) = self.pending.remove(&job_id) else {
            return;
        };
        let checkpoint_id = checkpoint.checkpoint_id;
        let acknowledged: Vec<TaskRef> = pending
            .expected()
            .map(|(subtask, epoch)| TaskRef {
                job_id,
                subtask: subtask.clone(),
                epoch,
            })
            .collect();
        let size_bytes = checkpoint.size_bytes;
        if let Some(hold_ms) = crate::failpoints::value(crate::failpoints::HOLD_CHECKPOINT_COMPLETION_MS) {
            tracing::warn!(job_id = %job_id, checkpoint_id = checkpoint_id.0, hold_ms, "failpoint: holding the checkpoint's completion");
            tokio::time::sleep(std::time::Duration::from_millis(hold_ms)).await;
        }
        let took_ms = now_ms().saturating_sub(pending.triggered_at_ms);
        match self
            .context
            .propose(Command::CompleteCheckpoint { job_id, checkpoint })
            .await
        {
            Ok(Response::CheckpointCompleted { .. }) => {
                tracing::info!(job_id = %job_id, checkpoint_id = checkpoint_id.0, size_bytes, took_ms, "checkpoint completed");
                let oldest_retained = self
                    .context
                    .applied
                    .read()
                    .state
                    .jobs
                    .get(&job_id)
                    .and_then(|job| job.checkpoints.front())
                    .map_or(checkpoint_id, |oldest| oldest.checkpoint_id);
                self.tell_job(
                    &job_id,
                    &ExecutorCommand::CheckpointComplete {
                        job_id,
                        checkpoint_id,
                        acknowledged,
                        oldest_retained,
                    },
                );
            }
            Ok(other) => tracing::warn!(response = ?other, "unexpected answer to CompleteCheckpoint"),
            Err(error) => {
                tracing::info!(job_id = %job_id, checkpoint_id = checkpoint_id.0, error = %error, "checkpoint not committed");
                self.pending.insert(job_id, pending);
                self.abort(&job_id, &format!("could not commit it: {error}"));
            }
        }
    }

    async fn on_tick(&mut self) {
        let now = now_ms();
        let mut due = Vec::new();
        let mut to_abort = Vec::new();
        {
            let applied = self.context.applied.read();
            let state = &applied.state;
            for (job_id, pending) in &self.pending {
                match state.jobs.get(job_id) {
                    Some(job) if job.status == JobStatus::Running && pending.matches_placements(job) => {
                        if pending.is_expired(now) {
                            to_abort.push((*job_id, format!("timed out after {} ms", pending.timeout_ms)));
                        }
                    }
                    _ => to_abort.push((*job_id, "the job's placements changed".to_owned())),
                }
            }
            for job in state.jobs.values() {
                let interval = job.graph.checkpoint.interval_ms;
                if job.status != JobStatus::Running
                    || interval == 0
                    || !is_fully_placed(job)
                    || self.pending.contains_key(&job.job_id)
                {
                    continue;
                }
                let last = self.last_trigger.get(&job.job_id).copied().unwrap_or(self.started);
                // Right after a failover executors are still reconnecting: a trigger they never get
                // would only time out, so wait until every executor of the job has a session.
                let reachable = executors_of(job)
                    .iter()
                    .all(|executor_id| self.sessions.contact(executor_id).0);
                let interval_passed =
                    last.elapsed() >= Duration::from_millis(interval) || self.final_due.contains(&job.job_id);
                if interval_passed && reachable {
                    due.push(job.job_id);
                }
            }
        }
        for (job_id, reason) in to_abort {
            self.abort(&job_id, &reason);
        }
        // Forget jobs that ended (one read of the state for both maps).
        {
            let applied = self.context.applied.read();
            let active = |job_id: &JobId| {
                applied
                    .state
                    .jobs
                    .get(job_id)
                    .is_some_and(|job| !job.status.is_terminal())
            };
            self.last_trigger.retain(|job_id, _| active(job_id));
            self.final_due.retain(|job_id| active(job_id));
        }
        for job_id in due {
            self.trigger(job_id).await;
        }
    }

    async fn trigger(&mut self, job_id: JobId) {
        self.last_trigger.insert(job_id, Instant::now());
        self.final_due.remove(&job_id);
        let command = Command::TriggerCheckpoint {
            job_id,
            at_ms: now_ms(),
        };
        let checkpoint_id = match self.context.propose(command).await {
            Ok(Response::CheckpointTriggered { checkpoint_id, .. }) => checkpoint_id,
            Ok(other) => {
                tracing::warn!(response = ?other, "unexpected answer to TriggerCheckpoint");
                return;
            }
            Err(error) => {
                tracing::debug!(job_id = %job_id, error = %error, "checkpoint not triggered");
                return;
            }
        };
        let (pending, sources) = {
            let applied = self.context.applied.read();
            let Some(job) = applied.state.jobs.get(&job_id) else {
                return;
            };
            let sources: Vec<_> = placed_tasks(job)
                .into_iter()
                .filter(|(_, task)| {
                    job.graph
                        .operator(&task.subtask.operator_id)
                        .is_some_and(|operator| operator.inputs.is_empty())
                })
                .map(|(executor_id, _)| executor_id)
                .collect();
            let finished = self.sessions.finished();
            let pending = PendingCheckpoint::start(job, checkpoint_id, now_ms()).map(|mut pending| {
                let done: Vec<_> = pending
                    .expected()
                    .filter(|(subtask, epoch)| {
                        finished.contains(&TaskRef {
                            job_id,
                            subtask: (*subtask).clone(),
                            epoch: *epoch,
                        })
                    })
                    .map(|(subtask, epoch)| (subtask.clone(), epoch))
                    .collect();
                for (subtask, epoch) in done {
                    let _ = pending.ack_finished(job, &subtask, epoch, now_ms());
                }
                pending
            });
            (pending, sources)
        };
        match pending {
            Ok(pending) => {
                tracing::debug!(job_id = %job_id, checkpoint_id = checkpoint_id.0, "checkpoint triggered");
                self.pending.insert(job_id, pending);
                let mut notified = sources;
                notified.sort();
                notified.dedup();
                let mut unreachable = Vec::new();
                for executor_id in notified {
                    let sent = self.sessions.send(
                        &executor_id,
                        ExecutorCommand::TriggerCheckpoint { job_id, checkpoint_id },
                    );
                    if !sent {
                        unreachable.push(executor_id.0);
                    }
                }
                if !unreachable.is_empty() {
                    self.abort(
                        &job_id,
                        &format!("no session with executor(s) {} to trigger it", unreachable.join(", ")),
                    );
                }
            }
            Err(reason) => {
                tracing::debug!(job_id = %job_id, checkpoint_id = checkpoint_id.0, reason, "checkpoint not started")
            }
        }
    }
}
