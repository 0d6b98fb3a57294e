//! The subtasks assigned to this executor. Epochs fence: a message about an older epoch than the
//! one held never changes anything.

use std::collections::BTreeMap;

use raftstream_proto::v1 as pb;

/// A subtask, without its epoch.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SubtaskId {
    pub job_id: String,
    pub operator_id: String,
    pub subtask_index: u32,
}

impl SubtaskId {
    fn of(task: &pb::TaskRef) -> Self {
        SubtaskId {
            job_id: task.job_id.clone(),
            operator_id: task.operator_id.clone(),
            subtask_index: task.subtask_index,
        }
    }
}

/// What changed when a message was applied.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Changes {
    pub started: Vec<(SubtaskId, u64)>,
    pub stopped: Vec<(SubtaskId, u64)>,
    /// Assignments to an epoch this executor already ran and stopped: not started again.
    pub refused: Vec<(SubtaskId, u64)>,
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
    held: BTreeMap<SubtaskId, u64>,
    /// The highest epoch started per subtask, until its job's state is discarded.
    highest_started: BTreeMap<SubtaskId, u64>,
}

impl Assignments {
    /// The held subtasks, as heartbeats report them.
    pub fn running(&self) -> Vec<pb::TaskRef> {
        self.held
            .iter()
            .map(|(id, epoch)| pb::TaskRef {
                job_id: id.job_id.clone(),
                operator_id: id.operator_id.clone(),
                subtask_index: id.subtask_index,
                epoch: *epoch,
            })
            .collect()
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
    pub fn forget_job(&mut self, job_id: &str) {
        self.highest_started.retain(|id, _| id.job_id != job_id);
    }

    /// Applies one message from the leader.
    pub fn apply(&mut self, message: &pb::CoordinatorMessage) -> Changes {
        use pb::coordinator_message::Body;
        let mut changes = Changes::default();
        match &message.body {
            // Keeps what it runs at the listed epochs and stops the rest; starting needs the
            // deployment an `AssignTask` carries.
            Some(Body::Assignments(all)) => {
                let wanted: BTreeMap<SubtaskId, u64> =
                    all.tasks.iter().map(|task| (SubtaskId::of(task), task.epoch)).collect();
                self.held.retain(|id, epoch| {
                    let keep = wanted.get(id) == Some(epoch);
                    if !keep {
                        changes.stopped.push((id.clone(), *epoch));
                    }
                    keep
                });
            }
            Some(Body::Assign(assign)) => {
                if let Some(task) = &assign.task {
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
                }
            }
            Some(Body::Cancel(cancel)) => {
                if let Some(task) = &cancel.task {
                    let id = SubtaskId::of(task);
                    if self.held.get(&id).is_some_and(|epoch| *epoch <= task.epoch) {
                        if let Some(epoch) = self.held.remove(&id) {
                            changes.stopped.push((id, epoch));
                        }
                    }
                }
            }
            _ => {}
        }
        changes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pb::coordinator_message::Body;

    fn task(operator: &str, epoch: u64) -> pb::TaskRef {
        pb::TaskRef {
            job_id: "job-1".into(),
            operator_id: operator.into(),
            subtask_index: 0,
            epoch,
        }
    }

    fn message(body: Body) -> pb::CoordinatorMessage {
        pb::CoordinatorMessage { body: Some(body) }
    }

    #[test]
    fn epochs_fence_stale_assignments_and_cancels() {
        let mut held = Assignments::default();
        held.apply(&message(Body::Assign(pb::AssignTask {
            task: Some(task("a", 5)),
            ..Default::default()
        })));
        let stale = held.apply(&message(Body::Assign(pb::AssignTask {
            task: Some(task("a", 3)),
            ..Default::default()
        })));
        assert_eq!(stale, Changes::default());
        let stale_cancel = held.apply(&message(Body::Cancel(pb::CancelTask {
            task: Some(task("a", 4)),
        })));
        assert_eq!(stale_cancel, Changes::default());
        assert_eq!(held.running(), vec![task("a", 5)]);
        let cancel = held.apply(&message(Body::Cancel(pb::CancelTask {
            task: Some(task("a", 5)),
        })));
        assert_eq!(cancel.stopped.len(), 1);
        assert!(held.is_empty());
    }

    #[test]
    fn a_stopped_run_is_never_started_again_at_its_epoch() {
        let mut held = Assignments::default();
        let assign = |epoch| {
            message(Body::Assign(pb::AssignTask {
                task: Some(task("a", epoch)),
                ..Default::default()
            }))
        };
        assert_eq!(held.apply(&assign(4)).started.len(), 1);
        let stopped = held.apply(&message(Body::Assignments(pb::Assignments { tasks: Vec::new() })));
        assert_eq!(stopped.stopped.len(), 1);
        let again = held.apply(&assign(4));
        assert!(again.started.is_empty(), "{again:?}");
        assert_eq!(again.refused.len(), 1);
        assert!(held.is_empty());
        // A new epoch is a new run.
        assert_eq!(held.apply(&assign(5)).started.len(), 1);
        // Once the job's state is discarded its runs are forgotten.
        held.clear();
        held.forget_job("job-1");
        assert_eq!(held.apply(&assign(5)).started.len(), 1);
    }

    #[test]
    fn a_full_assignment_list_keeps_same_epochs_and_stops_the_rest() {
        let mut held = Assignments::default();
        for operator in ["a", "b"] {
            held.apply(&message(Body::Assign(pb::AssignTask {
                task: Some(task(operator, 1)),
                ..Default::default()
            })));
        }
        let changes = held.apply(&message(Body::Assignments(pb::Assignments {
            tasks: vec![task("a", 1), task("c", 2)],
        })));
        let id = |operator: &str| SubtaskId {
            job_id: "job-1".into(),
            operator_id: operator.into(),
            subtask_index: 0,
        };
        assert_eq!(changes.stopped, vec![(id("b"), 1)]);
        assert!(changes.started.is_empty(), "starting needs a deployment");
        assert_eq!(held.running(), vec![task("a", 1)]);
    }
}
