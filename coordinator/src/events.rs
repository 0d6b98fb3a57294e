//! What this coordinator saw happen, for the dashboard's timeline: leader changes (from its Raft
//! metrics), and executor deaths, drains and job restarts (from its applied state, stamped with
//! the time their log entries carry). Kept in memory, bounded, per node: derived from the log
//! rather than written to it, so the replicated state machine and its stored form stay as they
//! are. A node that starts later sees only what happens from then on.

use crate::clock::now_ms;
use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use raftstream_api::ids::{ExecutorId, JobId};
use raftstream_dashboard::views::TimelineEntry;
use tokio_util::sync::CancellationToken;

use crate::context::CoordinatorContext;
use crate::state_machine::State;

/// How many events a node remembers.
const REMEMBERED: usize = 256;

/// How often the applied state is compared with what was seen before.
const OBSERVE_EVERY: Duration = Duration::from_millis(200);

/// The events, shared between the observer and the dashboard.
#[derive(Debug, Clone, Default)]
pub struct ClusterEvents(Arc<Mutex<Observed>>);

#[derive(Debug, Default)]
struct Observed {
    entries: VecDeque<TimelineEntry>,
    /// `None` until the first look: what existed then is the baseline, not news.
    jobs: Option<BTreeMap<JobId, u32>>,
    executors: BTreeMap<ExecutorId, (bool, bool)>,
    /// The last leader seen, with its term, and whether it is lost from sight now.
    leader: Option<(u64, u64)>,
    leaderless: bool,
}

impl Observed {
    fn push(&mut self, entry: TimelineEntry) {
        self.entries.push_back(entry);
        while self.entries.len() > REMEMBERED {
            self.entries.pop_front();
        }
    }

    /// Compares `state` with what was seen before and records restarts, deaths and drains.
    fn observe_state(&mut self, state: &State) {
        let baseline = self.jobs.is_none();
        let seen_jobs = self.jobs.take().unwrap_or_default();
        let mut jobs = BTreeMap::new();
        for (job_id, job) in &state.jobs {
            let before = seen_jobs.get(job_id).copied().unwrap_or(0);
            if !baseline && job.restart_count > before {
                self.push(TimelineEntry {
                    at_ms: job.updated_at_ms,
                    kind: "restart".to_owned(),
                    job_id: job_id.to_string(),
                    job: job.graph.name.clone(),
                    what: format!("restart {}: {}", job.restart_count, job.status_reason),
                });
            }
            jobs.insert(*job_id, job.restart_count);
        }
        self.jobs = Some(jobs);
        for (executor_id, executor) in &state.executors {
            let now = (executor.alive, executor.draining);
            let before = self.executors.insert(executor_id.clone(), now);
            if baseline {
                continue;
            }
            let what = match (before, now) {
                (Some((true, _)), (false, _)) => format!("executor {executor_id} declared dead"),
                (Some((_, false)), (true, true)) => format!("executor {executor_id} draining"),
                (None, _) | (Some((false, _)), (true, _)) => format!("executor {executor_id} registered"),
                _ => continue,
            };
            self.push(TimelineEntry {
                at_ms: executor.updated_at_ms,
                kind: "executor".to_owned(),
                job_id: String::new(),
                job: String::new(),
                what,
            });
        }
    }

    /// Records a leader elected in a new term (as etcd counts leader changes: losing sight of
    /// the leader and finding the same one in the same term is none), or one lost from sight.
    /// Returns whether the leader changed.
    fn observe_leader(&mut self, leader: Option<u64>, term: u64, at_ms: u64) -> bool {
        match leader {
            Some(leader) if self.leader != Some((term, leader)) => {
                let changed = self.leader.is_some();
                self.leader = Some((term, leader));
                self.leaderless = false;
                self.push(TimelineEntry {
                    at_ms,
                    kind: "leader".to_owned(),
                    job_id: String::new(),
                    job: String::new(),
                    what: format!("node {leader} leads in term {term}"),
                });
                changed
            }
            Some(_) => {
                self.leaderless = false;
                false
            }
            None if !self.leaderless && self.leader.is_some() => {
                self.leaderless = true;
                self.push(TimelineEntry {
                    at_ms,
                    kind: "leader".to_owned(),
                    job_id: String::new(),
                    job: String::new(),
                    what: format!("no leader in term {term} (election)"),
                });
                false
            }
            None => false,
        }
    }
}

