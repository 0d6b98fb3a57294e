//! One subtask of a deployed job: a tokio task that restores its state from the checkpoint the
//! leader named (the latest completed one in the Raft state), reads its input gate, aligns
//! barriers, snapshots and acknowledges, and sends its output downstream in batches.
//!
//! Bounded sources do not stop at the end of their input: they wait for one more checkpoint, so
//! that everything they produced is covered by a completed checkpoint (and published by the
//! sinks) before they send end-of-stream. A job is finished when every subtask got there.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use raftstream_coordinator::spec::{JobGraph, OperatorKind, OperatorSpec};
use raftstream_proto::v1 as pb;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::barriers::{Alignment, BarrierAligner};
use raftstream_coordinator::dial::DialAddresses;

use super::chain::chain_members;
use super::exchange::{ChannelEvent, ExchangeHub, GateKey, InputMessage, OutputChannel};
use super::file_source::FileReader;
use super::generator::GeneratorSettings;
use super::key_groups::{key_group, key_group_range, subtask_for_key_group};
use super::operators::{FileSink, KeyedAggregate, KeyedCount, OperatorError, Stateless};
use super::windows::WindowOperator;
use crate::checkpoint::{checksum, CheckpointStorage, CheckpointStore, StateHandle};

/// Records per batch on a channel.
pub const BATCH_RECORDS: usize = 1_024;
/// State up to this size travels inline in the Raft metadata instead of the checkpoint store.
pub const MAX_INLINE_STATE: usize = 1_024;

/// One subtask as the leader deployed it.
#[derive(Debug, Clone)]
pub struct SubtaskDeployment {
    pub job_id: String,
    pub operator_id: String,
    pub subtask_index: u32,
    pub epoch: u64,
    pub graph: Arc<JobGraph>,
    pub placement: Vec<pb::Subtask>,
    pub restore_from: Option<pb::Checkpoint>,
}

impl SubtaskDeployment {
    /// The deployment carried by an `AssignTask` message.
    pub fn from_proto(assign: &pb::AssignTask) -> Result<SubtaskDeployment, String> {
        let task = assign.task.as_ref().ok_or("assignment without a task")?;
        let graph: JobGraph =
            serde_json::from_str(&assign.graph_json).map_err(|error| format!("unreadable job graph: {error}"))?;
        Ok(SubtaskDeployment {
            job_id: task.job_id.clone(),
            operator_id: task.operator_id.clone(),
            subtask_index: task.subtask_index,
            epoch: task.epoch,
            graph: Arc::new(graph),
            placement: assign.placement.clone(),
            restore_from: assign.restore_from.clone(),
        })
    }

    /// The task reference of this placement.
    pub fn task_ref(&self) -> pb::TaskRef {
        pb::TaskRef {
            job_id: self.job_id.clone(),
            operator_id: self.operator_id.clone(),
            subtask_index: self.subtask_index,
            epoch: self.epoch,
        }
    }
}

/// Messages from the leader about checkpoints, routed to the subtasks of their job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TaskControl {
    /// Sources only: inject the barrier of this checkpoint.
    Trigger(u64),
    /// The checkpoint is committed in the Raft log; `acknowledged` says whether this placement's
    /// acknowledgement is part of it (a sink publishes only then).
    Complete {
        checkpoint_id: u64,
        acknowledged: bool,
        /// The oldest checkpoint the job still retains (0: not told).
        oldest_retained: u64,
    },
    Aborted(u64),
}

/// Where a subtask finds the rest of the executor.
#[derive(Clone)]
pub struct TaskEnvironment {
    pub hub: ExchangeHub,
    pub local_address: String,
    /// How this executor reaches other executors' advertised addresses.
    pub dial: DialAddresses,
    pub store: Arc<CheckpointStorage>,
    /// Checkpoint acknowledgements and task statuses, to the leader through the session.
    pub reports: mpsc::Sender<pb::executor_message::Body>,
}

