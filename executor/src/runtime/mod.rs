//! The streaming runtime on an executor: one tokio task per deployed chain of subtasks ([`task`],
//! [`chain`]), data exchange with credit-based flow control ([`exchange`]), barrier alignment
//! ([`barriers`]),
//! sources ([`generator`], [`file_source`]), record operators and the exactly-once file sink
//! ([`operators`]), event-time windows ([`windows`]) and keyed exchange by key groups
//! ([`key_groups`]); all of them pass our own [`record::Record`], never the wire's.

pub mod barriers;
pub mod chain;
pub mod exchange;
pub mod file_source;
pub mod generator;
pub mod key_groups;
pub mod operators;
pub mod record;
pub mod task;
pub mod windows;
