//! Where to place waiting subtasks: pure decision logic, tested without sockets.

use std::collections::BTreeMap;

use crate::state_machine::{JobRecord, JobStatus, State};
use raftstream_api::checkpoint::SubtaskKey;
use raftstream_api::ids::{ExecutorId, JobId};

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
///
/// The subtasks of one chain with the same index go to one executor when one has room for all of
/// them (so the executor runs them as one task): back where they ran before, or next to a member
/// already placed, else where most slots are free. Otherwise they are placed one by one.
pub fn plan_placements(state: &State, live: &[ExecutorId]) -> Vec<Placement> {
    let mut free: BTreeMap<&ExecutorId, i64> = live
        .iter()
        .filter_map(|id| {
            state
                .executors
                .get(id)
                .filter(|executor| executor.takes_work())
                .map(|executor| (id, executor))
        })
        .map(|(id, executor)| (id, i64::from(executor.slots) - i64::from(state.used_slots(id))))
        .collect();
    let mut jobs: Vec<_> = state
        .jobs
        .values()
        .filter(|job| accepts_placements(job.status))
        .collect();
    jobs.sort_by_key(|job| (job.submitted_at_ms, job.job_id));
    let mut placements = Vec::new();
    for job in jobs {
        let groups = chain_groups(job);
        // First the groups that fit where they belong (a restart moves only what it must).
        let mut elsewhere = Vec::new();
        for group in groups {
            let home = group.anchor.or(group.previous);
            match home.and_then(|home| free.get_mut(home).map(|slots| (home, slots))) {
                Some((home, slots)) if *slots >= group.waiting.len() as i64 => {
                    *slots -= group.waiting.len() as i64;
                    placements.extend(group.waiting.iter().map(|subtask| Placement {
                        job_id: job.job_id,
                        subtask: (*subtask).clone(),
                        executor_id: home.clone(),
                    }));
                }
                _ => elsewhere.push(group),
            }
        }
        for group in elsewhere {
            let wanted = group.waiting.len() as i64;
            // Most free slots first; BTreeMap order makes the tie-break by id deterministic.
            let together = free
                .iter_mut()
                .filter(|(_, slots)| **slots >= wanted)
                .max_by_key(|(id, slots)| (**slots, std::cmp::Reverse(**id)));
            if let Some((executor_id, slots)) = together {
                *slots -= wanted;
                placements.extend(group.waiting.iter().map(|subtask| Placement {
                    job_id: job.job_id,
                    subtask: (*subtask).clone(),
                    executor_id: (*executor_id).clone(),
                }));
                continue;
            }
            for subtask in group.waiting {
                let Some((executor_id, slots)) = free
                    .iter_mut()
                    .filter(|(_, slots)| **slots > 0)
                    .max_by_key(|(id, slots)| (**slots, std::cmp::Reverse(**id)))
                else {
                    return placements;
                };
                *slots -= 1;
                placements.push(Placement {
                    job_id: job.job_id,
                    subtask: subtask.clone(),
                    executor_id: (*executor_id).clone(),
                });
            }
        }
    }
    placements
}

/// The waiting subtasks of one chain at one subtask index.
struct ChainGroup<'a> {
    waiting: Vec<&'a SubtaskKey>,
    /// Where a member of the group already runs.
    anchor: Option<&'a ExecutorId>,
    /// Where the first waiting member ran before it was released.
    previous: Option<&'a ExecutorId>,
}

