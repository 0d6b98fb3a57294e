//! Data exchange between subtasks. Every subtask with inputs registers an input gate here, keyed by
//! (job, operator, subtask) and fenced by its epoch; upstream subtasks on this executor hand it
//! batches directly, those on other executors through one gRPC client stream per channel
//! (`ExchangeService.Transfer`). Flow control is credit-based end to end: the gate's queue is
//! bounded, so a slow consumer stops reading its HTTP/2 stream, whose window then stops the sender.

use raftstream_api::ids::{CheckpointId, Epoch, JobId, OperatorId};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use raftstream_proto::v1 as pb;

use super::record::Record;
use raftstream_proto::v1::exchange_service_client::ExchangeServiceClient;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};

/// Batches queued per input gate before senders wait.
pub const GATE_CAPACITY: usize = 32;
/// Frames queued per outgoing remote channel before the sender waits.
const REMOTE_CAPACITY: usize = 16;
/// How long a channel waits for its receiving subtask to start (they are deployed together).
const GATE_WAIT: Duration = Duration::from_secs(30);

/// One subtask of one job, without its epoch.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GateKey {
    pub job_id: JobId,
    pub operator_id: OperatorId,
    pub subtask_index: u32,
}

/// A checkpoint's barrier: which checkpoint, and whether it is a savepoint (whose state every
/// task stores under the savepoint's own prefix, as Flink's barriers carry the checkpoint type).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Barrier {
    pub checkpoint_id: CheckpointId,
    pub savepoint: bool,
}

/// What travels on a channel.
#[derive(Debug)]
pub enum ChannelEvent {
    Batch(Vec<Record>),
    Barrier(Barrier),
    Watermark(i64),
    End,
}

/// An event and the input channel it came on.
#[derive(Debug)]
pub struct InputMessage {
    pub channel: usize,
    pub event: ChannelEvent,
}

struct Gate {
    epoch: Epoch,
    sender: mpsc::Sender<InputMessage>,
    /// Upstream (operator, subtask) -> input channel number.
    channels: HashMap<(OperatorId, u32), usize>,
}

/// Why a channel could not be opened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConnectError {
    #[error("subtask {0:?} has not started here")]
    NotStarted(GateKey),
    #[error("subtask {key:?} runs at epoch {current} here, the sender expected epoch {expected}")]
    EpochMismatch {
        key: GateKey,
        expected: Epoch,
        current: Epoch,
    },
    #[error("subtask {key:?} has no input from {operator_id}[{subtask_index}]")]
    UnknownUpstream {
        key: GateKey,
        operator_id: OperatorId,
        subtask_index: u32,
    },
}

/// The input gates of the subtasks running on this executor.
#[derive(Clone, Default)]
pub struct ExchangeHub(Arc<Mutex<HashMap<GateKey, Gate>>>);

impl ExchangeHub {
    fn lock(&self) -> MutexGuard<'_, HashMap<GateKey, Gate>> {
        self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Registers the input gate of a subtask starting at `epoch`; replaces an older epoch's gate.
    pub fn register(
        &self,
        key: GateKey,
        epoch: Epoch,
        channels: HashMap<(OperatorId, u32), usize>,
    ) -> mpsc::Receiver<InputMessage> {
        let (sender, receiver) = mpsc::channel(GATE_CAPACITY);
        self.lock().insert(
            key,
            Gate {
                epoch,
                sender,
                channels,
            },
        );
        receiver
    }

    /// Removes a subtask's gate, unless a newer epoch replaced it.
    pub fn unregister(&self, key: &GateKey, epoch: Epoch) {
        let mut gates = self.lock();
        if gates.get(key).is_some_and(|gate| gate.epoch == epoch) {
            gates.remove(key);
        }
    }

