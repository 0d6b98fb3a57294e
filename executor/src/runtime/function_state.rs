//! The keyed state of a user `reduce` or `process`, laid out for calls one batch at a time: each
//! key has a slot, and a batch is grouped by key through the same lookup that finds the key's
//! slot. One hash lookup per record in all; the state is then read before the call and written
//! after it by slot, without looking the key up again.
//!
//! The word count's profile is why: grouping a batch in a map of its own, then reading and then
//! writing each key's state in the keyed map made three lookups per word, and the two in the
//! large map missed the cache (the entries had been pushed out by the call in between); those
//! lookups took a fifth of the executor's time.

use super::key_groups::{KeyedMap, StateKey};
use super::operators::{decode_entries, encode_entries, OperatorError};
use super::record::{Record, Text};

/// Each key's state (absent until a call sets it) by slot, and the slot of each key.
#[derive(Debug, Default)]
pub struct FunctionStates {
    slots: KeyedMap<u32>,
    /// By slot: the key's state, `None` for a key seen in a batch whose call has not set one
    /// (or that a `process` cleared).
    states: Vec<Option<Text>>,
    /// By slot: the batch that last grouped the key (its number in the high half) and the
    /// key's group in it (the low half).
    marks: Vec<u64>,
    /// Slots of removed keys, to be used again.
    free: Vec<u32>,
    /// Numbers the batches, for `marks`; starts at 1 so that no slot is marked at first.
    batch_number: u32,
}

/// A batch's records grouped by key, keys in first-seen order, each key with its state's slot.
/// One vector of positions for all groups: a batch of a word count has nearly as many keys as
/// records, and a vector per group was an allocation per record.
#[derive(Debug, Default)]
pub struct Grouped {
    /// Per group: its slot in the states.
    pub slots: Vec<u32>,
    /// Per group: the position of its first record (whose key is the group's).
    firsts: Vec<u32>,
    /// Where each group's positions end in `members`.
    ends: Vec<u32>,
    members: Vec<u32>,
    /// Per record: its group (scratch for the counting sort).
    group_of_record: Vec<u32>,
}

impl Grouped {
    /// How many groups (distinct keys) the batch has.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Whether the batch had no records.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Each group's key, slot and record positions, in the groups' order.
    pub fn groups<'g, 'r>(
        &'g self,
        records: &'r [Record],
    ) -> impl Iterator<Item = (&'r str, u32, &'g [u32])> + use<'g, 'r> {
        let mut start = 0;
        self.slots
            .iter()
            .zip(&self.firsts)
            .zip(&self.ends)
            .map(move |((&slot, &first), &end)| {
                let members = &self.members[start as usize..end as usize];
                start = end;
                (records[first as usize].key.as_str(), slot, members)
            })
    }
}

impl FunctionStates {
    /// Groups `records` by key into `grouped` (its buffers reused), giving every new key a slot
    /// without a state.
    pub fn group(&mut self, records: &[Record], grouped: &mut Grouped) {
        self.batch_number = self.batch_number.wrapping_add(1);
        if self.batch_number == 0 {
            // After 2^32 batches the numbers come round: forget every mark so none is taken
            // for this batch's.
            self.marks.iter_mut().for_each(|mark| *mark = 0);
            self.batch_number = 1;
        }
        let this_batch = u64::from(self.batch_number) << 32;
        grouped.slots.clear();
        grouped.firsts.clear();
        grouped.ends.clear();
        grouped.group_of_record.clear();
        // Pass 1: each record's group, and each group's size (in `ends` for now).
        for (position, record) in records.iter().enumerate() {
            let slot = self.slot_for(&record.key);
            let mark = &mut self.marks[slot as usize];
            let group = if *mark & !u64::from(u32::MAX) == this_batch {
                (*mark & u64::from(u32::MAX)) as u32
            } else {
                let group = grouped.slots.len() as u32;
                *mark = this_batch | u64::from(group);
                grouped.slots.push(slot);
                grouped.firsts.push(position as u32);
                grouped.ends.push(0);
                group
            };
            grouped.ends[group as usize] += 1;
            grouped.group_of_record.push(group);
        }
        // Pass 2: sizes into ends, and each record's position at its group's cursor.
        let mut total = 0;
        let mut cursors = Vec::with_capacity(grouped.ends.len());
        for end in &mut grouped.ends {
            cursors.push(total);
            total += *end;
            *end = total;
        }
        grouped.members.clear();
        grouped.members.resize(records.len(), 0);
        for (position, &group) in grouped.group_of_record.iter().enumerate() {
            let cursor = &mut cursors[group as usize];
            grouped.members[*cursor as usize] = position as u32;
            *cursor += 1;
        }
    }

