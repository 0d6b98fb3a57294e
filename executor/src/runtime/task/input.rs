//! Subtasks with inputs: the gate's channels read, barriers aligned, records processed, state
//! snapshotted and acknowledged, and the sink committed when checkpoints complete.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::acknowledger::Acknowledger;
use super::outputs::{sleep_until_if, Outputs};
use super::pipeline::Pipeline;
use super::{Logic, TaskControl, TaskEnd, TaskError};
use crate::runtime::barriers::{Alignment, BarrierAligner};
use crate::runtime::exchange::{Barrier, ChannelEvent, InputMessage};
use crate::runtime::metrics::TaskCounters;
use raftstream_api::ids::CheckpointId;

pub(super) struct InputTask {
    /// The task's operators, its head (the one reading the gate) first.
    pub(super) pipeline: Pipeline,
    pub(super) aligner: BarrierAligner,
    pub(super) ended: Vec<bool>,
    /// Per channel: what arrived after its barrier while the task waits for the others.
    pub(super) stash: Vec<VecDeque<InputMessage>>,
    /// Stashed messages released by a finished alignment, processed before new input.
    pub(super) replay: VecDeque<InputMessage>,
    /// Per input channel, the last watermark it announced.
    pub(super) watermarks: Vec<i64>,
    pub(super) forwarded_watermark: i64,
    /// The savepoint whose barriers this task is aligning, if it is one: its snapshot is
    /// stored as the savepoint's, and the barrier it forwards says so.
    pub(super) aligning_savepoint: Option<CheckpointId>,
    /// When the first barrier of the alignment under way arrived.
    pub(super) alignment_started: Option<Instant>,
    pub(super) counters: Arc<TaskCounters>,
}

impl InputTask {
    pub(super) fn release_stash(&mut self) {
        for channel in &mut self.stash {
            self.replay.extend(channel.drain(..));
        }
    }

    pub(super) async fn run(
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
                if self.pipeline.sink().is_none() {
                    outputs.end().await?;
                    return Ok(TaskEnd::Finished);
                }
                if !checkpointing {
                    self.pipeline.commit_at_end_without_checkpoints()?;
                }
            }
            if input_done {
                if let Some(sink) = self.pipeline.sink() {
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
            let partials_deadline = outputs.partials_deadline();
            let message = match self.replay.pop_front() {
                Some(message) => message,
                None => tokio::select! {
                    biased;
                    _ = cancel.cancelled() => return Ok(TaskEnd::Cancelled),
                    // A two-phase aggregate's partials wait at most its flush_ms, input or not.
                    _ = sleep_until_if(partials_deadline), if partials_deadline.is_some() => {
                        outputs.flush(false).await?;
                        continue;
                    }
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
                ChannelEvent::Batch(mut records) => {
                    let started = Instant::now();
                    self.counters.received(&records);
                    self.pipeline
                        .process(0, channel, &mut records, &mut |record| outputs.push(record))?;
                    outputs.flush(false).await?;
                    self.counters.sent_totals(&outputs.totals);
                    if let Some(sink) = self.pipeline.sink() {
                        self.counters.sink_totals(sink.totals());
                    }
                    if let Some(Logic::Window(window)) = self.pipeline.logics.first() {
                        self.counters.watermark(window.watermark());
                    }
                    self.counters.worked(started.elapsed());
                }
                ChannelEvent::Barrier(barrier) => {
                    if barrier.savepoint {
                        self.aligning_savepoint = Some(barrier.checkpoint_id);
                    }
                    self.alignment_started.get_or_insert_with(Instant::now);
                    let outcome = self.barrier_arrived(channel, barrier.checkpoint_id);
                    self.after_alignment(outcome, outputs, acknowledgers).await?;
                }
                ChannelEvent::Watermark(watermark) => {
                    let mut emitted = Vec::new();
                    if let Some(slot) = self.watermarks.get_mut(channel) {
                        *slot = (*slot).max(watermark);
                    }
                    if let Some(Logic::Window(window)) = self.pipeline.logics.first_mut() {
                        window.on_watermark(channel, watermark, &mut |out| emitted.push(out));
                    }
                    // What the head's window fired goes through the operators after it.
                    self.pipeline
                        .process(1, 0, &mut emitted, &mut |record| outputs.push(record))?;
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

    pub(super) fn barrier_arrived(&mut self, channel: usize, checkpoint_id: CheckpointId) -> Alignment {
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

    pub(super) async fn after_alignment(
        &mut self,
        outcome: Alignment,
        outputs: &mut Outputs,
        acknowledgers: &[Acknowledger<'_>],
    ) -> Result<(), TaskError> {
        match outcome {
            Alignment::Snapshot(checkpoint_id) => {
                if let Some(started) = self.alignment_started.take() {
                    self.counters.aligned(started.elapsed());
                }
                let barrier = Barrier {
                    checkpoint_id,
                    savepoint: self.aligning_savepoint.take() == Some(checkpoint_id),
                };
                let state_bytes = self.pipeline.acknowledge_checkpoint(barrier, acknowledgers)?;
                self.counters.snapshotted(state_bytes);
                outputs.broadcast_barrier(barrier).await?;
                self.release_stash();
            }
            Alignment::Superseded { .. } => {
                // The alignment of the newer checkpoint starts with the barrier that overtook.
                self.alignment_started = Some(Instant::now());
                self.release_stash()
            }
            Alignment::Waiting | Alignment::Stale => {}
        }
        Ok(())
    }

    /// Passes this task's watermark downstream when it advanced: a window's own, otherwise the
    /// minimum of what its input channels announced.
    pub(super) async fn forward_watermark(&mut self, outputs: &mut Outputs) -> Result<(), TaskError> {
        let watermark = match self.pipeline.logics.first() {
            Some(Logic::Window(window)) => window.watermark(),
            _ => self.watermarks.iter().copied().min().unwrap_or(i64::MIN),
        };
        if watermark > self.forwarded_watermark {
            self.forwarded_watermark = watermark;
            self.counters.watermark(watermark);
            outputs.flush(false).await?;
            outputs.broadcast(|| ChannelEvent::Watermark(watermark)).await?;
        }
        Ok(())
    }

    pub(super) fn on_control(&mut self, message: TaskControl) -> Result<(), TaskError> {
        match message {
            TaskControl::Complete {
                checkpoint_id,
                acknowledged,
                ..
            } => self.pipeline.checkpoint_completed(checkpoint_id, acknowledged)?,
            TaskControl::Aborted(checkpoint_id) => {
                if self
                    .aligner
                    .aligning()
                    .is_some_and(|aligning| aligning <= checkpoint_id)
                {
                    self.aligner.on_abort(checkpoint_id);
                    self.alignment_started = None;
                    self.release_stash();
                }
            }
            TaskControl::Trigger { .. } => {}
        }
        Ok(())
    }
}
