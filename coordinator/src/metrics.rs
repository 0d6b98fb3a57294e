//! A coordinator's Prometheus metrics. Most are read at scrape time from the Raft node and the
//! applied state (nothing to keep in step); what only happens between scrapes is counted as it
//! happens: leader changes, proposals and their latency, checkpoint outcomes on the leader.
//!
//! Every node reports its Raft position; the cluster's executors and the jobs are reported by the
//! leader only, so summing over coordinators never counts a job twice.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};
use raftstream_api::ids::JobId;
use raftstream_observability::{single, Families, Labels};

use crate::clock::now_ms;
use crate::raft::{CommittedIndex, CoordinatorRaft, SharedAppliedState, SnapshotStats};
use raftstream_api::checkpoint::CompletedCheckpoint;
use raftstream_api::ids::NodeId;

use crate::state_machine::{JobRecord, JobStatus, State};

/// How a proposal ended, as the `outcome` label says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProposalOutcome {
    /// Committed and applied (the command itself may still have been refused by the state).
    Committed,
    /// This node is not the leader.
    NotLeader,
    /// Not committed in time, or Raft failed.
    Failed,
}

impl ProposalOutcome {
    fn label(self) -> &'static str {
        match self {
            ProposalOutcome::Committed => "committed",
            ProposalOutcome::NotLeader => "not_leader",
            ProposalOutcome::Failed => "failed",
        }
    }
}

/// What happened to one of a job's checkpoints on this leader.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckpointEvent {
    Triggered,
    Completed,
    Failed,
}

#[derive(Debug, Default, Clone, Copy)]
struct CheckpointCounts {
    triggered: u64,
    completed: u64,
    failed: u64,
}

/// What a coordinator counts as it happens; cheap to clone.
#[derive(Debug, Clone)]
pub struct CoordinatorMetrics(Arc<Counted>);

#[derive(Debug)]
struct Counted {
    leader_changes: Counter,
    proposals: Family<Vec<(&'static str, &'static str)>, Counter>,
    proposal_duration: Histogram,
    checkpoints: Mutex<HashMap<JobId, CheckpointCounts>>,
}

impl Default for CoordinatorMetrics {
    fn default() -> Self {
        CoordinatorMetrics(Arc::new(Counted {
            leader_changes: Counter::default(),
            proposals: Family::default(),
            // 0.5 ms .. ~4 s: a local commit takes about a millisecond, one across a slow
            // follower a few, an election seconds.
            proposal_duration: Histogram::new(exponential_buckets(0.0005, 2.0, 14)),
            checkpoints: Mutex::default(),
        }))
    }
}

impl CoordinatorMetrics {
    pub fn leader_changed(&self) {
        self.0.leader_changes.inc();
    }

    pub fn proposal(&self, outcome: ProposalOutcome, took: Duration) {
        self.0
            .proposals
            .get_or_create(&vec![("outcome", outcome.label())])
            .inc();
        self.0.proposal_duration.observe(took.as_secs_f64());
    }

    pub fn checkpoint(&self, job_id: JobId, event: CheckpointEvent) {
        let Ok(mut checkpoints) = self.0.checkpoints.lock() else {
            return;
        };
        let counts = checkpoints.entry(job_id).or_default();
        match event {
            CheckpointEvent::Triggered => counts.triggered += 1,
            CheckpointEvent::Completed => counts.completed += 1,
            CheckpointEvent::Failed => counts.failed += 1,
        }
    }

    fn checkpoint_counts(&self, job_id: &JobId) -> CheckpointCounts {
        self.0
            .checkpoints
            .lock()
            .ok()
            .and_then(|checkpoints| checkpoints.get(job_id).copied())
            .unwrap_or_default()
    }

    /// Forgets jobs that are no longer in the state (ended and retired).
    fn retain_jobs(&self, state: &State) {
        if let Ok(mut checkpoints) = self.0.checkpoints.lock() {
            checkpoints.retain(|job_id, _| state.jobs.contains_key(job_id));
        }
    }

