//! One subtask of a deployed job: a tokio task that restores its state from the checkpoint the
//! leader named (the latest completed one in the Raft state), reads its input gate, aligns
//! barriers, snapshots and acknowledges, and sends its output downstream in batches.
//!
//! Bounded sources do not stop at the end of their input: they wait for one more checkpoint, so
//! that everything they produced is covered by a completed checkpoint (and published by the
//! sinks) before they send end-of-stream. A job is finished when every subtask got there.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use raftstream_api::checkpoint::CheckpointOptions;
use raftstream_api::dial::DialAddresses;
use raftstream_api::ids::CheckpointId;
use raftstream_api::messages::TaskReport;

use crate::blocking::off_the_workers;
use raftstream_api::spec::{OperatorConfig, OperatorKind, OperatorSpec};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::barriers::BarrierAligner;
use super::deployment::{chain_members, SubtaskDeployment};
use super::exchange::{ExchangeHub, GateKey, InputMessage};
use super::file_source::FileReader;
use super::generator::GeneratorPosition;
use super::metrics::MetricsRegistry;
use super::operators::{
    FileSink, KeyedAggregate, KeyedCount, KeyedMapState, OperatorError, SinkSegment, Stateless, WindowOperator,
};
use super::record::Record;
use super::user_functions::{
    record_of, udf_call, CallCounters, FunctionLoadError, FunctionRuntime, KeyedUdf, SubtaskFunction, UdfCallError,
    UdfTransform,
};
use crate::checkpoint::CheckpointStorage;

mod acknowledger;
mod input;
mod outputs;
mod pipeline;
mod replay_budget;
mod restore;
mod source;

use acknowledger::Acknowledger;
use input::InputTask;
use outputs::open_outputs;
use pipeline::Pipeline;
use restore::restore;
use source::{GeneratorState, SourceReader, SourceTask};

/// Records per batch on a channel.
pub const BATCH_RECORDS: usize = 1_024;

/// Lines a source reads before passing them through its chained operators. A splitting flat_map
/// multiplies them: 1,024 lines of 8 words made stage buffers of half a megabyte, twice the L2
/// cache the keyed state competes for (single-threaded, the word count's operators ran 10-15 %
/// faster with 128). 128 lines of a few words fill about one channel batch.
pub const SOURCE_BATCH_LINES: usize = 128;

/// State up to this size travels inline in the Raft metadata instead of the checkpoint store.
pub const MAX_INLINE_STATE: usize = 1_024;

/// Messages from the leader about checkpoints, routed to the subtasks of their job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TaskControl {
    /// Sources only: inject the barrier of this checkpoint; `options` say what the source does
    /// after it (go on, pause until it is aborted, or stop once it completed) and whether it is
    /// a savepoint.
    Trigger {
        checkpoint_id: CheckpointId,
        options: CheckpointOptions,
    },
    /// The checkpoint is committed in the Raft log; `acknowledged` says whether this placement's
    /// acknowledgement is part of it (a sink publishes only then).
    Complete {
        checkpoint_id: CheckpointId,
        acknowledged: bool,
        /// The oldest checkpoint the job still retains.
        oldest_retained: CheckpointId,
    },
    Aborted(CheckpointId),
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
    pub reports: mpsc::Sender<TaskReport>,
    /// Every task the subtasks spawn, so shutdown can wait for them.
    pub tracker: TaskTracker,
    /// Every task's counters, reported to the leader by the session.
    pub metrics: MetricsRegistry,
    /// User functions: fetched, compiled once and instantiated per subtask.
    pub functions: Arc<FunctionRuntime>,
}

