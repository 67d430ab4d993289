//! The Kafka producer: idempotent, acks=all, and a context that notices when
//! every broker is down so the bridge spools at once instead of waiting for
//! each message to time out.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use rdkafka::config::ClientConfig;
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::util::Timeout;
use rdkafka::ClientContext;
use warmhouse_contracts::kafka::VERSION_HEADER;

use crate::spool::Record;

/// Watches librdkafka's error callback for "all brokers down".
#[derive(Clone, Default)]
pub struct BridgeContext {
    pub kafka_down: Arc<AtomicBool>,
}

impl ClientContext for BridgeContext {
    fn error(&self, error: KafkaError, reason: &str) {
        if error.rdkafka_error_code() == Some(RDKafkaErrorCode::AllBrokersDown) {
            if !self.kafka_down.swap(true, Ordering::SeqCst) {
                tracing::warn!(reason, "all Kafka brokers are down: spooling");
            }
        } else {
            tracing::warn!(%error, reason, "Kafka client error");
        }
    }
}

pub struct Producer {
    inner: FutureProducer<BridgeContext>,
    context: BridgeContext,
}

impl Producer {
    pub fn new(
        bootstrap: &str,
        message_timeout: Duration,
        linger: Duration,
    ) -> anyhow::Result<Self> {
        let context = BridgeContext::default();
        let inner: FutureProducer<BridgeContext> = ClientConfig::new()
            .set("bootstrap.servers", bootstrap)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", linger.as_millis().to_string())
            .set("batch.num.messages", "10000")
            .set("queue.buffering.max.messages", "200000")
            .set(
                "message.timeout.ms",
                message_timeout.as_millis().to_string(),
            )
            .set("reconnect.backoff.max.ms", "1000")
            .create_with_context(context.clone())
            .context("creating Kafka producer")?;
        Ok(Self { inner, context })
    }

    pub fn kafka_down(&self) -> &Arc<AtomicBool> {
        &self.context.kafka_down
    }

    /// Produces one record and waits for Kafka's acknowledgement.
    pub async fn send(&self, record: &Record) -> Result<(), KafkaError> {
        let headers = OwnedHeaders::new().insert(Header {
            key: VERSION_HEADER,
            value: Some("1"),
        });
        let result = self
            .inner
            .send(
                FutureRecord::to(&record.topic)
                    .key(record.key.as_slice())
                    .payload(record.payload.as_slice())
                    .headers(headers),
                Timeout::Never,
            )
            .await;
        match result {
            Ok(_) => {
                self.context.kafka_down.store(false, Ordering::SeqCst);
                Ok(())
            }
            Err((err, _)) => Err(err),
        }
    }
}
