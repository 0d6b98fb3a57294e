//! User functions on an executor: fetched from the checkpoint store by SHA-256 and verified,
//! compiled once per executor (in memory for every subtask, on disk for restarts), instantiated per
//! subtask; and the operators that call them once per batch.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use raftstream_api::messages::FunctionCalls;
use raftstream_api::spec::{function_location, FunctionRef, UdfCall, UdfExport};
use raftstream_functions::{
    CompiledCache, CompiledFunction, EventView, Events, FunctionError, FunctionHost, FunctionInstance, FunctionLimits,
    KeyedEvents, KeyedValues,
};
use tokio::sync::OnceCell;

use super::function_state::{FunctionStates, Grouped};
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
    /// Made on first use: an executor that never runs a function keeps no engine or epoch thread.
    host: Mutex<Option<Arc<FunctionHost>>>,
    cache: CompiledCache,
    store: Arc<CheckpointStorage>,
    /// One cell per component hash: concurrent deployments of one function wait for one compile.
    compiled: Mutex<HashMap<String, Arc<OnceCell<CompiledFunction>>>>,
    /// The most memory an instance may have, whatever a job asks for.
    max_memory_bytes: u64,
    /// Calls by (function, export), over every subtask that ran here.
    counters: Mutex<BTreeMap<(String, &'static str), Arc<CallCounters>>>,
    cache_loads: AtomicU64,
    /// The compiles in flight.
    compiles: tokio_util::task::TaskTracker,
}

/// What the calls of one function's export did: on this executor (for `/metrics`), or in one
/// subtask (for the job's status), which counts into the executor's too.
#[derive(Debug, Default)]
pub struct CallCounters {
    pub calls: AtomicU64,
    pub records: AtomicU64,
    pub errors: AtomicU64,
    pub nanos: AtomicU64,
    /// The executor's counters a subtask's count also goes to.
    parent: Option<Arc<CallCounters>>,
}

impl CallCounters {
    /// A subtask's counters, counting into `parent` as well.
    pub fn for_subtask(parent: Arc<CallCounters>) -> Arc<CallCounters> {
        Arc::new(CallCounters {
            parent: Some(parent),
            ..CallCounters::default()
        })
    }

    /// Counts one call of `records` records that took from `started` until now.
    fn count<T, E>(&self, records: usize, started: Instant, outcome: &Result<T, E>) {
        let nanos = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.add(records as u64, nanos, outcome.is_err());
    }

    fn add(&self, records: u64, nanos: u64, failed: bool) {
        self.calls.fetch_add(1, Ordering::Relaxed);
        self.records.fetch_add(records, Ordering::Relaxed);
        self.nanos.fetch_add(nanos, Ordering::Relaxed);
        if failed {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
        if let Some(parent) = &self.parent {
            parent.add(records, nanos, failed);
        }
    }
}

/// One subtask's use of a function's export: what its status reports.
#[derive(Debug, Clone)]
pub struct SubtaskFunction {
    pub function: String,
    pub export: UdfExport,
    pub counters: Arc<CallCounters>,
    /// How long this executor took to compile the function (or load it from its disk cache).
    pub compile_ms: u64,
    pub from_cache: bool,
}

impl SubtaskFunction {
    /// The calls so far, as reported to the leader.
    pub fn calls(&self) -> FunctionCalls {
        FunctionCalls {
            function: self.function.clone(),
            export: self.export,
            calls: self.counters.calls.load(Ordering::Relaxed),
            records: self.counters.records.load(Ordering::Relaxed),
            errors: self.counters.errors.load(Ordering::Relaxed),
            call_nanos: self.counters.nanos.load(Ordering::Relaxed),
            compile_ms: self.compile_ms,
            from_cache: self.from_cache,
        }
    }
}

/// How a function became ready on this executor.
#[derive(Debug, Clone, Copy)]
pub struct Readiness {
    pub compile_ms: u64,
    pub from_cache: bool,
}

/// One line of [`FunctionRuntime::call_totals`].
#[derive(Debug, Clone, PartialEq)]
pub struct CallTotals {
    pub function: String,
    pub export: &'static str,
    pub calls: u64,
    pub records: u64,
    pub errors: u64,
    pub seconds: f64,
}

impl FunctionRuntime {
    /// A runtime whose compiled functions are cached in `cache_dir`.
    pub fn new(
        store: Arc<CheckpointStorage>,
        cache_dir: &Path,
        max_memory_bytes: u64,
    ) -> Result<FunctionRuntime, FunctionError> {
        Ok(FunctionRuntime {
            host: Mutex::new(None),
            cache: CompiledCache::open(cache_dir)?,
            store,
            compiled: Mutex::new(HashMap::new()),
            max_memory_bytes,
            counters: Mutex::new(BTreeMap::new()),
            cache_loads: AtomicU64::new(0),
            compiles: tokio_util::task::TaskTracker::new(),
        })
    }

