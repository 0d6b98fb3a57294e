//! Where to place waiting subtasks: pure decision logic, tested without sockets.

use std::collections::BTreeMap;

use crate::state_machine::{JobRecord, JobStatus, State};
use raftstream_api::checkpoint::SubtaskKey;
use raftstream_api::ids::{ExecutorId, JobId};
use raftstream_api::spec::{JobGraph, SlotKey};

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

/// Places every waiting subtask that fits, oldest job first, so load spreads evenly over the live
/// executors (`live`: those whose lease holds; others are never chosen). What does not fit stays
/// waiting.
///
/// A slot holds one parallel slice of a job (subtask `i` of every operator of a sharing group):
/// a slice goes whole to one executor, back where it ran before when that one has a free slot,
/// else to the executor with the most free slots (ties broken by id); a member of a slice that
/// already runs somewhere joins it there. A job stored before slot sharing takes a slot per
/// subtask; its chains are kept together when one executor has room for all of a chain's
/// subtasks of one index, and placed one by one otherwise.
pub fn plan_placements(state: &State, live: &[ExecutorId]) -> Vec<Placement> {
    let used = state.used_slots_by_executor();
    let mut free: BTreeMap<&ExecutorId, i64> = live
        .iter()
        .filter_map(|id| {
            state
                .executors
                .get(id)
                .filter(|executor| executor.takes_work())
                .map(|executor| (id, executor))
        })
        .map(|(id, executor)| {
            (
                id,
                i64::from(executor.slots) - i64::from(used.get(id).copied().unwrap_or(0)),
            )
        })
        .collect();
    let mut jobs: Vec<_> = state
        .jobs
        .values()
        .filter(|job| accepts_placements(job.status))
        .collect();
    jobs.sort_by_key(|job| (job.submitted_at_ms, job.job_id));
    let mut placements = Vec::new();
    for job in jobs {
        let units = if job.graph.slot_sharing {
            slices_waiting(job)
        } else {
            chain_groups(job)
        };
        let place = |placements: &mut Vec<Placement>, unit: &PlacementUnit<'_>, executor_id: &ExecutorId| {
            placements.extend(unit.waiting.iter().map(|subtask| Placement {
                job_id: job.job_id,
                subtask: (*subtask).clone(),
                executor_id: executor_id.clone(),
            }));
        };
        // Where each subtask index of the job runs (its first slice there): a slice of another
        // sharing group goes next to it when there is room, so forward exchanges between the
        // groups stay on one executor.
        let mut index_home: BTreeMap<u32, &ExecutorId> = BTreeMap::new();
        if job.graph.slot_sharing {
            for (subtask, assignment) in &job.assignments {
                if let Some(executor_id) = &assignment.executor_id {
                    index_home.entry(subtask.subtask_index).or_insert(executor_id);
                }
            }
        }
        // First the units that fit where they belong (a restart moves only what it must).
        let mut elsewhere = Vec::new();
        for unit in units {
            if let Some(bound_to) = unit.bound_to {
                // Its slice holds a slot there already; if that executor takes no work now, the
                // member waits for its slice to be placed again.
                if free.contains_key(bound_to) {
                    place(&mut placements, &unit, bound_to);
                }
                continue;
            }
            let home = unit.anchor.or(unit.previous);
            match home.and_then(|home| free.get_mut(home).map(|slots| (home, slots))) {
                Some((home, slots)) if *slots >= unit.slots => {
                    *slots -= unit.slots;
                    place(&mut placements, &unit, home);
                    if let Some(index) = unit.index {
                        index_home.entry(index).or_insert(home);
                    }
                }
                _ => elsewhere.push(unit),
            }
        }
        for unit in elsewhere {
            let neighbour = unit
                .index
                .and_then(|index| index_home.get(&index).copied())
                .filter(|home| free.get(*home).is_some_and(|slots| *slots >= unit.slots));
            // Else most free slots first; BTreeMap order makes the tie-break by id deterministic.
            let together = match neighbour {
                Some(home) => free.get_key_value(home).map(|(id, _)| *id),
                None => free
                    .iter()
                    .filter(|(_, slots)| **slots >= unit.slots)
                    .max_by_key(|(id, slots)| (**slots, std::cmp::Reverse(**id)))
                    .map(|(id, _)| *id),
            };
            if let Some(executor_id) = together {
                if let Some(slots) = free.get_mut(executor_id) {
                    *slots -= unit.slots;
                }
                place(&mut placements, &unit, executor_id);
                if let Some(index) = unit.index {
                    index_home.entry(index).or_insert(executor_id);
                }
                continue;
            }
            if !unit.splittable {
                continue;
            }
            for subtask in &unit.waiting {
                let Some((executor_id, slots)) = free
                    .iter_mut()
                    .filter(|(_, slots)| **slots > 0)
                    .max_by_key(|(id, slots)| (**slots, std::cmp::Reverse(**id)))
                else {
                    break;
                };
                *slots -= 1;
                placements.push(Placement {
                    job_id: job.job_id,
                    subtask: (*subtask).clone(),
                    executor_id: (*executor_id).clone(),
                });
            }
        }
    }
    placements
}

