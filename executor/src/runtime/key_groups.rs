//! Keyed exchange: a key hashes into one of `max_parallelism` key groups, and each subtask owns a
//! contiguous range of key groups, so state can be redistributed when parallelism changes (the
//! same scheme as Flink's KeyGroupRangeAssignment).

/// A stable 64-bit hash (FNV-1a): the same key lands in the same key group on every executor,
/// build and run, unlike std's randomly seeded hasher.
pub fn stable_hash(key: &str) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in key.as_bytes() {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

/// FNV-1a as a `Hasher` for keyed state maps: keys are short words or ids, where std's SipHash
/// costs more than the rest of a keyed update. Not DoS-resistant, which state keyed by the job's own
/// data does not need.
#[derive(Debug, Clone, Copy)]
pub struct FnvHasher(u64);

impl Default for FnvHasher {
    fn default() -> Self {
        FnvHasher(0xcbf2_9ce4_8422_2325)
    }
}

impl std::hash::Hasher for FnvHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for byte in bytes {
            self.0 ^= u64::from(*byte);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
}

/// A key of keyed state: a record's key. Keys up to 24 bytes (words, ids) live inside the map's
/// bucket, so a lookup compares them without following a pointer to the heap, which showed as the
/// largest per-word cost of the word count.
pub type StateKey = super::record::Text;

/// A hash map with [`FnvHasher`], looked up by `&str`.
pub type KeyedMap<V> = std::collections::HashMap<StateKey, V, std::hash::BuildHasherDefault<FnvHasher>>;

/// The key group of `key`, in `0..max_parallelism`.
pub fn key_group(key: &str, max_parallelism: u32) -> u32 {
    let groups = u64::from(max_parallelism.max(1));
    let hash = stable_hash(key);
    // The same remainder without a division for the usual power-of-two max parallelism (the
    // division showed in the keyed exchange's per-record cost). Lossless: below max_parallelism.
    if groups.is_power_of_two() {
        (hash & (groups - 1)) as u32
    } else {
        (hash % groups) as u32
    }
}

/// The subtask (of `parallelism`) that owns `key_group`.
pub fn subtask_for_key_group(key_group: u32, max_parallelism: u32, parallelism: u32) -> u32 {
    let max_parallelism = u64::from(max_parallelism.max(1));
    let parallelism = u64::from(parallelism.max(1));
    (u64::from(key_group) * parallelism / max_parallelism) as u32
}

/// The key groups subtask `index` of `parallelism` owns: a contiguous range.
pub fn key_group_range(index: u32, max_parallelism: u32, parallelism: u32) -> std::ops::Range<u32> {
    let max = u64::from(max_parallelism.max(1));
    let parallelism = u64::from(parallelism.max(1));
    let start = (u64::from(index) * max).div_ceil(parallelism);
    let end = ((u64::from(index) + 1) * max).div_ceil(parallelism);
    (start as u32)..(end as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_partition_all_key_groups_and_agree_with_the_owner_function() {
        for parallelism in [1u32, 2, 3, 7, 128] {
            let mut covered = Vec::new();
            for index in 0..parallelism {
                for group in key_group_range(index, 128, parallelism) {
                    assert_eq!(
                        subtask_for_key_group(group, 128, parallelism),
                        index,
                        "group {group} at parallelism {parallelism}"
                    );
                    covered.push(group);
                }
            }
            assert_eq!(covered, (0..128).collect::<Vec<_>>(), "parallelism {parallelism}");
        }
    }

    proptest::proptest! {
        #[test]
        fn key_group_is_the_hash_modulo_max_parallelism(key in "\\PC{0,12}", max_parallelism in 1u32..300) {
            proptest::prop_assert_eq!(
                u64::from(key_group(&key, max_parallelism)),
                stable_hash(&key) % u64::from(max_parallelism)
            );
        }
    }

    #[test]
    fn hashing_is_stable_and_spreads_keys() {
        assert_eq!(stable_hash("word"), stable_hash("word"));
        assert_eq!(key_group("", 128), key_group("", 128));
        let groups: std::collections::BTreeSet<u32> = (0..1000).map(|n| key_group(&format!("w{n}"), 128)).collect();
        assert!(
            groups.len() > 120,
            "1000 keys should reach most of 128 groups, reached {}",
            groups.len()
        );
    }
}