fn chain_groups(job: &JobRecord) -> Vec<ChainGroup<'_>> {
    let mut groups = Vec::new();
    for chain in job.graph.chains() {
        let Some(head) = chain.first() else { continue };
        for index in 0..head.parallelism {
            let mut group = ChainGroup {
                waiting: Vec::new(),
                anchor: None,
                previous: None,
            };
            for operator in &chain {
                let key = SubtaskKey {
                    operator_id: operator.id.clone(),
                    subtask_index: index,
                };
                let Some((key, assignment)) = job.assignments.get_key_value(&key) else {
                    continue;
                };
                match &assignment.executor_id {
                    Some(executor) => group.anchor = group.anchor.or(Some(executor)),
                    None => {
                        if group.waiting.is_empty() {
                            group.previous = assignment.previous_executor.as_ref();
                        }
                        group.waiting.push(key);
                    }
                }
            }
            if !group.waiting.is_empty() {
                groups.push(group);
            }
        }
    }
    groups
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state_machine::{apply, Command};
    use crate::test_fixtures::{graph as fixture_graph, source_to_sink, StateBuilder};

    /// `jobs` jobs of two operators at parallelism 2, none placed, on executors with these slots.
    fn state_with(executors: &[(&str, u32)], jobs: u64) -> State {
        let mut builder = StateBuilder::new();
        for (id, slots) in executors {
            builder = builder.executor(id, *slots);
        }
        for _ in 0..jobs {
            builder = builder.job(source_to_sink(r#""parallelism": 2,"#));
        }
        builder.build()
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
                job_id: placement.job_id,
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

    fn assign_all(state: &mut State, placements: &[Placement]) {
        for placement in placements {
            let command = Command::AssignSubtask {
                job_id: placement.job_id,
                subtask: placement.subtask.clone(),
                executor_id: placement.executor_id.clone(),
                at_ms: 1,
            };
            assert!(apply(state, command).is_ok());
        }
    }

    fn word_count_job(state: &mut State) {
        let spec = r#"{"name": "wc", "parallelism": 2, "operators": [
            {"id": "lines", "kind": "generator", "parallelism": 1},
            {"id": "words", "kind": "flat_map", "inputs": ["lines"], "params": {"function": "split_words"}},
            {"id": "keyed", "kind": "key_by", "inputs": ["words"]},
            {"id": "counts", "kind": "count", "inputs": ["keyed"]},
            {"id": "sink", "kind": "print", "inputs": ["counts"], "parallelism": 1}]}"#;
        let graph = fixture_graph(spec);
        let submit = Command::SubmitJob {
            request_id: None,
            graph,
            at_ms: 0,
            from_savepoint: None,
            allow_unmatched_state: false,
        };
        assert!(apply(state, submit).is_ok());
    }

    fn executor_of(state: &State, operator: &str, index: u32) -> Option<String> {
        let job = state.jobs.get(&JobId::from_number(1))?;
        let key = SubtaskKey {
            operator_id: operator.into(),
            subtask_index: index,
        };
        job.assignments.get(&key)?.executor_id.as_ref().map(|id| id.0.clone())
    }

    #[test]
    fn a_restart_keeps_survivors_in_place_but_reunites_a_split_chain() {
        // Only "a" is there when the job arrives: words[1] fits on it, its chained keyed[1]
        // does not and waits for "b". When "a" dies, the chain comes together on "c" (one task
        // instead of an exchange between machines) and everything else stays where it ran.
        let mut state = state_with(&[("a", 4)], 0);
        word_count_job(&mut state);
        let on_a = plan_placements(&state, &ids(&["a"]));
        assign_all(&mut state, &on_a);
        let register = |id: &str, slots| Command::RegisterExecutor {
            executor_id: ExecutorId(id.to_owned()),
            address: "b:1".into(),
            slots,
            at_ms: 2,
        };
        assert!(apply(&mut state, register("b", 4)).is_ok());
        let on_b = plan_placements(&state, &ids(&["a", "b"]));
        assign_all(&mut state, &on_b);
        assert_eq!(executor_of(&state, "words", 1).as_deref(), Some("a"));
        assert_eq!(
            executor_of(&state, "keyed", 1).as_deref(),
            Some("b"),
            "the chain is split"
        );
        let before: Vec<_> = ["counts", "sink"]
            .iter()
            .map(|operator| executor_of(&state, operator, 0))
            .collect();

        assert!(apply(&mut state, register("c", 8)).is_ok());
        let dead = Command::MarkExecutorDead {
            executor_id: ExecutorId("a".into()),
            at_ms: 3,
        };
        assert!(apply(&mut state, dead).is_ok());
        let restarted = plan_placements(&state, &ids(&["b", "c"]));
        assign_all(&mut state, &restarted);
        assert_eq!(executor_of(&state, "words", 1).as_deref(), Some("c"));
        assert_eq!(
            executor_of(&state, "keyed", 1).as_deref(),
            Some("c"),
            "reunited with words[1]"
        );
        let after: Vec<_> = ["counts", "sink"]
            .iter()
            .map(|operator| executor_of(&state, operator, 0))
            .collect();
        assert_eq!(before, after, "subtasks on the live executor stay there");
    }

    #[test]
    fn a_chains_subtasks_of_one_index_share_an_executor() {
        let mut state = state_with(&[("a", 5), ("b", 5)], 0);
        let spec = r#"{"name": "wc", "parallelism": 2, "operators": [
            {"id": "lines", "kind": "generator"},
            {"id": "words", "kind": "flat_map", "inputs": ["lines"], "params": {"function": "split_words"}},
            {"id": "keyed", "kind": "key_by", "inputs": ["words"]},
            {"id": "counts", "kind": "count", "inputs": ["keyed"]},
            {"id": "sink", "kind": "print", "inputs": ["counts"]}]}"#;
        let graph = fixture_graph(spec);
        let submit = Command::SubmitJob {
            request_id: None,
            graph,
            at_ms: 0,
            from_savepoint: None,
            allow_unmatched_state: false,
        };
        assert!(apply(&mut state, submit).is_ok());
        let placements = plan_placements(&state, &ids(&["a", "b"]));
        assert_eq!(placements.len(), 10);
        let executor_of = |operator: &str, index: u32| {
            placements
                .iter()
                .find(|placement| placement.subtask.operator_id == operator && placement.subtask.subtask_index == index)
                .map(|placement| placement.executor_id.0.clone())
        };
        for index in 0..2 {
            assert_eq!(executor_of("words", index), executor_of("lines", index));
            assert_eq!(executor_of("keyed", index), executor_of("lines", index));
            assert_eq!(executor_of("sink", index), executor_of("counts", index));
        }
        assert_eq!(count_on(&placements, "a"), 5, "chains still spread over executors");
    }
}
