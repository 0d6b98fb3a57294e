//! Acknowledging checkpoints: state stored (or inlined) and reported to the leader, and the state
//! files no retained checkpoint needs any more deleted.

use std::collections::VecDeque;
use std::sync::Arc;

use raftstream_api::checkpoint::{CheckpointTrigger, SavepointRef, TaskStateHandle};
use raftstream_api::ids::{CheckpointId, Epoch};
use raftstream_api::messages::{TaskRef, TaskReport};
use raftstream_api::spec::CheckpointConfig;
use tokio::sync::mpsc;

use super::{TaskEnvironment, TaskError, MAX_INLINE_STATE};
use crate::checkpoint::{checksum, delete_each, CheckpointStorage, CheckpointStore};
use crate::runtime::deployment::SubtaskDeployment;
use crate::runtime::exchange::Barrier;
use crate::runtime::operators::SinkSegment;

/// Whether `location` (`<job>/chk-<id>/<operator>-<subtask>-e<epoch>.state`) holds state an
/// earlier epoch of this subtask (`own_files` = `<operator>-<subtask>-e`) wrote for a checkpoint
/// below `below`.
pub(super) fn left_by_predecessor(location: &str, own_files: &str, epoch: Epoch, below: CheckpointId) -> bool {
    let mut parts = location.rsplit('/');
    let (Some(file), Some(directory)) = (parts.next(), parts.next()) else {
        return false;
    };
    let checkpoint_id = directory.strip_prefix("chk-").and_then(|id| id.parse::<u64>().ok());
    let written_epoch = file
        .strip_prefix(own_files)
        .and_then(|rest| rest.strip_suffix(".state"))
        .and_then(|written| written.parse::<u64>().ok());
    matches!((checkpoint_id, written_epoch), (Some(id), Some(written)) if id < below.0 && written < epoch.0)
}

pub(super) struct Acknowledger<'a> {
    pub(super) deployment: &'a SubtaskDeployment,
    environment: &'a TaskEnvironment,
    files: Arc<std::sync::Mutex<StateFiles>>,
    /// The latest acknowledgement still being made in the background; each waits for the one
    /// before it, so this subtask's acknowledgements leave in checkpoint order.
    in_flight: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// The first background acknowledgement that failed: checkpoint id and why.
    failure: Arc<std::sync::Mutex<Option<(CheckpointId, String)>>>,
}

/// The state files this subtask wrote, so they are deleted once no retained checkpoint needs them:
/// those of aborted checkpoints, and those of completed ones older than the `retained` newest.
/// Files the subtask's predecessors (earlier epochs, before a restart) left are not known to it;
/// it finds them by listing, once the job no longer retains the checkpoints they belong to.
#[derive(Debug, Default)]
pub(super) struct StateFiles {
    pub(super) written: std::collections::BTreeMap<CheckpointId, String>,
    pub(super) completed: VecDeque<CheckpointId>,
    pub(super) retained: usize,
    /// The first checkpoint this subtask saw completed: predecessors stopped before it.
    pub(super) first_completed: Option<CheckpointId>,
    /// Predecessors' files below this checkpoint are already deleted.
    pub(super) swept_below: CheckpointId,
}

impl StateFiles {
    /// Whether to delete predecessors' files now, and below which checkpoint: whenever the
    /// job's oldest retained checkpoint moves up, until it passes this subtask's first completed
    /// one (at most `retained` listings per subtask).
    pub(super) fn predecessor_sweep_due(
        &mut self,
        checkpoint_id: CheckpointId,
        oldest_retained: CheckpointId,
    ) -> Option<CheckpointId> {
        let first = *self.first_completed.get_or_insert(checkpoint_id);
        if self.swept_below >= first || oldest_retained <= self.swept_below {
            return None;
        }
        self.swept_below = oldest_retained;
        Some(oldest_retained)
    }