    /// The sender for channel `(operator_id, subtask_index) -> key` at `epoch`.
    pub fn connect(
        &self,
        key: &GateKey,
        epoch: Epoch,
        operator_id: &str,
        subtask_index: u32,
    ) -> Result<(mpsc::Sender<InputMessage>, usize), ConnectError> {
        let gates = self.lock();
        let gate = gates.get(key).ok_or_else(|| ConnectError::NotStarted(key.clone()))?;
        if gate.epoch != epoch {
            return Err(ConnectError::EpochMismatch {
                key: key.clone(),
                expected: epoch,
                current: gate.epoch,
            });
        }
        let channel = gate
            .channels
            .get(&(operator_id.into(), subtask_index))
            .copied()
            .ok_or_else(|| ConnectError::UnknownUpstream {
                key: key.clone(),
                operator_id: operator_id.into(),
                subtask_index,
            })?;
        Ok((gate.sender.clone(), channel))
    }

    /// Waits (polling) until the gate exists at `epoch`; a newer epoch, or time running out, fails.
    pub async fn connect_waiting(
        &self,
        key: &GateKey,
        epoch: Epoch,
        operator_id: &str,
        subtask_index: u32,
        cancel: &CancellationToken,
    ) -> Result<(mpsc::Sender<InputMessage>, usize), ConnectError> {
        let deadline = Instant::now() + GATE_WAIT;
        loop {
            match self.connect(key, epoch, operator_id, subtask_index) {
                Ok(connected) => return Ok(connected),
                Err(ConnectError::EpochMismatch { current, .. }) if current < epoch && Instant::now() < deadline => {}
                Err(ConnectError::NotStarted(_)) if Instant::now() < deadline => {}
                Err(error) => return Err(error),
            }
            tokio::select! {
                _ = cancel.cancelled() => return Err(ConnectError::NotStarted(key.clone())),
                _ = tokio::time::sleep(Duration::from_millis(5)) => {}
            }
        }
    }
}

/// The `ExchangeService` of an executor: remote channels into its input gates.
#[derive(Clone)]
pub struct ExchangeServiceImpl {
    pub hub: ExchangeHub,
    pub shutdown: CancellationToken,
}

fn event_of(frame: pb::DataFrame) -> Option<ChannelEvent> {
    match frame.body? {
        pb::data_frame::Body::Batch(batch) => Some(ChannelEvent::Batch(
            batch.records.into_iter().map(Record::from).collect(),
        )),
        pb::data_frame::Body::Barrier(barrier) => Some(ChannelEvent::Barrier(Barrier {
            checkpoint_id: CheckpointId(barrier.checkpoint_id),
            savepoint: barrier.savepoint,
        })),
        pb::data_frame::Body::End(_) => Some(ChannelEvent::End),
        pb::data_frame::Body::Watermark(watermark) => Some(ChannelEvent::Watermark(watermark.timestamp_ms)),
        pb::data_frame::Body::Header(_) => None,
    }
}

#[tonic::async_trait]
impl pb::exchange_service_server::ExchangeService for ExchangeServiceImpl {
    async fn transfer(
        &self,
        request: Request<Streaming<pb::DataFrame>>,
    ) -> Result<Response<pb::TransferSummary>, Status> {
        let mut frames = request.into_inner();
        let Some(pb::DataFrame {
            body: Some(pb::data_frame::Body::Header(header)),
        }) = frames.message().await?
        else {
            return Err(Status::invalid_argument(
                "an exchange stream must start with its header",
            ));
        };
        let job_id = JobId::parse(&header.job_id).map_err(|error| Status::invalid_argument(error.to_string()))?;
        let key = GateKey {
            job_id,
            operator_id: header.target_operator_id.clone().into(),
            subtask_index: header.target_subtask_index,
        };
        let (sender, channel) = self
            .hub
            .connect_waiting(
                &key,
                Epoch(header.target_epoch),
                &header.source_operator_id,
                header.source_subtask_index,
                &self.shutdown,
            )
            .await
            .map_err(|error| match error {
                ConnectError::EpochMismatch { .. } => Status::failed_precondition(error.to_string()),
                ConnectError::NotStarted(_) => Status::not_found(error.to_string()),
                ConnectError::UnknownUpstream { .. } => Status::invalid_argument(error.to_string()),
            })?;
        let mut count = 0u64;
        while let Some(frame) = frames.message().await? {
            count += 1;
            let Some(event) = event_of(frame) else {
                return Err(Status::invalid_argument("a second header on one exchange stream"));
            };
            if sender.send(InputMessage { channel, event }).await.is_err() {
                return Err(Status::unavailable(format!("subtask {key:?} stopped")));
            }
        }
        Ok(Response::new(pb::TransferSummary { frames: count }))
    }
}

