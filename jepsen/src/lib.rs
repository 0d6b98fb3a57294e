//! Raftstream's chaos harness, in the spirit of Jepsen: operations are recorded as a history
//! (invoke, then ok, fail or unknown) while faults are injected, and checkers decide afterwards
//! whether the system kept its promises.
//!
//! - [`history`]: operations as clients saw them.
//! - [`linearizable`]: a Wing-Gong/Lowe search (as in Porcupine) for a linearization of a history
//!   against a sequential model.
//! - [`job_table`]: the model of the coordinators' job table and the checks of job ids.
//! - [`checkpoints`]: completed checkpoints never vanish, repeat or go back; restores use
//!   committed checkpoints.
//! - [`schedule`]: the seeded fault schedule; [`proxy`]: the fault proxy on every link,
//!   [`network`]: which proxy (or, with `--net netns`, which namespace) carries which link.
//!   [`netns`]: network namespaces, iptables partitions and netem delays.
//! - [`run`]: one run against a real cluster of processes; [`report`]: what it found;
//!   [`nemesis`]: the faults injected and healed; [`timeline`]: the same as a picture;
//!   [`serve`]: fault commands for a person.

pub mod checkpoints;
pub mod config;
pub mod endpoint;
pub mod history;
pub mod job_table;
pub mod linearizable;
pub mod nemesis;
pub mod netns;
pub mod network;
pub mod out_dir;
pub mod proxy;
mod recording;
pub mod report;
pub mod run;
pub mod schedule;
pub mod serve;
mod settle;
pub mod timeline;
mod workloads;
