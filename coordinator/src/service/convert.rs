//! Conversions between the state machine's types and the protobuf API.

use std::collections::BTreeMap;

use raftstream_proto::v1 as pb;

use crate::ids::{CheckpointId, Epoch, ExecutorId, JobId};
use crate::leader::checkpoints::CheckpointAck;
use crate::leader::{ExecutorCommand, PlacedSubtask, TaskRef};
use crate::state_machine::{CompletedCheckpoint, JobRecord, JobStatus, State, SubtaskKey, TaskStateHandle};

/// Why a job that is not running yet waits, when it waits for slots: read from the state, not
/// stored, so it is always current.
fn waiting_reason(state: &State, job: &JobRecord) -> Option<String> {
    if !matches!(job.status, JobStatus::Submitted | JobStatus::Restarting) {
        return None;
    }
    let unplaced = job.assignments.values().filter(|a| a.executor_id.is_none()).count() as u64;
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
        restored_checkpoint_id: job.last_restore.as_ref().map(|restore| restore.checkpoint_id.0),
        restored_at_ms: job.last_restore.as_ref().map_or(0, |restore| restore.at_ms),
        status_reason: match (job.status_reason.is_empty(), waiting_reason(state, job)) {
            (true, Some(waiting)) => waiting,
            (false, Some(waiting)) => format!("{}; {waiting}", job.status_reason),
            (_, None) => job.status_reason.clone(),
        },
    }
}

