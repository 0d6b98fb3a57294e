//! Duties that only the leader performs, started when this node becomes leader and stopped (by
//! cancellation token) when it stops being one:
//!
//! - failure detector: executor leases in memory; only "dead" is committed through Raft;
//! - scheduler: places waiting subtasks on live executors (each placement a new epoch), deploys a
//!   job once all its subtasks have a place, restarts jobs per their restart strategy, ends
//!   cancellations and marks finished jobs;
//! - checkpoint coordinator ([`checkpoint_coordinator`]).
//!
//! The decisions are pure functions ([`placement`], [`reconcile`]) so they are tested without
//! sockets; the loops here only read state, propose commands and send messages.

pub mod autoscaler;
pub mod checkpoint_coordinator;
pub mod checkpoints;
pub mod context;
pub mod deploy;
pub mod placement;
pub mod sessions;
pub mod skew_watch;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use futures::StreamExt;
use openraft::ServerState;
use serde::{Deserialize, Serialize};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::context::CoordinatorContext;
use crate::error::CoordinatorError;
use crate::state_machine::{Command, JobStatus, Rejection, Response, State};
use raftstream_api::checkpoint::SavepointRef;
use raftstream_api::ids::{Epoch, ExecutorId, JobId};

pub use context::{LeaderContext, RaftLeaderContext};
pub use placement::{plan_placements, Placement};
pub use sessions::{
    assigned_tasks, DeathCause, ExecutorCommand, ExecutorEvent, ExecutorSessions, PlacedSubtask, SessionEnded,
    TaskDeployment, TaskRef,
};

/// Heartbeat and lease settings for executors.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ExecutorSettings {
    pub heartbeat_interval_ms: u64,
    pub lease_timeout_ms: u64,
    /// How long an executor whose session broke with a transport error (its process died, its
    /// socket was reset) may take to reconnect before it is declared dead without waiting out
    /// its lease. The lease stays the detector of silent failures (pause, partition).
    pub session_break_grace_ms: u64,
    /// How often the scheduler looks for waiting subtasks.
    pub scheduling_interval_ms: u64,
}

impl Default for ExecutorSettings {
    fn default() -> Self {
        ExecutorSettings {
            heartbeat_interval_ms: 250,
            lease_timeout_ms: 1_500,
            session_break_grace_ms: 300,
            scheduling_interval_ms: 100,
        }
    }
}

/// What an executor must be told so that what it runs matches `state`: cancel what it runs but no
/// longer owns (or owns at another epoch), assign what it owns but does not report.
pub fn reconcile(state: &State, executor_id: &ExecutorId, reported: &[TaskRef]) -> Vec<ExecutorCommand> {
    let owned: HashSet<TaskRef> = assigned_tasks(state, executor_id).into_iter().collect();
    let running: HashSet<&TaskRef> = reported.iter().collect();
    let mut commands: Vec<ExecutorCommand> = reported
        .iter()
        .filter(|task| !owned.contains(*task))
        .cloned()
        .map(ExecutorCommand::Cancel)
        .collect();
    let mut missing: Vec<&TaskRef> = owned.iter().filter(|task| !running.contains(task)).collect();
    missing.sort_by(|a, b| (&a.job_id, &a.subtask).cmp(&(&b.job_id, &b.subtask)));
    // Only subtasks of fully placed jobs start: they must know where their peers run.
    commands.extend(
        missing
            .into_iter()
            .filter_map(|task| deploy::deployment(state, task))
            .map(|deployment| ExecutorCommand::Assign(Box::new(deployment))),
    );
    commands
}

/// Starts and stops the leader-only loops as leadership comes and goes.
pub struct LeaderDuties {
    context: CoordinatorContext,
    sessions: ExecutorSessions,
    settings: ExecutorSettings,
}

impl LeaderDuties {
    /// Duties for the coordinator behind `context`.
    pub fn new(context: CoordinatorContext, sessions: ExecutorSessions, settings: ExecutorSettings) -> Self {
        LeaderDuties {
            context,
            sessions,
            settings,
        }
    }

