//! Prometheus metrics fed from rumqttd's meters and alerts links.
//!
//! rumqttd pushes meters every `meters_interval_secs`: a router meter
//! (current connections; publishes and failed publishes since the last
//! push) and one meter per filter log (messages and bytes appended since the
//! last push). The router meter is only pushed in an interval that saw a
//! publish; the self-probe publishes, so the connection gauge stays fresh.

use anyhow::Context;
use prometheus::{IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Registry};
use rumqttd::{Alert, Meter};
use warmhouse_service_kit::metrics::{counter, counter_vec, gauge, gauge_vec};

/// Label for filters without wildcards: exact topics (including the
/// per-topic logs of dynamic filters) would give one series per device.
const EXACT_FILTERS: &str = "exact";

#[derive(Clone)]
pub struct BrokerMetrics {
    pub connections: IntGauge,
    pub publishes: IntCounter,
    pub failed_publishes: IntCounter,
    pub routed_messages: IntCounterVec,
    pub routed_bytes: IntCounterVec,
    pub alerts: IntCounterVec,
    pub probe_up: IntGaugeVec,
    pub probe_failures: IntCounterVec,
    pub device_auth: IntCounterVec,
    pub revocations: IntCounterVec,
    pub revocation_consumer_up: IntGauge,
    pub client_limits_exceeded: IntCounterVec,
}

impl BrokerMetrics {
    pub fn register(registry: &Registry) -> anyhow::Result<Self> {
        let name = |name: &str| format!("warmhouse_broker_{name}");
        Ok(Self {
            connections: gauge(registry, name("connections"), "MQTT connections held by the router (both listeners, plus the self-probe while it runs)")?,
            publishes: counter(registry, name("publishes_total"), "PUBLISH packets received by the router (messages in, including the self-probe's)")?,
            failed_publishes: counter(registry, name("failed_publishes_total"), "PUBLISH packets the router could not append (the publisher is disconnected)")?,
            routed_messages: counter_vec(registry, name("routed_messages_total"), "Messages appended to subscription filter logs; a publish matching n filters counts n times", &["filter"])?,
            routed_bytes: counter_vec(registry, name("routed_bytes_total"), "Bytes (topic + payload + 4) appended to subscription filter logs", &["filter"])?,
            alerts: counter_vec(registry, name("alerts_total"), "rumqttd alerts; cursor_jump means a subscriber fell behind the filter log and skipped data", &["kind"])?,
            probe_up: gauge_vec(registry, name("probe_up"), "1 if the last self-probe (connect, subscribe, publish, receive) of the listener succeeded", &["listener"])?,
            probe_failures: counter_vec(registry, name("probe_failures_total"), "Failed self-probes", &["listener"])?,
            device_auth: counter_vec(registry, name("device_auth_total"), "Device connect decisions: allowed, refused (by the registry), revoked (by the broker's revocation list), invalid (not even asked), error (no usable registry answer: refused with \"server unavailable\"), probe (the self-probe)", &["listener", "outcome"])?,
            revocations: counter_vec(registry, name("revocations_total"), "Devices revoked (live connections dropped), by source: registry_event or admin", &["source"])?,
            revocation_consumer_up: gauge(registry, name("revocation_consumer_up"), "1 while the registry-events consumer reads from Kafka; 0 when it cannot (revocations then only take effect at reconnect)")?,
            client_limits_exceeded: counter_vec(registry, name("client_limits_exceeded_total"), "Device connections dropped for breaking a limit, by limit (subscriptions, topic_length, topic_levels, inflight)", &["limit"])?,
        })
    }

    pub fn record_meters(&self, meters: &[Meter]) {
        for meter in meters {
            match meter {
                Meter::Router(_, router) => {
                    self.connections
                        .set(i64::try_from(router.total_connections).unwrap_or(i64::MAX));
                    self.publishes.inc_by(router.total_publishes as u64);
                    self.failed_publishes.inc_by(router.failed_publishes as u64);
                }
                Meter::Subscription(filter, subscription) => {
                    let label = filter_label(filter);
                    self.routed_messages
                        .with_label_values(&[label])
                        .inc_by(subscription.count as u64);
                    self.routed_bytes
                        .with_label_values(&[label])
                        .inc_by(subscription.total_size as u64);
                }
            }
        }
    }

