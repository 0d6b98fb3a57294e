//! Raft: openraft's type configuration, RocksDB storage for the log and the state machine, and the
//! gRPC network between coordinators.

mod election_trigger;
mod log_store;
mod network;
pub mod pre_vote;
mod state_store;
#[cfg(test)]
mod tests;

use std::io::Cursor;
use std::path::Path;
use std::sync::Arc;

use rocksdb::{ColumnFamilyDescriptor, Options, DB};

use crate::state_machine::{ApplyResult, Command};

pub use election_trigger::{ElectionTrigger, LeaderContact};
pub use log_store::{CommittedIndex, LogStore};
pub use network::{GrpcRaftNetwork, RaftPeerClient};
pub use state_store::{
    AppliedState, SharedAppliedState, SnapshotPayload, SnapshotStats, StateMachineStore, SNAPSHOT_FORMAT_VERSION,
};

openraft::declare_raft_types!(
    /// The openraft types of the coordinator: commands in, apply results out.
    pub TypeConfig:
        D = Command,
        R = ApplyResult,
        NodeId = raftstream_api::ids::NodeId,
        Node = openraft::BasicNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

/// The coordinator's Raft handle.
pub type CoordinatorRaft = openraft::Raft<TypeConfig>;

pub(crate) const LOG_FAMILY: &str = "log";
pub(crate) const META_FAMILY: &str = "meta";
pub(crate) const STATE_FAMILY: &str = "state";

/// Opens (creating if needed) the RocksDB database of one coordinator.
pub fn open_database(path: &Path) -> Result<Arc<DB>, rocksdb::Error> {
    let mut options = Options::default();
    options.create_if_missing(true);
    options.create_missing_column_families(true);
    let families = [LOG_FAMILY, META_FAMILY, STATE_FAMILY]
        .into_iter()
        .map(|name| ColumnFamilyDescriptor::new(name, Options::default()));
    Ok(Arc::new(DB::open_cf_descriptors(&options, path, families)?))
}

/// Opens the log store and the state machine of one coordinator on a shared database.
pub fn open_stores(
    path: &Path,
) -> Result<(LogStore, StateMachineStore), openraft::StorageError<raftstream_api::ids::NodeId>> {
    let database =
        open_database(path).map_err(|error| openraft::StorageIOError::<raftstream_api::ids::NodeId>::read(&error))?;
    let log_store = LogStore::new(database.clone());
    let state_machine = StateMachineStore::open(database)?;
    Ok((log_store, state_machine))
}
