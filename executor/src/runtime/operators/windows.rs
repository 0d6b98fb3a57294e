//! Keyed tumbling and sliding event-time windows with bounded-out-of-orderness watermarks.
//!
//! Each record's event time is its `timestamp_ms` (sources set it) or a JSON field of its value
//! (`timestamp_field`). Per input channel the operator tracks the largest event time seen; the
//! channel's watermark is that minus `max_out_of_orderness_ms`, or the explicit watermark the
//! channel sent, whichever is later (sources send the maximum watermark when their input ends).
//! The operator's watermark is the minimum over its channels; a window fires, emitting
//! `key -> start<TAB>end<TAB>aggregate`, once the watermark reaches its end. Records for windows
//! that already fired are late: dropped and counted.

use std::collections::BTreeMap;

use raftstream_api::spec::{OperatorConfig, OperatorSpec, WindowAggregate};

use crate::runtime::record::Record;
use serde::{Deserialize, Serialize};

use super::{field_of, number_text, OperatorError};
use crate::runtime::key_groups::{key_group, KeyedMap, StateKey};

/// Window state of one key: window start -> aggregate so far.
type KeyWindows = BTreeMap<i64, f64>;

/// A keyed window operator.
#[derive(Debug)]
pub struct WindowOperator {
    size_ms: i64,
    slide_ms: i64,
    aggregate: WindowAggregate,
    field: Option<String>,
    timestamp_field: Option<String>,
    out_of_orderness_ms: i64,
    /// Two-phase: each record is a partial aggregate of one pane, its value the number and its
    /// timestamp the latest event time folded in.
    merges_partials: bool,
    windows: KeyedMap<KeyWindows>,
    /// Per input channel: largest event time seen, explicit watermark.
    max_event_time: Vec<i64>,
    explicit: Vec<i64>,
    watermark: i64,
    /// Records dropped for arriving after their window fired (or without a usable time/value).
    pub dropped: u64,
}

#[derive(Serialize, Deserialize)]
struct WindowSnapshot {
    groups: BTreeMap<u32, Vec<(String, Vec<(i64, f64)>)>>,
    max_event_time: Vec<i64>,
    explicit: Vec<i64>,
    watermark: i64,
}

impl WindowOperator {
    /// The window of a tumbling_window or sliding_window operator with `channels` inputs.
    pub fn of(operator: &OperatorSpec, channels: usize) -> Result<WindowOperator, OperatorError> {
        let OperatorConfig::Window(config) = &operator.config else {
            return Err(OperatorError::Unsupported {
                operator: operator.id.to_string(),
                kind: operator.kind,
            });
        };
        let as_i64 = |value: u64| i64::try_from(value).unwrap_or(i64::MAX);
        let merges_partials = operator.config.two_phase().is_some();
        Ok(WindowOperator {
            size_ms: as_i64(config.size_ms),
            slide_ms: as_i64(config.slide_ms),
            aggregate: config.aggregate,
            // Two-phase: the first phase read the fields.
            field: config.field.clone().filter(|_| !merges_partials),
            timestamp_field: config.timestamp_field.clone().filter(|_| !merges_partials),
            out_of_orderness_ms: as_i64(config.max_out_of_orderness_ms),
            merges_partials,
            windows: KeyedMap::default(),
            max_event_time: vec![i64::MIN; channels],
            explicit: vec![i64::MIN; channels],
            watermark: i64::MIN,
            dropped: 0,
        })
    }

    fn channel_watermark(&self, channel: usize) -> i64 {
        let derived = self.max_event_time[channel].saturating_sub(self.out_of_orderness_ms);
        derived.max(self.explicit[channel])
    }

