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
    if job.status != JobStatus::Restarting || job.rescaling {
        return RestartDecision::Place;
    }
    let strategy = &job.graph.restart;
    // A strategy that forgets failures after a stable period counts the current run of them.
    let attempt = match strategy.reset_after_ms() {
        Some(_) => job.restart_streak.max(1),
        None => job.restart_count.max(1),
    };
    let max_attempts = strategy.max_attempts();
    let delay_ms = strategy.delay_ms(attempt);
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
    use crate::test_fixtures::{source_to_separate_sink, StateBuilder};
    use raftstream_api::checkpoint::SubtaskKey;
    use raftstream_api::ids::{ExecutorId, JobId, OperatorId};

    /// Job 1 (`src` on e1, `out` on e2) running with `restart` as its restart strategy.
    fn running_job(restart: &str) -> (State, JobId) {
        let state = StateBuilder::new()
            .executor("e1", 4)
            .executor("e2", 4)
            .job(source_to_separate_sink(&format!(r#""restart": {restart},"#)))
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

    /// Fails `src[0]` of job 1 at `at_ms` (a restart) and returns the scheduler's decision then;
    /// when that is to place it, places and runs it again on `e1`.
    fn fail_at(state: &mut State, at_ms: u64) -> RestartDecision {
        fail_at_without_placing(state, at_ms);
        let decision = restart_decision(&state.jobs[&JobId::from_number(1)], at_ms);
        if decision == RestartDecision::Place {
            place_and_run(state, at_ms);
        }
        decision
    }

    #[test]
    fn the_default_strategy_restarts_at_once_backs_off_when_failures_repeat_and_forgets_them_later() {
        let strategy = raftstream_api::spec::RestartStrategy::default();
        let delays: Vec<u64> = (1..=11).map(|attempt| strategy.delay_ms(attempt)).collect();
        assert_eq!(
            delays,
            [0, 100, 200, 400, 800, 1_600, 3_200, 6_400, 12_800, 25_600, 30_000]
        );
        let mut state = StateBuilder::new()
            .executor("e1", 4)
            .job(crate::test_fixtures::source_to_sink(""))
            .place_all(1, "e1")
            .running(1)
            .build();
        let job_id = JobId::from_number(1);
        // A failure after a stable period: placed again at once.
        assert_eq!(fail_at(&mut state, 1_000), RestartDecision::Place);
        // The next, 50 ms later, waits 100 ms; the one after that 200 ms.
        let second = 1_050;
        fail_at_without_placing(&mut state, second);
        assert_eq!(
            restart_decision(&state.jobs[&job_id], second + 99),
            RestartDecision::Wait
        );
        assert_eq!(
            restart_decision(&state.jobs[&job_id], second + 100),
            RestartDecision::Place
        );
        place_and_run(&mut state, second + 100);
        fail_at_without_placing(&mut state, 1_200);
        assert_eq!(restart_decision(&state.jobs[&job_id], 1_399), RestartDecision::Wait);
        place_and_run(&mut state, 1_400);
        assert_eq!(state.jobs[&job_id].restart_streak, 3);
        // A checkpoint completed after the restart is progress: the run is over.
        crate::test_fixtures::apply_ok(&mut state, Command::TriggerCheckpoint { job_id, at_ms: 1_500 });
        let checkpoint_id = state.jobs[&job_id].last_triggered_checkpoint_id.expect("triggered");
        let checkpoint = raftstream_api::checkpoint::CompletedCheckpoint {
            checkpoint_id,
            epoch: raftstream_api::ids::Epoch(0),
            task_states: Vec::new(),
            source_offsets: Default::default(),
            size_bytes: 0,
            completed_at_ms: 1_510,
            triggered_at_ms: 1_500,
            acknowledged_epochs: Default::default(),
            trigger: Default::default(),
        };
        crate::test_fixtures::apply_ok(
            &mut state,
            Command::CompleteCheckpoint {
                job_id,
                checkpoint,
                savepoint: false,
            },
        );
        assert_eq!(state.jobs[&job_id].restart_streak, 0);
        assert_eq!(
            fail_at(&mut state, 1_600),
            RestartDecision::Place,
            "so the next is at once"
        );
        // Ten minutes without a failure: the next starts a new run, at once.
        assert_eq!(fail_at(&mut state, 1_600 + 600_000), RestartDecision::Place);
        assert_eq!(state.jobs[&job_id].restart_streak, 1);
        // A function that fails every record: ten restarts in a row, then the job fails for good.
        let mut at_ms = 1_600 + 600_000;
        let mut gave_up = None;
        for _ in 0..20 {
            at_ms += 10;
            fail_at_without_placing(&mut state, at_ms);
            let job = &state.jobs[&job_id];
            match restart_decision(job, at_ms + 60_000) {
                RestartDecision::GiveUp(reason) => {
                    gave_up = Some((job.restart_streak, reason));
                    break;
                }
                _ => place_and_run(&mut state, at_ms),
            }
        }
        let (streak, reason) = gave_up.expect("it gives up");
        assert_eq!(streak, 11, "the eleventh restart in a row is refused");
        assert!(reason.contains("gave up after 10 restart attempts"), "{reason}");
    }

    fn fail_at_without_placing(state: &mut State, at_ms: u64) {
        let job_id = JobId::from_number(1);
        let epoch = state.jobs[&job_id].assignments[&crate::test_fixtures::subtask("src", 0)].epoch;
        crate::test_fixtures::apply_ok(
            state,
            Command::FailSubtask {
                job_id,
                subtask: crate::test_fixtures::subtask("src", 0),
                epoch,
                reason: "the user's function threw".into(),
                fatal: false,
                at_ms,
            },
        );
    }

    fn place_and_run(state: &mut State, at_ms: u64) {
        let job_id = JobId::from_number(1);
        for operator in ["src", "out"] {
            crate::test_fixtures::apply_ok(
                state,
                Command::AssignSubtask {
                    job_id,
                    subtask: crate::test_fixtures::subtask(operator, 0),
                    executor_id: ExecutorId("e1".into()),
                    at_ms,
                },
            );
        }
        crate::test_fixtures::apply_ok(
            state,
            Command::TransitionJob {
                job_id,
                to: JobStatus::Running,
                reason: String::new(),
                at_ms,
                deployed_through_epoch: None,
            },
        );
    }
}
