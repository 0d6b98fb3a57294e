//! The record every operator reads and writes. The wire has its own `pb::Record`; the exchange
//! converts at the gRPC edge (long strings move, short ones are copied in or out of their inline
//! form), so operators never see protobuf.

use raftstream_proto::v1 as pb;

/// Text of a record: strings up to 24 bytes (words, ids, counts) are stored inline, so the per-word
/// records of a word count cost no heap allocation.
pub type Text = compact_str::CompactString;

/// One stream element: a key (empty before the first `key_by`), a value and its event time.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Record {
    pub key: Text,
    pub value: Text,
    /// Event time in ms, set by the source; a replay carries the same times.
    pub timestamp_ms: i64,
}

impl From<pb::Record> for Record {
    fn from(wire: pb::Record) -> Self {
        Record {
            key: wire.key.into(),
            value: wire.value.into(),
            timestamp_ms: wire.timestamp_ms,
        }
    }
}

impl From<Record> for pb::Record {
    fn from(record: Record) -> Self {
        pb::Record {
            key: record.key.into_string(),
            value: record.value.into_string(),
            timestamp_ms: record.timestamp_ms,
        }
    }
}
