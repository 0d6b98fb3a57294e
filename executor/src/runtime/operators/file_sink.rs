//! The exactly-once file sink: two-phase commit of output files per checkpoint.

use raftstream_api::ids::{CheckpointId, Epoch};
use std::path::{Path, PathBuf};

use raftstream_api::spec::{OperatorConfig, OperatorSpec};
use serde::{Deserialize, Serialize};

use super::OperatorError;
use crate::runtime::record::Record;

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
    epoch: Epoch,
    in_progress: Option<std::io::BufWriter<std::fs::File>>,
    written: u64,
    /// Lines and bytes written by this sink since it opened, for `/metrics`.
    lines_total: u64,
    bytes_total: u64,
    /// Pre-committed, not yet published checkpoint ids.
    pending: Vec<CheckpointId>,
}

/// The sink's checkpointed state: the pending files to publish if this checkpoint is restored.
#[derive(Debug, Default, Serialize, Deserialize)]
struct SinkSnapshot {
    epoch: Epoch,
    pending: Vec<CheckpointId>,
}

impl FileSink {
    /// A sink writing under the `path` param: a directory every executor of the job can reach (a
    /// relative path is taken from the executor's working directory).
    pub fn open(operator: &OperatorSpec, subtask_index: u32, epoch: Epoch) -> Result<FileSink, OperatorError> {
        let OperatorConfig::FileSink { path } = &operator.config else {
            return Err(OperatorError::Unsupported {
                operator: operator.id.to_string(),
                kind: operator.kind,
            });
        };
        let directory = std::path::absolute(path).map_err(|error| OperatorError::Param {
            operator: operator.id.to_string(),
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
            lines_total: 0,
            bytes_total: 0,
            pending: Vec::new(),
        })
    }

    fn in_progress_path(&self) -> PathBuf {
        self.directory
            .join(".pending")
            .join(format!("part-{}-e{}.inprogress", self.subtask_index, self.epoch))
    }

    fn pending_path(directory: &Path, subtask_index: u32, checkpoint_id: CheckpointId, epoch: Epoch) -> PathBuf {
        directory
            .join(".pending")
            .join(format!("part-{subtask_index}-{checkpoint_id:012}-e{epoch}"))
    }

    fn published_path(directory: &Path, subtask_index: u32, checkpoint_id: CheckpointId) -> PathBuf {
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

    /// Appends the record (`key`, `value`) as [`FileSink::write`] would, from borrowed text.
    pub fn write_text(&mut self, key: &str, value: &str) -> Result<(), OperatorError> {
        self.write_line(key, value.as_bytes())
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
            self.lines_total += 1;
            let separators = if key.is_empty() { 1 } else { 2 };
            self.bytes_total += (key.len() + value.len() + separators) as u64;
        }
        Ok(())
    }

    /// Lines and bytes written since the sink opened (committed or not).
    pub fn totals(&self) -> (u64, u64) {
        (self.lines_total, self.bytes_total)
    }

    /// Whether records were written since the last pre-commit.
    pub fn has_uncommitted_data(&self) -> bool {
        self.written > 0
    }

