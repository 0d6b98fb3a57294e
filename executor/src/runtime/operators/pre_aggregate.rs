//! The first phase of a two-phase aggregation: on the sending side of the keyed exchange into a
//! `two_phase` aggregate or window, the records of each key (of each window pane) are folded into
//! one partial result, which is sent on when flushed. The aggregate then merges partials instead
//! of records, so a key holding most of the stream costs the keyed subtask one record per flush.
//!
//! Nothing is checkpointed here: the holder flushes before every barrier and watermark, so a
//! checkpoint never contains an unsent partial and a window never fires without one.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use raftstream_api::spec::{Combine, OperatorConfig, OperatorSpec, PreAggregation, WindowAggregate};

use super::{decimal_text, field_of, number_text};
use crate::runtime::record::{Record, Text};

/// How partial results combine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fold {
    Count,
    Sum,
    Min,
    Max,
}

impl Fold {
    fn combine(self, held: f64, value: f64) -> f64 {
        match self {
            Fold::Count | Fold::Sum => held + value,
            Fold::Min => held.min(value),
            Fold::Max => held.max(value),
        }
    }
}

/// One key's (one pane's) partial result.
#[derive(Debug, Clone, Copy)]
struct Partial {
    value: f64,
    /// The latest event time folded in: the partial carries it, so the window downstream tracks
    /// the same largest event time (and watermark) as it would from the records.
    timestamp_ms: i64,
}

/// The partial results of one sending subtask for one two-phase consumer.
#[derive(Debug)]
pub struct PreAggregate {
    fold: Fold,
    /// Where the number is (sum, min, max); a count needs none.
    field: Option<String>,
    /// Windows: where the event time is (`None`: the record's timestamp) and the pane, the
    /// largest span whose records all belong to the same windows (gcd of size and slide).
    timestamp_field: Option<String>,
    pane_ms: Option<i64>,
    bounds: PreAggregation,
    partials: HashMap<(Text, i64), Partial>,
    /// Records folded since the last flush, and when the first of them came.
    held: u64,
    holding_since: Option<Instant>,
    /// Records without a usable number or time: dropped, as the one-phase aggregate drops them.
    pub dropped: u64,
}

fn gcd(a: i64, b: i64) -> i64 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

impl PreAggregate {
    /// The first phase of `consumer`, when it is a two-phase aggregate or window.
    pub fn of(consumer: &OperatorSpec) -> Option<PreAggregate> {
        let bounds = consumer.config.two_phase()?;
        let as_i64 = |value: u64| i64::try_from(value).unwrap_or(i64::MAX).max(1);
        let (fold, field, timestamp_field, pane_ms) = match &consumer.config {
            OperatorConfig::Count { .. } => (Fold::Count, None, None, None),
            OperatorConfig::Aggregate { combine, field, .. } => {
                let fold = match combine {
                    Combine::Sum => Fold::Sum,
                    Combine::Min => Fold::Min,
                    Combine::Max => Fold::Max,
                    // Refused at submit: concatenation keeps arrival order.
                    Combine::Concat => return None,
                };
                (fold, field.clone(), None, None)
            }
            OperatorConfig::Window(window) => {
                let fold = match window.aggregate {
                    WindowAggregate::Count => Fold::Count,
                    WindowAggregate::Sum => Fold::Sum,
                    WindowAggregate::Min => Fold::Min,
                    WindowAggregate::Max => Fold::Max,
                };
                let field = (fold != Fold::Count).then(|| window.field.clone()).flatten();
                let pane = gcd(as_i64(window.size_ms), as_i64(window.slide_ms));
                (fold, field, window.timestamp_field.clone(), Some(pane))
            }
            _ => return None,
        };
        Some(PreAggregate {
            fold,
            field,
            timestamp_field,
            pane_ms,
            bounds,
            partials: HashMap::new(),
            held: 0,
            holding_since: None,
            dropped: 0,
        })
    }

    /// Folds one keyed record in.
    pub fn add(&mut self, record: &Record) {
        let value = match (self.fold, &self.field) {
            (Fold::Count, _) => Some(1.0),
            (_, Some(field)) => field_of(&record.value, field).and_then(|text| text.trim().parse::<f64>().ok()),
            (_, None) => record.value.trim().parse::<f64>().ok(),
        };
        let timestamp = match &self.timestamp_field {
            Some(field) => field_of(&record.value, field).and_then(|text| text.trim().parse::<i64>().ok()),
            None => Some(record.timestamp_ms),
        };
        let (Some(value), Some(timestamp_ms)) = (value, timestamp) else {
            self.dropped += 1;
            return;
        };
        let pane = self
            .pane_ms
            .map_or(0, |pane| timestamp_ms - timestamp_ms.rem_euclid(pane));
        let fold = self.fold;
        match self.partials.get_mut(&(record.key.clone(), pane)) {
            Some(partial) => {
                partial.value = fold.combine(partial.value, value);
                partial.timestamp_ms = partial.timestamp_ms.max(timestamp_ms);
            }
            None => {
                self.partials
                    .insert((record.key.clone(), pane), Partial { value, timestamp_ms });
            }
        }
        self.held += 1;
        self.holding_since.get_or_insert_with(Instant::now);
    }

