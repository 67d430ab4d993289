//! Transactional outbox: a change and the Kafka records announcing it are
//! written in one PostgreSQL transaction; the relay publishes the records
//! afterwards and deletes them once Kafka has acknowledged them. So a record
//! is never published for a change that rolled back, and never lost for one
//! that committed. Records may be published twice (a crash between the Kafka
//! ack and the delete); consumers deduplicate by command id or event id.
//!
//! The outbox knows records, not what they mean: a record may carry a
//! reference (stored in the `command_id` column, its first use), and the
//! relay hands the references of what it published to a [`Published`]
//! hook inside the transaction that deletes the records.

use std::time::Duration;

use anyhow::Context;
use futures::future::{join_all, BoxFuture};
use prometheus::{IntCounter, IntGauge, Registry};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use sqlx::postgres::PgListener;
use sqlx::{PgConnection, PgPool, Row};
use tokio::sync::watch;
use warmhouse_contracts::domain::{DomainEvent, DomainEventKind};
use warmhouse_contracts::kafka::VERSION_HEADER;
use warmhouse_service_kit::metrics::{counter, gauge};
use warmhouse_service_kit::now_ms;

use crate::kafka::{KafkaSettings, Topics};

/// PostgreSQL channel the relay listens on; every enqueue notifies it.
const CHANNEL: &str = "warmhouse_outbox";
/// Most records published per transaction.
const BATCH: i64 = 500;
/// Advisory lock key: one relay per database publishes, so records of one
/// key keep their order even with several registry replicas.
const RELAY_LOCK: i64 = 0x7761_726d_6f75_7462; // "warmoutb"

/// What the relay does, in its transaction, with the references of the
/// records it has just published (a feature marks its rows as sent).
pub trait Published: Send + Sync + 'static {
    fn published<'a>(
        &'a self,
        conn: &'a mut PgConnection,
        references: &'a [String],
    ) -> BoxFuture<'a, anyhow::Result<()>>;
}

/// The relay's counters (names unchanged since they lived elsewhere).
#[derive(Clone)]
pub struct OutboxMetrics {
    pub published: IntCounter,
    pub failures: IntCounter,
    pub backlog: IntGauge,
}

impl OutboxMetrics {
    pub fn register(registry: &Registry) -> anyhow::Result<Self> {
        Ok(Self {
            published: counter(
                registry,
                "warmhouse_registry_outbox_published_total",
                "Outbox records published to Kafka",
            )?,
            failures: counter(
                registry,
                "warmhouse_registry_outbox_failures_total",
                "Outbox relay failures (each is retried)",
            )?,
            backlog: gauge(
                registry,
                "warmhouse_registry_outbox_backlog",
                "Outbox records not yet published",
            )?,
        })
    }
}

