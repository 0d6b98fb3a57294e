//! The Raft log and vote in RocksDB. Appends and votes are written with sync so that a `kill -9`
//! never loses what openraft was told is durable.

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::{Arc, Mutex};

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{Entry, LogId, OptionalSend, RaftLogReader, StorageError, StorageIOError, Vote};
use rocksdb::{Direction, IteratorMode, WriteBatch, WriteOptions, DB};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::{TypeConfig, LOG_FAMILY, META_FAMILY};

const VOTE_KEY: &[u8] = b"vote";
const COMMITTED_KEY: &[u8] = b"committed";
const LAST_PURGED_KEY: &[u8] = b"last_purged_log_id";

use raftstream_api::ids::NodeId;

/// The committed log index as last saved by openraft, shared with the status service.
#[derive(Debug, Clone, Default)]
pub struct CommittedIndex(Arc<Mutex<Option<u64>>>);

impl CommittedIndex {
    /// The last committed index this node knows of.
    pub fn get(&self) -> Option<u64> {
        self.0.lock().map(|guard| *guard).unwrap_or(None)
    }

    fn set(&self, index: Option<u64>) {
        if let Ok(mut guard) = self.0.lock() {
            *guard = index;
        }
    }
}

/// The Raft log store of one coordinator.
#[derive(Debug, Clone)]
pub struct LogStore {
    database: Arc<DB>,
    committed: CommittedIndex,
}

fn index_key(index: u64) -> [u8; 8] {
    // Big-endian so that RocksDB's byte order is log order.
    index.to_be_bytes()
}

fn index_of_key(key: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(key.try_into().ok()?))
}

fn sync_writes() -> WriteOptions {
    let mut options = WriteOptions::default();
    options.set_sync(true);
    options
}

impl LogStore {
    /// A log store on an open database (see [`super::open_database`]).
    pub fn new(database: Arc<DB>) -> Self {
        LogStore {
            database,
            committed: CommittedIndex::default(),
        }
    }

    /// A handle on the committed index, for status reporting.
    pub fn committed_index(&self) -> CommittedIndex {
        self.committed.clone()
    }

    fn family(&self, name: &str) -> Result<&rocksdb::ColumnFamily, StorageError<NodeId>> {
        self.database.cf_handle(name).ok_or_else(|| {
            let error = std::io::Error::other(format!("RocksDB column family {name:?} is missing"));
            StorageIOError::read(&error).into()
        })
    }

    fn read_meta<T: DeserializeOwned>(&self, key: &[u8]) -> Result<Option<T>, StorageIOError<NodeId>> {
        let family = self
            .family(META_FAMILY)
            .map_err(|_| StorageIOError::read(&std::io::Error::other("meta family missing")))?;
        let Some(bytes) = self
            .database
            .get_cf(family, key)
            .map_err(|error| StorageIOError::read(&error))?
        else {
            return Ok(None);
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|error| StorageIOError::read(&error))
    }

    fn write_meta<T: Serialize>(&self, key: &[u8], value: &T, sync: bool) -> Result<(), StorageIOError<NodeId>> {
        let family = self
            .family(META_FAMILY)
            .map_err(|_| StorageIOError::write(&std::io::Error::other("meta family missing")))?;
        let bytes = serde_json::to_vec(value).map_err(|error| StorageIOError::write(&error))?;
        let options = if sync { sync_writes() } else { WriteOptions::default() };
        self.database
            .put_cf_opt(family, key, bytes, &options)
            .map_err(|error| StorageIOError::write(&error))
    }

