//! Declaring Prometheus metrics in one call each: the metric built and
//! registered, an error naming it when either fails. What a service's
//! metrics struct is made of:
//!
//! ```
//! # fn main() -> anyhow::Result<()> {
//! use warmhouse_service_kit::metrics::{counter, counter_vec};
//! let registry = prometheus::Registry::new();
//! let received = counter(&registry, "warmhouse_x_received_total", "Records received")?;
//! let failed = counter_vec(&registry, "warmhouse_x_failures_total", "Failures, by kind", &["kind"])?;
//! # let _ = (received, failed);
//! # Ok(())
//! # }
//! ```

use anyhow::Context;
use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry,
};

/// Registers `metric` under its name.
fn registered<M: prometheus::core::Collector + Clone + 'static>(
    registry: &Registry,
    name: &str,
    metric: prometheus::Result<M>,
) -> anyhow::Result<M> {
    let metric = metric.with_context(|| format!("declaring the metric {name}"))?;
    registry
        .register(Box::new(metric.clone()))
        .with_context(|| format!("registering the metric {name}"))?;
    Ok(metric)
}

/// A counter.
pub fn counter(
    registry: &Registry,
    name: impl Into<String>,
    help: &str,
) -> anyhow::Result<IntCounter> {
    let name = name.into();
    registered(registry, &name.clone(), IntCounter::new(name, help))
}

/// A counter with `labels`.
pub fn counter_vec(
    registry: &Registry,
    name: impl Into<String>,
    help: &str,
    labels: &[&str],
) -> anyhow::Result<IntCounterVec> {
    let name = name.into();
    registered(
        registry,
        &name.clone(),
        IntCounterVec::new(Opts::new(name, help), labels),
    )
}

/// A gauge.
pub fn gauge(registry: &Registry, name: impl Into<String>, help: &str) -> anyhow::Result<IntGauge> {
    let name = name.into();
    registered(registry, &name.clone(), IntGauge::new(name, help))
}

/// A gauge with `labels`.
pub fn gauge_vec(
    registry: &Registry,
    name: impl Into<String>,
    help: &str,
    labels: &[&str],
) -> anyhow::Result<IntGaugeVec> {
    let name = name.into();
    registered(
        registry,
        &name.clone(),
        IntGaugeVec::new(Opts::new(name, help), labels),
    )
}

/// A histogram with `buckets` (upper bounds, ascending), or Prometheus's
/// default buckets ([`prometheus::DEFAULT_BUCKETS`]) when `None`.
pub fn histogram(
    registry: &Registry,
    name: impl Into<String>,
    help: &str,
    buckets: Option<Vec<f64>>,
) -> anyhow::Result<Histogram> {
    let name = name.into();
    let mut opts = HistogramOpts::new(name.clone(), help);
    if let Some(buckets) = buckets {
        opts = opts.buckets(buckets);
    }
    registered(registry, &name, Histogram::with_opts(opts))
}

/// A histogram with `labels` and `buckets` (as [`histogram`]).
pub fn histogram_vec(
    registry: &Registry,
    name: impl Into<String>,
    help: &str,
    labels: &[&str],
    buckets: Option<Vec<f64>>,
) -> anyhow::Result<HistogramVec> {
    let name = name.into();
    let mut opts = HistogramOpts::new(name.clone(), help);
    if let Some(buckets) = buckets {
        opts = opts.buckets(buckets);
    }
    registered(registry, &name, HistogramVec::new(opts, labels))
}

/// `count` buckets from `start`, each `factor` times the one before
/// ([`prometheus::exponential_buckets`]).
pub fn exponential_buckets(start: f64, factor: f64, count: usize) -> anyhow::Result<Vec<f64>> {
    prometheus::exponential_buckets(start, factor, count).context("exponential histogram buckets")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_helper_registers_what_it_declares() {
        let registry = Registry::new();
        counter(&registry, "c_total", "A counter").unwrap().inc();
        counter_vec(&registry, "cv_total", "Counters", &["kind"])
            .unwrap()
            .with_label_values(&["a"])
            .inc();
        gauge(&registry, "g", "A gauge").unwrap().set(3);
        gauge_vec(&registry, "gv", "Gauges", &["p"])
            .unwrap()
            .with_label_values(&["0"])
            .set(1);
        histogram(&registry, "h_seconds", "A histogram", None)
            .unwrap()
            .observe(0.1);
        histogram_vec(
            &registry,
            "hv_seconds",
            "Histograms",
            &["route"],
            Some(vec![0.5, 1.0]),
        )
        .unwrap()
        .with_label_values(&["/"])
        .observe(0.1);
        let families = registry.gather();
        let names: Vec<_> = families.iter().map(|f| f.name().to_string()).collect();
        assert_eq!(
            names,
            ["c_total", "cv_total", "g", "gv", "h_seconds", "hv_seconds"]
        );
        let h = &families[4];
        assert_eq!(h.help(), "A histogram");
        assert_eq!(
            h.get_metric()[0].get_histogram().get_bucket().len(),
            prometheus::DEFAULT_BUCKETS.len()
        );
    }

    #[test]
    fn a_second_metric_of_a_name_is_refused_by_name() {
        let registry = Registry::new();
        counter(&registry, "twice_total", "Once").unwrap();
        let err = counter(&registry, "twice_total", "Twice").unwrap_err();
        assert!(format!("{err:#}").contains("twice_total"), "{err:#}");
    }
}
