//! Changes of a running job's shape through a checkpoint taken for them: rescales (asked by a
//! user or the autoscaler), switches to two-phase aggregation, and moves off a draining executor.

use std::collections::BTreeMap;

use raftstream_api::checkpoint::SubtaskKey;
use raftstream_api::ids::{Epoch, JobId, OperatorId};
use raftstream_api::spec::JobGraph;

use super::jobs::release_slots;
use super::model::{job_mut, record_event, Assignment, RescaleRequest, State};
use super::savepoints;
use super::{ApplyResult, JobStatus, Rejection, Response};

/// What a rescale changes: one operator, every operator, or the `auto` operators; or, at the same
/// parallelism, an operator switching to two-phase aggregation.
pub(super) struct RescaleTarget<'a> {
    pub(super) operator_id: Option<&'a str>,
    pub(super) parallelism: u32,
    pub(super) auto: bool,
    pub(super) two_phase: bool,
}

impl RescaleTarget<'_> {
    fn describe(&self) -> String {
        match (self.auto, self.operator_id) {
            _ if self.two_phase => format!(
                "operator {} to two-phase aggregation",
                self.operator_id.unwrap_or_default()
            ),
            (true, _) => format!("automatic operators to parallelism {}", self.parallelism),
            (false, Some(operator)) => format!("operator {operator} to parallelism {}", self.parallelism),
            (false, None) => format!("every operator to parallelism {}", self.parallelism),
        }
    }
}

/// The graph `job_id` would run rescaled as asked, if it can be. Only a running job rescales,
/// but an automatic rescale also applies to a restarting one (to the slots it can get).
pub(super) fn rescaled_graph(state: &State, job_id: &JobId, target: &RescaleTarget<'_>) -> Result<JobGraph, Rejection> {
    let job = state
        .jobs
        .get(job_id)
        .ok_or(Rejection::UnknownJob { job_id: *job_id })?;
    let restarting_auto = target.auto && job.status == JobStatus::Restarting;
    if job.status != JobStatus::Running && !restarting_auto {
        return Err(Rejection::JobNotActive {
            job_id: *job_id,
            status: job.status,
            what: "rescaling (only a running job can be rescaled)".to_owned(),
        });
    }
    let invalid = |problem: String| Rejection::InvalidRescale {
        job_id: *job_id,
        problem,
    };
    if target.two_phase {
        return job
            .graph
            .with_two_phase_on(target.operator_id.unwrap_or_default())
            .map_err(|error| invalid(error.to_string()));
    }
    if target.auto {
        if !job.graph.is_auto() {
            return Err(invalid("it has no operator with an automatic parallelism".to_owned()));
        }
        let graph = job.graph.with_auto_parallelism(target.parallelism.max(1));
        if graph == job.graph {
            return Err(invalid(format!(
                "its automatic operators are at parallelism {} already",
                target.parallelism
            )));
        }
        return Ok(graph);
    }
    job.graph
        .rescaled(target.operator_id, target.parallelism)
        .map_err(|error| invalid(error.to_string()))
}

pub(super) fn request_rescale(
    state: &mut State,
    job_id: &JobId,
    operator_id: Option<OperatorId>,
    parallelism: u32,
    auto: bool,
    reason: String,
    at_ms: u64,
) -> ApplyResult {
    let target = RescaleTarget {
        operator_id: operator_id.as_ref().map(OperatorId::as_str),
        parallelism,
        auto,
        two_phase: false,
    };
    let graph = rescaled_graph(state, job_id, &target)?;
    let job = job_mut(state, job_id)?;
    if job.pending_savepoint.is_some() || job.stopping_at.is_some() {
        return Err(Rejection::InvalidRescale {
            job_id: *job_id,
            problem: "it is taking a savepoint; rescale once that is done".to_owned(),
        });
    }
    if let Some(pending) = &job.pending_rescale {
        return Err(Rejection::InvalidRescale {
            job_id: *job_id,
            problem: format!(
                "a rescale to parallelism {} is already in progress",
                pending.parallelism
            ),
        });
    }
    // Its own slots come back when it stops; the rest must be free on live executors now.
    let needed = graph.slots_needed();
    let available = job.slots_held() + state.free_slots();
    if needed > available {
        return Err(Rejection::NotEnoughSlots {
            job_id: *job_id,
            needed,
            available,
            missing: needed - available,
        });
    }
    let job = job_mut(state, job_id)?;
    job.pending_rescale = Some(RescaleRequest {
        operator_id,
        parallelism,
        requested_at_ms: at_ms,
        auto,
        reason,
        two_phase: false,
    });
    Ok(Response::RescaleRequested { job_id: *job_id })
}

