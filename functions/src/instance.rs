//! One sandboxed instance of a function: its store with the memory cap and the log budget, the
//! batch calls, and every way a call can fail turned into a [`FunctionError`].

use std::sync::Arc;
use std::time::{Duration, Instant};

use wasmtime::component::{ComponentExportIndex, Instance};
use wasmtime::Store;

use crate::columns::{Answer, Batch, Events, FannedOut, KeyedEvents, KeyedValues, LogLevel, Processed, Strings};
use crate::error::FunctionError;
use crate::host::{CompiledFunction, FunctionHost, EPOCH_TICK};

/// The exports of the world, each the function an operator kind calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Export {
    Map,
    FlatMap,
    Filter,
    Key,
    Reduce,
    Process,
}

impl Export {
    pub const ALL: [Export; 6] = [
        Export::Map,
        Export::FlatMap,
        Export::Filter,
        Export::Key,
        Export::Reduce,
        Export::Process,
    ];

    /// The export's name in the WIT world.
    pub fn wit_name(self) -> &'static str {
        match self {
            Export::Map => "map",
            Export::FlatMap => "flat-map",
            Export::Filter => "filter",
            Export::Key => "key",
            Export::Reduce => "reduce",
            Export::Process => "process",
        }
    }

    /// The export of that WIT name: the world's names are the one contract between the job model
    /// (which names the export an operator calls) and the host.
    pub fn from_wit_name(name: &str) -> Option<Export> {
        Export::ALL.into_iter().find(|export| export.wit_name() == name)
    }
}

impl std::fmt::Display for Export {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.wit_name())
    }
}

/// What one instance may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FunctionLimits {
    /// Linear memory of all the instance's memories together.
    pub memory_bytes: usize,
    /// How long one batch call may run before it is stopped.
    pub call_timeout: Duration,
}

impl FunctionLimits {
    pub const DEFAULT_MEMORY_BYTES: usize = 64 << 20;
    pub const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_secs(5);
}

impl Default for FunctionLimits {
    fn default() -> Self {
        FunctionLimits {
            memory_bytes: Self::DEFAULT_MEMORY_BYTES,
            call_timeout: Self::DEFAULT_CALL_TIMEOUT,
        }
    }
}

/// Log lines a guest may write per second, and in one burst; the rest are counted and dropped.
const LOG_LINES_PER_SECOND: f64 = 20.0;
const LOG_BURST: f64 = 100.0;
/// A log line is cut to this many bytes.
const LOG_LINE_BYTES: usize = 2_048;

/// The store's data: the memory cap and the guest's log budget.
pub(crate) struct GuestContext {
    function: Arc<str>,
    memory_limit_bytes: usize,
    memory_bytes: usize,
    /// Set when a growth past the cap was refused: the trap that follows is the limit's.
    memory_limit_hit: bool,
    log_tokens: f64,
    log_refilled: Instant,
    logs_dropped: u64,
    /// The last error line the guest wrote during the current call, kept even when the log is
    /// rate-limited: a guest that aborts (a Rust panic) says why there, and the trap carries it.
    last_error_line: Option<String>,
}

/// Table elements an instance may have (a table entry is a function reference; interpreters
/// hold a few thousand).
const MAX_TABLE_ELEMENTS: usize = 1 << 20;

impl wasmtime::ResourceLimiter for GuestContext {
    fn memory_growing(&mut self, current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        let total = self.memory_bytes - current.min(self.memory_bytes) + desired;
        if total > self.memory_limit_bytes {
            self.memory_limit_hit = true;
            // An error, not `false`: a guest that sees a failed growth may retry or spin; this
            // stops the call at the limit.
            return Err(wasmtime::format_err!(
                "memory limit of {} bytes reached",
                self.memory_limit_bytes
            ));
        }
        self.memory_bytes = total;
        Ok(true)
    }

    fn table_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        Ok(desired <= MAX_TABLE_ELEMENTS)
    }
}

