//! The `checkpoints` checker: what clients saw of each job's completed checkpoints over time.
//! Completed checkpoints never repeat or go backwards, one never vanishes while newer ones are still
//! retained (only the oldest are dropped, by retention), and every restore used a checkpoint that
//! was seen completed.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

/// One poll of a job's completed checkpoints (`job checkpoints ID`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointObservation {
    pub at_us: u64,
    pub job_id: String,
    /// Ids in the order the coordinator listed them.
    pub completed: Vec<u64>,
    /// Source records covered by the newest of them (from its source offsets), for throughput.
    #[serde(default)]
    pub records_committed: Option<u64>,
    /// (checkpoint id, when the leader completed it on the run's clock): recovery is measured
    /// from these, not from when a poll happened to see them.
    #[serde(default)]
    pub completed_at_us: Vec<(u64, u64)>,
}

/// A job restart seen by a client, with the checkpoint it restored (from the job's status).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestoreObservation {
    pub at_us: u64,
    pub job_id: String,
    pub checkpoint_id: u64,
}

/// A broken checkpoint promise.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointAnomaly {
    pub kind: String,
    pub job_id: String,
    pub checkpoint_id: u64,
    pub at_us: u64,
    pub explanation: String,
}

/// Checks the observations (in any order) and restores of every job.
pub fn check_checkpoints(
    observations: &[CheckpointObservation],
    restores: &[RestoreObservation],
) -> Vec<CheckpointAnomaly> {
    let mut anomalies = Vec::new();
    let mut by_job: BTreeMap<&str, Vec<&CheckpointObservation>> = BTreeMap::new();
    for observation in observations {
        by_job.entry(&observation.job_id).or_default().push(observation);
    }
    let mut ever_completed: BTreeMap<&str, BTreeSet<u64>> = BTreeMap::new();
    for (job_id, mut polls) in by_job {
        polls.sort_by_key(|observation| observation.at_us);
        let seen = ever_completed.entry(job_id).or_default();
        let mut latest: Option<(u64, u64)> = None;
        for poll in polls {
            let anomaly = |kind: &str, checkpoint_id: u64, explanation: String| CheckpointAnomaly {
                kind: kind.to_owned(),
                job_id: job_id.to_owned(),
                checkpoint_id,
                at_us: poll.at_us,
                explanation,
            };
            for pair in poll.completed.windows(2) {
                if pair[1] <= pair[0] {
                    anomalies.push(anomaly(
                        "repeated-or-unordered",
                        pair[1],
                        format!("the list {:?} has {} after {}", poll.completed, pair[1], pair[0]),
                    ));
                }
            }
            let newest = poll.completed.iter().copied().max();
            if let (Some((previous, previous_at)), Some(newest)) = (latest, newest) {
                if newest < previous {
                    anomalies.push(anomaly(
                        "went-backwards",
                        newest,
                        format!("the newest completed checkpoint was {previous} at {previous_at} us, now {newest}"),
                    ));
                }
            }
            if let (Some((previous, _)), None) = (latest, newest) {
                anomalies.push(anomaly(
                    "vanished",
                    previous,
                    format!("checkpoint {previous} was completed, now the job lists none"),
                ));
            }
            // Retention drops the oldest: a missing id below the oldest listed is fine, one among
            // the listed ones was lost.
            if let Some(oldest) = poll.completed.iter().copied().min() {
                let listed: BTreeSet<u64> = poll.completed.iter().copied().collect();
                for missing in seen.range(oldest..).filter(|id| !listed.contains(id)) {
                    anomalies.push(anomaly(
                        "vanished",
                        *missing,
                        format!(
                            "checkpoint {missing} was completed earlier but is missing from {:?}",
                            poll.completed
                        ),
                    ));
                }
            }
            seen.extend(poll.completed.iter().copied());
            if let Some(newest) = newest {
                if latest.is_none_or(|(previous, _)| newest >= previous) {
                    latest = Some((newest, poll.at_us));
                }
            }
        }
    }
    for restore in restores {
        let committed = ever_completed
            .get(restore.job_id.as_str())
            .is_some_and(|ids| ids.contains(&restore.checkpoint_id));
        if !committed {
            anomalies.push(CheckpointAnomaly {
                kind: "restore-of-uncommitted".into(),
                job_id: restore.job_id.clone(),
                checkpoint_id: restore.checkpoint_id,
                at_us: restore.at_us,
                explanation: format!(
                    "{} restored from checkpoint {}, which was never seen completed",
                    restore.job_id, restore.checkpoint_id
                ),
            });
        }
    }
    anomalies
}

#[cfg(test)]
mod tests {
    use super::*;

    fn poll(at_us: u64, completed: &[u64]) -> CheckpointObservation {
        CheckpointObservation {
            at_us,
            job_id: "job-1".into(),
            completed: completed.to_vec(),
            records_committed: None,
            completed_at_us: Vec::new(),
        }
    }

    fn restore(at_us: u64, checkpoint_id: u64) -> RestoreObservation {
        RestoreObservation {
            at_us,
            job_id: "job-1".into(),
            checkpoint_id,
        }
    }

    fn kinds(anomalies: &[CheckpointAnomaly]) -> Vec<(&str, u64)> {
        anomalies
            .iter()
            .map(|anomaly| (anomaly.kind.as_str(), anomaly.checkpoint_id))
            .collect()
    }

    #[test]
    fn retention_and_a_new_leader_with_higher_ids_are_fine() {
        let polls = [
            poll(1, &[1, 2]),
            poll(2, &[1, 2, 3]),
            poll(3, &[2, 3, 4]),
            poll(4, &[4, 9, 10]),
        ];
        assert_eq!(check_checkpoints(&polls, &[restore(5, 9)]), Vec::new());
    }

    #[test]
    fn an_id_that_goes_back_or_repeats_is_reported() {
        let polls = [poll(1, &[3, 4, 5]), poll(2, &[3, 4])];
        assert_eq!(
            kinds(&check_checkpoints(&polls, &[])),
            vec![("went-backwards", 4), ("vanished", 5)]
        );
        let repeated = [poll(1, &[3, 4, 4])];
        assert_eq!(
            kinds(&check_checkpoints(&repeated, &[])),
            vec![("repeated-or-unordered", 4)]
        );
    }

    #[test]
    fn a_checkpoint_lost_among_retained_ones_is_reported() {
        let polls = [poll(1, &[1, 2, 3]), poll(2, &[1, 3, 4])];
        assert_eq!(kinds(&check_checkpoints(&polls, &[])), vec![("vanished", 2)]);
    }

    #[test]
    fn a_restore_from_a_checkpoint_never_completed_is_reported() {
        let polls = [poll(1, &[1, 2])];
        assert_eq!(
            kinds(&check_checkpoints(&polls, &[restore(2, 2), restore(3, 3)])),
            vec![("restore-of-uncommitted", 3)]
        );
    }
}
