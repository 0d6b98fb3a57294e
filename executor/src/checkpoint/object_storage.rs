//! A checkpoint store on shared object storage (S3 or anything the `object_store` crate speaks), so
//! that executors on different machines can restore each other's subtasks. An object PUT is atomic:
//! a crash leaves the whole object or none, which is what the local store gets from rename.

use std::sync::Arc;

use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, PutPayload};

use super::{checksum, CheckpointStore, CheckpointStoreError, StateHandle};

/// Checkpoint state under one prefix of an object store.
#[derive(Debug, Clone)]
pub struct ObjectStorageStore {
    objects: Arc<dyn ObjectStore>,
    prefix: ObjectPath,
}

impl ObjectStorageStore {
    /// A store keeping every location under `prefix` (may be empty) of `objects`.
    pub fn new(objects: Arc<dyn ObjectStore>, prefix: &str) -> Result<Self, CheckpointStoreError> {
        let prefix =
            ObjectPath::parse(prefix.trim_matches('/')).map_err(|error| CheckpointStoreError::InvalidLocation {
                location: prefix.to_owned(),
                problem: error.to_string(),
            })?;
        Ok(ObjectStorageStore { objects, prefix })
    }

    /// The object path of a location; the same rules as the local store, so a location valid in
    /// one store is valid in the other.
    fn path_of(&self, location: &str) -> Result<ObjectPath, CheckpointStoreError> {
        let invalid = |problem: &str| CheckpointStoreError::InvalidLocation {
            location: location.to_owned(),
            problem: problem.to_owned(),
        };
        if location.is_empty() || location.starts_with('/') {
            return Err(invalid("must be a relative path without '..'"));
        }
        let mut path = self.prefix.clone();
        for part in location.split('/') {
            if part.is_empty() || part == "." || part == ".." {
                return Err(invalid("must be a relative path without '..'"));
            }
            path = path.child(part);
        }
        Ok(path)
    }
}

fn object_error(location: &str) -> impl FnOnce(object_store::Error) -> CheckpointStoreError + '_ {
    move |source| match source {
        object_store::Error::NotFound { .. } => CheckpointStoreError::Missing {
            location: location.to_owned(),
        },
        source => CheckpointStoreError::ObjectStore {
            location: location.to_owned(),
            problem: source.to_string(),
        },
    }
}

impl CheckpointStore for ObjectStorageStore {
    async fn put(&self, location: &str, bytes: Vec<u8>) -> Result<StateHandle, CheckpointStoreError> {
        let path = self.path_of(location)?;
        let handle = StateHandle {
            location: location.to_owned(),
            size_bytes: bytes.len() as u64,
            checksum: crate::blocking::off_the_workers(|| checksum(&bytes)),
        };
        // Not found on a write means the bucket is missing: say so rather than "state missing".
        self.objects
            .put(&path, PutPayload::from(bytes))
            .await
            .map_err(|source| CheckpointStoreError::ObjectStore {
                location: location.to_owned(),
                problem: source.to_string(),
            })?;
        Ok(handle)
    }

    async fn read(&self, location: &str) -> Result<Vec<u8>, CheckpointStoreError> {
        let path = self.path_of(location)?;
        let object = self.objects.get(&path).await.map_err(object_error(location))?;
        let bytes = object.bytes().await.map_err(object_error(location))?;
        Ok(bytes.to_vec())
    }

    async fn delete(&self, location: &str) -> Result<(), CheckpointStoreError> {
        let path = self.path_of(location)?;
        match self.objects.delete(&path).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(source) => Err(object_error(location)(source)),
        }
    }

    async fn list(&self, prefix: &str) -> Result<Vec<String>, CheckpointStoreError> {
        use futures::StreamExt;
        let path = self.path_of(prefix)?;
        let mut objects = self.objects.list(Some(&path));
        let mut found = Vec::new();
        while let Some(object) = objects.next().await {
            let object = object.map_err(object_error(prefix))?;
            let relative: Option<Vec<String>> = object
                .location
                .prefix_match(&self.prefix)
                .map(|parts| parts.map(|part| part.as_ref().to_owned()).collect());
            if let Some(parts) = relative {
                found.push(parts.join("/"));
            }
        }
        Ok(found)
    }
}

#[cfg(test)]
mod tests {
    use object_store::memory::InMemory;

    use super::super::{error_text, state_location};
    use super::*;

    #[tokio::test]
    async fn state_round_trips_under_the_prefix_and_damage_is_named() -> Result<(), Box<dyn std::error::Error>> {
        let objects = Arc::new(InMemory::new());
        let store = ObjectStorageStore::new(objects.clone(), "/checkpoints/team-a/")?;
        let location = state_location("job-1", 7, "counts", 1);
        let handle = store.put(&location, b"key group state".to_vec()).await?;
        assert_eq!(store.get(&handle).await?, b"key group state");
        let stored = ObjectPath::parse("checkpoints/team-a/job-1/chk-7/counts-1.state")?;
        assert_eq!(objects.get(&stored).await?.bytes().await?.as_ref(), b"key group state");

        objects
            .put(&stored, PutPayload::from_static(b"key group stat3"))
            .await?;
        let corrupted = error_text(store.get(&handle).await);
        assert!(
            corrupted.contains("corrupted") && corrupted.contains("chk-7/counts-1"),
            "{corrupted}"
        );

        store.delete(&location).await?;
        store.delete(&location).await?;
        let missing = error_text(store.get(&handle).await);
        assert!(missing.contains("missing"), "{missing}");
        Ok(())
    }

    #[tokio::test]
    async fn listing_names_a_jobs_objects_relative_to_the_prefix() -> Result<(), Box<dyn std::error::Error>> {
        let objects = Arc::new(InMemory::new());
        let store = ObjectStorageStore::new(objects.clone(), "checkpoints/team-a")?;
        let other_team = ObjectStorageStore::new(objects, "checkpoints/team-b")?;
        for (job, checkpoint) in [("job-1", 7), ("job-1", 8), ("job-2", 7)] {
            store
                .put(&state_location(job, checkpoint, "counts", 0), vec![1])
                .await?;
        }
        other_team
            .put(&state_location("job-1", 9, "counts", 0), vec![1])
            .await?;
        let mut listed = store.list("job-1").await?;
        listed.sort();
        assert_eq!(listed, vec!["job-1/chk-7/counts-0.state", "job-1/chk-8/counts-0.state"]);
        assert!(store.list("job-9").await?.is_empty());
        Ok(())
    }

    #[tokio::test]
    async fn locations_cannot_escape_the_prefix() -> Result<(), Box<dyn std::error::Error>> {
        let store = ObjectStorageStore::new(Arc::new(InMemory::new()), "checkpoints")?;
        for location in ["../etc/passwd", "/etc/passwd", "", "a/../../b", "a//b"] {
            let error = error_text(store.put(location, Vec::new()).await);
            assert!(error.contains("invalid state location"), "{location}: {error}");
        }
        Ok(())
    }
}
