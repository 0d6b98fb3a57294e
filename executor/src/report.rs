//! What running subtasks tell the leader. The runtime speaks in these; the session turns them
//! into protobuf at the edge.

use raftstream_coordinator::leader::TaskRef;
use raftstream_coordinator::service::{task_ref_to_proto, task_state_to_proto};
use raftstream_coordinator::state_machine::TaskStateHandle;
use raftstream_proto::v1 as pb;

/// One report from a subtask.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TaskReport {
    /// A source read the end of its input; the leader asks for a final checkpoint.
    InputEnded(TaskRef),
    Finished(TaskRef),
    Failed {
        task: TaskRef,
        /// The subtask could not restore its checkpoint: restarting would fail again.
        cannot_restore: bool,
        reason: String,
    },
    /// The subtask's state of a checkpoint is stored (or inline) and ready to commit.
    CheckpointAck {
        task: TaskRef,
        checkpoint_id: u64,
        state: TaskStateHandle,
        /// Sources: the input offset the state corresponds to.
        source_offset: Option<u64>,
    },
}

impl TaskReport {
    /// The session message body that carries this report.
    pub fn into_proto(self) -> pb::executor_message::Body {
        let status = |task: &TaskRef, status: &str, reason: String| {
            pb::executor_message::Body::TaskStatus(pb::TaskStatus {
                task: Some(task_ref_to_proto(task)),
                status: status.to_owned(),
                reason,
            })
        };
        match self {
            TaskReport::InputEnded(task) => status(&task, "InputEnded", String::new()),
            TaskReport::Finished(task) => status(&task, "Finished", String::new()),
            TaskReport::Failed {
                task,
                cannot_restore,
                reason,
            } => status(&task, if cannot_restore { "RestoreFailed" } else { "Failed" }, reason),
            TaskReport::CheckpointAck {
                task,
                checkpoint_id,
                state,
                source_offset,
            } => pb::executor_message::Body::CheckpointAck(pb::CheckpointAck {
                task: Some(task_ref_to_proto(&task)),
                checkpoint_id,
                source_offsets: source_offset
                    .map(|offset| pb::SourceOffset {
                        operator_id: task.subtask.operator_id.clone(),
                        subtask_index: task.subtask.subtask_index,
                        offset,
                    })
                    .into_iter()
                    .collect(),
                state: Some(task_state_to_proto(&state)),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use raftstream_coordinator::ids::{Epoch, JobId};
    use raftstream_coordinator::service::checkpoint_ack_from_proto;
    use raftstream_coordinator::state_machine::SubtaskKey;

    fn task() -> TaskRef {
        TaskRef {
            job_id: JobId::from_number(4),
            subtask: SubtaskKey {
                operator_id: "lines".into(),
                subtask_index: 1,
            },
            epoch: Epoch(6),
        }
    }

    #[test]
    fn an_acknowledgement_reads_back_as_the_leader_decodes_it() {
        let state = TaskStateHandle {
            subtask: task().subtask,
            location: "job-4/chk-9/lines-1-e6.state".into(),
            inline_state: Vec::new(),
            size_bytes: 2_048,
            checksum: 77,
        };
        let report = TaskReport::CheckpointAck {
            task: task(),
            checkpoint_id: 9,
            state: state.clone(),
            source_offset: Some(12_345),
        };
        let pb::executor_message::Body::CheckpointAck(wire) = report.into_proto() else {
            panic!("an acknowledgement must travel as CheckpointAck");
        };
        let decoded = checkpoint_ack_from_proto(&wire);
        let Some((decoded_task, checkpoint_id, ack)) = decoded else {
            panic!("the leader could not decode {wire:?}");
        };
        assert_eq!(decoded_task, task());
        assert_eq!(checkpoint_id.0, 9);
        assert_eq!(ack.state, state);
        assert_eq!(ack.source_offset, Some(12_345));
    }

    #[test]
    fn statuses_carry_the_names_the_leader_matches_on() {
        let named = |report: TaskReport| match report.into_proto() {
            pb::executor_message::Body::TaskStatus(status) => status.status,
            other => panic!("expected a status, got {other:?}"),
        };
        assert_eq!(named(TaskReport::InputEnded(task())), "InputEnded");
        assert_eq!(named(TaskReport::Finished(task())), "Finished");
        let failed = |cannot_restore| TaskReport::Failed {
            task: task(),
            cannot_restore,
            reason: "disk".into(),
        };
        assert_eq!(named(failed(false)), "Failed");
        assert_eq!(named(failed(true)), "RestoreFailed");
    }
}