    /// The slot of `key`, made (without a state) if it has none.
    fn slot_for(&mut self, key: &Text) -> u32 {
        if let Some(&slot) = self.slots.get(key.as_str()) {
            return slot;
        }
        let slot = self.new_slot(None);
        self.slots.insert(key.clone(), slot);
        slot
    }

    fn new_slot(&mut self, state: Option<Text>) -> u32 {
        take_slot(&mut self.states, &mut self.marks, &mut self.free, state)
    }

    /// The state in `slot`, if it has one.
    pub fn get(&self, slot: u32) -> Option<&str> {
        self.states.get(slot as usize).and_then(|state| state.as_deref())
    }

    /// Sets the state in `slot`.
    pub fn set(&mut self, slot: u32, state: &str) {
        if let Some(held) = self.states.get_mut(slot as usize) {
            match held {
                // In place: a state on the heap keeps its allocation.
                Some(text) => {
                    text.clear();
                    text.push_str(state);
                }
                None => *held = Some(state.into()),
            }
        }
    }

    /// Forgets `key`, whose slot is `slot`.
    pub fn remove(&mut self, key: &str, slot: u32) {
        if self.slots.remove(key).is_some() {
            if let Some(held) = self.states.get_mut(slot as usize) {
                *held = None;
            }
            self.free.push(slot);
        }
    }

    /// How many keys hold a state.
    pub fn len(&self) -> usize {
        self.states.iter().filter(|state| state.is_some()).count()
    }

    /// Whether no key holds a state.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Each key with a state, and the state.
    fn entries(&self) -> impl Iterator<Item = (&StateKey, &Text)> + Clone {
        self.slots
            .iter()
            .filter_map(|(key, &slot)| Some((key, self.states.get(slot as usize)?.as_ref()?)))
    }

    /// The state as checkpoint bytes, by key group (the format every keyed operator writes).
    pub fn snapshot(&self, max_parallelism: u32) -> Vec<u8> {
        encode_entries(self.entries(), self.slots.len(), max_parallelism)
    }

    /// Adds the entries of `bytes` whose key group lies in `groups`.
    pub fn restore(
        &mut self,
        operator: &str,
        bytes: &[u8],
        groups: &std::ops::Range<u32>,
    ) -> Result<(), OperatorError> {
        let Self {
            slots,
            states,
            marks,
            free,
            ..
        } = self;
        decode_entries(slots, bytes, groups, |state: Text| {
            take_slot(states, marks, free, Some(state))
        })
        .map_err(|problem| OperatorError::State {
            operator: operator.to_owned(),
            problem: format!("unreadable keyed state: {problem}"),
        })
    }

    /// Makes room for `additional` keys before restoring them.
    pub fn reserve(&mut self, additional: usize) {
        self.slots.reserve(additional);
        self.states.reserve(additional);
        self.marks.reserve(additional);
    }
}

