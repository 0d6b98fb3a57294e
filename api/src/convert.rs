//! Every conversion between the shared model and its protobuf form, in one place.

use std::collections::BTreeMap;

use raftstream_proto::v1 as pb;

use crate::checkpoint::{
    CheckpointOptions, CompletedCheckpoint, SavepointRef, SourcesAfterBarrier, SubtaskKey, TaskStateHandle,
};
use crate::ids::{CheckpointId, Epoch, ExecutorId, JobId, NotAJobId, OperatorId};
use crate::messages::{
    CheckpointAck, ExecutorCommand, FunctionCalls, HotKey, PlacedSubtask, SubtaskMetrics, TaskDeployment, TaskRef,
    TaskReport,
};
use crate::spec::{JobGraph, UdfExport};

/// A message that cannot be turned into our types.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConvertError {
    #[error("{message} without {field}")]
    Missing { message: &'static str, field: &'static str },
    #[error("unreadable job graph in an assignment: {0}")]
    UnreadableGraph(String),
    #[error(transparent)]
    JobId(#[from] NotAJobId),
}

fn job_id_of(text: &str) -> Result<JobId, ConvertError> {
    Ok(JobId::parse(text)?)
}

fn missing(message: &'static str, field: &'static str) -> ConvertError {
    ConvertError::Missing { message, field }
}

/// The protobuf view of a completed checkpoint.
pub fn checkpoint_to_proto(job_id: &JobId, checkpoint: &CompletedCheckpoint) -> pb::Checkpoint {
    pb::Checkpoint {
        job_id: job_id.to_string(),
        checkpoint_id: checkpoint.checkpoint_id.0,
        epoch: checkpoint.epoch.0,
        size_bytes: checkpoint.size_bytes,
        completed_at_ms: checkpoint.completed_at_ms,
        triggered_at_ms: checkpoint.triggered_at_ms,
        savepoint: false,
        trigger: checkpoint.trigger.to_string(),
        task_states: checkpoint.task_states.iter().map(task_state_to_proto).collect(),
        source_offsets: checkpoint
            .source_offsets
            .iter()
            .map(|(key, offset)| pb::SourceOffset {
                operator_id: key.operator_id.to_string(),
                subtask_index: key.subtask_index,
                offset: *offset,
            })
            .collect(),
    }
}

/// The protobuf view of where one subtask's state of a checkpoint lives.
pub fn task_state_to_proto(handle: &TaskStateHandle) -> pb::TaskStateHandle {
    pb::TaskStateHandle {
        operator_id: handle.subtask.operator_id.to_string(),
        subtask_index: handle.subtask.subtask_index,
        location: handle.location.clone(),
        inline_state: handle.inline_state.clone(),
        size_bytes: handle.size_bytes,
        checksum: handle.checksum,
    }
}

