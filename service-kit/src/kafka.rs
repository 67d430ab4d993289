//! Kafka client settings (one builder every service's clients start
//! from) and consumer handling the services share.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::KafkaResult;
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::{Offset, TopicPartitionList};

/// How long librdkafka waits at most before reconnecting to a broker, in ms
/// (its default, 10 s, leaves a service blind that long after Kafka is back).
pub const RECONNECT_BACKOFF_MAX_MS: &str = "1000";

/// The settings every Kafka client of the services starts from: the
/// bootstrap servers and a reconnect backoff of at most a second. The
/// producer and consumer variants below build on it; production code
/// creates no client from a bare `ClientConfig::new()`.
pub fn client_config(bootstrap: &str) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", bootstrap)
        .set("reconnect.backoff.max.ms", RECONNECT_BACKOFF_MAX_MS);
    config
}

/// Whether a producer is idempotent (exactly one copy of each record in the
/// log, in order, through retries).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Idempotence {
    On,
    /// An idempotent producer that lived through a broker restart can be
    /// refused forever by tansu (see the edge bridge's kafka.rs) unless it
    /// is replaced; producers that are not replaced turn it off, and their
    /// consumers absorb a duplicate.
    Off,
}

/// A producer whose records are acknowledged by every in-sync replica
/// (`acks=all`), idempotent or not.
pub fn producer_config(bootstrap: &str, idempotence: Idempotence) -> ClientConfig {
    let mut config = client_config(bootstrap);
    config.set("acks", "all").set(
        "enable.idempotence",
        match idempotence {
            Idempotence::On => "true",
            Idempotence::Off => "false",
        },
    );
    config
}

/// A consumer with group id `group_id` (librdkafka wants one even for a
/// consumer that never joins its group); its commit settings are the
/// caller's.
pub fn consumer_config(bootstrap: &str, group_id: &str) -> ClientConfig {
    let mut config = client_config(bootstrap);
    config.set("group.id", group_id);
    config
}

/// A consumer in group `group_id` that stores each offset by hand once its
/// record is done with (at least once), committed every 500 ms, starting
/// from the earliest record when the group has no offset yet.
/// `fetch_wait` is how long the broker may hold a fetch for more data:
/// short where a round trip waits on this consumer.
pub fn group_consumer_config(
    bootstrap: &str,
    group_id: &str,
    fetch_wait: Duration,
) -> ClientConfig {
    let mut config = consumer_config(bootstrap, group_id);
    config
        .set("enable.auto.commit", "true")
        .set("enable.auto.offset.store", "false")
        .set("auto.commit.interval.ms", "500")
        .set("auto.offset.reset", "earliest")
        .set("fetch.wait.max.ms", fetch_wait.as_millis().to_string())
        // A lost member is replaced once its session expires; until then the
        // group can be stuck rebalancing (tansu keeps it as the leader,
        // docs/adr/0018-kafka-cluster-locally.md). 10 s, Kafka's default
        // before 3.0, not librdkafka's 45 s.
        .set("session.timeout.ms", "10000");
    config
}

/// A consumer that assigns its partitions by hand and neither joins a group
/// nor commits or stores offsets; `client_id` names it to the brokers and
/// serves as its (never joined) group id.
pub fn assigned_consumer_config(
    bootstrap: &str,
    client_id: &str,
    fetch_wait: Duration,
) -> ClientConfig {
    let mut config = consumer_config(bootstrap, client_id);
    config
        .set("client.id", client_id)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("fetch.wait.max.ms", fetch_wait.as_millis().to_string());
    config
}

/// A consumer closed on a thread of its own when dropped. Closing commits
/// the stored offsets and leaves the group, and blocks until the broker
/// answers: forever when Kafka is gone by then. The task holding it can be
/// dropped anywhere (shutdown, abort, a runtime going away), so the close
/// must not hold a runtime worker.
pub struct ClosedOffRuntime(Option<StreamConsumer>);

impl ClosedOffRuntime {
    pub fn new(consumer: StreamConsumer) -> Self {
        Self(Some(consumer))
    }
}

impl std::ops::Deref for ClosedOffRuntime {
    type Target = StreamConsumer;
    fn deref(&self) -> &StreamConsumer {
        // Only `drop` takes the consumer out.
        self.0.as_ref().expect("consumer is present until drop")
    }
}

impl Drop for ClosedOffRuntime {
    fn drop(&mut self) {
        if let Some(consumer) = self.0.take() {
            std::thread::spawn(move || drop(consumer));
        }
    }
}

/// Reads every partition of one topic from where it ends at start, with a
/// manual assignment and no consumer group, committing nothing: for what
/// every replica of a service must see (the registry's revocations, the
/// commands for the devices a broker replica holds). A restarted replica has
/// no state older records could concern, so it starts at the end.
pub struct TopicTail {
    consumer: Arc<StreamConsumer>,
    topic: String,
    partitions: usize,
    refresh: tokio::time::Interval,
}

/// How often a [`TopicTail`] looks up its topic's partitions again
/// (partitions added since are then read from their beginning).
const TAIL_METADATA_REFRESH: Duration = Duration::from_secs(60);
const TAIL_KAFKA_TIMEOUT: Duration = Duration::from_secs(5);

