//! Kafka clients of the registry: the outbox relay's producer and the
//! `device-events` consumer.

use std::time::Duration;

use anyhow::Context;
use rdkafka::consumer::StreamConsumer;
use rdkafka::producer::FutureProducer;
use warmhouse_contracts::kafka::topics;
use warmhouse_service_kit::kafka::{group_consumer_config, producer_config, Idempotence};

/// Topic names (each overridable by the operator).
#[derive(Debug, Clone)]
pub struct Topics {
    pub device_commands: String,
    pub device_events: String,
    pub registry_events: String,
}

impl Default for Topics {
    fn default() -> Self {
        Self {
            device_commands: topics::DEVICE_COMMANDS.into(),
            device_events: topics::DEVICE_EVENTS.into(),
            registry_events: topics::REGISTRY_EVENTS.into(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct KafkaSettings {
    pub bootstrap: String,
    pub group_id: String,
}

impl KafkaSettings {
    /// Not idempotent on purpose: an idempotent producer that lived through
    /// a broker restart can be refused forever (see the edge bridge's
    /// kafka.rs). One request in flight keeps each key in order through
    /// retries; duplicates after a crash are absorbed by the consumers.
    pub fn producer(&self) -> anyhow::Result<FutureProducer> {
        producer_config(&self.bootstrap, Idempotence::Off)
            .set("max.in.flight.requests.per.connection", "1")
            .set("linger.ms", "0")
            .set("message.timeout.ms", "10000")
            .create()
            .context("creating the outbox Kafka producer")
    }

    /// Offsets are stored by hand once an event is applied to PostgreSQL.
    pub fn consumer(&self) -> anyhow::Result<StreamConsumer> {
        // Command round trips wait on this consumer: keep fetches short.
        group_consumer_config(&self.bootstrap, &self.group_id, Duration::from_millis(1))
            .create()
            .context("creating the device-events Kafka consumer")
    }
}
