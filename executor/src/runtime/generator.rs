//! The `generator` source: deterministic text records from a seed. Record `n` is a pure function
//! of (seed, n), so a source rewound to an offset replays exactly what it produced before.

use raftstream_api::spec::GeneratorConfig;
use serde::{Deserialize, Serialize};

/// The records of a generator source, from its validated configuration.
pub trait GeneratedRecords {
    /// The index of word `position` of record `offset`, in `0..vocabulary_size`.
    fn word_index(&self, offset: u64, position: u64) -> u64;
    /// Writes record `offset` into `line` (cleared first): words `w<index>` separated by spaces.
    fn write_record(&self, offset: u64, line: &mut String);
    /// Whether `offset` lies past the end of a bounded source.
    fn is_exhausted(&self, offset: u64) -> bool;
}

/// SplitMix64: a tiny, well-mixed deterministic generator.
fn mix(mut state: u64) -> u64 {
    state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl GeneratedRecords for GeneratorConfig {
    fn word_index(&self, offset: u64, position: u64) -> u64 {
        if self.sequential_words {
            let word = offset.wrapping_mul(self.words_per_record).wrapping_add(position);
            return word % self.vocabulary_size.max(1);
        }
        let mixed = mix(self.seed ^ mix(offset.wrapping_mul(0x1000_0000_01b3) ^ position));
        if self.hot_word_percent > 0 && mix(mixed) % 100 < self.hot_word_percent {
            return 0;
        }
        // The high half of mixed * vocabulary_size: as uniform as a remainder, without a 64-bit
        // division per word (with itoa for the digits, a line went from 250 to 120 ns).
        // Below vocabulary_size.
        ((u128::from(mixed) * u128::from(self.vocabulary_size.max(1))) >> 64) as u64
    }

    fn write_record(&self, offset: u64, line: &mut String) {
        line.clear();
        let mut digits = itoa::Buffer::new();
        for position in 0..self.words_per_record {
            if position > 0 {
                line.push(' ');
            }
            line.push('w');
            line.push_str(digits.format(self.word_index(offset, position)));
        }
    }

    fn is_exhausted(&self, offset: u64) -> bool {
        self.count.is_some_and(|count| offset >= count)
    }
}

/// Which offsets one generator subtask still has to emit, in a form that survives a change of
/// parallelism. Subtask `index` of `parallelism` emits its lane, the offsets `index, index +
/// parallelism, ...`, from `next` on. After a rescale the lanes change, so the progress of the
/// earlier placements stays recorded (`emitted_before`) and offsets they emitted are skipped, until
/// this subtask's lane has passed all of them (a few records, since every subtask of a placement
/// runs at about the same pace).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GeneratorPosition {
    /// The next offset this subtask emits (never one emitted before).
    pub next: u64,
    /// The parallelism of the placement: the distance between two offsets of one lane.
    pub step: u64,
    /// Progress of earlier placements: offset `x` was emitted when `x < table[x % table.len()]`
    /// for some table (one per earlier placement, one entry per lane).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub emitted_before: Vec<Vec<u64>>,
}

impl GeneratorPosition {
    /// Subtask `index` of `parallelism` of a generator that has emitted nothing.
    pub fn fresh(index: u32, parallelism: u32) -> Self {
        GeneratorPosition {
            next: u64::from(index),
            step: u64::from(parallelism.max(1)),
            emitted_before: Vec::new(),
        }
    }

