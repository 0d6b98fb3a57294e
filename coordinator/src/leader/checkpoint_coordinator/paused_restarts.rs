//! The commit of a rescale, a switch to two-phase aggregation or a move off a draining executor,
//! once the checkpoint taken for it (with the sources paused after its barrier) completed, or
//! after too many such checkpoints failed.

use super::Coordinator;
use crate::leader::context::LeaderContext;
use crate::state_machine::Command;
use raftstream_api::ids::{CheckpointId, JobId};

impl<C: LeaderContext> Coordinator<C> {
    /// Commits the job's pending rescale, or else its pending move off a draining executor: it
    /// restarts from its latest completed checkpoint, `paused_at` when that is the one taken for
    /// it.
    pub(super) async fn restart_paused(&mut self, job_id: JobId, paused_at: Option<CheckpointId>) {
        if let Some(job) = self.jobs.get_mut(&job_id) {
            job.rescale_attempts = 0;
        }
        let (rescale, relocation) = self.context.read_state(|state| {
            state.jobs.get(&job_id).map_or((None, None), |job| {
                (job.pending_rescale.clone(), job.pending_relocation.clone())
            })
        });
        let checkpoint_id = paused_at.map(|id| id.0);
        let at_ms = self.context.now_ms();
        if let Some(request) = rescale.as_ref().filter(|request| request.two_phase) {
            let command = Command::SwitchTwoPhase {
                job_id,
                operator_id: request.operator_id.clone().unwrap_or_default(),
                at_ms,
                reason: request.reason.clone(),
            };
            match self.context.propose(command).await {
                Ok(_) => {
                    tracing::info!(job_id = %job_id, operator_id = ?request.operator_id, checkpoint_id, "switching to two-phase aggregation: the job restarts from its latest checkpoint")
                }
                Err(error) => {
                    tracing::warn!(job_id = %job_id, error = %raftstream_observability::chain(&error), "switch to two phases not committed; it is tried again")
                }
            }
        } else if let Some(request) = rescale {
            let command = Command::RescaleJob {
                job_id,
                operator_id: request.operator_id.clone(),
                parallelism: request.parallelism,
                at_ms,
                auto: request.auto,
                reason: request.reason.clone(),
            };
            match self.context.propose(command).await {
                Ok(_) => {
                    tracing::info!(job_id = %job_id, operator_id = ?request.operator_id, parallelism = request.parallelism, checkpoint_id, "rescaling: the job restarts from its latest checkpoint")
                }
                Err(error) => {
                    tracing::warn!(job_id = %job_id, error = %raftstream_observability::chain(&error), "rescale not committed; it is tried again")
                }
            }
        } else if let Some(request) = relocation {
            match self.context.propose(Command::RelocateJob { job_id, at_ms }).await {
                Ok(_) => {
                    tracing::info!(job_id = %job_id, away_from = %request.away_from, checkpoint_id, "relocating: the job restarts from its latest checkpoint off the draining executor")
                }
                Err(error) => {
                    tracing::warn!(job_id = %job_id, error = %raftstream_observability::chain(&error), "move not committed; it is tried again")
                }
            }
        }
    }
}