    /// Runs until `shutdown` is cancelled.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut metrics = self.context.raft.metrics();
        let mut running: Option<(CancellationToken, JoinSet<()>)> = None;
        loop {
            let is_leader = {
                let now = metrics.borrow();
                // Raft §8: a new leader learns what is committed only by committing an entry of
                // its own term (openraft appends a blank one). Until it has applied that entry,
                // its state may lack placements and checkpoints the previous leader committed,
                // and duties or sessions served from it would undo them: an executor handed such
                // a stale assignment list stopped subtasks the cluster still ran, and their
                // restart at the same epochs deleted pending sink files a checkpoint then named.
                now.state == ServerState::Leader
                    && now
                        .last_applied
                        .is_some_and(|applied| applied.leader_id.term == now.current_term)
            };
            if is_leader && running.is_none() {
                let term = metrics.borrow().current_term;
                tracing::info!(term, "became leader: starting failure detector and scheduler");
                let (leadership, events) = self.sessions.begin_leadership();
                let duty_token = leadership.child_token();
                let mut tasks = JoinSet::new();
                let span = tracing::info_span!("leader", node_id = self.context.node_id, term);
                let duties = RaftLeaderContext::new(self.context.clone(), self.sessions.clone());
                tasks.spawn(
                    failure_detector(duties.clone(), self.settings.clone(), duty_token.clone())
                        .instrument(span.clone()),
                );
                tasks.spawn(
                    scheduler(duties.clone(), self.settings.clone(), duty_token.clone()).instrument(span.clone()),
                );
                tasks.spawn(autoscaler::run(duties.clone(), duty_token.clone()).instrument(span.clone()));
                tasks.spawn(skew_watch::run(duties.clone(), duty_token.clone()).instrument(span.clone()));
                tasks.spawn(checkpoint_coordinator::run(duties, events, duty_token.clone()).instrument(span));
                running = Some((duty_token, tasks));
            } else if !is_leader && running.is_some() {
                tracing::info!("stopped leading: stopping leader duties");
                self.stop(running.take()).await;
            }
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                changed = metrics.changed() => if changed.is_err() { break },
            }
        }
        self.stop(running.take()).await;
    }

    async fn stop(&self, running: Option<(CancellationToken, JoinSet<()>)>) {
        self.sessions.end_leadership();
        if let Some((token, mut tasks)) = running {
            token.cancel();
            let drained = tokio::time::timeout(Duration::from_secs(5), async {
                while tasks.join_next().await.is_some() {}
            })
            .await;
            if drained.is_err() {
                tracing::warn!("leader duties did not stop within 5 s");
            }
        }
    }
}

fn alive_executors(state: &State) -> Vec<ExecutorId> {
    state
        .executors
        .values()
        .filter(|executor| executor.alive)
        .map(|executor| executor.executor_id.clone())
        .collect()
}

/// How often a suspect's address is probed again while it still accepts connections.
const PROBE_REPEAT: Duration = Duration::from_millis(20);

async fn failure_detector<C: LeaderContext>(context: C, settings: ExecutorSettings, shutdown: CancellationToken) {
    let sessions = context.sessions();
    let lease_timeout = Duration::from_millis(settings.lease_timeout_ms);
    let grace = Duration::from_millis(settings.session_break_grace_ms);
    let check_every = (lease_timeout / 10).min(grace / 4).max(Duration::from_millis(10));
    let suspicion_changed = sessions.suspicion_changed();
    // Probes of suspects' addresses, tracked so that they end with the duty.
    let mut probes: JoinSet<()> = JoinSet::new();
    loop {
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            _ = suspicion_changed.notified() => {}
            _ = tokio::time::sleep(check_every) => {}
        }
        while probes.try_join_next().is_some() {}
        for probe in sessions.take_probe_requests() {
            let Some(address) = context.read_state(|state| {
                state
                    .executors
                    .get(&probe.executor_id)
                    .map(|executor| executor.address.clone())
            }) else {
                continue;
            };
            let context = context.clone();
            probes.spawn(async move {
                // A process being killed closes its connections and its listening socket one by
                // one: the session may break while the listener still accepts. So the probe is
                // repeated until it is refused, the suspicion ends, or the grace is over.
                let deadline = Instant::now() + grace;
                while Instant::now() < deadline && context.sessions().is_suspect(&probe) {
                    if context.nothing_listens_at(&address).await {
                        tracing::debug!(executor_id = %probe.executor_id, %address, "nothing listens at a suspect's address");
                        context.sessions().confirm_gone(&probe);
                        return;
                    }
                    tokio::time::sleep(PROBE_REPEAT).await;
                }
            });
        }
        let alive = context.read_state(alive_executors);
        for (executor_id, cause) in sessions.expired(&alive, lease_timeout, grace, Instant::now()) {
            match context
                .propose(Command::MarkExecutorDead {
                    executor_id: executor_id.clone(),
                    at_ms: context.now_ms(),
                })
                .await
            {
                Ok(Response::ExecutorMarkedDead { orphaned_subtasks, .. }) => {
                    tracing::info!(executor_id = %executor_id, orphaned_subtasks, lease_timeout_ms = settings.lease_timeout_ms, grace_ms = settings.session_break_grace_ms, cause = cause.describe(), "executor declared dead");
                    sessions.remove(&executor_id);
                    // The scheduler places the orphans at once instead of at its next round.
                    sessions.placements_wanted().notify_one();
                }
                Ok(other) => {
                    tracing::warn!(executor_id = %executor_id, response = ?other, "unexpected answer to MarkExecutorDead")
                }
                Err(error) => {
                    tracing::warn!(executor_id = %executor_id, error = %raftstream_observability::chain(&error), "could not declare executor dead")
                }
            }
        }
    }
    probes.shutdown().await;
}

