mod golden_history;
mod golden_history_v2;
mod golden_history_v3;
mod golden_history_v4;
mod golden_history_v5;

use openraft::testing::{StoreBuilder, Suite};
use openraft::Entry;
use openraft::StorageError;
use raftstream_api::ids::NodeId;
use tempfile::TempDir;

use super::*;

struct RocksStoreBuilder;

impl StoreBuilder<TypeConfig, LogStore, StateMachineStore, TempDir> for RocksStoreBuilder {
    async fn build(&self) -> Result<(TempDir, LogStore, StateMachineStore), StorageError<NodeId>> {
        let directory = TempDir::new().map_err(|error| openraft::StorageIOError::write(&error))?;
        let (log_store, state_machine) = open_stores(directory.path())?;
        Ok((directory, log_store, state_machine))
    }
}

/// openraft's storage conformance suite against the RocksDB log and state machine.
#[test]
fn rocksdb_stores_pass_openraft_storage_suite() -> Result<(), StorageError<NodeId>> {
    Suite::test_all(RocksStoreBuilder)
}

#[tokio::test]
async fn state_is_rebuilt_from_snapshot_after_reopen() -> anyhow_free::Result {
    use openraft::storage::RaftStateMachine;
    use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId, RaftSnapshotBuilder};

    use crate::state_machine::Command;
    use raftstream_api::spec::parse_job_spec;

    let directory = TempDir::new()?;
    let graph = parse_job_spec(include_str!("../../../../examples/wordcount.yaml"))?;
    let expected = {
        let (_log_store, mut state_machine) = open_stores(directory.path())?;
        let entries = (1..=3).map(|index| Entry::<TypeConfig> {
            log_id: LogId::new(CommittedLeaderId::new(1, NodeId(1)), index),
            payload: EntryPayload::Normal(Command::SubmitJob {
                request_id: None,
                graph: graph.clone(),
                at_ms: index,
                from_savepoint: None,
                allow_unmatched_state: false,
            }),
        });
        state_machine.apply(entries).await?;
        state_machine.build_snapshot().await?;
        let state = state_machine.shared_state().read().clone();
        assert_eq!(state.state.jobs.len(), 3);
        state
    };
    let (_log_store, state_machine) = open_stores(directory.path())?;
    assert_eq!(*state_machine.shared_state().read(), expected);
    Ok(())
}

#[tokio::test]
async fn corrupted_snapshot_is_refused_with_a_named_error() -> anyhow_free::Result {
    let directory = TempDir::new()?;
    {
        let database = open_database(directory.path())?;
        let family = database.cf_handle(STATE_FAMILY).ok_or("state family")?;
        database.put_cf(family, b"snapshot_meta", b"{not json")?;
        database.put_cf(family, b"snapshot_data", b"garbage")?;
    }
    let error = match open_stores(directory.path()) {
        Ok(_) => return Err("a corrupted snapshot was accepted".into()),
        Err(error) => error.to_string(),
    };
    assert!(error.contains("snapshot"), "{error}");
    Ok(())
}

/// A Raft log and a snapshot written by the coordinator before the shared model moved to the
/// `api` crate (golden files that code generated from `golden_history`) still load: every entry
/// and the snapshot read back, replaying the entries gives the snapshot's state, and writing them
/// again today gives the same bytes, so nodes of either version read each other's storage.
#[test]
fn a_log_and_snapshot_written_before_the_api_crate_still_load() -> anyhow_free::Result {
    let snapshot = include_bytes!("../../../tests/golden/snapshot-v1.json");
    let log = include_str!("../../../tests/golden/log-entries-v1.jsonl");
    let decoded = read_back_as_written(log, snapshot, &golden_history::entries())?;
    let job = decoded
        .state
        .jobs
        .get(&raftstream_api::ids::JobId::from_number(1))
        .ok_or("job-1 in the snapshot")?;
    assert_eq!((job.restart_count, job.checkpoints.len()), (1, 1));
    let filter = job.graph.operator("long").ok_or("the filter")?;
    assert_eq!(
        filter.config,
        raftstream_api::spec::OperatorConfig::Filter(raftstream_api::spec::FilterConfig {
            field: None,
            op: raftstream_api::spec::CompareOp::Ge,
            value: "w5".into(),
        }),
        "typed configurations are read from the stored parameters"
    );
    Ok(())
}

