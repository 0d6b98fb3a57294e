// Raftstream's Rust guest library. `raftstream job submit` generates a crate around a user's `.rs`
// file: the file becomes the module `user`, this library the module `raftstream_guest` (its
// macros visible in `user`), and a generated `impl Guest` calls the user's plain functions through the helpers below, one batch
// per call. A user writes any of:
//
//   fn map(value: &str) -> String                              (the key and time stay)
//   fn flat_map(value: &str) -> Vec<String>                    (each output keeps its input's key and time)
//   fn filter(value: &str) -> bool
//   fn key(value: &str) -> String
//   fn reduce(accumulator: Option<&str>, value: &str, key: &str) -> String   (None the first time for a key)
//   fn process(key: &str, state: Option<&str>, values: &[&str]) -> (Option<String>, Vec<String>)
//                                                              (new state, None clears it; outputs keep the key)
//
// Each may return a `Result<_, E: Display>` instead: an `Err` fails the batch with that message.
// `&str` works wherever `String` does. `println!` and `eprintln!` write to the executor's log, as
// `console.log` and `print()` do for the other languages; a panic is logged with its message and
// location before the instance traps, and the executor's error carries that line.

#![allow(dead_code, unused_macros)]

/// `println!`: one line in the executor's log at level info (the guest has no stdout).
macro_rules! println {
    ($($arguments:tt)*) => {
        $crate::raftstream_guest::log_line($crate::raftstream_guest::Level::Info, &format!($($arguments)*))
    };
}

/// `eprintln!`: one line in the executor's log at level warn.
macro_rules! eprintln {
    ($($arguments:tt)*) => {
        $crate::raftstream_guest::log_line($crate::raftstream_guest::Level::Warn, &format!($($arguments)*))
    };
}

use std::fmt::Display;
use std::sync::Once;

pub use crate::raftstream::functions::host::Level;
use crate::raftstream::functions::host::log;
use crate::{Event, KeyedEvents, KeyedValues, Processed};

/// A value a user function may return where the world wants one string.
pub trait IntoValue {
    fn into_value(self) -> Result<String, String>;
}

impl IntoValue for String {
    fn into_value(self) -> Result<String, String> {
        Ok(self)
    }
}

impl IntoValue for &str {
    fn into_value(self) -> Result<String, String> {
        Ok(self.to_owned())
    }
}

impl<E: Display> IntoValue for Result<String, E> {
    fn into_value(self) -> Result<String, String> {
        self.map_err(|error| error.to_string())
    }
}

impl<E: Display> IntoValue for Result<&str, E> {
    fn into_value(self) -> Result<String, String> {
        self.map(str::to_owned).map_err(|error| error.to_string())
    }
}

/// What a `flat_map` may return: any number of values.
pub trait IntoValues {
    fn into_values(self) -> Result<Vec<String>, String>;
}

impl IntoValues for Vec<String> {
    fn into_values(self) -> Result<Vec<String>, String> {
        Ok(self)
    }
}

impl IntoValues for Vec<&str> {
    fn into_values(self) -> Result<Vec<String>, String> {
        Ok(self.into_iter().map(str::to_owned).collect())
    }
}

impl<V, E: Display> IntoValues for Result<V, E>
where
    V: IntoValues,
{
    fn into_values(self) -> Result<Vec<String>, String> {
        self.map_err(|error| error.to_string())?.into_values()
    }
}

/// What a `filter` may return.
pub trait IntoKeep {
    fn into_keep(self) -> Result<bool, String>;
}

impl IntoKeep for bool {
    fn into_keep(self) -> Result<bool, String> {
        Ok(self)
    }
}

impl<E: Display> IntoKeep for Result<bool, E> {
    fn into_keep(self) -> Result<bool, String> {
        self.map_err(|error| error.to_string())
    }
}

/// What a `process` may return: the key's new state (None clears it) and its outputs.
pub trait IntoProcessed {
    fn into_processed(self) -> Result<(Option<String>, Vec<String>), String>;
}

