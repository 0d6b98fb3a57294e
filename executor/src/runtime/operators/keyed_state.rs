//! The checkpoint format of keyed state: entries laid out by key group behind an index of the
//! groups, so a subtask restoring a range of key groups (after a rescale or a move) decodes only
//! its own groups' bytes, as Flink's key-group-indexed snapshots allow. Written in two passes over
//! the map (sizes per group, then each entry at its group's place) with no copy of the keys.
//!
//! Layout (integers little-endian, `varint` = LEB128):
//! ```text
//! "RSK2" | max_parallelism u32 | groups u32 | groups x (group u32, offset u64, length u64, entries u64)
//! | per group, its entries: varint key length, key bytes, value
//! ```
//! Offsets count from the end of the index. Values are a varint (counts) or a varint length and
//! JSON (aggregates). State written before this format (JSON) is still read.

use std::collections::BTreeMap;
use std::hash::BuildHasher;

use serde::{de::DeserializeOwned, Deserialize, Serialize};

use crate::runtime::key_groups::{key_group, KeyedMap, StateKey};

const MAGIC: &[u8; 4] = b"RSK2";
const INDEX_ENTRY_BYTES: usize = 4 + 8 + 8 + 8;

/// How a value of keyed state is written.
pub trait StateValue: Sized {
    fn encoded_len(&self) -> usize;
    fn encode(&self, out: &mut Vec<u8>);
    fn decode(input: &mut &[u8]) -> Option<Self>;
}

fn varint_len(mut value: u64) -> usize {
    let mut bytes = 1;
    while value >= 0x80 {
        value >>= 7;
        bytes += 1;
    }
    bytes
}

fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

fn take_varint(input: &mut &[u8]) -> Option<u64> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let (&byte, rest) = input.split_first()?;
        *input = rest;
        value |= u64::from(byte & 0x7f) << shift;
        if byte < 0x80 {
            return Some(value);
        }
    }
    None
}

fn take_bytes<'a>(input: &mut &'a [u8], length: usize) -> Option<&'a [u8]> {
    if input.len() < length {
        return None;
    }
    let (bytes, rest) = input.split_at(length);
    *input = rest;
    Some(bytes)
}

fn take_u32(input: &mut &[u8]) -> Option<u32> {
    take_bytes(input, 4)
        .and_then(|bytes| bytes.try_into().ok())
        .map(u32::from_le_bytes)
}

fn take_u64(input: &mut &[u8]) -> Option<u64> {
    take_bytes(input, 8)
        .and_then(|bytes| bytes.try_into().ok())
        .map(u64::from_le_bytes)
}

impl StateValue for u64 {
    fn encoded_len(&self) -> usize {
        varint_len(*self)
    }

    fn encode(&self, out: &mut Vec<u8>) {
        put_varint(out, *self);
    }

    fn decode(input: &mut &[u8]) -> Option<Self> {
        take_varint(input)
    }
}

/// Text as keyed state: its length, then its UTF-8 bytes.
fn text_encoded_len(text: &str) -> usize {
    varint_len(text.len() as u64) + text.len()
}

fn encode_text(text: &str, out: &mut Vec<u8>) {
    put_varint(out, text.len() as u64);
    out.extend_from_slice(text.as_bytes());
}

fn decode_text<'a>(input: &mut &'a [u8]) -> Option<&'a str> {
    let length = usize::try_from(take_varint(input)?).ok()?;
    std::str::from_utf8(take_bytes(input, length)?).ok()
}

/// A user function's state or accumulator, as written before [`FunctionStates`] kept it inline.
///
/// [`FunctionStates`]: crate::runtime::function_state::FunctionStates
impl StateValue for String {
    fn encoded_len(&self) -> usize {
        text_encoded_len(self)
    }

    fn encode(&self, out: &mut Vec<u8>) {
        encode_text(self, out);
    }

    fn decode(input: &mut &[u8]) -> Option<Self> {
        decode_text(input).map(str::to_owned)
    }
}

/// The same, as record text (inline up to 24 bytes): written exactly as a `String` is.
impl StateValue for crate::runtime::record::Text {
    fn encoded_len(&self) -> usize {
        text_encoded_len(self)
    }

    fn encode(&self, out: &mut Vec<u8>) {
        encode_text(self, out);
    }

    fn decode(input: &mut &[u8]) -> Option<Self> {
        decode_text(input).map(Into::into)
    }
}

