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
//   fn reduce_group(accumulator: Option<&str>, values: &[&str], key: &str) -> String
//                                                              (the same, given all of a key's values in a
//                                                              batch at once: one call per key and batch;
//                                                              define it or reduce)
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

use std::borrow::Cow;
use std::fmt::Display;
use std::sync::Once;

pub use crate::raftstream::functions::host::Level;
use crate::raftstream::functions::host::log;
use crate::raftstream::functions::types::OptionalStrings;
use crate::{Events, FannedOut, KeyedEvents, KeyedValues, Processed, Strings};

/// The little-endian u32s packed in `bytes` (offsets), in order.
fn u32s(bytes: &[u8]) -> impl Iterator<Item = u32> + '_ {
    bytes
        .chunks_exact(4)
        .map(|word| u32::from_le_bytes([word[0], word[1], word[2], word[3]]))
}

/// The little-endian s64s packed in `bytes` (times), in order.
fn i64s(bytes: &[u8]) -> impl Iterator<Item = i64> + '_ {
    bytes.chunks_exact(8).map(|word| {
        let mut eight = [0; 8];
        eight.copy_from_slice(word);
        i64::from_le_bytes(eight)
    })
}

/// A column's strings in order: each ends at its offset in `ends` and starts where the one
/// before ended (the host lays them out on character boundaries).
fn column(strings: &Strings) -> impl Iterator<Item = &str> + '_ {
    let mut start = 0;
    u32s(&strings.ends).map(move |end| {
        let text = strings.data.get(start..end as usize).unwrap_or_default();
        start = end as usize;
        text
    })
}

/// How many strings a column holds.
fn count(strings: &Strings) -> usize {
    strings.ends.len() / 4
}

/// An empty column with room for `count` strings of about `bytes` bytes in all.
fn column_with_capacity(count: usize, bytes: usize) -> Strings {
    Strings {
        data: String::with_capacity(bytes),
        ends: Vec::with_capacity(count * 4),
    }
}

/// Appends one string to a column being answered.
pub fn push(strings: &mut Strings, text: &str) {
    strings.data.push_str(text);
    strings.ends.extend_from_slice(&(strings.data.len() as u32).to_le_bytes());
}

/// A value a user function may return where the world wants one string.
pub trait IntoValue: Sized {
    fn into_value(self) -> Result<String, String>;

    /// Appends the value to `out` (without copying it first when it is borrowed).
    fn write_value(self, out: &mut Strings) -> Result<(), String> {
        push(out, &self.into_value()?);
        Ok(())
    }
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

    fn write_value(self, out: &mut Strings) -> Result<(), String> {
        push(out, self);
        Ok(())
    }
}

impl<V: IntoValue, E: Display> IntoValue for Result<V, E> {
    fn into_value(self) -> Result<String, String> {
        self.map_err(|error| error.to_string())?.into_value()
    }

    fn write_value(self, out: &mut Strings) -> Result<(), String> {
        self.map_err(|error| error.to_string())?.write_value(out)
    }
}

/// What a `flat_map` (or a `process`, for its outputs) may return: any number of values.
pub trait IntoValues {
    /// Appends the values to `out`, in order.
    fn write_values(self, out: &mut Strings) -> Result<(), String>;
}

impl IntoValues for Vec<String> {
    fn write_values(self, out: &mut Strings) -> Result<(), String> {
        self.iter().for_each(|value| push(out, value));
        Ok(())
    }
}

impl IntoValues for Vec<&str> {
    fn write_values(self, out: &mut Strings) -> Result<(), String> {
        self.iter().for_each(|value| push(out, value));
        Ok(())
    }
}

