//! Why a function cannot be loaded or a call failed, each naming the function and what to fix.

/// A function's failure. The executor adds the subtask and the batch's first key.
#[derive(Debug, thiserror::Error)]
pub enum FunctionError {
    #[error("{function}: not WebAssembly (a component starts with the bytes \\0asm)")]
    NotWebAssembly { function: String },
    #[error(
        "{function}: a core WebAssembly module, not a component: build it as a component of the world raftstream:functions/stream-function (see functions/wit/)"
    )]
    CoreModule { function: String },
    #[error("{function}: {size_bytes} bytes, above the limit of {limit_bytes}")]
    TooLarge {
        function: String,
        size_bytes: u64,
        limit_bytes: u64,
    },
    #[error("{function}: cannot compile the component: {reason}")]
    Compile { function: String, reason: String },
    #[error(
        "{function}: cannot instantiate it in the sandbox (a component of another world, or one that imports WASI, which functions do not get: build JavaScript with --stub-wasi): {reason}"
    )]
    Instantiate { function: String, reason: String },
    #[error("{function}: does not export `{export}` with the type of the world raftstream:functions@{version}: {reason}", version = crate::WORLD_VERSION)]
    MissingExport {
        function: String,
        export: &'static str,
        reason: String,
    },
    #[error("{function}.{export}: {message}")]
    Guest {
        function: String,
        export: &'static str,
        message: String,
    },
    #[error("{function}.{export}: trapped: {message}{backtrace}")]
    Trap {
        function: String,
        export: &'static str,
        message: String,
        /// The guest's frames, each on its own line, when wasmtime has them.
        backtrace: String,
    },
    #[error("{function}.{export}: stopped after the call deadline of {timeout_ms} ms (an endless loop, or a batch too slow for the limit)")]
    Deadline {
        function: String,
        export: &'static str,
        timeout_ms: u64,
    },
    #[error("{function}.{export}: stopped at the memory limit of {limit_bytes} bytes")]
    MemoryLimit {
        function: String,
        export: &'static str,
        limit_bytes: usize,
    },
    #[error("{function}.{export}: returned {returned} answers for {expected} inputs")]
    AnswerCount {
        function: String,
        export: &'static str,
        expected: usize,
        returned: usize,
    },
    #[error("{function}.{export}: returned a malformed answer: {problem}")]
    MalformedAnswer {
        function: String,
        export: &'static str,
        problem: String,
    },
    #[error("{function}.{export}: a batch of {bytes} bytes in one column, above the 4 GiB the interface can address")]
    BatchTooLarge {
        function: String,
        export: &'static str,
        bytes: usize,
    },
    #[error("{function}: the instance failed before and cannot be called again")]
    Poisoned { function: String },
    #[error("compiled-function cache {path}: {reason}")]
    Cache { path: std::path::PathBuf, reason: String },
    #[error("function engine: {0}")]
    Engine(String),
}
