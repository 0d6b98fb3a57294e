//! A source's share of `checkpoint.max_records` and `checkpoint.max_bytes`: what it emitted since
//! the barrier of the last completed checkpoint is what a failure now would replay. At half its
//! share the source asks the leader for a checkpoint; at its whole share it waits until one
//! completes. So a failure replays at most the bound plus the batch that crossed it, per source
//! subtask, whatever the input rate (time-based checkpoints bound only time).

use raftstream_api::ids::CheckpointId;
use std::collections::VecDeque;

use raftstream_api::checkpoint::CheckpointTrigger;
use raftstream_api::spec::CheckpointConfig;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Emitted {
    records: u64,
    bytes: u64,
}

#[derive(Debug)]
pub(super) struct ReplayBudget {
    max_records: Option<u64>,
    max_bytes: Option<u64>,
    emitted: Emitted,
    /// What had been emitted when each barrier not yet completed went out.
    barriers: VecDeque<(CheckpointId, Emitted)>,
    /// What had been emitted at the barrier of the last completed checkpoint.
    safe: Emitted,
    /// A checkpoint was asked for since the last barrier (or abort).
    requested: bool,
}

impl ReplayBudget {
    /// The budget of one of `parallelism` source subtasks, `None` when the job sets no bound.
    pub(super) fn of(config: &CheckpointConfig, parallelism: u32) -> Option<ReplayBudget> {
        let share = |bound: u64| bound.div_ceil(u64::from(parallelism.max(1))).max(1);
        (config.max_records.is_some() || config.max_bytes.is_some()).then(|| ReplayBudget {
            max_records: config.max_records.map(share),
            max_bytes: config.max_bytes.map(share),
            emitted: Emitted::default(),
            barriers: VecDeque::new(),
            safe: Emitted::default(),
            requested: false,
        })
    }

    pub(super) fn emitted(&mut self, records: u64, bytes: u64) {
        self.emitted.records += records;
        self.emitted.bytes += bytes;
    }

    pub(super) fn barrier(&mut self, checkpoint_id: CheckpointId) {
        self.barriers.push_back((checkpoint_id, self.emitted));
        self.requested = false;
    }

    /// Checkpoint `checkpoint_id` completed: what preceded its barrier is safe.
    pub(super) fn completed(&mut self, checkpoint_id: CheckpointId) {
        while let Some(&(id, emitted)) = self.barriers.front() {
            if id > checkpoint_id {
                break;
            }
            self.barriers.pop_front();
            if id == checkpoint_id {
                self.safe = emitted;
            }
        }
    }

    /// A checkpoint was aborted: ask again if the budget still calls for one.
    pub(super) fn aborted(&mut self, checkpoint_id: CheckpointId) {
        self.barriers.retain(|(id, _)| *id != checkpoint_id);
        self.requested = false;
    }

    fn unsafe_since_completed(&self) -> Emitted {
        Emitted {
            records: self.emitted.records - self.safe.records,
            bytes: self.emitted.bytes - self.safe.bytes,
        }
    }

    /// Whether the source must wait for a checkpoint to complete before emitting more.
    pub(super) fn exhausted(&self) -> bool {
        let at_risk = self.unsafe_since_completed();
        self.max_records.is_some_and(|max| at_risk.records >= max)
            || self.max_bytes.is_some_and(|max| at_risk.bytes >= max)
    }

    /// The trigger to report when the source should ask for a checkpoint now (once per barrier).
    pub(super) fn wanted(&mut self) -> Option<CheckpointTrigger> {
        if self.requested {
            return None;
        }
        let at_risk = self.unsafe_since_completed();
        let trigger = if self.max_records.is_some_and(|max| at_risk.records >= max.div_ceil(2)) {
            CheckpointTrigger::Records
        } else if self.max_bytes.is_some_and(|max| at_risk.bytes >= max.div_ceil(2)) {
            CheckpointTrigger::Bytes
        } else {
            return None;
        };
        self.requested = true;
        Some(trigger)
    }

    /// Records this source may still emit before it waits (at least 1), to size its next batch.
    pub(super) fn records_left(&self) -> u64 {
        let at_risk = self.unsafe_since_completed();
        self.max_records
            .map_or(u64::MAX, |max| max.saturating_sub(at_risk.records))
            .max(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budget(max_records: Option<u64>, max_bytes: Option<u64>, parallelism: u32) -> ReplayBudget {
        let config = CheckpointConfig {
            max_records,
            max_bytes,
            ..CheckpointConfig::default()
        };
        ReplayBudget::of(&config, parallelism).expect("bounded")
    }

    #[test]
    fn no_bound_no_budget() {
        assert!(ReplayBudget::of(&CheckpointConfig::default(), 4).is_none());
    }

    #[test]
    fn asks_at_half_its_share_waits_at_its_share_and_resumes_when_a_checkpoint_completes() {
        // 1,000 records over 4 subtasks: 250 each.
        let mut budget = budget(Some(1_000), None, 4);
        budget.emitted(124, 1_000);
        assert_eq!(budget.wanted(), None);
        budget.emitted(1, 10);
        assert_eq!(budget.wanted(), Some(CheckpointTrigger::Records));
        assert_eq!(budget.wanted(), None, "asked once per barrier");
        budget.barrier(CheckpointId(7));
        budget.emitted(125, 1_000);
        assert!(budget.exhausted(), "250 emitted since the last completed checkpoint");
        // Asked again after the barrier: more is at risk than half the share.
        assert_eq!(budget.wanted(), Some(CheckpointTrigger::Records));
        budget.completed(CheckpointId(7));
        assert!(!budget.exhausted(), "only the 125 after barrier 7 are at risk");
        assert_eq!(budget.records_left(), 125);
    }

    #[test]
    fn an_aborted_checkpoint_keeps_the_risk_and_asks_again() {
        let mut budget = budget(None, Some(100), 1);
        budget.emitted(3, 60);
        assert_eq!(budget.wanted(), Some(CheckpointTrigger::Bytes));
        budget.barrier(CheckpointId(1));
        budget.emitted(3, 40);
        assert!(budget.exhausted());
        budget.aborted(CheckpointId(1));
        assert!(budget.exhausted(), "nothing became safe");
        assert_eq!(budget.wanted(), Some(CheckpointTrigger::Bytes));
        budget.barrier(CheckpointId(2));
        budget.completed(CheckpointId(2));
        assert!(!budget.exhausted());
        // A completion for an older barrier than one aborted does not count the newer one.
        budget.emitted(1, 70);
        budget.barrier(CheckpointId(3));
        budget.completed(CheckpointId(1));
        assert!(!budget.exhausted());
        assert_eq!(budget.records_left(), u64::MAX);
    }
}
