//! After the faults: waiting for the stream job to end while committed progress still comes,
//! and checking its output.

use std::time::{Duration, Instant};

use raftstream::wordcount::{check_output, WordCountJob};
use raftstream_api::client::ClusterClient;
use raftstream_proto::v1 as pb;
use tonic::Code;

use crate::report::StreamResult;
use crate::workloads::{has_ended, newest_generated_records};

/// How long the settle phase waits for the stream job to end. A job still catching up after the
/// faults (its source lags behind the rate and a restart replays from the last checkpoint) is
/// not a defect, so the wait lasts as long as committed progress keeps coming; only a job whose
/// checkpoints stop advancing for `stall_limit` is reported, and `cap` bounds the whole wait.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SettleWait {
    stall_limit: Duration,
    cap: Duration,
}

pub(crate) const SETTLE_WAIT: SettleWait = SettleWait {
    // Several times the slowest recovery seen in 20-minute runs (restart-all p99 ~18 s).
    stall_limit: Duration::from_secs(120),
    cap: Duration::from_secs(30 * 60),
};

/// Why the settle phase stopped waiting for a job that did not end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum SettleTimeout {
    Stalled {
        stall: Duration,
        committed_lines: Option<u64>,
    },
    Capped {
        waited: Duration,
    },
}

impl std::fmt::Display for SettleTimeout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Stalled { stall, committed_lines } => {
                let at = committed_lines.map_or_else(|| "no checkpoint".to_owned(), |lines| format!("{lines} lines"));
                write!(
                    f,
                    "the job did not end and made no committed progress for {stall:?} (stuck at {at})"
                )
            }
            Self::Capped { waited } => write!(
                f,
                "the job did not end within {waited:?} after the faults, though still progressing"
            ),
        }
    }
}

/// Tracks the job's committed progress during the settle phase (pure, so the rule is testable).
#[derive(Debug)]
pub(crate) struct SettleWatch {
    wait: SettleWait,
    started: Instant,
    best_lines: Option<u64>,
    last_progress: Instant,
}

impl SettleWatch {
    fn new(wait: SettleWait, now: Instant) -> Self {
        Self {
            wait,
            started: now,
            best_lines: None,
            last_progress: now,
        }
    }

    /// Records the lines the newest completed checkpoint covers (if one could be read) and says
    /// whether to give up waiting.
    fn observe(&mut self, now: Instant, committed_lines: Option<u64>) -> Option<SettleTimeout> {
        if committed_lines > self.best_lines {
            self.best_lines = committed_lines;
            self.last_progress = now;
        }
        let waited = now.duration_since(self.started);
        let stall = now.duration_since(self.last_progress);
        if stall >= self.wait.stall_limit {
            Some(SettleTimeout::Stalled {
                stall,
                committed_lines: self.best_lines,
            })
        } else if waited >= self.wait.cap {
            Some(SettleTimeout::Capped { waited })
        } else {
            None
        }
    }
}

