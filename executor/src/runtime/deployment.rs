//! One subtask as the leader deployed it, and which subtasks of a deployment run together in one
//! task on this executor: the chain behind it (`JobGraph::chain_from`) as far as the leader placed
//! its members, at the same subtask index, here. A chain member placed elsewhere ends the chain
//! there and runs as its own task, so the result is correct whatever the placement; co-location
//! only makes it faster.

use std::sync::Arc;

use raftstream_api::checkpoint::{CompletedCheckpoint, SubtaskKey};
use raftstream_api::ids::{Epoch, JobId, OperatorId};
use raftstream_api::messages::{PlacedSubtask, TaskDeployment, TaskRef};
use raftstream_api::spec::JobGraph;

/// One subtask as the leader deployed it.
#[derive(Debug, Clone)]
pub struct SubtaskDeployment {
    pub job_id: JobId,
    pub operator_id: OperatorId,
    pub subtask_index: u32,
    pub epoch: Epoch,
    pub graph: Arc<JobGraph>,
    /// Where every subtask of the job runs.
    pub placement: Vec<PlacedSubtask>,
    /// The latest completed checkpoint in the Raft state, when the job has one.
    pub restore_from: Option<CompletedCheckpoint>,
}

impl SubtaskDeployment {
    /// The runtime's view of a deployment from the leader.
    pub fn from_deployment(deployment: TaskDeployment) -> SubtaskDeployment {
        let TaskDeployment {
            task,
            graph,
            placement,
            restore_from,
        } = deployment;
        SubtaskDeployment {
            job_id: task.job_id,
            operator_id: task.subtask.operator_id,
            subtask_index: task.subtask.subtask_index,
            epoch: task.epoch,
            graph,
            placement,
            restore_from,
        }
    }

    /// The task reference of this placement.
    pub fn task_ref(&self) -> TaskRef {
        TaskRef {
            job_id: self.job_id,
            subtask: SubtaskKey {
                operator_id: self.operator_id.clone(),
                subtask_index: self.subtask_index,
            },
            epoch: self.epoch,
        }
    }
}

fn placed_here(deployment: &SubtaskDeployment, operator_id: &str, local_address: &str) -> Option<Epoch> {
    deployment
        .placement
        .iter()
        .find(|placed| {
            placed.subtask.operator_id == operator_id && placed.subtask.subtask_index == deployment.subtask_index
        })
        .filter(|placed| placed.executor_address == local_address)
        .map(|placed| placed.epoch)
}

/// The subtasks `deployment`'s task runs, itself first: the chain behind it as far as it is placed
/// here. Empty when the task of an operator before it in its chain runs it.
pub fn chain_members(deployment: &SubtaskDeployment, local_address: &str) -> Vec<SubtaskDeployment> {
    let graph = &deployment.graph;
    if graph
        .chained_behind(deployment.operator_id.as_str())
        .is_some_and(|input| placed_here(deployment, input.id.as_str(), local_address).is_some())
    {
        return Vec::new();
    }
    let mut members = vec![deployment.clone()];
    let Some(operator) = graph.operator(deployment.operator_id.as_str()) else {
        return members;
    };
    for next in graph.chain_from(operator).into_iter().skip(1) {
        let Some(epoch) = placed_here(deployment, next.id.as_str(), local_address) else {
            break;
        };
        members.push(SubtaskDeployment {
            operator_id: next.id.clone(),
            epoch,
            ..deployment.clone()
        });
    }
    members
}

#[cfg(test)]
mod tests {
    use raftstream_api::ids::ExecutorId;
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
                    operator_id: (*operator).into(),
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
            epoch: Epoch(0),
            graph: Arc::new(graph),
            placement,
            restore_from: None,
        }
    }

    fn members(operator_id: &str, addresses: [&str; 4]) -> Vec<(OperatorId, u64)> {
        chain_members(&deployment(operator_id, addresses), "here")
            .into_iter()
            .map(|member| (member.operator_id, member.epoch.0))
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