/// Where one subtask's state of a checkpoint lives, read from protobuf.
pub fn task_state_from_proto(handle: &pb::TaskStateHandle) -> TaskStateHandle {
    TaskStateHandle {
        subtask: SubtaskKey {
            operator_id: OperatorId::from(handle.operator_id.as_str()),
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
        operator_id: placed.subtask.operator_id.to_string(),
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
            operator_id: OperatorId::from(placed.operator_id.as_str()),
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
        operator_id: OperatorId::from(operator_id),
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
        trigger: checkpoint.trigger.parse().unwrap_or_default(),
    }
}

/// The protobuf form of a subtask reference.
pub fn task_ref_to_proto(task: &TaskRef) -> pb::TaskRef {
    pb::TaskRef {
        job_id: task.job_id.to_string(),
        operator_id: task.subtask.operator_id.to_string(),
        subtask_index: task.subtask.subtask_index,
        epoch: task.epoch.0,
    }
}

pub fn subtask_metrics_to_proto(metrics: &SubtaskMetrics) -> pb::SubtaskMetrics {
    pb::SubtaskMetrics {
        task: Some(task_ref_to_proto(&metrics.task)),
        records_in: metrics.records_in,
        records_out: metrics.records_out,
        busy_ms: metrics.busy_ms,
        records_in_per_second: metrics.records_in_per_second,
        busy_ratio: metrics.busy_ratio,
        hot_keys: metrics
            .hot_keys
            .iter()
            .map(|hot| pb::HotKey {
                key: hot.key.clone(),
                count: hot.count,
                error: hot.error,
            })
            .collect(),
        keys_counted: metrics.keys_counted,
        chained: metrics.chained.iter().map(ToString::to_string).collect(),
        functions: metrics
            .functions
            .iter()
            .map(|calls| pb::FunctionCalls {
                function: calls.function.clone(),
                export: calls.export.wit_name().to_owned(),
                calls: calls.calls,
                records: calls.records,
                errors: calls.errors,
                call_nanos: calls.call_nanos,
                compile_ms: calls.compile_ms,
                from_cache: calls.from_cache,
            })
            .collect(),
    }
}

/// Metrics from an executor; `None` when they name no subtask.
pub fn subtask_metrics_from_proto(metrics: &pb::SubtaskMetrics) -> Option<SubtaskMetrics> {
    // Rates and ratios are shown, never computed with: anything not finite reads as 0.
    let finite = |value: f64| if value.is_finite() { value.max(0.0) } else { 0.0 };
    Some(SubtaskMetrics {
        task: task_ref_from_proto(metrics.task.as_ref()?)?,
        records_in: metrics.records_in,
        records_out: metrics.records_out,
        busy_ms: metrics.busy_ms,
        records_in_per_second: finite(metrics.records_in_per_second),
        busy_ratio: finite(metrics.busy_ratio).min(1.0),
        hot_keys: metrics
            .hot_keys
            .iter()
            .map(|hot| HotKey {
                key: hot.key.clone(),
                count: hot.count,
                error: hot.error,
            })
            .collect(),
        keys_counted: metrics.keys_counted,
        chained: metrics.chained.iter().map(|id| OperatorId::from(id.as_str())).collect(),
        // A line naming an export this version does not know is left out, not guessed.
        functions: metrics
            .functions
            .iter()
            .filter_map(|calls| {
                Some(FunctionCalls {
                    function: calls.function.clone(),
                    export: UdfExport::from_wit_name(&calls.export)?,
                    calls: calls.calls,
                    records: calls.records,
                    errors: calls.errors,
                    call_nanos: calls.call_nanos,
                    compile_ms: calls.compile_ms,
                    from_cache: calls.from_cache,
                })
            })
            .collect(),
    })
}

/// A subtask reference from an executor; `None` when it names no job or operator.
pub fn task_ref_from_proto(task: &pb::TaskRef) -> Option<TaskRef> {
    if task.job_id.is_empty() || task.operator_id.is_empty() {
        return None;
    }
    Some(TaskRef {
        job_id: JobId::parse(&task.job_id).ok()?,
        subtask: SubtaskKey {
            operator_id: OperatorId::from(task.operator_id.as_str()),
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
            // A derived serialization of strings and numbers cannot fail.
            graph_json: serde_json::to_string(deployment.graph.as_ref()).unwrap_or_default(),
            restore_from: deployment
                .restore_from
                .as_ref()
                .map(|checkpoint| checkpoint_to_proto(&deployment.task.job_id, checkpoint)),
            placement: deployment.placement.iter().map(placed_subtask_to_proto).collect(),
        }),
        ExecutorCommand::Cancel(task) => Body::Cancel(pb::CancelTask {
            task: Some(task_ref_to_proto(task)),
        }),
        ExecutorCommand::TriggerCheckpoint {
            job_id,
            checkpoint_id,
            options,
        } => Body::TriggerCheckpoint(pb::TriggerCheckpoint {
            job_id: job_id.to_string(),
            checkpoint_id: checkpoint_id.0,
            pause_sources: options.sources != SourcesAfterBarrier::Continue,
            stop_sources: options.sources == SourcesAfterBarrier::Stop,
            savepoint: options.savepoint,
        }),
        ExecutorCommand::CheckpointComplete {
            job_id,
            checkpoint_id,
            acknowledged,
            oldest_retained,
        } => Body::CheckpointComplete(pb::CheckpointComplete {
            job_id: job_id.to_string(),
            checkpoint_id: checkpoint_id.0,
            acknowledged: acknowledged.iter().map(task_ref_to_proto).collect(),
            oldest_retained_checkpoint_id: oldest_retained.0,
        }),
        ExecutorCommand::DiscardJobState(job_id) => Body::DiscardJobState(pb::DiscardJobState {
            job_id: job_id.to_string(),
        }),
        ExecutorCommand::DiscardSavepointState(savepoint) => Body::DiscardSavepointState(pb::DiscardSavepointState {
            job_id: savepoint.job_id.to_string(),
            savepoint_id: savepoint.savepoint_id.0,
        }),
        ExecutorCommand::HeartbeatAck { term } => Body::HeartbeatAck(pb::HeartbeatAck { term: *term }),
        ExecutorCommand::Drained => Body::Drained(pb::Drained {}),
        ExecutorCommand::CheckpointAborted {
            job_id,
            checkpoint_id,
            reason,
        } => Body::CheckpointAborted(pb::CheckpointAborted {
            job_id: job_id.to_string(),
            checkpoint_id: checkpoint_id.0,
            reason: reason.clone(),
        }),
    };
    pb::CoordinatorMessage { body: Some(body) }
}

/// A command from the leader, read from its protobuf form: what an executor acts on.
pub fn executor_command_from_proto(message: &pb::CoordinatorMessage) -> Result<ExecutorCommand, ConvertError> {
    use pb::coordinator_message::Body;
    let task_of = |task: &Option<pb::TaskRef>, message: &'static str| {
        task.as_ref()
            .and_then(task_ref_from_proto)
            .ok_or_else(|| missing(message, "a task"))
    };
    let body = message
        .body
        .as_ref()
        .ok_or_else(|| missing("leader message", "a body"))?;
    Ok(match body {
        Body::Assignments(all) => {
            ExecutorCommand::Assignments(all.tasks.iter().filter_map(task_ref_from_proto).collect())
        }
        Body::Assign(assign) => {
            let graph: JobGraph = serde_json::from_str(&assign.graph_json)
                .map_err(|error| ConvertError::UnreadableGraph(error.to_string()))?;
            ExecutorCommand::Assign(Box::new(TaskDeployment {
                task: task_of(&assign.task, "assignment")?,
                graph: std::sync::Arc::new(graph),
                placement: assign.placement.iter().map(placed_subtask_from_proto).collect(),
                restore_from: assign.restore_from.as_ref().map(checkpoint_from_proto),
            }))
        }
        Body::Cancel(cancel) => ExecutorCommand::Cancel(task_of(&cancel.task, "cancel")?),
        Body::TriggerCheckpoint(trigger) => ExecutorCommand::TriggerCheckpoint {
            job_id: job_id_of(&trigger.job_id)?,
            checkpoint_id: CheckpointId(trigger.checkpoint_id),
            options: CheckpointOptions {
                sources: match (trigger.stop_sources, trigger.pause_sources) {
                    (true, _) => SourcesAfterBarrier::Stop,
                    (false, true) => SourcesAfterBarrier::Pause,
                    (false, false) => SourcesAfterBarrier::Continue,
                },
                savepoint: trigger.savepoint,
            },
        },
        Body::CheckpointComplete(complete) => ExecutorCommand::CheckpointComplete {
            job_id: job_id_of(&complete.job_id)?,
            checkpoint_id: CheckpointId(complete.checkpoint_id),
            acknowledged: complete.acknowledged.iter().filter_map(task_ref_from_proto).collect(),
            oldest_retained: CheckpointId(complete.oldest_retained_checkpoint_id),
        },
        Body::CheckpointAborted(aborted) => ExecutorCommand::CheckpointAborted {
            job_id: job_id_of(&aborted.job_id)?,
            checkpoint_id: CheckpointId(aborted.checkpoint_id),
            reason: aborted.reason.clone(),
        },
        Body::DiscardJobState(discard) => ExecutorCommand::DiscardJobState(job_id_of(&discard.job_id)?),
        Body::DiscardSavepointState(discard) => ExecutorCommand::DiscardSavepointState(SavepointRef {
            job_id: job_id_of(&discard.job_id)?,
            savepoint_id: CheckpointId(discard.savepoint_id),
        }),
        Body::HeartbeatAck(ack) => ExecutorCommand::HeartbeatAck { term: ack.term },
        Body::Drained(_) => ExecutorCommand::Drained,
    })
}

