//! The history behind the fifth set of golden files in `coordinator/tests/golden/` (`-v5`): a job
//! with slot sharing (`slot_sharing: true` in its graph, a `slot_sharing_group` on its sink) and
//! the default restart strategy of that change (exponential backoff with `first_delay_ms` and
//! `reset_after_ms`), on two executors of two slots. Slices take one slot whatever their subtask
//! count; a member placed apart from its slice is refused; two failures in a row count a run of
//! restarts (`restart_streak`). The compatibility test reads the files back and checks that they
//! are written the same way today.

use openraft::Entry;

use super::golden_history::{entries_of, exec, register_two_executors, subtask};
use super::TypeConfig;
use crate::state_machine::{Command, JobStatus};
use raftstream_api::ids::{Epoch, JobId, RequestId};
use raftstream_api::spec::{parse_job_spec, JobGraph};

const JOB_SPEC: &str = r#"{"name": "shared", "parallelism": 2,
  "operators": [
    {"id": "lines", "kind": "generator", "params": {"seed": 5, "rate_per_second": 100}},
    {"id": "by_line", "kind": "key_by", "inputs": ["lines"]},
    {"id": "counts", "kind": "count", "inputs": ["by_line"]},
    {"id": "out", "kind": "print", "inputs": ["counts"], "parallelism": 1, "slot_sharing_group": "sink"}]}"#;

/// The position in [`commands`] of the placement that is refused (apart from its slice).
pub const REFUSED_PLACEMENT: usize = 7;

fn graph() -> JobGraph {
    match parse_job_spec(JOB_SPEC) {
        Ok(graph) => graph,
        Err(error) => panic!("golden spec: {error}"),
    }
}

/// The commands of the history, in log order (index 3 onwards: 1 is blank, 2 a membership).
pub fn commands() -> Vec<Command> {
    let job_id = JobId::from_number(1);
    let place = |operator: &str, index: u32, executor: &str, at_ms| Command::AssignSubtask {
        job_id,
        subtask: subtask(operator, index),
        executor_id: exec(executor),
        at_ms,
    };
    let start = |through: u64, at_ms| Command::TransitionJob {
        job_id,
        to: JobStatus::Running,
        reason: String::new(),
        at_ms,
        deployed_through_epoch: Some(Epoch(through)),
    };
    let fail = |epoch: u64, at_ms| Command::FailSubtask {
        job_id,
        subtask: subtask("counts", 0),
        epoch: Epoch(epoch),
        reason: "a record the function could not take".to_owned(),
        fatal: false,
        at_ms,
    };
    let [register_a, register_b] = register_two_executors(2);
    vec![
        register_a,
        register_b,
        Command::SubmitJob {
            request_id: Some(RequestId("cli-submit-1".to_owned())),
            graph: graph(),
            at_ms: 1_010,
            from_savepoint: None,
            allow_unmatched_state: false,
        },
        // Slice 0 of the default group on exec-a (one slot for three subtasks): epochs 1-3.
        place("lines", 0, "exec-a", 1_020),
        place("by_line", 0, "exec-a", 1_020),
        place("counts", 0, "exec-a", 1_020),
        // Slice 1 on exec-b (epoch 4); REFUSED_PLACEMENT: its count on exec-a, apart from it.
        place("lines", 1, "exec-b", 1_021),
        place("counts", 1, "exec-a", 1_021),
        place("by_line", 1, "exec-b", 1_022),
        place("counts", 1, "exec-b", 1_022),
        // The sink's group takes exec-a's second slot (epoch 7).
        place("out", 0, "exec-a", 1_023),
        start(7, 1_030),
        // Two failures 20 ms apart: a run of two restarts.
        fail(3, 2_000),
        place("lines", 0, "exec-a", 2_001),
        place("by_line", 0, "exec-a", 2_001),
        place("counts", 0, "exec-a", 2_001),
        place("lines", 1, "exec-b", 2_001),
        place("by_line", 1, "exec-b", 2_001),
        place("counts", 1, "exec-b", 2_001),
        place("out", 0, "exec-a", 2_001),
        start(14, 2_010),
        fail(10, 2_020),
    ]
}

/// The whole log: a blank entry, the first membership, then the commands.
pub fn entries() -> Vec<Entry<TypeConfig>> {
    entries_of(commands())
}
