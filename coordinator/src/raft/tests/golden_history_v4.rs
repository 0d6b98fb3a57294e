//! The history behind the fourth set of golden files in `coordinator/tests/golden/` (`-v4`): a
//! job's start that names the placement it deployed (`deployed_through_epoch`), as the leader
//! writes it since; one such start arrives after the executor it deployed to was declared dead
//! and is refused, the next one, for the placement made after the death, starts the job. Every
//! other command applies; the compatibility test reads the files back and checks that they are
//! written the same way today.

use openraft::Entry;

use super::golden_history::{entries_of, exec, graph_of, register_two_executors, subtask};
use super::TypeConfig;
use crate::state_machine::{Command, JobStatus};
use raftstream_api::ids::{Epoch, JobId, RequestId};
use raftstream_api::spec::JobGraph;

const JOB_SPEC: &str = r#"{"name": "ticks", "parallelism": 1,
  "operators": [
    {"id": "ticks", "kind": "generator", "params": {"seed": 7, "rate_per_second": 100}},
    {"id": "out", "kind": "print", "inputs": ["ticks"]}]}"#;

/// The position in [`commands`] of the start that is refused.
pub const REFUSED_START: usize = 8;

fn graph() -> JobGraph {
    graph_of(JOB_SPEC)
}

/// The commands of the history, in log order (index 3 onwards: 1 is blank, 2 a membership).
pub fn commands() -> Vec<Command> {
    let job_id = JobId::from_number(1);
    let place = |operator: &str, executor: &str, at_ms| Command::AssignSubtask {
        job_id,
        subtask: subtask(operator, 0),
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
    let [register_a, register_b] = register_two_executors(4);
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
        // Epochs 1 and 2, started through epoch 2.
        place("ticks", "exec-b", 1_020),
        place("out", "exec-b", 1_020),
        start(2, 1_030),
        // exec-b dies while running: the job restarts on exec-a with epochs 3 and 4.
        Command::MarkExecutorDead {
            executor_id: exec("exec-b"),
            at_ms: 2_000,
        },
        place("ticks", "exec-a", 2_010),
        // REFUSED_START: a start the leader deployed before it saw the placement change.
        start(2, 2_011),
        place("out", "exec-a", 2_012),
        start(4, 2_020),
        Command::CancelJob {
            request_id: Some(RequestId("cli-cancel-1".to_owned())),
            job_id,
            at_ms: 3_000,
        },
    ]
}

/// The whole log: a blank entry, the first membership, then the commands.
pub fn entries() -> Vec<Entry<TypeConfig>> {
    entries_of(commands())
}
