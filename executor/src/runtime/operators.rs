//! What each operator does to records, and its checkpointed state. Records are (key, value) text
//! pairs; `key_by` sets the key, keyed operators keep state per key.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use raftstream_coordinator::spec::{OperatorKind, OperatorSpec};
use raftstream_proto::v1 as pb;
use serde::{Deserialize, Serialize};

use super::key_groups::key_group;

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
}

fn text_param<'a>(operator: &'a OperatorSpec, name: &str) -> Option<&'a str> {
    operator.params.get(name).and_then(|value| value.as_str())
}

/// A stateless record transformation.
#[derive(Debug, Clone)]
pub enum Stateless {
    Identity,
    Lowercase,
    Uppercase,
    Trim,
    SplitWords,
    Filter { op: String, value: String },
    KeyByValue,
}

impl Stateless {
    /// The transformation of a map, flat_map, filter or key_by operator.
    pub fn of(operator: &OperatorSpec) -> Result<Stateless, OperatorError> {
        let unsupported = || OperatorError::Unsupported {
            operator: operator.id.clone(),
            kind: operator.kind,
        };
        let function = text_param(operator, "function").unwrap_or_default();
        match operator.kind {
            OperatorKind::Map => match function {
                "identity" => Ok(Stateless::Identity),
                "lowercase" => Ok(Stateless::Lowercase),
                "uppercase" => Ok(Stateless::Uppercase),
                "trim" => Ok(Stateless::Trim),
                other => Err(OperatorError::Param {
                    operator: operator.id.clone(),
                    param: "function".to_owned(),
                    problem: format!("{other:?} is not supported by the distributed runtime yet"),
                }),
            },
            OperatorKind::FlatMap if function == "split_words" => Ok(Stateless::SplitWords),
            OperatorKind::FlatMap => Err(OperatorError::Param {
                operator: operator.id.clone(),
                param: "function".to_owned(),
                problem: format!("{function:?} is not supported by the distributed runtime yet"),
            }),
            OperatorKind::Filter if operator.params.get("field").is_none() => {
                let value = match operator.params.get("value") {
                    Some(serde_json::Value::String(text)) => text.clone(),
                    Some(other) => other.to_string(),
                    None => String::new(),
                };
                Ok(Stateless::Filter {
                    op: text_param(operator, "op").unwrap_or("eq").to_owned(),
                    value,
                })
            }
            OperatorKind::KeyBy if operator.params.get("field").is_none() => Ok(Stateless::KeyByValue),
            _ => Err(unsupported()),
        }
    }

    /// Applies the transformation to one record.
    pub fn apply(&self, record: pb::Record, emit: &mut impl FnMut(pb::Record)) {
        match self {
            Stateless::Identity => emit(record),
            Stateless::Lowercase => emit(pb::Record {
                key: record.key,
                value: record.value.to_lowercase(),
            }),
            Stateless::Uppercase => emit(pb::Record {
                key: record.key,
                value: record.value.to_uppercase(),
            }),
            Stateless::Trim => emit(pb::Record {
                key: record.key,
                value: record.value.trim().to_owned(),
            }),
            Stateless::SplitWords => {
                for word in record
                    .value
                    .split(|c: char| !c.is_alphanumeric())
                    .filter(|word| !word.is_empty())
                {
                    emit(pb::Record {
                        key: record.key.clone(),
                        value: word.to_owned(),
                    });
                }
            }
            Stateless::Filter { op, value } => {
                if compare(op, &record.value, value) {
                    emit(record);
                }
            }
            Stateless::KeyByValue => emit(pb::Record {
                key: record.value.clone(),
                value: record.value,
            }),
        }
    }
}

/// Compares numerically when both sides are numbers, as text otherwise.
fn compare(op: &str, left: &str, right: &str) -> bool {
    use std::cmp::Ordering;
    let ordering = match (left.trim().parse::<f64>(), right.trim().parse::<f64>()) {
        (Ok(a), Ok(b)) => a.partial_cmp(&b),
        _ => Some(left.cmp(right)),
    };
    match op {
        "contains" => left.contains(right),
        "starts_with" => left.starts_with(right),
        "eq" => ordering == Some(Ordering::Equal),
        "ne" => ordering != Some(Ordering::Equal),
        "lt" => ordering == Some(Ordering::Less),
        "le" => matches!(ordering, Some(Ordering::Less | Ordering::Equal)),
        "gt" => ordering == Some(Ordering::Greater),
        "ge" => matches!(ordering, Some(Ordering::Greater | Ordering::Equal)),
        _ => false,
    }
}

/// Keyed running counts, emitted on every update (like Flink's rolling aggregations).
#[derive(Debug, Default)]
pub struct KeyedCount {
    counts: HashMap<String, u64>,
}

/// Checkpointed keyed state: entries grouped by key group, so any subtask range can take its part.
#[derive(Debug, Default, Serialize, Deserialize)]
struct KeyedSnapshot {
    max_parallelism: u32,
    groups: BTreeMap<u32, Vec<(String, u64)>>,
}

