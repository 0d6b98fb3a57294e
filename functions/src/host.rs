//! The executor's one wasmtime engine: compiles components, checks them, and interrupts calls past
//! their deadline through a clock thread that advances the engine's epoch.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use wasmtime::component::{Component, Linker};
use wasmtime::{Config, Engine};

use crate::columns::LogLevel;
use crate::error::FunctionError;
use crate::instance::GuestContext;

/// How often the epoch advances: a call's deadline is a whole number of these.
pub(crate) const EPOCH_TICK: Duration = Duration::from_millis(10);

/// The preamble of every WebAssembly binary, and the version/layer word of a component and of a
/// core module after it.
const WASM_MAGIC: &[u8; 4] = b"\0asm";
const COMPONENT_LAYER: [u8; 4] = [0x0d, 0x00, 0x01, 0x00];
const CORE_MODULE_LAYER: [u8; 4] = [0x01, 0x00, 0x00, 0x00];

/// A component compiled for this host, with where it came from.
#[derive(Clone)]
pub struct CompiledFunction {
    pub(crate) component: Component,
    /// The function's name in its job, for errors and logs.
    pub name: String,
    pub sha256: String,
    /// How long compiling (or loading from the cache) took.
    pub compile_time: Duration,
    /// Whether the code came from the compiled cache instead of the compiler.
    pub from_cache: bool,
}

/// The sandbox every user function of an executor runs in.
pub struct FunctionHost {
    pub(crate) engine: Engine,
    pub(crate) linker: Linker<GuestContext>,
    compiles: AtomicU64,
    ticker: EpochTicker,
}

impl FunctionHost {
    /// An engine with epoch interruption and the `host` interface the guests may import, and its
    /// clock thread.
    pub fn new() -> Result<Arc<FunctionHost>, FunctionError> {
        let mut config = Config::new();
        config.epoch_interruption(true);
        config.cranelift_opt_level(wasmtime::OptLevel::Speed);
        if std::env::var_os("RAFTSTREAM_WASM_PERF_MAP").is_some() {
            // For profiling guests: `perf` names the functions of compiled components from
            // /tmp/perf-<pid>.map instead of showing bare addresses.
            config.profiler(wasmtime::ProfilingStrategy::PerfMap);
        }
        let engine = Engine::new(&config).map_err(|error| FunctionError::Engine(format!("{error:#}")))?;
        let mut linker = Linker::new(&engine);
        linker
            .instance(&format!("raftstream:functions/host@{}", crate::WORLD_VERSION))
            .and_then(|mut host| {
                host.func_wrap(
                    "log",
                    |mut store: wasmtime::StoreContextMut<'_, GuestContext>, (level, message): (LogLevel, String)| {
                        store.data_mut().log(level, &message);
                        Ok(())
                    },
                )
            })
            .map_err(|error| FunctionError::Engine(format!("{error:#}")))?;
        let ticker = EpochTicker::start(engine.clone())?;
        Ok(Arc::new(FunctionHost {
            engine,
            linker,
            compiles: AtomicU64::new(0),
            ticker,
        }))
    }

    /// Checks that `bytes` are a component and compiles them; `name` is the function's name for
    /// errors.
    pub fn compile(&self, name: &str, bytes: &[u8]) -> Result<CompiledFunction, FunctionError> {
        check_component_bytes(name, bytes)?;
        let started = Instant::now();
        let component = Component::new(&self.engine, bytes).map_err(|error| FunctionError::Compile {
            function: name.to_owned(),
            reason: format!("{error:#}"),
        })?;
        self.compiles.fetch_add(1, Ordering::Relaxed);
        Ok(CompiledFunction {
            component,
            name: name.to_owned(),
            sha256: crate::sha256_hex(bytes),
            compile_time: started.elapsed(),
            from_cache: false,
        })
    }

    /// How many components this host has compiled (not loaded from the cache) since it started.
    pub fn compiles(&self) -> u64 {
        self.compiles.load(Ordering::Relaxed)
    }

    /// Whether the clock thread still runs (it stops only when the host is dropped).
    pub fn clock_running(&self) -> bool {
        !self.ticker.stop.load(Ordering::Relaxed)
    }
}

/// Refuses what is not a component before the compiler sees it, with an error a user can act on.
pub fn check_component_bytes(name: &str, bytes: &[u8]) -> Result<(), FunctionError> {
    let (Some(magic), Some(layer)) = (bytes.get(0..4), bytes.get(4..8)) else {
        return Err(FunctionError::NotWebAssembly {
            function: name.to_owned(),
        });
    };
    if magic != WASM_MAGIC {
        return Err(FunctionError::NotWebAssembly {
            function: name.to_owned(),
        });
    }
    if layer == CORE_MODULE_LAYER {
        return Err(FunctionError::CoreModule {
            function: name.to_owned(),
        });
    }
    if layer != COMPONENT_LAYER {
        return Err(FunctionError::Compile {
            function: name.to_owned(),
            reason: format!("unknown WebAssembly version/layer {layer:02x?}"),
        });
    }
    Ok(())
}

/// Advances the engine's epoch every [`EPOCH_TICK`] on a thread of its own, which stops when the
/// host is dropped. A thread and not a tokio task: a guest call blocks the thread it runs on, and
/// the clock must move while every worker is busy in one.
struct EpochTicker {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl EpochTicker {
    fn start(engine: Engine) -> Result<EpochTicker, FunctionError> {
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let thread = std::thread::Builder::new()
            .name("function-epoch".to_owned())
            .spawn(move || {
                while !stopping.load(Ordering::Relaxed) {
                    std::thread::park_timeout(EPOCH_TICK);
                    engine.increment_epoch();
                }
            })
            .map_err(|error| FunctionError::Engine(format!("starting the epoch clock: {error}")))?;
        Ok(EpochTicker {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for EpochTicker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            thread.thread().unpark();
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_is_not_a_component_is_refused_by_name() {
        let host = FunctionHost::new().expect("host");
        let not_wasm = host.compile("f", b"def map(value): return value").err();
        assert!(
            matches!(not_wasm, Some(FunctionError::NotWebAssembly { .. })),
            "{not_wasm:?}"
        );
        let core = host.compile("f", b"\0asm\x01\0\0\0").err();
        assert!(matches!(core, Some(FunctionError::CoreModule { .. })), "{core:?}");
        let truncated = host.compile("f", b"\0asm\x0d\0\x01\0\x07").err();
        assert!(
            matches!(truncated, Some(FunctionError::Compile { .. })),
            "{truncated:?}"
        );
        assert!(host.clock_running());
        assert_eq!(host.compiles(), 0);
    }
}
