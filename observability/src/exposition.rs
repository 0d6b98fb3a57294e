//! The two exposition formats: OpenMetrics as `prometheus-client` writes it, and the classic
//! Prometheus text format (0.0.4) derived from it line by line.

use std::collections::HashSet;

use prometheus_client::registry::Registry;

/// Which format a scrape gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExpositionFormat {
    OpenMetrics,
    PrometheusText,
}

impl ExpositionFormat {
    pub fn content_type(self) -> &'static str {
        match self {
            ExpositionFormat::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
            ExpositionFormat::PrometheusText => "text/plain; version=0.0.4; charset=utf-8",
        }
    }
}

/// OpenMetrics when the scraper lists it among what it accepts (Prometheus does), else text.
pub fn negotiate(accept: Option<&str>) -> ExpositionFormat {
    match accept {
        Some(accept) if accept.contains("application/openmetrics-text") => ExpositionFormat::OpenMetrics,
        _ => ExpositionFormat::PrometheusText,
    }
}

/// Everything in `registry` (collectors run now), in `format`.
pub fn encode(registry: &Registry, format: ExpositionFormat) -> Result<String, std::fmt::Error> {
    let mut open_metrics = String::new();
    prometheus_client::encoding::text::encode(&mut open_metrics, registry)?;
    Ok(match format {
        ExpositionFormat::OpenMetrics => open_metrics,
        ExpositionFormat::PrometheusText => to_prometheus_text(&open_metrics),
    })
}

/// OpenMetrics -> text 0.0.4: a counter family is named by its samples (`x_total`, not `x`),
/// `# UNIT` and `# EOF` do not exist, `_created` samples are dropped, and the types the text
/// format lacks become `gauge` (info, stateset) or `untyped` (unknown).
fn to_prometheus_text(open_metrics: &str) -> String {
    let counters: HashSet<&str> = open_metrics
        .lines()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .filter_map(|rest| rest.strip_suffix(" counter"))
        .collect();
    let infos: HashSet<&str> = open_metrics
        .lines()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .filter_map(|rest| rest.strip_suffix(" info"))
        .collect();
    let mut text = String::with_capacity(open_metrics.len());
    for line in open_metrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').unwrap_or((rest, ""));
            text.push_str(&format!("# HELP {} {help}\n", family_name(name, &counters, &infos)));
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, "unknown"));
            let kind = match kind {
                "counter" | "gauge" | "histogram" | "summary" => kind,
                "info" | "stateset" => "gauge",
                _ => "untyped",
            };
            text.push_str(&format!("# TYPE {} {kind}\n", family_name(name, &counters, &infos)));
            continue;
        }
        let sample_name = line.split(['{', ' ']).next().unwrap_or_default();
        if sample_name
            .strip_suffix("_created")
            .is_some_and(|family| counters.contains(family))
        {
            continue;
        }
        text.push_str(line);
        text.push('\n');
    }
    text
}

fn family_name(name: &str, counters: &HashSet<&str>, infos: &HashSet<&str>) -> String {
    if counters.contains(name) {
        format!("{name}_total")
    } else if infos.contains(name) {
        format!("{name}_info")
    } else {
        name.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use prometheus_client::metrics::counter::Counter;
    use prometheus_client::metrics::family::Family;
    use prometheus_client::metrics::gauge::Gauge;
    use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
    use prometheus_client::metrics::info::Info;
    use prometheus_client::registry::Unit;

    use super::*;

    fn sample_registry() -> Registry {
        let mut registry = Registry::with_prefix("raftstream");
        let counter: Family<Vec<(String, String)>, Counter> = Family::default();
        registry.register("records_in", "Records into the subtask", counter.clone());
        counter
            .get_or_create(&vec![("job".to_owned(), "job-1".to_owned())])
            .inc_by(42);
        let gauge: Gauge = Gauge::default();
        registry.register_with_unit("uptime", "Time since the job started", Unit::Seconds, gauge.clone());
        gauge.set(7);
        let histogram = Histogram::new(exponential_buckets(0.001, 2.0, 4));
        registry.register_with_unit(
            "proposal_duration",
            "Proposal latency",
            Unit::Seconds,
            histogram.clone(),
        );
        histogram.observe(0.003);
        registry.register("build", "Version of the binary", Info::new(vec![("version", "0.1.0")]));
        registry
    }

    #[test]
    fn text_format_names_counter_families_by_their_samples_and_drops_what_it_lacks() {
        let text = encode(&sample_registry(), ExpositionFormat::PrometheusText).expect("encodes");
        assert!(
            text.contains("# HELP raftstream_records_in_total Records into the subtask.\n"),
            "{text}"
        );
        assert!(text.contains("# TYPE raftstream_records_in_total counter\n"), "{text}");
        assert!(
            text.contains("raftstream_records_in_total{job=\"job-1\"} 42\n"),
            "{text}"
        );
        assert!(text.contains("# TYPE raftstream_uptime_seconds gauge\n"), "{text}");
        assert!(
            text.contains("# TYPE raftstream_proposal_duration_seconds histogram\n"),
            "{text}"
        );
        assert!(
            text.contains("raftstream_proposal_duration_seconds_bucket{le=\"0.004\"} 1\n"),
            "{text}"
        );
        assert!(text.contains("# TYPE raftstream_build_info gauge\n"), "{text}");
        assert!(!text.contains("# UNIT") && !text.contains("# EOF"), "{text}");

        let open_metrics = encode(&sample_registry(), ExpositionFormat::OpenMetrics).expect("encodes");
        assert!(
            open_metrics.contains("# TYPE raftstream_records_in counter\n"),
            "{open_metrics}"
        );
        assert!(
            open_metrics.contains("# UNIT raftstream_uptime_seconds seconds\n"),
            "{open_metrics}"
        );
    }

    #[test]
    fn negotiation_follows_the_accept_header() {
        assert_eq!(negotiate(None), ExpositionFormat::PrometheusText);
        assert_eq!(negotiate(Some("*/*")), ExpositionFormat::PrometheusText);
        assert_eq!(
            negotiate(Some(
                "application/openmetrics-text;version=1.0.0;q=0.9,text/plain;q=0.5"
            )),
            ExpositionFormat::OpenMetrics
        );
    }

    /// promtool (Debian's `prometheus`, installed by `scripts/ensure-build-deps.sh --test`) lints
    /// the text format; without it this test says so and checks nothing more.
    #[test]
    fn promtool_accepts_the_text_format() {
        let text = encode(&sample_registry(), ExpositionFormat::PrometheusText).expect("encodes");
        let Some(verdict) = crate::promtool::check(&text) else {
            eprintln!("promtool not installed: skipping its check");
            return;
        };
        assert_eq!(verdict, Ok(()), "promtool rejected:\n{text}");
    }
}
