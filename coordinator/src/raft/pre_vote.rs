//! Pre-vote (Raft thesis §9.6; etcd's PreVote with CheckQuorum's leader stickiness): before a node
//! takes a new term to stand for election, it asks the voters whether they would vote for it. A
//! voter says yes only if it is not the leader, has not heard from a leader for the leader lease,
//! and the asking node's log is at least as up to date as its own.
//!
//! openraft 0.9 has no pre-vote: a node that was partitioned, paused or restarted stood for
//! election with ever higher terms, and the first message it exchanged with the healthy leader
//! deposed it ("seen a higher vote"). So openraft's own election timer is off
//! (`enable_elect = false`) and elections start only from [`super::ElectionTrigger`], after a
//! pre-vote a quorum granted: terms grow only when an election can succeed, and never while a
//! quorum still hears the leader.
//!
//! The pre-vote carries no term: the real vote decides terms, and a node with the longest log but
//! a stale term must still be able to stand (its refused vote teaches it the higher term).

use std::time::Duration;

use openraft::LogId;
use raftstream_api::ids::NodeId;
use serde::{Deserialize, Serialize};

/// "Would you vote for me if I stood now?"
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreVoteRequest {
    pub candidate_id: NodeId,
    pub last_log_id: Option<LogId<NodeId>>,
}

/// A voter's answer, with its reason when it refuses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreVoteResponse {
    pub granted: bool,
    pub reason: String,
}

/// What a voter knows when it answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VoterView {
    pub is_leader: bool,
    /// Since this node last accepted a message from a leader; `None` if it never has since it
    /// started.
    pub since_leader: Option<Duration>,
    /// How long a leader's contact holds (openraft's leader lease).
    pub lease: Duration,
    pub last_log_id: Option<LogId<NodeId>>,
}

/// Answers a pre-vote: pure, so every case is tested without a cluster.
pub fn decide(request: &PreVoteRequest, voter: &VoterView) -> PreVoteResponse {
    let refuse = |reason: String| PreVoteResponse { granted: false, reason };
    if voter.is_leader {
        return refuse("this node is the leader".to_owned());
    }
    if let Some(since) = voter.since_leader.filter(|since| *since < voter.lease) {
        return refuse(format!("heard from the leader {} ms ago", since.as_millis()));
    }
    // Raft §5.4.1: a voter grants only to a candidate whose log is at least as up to date.
    if request.last_log_id < voter.last_log_id {
        return refuse(format!(
            "the candidate's log ends at {:?}, before this node's {:?}",
            request.last_log_id, voter.last_log_id
        ));
    }
    PreVoteResponse {
        granted: true,
        reason: String::new(),
    }
}

/// Whether `granted` answers (the candidate's own included) are a majority of `voters`.
pub fn is_quorum(granted: usize, voters: usize) -> bool {
    voters > 0 && granted * 2 > voters
}

#[cfg(test)]
mod tests {
    use openraft::CommittedLeaderId;

    use super::*;

    fn log_id(term: u64, index: u64) -> Option<LogId<NodeId>> {
        Some(LogId::new(CommittedLeaderId::new(term, NodeId(1)), index))
    }

    fn request(last_log_id: Option<LogId<NodeId>>) -> PreVoteRequest {
        PreVoteRequest {
            candidate_id: NodeId(2),
            last_log_id,
        }
    }

    fn voter(since_leader_ms: Option<u64>, last_log_id: Option<LogId<NodeId>>) -> VoterView {
        VoterView {
            is_leader: false,
            since_leader: since_leader_ms.map(Duration::from_millis),
            lease: Duration::from_millis(300),
            last_log_id,
        }
    }

    #[test]
    fn a_voter_that_still_hears_the_leader_refuses() {
        let answer = decide(&request(log_id(3, 10)), &voter(Some(120), log_id(3, 10)));
        assert!(!answer.granted);
        assert!(answer.reason.contains("120 ms"), "{}", answer.reason);
        let leader = VoterView {
            is_leader: true,
            ..voter(None, log_id(3, 10))
        };
        assert!(!decide(&request(log_id(9, 99)), &leader).granted);
    }

    #[test]
    fn a_silent_voter_grants_to_an_up_to_date_log_only() {
        assert!(decide(&request(log_id(3, 10)), &voter(Some(400), log_id(3, 10))).granted);
        assert!(decide(&request(log_id(4, 2)), &voter(Some(400), log_id(3, 10))).granted);
        assert!(decide(&request(log_id(3, 11)), &voter(None, log_id(3, 10))).granted);
        let behind = decide(&request(log_id(3, 9)), &voter(Some(400), log_id(3, 10)));
        assert!(!behind.granted && behind.reason.contains("before"), "{}", behind.reason);
        assert!(!decide(&request(log_id(2, 50)), &voter(None, log_id(3, 10))).granted);
        assert!(!decide(&request(None), &voter(None, log_id(1, 1))).granted);
        assert!(decide(&request(None), &voter(None, None)).granted);
    }

    #[test]
    fn a_quorum_is_a_strict_majority() {
        assert!(is_quorum(1, 1));
        assert!(!is_quorum(1, 2) && is_quorum(2, 2));
        assert!(!is_quorum(1, 3) && is_quorum(2, 3));
        assert!(!is_quorum(2, 4) && is_quorum(3, 4));
        assert!(!is_quorum(0, 0));
    }
}
