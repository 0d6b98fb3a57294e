//! The invariants every applied command keeps, asserted with `debug_assert!` after each `apply` for
//! the part of the state the command touched. Tests, the demo and the benchmarks build with debug
//! assertions, so a violation stops the process at the log entry that caused it instead of
//! surfacing later as lost or duplicated output. The property test in `tests.rs` checks the whole
//! state after random command sequences; this checks real clusters' logs, cheaply.

use std::collections::BTreeMap;

use super::{ApplyResult, Command, ExecutorRecord, JobRecord, Response, State};
use raftstream_api::ids::{ExecutorId, JobId};

/// The records a command may change, as they were before it applied.
pub(super) struct Touched {
    job_id: Option<JobId>,
    executor_id: Option<ExecutorId>,
    jobs: BTreeMap<JobId, JobRecord>,
    executor: Option<ExecutorRecord>,
}

/// Copies what `command` may change out of `state`, before it applies.
pub(super) fn before(state: &State, command: &Command) -> Touched {
    let (job_id, executor_id) = match command {
        Command::SubmitJob { .. } | Command::DeleteSavepoint { .. } => (None, None),
        Command::CancelJob { job_id, .. }
        | Command::TransitionJob { job_id, .. }
        | Command::TriggerCheckpoint { job_id, .. }
        | Command::CompleteCheckpoint { job_id, .. }
        | Command::RescaleJob { job_id, .. }
        | Command::RequestRescale { job_id, .. }
        | Command::RequestSavepoint { job_id, .. }
        | Command::RelocateJob { job_id, .. }
        | Command::RequestTwoPhase { job_id, .. }
        | Command::SwitchTwoPhase { job_id, .. }
        | Command::FailSavepoint { job_id, .. }
        | Command::FailSubtask { job_id, .. } => (Some(*job_id), None),
        Command::AssignSubtask {
            job_id, executor_id, ..
        } => (Some(*job_id), Some(executor_id.clone())),
        Command::RegisterExecutor { executor_id, .. }
        | Command::MarkExecutorDead { executor_id, .. }
        | Command::DrainExecutor { executor_id, .. } => (None, Some(executor_id.clone())),
    };
    // An executor that dies or registers again releases its subtasks in every job it ran.
    let jobs = state
        .jobs
        .values()
        .filter(|job| {
            Some(job.job_id) == job_id
                || executor_id.as_ref().is_some_and(|executor_id| {
                    job.assignments
                        .values()
                        .any(|assignment| assignment.executor_id.as_ref() == Some(executor_id))
                })
        })
        .map(|job| (job.job_id, job.clone()))
        .collect();
    let executor = executor_id
        .as_ref()
        .and_then(|executor_id| state.executors.get(executor_id).cloned());
    Touched {
        job_id,
        executor_id,
        jobs,
        executor,
    }
}

/// Panics if the command broke an invariant in what it touched. `apply` calls it only when debug
/// assertions are on.
pub(super) fn check(touched: &Touched, state: &State, result: &ApplyResult) {
    if let Err(problem) = violation(touched, state, result) {
        panic!("state machine invariant broken by an applied command: {problem}");
    }
}

fn violation(touched: &Touched, state: &State, result: &ApplyResult) -> Result<(), String> {
    if result.is_err() {
        for (job_id, before) in &touched.jobs {
            if state.jobs.get(job_id) != Some(before) {
                return Err(format!("a rejected command changed job {job_id}"));
            }
        }
        let executor_now = touched
            .executor_id
            .as_ref()
            .and_then(|executor_id| state.executors.get(executor_id));
        if executor_now != touched.executor.as_ref() {
            return Err("a rejected command changed an executor".to_owned());
        }
        return Ok(());
    }
    let submitted = match result {
        Ok(Response::JobSubmitted { job_id }) => Some(*job_id),
        _ => None,
    };
    let job_ids = touched.jobs.keys().copied().chain(touched.job_id).chain(submitted);
    for job_id in job_ids {
        if let Some(job) = state.jobs.get(&job_id) {
            job_holds(state, job)?;
            if let Some(before) = touched.jobs.get(&job_id) {
                job_progressed(before, job)?;
            }
        }
    }
    if let Some(executor) = touched
        .executor_id
        .as_ref()
        .and_then(|executor_id| state.executors.get(executor_id))
    {
        let used = state.used_slots(&executor.executor_id);
        if used > executor.slots {
            return Err(format!(
                "executor {} uses {used} of its {} slots",
                executor.executor_id, executor.slots
            ));
        }
        if !executor.alive && used > 0 {
            return Err(format!(
                "dead executor {} still holds {used} slots",
                executor.executor_id
            ));
        }
    }
    Ok(())
}

/// What holds of any job at any time.
fn job_holds(state: &State, job: &JobRecord) -> Result<(), String> {
    let job_id = job.job_id;
    for (subtask, assignment) in &job.assignments {
        if let Some(executor_id) = &assignment.executor_id {
            if !state.executors.get(executor_id).is_some_and(|executor| executor.alive) {
                return Err(format!(
                    "{job_id}: {}[{}] placed on missing or dead executor {executor_id}",
                    subtask.operator_id, subtask.subtask_index
                ));
            }
            if job.status.is_terminal() {
                return Err(format!("{job_id} is {} but still holds slots", job.status));
            }
        }
        if assignment.epoch > job.last_epoch {
            return Err(format!("{job_id}: an assignment's epoch is above the job's last epoch"));
        }
        if let (Some(executor_id), Some(home)) = (&assignment.executor_id, job.slice_home(subtask)) {
            if executor_id != home {
                return Err(format!(
                    "{job_id}: {}[{}] runs on {executor_id}, apart from its slice on {home}",
                    subtask.operator_id, subtask.subtask_index
                ));
            }
        }
    }
    if job.last_checkpoint_id > job.last_triggered_checkpoint_id {
        return Err(format!("{job_id}: a checkpoint completed without a trigger"));
    }
    let ids: Vec<_> = job
        .checkpoints
        .iter()
        .map(|checkpoint| checkpoint.checkpoint_id)
        .collect();
    if ids.windows(2).any(|pair| pair[0] >= pair[1]) {
        return Err(format!("{job_id}: retained checkpoint ids not increasing: {ids:?}"));
    }
    if let Some(newest) = ids.last() {
        if job.last_checkpoint_id != Some(*newest) {
            return Err(format!(
                "{job_id}: the newest retained checkpoint is not the last completed one"
            ));
        }
    }
    Ok(())
}