/// Why a subtask stopped before its end.
#[derive(Debug, thiserror::Error)]
pub enum TaskError {
    #[error(transparent)]
    Operator(#[from] OperatorError),
    #[error("restoring checkpoint {checkpoint_id}: {problem}")]
    Restore { checkpoint_id: u64, problem: String },
    #[error("writing state of checkpoint {checkpoint_id}: {problem}")]
    Snapshot { checkpoint_id: u64, problem: String },
    #[error(transparent)]
    Send(#[from] super::exchange::SendError),
    #[error("job graph: {0}")]
    Graph(String),
    #[error("input closed before end of stream")]
    InputClosed,
    #[error("source: {0}")]
    Source(String),
}

/// How a subtask ended without error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskEnd {
    /// Its input ended and all its output is delivered (sinks: published).
    Finished,
    Cancelled,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Partition {
    Forward,
    Hash,
    RoundRobin,
}

fn partition(from: &OperatorSpec, to: &OperatorSpec) -> Partition {
    if from.kind == OperatorKind::KeyBy {
        Partition::Hash
    } else if from.parallelism == to.parallelism {
        Partition::Forward
    } else {
        Partition::RoundRobin
    }
}

struct Edge {
    partition: Partition,
    channels: Vec<OutputChannel>,
    buffers: Vec<Vec<pb::Record>>,
    next: usize,
}

/// The output side of a subtask: one edge per consuming operator.
struct Outputs {
    edges: Vec<Edge>,
    max_parallelism: u32,
}

impl Outputs {
    fn push(&mut self, record: pb::Record) {
        let edges = self.edges.len();
        let mut record = Some(record);
        for position in 0..edges {
            // The last edge takes the record itself, earlier ones a copy.
            let next = if position + 1 == edges {
                record.take()
            } else {
                record.clone()
            };
            let Some(next) = next else { continue };
            let edge = &mut self.edges[position];
            let target = match edge.partition {
                // One consumer owns every key group: nothing to hash.
                Partition::Forward | Partition::Hash if edge.channels.len() == 1 => 0,
                Partition::Forward => 0,
                Partition::Hash => subtask_for_key_group(
                    key_group(&next.key, self.max_parallelism),
                    self.max_parallelism,
                    edge.channels.len() as u32,
                ) as usize,
                Partition::RoundRobin => {
                    edge.next = (edge.next + 1) % edge.channels.len().max(1);
                    edge.next
                }
            };
            if let Some(buffer) = edge.buffers.get_mut(target) {
                buffer.push(next);
            }
        }
    }

    async fn flush(&mut self, only_full: bool) -> Result<(), TaskError> {
        for edge in &mut self.edges {
            for (target, buffer) in edge.buffers.iter_mut().enumerate() {
                if buffer.is_empty() || (only_full && buffer.len() < BATCH_RECORDS) {
                    continue;
                }
                let batch = std::mem::replace(buffer, Vec::with_capacity(BATCH_RECORDS));
                edge.channels[target].send(ChannelEvent::Batch(batch)).await?;
            }
        }
        Ok(())
    }

    async fn broadcast(&mut self, event: impl Fn() -> ChannelEvent) -> Result<(), TaskError> {
        for channel in self.edges.iter().flat_map(|edge| &edge.channels) {
            channel.send(event()).await?;
        }
        Ok(())
    }

    async fn broadcast_barrier(&mut self, checkpoint_id: u64) -> Result<(), TaskError> {
        self.flush(false).await?;
        for channel in self.edges.iter().flat_map(|edge| &edge.channels) {
            channel.send(ChannelEvent::Barrier(checkpoint_id)).await?;
        }
        Ok(())
    }

    async fn end(&mut self) -> Result<(), TaskError> {
        self.flush(false).await?;
        for channel in self.edges.iter().flat_map(|edge| &edge.channels) {
            channel.send(ChannelEvent::End).await?;
        }
        Ok(())
    }
}

/// What the subtask computes.
enum Logic {
    Source(Box<SourceReader>),
    Stateless(Stateless),
    Count(KeyedCount),
    Aggregate(KeyedAggregate),
    Window(Box<WindowOperator>),
    FileSink(FileSink),
    Print(String),
}

struct GeneratorState {
    settings: GeneratorSettings,
    /// The next offset this subtask emits (offsets index, index + parallelism, ...).
    next_offset: u64,
    step: u64,
    rate_per_subtask: Option<f64>,
    /// Event time advances by this per offset: 1 ms, or the configured rate's pace, so event
    /// times of a rate-limited generator track the wall clock, and a replay repeats them.
    ms_per_offset: f64,
}

/// Where a source's records come from; its position is the offset checkpoints record.
enum SourceReader {
    Generator(GeneratorState),
    Files(FileReader),
}

impl SourceReader {
    fn is_exhausted(&self) -> bool {
        match self {
            SourceReader::Generator(generator) => generator.settings.is_exhausted(generator.next_offset),
            SourceReader::Files(files) => files.is_exhausted(),
        }
    }

    fn position(&self) -> u64 {
        match self {
            SourceReader::Generator(generator) => generator.next_offset,
            SourceReader::Files(files) => files.position(),
        }
    }

    /// The event time of the record last returned by [`SourceReader::next`].
    fn last_timestamp_ms(&self) -> i64 {
        match self {
            SourceReader::Generator(generator) => {
                let offset = generator.next_offset.saturating_sub(generator.step);
                (offset as f64 * generator.ms_per_offset) as i64
            }
            SourceReader::Files(_) => 0,
        }
    }

    fn rate_per_subtask(&self) -> Option<f64> {
        match self {
            SourceReader::Generator(generator) => generator.rate_per_subtask,
            SourceReader::Files(_) => None,
        }
    }

    /// The next record into `line`; false at the end of the input.
    fn next(&mut self, line: &mut String) -> Result<bool, TaskError> {
        match self {
            SourceReader::Generator(generator) => {
                if generator.settings.is_exhausted(generator.next_offset) {
                    return Ok(false);
                }
                generator.settings.write_record(generator.next_offset, line);
                generator.next_offset += generator.step;
                Ok(true)
            }
            SourceReader::Files(files) => files
                .next_line(line)
                .map_err(|error| TaskError::Source(error.to_string())),
        }
    }
}

#[derive(Serialize, Deserialize)]
struct SourceSnapshot {
    position: u64,
}

fn param_u64(operator: &OperatorSpec, name: &str) -> Option<u64> {
    operator.params.get(name).and_then(|value| value.as_u64())
}

/// Runs one subtask until it finishes, fails or is cancelled.
pub async fn run_subtask(
    deployment: SubtaskDeployment,
    environment: TaskEnvironment,
    mut control: mpsc::Receiver<TaskControl>,
    cancel: CancellationToken,
) -> Result<TaskEnd, TaskError> {
    let graph = deployment.graph.clone();
    let operator = graph
        .operator(&deployment.operator_id)
        .ok_or_else(|| TaskError::Graph(format!("no operator {:?}", deployment.operator_id)))?
        .clone();
    let members = chain_members(&deployment, &environment.local_address);
    if members.is_empty() {
        return Err(TaskError::Graph(format!(
            "{}[{}] runs in the task of its chain",
            operator.id, deployment.subtask_index
        )));
    }
    let key = GateKey {
        job_id: deployment.job_id.clone(),
        operator_id: operator.id.clone(),
        subtask_index: deployment.subtask_index,
    };
    // The gate first, so upstream subtasks can connect while this one connects downstream.
    let mut channels = HashMap::new();
    for input_id in &operator.inputs {
        let input = graph
            .operator(input_id)
            .ok_or_else(|| TaskError::Graph(format!("no operator {input_id:?}")))?;
        let sources: Vec<u32> = if partition(input, &operator) == Partition::Forward {
            vec![deployment.subtask_index]
        } else {
            (0..input.parallelism).collect()
        };
        for index in sources {
            let next = channels.len();
            channels.insert((input.id.clone(), index), next);
        }
    }
    let input_count = channels.len();
    let mut gate = (input_count > 0).then(|| environment.hub.register(key.clone(), deployment.epoch, channels));
    let result = run_registered(
        &members,
        &environment,
        gate.as_mut(),
        input_count,
        &mut control,
        &cancel,
    )
    .await;
    if input_count > 0 {
        environment.hub.unregister(&key, deployment.epoch);
    }
    result
}

async fn open_outputs(
    deployment: &SubtaskDeployment,
    operator: &OperatorSpec,
    environment: &TaskEnvironment,
    cancel: &CancellationToken,
) -> Result<Outputs, TaskError> {
    let graph = &deployment.graph;
    let mut edges = Vec::new();
    for consumer in graph
        .operators
        .iter()
        .filter(|candidate| candidate.inputs.contains(&operator.id))
    {
        let partition = partition(operator, consumer);
        let targets: Vec<u32> = if partition == Partition::Forward {
            vec![deployment.subtask_index]
        } else {
            (0..consumer.parallelism).collect()
        };
        let mut channels = Vec::with_capacity(targets.len());
        for index in targets {
            let placed = deployment
                .placement
                .iter()
                .find(|placed| placed.operator_id == consumer.id && placed.subtask_index == index)
                .ok_or_else(|| TaskError::Graph(format!("{}[{index}] is not placed", consumer.id)))?;
            let target = GateKey {
                job_id: deployment.job_id.clone(),
                operator_id: consumer.id.clone(),
                subtask_index: index,
            };
            let channel = OutputChannel::open(
                &environment.hub,
                &environment.local_address,
                environment.dial.resolve(&placed.executor_address),
                target,
                placed.epoch,
                (&operator.id, deployment.subtask_index, deployment.epoch),
                cancel,
            )
            .await?;
            channels.push(channel);
        }
        let buffers = (0..channels.len()).map(|_| Vec::with_capacity(BATCH_RECORDS)).collect();
        edges.push(Edge {
            partition,
            channels,
            buffers,
            next: 0,
        });
    }
    Ok(Outputs {
        edges,
        max_parallelism: graph.max_parallelism,
    })
}

/// The bytes of one task's state in a checkpoint, verified.
async fn load_state(
    store: &CheckpointStorage,
    checkpoint_id: u64,
    handle: &pb::TaskStateHandle,
) -> Result<Vec<u8>, TaskError> {
    let restore_error = |problem: String| TaskError::Restore { checkpoint_id, problem };
    if handle.location.is_empty() {
        if handle.size_bytes != handle.inline_state.len() as u64 || checksum(&handle.inline_state) != handle.checksum {
            return Err(restore_error(format!(
                "inline state of {}[{}] does not match its checksum",
                handle.operator_id, handle.subtask_index
            )));
        }
        return Ok(handle.inline_state.clone());
    }
    let state_handle = StateHandle {
        location: handle.location.clone(),
        size_bytes: handle.size_bytes,
        checksum: handle.checksum,
    };
    store
        .get(&state_handle)
        .await
        .map_err(|error| restore_error(error.to_string()))
}

async fn restore(
    deployment: &SubtaskDeployment,
    operator: &OperatorSpec,
    environment: &TaskEnvironment,
    logic: &mut Logic,
) -> Result<(), TaskError> {
    let checkpoint = deployment.restore_from.as_ref();
    let checkpoint_id = checkpoint.map_or(0, |checkpoint| checkpoint.checkpoint_id);
    match logic {
        // Sources were positioned from the checkpoint's offsets when they were opened.
        Logic::Source(_) => {}
        Logic::Count(_) | Logic::Aggregate(_) | Logic::Window(_) => {
            let Some(checkpoint) = checkpoint else { return Ok(()) };
            let groups = key_group_range(
                deployment.subtask_index,
                deployment.graph.max_parallelism,
                operator.parallelism,
            );
            // Every subtask's state of the operator: a rescaled job takes its key groups from any.
            for handle in checkpoint
                .task_states
                .iter()
                .filter(|handle| handle.operator_id == operator.id)
            {
                let bytes = load_state(&environment.store, checkpoint_id, handle).await?;
                match logic {
                    Logic::Count(counts) => counts.restore(&operator.id, &bytes, &groups)?,
                    Logic::Aggregate(aggregate) => aggregate.restore(&operator.id, &bytes, &groups)?,
                    Logic::Window(window) => {
                        let own = handle.subtask_index == deployment.subtask_index;
                        window.restore(&operator.id, &bytes, &groups, own)?;
                    }
                    _ => {}
                }
            }
        }
        Logic::FileSink(sink) => {
            let state = match checkpoint {
                Some(checkpoint) => {
                    let handle = checkpoint.task_states.iter().find(|handle| {
                        handle.operator_id == operator.id && handle.subtask_index == deployment.subtask_index
                    });
                    match handle {
                        Some(handle) => Some(load_state(&environment.store, checkpoint_id, handle).await?),
                        None => None,
                    }
                }
                None => None,
            };
            let published = sink.restore(&operator.id, state.as_deref())?;
            if published > 0 {
                tracing::info!(
                    checkpoint_id,
                    published,
                    "published pre-committed output of the restored checkpoint"
                );
            }
        }
        Logic::Stateless(_) | Logic::Print(_) => {}
    }
    Ok(())
}

fn logic_of(deployment: &SubtaskDeployment, operator: &OperatorSpec, input_count: usize) -> Result<Logic, TaskError> {
    // A source resumes at the offset the restored checkpoint recorded for it in the Raft state.
    let replay_everything = crate::defects::injected(crate::defects::REPLAY_FROM_START);
    let restored_offset = deployment
        .restore_from
        .as_ref()
        .filter(|_| !replay_everything)
        .and_then(|checkpoint| {
            checkpoint
                .source_offsets
                .iter()
                .find(|offset| offset.operator_id == operator.id && offset.subtask_index == deployment.subtask_index)
                .map(|offset| offset.offset)
        });
    Ok(match operator.kind {
        OperatorKind::Generator => {
            let defaults = GeneratorSettings::default();
            let settings = GeneratorSettings {
                seed: param_u64(operator, "seed").unwrap_or(defaults.seed),
                count: param_u64(operator, "count"),
                vocabulary_size: param_u64(operator, "vocabulary_size").unwrap_or(defaults.vocabulary_size),
                words_per_record: param_u64(operator, "words_per_record").unwrap_or(defaults.words_per_record),
            };
            let parallelism = u64::from(operator.parallelism.max(1));
            let rate = param_u64(operator, "rate_per_second");
            Logic::Source(Box::new(SourceReader::Generator(GeneratorState {
                settings,
                next_offset: restored_offset.unwrap_or(u64::from(deployment.subtask_index)),
                step: parallelism,
                rate_per_subtask: rate.map(|rate| rate as f64 / parallelism as f64),
                ms_per_offset: rate.map_or(1.0, |rate| 1_000.0 / rate as f64),
            })))
        }
        OperatorKind::FileSource => {
            let path = operator
                .params
                .get("path")
                .and_then(|value| value.as_str())
                .unwrap_or_default();
            let reader = FileReader::open(
                std::path::Path::new(path),
                deployment.subtask_index,
                operator.parallelism,
                restored_offset.unwrap_or(0),
            )
            .map_err(|error| TaskError::Source(error.to_string()))?;
            Logic::Source(Box::new(SourceReader::Files(reader)))
        }
        OperatorKind::Map | OperatorKind::FlatMap | OperatorKind::Filter | OperatorKind::KeyBy => {
            let transform = Stateless::of(operator)?;
            let only_keys_read = deployment
                .graph
                .consumers(&operator.id)
                .all(|consumer| consumer.kind == OperatorKind::Count);
            Logic::Stateless(match transform {
                Stateless::KeyByValue { .. } if only_keys_read => Stateless::KeyByValue { keep_value: false },
                other => other,
            })
        }
        OperatorKind::Count => Logic::Count(KeyedCount::default()),
        OperatorKind::Sum | OperatorKind::Min | OperatorKind::Max | OperatorKind::Reduce => {
            Logic::Aggregate(KeyedAggregate::of(operator)?)
        }
        OperatorKind::TumblingWindow | OperatorKind::SlidingWindow => {
            Logic::Window(Box::new(WindowOperator::of(operator, input_count)?))
        }
        OperatorKind::FileSink => {
            Logic::FileSink(FileSink::open(operator, deployment.subtask_index, deployment.epoch)?)
        }
        OperatorKind::Print => Logic::Print(
            operator
                .params
                .get("prefix")
                .and_then(|value| value.as_str())
                .unwrap_or_default()
                .to_owned(),
        ),
    })
}

/// Whether `location` (`<job>/chk-<id>/<operator>-<subtask>-e<epoch>.state`) holds state an
/// earlier epoch of this subtask (`own_files` = `<operator>-<subtask>-e`) wrote for a checkpoint
/// below `below`.
fn left_by_predecessor(location: &str, own_files: &str, epoch: u64, below: u64) -> bool {
    let mut parts = location.rsplit('/');
    let (Some(file), Some(directory)) = (parts.next(), parts.next()) else {
        return false;
    };
    let checkpoint_id = directory.strip_prefix("chk-").and_then(|id| id.parse::<u64>().ok());
    let written_epoch = file
        .strip_prefix(own_files)
        .and_then(|rest| rest.strip_suffix(".state"))
        .and_then(|written| written.parse::<u64>().ok());
    matches!((checkpoint_id, written_epoch), (Some(id), Some(written)) if id < below && written < epoch)
}

struct Acknowledger<'a> {
    deployment: &'a SubtaskDeployment,
    environment: &'a TaskEnvironment,
    files: std::sync::Mutex<StateFiles>,
}

/// The state files this subtask wrote, so they are deleted once no retained checkpoint needs them:
/// those of aborted checkpoints, and those of completed ones older than the `retained` newest.
/// Files the subtask's predecessors (earlier epochs, before a restart) left are not known to it;
/// it finds them by listing, once the job no longer retains the checkpoints they belong to.
#[derive(Debug, Default)]
struct StateFiles {
    written: std::collections::BTreeMap<u64, String>,
    completed: VecDeque<u64>,
    retained: usize,
    /// The first checkpoint this subtask saw completed: predecessors stopped before it.
    first_completed: Option<u64>,
    /// Predecessors' files below this checkpoint are already deleted.
    swept_below: u64,
}

impl StateFiles {
    /// Whether to delete predecessors' files now, and below which checkpoint: whenever the
    /// job's oldest retained checkpoint moves up, until it passes this subtask's first completed
    /// one (at most `retained` listings per subtask).
    fn predecessor_sweep_due(&mut self, checkpoint_id: u64, oldest_retained: u64) -> Option<u64> {
        let first = *self.first_completed.get_or_insert(checkpoint_id);
        if self.swept_below >= first || oldest_retained <= self.swept_below {
            return None;
        }
        self.swept_below = oldest_retained;
        Some(oldest_retained)
    }

