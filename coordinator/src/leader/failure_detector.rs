//! The failure detector: executor leases kept in memory (heartbeats never go through Raft), a
//! broken session made a suspect whose address is probed, and only "dead" committed through Raft.

use std::time::{Duration, Instant};

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::context::LeaderContext;
use super::ExecutorSettings;
use crate::state_machine::{Command, Response, State};
use raftstream_api::ids::ExecutorId;

pub(super) fn alive_executors(state: &State) -> Vec<ExecutorId> {
    state
        .executors
        .values()
        .filter(|executor| executor.alive)
        .map(|executor| executor.executor_id.clone())
        .collect()
}

/// How often a suspect's address is probed again while it still accepts connections.
const PROBE_REPEAT: Duration = Duration::from_millis(20);

pub(super) async fn failure_detector<C: LeaderContext>(
    context: C,
    settings: ExecutorSettings,
    shutdown: CancellationToken,
) {
    let sessions = context.sessions();
    let lease_timeout = Duration::from_millis(settings.lease_timeout_ms);
    let grace = Duration::from_millis(settings.session_break_grace_ms);
    let check_every = (lease_timeout / 10).min(grace / 4).max(Duration::from_millis(10));
    let suspicion_changed = sessions.suspicion_changed();
    // Probes of suspects' addresses, tracked so that they end with the duty.
    let mut probes: JoinSet<()> = JoinSet::new();
    loop {
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            _ = suspicion_changed.notified() => {}
            _ = tokio::time::sleep(check_every) => {}
        }
        while probes.try_join_next().is_some() {}
        for probe in sessions.take_probe_requests() {
            let Some(address) = context.read_state(|state| {
                state
                    .executors
                    .get(&probe.executor_id)
                    .map(|executor| executor.address.clone())
            }) else {
                continue;
            };
            let context = context.clone();
            probes.spawn(async move {
                // A process being killed closes its connections and its listening socket one by
                // one: the session may break while the listener still accepts. So the probe is
                // repeated until it is refused, the suspicion ends, or the grace is over.
                let deadline = Instant::now() + grace;
                while Instant::now() < deadline && context.sessions().is_suspect(&probe) {
                    if context.nothing_listens_at(&address).await {
                        tracing::debug!(executor_id = %probe.executor_id, %address, "nothing listens at a suspect's address");
                        context.sessions().confirm_gone(&probe);
                        return;
                    }
                    tokio::time::sleep(PROBE_REPEAT).await;
                }
            });
        }
        let alive = context.read_state(alive_executors);
        for (executor_id, cause) in sessions.expired(&alive, lease_timeout, grace, Instant::now()) {
            match context
                .propose(Command::MarkExecutorDead {
                    executor_id: executor_id.clone(),
                    at_ms: context.now_ms(),
                })
                .await
            {
                Ok(Response::ExecutorMarkedDead { orphaned_subtasks, .. }) => {
                    tracing::info!(executor_id = %executor_id, orphaned_subtasks, lease_timeout_ms = settings.lease_timeout_ms, grace_ms = settings.session_break_grace_ms, cause = cause.describe(), "executor declared dead");
                    sessions.remove(&executor_id);
                    // The scheduler places the orphans at once instead of at its next round.
                    sessions.placements_wanted().notify_one();
                }
                Ok(other) => {
                    tracing::warn!(executor_id = %executor_id, response = ?other, "unexpected answer to MarkExecutorDead")
                }
                Err(error) => {
                    tracing::warn!(executor_id = %executor_id, error = %raftstream_observability::chain(&error), "could not declare executor dead")
                }
            }
        }
    }
    probes.shutdown().await;
}
