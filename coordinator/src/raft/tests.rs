use openraft::testing::{StoreBuilder, Suite};
use openraft::StorageError;
use tempfile::TempDir;

use super::*;

struct RocksStoreBuilder;

impl StoreBuilder<TypeConfig, LogStore, StateMachineStore, TempDir> for RocksStoreBuilder {
    async fn build(&self) -> Result<(TempDir, LogStore, StateMachineStore), StorageError<u64>> {
        let directory = TempDir::new().map_err(|error| openraft::StorageIOError::write(&error))?;
        let (log_store, state_machine) = open_stores(directory.path())?;
        Ok((directory, log_store, state_machine))
    }
}

/// openraft's storage conformance suite against the RocksDB log and state machine.
#[test]
fn rocksdb_stores_pass_openraft_storage_suite() -> Result<(), StorageError<u64>> {
    Suite::test_all(RocksStoreBuilder)
}

#[tokio::test]
async fn state_is_rebuilt_from_snapshot_after_reopen() -> anyhow_free::Result {
    use openraft::storage::RaftStateMachine;
    use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId, RaftSnapshotBuilder};

    use crate::spec::parse_job_spec;
    use crate::state_machine::Command;

    let directory = TempDir::new()?;
    let graph = parse_job_spec(include_str!("../../../examples/wordcount.yaml"))?;
    let expected = {
        let (_log_store, mut state_machine) = open_stores(directory.path())?;
        let entries = (1..=3).map(|index| Entry::<TypeConfig> {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Normal(Command::SubmitJob {
                request_id: None,
                graph: graph.clone(),
                at_ms: index,
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

/// Tests return boxed errors instead of unwrapping, so a failure prints its cause.
mod anyhow_free {
    pub type Result = std::result::Result<(), Box<dyn std::error::Error>>;
}