/// One output channel of a subtask: to a subtask on this executor, or over gRPC to another.
pub enum OutputChannel {
    Local {
        sender: mpsc::Sender<InputMessage>,
        channel: usize,
    },
    Remote {
        frames: mpsc::Sender<pb::DataFrame>,
        /// Holds the stream's outcome: the downstream refused or went away.
        failed: Arc<Mutex<Option<String>>>,
    },
}

/// Why a subtask could not send downstream.
#[derive(Debug, thiserror::Error)]
#[error("channel to {target}: {problem}")]
pub struct SendError {
    pub target: String,
    pub problem: String,
}

impl OutputChannel {
    /// Opens the channel from `source` (at its epoch) to `target` at `target_epoch` on `address`.
    #[allow(clippy::too_many_arguments)]
    pub async fn open(
        hub: &ExchangeHub,
        local_address: &str,
        address: &str,
        target: GateKey,
        target_epoch: Epoch,
        source: (&str, u32, Epoch),
        cancel: &CancellationToken,
    ) -> Result<OutputChannel, SendError> {
        let (source_operator, source_index, source_epoch) = source;
        let describe = || format!("{}[{}]@{address}", target.operator_id, target.subtask_index);
        if address == local_address {
            let (sender, channel) = hub
                .connect_waiting(&target, target_epoch, source_operator, source_index, cancel)
                .await
                .map_err(|error| SendError {
                    target: describe(),
                    problem: error.to_string(),
                })?;
            return Ok(OutputChannel::Local { sender, channel });
        }
        let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{address}"))
            .map_err(|error| SendError {
                target: describe(),
                problem: error.to_string(),
            })?
            .connect_timeout(Duration::from_millis(500))
            .tcp_nodelay(true);
        // The peer may be starting: retry the connection for a while (the leader restarts the job
        // if it is gone for good).
        let deadline = Instant::now() + GATE_WAIT;
        let channel = loop {
            match endpoint.connect().await {
                Ok(channel) => break channel,
                Err(error) if Instant::now() >= deadline => {
                    return Err(SendError {
                        target: describe(),
                        problem: error.to_string(),
                    })
                }
                Err(_) => {}
            }
            tokio::select! {
                _ = cancel.cancelled() => return Err(SendError { target: describe(), problem: "cancelled".to_owned() }),
                _ = tokio::time::sleep(Duration::from_millis(50)) => {}
            }
        };
        let (frames, receiver) = mpsc::channel(REMOTE_CAPACITY);
        let header = pb::ChannelHeader {
            job_id: target.job_id.to_string(),
            target_operator_id: target.operator_id.to_string(),
            target_subtask_index: target.subtask_index,
            target_epoch: target_epoch.0,
            source_operator_id: source_operator.to_owned(),
            source_subtask_index: source_index,
            source_epoch: source_epoch.0,
        };
        let _ = frames
            .send(pb::DataFrame {
                body: Some(pb::data_frame::Body::Header(header)),
            })
            .await;
        let failed = Arc::new(Mutex::new(None));
        let outcome = failed.clone();
        let target_name = describe();
        tokio::spawn(async move {
            let mut client = ExchangeServiceClient::new(channel);
            let result = client
                .transfer(tokio_stream::wrappers::ReceiverStream::new(receiver))
                .await;
            if let Err(status) = result {
                tracing::debug!(target = %target_name, error = %status.message(), "exchange stream ended with an error");
                if let Ok(mut slot) = outcome.lock() {
                    *slot = Some(status.message().to_owned());
                }
            }
        });
        Ok(OutputChannel::Remote { frames, failed })
    }