    /// The registry `/metrics` serves: these counters and what `sources` show at each scrape.
    pub fn registry(&self, sources: ScrapeSources) -> Registry {
        let mut registry = Registry::with_prefix("raftstream");
        registry.register(
            "raft_leader_changes",
            "Times this node saw a new leader (elections it observed)",
            self.0.leader_changes.clone(),
        );
        registry.register(
            "raft_proposals",
            "Commands this node proposed through Raft, by outcome",
            self.0.proposals.clone(),
        );
        registry.register_with_unit(
            "raft_proposal_duration",
            "Time from proposing a command to its being applied here",
            Unit::Seconds,
            self.0.proposal_duration.clone(),
        );
        registry.register_collector(Box::new(StateCollector {
            sources,
            counted: self.clone(),
        }));
        registry
    }
}

/// What a scrape reads: the Raft node, the applied state, the committed index and the snapshot
/// counts.
pub struct ScrapeSources {
    pub node_id: NodeId,
    pub raft: CoordinatorRaft,
    pub applied: SharedAppliedState,
    pub committed: CommittedIndex,
    pub snapshots: Arc<SnapshotStats>,
}

/// Reads the Raft node and the applied state at each scrape.
struct StateCollector {
    sources: ScrapeSources,
    counted: CoordinatorMetrics,
}

impl std::fmt::Debug for StateCollector {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("StateCollector")
            .field("node_id", &self.sources.node_id)
            .finish()
    }
}

impl Collector for StateCollector {
    fn encode(&self, encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let mut families = Families::new(encoder);
        let is_leader = self.encode_raft(&mut families)?;
        if is_leader {
            let applied = self.sources.applied.read();
            self.counted.retain_jobs(&applied.state);
            encode_cluster(&mut families, &applied.state)?;
            encode_jobs(&mut families, &applied.state, &self.counted, now_ms())?;
        }
        Ok(())
    }
}

fn u64_value(value: u64) -> f64 {
    value as f64
}

impl StateCollector {
    /// This node's Raft position; whether it leads.
    fn encode_raft(&self, families: &mut Families<'_>) -> Result<bool, std::fmt::Error> {
        let metrics = self.sources.raft.metrics().borrow().clone();
        let is_leader = metrics.current_leader == Some(self.sources.node_id);
        families.gauge(
            "raft_term",
            "Current Raft term",
            None,
            single(u64_value(metrics.current_term)),
        )?;
        families.gauge(
            "raft_leader_id",
            "Node id of the leader this node knows of (absent when none)",
            None,
            metrics
                .current_leader
                .map(|leader| (Labels::new(), u64_value(leader.0))),
        )?;
        families.gauge(
            "raft_is_leader",
            "1 on the leader, 0 elsewhere",
            None,
            single(if is_leader { 1.0 } else { 0.0 }),
        )?;
        let index = |log_id: Option<openraft::LogId<NodeId>>| u64_value(log_id.map_or(0, |log_id| log_id.index));
        families.gauge(
            "raft_last_log_index",
            "Index of the last entry in this node's log",
            None,
            single(metrics.last_log_index.map_or(0.0, u64_value)),
        )?;
        families.gauge(
            "raft_committed_index",
            "Index of the last entry this node knows is committed",
            None,
            single(self.sources.committed.get().map_or(0.0, u64_value)),
        )?;
        families.gauge(
            "raft_applied_index",
            "Index of the last entry applied to this node's state",
            None,
            single(index(metrics.last_applied)),
        )?;
        families.gauge(
            "raft_snapshot_index",
            "Index of the last entry in this node's latest snapshot",
            None,
            single(index(metrics.snapshot)),
        )?;
        let membership = metrics.membership_config.membership();
        families.gauge(
            "raft_members",
            "Cluster members by role",
            None,
            [
                (
                    vec![("role", "voter".to_owned())],
                    membership.voter_ids().count() as f64,
                ),
                (
                    vec![("role", "learner".to_owned())],
                    membership.learner_ids().count() as f64,
                ),
            ],
        )?;
        if let (true, Some(replication)) = (is_leader, metrics.replication.as_ref()) {
            let last = metrics.last_log_index.unwrap_or(0);
            families.gauge(
                "raft_replication_lag_entries",
                "Entries the leader has that a member has not acknowledged",
                None,
                replication.iter().map(|(member, matched)| {
                    let matched = matched.map_or(0, |log_id| log_id.index);
                    (
                        vec![("member", member.to_string())],
                        u64_value(last.saturating_sub(matched)),
                    )
                }),
            )?;
        }
        families.counter(
            "raft_snapshots_built",
            "Snapshots this node built",
            None,
            single(u64_value(self.sources.snapshots.built.load(Ordering::Relaxed))),
        )?;
        families.counter(
            "raft_snapshots_installed",
            "Snapshots this node installed from the leader",
            None,
            single(u64_value(self.sources.snapshots.installed.load(Ordering::Relaxed))),
        )?;
        families.gauge(
            "raft_snapshot_size",
            "Size of this node's latest snapshot",
            Some(Unit::Bytes),
            single(u64_value(
                self.sources.snapshots.last_size_bytes.load(Ordering::Relaxed),
            )),
        )?;
        Ok(is_leader)
    }
}

