use std::collections::BTreeMap;

use proptest::prelude::*;

use super::*;
use crate::test_fixtures::{self as fixtures, executor_id, subtask};
use raftstream_api::checkpoint::{CompletedCheckpoint, SubtaskKey};
use raftstream_api::ids::{CheckpointId, Epoch, ExecutorId, JobId, RequestId};
use raftstream_api::spec::JobGraph;

/// Four operators: a generator, a keyed exchange and count at `parallelism`, a print sink.
fn graph(parallelism: u32, retained: u32) -> JobGraph {
    fixtures::graph(&format!(
        r#"{{"name": "g", "parallelism": {parallelism}, "checkpoint": {{"retained": {retained}}}, "operators": [
            {{"id": "src", "kind": "generator", "parallelism": 1}},
            {{"id": "keys", "kind": "key_by", "inputs": ["src"]}},
            {{"id": "counts", "kind": "count", "inputs": ["keys"]}},
            {{"id": "out", "kind": "print", "inputs": ["counts"], "parallelism": 1}}]}}"#
    ))
}

fn executor(n: u8) -> ExecutorId {
    executor_id(&format!("executor-{n}"))
}

fn checkpoint(id: u64, epoch: u64) -> CompletedCheckpoint {
    CompletedCheckpoint {
        checkpoint_id: CheckpointId(id),
        epoch: Epoch(epoch),
        task_states: Vec::new(),
        source_offsets: BTreeMap::from([(subtask("src", 0), id * 10)]),
        size_bytes: 0,
        completed_at_ms: id,
        triggered_at_ms: id.saturating_sub(1),
        acknowledged_epochs: BTreeMap::new(),
        trigger: Default::default(),
    }
}

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

