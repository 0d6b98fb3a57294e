//! Acknowledging checkpoints: state stored (or inlined) and reported to the leader, and the state
//! files no retained checkpoint needs any more deleted.

use super::*;
use crate::checkpoint::delete_each;

/// Whether `location` (`<job>/chk-<id>/<operator>-<subtask>-e<epoch>.state`) holds state an
/// earlier epoch of this subtask (`own_files` = `<operator>-<subtask>-e`) wrote for a checkpoint
/// below `below`.
pub(super) fn left_by_predecessor(location: &str, own_files: &str, epoch: u64, below: u64) -> bool {
    let mut parts = location.rsplit('/');
    let (Some(file), Some(directory)) = (parts.next(), parts.next()) else {
        return false;
    };
    let checkpoint_id = directory.strip_prefix("chk-").and_then(|id| id.parse::<u64>().ok());
    let written_epoch = file
        .strip_prefix(own_files)
        .and_then(|rest| rest.strip_suffix(".state"))
        .and_then(|written| written.parse::<u64>().ok());
    matches!((checkpoint_id, written_epoch), (Some(id), Some(written)) if id < below && written < epoch)
}

pub(super) struct Acknowledger<'a> {
    pub(super) deployment: &'a SubtaskDeployment,
    pub(super) environment: &'a TaskEnvironment,
    pub(super) files: std::sync::Mutex<StateFiles>,
}

/// The state files this subtask wrote, so they are deleted once no retained checkpoint needs them:
/// those of aborted checkpoints, and those of completed ones older than the `retained` newest.
/// Files the subtask's predecessors (earlier epochs, before a restart) left are not known to it;
/// it finds them by listing, once the job no longer retains the checkpoints they belong to.
#[derive(Debug, Default)]
pub(super) struct StateFiles {
    pub(super) written: std::collections::BTreeMap<u64, String>,
    pub(super) completed: VecDeque<u64>,
    pub(super) retained: usize,
    /// The first checkpoint this subtask saw completed: predecessors stopped before it.
    pub(super) first_completed: Option<u64>,
    /// Predecessors' files below this checkpoint are already deleted.
    pub(super) swept_below: u64,
}

impl StateFiles {
    /// Whether to delete predecessors' files now, and below which checkpoint: whenever the
    /// job's oldest retained checkpoint moves up, until it passes this subtask's first completed
    /// one (at most `retained` listings per subtask).
    pub(super) fn predecessor_sweep_due(&mut self, checkpoint_id: u64, oldest_retained: u64) -> Option<u64> {
        let first = *self.first_completed.get_or_insert(checkpoint_id);
        if self.swept_below >= first || oldest_retained <= self.swept_below {
            return None;
        }
        self.swept_below = oldest_retained;
        Some(oldest_retained)
    }

    /// Checkpoint `checkpoint_id` completed: the files that are no longer needed.
    pub(super) fn completed(&mut self, checkpoint_id: u64) -> Vec<String> {
        if self.completed.back().is_some_and(|last| *last >= checkpoint_id) {
            return Vec::new();
        }
        self.completed.push_back(checkpoint_id);
        while self.completed.len() > self.retained.max(1) {
            self.completed.pop_front();
        }
        let oldest_kept = self.completed.front().copied().unwrap_or(checkpoint_id);
        let obsolete: Vec<u64> = self
            .written
            .keys()
            .copied()
            .filter(|id| *id < oldest_kept || (*id < checkpoint_id && !self.completed.contains(id)))
            .collect();
        obsolete.iter().filter_map(|id| self.written.remove(id)).collect()
    }
}

