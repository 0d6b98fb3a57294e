//! Conversions between the state machine's types and the protobuf API.

use raftstream_proto::v1 as pb;

use crate::state_machine::{CompletedCheckpoint, JobRecord, State};

/// The protobuf view of a job.
pub fn job_to_proto(job: &JobRecord) -> pb::Job {
    let operators = job
        .graph
        .operators
        .iter()
        .map(|operator| pb::Operator {
            operator_id: operator.id.clone(),
            kind: operator.kind.name().to_owned(),
            parallelism: operator.parallelism,
            inputs: operator.inputs.clone(),
        })
        .collect();
    let subtasks = job
        .assignments
        .iter()
        .map(|(key, assignment)| pb::Subtask {
            operator_id: key.operator_id.clone(),
            subtask_index: key.subtask_index,
            executor_id: assignment.executor_id.as_ref().map(|id| id.0.clone()).unwrap_or_default(),
            epoch: assignment.epoch.0,
        })
        .collect();
    pb::Job {
        job_id: job.job_id.0.clone(),
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
        status_reason: job.status_reason.clone(),
    }
}

/// The protobuf view of a completed checkpoint.
pub fn checkpoint_to_proto(job: &JobRecord, checkpoint: &CompletedCheckpoint) -> pb::Checkpoint {
    pb::Checkpoint {
        job_id: job.job_id.0.clone(),
        checkpoint_id: checkpoint.checkpoint_id.0,
        epoch: checkpoint.epoch.0,
        size_bytes: checkpoint.size_bytes,
        completed_at_ms: checkpoint.completed_at_ms,
        task_states: checkpoint
            .task_states
            .iter()
            .map(|handle| pb::TaskStateHandle {
                operator_id: handle.subtask.operator_id.clone(),
                subtask_index: handle.subtask.subtask_index,
                location: handle.location.clone(),
                inline_state: handle.inline_state.clone(),
                size_bytes: handle.size_bytes,
            })
            .collect(),
        source_offsets: checkpoint
            .source_offsets
            .iter()
            .map(|(key, offset)| pb::SourceOffset {
                operator_id: key.operator_id.clone(),
                subtask_index: key.subtask_index,
                offset: *offset,
            })
            .collect(),
    }
}

/// All jobs, oldest first (by job number, not by string order).
pub fn jobs_in_submission_order(state: &State) -> Vec<&JobRecord> {
    let mut jobs: Vec<&JobRecord> = state.jobs.values().collect();
    jobs.sort_by_key(|job| job.job_id.0.trim_start_matches("job-").parse::<u64>().unwrap_or(u64::MAX));
    jobs
}
