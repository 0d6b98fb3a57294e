//! What the leader and the executors tell each other, as our own types: the protobuf forms exist
//! only on the wire (see [`crate::convert`]).

use std::sync::Arc;

use crate::checkpoint::{
    CheckpointOptions, CheckpointTrigger, CompletedCheckpoint, SavepointRef, SubtaskKey, TaskStateHandle,
};
use crate::ids::{CheckpointId, Epoch, ExecutorId, JobId, OperatorId};
use crate::spec::{JobGraph, UdfExport};

/// One subtask at one epoch.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TaskRef {
    pub job_id: JobId,
    pub subtask: SubtaskKey,
    pub epoch: Epoch,
}

/// Where one subtask of a deployed job runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlacedSubtask {
    pub subtask: SubtaskKey,
    pub executor_id: ExecutorId,
    pub executor_address: String,
    pub epoch: Epoch,
}

/// Everything an executor needs to start one subtask: the graph, where its peers run, and the
/// checkpoint to restore from (always the latest completed one in the Raft state).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskDeployment {
    pub task: TaskRef,
    /// The job's validated graph, shared by every deployment of the job.
    pub graph: Arc<JobGraph>,
    pub placement: Vec<PlacedSubtask>,
    pub restore_from: Option<CompletedCheckpoint>,
}

/// What the leader tells an executor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExecutorCommand {
    /// The complete set of subtasks the executor may keep (sent when a session opens).
    Assignments(Vec<TaskRef>),
    Assign(Box<TaskDeployment>),
    Cancel(TaskRef),
    TriggerCheckpoint {
        job_id: JobId,
        checkpoint_id: CheckpointId,
        /// What the sources do after the barrier, and whether it is a savepoint.
        options: CheckpointOptions,
    },
    CheckpointComplete {
        job_id: JobId,
        checkpoint_id: CheckpointId,
        acknowledged: Vec<TaskRef>,
        /// The oldest checkpoint the job retains after this one.
        oldest_retained: CheckpointId,
    },
    CheckpointAborted {
        job_id: JobId,
        checkpoint_id: CheckpointId,
        reason: String,
    },
    /// The job ended (finished or cancelled): its checkpointed state can go.
    DiscardJobState(JobId),
    /// A savepoint was deleted, or failed: its state can go.
    DiscardSavepointState(SavepointRef),
    /// The executor was drained: every subtask moved elsewhere, so it exits.
    Drained,
    /// A heartbeat arrived; the leader of `term` is alive and reachable.
    HeartbeatAck {
        term: u64,
    },
}

/// An acknowledgement from one subtask.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckpointAck {
    pub subtask: SubtaskKey,
    pub epoch: Epoch,
    pub state: TaskStateHandle,
    /// Sources report the offset their state corresponds to.
    pub source_offset: Option<u64>,
}

/// What an executor reports about one of its subtasks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TaskReport {
    /// The subtask restored its state (if any) and started processing, `restore_ms` after its
    /// deployment reached the executor.
    Running { task: TaskRef, restore_ms: u64 },
    /// A source read the end of its input; the leader asks for a final checkpoint.
    InputEnded(TaskRef),
    /// The subtask reached the end of its input and delivered everything.
    Finished(TaskRef),
    Failed {
        task: TaskRef,
        /// The subtask could not restore its checkpoint: restarting would fail again.
        cannot_restore: bool,
        reason: String,
    },
    /// A source emitted half its share of `checkpoint.max_records` (or `max_bytes`) since the
    /// last completed checkpoint: `trigger` says which.
    CheckpointWanted { task: TaskRef, trigger: CheckpointTrigger },
    /// The subtask's state of a checkpoint is stored (or inline) and ready to commit.
    CheckpointAck {
        task: TaskRef,
        checkpoint_id: CheckpointId,
        state: TaskStateHandle,
        /// Sources: the input offset the state corresponds to.
        source_offset: Option<u64>,
    },
}

/// What one task (reported as its chain's head subtask) counted since it started, as its
/// executor reports it about once a second. Volatile: the leader keeps the latest in memory.
#[derive(Debug, Clone, PartialEq)]
pub struct SubtaskMetrics {
    pub task: TaskRef,
    /// Records into the chain's head (a source: records it read) and out of its tail.
    pub records_in: u64,
    pub records_out: u64,
    /// Time not spent waiting for input, blocked output (backpressure) included.
    pub busy_ms: u64,
    /// Over the interval since the executor's previous report.
    pub records_in_per_second: f64,
    pub busy_ratio: f64,
    /// Keyed heads: the hottest keys of the input, hottest first.
    pub hot_keys: Vec<HotKey>,
    /// Records the hot-key sketch counted.
    pub keys_counted: u64,
    /// The operators chained behind the head, in order.
    pub chained: Vec<OperatorId>,
    /// The user functions the chain calls, one line per (function, export).
    pub functions: Vec<FunctionCalls>,
}

/// What one subtask's calls of a user function's export did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FunctionCalls {
    pub function: String,
    pub export: UdfExport,
    pub calls: u64,
    pub records: u64,
    pub errors: u64,
    /// Time inside the calls.
    pub call_nanos: u64,
    /// How long the executor took to compile the function, or to load it from its disk cache.
    pub compile_ms: u64,
    pub from_cache: bool,
}

/// One key's estimated share of a keyed subtask's input (Space-Saving).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HotKey {
    pub key: String,
    /// Upper bound of the key's records.
    pub count: u64,
    /// How much of `count` may belong to other keys.
    pub error: u64,
}
