//! The replicated state machine: a pure, deterministic `apply(&mut State, Command)`.
//!
//! No clock, no randomness, no I/O: times arrive inside commands, chosen by the leader, and ids are
//! allocated from counters held in the state, so replaying the same log always yields the same state.
//! A rejected command leaves the state exactly as it was.

mod invariants;
mod savepoints;
mod status;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, VecDeque};

use serde::{Deserialize, Serialize};

use raftstream_api::checkpoint::SavepointRef;
use raftstream_api::ids::{CheckpointId, Epoch, ExecutorId, JobId, RequestId};
use raftstream_api::serde_pairs as map_as_pairs;
use raftstream_api::spec::JobGraph;

pub use raftstream_api::checkpoint::{CompletedCheckpoint, SubtaskKey, TaskStateHandle};

pub use savepoints::{SavepointOutcome, SavepointRecord, SavepointRequest};
pub use status::JobStatus;

/// How many client request ids the state remembers for deduplication. Older ones are forgotten in
/// the order they were applied, so a retry must arrive within this many writes.
pub const REMEMBERED_REQUESTS: usize = 10_000;

/// How many ended (cancelled, failed, finished) jobs stay visible. Older ones are forgotten in the
/// order they ended, as Flink expires its completed-job store, so the state (and every snapshot)
/// stays bounded however many jobs come and go.
pub const RETAINED_ENDED_JOBS: usize = 1_000;

/// Where a subtask runs and under which epoch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Assignment {
    /// `None` while the subtask waits for a slot (never placed, or its executor died).
    pub executor_id: Option<ExecutorId>,
    pub epoch: Epoch,
    /// Where it ran before it was released: a restart puts it back there when that executor is
    /// live and has room, so a failure moves only what it must.
    #[serde(default)]
    pub previous_executor: Option<ExecutorId>,
}

/// The checkpoint a job's current run was restored from (Flink's "latest restore").
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestoreRecord {
    pub checkpoint_id: CheckpointId,
    /// When the restored run was deployed.
    pub at_ms: u64,
}

/// A job as the cluster knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobRecord {
    pub job_id: JobId,
    pub graph: JobGraph,
    pub status: JobStatus,
    pub status_reason: String,
    pub restart_count: u32,
    pub submitted_at_ms: u64,
    pub updated_at_ms: u64,
    #[serde(with = "map_as_pairs")]
    pub assignments: BTreeMap<SubtaskKey, Assignment>,
    /// The last `graph.checkpoint.retained` completed checkpoints, oldest first.
    pub checkpoints: VecDeque<CompletedCheckpoint>,
    /// Survives the eviction of old checkpoints so ids keep increasing.
    pub last_checkpoint_id: Option<CheckpointId>,
    /// The last checkpoint id handed out by `TriggerCheckpoint`, completed or not. Ids are allocated
    /// here, in the log, so a new leader continues above whatever the old one had in flight.
    #[serde(default)]
    pub last_triggered_checkpoint_id: Option<CheckpointId>,
    /// The last epoch handed out for this job; every (re)assignment takes the next one.
    pub last_epoch: Epoch,
    /// The checkpoint the job's latest deployment restored, if it restored one.
    #[serde(default)]
    pub last_restore: Option<RestoreRecord>,
    /// Restarting to change its parallelism, not after a failure: placed again at once, without
    /// the restart strategy's delay, and not counted as a restart.
    #[serde(default, skip_serializing_if = "is_false")]
    pub rescaling: bool,
    /// A rescale a user asked for: the leader takes a checkpoint with the sources paused after
    /// its barrier, then commits the rescale, so the job restarts from that checkpoint and
    /// nothing is processed twice.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending_rescale: Option<RescaleRequest>,
    /// A savepoint asked for: the leader takes a checkpoint for it at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending_savepoint: Option<SavepointRequest>,
    /// Savepoint requests so far (the last ticket handed out).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub savepoint_tickets: u64,
    /// How the latest savepoint request ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_savepoint: Option<SavepointOutcome>,
    /// Stopping with this savepoint: its sources ended after it, and the job becomes `Stopped`
    /// once every task finished (after publishing it). A restart calls the stop off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stopping_at: Option<CheckpointId>,
    /// The savepoint the job was submitted from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_savepoint: Option<SavepointRef>,
    /// Subtasks of the running job are on a draining executor: the leader takes a checkpoint
    /// with the sources paused after its barrier, then commits `RelocateJob`, so the job moves
    /// from exactly that checkpoint and nothing is processed twice.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending_relocation: Option<RelocationRequest>,
    /// Changes of its shape (rescales, automatic ones with their reason, moves), oldest first.
    #[serde(default, skip_serializing_if = "VecDeque::is_empty")]
    pub history: VecDeque<JobEvent>,
}

/// A move of a running job off a draining executor, waiting for its checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RelocationRequest {
    pub away_from: ExecutorId,
    pub requested_at_ms: u64,
}

/// A requested change of parallelism, waiting for its checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RescaleRequest {
    /// `None`: every operator.
    pub operator_id: Option<String>,
    pub parallelism: u32,
    pub requested_at_ms: u64,
    /// The `auto` operators, to `parallelism` within their bounds (the leader's autoscaler).
    #[serde(default, skip_serializing_if = "is_false")]
    pub auto: bool,
    /// Why, for the job's history (the autoscaler says what it saw).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
    /// Not a change of parallelism: `operator_id` switches to two-phase aggregation.
    #[serde(default, skip_serializing_if = "is_false")]
    pub two_phase: bool,
}

/// One change of a job's shape, kept in its history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobEvent {
    pub at_ms: u64,
    pub what: String,
}

