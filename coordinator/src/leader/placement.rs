//! Where to place waiting subtasks: pure decision logic, tested without sockets.

use std::collections::BTreeMap;

use crate::ids::{ExecutorId, JobId};
use crate::state_machine::{JobStatus, State, SubtaskKey};

/// One subtask to place on one executor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    pub job_id: JobId,
    pub subtask: SubtaskKey,
    pub executor_id: ExecutorId,
}

/// Whether a job in this status takes new placements.
pub fn accepts_placements(status: JobStatus) -> bool {
    matches!(
        status,
        JobStatus::Submitted | JobStatus::Running | JobStatus::Restarting
    )
}

/// Places every waiting subtask that fits, oldest job first, each on the live executor with the
/// most free slots (ties broken by id), so load spreads evenly. `live` lists the executors whose
/// lease holds; others are never chosen. Subtasks that do not fit stay waiting.
pub fn plan_placements(state: &State, live: &[ExecutorId]) -> Vec<Placement> {
    let mut free: BTreeMap<&ExecutorId, i64> = live
        .iter()
        .filter_map(|id| {
            state
                .executors
                .get(id)
                .filter(|executor| executor.alive)
                .map(|executor| (id, executor))
        })
        .map(|(id, executor)| (id, i64::from(executor.slots) - i64::from(state.used_slots(id))))
        .collect();
    let mut jobs: Vec<_> = state
        .jobs
        .values()
        .filter(|job| accepts_placements(job.status))
        .collect();
    jobs.sort_by_key(|job| (job.submitted_at_ms, job.job_id.0.len(), job.job_id.0.clone()));
    let mut placements = Vec::new();
    for job in jobs {
        let waiting: Vec<_> = job
            .assignments
            .iter()
            .filter(|(_, assignment)| assignment.executor_id.is_none())
            .collect();
        // First back where they ran before (a restart moves only what it must), then anywhere.
        let mut unplaced = Vec::new();
        for (subtask, assignment) in waiting {
            let sticky = assignment.previous_executor.as_ref().and_then(|previous| {
                free.get_mut(previous)
                    .filter(|slots| **slots > 0)
                    .map(|slots| (previous, slots))
            });
            match sticky {
                Some((previous, slots)) => {
                    *slots -= 1;
                    placements.push(Placement {
                        job_id: job.job_id.clone(),
                        subtask: subtask.clone(),
                        executor_id: previous.clone(),
                    });
                }
                None => unplaced.push(subtask),
            }
        }
        for subtask in unplaced {
            // Most free slots first; BTreeMap order makes the tie-break by id deterministic.
            let Some((executor_id, slots)) = free
                .iter_mut()
                .filter(|(_, slots)| **slots > 0)
                .max_by_key(|(id, slots)| (**slots, std::cmp::Reverse(**id)))
            else {
                return placements;
            };
            *slots -= 1;
            placements.push(Placement {
                job_id: job.job_id.clone(),
                subtask: subtask.clone(),
                executor_id: (*executor_id).clone(),
            });
        }
    }
    placements
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::parse_job_spec;
    use crate::state_machine::{apply, Command};

    fn state_with(executors: &[(&str, u32)], jobs: u64) -> State {
        let mut state = State::default();
        for (id, slots) in executors {
            let command = Command::RegisterExecutor {
                executor_id: ExecutorId((*id).to_owned()),
                address: "a:1".into(),
                slots: *slots,
                at_ms: 0,
            };
            assert!(apply(&mut state, command).is_ok());
        }
        let spec = r#"{"name": "p", "parallelism": 2, "operators": [
            {"id": "src", "kind": "generator"}, {"id": "out", "kind": "print", "inputs": ["src"]}]}"#;
        for n in 0..jobs {
            let graph = parse_job_spec(spec).expect("valid spec");
            assert!(apply(
                &mut state,
                Command::SubmitJob {
                    request_id: None,
                    graph,
                    at_ms: n
                }
            )
            .is_ok());
        }
        state
    }

    fn ids(names: &[&str]) -> Vec<ExecutorId> {
        names.iter().map(|name| ExecutorId((*name).to_owned())).collect()
    }

    fn count_on(placements: &[Placement], executor: &str) -> usize {
        placements
            .iter()
            .filter(|placement| placement.executor_id.0 == executor)
            .count()
    }

    #[test]
    fn spreads_subtasks_evenly_over_live_executors() {
        let state = state_with(&[("a", 4), ("b", 4)], 2);
        let placements = plan_placements(&state, &ids(&["a", "b"]));
        assert_eq!(placements.len(), 8);
        assert_eq!(count_on(&placements, "a"), 4);
        assert_eq!(count_on(&placements, "b"), 4);
    }

    #[test]
    fn leaves_what_does_not_fit_waiting_and_skips_executors_without_lease() {
        let state = state_with(&[("a", 3), ("b", 8)], 2);
        let placements = plan_placements(&state, &ids(&["a"]));
        assert_eq!(placements.len(), 3, "only a's three slots are usable");
        assert_eq!(count_on(&placements, "b"), 0);
        assert!(placements
            .iter()
            .all(|placement| placement.job_id == JobId::from_number(1) || placement.subtask.operator_id == "src"));
    }

    #[test]
    fn placed_subtasks_and_ended_jobs_are_left_alone() {
        let mut state = state_with(&[("a", 8)], 2);
        let first = plan_placements(&state, &ids(&["a"]));
        for placement in first.iter().take(2) {
            let command = Command::AssignSubtask {
                job_id: placement.job_id.clone(),
                subtask: placement.subtask.clone(),
                executor_id: placement.executor_id.clone(),
                at_ms: 1,
            };
            assert!(apply(&mut state, command).is_ok());
        }
        let cancel = Command::CancelJob {
            request_id: None,
            job_id: JobId::from_number(2),
            at_ms: 2,
        };
        assert!(apply(&mut state, cancel).is_ok());
        let rest = plan_placements(&state, &ids(&["a"]));
        assert_eq!(rest.len(), 2, "job-1's two remaining subtasks; job-2 is cancelled");
        assert!(rest.iter().all(|placement| placement.job_id == JobId::from_number(1)));
    }
}
