//! Source subtasks: the generator and file readers, and the loop that reads them, rate-limits,
//! and injects barriers when the leader triggers a checkpoint, snapshotting the operators chained
//! behind the source (keyed state at parallelism 1) and committing a sink at the chain's end.

use std::time::{Duration, Instant};

use raftstream_api::checkpoint::SourcesAfterBarrier;
use raftstream_api::ids::CheckpointId;
use raftstream_api::spec::GeneratorConfig;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::acknowledger::Acknowledger;
use super::outputs::{sleep_until_if, Outputs};
use super::pipeline::Pipeline;
use super::replay_budget::ReplayBudget;
use super::{TaskControl, TaskEnd, TaskError, SOURCE_BATCH_LINES};
use crate::runtime::exchange::{Barrier, ChannelEvent};
use crate::runtime::file_source::{FileProgress, FileReader};
use crate::runtime::generator::{GeneratedRecords, GeneratorPosition};
use crate::runtime::metrics::TaskCounters;
use crate::runtime::record::{Record, Text};

pub(super) struct GeneratorState {
    pub(super) settings: GeneratorConfig,
    /// Which offsets this subtask emits next (its lane, index + k * parallelism, without those
    /// an earlier placement emitted).
    pub(super) position: GeneratorPosition,
    /// The offset of the record last emitted.
    pub(super) last_offset: u64,
    pub(super) rate_per_subtask: Option<f64>,
    /// Event time advances by this per offset: 1 ms, or the configured rate's pace, so event
    /// times of a rate-limited generator track the wall clock, and a replay repeats them.
    pub(super) ms_per_offset: f64,
}

/// Where a source's records come from; its position is the offset checkpoints record.
pub(super) enum SourceReader {
    Generator(GeneratorState),
    Files {
        reader: FileReader,
        rate_per_subtask: Option<f64>,
    },
}

impl SourceReader {
    pub(super) fn is_exhausted(&self) -> bool {
        match self {
            SourceReader::Generator(generator) => generator.settings.is_exhausted(generator.position.next),
            SourceReader::Files { reader, .. } => reader.is_exhausted(),
        }
    }

    pub(super) fn position(&self) -> u64 {
        match self {
            SourceReader::Generator(generator) => generator.position.next,
            SourceReader::Files { reader, .. } => reader.position(),
        }
    }

    /// The event time of the record last returned by [`SourceReader::next`].
    pub(super) fn last_timestamp_ms(&self) -> i64 {
        match self {
            SourceReader::Generator(generator) => (generator.last_offset as f64 * generator.ms_per_offset) as i64,
            SourceReader::Files { .. } => 0,
        }
    }

    pub(super) fn rate_per_subtask(&self) -> Option<f64> {
        match self {
            SourceReader::Generator(generator) => generator.rate_per_subtask,
            SourceReader::Files { rate_per_subtask, .. } => *rate_per_subtask,
        }
    }

    /// The next record into `line`; false at the end of the input.
    pub(super) fn next(&mut self, line: &mut String) -> Result<bool, TaskError> {
        match self {
            SourceReader::Generator(generator) => {
                if generator.settings.is_exhausted(generator.position.next) {
                    return Ok(false);
                }
                let offset = generator.position.advance();
                generator.settings.write_record(offset, line);
                generator.last_offset = offset;
                Ok(true)
            }
            SourceReader::Files { reader, .. } => reader
                .next_line(line)
                .map_err(|error| TaskError::Source(error.to_string())),
        }
    }
}

#[derive(Serialize, Deserialize)]
pub(super) struct SourceSnapshot {
    pub(super) position: u64,
    /// A generator's whole position, so that a placement at another parallelism can resume it
    /// (absent in checkpoints written before generators could be rescaled).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) generator: Option<GeneratorPosition>,
    /// A file source's bytes consumed of each file, so that a placement at another parallelism
    /// can resume it (absent in checkpoints written before file sources could be rescaled).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) files: Option<FileProgress>,
}