/// How many changes a job's history keeps, oldest forgotten first.
pub const JOB_HISTORY: usize = 32;

fn record_event(job: &mut JobRecord, at_ms: u64, what: String) {
    job.history.push_back(JobEvent { at_ms, what });
    while job.history.len() > JOB_HISTORY {
        job.history.pop_front();
    }
}

fn is_false(value: &bool) -> bool {
    !*value
}

fn is_zero(value: &u64) -> bool {
    *value == 0
}

/// An executor process and its slots.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecutorRecord {
    pub executor_id: ExecutorId,
    pub address: String,
    pub slots: u32,
    pub alive: bool,
    pub registered_at_ms: u64,
    pub updated_at_ms: u64,
    /// Being drained: no new placement goes to it; its jobs move through a checkpoint taken for
    /// the move, and once it holds nothing the leader tells it to exit. Registering again (a new
    /// process) ends it.
    #[serde(default, skip_serializing_if = "is_false")]
    pub draining: bool,
}

impl ExecutorRecord {
    /// Whether new subtasks may be placed on it.
    pub fn takes_work(&self) -> bool {
        self.alive && !self.draining
    }
}

/// Responses remembered for client request ids, forgotten oldest first.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestLog {
    responses: BTreeMap<RequestId, Response>,
    order: VecDeque<RequestId>,
}

impl RequestLog {
    /// The response given when this request id was first applied.
    pub fn get(&self, request_id: &RequestId) -> Option<&Response> {
        self.responses.get(request_id)
    }

    fn remember(&mut self, request_id: RequestId, response: Response) {
        if self.responses.insert(request_id.clone(), response).is_none() {
            self.order.push_back(request_id);
        }
        while self.order.len() > REMEMBERED_REQUESTS {
            if let Some(oldest) = self.order.pop_front() {
                self.responses.remove(&oldest);
            }
        }
    }

    /// How many request ids are remembered.
    pub fn len(&self) -> usize {
        self.order.len()
    }

    /// Whether no request id is remembered.
    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }
}