/// The protobuf view of a completed checkpoint.
pub fn checkpoint_to_proto(job_id: &JobId, checkpoint: &CompletedCheckpoint) -> pb::Checkpoint {
    pb::Checkpoint {
        job_id: job_id.0.clone(),
        checkpoint_id: checkpoint.checkpoint_id.0,
        epoch: checkpoint.epoch.0,
        size_bytes: checkpoint.size_bytes,
        completed_at_ms: checkpoint.completed_at_ms,
        triggered_at_ms: checkpoint.triggered_at_ms,
        task_states: checkpoint.task_states.iter().map(task_state_to_proto).collect(),
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

/// The protobuf view of where one subtask's state of a checkpoint lives.
pub fn task_state_to_proto(handle: &TaskStateHandle) -> pb::TaskStateHandle {
    pb::TaskStateHandle {
        operator_id: handle.subtask.operator_id.clone(),
        subtask_index: handle.subtask.subtask_index,
        location: handle.location.clone(),
        inline_state: handle.inline_state.clone(),
        size_bytes: handle.size_bytes,
        checksum: handle.checksum,
    }
}

/// Where one subtask's state of a checkpoint lives, read from protobuf.
fn task_state_from_proto(handle: &pb::TaskStateHandle) -> TaskStateHandle {
    TaskStateHandle {
        subtask: SubtaskKey {
            operator_id: handle.operator_id.clone(),
            subtask_index: handle.subtask_index,
        },
        location: handle.location.clone(),
        inline_state: handle.inline_state.clone(),
        size_bytes: handle.size_bytes,
        checksum: handle.checksum,
    }
}

/// The protobuf view of where one subtask of a deployed job runs.
pub fn placed_subtask_to_proto(placed: &PlacedSubtask) -> pb::Subtask {
    pb::Subtask {
        operator_id: placed.subtask.operator_id.clone(),
        subtask_index: placed.subtask.subtask_index,
        executor_id: placed.executor_id.0.clone(),
        epoch: placed.epoch.0,
        executor_address: placed.executor_address.clone(),
    }
}

/// Where one subtask of a deployed job runs, read back from protobuf: what an executor dials.
pub fn placed_subtask_from_proto(placed: &pb::Subtask) -> PlacedSubtask {
    PlacedSubtask {
        subtask: SubtaskKey {
            operator_id: placed.operator_id.clone(),
            subtask_index: placed.subtask_index,
        },
        executor_id: ExecutorId(placed.executor_id.clone()),
        executor_address: placed.executor_address.clone(),
        epoch: Epoch(placed.epoch),
    }
}

/// A checkpoint read back from its protobuf view: what an executor restores from.
pub fn checkpoint_from_proto(checkpoint: &pb::Checkpoint) -> CompletedCheckpoint {
    let key = |operator_id: &str, subtask_index: u32| SubtaskKey {
        operator_id: operator_id.to_owned(),
        subtask_index,
    };
    CompletedCheckpoint {
        checkpoint_id: CheckpointId(checkpoint.checkpoint_id),
        epoch: Epoch(checkpoint.epoch),
        task_states: checkpoint.task_states.iter().map(task_state_from_proto).collect(),
        source_offsets: checkpoint
            .source_offsets
            .iter()
            .map(|offset| (key(&offset.operator_id, offset.subtask_index), offset.offset))
            .collect(),
        size_bytes: checkpoint.size_bytes,
        completed_at_ms: checkpoint.completed_at_ms,
        triggered_at_ms: checkpoint.triggered_at_ms,
        // Executors restore from a checkpoint; which placement acknowledged it is the leader's.
        acknowledged_epochs: BTreeMap::new(),
    }
}

/// All jobs, oldest first (by job number, not by string order).
pub fn jobs_in_submission_order(state: &State) -> Vec<&JobRecord> {
    let mut jobs: Vec<&JobRecord> = state.jobs.values().collect();
    jobs.sort_by_key(|job| {
        job.job_id
            .0
            .trim_start_matches("job-")
            .parse::<u64>()
            .unwrap_or(u64::MAX)
    });
    jobs
}

/// The protobuf form of a subtask reference.
pub fn task_ref_to_proto(task: &TaskRef) -> pb::TaskRef {
    pb::TaskRef {
        job_id: task.job_id.0.clone(),
        operator_id: task.subtask.operator_id.clone(),
        subtask_index: task.subtask.subtask_index,
        epoch: task.epoch.0,
    }
}

/// A subtask reference from an executor; `None` when it names no job or operator.
pub fn task_ref_from_proto(task: &pb::TaskRef) -> Option<TaskRef> {
    if task.job_id.is_empty() || task.operator_id.is_empty() {
        return None;
    }
    Some(TaskRef {
        job_id: JobId(task.job_id.clone()),
        subtask: SubtaskKey {
            operator_id: task.operator_id.clone(),
            subtask_index: task.subtask_index,
        },
        epoch: Epoch(task.epoch),
    })
}

/// The protobuf message for a command to an executor.
pub fn executor_command_to_proto(command: &ExecutorCommand) -> pb::CoordinatorMessage {
    use pb::coordinator_message::Body;
    let body = match command {
        ExecutorCommand::Assignments(tasks) => Body::Assignments(pb::Assignments {
            tasks: tasks.iter().map(task_ref_to_proto).collect(),
        }),
        ExecutorCommand::Assign(deployment) => Body::Assign(pb::AssignTask {
            task: Some(task_ref_to_proto(&deployment.task)),
            graph_json: deployment.graph_json.clone(),
            restore_from: deployment
                .restore_from
                .as_ref()
                .map(|checkpoint| checkpoint_to_proto(&deployment.task.job_id, checkpoint)),
            placement: deployment.placement.iter().map(placed_subtask_to_proto).collect(),
        }),
        ExecutorCommand::Cancel(task) => Body::Cancel(pb::CancelTask {
            task: Some(task_ref_to_proto(task)),
        }),
        ExecutorCommand::TriggerCheckpoint { job_id, checkpoint_id } => {
            Body::TriggerCheckpoint(pb::TriggerCheckpoint {
                job_id: job_id.0.clone(),
                checkpoint_id: checkpoint_id.0,
                epoch: 0,
            })
        }
        ExecutorCommand::CheckpointComplete {
            job_id,
            checkpoint_id,
            acknowledged,
            oldest_retained,
        } => Body::CheckpointComplete(pb::CheckpointComplete {
            job_id: job_id.0.clone(),
            checkpoint_id: checkpoint_id.0,
            acknowledged: acknowledged.iter().map(task_ref_to_proto).collect(),
            oldest_retained_checkpoint_id: oldest_retained.0,
        }),
        ExecutorCommand::DiscardJobState(job_id) => Body::DiscardJobState(pb::DiscardJobState {
            job_id: job_id.0.clone(),
        }),
        ExecutorCommand::HeartbeatAck { term } => Body::HeartbeatAck(pb::HeartbeatAck { term: *term }),
        ExecutorCommand::CheckpointAborted {
            job_id,
            checkpoint_id,
            reason,
        } => Body::CheckpointAborted(pb::CheckpointAborted {
            job_id: job_id.0.clone(),
            checkpoint_id: checkpoint_id.0,
            reason: reason.clone(),
        }),
    };
    pb::CoordinatorMessage { body: Some(body) }
}

/// A checkpoint acknowledgement from an executor; `None` when it names no subtask.
pub fn checkpoint_ack_from_proto(ack: &pb::CheckpointAck) -> Option<(TaskRef, CheckpointId, CheckpointAck)> {
    let task = task_ref_from_proto(ack.task.as_ref()?)?;
    let no_state = pb::TaskStateHandle::default();
    // The acknowledgement names its subtask in the task; the handle's own names are not trusted.
    let handle = TaskStateHandle {
        subtask: task.subtask.clone(),
        ..task_state_from_proto(ack.state.as_ref().unwrap_or(&no_state))
    };
    let source_offset = ack
        .source_offsets
        .iter()
        .find(|offset| {
            offset.operator_id == task.subtask.operator_id && offset.subtask_index == task.subtask.subtask_index
        })
        .map(|offset| offset.offset);
    let checkpoint_ack = CheckpointAck {
        subtask: task.subtask.clone(),
        epoch: task.epoch,
        state: handle,
        source_offset,
    };
    Some((task, CheckpointId(ack.checkpoint_id), checkpoint_ack))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_checkpoint_survives_its_protobuf_view() {
        let subtask = |operator_id: &str, subtask_index| SubtaskKey {
            operator_id: operator_id.into(),
            subtask_index,
        };
        let checkpoint = CompletedCheckpoint {
            checkpoint_id: CheckpointId(7),
            epoch: Epoch(3),
            task_states: vec![
                TaskStateHandle {
                    subtask: subtask("counts", 1),
                    location: "job-1/chk-7/counts-1-3".into(),
                    inline_state: Vec::new(),
                    size_bytes: 4_096,
                    checksum: 0xfeed,
                },
                TaskStateHandle {
                    subtask: subtask("sink", 0),
                    location: String::new(),
                    inline_state: vec![1, 2, 3],
                    size_bytes: 3,
                    checksum: 9,
                },
            ],
            source_offsets: [(subtask("lines", 0), 1_000), (subtask("lines", 1), 998)].into(),
            size_bytes: 4_099,
            completed_at_ms: 1_764_000_000_000,
            triggered_at_ms: 1_763_999_999_990,
            acknowledged_epochs: BTreeMap::new(),
        };
        let wire = checkpoint_to_proto(&JobId::from_number(1), &checkpoint);
        assert_eq!(wire.job_id, "job-1");
        assert_eq!(checkpoint_from_proto(&wire), checkpoint);
    }
}
