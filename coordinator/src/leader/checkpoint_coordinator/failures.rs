//! A subtask's failure, as its executor reported it: committed through Raft (the job restarts
//! from its last completed checkpoint, or fails when that cannot be restored) and the job's
//! checkpoint in flight aborted.

use super::Coordinator;
use crate::leader::context::LeaderContext;
use crate::state_machine::{Command, Response};
use raftstream_api::messages::TaskRef;

impl<C: LeaderContext> Coordinator<C> {
    pub(super) async fn on_task_failed(&mut self, task: TaskRef, reason: String, fatal: bool) {
        // Falling back to an older checkpoint is not safe once a file sink published the
        // output of the newer one: the replay would publish it twice. So a checkpoint that
        // cannot be restored fails the job, with the reason, instead of restarting it.
        let reason = if fatal {
            format!("{reason}; not falling back to an older checkpoint, whose replay would duplicate output already published")
        } else {
            reason
        };
        let command = Command::FailSubtask {
            job_id: task.job_id,
            subtask: task.subtask.clone(),
            epoch: task.epoch,
            reason: reason.clone(),
            fatal,
            at_ms: self.context.now_ms(),
        };
        match self.context.propose(command).await {
            Ok(Response::JobTransitioned { .. }) => {
                tracing::error!(job_id = %task.job_id, reason, "job failed: its checkpoint cannot be restored");
                self.abort(&task.job_id, "the job failed");
            }
            Ok(Response::JobRestarting { restart_count, .. }) => {
                tracing::warn!(job_id = %task.job_id, operator_id = %task.subtask.operator_id, subtask_index = task.subtask.subtask_index, epoch = task.epoch.0, restart_count, reason, "subtask failed: restarting the job from its last completed checkpoint");
                self.abort(&task.job_id, "a subtask failed");
            }
            Ok(other) => tracing::warn!(response = ?other, "unexpected answer to FailSubtask"),
            Err(error) => {
                tracing::info!(job_id = %task.job_id, error = %raftstream_observability::chain(&error), reason, "subtask failure not acted on")
            }
        }
    }
}
