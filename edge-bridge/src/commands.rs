//! Commands, cloud to device. Every broker replica reads every record of
//! `device-commands` (no consumer group: see
//! [`warmhouse_service_kit::kafka::TopicTail`]) and publishes those whose
//! device holds a connection to it on `/tenants/{id}/commands` (QoS 1),
//! then reports `command_delivered` to `device-events`: only the replica
//! that holds the device's connection delivers and reports.
//!
//! No command state is kept here. A device connected to no replica gets
//! nothing now: the registry publishes every open command again when the
//! device comes online (on whichever replica), and expires the rest.
//! Expired commands are dropped here too.

use std::sync::Arc;
use std::time::Duration;

use std::future::Future;
use std::pin::Pin;

use rdkafka::message::{Message, OwnedMessage};
use warmhouse_contracts::kafka::{CommandRecord, DeadLetter, DeviceEvent, DeviceEventKind};
use warmhouse_contracts::topics::{Channel, DeviceTopic};
use warmhouse_service_kit::kafka::{record_source, TopicTail};
use warmhouse_service_kit::now_ms;

use crate::connections::Connections;
use crate::delivery::Delivery;
use crate::metrics::Metrics;
use crate::spool::Record;

/// A command publish into the MQTT broker; resolves once the broker's
/// router has it.
pub type Publishing = Pin<Box<dyn Future<Output = anyhow::Result<()>> + Send>>;

/// Publishes a command to a device through the broker this replica runs
/// (in-process: no network hop).
pub trait CommandSink: Send + Sync + 'static {
    /// Publishes `payload` on `topic` at QoS 1.
    fn publish(&self, topic: String, payload: Vec<u8>) -> Publishing;
}

/// Where commands come from and where their receipts go.
#[derive(Debug, Clone)]
pub struct CommandSettings {
    pub kafka_bootstrap: String,
    pub commands_topic: String,
    pub device_events_topic: String,
    pub dead_letters_topic: String,
    /// Kafka client id of this replica's command reader.
    pub client_id: String,
}

/// What became of one command record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Delivered,
    Expired,
    /// The device holds no connection to this replica.
    NotConnectedHere,
    PublishFailed,
}

impl Outcome {
    fn label(self) -> &'static str {
        match self {
            Outcome::Delivered => "delivered",
            Outcome::Expired => "expired",
            Outcome::NotConnectedHere => "not_connected_here",
            Outcome::PublishFailed => "publish_failed",
        }
    }
}

