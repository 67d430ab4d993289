//! The Kafka producer: idempotent, acks=all, and a context that notices when
//! every broker is down so the bridge spools at once instead of waiting for
//! each message to time out.
//!
//! Each record carries its own completion ([`OnAck`]), which librdkafka's
//! delivery report calls on the producer's polling thread: no task per
//! record, and the record's bytes are copied back only when Kafka refused it
//! (to spool them).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, RwLock, Weak};
use std::time::Duration;

use anyhow::Context;
use rdkafka::config::ClientConfig;
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, Message, OwnedHeaders};
use rdkafka::producer::{
    BaseRecord, DeliveryResult, Producer as _, ProducerContext, PurgeConfig, ThreadedProducer,
};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::ClientContext;
use tokio::sync::oneshot;
use warmhouse_contracts::kafka::VERSION_HEADER;
use warmhouse_service_kit::kafka::{producer_config, Idempotence};

use crate::spool::Record;

/// What Kafka said about one record: acknowledged, or refused (with the
/// record, copied back, so the caller can spool it). Runs on librdkafka's
/// polling thread: it must not block.
pub type OnAck = Box<dyn FnOnce(Result<(), (KafkaError, Record)>) + Send + Sync>;

/// One producer's context: watches for "all brokers down", completes each
/// record, and retires its producer when the broker refuses it.
pub struct BridgeContext {
    kafka_down: Arc<AtomicBool>,
    /// Which producer of the [`Producer`] this is.
    generation: u64,
    /// The [`Producer`] it belongs to (set once the producer exists).
    owner: Arc<OnceLock<Weak<Shared>>>,
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

impl ProducerContext for BridgeContext {
    type DeliveryOpaque = Box<OnAck>;

    fn delivery(&self, result: &DeliveryResult<'_>, on_ack: Box<OnAck>) {
        match result {
            Ok(_) => {
                self.kafka_down.store(false, Ordering::Relaxed);
                on_ack(Ok(()));
            }
            Err((err, message)) => {
                if is_broker_rejection(err) {
                    if let Some(owner) = self.owner.get().and_then(Weak::upgrade) {
                        owner.replace(self.generation, err);
                    }
                }
                let record = Record {
                    topic: message.topic().to_string(),
                    key: message.key().unwrap_or_default().to_vec(),
                    payload: message.payload().unwrap_or_default().to_vec(),
                };
                on_ack(Err((err.clone(), record)));
            }
        }
    }
}

type Client = ThreadedProducer<BridgeContext>;

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
    shared: Arc<Shared>,
}

struct Shared {
    /// The producer in use and its generation.
    current: RwLock<(u64, Arc<Client>)>,
    next_generation: AtomicU64,
    config: ClientConfig,
    kafka_down: Arc<AtomicBool>,
    owner: Arc<OnceLock<Weak<Shared>>>,
}

impl Producer {
    /// `kafka_down` is set while librdkafka says every broker is down (and
    /// cleared by any acknowledged record); producers may share it.
    pub fn new(
        bootstrap: &str,
        message_timeout: Duration,
        linger: Duration,
        kafka_down: Arc<AtomicBool>,
    ) -> anyhow::Result<Self> {
        let mut config = producer_config(bootstrap, Idempotence::On);
        config
            // A batch the broker refuses for good leaves a gap, and librdkafka
            // then bumps the producer epoch on its own. tansu 0.6 has no row
            // for an epoch it did not hand out and its storage task panics:
            // the broker stays up but fails every request after that. With
            // this a refused batch stops the producer instead (fatal error),
            // and `send` replaces it. Several tansu brokers on one SQLite file
            // refuse batches whenever they collide on the file's write lock.
            .set("enable.gapless.guarantee", "true")
            .set("linger.ms", linger.as_millis().to_string())
            .set("batch.num.messages", "10000")
            .set("queue.buffering.max.messages", "200000")
            .set(
                "message.timeout.ms",
                message_timeout.as_millis().to_string(),
            );
        let owner = Arc::new(OnceLock::new());
        let first = create(&config, &kafka_down, 0, &owner)?;
        let shared = Arc::new(Shared {
            current: RwLock::new((0, Arc::new(first))),
            next_generation: AtomicU64::new(1),
            config,
            kafka_down,
            owner: owner.clone(),
        });
        let _ = owner.set(Arc::downgrade(&shared));
        Ok(Self { shared })
    }