impl ClusterEvents {
    /// Oldest first.
    pub fn entries(&self) -> Vec<TimelineEntry> {
        self.0
            .lock()
            .map(|observed| observed.entries.iter().cloned().collect())
            .unwrap_or_default()
    }

    fn observe_state(&self, state: &State) {
        if let Ok(mut observed) = self.0.lock() {
            observed.observe_state(state);
        }
    }

    fn observe_leader(&self, leader: Option<u64>, term: u64, at_ms: u64) -> bool {
        self.0
            .lock()
            .map(|mut observed| observed.observe_leader(leader, term, at_ms))
            .unwrap_or(false)
    }
}

/// Watches the leader (counting its changes in the metrics) and the applied state until
/// `shutdown`.
pub async fn observe(context: CoordinatorContext, events: ClusterEvents, shutdown: CancellationToken) {
    let mut watch = context.raft.metrics();
    let mut ticks = tokio::time::interval(OBSERVE_EVERY);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let (leader, term) = {
            let metrics = watch.borrow();
            (metrics.current_leader, metrics.current_term)
        };
        if events.observe_leader(leader.map(|leader| leader.0), term, now_ms()) {
            context.metrics.leader_changed();
        }
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => return,
            changed = watch.changed() => {
                if changed.is_err() {
                    return;
                }
            }
            _ = ticks.tick() => events.observe_state(&context.applied.read().state),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_fixtures::StateBuilder;

    fn kinds(observed: &Observed) -> Vec<(String, String)> {
        observed
            .entries
            .iter()
            .map(|entry| (entry.kind.clone(), entry.what.clone()))
            .collect()
    }

    #[test]
    fn restarts_deaths_and_drains_are_news_after_the_first_look() {
        let mut state = StateBuilder::new().executor("e", 8).build();
        let mut observed = Observed::default();
        observed.observe_state(&state);
        assert!(
            observed.entries.is_empty(),
            "what exists at the first look is the baseline"
        );
        if let Some(executor) = state.executors.values_mut().next() {
            executor.draining = true;
            executor.updated_at_ms = 5;
        }
        observed.observe_state(&state);
        if let Some(executor) = state.executors.values_mut().next() {
            executor.alive = false;
            executor.updated_at_ms = 9;
        }
        observed.observe_state(&state);
        observed.observe_state(&state);
        assert_eq!(
            kinds(&observed),
            vec![
                ("executor".to_owned(), "executor e draining".to_owned()),
                ("executor".to_owned(), "executor e declared dead".to_owned()),
            ]
        );
        assert_eq!(observed.entries[1].at_ms, 9, "stamped with the entry's time");
    }

    #[test]
    fn a_job_restart_is_recorded_with_its_reason() {
        let mut state = StateBuilder::new()
            .executor("e", 8)
            .job(crate::test_fixtures::source_to_sink(""))
            .build();
        let mut observed = Observed::default();
        observed.observe_state(&state);
        if let Some(job) = state.jobs.values_mut().next() {
            job.restart_count = 1;
            job.status_reason = "executor e declared dead".to_owned();
            job.updated_at_ms = 42;
        }
        observed.observe_state(&state);
        assert_eq!(observed.entries.len(), 1);
        let entry = &observed.entries[0];
        assert_eq!((entry.kind.as_str(), entry.at_ms), ("restart", 42));
        assert_eq!(entry.what, "restart 1: executor e declared dead");
        assert_eq!(entry.job_id, "job-1");
    }

    #[test]
    fn leader_changes_count_new_terms_not_a_leader_found_again() {
        let mut observed = Observed::default();
        assert!(
            !observed.observe_leader(Some(1), 1, 10),
            "the first leader seen is no change"
        );
        assert!(!observed.observe_leader(None, 1, 11));
        assert!(!observed.observe_leader(Some(1), 1, 12), "found again in the same term");
        assert!(observed.observe_leader(Some(2), 2, 13));
        assert!(observed.observe_leader(Some(2), 3, 14), "re-elected in a new term");
        let whats: Vec<String> = observed.entries.iter().map(|entry| entry.what.clone()).collect();
        assert_eq!(
            whats,
            vec![
                "node 1 leads in term 1",
                "no leader in term 1 (election)",
                "node 2 leads in term 2",
                "node 2 leads in term 3"
            ]
        );
    }
}
