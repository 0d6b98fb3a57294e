//! The output side of a subtask: an edge per consuming operator, records partitioned by the
//! edge's [`Exchange`] (forward, by key group, round robin over all or a local subset of the
//! consumer's subtasks, or to all of them) into per-channel batches.

use std::time::Instant;

use raftstream_api::spec::{Exchange, OperatorSpec};
use tokio_util::sync::CancellationToken;

use super::{TaskEnvironment, TaskError, BATCH_RECORDS};
use crate::runtime::deployment::SubtaskDeployment;
use crate::runtime::exchange::{Barrier, ChannelEvent, GateKey, OutputChannel};
use crate::runtime::key_groups::{key_group, subtask_for_key_group};
use crate::runtime::metrics::{payload_bytes, OutputTotals};
use crate::runtime::operators::PreAggregate;
use crate::runtime::record::Record;

/// Where each record of an edge goes, by the edge's exchange.
#[derive(Debug)]
struct Router {
    exchange: Exchange,
    channels: usize,
    max_parallelism: u32,
    /// Round robin: the channel the last record went to; salted hash: the salt it took.
    next: usize,
    /// Hash exchange over several channels: the channel of each key group, worked out once
    /// instead of with a division per record.
    channel_of_key_group: Vec<usize>,
}

/// The channel(s) a record goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Route {
    One(usize),
    All,
}

impl Router {
    fn new(exchange: Exchange, channels: usize, max_parallelism: u32) -> Router {
        let channel_of_key_group = if matches!(exchange, Exchange::Hash { .. }) && channels > 1 {
            (0..max_parallelism.max(1))
                .map(|group| subtask_for_key_group(group, max_parallelism, channels as u32) as usize)
                .collect()
        } else {
            Vec::new()
        };
        Router {
            exchange,
            channels,
            max_parallelism: max_parallelism.max(1),
            next: 0,
            channel_of_key_group,
        }
    }

    fn route(&mut self, key: &str) -> Route {
        match self.exchange {
            // One consumer: nothing to choose.
            _ if self.channels <= 1 => Route::One(0),
            Exchange::Forward => Route::One(0),
            Exchange::Hash { salts } => {
                let mut group = key_group(key, self.max_parallelism);
                if salts > 1 {
                    // The key's records take `salts` key groups in turn, spaced so that each
                    // lands in another subtask's range.
                    self.next = (self.next + 1) % salts as usize;
                    let stride = (self.max_parallelism / salts).max(1);
                    group = (group + self.next as u32 * stride) % self.max_parallelism;
                }
                Route::One(self.channel_of_key_group.get(group as usize).copied().unwrap_or(0))
            }
            Exchange::RoundRobin | Exchange::Rescale => {
                self.next = (self.next + 1) % self.channels;
                Route::One(self.next)
            }
            Exchange::Broadcast => Route::All,
        }
    }
}

/// Sleeps until `deadline`; never returns without one.
pub(super) async fn sleep_until_if(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline.into()).await,
        None => std::future::pending().await,
    }
}

/// Buffers `record` for the channel(s) `router` picks.
fn route_into(router: &mut Router, buffers: &mut [Vec<Record>], record: Record) {
    match router.route(&record.key) {
        Route::One(target) => {
            if let Some(buffer) = buffers.get_mut(target) {
                buffer.push(record);
            }
        }
        Route::All => {
            if let Some((last, others)) = buffers.split_last_mut() {
                for buffer in others {
                    buffer.push(record.clone());
                }
                last.push(record);
            }
        }
    }
}

pub(super) struct Edge {
    router: Router,
    /// Into a two-phase aggregate: the first phase, folding records into partials.
    pre_aggregate: Option<PreAggregate>,
    pub(super) channels: Vec<OutputChannel>,
    pub(super) buffers: Vec<Vec<Record>>,
}