/// A slot for `state`: a freed one, or a new one at the end (unmarked either way). Takes the
/// store's parts, not the store, so that a restore can call it while decoding into its map.
fn take_slot(states: &mut Vec<Option<Text>>, marks: &mut Vec<u64>, free: &mut Vec<u32>, state: Option<Text>) -> u32 {
    match free.pop() {
        Some(slot) => {
            states[slot as usize] = state;
            marks[slot as usize] = 0;
            slot
        }
        None => {
            states.push(state);
            marks.push(0);
            (states.len() - 1) as u32
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(key: &str, value: &str) -> Record {
        Record {
            key: key.into(),
            value: value.into(),
            timestamp_ms: 0,
        }
    }

    fn groups_of(states: &mut FunctionStates, records: &[Record]) -> Vec<(String, Vec<String>)> {
        let mut grouped = Grouped::default();
        states.group(records, &mut grouped);
        grouped
            .groups(records)
            .map(|(key, _, members)| {
                (
                    key.to_owned(),
                    members
                        .iter()
                        .map(|&at| records[at as usize].value.to_string())
                        .collect(),
                )
            })
            .collect()
    }

    #[test]
    fn a_batch_groups_by_key_in_first_seen_order_keeping_each_keys_record_order() {
        let mut states = FunctionStates::default();
        let records = [
            record("b", "1"),
            record("a", "2"),
            record("b", "3"),
            record("c", "4"),
            record("a", "5"),
            record("b", "6"),
        ];
        let owned = |groups: &[(&str, &[&str])]| -> Vec<(String, Vec<String>)> {
            groups
                .iter()
                .map(|(key, values)| {
                    (
                        (*key).to_owned(),
                        values.iter().map(|value| (*value).to_owned()).collect(),
                    )
                })
                .collect()
        };
        assert_eq!(
            groups_of(&mut states, &records),
            owned(&[("b", &["1", "3", "6"]), ("a", &["2", "5"]), ("c", &["4"])])
        );
        // The next batch groups afresh: the marks of the last one do not carry over.
        assert_eq!(
            groups_of(&mut states, &records[2..4]),
            owned(&[("b", &["3"]), ("c", &["4"])])
        );
        assert!(groups_of(&mut states, &[]).is_empty());
    }

    #[test]
    fn states_are_read_and_written_by_slot_and_survive_a_snapshot() {
        let mut states = FunctionStates::default();
        let records = [record("a", ""), record("b", ""), record("a", "")];
        let mut grouped = Grouped::default();
        states.group(&records, &mut grouped);
        let slots: Vec<(String, u32)> = grouped
            .groups(&records)
            .map(|(key, slot, _)| (key.to_owned(), slot))
            .collect();
        // New keys have no state until a call sets one.
        assert!(slots.iter().all(|(_, slot)| states.get(*slot).is_none()));
        assert!(states.is_empty());
        states.set(slots[0].1, "2");
        states.set(slots[1].1, "a state longer than twenty-four bytes");
        states.set(slots[0].1, "3");
        assert_eq!(states.get(slots[0].1), Some("3"));
        assert_eq!(states.len(), 2);

        let bytes = states.snapshot(128);
        let mut restored = FunctionStates::default();
        restored.reserve(2);
        restored.restore("op", &bytes, &(0..128)).expect("restored");
        let mut again = Grouped::default();
        restored.group(&records, &mut again);
        let found: Vec<(String, Option<String>)> = again
            .groups(&records)
            .map(|(key, slot, _)| (key.to_owned(), restored.get(slot).map(str::to_owned)))
            .collect();
        assert_eq!(
            found,
            vec![
                ("a".to_owned(), Some("3".to_owned())),
                ("b".to_owned(), Some("a state longer than twenty-four bytes".to_owned()))
            ]
        );

        // A removed key's slot is used again, without its state.
        restored.remove("a", again.slots[0]);
        assert_eq!(restored.len(), 1);
        let mut third = Grouped::default();
        restored.group(&[record("c", "")], &mut third);
        assert_eq!(third.slots, vec![again.slots[0]]);
        assert_eq!(restored.get(third.slots[0]), None);
        assert!(restored.snapshot(128).len() < bytes.len());

        // State a String map wrote (before this store) reads the same.
        let mut old: KeyedMap<String> = KeyedMap::default();
        old.insert("k".into(), "7".to_owned());
        let written = super::super::operators::encode_keyed(&old, 128);
        let mut read = FunctionStates::default();
        read.restore("op", &written, &(0..128)).expect("read");
        let mut one = Grouped::default();
        read.group(&[record("k", "")], &mut one);
        assert_eq!(read.get(one.slots[0]), Some("7"));
    }
}
