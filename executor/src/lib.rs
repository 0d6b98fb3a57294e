//! The Raftstream executor: registers with the coordinators, keeps one session stream to the
//! leader (heartbeats out, assignments in), and follows a leader change by reconnecting while its
//! subtasks keep their placement.
//!
//! - [`assignments`]: the subtasks this executor was told to run, with their epochs.
//! - [`checkpoint`]: the checkpoint store (state handles with checksums; local directory).
//! - [`session`]: registration and the session loop.
//! - [`runtime`]: the streaming runtime (so far: bounded chain jobs inside one process).
//!
//! Running the assigned subtasks with the streaming runtime across executors is the next step
//! (issue 3); until then an executor holds its slots for the subtasks placed on it and reports them
//! in heartbeats, and [`runtime::run_local`] runs bounded word-count-shaped jobs in one process.

pub mod assignments;
pub mod checkpoint;
pub mod runtime;
pub mod session;
pub mod tasks;

pub use session::{run_executor, ExecutorConfig, ExecutorError};
