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
use super::sessions::{ExecutorCommand, ExecutorEvent, TaskRef};
use crate::metrics::CheckpointEvent;
use crate::state_machine::{Command, JobStatus, Response};
use raftstream_api::checkpoint::{CheckpointOptions, CheckpointTrigger, SavepointRef, SourcesAfterBarrier};
use raftstream_api::ids::{CheckpointId, JobId};

const TICK: Duration = Duration::from_millis(10);

struct Coordinator<C> {
    context: C,
    pending: HashMap<JobId, PendingCheckpoint>,
    last_trigger: HashMap<JobId, Instant>,
    /// Jobs whose sources reported the end of their input: checkpoint them without waiting.
    final_due: HashSet<JobId>,
    /// Jobs whose sources emitted half their share of `max_records` or `max_bytes` since the
    /// last completed checkpoint: checkpoint them once `min_pause_ms` allows.
    volume_due: HashMap<JobId, CheckpointTrigger>,
    /// When each job's last checkpoint ended (completed or aborted), for `min_pause_ms`.
    last_end: HashMap<JobId, Instant>,
    /// Jobs whose in-flight checkpoint pauses their sources, for a rescale or a move.
    pausing: HashSet<JobId>,
    /// Aborted attempts at each pending rescale's or move's checkpoint.
    rescale_attempts: HashMap<JobId, u32>,
    /// Jobs whose in-flight checkpoint is taken for their pending savepoint.
    taking_savepoint: HashSet<JobId>,
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
        pending: HashMap::new(),
        last_trigger: HashMap::new(),
        final_due: HashSet::new(),
        volume_due: HashMap::new(),
        last_end: HashMap::new(),
        pausing: HashSet::new(),
        rescale_attempts: HashMap::new(),
        taking_savepoint: HashSet::new(),
        failed_savepoints: Vec::new(),
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

impl<C: LeaderContext> Coordinator<C> {
    fn tell_job(&self, job_id: &JobId, command: &ExecutorCommand) {
        let executors = self
            .context
            .read_state(|state| state.jobs.get(job_id).map(executors_of).unwrap_or_default());
        for executor_id in executors {
            self.context.sessions().send(&executor_id, command.clone());
        }
    }

