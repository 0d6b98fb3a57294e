//! How the commands print what they got: tables for people, JSON (`--output json`) for scripts.

use std::collections::BTreeMap;

use raftstream_api::client::running_entry;
use raftstream_api::function_status::job_functions;
use raftstream_proto::v1 as pb;
use serde_json::json;

use super::OutputFormat;

pub(super) fn print_value(output: OutputFormat, value: serde_json::Value, table: impl FnOnce() -> String) {
    match output {
        OutputFormat::Json => println!("{value}"),
        OutputFormat::Table => println!("{}", table()),
    }
}

/// What started a checkpoint (`interval` for those recorded before triggers were).
pub(super) fn trigger_of(checkpoint: &pb::Checkpoint) -> &str {
    if checkpoint.trigger.is_empty() {
        "interval"
    } else {
        &checkpoint.trigger
    }
}

/// The JSON form of a checkpoint or savepoint, as `--output json` prints it.
pub(super) fn checkpoint_json(c: &pb::Checkpoint) -> serde_json::Value {
    json!({"job_id": c.job_id, "checkpoint_id": c.checkpoint_id, "savepoint": c.savepoint, "trigger": trigger_of(c), "epoch": c.epoch, "size_bytes": c.size_bytes, "triggered_at_ms": c.triggered_at_ms, "completed_at_ms": c.completed_at_ms, "duration_ms": c.completed_at_ms.saturating_sub(c.triggered_at_ms), "task_states": c.task_states.len()})
}

/// The JSON form of a job, as `--output json` prints it.
pub fn job_json(job: &pb::Job) -> serde_json::Value {
    let graph: serde_json::Value = serde_json::from_str(&job.graph_json).unwrap_or(serde_json::Value::Null);
    json!({
        "job_id": job.job_id,
        "name": job.name,
        "status": job.status,
        "status_reason": job.status_reason,
        "restart_count": job.restart_count,
        "slots_needed": job.slots_needed,
        "slots_held": job.slots_held,
        "submitted_at_ms": job.submitted_at_ms,
        "updated_at_ms": job.updated_at_ms,
        "last_checkpoint_id": job.last_checkpoint_id,
        "restored_checkpoint_id": job.restored_checkpoint_id,
        "restored_at_ms": job.restored_at_ms,
        "from_savepoint": if job.from_savepoint.is_empty() { serde_json::Value::Null } else { json!(job.from_savepoint) },
        "history": job.history.iter().map(|event| json!({"at_ms": event.at_ms, "what": event.what})).collect::<Vec<_>>(),
        "subtasks": job.subtasks.iter().map(|s| json!({
            "operator_id": s.operator_id, "subtask_index": s.subtask_index,
            "executor_id": if s.executor_id.is_empty() { serde_json::Value::Null } else { json!(s.executor_id) },
            "epoch": s.epoch,
        })).collect::<Vec<_>>(),
        "graph": graph,
    })
}

/// One task's counts as JSON.
pub(super) fn subtask_metrics_json(metrics: &pb::SubtaskMetrics) -> serde_json::Value {
    let task = metrics.task.clone().unwrap_or_default();
    json!({
        "subtask": format!("{}[{}]", task.operator_id, task.subtask_index),
        "epoch": task.epoch,
        "chained": metrics.chained,
        "records_in": metrics.records_in,
        "records_out": metrics.records_out,
        "busy_ms": metrics.busy_ms,
        "records_in_per_second": metrics.records_in_per_second,
        "busy_ratio": metrics.busy_ratio,
        "hot_keys": metrics.hot_keys.iter().map(|hot| json!({"key": hot.key, "count": hot.count, "error": hot.error})).collect::<Vec<_>>(),
        "keys_counted": metrics.keys_counted,
        "functions": metrics.functions.iter().map(|calls| json!({
            "function": calls.function, "export": calls.export, "calls": calls.calls, "records": calls.records,
            "errors": calls.errors, "call_nanos": calls.call_nanos, "compile_ms": calls.compile_ms,
            "from_cache": calls.from_cache,
        })).collect::<Vec<_>>(),
    })
}

/// Per keyed operator, its hottest keys over all its subtasks (each key lives in one subtask),
/// with their estimated count and share of the operator's input, hottest first.
pub(super) fn hot_keys_by_operator(metrics: &[pb::SubtaskMetrics]) -> BTreeMap<String, Vec<(String, u64, f64)>> {
    let mut counts: BTreeMap<String, (BTreeMap<String, u64>, u64)> = BTreeMap::new();
    for subtask in metrics.iter().filter(|subtask| subtask.keys_counted > 0) {
        let operator = subtask
            .task
            .as_ref()
            .map(|task| task.operator_id.clone())
            .unwrap_or_default();
        let (keys, counted) = counts.entry(operator).or_default();
        *counted += subtask.keys_counted;
        for hot in &subtask.hot_keys {
            *keys.entry(hot.key.clone()).or_default() += hot.count;
        }
    }
    counts
        .into_iter()
        .map(|(operator, (keys, counted))| {
            let mut keys: Vec<(String, u64, f64)> = keys
                .into_iter()
                .map(|(key, count)| (key, count, count as f64 / counted.max(1) as f64))
                .collect();
            keys.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
            keys.truncate(HOT_KEYS_SHOWN);
            (operator, keys)
        })
        .collect()
}

/// The job's user functions as `job status --output json` prints them.
pub(super) fn functions_json(job: &pb::Job, metrics: &[pb::SubtaskMetrics]) -> serde_json::Value {
    serde_json::to_value(job_functions(job, metrics)).unwrap_or(serde_json::Value::Null)
}

