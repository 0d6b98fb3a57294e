//! What a run found: `OUT/report.json` and the summary printed at the end.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::checkpoints::{CheckpointAnomaly, CheckpointObservation};
use crate::history::{Operation, Outcome};
use crate::job_table::{Anomaly, JobInput, JobOutput};
use crate::schedule::FaultKind;

/// One fault as it happened.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FaultRecord {
    pub kind: FaultKind,
    /// Which process(es), resolved when the fault fired ("leader node 2", "executor exec-1").
    pub target: String,
    pub started_us: u64,
    pub healed_us: u64,
}

/// p50/p99/max of some figures (the field holding them names the unit).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Percentiles {
    pub samples: usize,
    pub p50: f64,
    pub p99: f64,
    pub max: f64,
}

/// Nearest-rank percentiles of `values`; `None` when there are none.
pub fn percentiles(values: &[f64]) -> Option<Percentiles> {
    let mut sorted: Vec<f64> = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = |fraction: f64| {
        let position = ((fraction * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
        sorted[position - 1]
    };
    let max = *sorted.last()?;
    Some(Percentiles {
        samples: sorted.len(),
        p50: rank(0.50),
        p99: rank(0.99),
        max,
    })
}

/// For each fault, how long after it started the job completed a new checkpoint: the stream's
/// recovery time, at the resolution of the checkpoint polls.
pub fn checkpoint_recovery_ms(faults: &[FaultRecord], polls: &[CheckpointObservation]) -> Vec<(FaultKind, f64)> {
    recoveries_per_fault(faults, polls)
        .into_iter()
        .map(|recovery| (recovery.kind, recovery.recovery_ms))
        .collect()
}

/// One fault's stream recovery: which fault, and fault start -> next completed checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FaultRecovery {
    pub kind: FaultKind,
    pub target: String,
    /// When the fault began, seconds since the start of the run.
    pub started_s: f64,
    pub recovery_ms: f64,
}

/// The slowest `count` stream recoveries, slowest first: where a tail comes from.
pub fn slowest_recoveries(faults: &[FaultRecord], polls: &[CheckpointObservation], count: usize) -> Vec<FaultRecovery> {
    let mut recoveries = recoveries_per_fault(faults, polls);
    recoveries.sort_by(|a, b| b.recovery_ms.total_cmp(&a.recovery_ms));
    recoveries.truncate(count);
    recoveries
}

fn recoveries_per_fault(faults: &[FaultRecord], polls: &[CheckpointObservation]) -> Vec<FaultRecovery> {
    let newest = |poll: &CheckpointObservation| poll.completed.iter().copied().max().unwrap_or(0);
    faults
        .iter()
        .filter_map(|fault| {
            let before = polls
                .iter()
                .filter(|poll| poll.at_us <= fault.started_us)
                .map(newest)
                .max()?;
            // The leader's completion time of the first newer checkpoint completed after the
            // fault began; a poll's own time only where no completion time was recorded.
            let completed = polls
                .iter()
                .flat_map(|poll| poll.completed_at_us.iter())
                .filter(|(id, at_us)| *id > before && *at_us >= fault.started_us)
                .map(|(_, at_us)| *at_us)
                .min();
            let recovered = completed.or_else(|| {
                polls
                    .iter()
                    .filter(|poll| poll.at_us > fault.started_us && newest(poll) > before)
                    .map(|poll| poll.at_us)
                    .min()
            })?;
            Some(FaultRecovery {
                kind: fault.kind,
                target: fault.target.clone(),
                started_s: fault.started_us as f64 / 1e6,
                recovery_ms: (recovered - fault.started_us) as f64 / 1_000.0,
            })
        })
        .collect()
}

/// For each fault, how long after it started a metadata operation invoked after the start
/// succeeded: the coordinators' unavailability.
pub fn metadata_recovery_ms(
    faults: &[FaultRecord],
    history: &[Operation<JobInput, JobOutput>],
) -> Vec<(FaultKind, f64)> {
    faults
        .iter()
        .filter_map(|fault| {
            let first_ok = history
                .iter()
                .filter(|operation| {
                    operation.invoked_us >= fault.started_us && matches!(operation.outcome, Outcome::Ok(_))
                })
                .filter_map(|operation| operation.completed_us)
                .min()?;
            Some((fault.kind, (first_ok - fault.started_us) as f64 / 1_000.0))
        })
        .collect()
}

/// Committed throughput between two consecutive new checkpoints.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ThroughputSample {
    /// When the earlier checkpoint was seen, seconds since the start.
    pub from_s: f64,
    /// When the later checkpoint was seen.
    pub at_s: f64,
    pub records_per_s: f64,
}

