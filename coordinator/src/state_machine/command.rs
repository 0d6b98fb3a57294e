//! The commands written in the Raft log, and what applying one answers.

use serde::{Deserialize, Serialize};

use raftstream_api::checkpoint::{CompletedCheckpoint, SavepointRef, SubtaskKey};
use raftstream_api::ids::{CheckpointId, Epoch, ExecutorId, JobId, OperatorId, RequestId};
use raftstream_api::spec::JobGraph;

use super::JobStatus;

/// A change to the state, as written in the Raft log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    SubmitJob {
        request_id: Option<RequestId>,
        graph: JobGraph,
        at_ms: u64,
        /// Start from this savepoint's state.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        from_savepoint: Option<SavepointRef>,
        /// Drop the savepoint's state of operators the graph no longer has.
        #[serde(default, skip_serializing_if = "is_false")]
        allow_unmatched_state: bool,
    },
    CancelJob {
        request_id: Option<RequestId>,
        job_id: JobId,
        at_ms: u64,
    },
    TransitionJob {
        job_id: JobId,
        to: JobStatus,
        reason: String,
        at_ms: u64,
        /// For a start (`Running`) of a deployment the leader built (and sends to the executors
        /// once this entry commits): the job's last epoch when it read the placement. The start
        /// is refused unless every subtask is still placed and none was placed again since, so
        /// an executor declared dead in between leaves the job waiting to be placed again instead
        /// of "running" with nothing placed. Absent in older logs, which apply as they always did.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        deployed_through_epoch: Option<Epoch>,
    },
    RegisterExecutor {
        executor_id: ExecutorId,
        address: String,
        slots: u32,
        at_ms: u64,
    },
    MarkExecutorDead {
        executor_id: ExecutorId,
        at_ms: u64,
    },
    AssignSubtask {
        job_id: JobId,
        subtask: SubtaskKey,
        executor_id: ExecutorId,
        at_ms: u64,
    },
    /// Allocates the next checkpoint id of a running job, before its barriers are injected.
    TriggerCheckpoint {
        job_id: JobId,
        at_ms: u64,
    },
    /// Asks for a savepoint of a running job (and, with `stop`, to stop it after).
    RequestSavepoint {
        request_id: Option<RequestId>,
        job_id: JobId,
        stop: bool,
        at_ms: u64,
    },
    /// The checkpoint taken for the job's pending savepoint was aborted.
    FailSavepoint {
        job_id: JobId,
        reason: String,
        at_ms: u64,
    },
    DeleteSavepoint {
        request_id: Option<RequestId>,
        savepoint: SavepointRef,
    },
    CompleteCheckpoint {
        job_id: JobId,
        checkpoint: CompletedCheckpoint,
        /// Taken for the job's pending savepoint.
        #[serde(default, skip_serializing_if = "is_false")]
        savepoint: bool,
    },
    /// Asks for a rescale of a running job (validated as [`Command::RescaleJob`], and against the
    /// free slots): the leader then takes a checkpoint with paused sources and commits the
    /// rescale.
    RequestRescale {
        request_id: Option<RequestId>,
        job_id: JobId,
        /// `None`: every operator.
        operator_id: Option<OperatorId>,
        parallelism: u32,
        at_ms: u64,
        /// The `auto` operators only, within their bounds (the autoscaler).
        #[serde(default, skip_serializing_if = "is_false")]
        auto: bool,
        #[serde(default, skip_serializing_if = "String::is_empty")]
        reason: String,
    },
    /// Changes the parallelism of one operator (or of every operator) of a running job: the job
    /// restarts from its latest completed checkpoint at the new parallelism, its keyed state
    /// redistributed by key group, its generators resuming their offsets, its sinks publishing
    /// what the checkpoint lists.
    /// Committed by the leader only (after the rescale's checkpoint), so it carries no request id.
    RescaleJob {
        job_id: JobId,
        /// `None`: every operator.
        operator_id: Option<OperatorId>,
        parallelism: u32,
        at_ms: u64,
        /// The `auto` operators only; accepted also while the job restarts (it then waits for
        /// slots it may never get: the autoscaler shrinks it to what the cluster has).
        #[serde(default, skip_serializing_if = "is_false")]
        auto: bool,
        #[serde(default, skip_serializing_if = "String::is_empty")]
        reason: String,
    },
    /// Stops placing work on an executor and moves what it runs elsewhere (see
    /// [`ExecutorRecord::draining`]).
    DrainExecutor {
        request_id: Option<RequestId>,
        executor_id: ExecutorId,
        at_ms: u64,
    },
    /// Restarts a running job from its latest checkpoint (the one taken for the move) so that
    /// its subtasks leave a draining executor. Committed by the leader only.
    RelocateJob {
        job_id: JobId,
        at_ms: u64,
    },
    /// The leader saw one subtask of `two_phase: auto` operator `operator_id` take more than its
    /// skew factor times the mean input: like a rescale, it takes a checkpoint with paused
    /// sources, then commits [`Command::SwitchTwoPhase`]. Committed by the leader only.
    RequestTwoPhase {
        job_id: JobId,
        operator_id: OperatorId,
        at_ms: u64,
        reason: String,
    },
    /// Restarts the running job from its latest checkpoint (the one taken for the switch) with
    /// operator `operator_id` in two phases, for the rest of the job's life.
    SwitchTwoPhase {
        job_id: JobId,
        operator_id: OperatorId,
        at_ms: u64,
        reason: String,
    },
    /// A subtask placement reported a failure: the whole job restarts from its last completed
    /// checkpoint (its subtasks exchange data, so one rewinding means all rewind).
    FailSubtask {
        job_id: JobId,
        subtask: SubtaskKey,
        epoch: Epoch,
        reason: String,
        /// A failure no restart can cure (its checkpoint cannot be restored): the job fails.
        #[serde(default)]
        fatal: bool,
        at_ms: u64,
    },
}

