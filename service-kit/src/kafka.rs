//! Kafka consumer settings and handling the services share.

use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::consumer::StreamConsumer;

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
