//! The batches crossing the component boundary, as the WIT `types` interface declares them:
//! columns of strings laid end to end with their end offsets. The host fills them from its
//! records (an operator keeps one and refills it batch after batch) and reads a guest's answer
//! back through them after [`Answer::check`] has checked every offset: what a guest returns is
//! untrusted input. Numbers per row (offsets, times, flags) are packed little-endian in bytes, as
//! the world declares them.

use std::ops::Range;

use wasmtime::component::{ComponentType, Lift, Lower};

/// Strings laid end to end: string `i` runs from where string `i - 1` ends (0 for the first) to
/// its own end, the `i`-th u32 of `ends`.
#[derive(ComponentType, Lift, Lower, Debug, Clone, Default, PartialEq, Eq)]
#[component(record)]
pub struct Strings {
    data: String,
    ends: Vec<u8>,
}

/// The `index`-th little-endian u32 of `packed`.
fn u32_at(packed: &[u8], index: usize) -> Option<u32> {
    let bytes = packed.get(index.checked_mul(4)?..)?.first_chunk::<4>()?;
    Some(u32::from_le_bytes(*bytes))
}

/// Every little-endian u32 of `packed`, in order (a partial one at the end is left out; a guest's
/// answer is checked for it).
fn u32s(packed: &[u8]) -> impl Iterator<Item = u32> + '_ {
    packed
        .chunks_exact(4)
        .map(|bytes| u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
}

fn push_u32(packed: &mut Vec<u8>, value: u32) {
    packed.extend_from_slice(&value.to_le_bytes());
}

/// How many u32s `packed` holds, or what is wrong with it.
fn count_u32s(name: &str, packed: &[u8]) -> Result<usize, String> {
    if packed.len().is_multiple_of(4) {
        Ok(packed.len() / 4)
    } else {
        Err(format!("{name}: {} bytes, not a whole number of u32s", packed.len()))
    }
}

/// The end offset of a column's text. A column past 4 GiB is refused before the call
/// ([`Batch::largest_column`]), so the saturation never reaches a guest.
fn offset(length: usize) -> u32 {
    u32::try_from(length).unwrap_or(u32::MAX)
}

impl Strings {
    pub fn push(&mut self, text: &str) {
        self.data.push_str(text);
        push_u32(&mut self.ends, offset(self.data.len()));
    }

    pub fn len(&self) -> usize {
        self.ends.len() / 4
    }

    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// Empties the column and keeps its buffers for the next batch.
    pub fn clear(&mut self) {
        self.data.clear();
        self.ends.clear();
    }

    /// The bytes of all its strings together.
    pub fn text_len(&self) -> usize {
        self.data.len()
    }

    /// String `index`; `None` past the end (or, in an unchecked guest answer, where the offsets
    /// are wrong).
    pub fn get(&self, index: usize) -> Option<&str> {
        let end = u32_at(&self.ends, index)? as usize;
        let start = match index {
            0 => 0,
            _ => u32_at(&self.ends, index - 1)? as usize,
        };
        self.data.get(start..end)
    }

    /// The strings in order.
    pub fn iter(&self) -> impl Iterator<Item = &str> + '_ {
        let mut start = 0;
        u32s(&self.ends).map(move |end| {
            let text = self.data.get(start..end as usize).unwrap_or_default();
            start = end as usize;
            text
        })
    }

    /// Strings `range` of the column, in order.
    fn range(&self, range: Range<usize>) -> impl Iterator<Item = &str> + '_ {
        range.map(|index| self.get(index).unwrap_or_default())
    }

    /// The offsets of a guest's column: in order, within the text, on character boundaries,
    /// the last at its end.
    fn check(&self, name: &str) -> Result<(), String> {
        count_u32s(&format!("{name} ends"), &self.ends)?;
        let mut start = 0;
        for (index, end) in u32s(&self.ends).enumerate() {
            let end = end as usize;
            if end < start || end > self.data.len() {
                return Err(format!(
                    "{name}: string {index} ends at byte {end}, outside {start}..={}",
                    self.data.len()
                ));
            }
            if !self.data.is_char_boundary(end) {
                return Err(format!("{name}: string {index} ends at byte {end}, inside a character"));
            }
            start = end;
        }
        if start != self.data.len() {
            return Err(format!(
                "{name}: {} bytes of text after the last string",
                self.data.len() - start
            ));
        }
        Ok(())
    }
}