    /// Checkpoint `checkpoint_id` completed: the files that are no longer needed.
    fn completed(&mut self, checkpoint_id: u64) -> Vec<String> {
        if self.completed.back().is_some_and(|last| *last >= checkpoint_id) {
            return Vec::new();
        }
        self.completed.push_back(checkpoint_id);
        while self.completed.len() > self.retained.max(1) {
            self.completed.pop_front();
        }
        let oldest_kept = self.completed.front().copied().unwrap_or(checkpoint_id);
        let obsolete: Vec<u64> = self
            .written
            .keys()
            .copied()
            .filter(|id| *id < oldest_kept || (*id < checkpoint_id && !self.completed.contains(id)))
            .collect();
        obsolete.iter().filter_map(|id| self.written.remove(id)).collect()
    }
}

impl Acknowledger<'_> {
    /// Deletes, in the background, the state files no retained checkpoint needs any more: its
    /// own, and those its predecessors left below `oldest_retained`.
    fn checkpoint_completed(&self, checkpoint_id: u64, oldest_retained: u64) {
        let (obsolete, sweep_below) = match self.files.lock() {
            Ok(mut files) => (
                files.completed(checkpoint_id),
                files.predecessor_sweep_due(checkpoint_id, oldest_retained),
            ),
            Err(_) => return,
        };
        if obsolete.is_empty() && sweep_below.is_none() {
            return;
        }
        let store = self.environment.store.clone();
        let deployment = self.deployment;
        let job_id = deployment.job_id.clone();
        let own_files = format!("{}-{}-e", deployment.operator_id, deployment.subtask_index);
        let epoch = deployment.epoch;
        tokio::spawn(async move {
            let mut obsolete = obsolete;
            if let Some(below) = sweep_below {
                match store.list(&job_id).await {
                    Ok(locations) => obsolete.extend(
                        locations
                            .into_iter()
                            .filter(|location| left_by_predecessor(location, &own_files, epoch, below)),
                    ),
                    Err(error) => tracing::warn!(error = %error, "could not list checkpoint state"),
                }
            }
            for location in obsolete {
                if let Err(error) = store.delete(&location).await {
                    tracing::warn!(error = %error, "could not delete obsolete checkpoint state");
                }
            }
        });
    }

