//! A checkpoint store in a local directory: each file written to a temporary name, synced, renamed
//! into place and its directory synced, so a crash leaves either the whole file or none.

use std::path::{Component, Path, PathBuf};

use super::{checksum, CheckpointStore, CheckpointStoreError, StateHandle};

/// Checkpoint state under one root directory.
#[derive(Debug, Clone)]
pub struct LocalDirectoryStore {
    root: PathBuf,
}

impl LocalDirectoryStore {
    /// A store rooted at `root` (created on first write).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        LocalDirectoryStore { root: root.into() }
    }

    /// Resolves a location inside the root, refusing anything that could escape it.
    fn path_of(&self, location: &str) -> Result<PathBuf, CheckpointStoreError> {
        let relative = Path::new(location);
        let safe = !location.is_empty()
            && relative
                .components()
                .all(|component| matches!(component, Component::Normal(_)));
        if !safe {
            return Err(CheckpointStoreError::InvalidLocation {
                location: location.to_owned(),
                problem: "must be a relative path without '..'".to_owned(),
            });
        }
        Ok(self.root.join(relative))
    }
}

fn io_error(location: &str) -> impl FnOnce(std::io::Error) -> CheckpointStoreError + '_ {
    move |source| CheckpointStoreError::Io {
        location: location.to_owned(),
        source,
    }
}

/// How often a write starts again after its directory vanished under it.
const DIRECTORY_RACE_ATTEMPTS: usize = 16;

/// Writes `bytes` to `path` durably. `delete` removes a directory the moment its last file goes,
/// so a directory this write just found or created can be removed by another writer's delete
/// before the temporary file lands in it (`create_dir_all` then fails with "File exists" or the
/// create with "not found"); once the temporary file is in, the directory is not empty and stays.
/// Both failures mean "try again", and each retry follows a delete that made progress.
fn write_durably(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut attempt = 1;
    loop {
        match write_once(path, bytes) {
            Err(error)
                if attempt < DIRECTORY_RACE_ATTEMPTS
                    && matches!(
                        error.kind(),
                        std::io::ErrorKind::NotFound | std::io::ErrorKind::AlreadyExists
                    ) =>
            {
                attempt += 1;
            }
            written => return written,
        }
    }
}

fn write_once(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let directory = path
        .parent()
        .ok_or_else(|| std::io::Error::other("state path has no parent directory"))?;
    std::fs::create_dir_all(directory)?;
    let file_name = path
        .file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_default();
    let temporary = directory.join(format!(".{file_name}.tmp"));
    let mut file = std::fs::File::create(&temporary)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&temporary, path)?;
    std::fs::File::open(directory)?.sync_all()
}

impl CheckpointStore for LocalDirectoryStore {
    async fn put(&self, location: &str, bytes: Vec<u8>) -> Result<StateHandle, CheckpointStoreError> {
        let path = self.path_of(location)?;
        let handle = StateHandle {
            location: location.to_owned(),
            size_bytes: bytes.len() as u64,
            checksum: crate::blocking::off_the_workers(|| checksum(&bytes)),
        };
        tokio::task::spawn_blocking(move || write_durably(&path, &bytes))
            .await
            .map_err(|join_error| CheckpointStoreError::Io {
                location: location.to_owned(),
                source: std::io::Error::other(join_error.to_string()),
            })?
            .map_err(io_error(location))?;
        Ok(handle)
    }

    async fn read(&self, location: &str) -> Result<Vec<u8>, CheckpointStoreError> {
        let path = self.path_of(location)?;
        match tokio::fs::read(&path).await {
            Ok(bytes) => Ok(bytes),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Err(CheckpointStoreError::Missing {
                location: location.to_owned(),
            }),
            Err(error) => Err(io_error(location)(error)),
        }
    }

    async fn delete(&self, location: &str) -> Result<(), CheckpointStoreError> {
        let path = self.path_of(location)?;
        match tokio::fs::remove_file(&path).await {
            Ok(()) => {}
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
            Err(error) => return Err(io_error(location)(error)),
        }
        // The checkpoint's directory goes with its last file, and the job's with its last
        // checkpoint (each fails harmlessly while others remain).
        if let Some(directory) = path.parent() {
            if tokio::fs::remove_dir(directory).await.is_ok() {
                if let Some(job_directory) = directory.parent().filter(|parent| *parent != self.root) {
                    let _ = tokio::fs::remove_dir(job_directory).await;
                }
            }
        }
        Ok(())
    }

    async fn list(&self, prefix: &str) -> Result<Vec<String>, CheckpointStoreError> {
        let directory = self.path_of(prefix)?;
        let root = self.root.clone();
        let mut found = Vec::new();
        tokio::task::spawn_blocking(move || walk(&directory, &root, &mut found).map(|()| found))
            .await
            .map_err(|join_error| CheckpointStoreError::Io {
                location: prefix.to_owned(),
                source: std::io::Error::other(join_error.to_string()),
            })?
            .map_err(io_error(prefix))
    }
}