async fn scheduler<C: LeaderContext>(context: C, settings: ExecutorSettings, shutdown: CancellationToken) {
    let sessions = context.sessions();
    let lease_timeout = Duration::from_millis(settings.lease_timeout_ms);
    let interval = Duration::from_millis(settings.scheduling_interval_ms.max(1));
    // When each drained executor was last told to exit (it may miss one message; no need to
    // repeat it every round).
    let mut told_drained: std::collections::HashMap<ExecutorId, Instant> = std::collections::HashMap::new();
    let placements_wanted = sessions.placements_wanted();
    loop {
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => return,
            _ = placements_wanted.notified() => {}
            _ = tokio::time::sleep(interval) => {}
        }
        let round = context.read_state(|state| plan_round(state, sessions, lease_timeout, context.now_ms()));
        told_drained.retain(|executor_id, _| round.drained.contains(executor_id));
        for executor_id in &round.drained {
            let due = told_drained
                .get(executor_id)
                .is_none_or(|told| told.elapsed() >= DRAINED_REPEAT);
            if due && sessions.send(executor_id, ExecutorCommand::Drained) {
                tracing::info!(%executor_id, "executor drained: every subtask moved elsewhere; told to exit");
                told_drained.insert(executor_id.clone(), Instant::now());
            }
        }
        for (job_id, reason) in round.give_up {
            let command = Command::TransitionJob {
                job_id,
                to: JobStatus::Failed,
                reason: reason.clone(),
                at_ms: context.now_ms(),
                deployed_through_epoch: None,
            };
            match context.propose(command).await {
                Ok(_) => tracing::warn!(job_id = %job_id, reason, "job failed"),
                Err(error) => {
                    tracing::debug!(job_id = %job_id, error = %raftstream_observability::chain(&error), "could not fail the job")
                }
            }
        }
        // Placements are proposed together, in order: openraft appends and replicates them as
        // one batch, so a restarting job's subtasks are placed in about one round trip instead of
        // one per subtask (ten times the replication latency under a slow network).
        let placing = futures::stream::iter(round.placements)
            .map(|placement| place(&context, placement))
            .buffered(MAX_PLACEMENTS_IN_FLIGHT)
            .collect::<Vec<()>>();
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => return,
            _ = placing => {}
        }
        deploy_ready_jobs(&context).await;
        for (job_id, placed) in round.cancelling {
            for (executor_id, task) in placed {
                sessions.send(&executor_id, ExecutorCommand::Cancel(task));
            }
            // Executors that miss the message are told again by heartbeat reconciliation.
            let command = Command::TransitionJob {
                job_id,
                to: JobStatus::Cancelled,
                reason: "cancelled by request".to_owned(),
                at_ms: context.now_ms(),
                deployed_through_epoch: None,
            };
            match context.propose(command).await {
                Ok(_) => {
                    let told = sessions.send_to_all(&ExecutorCommand::DiscardJobState(job_id));
                    tracing::info!(job_id = %job_id, executors_told_to_discard_state = told, "job cancelled; its subtasks were told to stop");
                }
                Err(error) => {
                    tracing::debug!(job_id = %job_id, error = %raftstream_observability::chain(&error), "could not finish cancelling")
                }
            }
        }
        for (job_id, stopped_at) in round.finished {
            let (to, reason) = match stopped_at {
                Some(savepoint) => (
                    JobStatus::Stopped,
                    format!("stopped with savepoint {savepoint}: every subtask published its output"),
                ),
                None => (
                    JobStatus::Finished,
                    "every subtask reached the end of its input and published its output".to_owned(),
                ),
            };
            let command = Command::TransitionJob {
                job_id,
                to,
                reason,
                at_ms: context.now_ms(),
                deployed_through_epoch: None,
            };
            match context.propose(command).await {
                Ok(_) => {
                    // A savepoint's state lives apart from the job's, so it stays.
                    let told = sessions.send_to_all(&ExecutorCommand::DiscardJobState(job_id));
                    tracing::info!(job_id = %job_id, status = %to, executors_told_to_discard_state = told, "job ended");
                }
                Err(error) => {
                    tracing::debug!(job_id = %job_id, error = %raftstream_observability::chain(&error), "could not mark the job finished")
                }
            }
        }
    }
}