    /// Tells the leader this source reached the end of its input.
    fn report_input_ended(&self) {
        // A full queue means the session is down or far behind: a lost report only delays
        // (the checkpoint times out, the end of input is seen at the next interval).
        let _ = self
            .environment
            .reports
            .try_send(pb::executor_message::Body::TaskStatus(pb::TaskStatus {
                task: Some(self.deployment.task_ref()),
                status: "InputEnded".to_owned(),
                reason: String::new(),
            }));
    }

    /// Stores the state of `checkpoint_id` (inline when tiny) and acknowledges it to the leader.
    async fn acknowledge(
        &self,
        checkpoint_id: u64,
        state: Vec<u8>,
        source_offset: Option<u64>,
    ) -> Result<(), TaskError> {
        let deployment = self.deployment;
        let size_bytes = state.len() as u64;
        let state_checksum = checksum(&state);
        let handle = if state.len() <= MAX_INLINE_STATE {
            pb::TaskStateHandle {
                operator_id: deployment.operator_id.clone(),
                subtask_index: deployment.subtask_index,
                location: String::new(),
                inline_state: state,
                size_bytes,
                checksum: state_checksum,
            }
        } else {
            let location = format!(
                "{}/chk-{checkpoint_id}/{}-{}-e{}.state",
                deployment.job_id, deployment.operator_id, deployment.subtask_index, deployment.epoch
            );
            let stored = self
                .environment
                .store
                .put(&location, state)
                .await
                .map_err(|error| TaskError::Snapshot {
                    checkpoint_id,
                    problem: error.to_string(),
                })?;
            if let Ok(mut files) = self.files.lock() {
                files.written.insert(checkpoint_id, stored.location.clone());
            }
            pb::TaskStateHandle {
                operator_id: deployment.operator_id.clone(),
                subtask_index: deployment.subtask_index,
                location: stored.location,
                inline_state: Vec::new(),
                size_bytes: stored.size_bytes,
                checksum: stored.checksum,
            }
        };
        let source_offsets = source_offset
            .map(|offset| pb::SourceOffset {
                operator_id: deployment.operator_id.clone(),
                subtask_index: deployment.subtask_index,
                offset,
            })
            .into_iter()
            .collect();
        // A lost ack only lets the checkpoint time out; the job goes on.
        // A full queue means the session is down or far behind: a lost report only delays
        // (the checkpoint times out, the end of input is seen at the next interval).
        let _ = self
            .environment
            .reports
            .try_send(pb::executor_message::Body::CheckpointAck(pb::CheckpointAck {
                task: Some(deployment.task_ref()),
                checkpoint_id,
                state: Some(handle),
                source_offsets,
            }));
        Ok(())
    }
}

