//! The only place elections start (openraft's own timer is off, see [`super::pre_vote`]): once the
//! leader's lease has run out without contact, this node asks the voters for a pre-vote, and only
//! when a quorum grants it does it take a new term and stand. A refused pre-vote changes nothing
//! anywhere, so it is simply asked again a little later.
//!
//! Standing as soon as the lease has run out, rather than after openraft's lease *plus* a full
//! election timeout, keeps failover at about 300-400 ms with the default 150-300 ms timeouts.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use openraft::ServerState;
use raftstream_proto::v1::raft_service_client::RaftServiceClient;
use raftstream_proto::v1::RaftPayload;
use rand::Rng;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Channel, Endpoint};

use super::pre_vote::{is_quorum, PreVoteRequest, PreVoteResponse};
use super::{CoordinatorRaft, LogStore};
use raftstream_api::dial::DialAddresses;
use raftstream_api::ids::NodeId;

const POLL_INTERVAL: Duration = Duration::from_millis(10);

/// When this node last heard from a leader it accepts, updated by the Raft service.
#[derive(Debug, Clone, Default)]
pub struct LeaderContact(Arc<Mutex<Option<Instant>>>);

impl LeaderContact {
    /// Records contact from the leader now.
    pub fn touch(&self) {
        if let Ok(mut last) = self.0.lock() {
            *last = Some(Instant::now());
        }
    }

    /// Since the last contact, `None` if there was none since this process started.
    pub fn elapsed(&self) -> Option<Duration> {
        self.0.lock().ok().and_then(|last| last.map(|at| at.elapsed()))
    }
}

/// Watches leader contact and starts pre-voted elections once the leader lease has expired.
pub struct ElectionTrigger {
    raft: CoordinatorRaft,
    contact: LeaderContact,
    log: LogStore,
    dial: DialAddresses,
    /// openraft's leader lease: peers refuse to vote for this long after hearing from a leader.
    lease: Duration,
    /// Random extra wait per attempt, so two followers rarely stand at the same moment.
    jitter_max: Duration,
    /// How long to wait after an attempt (a refused pre-vote, a lost election) before the next.
    retry_min: Duration,
    /// How long one pre-vote round waits for answers.
    round_timeout: Duration,
    channels: BTreeMap<String, Channel>,
}

impl ElectionTrigger {
    /// A trigger for `raft` (whose log is `log`), whose peers hold leases of `lease`.
    pub fn new(
        raft: CoordinatorRaft,
        contact: LeaderContact,
        log: LogStore,
        dial: DialAddresses,
        lease: Duration,
        election_timeout_min: Duration,
    ) -> Self {
        ElectionTrigger {
            raft,
            contact,
            log,
            dial,
            lease,
            jitter_max: election_timeout_min / 3,
            retry_min: election_timeout_min / 3,
            round_timeout: election_timeout_min,
            channels: BTreeMap::new(),
        }
    }

