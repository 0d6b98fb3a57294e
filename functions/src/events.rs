//! The values crossing the component boundary, as the WIT `types` interface declares them. The
//! host lowers borrowed views of its records (no copy of keys and values on the way in) and lifts
//! owned ones on the way out.

use wasmtime::component::{ComponentType, Lift, Lower};

/// An event a function returns.
#[derive(ComponentType, Lift, Lower, Debug, Clone, PartialEq, Eq)]
#[component(record)]
pub struct Event {
    pub key: String,
    pub value: String,
    #[component(name = "timestamp-ms")]
    pub timestamp_ms: i64,
}

/// An event handed to a function, borrowed from the engine's record.
#[derive(ComponentType, Lower, Debug, Clone, Copy)]
#[component(record)]
pub struct EventRef<'a> {
    pub key: &'a str,
    pub value: &'a str,
    #[component(name = "timestamp-ms")]
    pub timestamp_ms: i64,
}

/// One key's values of a batch with the key's accumulator before them (`reduce`).
#[derive(ComponentType, Lower, Debug, Clone)]
#[component(record)]
pub struct KeyedValuesRef<'a> {
    pub key: &'a str,
    pub state: Option<&'a str>,
    pub values: &'a [&'a str],
}

/// One key's events of a batch with the key's state before them (`process`).
#[derive(ComponentType, Lower, Debug, Clone)]
#[component(record)]
pub struct KeyedEventsRef<'a> {
    pub key: &'a str,
    pub state: Option<&'a str>,
    pub events: &'a [EventRef<'a>],
}

/// What `process` made of one key's events.
#[derive(ComponentType, Lift, Debug, Clone, PartialEq, Eq)]
#[component(record)]
pub struct Processed {
    /// The key's new state; `None` clears it.
    pub state: Option<String>,
    pub outputs: Vec<Event>,
}

/// A log line's level, as the `host` interface declares it.
#[derive(ComponentType, Lift, Debug, Clone, Copy, PartialEq, Eq)]
#[component(enum)]
#[repr(u8)]
#[allow(dead_code)] // made by lifting a guest's argument, never by name
pub(crate) enum LogLevel {
    #[component(name = "debug")]
    Debug,
    #[component(name = "info")]
    Info,
    #[component(name = "warn")]
    Warn,
    #[component(name = "error")]
    Error,
}