/// Runs the chain `members` (head first, never empty) as one task.
async fn run_registered(
    members: &[SubtaskDeployment],
    environment: &TaskEnvironment,
    gate: Option<&mut mpsc::Receiver<InputMessage>>,
    input_count: usize,
    control: &mut mpsc::Receiver<TaskControl>,
    cancel: &CancellationToken,
) -> Result<TaskEnd, TaskError> {
    let mut logics = Vec::with_capacity(members.len());
    for (position, member) in members.iter().enumerate() {
        let operator = member
            .graph
            .operator(&member.operator_id)
            .ok_or_else(|| TaskError::Graph(format!("no operator {:?}", member.operator_id)))?;
        // A chained operator reads one input: the one before it.
        let inputs = if position == 0 { input_count } else { 1 };
        let mut logic = logic_of(member, operator, inputs)?;
        restore(member, operator, environment, &mut logic).await?;
        logics.push(logic);
    }
    let (Some(head), Some(tail)) = (members.first(), members.last()) else {
        return Err(TaskError::Graph("a task without operators".to_owned()));
    };
    let tail_operator = tail
        .graph
        .operator(&tail.operator_id)
        .ok_or_else(|| TaskError::Graph(format!("no operator {:?}", tail.operator_id)))?;
    let mut outputs = open_outputs(tail, tail_operator, environment, cancel).await?;
    let acknowledgers: Vec<Acknowledger<'_>> = members
        .iter()
        .map(|member| Acknowledger {
            deployment: member,
            environment,
            files: std::sync::Mutex::new(StateFiles {
                retained: member.graph.checkpoint.retained as usize,
                ..StateFiles::default()
            }),
        })
        .collect();
    let checkpointing = head.graph.checkpoint.interval_ms > 0;
    let mut logics = logics.into_iter();
    let head_logic = logics
        .next()
        .ok_or_else(|| TaskError::Graph("a task without operators".to_owned()))?;
    let followers = Followers::new(logics.collect());
    match (head_logic, gate) {
        (Logic::Source(source), _) => {
            run_source(
                *source,
                followers,
                &mut outputs,
                &acknowledgers,
                control,
                cancel,
                checkpointing,
            )
            .await
        }
        (logic, Some(gate)) => {
            let mut task = InputTask {
                logic,
                followers,
                aligner: BarrierAligner::new(input_count),
                ended: vec![false; input_count],
                stash: (0..input_count).map(|_| VecDeque::new()).collect(),
                replay: VecDeque::new(),
                dropped: 0,
                watermarks: vec![i64::MIN; input_count],
                forwarded_watermark: i64::MIN,
            };
            task.run(gate, &mut outputs, &acknowledgers, control, cancel).await
        }
        (_, None) => Err(TaskError::Graph(format!(
            "operator {:?} has no input",
            head.operator_id
        ))),
    }
}