/// The golden `log` and `snapshot` hold `expected`'s entries and the state they lead to, and
/// today's code writes them byte for byte the same. Returns the snapshot read back.
fn read_back_as_written(
    log: &str,
    snapshot: &[u8],
    expected: &[Entry<TypeConfig>],
) -> Result<state_store::AppliedState, Box<dyn std::error::Error>> {
    let decoded = state_store::decode_snapshot(snapshot)?;
    let entries = log
        .lines()
        .map(serde_json::from_str::<Entry<TypeConfig>>)
        .collect::<Result<Vec<_>, _>>()?;
    assert_eq!(entries, expected);
    assert_eq!(golden_history::applied_state(&entries), decoded);
    for (line, entry) in log.lines().zip(&entries) {
        assert_eq!(
            serde_json::to_string(entry)?,
            line,
            "entry {} is written as before",
            entry.log_id.index
        );
    }
    assert_eq!(
        String::from_utf8(state_store::encode_snapshot(decoded.clone())?)?,
        String::from_utf8(snapshot.to_vec())?,
        "the snapshot is written as before"
    );
    Ok(decoded)
}

/// The commands elasticity added (savepoints, rescales by a user and by the autoscaler, a drain
/// and the move it causes, a job resumed from a savepoint) keep their stored form: a log and
/// snapshot written when they landed read back and are written again the same. With
/// `RAFTSTREAM_WRITE_GOLDEN=1` the test writes the files instead (only for a deliberate, new
/// version of the format: a changed file means nodes of two versions no longer read each other).
#[test]
fn a_log_and_snapshot_with_the_elasticity_commands_still_load() -> anyhow_free::Result {
    use crate::state_machine::{apply, State};

    let expected = golden_history_v2::entries();
    // Every command of the history takes effect, so the snapshot holds what they record.
    let mut state = State::default();
    for (position, command) in golden_history_v2::commands().into_iter().enumerate() {
        if let Err(rejection) = apply(&mut state, command.clone()) {
            panic!("command {position} ({command:?}) was rejected: {rejection}");
        }
    }
    let job = state
        .jobs
        .get(&raftstream_api::ids::JobId::from_number(1))
        .ok_or("job-1")?;
    assert_eq!(job.graph.operator("counts").map(|counts| counts.parallelism), Some(4));
    assert_eq!(state.savepoints.len(), 1, "savepoint 2 was deleted");
    assert!(state.jobs.contains_key(&raftstream_api::ids::JobId::from_number(2)));

    write_golden_if_asked("v2", &expected)?;
    let log = include_str!("../../../tests/golden/log-entries-v2.jsonl");
    let snapshot = include_bytes!("../../../tests/golden/snapshot-v2.json");
    read_back_as_written(log, snapshot, &expected)?;
    Ok(())
}

/// What skew handling and volume-triggered checkpoints added (new exchange kinds and two-phase
/// parameters in a stored graph, checkpoint triggers, the leader's switch to two phases) keeps its
/// stored form, as the v2 files do for elasticity (`RAFTSTREAM_WRITE_GOLDEN=1` writes them).
#[test]
fn a_log_and_snapshot_with_two_phase_switches_and_checkpoint_triggers_still_load() -> anyhow_free::Result {
    use crate::state_machine::{apply, State};
    use raftstream_api::checkpoint::CheckpointTrigger;
    use raftstream_api::spec::TwoPhase;

    let expected = golden_history_v3::entries();
    let mut state = State::default();
    for (position, command) in golden_history_v3::commands().into_iter().enumerate() {
        if let Err(rejection) = apply(&mut state, command.clone()) {
            panic!("command {position} ({command:?}) was rejected: {rejection}");
        }
    }
    let job = state
        .jobs
        .get(&raftstream_api::ids::JobId::from_number(1))
        .ok_or("job-1")?;
    let counts = job.graph.operator("counts").ok_or("counts")?;
    assert!(
        matches!(counts.config.two_phase_mode(), TwoPhase::On(_)),
        "the switch made counts two-phase: {:?}",
        counts.config
    );
    let triggers: Vec<CheckpointTrigger> = job.checkpoints.iter().map(|checkpoint| checkpoint.trigger).collect();
    assert_eq!(triggers.last(), Some(&CheckpointTrigger::Rescale));
    assert!(
        job.history.iter().any(|event| event.what.contains("two-phase")),
        "{:?}",
        job.history
    );

    write_golden_if_asked("v3", &expected)?;
    let log = include_str!("../../../tests/golden/log-entries-v3.jsonl");
    let snapshot = include_bytes!("../../../tests/golden/snapshot-v3.json");
    read_back_as_written(log, snapshot, &expected)?;
    Ok(())
}