/// Everything the coordinators agree on.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    pub jobs: BTreeMap<JobId, JobRecord>,
    pub executors: BTreeMap<ExecutorId, ExecutorRecord>,
    /// The number of the last job created; the next job is `job-<n+1>`.
    pub last_job_number: u64,
    pub requests: RequestLog,
    /// Ended jobs, oldest first; beyond [`RETAINED_ENDED_JOBS`] the oldest is forgotten.
    pub ended_jobs: VecDeque<JobId>,
    /// Savepoints, kept until a user deletes them (also after their job is forgotten).
    #[serde(default, with = "map_as_pairs", skip_serializing_if = "BTreeMap::is_empty")]
    pub savepoints: BTreeMap<SavepointRef, SavepointRecord>,
}

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
        operator_id: Option<String>,
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
        operator_id: Option<String>,
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
        operator_id: String,
        at_ms: u64,
        reason: String,
    },
    /// Restarts the running job from its latest checkpoint (the one taken for the switch) with
    /// operator `operator_id` in two phases, for the rest of the job's life.
    SwitchTwoPhase {
        job_id: JobId,
        operator_id: String,
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
    #[error("executor {executor_id} must offer at least one slot")]
    NoSlots { executor_id: ExecutorId },
    #[error("job {job_id} has no subtask {operator_id}[{subtask_index}]")]
    UnknownSubtask {
        job_id: JobId,
        operator_id: String,
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
        operator_id: String,
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
        operator_id: String,
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

impl State {
    /// Slots free on the executors that take work (alive, not draining).
    pub fn free_slots(&self) -> u64 {
        self.executors
            .values()
            .filter(|executor| executor.takes_work())
            .map(|executor| u64::from(executor.slots.saturating_sub(self.used_slots(&executor.executor_id))))
            .sum()
    }

    /// Slots of `executor_id` taken by live assignments.
    pub fn used_slots(&self, executor_id: &ExecutorId) -> u32 {
        let used = self
            .jobs
            .values()
            .flat_map(|job| job.assignments.values())
            .filter(|assignment| assignment.executor_id.as_ref() == Some(executor_id))
            .count();
        u32::try_from(used).unwrap_or(u32::MAX)
    }
}

/// Applies one command. Deterministic; on rejection the state is untouched.
pub fn apply(state: &mut State, command: Command) -> ApplyResult {
    let request_id = match &command {
        Command::SubmitJob { request_id, .. }
        | Command::CancelJob { request_id, .. }
        | Command::RequestRescale { request_id, .. }
        | Command::RequestSavepoint { request_id, .. }
        | Command::DeleteSavepoint { request_id, .. }
        | Command::DrainExecutor { request_id, .. } => request_id.clone(),
        _ => None,
    };
    if let Some(request_id) = &request_id {
        if let Some(response) = state.requests.get(request_id) {
            return Ok(response.clone());
        }
    }
    // Like `debug_assert!`: checked in builds with debug assertions, at the cost of a copy of the
    // records the command touches.
    let touched = cfg!(debug_assertions).then(|| invariants::before(state, &command));
    let result = apply_command(state, command, request_id);
    if let Some(touched) = touched {
        invariants::check(&touched, state, &result);
    }
    result
}

fn apply_command(state: &mut State, command: Command, request_id: Option<RequestId>) -> ApplyResult {
    let response = match command {
        Command::SubmitJob {
            graph,
            at_ms,
            from_savepoint,
            allow_unmatched_state,
            ..
        } => submit_job(state, graph, at_ms, from_savepoint, allow_unmatched_state),
        Command::CancelJob { job_id, at_ms, .. } => cancel_job(state, &job_id, at_ms),
        Command::TransitionJob {
            job_id,
            to,
            reason,
            at_ms,
            deployed_through_epoch,
        } => match deployed_through_epoch {
            Some(deployed_through) => start_deployed_job(state, &job_id, to, deployed_through, reason, at_ms),
            None => transition_job(state, &job_id, to, reason, at_ms),
        },
        Command::RegisterExecutor {
            executor_id,
            address,
            slots,
            at_ms,
        } => register_executor(state, executor_id, address, slots, at_ms),
        Command::MarkExecutorDead { executor_id, at_ms } => mark_executor_dead(state, &executor_id, at_ms),
        Command::AssignSubtask {
            job_id,
            subtask,
            executor_id,
            at_ms,
        } => assign_subtask(state, &job_id, subtask, executor_id, at_ms),
        Command::TriggerCheckpoint { job_id, at_ms } => trigger_checkpoint(state, &job_id, at_ms),
        Command::RescaleJob {
            job_id,
            operator_id,
            parallelism,
            at_ms,
            auto,
            reason,
        } => rescale_job(
            state,
            &job_id,
            &RescaleTarget {
                operator_id: operator_id.as_deref(),
                parallelism,
                auto,
                two_phase: false,
            },
            reason,
            at_ms,
        ),
        Command::RequestTwoPhase {
            job_id,
            operator_id,
            at_ms,
            reason,
        } => request_two_phase(state, &job_id, operator_id, reason, at_ms),
        Command::SwitchTwoPhase {
            job_id,
            operator_id,
            at_ms,
            reason,
        } => {
            let parallelism = state
                .jobs
                .get(&job_id)
                .and_then(|job| job.graph.operator(&operator_id))
                .map_or(1, |operator| operator.parallelism);
            rescale_job(
                state,
                &job_id,
                &RescaleTarget {
                    operator_id: Some(&operator_id),
                    parallelism,
                    auto: false,
                    two_phase: true,
                },
                reason,
                at_ms,
            )
        }
        Command::RequestRescale {
            job_id,
            operator_id,
            parallelism,
            at_ms,
            auto,
            reason,
            ..
        } => request_rescale(state, &job_id, operator_id, parallelism, auto, reason, at_ms),
        Command::CompleteCheckpoint {
            job_id,
            checkpoint,
            savepoint,
        } => complete_checkpoint(state, &job_id, checkpoint, savepoint),
        Command::RequestSavepoint {
            job_id, stop, at_ms, ..
        } => savepoints::request_savepoint(state, &job_id, stop, at_ms),
        Command::FailSavepoint { job_id, reason, at_ms } => savepoints::fail_savepoint(state, &job_id, reason, at_ms),
        Command::DeleteSavepoint { savepoint, .. } => savepoints::delete_savepoint(state, savepoint),
        Command::DrainExecutor { executor_id, at_ms, .. } => drain_executor(state, &executor_id, at_ms),
        Command::RelocateJob { job_id, at_ms } => relocate_job(state, &job_id, at_ms),
        Command::FailSubtask {
            job_id,
            subtask,
            epoch,
            reason,
            fatal,
            at_ms,
        } => fail_subtask(state, &job_id, &subtask, epoch, reason, fatal, at_ms),
    }?;
    if let Some(request_id) = request_id {
        state.requests.remember(request_id, response.clone());
    }
    Ok(response)
}

fn job_mut<'a>(state: &'a mut State, job_id: &JobId) -> Result<&'a mut JobRecord, Rejection> {
    state
        .jobs
        .get_mut(job_id)
        .ok_or_else(|| Rejection::UnknownJob { job_id: *job_id })
}

fn submit_job(
    state: &mut State,
    graph: JobGraph,
    at_ms: u64,
    from_savepoint: Option<SavepointRef>,
    allow_unmatched_state: bool,
) -> ApplyResult {
    let starting_checkpoint = match &from_savepoint {
        Some(savepoint) => Some(savepoints::starting_checkpoint(
            state,
            savepoint,
            &graph,
            allow_unmatched_state,
        )?),
        None => None,
    };
    // Automatic operators start at the parallelism the free slots allow now.
    let mut history = VecDeque::new();
    let graph = match graph.auto_parallelism_for(state.free_slots()) {
        Some(parallelism) => {
            history.push_back(JobEvent {
                at_ms,
                what: format!(
                    "automatic operators start at parallelism {parallelism} ({} free slots)",
                    state.free_slots()
                ),
            });
            graph.with_auto_parallelism(parallelism)
        }
        None => graph,
    };
    let job_number = state.last_job_number + 1;
    let job_id = JobId::from_number(job_number);
    // Every subtask exists from the start, waiting for a slot, so the status shows what is unplaced.
    let assignments = graph
        .operators
        .iter()
        .flat_map(|operator| {
            (0..operator.parallelism).map(|subtask_index| {
                let key = SubtaskKey {
                    operator_id: operator.id.clone(),
                    subtask_index,
                };
                (
                    key,
                    Assignment {
                        executor_id: None,
                        epoch: Epoch(0),
                        previous_executor: None,
                    },
                )
            })
        })
        .collect();
    let record = JobRecord {
        job_id,
        graph,
        status: JobStatus::Submitted,
        status_reason: String::new(),
        restart_count: 0,
        submitted_at_ms: at_ms,
        updated_at_ms: at_ms,
        assignments,
        // Started from a savepoint: its checkpoint is the one the first deployment restores, and
        // ids and epochs go on above it, so no file name of the new job repeats one it lists.
        last_checkpoint_id: starting_checkpoint.as_ref().map(|checkpoint| checkpoint.checkpoint_id),
        last_triggered_checkpoint_id: starting_checkpoint.as_ref().map(|checkpoint| checkpoint.checkpoint_id),
        last_epoch: starting_checkpoint
            .as_ref()
            .map_or(Epoch(0), |checkpoint| checkpoint.epoch),
        checkpoints: starting_checkpoint.into_iter().collect(),
        last_restore: None,
        rescaling: false,
        pending_rescale: None,
        pending_savepoint: None,
        savepoint_tickets: 0,
        last_savepoint: None,
        stopping_at: None,
        from_savepoint,
        pending_relocation: None,
        history,
    };
    state.last_job_number = job_number;
    state.jobs.insert(job_id, record);
    Ok(Response::JobSubmitted { job_id })
}

