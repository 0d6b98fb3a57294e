//! Savepoints: checkpoints a user asked for and owns. A request is recorded in the job; the
//! leader takes a checkpoint for it (its state stored apart from the job's checkpoints) and
//! commits it as a savepoint, which retention never removes and the end of the job does not
//! delete. `stop` takes it with the sources stopping after its barrier, so the job ends `Stopped`
//! once every sink published it. A new job can start from a savepoint, at other parallelisms.

use serde::{Deserialize, Serialize};

use raftstream_api::checkpoint::{CompletedCheckpoint, SavepointRef};
use raftstream_api::ids::{CheckpointId, JobId};
use raftstream_api::spec::JobGraph;

use super::model::job_mut;
use super::{ApplyResult, JobRecord, JobStatus, Rejection, Response, State};

/// A savepoint asked for and not yet taken.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavepointRequest {
    /// Numbers the job's savepoint requests, so the one who asked can find the outcome.
    pub ticket: u64,
    /// Stop the job once the savepoint is taken and published.
    pub stop: bool,
    pub requested_at_ms: u64,
}

/// How a job's latest savepoint request ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavepointOutcome {
    pub ticket: u64,
    /// The savepoint taken, or why none was.
    pub result: Result<CheckpointId, String>,
}

/// A savepoint kept in the state until it is deleted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavepointRecord {
    pub checkpoint: CompletedCheckpoint,
    /// The graph the job ran when it was taken: a job started from it is matched against it.
    pub graph: JobGraph,
    /// Taken to stop the job.
    pub stopped_job: bool,
}

/// Whether a task state holds anything to restore (stateless operators acknowledge nothing).
fn holds_state(handle: &raftstream_api::checkpoint::TaskStateHandle) -> bool {
    handle.size_bytes > 0 || !handle.location.is_empty() || !handle.inline_state.is_empty()
}

pub(super) fn request_savepoint(state: &mut State, job_id: &JobId, stop: bool, at_ms: u64) -> ApplyResult {
    let job = job_mut(state, job_id)?;
    if job.status != JobStatus::Running {
        return Err(Rejection::JobNotActive {
            job_id: *job_id,
            status: job.status,
            what: "savepoints (only a running job can take one)".to_owned(),
        });
    }
    if job.graph.checkpoint.interval_ms == 0 {
        // Its sinks publish only at the end of the input, not at barriers.
        return Err(Rejection::InvalidSavepoint {
            problem: format!("job {job_id} does not checkpoint (checkpoint.interval_ms is 0)"),
        });
    }
    if let Some(pending) = &job.pending_savepoint {
        return Err(Rejection::InvalidSavepoint {
            problem: format!(
                "job {job_id} is already taking a savepoint (requested at {} ms)",
                pending.requested_at_ms
            ),
        });
    }
    if job.pending_rescale.is_some() {
        return Err(Rejection::InvalidSavepoint {
            problem: format!("job {job_id} is being rescaled; take the savepoint once it runs again"),
        });
    }
    if job.stopping_at.is_some() {
        return Err(Rejection::InvalidSavepoint {
            problem: format!("job {job_id} is stopping"),
        });
    }
    job.savepoint_tickets += 1;
    let ticket = job.savepoint_tickets;
    job.pending_savepoint = Some(SavepointRequest {
        ticket,
        stop,
        requested_at_ms: at_ms,
    });
    job.updated_at_ms = job.updated_at_ms.max(at_ms);
    Ok(Response::SavepointRequested {
        job_id: *job_id,
        ticket,
    })
}