/// A start naming the placement it deployed (`deployed_through_epoch`, refused when that placement
/// changed) keeps its stored form, and a log holding a refused one replays to the same state.
#[test]
fn a_log_and_snapshot_with_starts_that_name_their_placement_still_load() -> anyhow_free::Result {
    use crate::state_machine::{apply, JobStatus, Rejection, State};

    let expected = golden_history_v4::entries();
    let mut state = State::default();
    for (position, command) in golden_history_v4::commands().into_iter().enumerate() {
        let applied = apply(&mut state, command.clone());
        match (position == golden_history_v4::REFUSED_START, applied) {
            (false, Ok(_)) | (true, Err(Rejection::DeploymentOutdated { .. })) => {}
            (_, outcome) => panic!("command {position} ({command:?}): {outcome:?}"),
        }
    }
    let job = state
        .jobs
        .get(&raftstream_api::ids::JobId::from_number(1))
        .ok_or("job-1")?;
    assert_eq!(job.status, JobStatus::Cancelling, "started on exec-a, then cancelled");
    assert_eq!(job.restart_count, 1);

    write_golden_if_asked("v4", &expected)?;
    let log = include_str!("../../../tests/golden/log-entries-v4.jsonl");
    let snapshot = include_bytes!("../../../tests/golden/snapshot-v4.json");
    read_back_as_written(log, snapshot, &expected)?;
    Ok(())
}

/// Slot sharing and the restart strategy that forgets failures keep their stored form: a job
/// whose slices take one slot each, a member refused apart from its slice, and a run of two
/// restarts replay to the same state.
#[test]
fn a_log_and_snapshot_with_slot_sharing_and_runs_of_restarts_still_load() -> anyhow_free::Result {
    use crate::state_machine::{apply, JobStatus, Rejection, State};

    let expected = golden_history_v5::entries();
    let mut state = State::default();
    for (position, command) in golden_history_v5::commands().into_iter().enumerate() {
        let applied = apply(&mut state, command.clone());
        match (position == golden_history_v5::REFUSED_PLACEMENT, applied) {
            (false, Ok(_)) | (true, Err(Rejection::SliceElsewhere { .. })) => {}
            (_, outcome) => panic!("command {position} ({command:?}): {outcome:?}"),
        }
    }
    let job = state
        .jobs
        .get(&raftstream_api::ids::JobId::from_number(1))
        .ok_or("job-1")?;
    assert_eq!(job.status, JobStatus::Restarting);
    assert_eq!(
        (job.restart_count, job.restart_streak, job.last_failure_at_ms),
        (2, 2, 2_020)
    );
    assert!(job.graph.slot_sharing);

    write_golden_if_asked("v5", &expected)?;
    let log = include_str!("../../../tests/golden/log-entries-v5.jsonl");
    let snapshot = include_bytes!("../../../tests/golden/snapshot-v5.json");
    read_back_as_written(log, snapshot, &expected)?;
    Ok(())
}

/// With `RAFTSTREAM_WRITE_GOLDEN=1`, writes `expected` and the state it leads to as the golden
/// files of `version` (only for a deliberate, new version of the format).
fn write_golden_if_asked(version: &str, expected: &[openraft::Entry<super::TypeConfig>]) -> anyhow_free::Result {
    if std::env::var_os("RAFTSTREAM_WRITE_GOLDEN").is_none() {
        return Ok(());
    }
    let directory = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
    let mut log = String::new();
    for entry in expected {
        log.push_str(&serde_json::to_string(entry)?);
        log.push('\n');
    }
    std::fs::write(directory.join(format!("log-entries-{version}.jsonl")), log)?;
    let applied = golden_history::applied_state(expected);
    std::fs::write(
        directory.join(format!("snapshot-{version}.json")),
        state_store::encode_snapshot(applied)?,
    )?;
    Ok(())
}

/// Tests return boxed errors instead of unwrapping, so a failure prints its cause.
mod anyhow_free {
    pub type Result = std::result::Result<(), Box<dyn std::error::Error>>;
}