/// Waits for the stream job to end (see [`SettleWait`]) and checks its committed output against
/// the expected counts. A job that is no longer in the table ended earlier (`seen_ended`).
pub(crate) async fn finish_stream(
    client: &ClusterClient,
    job_id: &str,
    spec: &WordCountJob,
    seen_ended: Option<pb::Job>,
) -> anyhow::Result<StreamResult> {
    let parallelism = u64::from(spec.parallelism);
    let settle_started = Instant::now();
    let mut watch = SettleWatch::new(SETTLE_WAIT, settle_started);
    let mut next_progress_line = settle_started + Duration::from_secs(30);
    let ended = loop {
        match client.get_job(job_id, pb::ReadConsistency::Linearizable).await {
            Ok(job) if has_ended(&job) => break Ok(job),
            Err(error) if error.code() == Code::NotFound => {
                if let Some(job) = &seen_ended {
                    break Ok(job.clone());
                }
            }
            _ => {}
        }
        let committed_lines = client
            .list_checkpoints(job_id)
            .await
            .ok()
            .and_then(|checkpoints| newest_generated_records(&checkpoints, parallelism));
        let now = Instant::now();
        if let Some(timeout) = watch.observe(now, committed_lines) {
            break Err(timeout);
        }
        if now >= next_progress_line {
            next_progress_line = now + Duration::from_secs(30);
            println!(
                "[settle {:>5.0} s] {job_id} not ended yet: {} of {} lines committed",
                settle_started.elapsed().as_secs_f64(),
                committed_lines.map_or_else(|| "?".to_owned(), |lines| lines.to_string()),
                spec.records
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let check = check_output(&spec.output_dir, &spec.expected_counts())?;
    let expected_lines = spec.records * spec.words_per_record;
    let mut problems = check.problems.clone();
    let max_epoch = |job: &pb::Job| job.subtasks.iter().map(|subtask| subtask.epoch).max().unwrap_or(0);
    let (final_status, restarts, epochs) = match &ended {
        Ok(job) => {
            if job.status != "Finished" {
                problems.insert(0, format!("job ended {}: {}", job.status, job.status_reason));
            }
            (job.status.clone(), job.restart_count, max_epoch(job))
        }
        Err(timeout) => {
            // Name the job, how often it restarted and where its placements stand: a job that
            // keeps restarting without progress is a different defect than one that is stuck.
            let last = client.get_job(job_id, pb::ReadConsistency::Linearizable).await.ok();
            let (status, restarts, epochs) = last.as_ref().map_or(("unknown".to_owned(), 0, 0), |job| {
                (
                    format!("{}: {}", job.status, job.status_reason),
                    job.restart_count,
                    max_epoch(job),
                )
            });
            problems.insert(
                0,
                format!(
                    "{job_id} {timeout}; it restarted {restarts} times, epochs up to {epochs}, last status {status}"
                ),
            );
            ("not ended".to_owned(), restarts, epochs)
        }
    };
    Ok(StreamResult {
        job_id: job_id.to_owned(),
        final_status,
        restarts,
        max_epoch: epochs,
        expected_lines,
        lines: check.lines,
        exact: problems.is_empty() && check.lines == expected_lines,
        problems,
        settle_ms: u64::try_from(settle_started.elapsed().as_millis()).unwrap_or(u64::MAX),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const WAIT: SettleWait = SettleWait {
        stall_limit: Duration::from_secs(10),
        cap: Duration::from_secs(60),
    };

    #[test]
    fn settle_wait_lasts_while_committed_progress_comes() {
        let start = Instant::now();
        let mut watch = SettleWatch::new(WAIT, start);
        // Progress every 9 s keeps the watch going well past one stall limit.
        for step in 0..6u64 {
            let now = start + Duration::from_secs(9 * step);
            assert_eq!(watch.observe(now, Some(100 * step + 1)), None, "step {step}");
        }
    }

    #[test]
    fn settle_wait_gives_up_on_a_stall_and_names_where_it_stuck() {
        let start = Instant::now();
        let mut watch = SettleWatch::new(WAIT, start);
        assert_eq!(watch.observe(start + Duration::from_secs(2), Some(500)), None);
        // Unreadable checkpoints and a lower figure (an older leader's answer) are no progress.
        assert_eq!(watch.observe(start + Duration::from_secs(5), None), None);
        assert_eq!(watch.observe(start + Duration::from_secs(8), Some(400)), None);
        let timeout = watch.observe(start + Duration::from_secs(12), Some(500));
        assert_eq!(
            timeout,
            Some(SettleTimeout::Stalled {
                stall: Duration::from_secs(10),
                committed_lines: Some(500)
            })
        );
        let message = timeout.map(|timeout| timeout.to_string()).unwrap_or_default();
        assert!(
            message.contains("no committed progress") && message.contains("500 lines"),
            "{message}"
        );
    }

    #[test]
    fn settle_wait_is_capped_even_when_progress_continues() {
        let start = Instant::now();
        let mut watch = SettleWatch::new(WAIT, start);
        let mut verdict = None;
        for step in 1..=20u64 {
            verdict = watch.observe(start + Duration::from_secs(5 * step), Some(step));
            if verdict.is_some() {
                break;
            }
        }
        assert_eq!(
            verdict,
            Some(SettleTimeout::Capped {
                waited: Duration::from_secs(60)
            })
        );
    }
}
