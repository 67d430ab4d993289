//! The registry's conversation with Kafka, in the background: the outbox
//! relay (out), the `device-events` consumer (in) and the command expiry
//! sweep. Without Kafka settings only the sweep runs (tests of the REST API
//! alone); records then wait in the outbox.

use std::time::Duration;

use prometheus::{IntCounter, IntCounterVec, IntGauge, Opts, Registry};
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
        })
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
                tracing::info!(expired = n, "commands expired");
            }
            Err(problem) => tracing::warn!(detail = %problem.detail, "expiry sweep failed"),
        }
        if let Ok(backlog) = outbox::backlog(&pool).await {
            metrics.outbox_backlog.set(backlog);
        }
    }
}
