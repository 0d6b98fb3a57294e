//! User functions on an executor: fetched from the checkpoint store by SHA-256 and verified,
//! compiled once per executor (in memory for every subtask, on disk for restarts), instantiated per
//! subtask; and the operators that call them once per batch.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use raftstream_api::spec::{function_location, FunctionRef, UdfCall, UdfExport};
use raftstream_functions::{
    CompiledCache, CompiledFunction, Event, EventRef, FunctionError, FunctionHost, FunctionInstance, FunctionLimits,
    KeyedValuesRef,
};
use tokio::sync::OnceCell;

use super::key_groups::KeyedMap;
use super::operators::KeyedMapState;
use super::record::Record;
use crate::checkpoint::{CheckpointStorage, CheckpointStore};

/// Why a function could not be made ready for a subtask.
#[derive(Debug, thiserror::Error)]
pub enum FunctionLoadError {
    #[error("function {function:?} (sha256 {sha256}) cannot be read from the checkpoint store: {problem}")]
    Fetch {
        function: String,
        sha256: String,
        problem: String,
    },
    #[error(
        "function {function:?}: the bytes in the checkpoint store do not match the job's hash (sha256 {found}, {size_bytes} bytes; expected {expected}, {expected_size} bytes)"
    )]
    HashMismatch {
        function: String,
        expected: String,
        expected_size: u64,
        found: String,
        size_bytes: u64,
    },
    #[error(transparent)]
    Function(#[from] FunctionError),
    #[error("function {function:?}: compiling was interrupted: {problem}")]
    Interrupted { function: String, problem: String },
}

/// The executor's function host, its compiled cache and the components compiled so far.
pub struct FunctionRuntime {
    host: Arc<FunctionHost>,
    cache: CompiledCache,
    store: Arc<CheckpointStorage>,
    /// One cell per component hash: concurrent deployments of one function wait for one compile.
    compiled: Mutex<HashMap<String, Arc<OnceCell<CompiledFunction>>>>,
    /// The most memory an instance may have, whatever a job asks for.
    max_memory_bytes: u64,
}

impl FunctionRuntime {
    /// A runtime whose compiled functions are cached in `cache_dir`.
    pub fn new(
        store: Arc<CheckpointStorage>,
        cache_dir: &Path,
        max_memory_bytes: u64,
    ) -> Result<FunctionRuntime, FunctionError> {
        Ok(FunctionRuntime {
            host: FunctionHost::new()?,
            cache: CompiledCache::open(cache_dir)?,
            store,
            compiled: Mutex::new(HashMap::new()),
            max_memory_bytes,
        })
    }

    /// How many components this executor compiled since it started (not loaded from its cache or
    /// reused in memory).
    pub fn compiles(&self) -> u64 {
        self.host.compiles()
    }

    /// A fresh instance of function `name` for one subtask.
    pub async fn instantiate(&self, name: &str, function: &FunctionRef) -> Result<FunctionInstance, FunctionLoadError> {
        let compiled = self.compiled(name, function).await?;
        let limits = FunctionLimits {
            memory_bytes: usize::try_from(function.memory_limit_bytes.min(self.max_memory_bytes)).unwrap_or(usize::MAX),
            call_timeout: std::time::Duration::from_millis(function.call_timeout_ms),
        };
        let host = self.host.clone();
        Ok(crate::blocking::off_the_workers(|| {
            FunctionInstance::new(&host, &compiled, limits)
        })?)
    }

