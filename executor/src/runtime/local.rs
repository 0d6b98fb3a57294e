//! Runs a bounded chain job (source -> stateless operators -> key_by -> count -> sink) inside this
//! process, with the parallelism of the graph: one tokio task per subtask, records in batches over
//! bounded channels partitioned by key group.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use raftstream_coordinator::spec::{JobGraph, OperatorKind, OperatorSpec};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use super::generator::GeneratorSettings;
use super::key_groups::{key_group, subtask_for_key_group};

/// Records per batch between subtasks: large enough to amortize channel costs.
const BATCH_RECORDS: usize = 1_024;
/// Batches in flight per channel before the sender waits (backpressure).
const CHANNEL_BATCHES: usize = 16;

/// Why a job cannot run (yet) on the local runtime.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("operator {operator:?}: {kind} is not supported by the local runtime yet")]
    Unsupported { operator: String, kind: OperatorKind },
    #[error("the local runtime runs a single chain source -> ... -> key_by -> count -> sink; {0}")]
    Shape(String),
    #[error("operator {operator:?}: param {param}: {problem}")]
    Param {
        operator: String,
        param: String,
        problem: String,
    },
    #[error("writing sink output {path}: {source}")]
    Sink { path: PathBuf, source: std::io::Error },
    #[error("a subtask failed: {0}")]
    Task(String),
}

/// What a local run did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalRunReport {
    pub records_read: u64,
    pub words_counted: u64,
    pub distinct_keys: usize,
    pub elapsed: Duration,
    /// The sink's file, when the sink is `file_sink`.
    pub output_path: Option<PathBuf>,
    /// The final counts, sorted by key.
    pub counts: Vec<(String, u64)>,
}

#[derive(Debug, Clone, Copy)]
enum Transform {
    SplitWords,
    Lowercase,
    Uppercase,
    Trim,
}

#[derive(Debug, Clone)]
struct Plan {
    source: GeneratorSettings,
    source_parallelism: u32,
    transforms: Vec<Transform>,
    keyed_parallelism: u32,
    max_parallelism: u32,
    sink: OperatorSpec,
}

fn param_u64(operator: &OperatorSpec, name: &str) -> Result<Option<u64>, RuntimeError> {
    match operator.params.get(name) {
        None => Ok(None),
        Some(value) => value.as_u64().map(Some).ok_or_else(|| RuntimeError::Param {
            operator: operator.id.clone(),
            param: name.to_owned(),
            problem: "must be a whole number".to_owned(),
        }),
    }
}

fn plan(graph: &JobGraph) -> Result<Plan, RuntimeError> {
    let sources: Vec<&OperatorSpec> = graph
        .operators
        .iter()
        .filter(|operator| operator.inputs.is_empty())
        .collect();
    let [source] = sources.as_slice() else {
        return Err(RuntimeError::Shape(format!("found {} sources", sources.len())));
    };
    if source.kind != OperatorKind::Generator {
        return Err(RuntimeError::Unsupported {
            operator: source.id.clone(),
            kind: source.kind,
        });
    }
    let defaults = GeneratorSettings::default();
    let settings = GeneratorSettings {
        seed: param_u64(source, "seed")?.unwrap_or(defaults.seed),
        count: Some(
            param_u64(source, "count")?
                .ok_or_else(|| RuntimeError::Shape("the generator must be bounded (params.count)".to_owned()))?,
        ),
        vocabulary_size: param_u64(source, "vocabulary_size")?.unwrap_or(defaults.vocabulary_size),
        words_per_record: param_u64(source, "words_per_record")?.unwrap_or(defaults.words_per_record),
    };
    // Walk the chain downstream from the source.
    let mut current = *source;
    let mut transforms = Vec::new();
    let mut keyed_parallelism = None;
    loop {
        let consumers: Vec<&OperatorSpec> = graph
            .operators
            .iter()
            .filter(|operator| operator.inputs.contains(&current.id))
            .collect();
        let [next] = consumers.as_slice() else {
            return Err(RuntimeError::Shape(format!(
                "operator {:?} has {} consumers",
                current.id,
                consumers.len()
            )));
        };
        if next.inputs.len() != 1 {
            return Err(RuntimeError::Shape(format!(
                "operator {:?} has {} inputs",
                next.id,
                next.inputs.len()
            )));
        }
        let function = next
            .params
            .get("function")
            .and_then(|value| value.as_str())
            .unwrap_or_default();
        match (next.kind, function) {
            (OperatorKind::FlatMap, "split_words") => transforms.push(Transform::SplitWords),
            (OperatorKind::Map, "lowercase") => transforms.push(Transform::Lowercase),
            (OperatorKind::Map, "uppercase") => transforms.push(Transform::Uppercase),
            (OperatorKind::Map, "trim") => transforms.push(Transform::Trim),
            (OperatorKind::Map, "identity") => {}
            (OperatorKind::KeyBy, _) if next.params.get("field").is_none() => {}
            (OperatorKind::Count, _) => keyed_parallelism = Some(next.parallelism),
            (OperatorKind::FileSink | OperatorKind::Print, _) => {
                let keyed_parallelism =
                    keyed_parallelism.ok_or_else(|| RuntimeError::Shape("no count before the sink".to_owned()))?;
                return Ok(Plan {
                    source: settings,
                    source_parallelism: source.parallelism,
                    transforms,
                    keyed_parallelism,
                    max_parallelism: graph.max_parallelism,
                    sink: (*next).clone(),
                });
            }
            (kind, _) => {
                return Err(RuntimeError::Unsupported {
                    operator: next.id.clone(),
                    kind,
                })
            }
        }
        current = next;
    }
}

