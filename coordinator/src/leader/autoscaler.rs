//! The leader's autoscaler (reactive parallelism): a job with `parallelism: auto` operators runs
//! at the parallelism the cluster's slots allow. When executors join, a running job grows
//! through a rescale (a checkpoint taken for it, exactly once); when executors leave and a
//! restarting job cannot get the slots it had, it shrinks to what there is. A change waits until
//! the target has been the same for the job's `autoscale.stabilization_ms`, so executors joining
//! one after another cause one rescale.

use std::collections::HashMap;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::context::LeaderContext;
use super::ticker::{duty_ticker, next_round};
use crate::state_machine::{Command, JobRecord, JobStatus, State};
use raftstream_api::ids::JobId;

const TICK: Duration = Duration::from_millis(100);

/// What the autoscaler would do to a job now, read from the state.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Decision {
    parallelism: u32,
    /// Running (grow through a checkpoint) or restarting (shrink at once).
    running: bool,
    reason: String,
}

/// The change a job with automatic operators needs, if any: a running job grows to what its
/// own slots plus the free ones allow; a restarting one that cannot get its slots back shrinks.
fn decide(state: &State, job: &JobRecord) -> Option<Decision> {
    if !job.graph.is_auto()
        || job.pending_rescale.is_some()
        || job.pending_savepoint.is_some()
        || job.pending_relocation.is_some()
        || job.stopping_at.is_some()
    {
        return None;
    }
    let held = job.slots_held();
    let free = state.free_slots();
    let capacity = held + free;
    let target = job.graph.auto_parallelism_for(capacity)?;
    let at_target = job.graph.with_auto_parallelism(target);
    if at_target == job.graph {
        return None;
    }
    let needed = job.graph.slots_needed();
    let reason = format!("{capacity} slots for it ({free} free), it needs {needed}");
    match job.status {
        JobStatus::Running if at_target.slots_needed() > needed => Some(Decision {
            parallelism: target,
            running: true,
            reason,
        }),
        JobStatus::Restarting if capacity < needed => Some(Decision {
            parallelism: target,
            running: false,
            reason,
        }),
        _ => None,
    }
}

