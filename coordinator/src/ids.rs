//! Newtype ids, so a job id can never be passed where an executor id is expected.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A Raft node id of a coordinator.
pub type NodeId = u64;

/// A job, named `job-<n>` where n is allocated by the state machine.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct JobId(pub String);

/// An executor process, named by the executor itself when it registers.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ExecutorId(pub String);

/// A checkpoint of one job; ids strictly increase per job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct CheckpointId(pub u64);

/// The fencing token of one placement of a subtask; it grows on every (re)assignment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Epoch(pub u64);

/// A client-chosen id that makes a retried write apply once.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct RequestId(pub String);

impl JobId {
    /// The id of the job with sequence number `number`.
    pub fn from_number(number: u64) -> Self {
        JobId(format!("job-{number}"))
    }
}

macro_rules! display_inner {
    ($($name:ident),*) => {$(
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&self.0, f)
            }
        }
    )*};
}
display_inner!(JobId, ExecutorId, CheckpointId, Epoch, RequestId);