    /// Sends one event, waiting while the receiver is behind (backpressure); how long it waited
    /// for room (zero when the channel had some).
    pub async fn send(&self, event: ChannelEvent) -> Result<Duration, SendError> {
        match self {
            OutputChannel::Local { sender, channel } => {
                let message = InputMessage {
                    channel: *channel,
                    event,
                };
                let stopped = || SendError {
                    target: "a local subtask".to_owned(),
                    problem: "it stopped".to_owned(),
                };
                send_timing_backpressure(sender, message, stopped).await
            }
            OutputChannel::Remote { frames, failed } => {
                let body = match event {
                    ChannelEvent::Batch(records) => pb::data_frame::Body::Batch(pb::RecordBatch {
                        records: records.into_iter().map(pb::Record::from).collect(),
                    }),
                    ChannelEvent::Barrier(Barrier {
                        checkpoint_id,
                        savepoint,
                    }) => pb::data_frame::Body::Barrier(pb::Barrier {
                        checkpoint_id: checkpoint_id.0,
                        savepoint,
                    }),
                    ChannelEvent::End => pb::data_frame::Body::End(pb::EndOfStream {}),
                    ChannelEvent::Watermark(timestamp_ms) => {
                        pb::data_frame::Body::Watermark(pb::Watermark { timestamp_ms })
                    }
                };
                let closed = || SendError {
                    target: "a remote subtask".to_owned(),
                    problem: failed
                        .lock()
                        .ok()
                        .and_then(|slot| slot.clone())
                        .unwrap_or_else(|| "the stream closed".to_owned()),
                };
                send_timing_backpressure(frames, pb::DataFrame { body: Some(body) }, closed).await
            }
        }
    }
}

/// Sends `message`, timing only a wait for room: the clock is read only when the channel is full.
async fn send_timing_backpressure<T>(
    sender: &mpsc::Sender<T>,
    message: T,
    closed: impl FnOnce() -> SendError,
) -> Result<Duration, SendError> {
    match sender.try_send(message) {
        Ok(()) => Ok(Duration::ZERO),
        Err(mpsc::error::TrySendError::Closed(_)) => Err(closed()),
        Err(mpsc::error::TrySendError::Full(message)) => {
            let waiting_since = Instant::now();
            sender.send(message).await.map_err(|_| closed())?;
            Ok(waiting_since.elapsed())
        }
    }
}
#[cfg(test)]
mod tests {
    use super::*;

    fn stopped() -> SendError {
        SendError {
            target: "test".to_owned(),
            problem: "closed".to_owned(),
        }
    }

    #[tokio::test]
    async fn a_send_counts_only_the_time_it_waited_for_room() {
        let (sender, mut receiver) = mpsc::channel::<u32>(1);
        let waited = send_timing_backpressure(&sender, 1, stopped).await.expect("room");
        assert_eq!(waited, Duration::ZERO, "a channel with room costs no wait");
        // Full now: the next send waits until the receiver takes the first message.
        let blocked = send_timing_backpressure(&sender, 2, stopped);
        tokio::pin!(blocked);
        assert!(
            futures::poll!(&mut blocked).is_pending(),
            "a full channel makes it wait"
        );
        assert_eq!(receiver.recv().await, Some(1));
        let waited = blocked.await.expect("room after the receive");
        assert!(waited > Duration::ZERO);
        assert_eq!(receiver.recv().await, Some(2));
        drop(receiver);
        assert!(send_timing_backpressure(&sender, 3, stopped).await.is_err());
    }
}
