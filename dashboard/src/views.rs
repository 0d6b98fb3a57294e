//! What each view of the dashboard shows, built from the coordinators' gRPC answers. Pure
//! functions of those answers, so the JSON API's shape is tested without a cluster.

use std::collections::BTreeMap;

use raftstream_api::function_status::{job_functions, FunctionStatus};
use raftstream_api::ids::OperatorId;
use raftstream_proto::v1 as pb;
use serde::Serialize;

/// `/api/v1/cluster`: the members as the serving node sees them.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ClusterView {
    /// The coordinator that answered this request.
    pub served_by: u64,
    pub leader_id: Option<u64>,
    pub term: u64,
    pub members: Vec<MemberView>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MemberView {
    pub node_id: u64,
    pub address: String,
    /// voter or learner.
    pub role: String,
    /// Leader, Follower, Candidate, Learner, or unreachable.
    pub state: String,
    pub term: u64,
    pub last_log_index: Option<u64>,
    pub committed_index: Option<u64>,
    pub applied_index: Option<u64>,
    /// Entries the member has yet to apply of what the leader has in its log.
    pub lag: Option<u64>,
    /// Why the member could not be asked, when it could not.
    pub error: String,
}

pub fn cluster_view(served_by: u64, status: &pb::ClusterStatusResponse) -> ClusterView {
    let nodes: BTreeMap<u64, &pb::NodeStatus> = status.nodes.iter().map(|node| (node.node_id, node)).collect();
    let leader_log = status
        .leader_id
        .and_then(|leader| nodes.get(&leader))
        .and_then(|leader| leader.last_log_index);
    let members = status
        .members
        .iter()
        .map(|member| {
            let node = nodes.get(&member.node_id);
            let applied_index = node.and_then(|node| node.applied_index);
            MemberView {
                node_id: member.node_id,
                address: member.address.clone(),
                role: member.role.clone(),
                state: node.map_or_else(|| "unknown".to_owned(), |node| node.state.clone()),
                term: node.map_or(0, |node| node.term),
                last_log_index: node.and_then(|node| node.last_log_index),
                committed_index: node.and_then(|node| node.committed_index),
                applied_index,
                lag: leader_log
                    .zip(applied_index)
                    .map(|(leader, applied)| leader.saturating_sub(applied)),
                error: node.map_or_else(String::new, |node| node.error.clone()),
            }
        })
        .collect();
    ClusterView {
        served_by,
        leader_id: status.leader_id,
        term: status.term,
        members,
    }
}

/// `/api/v1/executors`: every executor the leader knows, with what runs on it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ExecutorsView {
    pub executors: Vec<ExecutorView>,
    /// How long the answering leader has led (lease ages start there).
    pub leading_for_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ExecutorView {
    pub executor_id: String,
    pub address: String,
    pub slots: u32,
    pub used_slots: u32,
    pub alive: bool,
    pub connected: bool,
    pub draining: bool,
    /// Milliseconds since the leader last heard from it (the age of its lease).
    pub lease_age_ms: Option<u64>,
    /// `job/operator[index]` of each subtask placed on it.
    pub subtasks: Vec<String>,
}

pub fn executors_view(listed: &pb::ListExecutorsResponse, jobs: &[pb::Job]) -> ExecutorsView {
    let mut placed: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for job in jobs.iter().filter(|job| !is_ended(&job.status)) {
        for subtask in job.subtasks.iter().filter(|subtask| !subtask.executor_id.is_empty()) {
            placed.entry(subtask.executor_id.as_str()).or_default().push(format!(
                "{}/{}[{}]",
                job.name, subtask.operator_id, subtask.subtask_index
            ));
        }
    }
    ExecutorsView {
        executors: listed
            .executors
            .iter()
            .map(|executor| ExecutorView {
                executor_id: executor.executor_id.clone(),
                address: executor.address.clone(),
                slots: executor.slots,
                used_slots: executor.used_slots,
                alive: executor.alive,
                connected: executor.connected,
                draining: executor.draining,
                lease_age_ms: executor.last_heartbeat_age_ms,
                subtasks: placed.remove(executor.executor_id.as_str()).unwrap_or_default(),
            })
            .collect(),
        leading_for_ms: listed.leading_for_ms,
    }
}

fn is_ended(status: &str) -> bool {
    matches!(status, "Finished" | "Failed" | "Cancelled" | "Stopped")
}

/// One job in `/api/v1/jobs`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct JobSummary {
    pub job_id: String,
    pub name: String,
    pub status: String,
    pub status_reason: String,
    pub restart_count: u32,
    pub submitted_at_ms: u64,
    pub last_checkpoint_id: Option<u64>,
    pub operators: usize,
    pub subtasks: usize,
    /// Slots the job takes (one per parallel slice) and holds now.
    pub slots_needed: u64,
    pub slots_held: u64,
}

