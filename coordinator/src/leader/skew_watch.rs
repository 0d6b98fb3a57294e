//! `two_phase: auto`: the leader watches what the subtasks of such an operator report (records
//! in per second) and, once one of them has taken more than the operator's skew factor times the
//! mean for a while, switches the operator to two-phase aggregation. The switch goes through a
//! checkpoint with paused sources, like a rescale at the same parallelism, so results stay
//! exactly once; the job's history says why.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::context::LeaderContext;
use super::ticker::{duty_ticker, next_round};
use crate::state_machine::{Command, JobRecord, JobStatus};
use raftstream_api::checkpoint::SubtaskKey;
use raftstream_api::ids::{Epoch, JobId, OperatorId};
use raftstream_api::messages::SubtaskMetrics;
use raftstream_api::spec::TwoPhase;

const TICK: Duration = Duration::from_millis(500);
/// Skew must be seen this long (a few metric reports, which come about once a second) before
/// the operator switches: one burst is not a hot key.
const HOLD: Duration = Duration::from_secs(2);
/// Below this input over all its subtasks, an operator's skew is noise.
const MIN_RECORDS_PER_SECOND: f64 = 100.0;

/// The `two_phase: auto` operator of `job` whose input is skewed beyond its factor according to
/// `metrics` (the job's current tasks' latest reports), and why.
pub fn skewed_operator(job: &JobRecord, metrics: &[SubtaskMetrics]) -> Option<(OperatorId, String)> {
    if job.status != JobStatus::Running
        || job.pending_rescale.is_some()
        || job.pending_savepoint.is_some()
        || job.pending_relocation.is_some()
        || job.stopping_at.is_some()
    {
        return None;
    }
    job.graph.operators.iter().find_map(|operator| {
        let TwoPhase::Auto { skew_percent, .. } = operator.config.two_phase_mode() else {
            return None;
        };
        let rates: BTreeMap<u32, f64> = metrics
            .iter()
            .filter(|reported| reported.task.subtask.operator_id == operator.id)
            .map(|reported| (reported.task.subtask.subtask_index, reported.records_in_per_second))
            .collect();
        // One subtask has no mean to exceed; every subtask must have reported.
        if operator.parallelism < 2 || rates.len() < operator.parallelism as usize {
            return None;
        }
        let total: f64 = rates.values().sum();
        if total < MIN_RECORDS_PER_SECOND {
            return None;
        }
        let mean = total / rates.len() as f64;
        let (hot_index, hot) = rates
            .iter()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .map(|(index, rate)| (*index, *rate))?;
        (hot * 100.0 > mean * skew_percent as f64).then(|| {
            (
                operator.id.clone(),
                format!(
                    "{}[{hot_index}] took {:.1}x the mean input ({hot:.0} of {total:.0} records/s; the skew factor is {:.2})",
                    operator.id,
                    hot / mean,
                    skew_percent as f64 / 100.0
                ),
            )
        })
    })
}

