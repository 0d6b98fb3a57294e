//! One in-flight checkpoint as the leader's checkpoint coordinator tracks it: which subtasks must
//! acknowledge (at the epochs they had when it was triggered), what they sent, and when it times
//! out. Pure logic; the loop that triggers, collects and commits builds on it.

use std::collections::BTreeMap;

use raftstream_api::checkpoint::{CompletedCheckpoint, SubtaskKey, TaskStateHandle};

use crate::state_machine::JobRecord;
use raftstream_api::checkpoint::CheckpointTrigger;
use raftstream_api::ids::{CheckpointId, Epoch, JobId};

pub use raftstream_api::messages::CheckpointAck;

/// What an acknowledgement did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AckOutcome {
    /// Accepted (or a duplicate of one accepted); this many subtasks are still missing.
    Pending { remaining: usize },
    /// The last missing acknowledgement: commit this through Raft, then notify the tasks.
    Complete(CompletedCheckpoint),
    /// Not counted, with the reason (stale epoch, unknown subtask, wrong checkpoint).
    Ignored(String),
}

/// A triggered checkpoint waiting for acknowledgements.
#[derive(Debug, Clone)]
pub struct PendingCheckpoint {
    pub job_id: JobId,
    pub checkpoint_id: CheckpointId,
    pub triggered_at_ms: u64,
    pub timeout_ms: u64,
    /// What started it, recorded in the completed checkpoint.
    pub trigger: CheckpointTrigger,
    job_epoch: Epoch,
    expected: BTreeMap<SubtaskKey, Epoch>,
    acked: BTreeMap<SubtaskKey, CheckpointAck>,
}

impl PendingCheckpoint {
    /// Starts tracking `checkpoint_id` of `job`; every subtask must be placed.
    pub fn start(job: &JobRecord, checkpoint_id: CheckpointId, now_ms: u64) -> Result<Self, String> {
        let mut expected = BTreeMap::new();
        for (subtask, assignment) in &job.assignments {
            if assignment.executor_id.is_none() {
                return Err(format!(
                    "subtask {}[{}] is not placed",
                    subtask.operator_id, subtask.subtask_index
                ));
            }
            expected.insert(subtask.clone(), assignment.epoch);
        }
        Ok(PendingCheckpoint {
            job_id: job.job_id,
            checkpoint_id,
            triggered_at_ms: now_ms,
            timeout_ms: job.graph.checkpoint.timeout_ms,
            trigger: CheckpointTrigger::Interval,
            job_epoch: job.last_epoch,
            expected,
            acked: BTreeMap::new(),
        })
    }

    /// Acknowledges for a subtask that already finished (it can no longer take a barrier): its
    /// state is what it had in the job's latest completed checkpoint, because a subtask finishes
    /// only after the checkpoint covering its last input completed. `None` when that checkpoint
    /// does not hold the subtask (then the checkpoint has to wait or time out).
    pub fn ack_finished(
        &mut self,
        job: &JobRecord,
        subtask: &SubtaskKey,
        epoch: Epoch,
        now_ms: u64,
    ) -> Option<AckOutcome> {
        let latest = job.checkpoints.back()?;
        let state = latest
            .task_states
            .iter()
            .find(|state| &state.subtask == subtask)?
            .clone();
        let ack = CheckpointAck {
            subtask: subtask.clone(),
            epoch,
            state,
            source_offset: latest.source_offsets.get(subtask).copied(),
        };
        Some(self.on_ack(ack, now_ms))
    }

    /// Counts one acknowledgement.
    pub fn on_ack(&mut self, ack: CheckpointAck, now_ms: u64) -> AckOutcome {
        let Some(expected_epoch) = self.expected.get(&ack.subtask) else {
            return AckOutcome::Ignored(format!(
                "{}[{}] is not part of this job",
                ack.subtask.operator_id, ack.subtask.subtask_index
            ));
        };
        if ack.epoch != *expected_epoch {
            // Zombie fencing: only the placement that received the barrier may acknowledge it.
            return AckOutcome::Ignored(format!(
                "{}[{}] acknowledged at epoch {}, but it runs at epoch {}",
                ack.subtask.operator_id, ack.subtask.subtask_index, ack.epoch.0, expected_epoch.0
            ));
        }
        self.acked.entry(ack.subtask.clone()).or_insert(ack);
        let remaining = self.expected.len() - self.acked.len();
        if remaining > 0 {
            return AckOutcome::Pending { remaining };
        }
        let task_states: Vec<TaskStateHandle> = self.acked.values().map(|ack| ack.state.clone()).collect();
        let size_bytes = task_states.iter().map(|state| state.size_bytes).sum();
        let source_offsets = self
            .acked
            .values()
            .filter_map(|ack| ack.source_offset.map(|offset| (ack.subtask.clone(), offset)))
            .collect();
        AckOutcome::Complete(CompletedCheckpoint {
            checkpoint_id: self.checkpoint_id,
            epoch: self.job_epoch,
            task_states,
            source_offsets,
            size_bytes,
            completed_at_ms: now_ms,
            triggered_at_ms: self.triggered_at_ms,
            acknowledged_epochs: self.expected.clone(),
            trigger: self.trigger,
        })
    }

    /// The subtask placements that must acknowledge, with their epochs.
    pub fn expected(&self) -> impl Iterator<Item = (&SubtaskKey, Epoch)> {
        self.expected.iter().map(|(subtask, epoch)| (subtask, *epoch))
    }

