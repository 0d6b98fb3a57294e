//! Writing metric families from values read at scrape time (a [`Collector`]'s job): the
//! coordinators read their Raft node and applied state, the executors their tasks' counters.
//!
//! [`Collector`]: prometheus_client::collector::Collector

use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Unit;

/// Label pairs of one sample; values are bounded (ids of jobs, operators, subtasks, members).
pub type Labels = Vec<(&'static str, String)>;

/// Writes families into one scrape.
pub struct Families<'a> {
    encoder: DescriptorEncoder<'a>,
}

impl<'a> Families<'a> {
    pub fn new(encoder: DescriptorEncoder<'a>) -> Self {
        Families { encoder }
    }

    /// A gauge family; nothing is written when `samples` is empty.
    pub fn gauge(
        &mut self,
        name: &str,
        help: &str,
        unit: Option<Unit>,
        samples: impl IntoIterator<Item = (Labels, f64)>,
    ) -> Result<(), std::fmt::Error> {
        self.write(name, help, unit, MetricType::Gauge, samples, |value, encoder| {
            ConstGauge::new(value).encode(encoder)
        })
    }

    /// A counter family (a total that only grows while the process that counts lives);
    /// nothing is written when `samples` is empty.
    pub fn counter(
        &mut self,
        name: &str,
        help: &str,
        unit: Option<Unit>,
        samples: impl IntoIterator<Item = (Labels, f64)>,
    ) -> Result<(), std::fmt::Error> {
        self.write(name, help, unit, MetricType::Counter, samples, |value, encoder| {
            ConstCounter::new(value).encode(encoder)
        })
    }

    fn write(
        &mut self,
        name: &str,
        help: &str,
        unit: Option<Unit>,
        kind: MetricType,
        samples: impl IntoIterator<Item = (Labels, f64)>,
        encode: impl Fn(f64, prometheus_client::encoding::MetricEncoder<'_>) -> Result<(), std::fmt::Error>,
    ) -> Result<(), std::fmt::Error> {
        let mut samples = samples.into_iter().peekable();
        if samples.peek().is_none() {
            return Ok(());
        }
        // Help texts end with a full stop, as the registry writes those of registered metrics.
        let help = format!("{help}.");
        let mut family = self.encoder.encode_descriptor(name, &help, unit.as_ref(), kind)?;
        for (labels, value) in samples {
            if labels.is_empty() {
                // Not `name{} value`: a sample without labels is written without braces (and is
                // its family's only one).
                return encode(value, family);
            }
            encode(value, family.encode_family(&labels)?)?;
        }
        Ok(())
    }
}

/// A sample without labels.
pub fn single(value: f64) -> std::iter::Once<(Labels, f64)> {
    std::iter::once((Vec::new(), value))
}

#[cfg(test)]
mod tests {
    use prometheus_client::collector::Collector;
    use prometheus_client::registry::Registry;

    use super::*;
    use crate::{encode, ExpositionFormat};

    #[derive(Debug)]
    struct Fixed;

    impl Collector for Fixed {
        fn encode(&self, encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
            let mut families = Families::new(encoder);
            families.gauge("term", "Current term", None, single(4.0))?;
            families.counter(
                "records",
                "Records seen",
                None,
                [
                    (vec![("job", "job-1".to_owned())], 10.0),
                    (vec![("job", "job-2".to_owned())], 20.0),
                ],
            )?;
            families.gauge("nothing", "Never written", Some(Unit::Bytes), std::iter::empty())
        }
    }

    #[test]
    fn writes_labelled_and_bare_samples_and_skips_empty_families() {
        let mut registry = Registry::with_prefix("raftstream");
        registry.register_collector(Box::new(Fixed));
        let text = encode(&registry, ExpositionFormat::PrometheusText).expect("encodes");
        assert!(text.contains("# HELP raftstream_term Current term.\n"), "{text}");
        assert!(text.contains("raftstream_term 4"), "{text}");
        assert!(!text.contains("{}"), "{text}");
        assert!(text.contains("raftstream_records_total{job=\"job-2\"} 20"), "{text}");
        assert!(!text.contains("nothing"), "{text}");
    }
}