/// The session message body that carries an executor's report.
pub fn task_report_to_proto(report: &TaskReport) -> pb::executor_message::Body {
    let status = |task: &TaskRef, outcome: pb::TaskOutcome, reason: &str| {
        pb::executor_message::Body::TaskStatus(pb::TaskStatus {
            task: Some(task_ref_to_proto(task)),
            reason: reason.to_owned(),
            outcome: outcome as i32,
            restore_ms: 0,
        })
    };
    match report {
        TaskReport::Running { task, restore_ms } => pb::executor_message::Body::TaskStatus(pb::TaskStatus {
            task: Some(task_ref_to_proto(task)),
            reason: String::new(),
            outcome: pb::TaskOutcome::Running as i32,
            restore_ms: *restore_ms,
        }),
        TaskReport::InputEnded(task) => status(task, pb::TaskOutcome::InputEnded, ""),
        TaskReport::Finished(task) => status(task, pb::TaskOutcome::Finished, ""),
        TaskReport::Failed {
            task,
            cannot_restore,
            reason,
        } => status(
            task,
            if *cannot_restore {
                pb::TaskOutcome::RestoreFailed
            } else {
                pb::TaskOutcome::Failed
            },
            reason,
        ),
        TaskReport::CheckpointAck {
            task,
            checkpoint_id,
            state,
            source_offset,
        } => pb::executor_message::Body::CheckpointAck(pb::CheckpointAck {
            task: Some(task_ref_to_proto(task)),
            checkpoint_id: checkpoint_id.0,
            source_offsets: source_offset
                .map(|offset| pb::SourceOffset {
                    operator_id: task.subtask.operator_id.to_string(),
                    subtask_index: task.subtask.subtask_index,
                    offset,
                })
                .into_iter()
                .collect(),
            state: Some(task_state_to_proto(state)),
        }),
        TaskReport::CheckpointWanted { task, trigger } => {
            pb::executor_message::Body::CheckpointWanted(pb::CheckpointWanted {
                task: Some(task_ref_to_proto(task)),
                trigger: trigger.to_string(),
            })
        }
    }
}

