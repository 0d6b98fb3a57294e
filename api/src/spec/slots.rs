//! Slot sharing (Flink's): a slot holds one parallel slice of a job, subtask `i` of every operator
//! of one sharing group, so a job needs as many slots per group as the group's highest
//! parallelism, not one per subtask. Operators are in the `default` group unless the spec names
//! another with `slot_sharing_group`; an operator without one shares its inputs' group when they
//! agree, so naming a group on an operator isolates it and what follows it.
//!
//! Graphs stored before slot sharing (`slot_sharing: false`) keep taking one slot per subtask:
//! each of their operators is a group of its own.

use std::collections::{BTreeMap, BTreeSet};

use super::JobGraph;
use crate::checkpoint::SubtaskKey;

/// The group of the operators whose spec names none (and whose inputs name none).
pub const DEFAULT_SHARING_GROUP: &str = "default";

/// One slot's worth of a job: the subtasks with index `index` of the operators of `group`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SlotKey<'a> {
    pub group: &'a str,
    pub index: u32,
}

impl JobGraph {
    /// The sharing group of every operator, by operator id. For a graph stored before slot
    /// sharing each operator is its own group (its id), so every subtask takes a slot.
    pub fn slot_groups(&self) -> BTreeMap<&str, &str> {
        if !self.slot_sharing {
            return self
                .operators
                .iter()
                .map(|operator| (operator.id.as_str(), operator.id.as_str()))
                .collect();
        }
        self.sharing_groups()
    }

    /// The sharing groups as the spec defines them (used for chaining too, whatever the slot
    /// model): a named group, else the inputs' group when they all share one, else `default`.
    pub(super) fn sharing_groups(&self) -> BTreeMap<&str, &str> {
        let mut groups: BTreeMap<&str, &str> = BTreeMap::new();
        // Inputs may be listed after their readers; edges are acyclic (validated), so each pass
        // resolves at least one operator until all are.
        let mut left: Vec<_> = self.operators.iter().collect();
        while !left.is_empty() {
            let before = left.len();
            left.retain(|operator| {
                let group = match &operator.slot_sharing_group {
                    Some(named) => Some(named.as_str()),
                    None => {
                        let inputs: Option<BTreeSet<&str>> = operator
                            .inputs
                            .iter()
                            .map(|input| groups.get(input.as_str()).copied())
                            .collect();
                        inputs.map(|inputs| match inputs.len() {
                            1 => inputs.into_iter().next().unwrap_or(DEFAULT_SHARING_GROUP),
                            _ => DEFAULT_SHARING_GROUP,
                        })
                    }
                };
                match group {
                    Some(group) => {
                        groups.insert(operator.id.as_str(), group);
                        false
                    }
                    None => true,
                }
            });
            if left.len() == before {
                // An input that is no operator (or a cycle): not a valid graph; such operators
                // go to the default group rather than looping.
                for operator in left.drain(..) {
                    groups.insert(operator.id.as_str(), DEFAULT_SHARING_GROUP);
                }
            }
        }
        groups
    }

    /// The slot `subtask` takes, given the graph's [`JobGraph::slot_groups`].
    pub fn slot_of<'a>(groups: &BTreeMap<&'a str, &'a str>, subtask: &SubtaskKey) -> Option<SlotKey<'a>> {
        groups.get(subtask.operator_id.as_str()).map(|group| SlotKey {
            group,
            index: subtask.subtask_index,
        })
    }

    /// How many slots the whole job takes: per sharing group its highest parallelism (one per
    /// subtask for a graph stored before slot sharing).
    pub fn slots_needed(&self) -> u64 {
        let groups = self.slot_groups();
        let mut highest: BTreeMap<&str, u32> = BTreeMap::new();
        for operator in &self.operators {
            if let Some(group) = groups.get(operator.id.as_str()) {
                let slot_count = highest.entry(group).or_insert(0);
                *slot_count = (*slot_count).max(operator.parallelism);
            }
        }
        highest.values().map(|count| u64::from(*count)).sum()
    }
}

#[cfg(test)]
mod tests {
    use crate::spec::parse_job_spec;

    const WORD_COUNT: &str = r#"{"name": "wc", "parallelism": 4, "operators": [
        {"id": "lines", "kind": "generator", "parallelism": 1},
        {"id": "words", "kind": "flat_map", "inputs": ["lines"], "params": {"function": "split_words"}},
        {"id": "keyed", "kind": "key_by", "inputs": ["words"]},
        {"id": "counts", "kind": "count", "inputs": ["keyed"]},
        {"id": "sink", "kind": "print", "inputs": ["counts"]}]}"#;

    #[test]
    fn a_job_needs_its_highest_parallelism_in_slots_not_its_subtask_count() {
        let graph = parse_job_spec(WORD_COUNT).expect("valid");
        assert!(graph.slot_sharing);
        assert_eq!(graph.total_subtasks(), 17);
        assert_eq!(graph.slots_needed(), 4);
        let mut legacy = graph.clone();
        legacy.slot_sharing = false;
        assert_eq!(
            legacy.slots_needed(),
            17,
            "a graph stored before slot sharing: one per subtask"
        );
    }

    #[test]
    fn a_named_group_takes_slots_of_its_own_and_what_follows_it_shares_them() {
        let spec = WORD_COUNT.replace(
            r#""id": "counts", "kind": "count""#,
            r#""id": "counts", "kind": "count", "parallelism": 3, "slot_sharing_group": "heavy""#,
        );
        let graph = parse_job_spec(&spec).expect("valid");
        let groups = graph.slot_groups();
        assert_eq!(groups["words"], "default");
        assert_eq!(groups["counts"], "heavy");
        assert_eq!(groups["sink"], "heavy", "the sink follows its input's group");
        assert_eq!(graph.slots_needed(), 4 + 4, "default: 4 (words), heavy: 4 (sink)");
        let chains: Vec<Vec<&str>> = graph
            .chains()
            .iter()
            .map(|chain| chain.iter().map(|operator| operator.id.as_str()).collect())
            .collect();
        assert!(
            chains
                .iter()
                .all(|chain| !(chain.contains(&"keyed") && chain.contains(&"counts"))),
            "no chain crosses groups: {chains:?}"
        );
    }

    #[test]
    fn automatic_parallelism_fills_the_free_slots_by_slices() {
        let spec = WORD_COUNT.replace(r#""parallelism": 4,"#, r#""parallelism": "auto","#);
        let graph = parse_job_spec(&spec).expect("valid");
        assert_eq!(
            graph.auto_parallelism_for(6),
            Some(6),
            "6 slots hold 6 slices of the whole job"
        );
        assert_eq!(graph.auto_parallelism_for(1), Some(1));
    }
}