    /// Subtask `index` of `parallelism` resuming after a placement whose subtasks stood at
    /// `previous` (indexed by their subtask index, every one present). At an unchanged parallelism
    /// each subtask resumes exactly where it stood; otherwise every offset below the slowest lane
    /// of the previous placement is done, and those it emitted above are skipped.
    pub fn resume(index: u32, parallelism: u32, previous: &[GeneratorPosition]) -> Result<Self, String> {
        let step = u64::from(parallelism.max(1));
        for (lane, position) in previous.iter().enumerate() {
            let consistent = position.step == previous.len() as u64 && position.next % position.step == lane as u64;
            if !consistent {
                return Err(format!(
                    "generator subtask {lane} of {} stood at offset {} with a step of {}",
                    previous.len(),
                    position.next,
                    position.step
                ));
            }
        }
        if previous.len() as u64 == step {
            return previous
                .get(index as usize)
                .cloned()
                .ok_or_else(|| format!("no position for generator subtask {index}"));
        }
        let Some(floor) = previous.iter().map(|position| position.next).min() else {
            return Ok(GeneratorPosition::fresh(index, parallelism));
        };
        let mut emitted_before = vec![previous.iter().map(|position| position.next).collect::<Vec<u64>>()];
        for table in previous.iter().flat_map(|position| &position.emitted_before) {
            if !emitted_before.contains(table) {
                emitted_before.push(table.clone());
            }
        }
        let lane = u64::from(index);
        let next = floor + (lane + step - floor % step) % step;
        let mut position = GeneratorPosition {
            next,
            step,
            emitted_before,
        };
        position.skip_emitted();
        Ok(position)
    }

    fn was_emitted(&self, offset: u64) -> bool {
        self.emitted_before.iter().any(|table| {
            table
                .get((offset % table.len().max(1) as u64) as usize)
                .is_some_and(|next| offset < *next)
        })
    }

    /// Moves `next` past offsets an earlier placement emitted, and forgets the tables that can
    /// no longer mark anything at or after it.
    fn skip_emitted(&mut self) {
        while self.was_emitted(self.next) {
            self.next += self.step;
        }
        let next = self.next;
        self.emitted_before
            .retain(|table| table.iter().any(|table_next| *table_next > next));
    }

