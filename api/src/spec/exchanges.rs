//! How records cross an edge between two operators: which subtasks of the consumer a subtask of
//! the producer sends to, and how it picks one per record. An exchange is chosen by the producing
//! operator's kind (`key_by`, `rebalance`, `rescale`, `broadcast`), like Flink's `keyBy()`,
//! `rebalance()`, `rescale()` and `broadcast()`; every other edge is forward when both sides have
//! the same parallelism and round robin otherwise.

use super::{JobGraph, KeyHash, OperatorConfig, OperatorKind, OperatorSpec};

/// The exchange on one edge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exchange {
    /// Subtask i to subtask i of the consumer (same parallelism): the edge can be chained.
    Forward,
    /// By the key's key group to the subtask owning it; with `salts` above 1 a key's records are
    /// spread over that many key groups, one after another (see [`KeyHash::Salted`]).
    Hash { salts: u32 },
    /// Round robin over every consumer subtask.
    RoundRobin,
    /// Round robin over a local subset of the consumer's subtasks: each producer subtask feeds
    /// `consumer / producer` of them (scaling up) or shares one with the others of its block
    /// (scaling down), so fewer channels are opened than by a full round robin.
    Rescale,
    /// Every record to every consumer subtask.
    Broadcast,
}

impl Exchange {
    /// The consumer subtasks producer subtask `sender` sends to, in channel order.
    pub fn receivers(self, sender: u32, senders: u32, receivers: u32) -> Vec<u32> {
        match self {
            Exchange::Forward => vec![sender],
            Exchange::Rescale => (0..receivers)
                .filter(|receiver| rescale_linked(sender, *receiver, senders, receivers))
                .collect(),
            Exchange::Hash { .. } | Exchange::RoundRobin | Exchange::Broadcast => (0..receivers).collect(),
        }
    }

    /// The producer subtasks consumer subtask `receiver` reads from.
    pub fn senders(self, receiver: u32, senders: u32, receivers: u32) -> Vec<u32> {
        match self {
            Exchange::Forward => vec![receiver],
            Exchange::Rescale => (0..senders)
                .filter(|sender| rescale_linked(*sender, receiver, senders, receivers))
                .collect(),
            Exchange::Hash { .. } | Exchange::RoundRobin | Exchange::Broadcast => (0..senders).collect(),
        }
    }
}

/// Whether a rescale exchange links `sender` to `receiver`: scaling up, each receiver reads from
/// the one sender whose share of the receivers holds it; scaling down, each sender writes to the
/// one receiver whose share of the senders holds it. Every subtask on both sides gets at least
/// one link.
fn rescale_linked(sender: u32, receiver: u32, senders: u32, receivers: u32) -> bool {
    let (senders, receivers) = (u64::from(senders.max(1)), u64::from(receivers.max(1)));
    let (sender, receiver) = (u64::from(sender), u64::from(receiver));
    if receivers >= senders {
        receiver * senders / receivers == sender
    } else {
        sender * receivers / senders == receiver
    }
}