pub fn job_summary(job: &pb::Job) -> JobSummary {
    JobSummary {
        job_id: job.job_id.clone(),
        name: job.name.clone(),
        status: job.status.clone(),
        status_reason: job.status_reason.clone(),
        restart_count: job.restart_count,
        submitted_at_ms: job.submitted_at_ms,
        last_checkpoint_id: job.last_checkpoint_id,
        operators: job.operators.len(),
        subtasks: job.subtasks.len(),
        slots_needed: job.slots_needed,
        slots_held: job.slots_held,
    }
}

/// `/api/v1/jobs/{id}`: the job's graph, subtasks, checkpoints and history.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct JobView {
    #[serde(flatten)]
    pub summary: JobSummary,
    pub operators: Vec<OperatorView>,
    pub subtasks: Vec<SubtaskView>,
    /// Newest first.
    pub checkpoints: Vec<CheckpointView>,
    pub history: Vec<EventView>,
    /// Restarts with their reasons, as the serving coordinator saw them (newest last).
    pub restarts: Vec<EventView>,
    pub restored_checkpoint_id: Option<u64>,
    /// The job's user functions with the calls its subtasks report.
    pub functions: Vec<FunctionStatus>,
}

/// One vertex of the job graph.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OperatorView {
    pub operator_id: OperatorId,
    pub kind: String,
    pub parallelism: u32,
    pub inputs: Vec<OperatorId>,
    /// Records per second into the operator's subtasks (chained operators report with their
    /// chain's head, so they show none of their own).
    pub records_in_per_second: Option<f64>,
    /// The operator runs inside the chain of this head operator.
    pub chained_to: Option<OperatorId>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SubtaskView {
    pub operator_id: OperatorId,
    pub subtask_index: u32,
    /// Empty while it waits for a slot.
    pub executor_id: String,
    pub epoch: u64,
    /// WAITING (no slot), STARTING (deployed, restoring) or RUNNING.
    pub state: String,
    pub records_in: Option<u64>,
    pub records_out: Option<u64>,
    pub busy_ratio: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CheckpointView {
    pub checkpoint_id: u64,
    pub trigger: String,
    pub savepoint: bool,
    pub size_bytes: u64,
    pub completed_at_ms: u64,
    /// From trigger to completion, when the trigger time is known.
    pub duration_ms: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EventView {
    pub at_ms: u64,
    pub what: String,
}

pub fn job_view(job: &pb::Job, checkpoints: &[pb::Checkpoint], metrics: Option<&pb::GetJobMetricsResponse>) -> JobView {
    let key = |task: &Option<pb::TaskRef>| task.as_ref().map(|task| (task.operator_id.clone(), task.subtask_index));
    let mut reported: BTreeMap<(String, u32), &pb::SubtaskMetrics> = BTreeMap::new();
    let mut chained_to: BTreeMap<String, String> = BTreeMap::new();
    let mut rate: BTreeMap<String, f64> = BTreeMap::new();
    let mut running: BTreeMap<(String, u32), u64> = BTreeMap::new();
    if let Some(metrics) = metrics {
        for subtask in &metrics.subtasks {
            if let Some(key) = key(&subtask.task) {
                *rate.entry(key.0.clone()).or_default() += subtask.records_in_per_second;
                for member in &subtask.chained {
                    chained_to.insert(member.clone(), key.0.clone());
                }
                reported.insert(key, subtask);
            }
        }
        for entry in &metrics.running {
            if let Some(key) = key(&entry.task) {
                let epoch = entry.task.as_ref().map_or(0, |task| task.epoch);
                running.insert(key, epoch);
            }
        }
    }
    let operators = job
        .operators
        .iter()
        .map(|operator| OperatorView {
            operator_id: OperatorId::from(operator.operator_id.as_str()),
            kind: operator.kind.clone(),
            parallelism: operator.parallelism,
            inputs: operator
                .inputs
                .iter()
                .map(|input| OperatorId::from(input.as_str()))
                .collect(),
            records_in_per_second: rate.get(&operator.operator_id).copied(),
            chained_to: chained_to
                .get(&operator.operator_id)
                .map(|head| OperatorId::from(head.as_str())),
        })
        .collect();
    let subtasks = job
        .subtasks
        .iter()
        .map(|subtask| {
            let key = (subtask.operator_id.clone(), subtask.subtask_index);
            let counted = reported.get(&key);
            let state = if subtask.executor_id.is_empty() {
                "WAITING"
            } else if running.get(&key) == Some(&subtask.epoch) {
                "RUNNING"
            } else {
                "STARTING"
            };
            SubtaskView {
                operator_id: OperatorId::from(subtask.operator_id.as_str()),
                subtask_index: subtask.subtask_index,
                executor_id: subtask.executor_id.clone(),
                epoch: subtask.epoch,
                state: state.to_owned(),
                records_in: counted.map(|counted| counted.records_in),
                records_out: counted.map(|counted| counted.records_out),
                busy_ratio: counted.map(|counted| counted.busy_ratio),
            }
        })
        .collect();
    let mut checkpoints: Vec<CheckpointView> = checkpoints
        .iter()
        .map(|checkpoint| CheckpointView {
            checkpoint_id: checkpoint.checkpoint_id,
            trigger: checkpoint.trigger.clone(),
            savepoint: checkpoint.savepoint,
            size_bytes: checkpoint.size_bytes,
            completed_at_ms: checkpoint.completed_at_ms,
            duration_ms: (checkpoint.triggered_at_ms > 0)
                .then(|| checkpoint.completed_at_ms.saturating_sub(checkpoint.triggered_at_ms)),
        })
        .collect();
    checkpoints.sort_by(|a, b| b.checkpoint_id.cmp(&a.checkpoint_id));
    JobView {
        summary: job_summary(job),
        operators,
        subtasks,
        checkpoints,
        history: job
            .history
            .iter()
            .map(|event| EventView {
                at_ms: event.at_ms,
                what: event.what.clone(),
            })
            .collect(),
        restarts: Vec::new(),
        restored_checkpoint_id: job.restored_checkpoint_id,
        functions: job_functions(job, metrics.map_or(&[], |metrics| metrics.subtasks.as_slice())),
    }
}

/// One entry of `/api/v1/timeline`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TimelineEntry {
    pub at_ms: u64,
    /// leader (a leader change), executor (declared dead, draining, registered), restart (a
    /// job's, with its reason) or job (a rescale or move from the job's replicated history).
    pub kind: String,
    /// The job an entry is about, empty for the others.
    pub job_id: String,
    pub job: String,
    pub what: String,
}

/// What the serving coordinator saw (`local`) and every job's replicated history, newest first,
/// at most `limit` entries.
pub fn timeline(local: &[TimelineEntry], jobs: &[pb::Job], limit: usize) -> Vec<TimelineEntry> {
    let mut entries: Vec<TimelineEntry> = local.to_vec();
    for job in jobs {
        for event in &job.history {
            entries.push(TimelineEntry {
                at_ms: event.at_ms,
                kind: "job".to_owned(),
                job_id: job.job_id.clone(),
                job: job.name.clone(),
                what: event.what.clone(),
            });
        }
    }
    // Newest first; the sort is stable, so what happened at the same millisecond keeps its order.
    entries.reverse();
    entries.sort_by(|a, b| b.at_ms.cmp(&a.at_ms));
    entries.truncate(limit);
    entries
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(node_id: u64, state: &str, last_log: u64, applied: u64) -> pb::NodeStatus {
        pb::NodeStatus {
            node_id,
            address: format!("127.0.0.1:{node_id}"),
            state: state.to_owned(),
            term: 3,
            leader_id: Some(1),
            last_log_index: Some(last_log),
            committed_index: Some(applied),
            applied_index: Some(applied),
            ..pb::NodeStatus::default()
        }
    }

    #[test]
    fn members_show_their_lag_behind_the_leaders_log() {
        let status = pb::ClusterStatusResponse {
            leader_id: Some(1),
            term: 3,
            members: (1..=3)
                .map(|node_id| pb::Member {
                    node_id,
                    address: format!("127.0.0.1:{node_id}"),
                    role: "voter".to_owned(),
                })
                .collect(),
            nodes: vec![
                node(1, "Leader", 100, 100),
                node(2, "Follower", 100, 97),
                pb::NodeStatus {
                    node_id: 3,
                    state: "unreachable".to_owned(),
                    error: "connection refused".to_owned(),
                    ..pb::NodeStatus::default()
                },
            ],
        };
        let view = cluster_view(2, &status);
        assert_eq!((view.served_by, view.leader_id, view.term), (2, Some(1), 3));
        let lags: Vec<Option<u64>> = view.members.iter().map(|member| member.lag).collect();
        assert_eq!(lags, vec![Some(0), Some(3), None]);
        assert_eq!(view.members[2].state, "unreachable");
        assert_eq!(view.members[2].error, "connection refused");
    }

    fn job() -> pb::Job {
        pb::Job {
            job_id: "j1".to_owned(),
            name: "wc".to_owned(),
            status: "Running".to_owned(),
            operators: vec![
                pb::Operator {
                    operator_id: "lines".to_owned(),
                    kind: "generator".to_owned(),
                    parallelism: 1,
                    inputs: Vec::new(),
                },
                pb::Operator {
                    operator_id: "words".to_owned(),
                    kind: "flat_map".to_owned(),
                    parallelism: 1,
                    inputs: vec!["lines".to_owned()],
                },
            ],
            subtasks: vec![
                pb::Subtask {
                    operator_id: "lines".to_owned(),
                    subtask_index: 0,
                    executor_id: "exec-a".to_owned(),
                    epoch: 4,
                    executor_address: String::new(),
                },
                pb::Subtask {
                    operator_id: "words".to_owned(),
                    subtask_index: 0,
                    executor_id: String::new(),
                    epoch: 0,
                    executor_address: String::new(),
                },
            ],
            history: vec![
                pb::JobEvent {
                    at_ms: 10,
                    what: "restarted: executor exec-b declared dead".to_owned(),
                },
                pb::JobEvent {
                    at_ms: 30,
                    what: "rescaled the job to parallelism 1".to_owned(),
                },
            ],
            ..pb::Job::default()
        }
    }

    fn task(operator: &str, epoch: u64) -> Option<pb::TaskRef> {
        Some(pb::TaskRef {
            job_id: "j1".to_owned(),
            operator_id: operator.to_owned(),
            subtask_index: 0,
            epoch,
        })
    }

    #[test]
    fn a_job_view_joins_placement_metrics_running_reports_and_checkpoints() {
        let metrics = pb::GetJobMetricsResponse {
            subtasks: vec![pb::SubtaskMetrics {
                task: task("lines", 4),
                records_in: 500,
                records_out: 2_000,
                records_in_per_second: 250.0,
                busy_ratio: 0.5,
                chained: vec!["words".to_owned()],
                ..pb::SubtaskMetrics::default()
            }],
            running: vec![pb::SubtaskRunning {
                task: task("lines", 4),
                restore_ms: 3,
            }],
        };
        let checkpoints = vec![
            pb::Checkpoint {
                checkpoint_id: 7,
                triggered_at_ms: 1_000,
                completed_at_ms: 1_040,
                size_bytes: 99,
                trigger: "interval".to_owned(),
                ..pb::Checkpoint::default()
            },
            pb::Checkpoint {
                checkpoint_id: 8,
                completed_at_ms: 2_000,
                trigger: "records".to_owned(),
                ..pb::Checkpoint::default()
            },
        ];
        let view = job_view(&job(), &checkpoints, Some(&metrics));
        assert_eq!(view.operators[0].records_in_per_second, Some(250.0));
        assert_eq!(
            view.operators[1].chained_to.as_ref().map(OperatorId::as_str),
            Some("lines")
        );
        let states: Vec<&str> = view.subtasks.iter().map(|subtask| subtask.state.as_str()).collect();
        assert_eq!(states, vec!["RUNNING", "WAITING"]);
        assert_eq!(view.subtasks[0].records_out, Some(2_000));
        let ids: Vec<u64> = view
            .checkpoints
            .iter()
            .map(|checkpoint| checkpoint.checkpoint_id)
            .collect();
        assert_eq!(ids, vec![8, 7], "newest first");
        assert_eq!(view.checkpoints[1].duration_ms, Some(40));
        assert_eq!(view.checkpoints[0].duration_ms, None, "no trigger time recorded");
        let json = serde_json::to_value(&view).expect("serializes");
        assert_eq!(json["name"], "wc", "the summary's fields are at the top level");

        // A report from an older epoch is not the current placement running.
        let stale = pb::GetJobMetricsResponse {
            running: vec![pb::SubtaskRunning {
                task: task("lines", 3),
                restore_ms: 3,
            }],
            ..pb::GetJobMetricsResponse::default()
        };
        assert_eq!(job_view(&job(), &[], Some(&stale)).subtasks[0].state, "STARTING");
    }

    #[test]
    fn the_timeline_merges_local_events_and_job_histories_newest_first() {
        let local = |at_ms: u64, kind: &str, what: &str| TimelineEntry {
            at_ms,
            kind: kind.to_owned(),
            job_id: String::new(),
            job: String::new(),
            what: what.to_owned(),
        };
        let seen = vec![
            local(5, "leader", "node 1 leads in term 1"),
            local(20, "executor", "executor exec-b declared dead"),
        ];
        let entries = timeline(&seen, &[job()], 10);
        let order: Vec<(u64, &str)> = entries.iter().map(|entry| (entry.at_ms, entry.kind.as_str())).collect();
        assert_eq!(order, vec![(30, "job"), (20, "executor"), (10, "job"), (5, "leader")]);
        assert_eq!(entries[0].job, "wc");
        assert_eq!(timeline(&seen, &[job()], 2).len(), 2, "bounded");
        let executors = executors_view(
            &pb::ListExecutorsResponse {
                executors: vec![pb::ExecutorInfo {
                    executor_id: "exec-a".to_owned(),
                    slots: 4,
                    ..pb::ExecutorInfo::default()
                }],
                leading_for_ms: 9,
            },
            &[job()],
        );
        assert_eq!(executors.executors[0].subtasks, vec!["wc/lines[0]".to_owned()]);
    }
}