fn apply_transforms(transforms: &[Transform], line: &str, emit: &mut impl FnMut(&str)) {
    fn step(transforms: &[Transform], text: &str, emit: &mut dyn FnMut(&str)) {
        let Some((first, rest)) = transforms.split_first() else {
            emit(text);
            return;
        };
        match first {
            Transform::SplitWords => {
                for word in text
                    .split(|c: char| !c.is_alphanumeric())
                    .filter(|word| !word.is_empty())
                {
                    step(rest, word, emit);
                }
            }
            Transform::Lowercase => step(rest, &text.to_lowercase(), emit),
            Transform::Uppercase => step(rest, &text.to_uppercase(), emit),
            Transform::Trim => step(rest, text.trim(), emit),
        }
    }
    step(transforms, line, emit);
}

/// Runs the job to the end of its bounded input; a `file_sink` writes under `output_dir`.
pub async fn run_local(graph: &JobGraph, output_dir: &Path) -> Result<LocalRunReport, RuntimeError> {
    let plan = plan(graph)?;
    let started = Instant::now();
    let mut keyed_inputs = Vec::new();
    let mut keyed_tasks = JoinSet::new();
    for _ in 0..plan.keyed_parallelism {
        let (sender, mut receiver) = mpsc::channel::<Vec<String>>(CHANNEL_BATCHES);
        keyed_inputs.push(sender);
        keyed_tasks.spawn(async move {
            let mut counts: HashMap<String, u64> = HashMap::new();
            let mut words = 0u64;
            while let Some(batch) = receiver.recv().await {
                words += batch.len() as u64;
                for word in batch {
                    *counts.entry(word).or_insert(0) += 1;
                }
            }
            (counts, words)
        });
    }
    let mut source_tasks = JoinSet::new();
    for index in 0..plan.source_parallelism {
        let plan = plan.clone();
        let outputs = keyed_inputs.clone();
        source_tasks.spawn(async move {
            let mut batches: Vec<Vec<String>> = (0..outputs.len()).map(|_| Vec::with_capacity(BATCH_RECORDS)).collect();
            let mut line = String::new();
            let mut records = 0u64;
            // Subtask `index` of `n` reads offsets index, index + n, ...: disjoint and replayable.
            let mut offset = u64::from(index);
            while !plan.source.is_exhausted(offset) {
                plan.source.write_record(offset, &mut line);
                records += 1;
                let mut full = Vec::new();
                apply_transforms(&plan.transforms, &line, &mut |word| {
                    let target = subtask_for_key_group(
                        key_group(word, plan.max_parallelism),
                        plan.max_parallelism,
                        plan.keyed_parallelism,
                    ) as usize;
                    batches[target].push(word.to_owned());
                    if batches[target].len() >= BATCH_RECORDS {
                        full.push(target);
                    }
                });
                for target in full {
                    let batch = std::mem::replace(&mut batches[target], Vec::with_capacity(BATCH_RECORDS));
                    if outputs[target].send(batch).await.is_err() {
                        return Err(RuntimeError::Task("a keyed subtask stopped early".to_owned()));
                    }
                }
                offset += u64::from(plan.source_parallelism);
            }
            for (target, batch) in batches.into_iter().enumerate() {
                if !batch.is_empty() && outputs[target].send(batch).await.is_err() {
                    return Err(RuntimeError::Task("a keyed subtask stopped early".to_owned()));
                }
            }
            Ok(records)
        });
    }
    drop(keyed_inputs);
    let mut records_read = 0;
    while let Some(joined) = source_tasks.join_next().await {
        records_read += joined.map_err(|error| RuntimeError::Task(error.to_string()))??;
    }
    let mut counts = Vec::new();
    let mut words_counted = 0;
    while let Some(joined) = keyed_tasks.join_next().await {
        let (partial, words) = joined.map_err(|error| RuntimeError::Task(error.to_string()))?;
        words_counted += words;
        counts.extend(partial);
    }
    counts.sort();
    let elapsed = started.elapsed();
    let output_path = write_sink(&plan.sink, &counts, output_dir)?;
    Ok(LocalRunReport {
        records_read,
        words_counted,
        distinct_keys: counts.len(),
        elapsed,
        output_path,
        counts,
    })
}