/// What an applied command produced. Kept small: services read details from the state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    /// Blank and membership entries.
    Nothing,
    JobSubmitted {
        job_id: JobId,
    },
    JobCancelRequested {
        job_id: JobId,
        status: JobStatus,
    },
    JobTransitioned {
        job_id: JobId,
        status: JobStatus,
    },
    ExecutorRegistered {
        executor_id: ExecutorId,
    },
    ExecutorMarkedDead {
        executor_id: ExecutorId,
        orphaned_subtasks: u32,
    },
    SubtaskAssigned {
        job_id: JobId,
        epoch: Epoch,
    },
    CheckpointTriggered {
        job_id: JobId,
        checkpoint_id: CheckpointId,
    },
    CheckpointCompleted {
        job_id: JobId,
        checkpoint_id: CheckpointId,
    },
    JobRestarting {
        job_id: JobId,
        restart_count: u32,
    },
    RescaleRequested {
        job_id: JobId,
    },
    SavepointRequested {
        job_id: JobId,
        ticket: u64,
    },
    SavepointFailed {
        job_id: JobId,
    },
    SavepointDeleted {
        savepoint: SavepointRef,
    },
    ExecutorDraining {
        executor_id: ExecutorId,
        /// Running jobs that move through a checkpoint taken for the move.
        jobs_to_move: u32,
    },
}

