//! Compiled functions on disk, by content hash and engine: a restart or a rescale loads native code
//! in milliseconds instead of compiling an interpreter for seconds (a Python component takes
//! about 16 s to compile here).
//!
//! A file is `MAGIC | sha256 of the payload (32 bytes) | payload`, the payload being wasmtime's
//! serialized component. It is named `<component sha256>-<engine fingerprint>.cwasm`, so another
//! wasmtime build or configuration never reads it, and written to a temporary name then renamed,
//! so a crash leaves no half file under the real name.

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use sha2::Digest;
use wasmtime::component::Component;

use crate::error::FunctionError;
use crate::host::{CompiledFunction, FunctionHost};

const MAGIC: &[u8; 8] = b"RSCWASM1";
const CHECKSUM_BYTES: usize = 32;

/// A directory of compiled functions.
#[derive(Debug, Clone)]
pub struct CompiledCache {
    dir: PathBuf,
}

impl CompiledCache {
    /// The cache in `dir`, created when missing.
    pub fn open(dir: &Path) -> Result<CompiledCache, FunctionError> {
        std::fs::create_dir_all(dir).map_err(|error| cache_error(dir, error))?;
        Ok(CompiledCache { dir: dir.to_owned() })
    }

    /// The function whose component is `bytes` (of hash `sha256`, already verified by the
    /// caller), from the cache when it holds it, else compiled and stored. A cache file that is
    /// damaged is replaced, never trusted.
    pub fn load_or_compile(
        &self,
        host: &Arc<FunctionHost>,
        name: &str,
        sha256: &str,
        bytes: impl FnOnce() -> Result<Vec<u8>, FunctionError>,
    ) -> Result<CompiledFunction, FunctionError> {
        match self.load(host, name, sha256) {
            Some(cached) => Ok(cached),
            None => self.compile_and_store(host, name, sha256, &bytes()?),
        }
    }

    /// The function of hash `sha256` when the cache holds it, intact and for this engine; a
    /// damaged or unusable file is logged and left for [`Self::compile_and_store`] to replace.
    pub fn load(&self, host: &Arc<FunctionHost>, name: &str, sha256: &str) -> Option<CompiledFunction> {
        let path = self.path_of(host, sha256);
        let started = Instant::now();
        match read_verified(&path) {
            Ok(Some(payload)) => match deserialize(host, &payload) {
                Ok(component) => {
                    return Some(CompiledFunction {
                        component,
                        name: name.to_owned(),
                        sha256: sha256.to_owned(),
                        compile_time: started.elapsed(),
                        from_cache: true,
                    })
                }
                Err(reason) => {
                    tracing::warn!(path = %path.display(), %reason, "compiled function unusable: compiling again")
                }
            },
            Ok(None) => {}
            Err(reason) => {
                tracing::warn!(path = %path.display(), %reason, "compiled function damaged: compiling again")
            }
        }
        None
    }

    /// Compiles the component `bytes` (of hash `sha256`, already verified by the caller) and
    /// stores the compiled code for the next load.
    pub fn compile_and_store(
        &self,
        host: &Arc<FunctionHost>,
        name: &str,
        sha256: &str,
        bytes: &[u8],
    ) -> Result<CompiledFunction, FunctionError> {
        let path = self.path_of(host, sha256);
        let compiled = host.compile(name, bytes)?;
        let payload = compiled
            .component
            .serialize()
            .map_err(|error| cache_error(&path, format!("{error:#}")))?;
        write_atomically(&path, &payload)?;
        Ok(compiled)
    }

    fn path_of(&self, host: &FunctionHost, sha256: &str) -> PathBuf {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        host.engine.precompile_compatibility_hash().hash(&mut hasher);
        self.dir.join(format!("{sha256}-{:016x}.cwasm", hasher.finish()))
    }
}

/// The payload of the file at `path` when its checksum holds; `None` when there is no file.
fn read_verified(path: &Path) -> Result<Option<Vec<u8>>, String> {
    let contents = match std::fs::read(path) {
        Ok(contents) => contents,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(error.to_string()),
    };
    let header = MAGIC.len() + CHECKSUM_BYTES;
    if contents.len() < header || &contents[..MAGIC.len()] != MAGIC {
        return Err("not a compiled-function file".to_owned());
    }
    let (checksum, payload) = contents[MAGIC.len()..].split_at(CHECKSUM_BYTES);
    if sha2::Sha256::digest(payload).as_slice() != checksum {
        return Err("checksum mismatch".to_owned());
    }
    Ok(Some(payload.to_vec()))
}

/// Loads native code this host compiled and serialized earlier.
#[allow(unsafe_code)]
fn deserialize(host: &FunctionHost, payload: &[u8]) -> Result<Component, String> {
    // SAFETY: wasmtime requires the bytes to come from `Component::serialize` of a compatible
    // engine, unmodified. They do: only this cache writes the directory, the file name carries
    // the engine's compatibility fingerprint (wasmtime checks its header again), and the
    // payload's SHA-256 was just verified against the one written beside it.
    unsafe { Component::deserialize(&host.engine, payload) }.map_err(|error| format!("{error:#}"))
}

fn write_atomically(path: &Path, payload: &[u8]) -> Result<(), FunctionError> {
    let temporary = path.with_extension(format!("tmp{}", std::process::id()));
    let mut contents = Vec::with_capacity(MAGIC.len() + CHECKSUM_BYTES + payload.len());
    contents.extend_from_slice(MAGIC);
    contents.extend_from_slice(&sha2::Sha256::digest(payload));
    contents.extend_from_slice(payload);
    std::fs::write(&temporary, &contents).map_err(|error| cache_error(&temporary, error))?;
    std::fs::rename(&temporary, path).map_err(|error| cache_error(path, error))
}

fn cache_error(path: &Path, reason: impl std::fmt::Display) -> FunctionError {
    FunctionError::Cache {
        path: path.to_owned(),
        reason: reason.to_string(),
    }
}