    /// The engine, made the first time a function is needed.
    fn host(&self) -> Result<Arc<FunctionHost>, FunctionError> {
        let mut host = self.host.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(host) = &*host {
            return Ok(host.clone());
        }
        let made = FunctionHost::new()?;
        *host = Some(made.clone());
        Ok(made)
    }

    /// How many compiled functions were loaded from the disk cache instead of compiled.
    pub fn cache_loads(&self) -> u64 {
        self.cache_loads.load(Ordering::Relaxed)
    }

    /// The counters of `function`'s `export`, shared by every subtask calling it here.
    pub fn counters(&self, function: &str, export: UdfExport) -> Arc<CallCounters> {
        let mut counters = self.counters.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        counters
            .entry((function.to_owned(), export.wit_name()))
            .or_default()
            .clone()
    }

    /// Every function's calls on this executor so far.
    pub fn call_totals(&self) -> Vec<CallTotals> {
        let counters = self.counters.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        counters
            .iter()
            .map(|((function, export), counted)| CallTotals {
                function: function.clone(),
                export,
                calls: counted.calls.load(Ordering::Relaxed),
                records: counted.records.load(Ordering::Relaxed),
                errors: counted.errors.load(Ordering::Relaxed),
                seconds: counted.nanos.load(Ordering::Relaxed) as f64 / 1e9,
            })
            .collect()
    }

    /// How many components this executor compiled since it started (not loaded from its cache or
    /// reused in memory).
    pub fn compiles(&self) -> u64 {
        let host = self.host.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        host.as_ref().map_or(0, |host| host.compiles())
    }

    /// A fresh instance of function `name` for one subtask.
    pub async fn instantiate(
        self: &Arc<Self>,
        name: &str,
        function: &FunctionRef,
    ) -> Result<(FunctionInstance, Readiness), FunctionLoadError> {
        let compiled = self.compiled(name, function).await?;
        let readiness = Readiness {
            compile_ms: u64::try_from(compiled.compile_time.as_millis()).unwrap_or(u64::MAX),
            from_cache: compiled.from_cache,
        };
        let limits = FunctionLimits {
            memory_bytes: usize::try_from(function.memory_limit_bytes.min(self.max_memory_bytes)).unwrap_or(usize::MAX),
            call_timeout: std::time::Duration::from_millis(function.call_timeout_ms),
        };
        let host = self.host()?;
        let instance = crate::blocking::off_the_workers(|| FunctionInstance::new(&host, &compiled, limits))?;
        Ok((instance, readiness))
    }

    /// Makes sure `function` is compiled here (fetched, verified, compiled or loaded from the disk
    /// cache), so that instantiating it is quick.
    pub async fn prepare(self: &Arc<Self>, name: &str, function: &FunctionRef) -> Result<(), FunctionLoadError> {
        self.compiled(name, function).await.map(drop)
    }

