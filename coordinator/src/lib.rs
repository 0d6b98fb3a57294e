//! The Raftstream coordinator. Ids, job specs, checkpoint metadata, messages and the cluster
//! client come from `raftstream-api`.
//!
//! - [`state_machine`]: the pure, deterministic state every coordinator agrees on.
//! - [`raft`]: openraft type config, RocksDB log and state-machine storage, the gRPC Raft network.
//! - [`clock`]: the wall-clock milliseconds the leader stamps into commands.
//! - [`context`]: this node's handle on its Raft node, shared by the services and the leader duties.
//! - [`leader`]: leader-only duties: executor failure detector, scheduler, checkpoint coordinator,
//!   autoscaler, skew watch.
//! - [`service`]: the gRPC services (jobs, admin, Raft), converting protobuf at the edge.
//! - [`node`]: configuration and start-up of one coordinator process.
//! - [`metrics`]: the Prometheus metrics `/metrics` serves.
//! - [`removal`]: a node removed from the membership notices and stops serving.
//! - [`error`]: the coordinator's errors and their gRPC status codes.

pub mod clock;
pub mod context;
pub mod error;
pub mod events;
pub mod failpoints;
pub mod leader;
pub mod metrics;
pub mod node;
pub mod raft;
pub mod removal;
pub mod service;
pub mod state_machine;

#[cfg(test)]
mod test_fixtures;