    fn abort(&mut self, job_id: &JobId, reason: &str) {
        if self.pausing.remove(job_id) {
            *self.rescale_attempts.entry(*job_id).or_default() += 1;
        }
        if let Some(pending) = self.pending.remove(job_id) {
            self.context.count_checkpoint(*job_id, CheckpointEvent::Failed);
            self.last_end.insert(*job_id, Instant::now());
            tracing::info!(job_id = %job_id, checkpoint_id = pending.checkpoint_id.0, reason, "checkpoint aborted");
            if self.taking_savepoint.remove(job_id) {
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
                let Some(pending) = self.pending.get_mut(&job_id) else {
                    tracing::debug!(job_id = %job_id, checkpoint_id = checkpoint_id.0, "ack for no pending checkpoint");
                    return;
                };
                if pending.checkpoint_id != checkpoint_id {
                    tracing::debug!(job_id = %job_id, checkpoint_id = checkpoint_id.0, pending = pending.checkpoint_id.0, "ack for another checkpoint");
                    return;
                }
                match pending.on_ack(ack, self.context.now_ms()) {
                    AckOutcome::Pending { .. } => {}
                    AckOutcome::Ignored(reason) => {
                        tracing::info!(job_id = %job_id, checkpoint_id = checkpoint_id.0, reason, "checkpoint ack ignored")
                    }
                    AckOutcome::Complete(checkpoint) => self.complete(job_id, checkpoint).await,
                }
            }
            ExecutorEvent::Finished { task } => {
                let now_ms = self.context.now_ms();
                let pending = self.pending.get_mut(&task.job_id);
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
                    self.pending
                        .keys()
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
                self.volume_due.entry(task.job_id).or_insert(trigger);
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
                    at_ms: self.context.now_ms(),
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
                        tracing::info!(job_id = %task.job_id, error = %raftstream_observability::chain(&error), reason, "subtask failure not acted on")
                    }
                }
            }
        }
    }

    async fn complete(&mut self, job_id: JobId, checkpoint: crate::state_machine::CompletedCheckpoint) {
        let Some(pending) = self.pending.remove(&job_id) else {
            return;
        };
        self.last_end.insert(job_id, Instant::now());
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
        let savepoint = self.taking_savepoint.contains(&job_id);
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
                self.taking_savepoint.remove(&job_id);
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
                if self.pausing.remove(&job_id) {
                    self.restart_paused(job_id, Some(checkpoint_id)).await;
                }
            }
            Ok(other) => tracing::warn!(response = ?other, "unexpected answer to CompleteCheckpoint"),
            Err(error) => {
                tracing::info!(job_id = %job_id, checkpoint_id = checkpoint_id.0, error = %raftstream_observability::chain(&error), "checkpoint not committed");
                self.pending.insert(job_id, pending);
                self.abort(&job_id, &format!("could not commit it: {error}"));
            }
        }
    }

    /// Commits the job's pending rescale, or else its pending move off a draining executor: it
    /// restarts from its latest completed checkpoint, `paused_at` when that is the one taken for
    /// it.
    async fn restart_paused(&mut self, job_id: JobId, paused_at: Option<CheckpointId>) {
        self.rescale_attempts.remove(&job_id);
        let (rescale, relocation) = self.context.read_state(|state| {
            state.jobs.get(&job_id).map_or((None, None), |job| {
                (job.pending_rescale.clone(), job.pending_relocation.clone())
            })
        });
        let checkpoint_id = paused_at.map(|id| id.0);
        let at_ms = self.context.now_ms();
        if let Some(request) = rescale.as_ref().filter(|request| request.two_phase) {
            let command = Command::SwitchTwoPhase {
                job_id,
                operator_id: request.operator_id.clone().unwrap_or_default(),
                at_ms,
                reason: request.reason.clone(),
            };
            match self.context.propose(command).await {
                Ok(_) => {
                    tracing::info!(job_id = %job_id, operator_id = ?request.operator_id, checkpoint_id, "switching to two-phase aggregation: the job restarts from its latest checkpoint")
                }
                Err(error) => {
                    tracing::warn!(job_id = %job_id, error = %raftstream_observability::chain(&error), "switch to two phases not committed; it is tried again")
                }
            }
        } else if let Some(request) = rescale {
            let command = Command::RescaleJob {
                job_id,
                operator_id: request.operator_id.clone(),
                parallelism: request.parallelism,
                at_ms,
                auto: request.auto,
                reason: request.reason.clone(),
            };
            match self.context.propose(command).await {
                Ok(_) => {
                    tracing::info!(job_id = %job_id, operator_id = ?request.operator_id, parallelism = request.parallelism, checkpoint_id, "rescaling: the job restarts from its latest checkpoint")
                }
                Err(error) => {
                    tracing::warn!(job_id = %job_id, error = %raftstream_observability::chain(&error), "rescale not committed; it is tried again")
                }
            }
        } else if let Some(request) = relocation {
            match self.context.propose(Command::RelocateJob { job_id, at_ms }).await {
                Ok(_) => {
                    tracing::info!(job_id = %job_id, away_from = %request.away_from, checkpoint_id, "relocating: the job restarts from its latest checkpoint off the draining executor")
                }
                Err(error) => {
                    tracing::warn!(job_id = %job_id, error = %raftstream_observability::chain(&error), "move not committed; it is tried again")
                }
            }
        }
    }

    async fn on_tick(&mut self) {
        let now = self.context.now_ms();
        let sessions = self.context.sessions();
        let (to_abort, due, rescale_now) = self.context.read_state(|state| {
            let mut to_abort = Vec::new();
            for (job_id, pending) in &self.pending {
                match state.jobs.get(job_id) {
                    Some(job) if job.status == JobStatus::Running && pending.matches_placements(job) => {
                        if pending.is_expired(now) {
                            to_abort.push((*job_id, format!("timed out after {} ms", pending.timeout_ms)));
                        } else if (job.pending_rescale.is_some() || job.pending_relocation.is_some())
                            && !self.pausing.contains(job_id)
                            && !self.taking_savepoint.contains(job_id)
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
                let config = &job.graph.checkpoint;
                let interval = config.interval_ms;
                let rescale_pending = job.pending_rescale.is_some() || job.pending_relocation.is_some();
                let savepoint_pending = job.pending_savepoint.is_some();
                // After the savepoint a job stops with, its sources are ending: nothing follows.
                if job.status != JobStatus::Running
                    || job.stopping_at.is_some()
                    || (!config.is_enabled() && !rescale_pending && !savepoint_pending)
                    || !is_fully_placed(job)
                    || self.pending.contains_key(&job.job_id)
                {
                    continue;
                }
                if rescale_pending
                    && self.rescale_attempts.get(&job.job_id).copied().unwrap_or(0) >= RESCALE_CHECKPOINT_ATTEMPTS
                {
                    rescale_now.push(job.job_id);
                    continue;
                }
                let last = self.last_trigger.get(&job.job_id).copied().unwrap_or(self.started);
                // Right after a failover executors are still reconnecting: a trigger they never get
                // would only time out, so wait until every executor of the job has a session.
                let reachable = executors_of(job)
                    .iter()
                    .all(|executor_id| sessions.contact(executor_id).0);
                let paused_long_enough = self
                    .last_end
                    .get(&job.job_id)
                    .is_none_or(|end| end.elapsed() >= Duration::from_millis(config.min_pause_ms));
                // The reason recorded with the checkpoint: the most pressing one that holds.
                let trigger = if rescale_pending {
                    Some(CheckpointTrigger::Rescale)
                } else if savepoint_pending {
                    Some(CheckpointTrigger::Savepoint)
                } else if self.final_due.contains(&job.job_id) {
                    Some(CheckpointTrigger::EndOfInput)
                } else if !paused_long_enough {
                    None
                } else if let Some(volume) = self.volume_due.get(&job.job_id) {
                    Some(*volume)
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
        self.last_trigger.retain(|job_id, _| active.contains(job_id));
        self.final_due.retain(|job_id| active.contains(job_id));
        self.volume_due.retain(|job_id, _| active.contains(job_id));
        self.last_end.retain(|job_id, _| active.contains(job_id));
        self.rescale_attempts.retain(|job_id, _| active.contains(job_id));
        self.taking_savepoint.retain(|job_id| active.contains(job_id));
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
        self.last_trigger.insert(job_id, Instant::now());
        self.final_due.remove(&job_id);
        self.volume_due.remove(&job_id);
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
                        .operator(&task.subtask.operator_id)
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
                self.pending.insert(job_id, pending);
                if options.sources == SourcesAfterBarrier::Pause {
                    self.pausing.insert(job_id);
                }
                if options.savepoint {
                    self.taking_savepoint.insert(job_id);
                }
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
mod tests {
    use tokio::task::JoinHandle;

    use super::*;
    use crate::leader::sessions::ExecutorSessions;
    use crate::state_machine::State;
    use crate::test_fixtures::{
        checkpoint_ack, epoch_of, executor_id, source_to_sink, subtask, InMemoryLeader, StateBuilder,
    };
    use raftstream_api::ids::{CheckpointId, Epoch};

    /// Longer than anything a test waits for; on the paused clock it passes in no real time.
    const PATIENCE: Duration = Duration::from_secs(30);
    const INTERVAL_MS: u64 = 50;
    const TIMEOUT_MS: u64 = 200;

    fn job() -> JobId {
        JobId::from_number(1)
    }

    /// Job 1, `src -> out`, running with both subtasks on executor `e`.
    fn running_job() -> State {
        let graph = source_to_sink(&format!(
            r#""checkpoint": {{"interval_ms": {INTERVAL_MS}, "timeout_ms": {TIMEOUT_MS}, "retained": 2}},"#
        ));
        StateBuilder::new()
            .executor("e", 4)
            .job(graph)
            .place_all(1, "e")
            .running(1)
            .build()
    }

    /// One leader's checkpoint coordinator, and the session of executor `e` with that leader.
    struct Duty {
        leader: InMemoryLeader,
        to_executor: mpsc::Receiver<ExecutorCommand>,
        stop: CancellationToken,
        task: JoinHandle<()>,
    }

    impl Duty {
        fn start(make_leader: impl FnOnce(ExecutorSessions) -> InMemoryLeader) -> Duty {
            let sessions = ExecutorSessions::default();
            let (_leadership, events) = sessions.begin_leadership();
            let (_generation, to_executor, _) = sessions.attach(&executor_id("e")).expect("leading");
            let leader = make_leader(sessions);
            let stop = CancellationToken::new();
            let task = tokio::spawn(run(leader.clone(), events, stop.clone()));
            Duty {
                leader,
                to_executor,
                stop,
                task,
            }
        }

        async fn next_command(&mut self) -> ExecutorCommand {
            match tokio::time::timeout(PATIENCE, self.to_executor.recv()).await {
                Ok(Some(command)) => command,
                Ok(None) => panic!("the session closed"),
                Err(_) => panic!("no command for the executor within {PATIENCE:?}"),
            }
        }

        /// Waits for the trigger of the next regular checkpoint (one that does not pause the
        /// sources) and returns its id.
        async fn triggered(&mut self) -> CheckpointId {
            let (checkpoint_id, pause_sources) = self.triggered_pausing().await;
            assert!(!pause_sources, "checkpoint {checkpoint_id:?} pauses the sources");
            checkpoint_id
        }

        /// Waits for the next trigger of the job's checkpoint; its id and whether it pauses the
        /// sources.
        async fn triggered_pausing(&mut self) -> (CheckpointId, bool) {
            match self.next_command().await {
                ExecutorCommand::TriggerCheckpoint {
                    job_id,
                    checkpoint_id,
                    options,
                } if job_id == job() => (checkpoint_id, options.sources == SourcesAfterBarrier::Pause),
                other => panic!("expected a checkpoint trigger, got {other:?}"),
            }
        }

        /// Waits for the abort of a checkpoint; its id and reason.
        async fn aborted(&mut self) -> (CheckpointId, String) {
            match self.next_command().await {
                ExecutorCommand::CheckpointAborted {
                    checkpoint_id, reason, ..
                } => (checkpoint_id, reason),
                other => panic!("expected an abort, got {other:?}"),
            }
        }

        fn request_rescale(&self, operator: &str, parallelism: u32) {
            self.leader.commit(Command::RequestRescale {
                request_id: None,
                job_id: job(),
                operator_id: Some(operator.to_owned()),
                parallelism,
                at_ms: 0,
                auto: false,
                reason: String::new(),
            });
        }

        fn rescales_proposed(&self) -> usize {
            self.leader
                .proposed()
                .iter()
                .filter(|command| matches!(command, Command::RescaleJob { .. }))
                .count()
        }

        /// Executor `e` acknowledges `checkpoint_id` for `operator[0]` at its current epoch.
        fn ack(&self, operator: &str, checkpoint_id: CheckpointId) {
            let epoch = epoch_of(&self.leader.state(), 1, operator, 0);
            self.ack_at(operator, epoch, checkpoint_id);
        }

        fn ack_at(&self, operator: &str, epoch: Epoch, checkpoint_id: CheckpointId) {
            self.leader.sessions().report(ExecutorEvent::Ack {
                job_id: job(),
                checkpoint_id,
                ack: checkpoint_ack(operator, 0, epoch, checkpoint_id),
            });
        }

        /// Lets the duty take every report queued so far (the paused clock advances only once
        /// every task is idle).
        async fn settle(&self) {
            tokio::time::sleep(TICK * 2).await;
        }

        fn completions_proposed(&self) -> Vec<CheckpointId> {
            self.leader
                .proposed()
                .into_iter()
                .filter_map(|command| match command {
                    Command::CompleteCheckpoint { checkpoint, .. } => Some(checkpoint.checkpoint_id),
                    _ => None,
                })
                .collect()
        }

        async fn stop(self) {
            self.stop.cancel();
            self.task.await.expect("the duty ends without panicking");
        }
    }

    fn completed_ids(state: &State) -> Vec<u64> {
        state.jobs[&job()]
            .checkpoints
            .iter()
            .map(|checkpoint| checkpoint.checkpoint_id.0)
            .collect()
    }

    #[tokio::test(start_paused = true)]
    async fn a_checkpoint_completes_when_every_subtask_acknowledged_and_is_committed_before_tasks_hear_of_it() {
        let mut duty = Duty::start(|sessions| InMemoryLeader::new(running_job(), sessions));
        let first = duty.triggered().await;
        assert_eq!(first, CheckpointId(1), "ids start above what the log holds");
        duty.ack("src", first);
        duty.settle().await;
        assert!(
            duty.to_executor.try_recv().is_err(),
            "nothing to say while `out` is missing"
        );
        assert!(completed_ids(&duty.leader.state()).is_empty());

        duty.ack("out", first);
        match duty.next_command().await {
            ExecutorCommand::CheckpointComplete {
                job_id,
                checkpoint_id,
                acknowledged,
                oldest_retained,
            } => {
                assert_eq!((job_id, checkpoint_id, oldest_retained), (job(), first, first));
                let mut operators: Vec<_> = acknowledged
                    .iter()
                    .map(|task| task.subtask.operator_id.as_str())
                    .collect();
                operators.sort_unstable();
                assert_eq!(operators, ["out", "src"]);
            }
            other => panic!("expected the completion, got {other:?}"),
        }
        // Sinks publish on that message, so the checkpoint was in the committed state before it.
        let state = duty.leader.state();
        assert_eq!(completed_ids(&state), [1]);
        let completed = &state.jobs[&job()].checkpoints[0];
        assert_eq!(completed.task_states.len(), 2);
        assert_eq!(completed.source_offsets.get(&subtask("src", 0)), Some(&100));
        assert_eq!(completed.size_bytes, 20);

        // The next one follows after the interval, with the next id.
        assert_eq!(duty.triggered().await, CheckpointId(2));
        duty.stop().await;
    }

    /// Job 1 with a 60 s interval, bounded by records, and `min_pause_ms` between checkpoints.
    fn volume_bounded_job(min_pause_ms: u64) -> State {
        let graph = source_to_sink(&format!(
            r#""checkpoint": {{"interval_ms": 60000, "timeout_ms": {TIMEOUT_MS}, "max_records": 1000, "min_pause_ms": {min_pause_ms}}},"#
        ));
        StateBuilder::new()
            .executor("e", 4)
            .job(graph)
            .place_all(1, "e")
            .running(1)
            .build()
    }

    fn want_checkpoint(duty: &Duty, trigger: CheckpointTrigger) {
        let epoch = epoch_of(&duty.leader.state(), 1, "src", 0);
        duty.leader.sessions().report(ExecutorEvent::CheckpointWanted {
            task: TaskRef {
                job_id: job(),
                subtask: subtask("src", 0),
                epoch,
            },
            trigger,
        });
    }

    #[tokio::test(start_paused = true)]
    async fn a_source_asking_for_a_checkpoint_gets_one_long_before_the_interval_after_the_minimum_pause() {
        const MIN_PAUSE_MS: u64 = 300;
        let mut duty = Duty::start(|sessions| InMemoryLeader::new(volume_bounded_job(MIN_PAUSE_MS), sessions));
        let started = Instant::now();
        want_checkpoint(&duty, CheckpointTrigger::Records);
        let first = duty.triggered().await;
        assert!(
            started.elapsed() < Duration::from_millis(100),
            "triggered at once, not after the interval"
        );
        duty.ack("src", first);
        duty.ack("out", first);
        assert!(matches!(
            duty.next_command().await,
            ExecutorCommand::CheckpointComplete { .. }
        ));
        let ended = Instant::now();
        assert_eq!(
            duty.leader.state().jobs[&job()].checkpoints[0].trigger,
            CheckpointTrigger::Records,
            "the completed checkpoint says what started it"
        );
        // Asked again at once: the next one waits out the minimum pause after the last ended.
        want_checkpoint(&duty, CheckpointTrigger::Bytes);
        let second = duty.triggered().await;
        assert!(ended.elapsed() >= Duration::from_millis(MIN_PAUSE_MS));
        assert!(ended.elapsed() < Duration::from_millis(MIN_PAUSE_MS + 100));
        duty.ack("src", second);
        duty.ack("out", second);
        assert!(matches!(
            duty.next_command().await,
            ExecutorCommand::CheckpointComplete { .. }
        ));
        assert_eq!(
            duty.leader.state().jobs[&job()].checkpoints[1].trigger,
            CheckpointTrigger::Bytes
        );
        duty.stop().await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_new_session_of_an_executor_aborts_the_checkpoint_whose_trigger_it_may_have_missed() {
        let mut duty = Duty::start(|sessions| InMemoryLeader::new(running_job(), sessions));
        let first = duty.triggered().await;
        duty.leader.sessions().report(ExecutorEvent::SessionOpened {
            executor_id: executor_id("e"),
        });
        let (checkpoint_id, reason) = duty.aborted().await;
        assert_eq!(checkpoint_id, first);
        assert!(reason.contains("new session"), "{reason}");
        assert_eq!(duty.triggered().await, CheckpointId(2));
        duty.stop().await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_checkpoint_not_acknowledged_in_time_is_aborted_and_a_late_ack_never_completes_it() {
        let mut duty = Duty::start(|sessions| InMemoryLeader::new(running_job(), sessions));
        let first = duty.triggered().await;
        let triggered_at = Instant::now();
        duty.ack("src", first);
        match duty.next_command().await {
            ExecutorCommand::CheckpointAborted {
                checkpoint_id, reason, ..
            } => {
                assert_eq!(checkpoint_id, first);
                assert_eq!(reason, format!("timed out after {TIMEOUT_MS} ms"));
            }
            other => panic!("expected the abort, got {other:?}"),
        }
        assert!(triggered_at.elapsed() >= Duration::from_millis(TIMEOUT_MS));

        duty.ack("out", first);
        let second = duty.triggered().await;
        assert_eq!(second, CheckpointId(2), "the aborted id is not reused");
        assert!(duty.completions_proposed().is_empty(), "{:?}", duty.leader.proposed());
        assert!(completed_ids(&duty.leader.state()).is_empty());
        duty.stop().await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_checkpoint_whose_placements_change_is_aborted_and_its_acks_never_complete_it() {
        let mut duty = Duty::start(|sessions| InMemoryLeader::new(running_job(), sessions));
        let first = duty.triggered().await;
        let old_src = epoch_of(&duty.leader.state(), 1, "src", 0);
        let old_out = epoch_of(&duty.leader.state(), 1, "out", 0);
        duty.ack("src", first);
        duty.settle().await;

        // `out` fails: the job restarts, every placement is released and placed again at new
        // epochs (the scheduler's work, done here directly).
        duty.leader.commit(Command::FailSubtask {
            job_id: job(),
            subtask: subtask("out", 0),
            epoch: old_out,
            reason: "test".into(),
            fatal: false,
            at_ms: 0,
        });
        duty.settle().await;
        // The old placement's last ack arrives after the change.
        duty.ack_at("out", old_out, first);
        duty.settle().await;
        for operator in ["src", "out"] {
            duty.leader.commit(Command::AssignSubtask {
                job_id: job(),
                subtask: subtask(operator, 0),
                executor_id: executor_id("e"),
                at_ms: 0,
            });
        }
        duty.leader.commit(Command::TransitionJob {
            job_id: job(),
            to: JobStatus::Running,
            reason: "restored".into(),
            at_ms: 0,
            deployed_through_epoch: None,
        });
        assert!(epoch_of(&duty.leader.state(), 1, "src", 0) > old_src.max(old_out));

        // Checkpoint 1 was dropped: the job, running again, gets checkpoint 2, which its new
        // placement completes, while acks of the old one count for nothing.
        let second = loop {
            match duty.next_command().await {
                ExecutorCommand::CheckpointAborted {
                    checkpoint_id, reason, ..
                } => {
                    assert_eq!(checkpoint_id, first);
                    assert_eq!(reason, "the job's placements changed");
                }
                ExecutorCommand::TriggerCheckpoint { checkpoint_id, .. } => break checkpoint_id,
                other => panic!("expected checkpoint 1's abort or checkpoint 2's trigger, got {other:?}"),
            }
        };
        assert_eq!(second, CheckpointId(2));
        duty.ack_at("src", old_src, second);
        duty.ack("src", second);
        duty.ack("out", second);
        match duty.next_command().await {
            ExecutorCommand::CheckpointComplete { checkpoint_id, .. } => assert_eq!(checkpoint_id, second),
            other => panic!("expected checkpoint 2 to complete, got {other:?}"),
        }
        assert_eq!(duty.completions_proposed(), [second]);
        assert_eq!(completed_ids(&duty.leader.state()), [2]);
        duty.stop().await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_new_leader_never_completes_the_old_leaders_checkpoint() {
        let mut old = Duty::start(|sessions| InMemoryLeader::new(running_job(), sessions));
        let first = old.triggered().await;
        old.ack("src", first);
        old.settle().await;

        // A new leader takes over with the committed state (checkpoint 1 triggered, not completed).
        old.leader.depose();
        let mut new = Duty::start(|sessions| old.leader.successor(sessions));
        // Executors report to the new leader what they owed the old one: it ignores them.
        new.ack("src", first);
        new.ack("out", first);
        let second = new.triggered().await;
        assert_eq!(
            second,
            CheckpointId(2),
            "the new leader continues above the old one's id"
        );

        // The old leader gets its last ack, but cannot commit any more: it aborts.
        old.ack("out", first);
        let (checkpoint_id, reason) = old.aborted().await;
        assert_eq!(checkpoint_id, first);
        assert!(reason.contains("could not commit"), "{reason}");
        assert_eq!(old.completions_proposed(), [first], "it tried, and was refused");
        old.stop().await;

        new.ack("src", second);
        new.ack("out", second);
        match new.next_command().await {
            ExecutorCommand::CheckpointComplete { checkpoint_id, .. } => assert_eq!(checkpoint_id, second),
            other => panic!("expected checkpoint 2 to complete, got {other:?}"),
        }
        assert_eq!(new.completions_proposed(), [second]);
        assert_eq!(completed_ids(&new.leader.state()), [2], "checkpoint 1 never completed");
        new.stop().await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_requested_rescale_goes_through_a_checkpoint_taken_with_paused_sources() {
        let mut duty = Duty::start(|sessions| InMemoryLeader::new(running_job(), sessions));
        let first = duty.triggered().await;
        duty.ack("src", first);
        duty.ack("out", first);
        assert!(matches!(
            duty.next_command().await,
            ExecutorCommand::CheckpointComplete { .. }
        ));

        duty.request_rescale("out", 2);
        let asked_at = Instant::now();
        let (second, pause) = duty.triggered_pausing().await;
        assert!(pause, "the rescale's checkpoint pauses the sources");
        assert!(
            asked_at.elapsed() < Duration::from_millis(INTERVAL_MS),
            "without waiting for the interval"
        );
        assert_eq!(duty.rescales_proposed(), 0, "not before its checkpoint completed");
        duty.ack("src", second);
        duty.ack("out", second);
        assert!(
            matches!(duty.next_command().await, ExecutorCommand::CheckpointComplete { checkpoint_id, .. } if checkpoint_id == second)
        );
        duty.settle().await;
        assert_eq!(duty.rescales_proposed(), 1);
        let state = duty.leader.state();
        let rescaled = &state.jobs[&job()];
        assert_eq!(rescaled.status, JobStatus::Restarting);
        assert_eq!(
            rescaled.checkpoints.back().map(|checkpoint| checkpoint.checkpoint_id),
            Some(second)
        );
        assert_eq!(
            rescaled.graph.operator("out").map(|operator| operator.parallelism),
            Some(2)
        );
        duty.stop().await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_rescale_aborts_the_regular_checkpoint_in_flight_instead_of_waiting_for_it() {
        let mut duty = Duty::start(|sessions| InMemoryLeader::new(running_job(), sessions));
        let regular = duty.triggered().await;
        duty.ack("src", regular);
        // `out` is still writing its state when the rescale is asked for.
        duty.request_rescale("out", 2);
        let (aborted, reason) = duty.aborted().await;
        assert_eq!(aborted, regular);
        assert!(reason.contains("rescale"), "{reason}");
        let (paused, pause) = duty.triggered_pausing().await;
        assert!(
            pause && paused > regular,
            "the rescale's own checkpoint follows at once"
        );
        // The late ack of the aborted checkpoint completes nothing.
        duty.ack("out", regular);
        duty.ack("src", paused);
        duty.ack("out", paused);
        assert!(
            matches!(duty.next_command().await, ExecutorCommand::CheckpointComplete { checkpoint_id, .. } if checkpoint_id == paused)
        );
        duty.settle().await;
        assert_eq!(duty.rescales_proposed(), 1);
        assert_eq!(completed_ids(&duty.leader.state()), [paused.0]);
        duty.stop().await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_rescale_whose_checkpoints_keep_failing_goes_ahead_from_the_latest_one() {
        let mut duty = Duty::start(|sessions| InMemoryLeader::new(running_job(), sessions));
        duty.request_rescale("out", 2);
        for attempt in 1..=RESCALE_CHECKPOINT_ATTEMPTS {
            let (checkpoint_id, pause) = duty.triggered_pausing().await;
            assert!(pause, "attempt {attempt}");
            // Nobody acknowledges: it times out, and the abort resumes the sources.
            match duty.next_command().await {
                ExecutorCommand::CheckpointAborted {
                    checkpoint_id: aborted, ..
                } => assert_eq!(aborted, checkpoint_id),
                other => panic!("expected the abort, got {other:?}"),
            }
            assert_eq!(duty.rescales_proposed(), 0);
        }
        duty.settle().await;
        assert_eq!(duty.rescales_proposed(), 1);
        let state = duty.leader.state();
        assert_eq!(state.jobs[&job()].status, JobStatus::Restarting);
        assert_eq!(state.jobs[&job()].pending_rescale, None);
        duty.stop().await;
    }
}