/// How often a drained executor that is still connected is told again to exit.
const DRAINED_REPEAT: Duration = Duration::from_secs(1);

/// Placement proposals in flight at once in one scheduling round.
const MAX_PLACEMENTS_IN_FLIGHT: usize = 64;

/// What one scheduling round does, decided from one read of the state.
struct Round {
    give_up: Vec<(JobId, String)>,
    placements: Vec<Placement>,
    cancelling: Vec<(JobId, Vec<(ExecutorId, TaskRef)>)>,
    /// Jobs whose every task finished, with the savepoint they stop with, if they stop.
    finished: Vec<(JobId, Option<SavepointRef>)>,
    /// Draining executors that hold no subtask any more: they may exit.
    drained: Vec<ExecutorId>,
}

fn plan_round(state: &State, sessions: &ExecutorSessions, lease_timeout: Duration, now: u64) -> Round {
    let live = sessions.live(&alive_executors(state), lease_timeout);
    let mut give_up = Vec::new();
    let mut waiting = HashSet::new();
    for job in state.jobs.values() {
        match deploy::restart_decision(job, now) {
            deploy::RestartDecision::Place => {}
            deploy::RestartDecision::Wait => {
                waiting.insert(job.job_id);
            }
            deploy::RestartDecision::GiveUp(reason) => {
                waiting.insert(job.job_id);
                give_up.push((job.job_id, reason));
            }
        }
    }
    let placements = plan_placements(state, &live)
        .into_iter()
        .filter(|placement| !waiting.contains(&placement.job_id))
        .collect();
    let cancelling = state
        .jobs
        .values()
        .filter(|job| job.status == JobStatus::Cancelling)
        .map(|job| (job.job_id, deploy::placed_tasks(job)))
        .collect();
    let finished_tasks = sessions.finished();
    let finished = state
        .jobs
        .values()
        .filter(|job| job.status == JobStatus::Running && deploy::is_fully_placed(job))
        .filter(|job| {
            deploy::placed_tasks(job)
                .iter()
                .all(|(_, task)| finished_tasks.contains(task))
        })
        .map(|job| {
            let stopped_at = job.stopping_at.map(|savepoint_id| SavepointRef {
                job_id: job.job_id,
                savepoint_id,
            });
            (job.job_id, stopped_at)
        })
        .collect();
    let drained = state
        .executors
        .values()
        .filter(|executor| executor.alive && executor.draining)
        .filter(|executor| state.used_slots(&executor.executor_id) == 0)
        .map(|executor| executor.executor_id.clone())
        .collect();
    Round {
        give_up,
        placements,
        cancelling,
        finished,
        drained,
    }
}

async fn place<C: LeaderContext>(context: &C, placement: Placement) {
    let Placement {
        job_id,
        subtask,
        executor_id,
    } = placement;
    let command = Command::AssignSubtask {
        job_id,
        subtask: subtask.clone(),
        executor_id: executor_id.clone(),
        at_ms: context.now_ms(),
    };
    match context.propose(command).await {
        Ok(Response::SubtaskAssigned { epoch, .. }) => {
            tracing::info!(job_id = %job_id, operator_id = %subtask.operator_id, subtask_index = subtask.subtask_index, executor_id = %executor_id, epoch = epoch.0, "subtask placed");
        }
        Ok(other) => tracing::warn!(response = ?other, "unexpected answer to AssignSubtask"),
        // A race with a cancel or an executor death: the next round decides again.
        Err(error) => {
            tracing::debug!(job_id = %job_id, error = %raftstream_observability::chain(&error), "placement refused")
        }
    }
}