    async fn compiled(&self, name: &str, function: &FunctionRef) -> Result<CompiledFunction, FunctionLoadError> {
        let cell = {
            let mut compiled = self.compiled.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            compiled.entry(function.sha256.clone()).or_default().clone()
        };
        let ready = cell
            .get_or_try_init(|| async {
                let host = self.host.clone();
                let cache = self.cache.clone();
                let bytes = self.fetch(name, function).await?;
                let (name_owned, sha256) = (name.to_owned(), function.sha256.clone());
                let compiled = tokio::task::spawn_blocking(move || {
                    cache.load_or_compile(&host, &name_owned, &sha256, || Ok(bytes))
                })
                .await
                .map_err(|join_error| FunctionLoadError::Interrupted {
                    function: name.to_owned(),
                    problem: join_error.to_string(),
                })??;
                tracing::info!(
                    function = name,
                    sha256 = %function.sha256,
                    from_cache = compiled.from_cache,
                    compile_ms = compiled.compile_time.as_millis() as u64,
                    "function ready"
                );
                Ok::<_, FunctionLoadError>(compiled)
            })
            .await?;
        let mut compiled = ready.clone();
        compiled.name = name.to_owned();
        Ok(compiled)
    }

    /// The component's bytes from the checkpoint store, verified against the job's hash and size.
    async fn fetch(&self, name: &str, function: &FunctionRef) -> Result<Vec<u8>, FunctionLoadError> {
        let bytes = self
            .store
            .read(&function_location(&function.sha256))
            .await
            .map_err(|error| FunctionLoadError::Fetch {
                function: name.to_owned(),
                sha256: function.sha256.clone(),
                problem: error.to_string(),
            })?;
        let found = crate::blocking::off_the_workers(|| raftstream_functions::sha256_hex(&bytes));
        if found != function.sha256 || bytes.len() as u64 != function.size_bytes {
            return Err(FunctionLoadError::HashMismatch {
                function: name.to_owned(),
                expected: function.sha256.clone(),
                expected_size: function.size_bytes,
                found,
                size_bytes: bytes.len() as u64,
            });
        }
        Ok(bytes)
    }
}

/// A stateless operator calling a user function (map, flat_map, filter or key_by) once per batch.
pub struct UdfTransform {
    pub(crate) instance: FunctionInstance,
    pub(crate) export: UdfExport,
}

/// A failed call with the batch's first key, for the subtask's error.
#[derive(Debug, thiserror::Error)]
#[error("{source} (batch of {batch_records} records, first key {first_key:?})")]
pub struct UdfCallError {
    pub source: FunctionError,
    pub first_key: String,
    pub batch_records: usize,
}

fn call_error(source: FunctionError, records: &[Record]) -> UdfCallError {
    UdfCallError {
        source,
        first_key: records.first().map(|record| record.key.to_string()).unwrap_or_default(),
        batch_records: records.len(),
    }
}

fn event_refs(records: &[Record]) -> Vec<EventRef<'_>> {
    records
        .iter()
        .map(|record| EventRef {
            key: &record.key,
            value: &record.value,
            timestamp_ms: record.timestamp_ms,
        })
        .collect()
}

fn record_of(event: Event) -> Record {
    Record {
        key: event.key.into(),
        value: event.value.into(),
        timestamp_ms: event.timestamp_ms,
    }
}

impl UdfTransform {
    /// Runs one batch through the function; what it emits goes to `emit`, in input order.
    pub fn apply_batch(&mut self, records: Vec<Record>, emit: &mut impl FnMut(Record)) -> Result<(), UdfCallError> {
        if records.is_empty() {
            return Ok(());
        }
        let events = event_refs(&records);
        let instance = &mut self.instance;
        let export = self.export;
        match export {
            UdfExport::Map => {
                let out = crate::blocking::off_the_workers(|| instance.map(&events))
                    .map_err(|error| call_error(error, &records))?;
                out.into_iter().map(record_of).for_each(emit);
            }
            UdfExport::FlatMap => {
                let out = crate::blocking::off_the_workers(|| instance.flat_map(&events))
                    .map_err(|error| call_error(error, &records))?;
                out.into_iter().flatten().map(record_of).for_each(emit);
            }
            UdfExport::Filter => {
                let keep = crate::blocking::off_the_workers(|| instance.filter(&events))
                    .map_err(|error| call_error(error, &records))?;
                drop(events);
                for (record, keep) in records.into_iter().zip(keep) {
                    if keep {
                        emit(record);
                    }
                }
            }
            UdfExport::Key => {
                let keys = crate::blocking::off_the_workers(|| instance.key(&events))
                    .map_err(|error| call_error(error, &records))?;
                drop(events);
                for (mut record, key) in records.into_iter().zip(keys) {
                    record.key = key.into();
                    emit(record);
                }
            }
            UdfExport::Reduce | UdfExport::Process => {}
        }
        Ok(())
    }
}