/// Waiting subtasks that go to one executor together.
struct PlacementUnit<'a> {
    waiting: Vec<&'a SubtaskKey>,
    /// Where the rest of its slice runs: it can go nowhere else.
    bound_to: Option<&'a ExecutorId>,
    /// Where a member of its chain already runs (a job stored before slot sharing): preferred.
    anchor: Option<&'a ExecutorId>,
    /// Where the first waiting member ran before it was released.
    previous: Option<&'a ExecutorId>,
    /// The slots it takes: one for a slice, one per subtask for a job stored before slot sharing.
    slots: i64,
    /// Whether its members may go to different executors when no executor has room for all.
    splittable: bool,
    /// The subtask index of a slice (jobs with slot sharing).
    index: Option<u32>,
}

/// The slices of a job with slot sharing that have members waiting, in slot order.
fn slices_waiting(job: &JobRecord) -> Vec<PlacementUnit<'_>> {
    let groups = job.graph.slot_groups();
    let mut slices: BTreeMap<SlotKey<'_>, PlacementUnit<'_>> = BTreeMap::new();
    for (subtask, assignment) in &job.assignments {
        let Some(slot) = JobGraph::slot_of(&groups, subtask) else {
            continue;
        };
        let unit = slices.entry(slot).or_insert_with(|| PlacementUnit {
            waiting: Vec::new(),
            bound_to: None,
            anchor: None,
            previous: None,
            slots: 1,
            splittable: false,
            index: Some(slot.index),
        });
        match &assignment.executor_id {
            Some(executor_id) => {
                unit.bound_to = Some(executor_id);
                unit.slots = 0;
            }
            None => {
                unit.previous = unit.previous.or(assignment.previous_executor.as_ref());
                unit.waiting.push(subtask);
            }
        }
    }
    slices.into_values().filter(|unit| !unit.waiting.is_empty()).collect()
}

