//! Executors: death frees their slots and restarts their jobs; a drained one takes no work.

use super::*;

#[test]
fn running_job_cancel_goes_through_cancelling_and_executor_death_frees_slots() {
    let mut state = State::default();
    let job_id = JobId::from_number(1);
    // Stored before slot sharing: each subtask takes a slot.
    let mut per_subtask = graph(1, 2);
    per_subtask.slot_sharing = false;
    let _ = apply(
        &mut state,
        Command::SubmitJob {
            request_id: None,
            graph: per_subtask,
            at_ms: 0,
            from_savepoint: None,
            allow_unmatched_state: false,
        },
    );
    let _ = apply(
        &mut state,
        Command::RegisterExecutor {
            executor_id: executor(1),
            address: "a".into(),
            slots: 2,
            at_ms: 0,
        },
    );
    let first = apply(
        &mut state,
        Command::AssignSubtask {
            job_id,
            subtask: subtask("src", 0),
            executor_id: executor(1),
            at_ms: 1,
        },
    );
    assert_eq!(
        first,
        Ok(Response::SubtaskAssigned {
            job_id,
            epoch: Epoch(1)
        })
    );
    let _ = apply(
        &mut state,
        Command::AssignSubtask {
            job_id,
            subtask: subtask("keys", 0),
            executor_id: executor(1),
            at_ms: 1,
        },
    );
    let full = apply(
        &mut state,
        Command::AssignSubtask {
            job_id,
            subtask: subtask("out", 0),
            executor_id: executor(1),
            at_ms: 1,
        },
    );
    assert_eq!(
        full,
        Err(Rejection::NoFreeSlot {
            executor_id: executor(1),
            slots: 2
        })
    );
    let dead = apply(
        &mut state,
        Command::MarkExecutorDead {
            executor_id: executor(1),
            at_ms: 2,
        },
    );
    assert_eq!(
        dead,
        Ok(Response::ExecutorMarkedDead {
            executor_id: executor(1),
            orphaned_subtasks: 2
        })
    );
    assert_eq!(state.used_slots(&executor(1)), 0);
    let _ = apply(
        &mut state,
        Command::RegisterExecutor {
            executor_id: executor(2),
            address: "b".into(),
            slots: 8,
            at_ms: 3,
        },
    );
    let moved = apply(
        &mut state,
        Command::AssignSubtask {
            job_id,
            subtask: subtask("src", 0),
            executor_id: executor(2),
            at_ms: 3,
        },
    );
    assert_eq!(
        moved,
        Ok(Response::SubtaskAssigned {
            job_id,
            epoch: Epoch(3)
        })
    );
    let running = apply(
        &mut state,
        Command::TransitionJob {
            job_id,
            to: JobStatus::Running,
            reason: String::new(),
            at_ms: 4,
            deployed_through_epoch: None,
        },
    );
    assert!(running.is_ok());
    let cancel = apply(
        &mut state,
        Command::CancelJob {
            request_id: None,
            job_id,
            at_ms: 5,
        },
    );
    assert_eq!(
        cancel,
        Ok(Response::JobCancelRequested {
            job_id,
            status: JobStatus::Cancelling
        })
    );
}