    async fn compiled(
        self: &Arc<Self>,
        name: &str,
        function: &FunctionRef,
    ) -> Result<CompiledFunction, FunctionLoadError> {
        let cell = {
            let mut compiled = self.compiled.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            compiled.entry(function.sha256.clone()).or_default().clone()
        };
        let runtime = self.clone();
        let (name_owned, function_owned) = (name.to_owned(), function.clone());
        // In a task of its own: a subtask cancelled while it waits (its job restarting, say)
        // leaves the compile running, and its next deployment finds it done instead of
        // starting it again.
        let ready = self
            .compiles
            .spawn(async move {
                cell.get_or_try_init(|| runtime.load(&name_owned, &function_owned))
                    .await
                    .cloned()
            })
            .await
            .map_err(|join_error| FunctionLoadError::Interrupted {
                function: name.to_owned(),
                problem: join_error.to_string(),
            })??;
        let mut compiled = ready;
        compiled.name = name.to_owned();
        Ok(compiled)
    }

    /// Loads one function from the disk cache, or else fetches, verifies and compiles it. The
    /// cache is asked first, by the job's hash: a restart or rescale reads neither the store nor
    /// the component's bytes (18 MB for a Python function).
    async fn load(&self, name: &str, function: &FunctionRef) -> Result<CompiledFunction, FunctionLoadError> {
        let host = self.host()?;
        let interrupted = |join_error: tokio::task::JoinError| FunctionLoadError::Interrupted {
            function: name.to_owned(),
            problem: join_error.to_string(),
        };
        let (cache, cache_host, name_owned, sha256) = (
            self.cache.clone(),
            host.clone(),
            name.to_owned(),
            function.sha256.clone(),
        );
        let cached = tokio::task::spawn_blocking(move || cache.load(&cache_host, &name_owned, &sha256))
            .await
            .map_err(interrupted)?;
        let compiled = match cached {
            Some(cached) => {
                self.cache_loads.fetch_add(1, Ordering::Relaxed);
                cached
            }
            None => {
                let bytes = self.fetch(name, function).await?;
                let (cache, name_owned, sha256) = (self.cache.clone(), name.to_owned(), function.sha256.clone());
                tokio::task::spawn_blocking(move || cache.compile_and_store(&host, &name_owned, &sha256, &bytes))
                    .await
                    .map_err(interrupted)??
            }
        };
        tracing::info!(
            function = name,
            sha256 = %function.sha256,
            from_cache = compiled.from_cache,
            compile_ms = compiled.compile_time.as_millis() as u64,
            "function ready"
        );
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
    instance: FunctionInstance,
    /// The function and export it calls, with the subtask's counters.
    pub(crate) calls: SubtaskFunction,
    /// The batch as the function gets it, its buffers kept from one batch to the next.
    batch: Events,
    /// The batch's records, the buffer kept from one batch to the next.
    records: Vec<Record>,
}

/// Runs one call off the async workers (it may run for seconds), counting it.
fn counted<T>(
    counters: &CallCounters,
    records: usize,
    call: impl FnOnce() -> Result<T, FunctionError>,
) -> Result<T, FunctionError> {
    let started = Instant::now();
    let outcome = crate::blocking::off_the_workers(call);
    counters.count(records, started, &outcome);
    outcome
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

fn event_view(record: &Record) -> EventView<'_> {
    EventView {
        key: &record.key,
        value: &record.value,
        timestamp_ms: record.timestamp_ms,
    }
}

/// An emitted event as a record.
pub fn record_of(event: EventView<'_>) -> Record {
    Record {
        key: event.key.into(),
        value: event.value.into(),
        timestamp_ms: event.timestamp_ms,
    }
}

impl UdfTransform {
    pub fn new(instance: FunctionInstance, calls: SubtaskFunction) -> UdfTransform {
        UdfTransform {
            instance,
            calls,
            batch: Events::default(),
            records: Vec::new(),
        }
    }

    /// Runs `records` through the function as one batch; what it emits goes to `emit`, in
    /// input order.
    pub fn apply_all(
        &mut self,
        records: impl Iterator<Item = Record>,
        emit: &mut impl FnMut(Record),
    ) -> Result<(), UdfCallError> {
        let mut batch = std::mem::take(&mut self.records);
        batch.extend(records);
        let outcome = self.apply_batch(&mut batch, emit);
        batch.clear();
        self.records = batch;
        outcome
    }

