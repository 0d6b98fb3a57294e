use tokio::task::JoinHandle;

use super::*;
use crate::leader::sessions::ExecutorSessions;
use crate::state_machine::State;
use crate::test_fixtures::{
    checkpoint_ack, epoch_of, executor_id, source_to_sink, subtask, InMemoryLeader, StateBuilder,
};
use raftstream_api::ids::{CheckpointId, Epoch};

/// Longer than anything a test waits for; on the paused clock it passes in no real time.
const PATIENCE: Duration = Duration::from_secs(30);
const INTERVAL_MS: u64 = 50;
const TIMEOUT_MS: u64 = 200;

fn job() -> JobId {
    JobId::from_number(1)
}

/// Job 1, `src -> out`, running with both subtasks on executor `e`.
fn running_job() -> State {
    let graph = source_to_sink(&format!(
        r#""checkpoint": {{"interval_ms": {INTERVAL_MS}, "timeout_ms": {TIMEOUT_MS}, "retained": 2}},"#
    ));
    StateBuilder::new()
        .executor("e", 4)
        .job(graph)
        .place_all(1, "e")
        .running(1)
        .build()
}

/// One leader's checkpoint coordinator, and the session of executor `e` with that leader.
struct Duty {
    leader: InMemoryLeader,
    to_executor: mpsc::Receiver<ExecutorCommand>,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl Duty {
    fn start(make_leader: impl FnOnce(ExecutorSessions) -> InMemoryLeader) -> Duty {
        let sessions = ExecutorSessions::default();
        let (_leadership, events) = sessions.begin_leadership();
        let (_generation, to_executor, _) = sessions.attach(&executor_id("e")).expect("leading");
        let leader = make_leader(sessions);
        let stop = CancellationToken::new();
        let task = tokio::spawn(run(leader.clone(), events, stop.clone()));
        Duty {
            leader,
            to_executor,
            stop,
            task,
        }
    }

    async fn next_command(&mut self) -> ExecutorCommand {
        match tokio::time::timeout(PATIENCE, self.to_executor.recv()).await {
            Ok(Some(command)) => command,
            Ok(None) => panic!("the session closed"),
            Err(_) => panic!("no command for the executor within {PATIENCE:?}"),
        }
    }

    /// Waits for the trigger of the next regular checkpoint (one that does not pause the
    /// sources) and returns its id.
    async fn triggered(&mut self) -> CheckpointId {
        let (checkpoint_id, pause_sources) = self.triggered_pausing().await;
        assert!(!pause_sources, "checkpoint {checkpoint_id:?} pauses the sources");
        checkpoint_id
    }

    /// Waits for the next trigger of the job's checkpoint; its id and whether it pauses the
    /// sources.
    async fn triggered_pausing(&mut self) -> (CheckpointId, bool) {
        match self.next_command().await {
            ExecutorCommand::TriggerCheckpoint {
                job_id,
                checkpoint_id,
                options,
            } if job_id == job() => (checkpoint_id, options.sources == SourcesAfterBarrier::Pause),
            other => panic!("expected a checkpoint trigger, got {other:?}"),
        }
    }

    /// Waits for the abort of a checkpoint; its id and reason.
    async fn aborted(&mut self) -> (CheckpointId, String) {
        match self.next_command().await {
            ExecutorCommand::CheckpointAborted {
                checkpoint_id, reason, ..
            } => (checkpoint_id, reason),
            other => panic!("expected an abort, got {other:?}"),
        }
    }

    fn request_rescale(&self, operator: &str, parallelism: u32) {
        self.leader.commit(Command::RequestRescale {
            request_id: None,
            job_id: job(),
            operator_id: Some(operator.into()),
            parallelism,
            at_ms: 0,
            auto: false,
            reason: String::new(),
        });
    }

    fn rescales_proposed(&self) -> usize {
        self.leader
            .proposed()
            .iter()
            .filter(|command| matches!(command, Command::RescaleJob { .. }))
            .count()
    }

    /// Executor `e` acknowledges `checkpoint_id` for `operator[0]` at its current epoch.
    fn ack(&self, operator: &str, checkpoint_id: CheckpointId) {
        let epoch = epoch_of(&self.leader.state(), 1, operator, 0);
        self.ack_at(operator, epoch, checkpoint_id);
    }

    fn ack_at(&self, operator: &str, epoch: Epoch, checkpoint_id: CheckpointId) {
        self.leader.sessions().report(ExecutorEvent::Ack {
            job_id: job(),
            checkpoint_id,
            ack: checkpoint_ack(operator, 0, epoch, checkpoint_id),
        });
    }

    /// Lets the duty take every report queued so far (the paused clock advances only once
    /// every task is idle).
    async fn settle(&self) {
        tokio::time::sleep(TICK * 2).await;
    }

    fn completions_proposed(&self) -> Vec<CheckpointId> {
        self.leader
            .proposed()
            .into_iter()
            .filter_map(|command| match command {
                Command::CompleteCheckpoint { checkpoint, .. } => Some(checkpoint.checkpoint_id),
                _ => None,
            })
            .collect()
    }

    async fn stop(self) {
        self.stop.cancel();
        self.task.await.expect("the duty ends without panicking");
    }
}

fn completed_ids(state: &State) -> Vec<u64> {
    state.jobs[&job()]
        .checkpoints
        .iter()
        .map(|checkpoint| checkpoint.checkpoint_id.0)
        .collect()
}

#[tokio::test(start_paused = true)]
async fn a_checkpoint_completes_when_every_subtask_acknowledged_and_is_committed_before_tasks_hear_of_it() {
    let mut duty = Duty::start(|sessions| InMemoryLeader::new(running_job(), sessions));
    let first = duty.triggered().await;
    assert_eq!(first, CheckpointId(1), "ids start above what the log holds");
    duty.ack("src", first);
    duty.settle().await;
    assert!(
        duty.to_executor.try_recv().is_err(),
        "nothing to say while `out` is missing"
    );
    assert!(completed_ids(&duty.leader.state()).is_empty());

    duty.ack("out", first);
    match duty.next_command().await {
        ExecutorCommand::CheckpointComplete {
            job_id,
            checkpoint_id,
            acknowledged,
            oldest_retained,
        } => {
            assert_eq!((job_id, checkpoint_id, oldest_retained), (job(), first, first));
            let mut operators: Vec<_> = acknowledged
                .iter()
                .map(|task| task.subtask.operator_id.as_str())
                .collect();
            operators.sort_unstable();
            assert_eq!(operators, ["out", "src"]);
        }
        other => panic!("expected the completion, got {other:?}"),
    }
    // Sinks publish on that message, so the checkpoint was in the committed state before it.
    let state = duty.leader.state();
    assert_eq!(completed_ids(&state), [1]);
    let completed = &state.jobs[&job()].checkpoints[0];
    assert_eq!(completed.task_states.len(), 2);
    assert_eq!(completed.source_offsets.get(&subtask("src", 0)), Some(&100));
    assert_eq!(completed.size_bytes, 20);

    // The next one follows after the interval, with the next id.
    assert_eq!(duty.triggered().await, CheckpointId(2));
    duty.stop().await;
}

/// Job 1 with a 60 s interval, bounded by records, and `min_pause_ms` between checkpoints.
fn volume_bounded_job(min_pause_ms: u64) -> State {
    let graph = source_to_sink(&format!(
        r#""checkpoint": {{"interval_ms": 60000, "timeout_ms": {TIMEOUT_MS}, "max_records": 1000, "min_pause_ms": {min_pause_ms}}},"#
    ));
    StateBuilder::new()
        .executor("e", 4)
        .job(graph)
        .place_all(1, "e")
        .running(1)
        .build()
}

fn want_checkpoint(duty: &Duty, trigger: CheckpointTrigger) {
    let epoch = epoch_of(&duty.leader.state(), 1, "src", 0);
    duty.leader.sessions().report(ExecutorEvent::CheckpointWanted {
        task: TaskRef {
            job_id: job(),
            subtask: subtask("src", 0),
            epoch,
        },
        trigger,
    });
}

#[tokio::test(start_paused = true)]
async fn a_source_asking_for_a_checkpoint_gets_one_long_before_the_interval_after_the_minimum_pause() {
    const MIN_PAUSE_MS: u64 = 300;
    let mut duty = Duty::start(|sessions| InMemoryLeader::new(volume_bounded_job(MIN_PAUSE_MS), sessions));
    let started = Instant::now();
    want_checkpoint(&duty, CheckpointTrigger::Records);
    let first = duty.triggered().await;
    assert!(
        started.elapsed() < Duration::from_millis(100),
        "triggered at once, not after the interval"
    );
    duty.ack("src", first);
    duty.ack("out", first);
    assert!(matches!(
        duty.next_command().await,
        ExecutorCommand::CheckpointComplete { .. }
    ));
    let ended = Instant::now();
    assert_eq!(
        duty.leader.state().jobs[&job()].checkpoints[0].trigger,
        CheckpointTrigger::Records,
        "the completed checkpoint says what started it"
    );
    // Asked again at once: the next one waits out the minimum pause after the last ended.
    want_checkpoint(&duty, CheckpointTrigger::Bytes);
    let second = duty.triggered().await;
    assert!(ended.elapsed() >= Duration::from_millis(MIN_PAUSE_MS));
    assert!(ended.elapsed() < Duration::from_millis(MIN_PAUSE_MS + 100));
    duty.ack("src", second);
    duty.ack("out", second);
    assert!(matches!(
        duty.next_command().await,
        ExecutorCommand::CheckpointComplete { .. }
    ));
    assert_eq!(
        duty.leader.state().jobs[&job()].checkpoints[1].trigger,
        CheckpointTrigger::Bytes
    );
    duty.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_new_session_of_an_executor_aborts_the_checkpoint_whose_trigger_it_may_have_missed() {
    let mut duty = Duty::start(|sessions| InMemoryLeader::new(running_job(), sessions));
    let first = duty.triggered().await;
    duty.leader.sessions().report(ExecutorEvent::SessionOpened {
        executor_id: executor_id("e"),
    });
    let (checkpoint_id, reason) = duty.aborted().await;
    assert_eq!(checkpoint_id, first);
    assert!(reason.contains("new session"), "{reason}");
    assert_eq!(duty.triggered().await, CheckpointId(2));
    duty.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_checkpoint_not_acknowledged_in_time_is_aborted_and_a_late_ack_never_completes_it() {
    let mut duty = Duty::start(|sessions| InMemoryLeader::new(running_job(), sessions));
    let first = duty.triggered().await;
    let triggered_at = Instant::now();
    duty.ack("src", first);
    match duty.next_command().await {
        ExecutorCommand::CheckpointAborted {
            checkpoint_id, reason, ..
        } => {
            assert_eq!(checkpoint_id, first);
            assert_eq!(reason, format!("timed out after {TIMEOUT_MS} ms"));
        }
        other => panic!("expected the abort, got {other:?}"),
    }
    assert!(triggered_at.elapsed() >= Duration::from_millis(TIMEOUT_MS));

    duty.ack("out", first);
    let second = duty.triggered().await;
    assert_eq!(second, CheckpointId(2), "the aborted id is not reused");
    assert!(duty.completions_proposed().is_empty(), "{:?}", duty.leader.proposed());
    assert!(completed_ids(&duty.leader.state()).is_empty());
    duty.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_checkpoint_whose_placements_change_is_aborted_and_its_acks_never_complete_it() {
    let mut duty = Duty::start(|sessions| InMemoryLeader::new(running_job(), sessions));
    let first = duty.triggered().await;
    let old_src = epoch_of(&duty.leader.state(), 1, "src", 0);
    let old_out = epoch_of(&duty.leader.state(), 1, "out", 0);
    duty.ack("src", first);
    duty.settle().await;

    // `out` fails: the job restarts, every placement is released and placed again at new
    // epochs (the scheduler's work, done here directly).
    duty.leader.commit(Command::FailSubtask {
        job_id: job(),
        subtask: subtask("out", 0),
        epoch: old_out,
        reason: "test".into(),
        fatal: false,
        at_ms: 0,
    });
    duty.settle().await;
    // The old placement's last ack arrives after the change.
    duty.ack_at("out", old_out, first);
    duty.settle().await;
    for operator in ["src", "out"] {
        duty.leader.commit(Command::AssignSubtask {
            job_id: job(),
            subtask: subtask(operator, 0),
            executor_id: executor_id("e"),
            at_ms: 0,
        });
    }
    duty.leader.commit(Command::TransitionJob {
        job_id: job(),
        to: JobStatus::Running,
        reason: "restored".into(),
        at_ms: 0,
        deployed_through_epoch: None,
    });
    assert!(epoch_of(&duty.leader.state(), 1, "src", 0) > old_src.max(old_out));

    // Checkpoint 1 was dropped: the job, running again, gets checkpoint 2, which its new
    // placement completes, while acks of the old one count for nothing.
    let second = loop {
        match duty.next_command().await {
            ExecutorCommand::CheckpointAborted {
                checkpoint_id, reason, ..
            } => {
                assert_eq!(checkpoint_id, first);
                assert_eq!(reason, "the job's placements changed");
            }
            ExecutorCommand::TriggerCheckpoint { checkpoint_id, .. } => break checkpoint_id,
            other => panic!("expected checkpoint 1's abort or checkpoint 2's trigger, got {other:?}"),
        }
    };
    assert_eq!(second, CheckpointId(2));
    duty.ack_at("src", old_src, second);
    duty.ack("src", second);
    duty.ack("out", second);
    match duty.next_command().await {
        ExecutorCommand::CheckpointComplete { checkpoint_id, .. } => assert_eq!(checkpoint_id, second),
        other => panic!("expected checkpoint 2 to complete, got {other:?}"),
    }
    assert_eq!(duty.completions_proposed(), [second]);
    assert_eq!(completed_ids(&duty.leader.state()), [2]);
    duty.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_new_leader_never_completes_the_old_leaders_checkpoint() {
    let mut old = Duty::start(|sessions| InMemoryLeader::new(running_job(), sessions));
    let first = old.triggered().await;
    old.ack("src", first);
    old.settle().await;

    // A new leader takes over with the committed state (checkpoint 1 triggered, not completed).
    old.leader.depose();
    let mut new = Duty::start(|sessions| old.leader.successor(sessions));
    // Executors report to the new leader what they owed the old one: it ignores them.
    new.ack("src", first);
    new.ack("out", first);
    let second = new.triggered().await;
    assert_eq!(
        second,
        CheckpointId(2),
        "the new leader continues above the old one's id"
    );

    // The old leader gets its last ack, but cannot commit any more: it aborts.
    old.ack("out", first);
    let (checkpoint_id, reason) = old.aborted().await;
    assert_eq!(checkpoint_id, first);
    assert!(reason.contains("could not commit"), "{reason}");
    assert_eq!(old.completions_proposed(), [first], "it tried, and was refused");
    old.stop().await;

    new.ack("src", second);
    new.ack("out", second);
    match new.next_command().await {
        ExecutorCommand::CheckpointComplete { checkpoint_id, .. } => assert_eq!(checkpoint_id, second),
        other => panic!("expected checkpoint 2 to complete, got {other:?}"),
    }
    assert_eq!(new.completions_proposed(), [second]);
    assert_eq!(completed_ids(&new.leader.state()), [2], "checkpoint 1 never completed");
    new.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_requested_rescale_goes_through_a_checkpoint_taken_with_paused_sources() {
    let mut duty = Duty::start(|sessions| InMemoryLeader::new(running_job(), sessions));
    let first = duty.triggered().await;
    duty.ack("src", first);
    duty.ack("out", first);
    assert!(matches!(
        duty.next_command().await,
        ExecutorCommand::CheckpointComplete { .. }
    ));

    duty.request_rescale("out", 2);
    let asked_at = Instant::now();
    let (second, pause) = duty.triggered_pausing().await;
    assert!(pause, "the rescale's checkpoint pauses the sources");
    assert!(
        asked_at.elapsed() < Duration::from_millis(INTERVAL_MS),
        "without waiting for the interval"
    );
    assert_eq!(duty.rescales_proposed(), 0, "not before its checkpoint completed");
    duty.ack("src", second);
    duty.ack("out", second);
    assert!(
        matches!(duty.next_command().await, ExecutorCommand::CheckpointComplete { checkpoint_id, .. } if checkpoint_id == second)
    );
    duty.settle().await;
    assert_eq!(duty.rescales_proposed(), 1);
    let state = duty.leader.state();
    let rescaled = &state.jobs[&job()];
    assert_eq!(rescaled.status, JobStatus::Restarting);
    assert_eq!(
        rescaled.checkpoints.back().map(|checkpoint| checkpoint.checkpoint_id),
        Some(second)
    );
    assert_eq!(
        rescaled.graph.operator("out").map(|operator| operator.parallelism),
        Some(2)
    );
    duty.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_rescale_aborts_the_regular_checkpoint_in_flight_instead_of_waiting_for_it() {
    let mut duty = Duty::start(|sessions| InMemoryLeader::new(running_job(), sessions));
    let regular = duty.triggered().await;
    duty.ack("src", regular);
    // `out` is still writing its state when the rescale is asked for.
    duty.request_rescale("out", 2);
    let (aborted, reason) = duty.aborted().await;
    assert_eq!(aborted, regular);
    assert!(reason.contains("rescale"), "{reason}");
    let (paused, pause) = duty.triggered_pausing().await;
    assert!(
        pause && paused > regular,
        "the rescale's own checkpoint follows at once"
    );
    // The late ack of the aborted checkpoint completes nothing.
    duty.ack("out", regular);
    duty.ack("src", paused);
    duty.ack("out", paused);
    assert!(
        matches!(duty.next_command().await, ExecutorCommand::CheckpointComplete { checkpoint_id, .. } if checkpoint_id == paused)
    );
    duty.settle().await;
    assert_eq!(duty.rescales_proposed(), 1);
    assert_eq!(completed_ids(&duty.leader.state()), [paused.0]);
    duty.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_rescale_whose_checkpoints_keep_failing_goes_ahead_from_the_latest_one() {
    let mut duty = Duty::start(|sessions| InMemoryLeader::new(running_job(), sessions));
    duty.request_rescale("out", 2);
    for attempt in 1..=RESCALE_CHECKPOINT_ATTEMPTS {
        let (checkpoint_id, pause) = duty.triggered_pausing().await;
        assert!(pause, "attempt {attempt}");
        // Nobody acknowledges: it times out, and the abort resumes the sources.
        match duty.next_command().await {
            ExecutorCommand::CheckpointAborted {
                checkpoint_id: aborted, ..
            } => assert_eq!(aborted, checkpoint_id),
            other => panic!("expected the abort, got {other:?}"),
        }
        assert_eq!(duty.rescales_proposed(), 0);
    }
    duty.settle().await;
    assert_eq!(duty.rescales_proposed(), 1);
    let state = duty.leader.state();
    assert_eq!(state.jobs[&job()].status, JobStatus::Restarting);
    assert_eq!(state.jobs[&job()].pending_rescale, None);
    duty.stop().await;
}
