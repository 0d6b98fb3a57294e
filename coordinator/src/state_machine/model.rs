//! What the state machine holds: jobs with their placements and checkpoints, executors, the
//! savepoints, and the responses remembered for client request ids.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use serde::{Deserialize, Serialize};

use raftstream_api::checkpoint::{CompletedCheckpoint, SavepointRef, SubtaskKey};
use raftstream_api::ids::{CheckpointId, Epoch, ExecutorId, JobId, OperatorId, RequestId};
use raftstream_api::serde_pairs as map_as_pairs;
use raftstream_api::spec::{JobGraph, SlotKey};

use super::command::{is_false, is_zero, is_zero_u32, Rejection, Response};
use super::{JobStatus, SavepointOutcome, SavepointRecord, SavepointRequest};

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
    /// Restarts in the current run of failures, for a restart strategy that forgets failures
    /// after a stable period (`reset_after_ms`); 0 for others.
    #[serde(default, skip_serializing_if = "is_zero_u32")]
    pub restart_streak: u32,
    /// When the last restart of such a strategy began.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub last_failure_at_ms: u64,
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
    pub operator_id: Option<OperatorId>,
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

pub(super) fn record_event(job: &mut JobRecord, at_ms: u64, what: String) {
    job.history.push_back(JobEvent { at_ms, what });
    while job.history.len() > JOB_HISTORY {
        job.history.pop_front();
    }
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

    pub(super) fn remember(&mut self, request_id: RequestId, response: Response) {
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

impl State {
    /// Slots free on the executors that take work (alive, not draining).
    pub fn free_slots(&self) -> u64 {
        let used = self.used_slots_by_executor();
        self.executors
            .values()
            .filter(|executor| executor.takes_work())
            .map(|executor| {
                let taken = used.get(&executor.executor_id).copied().unwrap_or(0);
                u64::from(executor.slots.saturating_sub(taken))
            })
            .sum()
    }

    /// Slots of `executor_id` taken by live assignments (one per slice of a job placed there).
    pub fn used_slots(&self, executor_id: &ExecutorId) -> u32 {
        self.used_slots_by_executor().get(executor_id).copied().unwrap_or(0)
    }

    /// [`State::used_slots`] of every executor that holds any, read in one pass over the jobs
    /// (for callers that look at every executor).
    pub fn used_slots_by_executor(&self) -> BTreeMap<&ExecutorId, u32> {
        let mut used: BTreeMap<&ExecutorId, u32> = BTreeMap::new();
        for (executor_id, _) in self.jobs.values().flat_map(JobRecord::placed_slots) {
            let count = used.entry(executor_id).or_insert(0);
            *count = count.saturating_add(1);
        }
        used
    }
}

impl JobRecord {
    /// Every slot of the job with a placed member, and where (see `raftstream_api::spec::SlotKey`).
    fn placed_slots(&self) -> BTreeSet<(&ExecutorId, SlotKey<'_>)> {
        let groups = self.graph.slot_groups();
        self.assignments
            .iter()
            .filter_map(|(subtask, assignment)| {
                let executor_id = assignment.executor_id.as_ref()?;
                Some((executor_id, JobGraph::slot_of(&groups, subtask)?))
            })
            .collect()
    }

    /// The slots this job takes on all executors.
    pub fn slots_held(&self) -> u64 {
        self.placed_slots().len() as u64
    }

    /// The slots this job still needs: slices with a member waiting and none placed.
    pub fn slots_waiting(&self) -> u64 {
        let groups = self.graph.slot_groups();
        let placed: BTreeSet<SlotKey<'_>> = self.placed_slots().into_iter().map(|(_, slot)| slot).collect();
        let waiting: BTreeSet<SlotKey<'_>> = self
            .assignments
            .iter()
            .filter(|(_, assignment)| assignment.executor_id.is_none())
            .filter_map(|(subtask, _)| JobGraph::slot_of(&groups, subtask))
            .filter(|slot| !placed.contains(slot))
            .collect();
        waiting.len() as u64
    }

    /// Where the other members of `subtask`'s slice run, if one is placed.
    pub fn slice_home(&self, subtask: &SubtaskKey) -> Option<&ExecutorId> {
        let groups = self.graph.slot_groups();
        let slot = JobGraph::slot_of(&groups, subtask)?;
        self.assignments.iter().find_map(|(member, assignment)| {
            let executor_id = assignment.executor_id.as_ref()?;
            (member != subtask && JobGraph::slot_of(&groups, member) == Some(slot)).then_some(executor_id)
        })
    }
}

/// The job `job_id`, or the rejection that names it unknown.
pub(super) fn job_mut<'a>(state: &'a mut State, job_id: &JobId) -> Result<&'a mut JobRecord, Rejection> {
    state
        .jobs
        .get_mut(job_id)
        .ok_or_else(|| Rejection::UnknownJob { job_id: *job_id })
}
