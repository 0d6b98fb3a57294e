//! What each running task counts (records in and out, busy time, its keyed input's hottest
//! keys), read by the session about once a second and reported to the leader, so `job status`
//! shows skew before a user turns on `two_phase`. Tasks update plain atomics once per batch; the
//! hot-key sketch samples one record in [`KEY_SAMPLE`].

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use raftstream_api::ids::{JobId, OperatorId};
use raftstream_api::messages::{SubtaskMetrics, TaskRef};

use super::heavy_hitters::SpaceSaving;
use super::record::Record;
use super::user_functions::SubtaskFunction;

/// One record in this many feeds the hot-key sketch (with this weight). A key the sketch does not
/// hold (most of them, with many keys) costs a scan of its counters: at one in 8 and 64 counters
/// that took the parallel word count's keyed subtasks 7-15 % of their throughput; at one in 64
/// and 32 counters it is about a nanosecond per record.
pub const KEY_SAMPLE: usize = 64;
/// Counters of the hot-key sketch (any key above 1/32 of the input is certain to hold one), and
/// how many keys a report names.
const SKETCH_CAPACITY: usize = 32;
const HOT_KEYS_REPORTED: usize = 8;

/// What a task's output side has sent since the task started.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct OutputTotals {
    pub records: u64,
    pub batches: u64,
    /// Key and value bytes plus 8 for the event time, per record: what the records carry, not
    /// their encoding on the wire (local channels encode nothing).
    pub bytes: u64,
    /// Time spent waiting for room in a full output channel: backpressure from downstream.
    pub blocked_ns: u64,
}

/// The payload bytes of `records`, counted as [`OutputTotals::bytes`] says.
pub fn payload_bytes(records: &[Record]) -> u64 {
    records
        .iter()
        .map(|record| (record.key.len() + record.value.len() + 8) as u64)
        .sum()
}

/// No watermark yet (`i64::MIN`) or the end of event time (`i64::MAX`): no lag to show.
fn has_watermark(watermark: i64) -> bool {
    watermark != i64::MIN && watermark != i64::MAX
}

/// The counters of one task.
#[derive(Debug)]
pub struct TaskCounters {
    records_in: AtomicU64,
    batches_in: AtomicU64,
    bytes_in: AtomicU64,
    records_out: AtomicU64,
    batches_out: AtomicU64,
    bytes_out: AtomicU64,
    blocked_ns: AtomicU64,
    busy_ns: AtomicU64,
    /// Barrier alignment: all alignments summed, and the latest one.
    alignment_ns: AtomicU64,
    last_alignment_ns: AtomicU64,
    /// Bytes of the chain's state in its latest checkpoint.
    state_bytes: AtomicU64,
    /// The task's event-time watermark (ms since the epoch), `i64::MIN` before the first.
    watermark_ms: AtomicI64,
    /// A chain ending in a file sink: lines and bytes it wrote.
    sink_lines: AtomicU64,
    sink_bytes: AtomicU64,
    /// Keyed heads only: the sketch, and how many records to skip before the next sample
    /// (carried across batches, so small batches are not sampled at their first record only).
    hot_keys: Option<Mutex<(SpaceSaving, usize)>>,
    /// The user functions the chain calls.
    functions: Mutex<Vec<SubtaskFunction>>,
}

impl TaskCounters {
    /// The user functions the chain calls, reported with its metrics.
    pub fn set_functions(&self, functions: Vec<SubtaskFunction>) {
        *self.functions.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = functions;
    }

    /// `records` entered the chain's head.
    pub fn received(&self, records: &[Record]) {
        self.records_in.fetch_add(records.len() as u64, Ordering::Relaxed);
        self.batches_in.fetch_add(1, Ordering::Relaxed);
        self.bytes_in.fetch_add(payload_bytes(records), Ordering::Relaxed);
        if let Some(sampled) = &self.hot_keys {
            if let Ok(mut sampled) = sampled.lock() {
                let (sketch, skip) = &mut *sampled;
                let mut next = *skip;
                while let Some(record) = records.get(next) {
                    sketch.add(&record.key, KEY_SAMPLE as u64);
                    next += KEY_SAMPLE;
                }
                *skip = next - records.len();
            }
        }
    }