    /// When the held partials must go at the latest (`flush_ms` after the first was folded in).
    pub fn deadline(&self) -> Option<Instant> {
        self.holding_since
            .map(|since| since + Duration::from_millis(self.bounds.flush_ms))
    }

    /// Whether `flush_records` records are held or `flush_ms` passed.
    pub fn is_due(&self, now: Instant) -> bool {
        self.held >= self.bounds.flush_records || self.deadline().is_some_and(|deadline| now >= deadline)
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.partials.is_empty()
    }

    /// Sends every partial on as a record (key, partial result as a number, latest event time),
    /// in event-time order, and starts over.
    pub fn flush(&mut self, emit: &mut impl FnMut(Record)) {
        let mut partials: Vec<((Text, i64), Partial)> = self.partials.drain().collect();
        partials.sort_unstable_by_key(|(_, partial)| partial.timestamp_ms);
        for ((key, _), partial) in partials {
            let value = match self.fold {
                Fold::Count => decimal_text(partial.value as u64),
                _ => Text::from(number_text(partial.value)),
            };
            emit(Record {
                key,
                value,
                timestamp_ms: partial.timestamp_ms,
            });
        }
        self.held = 0;
        self.holding_since = None;
    }
}

#[cfg(test)]
mod tests {
    use raftstream_api::spec::OperatorKind;

    use super::super::test_support::spec;
    use super::*;

    fn keyed(key: &str, value: &str, timestamp_ms: i64) -> Record {
        Record {
            key: key.into(),
            value: value.into(),
            timestamp_ms,
        }
    }

    fn flushed(pre: &mut PreAggregate) -> Vec<(String, String, i64)> {
        let mut out = Vec::new();
        pre.flush(&mut |record| out.push((record.key.to_string(), record.value.to_string(), record.timestamp_ms)));
        out.sort();
        out
    }

    #[test]
    fn a_one_phase_aggregate_has_no_first_phase() {
        assert!(PreAggregate::of(&spec(OperatorKind::Count, serde_json::json!({}))).is_none());
    }

    #[test]
    fn counts_fold_per_key_until_the_record_bound_and_start_over_after_a_flush() {
        let mut pre = PreAggregate::of(&spec(
            OperatorKind::Count,
            serde_json::json!({"two_phase": true, "flush_records": 4}),
        ))
        .expect("two-phase");
        for (key, at) in [("hot", 5), ("hot", 9), ("cold", 7)] {
            pre.add(&keyed(key, "", at));
        }
        assert!(!pre.is_due(Instant::now()));
        pre.add(&keyed("hot", "", 3));
        assert!(pre.is_due(Instant::now()), "four records held");
        assert_eq!(
            flushed(&mut pre),
            vec![("cold".into(), "1".into(), 7), ("hot".into(), "3".into(), 9)]
        );
        assert!(pre.is_empty() && pre.deadline().is_none());
    }

    #[test]
    fn sums_min_and_max_read_their_field_and_drop_what_is_not_a_number() {
        let mut sum = PreAggregate::of(&spec(
            OperatorKind::Sum,
            serde_json::json!({"field": "n", "two_phase": true}),
        ))
        .expect("two-phase");
        sum.add(&keyed("a", r#"{"n": 2.5}"#, 0));
        sum.add(&keyed("a", r#"{"n": 4}"#, 0));
        sum.add(&keyed("a", r#"{"m": 4}"#, 0));
        assert_eq!(sum.dropped, 1);
        assert_eq!(flushed(&mut sum), vec![("a".into(), "6.5".into(), 0)]);
        let mut max =
            PreAggregate::of(&spec(OperatorKind::Max, serde_json::json!({"two_phase": true}))).expect("two-phase");
        for value in ["3", "11", "7"] {
            max.add(&keyed("k", value, 0));
        }
        assert_eq!(flushed(&mut max), vec![("k".into(), "11".into(), 0)]);
    }

    #[test]
    fn window_partials_are_per_pane_and_carry_the_latest_event_time() {
        // Size 1000, slide 250: panes of 250 ms share their windows.
        let mut pre = PreAggregate::of(&spec(
            OperatorKind::SlidingWindow,
            serde_json::json!({"size_ms": 1000, "slide_ms": 250, "aggregate": "count", "two_phase": true}),
        ))
        .expect("two-phase");
        for at in [0, 100, 249, 250, 1_300] {
            pre.add(&keyed("k", "", at));
        }
        assert_eq!(
            flushed(&mut pre),
            vec![
                ("k".into(), "1".into(), 250),
                ("k".into(), "1".into(), 1_300),
                ("k".into(), "3".into(), 249)
            ]
        );
    }

    #[test]
    fn the_time_bound_makes_held_partials_due() {
        let mut pre = PreAggregate::of(&spec(
            OperatorKind::Count,
            serde_json::json!({"two_phase": true, "flush_ms": 30}),
        ))
        .expect("two-phase");
        assert!(pre.deadline().is_none(), "nothing held, nothing due");
        pre.add(&keyed("k", "", 0));
        let deadline = pre.deadline().expect("held");
        assert!(!pre.is_due(deadline - Duration::from_millis(1)));
        assert!(pre.is_due(deadline));
    }
}