impl StateValue for serde_json::Value {
    fn encoded_len(&self) -> usize {
        let length = self.to_string().len();
        varint_len(length as u64) + length
    }

    fn encode(&self, out: &mut Vec<u8>) {
        let text = self.to_string();
        put_varint(out, text.len() as u64);
        out.extend_from_slice(text.as_bytes());
    }

    fn decode(input: &mut &[u8]) -> Option<Self> {
        let length = usize::try_from(take_varint(input)?).ok()?;
        serde_json::from_slice(take_bytes(input, length)?).ok()
    }
}

/// Where one key group's entries lie.
#[derive(Debug, Clone, Copy, Default)]
struct GroupSlot {
    offset: u64,
    length: u64,
    entries: u64,
}

/// Keyed state as checkpoint bytes, grouped by key group.
pub fn encode_keyed<V: StateValue>(entries: &KeyedMap<V>, max_parallelism: u32) -> Vec<u8> {
    encode_entries(entries.iter(), entries.len(), max_parallelism)
}

/// [`encode_keyed`] of any store of keyed state: `entries` (about `count` of them) is walked
/// twice and must yield the same entries in the same order both times.
pub fn encode_entries<'a, V: StateValue + 'a>(
    entries: impl Iterator<Item = (&'a StateKey, &'a V)> + Clone,
    count: usize,
    max_parallelism: u32,
) -> Vec<u8> {
    let entry_len = |key: &StateKey, value: &V| {
        let key_len = key.as_str().len();
        varint_len(key_len as u64) + key_len + value.encoded_len()
    };
    // Pass 1: each entry's group (hashed once, kept for pass 2, which visits the unchanged map
    // in the same order), and the bytes and entries of each group. Dense tables by group: a
    // tree lookup per entry cost more than writing the entry.
    let mut slots = vec![GroupSlot::default(); max_parallelism.max(1) as usize];
    let mut entry_groups: Vec<u32> = Vec::with_capacity(count);
    for (key, value) in entries.clone() {
        let group = key_group(key, max_parallelism);
        let slot = &mut slots[group as usize];
        slot.length += entry_len(key, value) as u64;
        slot.entries += 1;
        entry_groups.push(group);
    }
    let used = slots.iter().filter(|slot| slot.entries > 0).count();
    let mut offset = 0u64;
    for slot in slots.iter_mut().filter(|slot| slot.entries > 0) {
        slot.offset = offset;
        offset += slot.length;
    }
    let header = MAGIC.len() + 8 + used * INDEX_ENTRY_BYTES;
    let mut out = Vec::with_capacity(header + offset as usize);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&max_parallelism.to_le_bytes());
    out.extend_from_slice(&(used as u32).to_le_bytes());
    for (group, slot) in slots.iter().enumerate().filter(|(_, slot)| slot.entries > 0) {
        out.extend_from_slice(&(group as u32).to_le_bytes());
        out.extend_from_slice(&slot.offset.to_le_bytes());
        out.extend_from_slice(&slot.length.to_le_bytes());
        out.extend_from_slice(&slot.entries.to_le_bytes());
    }
    // Pass 2: each entry at its group's cursor.
    out.resize(header + offset as usize, 0);
    let mut cursors: Vec<usize> = slots.iter().map(|slot| header + slot.offset as usize).collect();
    let mut scratch = Vec::new();
    for ((key, value), group) in entries.zip(entry_groups) {
        let cursor = &mut cursors[group as usize];
        scratch.clear();
        put_varint(&mut scratch, key.as_str().len() as u64);
        scratch.extend_from_slice(key.as_str().as_bytes());
        value.encode(&mut scratch);
        out[*cursor..*cursor + scratch.len()].copy_from_slice(&scratch);
        *cursor += scratch.len();
    }
    out
}

/// Entries on their way into a large map, sorted roughly by the bucket each will take.
///
/// A checkpoint lists a group's keys in no order the new map can use, so inserting them as they
/// come touches the map's table at random: two cache misses and TLB misses per entry, 450 ns of
/// the 480 ns per entry a restore of 9 million keys took. Collected first into one batch per
/// 1/1024 of the table (by the low bits of the entry's hash, which choose its bucket), each batch
/// then fills one small region of the table that stays in cache. Purely a matter of speed: with
/// any other layout of the map's table the result is the same map.
struct InsertBatches<V> {
    batches: Vec<Vec<(StateKey, V)>>,
    bucket_mask: u64,
    shift: u32,
}

