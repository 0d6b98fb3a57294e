//! Checkpoint metadata as the Raft state records it and executors restore from it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::ids::{CheckpointId, Epoch};

/// One subtask of a job: an operator and the index of its parallel instance.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct SubtaskKey {
    pub operator_id: String,
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
}
