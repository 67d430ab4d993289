//! The consumer-lag probe against a real Kafka-protocol broker (tansu): it
//! reports, per partition, what the group has not committed.

use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use warmhouse_devstack::{create_topics, KafkaStorage, Tansu};
use warmhouse_ingest::lag::LagProbe;

const TIMEOUT: Duration = Duration::from_secs(5);

async fn produce(bootstrap: &str, partition: i32, count: usize) {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("message.timeout.ms", "10000")
        .create()
        .unwrap();
    for i in 0..count {
        let payload = format!("record {i}");
        producer
            .send(
                FutureRecord::<str, str>::to("t")
                    .partition(partition)
                    .payload(&payload),
                TIMEOUT,
            )
            .await
            .map_err(|(err, _)| err)
            .unwrap();
    }
}

/// Commits `offset` on partition 0 for `group`, as the writer does after a
/// batch is in InfluxDB.
fn commit(bootstrap: &str, group: &str, offset: i64) {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut list = TopicPartitionList::new();
    list.add_partition_offset("t", 0, Offset::Offset(offset))
        .unwrap();
    consumer.assign(&list).unwrap();
    consumer.commit(&list, CommitMode::Sync).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lag_is_log_end_minus_committed_per_partition() {
    let dir = tempfile::tempdir().unwrap();
    let tansu = Tansu::start(dir.path(), KafkaStorage::Memory).unwrap();
    let bootstrap = tansu.bootstrap();
    create_topics(&bootstrap, &["t"], 2).await.unwrap();
    produce(&bootstrap, 0, 5).await;
    produce(&bootstrap, 1, 3).await;

    let probe = LagProbe::new(&bootstrap, "writers", "t").unwrap();
    let measure = {
        let probe = std::sync::Arc::new(probe);
        move || {
            let probe = probe.clone();
            async move {
                tokio::task::spawn_blocking(move || probe.measure(TIMEOUT))
                    .await
                    .unwrap()
            }
        }
    };
    // Nothing committed: the whole log is behind.
    let lag = measure().await.unwrap();
    assert_eq!(lag.into_iter().collect::<Vec<_>>(), [(0, 5), (1, 3)]);

    let (b, g) = (bootstrap.clone(), "writers");
    tokio::task::spawn_blocking(move || commit(&b, g, 2))
        .await
        .unwrap();
    let lag = measure().await.unwrap();
    assert_eq!(lag.into_iter().collect::<Vec<_>>(), [(0, 3), (1, 3)]);

    // Another group is not affected.
    let other = LagProbe::new(&bootstrap, "others", "t").unwrap();
    let lag = tokio::task::spawn_blocking(move || other.measure(TIMEOUT))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(lag[&0], 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_topic_is_an_error_not_zero() {
    let dir = tempfile::tempdir().unwrap();
    let tansu = Tansu::start(dir.path(), KafkaStorage::Memory).unwrap();
    let probe = LagProbe::new(&tansu.bootstrap(), "writers", "nope").unwrap();
    let result = tokio::task::spawn_blocking(move || probe.measure(TIMEOUT))
        .await
        .unwrap();
    assert!(result.is_err(), "{result:?}");
}