/// Records that a job ended and forgets the oldest ended jobs beyond the retention bound.
fn retire(state: &mut State, job_id: &JobId) {
    state.ended_jobs.push_back(*job_id);
    while state.ended_jobs.len() > RETAINED_ENDED_JOBS {
        if let Some(oldest) = state.ended_jobs.pop_front() {
            state.jobs.remove(&oldest);
        }
    }
}

fn release_slots(job: &mut JobRecord) {
    for assignment in job.assignments.values_mut() {
        if let Some(executor_id) = assignment.executor_id.take() {
            assignment.previous_executor = Some(executor_id);
        }
    }
}

fn cancel_job(state: &mut State, job_id: &JobId, at_ms: u64) -> ApplyResult {
    let job = job_mut(state, job_id)?;
    let target = match job.status {
        JobStatus::Cancelling => {
            return Ok(Response::JobCancelRequested {
                job_id: *job_id,
                status: job.status,
            })
        }
        status if status.is_terminal() => {
            return Err(Rejection::JobAlreadyEnded {
                job_id: *job_id,
                status,
            })
        }
        // Tasks that may be running must confirm they stopped; with none placed the job ends at once.
        _ if job
            .assignments
            .values()
            .any(|assignment| assignment.executor_id.is_some()) =>
        {
            JobStatus::Cancelling
        }
        _ => JobStatus::Cancelled,
    };
    let from = job.status;
    if !from.can_become(target) {
        return Err(Rejection::IllegalTransition {
            job_id: *job_id,
            from,
            to: target,
        });
    }
    savepoints::interrupt_savepoint(job, "the job was cancelled");
    job.status = target;
    job.status_reason = "cancelled by request".to_owned();
    job.updated_at_ms = at_ms;
    if target.is_terminal() {
        release_slots(job);
        retire(state, job_id);
    }
    Ok(Response::JobCancelRequested {
        job_id: *job_id,
        status: target,
    })
}

/// A transition that starts what the leader deployed: refused when the placement changed since.
fn start_deployed_job(
    state: &mut State,
    job_id: &JobId,
    to: JobStatus,
    deployed_through: Epoch,
    reason: String,
    at_ms: u64,
) -> ApplyResult {
    let job = job_mut(state, job_id)?;
    let unplaced = job
        .assignments
        .values()
        .filter(|assignment| assignment.executor_id.is_none())
        .count();
    if unplaced > 0 || job.last_epoch != deployed_through {
        return Err(Rejection::DeploymentOutdated {
            job_id: *job_id,
            deployed_through,
            last_epoch: job.last_epoch,
            unplaced: u32::try_from(unplaced).unwrap_or(u32::MAX),
        });
    }
    transition_job(state, job_id, to, reason, at_ms)
}

fn transition_job(state: &mut State, job_id: &JobId, to: JobStatus, reason: String, at_ms: u64) -> ApplyResult {
    let job = job_mut(state, job_id)?;
    let from = job.status;
    if !from.can_become(to) {
        return Err(Rejection::IllegalTransition {
            job_id: *job_id,
            from,
            to,
        });
    }
    if to == JobStatus::Stopped && job.stopping_at.is_none() {
        return Err(Rejection::InvalidSavepoint {
            problem: format!("job {job_id} has taken no savepoint to stop with"),
        });
    }
    if to == JobStatus::Restarting {
        job.restart_count = job.restart_count.saturating_add(1);
    }
    if to == JobStatus::Restarting || (to.is_terminal() && to != JobStatus::Stopped) {
        savepoints::interrupt_savepoint(job, &format!("the job became {to}: {reason}"));
    }
    job.rescaling = false;
    if to.is_terminal() || to == JobStatus::Restarting {
        job.pending_rescale = None;
        job.pending_relocation = None;
    }
    // A deployment restores the latest completed checkpoint as it was when the leader sent it, and
    // no checkpoint completes between that and this entry: completions need a running job.
    if to == JobStatus::Running {
        job.last_restore = job.checkpoints.back().map(|checkpoint| RestoreRecord {
            checkpoint_id: checkpoint.checkpoint_id,
            at_ms,
        });
    }
    job.status = to;
    job.status_reason = reason;
    job.updated_at_ms = at_ms;
    if to.is_terminal() {
        release_slots(job);
        retire(state, job_id);
    }
    Ok(Response::JobTransitioned {
        job_id: *job_id,
        status: to,
    })
}

/// What a rescale changes: one operator, every operator, or the `auto` operators; or, at the same
/// parallelism, an operator switching to two-phase aggregation.
struct RescaleTarget<'a> {
    operator_id: Option<&'a str>,
    parallelism: u32,
    auto: bool,
    two_phase: bool,
}

