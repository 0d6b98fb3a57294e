//! The history behind the third set of golden files in `coordinator/tests/golden/` (`-v3`): what
//! skew handling and volume-triggered checkpoints added to the log (a graph with `rebalance`,
//! `broadcast` and `rescale` exchanges, a two-phase window and a `two_phase: auto` count;
//! checkpoints recording what triggered them; the leader's switch of the count to two phases), as
//! the coordinator writes them since. Every command applies; the compatibility test reads the
//! files back and checks that they are written the same way today.

use openraft::Entry;

use super::golden_history::{entries_of, graph_of, register_two_executors, subtask};
use super::golden_history_v2::place_all;
use super::TypeConfig;
use crate::state_machine::Command;
use raftstream_api::checkpoint::CheckpointTrigger;
use raftstream_api::checkpoint::{CompletedCheckpoint, TaskStateHandle};
use raftstream_api::ids::{CheckpointId, Epoch, JobId, RequestId};
use raftstream_api::spec::JobGraph;

/// A skewed word count: checkpoints bounded by records and bytes, the count switching to two
/// phases by itself, a two-phase window, and every exchange kind besides `key_by`.
const JOB_SPEC: &str = r#"{"name": "skewed", "parallelism": 2,
  "checkpoint": {"interval_ms": 5000, "max_records": 100000, "max_bytes": "64MiB", "min_pause_ms": 100},
  "operators": [
    {"id": "lines", "kind": "generator", "params": {"seed": 5, "vocabulary_size": 100, "hot_word_percent": 90}},
    {"id": "spread", "kind": "rebalance", "inputs": ["lines"]},
    {"id": "words", "kind": "flat_map", "inputs": ["spread"], "params": {"function": "split_words"}},
    {"id": "by_word", "kind": "key_by", "inputs": ["words"]},
    {"id": "counts", "kind": "count", "inputs": ["by_word"], "params": {"two_phase": "auto", "skew_factor": 1.5}},
    {"id": "per_second", "kind": "tumbling_window", "inputs": ["by_word"], "params": {"size_ms": 1000, "aggregate": "count", "two_phase": true, "flush_ms": 50}},
    {"id": "local", "kind": "rescale", "inputs": ["counts"]},
    {"id": "out", "kind": "file_sink", "inputs": ["local"], "params": {"path": "/tmp/golden-skewed"}},
    {"id": "everywhere", "kind": "broadcast", "inputs": ["per_second"]},
    {"id": "shown", "kind": "print", "inputs": ["everywhere"]}]}"#;

fn graph() -> JobGraph {
    graph_of(JOB_SPEC)
}

/// Completed checkpoint `id` of job-1 at `epoch`, with one stored and one inline state, started
/// by `trigger`.
fn checkpoint(id: u64, epoch: u64, at_ms: u64, trigger: CheckpointTrigger) -> CompletedCheckpoint {
    CompletedCheckpoint {
        checkpoint_id: CheckpointId(id),
        epoch: Epoch(epoch),
        task_states: vec![
            TaskStateHandle {
                subtask: subtask("counts", 0),
                location: format!("job-1/chk-{id}/counts-0-e{epoch}.state"),
                inline_state: Vec::new(),
                size_bytes: 8_192,
                checksum: 0x1234_5678_9abc_def0 ^ id,
            },
            TaskStateHandle {
                subtask: subtask("lines", 0),
                location: String::new(),
                inline_state: format!(r#"{{"position":{}}}"#, id * 50_000).into_bytes(),
                size_bytes: 18,
                checksum: id,
            },
        ],
        source_offsets: [(subtask("lines", 0), id * 50_000), (subtask("lines", 1), id * 50_000)].into(),
        size_bytes: 8_210,
        completed_at_ms: at_ms + 60,
        triggered_at_ms: at_ms,
        acknowledged_epochs: Default::default(),
        trigger,
    }
}

/// The commands of the history, in log order (index 3 onwards: 1 is blank, 2 a membership).
pub fn commands() -> Vec<Command> {
    let job_id = JobId::from_number(1);
    let [register_a, register_b] = register_two_executors(16);
    let mut commands = vec![
        register_a,
        register_b,
        Command::SubmitJob {
            request_id: Some(RequestId("cli-submit-1".to_owned())),
            graph: graph(),
            at_ms: 1_010,
            from_savepoint: None,
            allow_unmatched_state: false,
        },
    ];
    place_all(&mut commands, &graph(), &["exec-a", "exec-b"], 1_020);
    // Checkpoints started by the record bound, the byte bound and the interval.
    for (id, at_ms, trigger) in [
        (1, 1_400, CheckpointTrigger::Records),
        (2, 1_800, CheckpointTrigger::Bytes),
        (3, 6_800, CheckpointTrigger::Interval),
    ] {
        commands.push(Command::TriggerCheckpoint { job_id, at_ms });
        commands.push(Command::CompleteCheckpoint {
            job_id,
            checkpoint: checkpoint(id, 20, at_ms, trigger),
            savepoint: false,
        });
    }
    // The skew watch saw counts[1] take most of the input: a checkpoint with paused sources, then
    // the switch.
    let reason = "counts[1] took 1.9x the mean input (1,800 of 950 records/s) for 2 s".to_owned();
    commands.push(Command::RequestTwoPhase {
        job_id,
        operator_id: "counts".into(),
        at_ms: 7_000,
        reason: reason.clone(),
    });
    commands.push(Command::TriggerCheckpoint { job_id, at_ms: 7_000 });
    commands.push(Command::CompleteCheckpoint {
        job_id,
        checkpoint: checkpoint(4, 20, 7_000, CheckpointTrigger::Rescale),
        savepoint: false,
    });
    commands.push(Command::SwitchTwoPhase {
        job_id,
        operator_id: "counts".into(),
        at_ms: 7_100,
        reason,
    });
    place_all(&mut commands, &graph(), &["exec-a", "exec-b"], 7_150);
    commands
}

/// The whole log: a blank entry, the first membership, then the commands.
pub fn entries() -> Vec<Entry<TypeConfig>> {
    entries_of(commands())
}