impl<V: IntoValues> IntoProcessed for (Option<String>, V) {
    fn into_processed(self) -> Result<(Option<String>, Vec<String>), String> {
        Ok((self.0, self.1.into_values()?))
    }
}

impl<V: IntoValues, E: Display> IntoProcessed for Result<(Option<String>, V), E> {
    fn into_processed(self) -> Result<(Option<String>, Vec<String>), String> {
        let (state, outputs) = self.map_err(|error| error.to_string())?;
        Ok((state, outputs.into_values()?))
    }
}

static PANIC_HOOK: Once = Once::new();

/// Logs a panic's message and place before the instance aborts: with `panic = "abort"` the
/// host sees only a trap, and takes the guest's last error line as its reason.
pub fn install_panic_hook() {
    PANIC_HOOK.call_once(|| {
        std::panic::set_hook(Box::new(|panic| {
            let message = panic
                .payload()
                .downcast_ref::<&str>()
                .map(|text| (*text).to_owned())
                .or_else(|| panic.payload().downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "Box<dyn Any>".to_owned());
            let place = panic
                .location()
                .map(|location| format!(" at {}:{}:{}", location.file(), location.line(), location.column()))
                .unwrap_or_default();
            log(Level::Error, &format!("panicked{place}: {message}"));
        }));
    });
}

pub fn log_line(level: Level, line: &str) {
    log(level, line);
}

pub fn missing<T>(name: &str) -> Result<T, String> {
    Err(format!("the file defines no function {name}"))
}

// The helpers take the user's function wrapped in a closure that converts its answer (the
// generated code writes `|value| user::map(value).into_value()`): a function may return values
// that borrow from its input, such as `Vec<&str>` from `split`.

pub fn map(events: Vec<Event>, function: impl Fn(&str) -> Result<String, String>) -> Result<Vec<String>, String> {
    install_panic_hook();
    events.iter().map(|event| function(&event.value)).collect()
}

pub fn flat_map(
    events: Vec<Event>,
    function: impl Fn(&str) -> Result<Vec<String>, String>,
) -> Result<Vec<Vec<String>>, String> {
    install_panic_hook();
    events.iter().map(|event| function(&event.value)).collect()
}

pub fn filter(events: Vec<Event>, function: impl Fn(&str) -> Result<bool, String>) -> Result<Vec<bool>, String> {
    install_panic_hook();
    events.iter().map(|event| function(&event.value)).collect()
}

pub fn key(events: Vec<Event>, function: impl Fn(&str) -> Result<String, String>) -> Result<Vec<String>, String> {
    install_panic_hook();
    events.iter().map(|event| function(&event.value)).collect()
}

pub fn reduce(
    groups: Vec<KeyedValues>,
    function: impl Fn(Option<&str>, &str, &str) -> Result<String, String>,
) -> Result<Vec<String>, String> {
    install_panic_hook();
    groups
        .into_iter()
        .map(|group| {
            let mut accumulator = group.state;
            for value in &group.values {
                accumulator = Some(function(accumulator.as_deref(), value, &group.key)?);
            }
            Ok(accumulator.unwrap_or_default())
        })
        .collect()
}

pub fn process(
    groups: Vec<KeyedEvents>,
    function: impl Fn(&str, Option<&str>, &[&str]) -> Result<(Option<String>, Vec<String>), String>,
) -> Result<Vec<Processed>, String> {
    install_panic_hook();
    groups
        .into_iter()
        .map(|group| {
            let values: Vec<&str> = group.events.iter().map(|event| event.value.as_str()).collect();
            let (state, outputs) = function(&group.key, group.state.as_deref(), &values)?;
            let timestamp_ms = group.events.last().map_or(0, |event| event.timestamp_ms);
            let outputs = outputs
                .into_iter()
                .map(|value| Event {
                    key: group.key.clone(),
                    value,
                    timestamp_ms,
                })
                .collect();
            Ok(Processed { state, outputs })
        })
        .collect()
}