/// The waiting subtasks of one chain at one subtask index (a job stored before slot sharing).
fn chain_groups(job: &JobRecord) -> Vec<PlacementUnit<'_>> {
    let mut groups = Vec::new();
    for chain in job.graph.chains() {
        let Some(head) = chain.first() else { continue };
        for index in 0..head.parallelism {
            let mut group = PlacementUnit {
                waiting: Vec::new(),
                bound_to: None,
                anchor: None,
                previous: None,
                slots: 0,
                splittable: true,
                index: None,
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
            group.slots = group.waiting.len() as i64;
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
        assert_eq!(
            placements.len(),
            6,
            "a's three slots hold three slices of two subtasks; b has no lease"
        );
        assert_eq!(count_on(&placements, "b"), 0);
        assert!(placements
            .iter()
            .all(|placement| placement.job_id == JobId::from_number(1) || placement.subtask.subtask_index == 0));
    }

    fn slices_on(state: &State, job_number: u64) -> BTreeMap<u32, Vec<String>> {
        let mut slices: BTreeMap<u32, Vec<String>> = BTreeMap::new();
        for (subtask, assignment) in &state.jobs[&JobId::from_number(job_number)].assignments {
            if let Some(executor_id) = &assignment.executor_id {
                slices
                    .entry(subtask.subtask_index)
                    .or_default()
                    .push(executor_id.0.clone());
            }
        }
        for executors in slices.values_mut() {
            executors.dedup();
        }
        slices
    }

    #[test]
    fn a_slot_holds_a_slice_of_the_whole_job_so_two_executors_of_two_slots_run_parallelism_four() {
        let mut state = state_with(&[("a", 2), ("b", 2)], 0);
        let spec = r#"{"name": "wc", "parallelism": 4, "operators": [
            {"id": "lines", "kind": "generator", "parallelism": 1},
            {"id": "words", "kind": "flat_map", "inputs": ["lines"], "params": {"function": "split_words"}},
            {"id": "keyed", "kind": "key_by", "inputs": ["words"]},
            {"id": "counts", "kind": "count", "inputs": ["keyed"]},
            {"id": "sink", "kind": "file_sink", "inputs": ["counts"], "params": {"path": "/tmp/out"}}]}"#;
        assert!(apply(&mut state, submit(fixture_graph(spec))).is_ok());
        assert_eq!(state.jobs[&JobId::from_number(1)].graph.slots_needed(), 4);
        let placements = plan_placements(&state, &ids(&["a", "b"]));
        assert_eq!(placements.len(), 17, "every subtask placed");
        assign_all(&mut state, &placements);
        assert_eq!(
            (
                state.used_slots(&ExecutorId("a".into())),
                state.used_slots(&ExecutorId("b".into()))
            ),
            (2, 2)
        );
        for (index, executors) in slices_on(&state, 1) {
            assert_eq!(executors.len(), 1, "slice {index} runs on one executor: {executors:?}");
        }
    }

    #[test]
    fn a_named_sharing_group_takes_slots_of_its_own_and_what_does_not_fit_waits_whole() {
        let mut state = state_with(&[("a", 3)], 0);
        let spec = r#"{"name": "wc", "parallelism": 2, "operators": [
            {"id": "lines", "kind": "generator"},
            {"id": "keyed", "kind": "key_by", "inputs": ["lines"]},
            {"id": "counts", "kind": "count", "inputs": ["keyed"], "slot_sharing_group": "heavy"},
            {"id": "sink", "kind": "print", "inputs": ["counts"]}]}"#;
        assert!(apply(&mut state, submit(fixture_graph(spec))).is_ok());
        let job = &state.jobs[&JobId::from_number(1)];
        assert_eq!(job.graph.slots_needed(), 4);
        let placements = plan_placements(&state, &ids(&["a"]));
        assign_all(&mut state, &placements);
        let job = &state.jobs[&JobId::from_number(1)];
        assert_eq!(job.slots_held(), 3);
        assert_eq!(
            job.slots_waiting(),
            1,
            "one slice of one group waits, all its members together"
        );
        let waiting: Vec<String> = job
            .assignments
            .iter()
            .filter(|(_, assignment)| assignment.executor_id.is_none())
            .map(|(subtask, _)| format!("{}[{}]", subtask.operator_id, subtask.subtask_index))
            .collect();
        assert_eq!(waiting, vec!["counts[1]", "sink[1]"]);
    }

    #[test]
    fn a_dead_executors_slices_move_whole_and_the_survivors_stay() {
        let mut state = state_with(&[("a", 2), ("b", 2)], 0);
        assert!(apply(&mut state, submit(source_to_sink(r#""parallelism": 4,"#))).is_ok());
        let placements = plan_placements(&state, &ids(&["a", "b"]));
        assign_all(&mut state, &placements);
        let before = slices_on(&state, 1);
        assert!(apply(&mut state, register("c", 2)).is_ok());
        let restarted = replace_a_by_c(&mut state);
        assign_all(&mut state, &restarted);
        let after = slices_on(&state, 1);
        for (index, executors) in &before {
            let moved_to = &after[index];
            if executors == &vec!["b".to_owned()] {
                assert_eq!(moved_to, executors, "slice {index} stays on the live executor");
            } else {
                assert_eq!(moved_to, &vec!["c".to_owned()], "slice {index} moves whole");
            }
        }
    }

    #[test]
    fn slices_of_one_index_in_two_groups_go_to_one_executor_when_it_has_room() {
        let mut state = state_with(&[("a", 2), ("b", 2)], 0);
        let spec = r#"{"name": "wc", "parallelism": 2, "operators": [
            {"id": "lines", "kind": "generator"},
            {"id": "upper", "kind": "map", "inputs": ["lines"], "params": {"function": "uppercase"}},
            {"id": "out", "kind": "print", "inputs": ["upper"], "slot_sharing_group": "sink"}]}"#;
        assert!(apply(&mut state, submit(fixture_graph(spec))).is_ok());
        let placements = plan_placements(&state, &ids(&["a", "b"]));
        assign_all(&mut state, &placements);
        let executor_of = |operator: &str, index: u32| planned_on(&placements, operator, index);
        for index in 0..2 {
            assert_eq!(
                executor_of("out", index),
                executor_of("upper", index),
                "out[{index}] reads upper[{index}] over a forward edge"
            );
        }
        assert_ne!(
            executor_of("lines", 0),
            executor_of("lines", 1),
            "the slices still spread"
        );
    }

    /// Where `placements` put `operator[index]`.
    fn planned_on(placements: &[Placement], operator: &str, index: u32) -> Option<String> {
        placements
            .iter()
            .find(|placement| placement.subtask.operator_id == operator && placement.subtask.subtask_index == index)
            .map(|placement| placement.executor_id.0.clone())
    }

    fn register(id: &str, slots: u32) -> Command {
        Command::RegisterExecutor {
            executor_id: ExecutorId(id.to_owned()),
            address: format!("{id}:1"),
            slots,
            at_ms: 2,
        }
    }

    /// Executor "a" dies: the placements planned on the live "b" and "c".
    fn replace_a_by_c(state: &mut State) -> Vec<Placement> {
        let dead = Command::MarkExecutorDead {
            executor_id: ExecutorId("a".into()),
            at_ms: 3,
        };
        assert!(apply(state, dead).is_ok());
        plan_placements(state, &ids(&["b", "c"]))
    }

    fn submit(graph: raftstream_api::spec::JobGraph) -> Command {
        Command::SubmitJob {
            request_id: None,
            graph,
            at_ms: 0,
            from_savepoint: None,
            allow_unmatched_state: false,
        }
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
        // A job stored before slot sharing: a slot per subtask, chains kept together when room.
        let mut graph = fixture_graph(spec);
        graph.slot_sharing = false;
        assert!(apply(state, submit(graph)).is_ok());
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
    fn a_job_stored_before_slot_sharing_keeps_survivors_in_place_and_reunites_a_split_chain() {
        // Only "a" is there when the job arrives: words[1] fits on it, its chained keyed[1]
        // does not and waits for "b". When "a" dies, the chain comes together on "c" (one task
        // instead of an exchange between machines) and everything else stays where it ran.
        let mut state = state_with(&[("a", 4)], 0);
        word_count_job(&mut state);
        let on_a = plan_placements(&state, &ids(&["a"]));
        assign_all(&mut state, &on_a);
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
        let restarted = replace_a_by_c(&mut state);
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
        let executor_of = |operator: &str, index: u32| planned_on(&placements, operator, index);
        for index in 0..2 {
            assert_eq!(executor_of("words", index), executor_of("lines", index));
            assert_eq!(executor_of("keyed", index), executor_of("lines", index));
            assert_eq!(executor_of("sink", index), executor_of("counts", index));
        }
        assert_eq!(count_on(&placements, "a"), 5, "chains still spread over executors");
    }
}
