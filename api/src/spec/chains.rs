//! Operator chaining (Flink's): an operator whose only input feeds only it, forward (same
//! parallelism, and not re-keyed unless both sides have parallelism 1), runs in the same task as
//! that input, subtask index by subtask index, so records pass between them by a function call
//! instead of a queue. The scheduler keeps a chain's subtasks on one executor; the executor runs a
//! chain as one task only when they are.

use super::{Exchange, JobGraph, OperatorKind, OperatorRole, OperatorSpec};

impl JobGraph {
    /// The operators that read `operator_id`'s output.
    pub fn consumers<'a>(&'a self, operator_id: &'a str) -> impl Iterator<Item = &'a OperatorSpec> + 'a {
        self.operators
            .iter()
            .filter(move |candidate| candidate.inputs.iter().any(|input| input == operator_id))
    }

    /// The operator `operator_id` is chained behind, if any.
    pub fn chained_behind(&self, operator_id: &str) -> Option<&OperatorSpec> {
        if !self.chaining {
            return None;
        }
        let operator = self.operator(operator_id)?;
        let [input_id] = operator.inputs.as_slice() else {
            return None;
        };
        let input = self.operator(input_id.as_str())?;
        let only_consumer = self.consumers(input_id.as_str()).count() == 1;
        // Any exchange sends everything to the one subtask there is when both sides have
        // parallelism 1: the edge is then a forward one (Flink always cuts the chain at a keyBy
        // and pays a hand-off between threads per record batch for it).
        let forward = self.exchange(input, operator) == Exchange::Forward;
        // Windows keep a watermark per input channel and stay tasks of their own.
        let follower = match operator.kind.role() {
            OperatorRole::Transform | OperatorRole::Sink => true,
            OperatorRole::KeyedTransform => !matches!(
                operator.kind,
                OperatorKind::TumblingWindow | OperatorKind::SlidingWindow
            ),
            OperatorRole::Source => false,
        };
        // A chain runs in one slot, so it never crosses sharing groups.
        let groups = self.sharing_groups();
        let same_group = groups.get(operator_id) == groups.get(input_id.as_str());
        (only_consumer && forward && follower && same_group).then_some(input)
    }

    /// The operators chained behind `head`, in order, `head` first.
    pub fn chain_from<'a>(&'a self, head: &'a OperatorSpec) -> Vec<&'a OperatorSpec> {
        let mut chain = vec![head];
        let mut last = head;
        while let Some(next) = self.consumers(last.id.as_str()).find(|consumer| {
            self.chained_behind(consumer.id.as_str())
                .is_some_and(|input| input.id == last.id)
        }) {
            chain.push(next);
            last = next;
        }
        chain
    }

    /// Every chain of the graph, head first; each operator is in exactly one.
    pub fn chains(&self) -> Vec<Vec<&OperatorSpec>> {
        self.operators
            .iter()
            .filter(|operator| self.chained_behind(operator.id.as_str()).is_none())
            .map(|head| self.chain_from(head))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use crate::spec::parse_job_spec;

    fn chain_ids(spec: &str) -> Vec<Vec<String>> {
        let graph = match parse_job_spec(spec) {
            Ok(graph) => graph,
            Err(error) => panic!("invalid test spec: {error}"),
        };
        graph
            .chains()
            .into_iter()
            .map(|chain| chain.into_iter().map(|operator| operator.id.to_string()).collect())
            .collect()
    }

    const WORD_COUNT: &str = r#"{"name": "wc", "parallelism": 2, "operators": [
        {"id": "lines", "kind": "generator"},
        {"id": "words", "kind": "flat_map", "inputs": ["lines"], "params": {"function": "split_words"}},
        {"id": "keyed", "kind": "key_by", "inputs": ["words"]},
        {"id": "counts", "kind": "count", "inputs": ["keyed"]},
        {"id": "sink", "kind": "file_sink", "inputs": ["counts"], "params": {"path": "/tmp/out"}}]}"#;

    #[test]
    fn word_count_runs_as_two_chains_split_at_the_keyed_exchange() {
        assert_eq!(
            chain_ids(WORD_COUNT),
            vec![vec!["lines", "words", "keyed"], vec!["counts", "sink"]]
        );
    }

    #[test]
    fn chaining_can_be_switched_off() {
        let spec = WORD_COUNT.replacen(r#""parallelism": 2,"#, r#""parallelism": 2, "chaining": false,"#, 1);
        assert_eq!(chain_ids(&spec).len(), 5);
    }

    #[test]
    fn a_parallelism_change_a_fan_out_or_a_window_breaks_the_chain() {
        let spec = r#"{"name": "g", "parallelism": 2, "operators": [
            {"id": "lines", "kind": "generator"},
            {"id": "upper", "kind": "map", "inputs": ["lines"], "parallelism": 1, "params": {"function": "uppercase"}},
            {"id": "a", "kind": "print", "inputs": ["upper"], "parallelism": 1},
            {"id": "b", "kind": "print", "inputs": ["upper"], "parallelism": 1},
            {"id": "raw", "kind": "print", "inputs": ["lines"]},
            {"id": "keyed", "kind": "key_by", "inputs": ["lines"]},
            {"id": "window", "kind": "tumbling_window", "inputs": ["keyed"], "params": {"size_ms": 1000, "aggregate": "count"}},
            {"id": "trimmed", "kind": "map", "inputs": ["window"], "params": {"function": "trim"}},
            {"id": "out", "kind": "print", "inputs": ["trimmed"]}]}"#;
        assert_eq!(
            chain_ids(spec),
            vec![
                vec!["lines"],
                vec!["upper"],
                vec!["a"],
                vec!["b"],
                vec!["raw"],
                vec!["keyed"],
                vec!["window", "trimmed", "out"],
            ]
        );
    }

    #[test]
    fn at_parallelism_one_the_whole_word_count_is_one_chain() {
        let spec = WORD_COUNT.replacen(r#""parallelism": 2,"#, r#""parallelism": 1,"#, 1);
        assert_eq!(
            chain_ids(&spec),
            vec![vec!["lines", "words", "keyed", "counts", "sink"]]
        );
        // One side of the key_by at parallelism 2 makes its exchange a real one.
        let wider_counts = spec.replacen(
            r#""kind": "count", "inputs": ["keyed"]"#,
            r#""kind": "count", "inputs": ["keyed"], "parallelism": 2"#,
            1,
        );
        assert_eq!(
            chain_ids(&wider_counts),
            vec![vec!["lines", "words", "keyed"], vec!["counts"], vec!["sink"]]
        );
        let window = spec.replacen(
            r#""kind": "count", "inputs": ["keyed"]"#,
            r#""kind": "tumbling_window", "inputs": ["keyed"], "params": {"size_ms": 1000, "aggregate": "count"}"#,
            1,
        );
        assert_eq!(
            chain_ids(&window),
            vec![vec!["lines", "words", "keyed"], vec!["counts", "sink"]]
        );
    }
}
