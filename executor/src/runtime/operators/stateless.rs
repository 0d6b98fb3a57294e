//! Stateless record transformations: map, flat_map, filter and key_by.

use raftstream_api::spec::{CompareOp, FlatMapFunction, MapFunction, OperatorConfig, OperatorSpec};

use super::{field_of, OperatorError};
use crate::runtime::record::{Record, Text};

/// A stateless record transformation.
#[derive(Debug, Clone)]
pub enum Stateless {
    Identity,
    Lowercase,
    Uppercase,
    Trim,
    SplitWords,
    Split {
        delimiter: String,
    },
    /// Delimited text -> a JSON object with the named fields.
    ParseCsv {
        fields: Vec<String>,
        delimiter: String,
    },
    /// Keeps JSON objects (and, in a flat_map, the elements of JSON arrays); drops the rest.
    ParseJson {
        explode_arrays: bool,
    },
    /// Keeps only the named fields of a JSON object.
    Project {
        fields: Vec<String>,
    },
    Filter {
        field: Option<String>,
        op: CompareOp,
        value: String,
        /// The value as a number, read once: numbers compare as numbers.
        number: Option<f64>,
    },
    /// The value becomes the key. `keep_value: false` when every consumer reads only the key
    /// (a rolling count): the value then moves into the key instead of being copied.
    KeyByValue {
        keep_value: bool,
    },
    KeyByField {
        field: String,
    },
}

impl Stateless {
    /// The transformation of a map, flat_map, filter or key_by operator.
    pub fn of(operator: &OperatorSpec) -> Result<Stateless, OperatorError> {
        Ok(match &operator.config {
            OperatorConfig::Map(function) => match function {
                MapFunction::Identity => Stateless::Identity,
                MapFunction::Lowercase => Stateless::Lowercase,
                MapFunction::Uppercase => Stateless::Uppercase,
                MapFunction::Trim => Stateless::Trim,
                MapFunction::Project { fields } => Stateless::Project { fields: fields.clone() },
                MapFunction::ParseCsv { fields, delimiter } => Stateless::ParseCsv {
                    fields: fields.clone(),
                    delimiter: delimiter.clone(),
                },
                MapFunction::ParseJson => Stateless::ParseJson { explode_arrays: false },
            },
            OperatorConfig::FlatMap(function) => match function {
                FlatMapFunction::SplitWords => Stateless::SplitWords,
                FlatMapFunction::Split { delimiter } => Stateless::Split {
                    delimiter: delimiter.clone(),
                },
                FlatMapFunction::ParseCsv { fields, delimiter } => Stateless::ParseCsv {
                    fields: fields.clone(),
                    delimiter: delimiter.clone(),
                },
                FlatMapFunction::ParseJson => Stateless::ParseJson { explode_arrays: true },
            },
            OperatorConfig::Filter(filter) => Stateless::Filter {
                field: filter.field.clone(),
                op: filter.op,
                value: filter.value.clone(),
                number: filter.value.trim().parse::<f64>().ok(),
            },
            OperatorConfig::KeyBy { field: Some(field), .. } => Stateless::KeyByField { field: field.clone() },
            OperatorConfig::KeyBy { field: None, .. } => Stateless::KeyByValue { keep_value: true },
            OperatorConfig::Exchange => Stateless::Identity,
            _ => {
                return Err(OperatorError::Unsupported {
                    operator: operator.id.to_string(),
                    kind: operator.kind,
                })
            }
        })
    }

