//! Noticing that this node was removed from the cluster, so that it stops serving instead of
//! answering clients from a state that no longer advances (and standing for elections nobody
//! grants). A removed voter may never apply the entry that removed it: the leader stops
//! replicating to it once the change commits. So besides its own view of the membership, a node
//! that has not heard from a leader for a while asks its peers for the leader's view.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use raftstream_api::ids::NodeId;
use raftstream_proto::v1 as pb;
use raftstream_proto::v1::admin_service_client::AdminServiceClient;
use tokio_util::sync::CancellationToken;

use crate::context::CoordinatorContext;
use crate::raft::LeaderContact;

/// How often the membership is looked at.
const CHECK_EVERY: Duration = Duration::from_millis(250);
/// How long a peer may take to answer with the leader's view.
const PEER_TIMEOUT: Duration = Duration::from_millis(1_000);

/// Why this node stopped serving, once it was removed.
#[derive(Debug, Clone, Default)]
pub struct Removal(Arc<Mutex<Option<String>>>);

impl Removal {
    /// The reason, if this node found itself removed.
    pub fn reason(&self) -> Option<String> {
        self.0.lock().ok().and_then(|reason| reason.clone())
    }

    fn record(&self, reason: String) {
        if let Ok(mut slot) = self.0.lock() {
            slot.get_or_insert(reason);
        }
    }
}

/// Watches this node's membership until `shutdown` is cancelled; when it finds the node removed,
/// records why in `removal` and cancels `shutdown`.
pub async fn watch(
    context: CoordinatorContext,
    contact: LeaderContact,
    silence: Duration,
    removal: Removal,
    shutdown: CancellationToken,
) {
    let node_id = context.node_id;
    let mut was_member = false;
    loop {
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(CHECK_EVERY) => {}
        }
        let metrics = context.raft.metrics().borrow().clone();
        let membership = metrics.membership_config.membership().clone();
        let members: BTreeSet<NodeId> = membership.nodes().map(|(id, _)| *id).collect();
        if members.contains(&node_id) {
            was_member = true;
        } else if was_member {
            let reason = format!(
                "node {node_id} was removed from the cluster: the membership in its log (index {}) lists nodes {members:?}",
                metrics.membership_config.log_id().map_or(0, |log_id| log_id.index)
            );
            stop(&removal, &shutdown, reason);
            return;
        }
        // A node that was never a member waits to be added; one that hears from its leader is
        // still replicated to, so it is still a member.
        let silent = contact.elapsed().is_none_or(|since| since > silence);
        if !was_member || !silent || metrics.current_leader == Some(node_id) {
            continue;
        }
        let peers: Vec<String> = membership
            .nodes()
            .filter(|(id, _)| **id != node_id)
            .map(|(_, node)| node.addr.clone())
            .collect();
        if let Some(reason) = removed_according_to_peers(&context, &peers).await {
            stop(&removal, &shutdown, reason);
            return;
        }
    }
}

fn stop(removal: &Removal, shutdown: &CancellationToken, reason: String) {
    tracing::error!(reason = %reason, "removed from the cluster: this node stops serving");
    removal.record(reason);
    shutdown.cancel();
}

/// Asks the peers for the leader's view of the membership; the reason when a leader other than
/// this node does not list it.
async fn removed_according_to_peers(context: &CoordinatorContext, peers: &[String]) -> Option<String> {
    for address in peers {
        let Ok(channel) = context.channel(address) else {
            continue;
        };
        let mut peer = AdminServiceClient::new(channel);
        let call = peer.cluster_status(pb::ClusterStatusRequest {});
        let Ok(Ok(reply)) = tokio::time::timeout(PEER_TIMEOUT, call).await else {
            continue;
        };
        let status = reply.into_inner();
        let Some(leader_id) = status.leader_id.filter(|leader| *leader != context.node_id.0) else {
            continue;
        };
        // Only the leader's own answer is authoritative: a follower that could not reach its
        // leader answers with its own, possibly stale, view.
        let leader_answered = status
            .nodes
            .iter()
            .any(|node| node.node_id == leader_id && node.state == "Leader");
        if !leader_answered {
            continue;
        }
        if status.members.iter().all(|member| member.node_id != context.node_id.0) {
            let members: Vec<u64> = status.members.iter().map(|member| member.node_id).collect();
            return Some(format!(
                "node {} was removed from the cluster: leader {leader_id} (term {}) lists members {members:?}",
                context.node_id, status.term
            ));
        }
        return None;
    }
    None
}