impl RescaleTarget<'_> {
    fn describe(&self) -> String {
        match (self.auto, self.operator_id) {
            _ if self.two_phase => format!(
                "operator {} to two-phase aggregation",
                self.operator_id.unwrap_or_default()
            ),
            (true, _) => format!("automatic operators to parallelism {}", self.parallelism),
            (false, Some(operator)) => format!("operator {operator} to parallelism {}", self.parallelism),
            (false, None) => format!("every operator to parallelism {}", self.parallelism),
        }
    }
}

/// The graph `job_id` would run rescaled as asked, if it can be. Only a running job rescales,
/// but an automatic rescale also applies to a restarting one (to the slots it can get).
fn rescaled_graph(state: &State, job_id: &JobId, target: &RescaleTarget<'_>) -> Result<JobGraph, Rejection> {
    let job = state
        .jobs
        .get(job_id)
        .ok_or(Rejection::UnknownJob { job_id: *job_id })?;
    let restarting_auto = target.auto && job.status == JobStatus::Restarting;
    if job.status != JobStatus::Running && !restarting_auto {
        return Err(Rejection::JobNotActive {
            job_id: *job_id,
            status: job.status,
            what: "rescaling (only a running job can be rescaled)".to_owned(),
        });
    }
    let invalid = |problem: String| Rejection::InvalidRescale {
        job_id: *job_id,
        problem,
    };
    if target.two_phase {
        return job
            .graph
            .with_two_phase_on(target.operator_id.unwrap_or_default())
            .map_err(|error| invalid(error.to_string()));
    }
    if target.auto {
        if !job.graph.is_auto() {
            return Err(invalid("it has no operator with an automatic parallelism".to_owned()));
        }
        let graph = job.graph.with_auto_parallelism(target.parallelism.max(1));
        if graph == job.graph {
            return Err(invalid(format!(
                "its automatic operators are at parallelism {} already",
                target.parallelism
            )));
        }
        return Ok(graph);
    }
    job.graph
        .rescaled(target.operator_id, target.parallelism)
        .map_err(|error| invalid(error.to_string()))
}

fn request_rescale(
    state: &mut State,
    job_id: &JobId,
    operator_id: Option<String>,
    parallelism: u32,
    auto: bool,
    reason: String,
    at_ms: u64,
) -> ApplyResult {
    let target = RescaleTarget {
        operator_id: operator_id.as_deref(),
        parallelism,
        auto,
        two_phase: false,
    };
    let graph = rescaled_graph(state, job_id, &target)?;
    let job = job_mut(state, job_id)?;
    if job.pending_savepoint.is_some() || job.stopping_at.is_some() {
        return Err(Rejection::InvalidRescale {
            job_id: *job_id,
            problem: "it is taking a savepoint; rescale once that is done".to_owned(),
        });
    }
    if let Some(pending) = &job.pending_rescale {
        return Err(Rejection::InvalidRescale {
            job_id: *job_id,
            problem: format!(
                "a rescale to parallelism {} is already in progress",
                pending.parallelism
            ),
        });
    }
    // Its own slots come back when it stops; the rest must be free on live executors now.
    let needed = graph.total_subtasks();
    let held = job
        .assignments
        .values()
        .filter(|assignment| assignment.executor_id.is_some())
        .count() as u64;
    let available = held + state.free_slots();
    if needed > available {
        return Err(Rejection::NotEnoughSlots {
            job_id: *job_id,
            needed,
            available,
            missing: needed - available,
        });
    }
    let job = job_mut(state, job_id)?;
    job.pending_rescale = Some(RescaleRequest {
        operator_id,
        parallelism,
        requested_at_ms: at_ms,
        auto,
        reason,
        two_phase: false,
    });
    Ok(Response::RescaleRequested { job_id: *job_id })
}

/// Asks for a running job's `two_phase: auto` operator to switch to two phases through a
/// checkpoint with paused sources (the same path as a rescale, at the same parallelism).
fn request_two_phase(
    state: &mut State,
    job_id: &JobId,
    operator_id: String,
    reason: String,
    at_ms: u64,
) -> ApplyResult {
    let target = RescaleTarget {
        operator_id: Some(&operator_id),
        parallelism: 0,
        auto: false,
        two_phase: true,
    };
    let graph = rescaled_graph(state, job_id, &target)?;
    let job = job_mut(state, job_id)?;
    let busy = if job.pending_rescale.is_some() {
        Some("a rescale is in progress")
    } else if job.pending_savepoint.is_some() || job.stopping_at.is_some() {
        Some("it is taking a savepoint")
    } else if job.pending_relocation.is_some() {
        Some("it is moving off a draining executor")
    } else {
        None
    };
    if let Some(busy) = busy {
        return Err(Rejection::InvalidRescale {
            job_id: *job_id,
            problem: format!("{busy}; switch to two phases after it"),
        });
    }
    job.pending_rescale = Some(RescaleRequest {
        parallelism: graph.operator(&operator_id).map_or(1, |operator| operator.parallelism),
        operator_id: Some(operator_id),
        requested_at_ms: at_ms,
        auto: false,
        reason,
        two_phase: true,
    });
    Ok(Response::RescaleRequested { job_id: *job_id })
}

