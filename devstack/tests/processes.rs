//! The harness itself, against the real programs: tansu keeps its topics and
//! records across a restart with SQLite storage, and influxd comes back on
//! the same port with its data.

use std::time::Duration;

use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;
use warmhouse_devstack::{create_topics, KafkaStorage, Tansu};

fn producer(bootstrap: &str, idempotent: bool) -> FutureProducer {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("enable.idempotence", idempotent.to_string())
        .set("message.timeout.ms", "5000")
        .create()
        .unwrap()
}

async fn send(producer: &FutureProducer, value: &str) -> Result<(), String> {
    producer
        .send(
            FutureRecord::to("t").key("k").payload(value),
            Duration::from_secs(5),
        )
        .await
        .map(|_| ())
        .map_err(|(e, _)| e.to_string())
}

async fn read_all(bootstrap: &str, count: usize) -> Vec<String> {
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", format!("reader-{}", std::process::id()))
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    consumer.subscribe(&["t"]).unwrap();
    let mut values = Vec::new();
    while values.len() < count {
        let message = tokio::time::timeout(Duration::from_secs(20), consumer.recv())
            .await
            .expect("records within 20 s")
            .unwrap();
        values.push(String::from_utf8(message.payload().unwrap().to_vec()).unwrap());
    }
    values
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_tansu_keeps_records_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut tansu = Tansu::start(dir.path(), KafkaStorage::Sqlite).unwrap();
    create_topics(&tansu.bootstrap(), &["t"], 1).await.unwrap();
    let idempotent = producer(&tansu.bootstrap(), true);
    send(&idempotent, "before").await.unwrap();
    tansu.kill();
    tansu.start_again().unwrap();
    // A fresh producer after the restart.
    let fresh = producer(&tansu.bootstrap(), true);
    send(&fresh, "after-fresh").await.unwrap();
    // The producer that lived through the restart.
    let survived = send(&idempotent, "after-survivor").await;
    eprintln!("idempotent producer across restart: {survived:?}");
    let expected = if survived.is_ok() { 3 } else { 2 };
    let values = read_all(&tansu.bootstrap(), expected).await;
    assert_eq!(&values[..2], ["before", "after-fresh"]);
    survived.unwrap();
}

/// Restarting tansu from a process full of busy Kafka client threads (as the
/// system tests do) must not hang: repeated kill and start while producing.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tansu_restarts_under_load() {
    let dir = tempfile::tempdir().unwrap();
    let mut tansu = Tansu::start(dir.path(), KafkaStorage::Sqlite).unwrap();
    create_topics(&tansu.bootstrap(), &["t"], 1).await.unwrap();
    let bootstrap = tansu.bootstrap();
    let load = tokio::spawn(async move {
        let producer = producer(&bootstrap, true);
        for i in 0.. {
            let _ = send(&producer, &format!("v{i}")).await;
        }
    });
    for round in 0..5 {
        tokio::time::sleep(Duration::from_millis(700)).await;
        tansu.kill();
        tokio::time::sleep(Duration::from_millis(300)).await;
        let started = std::time::Instant::now();
        tansu.start_again().unwrap();
        eprintln!("round {round}: restarted in {:?}", started.elapsed());
    }
    load.abort();
}

/// A process that dies on its own is reported (the local stack stops and
/// says so instead of hanging); one stopped on purpose is not.
#[test]
fn a_process_that_died_on_its_own_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let mut tansu = Tansu::start(dir.path(), KafkaStorage::Memory).unwrap();
    tansu.check_alive().expect("tansu runs");
    let pid = tansu.pid().expect("a pid") as libc::pid_t;
    // SAFETY: plain kill(2) of our own child.
    unsafe {
        libc::kill(pid, libc::SIGKILL);
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let err = loop {
        match tansu.check_alive() {
            Err(err) => break err,
            Ok(()) if std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(50))
            }
            Ok(()) => panic!("a killed tansu still counts as alive"),
        }
    };
    assert!(format!("{err:#}").contains("exited"), "{err:#}");
    tansu.kill();
    tansu
        .check_alive()
        .expect("a stopped tansu is not a failure");
}