/// Throughput is averaged over at least this long: checkpoints (every few hundred ms) and polls
/// (every 250 ms) alias, so shorter windows show dips that are only sampling noise.
pub const THROUGHPUT_WINDOW_US: u64 = 2_000_000;

/// Records committed per second over successive windows of at least [`THROUGHPUT_WINDOW_US`],
/// from the source offsets of the newest completed checkpoint at each poll.
pub fn throughput(polls: &[CheckpointObservation]) -> Vec<ThroughputSample> {
    let mut samples = Vec::new();
    let mut previous: Option<(u64, u64)> = None;
    for poll in polls {
        let Some(records) = poll.records_committed else {
            continue;
        };
        match previous {
            Some((at_us, before)) if poll.at_us >= at_us + THROUGHPUT_WINDOW_US => {
                let seconds = (poll.at_us - at_us) as f64 / 1e6;
                samples.push(ThroughputSample {
                    from_s: at_us as f64 / 1e6,
                    at_s: poll.at_us as f64 / 1e6,
                    records_per_s: records.saturating_sub(before) as f64 / seconds,
                });
                previous = Some((poll.at_us, records));
            }
            Some(_) => {}
            None => previous = Some((poll.at_us, records)),
        }
    }
    samples
}

/// For each fault, how far committed throughput fell below the run's median while the fault
/// lasted and for `settle_s` after it healed, in percent (0: no dip, 100: nothing committed).
pub fn throughput_dips(faults: &[FaultRecord], samples: &[ThroughputSample], settle_s: f64) -> Vec<(FaultKind, f64)> {
    let mut rates: Vec<f64> = samples.iter().map(|sample| sample.records_per_s).collect();
    rates.sort_by(f64::total_cmp);
    let Some(median) = rates.get(rates.len() / 2).copied().filter(|median| *median > 0.0) else {
        return Vec::new();
    };
    faults
        .iter()
        .map(|fault| {
            let from = fault.started_us as f64 / 1e6;
            let to = fault.healed_us as f64 / 1e6 + settle_s;
            // A window with no new checkpoint at all committed nothing.
            let lowest = samples
                .iter()
                .filter(|sample| sample.at_s > from && sample.from_s < to)
                .map(|sample| sample.records_per_s)
                .fold(None, |lowest: Option<f64>, rate| {
                    Some(lowest.map_or(rate, |low| low.min(rate)))
                })
                .unwrap_or(0.0);
            (fault.kind, ((1.0 - lowest / median) * 100.0).clamp(0.0, 100.0))
        })
        .collect()
}

/// Which node was leader when polled (`None`: none reachable), and the highest Raft term a
/// reachable coordinator reported.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaderObservation {
    pub at_us: u64,
    pub leader: Option<u64>,
    #[serde(default)]
    pub term: Option<u64>,
}

/// How much the Raft group churned over a run: terms taken and leaders changed.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ElectionFigures {
    pub first_term: u64,
    pub last_term: u64,
    /// `last_term - first_term`: every election, won or not, takes a term.
    pub new_terms: u64,
    /// Times the observed leader was a different node than the one observed before it.
    pub leader_changes: usize,
    pub new_terms_per_fault: f64,
}