impl GuestContext {
    pub(crate) fn log(&mut self, level: LogLevel, message: &str) {
        let mut end = message.len().min(LOG_LINE_BYTES);
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        let line = &message[..end];
        if level == LogLevel::Error {
            self.last_error_line = Some(line.to_owned());
        }
        let now = Instant::now();
        let refill = now.duration_since(self.log_refilled).as_secs_f64() * LOG_LINES_PER_SECOND;
        self.log_tokens = (self.log_tokens + refill).min(LOG_BURST);
        self.log_refilled = now;
        if self.log_tokens < 1.0 {
            self.logs_dropped += 1;
            return;
        }
        self.log_tokens -= 1.0;
        let function = &*self.function;
        let dropped = std::mem::take(&mut self.logs_dropped);
        match level {
            LogLevel::Debug => tracing::debug!(function, dropped, "guest: {line}"),
            LogLevel::Info => tracing::info!(function, dropped, "guest: {line}"),
            LogLevel::Warn => tracing::warn!(function, dropped, "guest: {line}"),
            LogLevel::Error => tracing::error!(function, dropped, "guest: {line}"),
        }
    }
}

/// A function instantiated in its own store, ready for batch calls. Not shared: each subtask has
/// its own, and a failed call leaves it unusable (the subtask fails and makes a new one).
pub struct FunctionInstance {
    store: Store<GuestContext>,
    instance: Instance,
    exports: [Option<ComponentExportIndex>; 6],
    function: Arc<str>,
    limits: FunctionLimits,
    poisoned: bool,
    _host: Arc<FunctionHost>,
}

impl FunctionInstance {
    /// Instantiates `function` under `limits`. Fails when the component imports anything but
    /// the `host` interface (WASI, another world).
    pub fn new(
        host: &Arc<FunctionHost>,
        function: &CompiledFunction,
        limits: FunctionLimits,
    ) -> Result<FunctionInstance, FunctionError> {
        let name: Arc<str> = Arc::from(function.name.as_str());
        let mut store = Store::new(
            &host.engine,
            GuestContext {
                function: name.clone(),
                memory_limit_bytes: limits.memory_bytes,
                memory_bytes: 0,
                memory_limit_hit: false,
                log_tokens: LOG_BURST,
                log_refilled: Instant::now(),
                logs_dropped: 0,
                last_error_line: None,
            },
        );
        store.limiter(|context| context);
        store.epoch_deadline_trap();
        store.set_epoch_deadline(deadline_ticks(limits.call_timeout));
        let instance = host
            .linker
            .instantiate(&mut store, &function.component)
            .map_err(|error| {
                if store.data().memory_limit_hit {
                    FunctionError::MemoryLimit {
                        function: name.to_string(),
                        export: "(instantiation)",
                        limit_bytes: limits.memory_bytes,
                    }
                } else {
                    FunctionError::Instantiate {
                        function: name.to_string(),
                        reason: format!("{error:#}"),
                    }
                }
            })?;
        let exports = Export::ALL.map(|export| instance.get_export_index(&mut store, None, export.wit_name()));
        Ok(FunctionInstance {
            store,
            instance,
            exports,
            function: name,
            limits,
            poisoned: false,
            _host: host.clone(),
        })
    }

    /// Checks that the component implements `export` with the world's type: calls it with an
    /// empty batch, which a guest library answers with an error when the user did not write it.
    pub fn check_export(&mut self, export: Export) -> Result<(), FunctionError> {
        let checked = match export {
            Export::Map => self.map(&Events::default()).map(drop),
            Export::FlatMap => self.flat_map(&Events::default()).map(drop),
            Export::Filter => self.filter(&Events::default()).map(drop),
            Export::Key => self.key(&Events::default()).map(drop),
            Export::Reduce => self.reduce(&KeyedValues::default()).map(drop),
            Export::Process => self.process(&KeyedEvents::default()).map(drop),
        };
        checked.map_err(|error| match error {
            FunctionError::Guest { message, .. } => FunctionError::MissingExport {
                function: self.function.to_string(),
                export: export.wit_name(),
                reason: message,
            },
            other => other,
        })
    }

    /// Each event's new value.
    pub fn map(&mut self, batch: &Events) -> Result<Strings, FunctionError> {
        self.call_batch(Export::Map, batch)
    }

    /// Each event's output values, in order.
    pub fn flat_map(&mut self, batch: &Events) -> Result<FannedOut, FunctionError> {
        self.call_batch(Export::FlatMap, batch)
    }

    /// Whether each event is kept.
    pub fn filter(&mut self, batch: &Events) -> Result<Vec<bool>, FunctionError> {
        let keep: Vec<u8> = self.call_batch(Export::Filter, batch)?;
        Ok(keep.into_iter().map(|byte| byte != 0).collect())
    }