    /// Checkpoint `checkpoint_id` completed: the files that are no longer needed.
    pub(super) fn completed(&mut self, checkpoint_id: CheckpointId) -> Vec<String> {
        if self.completed.back().is_some_and(|last| *last >= checkpoint_id) {
            return Vec::new();
        }
        self.completed.push_back(checkpoint_id);
        while self.completed.len() > self.retained.max(1) {
            self.completed.pop_front();
        }
        let oldest_kept = self.completed.front().copied().unwrap_or(checkpoint_id);
        let obsolete: Vec<CheckpointId> = self
            .written
            .keys()
            .copied()
            .filter(|id| *id < oldest_kept || (*id < checkpoint_id && !self.completed.contains(id)))
            .collect();
        obsolete.iter().filter_map(|id| self.written.remove(id)).collect()
    }
}

impl<'a> Acknowledger<'a> {
    pub(super) fn new(deployment: &'a SubtaskDeployment, environment: &'a TaskEnvironment) -> Self {
        Acknowledger {
            deployment,
            environment,
            files: Arc::new(std::sync::Mutex::new(StateFiles {
                retained: deployment.graph.checkpoint.retained as usize,
                ..StateFiles::default()
            })),
            in_flight: std::sync::Mutex::new(None),
            failure: Arc::new(std::sync::Mutex::new(None)),
        }
    }

    /// Deletes, in the background, the state files no retained checkpoint needs any more: its
    /// own, and those its predecessors left below `oldest_retained`.
    pub(super) fn checkpoint_completed(&self, checkpoint_id: CheckpointId, oldest_retained: CheckpointId) {
        let (obsolete, sweep_below) = match self.files.lock() {
            Ok(mut files) => (
                files.completed(checkpoint_id),
                files.predecessor_sweep_due(checkpoint_id, oldest_retained),
            ),
            Err(_) => return,
        };
        if obsolete.is_empty() && sweep_below.is_none() {
            return;
        }
        let store = self.environment.store.clone();
        let deployment = self.deployment;
        let job_id = deployment.job_id.to_string();
        let own_files = format!("{}-{}-e", deployment.operator_id, deployment.subtask_index);
        let epoch = deployment.epoch;
        self.environment.tracker.spawn(async move {
            let mut obsolete = obsolete;
            if let Some(below) = sweep_below {
                match store.list(&job_id).await {
                    Ok(locations) => obsolete.extend(
                        locations
                            .into_iter()
                            .filter(|location| left_by_predecessor(location, &own_files, epoch, below)),
                    ),
                    Err(error) => tracing::warn!(error = %raftstream_observability::chain(&error), "could not list checkpoint state"),
                }
            }
            delete_each(store.as_ref(), &obsolete).await;
        });
    }

    /// Asks the leader for a checkpoint: this source emitted half its share of the job's record
    /// or byte bound since the last completed checkpoint.
    pub(super) fn report_checkpoint_wanted(&self, trigger: CheckpointTrigger) {
        // A lost request only delays the checkpoint: the source asks again after the next
        // barrier or abort, and waits once it reached its share.
        let _ = self.environment.reports.try_send(TaskReport::CheckpointWanted {
            task: self.deployment.task_ref(),
            trigger,
        });
    }

    /// The job's checkpoint configuration and the parallelism of this subtask's operator.
    pub(super) fn checkpoint_config(&self) -> (&CheckpointConfig, u32) {
        let graph = &self.deployment.graph;
        let parallelism = graph
            .operator(self.deployment.operator_id.as_str())
            .map_or(1, |operator| operator.parallelism);
        (&graph.checkpoint, parallelism)
    }

    /// Tells the leader this source reached the end of its input.
    pub(super) fn report_input_ended(&self) {
        // A full queue means the session is down or far behind: a lost report only delays
        // (the checkpoint times out, the end of input is seen at the next interval).
        let _ = self
            .environment
            .reports
            .try_send(TaskReport::InputEnded(self.deployment.task_ref()));
    }

