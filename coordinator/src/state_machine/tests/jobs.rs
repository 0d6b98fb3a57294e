//! Jobs: submit, cancel, start, the legal transitions, retried requests, retention of ended jobs.

use super::*;

#[test]
fn submit_then_cancel_unplaced_job_ends_cancelled() {
    let mut state = State::default();
    let submitted = apply(
        &mut state,
        Command::SubmitJob {
            request_id: None,
            graph: graph(2, 3),
            at_ms: 5,
            from_savepoint: None,
            allow_unmatched_state: false,
        },
    );
    assert_eq!(
        submitted,
        Ok(Response::JobSubmitted {
            job_id: JobId::from_number(1)
        })
    );
    let job_id = JobId::from_number(1);
    assert_eq!(state.jobs[&job_id].assignments.len(), 1 + 2 + 2 + 1);
    let cancelled = apply(
        &mut state,
        Command::CancelJob {
            request_id: None,
            job_id,
            at_ms: 6,
        },
    );
    assert_eq!(
        cancelled,
        Ok(Response::JobCancelRequested {
            job_id,
            status: JobStatus::Cancelled
        })
    );
    let again = apply(
        &mut state,
        Command::CancelJob {
            request_id: None,
            job_id,
            at_ms: 7,
        },
    );
    assert_eq!(
        again,
        Err(Rejection::JobAlreadyEnded {
            job_id,
            status: JobStatus::Cancelled
        })
    );
}

#[test]
fn cancelling_a_finished_job_is_refused_and_changes_nothing() {
    let mut state = State::default();
    let job_id = JobId::from_number(1);
    let _ = apply(
        &mut state,
        Command::SubmitJob {
            request_id: None,
            graph: graph(1, 1),
            at_ms: 0,
            from_savepoint: None,
            allow_unmatched_state: false,
        },
    );
    for to in [JobStatus::Running, JobStatus::Finished] {
        assert!(apply(
            &mut state,
            Command::TransitionJob {
                job_id,
                to,
                reason: String::new(),
                at_ms: 1,
                deployed_through_epoch: None,
            }
        )
        .is_ok());
    }
    let before = state.clone();
    let refused = apply(
        &mut state,
        Command::CancelJob {
            request_id: None,
            job_id,
            at_ms: 2,
        },
    );
    assert_eq!(
        refused,
        Err(Rejection::JobAlreadyEnded {
            job_id,
            status: JobStatus::Finished
        })
    );
    assert_eq!(state, before);
}

#[test]
fn retried_request_applies_once_and_answers_the_same() {
    let mut state = State::default();
    let request_id = Some(RequestId("r-1".to_owned()));
    let first = apply(
        &mut state,
        Command::SubmitJob {
            request_id: request_id.clone(),
            graph: graph(1, 1),
            at_ms: 1,
            from_savepoint: None,
            allow_unmatched_state: false,
        },
    );
    let second = apply(
        &mut state,
        Command::SubmitJob {
            request_id,
            graph: graph(1, 1),
            at_ms: 2,
            from_savepoint: None,
            allow_unmatched_state: false,
        },
    );
    assert_eq!(first, second);
    assert_eq!(state.jobs.len(), 1);
}

#[test]
fn request_log_forgets_oldest_beyond_its_bound() {
    let mut log = RequestLog::default();
    for n in 0..(REMEMBERED_REQUESTS + 5) {
        log.remember(RequestId(format!("r-{n}")), Response::Nothing);
    }
    assert_eq!(log.len(), REMEMBERED_REQUESTS);
    assert!(log.get(&RequestId("r-0".to_owned())).is_none());
    assert!(log.get(&RequestId(format!("r-{}", REMEMBERED_REQUESTS + 4))).is_some());
}

