//! An executor's Prometheus metrics and readiness: its subtasks' counters (every task a subtask
//! ran here, summed, so a counter never goes back at a restart) and whether it holds a session
//! with the leader.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::registry::{Registry, Unit};
use raftstream_observability::{single, Families, Labels, Readiness, ReadinessCheck};

use crate::runtime::metrics::{MetricsRegistry, SubtaskTotalsKey, TaskTotals};
use crate::runtime::user_functions::{CallTotals, FunctionRuntime};

/// The registry `/metrics` serves on an executor.
pub fn registry(tasks: MetricsRegistry, in_session: Arc<AtomicBool>, functions: Arc<FunctionRuntime>) -> Registry {
    let mut registry = Registry::with_prefix("raftstream");
    registry.register_collector(Box::new(TaskCollector { tasks, in_session }));
    registry.register_collector(Box::new(FunctionCollector { functions }));
    registry
}

/// User functions: compiles, cache loads, and calls by function and export.
struct FunctionCollector {
    functions: Arc<FunctionRuntime>,
}

impl std::fmt::Debug for FunctionCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FunctionCollector")
    }
}

impl Collector for FunctionCollector {
    fn encode(&self, encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let mut families = Families::new(encoder);
        families.counter(
            "function_compiles",
            "User functions this executor compiled (a deployment of one it compiled before, here or in its disk cache, compiles nothing)",
            None,
            single(self.functions.compiles() as f64),
        )?;
        families.counter(
            "function_cache_loads",
            "User functions this executor loaded compiled from its disk cache",
            None,
            single(self.functions.cache_loads() as f64),
        )?;
        let totals = self.functions.call_totals();
        let labels = |totals: &CallTotals| -> Labels {
            vec![
                ("function", totals.function.clone()),
                ("export", totals.export.to_owned()),
            ]
        };
        families.counter(
            "function_calls",
            "Batch calls of a user function's export",
            None,
            totals.iter().map(|counted| (labels(counted), counted.calls as f64)),
        )?;
        families.counter(
            "function_records",
            "Records (reduce and process: values) handed to a user function's export",
            None,
            totals.iter().map(|counted| (labels(counted), counted.records as f64)),
        )?;
        families.counter(
            "function_errors",
            "Calls of a user function's export that failed (an error, a trap, a limit)",
            None,
            totals.iter().map(|counted| (labels(counted), counted.errors as f64)),
        )?;
        families.counter(
            "function_call",
            "Time spent in calls of a user function's export",
            Some(Unit::Seconds),
            totals.iter().map(|counted| (labels(counted), counted.seconds)),
        )
    }
}

/// `/readyz` on an executor: it is registered and holds a session with the leader.
pub fn readiness(in_session: Arc<AtomicBool>) -> ReadinessCheck {
    Arc::new(move || {
        if in_session.load(Ordering::Relaxed) {
            Readiness::Ready
        } else {
            Readiness::NotReady("no session with the coordinator leader".to_owned())
        }
    })
}

#[derive(Debug)]
struct TaskCollector {
    tasks: MetricsRegistry,
    in_session: Arc<AtomicBool>,
}

