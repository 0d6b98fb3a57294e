//! The `raftstream` command: coordinator, local cluster, job CLI and benchmarks.
//!
//! - [`local_cluster`]: coordinator child processes (start, kill -9, restart, wipe).
//! - [`cli`]: the subcommands and their table/JSON output.
//! - [`demo`]: `raftstream demo`, the README's main command.
//! - [`bench`]: `raftstream bench raft|stream|replay|skew|elastic`, one module each under `bench/`.
//! - [`wordcount`]: the word-count job of the demo, tests and benchmarks, and its exactly-once check.

pub mod bench;
pub mod cli;
pub mod demo;
pub mod local_cluster;
pub mod wordcount;