impl<'a> Extend<&'a str> for Strings {
    fn extend<T: IntoIterator<Item = &'a str>>(&mut self, texts: T) {
        texts.into_iter().for_each(|text| self.push(text));
    }
}

impl<'a> FromIterator<&'a str> for Strings {
    fn from_iter<T: IntoIterator<Item = &'a str>>(texts: T) -> Self {
        let mut strings = Strings::default();
        strings.extend(texts);
        strings
    }
}

/// Strings some of which are absent (a key without state).
#[derive(ComponentType, Lift, Lower, Debug, Clone, Default, PartialEq, Eq)]
#[component(record)]
pub struct OptionalStrings {
    strings: Strings,
    /// A byte per string: 1 present, 0 absent.
    present: Vec<u8>,
}

impl OptionalStrings {
    pub fn push(&mut self, text: Option<&str>) {
        self.strings.push(text.unwrap_or_default());
        self.present.push(u8::from(text.is_some()));
    }

    pub fn len(&self) -> usize {
        self.present.len()
    }

    pub fn is_empty(&self) -> bool {
        self.present.is_empty()
    }

    pub fn clear(&mut self) {
        self.strings.clear();
        self.present.clear();
    }

    /// String `index`, `None` when it is absent (or past the end).
    pub fn get(&self, index: usize) -> Option<&str> {
        match self.present.get(index) {
            Some(0) | None => None,
            Some(_) => self.strings.get(index),
        }
    }

    fn check(&self, name: &str) -> Result<(), String> {
        self.strings.check(name)?;
        if self.present.len() != self.strings.len() {
            return Err(format!(
                "{name}: {} presence flags for {} strings",
                self.present.len(),
                self.strings.len()
            ));
        }
        Ok(())
    }
}

/// One event of a batch, borrowed from its columns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventView<'a> {
    pub key: &'a str,
    pub value: &'a str,
    pub timestamp_ms: i64,
}

/// A batch of events as columns.
#[derive(ComponentType, Lift, Lower, Debug, Clone, Default, PartialEq, Eq)]
#[component(record)]
pub struct Events {
    keys: Strings,
    values: Strings,
    /// A little-endian s64 per event.
    #[component(name = "timestamps-ms")]
    timestamps_ms: Vec<u8>,
}

/// The `index`-th little-endian s64 of `packed`.
fn i64_at(packed: &[u8], index: usize) -> Option<i64> {
    let bytes = packed.get(index.checked_mul(8)?..)?.first_chunk::<8>()?;
    Some(i64::from_le_bytes(*bytes))
}

impl Events {
    pub fn push(&mut self, key: &str, value: &str, timestamp_ms: i64) {
        self.keys.push(key);
        self.values.push(value);
        self.timestamps_ms.extend_from_slice(&timestamp_ms.to_le_bytes());
    }

    pub fn len(&self) -> usize {
        self.timestamps_ms.len() / 8
    }

    pub fn is_empty(&self) -> bool {
        self.timestamps_ms.is_empty()
    }

    pub fn clear(&mut self) {
        self.keys.clear();
        self.values.clear();
        self.timestamps_ms.clear();
    }

