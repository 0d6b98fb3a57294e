//! The `raftstream` command: coordinator, local cluster, job CLI and benchmarks.
//!
//! - [`local_cluster`]: coordinator child processes (start, kill -9, restart, wipe).
//! - [`cli`]: the subcommands and their table/JSON output.
//! - [`demo`]: `raftstream demo`, the README's main command.
//! - [`bench`]: `raftstream bench raft`.

pub mod bench;
pub mod cli;
pub mod demo;
pub mod local_cluster;