impl<V> InsertBatches<V> {
    /// Below this many buckets the table fits in cache and entries go straight in.
    const SMALL_TABLE_BUCKETS: usize = 1 << 16;
    const BATCH_BITS: u32 = 10;

    /// For `adding` entries into `map`, which has room for them.
    fn for_map(map: &KeyedMap<V>, adding: usize) -> Self {
        // hashbrown keeps 7/8 of a power-of-two number of buckets usable and picks an entry's
        // first bucket by the low bits of its hash.
        let buckets = (map.capacity().saturating_mul(8) / 7).max(1).next_power_of_two();
        if buckets < Self::SMALL_TABLE_BUCKETS {
            return InsertBatches {
                batches: Vec::new(),
                bucket_mask: 0,
                shift: 0,
            };
        }
        let bits = buckets.trailing_zeros();
        // About the entries each batch gets, with a little room for an uneven hash.
        let expected = (adding >> Self::BATCH_BITS) * 9 / 8;
        InsertBatches {
            batches: (0..1usize << Self::BATCH_BITS)
                .map(|_| Vec::with_capacity(expected))
                .collect(),
            bucket_mask: buckets as u64 - 1,
            shift: bits - Self::BATCH_BITS,
        }
    }

    fn add(&mut self, map: &mut KeyedMap<V>, key: StateKey, value: V) {
        if self.batches.is_empty() {
            map.insert(key, value);
            return;
        }
        let bucket = map.hasher().hash_one(&key) & self.bucket_mask;
        self.batches[(bucket >> self.shift) as usize].push((key, value));
    }

    fn insert_all(self, map: &mut KeyedMap<V>) {
        for batch in self.batches {
            map.extend(batch);
        }
    }
}

/// The JSON keyed state of checkpoints written before [`encode_keyed`].
#[derive(Debug, Default, Serialize, Deserialize)]
struct JsonKeyedSnapshot<V> {
    max_parallelism: u32,
    groups: BTreeMap<u32, Vec<(String, V)>>,
}

/// How many entries of `bytes` lie in `groups`, from the index alone (0 for state written before
/// the index, or an index that cannot be read: decoding then says what is wrong). A subtask
/// restoring several old subtasks' states sizes its map once for all of them with it: growing
/// a map of 20 million keys between two states rehashes every one of them.
pub fn entries_in_groups(bytes: &[u8], groups: &std::ops::Range<u32>) -> usize {
    let Some(mut input) = bytes.strip_prefix(MAGIC.as_slice()) else {
        return 0;
    };
    let (Some(_max_parallelism), Some(count)) = (take_u32(&mut input), take_u32(&mut input)) else {
        return 0;
    };
    let mut total = 0usize;
    for _ in 0..count {
        let (Some(group), Some(_offset), Some(length), Some(entries)) = (
            take_u32(&mut input),
            take_u64(&mut input),
            take_u64(&mut input),
            take_u64(&mut input),
        ) else {
            return 0;
        };
        if groups.contains(&group) {
            // Bounded like decoding bounds it: an entry takes at least two bytes.
            total = total.saturating_add(usize::try_from(entries.min(length / 2)).unwrap_or(0));
        }
    }
    total
}

/// Adds the entries of `bytes` whose key group lies in `groups` to `entries`, decoding only
/// those groups. The error says what is wrong with the bytes.
pub fn decode_keyed<V: StateValue + DeserializeOwned>(
    entries: &mut KeyedMap<V>,
    bytes: &[u8],
    groups: &std::ops::Range<u32>,
) -> Result<(), String> {
    decode_entries(entries, bytes, groups, |value| value)
}

