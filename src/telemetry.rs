//! Telemetry: logging, and the metrics registry every subsystem renders into ([`Metrics`]).
//!
//! Logging: `tracing` to stderr (journald under systemd), filtered by the config's `log`
//! value or `RUST_LOG`. ONNX Runtime's and notify's own chatter is held to warnings unless
//! asked for.
//! A closed or full stderr never takes the daemon down: failed log writes are dropped.

use std::io::{IsTerminal, Write};

use tracing_subscriber::EnvFilter;

/// Installs the global subscriber; `default_filter` applies when `RUST_LOG` is unset.
pub fn init(default_filter: &str) {
    let filter = std::env::var("RUST_LOG")
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| quieted(default_filter));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_new(&filter).unwrap_or_else(|_| EnvFilter::new("info,ort=warn")))
        .with_writer(|| LossyStderr)
        .with_ansi(std::io::stderr().is_terminal())
        .try_init();
}

/// `filter` with the libraries' own chatter held to warnings unless it names them: ONNX
/// Runtime's, and notify's INFO "unable to remove watch descriptor" when a watched directory is
/// deleted.
fn quieted(filter: &str) -> String {
    let mut quieted = filter.to_string();
    for quiet in ["ort", "notify"] {
        if !filter.contains(quiet) {
            quieted.push_str(&format!(",{quiet}=warn"));
        }
    }
    quieted
}

#[cfg(test)]
mod tests {
    #[test]
    fn library_chatter_is_held_to_warnings_unless_the_filter_names_the_library() {
        assert_eq!(super::quieted("info"), "info,ort=warn,notify=warn");
        assert_eq!(super::quieted("debug,notify=info"), "debug,notify=info,ort=warn");
    }
}

/// Stderr that reports every write as done. tracing-subscriber answers a failed write by
/// printing to stderr with `eprintln!`, which panics when stderr itself is gone (a closed
/// journald pipe); losing a log line is better than losing the daemon.
struct LossyStderr;

impl Write for LossyStderr {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let _ = std::io::stderr().write_all(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        let _ = std::io::stderr().flush();
        Ok(())
    }
}

/// One part of the daemon's metrics: each subsystem renders its own counters (read at scrape
/// time from its state) into the registry of a scrape.
pub trait MetricsSource: Send + Sync {
    /// Registers and fills this source's metrics.
    fn render(&self, registry: &prometheus::Registry);
}

/// The daemon's metrics: the sources subsystems added, rendered together (with the
/// process's resident memory and CPU time) in the Prometheus text format. HTTP only serves
/// [`Metrics::render`].
#[derive(Default)]
pub struct Metrics {
    sources: std::sync::RwLock<Vec<std::sync::Arc<dyn MetricsSource>>>,
}

impl Metrics {
    /// Adds a source (a subsystem at start).
    pub fn add(&self, source: std::sync::Arc<dyn MetricsSource>) {
        self.sources
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .push(source);
    }

    /// The Prometheus text exposition (format 0.0.4, what `promtool check metrics` lints).
    pub fn render(&self) -> String {
        use prometheus::Encoder;
        let registry = prometheus::Registry::new();
        for source in self.sources.read().unwrap_or_else(|e| e.into_inner()).iter() {
            source.render(&registry);
        }
        registry
            .register(Box::new(
                prometheus::process_collector::ProcessCollector::for_self(),
            ))
            .expect("unique collector");
        let mut out = Vec::new();
        prometheus::TextEncoder::new()
            .encode(&registry.gather(), &mut out)
            .expect("text encoding");
        String::from_utf8(out).expect("UTF-8 exposition")
    }
}

/// Registers an integer counter family.
pub fn counter(
    registry: &prometheus::Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> prometheus::IntCounterVec {
    let metric =
        prometheus::IntCounterVec::new(prometheus::Opts::new(name, help), labels).expect("valid metric");
    registry
        .register(Box::new(metric.clone()))
        .expect("unique metric");
    metric
}

/// Registers a float counter family (seconds).
pub fn seconds(
    registry: &prometheus::Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> prometheus::CounterVec {
    let metric =
        prometheus::CounterVec::new(prometheus::Opts::new(name, help), labels).expect("valid metric");
    registry
        .register(Box::new(metric.clone()))
        .expect("unique metric");
    metric
}

/// Registers an integer gauge family.
pub fn gauge(
    registry: &prometheus::Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> prometheus::IntGaugeVec {
    let metric =
        prometheus::IntGaugeVec::new(prometheus::Opts::new(name, help), labels).expect("valid metric");
    registry
        .register(Box::new(metric.clone()))
        .expect("unique metric");
    metric
}

/// Registers a float gauge family.
pub fn float_gauge(
    registry: &prometheus::Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> prometheus::GaugeVec {
    let metric = prometheus::GaugeVec::new(prometheus::Opts::new(name, help), labels).expect("valid metric");
    registry
        .register(Box::new(metric.clone()))
        .expect("unique metric");
    metric
}

/// One labelled series of a histogram read from onnxd's own counters.
pub struct HistogramSample {
    /// Label values, in the family's label order.
    pub labels: Vec<String>,
    /// `(upper bound, cumulative count)` per bucket, ascending; `+Inf` is added.
    pub buckets: Vec<(f64, u64)>,
    /// Sum of the observations.
    pub sum: f64,
    /// Number of observations.
    pub count: u64,
}

/// Registers a histogram family whose samples onnxd counted itself (the scrape renders them;
/// nothing observes through the `prometheus` crate).
pub fn histogram(
    registry: &prometheus::Registry,
    name: &str,
    help: &str,
    labels: &[&str],
    samples: Vec<HistogramSample>,
) {
    use prometheus::proto::{Bucket, Histogram, LabelPair, Metric, MetricFamily, MetricType};
    let metrics = samples
        .into_iter()
        .map(|sample| {
            let mut histogram = Histogram::default();
            histogram.set_sample_count(sample.count);
            histogram.set_sample_sum(sample.sum);
            histogram.set_bucket(
                sample
                    .buckets
                    .iter()
                    .map(|&(bound, count)| {
                        let mut bucket = Bucket::default();
                        bucket.set_upper_bound(bound);
                        bucket.set_cumulative_count(count);
                        bucket
                    })
                    .collect(),
            );
            let pairs = labels
                .iter()
                .zip(sample.labels)
                .map(|(name, value)| {
                    let mut pair = LabelPair::default();
                    pair.set_name(name.to_string());
                    pair.set_value(value);
                    pair
                })
                .collect();
            let mut metric = Metric::default();
            metric.set_label(pairs);
            metric.set_histogram(histogram);
            metric
        })
        .collect();
    let mut family = MetricFamily::default();
    family.set_name(name.to_string());
    family.set_help(help.to_string());
    family.set_field_type(MetricType::HISTOGRAM);
    family.set_metric(metrics);
    let labels = labels.iter().map(|l| l.to_string()).collect();
    let desc = prometheus::core::Desc::new(name.to_string(), help.to_string(), labels, Default::default())
        .expect("valid metric");
    registry
        .register(Box::new(Fixed { desc, family }))
        .expect("unique metric");
}

/// A metric family rendered ahead of the scrape.
struct Fixed {
    desc: prometheus::core::Desc,
    family: prometheus::proto::MetricFamily,
}

impl prometheus::core::Collector for Fixed {
    fn desc(&self) -> Vec<&prometheus::core::Desc> {
        vec![&self.desc]
    }

    fn collect(&self) -> Vec<prometheus::proto::MetricFamily> {
        vec![self.family.clone()]
    }
}
