//! The Raftstream coordinator.
//!
//! - [`ids`]: newtype ids (`JobId`, `ExecutorId`, `CheckpointId`, `Epoch`, `RequestId`).
//! - [`spec`]: job specs (YAML/JSON) parsed and validated into job graphs.
//! - [`state_machine`]: the pure, deterministic state every coordinator agrees on.
//! - [`raft`]: openraft type config, RocksDB log and state-machine storage, the gRPC Raft network.
//! - [`leader`]: leader-only duties: executor failure detector and scheduler.
//! - [`service`]: the gRPC services (jobs, admin, Raft), converting protobuf at the edge.
//! - [`node`]: configuration and start-up of one coordinator process.
//! - [`client`]: a cluster client that tries every node and retries, used by the CLI and tests.
//! - [`error`]: the coordinator's errors and their gRPC status codes.

pub mod client;
pub mod dial;
pub mod error;
pub mod failpoints;
pub mod ids;
pub mod leader;
pub mod node;
pub mod raft;
pub mod service;
pub mod spec;
pub mod state_machine;
