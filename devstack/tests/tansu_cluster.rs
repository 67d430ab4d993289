//! Several tansu brokers on one SQLite file, against the real program: each
//! serves the records and offsets another wrote, and a client given every
//! broker starts while the first is down.

use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;
use warmhouse_devstack::{create_topics, KafkaStorage, TansuCluster};

/// Not idempotent: two brokers writing at once make one of them refuse a
/// batch ("database is locked"), and tansu cannot take the epoch an
/// idempotent producer bumps after that (docs/adr/0018).
fn producer(bootstrap: &str) -> FutureProducer {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("enable.idempotence", "false")
        .set("message.timeout.ms", "10000")
        .create()
        .unwrap()
}

async fn send(bootstrap: &str, values: &[&str]) {
    let producer = producer(bootstrap);
    for value in values {
        producer
            .send(
                FutureRecord::to("t").key("k").payload(*value),
                Duration::from_secs(10),
            )
            .await
            .map_err(|(err, _)| err)
            .unwrap_or_else(|err| panic!("producing {value} through {bootstrap}: {err}"));
    }
}

/// Reads `count` records as group `g`, committing them, through `bootstrap`.
async fn read(bootstrap: &str, count: usize) -> Vec<String> {
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "g")
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    consumer.subscribe(&["t"]).unwrap();
    let mut values = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while values.len() < count {
        let message = tokio::time::timeout_at(deadline, consumer.recv())
            .await
            .unwrap_or_else(|_| panic!("{count} records through {bootstrap} within 30 s"));
        // A broker that is down shows up as an error event; the client
        // goes on with the others.
        let message = match message {
            Ok(message) => message,
            Err(err) => {
                eprintln!("consumer: {err}");
                continue;
            }
        };
        values.push(String::from_utf8(message.payload().unwrap().to_vec()).unwrap());
        consumer
            .commit_message(&message, rdkafka::consumer::CommitMode::Sync)
            .unwrap();
    }
    // Closing leaves the group: done before a broker is killed, or the next
    // reader waits for this member's session to expire. Not on the runtime.
    tokio::task::spawn_blocking(move || drop(consumer))
        .await
        .unwrap();
    values
}

/// Every broker advertises the cluster's front, which forwards to the first
/// live broker: killing brokers moves every client to the next one, which
/// must serve the records and the group offsets the others wrote.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_broker_in_turn_serves_what_the_others_wrote() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = TansuCluster::start(dir.path(), 3, KafkaStorage::Sqlite).unwrap();
    let bootstrap = cluster.bootstrap();
    assert_eq!(bootstrap.split(',').count(), 3);
    create_topics(&bootstrap, &["t"], 1).await.unwrap();

    // Through broker 1.
    send(&bootstrap, &["a", "b"]).await;
    assert_eq!(read(&bootstrap, 2).await, ["a", "b"]);
    // Through broker 2: the group goes on where it stopped.
    cluster.brokers[0].kill();
    send(&bootstrap, &["c"]).await;
    assert_eq!(read(&bootstrap, 1).await, ["c"]);
    // Through broker 3.
    cluster.brokers[1].kill();
    send(&bootstrap, &["d"]).await;
    assert_eq!(read(&bootstrap, 1).await, ["d"]);
    // Brokers 1 and 2 back on their ports, on the same file; through one
    // of them.
    cluster.start_again().unwrap();
    cluster.brokers[2].kill();
    send(&bootstrap, &["e"]).await;
    assert_eq!(read(&bootstrap, 1).await, ["e"]);
    cluster.start_again().unwrap();
    assert_eq!(cluster.running(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_given_every_broker_starts_while_the_first_is_down() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = TansuCluster::start(dir.path(), 3, KafkaStorage::Sqlite).unwrap();
    let bootstrap = cluster.bootstrap();
    cluster.brokers[0].kill();
    create_topics(&bootstrap, &["t"], 2).await.unwrap();
    send(&bootstrap, &["x", "y"]).await;
    let mut values = read(&bootstrap, 2).await;
    values.sort();
    assert_eq!(values, ["x", "y"]);
}

#[test]
fn brokers_cannot_share_memory_storage() {
    let dir = tempfile::tempdir().unwrap();
    let err = TansuCluster::start(dir.path(), 2, KafkaStorage::Memory)
        .err()
        .expect("refused");
    assert!(err.to_string().contains("SQLite"), "{err}");
}

/// Asked through any broker, the cluster is one broker (tansu gives every
/// broker the same node id) at the front's address.
#[test]
fn every_broker_advertises_the_front() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = TansuCluster::start(dir.path(), 3, KafkaStorage::Sqlite).unwrap();
    let front = cluster.front().expect("a cluster has a front");
    for broker in &cluster.brokers {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", broker.bootstrap())
            .create()
            .unwrap();
        let metadata = consumer
            .fetch_metadata(None, Duration::from_secs(10))
            .unwrap();
        let advertised: Vec<String> = metadata
            .brokers()
            .iter()
            .map(|b| format!("{}:{} (node {})", b.host(), b.port(), b.id()))
            .collect();
        assert_eq!(advertised.len(), 1, "{advertised:?}");
        assert!(
            advertised[0].starts_with(&front.to_string()),
            "{advertised:?}, front {front}"
        );
        eprintln!("through {}: {advertised:?}", broker.bootstrap());
    }
}