fn write_sink(
    sink: &OperatorSpec,
    counts: &[(String, u64)],
    output_dir: &Path,
) -> Result<Option<PathBuf>, RuntimeError> {
    use std::fmt::Write;
    let mut text = String::with_capacity(counts.len() * 12);
    for (key, count) in counts {
        let _ = writeln!(text, "{key}\t{count}");
    }
    match sink.kind {
        OperatorKind::FileSink => {
            let relative = sink
                .params
                .get("path")
                .and_then(|value| value.as_str())
                .unwrap_or("output");
            let directory = output_dir.join(relative);
            std::fs::create_dir_all(&directory).map_err(|source| RuntimeError::Sink {
                path: directory.clone(),
                source,
            })?;
            let path = directory.join("part-0.tsv");
            // Written to a temporary name and renamed, so a reader never sees half a file.
            let temporary = directory.join(".part-0.tsv.tmp");
            std::fs::write(&temporary, text).map_err(|source| RuntimeError::Sink {
                path: temporary.clone(),
                source,
            })?;
            std::fs::rename(&temporary, &path).map_err(|source| RuntimeError::Sink {
                path: path.clone(),
                source,
            })?;
            Ok(Some(path))
        }
        _ => {
            let prefix = sink.params.get("prefix").and_then(|value| value.as_str()).unwrap_or("");
            for line in text.lines() {
                println!("{prefix}{line}");
            }
            Ok(None)
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use raftstream_coordinator::spec::parse_job_spec;

    use super::*;

    fn word_count(parallelism: u32, count: u64) -> JobGraph {
        let spec = format!(
            r#"{{"name": "wc", "parallelism": {parallelism}, "operators": [
                {{"id": "lines", "kind": "generator", "params": {{"seed": 9, "count": {count}, "vocabulary_size": 300, "words_per_record": 6}}}},
                {{"id": "words", "kind": "flat_map", "inputs": ["lines"], "params": {{"function": "split_words"}}}},
                {{"id": "keys", "kind": "key_by", "inputs": ["words"]}},
                {{"id": "counts", "kind": "count", "inputs": ["keys"]}},
                {{"id": "out", "kind": "file_sink", "parallelism": 1, "inputs": ["counts"], "params": {{"path": "wc"}}}}]}}"#
        );
        parse_job_spec(&spec).expect("valid word count")
    }

    /// The counts computed the obvious way, one record after another.
    fn reference_counts(count: u64) -> Vec<(String, u64)> {
        let settings = GeneratorSettings {
            seed: 9,
            count: Some(count),
            vocabulary_size: 300,
            words_per_record: 6,
        };
        let mut counts = BTreeMap::new();
        let mut line = String::new();
        for offset in 0..count {
            settings.write_record(offset, &mut line);
            for word in line.split(' ') {
                *counts.entry(word.to_owned()).or_insert(0u64) += 1;
            }
        }
        counts.into_iter().collect()
    }

    #[tokio::test]
    async fn word_count_equals_the_reference_at_every_parallelism() -> Result<(), Box<dyn std::error::Error>> {
        let expected = reference_counts(20_000);
        for parallelism in [1, 2, 3] {
            let directory = tempfile::tempdir()?;
            let report = run_local(&word_count(parallelism, 20_000), directory.path()).await?;
            assert_eq!(report.records_read, 20_000);
            assert_eq!(report.words_counted, 120_000);
            assert_eq!(report.counts, expected, "parallelism {parallelism}");
            let written = std::fs::read_to_string(report.output_path.ok_or("no output file")?)?;
            assert_eq!(written.lines().count(), expected.len());
            assert!(written.lines().all(|line| line.split('\t').count() == 2));
        }
        Ok(())
    }

    #[tokio::test]
    async fn unsupported_graphs_are_refused_by_name() {
        let spec = r#"{"name": "w", "operators": [
            {"id": "src", "kind": "generator", "params": {"count": 5}},
            {"id": "keys", "kind": "key_by", "inputs": ["src"]},
            {"id": "win", "kind": "tumbling_window", "inputs": ["keys"], "params": {"size_ms": 10, "aggregate": "count"}},
            {"id": "out", "kind": "print", "inputs": ["win"]}]}"#;
        let graph = parse_job_spec(spec).expect("valid spec");
        let error = run_local(&graph, Path::new("/nonexistent"))
            .await
            .err()
            .map(|error| error.to_string())
            .unwrap_or_default();
        assert!(
            error.contains("\"win\"") && error.contains("tumbling_window"),
            "{error}"
        );
    }
}