    /// A source read `records` records of `bytes` bytes in one batch.
    pub fn read(&self, records: u64, bytes: u64) {
        self.records_in.fetch_add(records, Ordering::Relaxed);
        self.batches_in.fetch_add(1, Ordering::Relaxed);
        self.bytes_in.fetch_add(bytes, Ordering::Relaxed);
    }

    /// What the chain's tail has sent since the task started.
    pub fn sent_totals(&self, totals: &OutputTotals) {
        self.records_out.store(totals.records, Ordering::Relaxed);
        self.batches_out.store(totals.batches, Ordering::Relaxed);
        self.bytes_out.store(totals.bytes, Ordering::Relaxed);
        self.blocked_ns.store(totals.blocked_ns, Ordering::Relaxed);
    }

    /// A barrier alignment took `took` (first barrier in to the last).
    pub fn aligned(&self, took: Duration) {
        let nanos = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        self.alignment_ns.fetch_add(nanos, Ordering::Relaxed);
        self.last_alignment_ns.store(nanos, Ordering::Relaxed);
    }

    /// The chain's state took `bytes` in the checkpoint just taken.
    pub fn snapshotted(&self, bytes: u64) {
        self.state_bytes.store(bytes, Ordering::Relaxed);
    }

    /// The task's watermark is now `watermark_ms`.
    pub fn watermark(&self, watermark_ms: i64) {
        self.watermark_ms.store(watermark_ms, Ordering::Relaxed);
    }

    /// The chain's sink has written `lines` lines of `bytes` bytes since the task started.
    pub fn sink_totals(&self, (lines, bytes): (u64, u64)) {
        self.sink_lines.store(lines, Ordering::Relaxed);
        self.sink_bytes.store(bytes, Ordering::Relaxed);
    }

    /// The task worked for `busy`.
    pub fn worked(&self, busy: Duration) {
        self.busy_ns
            .fetch_add(u64::try_from(busy.as_nanos()).unwrap_or(u64::MAX), Ordering::Relaxed);
    }
}

#[derive(Debug)]
struct Registered {
    task: TaskRef,
    chained: Vec<OperatorId>,
    counters: Arc<TaskCounters>,
    /// At the previous report: when, records in, busy nanoseconds.
    previous: Option<(Instant, u64, u64)>,
}

/// Every running task's counters on this executor.
#[derive(Debug, Clone, Default)]
pub struct MetricsRegistry(Arc<Mutex<RegistryInner>>);

#[derive(Debug, Default)]
struct RegistryInner {
    next_id: u64,
    tasks: HashMap<u64, Registered>,
    /// What ended tasks counted, per subtask, so `/metrics` counters never go back when a task
    /// ends or restarts at a new epoch, and a scrape after a short job still sees its totals.
    retired: HashMap<SubtaskTotalsKey, TaskTotals>,
    /// Ended jobs, oldest first: the totals of the [`ENDED_JOBS_SHOWN`] latest stay.
    ended_jobs: std::collections::VecDeque<JobId>,
}

/// Ended jobs whose subtasks' totals `/metrics` still shows.
const ENDED_JOBS_SHOWN: usize = 16;

/// One subtask's counters as `/metrics` shows them: every task it ran here, summed.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct TaskTotals {
    /// The operators the task ran, head first.
    pub operators: Vec<OperatorId>,
    pub running: bool,
    pub records_in: u64,
    pub batches_in: u64,
    pub bytes_in: u64,
    pub records_out: u64,
    pub batches_out: u64,
    pub bytes_out: u64,
    pub blocked_ns: u64,
    pub busy_ns: u64,
    pub alignment_ns: u64,
    pub sink_lines: u64,
    pub sink_bytes: u64,
    /// Gauges of the running task (none once it ended): its latest alignment, its state's size
    /// in its latest checkpoint, and its watermark (ms) when it has one.
    pub last_alignment_ns: Option<u64>,
    pub state_bytes: Option<u64>,
    pub watermark_ms: Option<i64>,
}

