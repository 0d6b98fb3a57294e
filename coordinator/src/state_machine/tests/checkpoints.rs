//! Checkpoints: ids increase, retention, and no completion after the placement that acknowledged it was released.

use super::*;

#[test]
fn checkpoints_must_increase_and_only_the_retained_are_kept() {
    let mut state = State::default();
    let job_id = JobId::from_number(1);
    let _ = apply(
        &mut state,
        Command::SubmitJob {
            request_id: None,
            graph: graph(1, 2),
            at_ms: 0,
            from_savepoint: None,
            allow_unmatched_state: false,
        },
    );
    let not_running = apply(&mut state, Command::TriggerCheckpoint { job_id, at_ms: 0 });
    assert!(
        matches!(not_running, Err(Rejection::JobNotActive { .. })),
        "{not_running:?}"
    );
    let _ = apply(
        &mut state,
        Command::TransitionJob {
            job_id,
            to: JobStatus::Running,
            reason: String::new(),
            at_ms: 0,
            deployed_through_epoch: None,
        },
    );
    let early = apply(
        &mut state,
        Command::CompleteCheckpoint {
            job_id,
            checkpoint: checkpoint(1, 0),
            savepoint: false,
        },
    );
    assert!(
        matches!(early, Err(Rejection::CheckpointNotTriggered { .. })),
        "{early:?}"
    );
    for expected in 1..=5 {
        let triggered = apply(
            &mut state,
            Command::TriggerCheckpoint {
                job_id,
                at_ms: expected,
            },
        );
        assert_eq!(
            triggered,
            Ok(Response::CheckpointTriggered {
                job_id,
                checkpoint_id: CheckpointId(expected)
            })
        );
    }
    // 3 and 4 were aborted (never completed); ids still only go up.
    for id in [1, 2, 5] {
        assert!(apply(
            &mut state,
            Command::CompleteCheckpoint {
                job_id,
                checkpoint: checkpoint(id, 0),
                savepoint: false,
            }
        )
        .is_ok());
    }
    let next = apply(&mut state, Command::TriggerCheckpoint { job_id, at_ms: 9 });
    assert_eq!(
        next,
        Ok(Response::CheckpointTriggered {
            job_id,
            checkpoint_id: CheckpointId(6)
        })
    );
    let repeat = apply(
        &mut state,
        Command::CompleteCheckpoint {
            job_id,
            checkpoint: checkpoint(5, 0),
            savepoint: false,
        },
    );
    assert!(matches!(repeat, Err(Rejection::CheckpointIdNotIncreasing { .. })));
    let back = apply(
        &mut state,
        Command::CompleteCheckpoint {
            job_id,
            checkpoint: checkpoint(3, 0),
            savepoint: false,
        },
    );
    assert!(matches!(back, Err(Rejection::CheckpointIdNotIncreasing { .. })));
    let ids: Vec<u64> = state.jobs[&job_id]
        .checkpoints
        .iter()
        .map(|c| c.checkpoint_id.0)
        .collect();
    assert_eq!(ids, vec![2, 5]);
}

#[test]
fn a_checkpoint_acknowledged_by_a_released_placement_never_completes() {
    let mut state = State::default();
    let job_id = JobId::from_number(1);
    let submit = Command::SubmitJob {
        request_id: None,
        graph: graph(1, 3),
        at_ms: 0,
        from_savepoint: None,
        allow_unmatched_state: false,
    };
    assert!(apply(&mut state, submit).is_ok());
    let register = |at_ms| Command::RegisterExecutor {
        executor_id: executor(1),
        address: "a".into(),
        slots: 8,
        at_ms,
    };
    assert!(apply(&mut state, register(0)).is_ok());
    let first = place_and_run(&mut state, &executor(1), 1);
    assert_eq!(state.jobs[&job_id].last_restore, None, "a fresh start restores nothing");
    for at_ms in [2, 3] {
        let trigger = Command::TriggerCheckpoint { job_id, at_ms };
        assert!(apply(&mut state, trigger).is_ok());
    }
    assert!(apply(&mut state, acknowledged_by(1, &first)).is_ok());

    // The executor restarts (kill -9, registers again): the placement is released, so whatever it
    // acknowledged for checkpoint 2 must not complete any more: its restarted successors restore 1
    // and delete 2's pending sink files.
    assert!(apply(&mut state, register(4)).is_ok());
    let before = state.clone();
    let late = apply(&mut state, acknowledged_by(2, &first));
    assert!(
        matches!(&late, Err(Rejection::CheckpointPlacementChanged { problem, .. }) if problem.contains("Restarting")),
        "{late:?}"
    );
    assert_eq!(state, before, "a refused completion changes nothing");
    let released = apply(
        &mut state,
        Command::FailSubtask {
            job_id,
            subtask: subtask("src", 0),
            epoch: first[&subtask("src", 0)],
            reason: "sink failed".into(),
            fatal: false,
            at_ms: 4,
        },
    );
    assert!(
        matches!(released, Err(Rejection::PlacementReleased { .. })),
        "{released:?}"
    );

    let second = place_and_run(&mut state, &executor(1), 5);
    assert_eq!(
        state.jobs[&job_id].last_restore,
        Some(RestoreRecord {
            checkpoint_id: CheckpointId(1),
            at_ms: 5
        })
    );
    // Running again, but at new epochs: the old placement's acknowledgement stays refused.
    let stale = apply(&mut state, acknowledged_by(2, &first));
    assert!(
        matches!(&stale, Err(Rejection::CheckpointPlacementChanged { problem, .. }) if problem.contains("now at epoch")),
        "{stale:?}"
    );
    let trigger = Command::TriggerCheckpoint { job_id, at_ms: 6 };
    assert!(apply(&mut state, trigger).is_ok());
    assert!(apply(&mut state, acknowledged_by(3, &second)).is_ok());
    assert_eq!(state.jobs[&job_id].last_checkpoint_id, Some(CheckpointId(3)));
}
