//! Operations as the clients saw them. Times are microseconds since the run started, taken on one
//! clock (the harness's), so "A returned before B was invoked" is meaningful.

use serde::{Deserialize, Serialize};

/// What a client learnt about one operation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome<O> {
    /// It took effect (for reads: it returned this value).
    Ok(O),
    /// It certainly did not take effect (the system said so before doing anything).
    Fail(String),
    /// No answer (timeout, connection lost): it may have taken effect, at any time after the
    /// invocation, or never.
    Unknown(String),
}

/// One operation of the history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Operation<I, O> {
    /// Position in the history, for reports.
    pub index: usize,
    /// Which client (a client runs one operation at a time).
    pub client: u32,
    pub input: I,
    pub outcome: Outcome<O>,
    pub invoked_us: u64,
    /// When the answer arrived; `None` for an unknown outcome.
    pub completed_us: Option<u64>,
}

impl<I, O> Operation<I, O> {
    /// The latest time this operation can have taken effect.
    pub fn deadline_us(&self) -> u64 {
        match self.outcome {
            Outcome::Unknown(_) => u64::MAX,
            _ => self.completed_us.unwrap_or(u64::MAX),
        }
    }

    pub fn is_unknown(&self) -> bool {
        matches!(self.outcome, Outcome::Unknown(_))
    }
}