    pub fn record_alerts(&self, alerts: &[Alert]) {
        for alert in alerts {
            let kind = alert.kind.name();
            self.alerts.with_label_values(&[kind.as_str()]).inc();
            tracing::warn!(
                client_id = %alert.client_id,
                kind = %kind,
                detail = %alert.kind.description(),
                "rumqttd alert"
            );
        }
    }
}

/// The work a broker has done so far, across all its listeners: device
/// connects decided (whatever the outcome; the self-probe's excepted) and
/// PUBACKs released to devices. It moves while the broker serves anyone,
/// which tells a starved broker from a wedged one (see
/// [`crate::ProbeFailures`]).
#[derive(Clone)]
pub struct BrokerWork {
    device_auth: IntCounterVec,
    pubacks_released: IntCounter,
}

impl BrokerWork {
    pub fn new(metrics: &BrokerMetrics, pubacks_released: IntCounter) -> Self {
        Self {
            device_auth: metrics.device_auth.clone(),
            pubacks_released,
        }
    }

    pub fn done(&self) -> u64 {
        use prometheus::core::Collector;
        let connects_decided: u64 = self
            .device_auth
            .collect()
            .iter()
            .flat_map(|family| family.get_metric())
            .filter(|metric| {
                !metric
                    .get_label()
                    .iter()
                    .any(|pair| pair.name() == "outcome" && pair.value() == "probe")
            })
            .map(|metric| metric.get_counter().value() as u64)
            .sum();
        connects_decided + self.pubacks_released.get()
    }
}

fn filter_label(filter: &str) -> &str {
    if filter.contains(['+', '#']) {
        filter
    } else {
        EXACT_FILTERS
    }
}

/// Feeds rumqttd's meters and alerts into `metrics` until both links close
/// (the router is gone) or `shutdown` fires. Returns when the router is gone.
pub async fn pump(
    meters: rumqttd::meters::MetersLink,
    alerts: rumqttd::alerts::AlertsLink,
    metrics: BrokerMetrics,
) -> anyhow::Error {
    let mut alerts_open = true;
    loop {
        tokio::select! {
            batch = meters.next() => match batch.context("rumqttd meters link closed: the router has stopped") {
                Ok(batch) => metrics.record_meters(&batch),
                Err(err) => return err,
            },
            batch = alerts.next(), if alerts_open => match batch {
                Ok(batch) => metrics.record_alerts(&batch),
                // The meters link reports the router's end; keep reading it.
                Err(_) => alerts_open = false,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcard_filters_keep_their_label() {
        assert_eq!(filter_label("/tenants/+/telemetry"), "/tenants/+/telemetry");
        assert_eq!(filter_label("#"), "#");
        assert_eq!(filter_label("/tenants/dev-1/status"), EXACT_FILTERS);
    }

    #[test]
    fn work_on_any_listener_counts_for_the_whole_broker() {
        let metrics = BrokerMetrics::register(&Registry::new()).unwrap();
        let pubacks_released = IntCounter::new("released", "released").unwrap();
        let work = BrokerWork::new(&metrics, pubacks_released.clone());
        assert_eq!(work.done(), 0);
        metrics
            .device_auth
            .with_label_values(&["mqtt_v4", "allowed"])
            .inc_by(3);
        metrics
            .device_auth
            .with_label_values(&["mqtt_v4", "refused"])
            .inc();
        assert_eq!(work.done(), 4, "connects decided on any listener");
        metrics
            .device_auth
            .with_label_values(&["mqtt_v5", "probe"])
            .inc_by(10);
        assert_eq!(work.done(), 4, "the self-probe's own connects are no work");
        pubacks_released.inc_by(5);
        assert_eq!(work.done(), 9, "PUBACKs released");
    }

    #[test]
    fn registers_every_metric_once() {
        let registry = Registry::new();
        BrokerMetrics::register(&registry).unwrap();
        assert!(BrokerMetrics::register(&registry).is_err());
    }
}
