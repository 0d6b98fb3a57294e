//! Keyed state: running counts and aggregates per key, checkpointed by key group so that any
//! range of key groups can be restored on its own (rescaling, a moved subtask).

use raftstream_api::spec::{Combine, OperatorConfig, OperatorSpec};

pub use super::keyed_state::entries_in_groups;
use super::keyed_state::{decode_keyed, encode_keyed, StateValue};
use super::{field_of, number_text, OperatorError};
use crate::runtime::key_groups::KeyedMap;
use crate::runtime::record::{Record, Text};

/// An operator whose whole state is one map from key to value, checkpointed by key group: its
/// snapshot, restore and sizing are the map's.
pub trait KeyedMapState {
    type Value: StateValue + serde::de::DeserializeOwned;

    /// The map the operator keeps.
    fn entries(&self) -> &KeyedMap<Self::Value>;

    /// The same, to change.
    fn entries_mut(&mut self) -> &mut KeyedMap<Self::Value>;

    /// The state as bytes, grouped by key group.
    fn snapshot(&self, max_parallelism: u32) -> Vec<u8> {
        encode_keyed(self.entries(), max_parallelism)
    }

    /// Adds the entries of `bytes` whose key group lies in `groups`.
    fn restore(&mut self, operator: &str, bytes: &[u8], groups: &std::ops::Range<u32>) -> Result<(), OperatorError> {
        decode_keyed(self.entries_mut(), bytes, groups).map_err(|problem| OperatorError::State {
            operator: operator.to_owned(),
            problem: format!("unreadable keyed state: {problem}"),
        })
    }

    /// Makes room for `additional` keys before restoring them.
    fn reserve(&mut self, additional: usize) {
        self.entries_mut().reserve(additional);
    }
}

/// `number` in decimal as record text: at most 20 digits, so always inline (no allocation).
pub fn decimal_text(number: u64) -> Text {
    Text::new(itoa::Buffer::new().format(number))
}

/// Keyed running counts, emitted on every update (like Flink's rolling aggregations).
#[derive(Debug, Default)]
pub struct KeyedCount {
    counts: KeyedMap<u64>,
    /// Two-phase: each record holds a partial count to add, not one occurrence.
    merges_partials: bool,
}

impl KeyedCount {
    /// The count of a two-phase `count`: its input records are partial counts.
    pub fn merging_partials() -> KeyedCount {
        KeyedCount {
            merges_partials: true,
            ..KeyedCount::default()
        }
    }

    /// Counts `record` (one occurrence, or its partial count) and returns the key's new count.
    pub fn add(&mut self, record: &Record) -> u64 {
        if !self.merges_partials {
            return self.add_one(&record.key);
        }
        let partial = record.value.trim().parse::<u64>().unwrap_or(0);
        let count = self.counts.entry(record.key.clone()).or_default();
        *count += partial;
        *count
    }

    /// Counts one record of `key` and returns the key's new count.
    pub fn add_one(&mut self, key: &Text) -> u64 {
        // The key is copied only the first time it is seen.
        match self.counts.get_mut(key.as_str()) {
            Some(count) => {
                *count += 1;
                *count
            }
            None => {
                self.counts.insert(key.clone(), 1);
                1
            }
        }
    }

    /// Counts one record and emits (key, new count).
    pub fn apply(&mut self, record: Record, emit: &mut impl FnMut(Record)) {
        let count = self.add(&record);
        emit(Record {
            value: decimal_text(count),
            key: record.key,
            timestamp_ms: record.timestamp_ms,
        });
    }

    /// How many keys are held.
    pub fn len(&self) -> usize {
        self.counts.len()
    }

    /// Whether no key is held.
    pub fn is_empty(&self) -> bool {
        self.counts.is_empty()
    }
}

/// A running keyed aggregation (sum, min, max, reduce), emitting the new aggregate on every update.
/// Numbers are read from the record value, or from one field of a JSON object value.
#[derive(Debug)]
pub struct KeyedAggregate {
    combine: Combine,
    field: Option<String>,
    values: KeyedMap<serde_json::Value>,
}

impl KeyedAggregate {
    /// The aggregation of a sum, min, max or reduce operator.
    pub fn of(operator: &OperatorSpec) -> Result<KeyedAggregate, OperatorError> {
        let OperatorConfig::Aggregate { combine, field, .. } = &operator.config else {
            return Err(OperatorError::Unsupported {
                operator: operator.id.to_string(),
                kind: operator.kind,
            });
        };
        Ok(KeyedAggregate {
            combine: *combine,
            // Two-phase: the first phase read the field; a partial's value is the number.
            field: field.clone().filter(|_| operator.config.two_phase().is_none()),
            values: KeyedMap::default(),
        })
    }