#[test]
fn running_job_cancel_goes_through_cancelling_and_executor_death_frees_slots() {
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

/// Places every subtask of job 1 on `executor_id` and starts it; returns the placement's epochs.
fn place_and_run(state: &mut State, executor_id: &ExecutorId, at_ms: u64) -> BTreeMap<SubtaskKey, Epoch> {
    let job_id = JobId::from_number(1);
    let subtasks: Vec<SubtaskKey> = state.jobs[&job_id].assignments.keys().cloned().collect();
    for subtask in subtasks {
        let placed = apply(
            state,
            Command::AssignSubtask {
                job_id,
                subtask,
                executor_id: executor_id.clone(),
                at_ms,
            },
        );
        assert!(placed.is_ok(), "{placed:?}");
    }
    let running = apply(
        state,
        Command::TransitionJob {
            job_id,
            to: JobStatus::Running,
            reason: String::new(),
            at_ms,
            deployed_through_epoch: Some(state.jobs[&job_id].last_epoch),
        },
    );
    assert!(running.is_ok(), "{running:?}");
    state.jobs[&job_id]
        .assignments
        .iter()
        .map(|(subtask, assignment)| (subtask.clone(), assignment.epoch))
        .collect()
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

fn acknowledged_by(id: u64, epochs: &BTreeMap<SubtaskKey, Epoch>) -> Command {
    let epoch = epochs.values().max().copied().unwrap_or(Epoch(0));
    Command::CompleteCheckpoint {
        job_id: JobId::from_number(1),
        checkpoint: CompletedCheckpoint {
            acknowledged_epochs: epochs.clone(),
            ..checkpoint(id, epoch.0)
        },
        savepoint: false,
    }
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

// ----- property tests -----

fn arbitrary_status() -> impl Strategy<Value = JobStatus> {
    prop::sample::select(JobStatus::ALL.to_vec())
}

fn arbitrary_subtask() -> impl Strategy<Value = SubtaskKey> {
    (
        prop::sample::select(vec!["src", "keys", "counts", "out", "missing"]),
        0u32..4,
    )
        .prop_map(|(op, index)| subtask(op, index))
}

fn arbitrary_command() -> impl Strategy<Value = Command> {
    let job_id = (1u64..5).prop_map(JobId::from_number);
    let executor_id = (1u8..4).prop_map(executor);
    let request_id = prop::option::of((0u8..6).prop_map(|n| RequestId(format!("req-{n}"))));
    prop_oneof![
        (request_id.clone(), 1u32..4, 1u32..4, 0u64..100).prop_map(|(request_id, parallelism, retained, at_ms)| {
            Command::SubmitJob {
                request_id,
                graph: graph(parallelism, retained),
                at_ms,
                from_savepoint: None,
                allow_unmatched_state: false,
            }
        }),
        (request_id, job_id.clone(), 0u64..100).prop_map(|(request_id, job_id, at_ms)| Command::CancelJob {
            request_id,
            job_id,
            at_ms
        }),
        (
            job_id.clone(),
            arbitrary_status(),
            0u64..100,
            proptest::option::of((0u64..12).prop_map(Epoch))
        )
            .prop_map(|(job_id, to, at_ms, deployed_through_epoch)| Command::TransitionJob {
                job_id,
                to,
                reason: "test".into(),
                at_ms,
                deployed_through_epoch,
            }),
        (executor_id.clone(), 0u32..4, 0u64..100).prop_map(|(executor_id, slots, at_ms)| Command::RegisterExecutor {
            executor_id,
            address: "127.0.0.1:1".into(),
            slots,
            at_ms
        }),
        (executor_id.clone(), 0u64..100)
            .prop_map(|(executor_id, at_ms)| Command::MarkExecutorDead { executor_id, at_ms }),
        (executor_id.clone(), 0u64..100).prop_map(|(executor_id, at_ms)| Command::DrainExecutor {
            request_id: None,
            executor_id,
            at_ms
        }),
        (job_id.clone(), 0u64..100).prop_map(|(job_id, at_ms)| Command::RelocateJob { job_id, at_ms }),
        (job_id.clone(), arbitrary_subtask(), executor_id, 0u64..100).prop_map(
            |(job_id, subtask, executor_id, at_ms)| Command::AssignSubtask {
                job_id,
                subtask,
                executor_id,
                at_ms
            }
        ),
        (job_id.clone(), 0u64..100).prop_map(|(job_id, at_ms)| Command::TriggerCheckpoint { job_id, at_ms }),
        (job_id.clone(), 0u64..30, 0u64..12, any::<bool>()).prop_map(|(job_id, id, epoch, savepoint)| {
            Command::CompleteCheckpoint {
                job_id,
                checkpoint: checkpoint(id, epoch),
                savepoint,
            }
        }),
        (job_id.clone(), any::<bool>(), 0u64..100).prop_map(|(job_id, stop, at_ms)| Command::RequestSavepoint {
            request_id: None,
            job_id,
            stop,
            at_ms
        }),
        (job_id.clone(), 0u64..100).prop_map(|(job_id, at_ms)| Command::FailSavepoint {
            job_id,
            reason: "test".into(),
            at_ms
        }),
        (job_id.clone(), 0u64..30).prop_map(|(job_id, id)| Command::DeleteSavepoint {
            request_id: None,
            savepoint: raftstream_api::checkpoint::SavepointRef {
                job_id,
                savepoint_id: CheckpointId(id)
            }
        }),
        (
            job_id.clone(),
            0u64..30,
            proptest::collection::btree_map(arbitrary_subtask(), 0u64..12, 0..4)
        )
            .prop_map(|(job_id, id, epochs)| Command::CompleteCheckpoint {
                job_id,
                checkpoint: CompletedCheckpoint {
                    acknowledged_epochs: epochs
                        .into_iter()
                        .map(|(subtask, epoch)| (subtask, Epoch(epoch)))
                        .collect(),
                    ..checkpoint(id, 0)
                },
                savepoint: false,
            }),
        (
            job_id.clone(),
            proptest::option::of(prop_oneof![Just("src"), Just("counts"), Just("nope")]),
            0u32..5,
            0u64..100
        )
            .prop_map(|(job_id, operator, parallelism, at_ms)| Command::RescaleJob {
                job_id,
                operator_id: operator.map(str::to_owned),
                parallelism,
                at_ms,
                auto: false,
                reason: String::new(),
            }),
        (job_id.clone(), 1u32..5, 0u64..100).prop_map(|(job_id, parallelism, at_ms)| Command::RequestRescale {
            request_id: None,
            job_id,
            operator_id: None,
            parallelism,
            at_ms,
            auto: false,
            reason: String::new(),
        }),
        (job_id, arbitrary_subtask(), 0u64..12, any::<bool>(), 0u64..100).prop_map(
            |(job_id, subtask, epoch, fatal, at_ms)| Command::FailSubtask {
                job_id,
                subtask,
                epoch: Epoch(epoch),
                reason: "test".into(),
                fatal,
                at_ms
            }
        ),
    ]
}

fn check_invariants(before: &State, after: &State, result: &ApplyResult) -> Result<(), TestCaseError> {
    if result.is_err() {
        prop_assert_eq!(before, after, "a rejected command changed the state");
    }
    for executor in after.executors.values() {
        let used = after.used_slots(&executor.executor_id);
        prop_assert!(
            used <= executor.slots,
            "executor {} uses {} of {} slots",
            executor.executor_id,
            used,
            executor.slots
        );
        if !executor.alive {
            prop_assert_eq!(used, 0, "dead executor {} still holds subtasks", executor.executor_id);
        }
    }
    for job in after.jobs.values() {
        let placed: Vec<_> = job
            .assignments
            .values()
            .filter_map(|a| a.executor_id.as_ref())
            .collect();
        for executor_id in &placed {
            prop_assert!(
                after.executors.get(executor_id).is_some_and(|e| e.alive),
                "subtask placed on missing or dead executor"
            );
        }
        if job.status.is_terminal() {
            prop_assert!(placed.is_empty(), "ended job {} still holds slots", job.job_id);
        }
        for assignment in job.assignments.values() {
            prop_assert!(assignment.epoch <= job.last_epoch);
        }
        prop_assert!(
            job.last_checkpoint_id <= job.last_triggered_checkpoint_id,
            "a checkpoint completed without a trigger"
        );
        for pair in job.checkpoints.iter().collect::<Vec<_>>().windows(2) {
            prop_assert!(
                pair[0].checkpoint_id < pair[1].checkpoint_id,
                "checkpoint ids not increasing"
            );
        }
        prop_assert_eq!(
            job.checkpoints.back().map(|c| c.checkpoint_id),
            job.last_checkpoint_id.filter(|_| !job.checkpoints.is_empty())
        );
        if let Some(old) = before.jobs.get(&job.job_id) {
            prop_assert!(
                old.status == job.status || old.status.can_become(job.status),
                "illegal {} -> {}",
                old.status,
                job.status
            );
            prop_assert!(
                old.last_checkpoint_id <= job.last_checkpoint_id,
                "checkpoint id went back"
            );
            if let Some(newest) = job
                .checkpoints
                .back()
                .filter(|_| old.last_checkpoint_id != job.last_checkpoint_id)
            {
                if !newest.acknowledged_epochs.is_empty() {
                    let placement: BTreeMap<SubtaskKey, Epoch> = old
                        .assignments
                        .iter()
                        .filter(|(_, assignment)| assignment.executor_id.is_some())
                        .map(|(subtask, assignment)| (subtask.clone(), assignment.epoch))
                        .collect();
                    prop_assert!(
                        old.status == JobStatus::Running && placement == newest.acknowledged_epochs,
                        "checkpoint {} completed by a placement the job did not run",
                        newest.checkpoint_id
                    );
                }
            }
            prop_assert!(
                old.last_triggered_checkpoint_id <= job.last_triggered_checkpoint_id,
                "triggered id went back"
            );
            prop_assert!(old.last_epoch <= job.last_epoch, "epoch went back");
            for (key, assignment) in &job.assignments {
                // A rescale adds subtasks, unplaced.
                let Some(previous) = old.assignments.get(key) else {
                    prop_assert!(assignment.executor_id.is_none(), "subtask {:?} appeared placed", key);
                    continue;
                };
                if previous.epoch != assignment.epoch {
                    prop_assert!(previous.epoch < assignment.epoch, "epoch of {:?} did not increase", key);
                }
                if assignment.executor_id.is_some() && previous.executor_id != assignment.executor_id {
                    prop_assert!(
                        previous.epoch < assignment.epoch,
                        "subtask {:?} moved without a new epoch",
                        key
                    );
                }
            }
        }
    }
    for (job_id, job) in &before.jobs {
        let ended = job.status.is_terminal() || after.ended_jobs.contains(job_id);
        prop_assert!(
            after.jobs.contains_key(job_id) || ended,
            "job {} vanished without ending",
            job_id
        );
    }
    prop_assert!(after.ended_jobs.len() <= RETAINED_ENDED_JOBS);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn random_commands_keep_the_invariants(commands in prop::collection::vec(arbitrary_command(), 1..80)) {
        let mut state = State::default();
        for command in commands {
            let before = state.clone();
            let result = apply(&mut state, command);
            check_invariants(&before, &state, &result)?;
        }
    }

    #[test]
    fn same_log_gives_the_same_state(commands in prop::collection::vec(arbitrary_command(), 1..80)) {
        let mut first = State::default();
        let mut second = State::default();
        let first_results: Vec<_> = commands.iter().cloned().map(|command| apply(&mut first, command)).collect();
        let second_results: Vec<_> = commands.into_iter().map(|command| apply(&mut second, command)).collect();
        prop_assert_eq!(first_results, second_results);
        prop_assert_eq!(first, second);
    }

    #[test]
    fn snapshot_round_trip_gives_the_same_state(commands in prop::collection::vec(arbitrary_command(), 1..80), split in 0usize..80) {
        let mut state = State::default();
        let mut restored = None;
        for (position, command) in commands.into_iter().enumerate() {
            if position == split {
                let bytes = serde_json::to_vec(&state).map_err(|e| TestCaseError::fail(e.to_string()))?;
                let copy: State = serde_json::from_slice(&bytes).map_err(|e| TestCaseError::fail(e.to_string()))?;
                prop_assert_eq!(&copy, &state);
                restored = Some(copy);
            }
            let expected = apply(&mut state, command.clone());
            if let Some(copy) = restored.as_mut() {
                prop_assert_eq!(apply(copy, command), expected);
            }
        }
        if let Some(copy) = restored {
            prop_assert_eq!(copy, state);
        }
    }
}

fn request_rescale(operator: Option<&str>, parallelism: u32) -> Command {
    Command::RequestRescale {
        request_id: None,
        job_id: JobId::from_number(1),
        operator_id: operator.map(str::to_owned),
        parallelism,
        at_ms: 40,
        auto: false,
        reason: String::new(),
    }
}

fn rescale(operator: Option<&str>, parallelism: u32) -> Command {
    Command::RescaleJob {
        job_id: JobId::from_number(1),
        operator_id: operator.map(str::to_owned),
        parallelism,
        at_ms: 50,
        auto: false,
        reason: String::new(),
    }
}

#[test]
fn a_rescale_restarts_the_job_at_the_new_parallelism_and_refuses_what_cannot_be_done() {
    use crate::test_fixtures::StateBuilder;
    let job_id = JobId::from_number(1);
    // Job 1: src 1, keys 2, counts 2, out 1 (6 slots) on an executor with 8.
    let mut state = StateBuilder::new()
        .executor("e", 8)
        .job(graph(2, 3))
        .place_all(1, "e")
        .build();
    let not_running = apply(&mut state, request_rescale(Some("counts"), 3));
    assert!(
        matches!(
            &not_running,
            Err(Rejection::JobNotActive {
                status: JobStatus::Submitted,
                ..
            })
        ),
        "{not_running:?}"
    );
    assert!(apply(
        &mut state,
        Command::TransitionJob {
            job_id,
            to: JobStatus::Running,
            reason: String::new(),
            at_ms: 1,
            deployed_through_epoch: None,
        }
    )
    .is_ok());
    let before = state.clone();
    for (command, expected) in [
        (request_rescale(Some("counts"), 0), "at least 1"),
        (request_rescale(Some("counts"), 129), "max_parallelism of 128"),
        (request_rescale(Some("nope"), 2), "no operator \"nope\""),
        (request_rescale(Some("counts"), 2), "nothing to change"),
        // 6 held + 2 free = 8 available; every operator at 3 needs 12.
        (
            request_rescale(None, 3),
            "needs 12 slots, but only 8 are free or held by it: 4 more needed",
        ),
        (rescale(Some("counts"), 0), "at least 1"),
    ] {
        let refused = apply(&mut state, command).expect_err("refused");
        assert!(refused.to_string().contains(expected), "{refused}");
        assert_eq!(state, before, "a refused rescale changes nothing");
    }

    // A request waits in the state for the leader's checkpoint; one at a time.
    assert_eq!(
        apply(&mut state, request_rescale(Some("counts"), 4)),
        Ok(Response::RescaleRequested { job_id })
    );
    assert_eq!(state.jobs[&job_id].status, JobStatus::Running);
    assert_eq!(
        state.jobs[&job_id]
            .pending_rescale
            .as_ref()
            .map(|request| request.parallelism),
        Some(4)
    );
    let second = apply(&mut state, request_rescale(Some("counts"), 3)).expect_err("refused");
    assert!(second.to_string().contains("already in progress"), "{second}");

    assert_eq!(
        apply(&mut state, rescale(Some("counts"), 4)),
        Ok(Response::JobTransitioned {
            job_id,
            status: JobStatus::Restarting
        })
    );
    let job = &state.jobs[&job_id];
    assert!(job.rescaling && job.restart_count == 0, "a rescale is not a failure");
    assert_eq!(job.pending_rescale, None);
    assert_eq!(
        job.graph.operator("counts").map(|operator| operator.parallelism),
        Some(4)
    );
    let counts: Vec<u32> = job
        .assignments
        .iter()
        .filter(|(key, _)| key.operator_id == "counts")
        .map(|(key, _)| key.subtask_index)
        .collect();
    assert_eq!(counts, [0, 1, 2, 3]);
    assert!(job
        .assignments
        .values()
        .all(|assignment| assignment.executor_id.is_none()));
    assert_eq!(state.used_slots(&executor_id("e")), 0);
    assert!(job.status_reason.contains("rescaling operator counts to parallelism 4"));
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