impl KeyedCount {
    /// Counts one record and emits (key, new count).
    pub fn apply(&mut self, record: pb::Record, emit: &mut impl FnMut(pb::Record)) {
        // The key is copied only the first time it is seen.
        let count = match self.counts.get_mut(&record.key) {
            Some(count) => {
                *count += 1;
                *count
            }
            None => {
                self.counts.insert(record.key.clone(), 1);
                1
            }
        };
        emit(pb::Record {
            value: count.to_string(),
            key: record.key,
        });
    }

    /// The state as bytes, grouped by key group.
    pub fn snapshot(&self, max_parallelism: u32) -> Vec<u8> {
        let mut snapshot = KeyedSnapshot {
            max_parallelism,
            groups: BTreeMap::new(),
        };
        for (key, count) in &self.counts {
            snapshot
                .groups
                .entry(key_group(key, max_parallelism))
                .or_default()
                .push((key.clone(), *count));
        }
        // Serializing plain maps of strings and numbers cannot fail.
        serde_json::to_vec(&snapshot).unwrap_or_default()
    }

    /// Adds the entries of `bytes` whose key group lies in `groups`.
    pub fn restore(
        &mut self,
        operator: &str,
        bytes: &[u8],
        groups: &std::ops::Range<u32>,
    ) -> Result<(), OperatorError> {
        let snapshot: KeyedSnapshot = serde_json::from_slice(bytes).map_err(|error| OperatorError::State {
            operator: operator.to_owned(),
            problem: format!("unreadable keyed state: {error}"),
        })?;
        for (group, entries) in snapshot.groups {
            if groups.contains(&group) {
                self.counts.extend(entries);
            }
        }
        Ok(())
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

/// The exactly-once file sink of one subtask: two-phase commit per checkpoint. Records go to an
/// in-progress file; at the barrier of checkpoint n it is synced and renamed to a pending file
/// named by subtask, n and epoch (pre-commit); when the coordinator confirms that checkpoint n is
/// committed in the Raft log, and names this placement among those that acknowledged it, pending
/// files up to n are renamed to `part-<subtask>-<n>.txt` (publish). Data of a checkpoint that never
/// completes is never published; a restore publishes exactly the pending files its checkpoint lists
/// and deletes every other pending file of the subtask.
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
        let path = text_param(operator, "path").unwrap_or_default();
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
    pub fn write(&mut self, record: &pb::Record) -> Result<(), OperatorError> {
        use std::io::Write;
        if self.in_progress.is_none() {
            let path = self.in_progress_path();
            let file = std::fs::File::create(&path).map_err(Self::io(&path))?;
            self.in_progress = Some(std::io::BufWriter::with_capacity(256 * 1024, file));
        }
        if let Some(writer) = self.in_progress.as_mut() {
            let written = if record.key.is_empty() {
                writer
                    .write_all(record.value.as_bytes())
                    .and_then(|()| writer.write_all(b"\n"))
            } else {
                writer
                    .write_all(record.key.as_bytes())
                    .and_then(|()| writer.write_all(b"\t"))
                    .and_then(|()| writer.write_all(record.value.as_bytes()))
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

    /// Pre-commits everything written so far as checkpoint `checkpoint_id`; returns the state.
    pub fn pre_commit(&mut self, checkpoint_id: u64) -> Result<Vec<u8>, OperatorError> {
        use std::io::Write;
        let target = Self::pending_path(&self.directory, self.subtask_index, checkpoint_id, self.epoch);
        match self.in_progress.take() {
            Some(mut writer) => {
                let path = self.in_progress_path();
                writer.flush().map_err(Self::io(&path))?;
                writer.get_ref().sync_all().map_err(Self::io(&path))?;
                std::fs::rename(&path, &target).map_err(Self::io(&target))?;
            }
            // An empty segment still gets a file, so publishing is uniform.
            None => {
                let file = std::fs::File::create(&target).map_err(Self::io(&target))?;
                file.sync_all().map_err(Self::io(&target))?;
            }
        }
        self.written = 0;
        self.pending.push(checkpoint_id);
        let snapshot = SinkSnapshot {
            epoch: self.epoch,
            pending: self.pending.clone(),
        };
        Ok(serde_json::to_vec(&snapshot).unwrap_or_default())
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
        OperatorSpec {
            id: "out".to_owned(),
            kind: OperatorKind::FileSink,
            parallelism: 1,
            inputs: vec!["counts".to_owned()],
            params: BTreeMap::from([("path".to_owned(), serde_json::Value::String(path.display().to_string()))]),
        }
    }

    fn record(value: &str) -> pb::Record {
        pb::Record {
            key: String::new(),
            value: value.to_owned(),
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
        let state_1 = sink.pre_commit(1).expect("pre-commit 1");
        sink.write(&record("b")).expect("write");
        sink.pre_commit(2).expect("pre-commit 2");
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
    fn keyed_state_splits_by_key_group_range() {
        let mut counts = KeyedCount::default();
        let mut emitted = Vec::new();
        for word in ["x", "y", "x", "z"] {
            counts.apply(
                pb::Record {
                    key: word.to_owned(),
                    value: word.to_owned(),
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
