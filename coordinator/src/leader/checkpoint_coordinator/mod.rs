//! The leader's checkpoint coordinator: triggers checkpoint N+1 of every running job each
//! `checkpoint.interval_ms`, collects the subtasks' acknowledgements, commits the completed
//! checkpoint through Raft and only then tells the tasks (sinks publish on that message). A
//! checkpoint that times out, or whose job's placements change under it, is aborted. Ids come from
//! the Raft log (`TriggerCheckpoint`), so a new leader continues above whatever the old one had in
//! flight, which it simply never completes.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::checkpoints::{AckOutcome, PendingCheckpoint};
use super::context::LeaderContext;
use super::deploy::{executors_of, is_fully_placed, placed_tasks};
use super::ticker::duty_ticker;
use crate::leader::sessions::ExecutorEvent;
use crate::metrics::CheckpointEvent;
use crate::state_machine::{Command, JobStatus, Response};
use raftstream_api::checkpoint::{CheckpointOptions, CheckpointTrigger, SavepointRef, SourcesAfterBarrier};
use raftstream_api::ids::JobId;
use raftstream_api::messages::{ExecutorCommand, TaskRef};

mod failures;
mod paused_restarts;

const TICK: Duration = Duration::from_millis(10);

/// What the coordinator tracks of one job between ticks (none of it is replicated: a new leader
/// starts afresh, above the ids the old one allocated).
#[derive(Default)]
struct JobCheckpoints {
    /// The checkpoint in flight, waiting for acknowledgements.
    pending: Option<PendingCheckpoint>,
    /// Whether `pending` pauses the sources, for a rescale or a move.
    pausing: bool,
    /// Whether `pending` is taken for the job's pending savepoint.
    taking_savepoint: bool,
    last_trigger: Option<Instant>,
    /// The sources reported the end of their input: checkpoint without waiting.
    final_due: bool,
    /// The sources emitted half their share of `max_records` or `max_bytes` since the last
    /// completed checkpoint: checkpoint once `min_pause_ms` allows.
    volume_due: Option<CheckpointTrigger>,
    /// When the last checkpoint ended (completed or aborted), for `min_pause_ms`.
    last_end: Option<Instant>,
    /// Aborted attempts at the pending rescale's or move's checkpoint.
    rescale_attempts: u32,
}

struct Coordinator<C> {
    context: C,
    jobs: HashMap<JobId, JobCheckpoints>,
    /// Savepoints whose checkpoint was aborted, to be recorded as failed at the next tick.
    failed_savepoints: Vec<(JobId, String)>,
    started: Instant,
}

/// Aborted checkpoints after which a rescale goes ahead from the latest completed checkpoint
/// (processing again what followed it, exactly once still).
const RESCALE_CHECKPOINT_ATTEMPTS: u32 = 3;