    /// Adds one record from `channel`; fires the windows the advanced watermark closes.
    pub fn on_record(&mut self, channel: usize, record: Record, emit: &mut impl FnMut(Record)) {
        let event_time = match &self.timestamp_field {
            Some(field) => field_of(&record.value, field).and_then(|text| text.trim().parse::<i64>().ok()),
            None => Some(record.timestamp_ms),
        };
        let value = match (self.aggregate, &self.field) {
            (WindowAggregate::Count, _) if !self.merges_partials => Some(1.0),
            (_, Some(field)) => field_of(&record.value, field).and_then(|text| text.trim().parse::<f64>().ok()),
            (_, None) => record.value.trim().parse::<f64>().ok(),
        };
        let (Some(event_time), Some(value)) = (event_time, value) else {
            self.dropped += 1;
            return;
        };
        if let Some(seen) = self.max_event_time.get_mut(channel) {
            *seen = (*seen).max(event_time);
        }
        // Windows [start, start + size) containing the event, by slide.
        let last_start = event_time - event_time.rem_euclid(self.slide_ms);
        let mut start = last_start;
        let mut accepted = false;
        while start > event_time - self.size_ms {
            if start + self.size_ms > self.watermark {
                accepted = true;
                let windows = self.windows.entry(record.key.clone()).or_default();
                let slot = windows.entry(start).or_insert(match self.aggregate {
                    WindowAggregate::Count | WindowAggregate::Sum => 0.0,
                    WindowAggregate::Min => f64::INFINITY,
                    WindowAggregate::Max => f64::NEG_INFINITY,
                });
                *slot = match self.aggregate {
                    WindowAggregate::Count | WindowAggregate::Sum => *slot + value,
                    WindowAggregate::Min => slot.min(value),
                    WindowAggregate::Max => slot.max(value),
                };
            }
            start -= self.slide_ms;
        }
        if !accepted {
            self.dropped += 1;
        }
        self.advance(emit);
    }

    /// An explicit watermark from `channel`.
    pub fn on_watermark(&mut self, channel: usize, watermark: i64, emit: &mut impl FnMut(Record)) {
        if let Some(explicit) = self.explicit.get_mut(channel) {
            *explicit = (*explicit).max(watermark);
        }
        self.advance(emit);
    }

    /// The operator's watermark (minimum over its channels).
    pub fn watermark(&self) -> i64 {
        self.watermark
    }

    fn advance(&mut self, emit: &mut impl FnMut(Record)) {
        let combined = (0..self.max_event_time.len())
            .map(|channel| self.channel_watermark(channel))
            .min()
            .unwrap_or(i64::MIN);
        if combined <= self.watermark {
            return;
        }
        self.watermark = combined;
        let mut fired = Vec::new();
        for (key, windows) in &mut self.windows {
            while let Some((&start, &value)) = windows.first_key_value() {
                if start.saturating_add(self.size_ms) > combined {
                    break;
                }
                windows.remove(&start);
                fired.push((start, key.clone(), value));
            }
        }
        self.windows.retain(|_, windows| !windows.is_empty());
        // Deterministic output order: by window, then key.
        fired.sort_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
        for (start, key, value) in fired {
            emit(Record {
                value: format!("{start}\t{}\t{}", start + self.size_ms, number_text(value)).into(),
                key,
                timestamp_ms: start + self.size_ms - 1,
            });
        }
    }

    /// The state as bytes: open windows grouped by key group, and the channels' progress.
    pub fn snapshot(&self, max_parallelism: u32) -> Vec<u8> {
        let mut groups: BTreeMap<u32, Vec<(String, Vec<(i64, f64)>)>> = BTreeMap::new();
        for (key, windows) in &self.windows {
            groups.entry(key_group(key, max_parallelism)).or_default().push((
                key.to_string(),
                windows.iter().map(|(start, value)| (*start, *value)).collect(),
            ));
        }
        let snapshot = WindowSnapshot {
            groups,
            max_event_time: self.max_event_time.clone(),
            explicit: self.explicit.clone(),
            watermark: self.watermark,
        };
        serde_json::to_vec(&snapshot).unwrap_or_default()
    }