/// Reads `device-commands` from its end, retrying until Kafka answers.
/// Returns once every partition is assigned, so commands from then on are
/// seen (or, after `wait`, keeps trying in the background).
pub async fn assign(settings: &CommandSettings, wait: Duration) -> Option<TopicTail> {
    let assigned = tokio::time::timeout(wait, async {
        loop {
            match TopicTail::assign(
                &settings.kafka_bootstrap,
                &settings.commands_topic,
                &settings.client_id,
                // A command round trip waits on this fetch.
                Duration::from_millis(1),
            )
            .await
            {
                Ok(tail) => return tail,
                Err(err) => {
                    tracing::warn!(
                        error = format!("{err:#}"),
                        "device-commands unavailable; retrying"
                    );
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    })
    .await;
    assigned.ok()
}

/// Delivers commands until the task is aborted. `tail` is the assigned
/// reader, or `None` to assign it here.
pub async fn run(
    settings: CommandSettings,
    tail: Option<TopicTail>,
    delivery: Arc<Delivery>,
    connections: Connections,
    sink: Arc<dyn CommandSink>,
    metrics: Metrics,
) {
    let mut tail = match tail {
        Some(tail) => tail,
        None => loop {
            if let Some(tail) = assign(&settings, Duration::from_secs(60)).await {
                break tail;
            }
        },
    };
    tracing::info!(topic = settings.commands_topic, "reading device commands");
    loop {
        let message = match tail.recv().await {
            Ok(message) => message,
            Err(err) => {
                tracing::warn!(%err, "device-commands consumer error");
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        match CommandRecord::decode(message.payload().unwrap_or_default()) {
            Err(err) => {
                metrics.commands.with_label_values(&["undecodable"]).inc();
                tracing::warn!(%err, source = record_source(&message), "dead-lettering an undecodable command record");
                delivery
                    .deliver(dead_letter(&settings.dead_letters_topic, &message, &err))
                    .await;
            }
            Ok(record) => {
                let outcome = deliver(&record, &connections, sink.as_ref()).await;
                if outcome == Outcome::Delivered {
                    let device = record.device_id.as_str();
                    let receipt = receipt(
                        &settings.device_events_topic,
                        device,
                        record.command.command_id.clone(),
                    );
                    if let Some(receipt) = receipt {
                        // Safe in the background: Kafka or the spool.
                        drop(delivery.submit(receipt));
                    }
                }
                metrics.commands.with_label_values(&[outcome.label()]).inc();
                tracing::debug!(device = record.device_id.as_str(), command_id = %record.command.command_id, outcome = outcome.label(), "command");
            }
        }
    }
}

async fn deliver(
    record: &CommandRecord,
    connections: &Connections,
    sink: &dyn CommandSink,
) -> Outcome {
    if record.command.expires_at_ms < now_ms() {
        return Outcome::Expired;
    }
    if !connections.is_connected(record.device_id.as_str()) {
        return Outcome::NotConnectedHere;
    }
    let topic = DeviceTopic::new(record.device_id.clone(), Channel::Commands).to_string();
    let payload = match serde_json::to_vec(&record.command) {
        Ok(payload) => payload,
        Err(err) => {
            tracing::error!(%err, "cannot encode a command");
            return Outcome::PublishFailed;
        }
    };
    match sink.publish(topic, payload).await {
        Ok(()) => Outcome::Delivered,
        Err(err) => {
            tracing::warn!(error = format!("{err:#}"), "cannot publish a command");
            Outcome::PublishFailed
        }
    }
}

fn dead_letter(
    topic: &str,
    message: &OwnedMessage,
    err: &warmhouse_contracts::DecodeError,
) -> Record {
    let letter = DeadLetter::new(
        err.kind(),
        err.to_string(),
        record_source(message),
        now_ms(),
        message.payload().unwrap_or_default(),
    );
    Record {
        topic: topic.to_string(),
        key: message.key().unwrap_or_default().to_vec(),
        payload: letter.to_json(),
    }
}

/// The `command_delivered` event of a command, for `device-events`.
fn receipt(topic: &str, device: &str, command_id: String) -> Option<Record> {
    let device_id = warmhouse_contracts::ids::DeviceId::new(device).ok()?;
    let event = DeviceEvent::new(
        device_id,
        now_ms(),
        DeviceEventKind::CommandDelivered { command_id },
    );
    Some(Record {
        topic: topic.to_string(),
        key: device.as_bytes().to_vec(),
        payload: event.to_json(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use warmhouse_contracts::device::Command;
    use warmhouse_contracts::ids::DeviceId;

    #[derive(Default)]
    struct Recorded(Mutex<Vec<(String, Vec<u8>)>>);

    impl CommandSink for Recorded {
        fn publish(&self, topic: String, payload: Vec<u8>) -> Publishing {
            if let Ok(mut published) = self.0.lock() {
                published.push((topic, payload));
            }
            Box::pin(async { Ok(()) })
        }
    }

    fn record(device: &str, expires_at_ms: i64) -> CommandRecord {
        CommandRecord::new(
            DeviceId::new(device).unwrap(),
            Command {
                v: 1,
                command_id: "c-1".into(),
                name: "turn_on".into(),
                params: Default::default(),
                issued_at_ms: 1,
                expires_at_ms,
            },
        )
    }

    #[tokio::test]
    async fn only_the_replica_holding_the_device_publishes() {
        let sink = Recorded::default();
        let connections = Connections::default();
        let later = now_ms() + 60_000;
        assert_eq!(
            deliver(&record("d1", later), &connections, &sink).await,
            Outcome::NotConnectedHere
        );
        connections.speaks_for(7, "d1");
        assert_eq!(
            deliver(&record("d1", later), &connections, &sink).await,
            Outcome::Delivered
        );
        assert_eq!(
            deliver(&record("d1", 1), &connections, &sink).await,
            Outcome::Expired
        );
        let published = sink.0.lock().unwrap();
        assert_eq!(published.len(), 1);
        assert_eq!(published[0].0, "/tenants/d1/commands");
        let command: Command = serde_json::from_slice(&published[0].1).unwrap();
        assert_eq!(command.command_id, "c-1");
    }

    #[test]
    fn receipts_name_the_command() {
        let record = receipt("device-events", "dev-1", "c-1".into()).unwrap();
        let event = DeviceEvent::decode(&record.payload).unwrap();
        assert_eq!(
            event.event,
            DeviceEventKind::CommandDelivered {
                command_id: "c-1".into()
            }
        );
        assert_eq!(record.key, b"dev-1");
        assert!(receipt("device-events", "bad id", "c".into()).is_none());
    }
}