impl TopicTail {
    /// Creates the consumer and assigns every partition at its current end;
    /// returns once assigned, so records from then on are seen.
    /// `fetch_wait`: how long the broker may hold a fetch for more data.
    pub async fn assign(
        bootstrap: &str,
        topic: &str,
        client_id: &str,
        fetch_wait: Duration,
    ) -> anyhow::Result<Self> {
        let consumer: StreamConsumer = assigned_consumer_config(bootstrap, client_id, fetch_wait)
            .create()
            .with_context(|| format!("creating a consumer of {topic}"))?;
        let mut tail = Self {
            consumer: Arc::new(consumer),
            topic: topic.to_string(),
            partitions: 0,
            refresh: tokio::time::interval_at(
                tokio::time::Instant::now() + TAIL_METADATA_REFRESH,
                TAIL_METADATA_REFRESH,
            ),
        };
        tail.partitions = tail.assign_partitions().await?;
        Ok(tail)
    }

    /// The next record (librdkafka reconnects by itself after an error).
    pub async fn recv(&mut self) -> KafkaResult<OwnedMessage> {
        loop {
            tokio::select! {
                message = self.consumer.recv() => return message.map(|m| m.detach()),
                _ = self.refresh.tick() => match self.assign_partitions().await {
                    Ok(count) => self.partitions = count,
                    Err(err) => tracing::warn!(topic = self.topic, error = format!("{err:#}"), "metadata refresh failed"),
                },
            }
        }
    }

    /// Assigns the topic's partitions: those already read at their current
    /// position, the rest at their end (a fresh start) or their beginning
    /// (partitions added since). Returns the partition count.
    async fn assign_partitions(&self) -> anyhow::Result<usize> {
        let consumer = self.consumer.clone();
        let topic = self.topic.clone();
        let known = self.partitions;
        // librdkafka's metadata and watermark calls block.
        tokio::task::spawn_blocking(move || {
            let metadata = consumer
                .fetch_metadata(Some(&topic), TAIL_KAFKA_TIMEOUT)
                .with_context(|| format!("reading the metadata of topic {topic}"))?;
            let partitions: Vec<i32> = metadata
                .topics()
                .iter()
                .filter(|t| t.name() == topic && t.error().is_none())
                .flat_map(|t| t.partitions().iter().map(|p| p.id()))
                .collect();
            if partitions.is_empty() {
                anyhow::bail!("topic {topic} has no partitions (does it exist?)");
            }
            if partitions.len() == known {
                return Ok(known);
            }
            let positions = if known > 0 {
                consumer.position().ok()
            } else {
                None
            };
            let mut list = TopicPartitionList::new();
            for partition in &partitions {
                let current = positions
                    .as_ref()
                    .and_then(|p| p.find_partition(&topic, *partition))
                    .map(|e| e.offset())
                    .filter(|o| matches!(o, Offset::Offset(_)));
                let offset = match current {
                    Some(offset) => offset,
                    None if known > 0 => Offset::Beginning,
                    None => {
                        let (_, high) = consumer
                            .fetch_watermarks(&topic, *partition, TAIL_KAFKA_TIMEOUT)
                            .with_context(|| format!("reading the end of {topic}/{partition}"))?;
                        Offset::Offset(high)
                    }
                };
                list.add_partition_offset(&topic, *partition, offset)
                    .with_context(|| format!("assigning {topic}/{partition}"))?;
            }
            consumer
                .assign(&list)
                .with_context(|| format!("assigning the partitions of {topic}"))?;
            Ok(partitions.len())
        })
        .await
        .context("the partition assignment task failed")?
    }
}

/// Where a record came from, for logs and dead letters:
/// `kafka:{topic}/{partition}@{offset}`.
pub fn record_source(message: &impl Message) -> String {
    format!(
        "kafka:{}/{}@{}",
        message.topic(),
        message.partition(),
        message.offset()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(config: &ClientConfig) -> Vec<(&str, &str)> {
        config.config_map().into_iter().collect()
    }

    #[test]
    fn every_client_starts_from_the_shared_settings() {
        let shared = [
            ("bootstrap.servers", "k:9092"),
            ("reconnect.backoff.max.ms", "1000"),
        ];
        assert_eq!(settings(&client_config("k:9092")), shared);
        for config in [
            producer_config("k:9092", Idempotence::On),
            consumer_config("k:9092", "g"),
            group_consumer_config("k:9092", "g", Duration::from_millis(20)),
            assigned_consumer_config("k:9092", "c", Duration::from_millis(20)),
        ] {
            for (key, value) in shared {
                assert_eq!(config.get(key), Some(value), "{key}");
            }
        }
    }

    #[test]
    fn producers_wait_for_every_replica() {
        let on = producer_config("k:9092", Idempotence::On);
        assert_eq!(on.get("acks"), Some("all"));
        assert_eq!(on.get("enable.idempotence"), Some("true"));
        let off = producer_config("k:9092", Idempotence::Off);
        assert_eq!(off.get("enable.idempotence"), Some("false"));
    }

    #[test]
    fn assigned_consumers_are_what_topic_tails_used() {
        let config = assigned_consumer_config("k:9092", "c", Duration::from_millis(5));
        assert_eq!(
            settings(&config),
            [
                ("bootstrap.servers", "k:9092"),
                ("client.id", "c"),
                ("enable.auto.commit", "false"),
                ("enable.auto.offset.store", "false"),
                ("fetch.wait.max.ms", "5"),
                ("group.id", "c"),
                ("reconnect.backoff.max.ms", "1000"),
            ]
        );
    }

    #[test]
    fn group_consumers_store_offsets_by_hand() {
        let config = group_consumer_config("127.0.0.1:1", "g", Duration::from_millis(20));
        assert_eq!(config.get("group.id"), Some("g"));
        assert_eq!(config.get("enable.auto.offset.store"), Some("false"));
        assert_eq!(config.get("fetch.wait.max.ms"), Some("20"));
        assert_eq!(config.get("session.timeout.ms"), Some("10000"));
    }
}
