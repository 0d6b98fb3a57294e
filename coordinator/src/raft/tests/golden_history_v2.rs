//! The history behind the second set of golden files in `coordinator/tests/golden/` (`-v2`): the
//! commands elasticity added (savepoints taken, failed and deleted, a job resumed from one,
//! rescales asked by a user and by the autoscaler, an executor drained and its job moved), as the
//! coordinator writes them since. Every command of it applies; the compatibility test reads the
//! files back and checks that they are written the same way today.

use openraft::Entry;

use super::golden_history::{entries_of, exec, graph_of, register_two_executors, subtask};
use super::TypeConfig;
use crate::state_machine::{Command, JobStatus};
use raftstream_api::checkpoint::SavepointRef;
use raftstream_api::checkpoint::{CompletedCheckpoint, TaskStateHandle};
use raftstream_api::ids::{CheckpointId, Epoch, JobId, RequestId};
use raftstream_api::spec::JobGraph;

/// A word count whose `counts` operator runs at the parallelism the free slots allow (up to 4).
const JOB_SPEC: &str = r#"{"name": "elastic", "parallelism": 1, "max_parallelism": 32,
  "checkpoint": {"interval_ms": 200, "retained": 1},
  "autoscale": {"stabilization_ms": 500},
  "operators": [
    {"id": "lines", "kind": "generator", "params": {"seed": 5, "rate_per_second": 1000}},
    {"id": "words", "kind": "flat_map", "inputs": ["lines"], "params": {"function": "split_words"}},
    {"id": "by_word", "kind": "key_by", "inputs": ["words"]},
    {"id": "counts", "kind": "count", "inputs": ["by_word"], "parallelism": {"min": 1, "max": 4}},
    {"id": "out", "kind": "file_sink", "inputs": ["counts"], "params": {"path": "/tmp/golden-elastic"}}]}"#;

fn graph() -> JobGraph {
    graph_of(JOB_SPEC)
}

fn request(name: &str) -> Option<RequestId> {
    Some(RequestId(name.to_owned()))
}

