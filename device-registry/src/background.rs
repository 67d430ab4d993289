//! The registry's conversation with Kafka, in the background: the outbox
//! relay (out), the `device-events` consumer (in) and the command expiry
//! sweep. Without Kafka settings only the sweep runs (tests of the REST API
//! alone); records then wait in the outbox.

use std::time::Duration;

use sqlx::PgPool;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::commands::{self, CommandMetrics, MarkSent};
use crate::device_events::{self, DeviceEventMetrics};
use crate::kafka::{KafkaSettings, Topics};
use crate::outbox::{self, OutboxMetrics};

/// How often open commands are checked for expiry.
pub const EXPIRY_SWEEP: Duration = Duration::from_millis(500);

/// Everything the background work counts.
#[derive(Clone)]
pub struct BackgroundMetrics {
    pub outbox: OutboxMetrics,
    pub commands: CommandMetrics,
    pub device_events: DeviceEventMetrics,
}

impl BackgroundMetrics {
    pub fn register(registry: &prometheus::Registry) -> anyhow::Result<Self> {
        Ok(Self {
            outbox: OutboxMetrics::register(registry)?,
            device_events: DeviceEventMetrics::register(registry)?,
            commands: CommandMetrics::register(registry)?,
        })
    }
}

/// Starts the background work; every task ends when `stop` turns true.
pub fn spawn(
    pool: PgPool,
    kafka: Option<KafkaSettings>,
    topics: Topics,
    metrics: BackgroundMetrics,
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
                MarkSent::new(topics.clone()),
                metrics.outbox.clone(),
                stop.clone(),
            )));
            tasks.push(tokio::spawn(device_events::run(
                pool,
                kafka,
                topics,
                metrics.device_events,
                metrics.commands,
                stop,
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
    metrics: BackgroundMetrics,
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
                metrics.commands.expired(n);
                tracing::info!(expired = n, "commands expired");
            }
            Err(problem) => tracing::warn!(detail = %problem.detail, "expiry sweep failed"),
        }
        if let Ok(backlog) = outbox::backlog(&pool).await {
            metrics.outbox.backlog.set(backlog);
        }
    }
}