    /// Event `index`, `None` past the end.
    pub fn get(&self, index: usize) -> Option<EventView<'_>> {
        Some(EventView {
            key: self.keys.get(index)?,
            value: self.values.get(index)?,
            timestamp_ms: i64_at(&self.timestamps_ms, index)?,
        })
    }

    /// The events in order.
    pub fn iter(&self) -> impl Iterator<Item = EventView<'_>> + '_ {
        let times = self
            .timestamps_ms
            .chunks_exact(8)
            .map(|bytes| i64::from_le_bytes(bytes.try_into().unwrap_or_default()));
        self.keys
            .iter()
            .zip(self.values.iter())
            .zip(times)
            .map(|((key, value), timestamp_ms)| EventView {
                key,
                value,
                timestamp_ms,
            })
    }

    fn largest_column(&self) -> usize {
        self.keys.text_len().max(self.values.text_len())
    }

    fn check(&self, name: &str) -> Result<(), String> {
        self.keys.check(&format!("{name} keys"))?;
        self.values.check(&format!("{name} values"))?;
        if !self.timestamps_ms.len().is_multiple_of(8) {
            return Err(format!(
                "{name} timestamps-ms: {} bytes, not a whole number of s64s",
                self.timestamps_ms.len()
            ));
        }
        if self.keys.len() != self.len() || self.values.len() != self.len() {
            return Err(format!(
                "{name}: {} keys, {} values and {} times",
                self.keys.len(),
                self.values.len(),
                self.len()
            ));
        }
        Ok(())
    }
}

impl<'a> FromIterator<EventView<'a>> for Events {
    fn from_iter<T: IntoIterator<Item = EventView<'a>>>(events: T) -> Self {
        let mut batch = Events::default();
        for event in events {
            batch.push(event.key, event.value, event.timestamp_ms);
        }
        batch
    }
}

/// The members of group `index` under `ends` (each group's end in the member column).
fn group_range(ends: &[u8], index: usize) -> Range<usize> {
    let end = u32_at(ends, index).map_or(0, |end| end as usize);
    let start = match index {
        0 => 0,
        _ => u32_at(ends, index - 1).map_or(end, |start| start as usize),
    };
    start..end.max(start)
}

/// Checks a guest's group ends: in order, the last at the member column's end.
fn check_ends(name: &str, ends: &[u8], members: usize) -> Result<(), String> {
    count_u32s(name, ends)?;
    let mut start = 0;
    for (index, end) in u32s(ends).enumerate() {
        let end = end as usize;
        if end < start || end > members {
            return Err(format!(
                "{name}: group {index} ends at member {end}, outside {start}..={members}"
            ));
        }
        start = end;
    }
    if start != members {
        return Err(format!("{name}: {} members after the last group", members - start));
    }
    Ok(())
}

/// A keyed batch for `reduce`: each key's accumulator and its values.
#[derive(ComponentType, Lower, Debug, Clone, Default, PartialEq, Eq)]
#[component(record)]
pub struct KeyedValues {
    keys: Strings,
    states: OptionalStrings,
    values: Strings,
    #[component(name = "group-ends")]
    group_ends: Vec<u8>,
}

impl KeyedValues {
    pub fn push_group<'a>(&mut self, key: &str, state: Option<&str>, values: impl IntoIterator<Item = &'a str>) {
        self.keys.push(key);
        self.states.push(state);
        self.values.extend(values);
        push_u32(&mut self.group_ends, offset(self.values.len()));
    }

    /// How many groups.
    pub fn len(&self) -> usize {
        self.group_ends.len() / 4
    }

    pub fn is_empty(&self) -> bool {
        self.group_ends.is_empty()
    }

    pub fn clear(&mut self) {
        self.keys.clear();
        self.states.clear();
        self.values.clear();
        self.group_ends.clear();
    }
}

/// A keyed batch for `process`: each key's state and its events.
#[derive(ComponentType, Lower, Debug, Clone, Default, PartialEq, Eq)]
#[component(record)]
pub struct KeyedEvents {
    keys: Strings,
    states: OptionalStrings,
    events: Events,
    #[component(name = "group-ends")]
    group_ends: Vec<u8>,
}

