//! An executor's Prometheus metrics and readiness: its subtasks' counters (every task a subtask
//! ran here, summed, so a counter never goes back at a restart) and whether it holds a session
//! with the leader.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::registry::{Registry, Unit};
use raftstream_observability::{single, Families, Labels, Readiness, ReadinessCheck};

use crate::runtime::metrics::{MetricsRegistry, SubtaskTotalsKey};

/// The registry `/metrics` serves on an executor.
pub fn registry(tasks: MetricsRegistry, in_session: Arc<AtomicBool>) -> Registry {
    let mut registry = Registry::with_prefix("raftstream");
    registry.register_collector(Box::new(TaskCollector { tasks, in_session }));
    registry
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
                ("operator", operator_id.clone()),
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