fn print_functions(job: &pb::Job, metrics: &[pb::SubtaskMetrics]) {
    for (index, function) in job_functions(job, metrics).iter().enumerate() {
        let label = if index == 0 { "functions:" } else { "" };
        let compiled = match function.compile_ms {
            Some(ms) if function.from_cache => format!(", loaded from the disk cache in {ms} ms"),
            Some(ms) => format!(", compiled in {ms} ms"),
            None => String::new(),
        };
        println!(
            "{label:<12} {} ({}, sha256 {}, {} bytes{compiled})",
            function.name,
            function.language,
            function.sha256.get(..12).unwrap_or(&function.sha256),
            function.size_bytes,
        );
        for export in &function.exports {
            println!(
                "{:<12}   {}: {} calls, {} records, {} errors, {:.1} us per call",
                "", export.export, export.calls, export.records, export.errors, export.micros_per_call,
            );
        }
    }
}

/// Hottest keys `job status` lists per keyed operator.
pub(super) const HOT_KEYS_SHOWN: usize = 5;

/// `running`: the subtasks the leader knows run (None when it could not be asked).
pub(super) fn print_job(job: &pb::Job, metrics: &[pb::SubtaskMetrics], running: Option<&[pb::SubtaskRunning]>) {
    println!("job:         {} ({})", job.job_id, job.name);
    println!(
        "status:      {}{}",
        job.status,
        if job.status_reason.is_empty() {
            String::new()
        } else {
            format!(" ({})", job.status_reason)
        }
    );
    println!("restarts:    {}", job.restart_count);
    println!(
        "slots:       {} held of {} needed (one per parallel slice)",
        job.slots_held, job.slots_needed
    );
    println!(
        "checkpoint:  {}",
        job.last_checkpoint_id
            .map_or("none completed".to_owned(), |id| id.to_string())
    );
    if let Some(restored) = job.restored_checkpoint_id {
        println!("restored:    checkpoint {restored} (at {} ms)", job.restored_at_ms);
    }
    if !job.from_savepoint.is_empty() {
        println!("started:     from savepoint {}", job.from_savepoint);
    }
    for (index, event) in job.history.iter().enumerate() {
        let label = if index == 0 { "history:" } else { "" };
        println!("{label:<12} {} ms: {}", event.at_ms, event.what);
    }
    print_functions(job, metrics);
    for (index, (operator, keys)) in hot_keys_by_operator(metrics).into_iter().enumerate() {
        let label = if index == 0 { "hot keys:" } else { "" };
        let shown: Vec<String> = keys
            .iter()
            .map(|(key, count, share)| format!("{key} {:.1}% ({count})", share * 100.0))
            .collect();
        println!("{label:<12} {operator}: {}", shown.join(", "));
    }
    // An ended job has released its slots.
    let ended = matches!(job.status.as_str(), "Finished" | "Failed" | "Cancelled" | "Stopped");
    let metrics_of = |operator: &str, index: u32| {
        metrics.iter().find(|m| {
            m.task
                .as_ref()
                .is_some_and(|task| task.operator_id == operator && task.subtask_index == index)
        })
    };
    // Chained operators run in their head's task, which reports for the whole chain.
    let chained_into = |operator: &str| {
        metrics.iter().find_map(|m| {
            m.chained
                .iter()
                .any(|member| member == operator)
                .then(|| m.task.as_ref().map(|task| task.operator_id.clone()))
                .flatten()
        })
    };
    let rows = job
        .subtasks
        .iter()
        .map(|s| {
            let counts = match (
                metrics_of(&s.operator_id, s.subtask_index),
                chained_into(&s.operator_id),
            ) {
                (Some(m), _) => vec![
                    m.records_in.to_string(),
                    m.records_out.to_string(),
                    format!("{:.0}", m.records_in_per_second),
                    format!("{:.0}%", m.busy_ratio * 100.0),
                ],
                (None, Some(head)) => vec![format!("(in {head})"), String::new(), String::new(), String::new()],
                (None, None) => vec!["-".to_owned(), "-".to_owned(), "-".to_owned(), "-".to_owned()],
            };
            // Flink's DEPLOYING and INITIALIZING are one STARTING here: placed, restoring its
            // state or opening its channels.
            let state = match running {
                _ if ended => "-",
                _ if s.executor_id.is_empty() => "WAITING",
                Some(running) if running_entry(running, s).is_some() => "RUNNING",
                Some(_) => "STARTING",
                None => "?",
            };
            let mut row = vec![
                format!("{}[{}]", s.operator_id, s.subtask_index),
                state.to_owned(),
                if s.executor_id.is_empty() && ended {
                    "-".to_owned()
                } else if s.executor_id.is_empty() {
                    "(waiting for a slot)".to_owned()
                } else {
                    s.executor_id.clone()
                },
                s.epoch.to_string(),
            ];
            row.extend(counts);
            row
        })
        .collect();
    print_table(
        &["SUBTASK", "STATE", "EXECUTOR", "EPOCH", "IN", "OUT", "IN/S", "BUSY"],
        rows,
    );
}

/// Prints rows under headers with aligned columns.
pub fn print_table(headers: &[&str], rows: Vec<Vec<String>>) {
    let mut widths: Vec<usize> = headers.iter().map(|header| header.len()).collect();
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        println!("{}", padded.join("  ").trim_end());
    };
    line(headers.iter().map(|header| (*header).to_owned()).collect());
    for row in rows {
        line(row);
    }
}