/// A chaos run found this: the leader read a fully placed job and deployed it, its executor was
/// declared dead before the start applied, and the start made the job "running" with nothing
/// placed; a client's cancel of it was then refused as an illegal transition (Running ->
/// Cancelled) and reported as "already ended". A start carries the epoch it deployed through.
#[test]
fn a_start_deployed_before_its_executor_died_is_refused_and_the_job_cancels() {
    let job_id = JobId::from_number(1);
    // Registers executor 1 (again, after its death) and places every subtask of the job on it.
    let place_all = |state: &mut State| {
        let register = Command::RegisterExecutor {
            executor_id: executor(1),
            address: "a".into(),
            slots: 8,
            at_ms: 0,
        };
        assert!(apply(state, register).is_ok());
        let subtasks: Vec<SubtaskKey> = state.jobs[&job_id].assignments.keys().cloned().collect();
        for subtask in subtasks {
            let place = Command::AssignSubtask {
                job_id,
                subtask,
                executor_id: executor(1),
                at_ms: 1,
            };
            assert!(apply(state, place).is_ok());
        }
    };
    let submitted = |state: &mut State| {
        let submit = Command::SubmitJob {
            request_id: None,
            graph: graph(1, 3),
            at_ms: 0,
            from_savepoint: None,
            allow_unmatched_state: false,
        };
        assert!(apply(state, submit).is_ok());
        place_all(state);
    };
    let start = |deployed_through_epoch| Command::TransitionJob {
        job_id,
        to: JobStatus::Running,
        reason: String::new(),
        at_ms: 3,
        deployed_through_epoch,
    };
    let dead = Command::MarkExecutorDead {
        executor_id: executor(1),
        at_ms: 2,
    };
    let cancel = Command::CancelJob {
        request_id: Some(RequestId("cancel-1".into())),
        job_id,
        at_ms: 4,
    };

    let mut state = State::default();
    submitted(&mut state);
    let deployed_through = state.jobs[&job_id].last_epoch;
    assert!(apply(&mut state, dead.clone()).is_ok());
    let before = state.clone();
    let refused = apply(&mut state, start(Some(deployed_through)));
    assert!(
        matches!(refused, Err(Rejection::DeploymentOutdated { unplaced: 4, .. })),
        "{refused:?}"
    );
    assert_eq!(state, before, "a refused start changes nothing");
    assert_eq!(
        state.jobs[&job_id].status,
        JobStatus::Submitted,
        "waiting to be placed again"
    );
    assert_eq!(
        apply(&mut state, cancel.clone()),
        Ok(Response::JobCancelRequested {
            job_id,
            status: JobStatus::Cancelled
        })
    );

    // Placed again after the death (new epochs): a start for the old placement is refused too,
    // the one for the new placement is taken.
    let mut state = State::default();
    submitted(&mut state);
    let deployed_through = state.jobs[&job_id].last_epoch;
    assert!(apply(&mut state, dead.clone()).is_ok());
    place_all(&mut state);
    let stale = apply(&mut state, start(Some(deployed_through)));
    assert!(
        matches!(stale, Err(Rejection::DeploymentOutdated { unplaced: 0, .. })),
        "{stale:?}"
    );
    let current = state.jobs[&job_id].last_epoch;
    assert!(apply(&mut state, start(Some(current))).is_ok());
    assert_eq!(state.jobs[&job_id].status, JobStatus::Running);

    // An entry from an older log (no epoch) applies as it always did, so replaying it gives the
    // state the node that wrote it had: running with nothing placed, and a cancel refused.
    let mut state = State::default();
    submitted(&mut state);
    assert!(apply(&mut state, dead).is_ok());
    assert!(apply(&mut state, start(None)).is_ok());
    assert!(matches!(
        apply(&mut state, cancel),
        Err(Rejection::IllegalTransition { .. })
    ));
}

#[test]
fn only_the_most_recent_ended_jobs_are_retained() {
    let mut state = State::default();
    let total = RETAINED_ENDED_JOBS as u64 + 5;
    for number in 1..=total {
        let _ = apply(
            &mut state,
            Command::SubmitJob {
                request_id: None,
                graph: graph(1, 1),
                at_ms: number,
                from_savepoint: None,
                allow_unmatched_state: false,
            },
        );
        let cancelled = apply(
            &mut state,
            Command::CancelJob {
                request_id: None,
                job_id: JobId::from_number(number),
                at_ms: number,
            },
        );
        assert!(cancelled.is_ok());
    }
    let _ = apply(
        &mut state,
        Command::SubmitJob {
            request_id: None,
            graph: graph(1, 1),
            at_ms: 0,
            from_savepoint: None,
            allow_unmatched_state: false,
        },
    );
    assert_eq!(
        state.jobs.len(),
        RETAINED_ENDED_JOBS + 1,
        "retained ended jobs plus the running one"
    );
    assert!(!state.jobs.contains_key(&JobId::from_number(5)));
    assert!(state.jobs.contains_key(&JobId::from_number(6)));
    assert!(state.jobs.contains_key(&JobId::from_number(total + 1)));
}

#[test]
fn transition_table_rejects_leaving_terminal_states() {
    for from in JobStatus::ALL.into_iter().filter(|status| status.is_terminal()) {
        for to in JobStatus::ALL {
            assert!(!from.can_become(to), "{from} -> {to} must be illegal");
        }
    }
    assert!(JobStatus::Running.can_become(JobStatus::Restarting));
    assert!(!JobStatus::Submitted.can_become(JobStatus::Finished));
}