    /// Takes the next offset to emit.
    pub fn advance(&mut self) -> u64 {
        let offset = self.next;
        self.next += self.step;
        if !self.emitted_before.is_empty() {
            self.skip_emitted();
        }
        offset
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_are_a_pure_function_of_seed_and_offset() {
        let settings = GeneratorConfig {
            seed: 42,
            count: Some(10),
            vocabulary_size: 50,
            words_per_record: 4,
            ..GeneratorConfig::default()
        };
        let (mut first, mut again) = (String::new(), String::new());
        settings.write_record(7, &mut first);
        settings.write_record(7, &mut again);
        assert_eq!(first, again);
        assert_eq!(first.split(' ').count(), 4);
        let other_seed = GeneratorConfig {
            seed: 43,
            ..settings.clone()
        };
        let mut different = String::new();
        other_seed.write_record(7, &mut different);
        assert_ne!(first, different);
        assert!(settings.is_exhausted(10) && !settings.is_exhausted(9));
        assert!(first.split(' ').all(|word| word
            .strip_prefix('w')
            .and_then(|index| index.parse::<u64>().ok())
            .is_some_and(|index| index < 50)));
    }

    #[test]
    fn words_spread_evenly_over_the_vocabulary() {
        let sequential = GeneratorConfig {
            vocabulary_size: 5,
            words_per_record: 3,
            sequential_words: true,
            ..GeneratorConfig::default()
        };
        let mut line = String::new();
        let lines: Vec<String> = (0..3)
            .map(|offset| {
                sequential.write_record(offset, &mut line);
                line.clone()
            })
            .collect();
        assert_eq!(lines, vec!["w0 w1 w2", "w3 w4 w0", "w1 w2 w3"]);
        let settings = GeneratorConfig {
            seed: 9,
            vocabulary_size: 10,
            ..GeneratorConfig::default()
        };
        let mut seen = [0u32; 10];
        for offset in 0..10_000 {
            let index = settings.word_index(offset, offset % 8);
            seen[index as usize] += 1;
        }
        assert!(seen.iter().all(|count| (900..=1_100).contains(count)), "{seen:?}");
    }

    #[test]
    fn a_hot_word_takes_its_share_of_the_stream() {
        let skewed = GeneratorConfig {
            vocabulary_size: 1_000,
            hot_word_percent: 90,
            ..GeneratorConfig::default()
        };
        let words = 100_000;
        let hot = (0..words).filter(|offset| skewed.word_index(*offset, 0) == 0).count();
        // 90 % drawn hot, plus the uniform draws that land on w0 anyway.
        assert!((89_500..=90_500).contains(&hot), "{hot} of {words}");
    }

    proptest::proptest! {
        #[test]
        fn word_indices_stay_inside_the_vocabulary(seed: u64, offset: u64, position in 0u64..64, vocabulary_size in 0u64..2_000_000) {
            let settings = GeneratorConfig { seed, vocabulary_size, ..GeneratorConfig::default() };
            proptest::prop_assert!(settings.word_index(offset, position) < vocabulary_size.max(1));
        }
    }

    /// Runs a bounded generator through placements of these parallelisms, each emitting up to
    /// `budget` records per subtask before the next takes over from its positions.
    fn emitted_through(parallelisms: &[u32], budget: u64, count: u64) -> Vec<u64> {
        let mut emitted = Vec::new();
        let mut positions: Vec<GeneratorPosition> = Vec::new();
        for (round, parallelism) in parallelisms.iter().enumerate() {
            positions = (0..*parallelism)
                .map(|index| {
                    if round == 0 {
                        GeneratorPosition::fresh(index, *parallelism)
                    } else {
                        GeneratorPosition::resume(index, *parallelism, &positions).expect("consistent")
                    }
                })
                .collect();
            for (index, position) in positions.iter_mut().enumerate() {
                // Subtasks run at slightly different paces, as they do for real.
                for _ in 0..budget + index as u64 {
                    if position.next >= count {
                        break;
                    }
                    emitted.push(position.advance());
                }
            }
        }
        let last = *parallelisms.last().unwrap_or(&1);
        let mut finishing: Vec<GeneratorPosition> = (0..last)
            .map(|index| GeneratorPosition::resume(index, last, &positions).expect("consistent"))
            .collect();
        for position in &mut finishing {
            while position.next < count {
                emitted.push(position.advance());
            }
        }
        emitted
    }

    #[test]
    fn a_rescaled_generator_emits_every_offset_exactly_once() {
        for parallelisms in [vec![2, 4, 1], vec![3, 2, 5, 5, 1], vec![1, 7], vec![4, 4]] {
            let mut emitted = emitted_through(&parallelisms, 37, 2_000);
            emitted.sort_unstable();
            assert_eq!(emitted, (0..2_000).collect::<Vec<u64>>(), "through {parallelisms:?}");
        }
    }

    #[test]
    fn positions_stay_small_and_an_unchanged_parallelism_resumes_exactly() {
        let previous: Vec<GeneratorPosition> = (0..3)
            .map(|index| {
                let mut position = GeneratorPosition::fresh(index, 3);
                for _ in 0..10 + index {
                    position.advance();
                }
                position
            })
            .collect();
        for index in 0..3 {
            assert_eq!(
                GeneratorPosition::resume(index, 3, &previous),
                Ok(previous[index as usize].clone())
            );
        }
        let mut rescaled = GeneratorPosition::resume(0, 2, &previous).expect("consistent");
        assert_eq!(rescaled.emitted_before.len(), 1);
        for _ in 0..10 {
            rescaled.advance();
        }
        assert!(
            rescaled.emitted_before.is_empty(),
            "forgotten once passed: {rescaled:?}"
        );
        let inconsistent = GeneratorPosition {
            next: 4,
            step: 3,
            emitted_before: Vec::new(),
        };
        assert!(GeneratorPosition::resume(0, 2, &[inconsistent]).is_err());
    }

    proptest::proptest! {
        #[test]
        fn any_sequence_of_rescales_emits_each_offset_once(
            parallelisms in proptest::collection::vec(1u32..9, 1..6),
            budget in 0u64..50,
        ) {
            let mut emitted = emitted_through(&parallelisms, budget, 700);
            emitted.sort_unstable();
            proptest::prop_assert_eq!(emitted, (0..700).collect::<Vec<u64>>());
        }
    }
}