    /// Whether `job` still runs exactly the placements this checkpoint waits for.
    pub fn matches_placements(&self, job: &JobRecord) -> bool {
        job.assignments.len() == self.expected.len()
            && job.assignments.iter().all(|(subtask, assignment)| {
                assignment.executor_id.is_some() && self.expected.get(subtask) == Some(&assignment.epoch)
            })
    }

    /// Whether the checkpoint ran out of time and must be aborted.
    pub fn is_expired(&self, now_ms: u64) -> bool {
        now_ms.saturating_sub(self.triggered_at_ms) > self.timeout_ms
    }

    /// Whether losing this subtask placement dooms the checkpoint (it must then be aborted).
    pub fn depends_on(&self, subtask: &SubtaskKey, epoch: Epoch) -> bool {
        self.expected.get(subtask) == Some(&epoch) && !self.acked.contains_key(subtask)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state_machine::{apply, Command, State};
    use crate::test_fixtures::{checkpoint_ack, source_to_sink, StateBuilder};
    use raftstream_api::ids::ExecutorId;

    /// Job 1 with `src` (epoch 1) and `out` (epoch 2) placed on executor `e`.
    fn placed_job() -> (State, JobId) {
        let state = StateBuilder::new()
            .executor("e", 8)
            .job(source_to_sink(r#""checkpoint": {"timeout_ms": 100},"#))
            .place(1, "src", 0, "e")
            .place(1, "out", 0, "e")
            .build();
        (state, JobId::from_number(1))
    }

    fn ack(operator: &str, epoch: u64) -> CheckpointAck {
        checkpoint_ack(operator, 0, Epoch(epoch), CheckpointId(1))
    }

    #[test]
    fn completes_when_every_placed_subtask_acknowledged_at_its_epoch() {
        let (state, job_id) = placed_job();
        let mut pending = PendingCheckpoint::start(&state.jobs[&job_id], CheckpointId(1), 1_000).expect("placed");
        // src was placed first (epoch 1), out second (epoch 2).
        assert!(
            matches!(pending.on_ack(ack("src", 7), 1_001), AckOutcome::Ignored(reason) if reason.contains("epoch 7"))
        );
        assert_eq!(
            pending.on_ack(ack("src", 1), 1_001),
            AckOutcome::Pending { remaining: 1 }
        );
        assert_eq!(
            pending.on_ack(ack("src", 1), 1_002),
            AckOutcome::Pending { remaining: 1 },
            "duplicates count once"
        );
        assert!(pending.depends_on(&ack("out", 2).subtask, Epoch(2)));
        let AckOutcome::Complete(done) = pending.on_ack(ack("out", 2), 1_050) else {
            panic!("the last ack must complete the checkpoint");
        };
        assert_eq!(done.checkpoint_id, CheckpointId(1));
        assert_eq!(done.size_bytes, 20);
        assert_eq!(done.source_offsets.values().copied().collect::<Vec<_>>(), vec![100]);
        assert!(!pending.is_expired(1_100) && pending.is_expired(1_101));
    }

    #[test]
    fn a_finished_subtask_acknowledges_with_its_state_from_the_latest_checkpoint() {
        let (mut state, job_id) = placed_job();
        let mut first = PendingCheckpoint::start(&state.jobs[&job_id], CheckpointId(1), 0).expect("placed");
        assert!(matches!(first.on_ack(ack("src", 1), 1), AckOutcome::Pending { .. }));
        let AckOutcome::Complete(done) = first.on_ack(ack("out", 2), 2) else {
            panic!("complete");
        };
        let running = Command::TransitionJob {
            job_id,
            to: crate::state_machine::JobStatus::Running,
            reason: String::new(),
            at_ms: 0,
            deployed_through_epoch: None,
        };
        assert!(apply(&mut state, running).is_ok());
        assert!(apply(&mut state, Command::TriggerCheckpoint { job_id, at_ms: 0 }).is_ok());
        assert!(apply(
            &mut state,
            Command::CompleteCheckpoint {
                job_id,
                checkpoint: done,
                savepoint: false,
            }
        )
        .is_ok());

        // src finished after checkpoint 1: it cannot take barrier 2, its state stands in.
        let job = &state.jobs[&job_id];
        let mut second = PendingCheckpoint::start(job, CheckpointId(2), 10).expect("placed");
        let src = ack("src", 1).subtask;
        assert_eq!(
            second.ack_finished(job, &src, Epoch(1), 11),
            Some(AckOutcome::Pending { remaining: 1 })
        );
        let AckOutcome::Complete(next) = second.on_ack(ack("out", 2), 12) else {
            panic!("complete");
        };
        assert_eq!(
            next.source_offsets.get(&src),
            Some(&100),
            "the finished source keeps its offset"
        );
        assert_eq!(next.task_states.len(), 2);
    }

    #[test]
    fn refuses_to_start_while_a_subtask_waits_for_a_slot() {
        let (mut state, job_id) = placed_job();
        let dead = Command::MarkExecutorDead {
            executor_id: ExecutorId("e".to_owned()),
            at_ms: 1,
        };
        assert!(apply(&mut state, dead).is_ok());
        let refused = PendingCheckpoint::start(&state.jobs[&job_id], CheckpointId(1), 0)
            .err()
            .unwrap_or_default();
        assert!(refused.contains("not placed"), "{refused}");
    }
}