/// Why a command was refused. A refused command changes nothing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum Rejection {
    #[error("job {job_id} not found")]
    UnknownJob { job_id: JobId },
    #[error("job {job_id} is {status} and cannot be cancelled")]
    JobAlreadyEnded { job_id: JobId, status: JobStatus },
    #[error("job {job_id} cannot go from {from} to {to}")]
    IllegalTransition {
        job_id: JobId,
        from: JobStatus,
        to: JobStatus,
    },
    #[error("executor {executor_id} not found")]
    UnknownExecutor { executor_id: ExecutorId },
    #[error("executor {executor_id} is dead")]
    ExecutorDead { executor_id: ExecutorId },
    #[error("executor {executor_id} is being drained and takes no new work")]
    ExecutorDraining { executor_id: ExecutorId },
    #[error("executor {executor_id} has no free slot (all {slots} in use)")]
    NoFreeSlot { executor_id: ExecutorId, slots: u32 },
    #[error("subtask {operator_id}[{subtask_index}] of job {job_id} shares a slot with subtasks on executor {executor_id} and must run there")]
    SliceElsewhere {
        job_id: JobId,
        operator_id: OperatorId,
        subtask_index: u32,
        executor_id: ExecutorId,
    },
    #[error("executor {executor_id} must offer at least one slot")]
    NoSlots { executor_id: ExecutorId },
    #[error("job {job_id} has no subtask {operator_id}[{subtask_index}]")]
    UnknownSubtask {
        job_id: JobId,
        operator_id: OperatorId,
        subtask_index: u32,
    },
    #[error("checkpoint {checkpoint_id} of job {job_id} does not follow the last completed checkpoint {last}")]
    CheckpointIdNotIncreasing {
        job_id: JobId,
        checkpoint_id: CheckpointId,
        last: CheckpointId,
    },
    #[error("checkpoint {checkpoint_id} of job {job_id} carries epoch {epoch}, but the job is at epoch {current}")]
    CheckpointEpochTooNew {
        job_id: JobId,
        checkpoint_id: CheckpointId,
        epoch: Epoch,
        current: Epoch,
    },
    #[error(
        "checkpoint {checkpoint_id} of job {job_id} was acknowledged by a placement the job no longer runs: {problem}"
    )]
    CheckpointPlacementChanged {
        job_id: JobId,
        checkpoint_id: CheckpointId,
        problem: String,
    },
    #[error("job {job_id} was not started: its placement changed after the leader built its deployment through epoch {} (last epoch {}, {unplaced} subtasks waiting for a slot)", deployed_through.0, last_epoch.0)]
    DeploymentOutdated {
        job_id: JobId,
        deployed_through: Epoch,
        last_epoch: Epoch,
        unplaced: u32,
    },
    #[error("subtask {operator_id}[{subtask_index}] of job {job_id} at epoch {epoch} was released already (the job is restarting)")]
    PlacementReleased {
        job_id: JobId,
        operator_id: OperatorId,
        subtask_index: u32,
        epoch: Epoch,
    },
    #[error("checkpoint {checkpoint_id} of job {job_id} was never triggered (last triggered: {last_triggered:?})")]
    CheckpointNotTriggered {
        job_id: JobId,
        checkpoint_id: CheckpointId,
        last_triggered: Option<CheckpointId>,
    },
    #[error("subtask {operator_id}[{subtask_index}] of job {job_id} runs at epoch {current}, not {epoch}")]
    StaleEpoch {
        job_id: JobId,
        operator_id: OperatorId,
        subtask_index: u32,
        epoch: Epoch,
        current: Epoch,
    },
    #[error("job {job_id} cannot be rescaled: {problem}")]
    InvalidRescale { job_id: JobId, problem: String },
    #[error("rescaling job {job_id} needs {needed} slots, but only {available} are free or held by it: {missing} more needed (start executors or rescale less)")]
    NotEnoughSlots {
        job_id: JobId,
        needed: u64,
        available: u64,
        missing: u64,
    },
    #[error("savepoint {savepoint} not found")]
    UnknownSavepoint { savepoint: SavepointRef },
    #[error("{problem}")]
    InvalidSavepoint { problem: String },
    #[error("cannot start from savepoint {savepoint}: {problem}")]
    InvalidSavepointRestore { savepoint: SavepointRef, problem: String },
    #[error("job {job_id} is {status}, which takes no {what}")]
    JobNotActive {
        job_id: JobId,
        status: JobStatus,
        what: String,
    },
}

/// The outcome of applying one log entry.
pub type ApplyResult = Result<Response, Rejection>;

/// For `skip_serializing_if`: a field at its default is left out of the log entry and the
/// snapshot, so older entries and snapshots read the same.
pub(super) fn is_false(value: &bool) -> bool {
    !*value
}

pub(super) fn is_zero(value: &u64) -> bool {
    *value == 0
}

pub(super) fn is_zero_u32(value: &u32) -> bool {
    *value == 0
}
