//! The word-count job the demo, the tests and the benchmarks run, and the exactly-once check of its
//! committed output: the count operator emits `word<TAB>n` on every update, so for a word seen N
//! times the committed files must hold exactly the lines `word 1` .. `word N`, each once. A lost
//! record shows as a missing line, a replayed one as a duplicate.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use raftstream_api::spec::GeneratorConfig;
use raftstream_executor::runtime::generator::GeneratedRecords;

/// Parameters of a word-count job: generator -> flat_map(split_words) -> key_by -> count -> file sink.
#[derive(Debug, Clone)]
pub struct WordCountJob {
    pub seed: u64,
    /// Records the generator emits; [`WordCountJob::UNBOUNDED`] for no end.
    pub records: u64,
    /// Records per second over all source subtasks; `None`: as fast as possible.
    pub rate_per_second: Option<u64>,
    pub parallelism: u32,
    pub vocabulary_size: u64,
    pub words_per_record: u64,
    pub checkpoint_interval_ms: u64,
    /// Absolute directory of the file sink, reachable by every executor.
    pub output_dir: PathBuf,
}

impl WordCountJob {
    /// `records` of a generator that never ends (the spec gives it no count).
    pub const UNBOUNDED: u64 = u64::MAX;

    /// The job spec (JSON) under `name`.
    pub fn spec(&self, name: &str) -> String {
        self.spec_with(name, "", 10_000)
    }

    /// The job spec with `extra` (e.g. `, "word_order": "sequential"`) after the generator's
    /// parameters and checkpoints timing out after `timeout_ms`.
    pub fn spec_with(&self, name: &str, extra: &str, timeout_ms: u64) -> String {
        let rate = self
            .rate_per_second
            .map(|rate| format!(r#", "rate_per_second": {rate}"#))
            .unwrap_or_default();
        format!(
            r#"{{"name": "{name}", "parallelism": {parallelism},
  "checkpoint": {{"interval_ms": {interval}, "timeout_ms": {timeout_ms}}},
  "restart": {{"strategy": "fixed_delay", "max_attempts": 10, "delay_ms": 200}},
  "operators": [
    {{"id": "lines", "kind": "generator", "params": {{"seed": {seed}{count}, "vocabulary_size": {vocabulary}, "words_per_record": {words}{rate}{extra}}}}},
    {{"id": "words", "kind": "flat_map", "inputs": ["lines"], "params": {{"function": "split_words"}}}},
    {{"id": "by_word", "kind": "key_by", "inputs": ["words"]}},
    {{"id": "counts", "kind": "count", "inputs": ["by_word"]}},
    {{"id": "out", "kind": "file_sink", "inputs": ["counts"], "params": {{"path": {path}}}}}]}}"#,
            parallelism = self.parallelism,
            interval = self.checkpoint_interval_ms,
            seed = self.seed,
            count = if self.records == Self::UNBOUNDED {
                String::new()
            } else {
                format!(r#", "count": {}"#, self.records)
            },
            vocabulary = self.vocabulary_size,
            words = self.words_per_record,
            path = serde_json::Value::String(self.output_dir.display().to_string()),
        )
    }

    /// The final count of every word, computed the obvious way (of a bounded input).
    pub fn expected_counts(&self) -> BTreeMap<String, u64> {
        assert!(
            self.records != Self::UNBOUNDED,
            "an unbounded input has no final counts"
        );
        let settings = GeneratorConfig {
            seed: self.seed,
            count: Some(self.records),
            vocabulary_size: self.vocabulary_size,
            words_per_record: self.words_per_record,
            ..GeneratorConfig::default()
        };
        let mut counts = BTreeMap::new();
        let mut line = String::new();
        for offset in 0..self.records {
            settings.write_record(offset, &mut line);
            for word in line
                .split(|c: char| !c.is_alphanumeric())
                .filter(|word| !word.is_empty())
            {
                *counts.entry(word.to_owned()).or_insert(0u64) += 1;
            }
        }
        counts
    }
}

/// Lines a checkpoint's generator offsets cover: generator subtask `i` of `parallelism` emits
/// offsets `i, i + parallelism, ...` and records the next one.
pub fn generated_records(checkpoint: &raftstream_proto::v1::Checkpoint, parallelism: u64) -> u64 {
    let parallelism = parallelism.max(1);
    checkpoint
        .source_offsets
        .iter()
        .map(|offset| {
            offset
                .offset
                .saturating_sub(u64::from(offset.subtask_index))
                .div_ceil(parallelism)
        })
        .sum()
}

/// What the committed output holds compared with the expected counts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OutputCheck {
    pub lines: u64,
    pub files: usize,
    pub keys: usize,
    /// Empty when the output is exactly right.
    pub problems: Vec<String>,
}

impl OutputCheck {
    /// Whether every expected update is there exactly once and nothing else is.
    pub fn is_exact(&self) -> bool {
        self.problems.is_empty()
    }
}

