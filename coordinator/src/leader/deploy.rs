//! Deploying a job to executors: a subtask is started only once every subtask of its job has a
//! place, so each one knows where its peers run; all of them restore from the same checkpoint (the
//! latest completed one in the Raft state, never anything an executor remembers).

use crate::state_machine::{JobRecord, JobStatus, State};
use raftstream_api::messages::{PlacedSubtask, TaskDeployment, TaskRef};

/// Whether every subtask of `job` has an executor.
pub fn is_fully_placed(job: &JobRecord) -> bool {
    job.assignments
        .values()
        .all(|assignment| assignment.executor_id.is_some())
}

/// Whether the job's subtasks may run (it is neither ended nor being cancelled).
pub fn is_deployable(job: &JobRecord) -> bool {
    matches!(
        job.status,
        JobStatus::Submitted | JobStatus::Running | JobStatus::Restarting
    ) && is_fully_placed(job)
}

/// What to send an executor so it starts `task`; `None` when the task is not (or no longer) part of
/// a deployable job at that epoch.
pub fn deployment(state: &State, task: &TaskRef) -> Option<TaskDeployment> {
    let job = state.jobs.get(&task.job_id)?;
    if !is_deployable(job) || job.assignments.get(&task.subtask)?.epoch != task.epoch {
        return None;
    }
    let mut placement = Vec::with_capacity(job.assignments.len());
    for (subtask, assignment) in &job.assignments {
        let executor_id = assignment.executor_id.clone()?;
        let executor_address = state.executors.get(&executor_id)?.address.clone();
        placement.push(PlacedSubtask {
            subtask: subtask.clone(),
            executor_id,
            executor_address,
            epoch: assignment.epoch,
        });
    }
    Some(TaskDeployment {
        task: task.clone(),
        graph: std::sync::Arc::new(job.graph.clone()),
        placement,
        restore_from: job.checkpoints.back().cloned(),
    })
}

/// Every placed subtask of `job` with its executor, for messages that concern the whole job.
pub fn placed_tasks(job: &JobRecord) -> Vec<(raftstream_api::ids::ExecutorId, TaskRef)> {
    job.assignments
        .iter()
        .filter_map(|(subtask, assignment)| {
            Some((
                assignment.executor_id.clone()?,
                TaskRef {
                    job_id: job.job_id,
                    subtask: subtask.clone(),
                    epoch: assignment.epoch,
                },
            ))
        })
        .collect()
}

/// The executors that run some subtask of `job`, each once.
pub fn executors_of(job: &JobRecord) -> Vec<raftstream_api::ids::ExecutorId> {
    let mut executors: Vec<_> = placed_tasks(job).into_iter().map(|(executor, _)| executor).collect();
    executors.sort();
    executors.dedup();
    executors
}

/// What the scheduler does with a job in `Restarting`, per its restart strategy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RestartDecision {
    /// Place its subtasks now.
    Place,
    /// The strategy's delay has not passed yet.
    Wait,
    /// Out of attempts: the job fails with this reason.
    GiveUp(String),
}

