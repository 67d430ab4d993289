//! The ingress promise under faults: a reading whose device got a PUBACK is
//! stored exactly once, whatever single process dies. Broker replicas run
//! as processes of their own (`warmhouse-stack broker`, the broker's own
//! code), Kafka is tansu on SQLite (durable across its restarts), InfluxDB
//! is influxd, and 100 simulated devices publish 10 QoS 1 messages a
//! second each while a replica is killed, the replicas are rolled, Kafka
//! goes away for longer than the broker's in-memory log could hold, or the
//! spool fills up. Every check counts: per device, every acknowledged
//! reading (by `seq`) is queried back once.

use std::time::{Duration, Instant};

use std::collections::BTreeSet;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use tokio::task::JoinHandle;
use warmhouse_contracts::kafka::topics;
use warmhouse_contracts::telemetry::TelemetryEnvelope;
use warmhouse_devstack::{create_topics, KafkaStorage};
use warmhouse_simulator::Summary;
use warmhouse_stack::broker_process::BrokerProcessConfig;
use warmhouse_stack::verify::wait_for_exactly;
use warmhouse_stack::{Stack, StackOptions};

/// 25 homes x 4 devices, 10 messages a second each, 20 s of readings.
const DEVICES: u64 = 100;
const MESSAGES_PER_DEVICE: u64 = 200;
/// How long the simulator may take past its 20 s (faults slow it down).
const RUN_PATIENCE: Duration = Duration::from_secs(120);
/// How long stored readings may take to settle after the run.
const SETTLE: Duration = Duration::from_secs(60);

fn processes() -> BrokerProcessConfig {
    BrokerProcessConfig::new(
        std::path::Path::new(env!("CARGO_BIN_EXE_warmhouse-stack")),
        // Filled in by the stack.
        "",
    )
}

async fn stack(dir: &std::path::Path, replicas: usize, brokers: BrokerProcessConfig) -> Stack {
    stack_on(dir, KafkaStorage::Sqlite, replicas, brokers).await
}

async fn stack_on(
    dir: &std::path::Path,
    storage: KafkaStorage,
    replicas: usize,
    brokers: BrokerProcessConfig,
) -> Stack {
    Stack::start(
        dir,
        StackOptions {
            kafka_storage: storage,
            broker_replicas: replicas,
            broker_processes: Some(brokers),
            broker_kafka_timeout: Duration::from_secs(2),
            ..StackOptions::default()
        },
    )
    .await
    .expect("starting the stack")
}

/// The fleet, recording every acknowledged message.
fn devices(stack: &Stack, run_id: &str) -> JoinHandle<anyhow::Result<Summary>> {
    let messages = MESSAGES_PER_DEVICE.to_string();
    let config = stack.simulator(&[
        "--homes",
        "25",
        "--devices-per-home",
        "4",
        "--interval-ms",
        "100",
        "--messages-per-device",
        &messages,
        "--qos",
        "1",
        "--record",
        "--run-id",
        run_id,
        // Long enough to wait out a stalled broker at the end.
        "--drain-timeout-secs",
        "60",
    ]);
    tokio::spawn(warmhouse_simulator::run(config, std::future::pending()))
}

/// Waits for the fleet to finish and checks the promise: every message
/// acknowledged, every acknowledged reading stored exactly once.
async fn every_acknowledged_reading_stored_once(
    stack: &mut Stack,
    fleet: JoinHandle<anyhow::Result<Summary>>,
) -> Summary {
    let summary = match tokio::time::timeout(RUN_PATIENCE, fleet).await {
        Ok(done) => done.expect("simulator task").expect("simulator run"),
        Err(_) => panic!("the fleet did not finish within {RUN_PATIENCE:?}"),
    };
    for broker in &mut stack.broker_processes {
        broker
            .check_alive()
            .expect("every broker replica is up at the end");
    }
    assert_eq!(summary.messages_unacked, 0, "{summary:?}");
    assert_eq!(
        summary.messages_acked,
        DEVICES * MESSAGES_PER_DEVICE,
        "{summary:?}"
    );
    let readings = match wait_for_exactly(stack, &summary.published, SETTLE).await {
        Ok(readings) => readings,
        Err(err) => {
            let logs: Vec<String> = stack
                .broker_processes
                .iter()
                .map(|b| {
                    format!(
                        "--- {} (our log lines) ---\n{}",
                        b.name,
                        b.log_lines(Some("warmhouse_"), 80)
                    )
                })
                .collect();
            panic!(
                "not every acknowledged reading is stored exactly once: {err:#}\n{}\n{}",
                stack.tansu.diagnose(),
                logs.join("\n")
            )
        }
    };
    assert_eq!(readings as u64, summary.readings_acked);
    summary
}

