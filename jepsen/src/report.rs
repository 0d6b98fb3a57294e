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

/// p50/p99/max of some durations, in milliseconds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Percentiles {
    pub samples: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

/// Nearest-rank percentiles of `values` (milliseconds); `None` when there are none.
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
        p50_ms: rank(0.50),
        p99_ms: rank(0.99),
        max_ms: max,
    })
}

/// For each fault, how long after it started the job completed a new checkpoint: the stream's
/// recovery time, at the resolution of the checkpoint polls.
pub fn checkpoint_recovery_ms(faults: &[FaultRecord], polls: &[CheckpointObservation]) -> Vec<(FaultKind, f64)> {
    let newest = |poll: &CheckpointObservation| poll.completed.iter().copied().max().unwrap_or(0);
    faults
        .iter()
        .filter_map(|fault| {
            let before = polls
                .iter()
                .filter(|poll| poll.at_us <= fault.started_us)
                .map(newest)
                .max()?;
            let recovered = polls
                .iter()
                .filter(|poll| poll.at_us > fault.started_us && newest(poll) > before)
                .map(|poll| poll.at_us)
                .min()?;
            Some((fault.kind, (recovered - fault.started_us) as f64 / 1_000.0))
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
    pub restarts: u32,
    pub expected_lines: u64,
    pub lines: u64,
    pub exact: bool,
    pub problems: Vec<String>,
}

/// Everything a run found.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    pub seed: u64,
    pub time_limit_s: u64,
    pub faults: Vec<FaultRecord>,
    pub faults_by_kind: BTreeMap<String, usize>,
    pub operations: BTreeMap<String, usize>,
    pub checkpoint_polls: usize,
    pub metadata_anomalies: Vec<Anomaly>,
    pub checkpoint_anomalies: Vec<CheckpointAnomaly>,
    pub stream: Option<StreamResult>,
    /// Fault start -> next completed checkpoint, per fault kind.
    pub stream_recovery: BTreeMap<String, Percentiles>,
    /// Fault start -> next successful metadata operation, per fault kind.
    pub metadata_recovery: BTreeMap<String, Percentiles>,
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
        let mut text = format!("seed {}, {} s of faults\n", self.seed, self.time_limit_s);
        text += &format!("faults: {:?}\n", self.faults_by_kind);
        text += &format!("operations: {:?}\n", self.operations);
        text += &format!("checkpoint polls: {}\n", self.checkpoint_polls);
        if let Some(stream) = &self.stream {
            text += &format!(
                "stream {}: {} after {} restarts, {} of {} lines, {}\n",
                stream.job_id,
                stream.final_status,
                stream.restarts,
                stream.lines,
                stream.expected_lines,
                if stream.exact { "exactly once" } else { "NOT exact" }
            );
        }
        for (label, table) in [
            ("stream recovery (fault -> next checkpoint)", &self.stream_recovery),
            (
                "metadata recovery (fault -> next ok operation)",
                &self.metadata_recovery,
            ),
        ] {
            for (kind, figures) in table {
                text += &format!(
                    "{label}, {kind}: p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms over {}\n",
                    figures.p50_ms, figures.p99_ms, figures.max_ms, figures.samples
                );
            }
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
    fn percentiles_use_the_nearest_rank() {
        let values: Vec<f64> = (1..=100).map(f64::from).collect();
        let figures = percentiles(&values).expect("values");
        assert_eq!((figures.p50_ms, figures.p99_ms, figures.max_ms), (50.0, 99.0, 100.0));
        assert_eq!(percentiles(&[7.0]).map(|figures| figures.p99_ms), Some(7.0));
        assert!(percentiles(&[]).is_none());
    }

    #[test]
    fn recovery_is_the_first_new_checkpoint_after_the_fault() {
        let poll = |at_us: u64, completed: &[u64]| CheckpointObservation {
            at_us,
            job_id: "job-1".into(),
            completed: completed.to_vec(),
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
        assert_eq!(checkpoint_recovery_ms(&[fault], &polls), vec![(FaultKind::Kill, 2.5)]);
    }
}
