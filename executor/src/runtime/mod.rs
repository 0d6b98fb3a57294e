//! The streaming runtime, starting with what runs inside one process: deterministic sources,
//! chained stateless operators, keyed exchange by key groups over bounded channels (backpressure),
//! keyed counting and sinks.
//!
//! Today [`local::run_local`] runs a bounded job whose graph is a chain ending in a keyed count on
//! one machine; distributing subtasks over executors, barrier checkpoints and restore build on it.

pub mod barriers;
pub mod exchange;
pub mod file_source;
pub mod generator;
pub mod key_groups;
pub mod local;
pub mod operators;
pub mod task;
pub mod windows;

pub use local::{run_local, LocalRunReport, RuntimeError};