#[test]
fn a_drained_executor_takes_no_work_and_its_running_jobs_move_through_a_checkpoint() {
    use crate::test_fixtures::StateBuilder;
    let running = JobId::from_number(1);
    let waiting = JobId::from_number(2);
    // Job 1 runs on "a"; job 2 is placed on "a" too but not running yet; "b" has room.
    let mut state = StateBuilder::new()
        .executor("a", 12)
        .executor("b", 12)
        .job(graph(1, 3))
        .place_all(1, "a")
        .running(1)
        .job(graph(1, 3))
        .place_all(2, "a")
        .build();
    let drain = |name: &str| Command::DrainExecutor {
        request_id: None,
        executor_id: executor_id(name),
        at_ms: 60,
    };
    let unknown = apply(&mut state, drain("nope")).expect_err("unknown");
    assert!(matches!(unknown, Rejection::UnknownExecutor { .. }));
    assert_eq!(
        apply(&mut state, drain("a")),
        Ok(Response::ExecutorDraining {
            executor_id: executor_id("a"),
            jobs_to_move: 1
        })
    );
    assert!(state.executors[&executor_id("a")].draining);
    let moving = &state.jobs[&running];
    assert_eq!(
        moving.status,
        JobStatus::Running,
        "it keeps running until its checkpoint"
    );
    assert_eq!(
        moving
            .pending_relocation
            .as_ref()
            .map(|request| request.away_from.clone()),
        Some(executor_id("a"))
    );
    assert!(
        state.jobs[&waiting]
            .assignments
            .values()
            .all(|assignment| assignment.executor_id.is_none()),
        "a job not running yet is simply placed again"
    );
    let refused = apply(
        &mut state,
        Command::AssignSubtask {
            job_id: waiting,
            subtask: subtask("src", 0),
            executor_id: executor_id("a"),
            at_ms: 61,
        },
    )
    .expect_err("no new work");
    assert!(refused.to_string().contains("being drained"), "{refused}");

    let relocate = Command::RelocateJob {
        job_id: running,
        at_ms: 62,
    };
    assert!(apply(&mut state, relocate.clone()).is_ok());
    let moved = &state.jobs[&running];
    assert_eq!(moved.status, JobStatus::Restarting);
    assert!(moved.rescaling && moved.restart_count == 0, "a move is not a failure");
    assert_eq!(moved.pending_relocation, None);
    assert_eq!(state.used_slots(&executor_id("a")), 0);
    let again = apply(&mut state, relocate).expect_err("nothing to move");
    assert!(again.to_string().contains("moves"), "{again}");

    // The same executor id registering again is a new process: it takes work.
    fixtures::apply_ok(
        &mut state,
        Command::RegisterExecutor {
            executor_id: executor_id("a"),
            address: "a:2".into(),
            slots: 12,
            at_ms: 70,
        },
    );
    assert!(!state.executors[&executor_id("a")].draining);
}

#[test]
fn a_slot_holds_one_slice_whose_members_never_run_apart() {
    use crate::test_fixtures::StateBuilder;
    // src 1, keys 2, counts 2, out 1: two slices, on executors of one slot each.
    let mut state = StateBuilder::new()
        .executor("executor-1", 1)
        .executor("executor-2", 1)
        .job(graph(2, 2))
        .build();
    let job_id = JobId::from_number(1);
    let assign = |state: &mut State, operator: &str, index: u32, to: u8| {
        apply(
            state,
            Command::AssignSubtask {
                job_id,
                subtask: subtask(operator, index),
                executor_id: executor(to),
                at_ms: 1,
            },
        )
    };
    for (operator, index) in [("src", 0), ("keys", 0), ("counts", 0), ("out", 0)] {
        assert!(
            assign(&mut state, operator, index, 1).is_ok(),
            "slice 0 shares one slot"
        );
    }
    assert_eq!(state.used_slots(&executor(1)), 1);
    assert_eq!(
        assign(&mut state, "keys", 1, 1),
        Err(Rejection::NoFreeSlot {
            executor_id: executor(1),
            slots: 1
        }),
        "slice 1 needs a slot of its own"
    );
    assert!(assign(&mut state, "keys", 1, 2).is_ok());
    let apart = assign(&mut state, "counts", 1, 1).expect_err("refused");
    assert!(
        matches!(&apart, Rejection::SliceElsewhere { executor_id, .. } if *executor_id == executor(2)),
        "{apart}"
    );
    assert!(assign(&mut state, "counts", 1, 2).is_ok());
    let job = &state.jobs[&job_id];
    assert_eq!((job.slots_held(), job.slots_waiting()), (2, 0));
}