fn encode_cluster(families: &mut Families<'_>, state: &State) -> Result<(), std::fmt::Error> {
    let alive = state.executors.values().filter(|executor| executor.alive);
    let (mut live, mut draining, mut slots) = (0u64, 0u64, 0u64);
    for executor in alive {
        live += 1;
        draining += u64::from(executor.draining);
        slots += u64::from(executor.slots);
    }
    let dead = state.executors.len() as u64 - live;
    families.gauge(
        "executors",
        "Registered executors by state (draining ones are alive too)",
        None,
        [
            (vec![("state", "alive".to_owned())], u64_value(live)),
            (vec![("state", "draining".to_owned())], u64_value(draining)),
            (vec![("state", "dead".to_owned())], u64_value(dead)),
        ],
    )?;
    // A slot holds one parallel slice of a job, however many of its subtasks that is.
    let used: u64 = state
        .executors
        .values()
        .filter(|executor| executor.alive)
        .map(|executor| u64::from(state.used_slots(&executor.executor_id)))
        .sum();
    let waiting = state
        .jobs
        .values()
        .filter(|job| !job.status.is_terminal())
        .flat_map(|job| job.assignments.values())
        .filter(|assignment| assignment.executor_id.is_none())
        .count() as u64;
    families.gauge(
        "executor_slots",
        "Task slots of live executors, in all and in use",
        None,
        [
            (vec![("state", "total".to_owned())], u64_value(slots)),
            (vec![("state", "used".to_owned())], u64_value(used)),
        ],
    )?;
    families.gauge(
        "subtasks_waiting",
        "Subtasks of live jobs waiting for a free slot",
        None,
        single(u64_value(waiting)),
    )?;
    families.gauge(
        "jobs",
        "Jobs the cluster holds, by status",
        None,
        JobStatus::ALL.iter().map(|status| {
            let count = state.jobs.values().filter(|job| job.status == *status).count();
            (vec![("status", status.name().to_owned())], count as f64)
        }),
    )
}

fn job_labels(job: &JobRecord) -> Labels {
    vec![("job", job.job_id.to_string())]
}

fn seconds_between(from_ms: u64, to_ms: u64) -> f64 {
    to_ms.saturating_sub(from_ms) as f64 / 1000.0
}

