//! The Raftstream coordinator. Ids, job specs, checkpoint metadata, messages and the cluster
//! client come from `raftstream-api`.
//!
//! - [`state_machine`]: the pure, deterministic state every coordinator agrees on.
//! - [`raft`]: openraft type config, RocksDB log and state-machine storage, the gRPC Raft network.
//! - [`leader`]: leader-only duties: executor failure detector and scheduler.
//! - [`service`]: the gRPC services (jobs, admin, Raft), converting protobuf at the edge.
//! - [`node`]: configuration and start-up of one coordinator process.
//! - [`error`]: the coordinator's errors and their gRPC status codes.

pub mod error;
pub mod failpoints;
pub mod leader;
pub mod node;
pub mod raft;
pub mod service;
pub mod state_machine;

// The shared model, at the paths the coordinator's modules use.
pub use raftstream_api::{client, dial, ids, spec};