/// Sends every subtask of each newly fully placed job to its executor and marks the job running.
async fn deploy_ready_jobs<C: LeaderContext>(context: &C) {
    let ready: Vec<(JobId, Epoch, Vec<(ExecutorId, TaskDeployment)>)> = context.read_state(|state| {
        state
            .jobs
            .values()
            .filter(|job| matches!(job.status, JobStatus::Submitted | JobStatus::Restarting))
            .filter(|job| deploy::is_fully_placed(job))
            .map(|job| {
                let deployments = deploy::placed_tasks(job)
                    .into_iter()
                    .filter_map(|(executor_id, task)| Some((executor_id, deploy::deployment(state, &task)?)))
                    .collect();
                (job.job_id, job.last_epoch, deployments)
            })
            .collect()
    });
    for (job_id, deployed_through_epoch, deployments) in ready {
        let restore_from = deployments.first().and_then(|(_, deployment)| {
            deployment
                .restore_from
                .as_ref()
                .map(|checkpoint| checkpoint.checkpoint_id.0)
        });
        let command = Command::TransitionJob {
            job_id,
            to: JobStatus::Running,
            reason: match restore_from {
                Some(id) => format!("restored from checkpoint {id}"),
                None => String::new(),
            },
            at_ms: context.now_ms(),
            // The state read above may be outdated by the time this entry applies (an executor
            // declared dead in between releases its subtasks): then the start is refused and the
            // next round places and deploys again.
            deployed_through_epoch: Some(deployed_through_epoch),
        };
        if let Some(hold_ms) = crate::failpoints::value(crate::failpoints::HOLD_JOB_START_MS) {
            tracing::warn!(job_id = %job_id, deployed_through_epoch = deployed_through_epoch.0, hold_ms, "failpoint: holding the job's start");
            tokio::time::sleep(Duration::from_millis(hold_ms)).await;
        }
        match context.propose(command).await {
            Ok(_) => {}
            Err(CoordinatorError::Rejected(rejection @ Rejection::DeploymentOutdated { .. })) => {
                tracing::info!(job_id = %job_id, %rejection, "job start refused; it is placed and deployed again");
                continue;
            }
            Err(error) => {
                tracing::debug!(job_id = %job_id, error = %raftstream_observability::chain(&error), "could not start the job");
                continue;
            }
        }
        tracing::info!(job_id = %job_id, subtasks = deployments.len(), restore_from, "job deployed");
        for (executor_id, deployment) in deployments {
            context
                .sessions()
                .send(&executor_id, ExecutorCommand::Assign(Box::new(deployment)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state_machine::SubtaskKey;
    use crate::test_fixtures::{executor_id, source_to_sink, StateBuilder};
    use raftstream_api::ids::{Epoch, JobId};

    #[test]
    fn reconcile_cancels_stale_epochs_and_resends_missing_assignments() {
        let state = StateBuilder::new()
            .executor("e1", 4)
            .job(source_to_sink(""))
            .place(1, "src", 0, "e1")
            .place(1, "out", 0, "e1")
            .build();
        let executor = executor_id("e1");
        let job_id = JobId::from_number(1);
        let task = |operator: &str, epoch: u64| TaskRef {
            job_id,
            subtask: SubtaskKey {
                operator_id: operator.to_owned(),
                subtask_index: 0,
            },
            epoch: Epoch(epoch),
        };
        // It runs src at an old epoch and a task of a job it never had; out is missing.
        let reported = vec![task("src", 1), task("gone", 9)];
        let commands = reconcile(&state, &executor, &reported);
        assert_eq!(commands.len(), 2, "{commands:?}");
        assert_eq!(commands[0], ExecutorCommand::Cancel(task("gone", 9)));
        assert!(
            matches!(&commands[1], ExecutorCommand::Assign(deployment) if deployment.task == task("out", 2) && deployment.placement.len() == 2),
            "{commands:?}"
        );
        assert!(reconcile(&state, &executor, &[task("src", 1), task("out", 2)]).is_empty());
    }
}
