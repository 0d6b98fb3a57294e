//! Raftstream's shared model: what coordinators, executors, the CLI and the chaos harness agree
//! on, with no Raft, no storage and no server code.
//!
//! - [`ids`]: newtype ids (`JobId`, `ExecutorId`, `OperatorId`, `CheckpointId`, `Epoch`, `RequestId`, `NodeId`).
//! - [`spec`]: job specs (YAML/JSON) parsed and validated into job graphs and operator chains.
//! - [`checkpoint`]: checkpoint metadata (`CompletedCheckpoint`, `TaskStateHandle`, `SubtaskKey`).
//! - [`messages`]: what the leader and the executors tell each other (`ExecutorCommand`, ...).
//! - [`convert`]: every conversion between those and their protobuf form.
//! - [`client`]: a cluster client that tries every coordinator and retries.
//! - [`function_status`]: a job's user functions with their calls, as `job status` shows them.
//! - [`function_upload`]: a user function's component in chunks, sent and received.
//! - [`dial`]: the table of addresses dialled elsewhere than advertised (the fault proxy).
//! - [`metadata`]: gRPC metadata keys.
//! - [`serde_pairs`]: maps keyed by structs, serialized as lists of pairs.

pub mod checkpoint;
pub mod client;
pub mod convert;
pub mod dial;
pub mod function_status;
pub mod function_upload;
pub mod ids;
pub mod messages;
pub mod metadata;
pub mod serde_pairs;
pub mod spec;