/// Terms and leader changes from the observations, per fault of `faults`.
pub fn election_figures(leaders: &[LeaderObservation], faults: usize) -> ElectionFigures {
    let terms: Vec<u64> = leaders.iter().filter_map(|observation| observation.term).collect();
    let first_term = terms.first().copied().unwrap_or(0);
    let last_term = terms.iter().copied().max().unwrap_or(0);
    let mut leader_changes = 0;
    let mut previous = None;
    for leader in leaders.iter().filter_map(|observation| observation.leader) {
        if previous.is_some_and(|before| before != leader) {
            leader_changes += 1;
        }
        previous = Some(leader);
    }
    let new_terms = last_term.saturating_sub(first_term);
    ElectionFigures {
        first_term,
        last_term,
        new_terms,
        leader_changes,
        new_terms_per_fault: if faults == 0 {
            0.0
        } else {
            new_terms as f64 / faults as f64
        },
    }
}

/// Groups per fault kind.
pub fn by_kind(samples: &[(FaultKind, f64)]) -> BTreeMap<String, Percentiles> {
    let mut grouped: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    for (kind, value) in samples {
        grouped.entry(kind.name().to_owned()).or_default().push(*value);
    }
    grouped
        .into_iter()
        .filter_map(|(kind, values)| Some((kind, percentiles(&values)?)))
        .collect()
}

/// Operations by kind and outcome ("submit ok": 12, ...).
pub fn operation_counts(history: &[Operation<JobInput, JobOutput>]) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for operation in history {
        let kind = match operation.input {
            JobInput::Submit { .. } => "submit",
            JobInput::Cancel { .. } => "cancel",
            JobInput::Get { .. } => "get",
            JobInput::List => "list",
        };
        let outcome = match operation.outcome {
            Outcome::Ok(_) => "ok",
            Outcome::Fail(_) => "fail",
            Outcome::Unknown(_) => "unknown",
        };
        *counts.entry(format!("{kind} {outcome}")).or_insert(0) += 1;
    }
    counts
}

/// The stream workload's verdict.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamResult {
    pub job_id: String,
    pub final_status: String,
    /// The job's restart count as last read, also when it did not end.
    pub restarts: u32,
    /// The highest subtask epoch last read: every placement takes a new one, so epochs far above
    /// what the restarts explain point at placements that keep failing.
    #[serde(default)]
    pub max_epoch: u64,
    pub expected_lines: u64,
    pub lines: u64,
    pub exact: bool,
    pub problems: Vec<String>,
    /// From the end of the faults until the job ended or the wait gave up.
    #[serde(default)]
    pub settle_ms: u64,
}

/// Everything a run found.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    pub seed: u64,
    pub time_limit_s: u64,
    /// Where the faults acted: `proxy` or `netns`.
    pub network: String,
    pub faults: Vec<FaultRecord>,
    pub faults_by_kind: BTreeMap<String, usize>,
    pub operations: BTreeMap<String, usize>,
    pub checkpoint_polls: usize,
    pub metadata_anomalies: Vec<Anomaly>,
    pub checkpoint_anomalies: Vec<CheckpointAnomaly>,
    pub stream: Option<StreamResult>,
    /// Fault start -> next completed checkpoint, per fault kind.
    pub stream_recovery_ms: BTreeMap<String, Percentiles>,
    /// The faults with the longest stream recovery, slowest first.
    #[serde(default)]
    pub slowest_stream_recoveries: Vec<FaultRecovery>,
    /// Fault start -> next successful metadata operation, per fault kind.
    pub metadata_recovery_ms: BTreeMap<String, Percentiles>,
    /// How far committed throughput fell during each fault and 2 s after (percent below the
    /// run's median), per fault kind.
    pub throughput_dip_percent: BTreeMap<String, Percentiles>,
    pub throughput: Vec<ThroughputSample>,
    pub leaders: Vec<LeaderObservation>,
    #[serde(default)]
    pub elections: ElectionFigures,
}