/// Completed checkpoint `id` of job-1 at `epoch`, with one stored and one inline state.
fn checkpoint(id: u64, epoch: u64, at_ms: u64, savepoint: bool) -> CompletedCheckpoint {
    let prefix = if savepoint {
        format!("savepoints/job-1/sp-{id}")
    } else {
        format!("job-1/chk-{id}")
    };
    CompletedCheckpoint {
        checkpoint_id: CheckpointId(id),
        epoch: Epoch(epoch),
        task_states: vec![
            TaskStateHandle {
                subtask: subtask("counts", 0),
                location: format!("{prefix}/counts-0-e{epoch}.state"),
                inline_state: Vec::new(),
                size_bytes: 4_096,
                checksum: 0x0fed_cba9_8765_4321 ^ id,
            },
            TaskStateHandle {
                subtask: subtask("lines", 0),
                location: String::new(),
                inline_state: format!(r#"{{"position":{}}}"#, id * 100).into_bytes(),
                size_bytes: 16,
                checksum: id,
            },
        ],
        source_offsets: [(subtask("lines", 0), id * 100)].into(),
        size_bytes: 4_112,
        completed_at_ms: at_ms + 40,
        triggered_at_ms: at_ms,
        acknowledged_epochs: Default::default(),
        trigger: Default::default(),
    }
}

/// Places every subtask of job-1's current graph, alternating between `executors`.
pub(super) fn place_all(commands: &mut Vec<Command>, graph: &JobGraph, executors: &[&str], at_ms: u64) {
    let job_id = JobId::from_number(1);
    let mut position = 0usize;
    for operator in &graph.operators {
        for index in 0..operator.parallelism {
            commands.push(Command::AssignSubtask {
                job_id,
                subtask: subtask(operator.id.as_str(), index),
                executor_id: exec(executors[position % executors.len()]),
                at_ms,
            });
            position += 1;
        }
    }
    commands.push(Command::TransitionJob {
        job_id,
        to: JobStatus::Running,
        reason: String::new(),
        at_ms: at_ms + 1,
        deployed_through_epoch: None,
    });
}

/// The commands of the history, in log order (index 3 onwards: 1 is blank, 2 a membership).
pub fn commands() -> Vec<Command> {
    let job_id = JobId::from_number(1);
    let savepoint = |id| SavepointRef {
        job_id,
        savepoint_id: CheckpointId(id),
    };
    let started = graph().with_auto_parallelism(4);
    let [register_a, register_b] = register_two_executors(4);
    let mut commands = vec![
        register_a,
        register_b,
        // Eight free slots: `counts` starts at 4 beside the four other operators.
        Command::SubmitJob {
            request_id: request("cli-submit-1"),
            graph: graph(),
            at_ms: 1_010,
            from_savepoint: None,
            allow_unmatched_state: false,
        },
    ];
    place_all(&mut commands, &started, &["exec-a", "exec-b"], 1_020);
    // Two savepoints; the second is deleted once a later checkpoint completed.
    for (id, at_ms) in [(1, 1_500), (2, 1_700)] {
        commands.push(Command::RequestSavepoint {
            request_id: request(&format!("cli-savepoint-{id}")),
            job_id,
            stop: false,
            at_ms,
        });
        commands.push(Command::TriggerCheckpoint { job_id, at_ms });
        commands.push(Command::CompleteCheckpoint {
            job_id,
            checkpoint: checkpoint(id, 8, at_ms, true),
            savepoint: true,
        });
    }
    // A user rescales `counts` to 2 through a checkpoint taken for it.
    commands.push(Command::RequestRescale {
        request_id: request("cli-rescale-1"),
        job_id,
        operator_id: Some("counts".into()),
        parallelism: 2,
        at_ms: 2_000,
        auto: false,
        reason: String::new(),
    });
    commands.push(Command::TriggerCheckpoint { job_id, at_ms: 2_000 });
    commands.push(Command::CompleteCheckpoint {
        job_id,
        checkpoint: checkpoint(3, 8, 2_000, false),
        savepoint: false,
    });
    commands.push(Command::RescaleJob {
        job_id,
        operator_id: Some("counts".into()),
        parallelism: 2,
        at_ms: 2_050,
        auto: false,
        reason: String::new(),
    });
    let rescaled = started.with_auto_parallelism(2);
    place_all(&mut commands, &rescaled, &["exec-a", "exec-b"], 2_100);
    commands.push(Command::DeleteSavepoint {
        request_id: request("cli-delete-2"),
        savepoint: savepoint(2),
    });
    // exec-c joins; exec-a is drained: its subtasks move through a checkpoint taken for it.
    commands.push(Command::RegisterExecutor {
        executor_id: exec("exec-c"),
        address: "127.0.0.1:7003".into(),
        slots: 8,
        at_ms: 2_500,
    });
    commands.push(Command::DrainExecutor {
        request_id: request("cli-drain-a"),
        executor_id: exec("exec-a"),
        at_ms: 2_600,
    });
    commands.push(Command::TriggerCheckpoint { job_id, at_ms: 2_600 });
    commands.push(Command::CompleteCheckpoint {
        job_id,
        checkpoint: checkpoint(4, 14, 2_600, false),
        savepoint: false,
    });
    commands.push(Command::RelocateJob { job_id, at_ms: 2_700 });
    place_all(&mut commands, &rescaled, &["exec-b", "exec-c"], 2_750);
    // A stop with a savepoint whose checkpoint expired.
    commands.push(Command::RequestSavepoint {
        request_id: request("cli-stop-1"),
        job_id,
        stop: true,
        at_ms: 3_000,
    });
    commands.push(Command::TriggerCheckpoint { job_id, at_ms: 3_000 });
    commands.push(Command::FailSavepoint {
        job_id,
        reason: "checkpoint 5 expired before every task acknowledged it".into(),
        at_ms: 3_100,
    });
    // The autoscaler grows `counts` into the joined executor's slots.
    commands.push(Command::RequestRescale {
        request_id: None,
        job_id,
        operator_id: None,
        parallelism: 4,
        at_ms: 3_500,
        auto: true,
        reason: "executor exec-c joined: 4 more slots".into(),
    });
    commands.push(Command::TriggerCheckpoint { job_id, at_ms: 3_500 });
    commands.push(Command::CompleteCheckpoint {
        job_id,
        checkpoint: checkpoint(6, 20, 3_500, false),
        savepoint: false,
    });
    commands.push(Command::RescaleJob {
        job_id,
        operator_id: None,
        parallelism: 4,
        at_ms: 3_600,
        auto: true,
        reason: "executor exec-c joined: 4 more slots".into(),
    });
    // A second job starts from the first savepoint, dropping nothing.
    commands.push(Command::SubmitJob {
        request_id: request("cli-submit-2"),
        graph: graph(),
        at_ms: 4_000,
        from_savepoint: Some(savepoint(1)),
        allow_unmatched_state: true,
    });
    commands
}

/// The whole log: a blank entry, the first membership, then the commands.
pub fn entries() -> Vec<Entry<TypeConfig>> {
    entries_of(commands())
}