    fn last_log_id_in_log(&self) -> Result<Option<LogId<NodeId>>, StorageError<NodeId>> {
        let family = self.family(LOG_FAMILY)?;
        let mut iterator = self.database.iterator_cf(family, IteratorMode::End);
        match iterator.next() {
            None => Ok(None),
            Some(Err(error)) => Err(StorageIOError::read_logs(&error).into()),
            Some(Ok((_, value))) => {
                let entry: Entry<TypeConfig> =
                    serde_json::from_slice(&value).map_err(|error| StorageIOError::read_logs(&error))?;
                Ok(Some(entry.log_id))
            }
        }
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, StorageError<NodeId>> {
        let start = match range.start_bound() {
            Bound::Included(index) => *index,
            Bound::Excluded(index) => index.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let family = self.family(LOG_FAMILY)?;
        let mut entries = Vec::new();
        let start_key = index_key(start);
        for item in self
            .database
            .iterator_cf(family, IteratorMode::From(&start_key, Direction::Forward))
        {
            let (key, value) = item.map_err(|error| StorageIOError::read_logs(&error))?;
            let Some(index) = index_of_key(&key) else {
                let error = std::io::Error::other(format!("malformed log key of {} bytes", key.len()));
                return Err(StorageIOError::read_logs(&error).into());
            };
            if !range.contains(&index) {
                break;
            }
            let entry: Entry<TypeConfig> =
                serde_json::from_slice(&value).map_err(|error| StorageIOError::read_log_at_index(index, &error))?;
            entries.push(entry);
        }
        Ok(entries)
    }
}

impl LogStore {
    /// The id of the last entry written to the log (or purged behind a snapshot): what a
    /// pre-vote compares, since openraft 0.9 does not expose its own view of it.
    pub fn last_log_id(&self) -> Result<Option<LogId<NodeId>>, StorageError<NodeId>> {
        let last_purged_log_id: Option<LogId<NodeId>> = self.read_meta(LAST_PURGED_KEY)?;
        Ok(self.last_log_id_in_log()?.or(last_purged_log_id))
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError<NodeId>> {
        let last_purged_log_id: Option<LogId<NodeId>> = self.read_meta(LAST_PURGED_KEY)?;
        let last_log_id = self.last_log_id()?;
        Ok(LogState {
            last_purged_log_id,
            last_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError<NodeId>> {
        self.write_meta(VOTE_KEY, vote, true).map_err(|error| {
            let source = std::io::Error::other(error.to_string());
            StorageIOError::write_vote(&source).into()
        })
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError<NodeId>> {
        self.read_meta(VOTE_KEY).map_err(|error| {
            let source = std::io::Error::other(error.to_string());
            StorageIOError::read_vote(&source).into()
        })
    }

    async fn save_committed(&mut self, committed: Option<LogId<NodeId>>) -> Result<(), StorageError<NodeId>> {
        // Not synced: losing it only means re-learning the commit index from the leader.
        self.write_meta(COMMITTED_KEY, &committed, false)?;
        self.committed.set(committed.map(|log_id| log_id.index));
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<NodeId>>, StorageError<NodeId>> {
        let committed: Option<Option<LogId<NodeId>>> = self.read_meta(COMMITTED_KEY)?;
        let committed = committed.flatten();
        self.committed.set(committed.map(|log_id| log_id.index));
        Ok(committed)
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<(), StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let family = self.family(LOG_FAMILY)?;
        let mut batch = WriteBatch::default();
        for entry in entries {
            let bytes =
                serde_json::to_vec(&entry).map_err(|error| StorageIOError::write_log_entry(entry.log_id, &error))?;
            batch.put_cf(family, index_key(entry.log_id.index), bytes);
        }
        let result = self.database.write_opt(batch, &sync_writes());
        // Raft §5.3: an entry counts toward commit only once it is on stable storage, so the
        // callback fires after the synced write.
        match result {
            Ok(()) => {
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(error) => {
                callback.log_io_completed(Err(std::io::Error::other(error.to_string())));
                Err(StorageIOError::write_logs(&error).into())
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        let family = self.family(LOG_FAMILY)?;
        let mut batch = WriteBatch::default();
        batch.delete_range_cf(family, index_key(log_id.index), index_key(u64::MAX));
        self.database
            .write_opt(batch, &sync_writes())
            .map_err(|error| StorageIOError::write_logs(&error).into())
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        // Record the purge point first: if we crash in between, the log merely keeps extra entries.
        self.write_meta(LAST_PURGED_KEY, &log_id, true)?;
        let family = self.family(LOG_FAMILY)?;
        let mut batch = WriteBatch::default();
        batch.delete_range_cf(family, index_key(0), index_key(log_id.index.saturating_add(1)));
        self.database
            .write_opt(batch, &WriteOptions::default())
            .map_err(|error| StorageIOError::write_logs(&error).into())
    }
}