impl SourceReader {
    /// What a checkpoint records of this source.
    pub(super) fn snapshot(&self) -> SourceSnapshot {
        SourceSnapshot {
            position: self.position(),
            generator: match self {
                SourceReader::Generator(generator) => Some(generator.position.clone()),
                SourceReader::Files { .. } => None,
            },
            files: match self {
                SourceReader::Generator(_) => None,
                SourceReader::Files { reader, .. } => Some(reader.progress()),
            },
        }
    }
}

/// What a source's barriers asked of it, and what a restart from its last barrier replays.
#[derive(Debug, Default)]
struct SourceCheckpoints {
    /// The checkpoint whose barrier followed the last record: once it completes, everything this
    /// source produced is committed and end-of-stream may go out.
    final_barrier: Option<CheckpointId>,
    /// The checkpoint after whose barrier this source reads nothing more (the job is about to
    /// restart from it, e.g. to rescale); an abort of that checkpoint resumes reading.
    paused_at: Option<CheckpointId>,
    /// The savepoint the job stops with: once it completed (and every sink publishes it), this
    /// source ends its stream, so every task of the job finishes.
    stopping_at: Option<CheckpointId>,
    /// The last barrier this source sent.
    last_barrier: Option<CheckpointId>,
    /// Records produced after `last_barrier`: what a restart from that checkpoint replays
    /// (logged when the source is cancelled).
    records_after_barrier: u64,
    /// Whether the leader was told that the input ended.
    reported_end: bool,
}

impl SourceCheckpoints {
    /// A barrier went out after everything produced so far.
    fn barrier_sent(&mut self, checkpoint_id: CheckpointId, input_exhausted: bool, then: SourcesAfterBarrier) {
        self.last_barrier = Some(checkpoint_id);
        self.records_after_barrier = 0;
        if input_exhausted && self.final_barrier.is_none() {
            self.final_barrier = Some(checkpoint_id);
        }
        match then {
            SourcesAfterBarrier::Continue => {}
            SourcesAfterBarrier::Pause => {
                tracing::info!(
                    checkpoint_id = checkpoint_id.0,
                    "source paused after the barrier: the job restarts from this checkpoint"
                );
                self.paused_at = Some(checkpoint_id);
            }
            SourcesAfterBarrier::Stop => {
                tracing::info!(
                    checkpoint_id = checkpoint_id.0,
                    "source stopped after the savepoint's barrier: its stream ends once the savepoint completed"
                );
                self.paused_at = Some(checkpoint_id);
                self.stopping_at = Some(checkpoint_id);
            }
        }
    }

    /// Whether the completion of `checkpoint_id` ends this source's stream: it committed the
    /// last record, or the savepoint the job stops with.
    fn ends_stream(&self, checkpoint_id: CheckpointId) -> bool {
        let stopped = self.stopping_at.is_some_and(|savepoint| checkpoint_id >= savepoint);
        stopped || self.final_barrier.is_some_and(|last| checkpoint_id >= last)
    }

    /// The next checkpoint carries the data on; an aborted final one is replaced.
    fn aborted(&mut self, checkpoint_id: CheckpointId) {
        if self.final_barrier == Some(checkpoint_id) {
            self.final_barrier = None;
        }
        if self.stopping_at == Some(checkpoint_id) {
            self.stopping_at = None;
        }
        if self.paused_at == Some(checkpoint_id) {
            tracing::info!(
                checkpoint_id = checkpoint_id.0,
                "source resumed: the checkpoint it paused for was aborted"
            );
            self.paused_at = None;
        }
    }

    fn cancelled(&self) -> Result<TaskEnd, TaskError> {
        tracing::info!(
            last_barrier = self.last_barrier.map(|id| id.0),
            records_after_barrier = self.records_after_barrier,
            "source cancelled; a restart from its last barrier's checkpoint replays records_after_barrier records"
        );
        Ok(TaskEnd::Cancelled)
    }
}

/// A source subtask with the operators chained behind it: reads, rate-limits, and answers the
/// leader's checkpoint messages.
pub(super) struct SourceTask<'a, 'b> {
    pub(super) source: SourceReader,
    pub(super) pipeline: Pipeline,
    pub(super) outputs: &'a mut Outputs,
    /// The source's own acknowledger: it reports input ended and checkpoints wanted.
    pub(super) head: &'a Acknowledger<'b>,
    /// One per operator chained behind the source, in chain order.
    pub(super) chained: &'a [Acknowledger<'b>],
    pub(super) checkpointing: bool,
    pub(super) counters: &'a TaskCounters,
}