/// For the replica faults: devices had to reconnect, and the promise held.
async fn devices_moved_and_nothing_was_lost(
    mut stack: Stack,
    fleet: JoinHandle<anyhow::Result<Summary>>,
) {
    let summary = every_acknowledged_reading_stored_once(&mut stack, fleet).await;
    assert!(
        summary.reconnects >= 1,
        "nobody lost a connection: {summary:?}"
    );
    stack.stop().await;
}

/// Sum of one sample over every replica's `/metrics`.
async fn total(stack: &Stack, sample: &str) -> f64 {
    let mut sum = 0.0;
    for broker in &stack.broker_processes {
        sum += broker.metric(sample).await.expect("broker metrics");
    }
    sum
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_of_a_broker_replica_loses_and_duplicates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut stack = stack(dir.path(), 2, processes()).await;
    let fleet = devices(&stack, "kill9");
    tokio::time::sleep(Duration::from_secs(5)).await;
    let killed = &mut stack.broker_processes[0];
    killed.kill();
    // Its devices move to the other replica or wait for this one.
    tokio::time::sleep(Duration::from_secs(2)).await;
    killed
        .start_again()
        .await
        .expect("the killed replica starts again");
    devices_moved_and_nothing_was_lost(stack, fleet).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rolling_restart_of_every_replica_loses_and_duplicates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut stack = stack(dir.path(), 2, processes()).await;
    let fleet = devices(&stack, "rolling");
    for replica in 0..stack.broker_processes.len() {
        tokio::time::sleep(Duration::from_secs(4)).await;
        let broker = &mut stack.broker_processes[replica];
        // As Kubernetes rolls a StatefulSet: SIGTERM, wait, start the new one.
        broker.terminate(Duration::from_secs(10));
        broker.start_again().await.expect("the replica comes back");
    }
    devices_moved_and_nothing_was_lost(stack, fleet).await;
}

/// The broker's in-memory log is 2 KiB here: the old design (the broker
/// acknowledged on arrival, a bridge read its log) lost everything past
/// that while Kafka was away. Now nothing is acknowledged before Kafka or
/// the spool has it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_kafka_outage_longer_than_the_broker_log_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut brokers = processes();
    brokers.env = vec![
        ("WARMHOUSE_BROKER_MAX_SEGMENT_SIZE".into(), "1024".into()),
        ("WARMHOUSE_BROKER_MAX_SEGMENT_COUNT".into(), "2".into()),
    ];
    let mut stack = stack(dir.path(), 1, brokers).await;
    let fleet = devices(&stack, "kafka-outage");
    tokio::time::sleep(Duration::from_secs(4)).await;
    let before = SafeWait::read(&stack).await;
    stack.tansu.kill();
    tokio::time::sleep(Duration::from_secs(10)).await;
    let during = SafeWait::read(&stack).await.since(&before);
    stack.tansu.start_again().expect("tansu starts again");
    // What devices saw while Kafka was away: PUBACKs kept coming (from the
    // spool), each after the Kafka timeout at worst.
    eprintln!(
        "Kafka away 10 s: {} PUBACKs released, mean wait {:.0} ms, {:.1} % within 100 ms, \
         {:.1} % within 2.5 s",
        during.count,
        during.mean_ms(),
        during.share_within("0.1"),
        during.share_within("2.5"),
    );
    assert!(
        during.count > 5_000.0,
        "devices got few PUBACKs while Kafka was away: {}",
        during.count
    );
    assert!(
        during.share_within("5") > 99.0,
        "PUBACKs waited longer than the Kafka timeout (2 s) and an fsync"
    );
    every_acknowledged_reading_stored_once(&mut stack, fleet).await;
    let spooled = total(&stack, "warmhouse_bridge_spooled_total").await;
    assert!(
        spooled > 1000.0,
        "the outage should have gone through the spool: {spooled}"
    );
    let deadline = Instant::now() + SETTLE;
    while total(&stack, "warmhouse_bridge_spool_drained_total").await < spooled {
        assert!(Instant::now() < deadline, "the spool did not drain");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    stack.stop().await;
}