/// Adds a record to the outbox inside the caller's transaction; once it is
/// on Kafka, `reference` (when given) goes to the relay's [`Published`] hook.
pub async fn enqueue(
    conn: &mut PgConnection,
    topic: &str,
    key: &str,
    payload: &[u8],
    reference: Option<&str>,
) -> sqlx::Result<()> {
    sqlx::query("INSERT INTO outbox (topic, key, payload, command_id) VALUES ($1, $2, $3, $4)")
        .bind(topic)
        .bind(key)
        .bind(payload)
        .bind(reference)
        .execute(&mut *conn)
        .await?;
    // Delivered at commit, and only once per transaction however many rows.
    sqlx::query("SELECT pg_notify($1, '')")
        .bind(CHANNEL)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// Adds a domain event for `registry-events` inside the caller's transaction.
pub async fn enqueue_event(
    conn: &mut PgConnection,
    topics: &Topics,
    event: DomainEventKind,
) -> sqlx::Result<()> {
    let event = DomainEvent::new(uuid::Uuid::new_v4().to_string(), now_ms(), event);
    let key = event.event.key().to_string();
    enqueue(conn, &topics.registry_events, &key, &event.to_json(), None).await
}

/// Publishes outbox records until `stop`, forever retrying what fails.
pub async fn run_relay(
    pool: PgPool,
    kafka: KafkaSettings,
    hook: impl Published,
    metrics: OutboxMetrics,
    mut stop: watch::Receiver<bool>,
) {
    let mut backoff = Duration::from_millis(200);
    loop {
        let round = relay_round(&pool, &kafka, &hook, &metrics, &mut stop);
        match round.await {
            Ok(()) => return,
            Err(err) => {
                metrics.failures.inc();
                tracing::warn!(error = %format!("{err:#}"), "outbox relay failed; retrying in {backoff:?}");
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

/// One life of the relay: take the lock, then publish on every notification
/// (and every second, in case a notification was missed while reconnecting).
/// Returns Ok only when asked to stop.
async fn relay_round(
    pool: &PgPool,
    kafka: &KafkaSettings,
    hook: &impl Published,
    metrics: &OutboxMetrics,
    stop: &mut watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let producer = kafka.producer()?;
    let mut listener = PgListener::connect_with(pool)
        .await
        .context("connecting the outbox listener")?;
    listener.listen(CHANNEL).await.context("LISTEN")?;
    // The lock lives as long as the listener's session.
    loop {
        let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
            .bind(RELAY_LOCK)
            .fetch_one(&mut listener)
            .await
            .context("taking the relay lock")?;
        if locked {
            break;
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(2)) => {}
            _ = stop.wait_for(|s| *s) => return Ok(()),
        }
    }
    tracing::info!("outbox relay publishing");
    let published = async {
        loop {
            while publish_batch(pool, &producer, hook, metrics).await? == BATCH as usize {}
            tokio::select! {
                notification = listener.recv() => { notification.context("outbox notification")?; }
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = stop.wait_for(|s| *s) => return Ok(()),
            }
        }
    }
    .await;
    // Dropping the listener returns its session to the pool still holding
    // the lock, and the next round would wait until the pool happens to hand
    // that session out again (seconds to minutes after a failed Kafka send).
    if let Err(err) = sqlx::query("SELECT pg_advisory_unlock($1)")
        .bind(RELAY_LOCK)
        .execute(&mut listener)
        .await
    {
        tracing::warn!(%err, "cannot release the relay lock; its session will");
    }
    published
}

/// Publishes up to [`BATCH`] records in id order and deletes them; the
/// references among them go to `hook`. Returns how many.
async fn publish_batch(
    pool: &PgPool,
    producer: &FutureProducer,
    hook: &impl Published,
    metrics: &OutboxMetrics,
) -> anyhow::Result<usize> {
    let mut tx = pool.begin().await.context("beginning outbox transaction")?;
    let rows = sqlx::query(
        "SELECT id, topic, key, payload, command_id FROM outbox ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED",
    )
    .bind(BATCH)
    .fetch_all(&mut *tx)
    .await
    .context("reading the outbox")?;
    if rows.is_empty() {
        return Ok(0);
    }
    let mut ids = Vec::with_capacity(rows.len());
    let mut references = Vec::new();
    let mut sends = Vec::with_capacity(rows.len());
    for row in &rows {
        let id: i64 = row.try_get("id")?;
        let topic: String = row.try_get("topic")?;
        let key: String = row.try_get("key")?;
        let payload: Vec<u8> = row.try_get("payload")?;
        if let Some(reference) = row.try_get::<Option<String>, _>("command_id")? {
            references.push(reference);
        }
        ids.push(id);
        sends.push(async move {
            let record = FutureRecord::to(&topic)
                .key(&key)
                .payload(&payload)
                .headers(OwnedHeaders::new().insert(Header {
                    key: VERSION_HEADER,
                    value: Some("1"),
                }));
            producer
                .send(record, Timeout::After(Duration::from_secs(10)))
                .await
                .map_err(|(err, _)| anyhow::anyhow!("publishing to {topic}: {err}"))
        });
    }
    // The producer keeps one request in flight per broker (see
    // KafkaSettings::producer), so records of one key stay in order.
    for result in join_all(sends).await {
        result?;
    }
    sqlx::query("DELETE FROM outbox WHERE id = ANY($1)")
        .bind(&ids)
        .execute(&mut *tx)
        .await
        .context("deleting published outbox records")?;
    if !references.is_empty() {
        hook.published(&mut tx, &references).await?;
    }
    tx.commit().await.context("committing the outbox batch")?;
    metrics.published.inc_by(ids.len() as u64);
    Ok(ids.len())
}

/// Records still waiting in the outbox (for /metrics and tests).
pub async fn backlog(pool: &PgPool) -> sqlx::Result<i64> {
    sqlx::query("SELECT count(*) AS n FROM outbox")
        .fetch_one(pool)
        .await?
        .try_get("n")
}