impl SourceTask<'_, '_> {
    pub(super) async fn run(
        mut self,
        control: &mut mpsc::Receiver<TaskControl>,
        cancel: &CancellationToken,
    ) -> Result<TaskEnd, TaskError> {
        let started = Instant::now();
        let mut produced = 0u64;
        let mut line = String::new();
        let mut checkpoints = SourceCheckpoints::default();
        let rate = self.source.rate_per_subtask();
        let batch = rate.map_or(SOURCE_BATCH_LINES, |rate| {
            ((rate / 50.0) as usize).clamp(1, SOURCE_BATCH_LINES)
        });
        let acknowledger = self.head;
        let mut records = Vec::with_capacity(batch);
        // The job's bound on what a failure replays, this subtask's share of it.
        let mut budget = {
            let (config, parallelism) = acknowledger.checkpoint_config();
            ReplayBudget::of(config, parallelism).filter(|_| self.checkpointing)
        };
        let mut waiting_for_budget = false;
        loop {
            let over_budget = budget.as_ref().is_some_and(ReplayBudget::exhausted);
            if over_budget != waiting_for_budget {
                waiting_for_budget = over_budget;
                if over_budget {
                    tracing::debug!("source waits: it emitted its share of checkpoint.max_records or max_bytes since the last completed checkpoint");
                }
            }
            let exhausted = self.source.is_exhausted();
            if exhausted && !self.checkpointing {
                self.pipeline.commit_at_end_without_checkpoints()?;
                self.outputs.flush(false).await?;
                self.outputs.broadcast(|| ChannelEvent::Watermark(i64::MAX)).await?;
                self.outputs.end().await?;
                return Ok(TaskEnd::Finished);
            }
            if exhausted && !checkpoints.reported_end {
                // Event time is over for this input: windows downstream may fire everything
                // before the final checkpoint's barrier. Then ask the leader for that checkpoint
                // now rather than at the next interval.
                self.outputs.flush(false).await?;
                self.outputs.broadcast(|| ChannelEvent::Watermark(i64::MAX)).await?;
                acknowledger.report_input_ended();
                checkpoints.reported_end = true;
            }
            let wait_until = rate.map(|rate| started + Duration::from_secs_f64(produced as f64 / rate));
            let partials_deadline = self.outputs.partials_deadline();
            let reading = !exhausted && checkpoints.paused_at.is_none() && !over_budget;
            tokio::select! {
                biased;
                _ = cancel.cancelled() => return checkpoints.cancelled(),
                // A two-phase aggregate's partials wait at most its flush_ms, paused source or not.
                _ = sleep_until_if(partials_deadline), if partials_deadline.is_some() => {
                    self.outputs.flush(false).await?;
                }
                message = control.recv() => match message {
                    Some(TaskControl::Trigger { checkpoint_id, options }) => {
                        self.barrier(checkpoint_id, options.savepoint).await?;
                        checkpoints.barrier_sent(checkpoint_id, exhausted, options.sources);
                        if let Some(budget) = budget.as_mut() {
                            budget.barrier(checkpoint_id);
                        }
                    }
                    Some(TaskControl::Complete { checkpoint_id, acknowledged, oldest_retained }) => {
                        for member in std::iter::once(self.head).chain(self.chained) {
                            member.checkpoint_completed(checkpoint_id, oldest_retained);
                        }
                        if let Some(budget) = budget.as_mut() {
                            budget.completed(checkpoint_id);
                        }
                        self.pipeline.checkpoint_completed(checkpoint_id, acknowledged)?;
                        if checkpoints.ends_stream(checkpoint_id) {
                            // Stopped: no end-of-event-time watermark, so windows keep their
                            // contents in the savepoint rather than firing them now.
                            self.outputs.end().await?;
                            return Ok(TaskEnd::Finished);
                        }
                    }
                    Some(TaskControl::Aborted(checkpoint_id)) => {
                        if let Some(budget) = budget.as_mut() {
                            budget.aborted(checkpoint_id);
                            if let Some(trigger) = budget.wanted() {
                                acknowledger.report_checkpoint_wanted(trigger);
                            }
                        }
                        checkpoints.aborted(checkpoint_id);
                    }
                    None => return checkpoints.cancelled(),
                },
                _ = async {
                    if let Some(at) = wait_until {
                        tokio::time::sleep_until(at.into()).await;
                    }
                }, if reading => {
                    let allowed = budget.as_ref().map_or(batch, |budget| {
                        usize::try_from(budget.records_left()).unwrap_or(usize::MAX).min(batch)
                    });
                    let (count, bytes) = self.read_batch(allowed, &mut line, &mut records, rate.is_some()).await?;
                    produced += count;
                    checkpoints.records_after_barrier += count;
                    if let Some(budget) = budget.as_mut() {
                        budget.emitted(count, bytes);
                        if let Some(trigger) = budget.wanted() {
                            acknowledger.report_checkpoint_wanted(trigger);
                        }
                    }
                    // While input lasts, nothing above waits when a chain ends in a sink (no
                    // channel to fill) and the source has no rate: without a yield point the
                    // task would hold its worker thread until the input ended. What it spawned
                    // meanwhile would wait with it, because tokio runs a task spawned from a
                    // worker in that worker's LIFO slot, which other workers cannot steal: the
                    // checkpoint's background acknowledgement (state store, sink sync, the ack
                    // itself) then ran only after the last record, so a fully chained job
                    // completed no checkpoint while its input flowed. One unit of tokio's
                    // cooperative budget per batch yields every 128 batches (about 16,000
                    // lines), which costs nothing measurable.
                    tokio::task::coop::consume_budget().await;
                }
            }
        }
    }