impl Acknowledger<'_> {
    /// Deletes, in the background, the state files no retained checkpoint needs any more: its
    /// own, and those its predecessors left below `oldest_retained`.
    pub(super) fn checkpoint_completed(&self, checkpoint_id: u64, oldest_retained: u64) {
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
        let job_id = deployment.job_id.clone();
        let own_files = format!("{}-{}-e", deployment.operator_id, deployment.subtask_index);
        let epoch = deployment.epoch;
        tokio::spawn(async move {
            let mut obsolete = obsolete;
            if let Some(below) = sweep_below {
                match store.list(&job_id).await {
                    Ok(locations) => obsolete.extend(
                        locations
                            .into_iter()
                            .filter(|location| left_by_predecessor(location, &own_files, epoch, below)),
                    ),
                    Err(error) => tracing::warn!(error = %error, "could not list checkpoint state"),
                }
            }
            delete_each(store.as_ref(), &obsolete).await;
        });
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

    /// Stores the state of `checkpoint_id` (inline when tiny) and acknowledges it to the leader.
    pub(super) async fn acknowledge(
        &self,
        checkpoint_id: u64,
        state: Vec<u8>,
        source_offset: Option<u64>,
    ) -> Result<(), TaskError> {
        let deployment = self.deployment;
        let size_bytes = state.len() as u64;
        let state_checksum = checksum(&state);
        let task = deployment.task_ref();
        let handle = if state.len() <= MAX_INLINE_STATE {
            TaskStateHandle {
                subtask: task.subtask.clone(),
                location: String::new(),
                inline_state: state,
                size_bytes,
                checksum: state_checksum,
            }
        } else {
            let location = format!(
                "{}/chk-{checkpoint_id}/{}-{}-e{}.state",
                deployment.job_id, deployment.operator_id, deployment.subtask_index, deployment.epoch
            );
            let stored = self
                .environment
                .store
                .put(&location, state)
                .await
                .map_err(|error| TaskError::Snapshot {
                    checkpoint_id,
                    problem: error.to_string(),
                })?;
            if let Ok(mut files) = self.files.lock() {
                files.written.insert(checkpoint_id, stored.location.clone());
            }
            TaskStateHandle {
                subtask: task.subtask.clone(),
                location: stored.location,
                inline_state: Vec::new(),
                size_bytes: stored.size_bytes,
                checksum: stored.checksum,
            }
        };
        // A lost ack only lets the checkpoint time out; the job goes on.
        // A full queue means the session is down or far behind: a lost report only delays
        // (the checkpoint times out, the end of input is seen at the next interval).
        let _ = self.environment.reports.try_send(TaskReport::CheckpointAck {
            task,
            checkpoint_id,
            state: handle,
            source_offset,
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_files_of_aborted_and_no_longer_retained_checkpoints_are_obsolete() {
        let mut files = StateFiles {
            retained: 2,
            ..StateFiles::default()
        };
        for id in 1..=5 {
            files.written.insert(id, format!("chk-{id}"));
        }
        // 2 was aborted: once 3 completes nothing needs it.
        assert!(files.completed(1).is_empty());
        assert_eq!(files.completed(3), vec!["chk-2"]);
        // 4 completes: keep 3 and 4, drop 1.
        assert_eq!(files.completed(4), vec!["chk-1"]);
        assert!(files.completed(4).is_empty(), "a repeated notice changes nothing");
        assert_eq!(files.completed(5), vec!["chk-3"]);
        assert_eq!(files.written.keys().copied().collect::<Vec<_>>(), vec![4, 5]);
    }

    #[test]
    fn predecessors_files_are_swept_as_the_retained_window_passes_the_first_completion() {
        let mut files = StateFiles::default();
        // Restarted after checkpoint 10; 3 retained. First completion 12: 10 and 11 still retained.
        assert_eq!(files.predecessor_sweep_due(12, 10), Some(10));
        assert_eq!(files.predecessor_sweep_due(13, 10), None, "the window did not move");
        assert_eq!(files.predecessor_sweep_due(14, 12), Some(12));
        // Past the first completion: everything predecessors left is gone, no more listing.
        assert_eq!(files.predecessor_sweep_due(15, 13), None);
        assert_eq!(files.predecessor_sweep_due(20, 18), None);
        // Not told (an older leader): never sweeps.
        let mut untold = StateFiles::default();
        assert_eq!(untold.predecessor_sweep_due(5, 0), None);
    }

    #[test]
    fn only_earlier_epochs_files_of_the_same_subtask_below_the_window_are_predecessors() {
        let own = "counts-1-e";
        assert!(left_by_predecessor("job-1/chk-4/counts-1-e2.state", own, 3, 5));
        assert!(
            !left_by_predecessor("job-1/chk-5/counts-1-e2.state", own, 3, 5),
            "still retained"
        );
        assert!(
            !left_by_predecessor("job-1/chk-4/counts-1-e3.state", own, 3, 5),
            "its own"
        );
        assert!(
            !left_by_predecessor("job-1/chk-4/counts-1-e4.state", own, 3, 5),
            "a newer one's"
        );
        assert!(
            !left_by_predecessor("job-1/chk-4/counts-11-e2.state", own, 3, 5),
            "another subtask"
        );
        assert!(!left_by_predecessor("job-1/chk-4/counts-1-0-e2.state", own, 3, 5));
        assert!(!left_by_predecessor("job-1/chk-x/counts-1-e2.state", own, 3, 5));
        assert!(!left_by_predecessor("counts-1-e2.state", own, 3, 5));
    }
}
