//! The state machine's tests, by what they govern; the helpers they share are here.

mod checkpoints;
mod executors;
mod jobs;
mod properties;
mod rescales;

use std::collections::BTreeMap;

use super::*;
use crate::test_fixtures::{self as fixtures, executor_id, subtask};
use raftstream_api::checkpoint::{CompletedCheckpoint, SubtaskKey};
use raftstream_api::ids::{CheckpointId, Epoch, ExecutorId, JobId, OperatorId, RequestId};
use raftstream_api::spec::JobGraph;

/// Four operators: a generator, a keyed exchange and count at `parallelism`, a print sink.
fn graph(parallelism: u32, retained: u32) -> JobGraph {
    fixtures::graph(&format!(
        r#"{{"name": "g", "parallelism": {parallelism}, "checkpoint": {{"retained": {retained}}}, "operators": [
            {{"id": "src", "kind": "generator", "parallelism": 1}},
            {{"id": "keys", "kind": "key_by", "inputs": ["src"]}},
            {{"id": "counts", "kind": "count", "inputs": ["keys"]}},
            {{"id": "out", "kind": "print", "inputs": ["counts"], "parallelism": 1}}]}}"#
    ))
}

fn executor(n: u8) -> ExecutorId {
    executor_id(&format!("executor-{n}"))
}

fn checkpoint(id: u64, epoch: u64) -> CompletedCheckpoint {
    CompletedCheckpoint {
        checkpoint_id: CheckpointId(id),
        epoch: Epoch(epoch),
        task_states: Vec::new(),
        source_offsets: BTreeMap::from([(subtask("src", 0), id * 10)]),
        size_bytes: 0,
        completed_at_ms: id,
        triggered_at_ms: id.saturating_sub(1),
        acknowledged_epochs: BTreeMap::new(),
        trigger: Default::default(),
    }
}

/// Places every subtask of job 1 on `executor_id` and starts it; returns the placement's epochs.
fn place_and_run(state: &mut State, executor_id: &ExecutorId, at_ms: u64) -> BTreeMap<SubtaskKey, Epoch> {
    let job_id = JobId::from_number(1);
    let subtasks: Vec<SubtaskKey> = state.jobs[&job_id].assignments.keys().cloned().collect();
    for subtask in subtasks {
        let placed = apply(
            state,
            Command::AssignSubtask {
                job_id,
                subtask,
                executor_id: executor_id.clone(),
                at_ms,
            },
        );
        assert!(placed.is_ok(), "{placed:?}");
    }
    let running = apply(
        state,
        Command::TransitionJob {
            job_id,
            to: JobStatus::Running,
            reason: String::new(),
            at_ms,
            deployed_through_epoch: Some(state.jobs[&job_id].last_epoch),
        },
    );
    assert!(running.is_ok(), "{running:?}");
    state.jobs[&job_id]
        .assignments
        .iter()
        .map(|(subtask, assignment)| (subtask.clone(), assignment.epoch))
        .collect()
}

fn acknowledged_by(id: u64, epochs: &BTreeMap<SubtaskKey, Epoch>) -> Command {
    let epoch = epochs.values().max().copied().unwrap_or(Epoch(0));
    Command::CompleteCheckpoint {
        job_id: JobId::from_number(1),
        checkpoint: CompletedCheckpoint {
            acknowledged_epochs: epochs.clone(),
            ..checkpoint(id, epoch.0)
        },
        savepoint: false,
    }
}

fn request_rescale(operator: Option<&str>, parallelism: u32) -> Command {
    Command::RequestRescale {
        request_id: None,
        job_id: JobId::from_number(1),
        operator_id: operator.map(OperatorId::from),
        parallelism,
        at_ms: 40,
        auto: false,
        reason: String::new(),
    }
}

fn rescale(operator: Option<&str>, parallelism: u32) -> Command {
    Command::RescaleJob {
        job_id: JobId::from_number(1),
        operator_id: operator.map(OperatorId::from),
        parallelism,
        at_ms: 50,
        auto: false,
        reason: String::new(),
    }
}