/// Runs until `shutdown` is cancelled (this node stopped leading).
pub async fn run<C: LeaderContext>(context: C, shutdown: CancellationToken) {
    // Per job: the operator seen skewed and since when.
    let mut seen: HashMap<JobId, (OperatorId, Instant)> = HashMap::new();
    let mut ticker = duty_ticker(TICK);
    while next_round(&mut ticker, &shutdown).await {
        // The running jobs that may switch, with their current placements' epochs.
        let watched: Vec<(JobId, BTreeMap<SubtaskKey, Epoch>)> = context.read_state(|state| {
            state
                .jobs
                .values()
                .filter(|job| {
                    job.status == JobStatus::Running
                        && job
                            .graph
                            .operators
                            .iter()
                            .any(|operator| matches!(operator.config.two_phase_mode(), TwoPhase::Auto { .. }))
                })
                .map(|job| {
                    let epochs = job
                        .assignments
                        .iter()
                        .map(|(subtask, assignment)| (subtask.clone(), assignment.epoch))
                        .collect();
                    (job.job_id, epochs)
                })
                .collect()
        });
        seen.retain(|job_id, _| watched.iter().any(|(watched_id, _)| watched_id == job_id));
        for (job_id, epochs) in watched {
            let metrics = context
                .sessions()
                .job_metrics(&job_id, |task| epochs.get(&task.subtask) == Some(&task.epoch));
            let skewed =
                context.read_state(|state| state.jobs.get(&job_id).and_then(|job| skewed_operator(job, &metrics)));
            let Some((operator_id, reason)) = skewed else {
                seen.remove(&job_id);
                continue;
            };
            match seen.get(&job_id) {
                Some((seen_operator, since)) if *seen_operator == operator_id => {
                    if since.elapsed() < HOLD {
                        continue;
                    }
                }
                _ => {
                    seen.insert(job_id, (operator_id.clone(), Instant::now()));
                    continue;
                }
            }
            seen.remove(&job_id);
            let command = Command::RequestTwoPhase {
                job_id,
                operator_id: operator_id.clone(),
                at_ms: context.now_ms(),
                reason: reason.clone(),
            };
            match context.propose(command).await {
                Ok(_) => {
                    tracing::info!(job_id = %job_id, operator_id = %operator_id, reason, "switching to two-phase aggregation")
                }
                Err(error) => {
                    tracing::info!(job_id = %job_id, error = %raftstream_observability::chain(&error), "switch to two phases not requested; tried again")
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state_machine::{apply, Command, State};
    use raftstream_api::ids::OperatorId;
    use raftstream_api::messages::TaskRef;
    use raftstream_api::spec::parse_job_spec;

    fn running_job(skew: &str) -> JobRecord {
        let spec = format!(
            r#"{{"name": "skew", "parallelism": 2, "operators": [
                {{"id": "lines", "kind": "generator"}},
                {{"id": "by_word", "kind": "key_by", "inputs": ["lines"]}},
                {{"id": "counts", "kind": "count", "inputs": ["by_word"], "params": {{"two_phase": "auto"{skew}}}}},
                {{"id": "out", "kind": "print", "inputs": ["counts"]}}]}}"#
        );
        let graph = parse_job_spec(&spec).expect("valid spec");
        let mut state = State::default();
        let submitted = apply(
            &mut state,
            Command::SubmitJob {
                request_id: None,
                graph,
                at_ms: 0,
                from_savepoint: None,
                allow_unmatched_state: false,
            },
        );
        assert!(submitted.is_ok(), "{submitted:?}");
        let mut job = state.jobs.values().next().cloned().expect("the job");
        job.status = JobStatus::Running;
        job
    }

    fn input(job: &JobRecord, rates: &[f64]) -> Vec<SubtaskMetrics> {
        rates
            .iter()
            .enumerate()
            .map(|(index, rate)| SubtaskMetrics {
                task: TaskRef {
                    job_id: job.job_id,
                    subtask: SubtaskKey {
                        operator_id: OperatorId::from("counts"),
                        subtask_index: index as u32,
                    },
                    epoch: Epoch(1),
                },
                records_in: 0,
                records_out: 0,
                busy_ms: 0,
                records_in_per_second: *rate,
                busy_ratio: 0.0,
                hot_keys: Vec::new(),
                keys_counted: 0,
                chained: Vec::new(),
                functions: Vec::new(),
            })
            .collect()
    }

    #[test]
    fn an_operator_switches_when_one_subtask_exceeds_its_factor_times_the_mean() {
        let job = running_job(r#", "skew_factor": 1.5"#);
        // 950 of 1,000 records/s on one of two subtasks: 1.9x the mean.
        let (operator, reason) = skewed_operator(&job, &input(&job, &[50.0, 950.0])).expect("skewed");
        assert_eq!(operator, "counts");
        assert!(reason.contains("counts[1]") && reason.contains("1.9x"), "{reason}");
        // Even input, or too little of it to judge, or a subtask that did not report: no switch.
        assert!(skewed_operator(&job, &input(&job, &[480.0, 520.0])).is_none());
        assert!(skewed_operator(&job, &input(&job, &[1.0, 60.0])).is_none());
        assert!(skewed_operator(&job, &input(&job, &[950.0])).is_none());
    }

    #[test]
    fn the_default_factor_is_twice_the_mean_and_a_busy_job_waits() {
        let mut job = running_job("");
        // At parallelism 2, twice the mean would be all of it: 1.9x does not switch.
        assert!(skewed_operator(&job, &input(&job, &[50.0, 950.0])).is_none());
        let mut lopsided = running_job(r#", "skew_factor": 1.2"#);
        lopsided.stopping_at = Some(raftstream_api::ids::CheckpointId(3));
        assert!(skewed_operator(&lopsided, &input(&lopsided, &[50.0, 950.0])).is_none());
        job.status = JobStatus::Restarting;
        assert!(skewed_operator(&job, &input(&job, &[0.0, 1_000.0])).is_none());
    }
}