/// Why a subtask stopped before its end.
#[derive(Debug, thiserror::Error)]
pub enum TaskError {
    #[error(transparent)]
    Operator(#[from] OperatorError),
    #[error("restoring checkpoint {checkpoint_id}: {problem}")]
    Restore {
        checkpoint_id: CheckpointId,
        problem: String,
    },
    #[error("writing state of checkpoint {checkpoint_id}: {problem}")]
    Snapshot {
        checkpoint_id: CheckpointId,
        problem: String,
    },
    #[error(transparent)]
    Send(#[from] super::exchange::SendError),
    #[error("job graph: {0}")]
    Graph(String),
    #[error("input closed before end of stream")]
    InputClosed,
    #[error("source: {0}")]
    Source(String),
    #[error(transparent)]
    FunctionLoad(#[from] FunctionLoadError),
    #[error(transparent)]
    FunctionCall(#[from] UdfCallError),
}

/// How a subtask ended without error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskEnd {
    /// Its input ended and all its output is delivered (sinks: published).
    Finished,
    Cancelled,
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
    /// A user function's map, flat_map, filter or key_by.
    Udf(Box<UdfTransform>),
    /// A user function's reduce or process, over keyed state the engine keeps.
    KeyedUdf(Box<KeyedUdf>),
}

/// The logic of an operator calling a user function: its own instance of the function.
async fn udf_logic(
    operator: &OperatorSpec,
    call: &raftstream_api::spec::UdfCall,
    deployment: &SubtaskDeployment,
    environment: &TaskEnvironment,
) -> Result<Logic, TaskError> {
    let function = deployment.graph.functions.get(&call.function).ok_or_else(|| {
        TaskError::Graph(format!(
            "operator {:?} calls function {:?}, which the job does not have",
            operator.id, call.function
        ))
    })?;
    let (instance, readiness) = environment.functions.instantiate(&call.function, function).await?;
    let calls = SubtaskFunction {
        function: call.function.clone(),
        export: call.export,
        counters: CallCounters::for_subtask(environment.functions.counters(&call.function, call.export)),
        compile_ms: readiness.compile_ms,
        from_cache: readiness.from_cache,
    };
    Ok(if call.export.is_keyed() {
        Logic::KeyedUdf(Box::new(KeyedUdf::new(instance, calls)))
    } else {
        Logic::Udf(Box::new(UdfTransform::new(instance, calls)))
    })
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
        .operator(deployment.operator_id.as_str())
        .ok_or_else(|| TaskError::Graph(format!("no operator {:?}", deployment.operator_id)))?
        .clone();
    let members = chain_members(&deployment, &environment.local_address);
    if members.is_empty() {
        return Err(TaskError::Graph(format!(
            "{}[{}] runs in the task of its chain",
            operator.id, deployment.subtask_index
        )));
    }
    // User functions compile before the gate opens: upstream subtasks wait to connect instead of
    // filling this subtask's input while it compiles (a Python component takes seconds), so a
    // rate-limited source starts its clock only once the pipeline behind it can run, instead of
    // bursting to catch up afterwards.
    for member in &members {
        let Some(member_operator) = member.graph.operator(member.operator_id.as_str()) else {
            continue;
        };
        let Some(call) = udf_call(&member_operator.config) else {
            continue;
        };
        let Some(function) = member.graph.functions.get(&call.function) else {
            continue;
        };
        tokio::select! {
            _ = cancel.cancelled() => return Ok(TaskEnd::Cancelled),
            prepared = environment.functions.prepare(&call.function, function) => prepared?,
        }
    }
    let key = GateKey {
        job_id: deployment.job_id,
        operator_id: operator.id.clone(),
        subtask_index: deployment.subtask_index,
    };
    // The gate first, so upstream subtasks can connect while this one connects downstream.
    let mut channels = HashMap::new();
    for input_id in &operator.inputs {
        let input = graph
            .operator(input_id.as_str())
            .ok_or_else(|| TaskError::Graph(format!("no operator {input_id:?}")))?;
        let sources =
            graph
                .exchange(input, &operator)
                .senders(deployment.subtask_index, input.parallelism, operator.parallelism);
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

fn logic_of(deployment: &SubtaskDeployment, operator: &OperatorSpec, input_count: usize) -> Result<Logic, TaskError> {
    Ok(match (&operator.config, operator.kind) {
        (OperatorConfig::Generator(generator), _) => {
            let settings = generator.clone();
            let parallelism = u64::from(operator.parallelism.max(1));
            let rate = generator.rate_per_second;
            Logic::Source(Box::new(SourceReader::Generator(GeneratorState {
                settings,
                // Positioned by `restore` when the deployment restores a checkpoint.
                position: GeneratorPosition::fresh(deployment.subtask_index, operator.parallelism),
                last_offset: 0,
                rate_per_subtask: rate.map(|rate| rate as f64 / parallelism as f64),
                ms_per_offset: rate.map_or(1.0, |rate| 1_000.0 / rate as f64),
            })))
        }
        (OperatorConfig::FileSource { path, rate_per_second }, _) => {
            // Positioned by `restore` when the deployment restores a checkpoint.
            let reader = FileReader::open(
                std::path::Path::new(path),
                deployment.subtask_index,
                operator.parallelism,
            )
            .map_err(|error| TaskError::Source(error.to_string()))?;
            let rate_per_subtask = rate_per_second.map(|rate| rate as f64 / f64::from(operator.parallelism.max(1)));
            Logic::Source(Box::new(SourceReader::Files {
                reader,
                rate_per_subtask,
            }))
        }
        (
            _,
            OperatorKind::Map
            | OperatorKind::FlatMap
            | OperatorKind::Filter
            | OperatorKind::KeyBy
            | OperatorKind::Rebalance
            | OperatorKind::Rescale
            | OperatorKind::Broadcast,
        ) => {
            let transform = Stateless::of(operator)?;
            let only_keys_read = deployment
                .graph
                .consumers(operator.id.as_str())
                .all(|consumer| consumer.kind == OperatorKind::Count);
            Logic::Stateless(match transform {
                Stateless::KeyByValue { .. } if only_keys_read => Stateless::KeyByValue { keep_value: false },
                other => other,
            })
        }
        (OperatorConfig::Count { .. }, _) if operator.config.two_phase().is_some() => {
            Logic::Count(KeyedCount::merging_partials())
        }
        (OperatorConfig::Count { .. }, _) => Logic::Count(KeyedCount::default()),
        (OperatorConfig::Aggregate { .. }, _) => Logic::Aggregate(KeyedAggregate::of(operator)?),
        (OperatorConfig::Window(_), _) => Logic::Window(Box::new(WindowOperator::of(operator, input_count)?)),
        (OperatorConfig::FileSink { .. }, _) => {
            Logic::FileSink(FileSink::open(operator, deployment.subtask_index, deployment.epoch)?)
        }
        (OperatorConfig::Print { prefix }, _) => Logic::Print(prefix.clone()),
        (_, kind) => {
            return Err(OperatorError::Unsupported {
                operator: operator.id.to_string(),
                kind,
            }
            .into())
        }
    })
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
    let starting = std::time::Instant::now();
    let mut logics = Vec::with_capacity(members.len());
    for (position, member) in members.iter().enumerate() {
        let operator = member
            .graph
            .operator(member.operator_id.as_str())
            .ok_or_else(|| TaskError::Graph(format!("no operator {:?}", member.operator_id)))?;
        // A chained operator reads one input: the one before it.
        let inputs = if position == 0 { input_count } else { 1 };
        let mut logic = match udf_call(&operator.config) {
            Some(call) => udf_logic(operator, call, member, environment).await?,
            None => logic_of(member, operator, inputs)?,
        };
        restore(member, operator, environment, &mut logic).await?;
        logics.push(logic);
    }
    let (Some(head), Some(tail)) = (members.first(), members.last()) else {
        return Err(TaskError::Graph("a task without operators".to_owned()));
    };
    let tail_operator = tail
        .graph
        .operator(tail.operator_id.as_str())
        .ok_or_else(|| TaskError::Graph(format!("no operator {:?}", tail.operator_id)))?;
    let mut outputs = open_outputs(tail, tail_operator, environment, cancel).await?;
    let acknowledgers: Vec<Acknowledger<'_>> = members
        .iter()
        .map(|member| Acknowledger::new(member, environment))
        .collect();
    let checkpointing = head.graph.checkpoint.interval_ms > 0;
    let keyed_head = matches!(
        logics.first(),
        Some(Logic::Count(_) | Logic::Aggregate(_) | Logic::Window(_) | Logic::KeyedUdf(_))
    );
    let metrics = environment.metrics.register(
        head.task_ref(),
        members
            .iter()
            .skip(1)
            .map(|member| member.operator_id.clone())
            .collect(),
        keyed_head,
    );
    metrics.counters.set_functions(
        logics
            .iter()
            .filter_map(|logic| match logic {
                Logic::Udf(transform) => Some(transform.calls.clone()),
                Logic::KeyedUdf(keyed) => Some(keyed.calls.clone()),
                _ => None,
            })
            .collect(),
    );
    // Restored and connected: the leader learns each member runs (what a rescale or a restart
    // waits for). After a lost report (the session was down) the leader counts the chain as
    // running once its metrics arrive with a heartbeat.
    let restore_ms = u64::try_from(starting.elapsed().as_millis()).unwrap_or(u64::MAX);
    for member in members {
        let _ = environment.reports.try_send(TaskReport::Running {
            task: member.task_ref(),
            restore_ms,
        });
    }
    if restore_ms >= 1_000 {
        tracing::info!(restore_ms, "subtask restored its state and runs");
    }
    let mut logics = logics.into_iter();
    let head_logic = logics
        .next()
        .ok_or_else(|| TaskError::Graph("a task without operators".to_owned()))?;
    let end = match (head_logic, gate) {
        (Logic::Source(source), _) => {
            let Some((head, chained)) = acknowledgers.split_first() else {
                return Err(TaskError::Graph("a source task without its acknowledger".to_owned()));
            };
            let task = SourceTask {
                source: *source,
                pipeline: Pipeline::new(logics.collect()),
                outputs: &mut outputs,
                head,
                chained,
                checkpointing,
                counters: &metrics.counters,
            };
            task.run(control, cancel).await
        }
        (head, Some(gate)) => {
            let mut task = InputTask {
                pipeline: Pipeline::new(std::iter::once(head).chain(logics).collect()),
                aligner: BarrierAligner::new(input_count),
                ended: vec![false; input_count],
                stash: (0..input_count).map(|_| VecDeque::new()).collect(),
                replay: VecDeque::new(),
                watermarks: vec![i64::MIN; input_count],
                forwarded_watermark: i64::MIN,
                aligning_savepoint: None,
                alignment_started: None,
                counters: metrics.counters.clone(),
            };
            task.run(gate, &mut outputs, &acknowledgers, control, cancel).await
        }
        (_, None) => Err(TaskError::Graph(format!(
            "operator {:?} has no input",
            head.operator_id
        ))),
    }?;
    if let TaskEnd::Finished = end {
        // A finished task may still owe the leader an acknowledgement of a checkpoint after its
        // last: writing that state after the job ended would recreate files the job's end deletes.
        for acknowledger in &acknowledgers {
            acknowledger.settle().await?;
        }
    }
    Ok(end)
}

/// Malformed records (not JSON, missing fields, not a number) are skipped, not fatal: one bad
/// line must not put a job into a restart loop. They are counted and logged.
fn count_dropped(dropped: &mut u64) {
    *dropped += 1;
    if *dropped == 1 || *dropped % 10_000 == 0 {
        tracing::warn!(dropped = *dropped, "skipping malformed records");
    }
}

/// Runs a batch through one operator; what it emits goes to `emit`. The operator is matched once
/// per batch, not once per record: the per-record dispatch showed in the word count's profile.
fn apply_all(
    logic: &mut Logic,
    channel: usize,
    records: impl Iterator<Item = Record>,
    emit: &mut impl FnMut(Record),
    dropped: &mut u64,
) -> Result<(), TaskError> {
    match logic {
        Logic::Window(window) => {
            for record in records {
                let before = window.dropped;
                window.on_record(channel, record, emit);
                if window.dropped > before {
                    count_dropped(dropped);
                }
            }
        }
        Logic::Stateless(transform) => {
            for record in records {
                if !transform.apply(record, emit) {
                    count_dropped(dropped);
                }
            }
        }
        Logic::Count(counts) => {
            for record in records {
                counts.apply(record, emit);
            }
        }
        Logic::Aggregate(aggregate) => {
            for record in records {
                if !aggregate.apply(record, emit) {
                    count_dropped(dropped);
                }
            }
        }
        Logic::FileSink(sink) => {
            for record in records {
                sink.write(&record)?;
            }
        }
        Logic::Print(prefix) => {
            for record in records {
                if record.key.is_empty() {
                    println!("{prefix}{}", record.value);
                } else {
                    println!("{prefix}{}\t{}", record.key, record.value);
                }
            }
        }
        Logic::Udf(transform) => transform.apply_all(records, emit)?,
        Logic::KeyedUdf(keyed) => keyed.apply_all(records, &mut |event| emit(record_of(event)))?,
        Logic::Source(_) => {}
    }
    Ok(())
}

/// One operator's state for checkpoint `checkpoint_id`; a sink pre-commits its output and hands
/// back the segment to sync before the acknowledgement.
fn snapshot(
    logic: &mut Logic,
    checkpoint_id: CheckpointId,
    max_parallelism: u32,
) -> Result<(Vec<u8>, Option<SinkSegment>), TaskError> {
    Ok(match logic {
        Logic::Count(counts) => (off_the_workers(|| counts.snapshot(max_parallelism)), None),
        Logic::Aggregate(aggregate) => (off_the_workers(|| aggregate.snapshot(max_parallelism)), None),
        Logic::KeyedUdf(keyed) => (off_the_workers(|| keyed.snapshot(max_parallelism)), None),
        Logic::Window(window) => (off_the_workers(|| window.snapshot(max_parallelism)), None),
        Logic::FileSink(sink) => {
            let pre_committed = sink.pre_commit(checkpoint_id)?;
            (pre_committed.state, Some(pre_committed.segment))
        }
        Logic::Source(_) | Logic::Stateless(_) | Logic::Print(_) | Logic::Udf(_) => (Vec::new(), None),
    })
}