impl TaskTotals {
    fn add(&mut self, counters: &TaskCounters) {
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        self.records_in += load(&counters.records_in);
        self.batches_in += load(&counters.batches_in);
        self.bytes_in += load(&counters.bytes_in);
        self.records_out += load(&counters.records_out);
        self.batches_out += load(&counters.batches_out);
        self.bytes_out += load(&counters.bytes_out);
        self.blocked_ns += load(&counters.blocked_ns);
        self.busy_ns += load(&counters.busy_ns);
        self.alignment_ns += load(&counters.alignment_ns);
        self.sink_lines += load(&counters.sink_lines);
        self.sink_bytes += load(&counters.sink_bytes);
    }

    /// The gauges of a running task.
    fn set_gauges(&mut self, counters: &TaskCounters) {
        self.last_alignment_ns = Some(counters.last_alignment_ns.load(Ordering::Relaxed));
        self.state_bytes = Some(counters.state_bytes.load(Ordering::Relaxed));
        let watermark = counters.watermark_ms.load(Ordering::Relaxed);
        self.watermark_ms = has_watermark(watermark).then_some(watermark);
    }
}

/// Job, head operator, subtask index.
pub type SubtaskTotalsKey = (JobId, OperatorId, u32);

fn totals_key(task: &TaskRef) -> SubtaskTotalsKey {
    (
        task.job_id,
        task.subtask.operator_id.clone(),
        task.subtask.subtask_index,
    )
}

/// A task's registration: its counters, dropped from the registry with it.
#[derive(Debug)]
pub struct TaskMetrics {
    registry: MetricsRegistry,
    id: u64,
    pub counters: Arc<TaskCounters>,
}

impl Drop for TaskMetrics {
    fn drop(&mut self) {
        if let Ok(mut inner) = self.registry.0.lock() {
            if let Some(ended) = inner.tasks.remove(&self.id) {
                let retired = inner.retired.entry(totals_key(&ended.task)).or_default();
                retired.add(&ended.counters);
                retired.operators = operators_of(&ended);
            }
        }
    }
}

fn operators_of(registered: &Registered) -> Vec<OperatorId> {
    std::iter::once(registered.task.subtask.operator_id.clone())
        .chain(registered.chained.iter().cloned())
        .collect()
}

impl MetricsRegistry {
    /// Registers the task of chain head `task` (with `chained` behind it); `keyed` heads track
    /// their hottest keys.
    pub fn register(&self, task: TaskRef, chained: Vec<OperatorId>, keyed: bool) -> TaskMetrics {
        let counters = Arc::new(TaskCounters {
            records_in: AtomicU64::new(0),
            batches_in: AtomicU64::new(0),
            bytes_in: AtomicU64::new(0),
            records_out: AtomicU64::new(0),
            batches_out: AtomicU64::new(0),
            bytes_out: AtomicU64::new(0),
            blocked_ns: AtomicU64::new(0),
            busy_ns: AtomicU64::new(0),
            alignment_ns: AtomicU64::new(0),
            last_alignment_ns: AtomicU64::new(0),
            state_bytes: AtomicU64::new(0),
            watermark_ms: AtomicI64::new(i64::MIN),
            sink_lines: AtomicU64::new(0),
            sink_bytes: AtomicU64::new(0),
            hot_keys: keyed.then(|| Mutex::new((SpaceSaving::new(SKETCH_CAPACITY), 0))),
            functions: Mutex::new(Vec::new()),
        });
        let id = match self.0.lock() {
            Ok(mut inner) => {
                inner.next_id += 1;
                let id = inner.next_id;
                inner.tasks.insert(
                    id,
                    Registered {
                        task,
                        chained,
                        counters: counters.clone(),
                        previous: None,
                    },
                );
                id
            }
            // A poisoned registry only loses metrics; the task runs on.
            Err(_) => 0,
        };
        TaskMetrics {
            registry: self.clone(),
            id,
            counters,
        }
    }

