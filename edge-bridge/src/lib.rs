//! Device ingress: what the MQTT broker does with a device's publishes, run
//! inside every broker replica (docs/adr/0019-puback-when-safe.md).
//!
//! The broker shows each publish of a device to [`Ingress::accept`] before
//! it acknowledges it. The publish is routed ([`route`]: telemetry, device
//! events, or a dead letter saying why it could not be decoded) and made
//! safe ([`delivery`]): acknowledged by Kafka (idempotent producer,
//! acks=all) or appended and fsynced to the replica's local [`spool`] while
//! Kafka cannot take it. The broker sends the device its PUBACK only when
//! the handle [`Ingress::accept`] returns resolves, in the order the
//! publishes arrived. A full spool holds the PUBACKs: backpressure reaches
//! the device, and nothing acknowledged can be lost.
//!
//! The other direction, commands to devices, is [`commands`]: each replica
//! publishes the commands of the devices connected to it ([`connections`]).

pub mod commands;
pub mod connections;
pub mod delivery;
pub mod kafka;
pub mod metrics;
pub mod route;
pub mod spool;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use warmhouse_contracts::topics::DeviceTopic;
use warmhouse_service_kit::args::{
    DeadLettersTopic, DeviceCommandsTopic, DeviceEventsTopic, TelemetryTopic,
};
use warmhouse_service_kit::now_ms;

use crate::commands::{CommandSettings, CommandSink};
use crate::connections::{Connections, DeviceConnection};
use crate::delivery::Delivery;
use crate::metrics::Metrics;
use crate::route::{route, Routed, Topics};
use crate::spool::Spool;

/// Kafka, topics and spool of the ingress; every option is also an
/// environment variable. Flattened into the broker's configuration.
#[derive(clap::Args, Debug, Clone, PartialEq, Eq)]
pub struct IngressConfig {
    /// Kafka bootstrap servers, comma separated: devices' publishes go
    /// there, commands and the registry's events come from there.
    #[arg(
        long,
        env = "WARMHOUSE_BROKER_KAFKA_BOOTSTRAP",
        default_value = "127.0.0.1:9092"
    )]
    pub kafka_bootstrap: String,
    #[command(flatten)]
    pub telemetry_topic: TelemetryTopic,
    #[command(flatten)]
    pub device_events_topic: DeviceEventsTopic,
    #[command(flatten)]
    pub dead_letters_topic: DeadLettersTopic,
    #[command(flatten)]
    pub device_commands_topic: DeviceCommandsTopic,
    /// How long Kafka may take to acknowledge a record before it is
    /// spooled instead, in ms. A device waits this long for its PUBACK at
    /// worst when Kafka stops answering.
    #[arg(
        long,
        env = "WARMHOUSE_BROKER_KAFKA_TIMEOUT_MS",
        default_value_t = 10_000
    )]
    pub kafka_timeout_ms: u64,
    /// How long the producer of telemetry waits to fill a batch, in ms: adds
    /// to a telemetry PUBACK at light load, and saves Kafka (and this
    /// process) a request per batch: at 20,000 messages a second 20 ms cut
    /// Kafka's CPU by a third (docs/benchmarks.md).
    #[arg(long, env = "WARMHOUSE_BROKER_KAFKA_LINGER_MS", default_value_t = 20)]
    pub kafka_linger_ms: u64,
    /// The same for device events (state, presence, command acks) and dead
    /// letters, on a producer of their own: a command's round trip waits on
    /// them.
    #[arg(
        long,
        env = "WARMHOUSE_BROKER_KAFKA_EVENTS_LINGER_MS",
        default_value_t = 1
    )]
    pub kafka_events_linger_ms: u64,
    /// Directory of this replica's spool. Give every replica its own, on a
    /// disk that outlives the process (a persistent volume).
    #[arg(
        long,
        env = "WARMHOUSE_BROKER_SPOOL_DIR",
        default_value = "data/broker-spool"
    )]
    pub spool_dir: PathBuf,
    /// Spool size limit in bytes; when full, devices get no PUBACK until
    /// Kafka takes records again (backpressure).
    #[arg(long, env = "WARMHOUSE_BROKER_SPOOL_MAX_BYTES", default_value_t = 1 << 30)]
    pub spool_max_bytes: u64,
}

impl IngressConfig {
    /// The Kafka topics the ingress writes to and reads from (they must
    /// exist).
    pub fn kafka_topics(&self) -> [&str; 4] {
        [
            &self.telemetry_topic.name,
            &self.device_events_topic.name,
            &self.dead_letters_topic.name,
            &self.device_commands_topic.name,
        ]
    }

    /// The defaults, with Kafka at `kafka_bootstrap` and the spool in
    /// `spool_dir`, without reading arguments or environment.
    pub fn new(kafka_bootstrap: &str, spool_dir: PathBuf) -> Self {
        Self {
            kafka_bootstrap: kafka_bootstrap.to_string(),
            telemetry_topic: TelemetryTopic::default(),
            device_events_topic: DeviceEventsTopic::default(),
            dead_letters_topic: DeadLettersTopic::default(),
            device_commands_topic: DeviceCommandsTopic::default(),
            kafka_timeout_ms: 10_000,
            kafka_linger_ms: 20,
            kafka_events_linger_ms: 1,
            spool_dir,
            spool_max_bytes: 1 << 30,
        }
    }
}

/// The ingress of one broker replica. Shared by every connection.
pub struct Ingress {
    delivery: Arc<Delivery>,
    topics: Topics,
    metrics: Metrics,
    connections: Connections,
    /// This replica's name in the connection references of device events.
    broker_id: String,
    commands: CommandSettings,
}

pub use crate::delivery::Safe;

