//! The subtasks assigned to this executor. Epochs fence: a message about an older epoch than the
//! one held never changes anything.

use std::collections::BTreeMap;

use raftstream_api::checkpoint::SubtaskKey;
use raftstream_api::ids::{Epoch, JobId};
use raftstream_api::messages::TaskRef;

/// A subtask, without its epoch.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SubtaskId {
    pub job_id: JobId,
    pub subtask: SubtaskKey,
}

impl SubtaskId {
    pub fn of(task: &TaskRef) -> Self {
        SubtaskId {
            job_id: task.job_id,
            subtask: task.subtask.clone(),
        }
    }

    /// This subtask's run at `epoch`.
    pub fn at(&self, epoch: Epoch) -> TaskRef {
        TaskRef {
            job_id: self.job_id,
            subtask: self.subtask.clone(),
            epoch,
        }
    }
}

/// What changed when a message was applied.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Changes {
    pub started: Vec<(SubtaskId, Epoch)>,
    pub stopped: Vec<(SubtaskId, Epoch)>,
    /// Assignments to an epoch this executor already ran and stopped: not started again.
    pub refused: Vec<(SubtaskId, Epoch)>,
}

/// The subtasks this executor holds, each at its epoch.
///
/// An epoch names one run of a subtask: a run that was stopped is never started again at the same
/// epoch. Its acknowledgements may still complete a checkpoint (they carry that epoch), while a
/// second run would restore an older checkpoint and delete the pending sink files the first one
/// pre-committed. So an assignment to an epoch already started here is refused, and the refusal
/// reported as the subtask's failure, which makes the leader restart the job at new epochs.
#[derive(Debug, Default)]
pub struct Assignments {
    held: BTreeMap<SubtaskId, Epoch>,
    /// The highest epoch started per subtask, until its job's state is discarded.
    highest_started: BTreeMap<SubtaskId, Epoch>,
}

impl Assignments {
    /// The held subtasks, as heartbeats report them.
    pub fn running(&self) -> Vec<TaskRef> {
        self.held.iter().map(|(id, epoch)| id.at(*epoch)).collect()
    }

    /// How many subtasks are held.
    pub fn len(&self) -> usize {
        self.held.len()
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.held.is_empty()
    }

    /// Drops everything (after this executor was declared dead, its placements are gone).
    pub fn clear(&mut self) -> Changes {
        let stopped = std::mem::take(&mut self.held).into_iter().collect();
        Changes {
            stopped,
            ..Changes::default()
        }
    }

    /// Forgets the runs of an ended job.
    pub fn forget_job(&mut self, job_id: &JobId) {
        self.highest_started.retain(|id, _| &id.job_id != job_id);
    }

    /// The complete list of what this executor may keep: keeps what it runs at the listed epochs
    /// and stops the rest. Starting needs the deployment an assignment carries.
    pub fn keep_only(&mut self, wanted: &[TaskRef]) -> Changes {
        let wanted: BTreeMap<SubtaskId, Epoch> = wanted.iter().map(|task| (SubtaskId::of(task), task.epoch)).collect();
        let mut changes = Changes::default();
        self.held.retain(|id, epoch| {
            let keep = wanted.get(id) == Some(epoch);
            if !keep {
                changes.stopped.push((id.clone(), *epoch));
            }
            keep
        });
        changes
    }

    /// One subtask assigned at an epoch: started unless an equal or newer run is held, or this
    /// epoch already ran here.
    pub fn assign(&mut self, task: &TaskRef) -> Changes {
        let mut changes = Changes::default();
        let id = SubtaskId::of(task);
        match self.held.get(&id) {
            Some(epoch) if *epoch >= task.epoch => {}
            _ if self
                .highest_started
                .get(&id)
                .is_some_and(|started| *started >= task.epoch) =>
            {
                changes.refused.push((id, task.epoch));
            }
            previous => {
                if let Some(old) = previous {
                    changes.stopped.push((id.clone(), *old));
                }
                changes.started.push((id.clone(), task.epoch));
                self.highest_started.insert(id.clone(), task.epoch);
                self.held.insert(id, task.epoch);
            }
        }
        changes
    }

    /// One subtask cancelled at an epoch: stops the held run unless it is newer.
    pub fn cancel(&mut self, task: &TaskRef) -> Changes {
        let mut changes = Changes::default();
        let id = SubtaskId::of(task);
        if self.held.get(&id).is_some_and(|epoch| *epoch <= task.epoch) {
            if let Some(epoch) = self.held.remove(&id) {
                changes.stopped.push((id, epoch));
            }
        }
        changes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(operator: &str, epoch: u64) -> TaskRef {
        TaskRef {
            job_id: JobId::from_number(1),
            subtask: SubtaskKey {
                operator_id: operator.into(),
                subtask_index: 0,
            },
            epoch: Epoch(epoch),
        }
    }

    #[test]
    fn epochs_fence_stale_assignments_and_cancels() {
        let mut held = Assignments::default();
        held.assign(&task("a", 5));
        assert_eq!(held.assign(&task("a", 3)), Changes::default());
        assert_eq!(held.cancel(&task("a", 4)), Changes::default());
        assert_eq!(held.running(), vec![task("a", 5)]);
        assert_eq!(held.cancel(&task("a", 5)).stopped.len(), 1);
        assert!(held.is_empty());
    }

    #[test]
    fn a_stopped_run_is_never_started_again_at_its_epoch() {
        let mut held = Assignments::default();
        assert_eq!(held.assign(&task("a", 4)).started.len(), 1);
        assert_eq!(held.keep_only(&[]).stopped.len(), 1);
        let again = held.assign(&task("a", 4));
        assert!(again.started.is_empty(), "{again:?}");
        assert_eq!(again.refused.len(), 1);
        assert!(held.is_empty());
        // A new epoch is a new run.
        assert_eq!(held.assign(&task("a", 5)).started.len(), 1);
        // Once the job's state is discarded its runs are forgotten.
        held.clear();
        held.forget_job(&JobId::from_number(1));
        assert_eq!(held.assign(&task("a", 5)).started.len(), 1);
    }

    #[test]
    fn a_full_assignment_list_keeps_same_epochs_and_stops_the_rest() {
        let mut held = Assignments::default();
        for operator in ["a", "b"] {
            held.assign(&task(operator, 1));
        }
        let changes = held.keep_only(&[task("a", 1), task("c", 2)]);
        assert_eq!(changes.stopped, vec![(SubtaskId::of(&task("b", 1)), Epoch(1))]);
        assert!(changes.started.is_empty(), "starting needs a deployment");
        assert_eq!(held.running(), vec![task("a", 1)]);
    }
}