/// Records a completed checkpoint taken for the job's pending savepoint.
pub(super) fn record_savepoint(state: &mut State, job_id: &JobId, checkpoint: &CompletedCheckpoint) {
    let Some(job) = state.jobs.get_mut(job_id) else {
        return;
    };
    let Some(request) = job.pending_savepoint.take() else {
        return;
    };
    if request.stop {
        job.stopping_at = Some(checkpoint.checkpoint_id);
    }
    job.last_savepoint = Some(SavepointOutcome {
        ticket: request.ticket,
        result: Ok(checkpoint.checkpoint_id),
    });
    let record = SavepointRecord {
        checkpoint: checkpoint.clone(),
        graph: job.graph.clone(),
        stopped_job: request.stop,
    };
    state.savepoints.insert(
        SavepointRef {
            job_id: *job_id,
            savepoint_id: checkpoint.checkpoint_id,
        },
        record,
    );
}

pub(super) fn fail_savepoint(state: &mut State, job_id: &JobId, reason: String, at_ms: u64) -> ApplyResult {
    let job = job_mut(state, job_id)?;
    if job.pending_savepoint.is_none() {
        return Err(Rejection::InvalidSavepoint {
            problem: format!("job {job_id} is not taking a savepoint"),
        });
    }
    interrupt_savepoint(job, &reason);
    job.updated_at_ms = job.updated_at_ms.max(at_ms);
    Ok(Response::SavepointFailed { job_id: *job_id })
}

/// Ends the job's pending savepoint, if any, without one: the job restarted or ended under it.
/// A stop that already has its savepoint is called off too: the job runs on from it.
pub(super) fn interrupt_savepoint(job: &mut JobRecord, why: &str) {
    if let Some(request) = job.pending_savepoint.take() {
        job.last_savepoint = Some(SavepointOutcome {
            ticket: request.ticket,
            result: Err(why.to_owned()),
        });
    }
    job.stopping_at = None;
}

/// The job that would restore the savepoint's checkpoint if it restarted now: one not ended
/// whose latest completed checkpoint it is (the savepoint's own job, or a job started from it
/// that has completed no checkpoint since). Restores read only the latest checkpoint.
fn user_of(state: &State, savepoint: &SavepointRef) -> Option<JobId> {
    state
        .jobs
        .values()
        .filter(|job| !job.status.is_terminal())
        .filter(|job| job.job_id == savepoint.job_id || job.from_savepoint == Some(*savepoint))
        .find(|job| {
            job.checkpoints
                .back()
                .is_some_and(|latest| latest.checkpoint_id == savepoint.savepoint_id)
        })
        .map(|job| job.job_id)
}

pub(super) fn delete_savepoint(state: &mut State, savepoint: SavepointRef) -> ApplyResult {
    if !state.savepoints.contains_key(&savepoint) {
        return Err(Rejection::UnknownSavepoint { savepoint });
    }
    if let Some(user) = user_of(state, &savepoint) {
        return Err(Rejection::InvalidSavepoint {
            problem: format!(
                "savepoint {savepoint} is still the checkpoint job {user} would restore; delete it once that job completed a newer checkpoint, or ended"
            ),
        });
    }
    state.savepoints.remove(&savepoint);
    Ok(Response::SavepointDeleted { savepoint })
}