    /// Runs one batch through the function; what it emits goes to `emit`, in input order.
    /// `records` is left empty when the call succeeds.
    pub fn apply_batch(
        &mut self,
        records: &mut Vec<Record>,
        emit: &mut impl FnMut(Record),
    ) -> Result<(), UdfCallError> {
        if records.is_empty() {
            return Ok(());
        }
        let batch = &mut self.batch;
        batch.clear();
        for record in records.iter() {
            batch.push(&record.key, &record.value, record.timestamp_ms);
        }
        let (instance, batch, counters) = (&mut self.instance, &self.batch, &self.calls.counters);
        match self.calls.export {
            UdfExport::Map => {
                let values = counted(counters, records.len(), || instance.map(batch))
                    .map_err(|error| call_error(error, records))?;
                for (mut record, value) in records.drain(..).zip(values.iter()) {
                    record.value = value.into();
                    emit(record);
                }
            }
            UdfExport::FlatMap => {
                let fanned = counted(counters, records.len(), || instance.flat_map(batch))
                    .map_err(|error| call_error(error, records))?;
                for (index, record) in records.iter().enumerate() {
                    for value in fanned.outputs_of(index) {
                        emit(Record {
                            key: record.key.clone(),
                            value: value.into(),
                            timestamp_ms: record.timestamp_ms,
                        });
                    }
                }
                records.clear();
            }
            UdfExport::Filter => {
                let keep = counted(counters, records.len(), || instance.filter(batch))
                    .map_err(|error| call_error(error, records))?;
                for (record, keep) in records.drain(..).zip(keep) {
                    if keep {
                        emit(record);
                    }
                }
            }
            UdfExport::Key => {
                let keys = counted(counters, records.len(), || instance.key(batch))
                    .map_err(|error| call_error(error, records))?;
                for (mut record, key) in records.drain(..).zip(keys.iter()) {
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
    instance: FunctionInstance,
    pub(crate) state: FunctionStates,
    pub(crate) calls: SubtaskFunction,
    /// The grouped batch as the function gets it, its buffers kept from one batch to the next.
    grouped: Grouped,
    values: KeyedValues,
    events: KeyedEvents,
    /// The batch's records, the buffer kept from one batch to the next.
    records: Vec<Record>,
}

impl KeyedUdf {
    pub fn new(instance: FunctionInstance, calls: SubtaskFunction) -> KeyedUdf {
        KeyedUdf {
            instance,
            state: FunctionStates::default(),
            calls,
            grouped: Grouped::default(),
            values: KeyedValues::default(),
            events: KeyedEvents::default(),
            records: Vec::new(),
        }
    }

    /// Folds `records` as one batch (see [`KeyedUdf::apply_batch`]); what it emits goes to
    /// `emit` as borrowed events (a sink right after writes them without making records).
    pub fn apply_all(
        &mut self,
        records: impl Iterator<Item = Record>,
        emit: &mut impl FnMut(EventView<'_>),
    ) -> Result<(), UdfCallError> {
        let mut batch = std::mem::take(&mut self.records);
        batch.extend(records);
        let outcome = self.apply_batch(&batch, emit);
        batch.clear();
        self.records = batch;
        outcome
    }

    /// Folds one batch: groups its records by key (in first-seen order), calls the function once,
    /// stores each key's new state and emits, for a reduce, each key's new accumulator once (the
    /// value after the batch's records, at the time of the key's last record), for a process,
    /// what it returned.
    pub fn apply_batch(
        &mut self,
        records: &[Record],
        emit: &mut impl FnMut(EventView<'_>),
    ) -> Result<(), UdfCallError> {
        if records.is_empty() {
            return Ok(());
        }
        let grouped = &mut self.grouped;
        self.state.group(records, grouped);
        let (instance, counters) = (&mut self.instance, &self.calls.counters);
        match self.calls.export {
            UdfExport::Reduce => {
                let batch = &mut self.values;
                batch.clear();
                for (key, slot, members) in grouped.groups(records) {
                    let values = members.iter().map(|&at| records[at as usize].value.as_str());
                    batch.push_group(key, self.state.get(slot), values);
                }
                let batch = &self.values;
                let accumulators = counted(counters, records.len(), || instance.reduce(batch))
                    .map_err(|error| call_error(error, records))?;
                for ((key, slot, members), accumulator) in grouped.groups(records).zip(accumulators.iter()) {
                    let timestamp_ms = members.last().map_or(0, |&at| records[at as usize].timestamp_ms);
                    self.state.set(slot, accumulator);
                    emit(EventView {
                        key,
                        value: accumulator,
                        timestamp_ms,
                    });
                }
            }
            UdfExport::Process => {
                let batch = &mut self.events;
                batch.clear();
                for (key, slot, members) in grouped.groups(records) {
                    let events = members.iter().map(|&at| event_view(&records[at as usize]));
                    batch.push_group(key, self.state.get(slot), events);
                }
                let batch = &self.events;
                let processed = counted(counters, records.len(), || instance.process(batch))
                    .map_err(|error| call_error(error, records))?;
                for (index, (key, slot, _)) in grouped.groups(records).enumerate() {
                    match processed.state_of(index) {
                        Some(state) => self.state.set(slot, state),
                        None => self.state.remove(key, slot),
                    }
                    processed.outputs_of(index).for_each(&mut *emit);
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// The state as checkpoint bytes, by key group.
    pub fn snapshot(&self, max_parallelism: u32) -> Vec<u8> {
        self.state.snapshot(max_parallelism)
    }

    /// Adds the entries of `bytes` whose key group lies in `groups`.
    pub fn restore(
        &mut self,
        operator: &str,
        bytes: &[u8],
        groups: &std::ops::Range<u32>,
    ) -> Result<(), super::operators::OperatorError> {
        self.state.restore(operator, bytes, groups)
    }

    /// Makes room for `additional` keys before restoring them.
    pub fn reserve(&mut self, additional: usize) {
        self.state.reserve(additional);
    }
}

/// The call an operator makes, if it calls a user function.
pub fn udf_call(config: &raftstream_api::spec::OperatorConfig) -> Option<&UdfCall> {
    match config {
        raftstream_api::spec::OperatorConfig::Udf(call) => Some(call),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_function_in_the_disk_cache_is_loaded_without_reading_the_store() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = Arc::new(CheckpointStorage::local_directory(dir.path().join("store")));
        // The smallest component there is: no imports, no exports, nothing to run.
        let bytes = b"\0asm\x0d\x00\x01\x00".to_vec();
        let function = FunctionRef {
            sha256: raftstream_functions::sha256_hex(&bytes),
            size_bytes: bytes.len() as u64,
            language: "wasm".to_owned(),
            memory_limit_bytes: 16 << 20,
            call_timeout_ms: 1_000,
        };
        store
            .put(&function_location(&function.sha256), bytes)
            .await
            .expect("stored");
        let cache_dir = dir.path().join("cache");
        let first = Arc::new(FunctionRuntime::new(store.clone(), &cache_dir, 64 << 20).expect("runtime"));
        first.prepare("f", &function).await.expect("fetched and compiled");
        assert_eq!((first.compiles(), first.cache_loads()), (1, 0));

        // The store loses the bytes; an executor restarted with its cache does not need them.
        store
            .delete(&function_location(&function.sha256))
            .await
            .expect("deleted");
        let restarted = Arc::new(FunctionRuntime::new(store.clone(), &cache_dir, 64 << 20).expect("runtime"));
        restarted.prepare("f", &function).await.expect("loaded from the cache");
        assert_eq!((restarted.compiles(), restarted.cache_loads()), (0, 1));

        // Without the cache it must fetch them, and says what it could not read.
        let fresh = Arc::new(FunctionRuntime::new(store, &dir.path().join("other-cache"), 64 << 20).expect("runtime"));
        let error = fresh.prepare("f", &function).await.expect_err("nothing to fetch");
        assert!(
            matches!(&error, FunctionLoadError::Fetch { function, .. } if function == "f"),
            "{error}"
        );
    }
}
