//! The state machine held in memory and made durable through snapshots in RocksDB.
//!
//! Applying does not write to disk: the log holds every entry after the last snapshot, and openraft
//! re-applies committed entries after a restart, so the state is rebuilt exactly (the state machine
//! is deterministic). Snapshots are written with sync before the log behind them may be purged.

use std::io::Cursor;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard};

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    BasicNode, Entry, EntryPayload, LogId, OptionalSend, RaftSnapshotBuilder, SnapshotMeta, StorageError,
    StorageIOError, StoredMembership,
};
use rocksdb::{WriteBatch, WriteOptions, DB};
use serde::{Deserialize, Serialize};

use super::{TypeConfig, STATE_FAMILY};
use crate::state_machine::{apply, ApplyResult, Response, State};

use raftstream_api::ids::NodeId;

/// Snapshots this node built or installed, and the size of the latest.
#[derive(Debug, Default)]
pub struct SnapshotStats {
    pub built: AtomicU64,
    pub installed: AtomicU64,
    pub last_size_bytes: AtomicU64,
}

/// Bumped whenever the snapshot layout changes; older layouts are refused by name, never misread.
pub const SNAPSHOT_FORMAT_VERSION: u32 = 1;
const SNAPSHOT_META_KEY: &[u8] = b"snapshot_meta";
const SNAPSHOT_DATA_KEY: &[u8] = b"snapshot_data";

/// The applied state with the Raft position it reflects.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppliedState {
    pub last_applied: Option<LogId<NodeId>>,
    pub last_membership: StoredMembership<NodeId, BasicNode>,
    pub state: State,
}

/// The serialized form of a snapshot.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SnapshotPayload {
    pub format_version: u32,
    pub applied: AppliedState,
}

/// The applied state, shared between Raft (writer) and the services (readers).
#[derive(Debug, Clone, Default)]
pub struct SharedAppliedState(Arc<RwLock<AppliedState>>);