    /// Runs until `shutdown` is cancelled.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let started = Instant::now();
        let mut last_attempt: Option<Instant> = None;
        let mut wait = self.next_wait();
        loop {
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(POLL_INTERVAL) => {}
            }
            let metrics = self.raft.metrics().borrow().clone();
            let membership = metrics.membership_config.membership();
            if !membership.voter_ids().any(|id| id == metrics.id) {
                continue;
            }
            // A node that has not heard from any leader since it started counts its silence from
            // its start: the pre-vote, not a guess about the cluster, decides whether it stands.
            let silence = self.contact.elapsed().unwrap_or_else(|| started.elapsed());
            let since_attempt = last_attempt.map(|at| at.elapsed());
            let due = match metrics.state {
                ServerState::Follower => {
                    silence >= wait && since_attempt.is_none_or(|since| since >= self.retry_min + self.jitter())
                }
                // A lost election (split vote, a longer log elsewhere) is retried, pre-voted again.
                ServerState::Candidate => since_attempt.is_none_or(|since| since >= self.retry_min + self.jitter()),
                _ => false,
            };
            if !due {
                continue;
            }
            last_attempt = Some(Instant::now());
            let voters: Vec<(NodeId, String)> = membership
                .voter_ids()
                .filter(|id| *id != metrics.id)
                .filter_map(|id| membership.get_node(&id).map(|node| (id, node.addr.clone())))
                .collect();
            let voter_count = voters.len() + 1;
            let round_started = Instant::now();
            let granted = 1 + self.pre_vote_round(metrics.id, &voters).await;
            if !is_quorum(granted, voter_count) {
                tracing::debug!(
                    granted,
                    voters = voter_count,
                    "pre-vote refused: not standing for election"
                );
                continue;
            }
            // Another node may have stood (this one voted for it: the term moved) or won (its
            // leader was heard) while the round was out: standing now would only depose it.
            let after = self.raft.metrics().borrow().clone();
            let heard_since = self
                .contact
                .elapsed()
                .is_some_and(|since| since < round_started.elapsed());
            if after.current_term != metrics.current_term || heard_since || after.state == ServerState::Leader {
                tracing::debug!(
                    term = after.current_term,
                    heard_since,
                    "another election overtook the pre-vote: not standing"
                );
                continue;
            }
            tracing::info!(silence = ?silence, state = ?metrics.state, granted, voters = voter_count, "leader lease expired and a quorum pre-voted; starting an election");
            if let Err(fatal) = self.raft.trigger().elect().await {
                tracing::warn!(error = %fatal, "could not start an election; Raft has stopped");
                return;
            }
            wait = self.next_wait();
        }
    }

    /// Asks every other voter for a pre-vote at once; returns how many granted it in time.
    async fn pre_vote_round(&mut self, candidate_id: NodeId, voters: &[(NodeId, String)]) -> usize {
        let last_log_id = match self.log.last_log_id() {
            Ok(last) => last,
            Err(error) => {
                tracing::warn!(error = %raftstream_observability::chain(&error), "cannot read the last log id for a pre-vote");
                return 0;
            }
        };
        let request = PreVoteRequest {
            candidate_id,
            last_log_id,
        };
        let Ok(data) = serde_json::to_vec(&request) else {
            return 0;
        };
        let mut asks = Vec::with_capacity(voters.len());
        for (voter_id, address) in voters {
            let Some(channel) = self.channel(address) else {
                continue;
            };
            let mut client = RaftServiceClient::new(channel);
            let payload = RaftPayload { data: data.clone() };
            let timeout = self.round_timeout;
            let voter_id = *voter_id;
            asks.push(async move {
                let reply = tokio::time::timeout(timeout, client.pre_vote(payload)).await;
                let answer = match reply {
                    Ok(Ok(reply)) => serde_json::from_slice::<PreVoteResponse>(&reply.into_inner().data).ok(),
                    _ => None,
                };
                match answer {
                    Some(answer) if answer.granted => true,
                    Some(answer) => {
                        tracing::debug!(voter_id = voter_id.0, reason = %answer.reason, "pre-vote refused");
                        false
                    }
                    None => false,
                }
            });
        }
        futures::future::join_all(asks)
            .await
            .into_iter()
            .filter(|granted| *granted)
            .count()
    }

    fn channel(&mut self, address: &str) -> Option<Channel> {
        let dialled = self.dial.resolve(address).to_owned();
        if let Some(channel) = self.channels.get(&dialled) {
            return Some(channel.clone());
        }
        let endpoint = Endpoint::from_shared(format!("http://{dialled}"))
            .ok()?
            .connect_timeout(self.round_timeout)
            .tcp_nodelay(true);
        let channel = endpoint.connect_lazy();
        self.channels.insert(dialled, channel.clone());
        Some(channel)
    }

    fn jitter(&self) -> Duration {
        let max_ms = u64::try_from(self.jitter_max.as_millis()).unwrap_or(u64::MAX).max(1);
        Duration::from_millis(rand::thread_rng().gen_range(0..max_ms))
    }

    fn next_wait(&self) -> Duration {
        self.lease + self.jitter()
    }
}