/// Runs until `shutdown` is cancelled (this node stopped leading).
pub async fn run<C: LeaderContext>(context: C, shutdown: CancellationToken) {
    // Per job: the decision seen and since when it has been the same.
    let mut seen: HashMap<JobId, (Decision, Instant)> = HashMap::new();
    let mut ticker = duty_ticker(TICK);
    while next_round(&mut ticker, &shutdown).await {
        let decisions: Vec<(JobId, Option<Decision>, u64)> = context.read_state(|state| {
            state
                .jobs
                .values()
                .filter(|job| job.graph.is_auto() && !job.status.is_terminal())
                .map(|job| (job.job_id, decide(state, job), job.graph.autoscale.stabilization_ms))
                .collect()
        });
        seen.retain(|job_id, _| {
            decisions
                .iter()
                .any(|(id, decision, _)| id == job_id && decision.is_some())
        });
        for (job_id, decision, stabilization_ms) in decisions {
            let Some(decision) = decision else { continue };
            let since = match seen.get(&job_id) {
                Some((previous, since)) if *previous == decision => *since,
                _ => {
                    seen.insert(job_id, (decision.clone(), Instant::now()));
                    continue;
                }
            };
            if since.elapsed() < Duration::from_millis(stabilization_ms) {
                continue;
            }
            seen.remove(&job_id);
            let at_ms = context.now_ms();
            let command = if decision.running {
                Command::RequestRescale {
                    request_id: None,
                    job_id,
                    operator_id: None,
                    parallelism: decision.parallelism,
                    at_ms,
                    auto: true,
                    reason: decision.reason.clone(),
                }
            } else {
                Command::RescaleJob {
                    job_id,
                    operator_id: None,
                    parallelism: decision.parallelism,
                    at_ms,
                    auto: true,
                    reason: decision.reason.clone(),
                }
            };
            match context.propose(command).await {
                Ok(_) => {
                    tracing::info!(job_id = %job_id, parallelism = decision.parallelism, reason = %decision.reason, "automatic rescale")
                }
                Err(error) => {
                    tracing::info!(job_id = %job_id, error = %raftstream_observability::chain(&error), "automatic rescale not done; tried again")
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_fixtures::{apply_ok, executor_id, graph, StateBuilder};

    fn auto_job() -> raftstream_api::spec::JobGraph {
        graph(
            r#"{"name": "auto", "parallelism": "auto", "autoscale": {"stabilization_ms": 100}, "operators": [
                {"id": "src", "kind": "generator", "parallelism": 1},
                {"id": "keys", "kind": "key_by", "inputs": ["src"]},
                {"id": "counts", "kind": "count", "inputs": ["keys"], "parallelism": {"max": 4}},
                {"id": "out", "kind": "print", "inputs": ["counts"], "parallelism": 1}]}"#,
        )
    }

    #[test]
    fn a_job_starts_at_what_the_slots_allow_grows_when_they_grow_and_shrinks_when_it_cannot_restart() {
        // 3 slots: three slices of the whole job (keys at 3, counts at 3, the fixed ones in the
        // first slice).
        let mut state = StateBuilder::new()
            .executor("a", 3)
            .job(auto_job())
            .place_all(1, "a")
            .running(1)
            .build();
        let job_id = JobId::from_number(1);
        let at = |state: &State, id: &str| {
            state.jobs[&job_id]
                .graph
                .operator(id)
                .map(|operator| operator.parallelism)
        };
        assert_eq!((at(&state, "keys"), at(&state, "counts")), (Some(3), Some(3)));
        assert!(state.jobs[&job_id].history[0]
            .what
            .contains("start at parallelism 3 (3 free slots)"));
        assert_eq!(decide(&state, &state.jobs[&job_id]), None, "it has what it can get");

        // A second executor with 5 slots: 8 in all, so keys at 8 and counts at its max of 4.
        apply_ok(
            &mut state,
            Command::RegisterExecutor {
                executor_id: executor_id("b"),
                address: "b:1".into(),
                slots: 5,
                at_ms: 10,
            },
        );
        let grow = decide(&state, &state.jobs[&job_id]).expect("it grows");
        assert!(grow.running && grow.parallelism == 8, "{grow:?}");
        apply_ok(
            &mut state,
            Command::RequestRescale {
                request_id: None,
                job_id,
                operator_id: None,
                parallelism: grow.parallelism,
                at_ms: 11,
                auto: true,
                reason: grow.reason.clone(),
            },
        );
        assert_eq!(decide(&state, &state.jobs[&job_id]), None, "one change at a time");
        apply_ok(
            &mut state,
            Command::RescaleJob {
                job_id,
                operator_id: None,
                parallelism: grow.parallelism,
                at_ms: 12,
                auto: true,
                reason: grow.reason,
            },
        );
        assert_eq!((at(&state, "keys"), at(&state, "counts")), (Some(8), Some(4)));
        assert!(state.jobs[&job_id].history[1]
            .what
            .contains("rescaled automatic operators to parallelism 8: 8 slots"));

        // "b" dies while the job restarts: 3 slots are left, so it shrinks back, at once.
        apply_ok(
            &mut state,
            Command::MarkExecutorDead {
                executor_id: executor_id("b"),
                at_ms: 13,
            },
        );
        let shrink = decide(&state, &state.jobs[&job_id]).expect("it shrinks");
        assert!(!shrink.running && shrink.parallelism == 3, "{shrink:?}");
        apply_ok(
            &mut state,
            Command::RescaleJob {
                job_id,
                operator_id: None,
                parallelism: shrink.parallelism,
                at_ms: 14,
                auto: true,
                reason: shrink.reason,
            },
        );
        assert_eq!((at(&state, "keys"), at(&state, "counts")), (Some(3), Some(3)));
        assert_eq!(decide(&state, &state.jobs[&job_id]), None);
    }
}