    /// Folds one record into its key's aggregate and emits (key, aggregate); returns false when
    /// the record holds no usable value (dropped and counted by the caller).
    pub fn apply(&mut self, record: Record, emit: &mut impl FnMut(Record)) -> bool {
        let text = match &self.field {
            Some(field) => match field_of(&record.value, field) {
                Some(text) => text,
                None => return false,
            },
            None => record.value.to_string(),
        };
        let next = if self.combine == Combine::Concat {
            let joined = match self.values.get(record.key.as_str()).and_then(|value| value.as_str()) {
                Some(previous) => format!("{previous},{text}"),
                None => text,
            };
            serde_json::Value::String(joined)
        } else {
            let Ok(number) = text.trim().parse::<f64>() else {
                return false;
            };
            let previous = self.values.get(record.key.as_str()).and_then(|value| value.as_f64());
            let combined = match (self.combine, previous) {
                (_, None) => number,
                (Combine::Sum, Some(previous)) => previous + number,
                (Combine::Min, Some(previous)) => previous.min(number),
                (Combine::Max, Some(previous)) => previous.max(number),
                (Combine::Concat, Some(_)) => number,
            };
            serde_json::json!(combined)
        };
        let shown = match &next {
            serde_json::Value::String(text) => text.clone(),
            other => other.as_f64().map(number_text).unwrap_or_default(),
        };
        self.values.insert(record.key.clone(), next);
        emit(Record {
            key: record.key,
            value: shown.into(),
            timestamp_ms: record.timestamp_ms,
        });
        true
    }
}

impl KeyedMapState for KeyedCount {
    type Value = u64;

    fn entries(&self) -> &KeyedMap<u64> {
        &self.counts
    }

    fn entries_mut(&mut self) -> &mut KeyedMap<u64> {
        &mut self.counts
    }
}

impl KeyedMapState for KeyedAggregate {
    type Value = serde_json::Value;

    fn entries(&self) -> &KeyedMap<serde_json::Value> {
        &self.values
    }

    fn entries_mut(&mut self) -> &mut KeyedMap<serde_json::Value> {
        &mut self.values
    }
}

#[cfg(test)]
mod tests {
    use raftstream_api::spec::OperatorKind;

    use super::super::test_support::spec;
    use super::*;

    proptest::proptest! {
        #[test]
        fn decimal_matches_to_string(number in proptest::num::u64::ANY) {
            proptest::prop_assert_eq!(decimal_text(number), number.to_string());
        }
    }

    #[test]
    fn keyed_aggregations_fold_per_key_and_survive_a_snapshot() {
        let mut sum =
            KeyedAggregate::of(&spec(OperatorKind::Sum, serde_json::json!({"field": "amount"}))).expect("valid");
        let mut out = Vec::new();
        for (key, amount) in [("a", "2"), ("b", "1.5"), ("a", "3")] {
            let record = Record {
                key: key.into(),
                value: format!(r#"{{"amount":{amount}}}"#).into(),
                ..Default::default()
            };
            assert!(sum.apply(record, &mut |record| out
                .push(format!("{} {}", record.key, record.value))));
        }
        assert_eq!(out, vec!["a 2", "b 1.5", "a 5"]);
        let bytes = sum.snapshot(128);
        let mut restored =
            KeyedAggregate::of(&spec(OperatorKind::Sum, serde_json::json!({"field": "amount"}))).expect("valid");
        restored.restore("op", &bytes, &(0..128)).expect("restore");
        let mut again = Vec::new();
        let record = Record {
            key: "a".into(),
            value: r#"{"amount":1}"#.into(),
            ..Default::default()
        };
        restored.apply(record, &mut |record| again.push(record.value));
        assert_eq!(again, vec!["6"]);

        let mut max =
            KeyedAggregate::of(&spec(OperatorKind::Reduce, serde_json::json!({"function": "max"}))).expect("valid");
        let mut maxima = Vec::new();
        for value in ["3", "9", "4", "x"] {
            max.apply(
                Record {
                    key: "k".into(),
                    value: value.into(),
                    ..Default::default()
                },
                &mut |record| maxima.push(record.value),
            );
        }
        assert_eq!(maxima, vec!["3", "9", "9"]);
    }

    #[test]
    fn keyed_state_splits_by_key_group_range() {
        let mut counts = KeyedCount::default();
        let mut emitted = Vec::new();
        for word in ["x", "y", "x", "z"] {
            counts.apply(
                Record {
                    key: word.into(),
                    value: word.into(),
                    ..Default::default()
                },
                &mut |record| emitted.push(format!("{} {}", record.key, record.value)),
            );
        }
        assert_eq!(emitted, vec!["x 1", "y 1", "x 2", "z 1"]);
        let bytes = counts.snapshot(128);
        let mut low = KeyedCount::default();
        let mut high = KeyedCount::default();
        low.restore("c", &bytes, &(0..64)).expect("restore");
        high.restore("c", &bytes, &(64..128)).expect("restore");
        assert_eq!(low.len() + high.len(), 3);
        assert!(low.restore("c", b"not json", &(0..128)).is_err());
    }
}
