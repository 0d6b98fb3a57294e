//! Conversions between the state machine's records and the protobuf API; those of the shared
//! model live in `raftstream_api::convert`.

use raftstream_proto::v1 as pb;

use crate::state_machine::{JobRecord, JobStatus, State};
use raftstream_api::checkpoint::SavepointRef;
use raftstream_api::convert::checkpoint_to_proto;
use raftstream_api::ids::{CheckpointId, JobId};

/// Why a job that is not running yet waits, when it waits for slots: read from the state, not
/// stored, so it is always current.
fn waiting_reason(state: &State, job: &JobRecord) -> Option<String> {
    if !matches!(job.status, JobStatus::Submitted | JobStatus::Restarting) {
        return None;
    }
    let unplaced = job.slots_waiting();
    if unplaced == 0 {
        return None;
    }
    let live: Vec<_> = state.executors.values().filter(|executor| executor.alive).collect();
    let free: u64 = live
        .iter()
        .map(|executor| u64::from(executor.slots.saturating_sub(state.used_slots(&executor.executor_id))))
        .sum();
    (free < unplaced).then(|| {
        format!(
            "waiting for {unplaced} free slots; {free} free on {} live executor(s)",
            live.len()
        )
    })
}

/// The protobuf view of a job.
pub fn job_to_proto(state: &State, job: &JobRecord) -> pb::Job {
    let operators = job
        .graph
        .operators
        .iter()
        .map(|operator| pb::Operator {
            operator_id: operator.id.to_string(),
            kind: operator.kind.name().to_owned(),
            parallelism: operator.parallelism,
            inputs: operator.inputs.iter().map(ToString::to_string).collect(),
        })
        .collect();
    let subtasks = job
        .assignments
        .iter()
        .map(|(key, assignment)| pb::Subtask {
            operator_id: key.operator_id.to_string(),
            subtask_index: key.subtask_index,
            executor_id: assignment
                .executor_id
                .as_ref()
                .map(|id| id.0.clone())
                .unwrap_or_default(),
            epoch: assignment.epoch.0,
            executor_address: assignment
                .executor_id
                .as_ref()
                .and_then(|id| state.executors.get(id))
                .map(|executor| executor.address.clone())
                .unwrap_or_default(),
        })
        .collect();
    pb::Job {
        job_id: job.job_id.to_string(),
        name: job.graph.name.clone(),
        status: job.status.name().to_owned(),
        restart_count: job.restart_count,
        submitted_at_ms: job.submitted_at_ms,
        updated_at_ms: job.updated_at_ms,
        operators,
        subtasks,
        // Serializing our own plain data structure cannot fail; an empty string would only hide
        // the graph from the display, never change stored data.
        graph_json: serde_json::to_string(&job.graph).unwrap_or_default(),
        last_checkpoint_id: job.last_checkpoint_id.map(|id| id.0),
        restored_checkpoint_id: job.last_restore.as_ref().map(|restore| restore.checkpoint_id.0),
        restored_at_ms: job.last_restore.as_ref().map_or(0, |restore| restore.at_ms),
        from_savepoint: job
            .from_savepoint
            .map(|savepoint| savepoint.to_string())
            .unwrap_or_default(),
        history: job
            .history
            .iter()
            .map(|event| pb::JobEvent {
                at_ms: event.at_ms,
                what: event.what.clone(),
            })
            .collect(),
        slots_needed: job.graph.slots_needed(),
        slots_held: job.slots_held(),
        status_reason: match (job.status_reason.is_empty(), waiting_reason(state, job)) {
            (true, Some(waiting)) => waiting,
            (false, Some(waiting)) => format!("{}; {waiting}", job.status_reason),
            (_, None) => job.status_reason.clone(),
        },
    }
}

/// All jobs, oldest first: job ids order by their number.
pub fn jobs_in_submission_order(state: &State) -> Vec<&JobRecord> {
    state.jobs.values().collect()
}

/// A job's retained checkpoints and its savepoints (also those of a job already forgotten), by
/// id; a savepoint that is also still retained appears once, marked.
pub fn checkpoints_and_savepoints(state: &State, job_id: &JobId) -> Vec<pb::Checkpoint> {
    let mut listed: std::collections::BTreeMap<u64, pb::Checkpoint> = state
        .jobs
        .get(job_id)
        .into_iter()
        .flat_map(|job| &job.checkpoints)
        .map(|checkpoint| (checkpoint.checkpoint_id.0, checkpoint_to_proto(job_id, checkpoint)))
        .collect();
    for (savepoint, record) in state.savepoints.range(savepoint_range(job_id)) {
        let mut view = checkpoint_to_proto(job_id, &record.checkpoint);
        view.savepoint = true;
        listed.insert(savepoint.savepoint_id.0, view);
    }
    listed.into_values().collect()
}

/// Every savepoint key of `job_id`, for a range over the ordered map.
fn savepoint_range(job_id: &JobId) -> std::ops::RangeInclusive<SavepointRef> {
    let first = SavepointRef {
        job_id: *job_id,
        savepoint_id: CheckpointId(0),
    };
    let last = SavepointRef {
        job_id: *job_id,
        savepoint_id: CheckpointId(u64::MAX),
    };
    first..=last
}