/// What holds between a job before and after one command.
fn job_progressed(before: &JobRecord, after: &JobRecord) -> Result<(), String> {
    let job_id = after.job_id;
    if before.status != after.status && !before.status.can_become(after.status) {
        return Err(format!("{job_id} went from {} to {}", before.status, after.status));
    }
    if after.last_checkpoint_id < before.last_checkpoint_id
        || after.last_triggered_checkpoint_id < before.last_triggered_checkpoint_id
        || after.last_epoch < before.last_epoch
    {
        return Err(format!("{job_id}: a checkpoint id or epoch went back"));
    }
    if after.last_checkpoint_id != before.last_checkpoint_id {
        if let Some(newest) = after.checkpoints.back() {
            let placement: BTreeMap<_, _> = before
                .assignments
                .iter()
                .filter(|(_, assignment)| assignment.executor_id.is_some())
                .map(|(subtask, assignment)| (subtask.clone(), assignment.epoch))
                .collect();
            let acknowledged_by_the_running_placement = newest.acknowledged_epochs.is_empty()
                || (before.status == super::JobStatus::Running && placement == newest.acknowledged_epochs);
            if !acknowledged_by_the_running_placement {
                return Err(format!(
                    "{job_id}: checkpoint {} completed by a placement the job did not run",
                    newest.checkpoint_id
                ));
            }
        }
    }
    for (subtask, assignment) in &after.assignments {
        // A rescale adds subtasks, unplaced.
        let Some(previous) = before.assignments.get(subtask) else {
            if assignment.executor_id.is_some() {
                return Err(format!("{job_id}: subtask {subtask:?} appeared already placed"));
            }
            continue;
        };
        if assignment.epoch < previous.epoch {
            return Err(format!("{job_id}: the epoch of {subtask:?} went back"));
        }
        if assignment.executor_id.is_some()
            && previous.executor_id != assignment.executor_id
            && previous.epoch == assignment.epoch
        {
            return Err(format!("{job_id}: {subtask:?} moved without a new epoch"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_fixtures::{executor_id, source_to_sink, subtask, StateBuilder};

    fn job() -> JobId {
        JobId::from_number(1)
    }

    /// Job 1 running on `a`, with `b` idle.
    fn running() -> State {
        StateBuilder::new()
            .executor("a", 4)
            .executor("b", 4)
            .job(source_to_sink(""))
            .place_all(1, "a")
            .running(1)
            .build()
    }

    fn dead(executor: &str) -> Command {
        Command::MarkExecutorDead {
            executor_id: executor_id(executor),
            at_ms: 9,
        }
    }

    #[test]
    fn a_subtask_moved_without_a_new_epoch_is_caught() {
        let mut state = running();
        let command = Command::AssignSubtask {
            job_id: job(),
            subtask: subtask("src", 0),
            executor_id: executor_id("b"),
            at_ms: 9,
        };
        let touched = before(&state, &command);
        // What a broken command could do: move `src` to `b` at its old epoch, apart from `out`,
        // which shares its slot; then `out` after it.
        let move_to_b = |state: &mut State, operator: &str| {
            let assignment = state
                .jobs
                .get_mut(&job())
                .and_then(|job| job.assignments.get_mut(&subtask(operator, 0)))
                .expect("placed");
            assignment.executor_id = Some(executor_id("b"));
        };
        move_to_b(&mut state, "src");
        let problem = violation(&touched, &state, &Ok(Response::Nothing)).expect_err("caught");
        assert!(problem.contains("apart from its slice"), "{problem}");
        move_to_b(&mut state, "out");
        let problem = violation(&touched, &state, &Ok(Response::Nothing)).expect_err("caught");
        assert!(problem.contains("moved without a new epoch"), "{problem}");
    }

    #[test]
    fn a_dead_executor_holding_subtasks_and_a_rejection_that_changed_something_are_caught() {
        let mut state = running();
        let command = dead("a");
        let touched = before(&state, &command);
        if let Some(executor) = state.executors.get_mut(&executor_id("a")) {
            executor.alive = false;
        }
        let problem = violation(&touched, &state, &Ok(Response::Nothing)).expect_err("caught");
        assert!(problem.contains("dead executor"), "{problem}");

        let refused = Err(super::super::Rejection::UnknownExecutor {
            executor_id: executor_id("a"),
        });
        let problem = violation(&touched, &state, &refused).expect_err("caught");
        assert!(problem.contains("rejected command changed"), "{problem}");
    }

    #[test]
    fn the_real_commands_keep_them() {
        let mut state = running();
        for command in [
            Command::TriggerCheckpoint {
                job_id: job(),
                at_ms: 10,
            },
            dead("a"),
        ] {
            let touched = before(&state, &command);
            let result = super::super::apply(&mut state, command);
            assert!(result.is_ok(), "{result:?}");
            assert_eq!(violation(&touched, &state, &result), Ok(()));
        }
    }
}
