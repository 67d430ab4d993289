//! The writer's consumer lag: per partition of `telemetry`, the log end
//! offset minus the offset the writer's group committed. The writer commits
//! only what InfluxDB accepted, so this counts readings that are in Kafka
//! but not yet safely in InfluxDB.
//!
//! It is read from the broker by a client of its own (the group's committed
//! offsets and the partitions' watermarks), as Kafka's own tooling does,
//! rather than from the writer's consumer: it keeps counting while the
//! writer is stalled (InfluxDB down, backpressure), which is when it
//! matters.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use prometheus::IntGaugeVec;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};
use warmhouse_service_kit::kafka::consumer_config;

/// Timeout of each request to Kafka in one measurement.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);

/// Reads the lag of a consumer group on one topic.
pub struct LagProbe {
    /// `Some` until drop (see `Drop`).
    consumer: Option<BaseConsumer>,
    topic: String,
}

impl LagProbe {
    /// A probe of `group` on `topic`. It never joins the group nor commits:
    /// it only reads offsets.
    pub fn new(bootstrap: &str, group: &str, topic: &str) -> anyhow::Result<Self> {
        let consumer: BaseConsumer = consumer_config(bootstrap, group)
            .set("enable.auto.commit", "false")
            .create()
            .context("creating the consumer-lag probe's Kafka client")?;
        Ok(Self {
            consumer: Some(consumer),
            topic: topic.to_string(),
        })
    }

    fn consumer(&self) -> anyhow::Result<&BaseConsumer> {
        self.consumer.as_ref().context("the lag probe is closed")
    }

    /// Lag by partition: log end offset minus the committed offset, or
    /// minus the log start when the group has committed nothing there.
    /// Blocks for up to a few request timeouts.
    pub fn measure(&self, timeout: Duration) -> anyhow::Result<BTreeMap<i32, i64>> {
        let consumer = self.consumer()?;
        // Nothing is assigned, so polling only drains client events (errors
        // while Kafka is away) that would otherwise pile up unread.
        while consumer.poll(Duration::ZERO).is_some() {}
        let metadata = consumer
            .fetch_metadata(Some(&self.topic), timeout)
            .with_context(|| format!("reading the partitions of `{}`", self.topic))?;
        let mut list = TopicPartitionList::new();
        for topic in metadata.topics().iter().filter(|t| t.name() == self.topic) {
            for partition in topic.partitions() {
                list.add_partition(&self.topic, partition.id());
            }
        }
        if list.count() == 0 {
            bail!("topic `{}` has no partitions", self.topic);
        }
        let committed = consumer
            .committed_offsets(list, timeout)
            .context("reading the group's committed offsets")?;
        let mut lag = BTreeMap::new();
        for element in committed.elements() {
            let partition = element.partition();
            let (low, high) = consumer
                .fetch_watermarks(&self.topic, partition, timeout)
                .with_context(|| format!("reading the offsets of `{}`/{partition}", self.topic))?;
            let from = match element.offset() {
                Offset::Offset(committed) => committed.max(low),
                _ => low,
            };
            lag.insert(partition, (high - from).max(0));
        }
        Ok(lag)
    }
}

impl Drop for LagProbe {
    fn drop(&mut self) {
        // Destroying a Kafka client waits for the broker; never on a
        // runtime worker (the writer can be dropped anywhere).
        if let Some(consumer) = self.consumer.take() {
            std::thread::spawn(move || drop(consumer));
        }
    }
}

/// Measures every `every` and sets `gauge{partition}`. A failed measurement
/// (Kafka away) is logged and leaves the last values; the task runs until
/// aborted.
pub fn spawn(probe: LagProbe, gauge: IntGaugeVec, every: Duration) -> tokio::task::JoinHandle<()> {
    let probe = Arc::new(probe);
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(every);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            let task_probe = probe.clone();
            let measured = tokio::task::spawn_blocking(move || task_probe.measure(REQUEST_TIMEOUT))
                .await
                .map_err(anyhow::Error::from)
                .and_then(|result| result);
            match measured {
                Ok(lag) => {
                    for (partition, lag) in lag {
                        gauge
                            .with_label_values(&[partition.to_string().as_str()])
                            .set(lag);
                    }
                }
                Err(err) => {
                    tracing::warn!(error = %format!("{err:#}"), "cannot measure the consumer lag")
                }
            }
        }
    })
}