    /// Acknowledges `checkpoint_id` to the leader once its state is stored (inline when tiny) and
    /// `segment`, a sink's pre-committed output, is synced. That part runs in the background, in
    /// order after this subtask's earlier acknowledgements, so the task forwards the barrier and
    /// goes on with its records meanwhile (the asynchronous phase of a Flink snapshot): waiting
    /// for fsync inside the task stalled the whole pipeline at every checkpoint. Fails when an
    /// earlier background acknowledgement failed; after such a failure nothing more is
    /// acknowledged, since a later checkpoint's sink state lists the segment that did not sync.
    pub(super) fn acknowledge(
        &self,
        barrier: Barrier,
        state: Vec<u8>,
        source_offset: Option<u64>,
        segment: Option<SinkSegment>,
    ) -> Result<(), TaskError> {
        self.failed()?;
        let checkpoint_id = barrier.checkpoint_id;
        let deployment = self.deployment;
        let location = (state.len() > MAX_INLINE_STATE).then(|| {
            let file = format!(
                "{}-{}-e{}.state",
                deployment.operator_id, deployment.subtask_index, deployment.epoch
            );
            if barrier.savepoint {
                let savepoint = SavepointRef {
                    job_id: deployment.job_id,
                    savepoint_id: checkpoint_id,
                };
                format!("{}/{file}", savepoint.state_prefix())
            } else {
                format!("{}/chk-{checkpoint_id}/{file}", deployment.job_id)
            }
        });
        let work = BackgroundAck {
            checkpoint_id,
            // A savepoint's files are the user's: no retention of this subtask deletes them.
            tracked: !barrier.savepoint,
            task: deployment.task_ref(),
            state,
            location,
            source_offset,
            segment,
            store: self.environment.store.clone(),
            reports: self.environment.reports.clone(),
            files: self.files.clone(),
        };
        let failure = self.failure.clone();
        let mut in_flight = self.in_flight.lock().map_err(|_| TaskError::Snapshot {
            checkpoint_id,
            problem: "acknowledgement queue poisoned".to_owned(),
        })?;
        let previous = in_flight.take();
        let acknowledging = async move {
            if let Some(previous) = previous {
                let _ = previous.await;
            }
            if failure.lock().map(|failed| failed.is_some()).unwrap_or(true) {
                return;
            }
            if let Err(error) = work.run().await {
                tracing::error!(checkpoint_id = checkpoint_id.0, error = %raftstream_observability::chain(&error), "checkpoint not acknowledged");
                if let Ok(mut failed) = failure.lock() {
                    failed.get_or_insert((checkpoint_id, error.to_string()));
                }
            }
        };
        // Inside the subtask's span: its logs carry the job, operator, subtask and checkpoint.
        *in_flight = Some(tokio::spawn(tracing::Instrument::instrument(
            acknowledging,
            tracing::info_span!("checkpoint", checkpoint_id = checkpoint_id.0),
        )));
        Ok(())
    }

    /// The error of a failed background acknowledgement, if one failed.
    fn failed(&self) -> Result<(), TaskError> {
        match self.failure.lock() {
            Ok(failed) => match &*failed {
                Some((checkpoint_id, problem)) => Err(TaskError::Snapshot {
                    checkpoint_id: *checkpoint_id,
                    problem: problem.clone(),
                }),
                None => Ok(()),
            },
            Err(_) => Err(TaskError::Snapshot {
                checkpoint_id: CheckpointId::default(),
                problem: "acknowledgement state poisoned".to_owned(),
            }),
        }
    }

    /// Waits until every acknowledgement started so far was sent (or failed): a task finishing
    /// lets nothing it owes the leader go unsent.
    pub(super) async fn settle(&self) -> Result<(), TaskError> {
        let in_flight = self.in_flight.lock().ok().and_then(|mut in_flight| in_flight.take());
        if let Some(in_flight) = in_flight {
            let _ = in_flight.await;
        }
        self.failed()
    }
}

impl Drop for Acknowledger<'_> {
    /// A cancelled or failed task's newest pending acknowledgement is not sent; one already being
    /// stored may still finish and be sent, which is harmless: a replaced placement's epoch is
    /// fenced by the leader.
    fn drop(&mut self) {
        if let Some(in_flight) = self.in_flight.get_mut().ok().and_then(Option::take) {
            in_flight.abort();
        }
    }
}