impl JobGraph {
    /// The exchange on the edge from `from` to its consumer `to`.
    pub fn exchange(&self, from: &OperatorSpec, to: &OperatorSpec) -> Exchange {
        // One subtask on each side: every exchange sends everything to the one there is. A
        // two-phase aggregate's first phase runs on the sending side of its keyed exchange, so
        // that one stays a real exchange (and its ends separate tasks).
        if from.parallelism == 1 && to.parallelism == 1 && to.config.two_phase().is_none() {
            return Exchange::Forward;
        }
        match (&from.config, from.kind) {
            (OperatorConfig::KeyBy { hash, .. }, _) => Exchange::Hash {
                salts: match hash {
                    KeyHash::Plain => 1,
                    // More salts than subtasks would only revisit the same ones.
                    KeyHash::Salted { salts } => salts.unwrap_or(to.parallelism).clamp(1, to.parallelism.max(1)),
                },
            },
            // A user key selector: the plain hash of the key it chose.
            (_, OperatorKind::KeyBy) => Exchange::Hash { salts: 1 },
            (_, OperatorKind::Rebalance) => Exchange::RoundRobin,
            (_, OperatorKind::Broadcast) => Exchange::Broadcast,
            (_, OperatorKind::Rescale) if from.parallelism == to.parallelism => Exchange::Forward,
            (_, OperatorKind::Rescale) => Exchange::Rescale,
            _ if from.parallelism == to.parallelism => Exchange::Forward,
            _ => Exchange::RoundRobin,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::parse_job_spec;

    fn links(exchange: Exchange, senders: u32, receivers: u32) -> Vec<(u32, u32)> {
        let mut from_senders: Vec<(u32, u32)> = (0..senders)
            .flat_map(|sender| {
                exchange
                    .receivers(sender, senders, receivers)
                    .into_iter()
                    .map(move |receiver| (sender, receiver))
            })
            .collect();
        let mut from_receivers: Vec<(u32, u32)> = (0..receivers)
            .flat_map(|receiver| {
                exchange
                    .senders(receiver, senders, receivers)
                    .into_iter()
                    .map(move |sender| (sender, receiver))
            })
            .collect();
        from_senders.sort_unstable();
        from_receivers.sort_unstable();
        assert_eq!(from_senders, from_receivers, "both sides agree on the channels");
        from_senders
    }

    #[test]
    fn rescale_links_each_sender_to_a_local_block_and_every_subtask_gets_a_link() {
        assert_eq!(links(Exchange::Rescale, 2, 4), vec![(0, 0), (0, 1), (1, 2), (1, 3)]);
        assert_eq!(links(Exchange::Rescale, 4, 2), vec![(0, 0), (1, 0), (2, 1), (3, 1)]);
        for senders in 1..=9 {
            for receivers in 1..=9 {
                let linked = links(Exchange::Rescale, senders, receivers);
                for sender in 0..senders {
                    assert!(
                        linked.iter().any(|(s, _)| *s == sender),
                        "{senders}->{receivers}: sender {sender}"
                    );
                }
                for receiver in 0..receivers {
                    assert!(
                        linked.iter().any(|(_, r)| *r == receiver),
                        "{senders}->{receivers}: receiver {receiver}"
                    );
                }
                // A local subset: never more links than the larger side has subtasks.
                assert_eq!(linked.len() as u32, senders.max(receivers));
            }
        }
    }

    #[test]
    fn full_exchanges_link_everything_and_forward_links_pairs() {
        for exchange in [Exchange::RoundRobin, Exchange::Broadcast, Exchange::Hash { salts: 1 }] {
            assert_eq!(links(exchange, 2, 3).len(), 6);
        }
        assert_eq!(links(Exchange::Forward, 3, 3), vec![(0, 0), (1, 1), (2, 2)]);
    }

    #[test]
    fn the_producing_kind_chooses_the_exchange() {
        let spec = r#"{"name": "x", "parallelism": 2, "operators": [
            {"id": "lines", "kind": "generator"},
            {"id": "spread", "kind": "rebalance", "inputs": ["lines"]},
            {"id": "a", "kind": "map", "inputs": ["spread"], "params": {"function": "trim"}},
            {"id": "local", "kind": "rescale", "inputs": ["a"]},
            {"id": "b", "kind": "map", "inputs": ["local"], "parallelism": 4, "params": {"function": "trim"}},
            {"id": "everyone", "kind": "broadcast", "inputs": ["b"]},
            {"id": "c", "kind": "map", "inputs": ["everyone"], "params": {"function": "trim"}},
            {"id": "salted", "kind": "key_by", "inputs": ["c"], "params": {"hash": "salted", "salts": 8}},
            {"id": "d", "kind": "print", "inputs": ["salted"], "parallelism": 3},
            {"id": "plain", "kind": "key_by", "inputs": ["c"]},
            {"id": "e", "kind": "count", "inputs": ["plain"]},
            {"id": "f", "kind": "print", "inputs": ["e"]}]}"#;
        let graph = parse_job_spec(spec).expect("valid spec");
        let edge = |from: &str, to: &str| {
            let (Some(from), Some(to)) = (graph.operator(from), graph.operator(to)) else {
                panic!("no edge {from} -> {to}");
            };
            graph.exchange(from, to)
        };
        assert_eq!(edge("lines", "spread"), Exchange::Forward);
        assert_eq!(edge("spread", "a"), Exchange::RoundRobin);
        assert_eq!(edge("local", "b"), Exchange::Rescale);
        assert_eq!(edge("everyone", "c"), Exchange::Broadcast);
        // Never more salts than the consumer has subtasks.
        assert_eq!(edge("salted", "d"), Exchange::Hash { salts: 3 });
        assert_eq!(edge("plain", "e"), Exchange::Hash { salts: 1 });
        assert_eq!(edge("e", "f"), Exchange::Forward);
    }
}