    /// Adds the windows of `bytes` whose key group lies in `groups`; `own` says the state is this
    /// subtask's own (then its channels' progress is restored too).
    pub fn restore(
        &mut self,
        operator: &str,
        bytes: &[u8],
        groups: &std::ops::Range<u32>,
        own: bool,
    ) -> Result<(), OperatorError> {
        let snapshot: WindowSnapshot = serde_json::from_slice(bytes).map_err(|error| OperatorError::State {
            operator: operator.to_owned(),
            problem: format!("unreadable window state: {error}"),
        })?;
        for (group, entries) in snapshot.groups {
            if groups.contains(&group) {
                for (key, windows) in entries {
                    self.windows.entry(StateKey::from(key)).or_default().extend(windows);
                }
            }
        }
        if own && snapshot.max_event_time.len() == self.max_event_time.len() {
            self.max_event_time = snapshot.max_event_time;
            self.explicit = snapshot.explicit;
            self.watermark = snapshot.watermark;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use raftstream_api::ids::OperatorId;
    use raftstream_api::spec::OperatorKind;

    fn window(kind: OperatorKind, params: serde_json::Value, channels: usize) -> WindowOperator {
        let params = params
            .as_object()
            .map(|object| object.clone().into_iter().collect())
            .unwrap_or_default();
        let spec = OperatorSpec::new("w", kind, 1, vec![OperatorId::from("k")], params).expect("valid window params");
        WindowOperator::of(&spec, channels).expect("valid window")
    }

    fn at(key: &str, timestamp_ms: i64) -> Record {
        Record {
            key: key.into(),
            value: key.into(),
            timestamp_ms,
        }
    }

    #[test]
    fn tumbling_counts_fire_when_the_slowest_channel_passes_the_window_end() {
        let mut windows = window(
            OperatorKind::TumblingWindow,
            serde_json::json!({"size_ms": 10, "aggregate": "count", "max_out_of_orderness_ms": 2}),
            2,
        );
        let mut out = Vec::new();
        let mut emit = |record: Record| out.push(format!("{} {}", record.key, record.value));
        for (channel, key, time) in [(0, "a", 1), (0, "a", 8), (1, "b", 3), (0, "a", 15), (1, "a", 11)] {
            windows.on_record(channel, at(key, time), &mut emit);
        }
        // Channel 1 is at 11 - 2 = 9: nothing closed yet. At 13 - 2 = 11 both channels passed
        // 10, so [0, 10) fires: a twice, b once.
        windows.on_record(1, at("b", 13), &mut emit);
        // Its window already fired: late, dropped.
        windows.on_record(0, at("a", 4), &mut emit);
        windows.on_watermark(0, i64::MAX, &mut emit);
        windows.on_watermark(1, i64::MAX, &mut emit);
        assert_eq!(out, vec!["a 0\t10\t2", "b 0\t10\t1", "a 10\t20\t2", "b 10\t20\t1"]);
        assert_eq!(windows.dropped, 1);
        windows.on_record(0, at("a", 5), &mut |_| {});
        assert_eq!(windows.dropped, 2, "after the end, everything is late");
    }

    #[test]
    fn sliding_sums_use_a_time_field_and_survive_a_snapshot() {
        let params =
            serde_json::json!({"size_ms": 10, "slide_ms": 5, "aggregate": "sum", "field": "v", "timestamp_field": "t"});
        let mut windows = window(OperatorKind::SlidingWindow, params.clone(), 1);
        let record = |t: i64, v: i64| Record {
            key: "k".into(),
            value: format!(r#"{{"t": {t}, "v": {v}}}"#).into(),
            timestamp_ms: 0,
        };
        let mut out = Vec::new();
        windows.on_record(0, record(7, 1), &mut |r| out.push(r.value));
        windows.on_record(0, record(12, 2), &mut |r| out.push(r.value));
        assert_eq!(out, vec!["0\t10\t1"], "the watermark reached 12");
        let bytes = windows.snapshot(128);
        let mut restored = window(OperatorKind::SlidingWindow, params, 1);
        restored.restore("w", &bytes, &(0..128), true).expect("restore");
        restored.on_watermark(0, i64::MAX, &mut |r| out.push(r.value));
        assert_eq!(out, vec!["0\t10\t1", "5\t15\t3", "10\t20\t2"]);
    }
}