/// The `warmhouse_bridge_safe_wait_seconds` histogram of every replica.
struct SafeWait {
    count: f64,
    sum: f64,
    /// Observations at or below each bucket bound used here.
    within: Vec<(&'static str, f64)>,
}

impl SafeWait {
    const BOUNDS: [&'static str; 3] = ["0.1", "2.5", "5"];

    async fn read(stack: &Stack) -> Self {
        let name = "warmhouse_bridge_safe_wait_seconds";
        let mut within = Vec::new();
        for bound in Self::BOUNDS {
            let bucket = format!("{name}_bucket{{le=\"{bound}\"}}");
            within.push((bound, total(stack, &bucket).await));
        }
        Self {
            count: total(stack, &format!("{name}_count")).await,
            sum: total(stack, &format!("{name}_sum")).await,
            within,
        }
    }

    fn since(&self, earlier: &Self) -> Self {
        Self {
            count: self.count - earlier.count,
            sum: self.sum - earlier.sum,
            within: self
                .within
                .iter()
                .zip(&earlier.within)
                .map(|((bound, now), (_, then))| (*bound, now - then))
                .collect(),
        }
    }

    fn mean_ms(&self) -> f64 {
        if self.count > 0.0 {
            self.sum / self.count * 1000.0
        } else {
            0.0
        }
    }

    /// Percent of the observations at or below `bound` seconds.
    fn share_within(&self, bound: &str) -> f64 {
        let Some((_, n)) = self.within.iter().find(|(b, _)| *b == bound) else {
            panic!("no bucket {bound}");
        };
        if self.count > 0.0 {
            n / self.count * 100.0
        } else {
            0.0
        }
    }
}

/// A spool of 64 KiB fills within a second of Kafka going away: from then
/// on devices get no PUBACK (their in-flight windows fill and they hold
/// their backlog), and nothing is lost; when Kafka is back it all drains.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_full_spool_holds_pubacks_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let brokers = BrokerProcessConfig {
        spool_max_bytes: 64 << 10,
        ..processes()
    };
    let mut stack = stack(dir.path(), 1, brokers).await;
    let fleet = devices(&stack, "spool-full");
    tokio::time::sleep(Duration::from_secs(4)).await;
    stack.tansu.kill();
    // Wait until the spool is full and acknowledgements have stopped.
    let deadline = Instant::now() + Duration::from_secs(20);
    while total(&stack, "warmhouse_bridge_spool_full_waits_total").await < 1.0 {
        assert!(Instant::now() < deadline, "the spool never filled up");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Records already waiting on Kafka when it went time out (2 s) and
    // find the spool full too.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let released = total(&stack, "warmhouse_bridge_acked_total").await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        total(&stack, "warmhouse_bridge_acked_total").await,
        released,
        "PUBACKs went out while neither Kafka nor the spool could take a record"
    );
    assert!(total(&stack, "warmhouse_bridge_in_flight").await > 0.0);
    stack.tansu.start_again().expect("tansu starts again");
    every_acknowledged_reading_stored_once(&mut stack, fleet).await;
    stack.stop().await;
}