/// Runs until `shutdown` is cancelled (this node stopped leading).
pub async fn run<C: LeaderContext>(context: C, mut events: mpsc::Receiver<ExecutorEvent>, shutdown: CancellationToken) {
    let mut coordinator = Coordinator {
        context,
        jobs: HashMap::new(),
        failed_savepoints: Vec::new(),
        started: Instant::now(),
    };
    let mut ticker = duty_ticker(TICK);
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

impl<C: LeaderContext> Coordinator<C> {
    fn tell_job(&self, job_id: &JobId, command: &ExecutorCommand) {
        let executors = self
            .context
            .read_state(|state| state.jobs.get(job_id).map(executors_of).unwrap_or_default());
        for executor_id in executors {
            self.context.sessions().send(&executor_id, command.clone());
        }
    }

    fn pending_mut(&mut self, job_id: &JobId) -> Option<&mut PendingCheckpoint> {
        self.jobs.get_mut(job_id).and_then(|job| job.pending.as_mut())
    }

    fn abort(&mut self, job_id: &JobId, reason: &str) {
        let Some(job) = self.jobs.get_mut(job_id) else {
            return;
        };
        if std::mem::take(&mut job.pausing) {
            job.rescale_attempts += 1;
        }
        if let Some(pending) = job.pending.take() {
            job.last_end = Some(Instant::now());
            let taking_savepoint = std::mem::take(&mut job.taking_savepoint);
            self.context.count_checkpoint(*job_id, CheckpointEvent::Failed);
            tracing::info!(job_id = %job_id, checkpoint_id = pending.checkpoint_id.0, reason, "checkpoint aborted");
            if taking_savepoint {
                self.failed_savepoints.push((
                    *job_id,
                    format!("its checkpoint {} was aborted: {reason}", pending.checkpoint_id.0),
                ));
                // What its tasks stored for it is nobody's: no savepoint will name it.
                let discard = ExecutorCommand::DiscardSavepointState(SavepointRef {
                    job_id: *job_id,
                    savepoint_id: pending.checkpoint_id,
                });
                self.context.sessions().send_to_all(&discard);
            }
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
                let now_ms = self.context.now_ms();
                let Some(pending) = self.pending_mut(&job_id) else {
                    tracing::debug!(job_id = %job_id, checkpoint_id = checkpoint_id.0, "ack for no pending checkpoint");
                    return;
                };
                if pending.checkpoint_id != checkpoint_id {
                    tracing::debug!(job_id = %job_id, checkpoint_id = checkpoint_id.0, pending = pending.checkpoint_id.0, "ack for another checkpoint");
                    return;
                }
                match pending.on_ack(ack, now_ms) {
                    AckOutcome::Pending { .. } => {}
                    AckOutcome::Ignored(reason) => {
                        tracing::info!(job_id = %job_id, checkpoint_id = checkpoint_id.0, reason, "checkpoint ack ignored")
                    }
                    AckOutcome::Complete(checkpoint) => self.complete(job_id, checkpoint).await,
                }
            }
            ExecutorEvent::Finished { task } => {
                let now_ms = self.context.now_ms();
                // Field by field rather than through `pending_mut`, which would borrow all of
                // `self` while `self.context` reads the state.
                let pending = self.jobs.get_mut(&task.job_id).and_then(|job| job.pending.as_mut());
                let outcome = self
                    .context
                    .read_state(|state| match (pending, state.jobs.get(&task.job_id)) {
                        (Some(pending), Some(job)) => pending.ack_finished(job, &task.subtask, task.epoch, now_ms),
                        _ => None,
                    });
                if let Some(AckOutcome::Complete(checkpoint)) = outcome {
                    self.complete(task.job_id, checkpoint).await;
                }
            }
            ExecutorEvent::SessionOpened { executor_id } => {
                // A checkpoint trigger sent on the executor's previous session may be lost with
                // it: its checkpoints in flight could then only time out, holding up the job's
                // next checkpoint (and a rescale waiting for one) for the whole timeout.
                let affected: Vec<JobId> = self.context.read_state(|state| {
                    self.jobs
                        .iter()
                        .filter(|(_, checkpoints)| checkpoints.pending.is_some())
                        .map(|(job_id, _)| job_id)
                        .filter(|job_id| {
                            state
                                .jobs
                                .get(job_id)
                                .is_some_and(|job| executors_of(job).contains(&executor_id))
                        })
                        .copied()
                        .collect()
                });
                for job_id in affected {
                    self.abort(
                        &job_id,
                        &format!("executor {executor_id} opened a new session and may have missed the trigger"),
                    );
                }
            }
            ExecutorEvent::CheckpointWanted { task, trigger } => {
                tracing::debug!(job_id = %task.job_id, operator_id = %task.subtask.operator_id, subtask_index = task.subtask.subtask_index, %trigger, "a source wants a checkpoint");
                self.jobs
                    .entry(task.job_id)
                    .or_default()
                    .volume_due
                    .get_or_insert(trigger);
            }
            ExecutorEvent::InputEnded { task } => {
                tracing::debug!(job_id = %task.job_id, operator_id = %task.subtask.operator_id, subtask_index = task.subtask.subtask_index, "source input ended: final checkpoint due");
                self.jobs.entry(task.job_id).or_default().final_due = true;
            }
            ExecutorEvent::TaskFailed { task, reason, fatal } => self.on_task_failed(task, reason, fatal).await,
        }
    }

    async fn complete(&mut self, job_id: JobId, checkpoint: raftstream_api::checkpoint::CompletedCheckpoint) {
        let Some(job) = self.jobs.get_mut(&job_id) else {
            return;
        };
        let Some(pending) = job.pending.take() else {
            return;
        };
        job.last_end = Some(Instant::now());
        let savepoint = job.taking_savepoint;
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
        let took_ms = self.context.now_ms().saturating_sub(pending.triggered_at_ms);
        let trigger = pending.trigger;
        match self
            .context
            .propose(Command::CompleteCheckpoint {
                job_id,
                checkpoint,
                savepoint,
            })
            .await
        {
            Ok(Response::CheckpointCompleted { .. }) => {
                self.context.count_checkpoint(job_id, CheckpointEvent::Completed);
                let pausing = self.jobs.get_mut(&job_id).is_some_and(|job| {
                    job.taking_savepoint = false;
                    std::mem::take(&mut job.pausing)
                });
                tracing::info!(job_id = %job_id, checkpoint_id = checkpoint_id.0, size_bytes, took_ms, savepoint, %trigger, "checkpoint completed");
                let oldest_retained = self.context.read_state(|state| {
                    state
                        .jobs
                        .get(&job_id)
                        .and_then(|job| job.checkpoints.front())
                        .map_or(checkpoint_id, |oldest| oldest.checkpoint_id)
                });
                self.tell_job(
                    &job_id,
                    &ExecutorCommand::CheckpointComplete {
                        job_id,
                        checkpoint_id,
                        acknowledged,
                        oldest_retained,
                    },
                );
                if pausing {
                    self.restart_paused(job_id, Some(checkpoint_id)).await;
                }
            }
            Ok(other) => tracing::warn!(response = ?other, "unexpected answer to CompleteCheckpoint"),
            Err(error) => {
                tracing::info!(job_id = %job_id, checkpoint_id = checkpoint_id.0, error = %raftstream_observability::chain(&error), "checkpoint not committed");
                self.jobs.entry(job_id).or_default().pending = Some(pending);
                self.abort(&job_id, &format!("could not commit it: {error}"));
            }
        }
    }

    async fn on_tick(&mut self) {
        let now = self.context.now_ms();
        let sessions = self.context.sessions();
        let (to_abort, due, rescale_now) = self.context.read_state(|state| {
            let mut to_abort = Vec::new();
            let pending_checkpoints = self
                .jobs
                .iter()
                .filter_map(|(job_id, job)| job.pending.as_ref().map(|pending| (job_id, job, pending)));
            for (job_id, checkpoints, pending) in pending_checkpoints {
                match state.jobs.get(job_id) {
                    Some(job) if job.status == JobStatus::Running && pending.matches_placements(job) => {
                        if pending.is_expired(now) {
                            to_abort.push((*job_id, format!("timed out after {} ms", pending.timeout_ms)));
                        } else if (job.pending_rescale.is_some() || job.pending_relocation.is_some())
                            && !checkpoints.pausing
                            && !checkpoints.taking_savepoint
                        {
                            // A regular checkpoint cannot serve the rescale (its sources go on
                            // past the barrier) and with a large state it takes seconds to end:
                            // the rescale's own checkpoint starts now instead of after it.
                            to_abort.push((
                                *job_id,
                                "a rescale or move is waiting: its own checkpoint replaces this one".to_owned(),
                            ));
                        }
                    }
                    _ => to_abort.push((*job_id, "the job's placements changed".to_owned())),
                }
            }
            let mut due = Vec::new();
            let mut rescale_now = Vec::new();
            for job in state.jobs.values() {
                let checkpoints = self.jobs.get(&job.job_id);
                let config = &job.graph.checkpoint;
                let interval = config.interval_ms;
                let rescale_pending = job.pending_rescale.is_some() || job.pending_relocation.is_some();
                let savepoint_pending = job.pending_savepoint.is_some();
                // After the savepoint a job stops with, its sources are ending: nothing follows.
                if job.status != JobStatus::Running
                    || job.stopping_at.is_some()
                    || (!config.is_enabled() && !rescale_pending && !savepoint_pending)
                    || !is_fully_placed(job)
                    || checkpoints.is_some_and(|checkpoints| checkpoints.pending.is_some())
                {
                    continue;
                }
                if rescale_pending
                    && checkpoints.map_or(0, |checkpoints| checkpoints.rescale_attempts) >= RESCALE_CHECKPOINT_ATTEMPTS
                {
                    rescale_now.push(job.job_id);
                    continue;
                }
                let last = checkpoints
                    .and_then(|checkpoints| checkpoints.last_trigger)
                    .unwrap_or(self.started);
                // Right after a failover executors are still reconnecting: a trigger they never get
                // would only time out, so wait until every executor of the job has a session.
                let reachable = executors_of(job)
                    .iter()
                    .all(|executor_id| sessions.contact(executor_id).0);
                let paused_long_enough = checkpoints
                    .and_then(|checkpoints| checkpoints.last_end)
                    .is_none_or(|end| end.elapsed() >= Duration::from_millis(config.min_pause_ms));
                // The reason recorded with the checkpoint: the most pressing one that holds.
                let trigger = if rescale_pending {
                    Some(CheckpointTrigger::Rescale)
                } else if savepoint_pending {
                    Some(CheckpointTrigger::Savepoint)
                } else if checkpoints.is_some_and(|checkpoints| checkpoints.final_due) {
                    Some(CheckpointTrigger::EndOfInput)
                } else if !paused_long_enough {
                    None
                } else if let Some(volume) = checkpoints.and_then(|checkpoints| checkpoints.volume_due) {
                    Some(volume)
                } else {
                    (interval > 0 && last.elapsed() >= Duration::from_millis(interval))
                        .then_some(CheckpointTrigger::Interval)
                };
                if let (Some(trigger), true) = (trigger, reachable) {
                    due.push((job.job_id, trigger));
                }
            }
            (to_abort, due, rescale_now)
        });
        for (job_id, reason) in to_abort {
            self.abort(&job_id, &reason);
        }
        // Forget jobs that ended.
        let active: HashSet<JobId> = self.context.read_state(|state| {
            state
                .jobs
                .values()
                .filter(|job| !job.status.is_terminal())
                .map(|job| job.job_id)
                .collect()
        });
        // (A job that ended had its checkpoint in flight aborted just above.)
        self.jobs.retain(|job_id, _| active.contains(job_id));
        for (job_id, reason) in std::mem::take(&mut self.failed_savepoints) {
            let command = Command::FailSavepoint {
                job_id,
                reason: reason.clone(),
                at_ms: self.context.now_ms(),
            };
            match self.context.propose(command).await {
                Ok(_) => tracing::warn!(job_id = %job_id, reason, "savepoint failed"),
                // The job restarted or ended under it (which ended the request), or leadership
                // moved: a new leader takes the savepoint again.
                Err(error) => {
                    tracing::debug!(job_id = %job_id, error = %raftstream_observability::chain(&error), "savepoint failure not recorded")
                }
            }
        }
        for job_id in rescale_now {
            tracing::warn!(job_id = %job_id, attempts = RESCALE_CHECKPOINT_ATTEMPTS, "no checkpoint for the rescale or move completed: going ahead from the latest one");
            self.restart_paused(job_id, None).await;
        }
        for (job_id, trigger) in due {
            self.trigger(job_id, trigger).await;
        }
    }

    async fn trigger(&mut self, job_id: JobId, trigger: CheckpointTrigger) {
        let checkpoints = self.jobs.entry(job_id).or_default();
        checkpoints.last_trigger = Some(Instant::now());
        checkpoints.final_due = false;
        checkpoints.volume_due = None;
        let command = Command::TriggerCheckpoint {
            job_id,
            at_ms: self.context.now_ms(),
        };
        let checkpoint_id = match self.context.propose(command).await {
            Ok(Response::CheckpointTriggered { checkpoint_id, .. }) => checkpoint_id,
            Ok(other) => {
                tracing::warn!(response = ?other, "unexpected answer to TriggerCheckpoint");
                return;
            }
            Err(error) => {
                tracing::debug!(job_id = %job_id, error = %raftstream_observability::chain(&error), "checkpoint not triggered");
                return;
            }
        };
        let now_ms = self.context.now_ms();
        let finished = self.context.sessions().finished();
        let started = self.context.read_state(|state| {
            let job = state.jobs.get(&job_id)?;
            let options = CheckpointOptions {
                sources: match &job.pending_savepoint {
                    Some(request) if request.stop => SourcesAfterBarrier::Stop,
                    _ if job.pending_rescale.is_some() || job.pending_relocation.is_some() => {
                        SourcesAfterBarrier::Pause
                    }
                    _ => SourcesAfterBarrier::Continue,
                },
                savepoint: job.pending_savepoint.is_some(),
            };
            let sources: Vec<_> = placed_tasks(job)
                .into_iter()
                .filter(|(_, task)| {
                    job.graph
                        .operator(task.subtask.operator_id.as_str())
                        .is_some_and(|operator| operator.inputs.is_empty())
                })
                .map(|(executor_id, _)| executor_id)
                .collect();
            let pending = PendingCheckpoint::start(job, checkpoint_id, now_ms).map(|mut pending| {
                pending.trigger = trigger;
                // Subtasks that already finished take no barrier: they count as acknowledged.
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
                    let _ = pending.ack_finished(job, &subtask, epoch, now_ms);
                }
                pending
            });
            Some((pending, sources, options))
        });
        let Some((pending, sources, options)) = started else {
            return;
        };
        match pending {
            Ok(pending) => {
                tracing::debug!(job_id = %job_id, checkpoint_id = checkpoint_id.0, ?options, "checkpoint triggered");
                self.context.count_checkpoint(job_id, CheckpointEvent::Triggered);
                let checkpoints = self.jobs.entry(job_id).or_default();
                checkpoints.pending = Some(pending);
                checkpoints.pausing = options.sources == SourcesAfterBarrier::Pause;
                checkpoints.taking_savepoint = options.savepoint;
                let mut notified = sources;
                notified.sort();
                notified.dedup();
                let mut unreachable = Vec::new();
                for executor_id in notified {
                    let trigger = ExecutorCommand::TriggerCheckpoint {
                        job_id,
                        checkpoint_id,
                        options,
                    };
                    let sent = self.context.sessions().send(&executor_id, trigger);
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

#[cfg(test)]
mod tests;