/// Restarts `job_id` at the new parallelism. The slots were checked when it was requested; if
/// some went since, the subtasks that do not fit wait for slots, as after any restart.
fn rescale_job(
    state: &mut State,
    job_id: &JobId,
    target: &RescaleTarget<'_>,
    reason: String,
    at_ms: u64,
) -> ApplyResult {
    let graph = rescaled_graph(state, job_id, target)?;
    let job = job_mut(state, job_id)?;
    release_slots(job);
    let mut assignments = BTreeMap::new();
    for operator in &graph.operators {
        for subtask_index in 0..operator.parallelism {
            let key = SubtaskKey {
                operator_id: operator.id.clone(),
                subtask_index,
            };
            // A subtask that stays keeps its epoch history; the next placement raises it.
            let assignment = job.assignments.remove(&key).unwrap_or(Assignment {
                executor_id: None,
                epoch: Epoch(0),
                previous_executor: None,
            });
            assignments.insert(key, assignment);
        }
    }
    job.assignments = assignments;
    job.graph = graph;
    job.status = JobStatus::Restarting;
    job.status_reason = format!("rescaling {}", target.describe());
    let because = if reason.is_empty() {
        String::new()
    } else {
        format!(": {reason}")
    };
    let change = if target.two_phase { "switched" } else { "rescaled" };
    record_event(job, at_ms, format!("{change} {}{because}", target.describe()));
    job.updated_at_ms = job.updated_at_ms.max(at_ms);
    job.rescaling = true;
    job.pending_rescale = None;
    job.pending_relocation = None;
    savepoints::interrupt_savepoint(job, "the job was rescaled");
    Ok(Response::JobTransitioned {
        job_id: *job_id,
        status: JobStatus::Restarting,
    })
}

fn register_executor(
    state: &mut State,
    executor_id: ExecutorId,
    address: String,
    slots: u32,
    at_ms: u64,
) -> ApplyResult {
    if slots == 0 {
        return Err(Rejection::NoSlots { executor_id });
    }
    let registered_at_ms = state
        .executors
        .get(&executor_id)
        .map_or(at_ms, |existing| existing.registered_at_ms);
    // A re-registration after a restart starts from nothing: whatever it ran before was lost with
    // the process, so its jobs restart (their placements get new epochs when placed again).
    lose_executor(state, &executor_id, "re-registered (restarted)", at_ms);
    let record = ExecutorRecord {
        executor_id: executor_id.clone(),
        address,
        slots,
        alive: true,
        registered_at_ms,
        updated_at_ms: at_ms,
        draining: false,
    };
    state.executors.insert(executor_id.clone(), record);
    Ok(Response::ExecutorRegistered { executor_id })
}

fn drain_executor(state: &mut State, executor_id: &ExecutorId, at_ms: u64) -> ApplyResult {
    let executor = state
        .executors
        .get_mut(executor_id)
        .ok_or_else(|| Rejection::UnknownExecutor {
            executor_id: executor_id.clone(),
        })?;
    if !executor.alive {
        return Err(Rejection::ExecutorDead {
            executor_id: executor_id.clone(),
        });
    }
    executor.draining = true;
    executor.updated_at_ms = at_ms;
    let mut jobs_to_move = 0;
    for job in state.jobs.values_mut() {
        let on_it = job
            .assignments
            .values()
            .any(|assignment| assignment.executor_id.as_ref() == Some(executor_id));
        if !on_it {
            continue;
        }
        match job.status {
            // A pending rescale restarts it anyway, and places nothing on a draining executor.
            JobStatus::Running if job.pending_rescale.is_some() => jobs_to_move += 1,
            JobStatus::Running => {
                jobs_to_move += 1;
                if job.pending_relocation.is_none() {
                    job.pending_relocation = Some(RelocationRequest {
                        away_from: executor_id.clone(),
                        requested_at_ms: at_ms,
                    });
                }
            }
            // Not running yet: nothing processed since its checkpoint to lose, so its placements
            // are released and the scheduler places them again elsewhere, with new epochs.
            JobStatus::Submitted | JobStatus::Restarting => {
                release_slots(job);
                job.updated_at_ms = job.updated_at_ms.max(at_ms);
            }
            // Cancelling tasks only stop; ended jobs hold nothing.
            _ => {}
        }
    }
    Ok(Response::ExecutorDraining {
        executor_id: executor_id.clone(),
        jobs_to_move,
    })
}

fn relocate_job(state: &mut State, job_id: &JobId, at_ms: u64) -> ApplyResult {
    let job = job_mut(state, job_id)?;
    if job.status != JobStatus::Running {
        return Err(Rejection::JobNotActive {
            job_id: *job_id,
            status: job.status,
            what: "moves (only a running job moves)".to_owned(),
        });
    }
    let Some(request) = job.pending_relocation.take() else {
        return Err(Rejection::JobNotActive {
            job_id: *job_id,
            status: job.status,
            what: "moves (none was asked for)".to_owned(),
        });
    };
    release_slots(job);
    savepoints::interrupt_savepoint(job, "the job moved off a draining executor");
    job.status = JobStatus::Restarting;
    job.status_reason = format!("moving off draining executor {}", request.away_from);
    record_event(job, at_ms, format!("moved off draining executor {}", request.away_from));
    job.updated_at_ms = job.updated_at_ms.max(at_ms);
    job.rescaling = true;
    Ok(Response::JobTransitioned {
        job_id: *job_id,
        status: JobStatus::Restarting,
    })
}

fn mark_executor_dead(state: &mut State, executor_id: &ExecutorId, at_ms: u64) -> ApplyResult {
    let executor = state
        .executors
        .get_mut(executor_id)
        .ok_or_else(|| Rejection::UnknownExecutor {
            executor_id: executor_id.clone(),
        })?;
    executor.alive = false;
    executor.updated_at_ms = at_ms;
    let orphaned_subtasks = lose_executor(state, executor_id, "declared dead", at_ms);
    Ok(Response::ExecutorMarkedDead {
        executor_id: executor_id.clone(),
        orphaned_subtasks,
    })
}

