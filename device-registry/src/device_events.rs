//! Consumes `device-events` (what the bridge heard from devices) and hands
//! each event to its owner: command acks and delivery receipts to the
//! command state machine (write side, [`crate::commands`]); reported state
//! and presence to the read model ([`crate::devices::state`]). The offset is
//! stored only after PostgreSQL has the result, so a crash replays events;
//! every handler is idempotent.

use std::time::Duration;

use prometheus::{IntCounterVec, Registry};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::Message;
use sqlx::PgPool;
use tokio::sync::watch;
use warmhouse_contracts::kafka::{DeviceEvent, DeviceEventKind};
use warmhouse_service_kit::metrics::counter_vec;

use crate::commands::{self, CommandMetrics};
use crate::devices::state::DeviceViews;
use crate::kafka::{KafkaSettings, Topics};

/// `warmhouse_registry_device_events_total{kind}`.
#[derive(Clone)]
pub struct DeviceEventMetrics {
    pub applied: IntCounterVec,
}

impl DeviceEventMetrics {
    pub fn register(registry: &Registry) -> anyhow::Result<Self> {
        Ok(Self {
            applied: counter_vec(
                registry,
                "warmhouse_registry_device_events_total",
                "device-events applied, by kind",
                &["kind"],
            )?,
        })
    }
}

pub async fn run(
    pool: PgPool,
    kafka: KafkaSettings,
    topics: Topics,
    metrics: DeviceEventMetrics,
    commands: CommandMetrics,
    mut stop: watch::Receiver<bool>,
) {
    let consumer = match kafka.consumer() {
        Ok(consumer) => consumer,
        Err(err) => {
            tracing::error!(error = %format!("{err:#}"), "cannot create the device-events consumer");
            return;
        }
    };
    if let Err(err) = consumer.subscribe(&[topics.device_events.as_str()]) {
        tracing::error!(%err, "cannot subscribe to device-events");
        return;
    }
    loop {
        let message = tokio::select! {
            message = consumer.recv() => message,
            _ = stop.wait_for(|s| *s) => break,
        };
        let message = match message {
            Ok(message) => message,
            Err(err) => {
                tracing::warn!(%err, "device-events consumer error");
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        let event = match DeviceEvent::decode(message.payload().unwrap_or_default()) {
            Ok(event) => Some(event),
            Err(err) => {
                metrics.applied.with_label_values(&["undecodable"]).inc();
                tracing::warn!(%err, offset = message.offset(), "skipping an undecodable device event");
                None
            }
        };
        if let Some(event) = event {
            // Retry until PostgreSQL takes it: skipping would lose an ack.
            let mut backoff = Duration::from_millis(100);
            while let Err(err) = apply(&pool, &topics, &metrics, &commands, &event).await {
                tracing::warn!(error = %err, "cannot apply a device event; retrying in {backoff:?}");
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = stop.wait_for(|s| *s) => return close(consumer),
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
        if let Err(err) = consumer.store_offset_from_message(&message) {
            tracing::warn!(%err, "cannot store a device-events offset");
        }
    }
    close(consumer);
}

/// librdkafka's close can block on a gone broker; never on a runtime worker.
fn close(consumer: StreamConsumer) {
    std::thread::spawn(move || drop(consumer));
}

async fn apply(
    pool: &PgPool,
    topics: &Topics,
    metrics: &DeviceEventMetrics,
    command_metrics: &CommandMetrics,
    event: &DeviceEvent,
) -> Result<(), String> {
    let device = event.device_id.as_str();
    let at = event.received_at_ms;
    let label = match &event.event {
        DeviceEventKind::CommandAck { ack } => {
            let changed = commands::record_ack(pool, topics, device, ack)
                .await
                .map_err(|p| p.detail)?;
            if let Some(command) = changed {
                command_metrics.command_finished(&command);
            }
            DeviceViews::touch(pool, device, at)
                .await
                .map_err(|e| e.to_string())?;
            "command_ack"
        }
        DeviceEventKind::CommandDelivered { command_id } => {
            commands::mark_delivered(pool, topics, device, command_id)
                .await
                .map_err(|p| p.detail)?;
            "command_delivered"
        }
        DeviceEventKind::State { state } => {
            DeviceViews::apply_reported(pool, device, state, at)
                .await
                .map_err(|e| e.to_string())?;
            "state"
        }
        DeviceEventKind::Status { status } => {
            let came_online =
                DeviceViews::apply_presence(pool, device, status, at, event.connection.as_ref())
                    .await
                    .map_err(|e| e.to_string())?;
            if came_online {
                let resent = commands::redeliver_open(pool, topics, device)
                    .await
                    .map_err(|p| p.detail)?;
                if resent > 0 {
                    tracing::info!(
                        device,
                        resent,
                        "device back online: open commands published again"
                    );
                }
            }
            "status"
        }
    };
    metrics.applied.with_label_values(&[label]).inc();
    Ok(())
}
