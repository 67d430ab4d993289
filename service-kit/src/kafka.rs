//! Kafka consumer settings and handling the services share.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::KafkaResult;
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::{Offset, TopicPartitionList};

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
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", bootstrap)
        .set("group.id", group_id)
        .set("enable.auto.commit", "true")
        .set("enable.auto.offset.store", "false")
        .set("auto.commit.interval.ms", "500")
        .set("auto.offset.reset", "earliest")
        .set("fetch.wait.max.ms", fetch_wait.as_millis().to_string())
        .set("reconnect.backoff.max.ms", "1000")
        // A lost member is replaced once its session expires; until then the
        // group can be stuck rebalancing (tansu keeps it as the leader,
        // docs/adr/0018-kafka-cluster-locally.md). 10 s, Kafka's default
        // before 3.0, not librdkafka's 45 s.
        .set("session.timeout.ms", "10000");
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
        let consumer: StreamConsumer = ClientConfig::new()
            .set("bootstrap.servers", bootstrap)
            .set("client.id", client_id)
            // librdkafka wants a group id for a consumer even when it
            // never joins the group (manual assignment, nothing committed).
            .set("group.id", client_id)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("fetch.wait.max.ms", fetch_wait.as_millis().to_string())
            .set("reconnect.backoff.max.ms", "1000")
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

    #[test]
    fn group_consumers_store_offsets_by_hand() {
        let config = group_consumer_config("127.0.0.1:1", "g", Duration::from_millis(20));
        assert_eq!(config.get("group.id"), Some("g"));
        assert_eq!(config.get("enable.auto.offset.store"), Some("false"));
        assert_eq!(config.get("fetch.wait.max.ms"), Some("20"));
        assert_eq!(config.get("session.timeout.ms"), Some("10000"));
    }
}