fn encode_jobs(
    families: &mut Families<'_>,
    state: &State,
    counted: &CoordinatorMetrics,
    now_ms: u64,
) -> Result<(), std::fmt::Error> {
    let jobs: Vec<&JobRecord> = state.jobs.values().collect();
    families.gauge(
        "job_status",
        "1 for the job's current status, 0 for the others",
        None,
        jobs.iter().flat_map(|job| {
            JobStatus::ALL.iter().map(move |status| {
                let mut labels = job_labels(job);
                labels.push(("status", status.name().to_owned()));
                (labels, if job.status == *status { 1.0 } else { 0.0 })
            })
        }),
    )?;
    families.counter(
        "job_restarts",
        "Times the job restarted from a checkpoint after a failure",
        None,
        jobs.iter().map(|job| (job_labels(job), f64::from(job.restart_count))),
    )?;
    families.gauge(
        "job_uptime",
        "Time since the job last started or restarted (0 unless running)",
        Some(Unit::Seconds),
        jobs.iter().map(|job| {
            let since = job
                .last_restore
                .as_ref()
                .map_or(job.submitted_at_ms, |restore| restore.at_ms.max(job.submitted_at_ms));
            let uptime = if job.status == JobStatus::Running {
                seconds_between(since, now_ms)
            } else {
                0.0
            };
            (job_labels(job), uptime)
        }),
    )?;
    families.gauge(
        "job_downtime",
        "Time the job has been restarting (0 unless restarting)",
        Some(Unit::Seconds),
        jobs.iter().map(|job| {
            let downtime = if job.status == JobStatus::Restarting {
                seconds_between(job.updated_at_ms, now_ms)
            } else {
                0.0
            };
            (job_labels(job), downtime)
        }),
    )?;
    // The latest completed checkpoint of each job that has one, read by reference (a checkpoint
    // holds every task's state handles).
    let latest: Vec<(Labels, &CompletedCheckpoint)> = jobs
        .iter()
        .filter_map(|job| job.checkpoints.back().map(|checkpoint| (job_labels(job), checkpoint)))
        .collect();
    type LatestValue = fn(&CompletedCheckpoint, u64) -> f64;
    let latest_families: [(&str, &str, Option<Unit>, LatestValue); 4] = [
        (
            "job_last_checkpoint_duration",
            "Time from triggering the job's latest completed checkpoint to its completion",
            Some(Unit::Seconds),
            |checkpoint, _| seconds_between(checkpoint.triggered_at_ms, checkpoint.completed_at_ms),
        ),
        (
            "job_last_checkpoint_size",
            "State size of the job's latest completed checkpoint",
            Some(Unit::Bytes),
            |checkpoint, _| u64_value(checkpoint.size_bytes),
        ),
        (
            "job_last_completed_checkpoint_id",
            "Id of the job's latest completed checkpoint",
            None,
            |checkpoint, _| u64_value(checkpoint.checkpoint_id.0),
        ),
        (
            "job_last_checkpoint_age",
            "Time since the job's latest checkpoint completed",
            Some(Unit::Seconds),
            |checkpoint, now_ms| seconds_between(checkpoint.completed_at_ms, now_ms),
        ),
    ];
    for (name, help, unit, value) in latest_families {
        families.gauge(
            name,
            help,
            unit,
            latest
                .iter()
                .map(|(labels, checkpoint)| (labels.clone(), value(checkpoint, now_ms))),
        )?;
    }
    families.gauge(
        "job_last_restore_timestamp",
        "When the job last restarted from a checkpoint (Unix time)",
        Some(Unit::Seconds),
        jobs.iter().filter_map(|job| {
            job.last_restore
                .as_ref()
                .map(|restore| (job_labels(job), restore.at_ms as f64 / 1000.0))
        }),
    )?;
    let counts: Vec<(Labels, CheckpointCounts)> = jobs
        .iter()
        .map(|job| (job_labels(job), counted.checkpoint_counts(&job.job_id)))
        .collect();
    families.counter(
        "job_checkpoints_completed",
        "Checkpoints of the job this leader completed",
        None,
        counts
            .iter()
            .map(|(labels, counts)| (labels.clone(), u64_value(counts.completed))),
    )?;
    families.counter(
        "job_checkpoints_failed",
        "Checkpoints of the job this leader aborted (timed out, declined, a subtask failed)",
        None,
        counts
            .iter()
            .map(|(labels, counts)| (labels.clone(), u64_value(counts.failed))),
    )?;
    families.gauge(
        "job_checkpoints_in_progress",
        "Checkpoints of the job triggered and not yet completed or aborted",
        None,
        counts.iter().map(|(labels, counts)| {
            let open = counts.triggered.saturating_sub(counts.completed + counts.failed);
            (labels.clone(), u64_value(open))
        }),
    )
}