/// Every (device, seq) in the `telemetry` topic, read from the beginning of
/// every partition to its end.
fn telemetry_in_kafka(bootstrap: &str, partitions: i32) -> BTreeSet<(String, u64)> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "ingress-faults-reader")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .create()
        .expect("a Kafka consumer");
    let mut list = TopicPartitionList::new();
    for partition in 0..partitions {
        list.add_partition_offset(topics::TELEMETRY, partition, Offset::Beginning)
            .expect("partition offset");
    }
    consumer.assign(&list).expect("assign");
    let mut found = BTreeSet::new();
    let mut at_end = BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while at_end.len() < partitions as usize {
        assert!(
            Instant::now() < deadline,
            "could not read the telemetry topic to its end"
        );
        match consumer.poll(Duration::from_millis(500)) {
            Some(Ok(message)) => {
                let envelope = TelemetryEnvelope::decode(message.payload().unwrap_or_default())
                    .expect("a telemetry envelope");
                for sample in envelope.samples {
                    found.insert((envelope.device_id.to_string(), sample.seq));
                }
            }
            Some(Err(rdkafka::error::KafkaError::PartitionEOF(partition))) => {
                at_end.insert(partition);
            }
            Some(Err(err)) => panic!("reading telemetry: {err}"),
            None => {}
        }
    }
    found
}

/// Kafka (tansu in memory) restarts under load with a fresh metadata view:
/// everything it held is gone and the topics are created anew (new topic
/// ids), which used to crash librdkafka in every client
/// (vendor/rdkafka-sys/WARMHOUSE-PATCHES.md). Every service must stay up,
/// and every reading a device got its PUBACK for after the restart must be
/// in the new Kafka. (What tansu held in memory is lost by design; that the
/// ingest writer resumes the re-created topics from its old offsets is a
/// tansu limitation, ingest/tests/kafka_restart.rs.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_kafka_restart_with_a_fresh_metadata_view_keeps_every_service_up() {
    let dir = tempfile::tempdir().unwrap();
    let mut stack = stack_on(dir.path(), KafkaStorage::Memory, 1, processes()).await;
    let fleet = devices(&stack, "fresh-kafka");
    tokio::time::sleep(Duration::from_secs(4)).await;
    stack.tansu.kill();
    stack.tansu.start_again().expect("tansu starts again");
    let bootstrap = stack.tansu.bootstrap();
    create_topics(
        &bootstrap,
        &[
            topics::TELEMETRY,
            topics::DEVICE_EVENTS,
            topics::DEVICE_COMMANDS,
            topics::REGISTRY_EVENTS,
        ],
        StackOptions::default().partitions,
    )
    .await
    .expect("topics created again");
    create_topics(&bootstrap, &[topics::DEAD_LETTERS], 1)
        .await
        .expect("dead-letter topic created again");
    let restarted_ms = warmhouse_service_kit::now_ms();
    let written_at_restart = stack.writer.metrics.points_written.get();

    let summary = match tokio::time::timeout(RUN_PATIENCE, fleet).await {
        Ok(done) => done.expect("simulator task").expect("simulator run"),
        Err(_) => panic!("the fleet did not finish within {RUN_PATIENCE:?}"),
    };
    for broker in &mut stack.broker_processes {
        broker
            .check_alive()
            .expect("the broker replica survived the restart");
    }
    assert_eq!(summary.messages_unacked, 0, "{summary:?}");
    // The writer (in this process: a crash would have ended the test) goes on.
    let deadline = Instant::now() + SETTLE;
    while stack.writer.metrics.points_written.get() <= written_at_restart {
        assert!(
            Instant::now() < deadline,
            "the ingest writer wrote nothing after the restart"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let after: Vec<(String, u64)> = summary
        .published
        .iter()
        .flat_map(|m| {
            m.samples
                .iter()
                .filter(|s| s.ts > restarted_ms)
                .map(|s| (m.device_id.to_string(), s.seq))
        })
        .collect();
    assert!(
        after.len() > 5_000,
        "too little load after the restart: {}",
        after.len()
    );
    let bootstrap = stack.tansu.bootstrap();
    let partitions = StackOptions::default().partitions;
    let in_kafka = tokio::task::spawn_blocking(move || telemetry_in_kafka(&bootstrap, partitions))
        .await
        .expect("reader task");
    let missing: Vec<_> = after.iter().filter(|r| !in_kafka.contains(r)).collect();
    assert!(
        missing.is_empty(),
        "{} of {} readings acknowledged after the restart are not in Kafka, e.g. {:?}",
        missing.len(),
        after.len(),
        missing.first()
    );
    stack.stop().await;
}