impl Collector for TaskCollector {
    fn encode(&self, encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let mut families = Families::new(encoder);
        let totals = self.tasks.totals();
        let labels = |(job_id, operator_id, subtask_index): &SubtaskTotalsKey| -> Labels {
            vec![
                ("job", job_id.to_string()),
                ("operator", operator_id.to_string()),
                ("subtask", subtask_index.to_string()),
            ]
        };
        families.gauge(
            "executor_in_session",
            "1 while this executor holds a session with the coordinator leader",
            None,
            single(if self.in_session.load(Ordering::Relaxed) {
                1.0
            } else {
                0.0
            }),
        )?;
        families.gauge(
            "executor_running_subtasks",
            "Tasks running here (a chain of operators runs as one task, named by its head)",
            None,
            single(totals.iter().filter(|(_, counted)| counted.running).count() as f64),
        )?;
        families.counter(
            "subtask_records_in",
            "Records into the subtask's chain head (a source: records it read)",
            None,
            totals
                .iter()
                .map(|(key, counted)| (labels(key), counted.records_in as f64)),
        )?;
        families.counter(
            "subtask_records_out",
            "Records the subtask's chain sent downstream",
            None,
            totals
                .iter()
                .map(|(key, counted)| (labels(key), counted.records_out as f64)),
        )?;
        let counter = |value: fn(&TaskTotals) -> u64| {
            move |(key, counted): &(SubtaskTotalsKey, TaskTotals)| (labels(key), value(counted) as f64)
        };
        families.counter(
            "subtask_received",
            "Payload bytes into the subtask's chain head (key, value and 8 for the event time per record; a source: line bytes)",
            Some(Unit::Bytes),
            totals.iter().map(counter(|counted| counted.bytes_in)),
        )?;
        families.counter(
            "subtask_sent",
            "Payload bytes the subtask's chain sent downstream (key, value and 8 for the event time per record)",
            Some(Unit::Bytes),
            totals.iter().map(counter(|counted| counted.bytes_out)),
        )?;
        families.counter(
            "subtask_batches_in",
            "Batches of records into the subtask's chain head (a source: batches it read)",
            None,
            totals.iter().map(counter(|counted| counted.batches_in)),
        )?;
        families.counter(
            "subtask_batches_out",
            "Batches of records the subtask's chain sent downstream",
            None,
            totals.iter().map(counter(|counted| counted.batches_out)),
        )?;
        families.counter(
            "subtask_backpressured",
            "Time the subtask waited for room in full output channels (backpressure from downstream)",
            Some(Unit::Seconds),
            totals
                .iter()
                .map(|(key, counted)| (labels(key), counted.blocked_ns as f64 / 1e9)),
        )?;
        families.counter(
            "subtask_checkpoint_alignment",
            "Time the subtask spent aligning checkpoint barriers (first barrier in to the last), all checkpoints",
            Some(Unit::Seconds),
            totals
                .iter()
                .map(|(key, counted)| (labels(key), counted.alignment_ns as f64 / 1e9)),
        )?;
        families.gauge(
            "subtask_last_checkpoint_alignment",
            "How long the running subtask's latest barrier alignment took",
            Some(Unit::Seconds),
            totals
                .iter()
                .filter_map(|(key, counted)| Some((labels(key), counted.last_alignment_ns? as f64 / 1e9))),
        )?;
        families.gauge(
            "subtask_checkpointed_state",
            "Size of the running subtask's state (its whole chain) in its latest checkpoint",
            Some(Unit::Bytes),
            totals
                .iter()
                .filter_map(|(key, counted)| Some((labels(key), counted.state_bytes? as f64))),
        )?;
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |since| since.as_millis() as i64);
        families.gauge(
            "subtask_watermark_lag",
            "Wall-clock time minus the running subtask's event-time watermark (event-time operators only)",
            Some(Unit::Seconds),
            totals.iter().filter_map(|(key, counted)| {
                let watermark = counted.watermark_ms?;
                Some((labels(key), now_ms.saturating_sub(watermark) as f64 / 1e3))
            }),
        )?;
        families.counter(
            "subtask_busy",
            "Time the subtask spent working rather than waiting for input (blocked output included)",
            Some(Unit::Seconds),
            totals
                .iter()
                .map(|(key, counted)| (labels(key), counted.busy_ns as f64 / 1e9)),
        )?;
        // A sink is the tail of its chain: label it with its own operator id.
        let sinks: Vec<(Labels, u64, u64)> = totals
            .iter()
            .filter(|(_, counted)| counted.sink_lines > 0 || counted.sink_bytes > 0)
            .map(|((job_id, head, subtask_index), counted)| {
                let sink = counted.operators.last().unwrap_or(head);
                (
                    labels(&(*job_id, sink.clone(), *subtask_index)),
                    counted.sink_lines,
                    counted.sink_bytes,
                )
            })
            .collect();
        families.counter(
            "sink_records_written",
            "Records a file sink wrote (committed or not yet)",
            None,
            sinks.iter().map(|(labels, lines, _)| (labels.clone(), *lines as f64)),
        )?;
        families.counter(
            "sink_written",
            "Bytes a file sink wrote (committed or not yet)",
            Some(Unit::Bytes),
            sinks.iter().map(|(labels, _, bytes)| (labels.clone(), *bytes as f64)),
        )
    }
}