/// [`decode_keyed`] into a map that holds what `store` makes of each decoded value (a store
/// that keeps its values elsewhere maps a key to where it put the value).
pub fn decode_entries<V: StateValue + DeserializeOwned, S>(
    entries: &mut KeyedMap<S>,
    bytes: &[u8],
    groups: &std::ops::Range<u32>,
    mut store: impl FnMut(V) -> S,
) -> Result<(), String> {
    let Some(mut input) = bytes.strip_prefix(MAGIC.as_slice()) else {
        let snapshot: JsonKeyedSnapshot<V> = serde_json::from_slice(bytes).map_err(|error| error.to_string())?;
        for (group, group_entries) in snapshot.groups {
            if groups.contains(&group) {
                entries.extend(
                    group_entries
                        .into_iter()
                        .map(|(key, value)| (StateKey::from(key), store(value))),
                );
            }
        }
        return Ok(());
    };
    let truncated = || "the keyed state is truncated".to_owned();
    let _max_parallelism = take_u32(&mut input).ok_or_else(truncated)?;
    let count = take_u32(&mut input).ok_or_else(truncated)? as usize;
    let index =
        take_bytes(&mut input, count.checked_mul(INDEX_ENTRY_BYTES).ok_or_else(truncated)?).ok_or_else(truncated)?;
    let data = input;
    let mut index = index;
    // The groups to decode, first: the map grows once to hold all of them. (Growing it group by
    // group resized it at every group, since a reserve grows a map to exactly what it is asked
    // for: restoring 9 million keys took 3.9 s instead of 1.)
    let mut wanted = Vec::new();
    for _ in 0..count {
        let group = take_u32(&mut index).ok_or_else(truncated)?;
        let offset = take_u64(&mut index).ok_or_else(truncated)?;
        let length = take_u64(&mut index).ok_or_else(truncated)?;
        let expected = take_u64(&mut index).ok_or_else(truncated)?;
        if !groups.contains(&group) {
            continue;
        }
        let slice = usize::try_from(offset)
            .ok()
            .zip(usize::try_from(length).ok())
            .and_then(|(offset, length)| data.get(offset..offset.checked_add(length)?))
            .ok_or_else(|| format!("key group {group} lies outside the keyed state"))?;
        wanted.push((group, slice, expected));
    }
    // An entry takes at least two bytes, which bounds what a damaged index can make us allocate.
    let room: usize = wanted
        .iter()
        .map(|(_, slice, expected)| usize::try_from(*expected).unwrap_or(0).min(slice.len() / 2))
        .sum();
    entries.reserve(room);
    let mut batches = InsertBatches::for_map(entries, room);
    for (group, mut slice, expected) in wanted {
        let mut decoded = 0u64;
        while !slice.is_empty() {
            let (key, value) = (|| {
                let key_len = usize::try_from(take_varint(&mut slice)?).ok()?;
                let key = std::str::from_utf8(take_bytes(&mut slice, key_len)?).ok()?;
                let value = V::decode(&mut slice)?;
                Some((StateKey::from(key), store(value)))
            })()
            .ok_or_else(|| format!("entry {decoded} of key group {group} is malformed"))?;
            batches.add(entries, key, value);
            decoded += 1;
        }
        if decoded != expected {
            return Err(format!(
                "key group {group} holds {decoded} entries, its index says {expected}"
            ));
        }
    }
    batches.insert_all(entries);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map_of(entries: &[(&str, u64)]) -> KeyedMap<u64> {
        entries
            .iter()
            .map(|(key, value)| (StateKey::from(*key), *value))
            .collect()
    }

    fn sorted(map: &KeyedMap<u64>) -> Vec<(String, u64)> {
        let mut entries: Vec<(String, u64)> = map.iter().map(|(key, value)| (key.to_string(), *value)).collect();
        entries.sort();
        entries
    }

    proptest::proptest! {
        /// Any split of the key groups into ranges restores every entry exactly once.
        #[test]
        fn ranges_restore_each_entry_once(
            entries in proptest::collection::btree_map("\\PC{0,40}", proptest::num::u64::ANY, 0..300),
            parallelism in 1u32..9,
        ) {
            let map: KeyedMap<u64> = entries.iter().map(|(key, value)| (StateKey::from(key.as_str()), *value)).collect();
            let bytes = encode_keyed(&map, 32);
            let mut restored: KeyedMap<u64> = KeyedMap::default();
            for index in 0..parallelism {
                let range = crate::runtime::key_groups::key_group_range(index, 32, parallelism);
                let mut part: KeyedMap<u64> = KeyedMap::default();
                decode_keyed(&mut part, &bytes, &range).map_err(proptest::test_runner::TestCaseError::fail)?;
                for key in part.keys() {
                    proptest::prop_assert!(range.contains(&key_group(key, 32)));
                }
                restored.extend(part);
            }
            proptest::prop_assert_eq!(sorted(&restored), sorted(&map));
        }
    }

    /// Maps large enough to be filled batch by batch restore exactly as small ones: every entry
    /// once, in the subtask that owns its group, also into a map that already holds entries.
    #[test]
    fn large_states_restore_every_entry_once_by_range() {
        let map: KeyedMap<u64> = (0..150_000u64)
            .map(|n| (StateKey::from(format!("key-{n}").as_str()), n * 7))
            .collect();
        let bytes = encode_keyed(&map, 128);
        assert!(bytes.starts_with(MAGIC));
        let mut whole: KeyedMap<u64> = KeyedMap::default();
        decode_keyed(&mut whole, &bytes, &(0..128)).expect("decodes");
        assert_eq!(whole, map);
        // Two ranges restored one after the other into one map, as a subtask adopting the
        // groups of two old subtasks does.
        let mut merged: KeyedMap<u64> = KeyedMap::default();
        decode_keyed(&mut merged, &bytes, &(0..40)).expect("decodes");
        let first = merged.len();
        assert!(merged.keys().all(|key| key_group(key, 128) < 40));
        decode_keyed(&mut merged, &bytes, &(40..128)).expect("decodes");
        assert!(first > 0 && first < map.len());
        assert_eq!(merged, map);
    }

    /// The layout is the documented one: the index lists the groups in order and each group's
    /// bytes hold its entries, so checkpoints written by one build are read by another.
    #[test]
    fn the_index_lists_groups_in_order_with_their_entries() {
        let map = map_of(&[("alpha", 1), ("beta", 300), ("gamma", 70_000), ("delta", 5)]);
        let bytes = encode_keyed(&map, 16);
        let mut input = &bytes[4..];
        assert_eq!(take_u32(&mut input), Some(16));
        let count = take_u32(&mut input).expect("group count");
        let mut groups = Vec::new();
        let mut entries = 0;
        for _ in 0..count {
            let group = take_u32(&mut input).expect("group");
            let _offset = take_u64(&mut input).expect("offset");
            let _length = take_u64(&mut input).expect("length");
            entries += take_u64(&mut input).expect("entries");
            groups.push(group);
        }
        let mut expected: Vec<u32> = map.keys().map(|key| key_group(key, 16)).collect();
        expected.sort_unstable();
        expected.dedup();
        assert_eq!(groups, expected);
        assert_eq!(entries, 4);
    }

    #[test]
    fn the_index_tells_how_many_entries_a_range_restores() {
        let map: KeyedMap<u64> = (0..1_000u64)
            .map(|n| (StateKey::from(format!("k{n}").as_str()), n))
            .collect();
        let bytes = encode_keyed(&map, 128);
        for range in [0..128, 0..40, 40..128, 7..8] {
            let mut part: KeyedMap<u64> = KeyedMap::default();
            decode_keyed(&mut part, &bytes, &range).expect("decodes");
            assert_eq!(entries_in_groups(&bytes, &range), part.len(), "{range:?}");
        }
        assert_eq!(entries_in_groups(b"{}", &(0..128)), 0);
        assert_eq!(entries_in_groups(&bytes[..10], &(0..128)), 0);
    }

    #[test]
    fn aggregate_values_and_old_json_state_read_back() {
        let values: KeyedMap<serde_json::Value> = [
            (StateKey::from("a"), serde_json::json!(2.5)),
            (StateKey::from("b"), serde_json::json!("x,y")),
        ]
        .into_iter()
        .collect();
        let mut restored = KeyedMap::default();
        decode_keyed(&mut restored, &encode_keyed(&values, 128), &(0..128)).expect("decodes");
        assert_eq!(restored, values);

        let json = br#"{"max_parallelism":128,"groups":{"3":[["w1",4]],"90":[["w2",1]]}}"#;
        let mut counts: KeyedMap<u64> = KeyedMap::default();
        decode_keyed(&mut counts, json, &(0..50)).expect("decodes");
        assert_eq!(sorted(&counts), vec![("w1".to_owned(), 4)]);
    }

    #[test]
    fn damaged_state_is_an_error_that_says_what_is_wrong() {
        let bytes = encode_keyed(&map_of(&[("alpha", 1), ("beta", 300), ("gamma", 70_000)]), 128);
        let mut sink: KeyedMap<u64> = KeyedMap::default();
        let truncated = decode_keyed(&mut sink, &bytes[..bytes.len() - 2], &(0..128)).expect_err("truncated");
        assert!(
            truncated.contains("outside the keyed state") || truncated.contains("malformed"),
            "{truncated}"
        );
        assert!(decode_keyed(&mut sink, &bytes[..10], &(0..128))
            .expect_err("no index")
            .contains("truncated"));
        assert!(decode_keyed(&mut sink, b"{not json", &(0..128)).is_err());
    }
}