    /// Applies the transformation to one record; returns false when the record was dropped as
    /// malformed (not JSON, missing columns), which the caller counts.
    pub fn apply(&self, record: Record, emit: &mut impl FnMut(Record)) -> bool {
        let timestamp_ms = record.timestamp_ms;
        let with_value = |key: &Text, value: Text| Record {
            key: key.clone(),
            value,
            timestamp_ms,
        };
        match self {
            Stateless::Identity => emit(record),
            Stateless::Lowercase => emit(with_value(&record.key, record.value.to_lowercase().into())),
            Stateless::Uppercase => emit(with_value(&record.key, record.value.to_uppercase().into())),
            Stateless::Trim => emit(with_value(&record.key, record.value.trim().into())),
            Stateless::SplitWords if record.value.is_ascii() => {
                // Byte by byte: the char-decoding split below costs more than the rest of the
                // word count's per-word work, and ASCII text is the common case.
                let bytes = record.value.as_bytes();
                let mut start = None;
                for (position, byte) in bytes.iter().enumerate() {
                    match (byte.is_ascii_alphanumeric(), start) {
                        (true, None) => start = Some(position),
                        (false, Some(from)) => {
                            emit(with_value(&record.key, record.value[from..position].into()));
                            start = None;
                        }
                        _ => {}
                    }
                }
                if let Some(from) = start {
                    emit(with_value(&record.key, record.value[from..].into()));
                }
            }
            Stateless::SplitWords => {
                for word in record
                    .value
                    .split(|c: char| !c.is_alphanumeric())
                    .filter(|word| !word.is_empty())
                {
                    emit(with_value(&record.key, word.into()));
                }
            }
            Stateless::Split { delimiter } => {
                for part in record.value.split(delimiter.as_str()).filter(|part| !part.is_empty()) {
                    emit(with_value(&record.key, part.into()));
                }
            }
            Stateless::ParseCsv { fields, delimiter } => {
                let columns: Vec<&str> = record.value.split(delimiter.as_str()).collect();
                if columns.len() < fields.len() {
                    return false;
                }
                let object: serde_json::Map<String, serde_json::Value> = fields
                    .iter()
                    .zip(columns)
                    .map(|(name, column)| (name.clone(), serde_json::Value::String(column.trim().to_owned())))
                    .collect();
                emit(with_value(
                    &record.key,
                    serde_json::Value::Object(object).to_string().into(),
                ));
            }
            Stateless::ParseJson { explode_arrays } => match serde_json::from_str::<serde_json::Value>(&record.value) {
                Ok(serde_json::Value::Array(items)) if *explode_arrays => {
                    for item in items {
                        emit(with_value(&record.key, item.to_string().into()));
                    }
                }
                Ok(value @ serde_json::Value::Object(_)) => emit(with_value(&record.key, value.to_string().into())),
                _ => return false,
            },
            Stateless::Project { fields } => match serde_json::from_str::<serde_json::Value>(&record.value) {
                Ok(serde_json::Value::Object(mut object)) => {
                    object.retain(|name, _| fields.contains(name));
                    emit(with_value(
                        &record.key,
                        serde_json::Value::Object(object).to_string().into(),
                    ));
                }
                _ => return false,
            },
            Stateless::Filter {
                field,
                op,
                value,
                number,
            } => {
                let keep = match field {
                    Some(field) => match field_of(&record.value, field) {
                        Some(subject) => compare(*op, &subject, value, *number),
                        None => return false,
                    },
                    None => compare(*op, &record.value, value, *number),
                };
                if keep {
                    emit(record);
                }
            }
            Stateless::KeyByValue { keep_value: true } => emit(Record {
                key: record.value.clone(),
                value: record.value,
                timestamp_ms,
            }),
            Stateless::KeyByValue { keep_value: false } => emit(Record {
                key: record.value,
                value: Text::default(),
                timestamp_ms,
            }),
            Stateless::KeyByField { field } => match field_of(&record.value, field) {
                Some(key) => emit(Record {
                    key: key.into(),
                    value: record.value,
                    timestamp_ms,
                }),
                None => return false,
            },
        }
        true
    }
}

/// Compares numerically when both sides are numbers, as text otherwise.
/// `left op right`: as numbers when both read as one (`right_number` is `right` read once), as
/// text otherwise.
fn compare(op: CompareOp, left: &str, right: &str, right_number: Option<f64>) -> bool {
    use std::cmp::Ordering;
    let ordering = || match (left.trim().parse::<f64>().ok(), right_number) {
        (Some(a), Some(b)) => a.partial_cmp(&b),
        _ => Some(left.cmp(right)),
    };
    match op {
        CompareOp::Contains => left.contains(right),
        CompareOp::StartsWith => left.starts_with(right),
        CompareOp::Eq => ordering() == Some(Ordering::Equal),
        CompareOp::Ne => ordering() != Some(Ordering::Equal),
        CompareOp::Lt => ordering() == Some(Ordering::Less),
        CompareOp::Le => matches!(ordering(), Some(Ordering::Less | Ordering::Equal)),
        CompareOp::Gt => ordering() == Some(Ordering::Greater),
        CompareOp::Ge => matches!(ordering(), Some(Ordering::Greater | Ordering::Equal)),
    }
}