impl<V: IntoValues, E: Display> IntoValues for Result<V, E> {
    fn write_values(self, out: &mut Strings) -> Result<(), String> {
        self.map_err(|error| error.to_string())?.write_values(out)
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
    /// Appends the outputs to `outputs` and returns the new state.
    fn write_processed(self, outputs: &mut Strings) -> Result<Option<String>, String>;
}

impl<V: IntoValues> IntoProcessed for (Option<String>, V) {
    fn write_processed(self, outputs: &mut Strings) -> Result<Option<String>, String> {
        self.1.write_values(outputs)?;
        Ok(self.0)
    }
}

impl<V: IntoValues, E: Display> IntoProcessed for Result<(Option<String>, V), E> {
    fn write_processed(self, outputs: &mut Strings) -> Result<Option<String>, String> {
        self.map_err(|error| error.to_string())?.write_processed(outputs)
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
// generated code writes `|value, out| user::map(value).write_value(out)`): a function may
// return values that borrow from its input, such as `Vec<&str>` from `split`, and those are
// copied once, into the answer's column.

pub fn map(batch: Events, function: impl Fn(&str, &mut Strings) -> Result<(), String>) -> Result<Strings, String> {
    install_panic_hook();
    let mut out = column_with_capacity(count(&batch.values), batch.values.data.len());
    for value in column(&batch.values) {
        function(value, &mut out)?;
    }
    Ok(out)
}

pub fn flat_map(
    batch: Events,
    function: impl Fn(&str, &mut Strings) -> Result<(), String>,
) -> Result<FannedOut, String> {
    install_panic_hook();
    let mut values = column_with_capacity(count(&batch.values) * 4, batch.values.data.len());
    let mut input_ends = Vec::with_capacity(batch.values.ends.len());
    for value in column(&batch.values) {
        function(value, &mut values)?;
        input_ends.extend_from_slice(&(count(&values) as u32).to_le_bytes());
    }
    Ok(FannedOut { values, input_ends })
}

pub fn filter(batch: Events, function: impl Fn(&str) -> Result<bool, String>) -> Result<Vec<u8>, String> {
    install_panic_hook();
    column(&batch.values).map(|value| function(value).map(u8::from)).collect()
}

pub fn key(batch: Events, function: impl Fn(&str, &mut Strings) -> Result<(), String>) -> Result<Strings, String> {
    map(batch, function)
}

/// Each group's states, `None` where absent.
fn states(states: &OptionalStrings) -> impl Iterator<Item = Option<&str>> + '_ {
    column(&states.strings)
        .zip(&states.present)
        .map(|(state, &present)| (present != 0).then_some(state))
}

pub fn reduce(
    groups: KeyedValues,
    function: impl Fn(Option<&str>, &str, &str) -> Result<String, String>,
) -> Result<Strings, String> {
    install_panic_hook();
    let mut out = column_with_capacity(groups.group_ends.len() / 4, groups.states.strings.data.len() + 16);
    let mut values = column(&groups.values);
    let mut start = 0;
    for ((key, state), end) in column(&groups.keys).zip(states(&groups.states)).zip(u32s(&groups.group_ends)) {
        let mut accumulator = state.map(Cow::Borrowed);
        for value in values.by_ref().take((end as usize).saturating_sub(start)) {
            accumulator = Some(Cow::Owned(function(accumulator.as_deref(), value, key)?));
        }
        push(&mut out, accumulator.as_deref().unwrap_or_default());
        start = end as usize;
    }
    Ok(out)
}

pub fn reduce_group(
    groups: KeyedValues,
    function: impl Fn(Option<&str>, &[&str], &str) -> Result<String, String>,
) -> Result<Strings, String> {
    install_panic_hook();
    let mut out = column_with_capacity(groups.group_ends.len() / 4, groups.states.strings.data.len() + 16);
    let values: Vec<&str> = column(&groups.values).collect();
    let mut start = 0;
    for ((key, state), end) in column(&groups.keys).zip(states(&groups.states)).zip(u32s(&groups.group_ends)) {
        let end = (end as usize).clamp(start, values.len());
        push(&mut out, &function(state, &values[start..end], key)?);
        start = end;
    }
    Ok(out)
}

pub fn process(
    groups: KeyedEvents,
    function: impl Fn(&str, Option<&str>, &[&str], &mut Strings) -> Result<Option<String>, String>,
) -> Result<Processed, String> {
    install_panic_hook();
    let groups_count = groups.group_ends.len() / 4;
    let mut answer = Processed {
        states: OptionalStrings {
            strings: column_with_capacity(groups_count, 0),
            present: Vec::with_capacity(groups_count),
        },
        outputs: Events {
            keys: column_with_capacity(0, 0),
            values: column_with_capacity(0, 0),
            timestamps_ms: Vec::new(),
        },
        group_ends: Vec::with_capacity(groups.group_ends.len()),
    };
    let times: Vec<i64> = i64s(&groups.events.timestamps_ms).collect();
    let mut values = column(&groups.events.values);
    let mut outputs = column_with_capacity(0, 0);
    let mut emitted: u32 = 0;
    let mut start = 0;
    for ((key, state), end) in column(&groups.keys).zip(states(&groups.states)).zip(u32s(&groups.group_ends)) {
        let end = end as usize;
        let group_values: Vec<&str> = values.by_ref().take(end.saturating_sub(start)).collect();
        let timestamp_ms = match end {
            0 => 0,
            _ => times.get(end - 1).copied().unwrap_or(0),
        };
        outputs.data.clear();
        outputs.ends.clear();
        let new_state = function(key, state, &group_values, &mut outputs)?;
        push(&mut answer.states.strings, new_state.as_deref().unwrap_or_default());
        answer.states.present.push(u8::from(new_state.is_some()));
        for output in column(&outputs) {
            push(&mut answer.outputs.keys, key);
            push(&mut answer.outputs.values, output);
            answer.outputs.timestamps_ms.extend_from_slice(&timestamp_ms.to_le_bytes());
            emitted += 1;
        }
        answer.group_ends.extend_from_slice(&emitted.to_le_bytes());
        start = end;
    }
    Ok(answer)
}
