//! Commands, cloud to device: records from `device-commands` are published
//! to `/tenants/{id}/commands` (QoS 1) on a connection of their own, and a
//! delivery receipt goes to `device-events` once the broker has accepted the
//! command for a device that was online.
//!
//! The bridge keeps no command state. A device it knows to be offline (from
//! its retained status or last will) gets nothing now: the registry
//! publishes every open command again when the device comes back, and
//! expires the rest. Expired commands are dropped here too.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::Message;
use rumqttc::{AsyncClient, Event, MqttOptions, Outgoing, Packet, QoS};
use warmhouse_contracts::device::StatusMessage;
use warmhouse_contracts::kafka::{CommandRecord, DeadLetter, DeviceEvent, DeviceEventKind};
use warmhouse_contracts::topics::{Channel, DeviceTopic};
use warmhouse_service_kit::kafka::{group_consumer_config, ClosedOffRuntime};
use warmhouse_service_kit::now_ms;

use crate::delivery::Delivery;
use crate::metrics::Metrics;
use crate::spool::Record;

/// What the command path needs to know.
#[derive(Debug, Clone)]
pub struct CommandSettings {
    pub mqtt_host: String,
    pub mqtt_port: u16,
    pub mqtt_client_id: String,
    pub mqtt_credentials: Option<(String, String)>,
    pub kafka_bootstrap: String,
    pub group_id: String,
    pub commands_topic: String,
    pub device_events_topic: String,
    pub dead_letters_topic: String,
}

/// Presence as the devices' retained status messages say.
#[derive(Default, Clone)]
struct Presence(Arc<Mutex<HashMap<String, bool>>>);

impl Presence {
    fn set(&self, device: &str, online: bool) {
        if let Ok(mut map) = self.0.lock() {
            map.insert(device.to_string(), online);
        }
    }
    /// Unknown devices count as reachable: a try costs little, and the
    /// registry redelivers if it was wrong.
    fn known_offline(&self, device: &str) -> bool {
        self.0
            .lock()
            .map(|map| map.get(device) == Some(&false))
            .unwrap_or(false)
    }
}

/// Commands published but not yet acknowledged by the broker. Publishes
/// leave in the order they were queued, so the n-th outgoing publish is the
/// n-th queued command; its packet id then maps to the command.
#[derive(Default, Clone)]
struct InFlight(Arc<Mutex<InFlightState>>);

#[derive(Default)]
struct InFlightState {
    queued: VecDeque<(String, String)>,
    by_pkid: HashMap<u16, (String, String)>,
}

/// Starts the command path; runs until the returned tasks are aborted.
pub fn spawn(
    settings: CommandSettings,
    delivery: Arc<Delivery>,
    metrics: Metrics,
) -> anyhow::Result<Vec<tokio::task::JoinHandle<()>>> {
    let consumer: StreamConsumer = group_consumer_config(
        &settings.kafka_bootstrap,
        &settings.group_id,
        Duration::from_millis(1),
    )
    .create()
    .context("creating the device-commands consumer")?;
    consumer
        .subscribe(&[settings.commands_topic.as_str()])
        .context("subscribing to device-commands")?;

    let mut options = MqttOptions::new(
        &settings.mqtt_client_id,
        &settings.mqtt_host,
        settings.mqtt_port,
    );
    options
        .set_clean_session(true)
        .set_keep_alive(Duration::from_secs(15))
        .set_max_packet_size(1 << 20, 1 << 20);
    if let Some((user, password)) = &settings.mqtt_credentials {
        options.set_credentials(user, password);
    }
    let (client, mut eventloop) = AsyncClient::new(options, 1024);
    // Small packets answered one by one: never wait on Nagle (see the broker).
    eventloop.network_options.set_tcp_nodelay(true);
    let presence = Presence::default();
    let in_flight = InFlight::default();

    let delivery_for_letters = delivery.clone();
    let events = tokio::spawn(mqtt_loop(
        eventloop,
        client.clone(),
        presence.clone(),
        in_flight.clone(),
        delivery,
        settings.device_events_topic.clone(),
        metrics.clone(),
    ));
    let commands = tokio::spawn(publish_commands(
        ClosedOffRuntime::new(consumer),
        client,
        presence,
        in_flight,
        delivery_for_letters,
        settings.dead_letters_topic.clone(),
        metrics,
    ));
    Ok(vec![events, commands])
}

