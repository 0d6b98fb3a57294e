//! Duties that only the leader performs, started when this node becomes leader and stopped (by
//! cancellation token) when it stops being one:
//!
//! - [`failure_detector`]: executor leases in memory; only "dead" is committed through Raft;
//! - [`scheduler`]: places waiting subtasks on live executors (each placement a new epoch), deploys
//!   a job once all its subtasks have a place, restarts jobs per their restart strategy, ends
//!   cancellations, marks finished jobs and tells drained executors to exit;
//! - [`checkpoint_coordinator`]: triggers checkpoints, collects acknowledgements, commits them,
//!   aborts what times out, and commits rescales and moves once their checkpoint completed;
//! - [`autoscaler`]: grows `parallelism: auto` jobs when executors join, shrinks those that cannot
//!   get their slots back;
//! - [`skew_watch`]: switches `two_phase: auto` operators to two phases when one subtask takes
//!   far more than the mean input.
//!
//! Executor sessions ([`sessions`]) serve every executor's stream to the leader. The decisions
//! are pure functions ([`placement`], [`reconcile`], [`checkpoints`]) so they are tested without
//! sockets; the loops only read state, propose commands and send messages.

pub mod autoscaler;
pub mod checkpoint_coordinator;
pub mod checkpoints;
pub mod context;
pub mod deploy;
mod failure_detector;
pub mod placement;
mod scheduler;
pub mod sessions;
pub mod skew_watch;
mod ticker;

use std::collections::HashSet;
use std::time::Duration;

use openraft::ServerState;
use serde::{Deserialize, Serialize};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::context::CoordinatorContext;
use crate::state_machine::State;
use failure_detector::failure_detector;
use raftstream_api::ids::ExecutorId;
use scheduler::scheduler;

use context::RaftLeaderContext;
use raftstream_api::messages::{ExecutorCommand, TaskRef};
use sessions::{assigned_tasks, ExecutorSessions};

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
                let span = tracing::info_span!("leader", node_id = self.context.node_id.0, term);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_fixtures::{executor_id, source_to_sink, StateBuilder};
    use raftstream_api::checkpoint::SubtaskKey;
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
                operator_id: operator.into(),
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
