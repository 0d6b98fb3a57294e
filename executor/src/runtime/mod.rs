//! The streaming runtime on an executor: one tokio task per deployed chain of subtasks ([`task`],
//! [`deployment`]), data exchange with credit-based flow control ([`exchange`]), barrier alignment
//! ([`barriers`]),
//! sources ([`generator`], [`file_source`]), the operators by concept (stateless transforms,
//! keyed state, event-time windows, the exactly-once file sink: [`operators`]) and keyed exchange
//! by key groups ([`key_groups`]), user functions and their keyed state ([`user_functions`],
//! [`function_state`]), per-task counters and hottest keys ([`metrics`],
//! [`heavy_hitters`]); all of them pass our own [`record::Record`], never the wire's.

pub mod barriers;
pub mod deployment;
pub mod exchange;
pub mod file_source;
pub mod function_state;
pub mod generator;
pub mod heavy_hitters;
pub mod key_groups;
pub mod metrics;
pub mod operators;
pub mod record;
pub mod task;
pub mod user_functions;