impl Edge {
    fn new(
        exchange: Exchange,
        pre_aggregate: Option<PreAggregate>,
        channels: Vec<OutputChannel>,
        max_parallelism: u32,
    ) -> Edge {
        Edge {
            router: Router::new(exchange, channels.len(), max_parallelism),
            pre_aggregate,
            buffers: (0..channels.len()).map(|_| Vec::with_capacity(BATCH_RECORDS)).collect(),
            channels,
        }
    }

    /// Buffers `record` for the channel(s) it goes to, or folds it into its partial.
    fn push(&mut self, record: Record) {
        match self.pre_aggregate.as_mut() {
            Some(pre_aggregate) => pre_aggregate.add(&record),
            None => route_into(&mut self.router, &mut self.buffers, record),
        }
    }

    /// Moves the partials into the channel buffers: always when `now` is `None`, otherwise when
    /// a flush bound is reached.
    fn release_partials(&mut self, now: Option<Instant>) {
        let Edge {
            router,
            pre_aggregate: Some(pre_aggregate),
            buffers,
            ..
        } = self
        else {
            return;
        };
        if pre_aggregate.is_empty() || now.is_some_and(|now| !pre_aggregate.is_due(now)) {
            return;
        }
        pre_aggregate.flush(&mut |partial| route_into(router, buffers, partial));
    }
}

/// The output side of a subtask: one edge per consuming operator.
pub(super) struct Outputs {
    pub(super) edges: Vec<Edge>,
    /// What the task's tail sent: records (partials count once they leave, not when folded),
    /// batches, bytes, and the time it waited on full channels.
    pub(super) totals: OutputTotals,
}

impl Outputs {
    pub(super) fn push(&mut self, record: Record) {
        self.totals.records += 1;
        // Every consumer but the last gets a copy; the last takes the record itself.
        let Some((last, others)) = self.edges.split_last_mut() else {
            return;
        };
        for edge in others {
            edge.push(record.clone());
        }
        last.push(record);
    }

    /// When held partials must be sent at the latest, if any are held.
    pub(super) fn partials_deadline(&self) -> Option<Instant> {
        self.edges
            .iter()
            .filter_map(|edge| edge.pre_aggregate.as_ref()?.deadline())
            .min()
    }

    /// Sends full batches (every non-empty one unless `only_full`), after releasing the partials
    /// whose flush bound is reached.
    pub(super) async fn flush(&mut self, only_full: bool) -> Result<(), TaskError> {
        if self.edges.iter().any(|edge| edge.pre_aggregate.is_some()) {
            let now = Instant::now();
            for edge in &mut self.edges {
                edge.release_partials(Some(now));
            }
        }
        self.send_buffers(only_full).await
    }

    /// Releases every partial and sends everything buffered: before a barrier (a checkpoint never
    /// holds a partial), a watermark (a window never fires without one) or the end.
    async fn flush_all(&mut self) -> Result<(), TaskError> {
        for edge in &mut self.edges {
            edge.release_partials(None);
        }
        self.send_buffers(false).await
    }

    async fn send_buffers(&mut self, only_full: bool) -> Result<(), TaskError> {
        for edge in &mut self.edges {
            for (target, buffer) in edge.buffers.iter_mut().enumerate() {
                if buffer.is_empty() || (only_full && buffer.len() < BATCH_RECORDS) {
                    continue;
                }
                let batch = std::mem::replace(buffer, Vec::with_capacity(BATCH_RECORDS));
                self.totals.batches += 1;
                self.totals.bytes += payload_bytes(&batch);
                let blocked = edge.channels[target].send(ChannelEvent::Batch(batch)).await?;
                self.totals.blocked_ns += u64::try_from(blocked.as_nanos()).unwrap_or(u64::MAX);
            }
        }
        Ok(())
    }

    /// Sends `event` on every channel of every edge, after everything buffered.
    pub(super) async fn broadcast(&mut self, event: impl Fn() -> ChannelEvent) -> Result<(), TaskError> {
        self.flush_all().await?;
        for channel in self.edges.iter().flat_map(|edge| &edge.channels) {
            let blocked = channel.send(event()).await?;
            self.totals.blocked_ns += u64::try_from(blocked.as_nanos()).unwrap_or(u64::MAX);
        }
        Ok(())
    }

