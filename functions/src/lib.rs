//! User functions as WebAssembly components, run in a sandbox and called once per batch.
//!
//! - `wit/stream-function.wit`: the interface a function implements (map, flat-map, filter, key,
//!   reduce, process), versioned; a component exports any subset of it.
//! - [`FunctionHost`] (`host`): one wasmtime engine per executor, the clock that interrupts a
//!   call past its deadline, compiling and checking components.
//! - [`FunctionInstance`] (`instance`): one sandboxed instance per subtask with its memory limit,
//!   the batch calls, and a guest's failure turned into a [`FunctionError`] that names it.
//! - [`CompiledCache`] (`cache`): compiled code on disk by content hash, so a restart or rescale
//!   never compiles a function again.
//! - [`build`]: turns a JavaScript, Python or Rust source into a component with the installed tools.
//! - `columns`: the batches crossing the boundary, as columns of strings with their offsets.

pub mod build;
mod cache;
mod columns;
mod error;
mod host;
mod instance;

pub use cache::CompiledCache;
pub use columns::{EventView, Events, FannedOut, KeyedEvents, KeyedValues, OptionalStrings, Processed, Strings};
pub use error::FunctionError;
pub use host::{check_component_bytes, CompiledFunction, FunctionHost};
pub use instance::{Export, FunctionInstance, FunctionLimits};

/// The WIT package version this host implements; a component built against another major
/// version is refused by its import names.
pub const WORLD_VERSION: &str = "0.2.0";

/// The WIT world's text, for tools that build guests (the CLI writes it next to a source).
pub const WIT: &str = include_str!("../wit/stream-function.wit");

/// The SHA-256 of `bytes`, in lowercase hex: the name a function is stored and cached under.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(bytes);
    let mut text = String::with_capacity(64);
    for byte in digest {
        text.push(char::from_digit(u32::from(byte >> 4), 16).unwrap_or('0'));
        text.push(char::from_digit(u32::from(byte & 0xf), 16).unwrap_or('0'));
    }
    text
}