/// Starts a restart of `job` from its last completed checkpoint: every placement is released (the
/// scheduler places them again with new epochs, which fences the old ones).
fn restart(job: &mut JobRecord, reason: String, at_ms: u64) {
    let had_placements = job
        .assignments
        .values()
        .any(|assignment| assignment.executor_id.is_some());
    release_slots(job);
    savepoints::interrupt_savepoint(job, &format!("the job restarts: {reason}"));
    // Placed again anyway, never on a draining executor.
    job.pending_relocation = None;
    match job.status {
        JobStatus::Running => {
            job.status = JobStatus::Restarting;
            job.restart_count = job.restart_count.saturating_add(1);
        }
        // The next placement was lost before it ran: that is another attempt, counted against the
        // restart strategy, or a job whose placements keep failing would restart forever.
        JobStatus::Restarting if had_placements => {
            job.restart_count = job.restart_count.saturating_add(1);
        }
        _ => {}
    }
    job.status_reason = reason;
    job.updated_at_ms = at_ms;
}

/// Releases what `executor_id` ran. Jobs that were running on it restart as a whole; a cancelling
/// job only loses those placements. Returns how many subtasks it held.
fn lose_executor(state: &mut State, executor_id: &ExecutorId, what: &str, at_ms: u64) -> u32 {
    let mut orphaned = 0;
    for job in state.jobs.values_mut() {
        let held = job
            .assignments
            .values()
            .filter(|assignment| assignment.executor_id.as_ref() == Some(executor_id))
            .count();
        if held == 0 {
            continue;
        }
        orphaned += u32::try_from(held).unwrap_or(u32::MAX);
        if job.status == JobStatus::Cancelling {
            for assignment in job.assignments.values_mut() {
                if assignment.executor_id.as_ref() == Some(executor_id) {
                    assignment.executor_id = None;
                    assignment.previous_executor = Some(executor_id.clone());
                }
            }
        } else {
            restart(job, format!("executor {executor_id} {what}"), at_ms);
        }
    }
    orphaned
}

fn fail_subtask(
    state: &mut State,
    job_id: &JobId,
    subtask: &SubtaskKey,
    epoch: Epoch,
    reason: String,
    fatal: bool,
    at_ms: u64,
) -> ApplyResult {
    let job = job_mut(state, job_id)?;
    let assignment = job.assignments.get(subtask).ok_or_else(|| Rejection::UnknownSubtask {
        job_id: *job_id,
        operator_id: subtask.operator_id.clone(),
        subtask_index: subtask.subtask_index,
    })?;
    let current = assignment.epoch;
    // A released placement is already fenced: its failure says nothing about the next deployment,
    // which the restart that released it is already preparing.
    if current == epoch && assignment.executor_id.is_none() {
        return Err(Rejection::PlacementReleased {
            job_id: *job_id,
            operator_id: subtask.operator_id.clone(),
            subtask_index: subtask.subtask_index,
            epoch,
        });
    }
    if current != epoch {
        return Err(Rejection::StaleEpoch {
            job_id: *job_id,
            operator_id: subtask.operator_id.clone(),
            subtask_index: subtask.subtask_index,
            epoch,
            current,
        });
    }
    if !matches!(
        job.status,
        JobStatus::Running | JobStatus::Submitted | JobStatus::Restarting
    ) {
        return Err(Rejection::JobNotActive {
            job_id: *job_id,
            status: job.status,
            what: "task failures".to_owned(),
        });
    }
    let reason = format!(
        "subtask {}[{}] failed: {reason}",
        subtask.operator_id, subtask.subtask_index
    );
    if fatal {
        savepoints::interrupt_savepoint(job, &format!("the job failed: {reason}"));
        job.status = JobStatus::Failed;
        job.status_reason = reason;
        job.updated_at_ms = at_ms;
        release_slots(job);
        retire(state, job_id);
        return Ok(Response::JobTransitioned {
            job_id: *job_id,
            status: JobStatus::Failed,
        });
    }
    restart(job, reason, at_ms);
    Ok(Response::JobRestarting {
        job_id: *job_id,
        restart_count: job.restart_count,
    })
}

fn assign_subtask(
    state: &mut State,
    job_id: &JobId,
    subtask: SubtaskKey,
    executor_id: ExecutorId,
    at_ms: u64,
) -> ApplyResult {
    let executor = state
        .executors
        .get(&executor_id)
        .ok_or_else(|| Rejection::UnknownExecutor {
            executor_id: executor_id.clone(),
        })?;
    if !executor.alive {
        return Err(Rejection::ExecutorDead { executor_id });
    }
    if executor.draining {
        return Err(Rejection::ExecutorDraining { executor_id });
    }
    let slots = executor.slots;
    let job = state
        .jobs
        .get(job_id)
        .ok_or_else(|| Rejection::UnknownJob { job_id: *job_id })?;
    if job.status.is_terminal() || job.status == JobStatus::Cancelling {
        return Err(Rejection::JobNotActive {
            job_id: *job_id,
            status: job.status,
            what: "assignments".to_owned(),
        });
    }
    let current = job.assignments.get(&subtask).ok_or_else(|| Rejection::UnknownSubtask {
        job_id: *job_id,
        operator_id: subtask.operator_id.clone(),
        subtask_index: subtask.subtask_index,
    })?;
    let already_there = current.executor_id.as_ref() == Some(&executor_id);
    if !already_there && state.used_slots(&executor_id) >= slots {
        return Err(Rejection::NoFreeSlot { executor_id, slots });
    }
    let job = job_mut(state, job_id)?;
    let epoch = Epoch(job.last_epoch.0 + 1);
    job.last_epoch = epoch;
    job.updated_at_ms = at_ms;
    job.assignments.insert(
        subtask,
        Assignment {
            executor_id: Some(executor_id),
            epoch,
            previous_executor: None,
        },
    );
    Ok(Response::SubtaskAssigned { job_id: *job_id, epoch })
}

