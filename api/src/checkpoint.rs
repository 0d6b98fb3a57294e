//! Checkpoint metadata as the Raft state records it and executors restore from it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::ids::{CheckpointId, Epoch, OperatorId};

/// One subtask of a job: an operator and the index of its parallel instance.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct SubtaskKey {
    pub operator_id: OperatorId,
    pub subtask_index: u32,
}

/// Where one subtask's state of a checkpoint lives.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskStateHandle {
    pub subtask: SubtaskKey,
    /// Location in the checkpoint store; empty when the state is inline.
    pub location: String,
    pub inline_state: Vec<u8>,
    pub size_bytes: u64,
    /// FNV-1a 64 of the state bytes, verified on restore.
    #[serde(default)]
    pub checksum: u64,
}

/// A checkpoint whose `CompleteCheckpoint` entry is committed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CompletedCheckpoint {
    pub checkpoint_id: CheckpointId,
    /// The highest assignment epoch of the job when the checkpoint was taken.
    pub epoch: Epoch,
    pub task_states: Vec<TaskStateHandle>,
    #[serde(with = "crate::serde_pairs")]
    pub source_offsets: BTreeMap<SubtaskKey, u64>,
    pub size_bytes: u64,
    pub completed_at_ms: u64,
    /// When the leader triggered it (0 in checkpoints recorded before this field existed).
    #[serde(default)]
    pub triggered_at_ms: u64,
    /// The placement that acknowledged it: every subtask at the epoch it ran when the barrier
    /// passed. Committing the checkpoint requires this to still be the job's placement (empty in
    /// checkpoints recorded before this field existed, which are not checked, so an old log
    /// replays to the same state).
    #[serde(default, with = "crate::serde_pairs")]
    pub acknowledged_epochs: BTreeMap<SubtaskKey, Epoch>,
    /// What started it (absent, and read as the interval, in checkpoints recorded before).
    #[serde(default, skip_serializing_if = "CheckpointTrigger::is_interval")]
    pub trigger: CheckpointTrigger,
}

/// What made the leader start a checkpoint.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CheckpointTrigger {
    /// `checkpoint.interval_ms` passed.
    #[default]
    Interval,
    /// The sources emitted `checkpoint.max_records` records since the last completed checkpoint
    /// (half of it, in fact: the checkpoint should complete before they must wait).
    Records,
    /// The sources emitted `checkpoint.max_bytes` since the last completed checkpoint (half).
    Bytes,
    /// A bounded source read its last record: the final checkpoint.
    EndOfInput,
    /// A savepoint was asked for.
    Savepoint,
    /// A rescale or a move off a draining executor: the job restarts from it.
    Rescale,
}

impl CheckpointTrigger {
    pub fn is_interval(&self) -> bool {
        *self == CheckpointTrigger::Interval
    }

    pub fn as_str(&self) -> &'static str {
        match self {
            CheckpointTrigger::Interval => "interval",
            CheckpointTrigger::Records => "records",
            CheckpointTrigger::Bytes => "bytes",
            CheckpointTrigger::EndOfInput => "end_of_input",
            CheckpointTrigger::Savepoint => "savepoint",
            CheckpointTrigger::Rescale => "rescale",
        }
    }
}

impl std::fmt::Display for CheckpointTrigger {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str(self.as_str())
    }
}

impl std::str::FromStr for CheckpointTrigger {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        [
            CheckpointTrigger::Interval,
            CheckpointTrigger::Records,
            CheckpointTrigger::Bytes,
            CheckpointTrigger::EndOfInput,
            CheckpointTrigger::Savepoint,
            CheckpointTrigger::Rescale,
        ]
        .into_iter()
        .find(|trigger| trigger.as_str() == text)
        .ok_or_else(|| format!("{text:?} is not a checkpoint trigger"))
    }
}

/// A savepoint: a checkpoint a user took and owns. It is named by its job and its checkpoint id
/// (`job-3:17`), kept until deleted, and a new job can start from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct SavepointRef {
    pub job_id: crate::ids::JobId,
    pub savepoint_id: CheckpointId,
}

/// Text that does not name a savepoint.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} does not name a savepoint (write JOB:SAVEPOINT, e.g. job-3:17)")]
pub struct NotASavepoint(pub String);

impl SavepointRef {
    /// Reads `job-3:17`.
    pub fn parse(text: &str) -> Result<SavepointRef, NotASavepoint> {
        let (job, savepoint) = text
            .trim()
            .split_once(':')
            .ok_or_else(|| NotASavepoint(text.to_owned()))?;
        let job_id = crate::ids::JobId::parse(job).map_err(|_| NotASavepoint(text.to_owned()))?;
        let savepoint_id = savepoint
            .parse::<u64>()
            .ok()
            .filter(|id| *id > 0)
            .ok_or_else(|| NotASavepoint(text.to_owned()))?;
        Ok(SavepointRef {
            job_id,
            savepoint_id: CheckpointId(savepoint_id),
        })
    }

    /// Where executors store this savepoint's state, apart from the job's checkpoints so that
    /// neither checkpoint retention nor the end of the job removes it.
    pub fn state_prefix(&self) -> String {
        format!("savepoints/{}/sp-{}", self.job_id, self.savepoint_id.0)
    }
}

impl std::fmt::Display for SavepointRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.job_id, self.savepoint_id.0)
    }
}

impl std::str::FromStr for SavepointRef {
    type Err = NotASavepoint;

    fn from_str(text: &str) -> Result<SavepointRef, NotASavepoint> {
        SavepointRef::parse(text)
    }
}

/// What the sources do after a checkpoint's barrier.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum SourcesAfterBarrier {
    /// Go on reading (every periodic checkpoint).
    #[default]
    Continue,
    /// Read nothing more unless the checkpoint is aborted: the job restarts from it (a rescale).
    Pause,
    /// Read nothing more, and end the stream once the checkpoint completed, so every task
    /// finishes after publishing it (stop with a savepoint). An abort resumes reading.
    Stop,
}

/// How a checkpoint is taken: what the sources do after its barrier, and whether it is a
/// savepoint (its state stored under the savepoint's own prefix, never removed with the job's
/// checkpoints).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct CheckpointOptions {
    pub sources: SourcesAfterBarrier,
    pub savepoint: bool,
}

#[cfg(test)]
mod savepoint_tests {
    use super::*;
    use crate::ids::JobId;

    #[test]
    fn savepoint_names_read_back_and_bad_ones_are_refused() {
        let reference = SavepointRef::parse("job-3:17").expect("parses");
        assert_eq!(reference.job_id, JobId::from_number(3));
        assert_eq!(reference.savepoint_id, CheckpointId(17));
        assert_eq!(reference.to_string(), "job-3:17");
        assert_eq!(reference.state_prefix(), "savepoints/job-3/sp-17");
        for bad in ["job-3", "job-3:", "3:17", "job-3:x", "job-3:0", ":17", "job-3:-1"] {
            let error = SavepointRef::parse(bad).expect_err(bad);
            assert!(error.to_string().contains("JOB:SAVEPOINT"), "{error}");
        }
    }
}