    /// Pre-commits everything written so far as checkpoint `checkpoint_id`: the segment is
    /// flushed and renamed to its pending name, and new records go to a fresh in-progress file.
    /// The segment is not durable yet: the caller syncs it ([`SinkSegment::make_durable`]) before
    /// acknowledging the checkpoint, which may happen off the task while records keep flowing.
    pub fn pre_commit(&mut self, checkpoint_id: CheckpointId) -> Result<PreCommitted, OperatorError> {
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
    pub fn publish_up_to(&mut self, checkpoint_id: CheckpointId) -> Result<usize, OperatorError> {
        let (ready, later): (Vec<CheckpointId>, Vec<CheckpointId>) =
            self.pending.iter().partition(|id| **id <= checkpoint_id);
        for id in &ready {
            Self::publish(&self.directory, self.subtask_index, *id, self.epoch)?;
        }
        self.pending = later;
        if !ready.is_empty() {
            sync_directory(&self.directory);
        }
        Ok(ready.len())
    }

    fn publish(
        directory: &Path,
        subtask_index: u32,
        checkpoint_id: CheckpointId,
        epoch: Epoch,
    ) -> Result<(), OperatorError> {
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

    /// Restores this subtask of a sink now at `parallelism` from a completed checkpoint's sink
    /// states (`states`: subtask index and state), which may come from a placement at another
    /// parallelism: this subtask also adopts the indexes that no longer exist (at or above
    /// `parallelism`) and map to it (index % parallelism). It publishes what their states list,
    /// then deletes every other pending or in-progress file of its own and the adopted indexes.
    pub fn restore(
        &mut self,
        operator: &str,
        parallelism: u32,
        states: &[(u32, &[u8])],
    ) -> Result<usize, OperatorError> {
        let own = self.subtask_index;
        let is_mine = |index: u32| restores_index(index, own, parallelism);
        let mut published = 0;
        for (index, bytes) in states {
            if !is_mine(*index) {
                continue;
            }
            let snapshot: SinkSnapshot = serde_json::from_slice(bytes).map_err(|error| OperatorError::State {
                operator: operator.to_owned(),
                problem: format!("unreadable sink state of subtask {index}: {error}"),
            })?;
            for id in &snapshot.pending {
                Self::publish(&self.directory, *index, *id, snapshot.epoch)?;
                published += 1;
            }
        }
        let pending_dir = self.directory.join(".pending");
        let entries = std::fs::read_dir(&pending_dir).map_err(Self::io(&pending_dir))?;
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if pending_file_index(&name).is_some_and(is_mine) {
                let _ = std::fs::remove_file(entry.path());
            }
        }
        sync_directory(&self.directory);
        Ok(published)
    }
}

/// Whether sink subtask `own` of a placement at `parallelism` restores the output of subtask
/// `index` of an earlier placement: its own index, and the indexes a smaller placement no longer
/// has that map to it (index % parallelism), so every old index has exactly one restorer.
pub fn restores_index(index: u32, own: u32, parallelism: u32) -> bool {
    let parallelism = parallelism.max(1);
    index == own || (index >= parallelism && index % parallelism == own)
}

/// The subtask index in a pending or in-progress file's name (`part-<index>-...`).
fn pending_file_index(name: &str) -> Option<u32> {
    let rest = name.strip_prefix("part-")?;
    let (index, _) = rest.split_once('-')?;
    index.parse().ok()
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
    use std::collections::BTreeMap;

    use raftstream_api::spec::OperatorKind;

    use super::super::test_support::record;
    use super::*;
    use raftstream_api::ids::OperatorId;

    fn sink_spec(path: &Path) -> OperatorSpec {
        let params = BTreeMap::from([("path".to_owned(), serde_json::Value::String(path.display().to_string()))]);
        OperatorSpec::new(
            "out",
            OperatorKind::FileSink,
            1,
            vec![OperatorId::from("counts")],
            params,
        )
        .expect("a valid sink")
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
        let mut sink = FileSink::open(&sink_spec(directory.path()), 0, Epoch(7)).expect("opens");
        sink.write(&record("a")).expect("write");
        let first = sink.pre_commit(CheckpointId(1)).expect("pre-commit 1");
        // Records after the barrier go to a new in-progress file while the segment syncs.
        sink.write(&record("b")).expect("write");
        first.segment.make_durable().expect("sync 1");
        let state_1 = first.state;
        sink.pre_commit(CheckpointId(2))
            .expect("pre-commit 2")
            .segment
            .make_durable()
            .expect("sync 2");
        assert!(
            published(directory.path()).is_empty(),
            "nothing visible before completion"
        );
        assert_eq!(sink.publish_up_to(CheckpointId(1)).expect("publish"), 1);
        assert_eq!(published(directory.path()), vec!["a"]);
        // Crash here: checkpoint 2 never completed; a zombie writes a pending file later.
        sink.write(&record("c")).expect("write");
        drop(sink);
        let zombie = FileSink::pending_path(directory.path(), 0, CheckpointId(3), Epoch(7));
        std::fs::write(&zombie, "zombie\n").expect("zombie file");

        // Restore from checkpoint 1 at a new epoch: "a" stays once; "b", "c" and the zombie vanish.
        let mut restored = FileSink::open(&sink_spec(directory.path()), 0, Epoch(9)).expect("opens");
        assert_eq!(restored.restore("out", 1, &[(0, &state_1)]).expect("restore"), 1);
        assert_eq!(published(directory.path()), vec!["a"]);
        let leftovers = std::fs::read_dir(directory.path().join(".pending"))
            .expect("dir")
            .count();
        assert_eq!(leftovers, 0);
    }

    #[test]
    fn a_restore_whose_pre_committed_file_is_gone_names_the_file_and_checkpoint() {
        let directory = tempfile::tempdir().expect("temp dir");
        let mut sink = FileSink::open(&sink_spec(directory.path()), 1, Epoch(4)).expect("opens");
        sink.write(&record("a")).expect("write");
        let first = sink.pre_commit(CheckpointId(11)).expect("pre-commit 11");
        first.segment.make_durable().expect("sync");
        sink.write(&record("b")).expect("write");
        let second = sink.pre_commit(CheckpointId(12)).expect("pre-commit 12");
        second.segment.make_durable().expect("sync");
        // 11 was published before a crash: restoring 12 (which lists 11 and 12) publishes 12 only.
        assert_eq!(sink.publish_up_to(CheckpointId(11)).expect("publish"), 1);
        drop(sink);
        let mut restored = FileSink::open(&sink_spec(directory.path()), 1, Epoch(5)).expect("opens");
        assert_eq!(restored.restore("out", 2, &[(1, &second.state)]).expect("restore"), 2);
        assert_eq!(published(directory.path()), vec!["a", "b"]);

        // Restored again from 12 at a newer epoch: both files are published, nothing changes.
        let mut again = FileSink::open(&sink_spec(directory.path()), 1, Epoch(6)).expect("opens");
        assert_eq!(again.restore("out", 2, &[(1, &second.state)]).expect("restore"), 2);
        assert_eq!(published(directory.path()), vec!["a", "b"]);

        // A checkpoint listing a pre-commit that is neither pending nor published fails at once.
        std::fs::remove_file(FileSink::published_path(directory.path(), 1, CheckpointId(12))).expect("remove");
        let mut lost = FileSink::open(&sink_spec(directory.path()), 1, Epoch(7)).expect("opens");
        let error = lost
            .restore("out", 2, &[(1, &second.state)])
            .expect_err("its output is gone");
        let text = error.to_string();
        assert!(
            matches!(
                error,
                OperatorError::PreCommitLost {
                    checkpoint_id: CheckpointId(12),
                    ..
                }
            ) && text.contains("part-1-000000000012-e4")
                && text.contains("checkpoint 12"),
            "{text}"
        );
    }

    #[test]
    fn a_smaller_placement_adopts_the_output_of_the_indexes_it_no_longer_has() {
        let directory = tempfile::tempdir().expect("temp dir");
        let spec = sink_spec(directory.path());
        // Three subtasks pre-commit checkpoint 4, which completes; the job is rescaled to 2 before
        // any of them published, and index 2's records after the barrier are still in progress.
        let mut states = Vec::new();
        for index in 0..3 {
            let mut sink = FileSink::open(&spec, index, Epoch(1)).expect("opens");
            sink.write(&record(&format!("from-{index}"))).expect("write");
            let committed = sink.pre_commit(CheckpointId(4)).expect("pre-commit");
            committed.segment.make_durable().expect("sync");
            sink.write(&record("after the barrier")).expect("write");
            states.push((index, committed.state));
        }
        let states: Vec<(u32, &[u8])> = states.iter().map(|(index, state)| (*index, state.as_slice())).collect();

        let mut first = FileSink::open(&spec, 0, Epoch(2)).expect("opens");
        // Index 0 restores itself and adopts index 2 (2 % 2 == 0), not index 1.
        assert_eq!(first.restore("out", 2, &states).expect("restore"), 2);
        let mut second = FileSink::open(&spec, 1, Epoch(2)).expect("opens");
        assert_eq!(second.restore("out", 2, &states).expect("restore"), 1);
        assert_eq!(published(directory.path()), vec!["from-0", "from-1", "from-2"]);
        let leftovers: Vec<_> = std::fs::read_dir(directory.path().join(".pending"))
            .expect("dir")
            .flatten()
            .map(|entry| entry.file_name())
            .collect();
        assert!(
            leftovers.is_empty(),
            "in-progress output of every old index is gone: {leftovers:?}"
        );
        assert_eq!(pending_file_index("part-12-000000000004-e3"), Some(12));
        assert_eq!(pending_file_index("part-1-e3.inprogress"), Some(1));
        assert_eq!(pending_file_index("other"), None);
        // Every index of a placement at 5 has exactly one restorer at 2, and each at 2 itself.
        for index in 0..5 {
            assert_eq!((0..2).filter(|own| restores_index(index, *own, 2)).count(), 1);
        }
        assert!(restores_index(0, 0, 1) && restores_index(3, 0, 1));
        assert!(!restores_index(1, 0, 4) && !restores_index(0, 1, 2));
    }
}
