//! The replicated state machine: a pure, deterministic `apply(&mut State, Command)`.
//!
//! No clock, no randomness, no I/O: times arrive inside commands, chosen by the leader, and ids are
//! allocated from counters held in the state, so replaying the same log always yields the same state.
//! A rejected command leaves the state exactly as it was.

mod checkpoints;
mod command;
mod executors;
mod invariants;
mod jobs;
mod model;
mod rescales;
mod savepoints;
mod status;
#[cfg(test)]
mod tests;

use raftstream_api::ids::{OperatorId, RequestId};

pub use command::{ApplyResult, Command, Rejection, Response};
pub use model::{
    Assignment, ExecutorRecord, JobEvent, JobRecord, RelocationRequest, RequestLog, RescaleRequest, RestoreRecord,
    State, JOB_HISTORY, REMEMBERED_REQUESTS, RETAINED_ENDED_JOBS,
};
pub use savepoints::{SavepointOutcome, SavepointRecord, SavepointRequest};
pub use status::JobStatus;

use checkpoints::{complete_checkpoint, trigger_checkpoint};
use executors::{assign_subtask, drain_executor, mark_executor_dead, register_executor};
use jobs::{cancel_job, fail_subtask, start_deployed_job, submit_job, transition_job};
use rescales::{relocate_job, request_rescale, request_two_phase, rescale_job, RescaleTarget};

/// Applies one command. Deterministic; on rejection the state is untouched.
pub fn apply(state: &mut State, command: Command) -> ApplyResult {
    let request_id = match &command {
        Command::SubmitJob { request_id, .. }
        | Command::CancelJob { request_id, .. }
        | Command::RequestRescale { request_id, .. }
        | Command::RequestSavepoint { request_id, .. }
        | Command::DeleteSavepoint { request_id, .. }
        | Command::DrainExecutor { request_id, .. } => request_id.clone(),
        _ => None,
    };
    if let Some(request_id) = &request_id {
        if let Some(response) = state.requests.get(request_id) {
            return Ok(response.clone());
        }
    }
    // Like `debug_assert!`: checked in builds with debug assertions, at the cost of a copy of the
    // records the command touches.
    let touched = cfg!(debug_assertions).then(|| invariants::before(state, &command));
    let result = apply_command(state, command, request_id);
    if let Some(touched) = touched {
        invariants::check(&touched, state, &result);
    }
    result
}

fn apply_command(state: &mut State, command: Command, request_id: Option<RequestId>) -> ApplyResult {
    let response = match command {
        Command::SubmitJob {
            graph,
            at_ms,
            from_savepoint,
            allow_unmatched_state,
            ..
        } => submit_job(state, graph, at_ms, from_savepoint, allow_unmatched_state),
        Command::CancelJob { job_id, at_ms, .. } => cancel_job(state, &job_id, at_ms),
        Command::TransitionJob {
            job_id,
            to,
            reason,
            at_ms,
            deployed_through_epoch,
        } => match deployed_through_epoch {
            Some(deployed_through) => start_deployed_job(state, &job_id, to, deployed_through, reason, at_ms),
            None => transition_job(state, &job_id, to, reason, at_ms),
        },
        Command::RegisterExecutor {
            executor_id,
            address,
            slots,
            at_ms,
        } => register_executor(state, executor_id, address, slots, at_ms),
        Command::MarkExecutorDead { executor_id, at_ms } => mark_executor_dead(state, &executor_id, at_ms),
        Command::AssignSubtask {
            job_id,
            subtask,
            executor_id,
            at_ms,
        } => assign_subtask(state, &job_id, subtask, executor_id, at_ms),
        Command::TriggerCheckpoint { job_id, at_ms } => trigger_checkpoint(state, &job_id, at_ms),
        Command::RescaleJob {
            job_id,
            operator_id,
            parallelism,
            at_ms,
            auto,
            reason,
        } => rescale_job(
            state,
            &job_id,
            &RescaleTarget {
                operator_id: operator_id.as_ref().map(OperatorId::as_str),
                parallelism,
                auto,
                two_phase: false,
            },
            reason,
            at_ms,
        ),
        Command::RequestTwoPhase {
            job_id,
            operator_id,
            at_ms,
            reason,
        } => request_two_phase(state, &job_id, operator_id, reason, at_ms),
        Command::SwitchTwoPhase {
            job_id,
            operator_id,
            at_ms,
            reason,
        } => {
            let parallelism = state
                .jobs
                .get(&job_id)
                .and_then(|job| job.graph.operator(operator_id.as_str()))
                .map_or(1, |operator| operator.parallelism);
            rescale_job(
                state,
                &job_id,
                &RescaleTarget {
                    operator_id: Some(operator_id.as_str()),
                    parallelism,
                    auto: false,
                    two_phase: true,
                },
                reason,
                at_ms,
            )
        }
        Command::RequestRescale {
            job_id,
            operator_id,
            parallelism,
            at_ms,
            auto,
            reason,
            ..
        } => request_rescale(state, &job_id, operator_id, parallelism, auto, reason, at_ms),
        Command::CompleteCheckpoint {
            job_id,
            checkpoint,
            savepoint,
        } => complete_checkpoint(state, &job_id, checkpoint, savepoint),
        Command::RequestSavepoint {
            job_id, stop, at_ms, ..
        } => savepoints::request_savepoint(state, &job_id, stop, at_ms),
        Command::FailSavepoint { job_id, reason, at_ms } => savepoints::fail_savepoint(state, &job_id, reason, at_ms),
        Command::DeleteSavepoint { savepoint, .. } => savepoints::delete_savepoint(state, savepoint),
        Command::DrainExecutor { executor_id, at_ms, .. } => drain_executor(state, &executor_id, at_ms),
        Command::RelocateJob { job_id, at_ms } => relocate_job(state, &job_id, at_ms),
        Command::FailSubtask {
            job_id,
            subtask,
            epoch,
            reason,
            fatal,
            at_ms,
        } => fail_subtask(state, &job_id, &subtask, epoch, reason, fatal, at_ms),
    }?;
    if let Some(request_id) = request_id {
        state.requests.remember(request_id, response.clone());
    }
    Ok(response)
}
