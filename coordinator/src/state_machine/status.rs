//! Job statuses and the table of legal transitions between them.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The life cycle of a job. Only the transitions in [`JobStatus::can_become`] are legal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum JobStatus {
    Submitted,
    Running,
    Restarting,
    Cancelling,
    Cancelled,
    Failed,
    Finished,
    /// Stopped with a savepoint: every sink published the savepoint, and a new job can go on
    /// from it.
    Stopped,
}

impl JobStatus {
    /// Every status.
    pub const ALL: [JobStatus; 8] = [
        JobStatus::Submitted,
        JobStatus::Running,
        JobStatus::Restarting,
        JobStatus::Cancelling,
        JobStatus::Cancelled,
        JobStatus::Failed,
        JobStatus::Finished,
        JobStatus::Stopped,
    ];

    /// Cancelled, Failed, Finished and Stopped are final: nothing leaves them.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            JobStatus::Cancelled | JobStatus::Failed | JobStatus::Finished | JobStatus::Stopped
        )
    }

    /// Whether a job in this status may move to `to`.
    pub fn can_become(self, to: JobStatus) -> bool {
        use JobStatus::*;
        match self {
            Submitted => matches!(to, Running | Cancelling | Cancelled | Failed),
            Running => matches!(to, Restarting | Cancelling | Failed | Finished | Stopped),
            Restarting => matches!(to, Running | Cancelling | Cancelled | Failed),
            Cancelling => matches!(to, Cancelled | Failed),
            Cancelled | Failed | Finished | Stopped => false,
        }
    }

    /// The name shown to users.
    pub fn name(self) -> &'static str {
        match self {
            JobStatus::Submitted => "Submitted",
            JobStatus::Running => "Running",
            JobStatus::Restarting => "Restarting",
            JobStatus::Cancelling => "Cancelling",
            JobStatus::Cancelled => "Cancelled",
            JobStatus::Failed => "Failed",
            JobStatus::Finished => "Finished",
            JobStatus::Stopped => "Stopped",
        }
    }
}

impl fmt::Display for JobStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}
