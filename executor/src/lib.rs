//! The Raftstream executor: registers with the coordinators, keeps one session stream to the
//! leader (heartbeats out, assignments in), and follows a leader change by reconnecting while its
//! subtasks keep their placement.
//!
//! - [`assignments`]: the subtasks this executor was told to run, with their epochs.
//! - [`defects`]: bugs the chaos harness switches on to prove its checkers catch them.
//! - [`checkpoint`]: the checkpoint store (state handles with checksums; a local directory or object storage such as S3).
//! - [`function_store`]: the gRPC service that writes uploaded user functions into the checkpoint store.
//! - [`observe`]: the Prometheus metrics and readiness its HTTP listener serves.
//! - [`session`]: registration and the session loop; the only place leader messages and reports
//!   change between protobuf and `raftstream_api`'s types.
//! - [`runtime`]: the streaming runtime that runs deployed subtasks.
//! - [`task_manager`]: the subtasks running here, started, fenced and stopped by the leader's messages.

pub mod assignments;
pub mod blocking;
pub mod checkpoint;
pub mod defects;
pub mod function_store;
pub mod observe;
pub mod runtime;
pub mod session;
pub mod task_manager;

pub use session::{run_executor, ExecutorConfig, ExecutorError};