/// Adds the files under `directory` to `found` as locations relative to `root`, skipping the
/// temporary files of writes in progress.
fn walk(directory: &Path, root: &Path, found: &mut Vec<String>) -> std::io::Result<()> {
    let entries = match std::fs::read_dir(directory) {
        Ok(entries) => entries,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(error) => return Err(error),
    };
    for entry in entries {
        let entry = entry?;
        let path = entry.path();
        if entry.file_type()?.is_dir() {
            walk(&path, root, found)?;
        } else if !entry.file_name().to_string_lossy().starts_with('.') {
            let relative = path.strip_prefix(root).map_err(std::io::Error::other)?;
            let parts: Vec<String> = relative
                .components()
                .map(|part| part.as_os_str().to_string_lossy().into_owned())
                .collect();
            found.push(parts.join("/"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::{error_text, state_location};
    use super::*;

    #[tokio::test]
    async fn state_round_trips_and_damage_is_named() -> Result<(), Box<dyn std::error::Error>> {
        let directory = tempfile::tempdir()?;
        let store = LocalDirectoryStore::new(directory.path());
        let location = state_location("job-1", 7, "counts", 1);
        let handle = store.put(&location, b"key group state".to_vec()).await?;
        assert_eq!(store.get(&handle).await?, b"key group state");

        std::fs::write(directory.path().join(&location), b"key group stat3")?;
        let corrupted = error_text(store.get(&handle).await);
        assert!(
            corrupted.contains("corrupted") && corrupted.contains("chk-7/counts-1"),
            "{corrupted}"
        );

        std::fs::write(directory.path().join(&location), b"short")?;
        let truncated = error_text(store.get(&handle).await);
        assert!(truncated.contains("5 bytes, expected 15"), "{truncated}");

        store.delete(&location).await?;
        store.delete(&location).await?;
        assert!(
            !directory.path().join("job-1/chk-7").exists(),
            "the empty checkpoint directory goes too"
        );
        let missing = error_text(store.get(&handle).await);
        assert!(missing.contains("missing"), "{missing}");
        Ok(())
    }

    #[tokio::test]
    async fn listing_names_every_file_of_a_job_and_nothing_else() -> Result<(), Box<dyn std::error::Error>> {
        let directory = tempfile::tempdir()?;
        let store = LocalDirectoryStore::new(directory.path());
        for (job, checkpoint, operator) in [("job-1", 7, "counts"), ("job-1", 8, "counts"), ("job-2", 7, "counts")] {
            store
                .put(&state_location(job, checkpoint, operator, 0), vec![1])
                .await?;
        }
        // A write in progress is not state yet.
        std::fs::write(directory.path().join("job-1/chk-8/.counts-1.state.tmp"), b"half")?;
        let mut listed = store.list("job-1").await?;
        listed.sort();
        assert_eq!(listed, vec!["job-1/chk-7/counts-0.state", "job-1/chk-8/counts-0.state"]);
        assert!(store.list("job-9").await?.is_empty());
        assert!(error_text(store.list("../job-1").await).contains("invalid state location"));
        Ok(())
    }

    /// Executors starting together each probe `_probe/<id>` and delete it, and a delete takes its
    /// directory when it empties: a write must not fail because another writer's delete removed the
    /// directory it had just found or made (seen in CI as "File exists" at an executor's start).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn writers_sharing_a_directory_that_deletes_remove_never_fail() -> Result<(), Box<dyn std::error::Error>> {
        let directory = tempfile::tempdir()?;
        let store = LocalDirectoryStore::new(directory.path());
        let mut writers = tokio::task::JoinSet::new();
        for writer in 0..4 {
            let store = store.clone();
            writers.spawn(async move {
                let location = format!("_probe/executor-{writer}");
                for round in 0..400u32 {
                    let handle = store.put(&location, round.to_le_bytes().to_vec()).await?;
                    store.get(&handle).await?;
                    store.delete(&location).await?;
                }
                Ok::<(), CheckpointStoreError>(())
            });
        }
        while let Some(finished) = writers.join_next().await {
            finished??;
        }
        assert!(
            !directory.path().join("_probe").exists(),
            "the last delete took the directory"
        );
        Ok(())
    }

    #[tokio::test]
    async fn locations_cannot_escape_the_root() {
        let store = LocalDirectoryStore::new("/tmp/raftstream-store-root");
        for location in ["../etc/passwd", "/etc/passwd", "", "a/../../b"] {
            let error = error_text(store.put(location, Vec::new()).await);
            assert!(error.contains("invalid state location"), "{location}: {error}");
        }
    }
}