impl KeyedEvents {
    pub fn push_group<'a>(&mut self, key: &str, state: Option<&str>, events: impl IntoIterator<Item = EventView<'a>>) {
        self.keys.push(key);
        self.states.push(state);
        for event in events {
            self.events.push(event.key, event.value, event.timestamp_ms);
        }
        push_u32(&mut self.group_ends, offset(self.events.len()));
    }

    /// How many groups.
    pub fn len(&self) -> usize {
        self.group_ends.len() / 4
    }

    pub fn is_empty(&self) -> bool {
        self.group_ends.is_empty()
    }

    pub fn clear(&mut self) {
        self.keys.clear();
        self.states.clear();
        self.events.clear();
        self.group_ends.clear();
    }
}

/// What `flat-map` made: every output value in order, grouped by input.
#[derive(ComponentType, Lift, Debug, Clone, Default, PartialEq, Eq)]
#[component(record)]
pub struct FannedOut {
    values: Strings,
    #[component(name = "input-ends")]
    input_ends: Vec<u8>,
}

impl FannedOut {
    /// Input `index`'s output values, in order.
    pub fn outputs_of(&self, index: usize) -> impl Iterator<Item = &str> + '_ {
        self.values.range(group_range(&self.input_ends, index))
    }

    /// Every output value of every input.
    pub fn values(&self) -> &Strings {
        &self.values
    }
}

/// What `process` made of each group: its new state and the events it emits.
#[derive(ComponentType, Lift, Debug, Clone, Default, PartialEq, Eq)]
#[component(record)]
pub struct Processed {
    states: OptionalStrings,
    outputs: Events,
    #[component(name = "group-ends")]
    group_ends: Vec<u8>,
}

impl Processed {
    /// Group `index`'s new state; `None` clears it.
    pub fn state_of(&self, index: usize) -> Option<&str> {
        self.states.get(index)
    }

    /// The events group `index` emits, in order.
    pub fn outputs_of(&self, index: usize) -> impl Iterator<Item = EventView<'_>> + '_ {
        group_range(&self.group_ends, index).filter_map(|at| self.outputs.get(at))
    }
}

/// What an export is called with.
pub(crate) trait Batch: ComponentType + Lower {
    /// Inputs (events, or groups): what the answer must have one entry for.
    fn inputs(&self) -> usize;
    /// The longest column's text, which must fit a 32-bit offset.
    fn largest_column(&self) -> usize;
}

impl Batch for Events {
    fn inputs(&self) -> usize {
        self.len()
    }

    fn largest_column(&self) -> usize {
        Events::largest_column(self)
    }
}

impl Batch for KeyedValues {
    fn inputs(&self) -> usize {
        self.len()
    }

    fn largest_column(&self) -> usize {
        self.keys
            .text_len()
            .max(self.states.strings.text_len())
            .max(self.values.text_len())
    }
}

impl Batch for KeyedEvents {
    fn inputs(&self) -> usize {
        self.len()
    }

    fn largest_column(&self) -> usize {
        self.keys
            .text_len()
            .max(self.states.strings.text_len())
            .max(self.events.largest_column())
    }
}

/// What an export answers: one entry per input, its offsets checked before anyone reads it.
pub(crate) trait Answer: ComponentType + Lift {
    /// Entries (one per input of the batch).
    fn entries(&self) -> usize;
    /// The offsets are consistent: a problem's description otherwise.
    fn check(&self) -> Result<(), String>;
}

impl Answer for Strings {
    fn entries(&self) -> usize {
        self.len()
    }

    fn check(&self) -> Result<(), String> {
        Strings::check(self, "strings")
    }
}

/// `filter`'s answer: a byte per event, non-zero keeps it.
impl Answer for Vec<u8> {
    fn entries(&self) -> usize {
        self.len()
    }

    fn check(&self) -> Result<(), String> {
        Ok(())
    }
}

impl Answer for FannedOut {
    fn entries(&self) -> usize {
        self.input_ends.len() / 4
    }

    fn check(&self) -> Result<(), String> {
        self.values.check("values")?;
        check_ends("input-ends", &self.input_ends, self.values.len())
    }
}

impl Answer for Processed {
    fn entries(&self) -> usize {
        self.group_ends.len() / 4
    }