impl SharedAppliedState {
    /// A read view of the applied state. A poisoned lock means a panic while applying, which is a
    /// bug; readers still see the last state written.
    pub fn read(&self) -> RwLockReadGuard<'_, AppliedState> {
        self.0.read().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, AppliedState> {
        self.0.write().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// The state machine store of one coordinator.
#[derive(Debug, Clone)]
pub struct StateMachineStore {
    database: Arc<DB>,
    applied: SharedAppliedState,
    snapshots: Arc<SnapshotStats>,
}

fn storage_read_error(what: &str, error: impl std::fmt::Display) -> StorageError<NodeId> {
    StorageIOError::read_snapshot(None, &std::io::Error::other(format!("{what}: {error}"))).into()
}

fn storage_write_error(what: &str, error: impl std::fmt::Display) -> StorageError<NodeId> {
    StorageIOError::write_snapshot(None, &std::io::Error::other(format!("{what}: {error}"))).into()
}

/// Decodes snapshot bytes, refusing unknown format versions.
pub fn decode_snapshot(bytes: &[u8]) -> Result<AppliedState, StorageError<NodeId>> {
    let payload: SnapshotPayload =
        serde_json::from_slice(bytes).map_err(|error| storage_read_error("decoding snapshot data", error))?;
    if payload.format_version != SNAPSHOT_FORMAT_VERSION {
        return Err(storage_read_error(
            "decoding snapshot data",
            format!(
                "format version {} is not the supported version {SNAPSHOT_FORMAT_VERSION}",
                payload.format_version
            ),
        ));
    }
    Ok(payload.applied)
}

pub(crate) fn encode_snapshot(applied: AppliedState) -> Result<Vec<u8>, StorageError<NodeId>> {
    let payload = SnapshotPayload {
        format_version: SNAPSHOT_FORMAT_VERSION,
        applied,
    };
    serde_json::to_vec(&payload).map_err(|error| storage_write_error("encoding snapshot", error))
}

impl StateMachineStore {
    /// Opens the state machine, restoring the last durable snapshot if there is one.
    pub fn open(database: Arc<DB>) -> Result<Self, StorageError<NodeId>> {
        let store = StateMachineStore {
            database,
            applied: SharedAppliedState::default(),
            snapshots: Arc::default(),
        };
        if let Some(snapshot) = store.read_stored_snapshot()? {
            store
                .snapshots
                .last_size_bytes
                .store(snapshot.snapshot.get_ref().len() as u64, Ordering::Relaxed);
            let restored = decode_snapshot(snapshot.snapshot.get_ref())?;
            *store.applied.write() = restored;
        }
        Ok(store)
    }

    /// The applied state, for the services to read.
    pub fn shared_state(&self) -> SharedAppliedState {
        self.applied.clone()
    }

    /// Snapshots built and installed here, for `/metrics`.
    pub fn snapshot_stats(&self) -> Arc<SnapshotStats> {
        self.snapshots.clone()
    }

    fn family(&self) -> Result<&rocksdb::ColumnFamily, StorageError<NodeId>> {
        self.database
            .cf_handle(STATE_FAMILY)
            .ok_or_else(|| storage_read_error("opening state column family", "it is missing"))
    }

    fn read_stored_snapshot(&self) -> Result<Option<Snapshot<TypeConfig>>, StorageError<NodeId>> {
        let family = self.family()?;
        let meta_bytes = self
            .database
            .get_cf(family, SNAPSHOT_META_KEY)
            .map_err(|error| storage_read_error("reading snapshot meta", error))?;
        let data = self
            .database
            .get_cf(family, SNAPSHOT_DATA_KEY)
            .map_err(|error| storage_read_error("reading snapshot data", error))?;
        match (meta_bytes, data) {
            (None, None) => Ok(None),
            (Some(meta_bytes), Some(data)) => {
                let meta: SnapshotMeta<NodeId, BasicNode> = serde_json::from_slice(&meta_bytes)
                    .map_err(|error| storage_read_error("decoding snapshot meta", error))?;
                Ok(Some(Snapshot {
                    meta,
                    snapshot: Box::new(Cursor::new(data)),
                }))
            }
            _ => Err(storage_read_error(
                "reading snapshot",
                "meta and data are not both present",
            )),
        }
    }

    fn write_stored_snapshot(
        &self,
        meta: &SnapshotMeta<NodeId, BasicNode>,
        data: &[u8],
    ) -> Result<(), StorageError<NodeId>> {
        let family = self.family()?;
        let meta_bytes =
            serde_json::to_vec(meta).map_err(|error| storage_write_error("encoding snapshot meta", error))?;
        let mut batch = WriteBatch::default();
        batch.put_cf(family, SNAPSHOT_META_KEY, meta_bytes);
        batch.put_cf(family, SNAPSHOT_DATA_KEY, data);
        let mut options = WriteOptions::default();
        options.set_sync(true);
        self.database
            .write_opt(batch, &options)
            .map_err(|error| storage_write_error("writing snapshot", error))
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachineStore {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError<NodeId>> {
        // Copy under the lock, encode outside it, so readers are not held up by serialization.
        let applied = self.applied.read().clone();
        let last_log_id = applied.last_applied;
        let last_membership = applied.last_membership.clone();
        let data = encode_snapshot(applied)?;
        let snapshot_id = match last_log_id {
            Some(log_id) => format!("{}-{}-{}", log_id.leader_id.term, log_id.index, data.len()),
            None => format!("empty-{}", data.len()),
        };
        let meta = SnapshotMeta {
            last_log_id,
            last_membership,
            snapshot_id,
        };
        self.write_stored_snapshot(&meta, &data)?;
        self.snapshots.built.fetch_add(1, Ordering::Relaxed);
        self.snapshots
            .last_size_bytes
            .store(data.len() as u64, Ordering::Relaxed);
        tracing::info!(snapshot_id = %meta.snapshot_id, size_bytes = data.len(), "built snapshot");
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotBuilder = StateMachineStore;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<NodeId>>, StoredMembership<NodeId, BasicNode>), StorageError<NodeId>> {
        let applied = self.applied.read();
        Ok((applied.last_applied, applied.last_membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<ApplyResult>, StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut applied = self.applied.write();
        let mut results = Vec::new();
        for entry in entries {
            applied.last_applied = Some(entry.log_id);
            let result = match entry.payload {
                EntryPayload::Blank => Ok(Response::Nothing),
                EntryPayload::Normal(command) => apply(&mut applied.state, command),
                EntryPayload::Membership(membership) => {
                    applied.last_membership = StoredMembership::new(Some(entry.log_id), membership);
                    Ok(Response::Nothing)
                }
            };
            results.push(result);
        }
        Ok(results)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError<NodeId>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, BasicNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError<NodeId>> {
        let data = snapshot.into_inner();
        let mut restored = decode_snapshot(&data)?;
        // The meta is authoritative for the position; the payload must agree with it.
        if restored.last_applied != meta.last_log_id {
            return Err(storage_read_error(
                "installing snapshot",
                format!(
                    "payload is at {:?} but the meta says {:?}",
                    restored.last_applied, meta.last_log_id
                ),
            ));
        }
        restored.last_membership = meta.last_membership.clone();
        self.write_stored_snapshot(meta, &data)?;
        *self.applied.write() = restored;
        self.snapshots.installed.fetch_add(1, Ordering::Relaxed);
        self.snapshots
            .last_size_bytes
            .store(data.len() as u64, Ordering::Relaxed);
        tracing::info!(snapshot_id = %meta.snapshot_id, size_bytes = data.len(), "installed snapshot");
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError<NodeId>> {
        self.read_stored_snapshot()
    }
}