/// The highest count published for each word in `directory`.
pub fn highest_counts(directory: &Path) -> std::io::Result<BTreeMap<String, u64>> {
    let mut highest = BTreeMap::new();
    for path in published_files(directory)? {
        for line in std::fs::read_to_string(&path)?.lines() {
            if let Some((word, Ok(count))) = line.split_once('\t').map(|(word, count)| (word, count.parse::<u64>())) {
                let slot = highest.entry(word.to_owned()).or_insert(0);
                *slot = count.max(*slot);
            }
        }
    }
    Ok(highest)
}

/// Checks that the published output is an exact prefix of a run (what a job stopped part way
/// committed): every word's updates 1..n each once, whatever n is.
pub fn check_prefix(directory: &Path) -> std::io::Result<OutputCheck> {
    check_output(directory, &highest_counts(directory)?)
}

/// The published `part-*.txt` files under `directory`, sorted.
pub fn published_files(directory: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(directory)?
        .flatten()
        .map(|entry| entry.path())
        .filter(|path| {
            path.file_name()
                .and_then(|name| name.to_str())
                .is_some_and(|name| name.starts_with("part-") && name.ends_with(".txt"))
        })
        .collect();
    files.sort();
    Ok(files)
}

/// Reads the published `part-*.txt` files under `directory` and checks them against `expected`.
/// At most a few problems of each kind are listed, with their count.
pub fn check_output(directory: &Path, expected: &BTreeMap<String, u64>) -> std::io::Result<OutputCheck> {
    let mut updates: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    let mut check = OutputCheck::default();
    let mut malformed = Vec::new();
    let files = published_files(directory)?;
    check.files = files.len();
    for file in files {
        for line in std::fs::read_to_string(&file)?.lines() {
            check.lines += 1;
            match line.split_once('\t').map(|(key, count)| (key, count.parse::<u64>())) {
                Some((key, Ok(count))) => updates.entry(key.to_owned()).or_default().push(count),
                _ => malformed.push(format!("{}: {line:?}", file.display())),
            }
        }
    }
    check.keys = updates.len();
    let mut missing = Vec::new();
    let mut duplicated = Vec::new();
    let mut unexpected = Vec::new();
    for (key, total) in expected {
        let mut seen = updates.remove(key).unwrap_or_default();
        seen.sort_unstable();
        let before = seen.len();
        seen.dedup();
        if seen.len() != before {
            duplicated.push(format!("{key} ({} duplicate updates)", before - seen.len()));
        }
        let wanted: Vec<u64> = (1..=*total).collect();
        if seen != wanted {
            let absent = wanted.iter().filter(|n| seen.binary_search(n).is_err()).count();
            let beyond = seen.iter().filter(|n| **n > *total || **n == 0).count();
            if absent > 0 {
                missing.push(format!("{key} ({absent} of {total} updates missing)"));
            }
            if beyond > 0 {
                unexpected.push(format!("{key} ({beyond} counts beyond {total})"));
            }
        }
    }
    for key in updates.keys() {
        unexpected.push(format!("{key} (not an expected word)"));
    }
    for (what, list) in [
        ("malformed lines", malformed),
        ("lost updates", missing),
        ("duplicated updates", duplicated),
        ("unexpected output", unexpected),
    ] {
        if !list.is_empty() {
            let shown: Vec<&str> = list.iter().take(5).map(String::as_str).collect();
            check
                .problems
                .push(format!("{what}: {} keys, e.g. {}", list.len(), shown.join(", ")));
        }
    }
    Ok(check)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_check_reports_lost_duplicated_and_unexpected_updates() -> std::io::Result<()> {
        let directory = tempfile::tempdir()?;
        let expected = BTreeMap::from([("a".to_owned(), 2u64), ("b".to_owned(), 1)]);
        std::fs::write(directory.path().join("part-0-000000000001.txt"), "a\t1\nb\t1\n")?;
        std::fs::write(directory.path().join("part-0-000000000002.txt"), "a\t2\n")?;
        assert!(check_output(directory.path(), &expected)?.is_exact());

        std::fs::write(directory.path().join("part-1-000000000003.txt"), "a\t2\nc\t1\n")?;
        std::fs::remove_file(directory.path().join("part-0-000000000001.txt"))?;
        let check = check_output(directory.path(), &expected)?;
        let text = check.problems.join("; ");
        assert!(text.contains("lost updates") && text.contains("a (1 of 2"), "{text}");
        assert!(text.contains("duplicated updates: 1 keys, e.g. a"), "{text}");
        assert!(text.contains("c (not an expected word)"), "{text}");
        Ok(())
    }

    #[test]
    fn expected_counts_add_up_to_every_word() {
        let job = WordCountJob {
            seed: 1,
            records: 100,
            rate_per_second: None,
            parallelism: 2,
            vocabulary_size: 10,
            words_per_record: 3,
            checkpoint_interval_ms: 100,
            output_dir: PathBuf::from("/tmp/unused"),
        };
        assert_eq!(job.expected_counts().values().sum::<u64>(), 300);
        let spec = job.spec("wc");
        let graph = raftstream_api::spec::parse_job_spec(&spec).expect("the spec is valid");
        assert_eq!(graph.total_subtasks(), 10, "five operators at parallelism 2");
    }
}
