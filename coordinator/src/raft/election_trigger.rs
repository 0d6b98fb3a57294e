//! Starts an election as soon as the leader's lease has run out, instead of waiting for openraft
//! 0.9's own timer, which fires only after the lease *plus* a full election timeout (and a fixed,
//! once-drawn timeout per node, which makes split votes repeat). With the default 150-300 ms
//! election timeout this takes failover from 450-1800 ms to about 300-400 ms.
//!
//! Safety is unaffected: starting an election is always allowed in Raft; peers still refuse
//! votes while their lease from the old leader holds and refuse candidates with shorter logs.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use openraft::ServerState;
use rand::Rng;
use tokio_util::sync::CancellationToken;

use super::CoordinatorRaft;

const POLL_INTERVAL: Duration = Duration::from_millis(10);

/// Most quick re-candidacies per lost leader; after that openraft's own timer takes over.
const MAX_QUICK_RETRIES: u32 = 3;

/// When this node last heard from a leader it accepts, updated by the Raft service. `None` until a
/// leader has contacted this process: a node that just restarted, possibly with a stale log, must
/// not disturb a healthy cluster with early elections (openraft 0.9 has no pre-vote).
#[derive(Debug, Clone, Default)]
pub struct LeaderContact(Arc<Mutex<Option<Instant>>>);

impl LeaderContact {
    /// Records contact from the leader now.
    pub fn touch(&self) {
        if let Ok(mut last) = self.0.lock() {
            *last = Some(Instant::now());
        }
    }

    fn elapsed(&self) -> Option<Duration> {
        self.0.lock().ok().and_then(|last| last.map(|at| at.elapsed()))
    }
}

/// Watches leader contact and triggers elections once the leader lease has expired.
pub struct ElectionTrigger {
    raft: CoordinatorRaft,
    contact: LeaderContact,
    /// openraft's leader lease: peers refuse to vote for this long after hearing from a leader.
    lease: Duration,
    /// Random extra wait per attempt, so two followers rarely stand at the same moment.
    jitter_max: Duration,
    /// How long a candidate waits before standing again with a higher term.
    retry_min: Duration,
}

impl ElectionTrigger {
    /// A trigger for `raft`, whose peers hold leases of `lease`.
    pub fn new(raft: CoordinatorRaft, contact: LeaderContact, lease: Duration, election_timeout_min: Duration) -> Self {
        ElectionTrigger {
            raft,
            contact,
            lease,
            jitter_max: election_timeout_min / 3,
            retry_min: election_timeout_min / 3,
        }
    }

    /// Runs until `shutdown` is cancelled.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut last_attempt: Option<Instant> = None;
        let mut quick_retries = 0u32;
        let mut wait = self.next_wait();
        loop {
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(POLL_INTERVAL) => {}
            }
            let (state, is_voter) = {
                let metrics = self.raft.metrics().borrow().clone();
                let is_voter = metrics
                    .membership_config
                    .membership()
                    .voter_ids()
                    .any(|id| id == metrics.id);
                (
                    metrics.state,
                    is_voter && metrics.membership_config.membership().voter_ids().count() > 1,
                )
            };
            if !is_voter {
                continue;
            }
            let since_leader = self.contact.elapsed();
            let due = match state {
                ServerState::Follower => {
                    let silent = since_leader.is_some_and(|elapsed| elapsed >= wait);
                    if !silent {
                        quick_retries = 0;
                    }
                    // Stand once per silence: after a failed attempt the leader's contact (or
                    // openraft's timer) decides.
                    silent && last_attempt.is_none_or(|at| since_leader.is_some_and(|elapsed| elapsed > at.elapsed()))
                }
                // A candidate refused (split vote, or a peer with a longer log) stands again soon
                // with a higher term rather than after openraft's fixed, once-drawn timeout.
                ServerState::Candidate => {
                    quick_retries < MAX_QUICK_RETRIES
                        && last_attempt.is_some_and(|at| at.elapsed() >= self.retry_min + self.jitter())
                }
                _ => {
                    quick_retries = 0;
                    false
                }
            };
            if due {
                if state == ServerState::Candidate {
                    quick_retries += 1;
                }
                tracing::info!(since_leader = ?since_leader, ?state, "leader lease expired; starting an election");
                if let Err(fatal) = self.raft.trigger().elect().await {
                    tracing::warn!(error = %fatal, "could not start an election; Raft has stopped");
                    return;
                }
                last_attempt = Some(Instant::now());
                wait = self.next_wait();
            }
        }
    }

    fn jitter(&self) -> Duration {
        let max_ms = u64::try_from(self.jitter_max.as_millis()).unwrap_or(u64::MAX).max(1);
        Duration::from_millis(rand::thread_rng().gen_range(0..max_ms))
    }

    fn next_wait(&self) -> Duration {
        self.lease + self.jitter()
    }
}