/// A source's request for a checkpoint; `None` when it names no subtask or no known trigger.
pub fn checkpoint_wanted_from_proto(wanted: &pb::CheckpointWanted) -> Option<TaskReport> {
    Some(TaskReport::CheckpointWanted {
        task: task_ref_from_proto(wanted.task.as_ref()?)?,
        trigger: wanted.trigger.parse().ok()?,
    })
}

/// A subtask's status from an executor; `None` when it names no subtask or no known outcome.
pub fn task_status_from_proto(status: &pb::TaskStatus) -> Option<TaskReport> {
    let task = task_ref_from_proto(status.task.as_ref()?)?;
    match pb::TaskOutcome::try_from(status.outcome).ok()? {
        pb::TaskOutcome::Running => Some(TaskReport::Running {
            task,
            restore_ms: status.restore_ms,
        }),
        pb::TaskOutcome::InputEnded => Some(TaskReport::InputEnded(task)),
        pb::TaskOutcome::Finished => Some(TaskReport::Finished(task)),
        pb::TaskOutcome::Failed | pb::TaskOutcome::RestoreFailed => Some(TaskReport::Failed {
            task,
            cannot_restore: status.outcome == pb::TaskOutcome::RestoreFailed as i32,
            reason: status.reason.clone(),
        }),
        pb::TaskOutcome::Unspecified => None,
    }
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
            task.subtask.operator_id == offset.operator_id.as_str()
                && offset.subtask_index == task.subtask.subtask_index
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
    use crate::checkpoint::CheckpointTrigger;

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
            trigger: Default::default(),
        };
        let wire = checkpoint_to_proto(&JobId::from_number(1), &checkpoint);
        assert_eq!(wire.job_id, "job-1");
        assert_eq!(checkpoint_from_proto(&wire), checkpoint);
    }

    fn task(operator_id: &str, epoch: u64) -> TaskRef {
        TaskRef {
            job_id: JobId::from_number(4),
            subtask: SubtaskKey {
                operator_id: operator_id.into(),
                subtask_index: 1,
            },
            epoch: Epoch(epoch),
        }
    }

    #[test]
    fn an_acknowledgement_reads_back_as_the_leader_decodes_it() {
        let state = TaskStateHandle {
            subtask: task("lines", 6).subtask,
            location: "job-4/chk-9/lines-1-e6.state".into(),
            inline_state: Vec::new(),
            size_bytes: 2_048,
            checksum: 77,
        };
        let report = TaskReport::CheckpointAck {
            task: task("lines", 6),
            checkpoint_id: CheckpointId(9),
            state: state.clone(),
            source_offset: Some(12_345),
        };
        let pb::executor_message::Body::CheckpointAck(wire) = task_report_to_proto(&report) else {
            panic!("an acknowledgement must travel as CheckpointAck");
        };
        let Some((decoded_task, checkpoint_id, ack)) = checkpoint_ack_from_proto(&wire) else {
            panic!("the leader could not decode {wire:?}");
        };
        assert_eq!(decoded_task, task("lines", 6));
        assert_eq!(checkpoint_id, CheckpointId(9));
        assert_eq!(ack.state, state);
        assert_eq!(ack.source_offset, Some(12_345));
    }

    #[test]
    fn every_status_reads_back_as_sent() {
        let failed = |cannot_restore| TaskReport::Failed {
            task: task("counts", 2),
            cannot_restore,
            reason: "disk full".into(),
        };
        for report in [
            TaskReport::Running {
                task: task("counts", 1),
                restore_ms: 1_234,
            },
            TaskReport::InputEnded(task("lines", 1)),
            TaskReport::Finished(task("out", 3)),
            failed(false),
            failed(true),
        ] {
            let pb::executor_message::Body::TaskStatus(wire) = task_report_to_proto(&report) else {
                panic!("{report:?} must travel as a TaskStatus");
            };
            assert_eq!(task_status_from_proto(&wire), Some(report));
        }
        let wanted = TaskReport::CheckpointWanted {
            task: task("lines", 0),
            trigger: CheckpointTrigger::Bytes,
        };
        let pb::executor_message::Body::CheckpointWanted(wire) = task_report_to_proto(&wanted) else {
            panic!("a checkpoint request travels as itself");
        };
        assert_eq!(checkpoint_wanted_from_proto(&wire), Some(wanted));
        let unknown_trigger = pb::CheckpointWanted {
            trigger: "moon phase".into(),
            ..wire
        };
        assert_eq!(checkpoint_wanted_from_proto(&unknown_trigger), None);
        let unknown = pb::TaskStatus {
            task: Some(task_ref_to_proto(&task("out", 3))),
            reason: String::new(),
            outcome: 99,
            restore_ms: 0,
        };
        assert_eq!(
            task_status_from_proto(&unknown),
            None,
            "an outcome from a newer executor is ignored"
        );
    }

    #[test]
    fn every_leader_command_reads_back_as_sent() {
        let graph = crate::spec::parse_job_spec(
            r#"{"name": "round-trip", "operators": [
                {"id": "lines", "kind": "generator", "params": {"count": 10}},
                {"id": "out", "kind": "print", "inputs": ["lines"]}]}"#,
        )
        .expect("a valid spec");
        let job_id = JobId::from_number(4);
        let commands = [
            ExecutorCommand::Assignments(vec![task("lines", 1), task("out", 2)]),
            ExecutorCommand::Assign(Box::new(TaskDeployment {
                task: task("lines", 1),
                graph: std::sync::Arc::new(graph),
                placement: vec![PlacedSubtask {
                    subtask: task("out", 2).subtask,
                    executor_id: ExecutorId("exec-a".into()),
                    executor_address: "127.0.0.1:7000".into(),
                    epoch: Epoch(2),
                }],
                restore_from: None,
            })),
            ExecutorCommand::Cancel(task("out", 2)),
            ExecutorCommand::TriggerCheckpoint {
                job_id,
                checkpoint_id: CheckpointId(5),
                options: CheckpointOptions {
                    sources: SourcesAfterBarrier::Pause,
                    savepoint: false,
                },
            },
            ExecutorCommand::TriggerCheckpoint {
                job_id,
                checkpoint_id: CheckpointId(6),
                options: CheckpointOptions {
                    sources: SourcesAfterBarrier::Stop,
                    savepoint: true,
                },
            },
            ExecutorCommand::TriggerCheckpoint {
                job_id,
                checkpoint_id: CheckpointId(7),
                options: CheckpointOptions::default(),
            },
            ExecutorCommand::DiscardSavepointState(SavepointRef {
                job_id,
                savepoint_id: CheckpointId(6),
            }),
            ExecutorCommand::Drained,
            ExecutorCommand::CheckpointComplete {
                job_id,
                checkpoint_id: CheckpointId(5),
                acknowledged: vec![task("lines", 1)],
                oldest_retained: CheckpointId(3),
            },
            ExecutorCommand::CheckpointAborted {
                job_id,
                checkpoint_id: CheckpointId(6),
                reason: "timed out".into(),
            },
            ExecutorCommand::DiscardJobState(job_id),
            ExecutorCommand::HeartbeatAck { term: 12 },
        ];
        for command in commands {
            let wire = executor_command_to_proto(&command);
            assert_eq!(executor_command_from_proto(&wire), Ok(command));
        }
    }

    #[test]
    fn an_assignment_with_a_broken_graph_or_no_task_is_refused_by_name() {
        let assign = |task: Option<pb::TaskRef>, graph_json: &str| pb::CoordinatorMessage {
            body: Some(pb::coordinator_message::Body::Assign(pb::AssignTask {
                task,
                graph_json: graph_json.into(),
                restore_from: None,
                placement: Vec::new(),
            })),
        };
        let refused = executor_command_from_proto(&assign(Some(task_ref_to_proto(&task("lines", 1))), "{"));
        assert!(matches!(refused, Err(ConvertError::UnreadableGraph(_))), "{refused:?}");
        assert_eq!(
            executor_command_from_proto(&pb::CoordinatorMessage { body: None }),
            Err(missing("leader message", "a body"))
        );
    }
}