/// Decides about a restarting job at `now_ms` (the job entered `Restarting` at `updated_at_ms`).
pub fn restart_decision(job: &JobRecord, now_ms: u64) -> RestartDecision {
    use raftstream_api::spec::RestartStrategy;
    if job.status != JobStatus::Restarting || job.rescaling {
        return RestartDecision::Place;
    }
    let attempt = job.restart_count.max(1);
    let (max_attempts, delay_ms) = match &job.graph.restart {
        RestartStrategy::None => (0, 0),
        RestartStrategy::FixedDelay { max_attempts, delay_ms } => (*max_attempts, *delay_ms),
        RestartStrategy::ExponentialBackoff {
            max_attempts,
            initial_delay_ms,
            max_delay_ms,
        } => {
            let factor = 1u64.checked_shl(attempt.saturating_sub(1).min(62)).unwrap_or(u64::MAX);
            (
                *max_attempts,
                initial_delay_ms.saturating_mul(factor).min(*max_delay_ms),
            )
        }
    };
    if attempt > max_attempts {
        return RestartDecision::GiveUp(format!(
            "gave up after {max_attempts} restart attempts; last failure: {}",
            job.status_reason
        ));
    }
    if now_ms < job.updated_at_ms.saturating_add(delay_ms) {
        RestartDecision::Wait
    } else {
        RestartDecision::Place
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state_machine::{apply, Command};
    use crate::test_fixtures::{source_to_sink, StateBuilder};
    use raftstream_api::checkpoint::SubtaskKey;
    use raftstream_api::ids::{ExecutorId, JobId, OperatorId};

    /// Job 1 (`src` on e1, `out` on e2) running with `restart` as its restart strategy.
    fn running_job(restart: &str) -> (State, JobId) {
        let state = StateBuilder::new()
            .executor("e1", 4)
            .executor("e2", 4)
            .job(source_to_sink(&format!(r#""restart": {restart},"#)))
            .place(1, "src", 0, "e1")
            .place(1, "out", 0, "e2")
            .running(1)
            .build();
        (state, JobId::from_number(1))
    }

    #[test]
    fn deployments_name_every_peer_and_the_latest_checkpoint_only_when_fully_placed() {
        let (mut state, job_id) = running_job(r#"{"strategy": "none"}"#);
        let task = |operator: &str, epoch: u64| TaskRef {
            job_id,
            subtask: SubtaskKey {
                operator_id: operator.into(),
                subtask_index: 0,
            },
            epoch: raftstream_api::ids::Epoch(epoch),
        };
        let deployed = deployment(&state, &task("out", 2)).expect("fully placed");
        let addresses: Vec<&str> = deployed
            .placement
            .iter()
            .map(|placed| placed.executor_address.as_str())
            .collect();
        assert_eq!(addresses, vec!["e2:1", "e1:1"], "ordered by operator id");
        assert!(deployment(&state, &task("out", 1)).is_none(), "stale epoch");
        let dead = Command::MarkExecutorDead {
            executor_id: ExecutorId("e1".to_owned()),
            at_ms: 10,
        };
        assert!(apply(&mut state, dead).is_ok());
        let job = &state.jobs[&job_id];
        assert_eq!(job.status, JobStatus::Restarting, "{}", job.status_reason);
        assert!(
            job.assignments.values().all(|a| a.executor_id.is_none()),
            "all released"
        );
        assert!(deployment(&state, &task("out", 2)).is_none());
        assert!(matches!(restart_decision(job, 10), RestartDecision::GiveUp(reason) if reason.contains("e1")));
    }

    #[test]
    fn restart_strategies_wait_their_delay_and_give_up_after_max_attempts() {
        let (mut state, job_id) = running_job(
            r#"{"strategy": "exponential_backoff", "max_attempts": 2, "initial_delay_ms": 100, "max_delay_ms": 150}"#,
        );
        let fail = |state: &mut State, at_ms: u64| {
            let epoch = state.jobs[&job_id].assignments.values().next().map(|a| a.epoch);
            let command = Command::FailSubtask {
                job_id,
                subtask: SubtaskKey {
                    operator_id: OperatorId::from("out"),
                    subtask_index: 0,
                },
                epoch: epoch.unwrap_or(raftstream_api::ids::Epoch(0)),
                reason: "boom".to_owned(),
                fatal: false,
                at_ms,
            };
            apply(state, command)
        };
        assert!(fail(&mut state, 1_000).is_ok());
        let job = &state.jobs[&job_id];
        assert_eq!(restart_decision(job, 1_099), RestartDecision::Wait);
        assert_eq!(restart_decision(job, 1_100), RestartDecision::Place);
        // Back to running, fail again: the second delay doubles but is capped.
        for (operator, executor) in [("src", "e1"), ("out", "e2")] {
            let command = Command::AssignSubtask {
                job_id,
                subtask: SubtaskKey {
                    operator_id: operator.into(),
                    subtask_index: 0,
                },
                executor_id: ExecutorId(executor.to_owned()),
                at_ms: 1_100,
            };
            assert!(apply(&mut state, command).is_ok());
        }
        let running = Command::TransitionJob {
            job_id,
            to: JobStatus::Running,
            reason: String::new(),
            at_ms: 1_100,
            deployed_through_epoch: None,
        };
        assert!(apply(&mut state, running).is_ok());
        let out_epoch = state.jobs[&job_id].assignments.values().next().map(|a| a.epoch);
        let stale = Command::FailSubtask {
            job_id,
            subtask: SubtaskKey {
                operator_id: OperatorId::from("out"),
                subtask_index: 0,
            },
            epoch: raftstream_api::ids::Epoch(1),
            reason: "zombie".to_owned(),
            fatal: false,
            at_ms: 1_200,
        };
        assert!(out_epoch != Some(raftstream_api::ids::Epoch(1)));
        assert!(
            apply(&mut state, stale).is_err(),
            "a stale epoch cannot restart the job"
        );
        assert!(fail(&mut state, 2_000).is_ok());
        let job = &state.jobs[&job_id];
        assert_eq!(job.restart_count, 2);
        assert_eq!(restart_decision(job, 2_149), RestartDecision::Wait);
        assert_eq!(restart_decision(job, 2_150), RestartDecision::Place);
        assert!(fail(&mut state, 3_000).is_err(), "not running: nothing to fail");
    }
}
