//! Barrier alignment for a task with several inputs (Flink's aligned checkpoints, exactly-once):
//! once an input has delivered the barrier of checkpoint n, its further records are held back until
//! every input has delivered barrier n; then the task snapshots its state and releases them.
//! Pure logic: the task loop asks which inputs it may read and reports barriers.

use raftstream_api::ids::CheckpointId;
use std::collections::BTreeSet;

/// What the task must do after a barrier.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alignment {
    /// Keep waiting for barriers on other inputs.
    Waiting,
    /// Every input delivered the barrier: snapshot for this checkpoint, forward the barrier, and
    /// read all inputs again.
    Snapshot(CheckpointId),
    /// A newer checkpoint's barrier overtook an unfinished alignment: the older checkpoint is
    /// abandoned (the coordinator will abort it) and alignment starts for the newer one.
    Superseded { abandoned: CheckpointId },
    /// A barrier for a checkpoint already completed or abandoned here: ignore it.
    Stale,
}

/// Tracks the barriers seen on each input of one task.
#[derive(Debug, Clone)]
pub struct BarrierAligner {
    inputs: usize,
    aligning: Option<(CheckpointId, BTreeSet<usize>)>,
    /// The last checkpoint snapshotted or abandoned; barriers at or below it are stale.
    last_finished: Option<CheckpointId>,
}

impl BarrierAligner {
    /// An aligner for a task with `inputs` input channels.
    pub fn new(inputs: usize) -> Self {
        BarrierAligner {
            inputs: inputs.max(1),
            aligning: None,
            last_finished: None,
        }
    }

    /// Whether records from `input` must be held back now.
    pub fn is_blocked(&self, input: usize) -> bool {
        self.aligning
            .as_ref()
            .is_some_and(|(_, arrived)| arrived.contains(&input))
    }

    /// The checkpoint being aligned, if any.
    pub fn aligning(&self) -> Option<CheckpointId> {
        self.aligning.as_ref().map(|(checkpoint_id, _)| *checkpoint_id)
    }

    /// Records that `input` delivered the barrier of `checkpoint_id`.
    pub fn on_barrier(&mut self, input: usize, checkpoint_id: CheckpointId) -> Alignment {
        if input >= self.inputs || self.last_finished.is_some_and(|last| checkpoint_id <= last) {
            return Alignment::Stale;
        }
        let mut outcome = Alignment::Waiting;
        match &mut self.aligning {
            Some((current, _)) if checkpoint_id < *current => return Alignment::Stale,
            Some((current, arrived)) if checkpoint_id == *current => {
                arrived.insert(input);
            }
            Some((current, _)) => {
                outcome = Alignment::Superseded { abandoned: *current };
                self.aligning = Some((checkpoint_id, BTreeSet::from([input])));
            }
            None => self.aligning = Some((checkpoint_id, BTreeSet::from([input]))),
        }
        if self
            .aligning
            .as_ref()
            .is_some_and(|(_, arrived)| arrived.len() == self.inputs)
        {
            self.aligning = None;
            self.last_finished = Some(checkpoint_id);
            return Alignment::Snapshot(checkpoint_id);
        }
        if let Alignment::Superseded { abandoned } = outcome {
            self.last_finished = Some(self.last_finished.map_or(abandoned, |last| last.max(abandoned)));
        }
        outcome
    }

    /// The coordinator aborted `checkpoint_id`: stop aligning for it and release every input.
    pub fn on_abort(&mut self, checkpoint_id: CheckpointId) {
        if self.aligning().is_some_and(|current| current <= checkpoint_id) {
            self.aligning = None;
        }
        self.last_finished = Some(self.last_finished.map_or(checkpoint_id, |last| last.max(checkpoint_id)));
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn blocks_inputs_that_delivered_the_barrier_until_all_have() {
        let mut aligner = BarrierAligner::new(3);
        assert_eq!(aligner.on_barrier(0, CheckpointId(1)), Alignment::Waiting);
        assert!(aligner.is_blocked(0) && !aligner.is_blocked(1));
        assert_eq!(aligner.on_barrier(2, CheckpointId(1)), Alignment::Waiting);
        assert_eq!(
            aligner.on_barrier(1, CheckpointId(1)),
            Alignment::Snapshot(CheckpointId(1))
        );
        assert!(!aligner.is_blocked(0) && !aligner.is_blocked(2));
        assert_eq!(aligner.on_barrier(0, CheckpointId(1)), Alignment::Stale);
    }

    #[test]
    fn newer_barrier_supersedes_and_abort_releases() {
        let mut aligner = BarrierAligner::new(2);
        assert_eq!(aligner.on_barrier(0, CheckpointId(4)), Alignment::Waiting);
        assert_eq!(
            aligner.on_barrier(1, CheckpointId(5)),
            Alignment::Superseded {
                abandoned: CheckpointId(4)
            }
        );
        assert_eq!(aligner.on_barrier(0, CheckpointId(4)), Alignment::Stale);
        aligner.on_abort(CheckpointId(5));
        assert!(!aligner.is_blocked(1));
        assert_eq!(aligner.on_barrier(0, CheckpointId(5)), Alignment::Stale);
        assert_eq!(aligner.on_barrier(0, CheckpointId(6)), Alignment::Waiting);
        assert_eq!(
            aligner.on_barrier(1, CheckpointId(6)),
            Alignment::Snapshot(CheckpointId(6))
        );
    }

    proptest! {
        /// Whatever the interleaving, each checkpoint is snapshotted at most once, only after every
        /// input delivered its barrier, and snapshots come in increasing order.
        #[test]
        fn snapshots_are_unique_ordered_and_complete(
            inputs in 1usize..5,
            barriers in prop::collection::vec((0usize..5, 1u64..6), 0..60),
            seed_abort in prop::option::of(1u64..6),
            // An abort of that checkpoint arrives after the tenth barrier, when present.
        ) {
            let mut aligner = BarrierAligner::new(inputs);
            let mut seen: std::collections::BTreeMap<u64, BTreeSet<usize>> = Default::default();
            let mut snapshots = Vec::new();
            for (step, (input, checkpoint)) in barriers.into_iter().enumerate() {
                if let Some(abort) = seed_abort.filter(|_| step == 10) {
                    aligner.on_abort(CheckpointId(abort));
                }
                if input < inputs {
                    seen.entry(checkpoint).or_default().insert(input);
                }
                if let Alignment::Snapshot(CheckpointId(id)) = aligner.on_barrier(input, CheckpointId(checkpoint)) {
                    prop_assert_eq!(seen.get(&id).map(BTreeSet::len), Some(inputs), "snapshot {} before every input delivered it", id);
                    snapshots.push(id);
                }
            }
            prop_assert!(snapshots.windows(2).all(|pair| pair[0] < pair[1]), "snapshots {:?} not strictly increasing", snapshots);
        }
    }
}