    /// Every subtask's totals (job, head operator, subtask index) over the tasks it ran here,
    /// live and ended, for `/metrics`.
    pub fn totals(&self) -> Vec<(SubtaskTotalsKey, TaskTotals)> {
        let Ok(inner) = self.0.lock() else {
            return Vec::new();
        };
        let mut totals: BTreeMap<SubtaskTotalsKey, TaskTotals> = inner.retired.clone().into_iter().collect();
        for registered in inner.tasks.values() {
            let entry = totals.entry(totals_key(&registered.task)).or_default();
            entry.add(&registered.counters);
            entry.set_gauges(&registered.counters);
            entry.running = true;
            entry.operators = operators_of(registered);
        }
        totals.into_iter().collect()
    }

    /// `job_id` ended: its totals stay until [`ENDED_JOBS_SHOWN`] later jobs ended too.
    pub fn job_ended(&self, job_id: &JobId) {
        let Ok(mut inner) = self.0.lock() else {
            return;
        };
        if inner.ended_jobs.contains(job_id) {
            return;
        }
        inner.ended_jobs.push_back(*job_id);
        while inner.ended_jobs.len() > ENDED_JOBS_SHOWN {
            if let Some(oldest) = inner.ended_jobs.pop_front() {
                inner.retired.retain(|(job, _, _), _| *job != oldest);
            }
        }
    }

    /// What every task counted, with rates since the previous report.
    pub fn report(&self) -> Vec<SubtaskMetrics> {
        let Ok(mut inner) = self.0.lock() else {
            return Vec::new();
        };
        let now = Instant::now();
        let mut reports: Vec<SubtaskMetrics> = inner
            .tasks
            .values_mut()
            .map(|registered| {
                let counters = &registered.counters;
                let records_in = counters.records_in.load(Ordering::Relaxed);
                let busy_ns = counters.busy_ns.load(Ordering::Relaxed);
                let (records_in_per_second, busy_ratio) = match registered.previous {
                    Some((at, previous_in, previous_busy)) if now > at => {
                        let seconds = (now - at).as_secs_f64();
                        (
                            records_in.saturating_sub(previous_in) as f64 / seconds,
                            (busy_ns.saturating_sub(previous_busy) as f64 / 1e9 / seconds).min(1.0),
                        )
                    }
                    _ => (0.0, 0.0),
                };
                registered.previous = Some((now, records_in, busy_ns));
                let (hot_keys, keys_counted) = counters
                    .hot_keys
                    .as_ref()
                    .and_then(|sampled| sampled.lock().ok())
                    .map_or((Vec::new(), 0), |sampled| {
                        (sampled.0.top(HOT_KEYS_REPORTED), sampled.0.total())
                    });
                SubtaskMetrics {
                    task: registered.task.clone(),
                    records_in,
                    records_out: counters.records_out.load(Ordering::Relaxed),
                    busy_ms: busy_ns / 1_000_000,
                    records_in_per_second,
                    busy_ratio,
                    hot_keys,
                    keys_counted,
                    chained: registered.chained.clone(),
                    functions: counters
                        .functions
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .iter()
                        .map(SubtaskFunction::calls)
                        .collect(),
                }
            })
            .collect();
        reports.sort_by(|a, b| {
            (&a.task.subtask.operator_id, a.task.subtask.subtask_index)
                .cmp(&(&b.task.subtask.operator_id, b.task.subtask.subtask_index))
        });
        reports
    }
}

#[cfg(test)]
mod tests {
    use raftstream_api::checkpoint::SubtaskKey;
    use raftstream_api::ids::{Epoch, JobId};

    use super::*;

    fn task(operator: &str) -> TaskRef {
        TaskRef {
            job_id: JobId::from_number(1),
            subtask: SubtaskKey {
                operator_id: operator.into(),
                subtask_index: 0,
            },
            epoch: Epoch(1),
        }
    }

