//! The Kafka producer: idempotent, acks=all, and a context that notices when
//! every broker is down so the bridge spools at once instead of waiting for
//! each message to time out.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::Context;
use rdkafka::config::ClientConfig;
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer as _, PurgeConfig};
use rdkafka::types::RDKafkaErrorCode;
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

/// An idempotent producer that replaces itself when the broker rejects it.
///
/// After a message timed out librdkafka bumps the idempotent producer's
/// epoch on its own, and a broker that never handed out that epoch refuses
/// the producer (tansu 0.6 worse: its storage task panics and the broker
/// fails every request from then on; docs/adr/0018-kafka-cluster-locally.md).
/// So a timeout or a refusal retires the producer before it sends again; a
/// new one gets a new id and starts clean. Records it sends again may
/// duplicate in Kafka, which idempotent storage absorbs.
pub struct Producer {
    current: RwLock<Arc<FutureProducer<BridgeContext>>>,
    config: ClientConfig,
    context: BridgeContext,
}

impl Producer {
    pub fn new(
        bootstrap: &str,
        message_timeout: Duration,
        linger: Duration,
    ) -> anyhow::Result<Self> {
        let context = BridgeContext::default();
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", bootstrap)
            .set("enable.idempotence", "true")
            // A batch the broker refuses for good leaves a gap, and librdkafka
            // then bumps the producer epoch on its own. tansu 0.6 has no row
            // for an epoch it did not hand out and its storage task panics:
            // the broker stays up but fails every request after that. With
            // this a refused batch stops the producer instead (fatal error),
            // and `send` replaces it. Several tansu brokers on one SQLite file
            // refuse batches whenever they collide on the file's write lock.
            .set("enable.gapless.guarantee", "true")
            .set("acks", "all")
            .set("linger.ms", linger.as_millis().to_string())
            .set("batch.num.messages", "10000")
            .set("queue.buffering.max.messages", "200000")
            .set(
                "message.timeout.ms",
                message_timeout.as_millis().to_string(),
            )
            .set("reconnect.backoff.max.ms", "1000");
        let producer = config
            .create_with_context(context.clone())
            .context("creating Kafka producer")?;
        Ok(Self {
            current: RwLock::new(Arc::new(producer)),
            config,
            context,
        })
    }

    fn producer(&self) -> Arc<FutureProducer<BridgeContext>> {
        match self.current.read() {
            Ok(current) => current.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Starts over with a new producer (new producer id). The drainer calls
    /// this after a failed attempt: a producer that lived through an outage
    /// may wait forever for an epoch bump the broker cannot give.
    pub fn reset(&self, reason: &KafkaError) {
        let current = self.producer();
        self.replace(&current, reason);
    }

    /// Replaces `failed` with a new producer, unless another task already did.
    ///
    /// Every record the failed producer held fails at once; only the first
    /// failure may build a replacement. A producer is not cheap to build,
    /// and destroying one blocks until its threads end, so that never
    /// happens on the caller's (runtime) thread.
    fn replace(&self, failed: &Arc<FutureProducer<BridgeContext>>, error: &KafkaError) {
        if !Arc::ptr_eq(&self.producer(), failed) {
            return;
        }
        let fresh: FutureProducer<BridgeContext> =
            match self.config.create_with_context(self.context.clone()) {
                Ok(producer) => producer,
                Err(err) => {
                    tracing::error!(%err, "cannot create a new Kafka producer");
                    return;
                }
            };
        let mut current = match self.current.write() {
            Ok(current) => current,
            Err(poisoned) => poisoned.into_inner(),
        };
        if !Arc::ptr_eq(&current, failed) {
            // Another failure of the same producer got here first.
            drop(current);
            std::thread::spawn(move || drop(fresh));
            return;
        }
        tracing::warn!(%error, "Kafka rejected the producer: replacing it with a new one");
        let old = std::mem::replace(&mut *current, Arc::new(fresh));
        drop(current);
        // Purged at once, not when the last send holding it returns: what
        // it still queues must not go out under a bumped epoch.
        std::thread::spawn(move || {
            old.purge(PurgeConfig::default().queue().inflight());
            drop(old)
        });
    }

    pub fn kafka_down(&self) -> &Arc<AtomicBool> {
        &self.context.kafka_down
    }

    /// Produces one record and waits for Kafka's acknowledgement.
    pub async fn send(&self, record: &Record) -> Result<(), KafkaError> {
        self.enqueue(record)?.acknowledged(self).await
    }

    /// Hands one record to the producer's queue now (so records enqueued one
    /// after another keep their order); the returned [`Enqueued`] resolves
    /// with Kafka's acknowledgement.
    pub fn enqueue(&self, record: &Record) -> Result<Enqueued, KafkaError> {
        let headers = OwnedHeaders::new().insert(Header {
            key: VERSION_HEADER,
            value: Some("1"),
        });
        let producer = self.producer();
        let delivery = producer
            .send_result(
                FutureRecord::to(&record.topic)
                    .key(record.key.as_slice())
                    .payload(record.payload.as_slice())
                    .headers(headers),
            )
            .map_err(|(err, _)| err)?;
        Ok(Enqueued { producer, delivery })
    }
}

/// A record in the producer's queue.
pub struct Enqueued {
    producer: Arc<FutureProducer<BridgeContext>>,
    delivery: DeliveryFuture,
}

impl Enqueued {
    /// Waits for Kafka's acknowledgement; a refusal retires the producer
    /// that sent it (see [`Producer`]).
    pub async fn acknowledged(self, owner: &Producer) -> Result<(), KafkaError> {
        match self.delivery.await {
            Ok(Ok(_)) => {
                owner.context.kafka_down.store(false, Ordering::SeqCst);
                Ok(())
            }
            Ok(Err((err, _))) => {
                if is_broker_rejection(&err) {
                    owner.replace(&self.producer, &err);
                }
                Err(err)
            }
            // The producer was dropped (replaced) with the record queued.
            Err(_) => Err(KafkaError::Canceled),
        }
    }
}

/// Errors that say Kafka is unreachable (retrying the same producer later
/// works) as opposed to a broker that answered and refused. Not a timed-out
/// message: after one the producer bumps its epoch (see [`Producer`]).
fn is_broker_rejection(err: &KafkaError) -> bool {
    !matches!(
        err.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::QueueFull
                | RDKafkaErrorCode::AllBrokersDown
                | RDKafkaErrorCode::BrokerTransportFailure
                | RDKafkaErrorCode::Resolve
                | RDKafkaErrorCode::PurgeQueue
                | RDKafkaErrorCode::PurgeInflight
                | RDKafkaErrorCode::RequestTimedOut
                | RDKafkaErrorCode::NetworkException
                | RDKafkaErrorCode::NotEnoughReplicas
                | RDKafkaErrorCode::NotEnoughReplicasAfterAppend
                | RDKafkaErrorCode::LeaderNotAvailable
                | RDKafkaErrorCode::NotLeaderForPartition
        )
    )
}