/// Asks for a running job's `two_phase: auto` operator to switch to two phases through a
/// checkpoint with paused sources (the same path as a rescale, at the same parallelism).
pub(super) fn request_two_phase(
    state: &mut State,
    job_id: &JobId,
    operator_id: OperatorId,
    reason: String,
    at_ms: u64,
) -> ApplyResult {
    let target = RescaleTarget {
        operator_id: Some(operator_id.as_str()),
        parallelism: 0,
        auto: false,
        two_phase: true,
    };
    let graph = rescaled_graph(state, job_id, &target)?;
    let job = job_mut(state, job_id)?;
    let busy = if job.pending_rescale.is_some() {
        Some("a rescale is in progress")
    } else if job.pending_savepoint.is_some() || job.stopping_at.is_some() {
        Some("it is taking a savepoint")
    } else if job.pending_relocation.is_some() {
        Some("it is moving off a draining executor")
    } else {
        None
    };
    if let Some(busy) = busy {
        return Err(Rejection::InvalidRescale {
            job_id: *job_id,
            problem: format!("{busy}; switch to two phases after it"),
        });
    }
    job.pending_rescale = Some(RescaleRequest {
        parallelism: graph
            .operator(operator_id.as_str())
            .map_or(1, |operator| operator.parallelism),
        operator_id: Some(operator_id),
        requested_at_ms: at_ms,
        auto: false,
        reason,
        two_phase: true,
    });
    Ok(Response::RescaleRequested { job_id: *job_id })
}

/// Restarts `job_id` at the new parallelism. The slots were checked when it was requested; if
/// some went since, the subtasks that do not fit wait for slots, as after any restart.
pub(super) fn rescale_job(
    state: &mut State,
    job_id: &JobId,
    target: &RescaleTarget<'_>,
    reason: String,
    at_ms: u64,
) -> ApplyResult {
    let graph = rescaled_graph(state, job_id, target)?;
    let job = job_mut(state, job_id)?;
    release_slots(job);
    let mut assignments = BTreeMap::new();
    for operator in &graph.operators {
        for subtask_index in 0..operator.parallelism {
            let key = SubtaskKey {
                operator_id: operator.id.clone(),
                subtask_index,
            };
            // A subtask that stays keeps its epoch history; the next placement raises it.
            let assignment = job.assignments.remove(&key).unwrap_or(Assignment {
                executor_id: None,
                epoch: Epoch(0),
                previous_executor: None,
            });
            assignments.insert(key, assignment);
        }
    }
    job.assignments = assignments;
    job.graph = graph;
    job.status = JobStatus::Restarting;
    job.status_reason = format!("rescaling {}", target.describe());
    let because = if reason.is_empty() {
        String::new()
    } else {
        format!(": {reason}")
    };
    let change = if target.two_phase { "switched" } else { "rescaled" };
    record_event(job, at_ms, format!("{change} {}{because}", target.describe()));
    job.updated_at_ms = job.updated_at_ms.max(at_ms);
    job.rescaling = true;
    job.pending_rescale = None;
    job.pending_relocation = None;
    savepoints::interrupt_savepoint(job, "the job was rescaled");
    Ok(Response::JobTransitioned {
        job_id: *job_id,
        status: JobStatus::Restarting,
    })
}

pub(super) fn relocate_job(state: &mut State, job_id: &JobId, at_ms: u64) -> ApplyResult {
    let job = job_mut(state, job_id)?;
    if job.status != JobStatus::Running {
        return Err(Rejection::JobNotActive {
            job_id: *job_id,
            status: job.status,
            what: "moves (only a running job moves)".to_owned(),
        });
    }
    let Some(request) = job.pending_relocation.take() else {
        return Err(Rejection::JobNotActive {
            job_id: *job_id,
            status: job.status,
            what: "moves (none was asked for)".to_owned(),
        });
    };
    release_slots(job);
    savepoints::interrupt_savepoint(job, "the job moved off a draining executor");
    job.status = JobStatus::Restarting;
    job.status_reason = format!("moving off draining executor {}", request.away_from);
    record_event(job, at_ms, format!("moved off draining executor {}", request.away_from));
    job.updated_at_ms = job.updated_at_ms.max(at_ms);
    job.rescaling = true;
    Ok(Response::JobTransitioned {
        job_id: *job_id,
        status: JobStatus::Restarting,
    })
}