impl Report {
    /// Anomalies of every checker, explained, one per line.
    pub fn anomalies(&self) -> Vec<String> {
        let mut lines: Vec<String> = self
            .metadata_anomalies
            .iter()
            .map(|anomaly| format!("metadata {}: {}", anomaly.kind, anomaly.explanation))
            .collect();
        lines.extend(
            self.checkpoint_anomalies
                .iter()
                .map(|anomaly| format!("checkpoints {}: {}", anomaly.kind, anomaly.explanation)),
        );
        if let Some(stream) = &self.stream {
            if !stream.exact {
                lines.push(format!(
                    "stream {} ({}): {} lines, expected {}: {}",
                    stream.job_id,
                    stream.final_status,
                    stream.lines,
                    stream.expected_lines,
                    stream.problems.join("; ")
                ));
            }
        }
        lines
    }

    /// The human summary.
    pub fn summary(&self) -> String {
        let mut text = format!(
            "seed {}, {} s of faults, links faulted by {}\n",
            self.seed, self.time_limit_s, self.network
        );
        text += &format!("faults: {:?}\n", self.faults_by_kind);
        text += &format!("operations: {:?}\n", self.operations);
        text += &format!("checkpoint polls: {}\n", self.checkpoint_polls);
        text += &format!(
            "raft: terms {} -> {} ({} new, {:.1} per fault), {} leader changes\n",
            self.elections.first_term,
            self.elections.last_term,
            self.elections.new_terms,
            self.elections.new_terms_per_fault,
            self.elections.leader_changes
        );
        if let Some(stream) = &self.stream {
            text += &format!(
                "stream {}: {} after {} restarts (epochs up to {}; {:.1} s after the faults), {} of {} lines, {}\n",
                stream.job_id,
                stream.final_status,
                stream.restarts,
                stream.max_epoch,
                stream.settle_ms as f64 / 1000.0,
                stream.lines,
                stream.expected_lines,
                if stream.exact { "exactly once" } else { "NOT exact" }
            );
        }
        for (label, table) in [
            ("stream recovery (fault -> next checkpoint)", &self.stream_recovery_ms),
            (
                "metadata recovery (fault -> next ok operation)",
                &self.metadata_recovery_ms,
            ),
        ] {
            for (kind, figures) in table {
                text += &format!(
                    "{label}, {kind}: p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms over {}\n",
                    figures.p50, figures.p99, figures.max, figures.samples
                );
            }
        }
        for recovery in &self.slowest_stream_recoveries {
            text += &format!(
                "slow stream recovery: {} of {} at {:.1} s took {:.0} ms\n",
                recovery.kind.name(),
                recovery.target,
                recovery.started_s,
                recovery.recovery_ms
            );
        }
        for (kind, figures) in &self.throughput_dip_percent {
            text += &format!(
                "throughput dip (below the median, during the fault and 2 s after), {kind}: p50 {:.0} %, p99 {:.0} %, max {:.0} % over {}\n",
                figures.p50, figures.p99, figures.max, figures.samples
            );
        }
        let anomalies = self.anomalies();
        if anomalies.is_empty() {
            text += "anomalies: none\n";
        } else {
            text += &format!("anomalies: {}\n", anomalies.len());
            for anomaly in anomalies {
                text += &format!("  {anomaly}\n");
            }
        }
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn elections_count_new_terms_and_leader_changes() {
        let observe = |at_us, leader, term| LeaderObservation { at_us, leader, term };
        let leaders = [
            observe(0, Some(1), Some(4)),
            observe(1, None, None),
            observe(2, Some(1), Some(4)),
            observe(3, Some(2), Some(6)),
            observe(4, None, Some(7)),
            observe(5, Some(2), Some(7)),
            observe(6, Some(1), Some(8)),
        ];
        let figures = election_figures(&leaders, 2);
        assert_eq!((figures.first_term, figures.last_term, figures.new_terms), (4, 8, 4));
        assert_eq!(figures.leader_changes, 2);
        assert!((figures.new_terms_per_fault - 2.0).abs() < 1e-9);
        assert_eq!(election_figures(&[], 0), ElectionFigures::default());
    }

    #[test]
    fn percentiles_use_the_nearest_rank() {
        let values: Vec<f64> = (1..=100).map(f64::from).collect();
        let figures = percentiles(&values).expect("values");
        assert_eq!((figures.p50, figures.p99, figures.max), (50.0, 99.0, 100.0));
        assert_eq!(percentiles(&[7.0]).map(|figures| figures.p99), Some(7.0));
        assert!(percentiles(&[]).is_none());
    }

    #[test]
    fn throughput_is_averaged_over_windows_and_a_fault_without_progress_is_a_full_dip() {
        let poll = |at_s: u64, records: u64| CheckpointObservation {
            at_us: at_s * 1_000_000,
            job_id: "job-1".into(),
            completed: vec![records / 1_000],
            records_committed: Some(records),
            completed_at_us: Vec::new(),
        };
        let polls = [
            poll(0, 0),
            poll(1, 1_000),
            poll(2, 2_000),
            poll(4, 4_000),
            poll(6, 4_500),
            poll(8, 6_500),
            poll(10, 6_500),
            poll(12, 8_500),
        ];
        let samples = throughput(&polls);
        let rates: Vec<f64> = samples.iter().map(|sample| sample.records_per_s).collect();
        assert_eq!(rates, vec![1_000.0, 1_000.0, 250.0, 1_000.0, 0.0, 1_000.0]);
        let fault = |started_s: u64, healed_s: u64| FaultRecord {
            kind: FaultKind::Pause,
            target: "leader node 1".into(),
            started_us: started_s * 1_000_000,
            healed_us: healed_s * 1_000_000,
        };
        let dips = throughput_dips(&[fault(4, 5), fault(8, 9)], &samples, 0.5);
        assert_eq!(dips, vec![(FaultKind::Pause, 75.0), (FaultKind::Pause, 100.0)]);
    }

    #[test]
    fn recovery_is_the_first_new_checkpoint_after_the_fault() {
        let poll = |at_us: u64, completed: &[u64]| CheckpointObservation {
            at_us,
            job_id: "job-1".into(),
            completed: completed.to_vec(),
            records_committed: None,
            completed_at_us: Vec::new(),
        };
        let polls = [
            poll(1_000, &[3]),
            poll(2_000, &[3]),
            poll(2_500, &[3]),
            poll(4_000, &[3, 4]),
        ];
        let fault = FaultRecord {
            kind: FaultKind::Kill,
            target: "executor exec-1".into(),
            started_us: 1_500,
            healed_us: 3_000,
        };
        assert_eq!(
            checkpoint_recovery_ms(&[fault.clone()], &polls),
            vec![(FaultKind::Kill, 2.5)]
        );

        // With the leader's completion times, recovery ends when checkpoint 4 completed (at
        // 3,100 us), not when a poll saw it; 3 completed before the fault and does not count.
        let timed = |at_us: u64, completed: &[(u64, u64)]| CheckpointObservation {
            completed_at_us: completed.to_vec(),
            ..poll(at_us, &completed.iter().map(|(id, _)| *id).collect::<Vec<_>>())
        };
        let polls = [
            timed(1_000, &[(3, 900)]),
            timed(2_500, &[(3, 900)]),
            timed(4_000, &[(3, 900), (4, 3_100)]),
        ];
        assert_eq!(checkpoint_recovery_ms(&[fault], &polls), vec![(FaultKind::Kill, 1.6)]);
    }
}