/// What a job submitted from `savepoint` starts with: the savepoint's checkpoint, holding the
/// state of the operators `graph` still has (matched by id). State of an operator `graph` no
/// longer has is refused unless `allow_unmatched_state`; an operator whose kind changed, or a
/// different `max_parallelism` (keyed state is split by key group), is always refused.
pub(super) fn starting_checkpoint(
    state: &State,
    savepoint: &SavepointRef,
    graph: &JobGraph,
    allow_unmatched_state: bool,
) -> Result<CompletedCheckpoint, Rejection> {
    let record = state
        .savepoints
        .get(savepoint)
        .ok_or(Rejection::UnknownSavepoint { savepoint: *savepoint })?;
    let invalid = |problem: String| Rejection::InvalidSavepointRestore {
        savepoint: *savepoint,
        problem,
    };
    if record.graph.max_parallelism != graph.max_parallelism {
        return Err(invalid(format!(
            "the savepoint was taken at max_parallelism {}, the job has {}; keyed state is split into that many key groups, so they must match",
            record.graph.max_parallelism, graph.max_parallelism
        )));
    }
    let mut unmatched = Vec::new();
    for handle in record
        .checkpoint
        .task_states
        .iter()
        .filter(|handle| holds_state(handle))
    {
        let operator_id = &handle.subtask.operator_id;
        match graph.operator(operator_id.as_str()) {
            None => {
                if !unmatched.contains(operator_id) {
                    unmatched.push(operator_id.clone());
                }
            }
            Some(operator) => {
                let before = record.graph.operator(operator_id.as_str());
                if let Some(old) = before.filter(|old| old.kind != operator.kind) {
                    return Err(invalid(format!(
                        "operator {operator_id} was {:?} and is {:?} now; its state cannot be read by another kind of operator",
                        old.kind, operator.kind
                    )));
                }
            }
        }
    }
    if !unmatched.is_empty() && !allow_unmatched_state {
        return Err(invalid(format!(
            "the savepoint holds state of operator(s) {} that the job no longer has; pass --allow-unmatched-state to drop it",
            unmatched.join(", ")
        )));
    }
    let mut checkpoint = record.checkpoint.clone();
    checkpoint
        .task_states
        .retain(|handle| graph.operator(handle.subtask.operator_id.as_str()).is_some());
    checkpoint
        .source_offsets
        .retain(|subtask, _| graph.operator(subtask.operator_id.as_str()).is_some());
    // Its placement belongs to the old job; the new job's epochs start above the savepoint's,
    // so no file name a new subtask writes can repeat one the savepoint lists.
    checkpoint.acknowledged_epochs.clear();
    Ok(checkpoint)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::state_machine::{apply, Command};
    use crate::test_fixtures::{apply_ok, graph, subtask, StateBuilder};
    use raftstream_api::checkpoint::TaskStateHandle;
    use raftstream_api::ids::Epoch;

    const SRC_COUNTS_OUT: &str = r#"{"name": "wc", "parallelism": 2, "checkpoint": {"retained": 2}, "operators": [
        {"id": "src", "kind": "generator"},
        {"id": "keys", "kind": "key_by", "inputs": ["src"]},
        {"id": "counts", "kind": "count", "inputs": ["keys"]},
        {"id": "out", "kind": "print", "inputs": ["counts"]}]}"#;

    fn job() -> JobId {
        JobId::from_number(1)
    }

    fn running() -> State {
        StateBuilder::new()
            .executor("e", 16)
            .job(graph(SRC_COUNTS_OUT))
            .place_all(1, "e")
            .running(1)
            .build()
    }

    fn request(stop: bool) -> Command {
        Command::RequestSavepoint {
            request_id: None,
            job_id: job(),
            stop,
            at_ms: 100,
        }
    }

    /// Checkpoint `id` of job 1 as its running placement acknowledged it: state for `src` and
    /// `counts` (`keys` and `out` hold none).
    fn completed(state: &State, id: u64, savepoint: bool) -> Command {
        let record = &state.jobs[&job()];
        let handle = |operator: &str, index: u32, size: u64| TaskStateHandle {
            subtask: subtask(operator, index),
            location: if size > 0 {
                format!("sp/{operator}-{index}")
            } else {
                String::new()
            },
            inline_state: Vec::new(),
            size_bytes: size,
            checksum: 0,
        };
        let task_states = record
            .assignments
            .keys()
            .map(|key| {
                let size = if matches!(key.operator_id.as_str(), "src" | "counts") {
                    10
                } else {
                    0
                };
                handle(key.operator_id.as_str(), key.subtask_index, size)
            })
            .collect();
        Command::CompleteCheckpoint {
            job_id: job(),
            checkpoint: CompletedCheckpoint {
                checkpoint_id: CheckpointId(id),
                epoch: record.last_epoch,
                task_states,
                source_offsets: BTreeMap::new(),
                size_bytes: 40,
                completed_at_ms: 200 + id,
                triggered_at_ms: 199 + id,
                acknowledged_epochs: record
                    .assignments
                    .iter()
                    .map(|(key, assignment)| (key.clone(), assignment.epoch))
                    .collect(),
                trigger: Default::default(),
            },
            savepoint,
        }
    }

    fn trigger(state: &mut State) -> u64 {
        match apply_ok(
            state,
            Command::TriggerCheckpoint {
                job_id: job(),
                at_ms: 150,
            },
        ) {
            Response::CheckpointTriggered { checkpoint_id, .. } => checkpoint_id.0,
            other => panic!("{other:?}"),
        }
    }

    /// Requests a savepoint of job 1 and completes the checkpoint taken for it; its id.
    fn take_savepoint(state: &mut State, stop: bool) -> u64 {
        apply_ok(state, request(stop));
        let id = trigger(state);
        let taken = completed(state, id, true);
        apply_ok(state, taken);
        id
    }

    fn savepoint_ref(id: u64) -> SavepointRef {
        SavepointRef {
            job_id: job(),
            savepoint_id: CheckpointId(id),
        }
    }

    #[test]
    fn a_savepoint_is_kept_past_retention_and_only_a_running_checkpointing_job_takes_one() {
        let mut state = StateBuilder::new().executor("e", 16).job(graph(SRC_COUNTS_OUT)).build();
        let refused = apply(&mut state, request(false)).expect_err("not running");
        assert!(refused.to_string().contains("only a running job"), "{refused}");
        let mut state = running();
        assert_eq!(
            apply(&mut state, request(false)),
            Ok(Response::SavepointRequested {
                job_id: job(),
                ticket: 1
            })
        );
        let before = state.clone();
        let twice = apply(&mut state, request(true)).expect_err("one at a time");
        assert!(twice.to_string().contains("already taking a savepoint"), "{twice}");
        let rescale = apply(
            &mut state,
            Command::RequestRescale {
                request_id: None,
                job_id: job(),
                operator_id: None,
                parallelism: 1,
                at_ms: 101,
                auto: false,
                reason: String::new(),
            },
        )
        .expect_err("not while a savepoint is taken");
        assert!(rescale.to_string().contains("taking a savepoint"), "{rescale}");
        assert_eq!(state, before);

        let id = trigger(&mut state);
        let taken = completed(&state, id, true);
        apply_ok(&mut state, taken);
        let record = &state.savepoints[&savepoint_ref(id)];
        assert!(!record.stopped_job);
        assert_eq!(record.graph.name, "wc");
        let job_record = &state.jobs[&job()];
        assert_eq!(job_record.pending_savepoint, None);
        assert_eq!(
            job_record.last_savepoint,
            Some(SavepointOutcome {
                ticket: 1,
                result: Ok(CheckpointId(id))
            })
        );
        // Two more checkpoints (two retained): the savepoint leaves the job's checkpoints only.
        for _ in 0..2 {
            let next = trigger(&mut state);
            let command = completed(&state, next, false);
            apply_ok(&mut state, command);
        }
        assert!(state.jobs[&job()].checkpoints.iter().all(|c| c.checkpoint_id.0 != id));
        assert!(state.savepoints.contains_key(&savepoint_ref(id)));
        // A checkpoint taken for a savepoint nobody waits for any more is refused.
        let stray_id = trigger(&mut state);
        let stray = completed(&state, stray_id, true);
        let stray = apply(&mut state, stray).expect_err("no savepoint pending");
        assert!(stray.to_string().contains("no longer waits"), "{stray}");
    }

    #[test]
    fn a_stop_ends_stopped_and_a_restart_calls_a_pending_savepoint_off() {
        let mut state = running();
        let no_stop = apply(
            &mut state,
            Command::TransitionJob {
                job_id: job(),
                to: JobStatus::Stopped,
                reason: String::new(),
                at_ms: 5,
                deployed_through_epoch: None,
            },
        )
        .expect_err("no savepoint to stop with");
        assert!(no_stop.to_string().contains("no savepoint to stop with"), "{no_stop}");

        // A failure while the savepoint is taken ends the request with the reason.
        apply_ok(&mut state, request(true));
        apply_ok(
            &mut state,
            Command::MarkExecutorDead {
                executor_id: crate::test_fixtures::executor_id("e"),
                at_ms: 6,
            },
        );
        let job_record = &state.jobs[&job()];
        assert_eq!(job_record.pending_savepoint, None);
        assert!(matches!(
            &job_record.last_savepoint,
            Some(SavepointOutcome { ticket: 1, result: Err(reason) }) if reason.contains("restarts")
        ));

        let mut state = running();
        let id = take_savepoint(&mut state, true);
        assert_eq!(state.jobs[&job()].stopping_at, Some(CheckpointId(id)));
        assert!(state.savepoints[&savepoint_ref(id)].stopped_job);
        apply_ok(
            &mut state,
            Command::TransitionJob {
                job_id: job(),
                to: JobStatus::Stopped,
                reason: "stopped".into(),
                at_ms: 300,
                deployed_through_epoch: None,
            },
        );
        assert_eq!(state.jobs[&job()].status, JobStatus::Stopped);
        assert_eq!(
            state
                .executors
                .values()
                .map(|e| state.used_slots(&e.executor_id))
                .sum::<u32>(),
            0
        );
        assert!(
            state.savepoints.contains_key(&savepoint_ref(id)),
            "the savepoint outlives its job"
        );

        // A failed savepoint (its checkpoint aborted) says why.
        let mut state = running();
        apply_ok(&mut state, request(false));
        apply_ok(
            &mut state,
            Command::FailSavepoint {
                job_id: job(),
                reason: "timed out".into(),
                at_ms: 7,
            },
        );
        assert!(matches!(
            &state.jobs[&job()].last_savepoint,
            Some(SavepointOutcome { result: Err(reason), .. }) if reason == "timed out"
        ));
    }

    /// Job 1 stopped with savepoint 1; returns the state and the savepoint.
    fn stopped_with_savepoint() -> (State, SavepointRef) {
        let mut state = running();
        let id = take_savepoint(&mut state, true);
        apply_ok(
            &mut state,
            Command::TransitionJob {
                job_id: job(),
                to: JobStatus::Stopped,
                reason: "stopped".into(),
                at_ms: 300,
                deployed_through_epoch: None,
            },
        );
        (state, savepoint_ref(id))
    }

    fn submit_from(spec: &str, savepoint: SavepointRef, allow_unmatched_state: bool) -> Command {
        Command::SubmitJob {
            request_id: None,
            graph: graph(spec),
            at_ms: 400,
            from_savepoint: Some(savepoint),
            allow_unmatched_state,
        }
    }

    #[test]
    fn a_job_starts_from_a_savepoint_at_another_parallelism_and_mismatches_are_refused() {
        let (mut state, savepoint) = stopped_with_savepoint();
        let before = state.clone();
        let unknown = SavepointRef {
            job_id: job(),
            savepoint_id: CheckpointId(99),
        };
        for (command, expected) in [
            (
                submit_from(SRC_COUNTS_OUT, unknown, false),
                "savepoint job-1:99 not found",
            ),
            (
                submit_from(
                    &SRC_COUNTS_OUT.replace(r#""parallelism": 2,"#, r#""parallelism": 2, "max_parallelism": 64,"#),
                    savepoint,
                    false,
                ),
                "max_parallelism 128, the job has 64",
            ),
            (
                submit_from(
                    &SRC_COUNTS_OUT
                        .replace(r#""id": "counts", "kind": "count""#, r#""id": "sums", "kind": "count""#)
                        .replace(r#"["counts"]"#, r#"["sums"]"#),
                    savepoint,
                    false,
                ),
                "state of operator(s) counts that the job no longer has; pass --allow-unmatched-state",
            ),
            (
                submit_from(
                    &SRC_COUNTS_OUT.replace(r#""kind": "count""#, r#""kind": "sum""#),
                    savepoint,
                    false,
                ),
                "operator counts was Count and is Sum",
            ),
        ] {
            let refused = apply(&mut state, command).expect_err("refused");
            assert!(refused.to_string().contains(expected), "{refused}");
            assert_eq!(state, before, "a refused submit changes nothing");
        }

        // At parallelism 3: the savepoint is the new job's first restore, ids and epochs go on.
        let spec = SRC_COUNTS_OUT.replace(r#""parallelism": 2,"#, r#""parallelism": 3,"#);
        let Response::JobSubmitted { job_id } = apply_ok(&mut state, submit_from(&spec, savepoint, false)) else {
            panic!("not submitted")
        };
        let job = &state.jobs[&job_id];
        let saved = &state.savepoints[&savepoint].checkpoint;
        assert_eq!(job.from_savepoint, Some(savepoint));
        assert_eq!(
            job.checkpoints.back().map(|c| c.checkpoint_id),
            Some(savepoint.savepoint_id)
        );
        assert_eq!(job.last_checkpoint_id, Some(savepoint.savepoint_id));
        assert_eq!(job.last_triggered_checkpoint_id, Some(savepoint.savepoint_id));
        assert!(job.last_epoch >= saved.epoch && job.last_epoch > Epoch(0));
        assert_eq!(job.assignments.len(), 3 * 4);

        // Dropping state of an operator that is gone, when allowed.
        let renamed = SRC_COUNTS_OUT
            .replace(r#""id": "counts", "kind": "count""#, r#""id": "sums", "kind": "count""#)
            .replace(r#"["counts"]"#, r#"["sums"]"#);
        let Response::JobSubmitted { job_id } = apply_ok(&mut state, submit_from(&renamed, savepoint, true)) else {
            panic!("not submitted")
        };
        let kept: Vec<&str> = state.jobs[&job_id].checkpoints[0]
            .task_states
            .iter()
            .map(|handle| handle.subtask.operator_id.as_str())
            .collect();
        assert!(kept.contains(&"src") && !kept.contains(&"counts"), "{kept:?}");
    }

    #[test]
    fn a_file_source_may_resume_at_another_parallelism() {
        const FILES: &str = r#"{"name": "files", "parallelism": 2, "operators": [
            {"id": "src", "kind": "file_source", "params": {"path": "in"}},
            {"id": "out", "kind": "print", "inputs": ["src"]}]}"#;
        let mut state = StateBuilder::new()
            .executor("e", 16)
            .job(graph(FILES))
            .place_all(1, "e")
            .running(1)
            .build();
        let id = take_savepoint(&mut state, true);
        // Its files' progress is kept by file name, so any placement resumes it.
        let resumed = FILES.replace(r#""parallelism": 2"#, r#""parallelism": 3"#);
        assert!(apply(&mut state, submit_from(&resumed, savepoint_ref(id), false)).is_ok());
    }

    #[test]
    fn a_savepoint_is_deleted_only_when_no_job_would_restore_it() {
        let (mut state, savepoint) = stopped_with_savepoint();
        let missing = apply(
            &mut state,
            Command::DeleteSavepoint {
                request_id: None,
                savepoint: SavepointRef {
                    job_id: job(),
                    savepoint_id: CheckpointId(42),
                },
            },
        )
        .expect_err("unknown");
        assert!(matches!(missing, Rejection::UnknownSavepoint { .. }));
        // Job 2 starts from it and has completed no checkpoint of its own: it is still needed.
        apply_ok(&mut state, submit_from(SRC_COUNTS_OUT, savepoint, false));
        let delete = Command::DeleteSavepoint {
            request_id: None,
            savepoint,
        };
        let in_use = apply(&mut state, delete.clone()).expect_err("in use");
        assert!(in_use.to_string().contains("job job-2 would restore"), "{in_use}");
        apply_ok(
            &mut state,
            Command::CancelJob {
                request_id: None,
                job_id: JobId::from_number(2),
                at_ms: 500,
            },
        );
        assert_eq!(apply(&mut state, delete), Ok(Response::SavepointDeleted { savepoint }));
        assert!(state.savepoints.is_empty());
    }
}
