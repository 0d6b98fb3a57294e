//! What each operator does to records, and its checkpointed state, one concept per module:
//! stateless transforms, keyed state (counts and aggregates), event-time windows and the
//! exactly-once file sink. Records are (key, value) text pairs; `key_by` sets the key, keyed
//! operators keep state per key. Every operator is built from its typed configuration
//! (`raftstream_api::spec::OperatorConfig`), never from a parameter map.

mod file_sink;
mod keyed;
mod keyed_state;
mod pre_aggregate;
mod stateless;
mod windows;

use raftstream_api::ids::CheckpointId;
use std::path::PathBuf;

use raftstream_api::spec::OperatorKind;

pub use file_sink::{restores_index, FileSink, PreCommitted, SinkSegment};
pub use keyed::{decimal_text, entries_in_groups, KeyedAggregate, KeyedCount, KeyedMapState};
pub use keyed_state::{decode_entries, encode_entries, encode_keyed};
pub use pre_aggregate::PreAggregate;
pub use stateless::Stateless;
pub use windows::WindowOperator;

/// Why an operator cannot run or its state cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum OperatorError {
    #[error("operator {operator:?}: {kind} is not supported by the distributed runtime yet")]
    Unsupported { operator: String, kind: OperatorKind },
    #[error("operator {operator:?}: param {param}: {problem}")]
    Param {
        operator: String,
        param: String,
        problem: String,
    },
    #[error("operator {operator:?}: state: {problem}")]
    State { operator: String, problem: String },
    #[error("sink {path}: {source}")]
    Sink { path: PathBuf, source: std::io::Error },
    #[error(
        "sink {path}: the restored checkpoint {checkpoint_id} lists this pre-committed file, but it is neither pending nor published: its output is lost"
    )]
    PreCommitLost { path: PathBuf, checkpoint_id: CheckpointId },
}

/// The text of `field` in a record value holding a JSON object (strings without quotes).
pub fn field_of(value: &str, field: &str) -> Option<String> {
    let object: serde_json::Value = serde_json::from_str(value).ok()?;
    match object.get(field)? {
        serde_json::Value::String(text) => Some(text.clone()),
        other => Some(other.to_string()),
    }
}

/// A number as text: integral values without a fraction.
pub fn number_text(number: f64) -> String {
    if number.fract() == 0.0 && number.abs() < 9.0e15 {
        format!("{}", number as i64)
    } else {
        number.to_string()
    }
}

#[cfg(test)]
pub(crate) mod test_support {
    use raftstream_api::ids::OperatorId;
    use raftstream_api::spec::{OperatorKind, OperatorSpec};

    use crate::runtime::record::Record;

    /// An operator of `kind` with `params` (a JSON object), as a validated spec would hold it.
    pub fn spec(kind: OperatorKind, params: serde_json::Value) -> OperatorSpec {
        let params = params
            .as_object()
            .map(|object| object.clone().into_iter().collect())
            .unwrap_or_default();
        OperatorSpec::new("op", kind, 1, vec![OperatorId::from("in")], params).expect("valid params")
    }

    pub fn record(value: &str) -> Record {
        Record {
            value: value.into(),
            ..Default::default()
        }
    }
}