fn trigger_checkpoint(state: &mut State, job_id: &JobId, at_ms: u64) -> ApplyResult {
    let job = job_mut(state, job_id)?;
    if job.status != JobStatus::Running {
        return Err(Rejection::JobNotActive {
            job_id: *job_id,
            status: job.status,
            what: "checkpoint triggers".to_owned(),
        });
    }
    let last = job
        .last_triggered_checkpoint_id
        .max(job.last_checkpoint_id)
        .map_or(0, |id| id.0);
    let checkpoint_id = CheckpointId(last + 1);
    job.last_triggered_checkpoint_id = Some(checkpoint_id);
    job.updated_at_ms = job.updated_at_ms.max(at_ms);
    Ok(Response::CheckpointTriggered {
        job_id: *job_id,
        checkpoint_id,
    })
}

/// Whether `job` still runs, at the same epochs, exactly the placement that acknowledged
/// `checkpoint`; the problem otherwise.
///
/// The invariant this keeps: a checkpoint completes only while the placement whose sinks
/// pre-committed it can still publish it. Once a restart released that placement (a failure, an
/// executor lost), the next deployment restores the latest checkpoint completed *before* the
/// release, and its sinks delete every pending file that checkpoint does not list, including the
/// ones of checkpoints acknowledged by the released placement. Were such a checkpoint committed
/// after the release, it would become the latest one while its files are gone: every later
/// restore would fail on them (seen in a chaos run as a job restoring forever). Raft orders this
/// entry against the release, so checking here, at apply, closes the race that checking on the
/// leader before proposing leaves open.
fn placement_unchanged(job: &JobRecord, checkpoint: &CompletedCheckpoint) -> Result<(), String> {
    if job.status != JobStatus::Running {
        return Err(format!("the job is {}", job.status.name()));
    }
    if job.assignments.len() != checkpoint.acknowledged_epochs.len() {
        return Err(format!(
            "{} subtasks acknowledged, the job has {}",
            checkpoint.acknowledged_epochs.len(),
            job.assignments.len()
        ));
    }
    for (subtask, assignment) in &job.assignments {
        let acknowledged = checkpoint.acknowledged_epochs.get(subtask);
        if assignment.executor_id.is_none() || acknowledged != Some(&assignment.epoch) {
            return Err(format!(
                "{}[{}] acknowledged at epoch {}, now at epoch {}{}",
                subtask.operator_id,
                subtask.subtask_index,
                acknowledged.map_or_else(|| "none".to_owned(), |epoch| epoch.0.to_string()),
                assignment.epoch.0,
                if assignment.executor_id.is_none() {
                    " (released)"
                } else {
                    ""
                }
            ));
        }
    }
    Ok(())
}

fn complete_checkpoint(
    state: &mut State,
    job_id: &JobId,
    checkpoint: CompletedCheckpoint,
    savepoint: bool,
) -> ApplyResult {
    let job = job_mut(state, job_id)?;
    if savepoint && job.pending_savepoint.is_none() {
        return Err(Rejection::InvalidSavepoint {
            problem: format!(
                "checkpoint {} of job {job_id} was taken for a savepoint the job no longer waits for",
                checkpoint.checkpoint_id
            ),
        });
    }
    if job.status.is_terminal() {
        return Err(Rejection::JobNotActive {
            job_id: *job_id,
            status: job.status,
            what: "checkpoints".to_owned(),
        });
    }
    if job
        .last_triggered_checkpoint_id
        .is_none_or(|triggered| checkpoint.checkpoint_id > triggered)
    {
        return Err(Rejection::CheckpointNotTriggered {
            job_id: *job_id,
            checkpoint_id: checkpoint.checkpoint_id,
            last_triggered: job.last_triggered_checkpoint_id,
        });
    }
    if let Some(last) = job.last_checkpoint_id {
        if checkpoint.checkpoint_id <= last {
            return Err(Rejection::CheckpointIdNotIncreasing {
                job_id: *job_id,
                checkpoint_id: checkpoint.checkpoint_id,
                last,
            });
        }
    }
    if checkpoint.epoch > job.last_epoch {
        return Err(Rejection::CheckpointEpochTooNew {
            job_id: *job_id,
            checkpoint_id: checkpoint.checkpoint_id,
            epoch: checkpoint.epoch,
            current: job.last_epoch,
        });
    }
    if !checkpoint.acknowledged_epochs.is_empty() {
        placement_unchanged(job, &checkpoint).map_err(|problem| Rejection::CheckpointPlacementChanged {
            job_id: *job_id,
            checkpoint_id: checkpoint.checkpoint_id,
            problem,
        })?;
    }
    let checkpoint_id = checkpoint.checkpoint_id;
    job.last_checkpoint_id = Some(checkpoint_id);
    job.updated_at_ms = job.updated_at_ms.max(checkpoint.completed_at_ms);
    if savepoint {
        savepoints::record_savepoint(state, job_id, &checkpoint);
    }
    let job = job_mut(state, job_id)?;
    job.checkpoints.push_back(checkpoint);
    let retained = usize::try_from(job.graph.checkpoint.retained.max(1)).unwrap_or(usize::MAX);
    while job.checkpoints.len() > retained {
        job.checkpoints.pop_front();
    }
    Ok(Response::CheckpointCompleted {
        job_id: *job_id,
        checkpoint_id,
    })
}
