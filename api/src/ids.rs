//! Newtype ids, so a job id can never be passed where an executor id is expected.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A coordinator's Raft node id. Serialised as its number (Raft log, votes, snapshots and config
/// files read the same as when it was a bare `u64`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct NodeId(pub u64);

/// A job, numbered by the state machine in submission order; written `job-<n>` everywhere it
/// leaves the process (protobuf, logs, the Raft state), so ids order by number, not as text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct JobId(u64);

/// Text that is not a job id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a job id (job ids look like job-7)")]
pub struct NotAJobId(pub String);

/// An executor process, named by the executor itself when it registers.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ExecutorId(pub String);

/// An operator of a job graph, named by the spec's `id:`; savepoints match state to operators by
/// it. Serialised as its text, so stored specs, checkpoints and the Raft log read as before.
#[derive(Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct OperatorId(pub String);

/// Debug-printed as the quoted text, as messages showed operator ids before the type existed.
impl fmt::Debug for OperatorId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

/// A checkpoint of one job; ids strictly increase per job (0: none yet).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct CheckpointId(pub u64);

/// The fencing token of one placement of a subtask; it grows on every (re)assignment (0: never
/// placed).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Epoch(pub u64);

/// A client-chosen id that makes a retried write apply once.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct RequestId(pub String);

impl JobId {
    /// The id of the job with sequence number `number`.
    pub fn from_number(number: u64) -> Self {
        JobId(number)
    }

    /// Its sequence number.
    pub fn number(self) -> u64 {
        self.0
    }

    /// Reads `job-<n>`.
    pub fn parse(text: &str) -> Result<JobId, NotAJobId> {
        text.strip_prefix("job-")
            .filter(|digits| !digits.is_empty() && digits.bytes().all(|byte| byte.is_ascii_digit()))
            .and_then(|digits| digits.parse().ok())
            .map(JobId)
            .ok_or_else(|| NotAJobId(text.to_owned()))
    }
}

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "job-{}", self.0)
    }
}

impl std::str::FromStr for JobId {
    type Err = NotAJobId;

    fn from_str(text: &str) -> Result<JobId, NotAJobId> {
        JobId::parse(text)
    }
}

impl Serialize for JobId {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for JobId {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<JobId, D::Error> {
        let text = std::borrow::Cow::<'de, str>::deserialize(deserializer)?;
        JobId::parse(&text).map_err(serde::de::Error::custom)
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
display_inner!(NodeId, ExecutorId, OperatorId, CheckpointId, Epoch, RequestId);

impl OperatorId {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl From<&str> for OperatorId {
    fn from(text: &str) -> OperatorId {
        OperatorId(text.to_owned())
    }
}

impl From<String> for OperatorId {
    fn from(text: String) -> OperatorId {
        OperatorId(text)
    }
}

/// Lets maps keyed by operator be looked up with a `&str`.
impl std::borrow::Borrow<str> for OperatorId {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl PartialEq<str> for OperatorId {
    fn eq(&self, other: &str) -> bool {
        self.0 == other
    }
}

impl PartialEq<&str> for OperatorId {
    fn eq(&self, other: &&str) -> bool {
        self.0 == *other
    }
}

impl From<u64> for NodeId {
    fn from(number: u64) -> NodeId {
        NodeId(number)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_ids_read_back_as_written_and_order_by_number() {
        let seven = JobId::from_number(7);
        assert_eq!(seven.to_string(), "job-7");
        assert_eq!(JobId::parse("job-7"), Ok(seven));
        assert!(JobId::from_number(9) < JobId::from_number(10), "by number, not as text");
        for bad in [
            "",
            "job-",
            "job-x",
            "7",
            "job--1",
            "job-1 ",
            "JOB-1",
            "job-99999999999999999999",
        ] {
            assert_eq!(JobId::parse(bad), Err(NotAJobId(bad.to_owned())), "{bad:?}");
        }
    }

    #[test]
    fn job_ids_keep_their_text_form_in_json_so_old_raft_logs_still_read() {
        let json = serde_json::to_string(&JobId::from_number(12)).expect("serializes");
        assert_eq!(json, r#""job-12""#);
        assert_eq!(
            serde_json::from_str::<JobId>(&json).expect("reads"),
            JobId::from_number(12)
        );
        assert!(serde_json::from_str::<JobId>(r#""12""#).is_err());
        let keyed: std::collections::BTreeMap<JobId, u8> = [(JobId::from_number(3), 1)].into();
        assert_eq!(serde_json::to_string(&keyed).expect("map"), r#"{"job-3":1}"#);
    }

    #[test]
    fn operator_ids_are_their_text_in_json() {
        let id = OperatorId::from("count");
        assert_eq!(serde_json::to_string(&id).expect("serializes"), r#""count""#);
        assert_eq!(serde_json::from_str::<OperatorId>(r#""count""#).expect("reads"), id);
        let keyed: std::collections::BTreeMap<OperatorId, u8> = [(id.clone(), 1)].into();
        assert_eq!(keyed.get("count"), Some(&1), "looked up by its text");
    }
}
