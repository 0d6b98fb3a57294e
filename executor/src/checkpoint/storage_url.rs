//! Choosing the checkpoint store from a URL, the way Flink's `state.checkpoints.dir` does:
//! `file:///shared/dir` (or a plain path) for a directory every executor can reach, `s3://bucket/prefix`
//! for object storage. S3 settings (endpoint, region, credentials, `AWS_ALLOW_HTTP` for a local peer)
//! come from the standard `AWS_*` environment variables.

use std::path::PathBuf;
use std::sync::Arc;

use object_store::aws::AmazonS3Builder;

use super::{CheckpointStore, CheckpointStoreError, LocalDirectoryStore, ObjectStorageStore, StateHandle};

/// A checkpoint store URL that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("checkpoint store {url:?}: {problem}")]
pub struct StorageConfigError {
    pub url: String,
    pub problem: String,
}

/// The store an executor writes checkpointed state to.
#[derive(Debug, Clone)]
pub enum CheckpointStorage {
    LocalDirectory { root: PathBuf, store: LocalDirectoryStore },
    Object { url: String, store: ObjectStorageStore },
}

impl CheckpointStorage {
    /// A local (or shared-filesystem) directory.
    pub fn local_directory(root: impl Into<PathBuf>) -> Self {
        let root = root.into();
        CheckpointStorage::LocalDirectory {
            store: LocalDirectoryStore::new(root.clone()),
            root,
        }
    }

    /// Parses `file:///dir`, a plain directory path, or `s3://bucket[/prefix]`.
    pub fn from_url(url: &str) -> Result<Self, StorageConfigError> {
        let config_error = |problem: String| StorageConfigError {
            url: url.to_owned(),
            problem,
        };
        let Some((scheme, rest)) = url.split_once("://") else {
            if url.trim().is_empty() {
                return Err(config_error("is empty".to_owned()));
            }
            return Ok(CheckpointStorage::local_directory(url));
        };
        match scheme {
            "file" => {
                if !rest.starts_with('/') {
                    return Err(config_error(
                        "a file URL needs an absolute path: file:///dir".to_owned(),
                    ));
                }
                Ok(CheckpointStorage::local_directory(rest))
            }
            "s3" => {
                let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
                if bucket.is_empty() {
                    return Err(config_error("names no bucket: s3://bucket/prefix".to_owned()));
                }
                let objects = AmazonS3Builder::from_env()
                    .with_bucket_name(bucket)
                    .build()
                    .map_err(|error| config_error(error.to_string()))?;
                let store = ObjectStorageStore::new(Arc::new(objects), prefix)
                    .map_err(|error| config_error(error.to_string()))?;
                Ok(CheckpointStorage::Object {
                    url: url.to_owned(),
                    store,
                })
            }
            other => Err(config_error(format!(
                "unsupported scheme {other:?}: use file:///dir, a directory path or s3://bucket/prefix"
            ))),
        }
    }

    /// Where the state goes, for logs and errors.
    pub fn describe(&self) -> String {
        match self {
            CheckpointStorage::LocalDirectory { root, .. } => root.display().to_string(),
            CheckpointStorage::Object { url, .. } => url.clone(),
        }
    }

    /// Writes, reads back and deletes a small object, so a wrong bucket, endpoint or credentials
    /// stop the executor at start with the store's own error instead of failing every checkpoint.
    pub async fn probe(&self, executor_id: &str) -> Result<(), CheckpointStoreError> {
        let location = format!("_probe/{executor_id}");
        let handle = self.put(&location, executor_id.as_bytes().to_vec()).await?;
        self.get(&handle).await?;
        self.delete(&location).await
    }
}

impl CheckpointStore for CheckpointStorage {
    async fn put(&self, location: &str, bytes: Vec<u8>) -> Result<StateHandle, CheckpointStoreError> {
        match self {
            CheckpointStorage::LocalDirectory { store, .. } => store.put(location, bytes).await,
            CheckpointStorage::Object { store, .. } => store.put(location, bytes).await,
        }
    }

    async fn read(&self, location: &str) -> Result<Vec<u8>, CheckpointStoreError> {
        match self {
            CheckpointStorage::LocalDirectory { store, .. } => store.read(location).await,
            CheckpointStorage::Object { store, .. } => store.read(location).await,
        }
    }

    async fn delete(&self, location: &str) -> Result<(), CheckpointStoreError> {
        match self {
            CheckpointStorage::LocalDirectory { store, .. } => store.delete(location).await,
            CheckpointStorage::Object { store, .. } => store.delete(location).await,
        }
    }

    async fn list(&self, prefix: &str) -> Result<Vec<String>, CheckpointStoreError> {
        match self {
            CheckpointStorage::LocalDirectory { store, .. } => store.list(prefix).await,
            CheckpointStorage::Object { store, .. } => store.list(prefix).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problem_of(url: &str) -> String {
        CheckpointStorage::from_url(url)
            .err()
            .map(|error| error.to_string())
            .unwrap_or_default()
    }

    #[test]
    fn urls_choose_the_store() {
        let directory = CheckpointStorage::from_url("file:///var/lib/raftstream/checkpoints").map(|s| s.describe());
        assert_eq!(directory.ok().as_deref(), Some("/var/lib/raftstream/checkpoints"));
        let plain = CheckpointStorage::from_url("shared/checkpoints").map(|s| s.describe());
        assert_eq!(plain.ok().as_deref(), Some("shared/checkpoints"));
        let bucket = CheckpointStorage::from_url("s3://raftstream/prod/checkpoints");
        assert!(matches!(bucket, Ok(CheckpointStorage::Object { .. })));
    }

    #[test]
    fn bad_urls_name_the_problem() {
        assert!(problem_of("").contains("is empty"));
        assert!(problem_of("file://relative/dir").contains("absolute path"));
        assert!(problem_of("s3:///prefix").contains("names no bucket"));
        let unsupported = problem_of("gs://bucket/prefix");
        assert!(unsupported.contains("unsupported scheme \"gs\""), "{unsupported}");
    }

    #[tokio::test]
    async fn a_writable_directory_passes_the_probe() -> Result<(), Box<dyn std::error::Error>> {
        let directory = tempfile::tempdir()?;
        let storage = CheckpointStorage::local_directory(directory.path().join("checkpoints"));
        storage.probe("executor-1").await?;
        assert!(!directory.path().join("checkpoints/_probe/executor-1").exists());

        let blocked = directory.path().join("a-file");
        std::fs::write(&blocked, b"not a directory")?;
        let error = CheckpointStorage::local_directory(&blocked)
            .probe("executor-1")
            .await
            .err();
        assert!(error.is_some(), "a store under a regular file cannot be written");
        Ok(())
    }
}