async fn publish_commands(
    consumer: ClosedOffRuntime,
    client: AsyncClient,
    presence: Presence,
    in_flight: InFlight,
    delivery: Arc<Delivery>,
    dead_letters_topic: String,
    metrics: Metrics,
) {
    loop {
        let message = match consumer.recv().await {
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
                tracing::warn!(%err, offset = message.offset(), "dead-lettering an undecodable command record");
                let letter = DeadLetter::new(
                    err.kind(),
                    err.to_string(),
                    format!(
                        "kafka:{}/{}@{}",
                        message.topic(),
                        message.partition(),
                        message.offset()
                    ),
                    now_ms(),
                    message.payload().unwrap_or_default(),
                );
                // Safe before the offset moves on: spooled if Kafka is away.
                delivery
                    .deliver(Record {
                        topic: dead_letters_topic.clone(),
                        key: message.key().unwrap_or_default().to_vec(),
                        payload: letter.to_json(),
                    })
                    .await;
            }
            Ok(record) => {
                let device = record.device_id.as_str().to_string();
                let outcome = if record.command.expires_at_ms < now_ms() {
                    "expired"
                } else if presence.known_offline(&device) {
                    "device_offline"
                } else {
                    let topic =
                        DeviceTopic::new(record.device_id.clone(), Channel::Commands).to_string();
                    let payload = serde_json::to_vec(&record.command).unwrap_or_default();
                    if let Ok(mut state) = in_flight.0.lock() {
                        state
                            .queued
                            .push_back((device.clone(), record.command.command_id.clone()));
                    }
                    // Waits while the request queue is full: backpressure on Kafka.
                    match client
                        .publish(topic, QoS::AtLeastOnce, false, payload)
                        .await
                    {
                        Ok(()) => "published",
                        Err(err) => {
                            tracing::warn!(%err, "cannot queue a command publish");
                            if let Ok(mut state) = in_flight.0.lock() {
                                state.queued.pop_back();
                            }
                            "publish_failed"
                        }
                    }
                };
                metrics.commands.with_label_values(&[outcome]).inc();
                tracing::debug!(device, command_id = %record.command.command_id, outcome, "command");
            }
        }
        if let Err(err) = consumer.store_offset_from_message(&message) {
            tracing::warn!(%err, "cannot store a device-commands offset");
        }
    }
}

async fn mqtt_loop(
    mut eventloop: rumqttc::EventLoop,
    client: AsyncClient,
    presence: Presence,
    in_flight: InFlight,
    delivery: Arc<Delivery>,
    device_events_topic: String,
    metrics: Metrics,
) {
    let mut backoff = Duration::from_millis(100);
    loop {
        match eventloop.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                // Retained statuses arrive right after: presence of every device.
                if let Err(err) =
                    client.try_subscribe(Channel::Status.filter_all_devices(), QoS::AtMostOnce)
                {
                    tracing::error!(%err, "cannot queue the status subscription");
                }
                backoff = Duration::from_millis(100);
            }
            Ok(Event::Incoming(Packet::Publish(publish))) => {
                if let (Ok(topic), Ok(status)) = (
                    DeviceTopic::parse(&publish.topic),
                    StatusMessage::decode(&publish.payload),
                ) {
                    presence.set(topic.device_id.as_str(), status.online);
                }
            }
            Ok(Event::Outgoing(Outgoing::Publish(pkid))) => {
                if let Ok(mut state) = in_flight.0.lock() {
                    // A known packet id is a retransmission, not a new command.
                    if !state.by_pkid.contains_key(&pkid) {
                        if let Some(command) = state.queued.pop_front() {
                            state.by_pkid.insert(pkid, command);
                        }
                    }
                }
            }
            Ok(Event::Incoming(Packet::PubAck(ack))) => {
                let command = in_flight
                    .0
                    .lock()
                    .ok()
                    .and_then(|mut state| state.by_pkid.remove(&ack.pkid));
                if let Some((device, command_id)) = command {
                    metrics.commands.with_label_values(&["delivered"]).inc();
                    let delivery = delivery.clone();
                    let record = receipt(&device_events_topic, &device, command_id);
                    if let Some(record) = record {
                        tokio::spawn(async move { delivery.deliver(record).await });
                    }
                }
            }
            Ok(_) => {}
            Err(err) => {
                tracing::warn!(%err, "command MQTT connection lost; reconnecting in {backoff:?}");
                if let Ok(mut state) = in_flight.0.lock() {
                    // Unacknowledged commands stay "sent"; the registry
                    // redelivers them when their device comes back.
                    state.queued.clear();
                    state.by_pkid.clear();
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
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

    #[test]
    fn unknown_devices_are_reachable_and_offline_ones_are_not() {
        let presence = Presence::default();
        assert!(!presence.known_offline("a"));
        presence.set("a", false);
        assert!(presence.known_offline("a"));
        presence.set("a", true);
        assert!(!presence.known_offline("a"));
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
