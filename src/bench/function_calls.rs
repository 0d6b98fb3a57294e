//! `bench function-calls`: the word count's function calls alone, in this process, without a
//! cluster: batches of generated lines through each language's `flat_map`, the words grouped by
//! key with their counts so far through its `reduce`, the way the executor's operators call them.
//! Prints the time per line of each export and of the host's work around them (filling the
//! columns, grouping, keeping the state), to see where a function's time goes.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use raftstream_functions::build::build_component;
use raftstream_functions::{Events, Export, FunctionHost, FunctionInstance, FunctionLimits, KeyedValues};

#[derive(Debug, Args)]
pub struct FunctionCallsBenchArgs {
    /// Lines (8 words each, vocabulary 10,000) per run.
    #[arg(long, default_value_t = 50_000)]
    pub lines: usize,
    /// Lines per batch, as the executor's operators see them.
    #[arg(long, default_value_t = 1_000)]
    pub batch: usize,
    /// Runs per language, interleaved; the median is reported.
    #[arg(long, default_value_t = 3)]
    pub repeat: u32,
    /// Languages to measure (their word counts in examples/functions/).
    #[arg(long, value_delimiter = ',', default_value = "rust,javascript,python")]
    pub languages: Vec<String>,
    /// Other word counts to measure as well (sources with a `flat_map` and a `reduce`, built
    /// like a job's), to compare a variant of the logic or of a guest library with the examples.
    #[arg(long, value_delimiter = ',')]
    pub sources: Vec<PathBuf>,
}

/// Where one run's time went, in total.
#[derive(Default, Clone, Copy)]
struct Spent {
    flat_map: Duration,
    reduce: Duration,
    host: Duration,
    words: usize,
}

pub async fn run_function_calls_bench(args: FunctionCallsBenchArgs) -> anyhow::Result<()> {
    let host = FunctionHost::new()?;
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/functions");
    let mut sources = Vec::new();
    for language in &args.languages {
        let source: PathBuf = match language.as_str() {
            "javascript" => examples.join("javascript/wordcount.js"),
            "python" => examples.join("python/wordcount.py"),
            "rust" => examples.join("rust/wordcount.rs"),
            other => anyhow::bail!("--languages: {other:?} is not one of javascript, python, rust"),
        };
        sources.push((language.clone(), source));
    }
    for source in &args.sources {
        let label = source.file_name().map_or_else(
            || source.display().to_string(),
            |name| name.to_string_lossy().into_owned(),
        );
        sources.push((label, source.clone()));
    }
    let mut functions = Vec::new();
    for (label, source) in sources {
        let work = tempfile::tempdir()?;
        let built = build_component(&source, work.path(), &[Export::FlatMap, Export::Reduce])
            .with_context(|| format!("building {}", source.display()))?;
        let compiled = host.compile(&label, &built.bytes)?;
        functions.push((label, compiled));
    }
    let lines = generated_lines(args.lines);
    println!(
        "bench function-calls: {} lines of 8 words (vocabulary 10,000) in batches of {}, flat_map then reduce per \
         batch, in this process; median of {} interleaved runs",
        args.lines,
        args.batch,
        args.repeat.max(1)
    );
    let mut runs: Vec<Vec<Spent>> = vec![Vec::new(); functions.len()];
    for _ in 0..args.repeat.max(1) {
        for (index, (_, compiled)) in functions.iter().enumerate() {
            let mut instance = FunctionInstance::new(&host, compiled, FunctionLimits::default())?;
            runs[index].push(word_count(&mut instance, &lines, args.batch.max(1))?);
        }
    }
    println!(
        "{:<16} {:>14} {:>14} {:>14} {:>14} {:>14}",
        "language", "flat_map us/ln", "reduce us/ln", "host us/ln", "total us/ln", "words/s"
    );
    for ((language, _), runs) in functions.iter().zip(runs) {
        let mut totals: Vec<(Duration, Spent)> = runs
            .into_iter()
            .map(|spent| (spent.flat_map + spent.reduce + spent.host, spent))
            .collect();
        totals.sort_by_key(|(total, _)| *total);
        let (total, spent) = totals[totals.len() / 2];
        let per_line = |duration: Duration| duration.as_secs_f64() * 1e6 / args.lines as f64;
        println!(
            "{:<16} {:>14.3} {:>14.3} {:>14.3} {:>14.3} {:>14.0}",
            language,
            per_line(spent.flat_map),
            per_line(spent.reduce),
            per_line(spent.host),
            per_line(total),
            spent.words as f64 / total.as_secs_f64()
        );
    }
    Ok(())
}

/// Lines like the generator's: `w<index>` words from a seeded sequence.
fn generated_lines(count: usize) -> Vec<String> {
    let mut state: u64 = 0x2545_f491_4f6c_dd1d;
    (0..count)
        .map(|_| {
            (0..8)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    format!("w{}", state % 10_000)
                })
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect()
}

/// One run: every batch split by `flat_map`, its words counted by `reduce` against the counts so
/// far, as the executor's operators would.
fn word_count(instance: &mut FunctionInstance, lines: &[String], batch_lines: usize) -> anyhow::Result<Spent> {
    let mut spent = Spent::default();
    let mut counts: HashMap<String, String> = HashMap::new();
    let mut events = Events::default();
    let mut groups = KeyedValues::default();
    for batch in lines.chunks(batch_lines) {
        let started = Instant::now();
        events.clear();
        for line in batch {
            events.push("", line, 0);
        }
        let called = Instant::now();
        let words = instance.flat_map(&events)?;
        let returned = Instant::now();
        let mut by_word: HashMap<&str, Vec<&str>> = HashMap::new();
        for word in words.values().iter() {
            by_word.entry(word).or_default().push(word);
        }
        groups.clear();
        for (word, values) in &by_word {
            groups.push_group(word, counts.get(*word).map(String::as_str), values.iter().copied());
        }
        let grouped = Instant::now();
        let accumulators = instance.reduce(&groups)?;
        let reduced = Instant::now();
        for (word, count) in by_word.keys().zip(accumulators.iter()) {
            counts.insert((*word).to_owned(), count.to_owned());
        }
        spent.words += words.values().len();
        spent.flat_map += returned - called;
        spent.reduce += reduced - grouped;
        spent.host += (called - started) + (grouped - returned) + reduced.elapsed();
    }
    Ok(spent)
}