async fn run_source(
    mut source: SourceReader,
    mut followers: Followers,
    outputs: &mut Outputs,
    acknowledgers: &[Acknowledger<'_>],
    control: &mut mpsc::Receiver<TaskControl>,
    cancel: &CancellationToken,
    checkpointing: bool,
) -> Result<TaskEnd, TaskError> {
    let started = Instant::now();
    let mut produced = 0u64;
    // The checkpoint whose barrier followed the last record: once it completes, everything this
    // source produced is committed and end-of-stream may go out.
    let mut final_barrier: Option<u64> = None;
    let mut line = String::new();
    let mut reported_end = false;
    let rate = source.rate_per_subtask();
    let batch = rate.map_or(BATCH_RECORDS, |rate| ((rate / 50.0) as usize).clamp(1, BATCH_RECORDS));
    let (Some(acknowledger), chained) = (acknowledgers.first(), acknowledgers.get(1..).unwrap_or_default()) else {
        return Err(TaskError::Graph("a source task without its acknowledger".to_owned()));
    };
    let mut records = Vec::with_capacity(batch);
    loop {
        let exhausted = source.is_exhausted();
        if exhausted && !checkpointing {
            outputs.flush(false).await?;
            outputs.broadcast(|| ChannelEvent::Watermark(i64::MAX)).await?;
            outputs.end().await?;
            return Ok(TaskEnd::Finished);
        }
        if exhausted && !reported_end {
            // Event time is over for this input: windows downstream may fire everything before
            // the final checkpoint's barrier. Then ask the leader for that checkpoint now rather
            // than at the next interval.
            outputs.flush(false).await?;
            outputs.broadcast(|| ChannelEvent::Watermark(i64::MAX)).await?;
            acknowledger.report_input_ended();
            reported_end = true;
        }
        let wait_until = rate.map(|rate| started + Duration::from_secs_f64(produced as f64 / rate));
        tokio::select! {
            biased;
            _ = cancel.cancelled() => return Ok(TaskEnd::Cancelled),
            message = control.recv() => match message {
                Some(TaskControl::Trigger(checkpoint_id)) => {
                    outputs.flush(false).await?;
                    let position = source.position();
                    let state = serde_json::to_vec(&SourceSnapshot { position }).unwrap_or_default();
                    acknowledger.acknowledge(checkpoint_id, state, Some(position)).await?;
                    // Operators chained behind a source are stateless.
                    for follower in chained {
                        follower.acknowledge(checkpoint_id, Vec::new(), None).await?;
                    }
                    outputs.broadcast_barrier(checkpoint_id).await?;
                    if exhausted && final_barrier.is_none() {
                        final_barrier = Some(checkpoint_id);
                    }
                }
                Some(TaskControl::Complete { checkpoint_id, oldest_retained, .. }) => {
                    for member in acknowledgers {
                        member.checkpoint_completed(checkpoint_id, oldest_retained);
                    }
                    if final_barrier.is_some_and(|last| checkpoint_id >= last) {
                        outputs.end().await?;
                        return Ok(TaskEnd::Finished);
                    }
                }
                // The next checkpoint carries the data on; an aborted final one is replaced.
                Some(TaskControl::Aborted(checkpoint_id)) => {
                    if final_barrier == Some(checkpoint_id) {
                        final_barrier = None;
                    }
                }
                None => return Ok(TaskEnd::Cancelled),
            },
            _ = async {
                if exhausted {
                    std::future::pending::<()>().await;
                }
                if let Some(at) = wait_until {
                    tokio::time::sleep_until(at.into()).await;
                }
            } => {
                for _ in 0..batch {
                    if !source.next(&mut line)? {
                        break;
                    }
                    records.push(pb::Record { key: String::new(), value: line.clone(), timestamp_ms: source.last_timestamp_ms() });
                    produced += 1;
                }
                followers.process(&mut records, &mut |record| outputs.push(record))?;
                outputs.flush(true).await?;
                if rate.is_some() {
                    outputs.flush(false).await?;
                }
            }
        }
    }
}

struct InputTask {
    logic: Logic,
    followers: Followers,
    aligner: BarrierAligner,
    ended: Vec<bool>,
    /// Per channel: what arrived after its barrier while the task waits for the others.
    stash: Vec<VecDeque<InputMessage>>,
    /// Stashed messages released by a finished alignment, processed before new input.
    replay: VecDeque<InputMessage>,
    dropped: u64,
    /// Per input channel, the last watermark it announced.
    watermarks: Vec<i64>,
    forwarded_watermark: i64,
}

impl InputTask {
    fn release_stash(&mut self) {
        for channel in &mut self.stash {
            self.replay.extend(channel.drain(..));
        }
    }

    async fn run(
        &mut self,
        gate: &mut mpsc::Receiver<InputMessage>,
        outputs: &mut Outputs,
        acknowledgers: &[Acknowledger<'_>],
        control: &mut mpsc::Receiver<TaskControl>,
        cancel: &CancellationToken,
    ) -> Result<TaskEnd, TaskError> {
        let checkpointing = acknowledgers
            .first()
            .is_some_and(|head| head.deployment.graph.checkpoint.interval_ms > 0);
        let mut input_done = false;
        loop {
            if !input_done && self.ended.iter().all(|ended| *ended) && self.replay.is_empty() {
                input_done = true;
                match self.sink() {
                    // Without checkpoints there is no commit protocol: the end of input commits.
                    Some(sink) if !checkpointing => {
                        sink.pre_commit(0)?;
                        sink.publish_up_to(0)?;
                    }
                    Some(_) => {}
                    None => {
                        outputs.end().await?;
                        return Ok(TaskEnd::Finished);
                    }
                }
            }
            if input_done {
                if let Some(sink) = self.sink() {
                    if sink.is_fully_published() {
                        if sink.has_uncommitted_data() {
                            tracing::error!(
                                "records arrived after the final checkpoint barrier; they are not published"
                            );
                        }
                        return Ok(TaskEnd::Finished);
                    }
                }
            }
            let message = match self.replay.pop_front() {
                Some(message) => message,
                None => tokio::select! {
                    biased;
                    _ = cancel.cancelled() => return Ok(TaskEnd::Cancelled),
                    message = control.recv() => {
                        match message {
                            Some(message) => {
                                if let TaskControl::Complete { checkpoint_id, oldest_retained, .. } = &message {
                                    for member in acknowledgers {
                                        member.checkpoint_completed(*checkpoint_id, *oldest_retained);
                                    }
                                }
                                self.on_control(message)?
                            }
                            None => return Ok(TaskEnd::Cancelled),
                        }
                        continue;
                    }
                    message = gate.recv(), if !input_done => match message {
                        Some(message) => message,
                        None => return Err(TaskError::InputClosed),
                    },
                },
            };
            let channel = message.channel;
            if channel >= self.ended.len() {
                continue;
            }
            if self.aligner.is_blocked(channel) {
                self.stash[channel].push_back(message);
                continue;
            }
            match message.event {
                ChannelEvent::Batch(records) => {
                    let mut emitted = Vec::new();
                    for record in records {
                        self.process(channel, record, &mut emitted)?;
                    }
                    self.followers
                        .process(&mut emitted, &mut |record| outputs.push(record))?;
                    outputs.flush(false).await?;
                }
                ChannelEvent::Barrier(checkpoint_id) => {
                    let outcome = self.barrier_arrived(channel, checkpoint_id);
                    self.after_alignment(outcome, outputs, acknowledgers).await?;
                }
                ChannelEvent::Watermark(watermark) => {
                    let mut emitted = Vec::new();
                    if let Some(slot) = self.watermarks.get_mut(channel) {
                        *slot = (*slot).max(watermark);
                    }
                    if let Logic::Window(window) = &mut self.logic {
                        window.on_watermark(channel, watermark, &mut |out| emitted.push(out));
                    }
                    self.followers
                        .process(&mut emitted, &mut |record| outputs.push(record))?;
                    self.forward_watermark(outputs).await?;
                }
                ChannelEvent::End => {
                    self.ended[channel] = true;
                    // An ended input delivers no more barriers: count it as aligned.
                    if let Some(aligning) = self.aligner.aligning() {
                        let outcome = self.aligner.on_barrier(channel, aligning);
                        self.after_alignment(outcome, outputs, acknowledgers).await?;
                    }
                }
            }
        }
    }

    fn barrier_arrived(&mut self, channel: usize, checkpoint_id: u64) -> Alignment {
        let mut outcome = self.aligner.on_barrier(channel, checkpoint_id);
        if matches!(outcome, Alignment::Waiting | Alignment::Superseded { .. }) {
            if let Alignment::Superseded { .. } = outcome {
                self.release_stash();
            }
            for ended in (0..self.ended.len()).filter(|index| self.ended[*index]) {
                if let Alignment::Snapshot(id) = self.aligner.on_barrier(ended, checkpoint_id) {
                    outcome = Alignment::Snapshot(id);
                    break;
                }
            }
        }
        outcome
    }

    async fn after_alignment(
        &mut self,
        outcome: Alignment,
        outputs: &mut Outputs,
        acknowledgers: &[Acknowledger<'_>],
    ) -> Result<(), TaskError> {
        match outcome {
            Alignment::Snapshot(checkpoint_id) => {
                let logics = std::iter::once(&mut self.logic).chain(self.followers.logics.iter_mut());
                for (logic, acknowledger) in logics.zip(acknowledgers) {
                    let max_parallelism = acknowledger.deployment.graph.max_parallelism;
                    let state = snapshot(logic, checkpoint_id, max_parallelism)?;
                    acknowledger.acknowledge(checkpoint_id, state, None).await?;
                }
                outputs.broadcast_barrier(checkpoint_id).await?;
                self.release_stash();
            }
            Alignment::Superseded { .. } => self.release_stash(),
            Alignment::Waiting | Alignment::Stale => {}
        }
        Ok(())
    }

    /// The file sink at the end of this task's chain, if it ends in one.
    fn sink(&mut self) -> Option<&mut FileSink> {
        match self.followers.logics.last_mut().unwrap_or(&mut self.logic) {
            Logic::FileSink(sink) => Some(sink),
            _ => None,
        }
    }

    fn process(&mut self, channel: usize, record: pb::Record, emitted: &mut Vec<pb::Record>) -> Result<(), TaskError> {
        apply(
            &mut self.logic,
            channel,
            record,
            &mut |out| emitted.push(out),
            &mut self.dropped,
        )
    }

    /// Passes this task's watermark downstream when it advanced: a window's own, otherwise the
    /// minimum of what its input channels announced.
    async fn forward_watermark(&mut self, outputs: &mut Outputs) -> Result<(), TaskError> {
        let watermark = match &self.logic {
            Logic::Window(window) => window.watermark(),
            _ => self.watermarks.iter().copied().min().unwrap_or(i64::MIN),
        };
        if watermark > self.forwarded_watermark {
            self.forwarded_watermark = watermark;
            outputs.flush(false).await?;
            outputs.broadcast(|| ChannelEvent::Watermark(watermark)).await?;
        }
        Ok(())
    }

    fn on_control(&mut self, message: TaskControl) -> Result<(), TaskError> {
        match message {
            TaskControl::Complete {
                checkpoint_id,
                acknowledged,
                ..
            } => {
                if let Some(sink) = self.sink() {
                    if acknowledged {
                        let published = sink.publish_up_to(checkpoint_id)?;
                        tracing::debug!(checkpoint_id, published, "sink published committed output");
                    } else {
                        tracing::warn!(
                            checkpoint_id,
                            "checkpoint completed without this placement: publishing nothing (fenced)"
                        );
                    }
                }
            }
            TaskControl::Aborted(checkpoint_id) => {
                if self
                    .aligner
                    .aligning()
                    .is_some_and(|aligning| aligning <= checkpoint_id)
                {
                    self.aligner.on_abort(checkpoint_id);
                    self.release_stash();
                }
            }
            TaskControl::Trigger(_) => {}
        }
        Ok(())
    }
}

/// Malformed records (not JSON, missing fields, not a number) are skipped, not fatal: one bad
/// line must not put a job into a restart loop. They are counted and logged.
fn count_dropped(dropped: &mut u64) {
    *dropped += 1;
    if *dropped == 1 || *dropped % 10_000 == 0 {
        tracing::warn!(dropped = *dropped, "skipping malformed records");
    }
}

/// Runs one record through one operator; what it emits goes to `emit`.
fn apply(
    logic: &mut Logic,
    channel: usize,
    record: pb::Record,
    emit: &mut impl FnMut(pb::Record),
    dropped: &mut u64,
) -> Result<(), TaskError> {
    match logic {
        Logic::Window(window) => {
            let before = window.dropped;
            window.on_record(channel, record, emit);
            if window.dropped > before {
                count_dropped(dropped);
            }
        }
        Logic::Stateless(transform) => {
            if !transform.apply(record, emit) {
                count_dropped(dropped);
            }
        }
        Logic::Count(counts) => counts.apply(record, emit),
        Logic::Aggregate(aggregate) => {
            if !aggregate.apply(record, emit) {
                count_dropped(dropped);
            }
        }
        Logic::FileSink(sink) => sink.write(&record)?,
        Logic::Print(prefix) => {
            if record.key.is_empty() {
                println!("{prefix}{}", record.value);
            } else {
                println!("{prefix}{}\t{}", record.key, record.value);
            }
        }
        Logic::Source(_) => {}
    }
    Ok(())
}

/// One operator's state for checkpoint `checkpoint_id` (the sink pre-commits its output).
fn snapshot(logic: &mut Logic, checkpoint_id: u64, max_parallelism: u32) -> Result<Vec<u8>, TaskError> {
    Ok(match logic {
        Logic::Count(counts) => counts.snapshot(max_parallelism),
        Logic::Aggregate(aggregate) => aggregate.snapshot(max_parallelism),
        Logic::Window(window) => window.snapshot(max_parallelism),
        Logic::FileSink(sink) => sink.pre_commit(checkpoint_id)?,
        Logic::Source(_) | Logic::Stateless(_) | Logic::Print(_) => Vec::new(),
    })
}

/// The operators chained behind a task's first one: records pass through them by function calls.
struct Followers {
    logics: Vec<Logic>,
    dropped: u64,
    /// Emptied stage buffers, kept for the next batch: a flat_map multiplies a batch, and growing
    /// fresh vectors for it every time showed as copying in the profile.
    spare: Vec<Vec<pb::Record>>,
}

impl Followers {
    fn new(logics: Vec<Logic>) -> Followers {
        Followers {
            logics,
            dropped: 0,
            spare: Vec::new(),
        }
    }

    /// Takes `records` through every follower in turn and hands what the last one emits to `out`.
    fn process(&mut self, records: &mut Vec<pb::Record>, out: &mut impl FnMut(pb::Record)) -> Result<(), TaskError> {
        let Some((last, before)) = self.logics.split_last_mut() else {
            for record in records.drain(..) {
                out(record);
            }
            return Ok(());
        };
        let mut stage = std::mem::take(records);
        for logic in before {
            let mut next = self.spare.pop().unwrap_or_default();
            for record in stage.drain(..) {
                apply(logic, 0, record, &mut |emitted| next.push(emitted), &mut self.dropped)?;
            }
            self.spare.push(std::mem::replace(&mut stage, next));
        }
        for record in stage.drain(..) {
            apply(last, 0, record, out, &mut self.dropped)?;
        }
        // Hand an emptied buffer back for the next batch.
        *records = stage;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_files_of_aborted_and_no_longer_retained_checkpoints_are_obsolete() {
        let mut files = StateFiles {
            retained: 2,
            ..StateFiles::default()
        };
        for id in 1..=5 {
            files.written.insert(id, format!("chk-{id}"));
        }
        // 2 was aborted: once 3 completes nothing needs it.
        assert!(files.completed(1).is_empty());
        assert_eq!(files.completed(3), vec!["chk-2"]);
        // 4 completes: keep 3 and 4, drop 1.
        assert_eq!(files.completed(4), vec!["chk-1"]);
        assert!(files.completed(4).is_empty(), "a repeated notice changes nothing");
        assert_eq!(files.completed(5), vec!["chk-3"]);
        assert_eq!(files.written.keys().copied().collect::<Vec<_>>(), vec![4, 5]);
    }

    #[test]
    fn predecessors_files_are_swept_as_the_retained_window_passes_the_first_completion() {
        let mut files = StateFiles::default();
        // Restarted after checkpoint 10; 3 retained. First completion 12: 10 and 11 still retained.
        assert_eq!(files.predecessor_sweep_due(12, 10), Some(10));
        assert_eq!(files.predecessor_sweep_due(13, 10), None, "the window did not move");
        assert_eq!(files.predecessor_sweep_due(14, 12), Some(12));
        // Past the first completion: everything predecessors left is gone, no more listing.
        assert_eq!(files.predecessor_sweep_due(15, 13), None);
        assert_eq!(files.predecessor_sweep_due(20, 18), None);
        // Not told (an older leader): never sweeps.
        let mut untold = StateFiles::default();
        assert_eq!(untold.predecessor_sweep_due(5, 0), None);
    }

    #[test]
    fn only_earlier_epochs_files_of_the_same_subtask_below_the_window_are_predecessors() {
        let own = "counts-1-e";
        assert!(left_by_predecessor("job-1/chk-4/counts-1-e2.state", own, 3, 5));
        assert!(
            !left_by_predecessor("job-1/chk-5/counts-1-e2.state", own, 3, 5),
            "still retained"
        );
        assert!(
            !left_by_predecessor("job-1/chk-4/counts-1-e3.state", own, 3, 5),
            "its own"
        );
        assert!(
            !left_by_predecessor("job-1/chk-4/counts-1-e4.state", own, 3, 5),
            "a newer one's"
        );
        assert!(
            !left_by_predecessor("job-1/chk-4/counts-11-e2.state", own, 3, 5),
            "another subtask"
        );
        assert!(!left_by_predecessor("job-1/chk-4/counts-1-0-e2.state", own, 3, 5));
        assert!(!left_by_predecessor("job-1/chk-x/counts-1-e2.state", own, 3, 5));
        assert!(!left_by_predecessor("counts-1-e2.state", own, 3, 5));
    }
}