/// A keyed operator calling a user `reduce` or `process`: the engine keeps each key's state
/// (checkpointed and rescaled by key group like a count's) and hands it to the function with
/// the key's records of the batch, grouped so that one call covers the whole batch.
pub struct KeyedUdf {
    pub(crate) instance: FunctionInstance,
    pub(crate) export: UdfExport,
    pub(crate) state: KeyedMap<Vec<u8>>,
}

impl KeyedUdf {
    /// Folds one batch: groups its records by key (in first-seen order), calls the function once,
    /// stores each key's new state and emits, for a reduce, each key's new accumulator once (the
    /// value after the batch's records), for a process, what it returned.
    pub fn apply_batch(&mut self, records: Vec<Record>, emit: &mut impl FnMut(Record)) -> Result<(), UdfCallError> {
        if records.is_empty() {
            return Ok(());
        }
        let mut group_of: HashMap<&str, usize> = HashMap::new();
        let mut grouped: Vec<Vec<EventRef<'_>>> = Vec::new();
        let mut keys: Vec<&str> = Vec::new();
        for record in &records {
            let index = *group_of.entry(record.key.as_str()).or_insert_with(|| {
                grouped.push(Vec::new());
                keys.push(record.key.as_str());
                grouped.len() - 1
            });
            grouped[index].push(EventRef {
                key: &record.key,
                value: &record.value,
                timestamp_ms: record.timestamp_ms,
            });
        }
        let groups: Vec<KeyedValuesRef<'_>> = keys
            .iter()
            .zip(&grouped)
            .map(|(key, events)| KeyedValuesRef {
                key,
                state: self.state.get(*key).map(Vec::as_slice),
                events,
            })
            .collect();
        let instance = &mut self.instance;
        match self.export {
            UdfExport::Reduce => {
                let accumulators = crate::blocking::off_the_workers(|| instance.reduce(&groups))
                    .map_err(|error| call_error(error, &records))?;
                for ((key, events), accumulator) in keys.iter().zip(&grouped).zip(accumulators) {
                    let value = String::from_utf8_lossy(&accumulator).into_owned();
                    self.state.insert((*key).into(), accumulator);
                    emit(Record {
                        key: (*key).into(),
                        value: value.into(),
                        timestamp_ms: events.last().map_or(0, |event| event.timestamp_ms),
                    });
                }
            }
            UdfExport::Process => {
                let processed = crate::blocking::off_the_workers(|| instance.process(&groups))
                    .map_err(|error| call_error(error, &records))?;
                for (key, result) in keys.iter().zip(processed) {
                    match result.state {
                        Some(state) => {
                            self.state.insert((*key).into(), state);
                        }
                        None => {
                            self.state.remove(*key);
                        }
                    }
                    result.outputs.into_iter().map(record_of).for_each(&mut *emit);
                }
            }
            _ => {}
        }
        Ok(())
    }
}

impl KeyedMapState for KeyedUdf {
    type Value = Vec<u8>;

    fn entries(&self) -> &KeyedMap<Vec<u8>> {
        &self.state
    }

    fn entries_mut(&mut self) -> &mut KeyedMap<Vec<u8>> {
        &mut self.state
    }
}

/// The call an operator makes, if it calls a user function.
pub fn udf_call(config: &raftstream_api::spec::OperatorConfig) -> Option<&UdfCall> {
    match config {
        raftstream_api::spec::OperatorConfig::Udf(call) => Some(call),
        _ => None,
    }
}