#[cfg(test)]
mod tests {
    use raftstream_api::spec::OperatorKind;

    use super::super::decimal_text;
    use super::super::test_support::{record, spec};
    use super::*;

    proptest::proptest! {
        /// The ASCII fast path splits exactly as the general one (non-alphanumerics separate).
        #[test]
        fn split_words_is_the_same_on_both_paths(text in "[ -~]{0,40}|\\PC{0,20}") {
            let words: Vec<String> = run(&Stateless::SplitWords, &[&text])
                .into_iter()
                .map(|line| line.trim_start_matches('|').to_owned())
                .collect();
            let expected: Vec<String> = text
                .split(|c: char| !c.is_alphanumeric())
                .filter(|word| !word.is_empty())
                .map(str::to_owned)
                .collect();
            proptest::prop_assert_eq!(words, expected);
        }
    }

    #[test]
    fn key_by_value_moves_the_value_into_the_key_when_only_keys_are_read() {
        let keeping = Stateless::KeyByValue { keep_value: true };
        let moving = Stateless::KeyByValue { keep_value: false };
        assert_eq!(run(&keeping, &["ab"]), vec!["ab|ab"]);
        assert_eq!(run(&moving, &["ab"]), vec!["ab|"]);
        assert_eq!(
            (decimal_text(0), decimal_text(u64::MAX)),
            ("0".into(), u64::MAX.to_string().into())
        );
    }

    fn run(transform: &Stateless, values: &[&str]) -> Vec<String> {
        let mut out = Vec::new();
        for value in values {
            transform.apply(record(value), &mut |record| {
                out.push(format!("{}|{}", record.key, record.value))
            });
        }
        out
    }

    #[test]
    fn field_aware_transforms_parse_project_filter_and_key() {
        let csv = Stateless::of(&spec(
            OperatorKind::Map,
            serde_json::json!({"function": "parse_csv", "fields": ["user", "amount"]}),
        ))
        .expect("valid");
        assert_eq!(
            run(&csv, &["ann, 5", "broken"]),
            vec![r#"|{"amount":"5","user":"ann"}"#]
        );
        let project = Stateless::of(&spec(
            OperatorKind::Map,
            serde_json::json!({"function": "project", "fields": ["user"]}),
        ))
        .expect("valid");
        assert_eq!(
            run(&project, &[r#"{"user":"ann","amount":5}"#]),
            vec![r#"|{"user":"ann"}"#]
        );
        let filter = Stateless::of(&spec(
            OperatorKind::Filter,
            serde_json::json!({"field": "amount", "op": "ge", "value": 10}),
        ))
        .expect("valid");
        assert_eq!(run(&filter, &[r#"{"amount":5}"#, r#"{"amount":12}"#]).len(), 1);
        let key_by = Stateless::of(&spec(OperatorKind::KeyBy, serde_json::json!({"field": "user"}))).expect("valid");
        assert_eq!(run(&key_by, &[r#"{"user":"bob"}"#]), vec![r#"bob|{"user":"bob"}"#]);
        let explode = Stateless::of(&spec(
            OperatorKind::FlatMap,
            serde_json::json!({"function": "parse_json"}),
        ))
        .expect("valid");
        assert_eq!(run(&explode, &["[1,2]", "nope"]), vec!["|1", "|2"]);
        // A project without fields never gets here: the spec is refused at submit (api's tests).
    }

    #[test]
    fn a_filter_compares_numbers_as_numbers_and_text_as_text() {
        let filter = |op: &str, value: serde_json::Value| {
            Stateless::of(&spec(
                OperatorKind::Filter,
                serde_json::json!({"op": op, "value": value}),
            ))
            .expect("valid")
        };
        // As text "9" > "10"; as numbers it is not.
        assert_eq!(
            run(&filter("ge", serde_json::json!(10)), &["9", "10", "11.5"]),
            vec!["|10", "|11.5"]
        );
        assert_eq!(
            run(&filter("lt", serde_json::json!("m")), &["apple", "zebra"]),
            vec!["|apple"]
        );
        assert_eq!(
            run(&filter("contains", serde_json::json!("an")), &["banana", "kiwi"]),
            vec!["|banana"]
        );
        assert_eq!(run(&filter("ne", serde_json::json!(3)), &["3.0", "4"]), vec!["|4"]);
    }
}
