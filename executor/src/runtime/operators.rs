//! What each operator does to records, and its checkpointed state. Records are (key, value) text
//! pairs; `key_by` sets the key, keyed operators keep state per key.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use raftstream_api::spec::{
    Combine, CompareOp, FlatMapFunction, MapFunction, OperatorConfig, OperatorKind, OperatorSpec,
};

use super::record::{Record, Text};
use serde::{Deserialize, Serialize};

use super::key_groups::{key_group, KeyedMap, StateKey};

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
    PreCommitLost { path: PathBuf, checkpoint_id: u64 },
}

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

/// The text of `field` in a record value holding a JSON object (strings without quotes).
pub fn field_of(value: &str, field: &str) -> Option<String> {
    let object: serde_json::Value = serde_json::from_str(value).ok()?;
    match object.get(field)? {
        serde_json::Value::String(text) => Some(text.clone()),
        other => Some(other.to_string()),
    }
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
            OperatorConfig::KeyBy { field: Some(field) } => Stateless::KeyByField { field: field.clone() },
            OperatorConfig::KeyBy { field: None } => Stateless::KeyByValue { keep_value: true },
            _ => {
                return Err(OperatorError::Unsupported {
                    operator: operator.id.clone(),
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

/// Checkpointed keyed state: entries grouped by key group, so any subtask range can take its part.
#[derive(Debug, Default, Serialize, Deserialize)]
struct KeyedSnapshot<V> {
    max_parallelism: u32,
    groups: BTreeMap<u32, Vec<(String, V)>>,
}

fn snapshot_keyed<V: Serialize + Clone>(entries: &KeyedMap<V>, max_parallelism: u32) -> Vec<u8> {
    let mut snapshot = KeyedSnapshot {
        max_parallelism,
        groups: BTreeMap::new(),
    };
    for (key, value) in entries {
        snapshot
            .groups
            .entry(key_group(key, max_parallelism))
            .or_default()
            .push((key.to_string(), value.clone()));
    }
    // Serializing plain maps of strings and numbers cannot fail.
    serde_json::to_vec(&snapshot).unwrap_or_default()
}

fn restore_keyed<V: serde::de::DeserializeOwned>(
    entries: &mut KeyedMap<V>,
    operator: &str,
    bytes: &[u8],
    groups: &std::ops::Range<u32>,
) -> Result<(), OperatorError> {
    let snapshot: KeyedSnapshot<V> = serde_json::from_slice(bytes).map_err(|error| OperatorError::State {
        operator: operator.to_owned(),
        problem: format!("unreadable keyed state: {error}"),
    })?;
    for (group, group_entries) in snapshot.groups {
        if groups.contains(&group) {
            entries.extend(
                group_entries
                    .into_iter()
                    .map(|(key, value)| (StateKey::from(key), value)),
            );
        }
    }
    Ok(())
}

/// `number` in decimal as record text: at most 20 digits, so always inline (no allocation).
pub fn decimal_text(number: u64) -> Text {
    Text::new(itoa::Buffer::new().format(number))
}

/// Keyed running counts, emitted on every update (like Flink's rolling aggregations).
#[derive(Debug, Default)]
pub struct KeyedCount {
    counts: KeyedMap<u64>,
}

impl KeyedCount {
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
        let count = self.add_one(&record.key);
        emit(Record {
            value: decimal_text(count),
            key: record.key,
            timestamp_ms: record.timestamp_ms,
        });
    }

    /// The state as bytes, grouped by key group.
    pub fn snapshot(&self, max_parallelism: u32) -> Vec<u8> {
        snapshot_keyed(&self.counts, max_parallelism)
    }

    /// Adds the entries of `bytes` whose key group lies in `groups`.
    pub fn restore(
        &mut self,
        operator: &str,
        bytes: &[u8],
        groups: &std::ops::Range<u32>,
    ) -> Result<(), OperatorError> {
        restore_keyed(&mut self.counts, operator, bytes, groups)
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

/// A number as text: integral values without a fraction.
pub fn number_text(number: f64) -> String {
    if number.fract() == 0.0 && number.abs() < 9.0e15 {
        format!("{}", number as i64)
    } else {
        number.to_string()
    }
}

impl KeyedAggregate {
    /// The aggregation of a sum, min, max or reduce operator.
    pub fn of(operator: &OperatorSpec) -> Result<KeyedAggregate, OperatorError> {
        let OperatorConfig::Aggregate { combine, field } = &operator.config else {
            return Err(OperatorError::Unsupported {
                operator: operator.id.clone(),
                kind: operator.kind,
            });
        };
        Ok(KeyedAggregate {
            combine: *combine,
            field: field.clone(),
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

    /// The state as bytes, grouped by key group.
    pub fn snapshot(&self, max_parallelism: u32) -> Vec<u8> {
        snapshot_keyed(&self.values, max_parallelism)
    }

    /// Adds the entries of `bytes` whose key group lies in `groups`.
    pub fn restore(
        &mut self,
        operator: &str,
        bytes: &[u8],
        groups: &std::ops::Range<u32>,
    ) -> Result<(), OperatorError> {
        restore_keyed(&mut self.values, operator, bytes, groups)
    }
}

/// The exactly-once file sink of one subtask: two-phase commit per checkpoint. Records go to an
/// in-progress file; at the barrier of checkpoint n it is renamed to a pending file named by
/// subtask, n and epoch, and synced before n is acknowledged (pre-commit); when the coordinator
/// confirms that checkpoint n is committed in the Raft log, and names this placement among those
/// that acknowledged it, pending files up to n are renamed to `part-<subtask>-<n>.txt` (publish).
/// Data of a checkpoint that never completes is never published; a restore publishes exactly the
/// pending files its checkpoint lists and deletes every other pending file of the subtask.
#[derive(Debug)]
pub struct FileSink {
    directory: PathBuf,
    subtask_index: u32,
    epoch: u64,
    in_progress: Option<std::io::BufWriter<std::fs::File>>,
    written: u64,
    /// Pre-committed, not yet published checkpoint ids.
    pending: Vec<u64>,
}

/// The sink's checkpointed state: the pending files to publish if this checkpoint is restored.
#[derive(Debug, Default, Serialize, Deserialize)]
struct SinkSnapshot {
    epoch: u64,
    pending: Vec<u64>,
}

impl FileSink {
    /// A sink writing under the `path` param: a directory every executor of the job can reach (a
    /// relative path is taken from the executor's working directory).
    pub fn open(operator: &OperatorSpec, subtask_index: u32, epoch: u64) -> Result<FileSink, OperatorError> {
        let OperatorConfig::FileSink { path } = &operator.config else {
            return Err(OperatorError::Unsupported {
                operator: operator.id.clone(),
                kind: operator.kind,
            });
        };
        let directory = std::path::absolute(path).map_err(|error| OperatorError::Param {
            operator: operator.id.clone(),
            param: "path".to_owned(),
            problem: format!("{path:?}: {error}"),
        })?;
        let pending_dir = directory.join(".pending");
        std::fs::create_dir_all(&pending_dir).map_err(|source| OperatorError::Sink {
            path: pending_dir.clone(),
            source,
        })?;
        Ok(FileSink {
            directory,
            subtask_index,
            epoch,
            in_progress: None,
            written: 0,
            pending: Vec::new(),
        })
    }

    fn in_progress_path(&self) -> PathBuf {
        self.directory
            .join(".pending")
            .join(format!("part-{}-e{}.inprogress", self.subtask_index, self.epoch))
    }

    fn pending_path(directory: &Path, subtask_index: u32, checkpoint_id: u64, epoch: u64) -> PathBuf {
        directory
            .join(".pending")
            .join(format!("part-{subtask_index}-{checkpoint_id:012}-e{epoch}"))
    }

    fn published_path(directory: &Path, subtask_index: u32, checkpoint_id: u64) -> PathBuf {
        directory.join(format!("part-{subtask_index}-{checkpoint_id:012}.txt"))
    }

    fn io(path: &Path) -> impl FnOnce(std::io::Error) -> OperatorError + '_ {
        move |source| OperatorError::Sink {
            path: path.to_owned(),
            source,
        }
    }

    /// Appends one record to the in-progress file.
    pub fn write(&mut self, record: &Record) -> Result<(), OperatorError> {
        self.write_line(&record.key, record.value.as_bytes())
    }

    /// Appends the record (`key`, `number` in decimal) as [`FileSink::write`] would, without
    /// making the number a record's text first.
    pub fn write_number(&mut self, key: &str, number: u64) -> Result<(), OperatorError> {
        self.write_line(key, itoa::Buffer::new().format(number).as_bytes())
    }

    /// One line: the value, after the key and a tab when there is a key.
    fn write_line(&mut self, key: &str, value: &[u8]) -> Result<(), OperatorError> {
        use std::io::Write;
        if self.in_progress.is_none() {
            let path = self.in_progress_path();
            let file = std::fs::File::create(&path).map_err(Self::io(&path))?;
            self.in_progress = Some(std::io::BufWriter::with_capacity(256 * 1024, file));
        }
        if let Some(writer) = self.in_progress.as_mut() {
            let written = if key.is_empty() {
                writer.write_all(value).and_then(|()| writer.write_all(b"\n"))
            } else {
                writer
                    .write_all(key.as_bytes())
                    .and_then(|()| writer.write_all(b"\t"))
                    .and_then(|()| writer.write_all(value))
                    .and_then(|()| writer.write_all(b"\n"))
            };
            if let Err(source) = written {
                return Err(OperatorError::Sink {
                    path: self.in_progress_path(),
                    source,
                });
            }
            self.written += 1;
        }
        Ok(())
    }

    /// Whether records were written since the last pre-commit.
    pub fn has_uncommitted_data(&self) -> bool {
        self.written > 0
    }

    /// Pre-commits everything written so far as checkpoint `checkpoint_id`: the segment is
    /// flushed and renamed to its pending name, and new records go to a fresh in-progress file.
    /// The segment is not durable yet: the caller syncs it ([`SinkSegment::make_durable`]) before
    /// acknowledging the checkpoint, which may happen off the task while records keep flowing.
    pub fn pre_commit(&mut self, checkpoint_id: u64) -> Result<PreCommitted, OperatorError> {
        let target = Self::pending_path(&self.directory, self.subtask_index, checkpoint_id, self.epoch);
        let file = match self.in_progress.take() {
            Some(writer) => {
                let path = self.in_progress_path();
                let file = writer.into_inner().map_err(|error| OperatorError::Sink {
                    path: path.clone(),
                    source: error.into_error(),
                })?;
                std::fs::rename(&path, &target).map_err(Self::io(&target))?;
                file
            }
            // An empty segment still gets a file, so publishing is uniform.
            None => std::fs::File::create(&target).map_err(Self::io(&target))?,
        };
        self.written = 0;
        self.pending.push(checkpoint_id);
        let snapshot = SinkSnapshot {
            epoch: self.epoch,
            pending: self.pending.clone(),
        };
        Ok(PreCommitted {
            state: serde_json::to_vec(&snapshot).unwrap_or_default(),
            segment: SinkSegment { file, path: target },
        })
    }

    /// Publishes the pending files up to `checkpoint_id` (it is committed).
    pub fn publish_up_to(&mut self, checkpoint_id: u64) -> Result<usize, OperatorError> {
        let (ready, later): (Vec<u64>, Vec<u64>) = self.pending.iter().partition(|id| **id <= checkpoint_id);
        for id in &ready {
            Self::publish(&self.directory, self.subtask_index, *id, self.epoch)?;
        }
        self.pending = later;
        if !ready.is_empty() {
            sync_directory(&self.directory);
        }
        Ok(ready.len())
    }

    fn publish(directory: &Path, subtask_index: u32, checkpoint_id: u64, epoch: u64) -> Result<(), OperatorError> {
        let from = Self::pending_path(directory, subtask_index, checkpoint_id, epoch);
        let to = Self::published_path(directory, subtask_index, checkpoint_id);
        match std::fs::rename(&from, &to) {
            Ok(()) => Ok(()),
            // Published already (before a crash): renaming is the commit, and it happened.
            Err(error) if error.kind() == std::io::ErrorKind::NotFound && to.exists() => Ok(()),
            // Neither pending nor published: a completed checkpoint names output that is gone.
            // No retry can bring it back, so this must end the job rather than restart it.
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Err(OperatorError::PreCommitLost {
                path: from,
                checkpoint_id,
            }),
            Err(error) => Err(OperatorError::Sink {
                path: from,
                source: error,
            }),
        }
    }

    /// Whether everything pre-committed has been published.
    pub fn is_fully_published(&self) -> bool {
        self.pending.is_empty()
    }

    /// Restores from a completed checkpoint's sink state (or none): publishes what it lists, then
    /// deletes every other pending or in-progress file of this subtask index.
    pub fn restore(&mut self, operator: &str, state: Option<&[u8]>) -> Result<usize, OperatorError> {
        let mut published = 0;
        if let Some(bytes) = state {
            let snapshot: SinkSnapshot = serde_json::from_slice(bytes).map_err(|error| OperatorError::State {
                operator: operator.to_owned(),
                problem: format!("unreadable sink state: {error}"),
            })?;
            for id in &snapshot.pending {
                Self::publish(&self.directory, self.subtask_index, *id, snapshot.epoch)?;
                published += 1;
            }
        }
        let pending_dir = self.directory.join(".pending");
        let prefix = format!("part-{}-", self.subtask_index);
        let entries = std::fs::read_dir(&pending_dir).map_err(Self::io(&pending_dir))?;
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with(&prefix) {
                let _ = std::fs::remove_file(entry.path());
            }
        }
        sync_directory(&self.directory);
        Ok(published)
    }
}

/// What a pre-commit produced: the sink's state for the checkpoint, and the segment that must be
/// durable before the checkpoint is acknowledged.
#[derive(Debug)]
pub struct PreCommitted {
    pub state: Vec<u8>,
    pub segment: SinkSegment,
}

/// A pre-committed output segment, under its pending name.
#[derive(Debug)]
pub struct SinkSegment {
    file: std::fs::File,
    path: PathBuf,
}

impl SinkSegment {
    /// Syncs the segment's data and (best effort) the pending directory that names it; blocking.
    /// A checkpoint must not be acknowledged before this succeeded: after a failed sync the data
    /// may be gone even though a later read would still find it cached.
    pub fn make_durable(self) -> Result<(), OperatorError> {
        self.file.sync_all().map_err(|source| OperatorError::Sink {
            path: self.path.clone(),
            source,
        })?;
        if let Some(pending_directory) = self.path.parent() {
            sync_directory(pending_directory);
        }
        Ok(())
    }
}

/// Makes renames in `directory` durable (best effort: some filesystems refuse directory fsync).
fn sync_directory(directory: &Path) {
    if let Ok(handle) = std::fs::File::open(directory) {
        let _ = handle.sync_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sink_spec(path: &Path) -> OperatorSpec {
        let params = BTreeMap::from([("path".to_owned(), serde_json::Value::String(path.display().to_string()))]);
        OperatorSpec::new("out", OperatorKind::FileSink, 1, vec!["counts".to_owned()], params).expect("a valid sink")
    }

    fn record(value: &str) -> Record {
        Record {
            value: value.into(),
            ..Default::default()
        }
    }

    fn published(directory: &Path) -> Vec<String> {
        let mut lines = Vec::new();
        let mut names: Vec<_> = std::fs::read_dir(directory)
            .into_iter()
            .flatten()
            .flatten()
            .map(|entry| entry.path())
            .filter(|path| path.extension().is_some_and(|ext| ext == "txt"))
            .collect();
        names.sort();
        for name in names {
            lines.extend(
                std::fs::read_to_string(name)
                    .unwrap_or_default()
                    .lines()
                    .map(str::to_owned),
            );
        }
        lines
    }

    #[test]
    fn only_committed_checkpoints_are_published_and_restore_publishes_exactly_its_list() {
        let directory = tempfile::tempdir().expect("temp dir");
        let mut sink = FileSink::open(&sink_spec(directory.path()), 0, 7).expect("opens");
        sink.write(&record("a")).expect("write");
        let first = sink.pre_commit(1).expect("pre-commit 1");
        // Records after the barrier go to a new in-progress file while the segment syncs.
        sink.write(&record("b")).expect("write");
        first.segment.make_durable().expect("sync 1");
        let state_1 = first.state;
        sink.pre_commit(2)
            .expect("pre-commit 2")
            .segment
            .make_durable()
            .expect("sync 2");
        assert!(
            published(directory.path()).is_empty(),
            "nothing visible before completion"
        );
        assert_eq!(sink.publish_up_to(1).expect("publish"), 1);
        assert_eq!(published(directory.path()), vec!["a"]);
        // Crash here: checkpoint 2 never completed; a zombie writes a pending file later.
        sink.write(&record("c")).expect("write");
        drop(sink);
        let zombie = FileSink::pending_path(directory.path(), 0, 3, 7);
        std::fs::write(&zombie, "zombie\n").expect("zombie file");

        // Restore from checkpoint 1 at a new epoch: "a" stays once; "b", "c" and the zombie vanish.
        let mut restored = FileSink::open(&sink_spec(directory.path()), 0, 9).expect("opens");
        assert_eq!(restored.restore("out", Some(&state_1)).expect("restore"), 1);
        assert_eq!(published(directory.path()), vec!["a"]);
        let leftovers = std::fs::read_dir(directory.path().join(".pending"))
            .expect("dir")
            .count();
        assert_eq!(leftovers, 0);
    }

    #[test]
    fn a_restore_whose_pre_committed_file_is_gone_names_the_file_and_checkpoint() {
        let directory = tempfile::tempdir().expect("temp dir");
        let mut sink = FileSink::open(&sink_spec(directory.path()), 1, 4).expect("opens");
        sink.write(&record("a")).expect("write");
        let first = sink.pre_commit(11).expect("pre-commit 11");
        first.segment.make_durable().expect("sync");
        sink.write(&record("b")).expect("write");
        let second = sink.pre_commit(12).expect("pre-commit 12");
        second.segment.make_durable().expect("sync");
        // 11 was published before a crash: restoring 12 (which lists 11 and 12) publishes 12 only.
        assert_eq!(sink.publish_up_to(11).expect("publish"), 1);
        drop(sink);
        let mut restored = FileSink::open(&sink_spec(directory.path()), 1, 5).expect("opens");
        assert_eq!(restored.restore("out", Some(&second.state)).expect("restore"), 2);
        assert_eq!(published(directory.path()), vec!["a", "b"]);

        // Restored again from 12 at a newer epoch: both files are published, nothing changes.
        let mut again = FileSink::open(&sink_spec(directory.path()), 1, 6).expect("opens");
        assert_eq!(again.restore("out", Some(&second.state)).expect("restore"), 2);
        assert_eq!(published(directory.path()), vec!["a", "b"]);

        // A checkpoint listing a pre-commit that is neither pending nor published fails at once.
        std::fs::remove_file(FileSink::published_path(directory.path(), 1, 12)).expect("remove");
        let mut lost = FileSink::open(&sink_spec(directory.path()), 1, 7).expect("opens");
        let error = lost
            .restore("out", Some(&second.state))
            .expect_err("its output is gone");
        let text = error.to_string();
        assert!(
            matches!(error, OperatorError::PreCommitLost { checkpoint_id: 12, .. })
                && text.contains("part-1-000000000012-e4")
                && text.contains("checkpoint 12"),
            "{text}"
        );
    }

    fn spec(kind: OperatorKind, params: serde_json::Value) -> OperatorSpec {
        let params = params
            .as_object()
            .map(|object| object.clone().into_iter().collect())
            .unwrap_or_default();
        OperatorSpec::new("op", kind, 1, vec!["in".to_owned()], params).expect("valid params")
    }

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

        #[test]
        fn decimal_matches_to_string(number in proptest::num::u64::ANY) {
            proptest::prop_assert_eq!(decimal_text(number), number.to_string());
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
