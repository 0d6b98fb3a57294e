//! Where checkpointed state lives. A [`StateHandle`] (location, size, checksum) is what goes into
//! the Raft log; the bytes go to a [`CheckpointStore`]. Reading back verifies size and checksum, so
//! a corrupted or missing file is detected and named instead of silently restoring wrong state.

mod local_directory;
mod object_storage;
mod storage_url;

use std::future::Future;

pub use local_directory::LocalDirectoryStore;
pub use object_storage::ObjectStorageStore;
pub use storage_url::{CheckpointStorage, StorageConfigError};

/// Where one subtask's state of one checkpoint was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateHandle {
    /// Relative to the store's root: `<job>/chk-<id>/<operator>-<subtask>.state`.
    pub location: String,
    pub size_bytes: u64,
    /// FNV-1a 64 of the bytes.
    pub checksum: u64,
}

/// Why state could not be written or read back.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointStoreError {
    #[error("state {location} is missing from the checkpoint store")]
    Missing { location: String },
    #[error("state {location} is corrupted: {problem}")]
    Corrupted { location: String, problem: String },
    #[error("invalid state location {location:?}: {problem}")]
    InvalidLocation { location: String, problem: String },
    #[error("checkpoint store I/O on {location}: {source}")]
    Io { location: String, source: std::io::Error },
    /// The object store's message only: its errors already repeat their causes in their text.
    #[error("object storage on {location}: {problem}")]
    ObjectStore { location: String, problem: String },
}

/// FNV-1a 64: cheap, stable, good enough to catch torn or flipped bytes.
pub fn checksum(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in bytes {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

/// The location of one subtask's state in one checkpoint.
pub fn state_location(job_id: &str, checkpoint_id: u64, operator_id: &str, subtask_index: u32) -> String {
    format!("{job_id}/chk-{checkpoint_id}/{operator_id}-{subtask_index}.state")
}

/// Durable storage for checkpointed state: a local directory by default; shared object storage
/// when executors run on several machines.
pub trait CheckpointStore: Send + Sync {
    /// Writes `bytes` durably at `location` and returns the handle to record.
    fn put(
        &self,
        location: &str,
        bytes: Vec<u8>,
    ) -> impl Future<Output = Result<StateHandle, CheckpointStoreError>> + Send;
    /// Reads the state behind `handle`, verifying its size and checksum.
    fn get(&self, handle: &StateHandle) -> impl Future<Output = Result<Vec<u8>, CheckpointStoreError>> + Send {
        async move {
            let bytes = self.read(&handle.location).await?;
            verify(handle, &bytes)?;
            Ok(bytes)
        }
    }
    /// Reads the bytes at `location` as they are; the caller verifies them (a user function
    /// against its SHA-256).
    fn read(&self, location: &str) -> impl Future<Output = Result<Vec<u8>, CheckpointStoreError>> + Send;
    /// Deletes the state at `location` (a checkpoint that is no longer retained, or was aborted);
    /// deleting what is not there is not an error.
    fn delete(&self, location: &str) -> impl Future<Output = Result<(), CheckpointStoreError>> + Send;
    /// Every location under `prefix` (a job's state), in no particular order; nothing there is an
    /// empty list, not an error.
    fn list(&self, prefix: &str) -> impl Future<Output = Result<Vec<String>, CheckpointStoreError>> + Send;
}

/// Deletes `locations`, logging those that cannot go rather than failing: removing state nobody
/// needs is cleanup, which must not stop a job. Returns how many were deleted.
pub async fn delete_each(store: &impl CheckpointStore, locations: &[String]) -> usize {
    let mut deleted = 0;
    for location in locations {
        match store.delete(location).await {
            Ok(()) => deleted += 1,
            Err(error) => {
                tracing::warn!(error = %raftstream_observability::chain(&error), "could not delete obsolete checkpoint state")
            }
        }
    }
    deleted
}

/// Verifies bytes read back against their handle.
pub fn verify(handle: &StateHandle, bytes: &[u8]) -> Result<(), CheckpointStoreError> {
    if bytes.len() as u64 != handle.size_bytes {
        return Err(CheckpointStoreError::Corrupted {
            location: handle.location.clone(),
            problem: format!("{} bytes, expected {}", bytes.len(), handle.size_bytes),
        });
    }
    let actual = crate::blocking::off_the_workers(|| checksum(bytes));
    if actual != handle.checksum {
        return Err(CheckpointStoreError::Corrupted {
            location: handle.location.clone(),
            problem: format!("checksum {actual:016x}, expected {:016x}", handle.checksum),
        });
    }
    Ok(())
}

/// The message of a failed store call, empty if it succeeded: what the tests assert on.
#[cfg(test)]
pub(crate) fn error_text<T>(result: Result<T, CheckpointStoreError>) -> String {
    result.err().map(|error| error.to_string()).unwrap_or_default()
}