    pub fn kafka_down(&self) -> &Arc<AtomicBool> {
        &self.shared.kafka_down
    }

    /// Starts over with a new producer (new producer id). The drainer calls
    /// this after a failed attempt: a producer that lived through an outage
    /// may wait forever for an epoch bump the broker cannot give.
    pub fn reset(&self, reason: &KafkaError) {
        let generation = self.shared.current().0;
        self.shared.replace(generation, reason);
    }

    /// Hands one record to the producer's queue now (records enqueued one
    /// after another keep their order); `on_ack` runs when Kafka answers.
    /// When the queue refuses the record at once, `on_ack` is dropped
    /// uncalled and the error returned.
    pub fn enqueue(&self, record: &Record, on_ack: OnAck) -> Result<(), KafkaError> {
        let headers = OwnedHeaders::new().insert(Header {
            key: VERSION_HEADER,
            value: Some("1"),
        });
        let (_, producer) = self.shared.current();
        producer
            .send(
                BaseRecord::with_opaque_to(&record.topic, Box::new(on_ack))
                    .key(record.key.as_slice())
                    .payload(record.payload.as_slice())
                    .headers(headers),
            )
            .map_err(|(err, _)| err)
    }

    /// Produces one record and waits for Kafka's acknowledgement.
    pub async fn send(&self, record: &Record) -> Result<(), KafkaError> {
        let (tx, rx) = oneshot::channel();
        self.enqueue(
            record,
            Box::new(move |outcome| {
                let _ = tx.send(outcome.map_err(|(err, _)| err));
            }),
        )?;
        // No answer at all: the producer was destroyed with it queued.
        rx.await.unwrap_or(Err(KafkaError::Canceled))
    }
}

impl Shared {
    fn current(&self) -> (u64, Arc<Client>) {
        let current = match self.current.read() {
            Ok(current) => current,
            Err(poisoned) => poisoned.into_inner(),
        };
        (current.0, current.1.clone())
    }

    /// Replaces producer `failed` with a new one, unless that happened
    /// already. Every record a failed producer held fails at once; only the
    /// first failure builds a replacement. Building a producer is not cheap
    /// and destroying one blocks until its threads end (possibly the very
    /// thread that reports the failure), so the old one goes on a thread of
    /// its own.
    fn replace(&self, failed: u64, error: &KafkaError) {
        if self.current().0 != failed {
            return;
        }
        let generation = self.next_generation.fetch_add(1, Ordering::Relaxed);
        let fresh = match create(&self.config, &self.kafka_down, generation, &self.owner) {
            Ok(producer) => producer,
            Err(err) => {
                tracing::error!("cannot create a new Kafka producer: {err:#}");
                return;
            }
        };
        let mut current = match self.current.write() {
            Ok(current) => current,
            Err(poisoned) => poisoned.into_inner(),
        };
        if current.0 != failed {
            // Another failure of the same producer got here first.
            drop(current);
            std::thread::spawn(move || drop(fresh));
            return;
        }
        tracing::warn!(%error, "Kafka rejected the producer: replacing it with a new one");
        let (_, old) = std::mem::replace(&mut *current, (generation, Arc::new(fresh)));
        drop(current);
        // Purged at once, not when the last sender holding it lets go: what it
        // still queues must not go out under a bumped epoch. Its records'
        // completions report the purge, and their callers spool them.
        std::thread::spawn(move || {
            old.purge(PurgeConfig::default().queue().inflight());
            drop(old)
        });
    }
}

fn create(
    config: &ClientConfig,
    kafka_down: &Arc<AtomicBool>,
    generation: u64,
    owner: &Arc<OnceLock<Weak<Shared>>>,
) -> anyhow::Result<Client> {
    config
        .create_with_context(BridgeContext {
            kafka_down: kafka_down.clone(),
            generation,
            owner: owner.clone(),
        })
        .context("creating Kafka producer")
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
