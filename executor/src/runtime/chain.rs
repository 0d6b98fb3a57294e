//! Which subtasks of a deployment run together in one task on this executor: a chain (see
//! `JobGraph::chained_behind`) whose subtasks of the same index the leader placed here. A chain
//! member placed elsewhere ends the chain there and runs as its own task, so the result is correct
//! whatever the placement; co-location only makes it faster.

use super::task::SubtaskDeployment;

fn placed_here(deployment: &SubtaskDeployment, operator_id: &str, local_address: &str) -> Option<u64> {
    deployment
        .placement
        .iter()
        .find(|placed| {
            placed.subtask.operator_id == operator_id && placed.subtask.subtask_index == deployment.subtask_index
        })
        .filter(|placed| placed.executor_address == local_address)
        .map(|placed| placed.epoch.0)
}

/// The subtasks `deployment`'s task runs, itself first: the chain behind it as far as it is placed
/// here. Empty when the task of an operator before it in its chain runs it.
pub fn chain_members(deployment: &SubtaskDeployment, local_address: &str) -> Vec<SubtaskDeployment> {
    let graph = &deployment.graph;
    if graph
        .chained_behind(&deployment.operator_id)
        .is_some_and(|input| placed_here(deployment, &input.id, local_address).is_some())
    {
        return Vec::new();
    }
    let mut members = vec![deployment.clone()];
    let mut last = deployment.operator_id.clone();
    loop {
        let next = graph
            .consumers(&last)
            .find(|consumer| graph.chained_behind(&consumer.id).is_some_and(|input| input.id == last))
            .map(|consumer| consumer.id.clone());
        let Some((next, epoch)) =
            next.and_then(|next| placed_here(deployment, &next, local_address).map(|epoch| (next, epoch)))
        else {
            break;
        };
        members.push(SubtaskDeployment {
            operator_id: next.clone(),
            epoch,
            ..deployment.clone()
        });
        last = next;
    }
    members
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use raftstream_api::checkpoint::SubtaskKey;
    use raftstream_api::ids::{Epoch, ExecutorId, JobId};
    use raftstream_api::messages::PlacedSubtask;
    use raftstream_api::spec::parse_job_spec;

    use super::*;

    const SPEC: &str = r#"{"name": "wc", "parallelism": 1, "operators": [
        {"id": "lines", "kind": "generator"},
        {"id": "words", "kind": "flat_map", "inputs": ["lines"], "params": {"function": "split_words"}},
        {"id": "upper", "kind": "map", "inputs": ["words"], "params": {"function": "uppercase"}},
        {"id": "keyed", "kind": "key_by", "inputs": ["upper"]},
        {"id": "counts", "kind": "count", "inputs": ["keyed"]},
        {"id": "out", "kind": "print", "inputs": ["counts"]}]}"#;

    fn deployment(operator_id: &str, addresses: [&str; 4]) -> SubtaskDeployment {
        let graph = match parse_job_spec(SPEC) {
            Ok(graph) => graph,
            Err(error) => panic!("invalid test spec: {error}"),
        };
        let placement = ["lines", "words", "upper", "keyed"]
            .iter()
            .zip(addresses)
            .enumerate()
            .map(|(position, (operator, address))| PlacedSubtask {
                subtask: SubtaskKey {
                    operator_id: (*operator).to_owned(),
                    subtask_index: 0,
                },
                executor_id: ExecutorId(String::new()),
                executor_address: address.to_owned(),
                epoch: Epoch(10 + position as u64),
            })
            .collect();
        SubtaskDeployment {
            job_id: JobId::from_number(1),
            operator_id: operator_id.into(),
            subtask_index: 0,
            epoch: 0,
            graph: Arc::new(graph),
            placement,
            restore_from: None,
        }
    }

    fn members(operator_id: &str, addresses: [&str; 4]) -> Vec<(String, u64)> {
        chain_members(&deployment(operator_id, addresses), "here")
            .into_iter()
            .map(|member| (member.operator_id, member.epoch))
            .collect()
    }

    #[test]
    fn the_head_runs_the_chain_placed_with_it_with_each_members_epoch() {
        let all_here = ["here"; 4];
        assert_eq!(
            members("lines", all_here),
            vec![
                ("lines".into(), 0),
                ("words".into(), 11),
                ("upper".into(), 12),
                ("keyed".into(), 13)
            ]
        );
        assert!(members("words", all_here).is_empty(), "the head's task runs it");
    }

    #[test]
    fn a_member_placed_elsewhere_splits_the_chain() {
        let split = ["here", "here", "there", "here"];
        assert_eq!(members("lines", split), vec![("lines".into(), 0), ("words".into(), 11)]);
        assert!(members("words", split).is_empty());
        assert_eq!(
            members("keyed", split),
            vec![("keyed".into(), 0)],
            "its input runs elsewhere"
        );
    }
}