    #[test]
    fn a_registered_task_reports_its_counts_and_leaves_with_its_registration() {
        let registry = MetricsRegistry::default();
        let keyed = registry.register(task("counts"), vec![OperatorId::from("sink")], true);
        let source = registry.register(task("lines"), Vec::new(), false);
        let records: Vec<Record> = (0..640)
            .map(|n| Record {
                key: if n % 5 == 0 { "cold".into() } else { "hot".into() },
                ..Record::default()
            })
            .collect();
        // In batches of 30: the samples still fall on every 64th record.
        for batch in records.chunks(30) {
            keyed.counters.received(batch);
        }
        keyed.counters.sent_totals(&OutputTotals {
            records: 5,
            ..OutputTotals::default()
        });
        keyed.counters.worked(Duration::from_millis(3));
        source.counters.read(1_000, 10_000);
        let reports = registry.report();
        assert_eq!(reports.len(), 2);
        let counts = &reports[0];
        assert_eq!(counts.task.subtask.operator_id, "counts");
        assert_eq!((counts.records_in, counts.records_out, counts.busy_ms), (640, 5, 3));
        assert_eq!(counts.chained, vec![OperatorId::from("sink")]);
        assert_eq!(counts.hot_keys.first().map(|hot| hot.key.as_str()), Some("hot"));
        assert_eq!(
            counts.keys_counted, 640,
            "sampled records count with the sample's weight"
        );
        assert!(reports[1].hot_keys.is_empty(), "a source keeps no sketch");
        drop(keyed);
        assert_eq!(registry.report().len(), 1, "a finished task is no longer reported");
    }

    #[test]
    fn totals_sum_every_task_a_subtask_ran_and_outlive_its_job_until_later_jobs_end() {
        let registry = MetricsRegistry::default();
        let first = registry.register(task("counts"), vec![OperatorId::from("sink")], false);
        first.counters.read(10, 100);
        first.counters.sink_totals((4, 40));
        drop(first);
        let mut second_run = task("counts");
        second_run.epoch = Epoch(2);
        let second = registry.register(second_run, vec![OperatorId::from("sink")], false);
        second.counters.read(5, 50);
        second.counters.sink_totals((1, 10));
        second.counters.sent_totals(&OutputTotals {
            records: 3,
            batches: 2,
            bytes: 30,
            blocked_ns: 7,
        });
        second.counters.aligned(Duration::from_millis(4));
        second.counters.aligned(Duration::from_millis(2));
        second.counters.snapshotted(1_234);
        let totals = registry.totals();
        assert_eq!(totals.len(), 1, "{totals:?}");
        let (key, counted) = &totals[0];
        assert_eq!(key, &(JobId::from_number(1), OperatorId::from("counts"), 0));
        assert_eq!(
            (counted.records_in, counted.sink_lines, counted.sink_bytes),
            (15, 5, 50)
        );
        assert!(counted.running);
        assert_eq!(
            counted.operators,
            vec![OperatorId::from("counts"), OperatorId::from("sink")]
        );
        assert_eq!((counted.batches_in, counted.bytes_in), (2, 150));
        assert_eq!(
            (
                counted.records_out,
                counted.batches_out,
                counted.bytes_out,
                counted.blocked_ns
            ),
            (3, 2, 30, 7)
        );
        assert_eq!(counted.alignment_ns, 6_000_000, "alignments add up");
        assert_eq!(counted.last_alignment_ns, Some(2_000_000), "the gauge is the latest");
        assert_eq!(counted.state_bytes, Some(1_234));
        assert_eq!(counted.watermark_ms, None, "no watermark yet");
        second.counters.watermark(1_700_000_000_000);
        assert_eq!(registry.totals()[0].1.watermark_ms, Some(1_700_000_000_000));
        second.counters.watermark(i64::MAX);
        assert_eq!(registry.totals()[0].1.watermark_ms, None, "event time ended: no lag");
        drop(second);
        let ended = registry.totals();
        assert_eq!(ended[0].1.records_in, 15, "an ended task's counts stay");
        assert!(!ended[0].1.running);
        assert_eq!(ended[0].1.alignment_ns, 6_000_000);
        assert_eq!(ended[0].1.state_bytes, None, "an ended task has no gauges");
        registry.job_ended(&JobId::from_number(1));
        assert_eq!(registry.totals().len(), 1, "an ended job's totals stay a while");
        for later in 2..=ENDED_JOBS_SHOWN as u64 {
            registry.job_ended(&JobId::from_number(later));
        }
        assert_eq!(registry.totals().len(), 1);
        registry.job_ended(&JobId::from_number(99));
        assert!(registry.totals().is_empty(), "only the latest ended jobs stay");
    }
}