    fn check(&self) -> Result<(), String> {
        self.states.check("states")?;
        self.outputs.check("outputs")?;
        if self.states.len() != self.group_ends.len() / 4 {
            return Err(format!(
                "{} states for {} groups",
                self.states.len(),
                self.group_ends.len() / 4
            ));
        }
        check_ends("group-ends", &self.group_ends, self.outputs.len())
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn packed(values: &[u32]) -> Vec<u8> {
        values.iter().flat_map(|value| value.to_le_bytes()).collect()
    }

    #[test]
    fn a_column_keeps_its_strings_in_order_and_reuses_its_buffers() {
        let mut column: Strings = ["", "ab", "ü", ""].into_iter().collect();
        assert_eq!(column.len(), 4);
        assert_eq!(column.iter().collect::<Vec<_>>(), ["", "ab", "ü", ""]);
        assert_eq!(column.get(2), Some("ü"));
        assert_eq!(column.get(4), None);
        assert_eq!(column.check("c"), Ok(()));
        column.clear();
        assert!(column.is_empty() && column.iter().next().is_none());
    }

    #[test]
    fn a_guests_bad_offsets_are_named() {
        let backwards = Strings {
            data: "abc".into(),
            ends: packed(&[2, 1, 3]),
        };
        assert!(backwards
            .check("c")
            .expect_err("refused")
            .contains("string 1 ends at byte 1, outside 2..=3"));
        let past = Strings {
            data: "abc".into(),
            ends: packed(&[4]),
        };
        assert!(past.check("c").is_err());
        let split_char = Strings {
            data: "ü".into(),
            ends: packed(&[1, 2]),
        };
        assert!(split_char
            .check("c")
            .expect_err("refused")
            .contains("inside a character"));
        let trailing = Strings {
            data: "abc".into(),
            ends: packed(&[1]),
        };
        assert!(trailing
            .check("c")
            .expect_err("refused")
            .contains("2 bytes of text after"));

        let fanned = FannedOut {
            values: ["a", "b"].into_iter().collect(),
            input_ends: packed(&[1, 3]),
        };
        assert!(Answer::check(&fanned)
            .expect_err("refused")
            .contains("group 1 ends at member 3"));
        let processed = Processed {
            states: OptionalStrings::default(),
            outputs: Events::default(),
            group_ends: packed(&[0]),
        };
        assert!(Answer::check(&processed)
            .expect_err("refused")
            .contains("0 states for 1 groups"));
        let torn = Strings {
            data: "ab".into(),
            ends: vec![2, 0, 0],
        };
        assert!(torn
            .check("c")
            .expect_err("refused")
            .contains("not a whole number of u32s"));
    }

    #[test]
    fn groups_read_back_by_their_ends() {
        let fanned = FannedOut {
            values: ["to", "be", "not"].into_iter().collect(),
            input_ends: packed(&[2, 2, 3]),
        };
        assert_eq!(Answer::check(&fanned), Ok(()));
        assert_eq!(fanned.outputs_of(0).collect::<Vec<_>>(), ["to", "be"]);
        assert_eq!(fanned.outputs_of(1).count(), 0);
        assert_eq!(fanned.outputs_of(2).collect::<Vec<_>>(), ["not"]);
        assert_eq!(fanned.outputs_of(3).count(), 0);

        let mut states = OptionalStrings::default();
        states.push(Some("1"));
        states.push(None);
        let processed = Processed {
            states,
            outputs: [EventView {
                key: "k",
                value: "alert",
                timestamp_ms: 5,
            }]
            .into_iter()
            .collect(),
            group_ends: packed(&[0, 1]),
        };
        assert_eq!(Answer::check(&processed), Ok(()));
        assert_eq!(processed.state_of(0), Some("1"));
        assert_eq!(processed.state_of(1), None);
        assert_eq!(processed.outputs_of(0).count(), 0);
        assert_eq!(
            processed.outputs_of(1).map(|event| event.value).collect::<Vec<_>>(),
            ["alert"]
        );
    }
}