    pub(super) async fn broadcast_barrier(&mut self, barrier: Barrier) -> Result<(), TaskError> {
        self.broadcast(|| ChannelEvent::Barrier(barrier)).await
    }

    pub(super) async fn end(&mut self) -> Result<(), TaskError> {
        self.broadcast(|| ChannelEvent::End).await
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
        let exchange = graph.exchange(operator, consumer);
        let targets = exchange.receivers(deployment.subtask_index, operator.parallelism, consumer.parallelism);
        let mut channels = Vec::with_capacity(targets.len());
        for index in targets {
            let placed = deployment
                .placement
                .iter()
                .find(|placed| placed.subtask.operator_id == consumer.id && placed.subtask.subtask_index == index)
                .ok_or_else(|| TaskError::Graph(format!("{}[{index}] is not placed", consumer.id)))?;
            let target = GateKey {
                job_id: deployment.job_id,
                operator_id: consumer.id.clone(),
                subtask_index: index,
            };
            let channel = OutputChannel::open(
                &environment.hub,
                &environment.local_address,
                environment.dial.resolve(&placed.executor_address),
                target,
                placed.epoch,
                (operator.id.as_str(), deployment.subtask_index, deployment.epoch),
                cancel,
            )
            .await?;
            channels.push(channel);
        }
        // The first phase of a two-phase aggregate runs on its keyed exchange's sending side.
        let pre_aggregate = matches!(exchange, Exchange::Hash { .. })
            .then(|| PreAggregate::of(consumer))
            .flatten();
        edges.push(Edge::new(exchange, pre_aggregate, channels, graph.max_parallelism));
    }
    Ok(Outputs {
        edges,
        totals: OutputTotals::default(),
    })
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use super::*;

    fn routes(router: &mut Router, keys: &[&str]) -> Vec<Route> {
        keys.iter().map(|key| router.route(key)).collect()
    }

    #[test]
    fn a_plain_hash_keeps_a_key_on_one_channel_and_a_salted_one_spreads_it() {
        let mut plain = Router::new(Exchange::Hash { salts: 1 }, 4, 128);
        let first = plain.route("hot");
        assert!(routes(&mut plain, &["hot"; 100]).iter().all(|route| *route == first));

        let mut salted = Router::new(Exchange::Hash { salts: 4 }, 4, 128);
        let mut per_channel: BTreeMap<usize, usize> = BTreeMap::new();
        for route in routes(&mut salted, &["hot"; 400]) {
            let Route::One(channel) = route else {
                panic!("a hash sends a record to one channel");
            };
            *per_channel.entry(channel).or_default() += 1;
        }
        assert_eq!(
            per_channel.len(),
            4,
            "the hot key reaches every subtask: {per_channel:?}"
        );
        assert!(per_channel.values().all(|count| *count == 100), "{per_channel:?}");
    }

    #[test]
    fn round_robin_takes_every_channel_in_turn_and_broadcast_takes_all() {
        let mut round_robin = Router::new(Exchange::RoundRobin, 3, 128);
        let taken: Vec<Route> = routes(&mut round_robin, &["k"; 6]);
        let channels: BTreeSet<_> = taken.iter().collect();
        assert_eq!(channels.len(), 3);
        assert_ne!(taken[0], taken[1]);
        let mut broadcast = Router::new(Exchange::Broadcast, 3, 128);
        assert_eq!(broadcast.route("k"), Route::All);
        // A single consumer subtask gets everything, whatever the exchange.
        for exchange in [Exchange::Broadcast, Exchange::RoundRobin, Exchange::Hash { salts: 2 }] {
            assert_eq!(Router::new(exchange, 1, 128).route("k"), Route::One(0));
        }
    }
}