impl Ingress {
    /// Opens the spool and the Kafka producer and starts replaying what the
    /// spool holds. Must run inside the Tokio runtime that is to run the
    /// deliveries. The returned task drains the spool until aborted.
    pub fn start(
        config: &IngressConfig,
        broker_id: &str,
        registry: &prometheus::Registry,
    ) -> anyhow::Result<(Arc<Self>, tokio::task::JoinHandle<()>)> {
        let metrics = Metrics::new(registry)?;
        let spool = Spool::open(&config.spool_dir, config.spool_max_bytes, 64 << 20)
            .with_context(|| format!("opening the spool in {}", config.spool_dir.display()))?;
        let kafka_down = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let timeout = Duration::from_millis(config.kafka_timeout_ms);
        let producers = delivery::Producers {
            telemetry_topic: config.telemetry_topic.name.clone(),
            telemetry: kafka::Producer::new(
                &config.kafka_bootstrap,
                timeout,
                Duration::from_millis(config.kafka_linger_ms),
                kafka_down.clone(),
            )?,
            events: kafka::Producer::new(
                &config.kafka_bootstrap,
                timeout,
                Duration::from_millis(config.kafka_events_linger_ms),
                kafka_down,
            )?,
        };
        let delivery = Delivery::new(producers, spool, metrics.clone());
        let drainer = tokio::spawn(delivery.clone().drain_forever(1000));
        let ingress = Arc::new(Self {
            delivery,
            topics: Topics {
                telemetry: config.telemetry_topic.name.clone(),
                device_events: config.device_events_topic.name.clone(),
                dead_letters: config.dead_letters_topic.name.clone(),
            },
            metrics,
            connections: Connections::default(),
            broker_id: broker_id.to_string(),
            commands: CommandSettings {
                kafka_bootstrap: config.kafka_bootstrap.clone(),
                commands_topic: config.device_commands_topic.name.clone(),
                device_events_topic: config.device_events_topic.name.clone(),
                dead_letters_topic: config.dead_letters_topic.name.clone(),
                client_id: format!("warmhouse-broker-{broker_id}-commands"),
            },
        });
        Ok((ingress, drainer))
    }

    /// Starts delivering commands to the devices connected here through
    /// `sink`. Waits up to `wait` for Kafka so that commands from then on
    /// are seen; the returned task runs until aborted.
    pub async fn start_commands(
        self: &Arc<Self>,
        sink: Arc<dyn CommandSink>,
        wait: Duration,
    ) -> tokio::task::JoinHandle<()> {
        let tail = commands::assign(&self.commands, wait).await;
        if tail.is_none() {
            tracing::warn!(
                ?wait,
                "device-commands unavailable at start; retrying in the background"
            );
        }
        tokio::spawn(commands::run(
            self.commands.clone(),
            tail,
            self.delivery.clone(),
            self.connections.clone(),
            sink,
            self.metrics.clone(),
        ))
    }

    /// A device connection was accepted. `will_topic` is its last will's,
    /// which names the device on a listener without authentication.
    pub fn connected(&self, connection: &DeviceConnection, will_topic: Option<&str>) {
        let device = connection
            .tenant
            .clone()
            .or_else(|| will_topic.and_then(device_of));
        if let Some(device) = device {
            self.connections.speaks_for(connection.number, &device);
        }
    }

    pub fn disconnected(&self, connection: &DeviceConnection) {
        self.connections.ended(connection.number);
    }

    /// Routes one publish of `connection` and starts making it safe; the
    /// handle resolves when it is (then the device may get its PUBACK).
    /// Bad input becomes a dead letter, safe like any record, so it never
    /// blocks the device.
    pub fn accept(&self, connection: &DeviceConnection, topic: &str, payload: &[u8]) -> Safe {
        if connection.tenant.is_none() && !self.connections.knows(connection.number) {
            if let Some(device) = device_of(topic) {
                self.connections.speaks_for(connection.number, &device);
            }
        }
        self.forward(connection, topic, payload)
    }

    /// The broker is publishing `connection`'s last will (the connection
    /// has ended): forwarded like its publishes (a will is a status
    /// message), stamped with the connection it belonged to.
    pub fn will(&self, connection: &DeviceConnection, topic: &str, payload: &[u8]) {
        drop(self.forward(connection, topic, payload));
    }

    /// The ingress's metrics (the broker counts PUBACKs it releases).
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    fn forward(&self, connection: &DeviceConnection, topic: &str, payload: &[u8]) -> Safe {
        let reference = connection.reference(&self.broker_id);
        let routed = route(&self.topics, topic, payload, now_ms(), Some(&reference));
        self.count(&routed, topic);
        self.delivery.submit(routed.into_record())
    }

    /// Whether the producer is connected to Kafka.
    pub fn kafka_available(&self) -> bool {
        self.delivery.kafka_available()
    }

    fn count(&self, routed: &Routed, topic: &str) {
        let metrics = &self.metrics;
        match routed {
            Routed::Telemetry { readings, .. } => {
                metrics.received.with_label_values(&["telemetry"]).inc();
                metrics.readings.inc_by(*readings as u64);
            }
            Routed::DeviceEvent(_) => metrics.received.with_label_values(&["device_event"]).inc(),
            Routed::DeadLetter { reason_kind, .. } => {
                metrics.received.with_label_values(&["invalid"]).inc();
                metrics
                    .dead_lettered
                    .with_label_values(&[reason_kind])
                    .inc();
                tracing::debug!(topic, reason = %reason_kind, "dead-lettering a publish");
            }
        }
    }
}

/// The device a topic of the device topic tree belongs to.
fn device_of(topic: &str) -> Option<String> {
    DeviceTopic::parse(topic)
        .ok()
        .map(|topic| topic.device_id.as_str().to_string())
}
