//! The hottest keys of a keyed subtask in bounded memory: the Space-Saving sketch (Metwally,
//! Agrawal, El Abbadi 2005). It keeps `capacity` counters; a key without one takes the smallest
//! counter over, inheriting its count as the new key's possible overcount (`error`). Every key
//! seen more than `total / capacity` times is guaranteed a counter, and a counter's count is
//! never below the key's true count nor above it by more than its error.

use raftstream_api::messages::HotKey;

use crate::runtime::key_groups::KeyedMap;
use crate::runtime::record::Text;

/// A Space-Saving sketch of at most `capacity` keys.
#[derive(Debug)]
pub struct SpaceSaving {
    capacity: usize,
    /// Keyed state's map and hasher: a lookup per sampled record is the sketch's whole cost.
    counters: KeyedMap<(u64, u64)>,
    total: u64,
}

impl SpaceSaving {
    pub fn new(capacity: usize) -> SpaceSaving {
        SpaceSaving {
            capacity: capacity.max(1),
            counters: KeyedMap::with_capacity_and_hasher(capacity.max(1), Default::default()),
            total: 0,
        }
    }

    /// Counts `weight` occurrences of `key`.
    pub fn add(&mut self, key: &Text, weight: u64) {
        self.total += weight;
        if let Some((count, _)) = self.counters.get_mut(key.as_str()) {
            *count += weight;
            return;
        }
        if self.counters.len() < self.capacity {
            self.counters.insert(key.clone(), (weight, 0));
            return;
        }
        // The smallest counter goes to the new key, which may have been seen that often before.
        // A linear scan: the capacity is a few dozen and misses are the rare case for hot keys.
        let smallest = self
            .counters
            .iter()
            .min_by_key(|(_, (count, _))| *count)
            .map(|(evicted, (count, _))| (evicted.clone(), *count));
        if let Some((evicted, floor)) = smallest {
            self.counters.remove(&evicted);
            self.counters.insert(key.clone(), (floor + weight, floor));
        }
    }

    /// Everything counted, hot or not.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// The `limit` keys with the highest counts, highest first (ties by key).
    pub fn top(&self, limit: usize) -> Vec<HotKey> {
        let mut estimates: Vec<HotKey> = self
            .counters
            .iter()
            .map(|(key, (count, error))| HotKey {
                key: key.to_string(),
                count: *count,
                error: *error,
            })
            .collect();
        estimates.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.key.cmp(&b.key)));
        estimates.truncate(limit);
        estimates
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_heavy_keys_of_a_long_tail_are_found_with_bounded_error() {
        let mut sketch = SpaceSaving::new(16);
        let mut exact: std::collections::HashMap<String, u64> = std::collections::HashMap::new();
        // Key "hot" is half the stream, "warm" a tenth, and 5,000 cold keys share the rest.
        for n in 0u64..100_000 {
            let key = match n % 10 {
                0..=4 => "hot".to_owned(),
                5 => "warm".to_owned(),
                _ => format!("cold{}", (n * 7_919) % 5_000),
            };
            *exact.entry(key.clone()).or_default() += 1;
            sketch.add(&Text::from(key), 1);
        }
        assert_eq!(sketch.total(), 100_000);
        let top = sketch.top(2);
        assert_eq!(top[0].key, "hot");
        assert_eq!(top[1].key, "warm");
        for estimate in &top {
            let truth = exact[&estimate.key];
            assert!(estimate.count >= truth, "never an undercount");
            assert!(
                estimate.count - estimate.error <= truth,
                "the error bounds the overcount"
            );
            // Space-Saving's guarantee: overcount at most total / capacity.
            assert!(estimate.count - truth <= 100_000 / 16);
        }
        assert!(sketch.counters.len() <= 16, "bounded memory");
    }

    #[test]
    fn weights_add_up_and_few_keys_are_exact() {
        let mut sketch = SpaceSaving::new(4);
        sketch.add(&Text::from("a"), 3);
        sketch.add(&Text::from("b"), 1);
        sketch.add(&Text::from("a"), 2);
        assert_eq!(
            sketch.top(10),
            vec![
                HotKey {
                    key: "a".into(),
                    count: 5,
                    error: 0
                },
                HotKey {
                    key: "b".into(),
                    count: 1,
                    error: 0
                }
            ]
        );
    }
}
