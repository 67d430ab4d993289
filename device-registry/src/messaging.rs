//! The registry's conversation with Kafka, in the background: the outbox
//! relay (out), the `device-events` consumer (in) and the command expiry
//! sweep. Without Kafka settings only the sweep runs (tests of the REST API
//! alone); records then wait in the outbox.

use std::time::Duration;

use prometheus::{
    HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
};
use sqlx::PgPool;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use warmhouse_service_kit::register;

use crate::kafka::{KafkaSettings, Topics};
use crate::{commands, device_events, outbox};

/// How often open commands are checked for expiry.
pub const EXPIRY_SWEEP: Duration = Duration::from_millis(500);

#[derive(Clone)]
pub struct MessagingMetrics {
    pub outbox_published: IntCounter,
    pub outbox_failures: IntCounter,
    pub outbox_backlog: IntGauge,
    pub device_events: IntCounterVec,
    pub commands_expired: IntCounter,
    pub commands_finished: IntCounterVec,
    pub command_ack_seconds: HistogramVec,
}

impl MessagingMetrics {
    pub fn register(registry: &Registry) -> anyhow::Result<Self> {
        Ok(Self {
            outbox_published: register(
                registry,
                IntCounter::new(
                    "warmhouse_registry_outbox_published_total",
                    "Outbox records published to Kafka",
                )?,
            )?,
            outbox_failures: register(
                registry,
                IntCounter::new(
                    "warmhouse_registry_outbox_failures_total",
                    "Outbox relay failures (each is retried)",
                )?,
            )?,
            outbox_backlog: register(
                registry,
                IntGauge::new(
                    "warmhouse_registry_outbox_backlog",
                    "Outbox records not yet published",
                )?,
            )?,
            device_events: register(
                registry,
                IntCounterVec::new(
                    Opts::new(
                        "warmhouse_registry_device_events_total",
                        "device-events applied, by kind",
                    ),
                    &["kind"],
                )?,
            )?,
            commands_expired: register(
                registry,
                IntCounter::new(
                    "warmhouse_registry_commands_expired_total",
                    "Commands whose time to live ran out",
                )?,
            )?,
            commands_finished: register(
                registry,
                IntCounterVec::new(
                    Opts::new(
                        "warmhouse_registry_commands_finished_total",
                        "Commands that reached a final status (acked, failed, expired), by status",
                    ),
                    &["status"],
                )?,
            )?,
            command_ack_seconds: register(
                registry,
                HistogramVec::new(
                    HistogramOpts::new(
                        "warmhouse_registry_command_ack_seconds",
                        "Command round trip: from its creation (REST) to the device's answer being recorded, by final status",
                    )
                    // 5 ms to 41 s: the target is a p99 under 50 ms, and a
                    // command may wait for a device to come back online.
                    .buckets(prometheus::exponential_buckets(0.005, 2.0, 14)?),
                    &["status"],
                )?,
            )?,
        })
    }

    /// A device answered `command` and that finished it.
    pub fn command_finished(&self, command: &commands::CommandView) {
        let status = command.status.as_str();
        self.commands_finished.with_label_values(&[status]).inc();
        if let Some(completed_at) = command.completed_at {
            // Both timestamps come from PostgreSQL's clock.
            let seconds = (completed_at - command.created_at)
                .as_seconds_f64()
                .max(0.0);
            self.command_ack_seconds
                .with_label_values(&[status])
                .observe(seconds);
        }
    }
}

/// Starts the background work; every task ends when `stop` turns true.
pub fn spawn(
    pool: PgPool,
    kafka: Option<KafkaSettings>,
    topics: Topics,
    metrics: MessagingMetrics,
    stop: watch::Receiver<bool>,
) -> Vec<JoinHandle<()>> {
    let mut tasks = vec![tokio::spawn(sweep(
        pool.clone(),
        topics.clone(),
        metrics.clone(),
        stop.clone(),
    ))];
    match kafka {
        Some(kafka) => {
            tasks.push(tokio::spawn(outbox::run_relay(
                pool.clone(),
                kafka.clone(),
                topics.clone(),
                metrics.clone(),
                stop.clone(),
            )));
            tasks.push(tokio::spawn(device_events::run(
                pool, kafka, topics, metrics, stop,
            )));
        }
        None => tracing::warn!(
            "no Kafka configured: commands and events stay in the outbox, device events are not read"
        ),
    }
    tasks
}

/// Expires overdue commands and keeps the backlog gauge current.
async fn sweep(
    pool: PgPool,
    topics: Topics,
    metrics: MessagingMetrics,
    mut stop: watch::Receiver<bool>,
) {
    let mut ticker = tokio::time::interval(EXPIRY_SWEEP);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        match commands::expire_due(&pool, &topics).await {
            Ok(0) => {}
            Ok(n) => {
                metrics.commands_expired.inc_by(n as u64);
                metrics
                    .commands_finished
                    .with_label_values(&["expired"])
                    .inc_by(n as u64);
                tracing::info!(expired = n, "commands expired");
            }
            Err(problem) => tracing::warn!(detail = %problem.detail, "expiry sweep failed"),
        }
        if let Ok(backlog) = outbox::backlog(&pool).await {
            metrics.outbox_backlog.set(backlog);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_finished_command_counts_and_times_its_round_trip() {
        let registry = Registry::new();
        let metrics = MessagingMetrics::register(&registry).unwrap();
        let created_at = chrono::Utc::now();
        let command = commands::CommandView {
            command_id: "c-1".into(),
            device_id: "d-1".into(),
            home_id: "h-1".into(),
            name: "turn_on".into(),
            params: sqlx::types::Json(serde_json::Map::new()),
            status: "acked".into(),
            detail: None,
            idempotency_key: None,
            created_at,
            expires_at: created_at + chrono::TimeDelta::seconds(60),
            sent_at: None,
            delivered_at: None,
            completed_at: Some(created_at + chrono::TimeDelta::milliseconds(30)),
            updated_at: created_at,
        };
        metrics.command_finished(&command);
        let acked = metrics.command_ack_seconds.with_label_values(&["acked"]);
        assert_eq!(acked.get_sample_count(), 1);
        assert!((acked.get_sample_sum() - 0.03).abs() < 1e-9);
        assert_eq!(
            metrics
                .commands_finished
                .with_label_values(&["acked"])
                .get(),
            1
        );
    }
}
