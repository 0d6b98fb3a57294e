//! The output side of a subtask: an edge per consuming operator, records partitioned forward,
//! by key group or round robin into per-channel batches.

use raftstream_api::spec::{OperatorKind, OperatorSpec};
use tokio_util::sync::CancellationToken;

use super::{TaskEnvironment, TaskError, BATCH_RECORDS};
use crate::runtime::deployment::SubtaskDeployment;
use crate::runtime::exchange::{Barrier, ChannelEvent, GateKey, OutputChannel};
use crate::runtime::key_groups::{key_group, subtask_for_key_group};
use crate::runtime::record::Record;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Partition {
    Forward,
    Hash,
    RoundRobin,
}

pub(super) fn partition(from: &OperatorSpec, to: &OperatorSpec) -> Partition {
    if from.kind == OperatorKind::KeyBy {
        Partition::Hash
    } else if from.parallelism == to.parallelism {
        Partition::Forward
    } else {
        Partition::RoundRobin
    }
}

pub(super) struct Edge {
    pub(super) partition: Partition,
    pub(super) channels: Vec<OutputChannel>,
    pub(super) buffers: Vec<Vec<Record>>,
    pub(super) next: usize,
    /// Hash partition over several channels: the channel of each key group, worked out once
    /// instead of with a division per record.
    pub(super) channel_of_key_group: Vec<usize>,
}

impl Edge {
    fn new(partition: Partition, channels: Vec<OutputChannel>, max_parallelism: u32) -> Edge {
        let channel_of_key_group = if partition == Partition::Hash && channels.len() > 1 {
            (0..max_parallelism.max(1))
                .map(|group| subtask_for_key_group(group, max_parallelism, channels.len() as u32) as usize)
                .collect()
        } else {
            Vec::new()
        };
        Edge {
            partition,
            buffers: (0..channels.len()).map(|_| Vec::with_capacity(BATCH_RECORDS)).collect(),
            channels,
            next: 0,
            channel_of_key_group,
        }
    }

    /// Buffers `record` for the channel it goes to.
    fn push(&mut self, record: Record, max_parallelism: u32) {
        let target = match self.partition {
            // One consumer owns every key group: nothing to hash.
            _ if self.buffers.len() == 1 => 0,
            Partition::Forward => 0,
            Partition::Hash => self
                .channel_of_key_group
                .get(key_group(&record.key, max_parallelism) as usize)
                .copied()
                .unwrap_or(0),
            Partition::RoundRobin => {
                self.next = (self.next + 1) % self.buffers.len().max(1);
                self.next
            }
        };
        if let Some(buffer) = self.buffers.get_mut(target) {
            buffer.push(record);
        }
    }
}

/// The output side of a subtask: one edge per consuming operator.
pub(super) struct Outputs {
    pub(super) edges: Vec<Edge>,
    pub(super) max_parallelism: u32,
}

impl Outputs {
    pub(super) fn push(&mut self, record: Record) {
        // Every consumer but the last gets a copy; the last takes the record itself.
        let Some((last, others)) = self.edges.split_last_mut() else {
            return;
        };
        for edge in others {
            edge.push(record.clone(), self.max_parallelism);
        }
        last.push(record, self.max_parallelism);
    }

    pub(super) async fn flush(&mut self, only_full: bool) -> Result<(), TaskError> {
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

    pub(super) async fn broadcast(&mut self, event: impl Fn() -> ChannelEvent) -> Result<(), TaskError> {
        for channel in self.edges.iter().flat_map(|edge| &edge.channels) {
            channel.send(event()).await?;
        }
        Ok(())
    }

    pub(super) async fn broadcast_barrier(&mut self, barrier: Barrier) -> Result<(), TaskError> {
        self.flush(false).await?;
        for channel in self.edges.iter().flat_map(|edge| &edge.channels) {
            channel.send(ChannelEvent::Barrier(barrier)).await?;
        }
        Ok(())
    }

    pub(super) async fn end(&mut self) -> Result<(), TaskError> {
        self.flush(false).await?;
        for channel in self.edges.iter().flat_map(|edge| &edge.channels) {
            channel.send(ChannelEvent::End).await?;
        }
        Ok(())
    }
}

pub(super) async fn open_outputs(
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
                .find(|placed| placed.subtask.operator_id == consumer.id && placed.subtask.subtask_index == index)
                .ok_or_else(|| TaskError::Graph(format!("{}[{index}] is not placed", consumer.id)))?;
            let target = GateKey {
                job_id: deployment.job_id.to_string(),
                operator_id: consumer.id.clone(),
                subtask_index: index,
            };
            let channel = OutputChannel::open(
                &environment.hub,
                &environment.local_address,
                environment.dial.resolve(&placed.executor_address),
                target,
                placed.epoch.0,
                (&operator.id, deployment.subtask_index, deployment.epoch.0),
                cancel,
            )
            .await?;
            channels.push(channel);
        }
        edges.push(Edge::new(partition, channels, graph.max_parallelism));
    }
    Ok(Outputs {
        edges,
        max_parallelism: graph.max_parallelism,
    })
}