/// The background part of one acknowledgement.
struct BackgroundAck {
    checkpoint_id: CheckpointId,
    task: TaskRef,
    state: Vec<u8>,
    /// Where large state goes in the checkpoint store; `None` inlines it.
    location: Option<String>,
    /// Whether the file joins this subtask's checkpoint files, deleted once not retained.
    tracked: bool,
    source_offset: Option<u64>,
    segment: Option<SinkSegment>,
    store: Arc<CheckpointStorage>,
    reports: mpsc::Sender<TaskReport>,
    files: Arc<std::sync::Mutex<StateFiles>>,
}

impl BackgroundAck {
    async fn run(self) -> Result<(), TaskError> {
        let checkpoint_id = self.checkpoint_id;
        let snapshot_error = |problem: String| TaskError::Snapshot { checkpoint_id, problem };
        if let Some(segment) = self.segment {
            tokio::task::spawn_blocking(move || segment.make_durable())
                .await
                .map_err(|join_error| snapshot_error(join_error.to_string()))??;
        }
        let size_bytes = self.state.len() as u64;
        let state = match self.location {
            None => TaskStateHandle {
                subtask: self.task.subtask.clone(),
                location: String::new(),
                checksum: crate::blocking::off_the_workers(|| checksum(&self.state)),
                inline_state: self.state,
                size_bytes,
            },
            Some(location) => {
                let stored = self
                    .store
                    .put(&location, self.state)
                    .await
                    .map_err(|error| snapshot_error(error.to_string()))?;
                if self.tracked {
                    if let Ok(mut files) = self.files.lock() {
                        files.written.insert(checkpoint_id, stored.location.clone());
                    }
                }
                TaskStateHandle {
                    subtask: self.task.subtask.clone(),
                    location: stored.location,
                    inline_state: Vec::new(),
                    size_bytes: stored.size_bytes,
                    checksum: stored.checksum,
                }
            }
        };
        // A lost ack only lets the checkpoint time out; the job goes on. A full queue means the
        // session is down or far behind.
        let _ = self.reports.try_send(TaskReport::CheckpointAck {
            task: self.task,
            checkpoint_id,
            state,
            source_offset: self.source_offset,
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use raftstream_api::dial::DialAddresses;
    use raftstream_api::ids::{Epoch, JobId, OperatorId};
    use raftstream_api::spec::parse_job_spec;

    use super::*;
    use crate::runtime::exchange::ExchangeHub;

    fn counting_subtask() -> SubtaskDeployment {
        let spec = r#"{"name": "wc", "operators": [
            {"id": "lines", "kind": "generator"},
            {"id": "keyed", "kind": "key_by", "inputs": ["lines"]},
            {"id": "counts", "kind": "count", "inputs": ["keyed"]},
            {"id": "out", "kind": "print", "inputs": ["counts"]}]}"#;
        let graph = match parse_job_spec(spec) {
            Ok(graph) => graph,
            Err(error) => panic!("invalid test spec: {error}"),
        };
        SubtaskDeployment {
            job_id: JobId::from_number(1),
            operator_id: OperatorId::from("counts"),
            subtask_index: 0,
            epoch: Epoch(3),
            graph: Arc::new(graph),
            placement: Vec::new(),
            restore_from: None,
        }
    }

    fn environment(store_root: &std::path::Path) -> (TaskEnvironment, mpsc::Receiver<TaskReport>) {
        let (reports, received) = mpsc::channel(16);
        let store = Arc::new(CheckpointStorage::local_directory(store_root));
        let functions = crate::runtime::user_functions::FunctionRuntime::new(
            store.clone(),
            &store_root.with_extension("function-cache"),
            64 << 20,
        )
        .expect("function runtime");
        let environment = TaskEnvironment {
            hub: ExchangeHub::default(),
            local_address: String::new(),
            dial: DialAddresses::new(std::collections::BTreeMap::new()),
            store,
            reports,
            tracker: tokio_util::task::TaskTracker::new(),
            metrics: crate::runtime::metrics::MetricsRegistry::default(),
            functions: Arc::new(functions),
        };
        (environment, received)
    }

    fn checkpoint(checkpoint_id: u64) -> Barrier {
        Barrier {
            checkpoint_id: CheckpointId(checkpoint_id),
            savepoint: false,
        }
    }

    #[tokio::test]
    async fn a_savepoints_state_goes_apart_and_no_later_checkpoint_deletes_it() {
        let directory = tempfile::tempdir().expect("temp dir");
        let deployment = counting_subtask();
        let (environment, mut received) = environment(directory.path());
        let acknowledger = Acknowledger::new(&deployment, &environment);
        let savepoint = Barrier {
            checkpoint_id: CheckpointId(2),
            savepoint: true,
        };
        for barrier in [
            checkpoint(1),
            savepoint,
            checkpoint(3),
            checkpoint(4),
            checkpoint(5),
            checkpoint(6),
        ] {
            acknowledger
                .acknowledge(barrier, vec![7; MAX_INLINE_STATE + 1], None, None)
                .expect("starts");
        }
        acknowledger.settle().await.expect("acknowledged");
        assert_eq!(acknowledged_ids(&mut received), vec![1, 2, 3, 4, 5, 6]);
        let saved = directory.path().join("savepoints/job-1/sp-2/counts-0-e3.state");
        assert!(saved.is_file());
        assert!(!directory.path().join("job-1/chk-2").exists());
        // 3 to 6 complete, 3 retained: 1 (never completed) and 3 go, the savepoint stays.
        for completed in [3, 4, 5, 6] {
            acknowledger.checkpoint_completed(CheckpointId(completed), CheckpointId(completed.saturating_sub(2)));
        }
        environment.tracker.close();
        environment.tracker.wait().await;
        assert!(!directory.path().join("job-1/chk-1/counts-0-e3.state").exists());
        assert!(!directory.path().join("job-1/chk-3/counts-0-e3.state").exists());
        assert!(directory.path().join("job-1/chk-4/counts-0-e3.state").is_file());
        assert!(saved.is_file(), "the savepoint's state is kept");
        assert!(
            !left_by_predecessor(
                "savepoints/job-1/sp-2/counts-0-e1.state",
                "counts-0-e",
                Epoch(3),
                CheckpointId(10)
            ),
            "a predecessor's sweep never takes a savepoint's file"
        );
    }

    fn acknowledged_ids(received: &mut mpsc::Receiver<TaskReport>) -> Vec<u64> {
        let mut ids = Vec::new();
        while let Ok(report) = received.try_recv() {
            if let TaskReport::CheckpointAck { checkpoint_id, .. } = report {
                ids.push(checkpoint_id.0);
            }
        }
        ids
    }

    #[tokio::test]
    async fn background_acknowledgements_leave_in_checkpoint_order_after_their_state_is_stored() {
        let directory = tempfile::tempdir().expect("temp dir");
        let deployment = counting_subtask();
        let (environment, mut received) = environment(directory.path());
        let acknowledger = Acknowledger::new(&deployment, &environment);
        // 1 goes to the store (slower), 2 is inline: 2 must still not overtake 1.
        acknowledger
            .acknowledge(checkpoint(1), vec![7; MAX_INLINE_STATE + 1], None, None)
            .expect("starts");
        acknowledger
            .acknowledge(checkpoint(2), vec![1], None, None)
            .expect("starts");
        acknowledger.settle().await.expect("both acknowledged");
        assert_eq!(acknowledged_ids(&mut received), vec![1, 2]);
        assert!(directory.path().join("job-1/chk-1/counts-0-e3.state").is_file());
    }

    #[tokio::test]
    async fn after_a_failed_background_acknowledgement_nothing_more_is_acknowledged() {
        let directory = tempfile::tempdir().expect("temp dir");
        // The store's root is a file: writing state under it fails.
        let not_a_directory = directory.path().join("store");
        std::fs::write(&not_a_directory, b"").expect("file");
        let deployment = counting_subtask();
        let (environment, mut received) = environment(&not_a_directory);
        let acknowledger = Acknowledger::new(&deployment, &environment);
        acknowledger
            .acknowledge(checkpoint(1), vec![7; MAX_INLINE_STATE + 1], None, None)
            .expect("starts");
        // Whether this call already sees the failure depends on timing; either way it must not
        // be acknowledged, since it would stand on a checkpoint that was not stored.
        let _ = acknowledger.acknowledge(checkpoint(2), vec![1], None, None);
        let failure = acknowledger.settle().await.expect_err("the store failed");
        assert!(
            matches!(
                failure,
                TaskError::Snapshot {
                    checkpoint_id: CheckpointId(1),
                    ..
                }
            ),
            "{failure}"
        );
        assert!(
            acknowledger.acknowledge(checkpoint(3), vec![1], None, None).is_err(),
            "later checkpoints fail the task"
        );
        acknowledger.settle().await.expect_err("still failed");
        assert!(acknowledged_ids(&mut received).is_empty());
    }

    #[test]
    fn state_files_of_aborted_and_no_longer_retained_checkpoints_are_obsolete() {
        let mut files = StateFiles {
            retained: 2,
            ..StateFiles::default()
        };
        for id in 1..=5 {
            files.written.insert(CheckpointId(id), format!("chk-{id}"));
        }
        // 2 was aborted: once 3 completes nothing needs it.
        assert!(files.completed(CheckpointId(1)).is_empty());
        assert_eq!(files.completed(CheckpointId(3)), vec!["chk-2"]);
        // 4 completes: keep 3 and 4, drop 1.
        assert_eq!(files.completed(CheckpointId(4)), vec!["chk-1"]);
        assert!(
            files.completed(CheckpointId(4)).is_empty(),
            "a repeated notice changes nothing"
        );
        assert_eq!(files.completed(CheckpointId(5)), vec!["chk-3"]);
        assert_eq!(
            files.written.keys().copied().collect::<Vec<_>>(),
            vec![CheckpointId(4), CheckpointId(5)]
        );
    }

    #[test]
    fn predecessors_files_are_swept_as_the_retained_window_passes_the_first_completion() {
        let mut files = StateFiles::default();
        // Restarted after checkpoint 10; 3 retained. First completion 12: 10 and 11 still retained.
        assert_eq!(
            files.predecessor_sweep_due(CheckpointId(12), CheckpointId(10)),
            Some(CheckpointId(10))
        );
        assert_eq!(
            files.predecessor_sweep_due(CheckpointId(13), CheckpointId(10)),
            None,
            "the window did not move"
        );
        assert_eq!(
            files.predecessor_sweep_due(CheckpointId(14), CheckpointId(12)),
            Some(CheckpointId(12))
        );
        // Past the first completion: everything predecessors left is gone, no more listing.
        assert_eq!(files.predecessor_sweep_due(CheckpointId(15), CheckpointId(13)), None);
        assert_eq!(files.predecessor_sweep_due(CheckpointId(20), CheckpointId(18)), None);
        // Not told (an older leader): never sweeps.
        let mut untold = StateFiles::default();
        assert_eq!(untold.predecessor_sweep_due(CheckpointId(5), CheckpointId(0)), None);
    }

    #[test]
    fn only_earlier_epochs_files_of_the_same_subtask_below_the_window_are_predecessors() {
        let own = "counts-1-e";
        assert!(left_by_predecessor(
            "job-1/chk-4/counts-1-e2.state",
            own,
            Epoch(3),
            CheckpointId(5)
        ));
        assert!(
            !left_by_predecessor("job-1/chk-5/counts-1-e2.state", own, Epoch(3), CheckpointId(5)),
            "still retained"
        );
        assert!(
            !left_by_predecessor("job-1/chk-4/counts-1-e3.state", own, Epoch(3), CheckpointId(5)),
            "its own"
        );
        assert!(
            !left_by_predecessor("job-1/chk-4/counts-1-e4.state", own, Epoch(3), CheckpointId(5)),
            "a newer one's"
        );
        assert!(
            !left_by_predecessor("job-1/chk-4/counts-11-e2.state", own, Epoch(3), CheckpointId(5)),
            "another subtask"
        );
        assert!(!left_by_predecessor(
            "job-1/chk-4/counts-1-0-e2.state",
            own,
            Epoch(3),
            CheckpointId(5)
        ));
        assert!(!left_by_predecessor(
            "job-1/chk-x/counts-1-e2.state",
            own,
            Epoch(3),
            CheckpointId(5)
        ));
        assert!(!left_by_predecessor(
            "counts-1-e2.state",
            own,
            Epoch(3),
            CheckpointId(5)
        ));
    }
}
