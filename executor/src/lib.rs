//! The Raftstream executor: registers with the coordinators, keeps one session stream to the
//! leader (heartbeats out, assignments in), and follows a leader change by reconnecting while its
//! subtasks keep their placement.
//!
//! - [`assignments`]: the subtasks this executor was told to run, with their epochs.
//! - [`session`]: registration and the session loop.
//!
//! The streaming runtime that executes the assigned subtasks is the next step (issue 3); until it
//! lands, an executor holds its slots for the subtasks placed on it and reports them in heartbeats.

pub mod assignments;
pub mod session;

pub use session::{run_executor, ExecutorConfig, ExecutorError};