    /// Each event's key.
    pub fn key(&mut self, batch: &Events) -> Result<Strings, FunctionError> {
        self.call_batch(Export::Key, batch)
    }

    /// Each group's new accumulator.
    pub fn reduce(&mut self, groups: &KeyedValues) -> Result<Strings, FunctionError> {
        self.call_batch(Export::Reduce, groups)
    }

    /// Each group's new state and outputs.
    pub fn process(&mut self, groups: &KeyedEvents) -> Result<Processed, FunctionError> {
        self.call_batch(Export::Process, groups)
    }

    /// The function's name in its job.
    pub fn function(&self) -> &str {
        &self.function
    }

    /// Calls a batch export, and checks that its answer has one entry per input and offsets
    /// that hold together.
    fn call_batch<B: Batch, A: Answer>(&mut self, export: Export, batch: &B) -> Result<A, FunctionError> {
        if batch.largest_column() > u32::MAX as usize {
            return Err(FunctionError::BatchTooLarge {
                function: self.function.to_string(),
                export: export.wit_name(),
                bytes: batch.largest_column(),
            });
        }
        let answer: A = self.call(export, batch)?;
        if answer.entries() != batch.inputs() {
            return Err(FunctionError::AnswerCount {
                function: self.function.to_string(),
                export: export.wit_name(),
                expected: batch.inputs(),
                returned: answer.entries(),
            });
        }
        answer.check().map_err(|problem| FunctionError::MalformedAnswer {
            function: self.function.to_string(),
            export: export.wit_name(),
            problem,
        })?;
        Ok(answer)
    }

    fn call<B: Batch, A: Answer>(&mut self, export: Export, batch: &B) -> Result<A, FunctionError> {
        if self.poisoned {
            return Err(FunctionError::Poisoned {
                function: self.function.to_string(),
            });
        }
        let missing = |reason: String| FunctionError::MissingExport {
            function: self.function.to_string(),
            export: export.wit_name(),
            reason,
        };
        let Some(index) = &self.exports[export as usize] else {
            return Err(missing("no such export".to_owned()));
        };
        let typed = self
            .instance
            .get_typed_func::<(&B,), (Result<A, String>,)>(&mut self.store, index)
            .map_err(|error| missing(format!("{error:#}")))?;
        self.store.set_epoch_deadline(deadline_ticks(self.limits.call_timeout));
        self.store.data_mut().last_error_line = None;
        match typed.call(&mut self.store, (batch,)) {
            Ok((Ok(output),)) => Ok(output),
            Ok((Err(message),)) => Err(FunctionError::Guest {
                function: self.function.to_string(),
                export: export.wit_name(),
                message,
            }),
            Err(error) => {
                // A trapped instance must not be entered again.
                self.poisoned = true;
                Err(self.classify_trap(export, error))
            }
        }
    }

    fn classify_trap(&self, export: Export, error: wasmtime::Error) -> FunctionError {
        let function = self.function.to_string();
        let export = export.wit_name();
        if self.store.data().memory_limit_hit {
            return FunctionError::MemoryLimit {
                function,
                export,
                limit_bytes: self.limits.memory_bytes,
            };
        }
        if error.downcast_ref::<wasmtime::Trap>() == Some(&wasmtime::Trap::Interrupt) {
            return FunctionError::Deadline {
                function,
                export,
                timeout_ms: u64::try_from(self.limits.call_timeout.as_millis()).unwrap_or(u64::MAX),
            };
        }
        let backtrace = error
            .downcast_ref::<wasmtime::WasmBacktrace>()
            .map(|trace| {
                trace
                    .frames()
                    .iter()
                    .take(16)
                    .map(|frame| format!("\n    at {}", frame.func_name().unwrap_or("<unnamed>")))
                    .collect::<String>()
            })
            .unwrap_or_default();
        let mut message = match error.downcast_ref::<wasmtime::Trap>() {
            Some(trap) => trap.to_string(),
            None => format!("{error}"),
        };
        if let Some(said) = &self.store.data().last_error_line {
            message = format!("{said} ({message})");
        }
        FunctionError::Trap {
            function,
            export,
            message,
            backtrace,
        }
    }
}

/// The epoch ticks of a call deadline, at least one.
fn deadline_ticks(timeout: Duration) -> u64 {
    let ticks = timeout.as_nanos() / EPOCH_TICK.as_nanos().max(1);
    u64::try_from(ticks).unwrap_or(u64::MAX).max(1)
}
