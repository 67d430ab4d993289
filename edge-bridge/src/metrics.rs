use prometheus::{Histogram, IntCounter, IntCounterVec, IntGauge, Registry};
use warmhouse_service_kit::metrics::{counter, counter_vec, gauge, histogram};

/// The bridge's Prometheus metrics (prefix `warmhouse_bridge_`).
#[derive(Clone)]
pub struct Metrics {
    pub received: IntCounterVec,
    pub readings: IntCounter,
    pub produced: IntCounterVec,
    pub dead_lettered: IntCounterVec,
    pub spooled: IntCounter,
    pub drained: IntCounter,
    pub spool_full_waits: IntCounter,
    pub spool_records: IntGauge,
    pub spool_bytes: IntGauge,
    pub in_flight: IntGauge,
    pub acked: IntCounter,
    /// From a QoS 1 publish's arrival to the moment it is safe (what a
    /// device's PUBACK waits for, besides the publishes before it).
    pub safe_wait: Histogram,
    pub commands: IntCounterVec,
}

impl Metrics {
    pub fn new(registry: &Registry) -> anyhow::Result<Self> {
        let p = "warmhouse_bridge_";
        Ok(Self {
            received: counter_vec(registry, format!("{p}received_total"), "MQTT publishes received, by channel", &["channel"])?,
            readings: counter(registry, format!("{p}readings_total"), "Telemetry readings accepted")?,
            produced: counter_vec(registry, format!("{p}produced_total"), "Records acknowledged by Kafka, by topic", &["topic"])?,
            dead_lettered: counter_vec(registry, format!("{p}dead_lettered_total"), "Publishes sent to the dead-letter topic, by reason", &["reason"])?,
            spooled: counter(registry, format!("{p}spooled_total"), "Records written to the local spool")?,
            drained: counter(registry, format!("{p}spool_drained_total"), "Spooled records delivered to Kafka")?,
            spool_full_waits: counter(registry, format!("{p}spool_full_waits_total"), "Times a record waited because the spool was full")?,
            spool_records: gauge(registry, format!("{p}spool_records"), "Records in the spool")?,
            spool_bytes: gauge(registry, format!("{p}spool_bytes"), "Bytes in the spool")?,
            in_flight: gauge(registry, format!("{p}in_flight"), "Device publishes whose PUBACK is held until they are safe (or until the ones before them are)")?,
            acked: counter(registry, format!("{p}acked_total"), "PUBACKs (and PUBRECs) released to devices")?,
            safe_wait: histogram(registry, format!("{p}safe_wait_seconds"), "From a device's QoS 1 publish to the moment it is safe (acknowledged \
                         by Kafka or fsynced to the spool) and its PUBACK may go", Some(vec![
                        0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                        10.0,
                    ]))?,
            commands: counter_vec(registry, format!("{p}commands_total"), "Commands from device-commands, by outcome (delivered, \
                         not_connected_here, expired, publish_failed, undecodable)", &["outcome"])?,
        })
    }
}