    /// Snapshots the source and its chain at a checkpoint's barrier and sends the barrier on.
    async fn barrier(&mut self, checkpoint_id: CheckpointId, savepoint: bool) -> Result<(), TaskError> {
        self.outputs.flush(false).await?;
        let position = self.source.position();
        let state = serde_json::to_vec(&self.source.snapshot()).map_err(|error| TaskError::Snapshot {
            checkpoint_id,
            problem: format!("encoding the source's position: {error}"),
        })?;
        let barrier = Barrier {
            checkpoint_id,
            savepoint,
        };
        let source_state_bytes = state.len() as u64;
        self.head.acknowledge(barrier, state, Some(position), None)?;
        let chained_state_bytes = self.pipeline.acknowledge_checkpoint(barrier, self.chained)?;
        self.counters.snapshotted(source_state_bytes + chained_state_bytes);
        self.outputs.broadcast_barrier(barrier).await?;
        Ok(())
    }

    /// Reads up to `allowed` records, pushes them through the chain and sends what it produced
    /// on (`paced`: a rate-limited source sends every batch at once rather than when buffers
    /// fill); returns how many records and bytes were read.
    async fn read_batch(
        &mut self,
        allowed: usize,
        line: &mut String,
        records: &mut Vec<Record>,
        paced: bool,
    ) -> Result<(u64, u64), TaskError> {
        let working_since = Instant::now();
        let mut bytes = 0u64;
        for _ in 0..allowed {
            if !self.source.next(line)? {
                break;
            }
            bytes += line.len() as u64 + 1;
            records.push(Record {
                key: Text::default(),
                value: Text::from(line.as_str()),
                timestamp_ms: self.source.last_timestamp_ms(),
            });
        }
        let count = records.len() as u64;
        self.counters.read(count, bytes);
        let outputs = &mut *self.outputs;
        self.pipeline
            .process(0, 0, records, &mut |record| outputs.push(record))?;
        self.outputs.flush(true).await?;
        if paced {
            self.outputs.flush(false).await?;
        }
        self.counters.sent_totals(&self.outputs.totals);
        if let Some(sink) = self.pipeline.sink() {
            self.counters.sink_totals(sink.totals());
        }
        self.counters.worked(working_since.elapsed());
        Ok((count, bytes))
    }
}
