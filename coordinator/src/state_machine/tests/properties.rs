//! Property tests: invariants after random command sequences, determinism, snapshot round trips.

use proptest::prelude::*;

use super::*;
use raftstream_api::ids::OperatorId;

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
                operator_id: operator.map(OperatorId::from),
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
