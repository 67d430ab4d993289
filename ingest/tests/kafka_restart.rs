//! The ingest writer across restarts of its Kafka broker (tansu), with real
//! processes: tansu, influxd, and the `ingest-writer` binary as a child
//! process, so that a crash inside librdkafka (a signal) shows as the
//! writer's exit status instead of killing the test.
//!
//! A producer in the test sends telemetry records all along, before, during
//! and after each restart. The writer must stay alive and keep writing what
//! is produced after each restart.
//!
//! A tansu on memory storage comes back empty and its topics are created
//! again with new ids. It answers a fetch of a topic it does not know (not
//! created yet, or asked for by its old id) with "unknown topic", a zero
//! topic id and a current-leader hint, which crashed librdkafka 2.12.1
//! (SIGSEGV in `rd_kafka_metadata_update_op`, every time here;
//! vendor/rdkafka-sys/WARMHOUSE-PATCHES.md).

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::stream::{FuturesUnordered, StreamExt};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;
use warmhouse_devstack::{create_topics, free_port, ChildProcess, Influxd, KafkaStorage, Tansu};
use warmhouse_ingest::influx::{InfluxClient, InfluxSettings};

const TELEMETRY: &str = "telemetry";
const DEAD_LETTERS: &str = "dead-letters";
const PARTITIONS: i32 = 4;
const DATABASE: &str = "warmhouse";
/// Records the producer sends per 10 ms tick: 2,000 a second.
const PER_TICK: u64 = 20;
/// Records produced after a restart that must reach InfluxDB before the
/// next step: two seconds of load.
const AFTER_EACH_RESTART: u64 = 4_000;

/// The writer binary of this crate, as a child process.
fn start_writer(dir: &Path, bootstrap: &str, influx_url: &str) -> ChildProcess {
    let admin = SocketAddr::from(([127, 0, 0, 1], free_port().unwrap()));
    let mut command = Command::new(env!("CARGO_BIN_EXE_ingest-writer"));
    command
        .env("WARMHOUSE_KAFKA_BOOTSTRAP", bootstrap)
        .env("WARMHOUSE_INFLUX_URL", influx_url)
        .env("WARMHOUSE_INFLUX_DATABASE", DATABASE)
        .env("WARMHOUSE_INGEST_GROUP", "restart-test")
        .env("WARMHOUSE_INGEST_ADMIN_LISTEN", admin.to_string())
        // Its own Kafka client too, asking for metadata and offsets.
        .env("WARMHOUSE_INGEST_LAG_INTERVAL_MS", "1000")
        .env("RUST_LOG", "info");
    ChildProcess::spawn("ingest-writer", command, &dir.join("writer.log")).unwrap()
}

/// One telemetry envelope per record: one reading, its `seq` numbering the
/// record, its timestamp unique to it.
fn envelope(seq: u64, base_ms: i64) -> String {
    format!(
        r#"{{"v":1,"device_id":"dev-{device}","home_id":"home-1","device_type":"thermostat","received_at_ms":{ts},"samples":[{{"seq":{seq},"ts":{ts},"values":{{"temperature":21.5}}}}]}}"#,
        device = seq % 16,
        ts = base_ms + seq as i64,
    )
}

/// What the producer did: records `0..sent` were handed to Kafka, of which
/// `failed` were not acknowledged (number and error).
struct Produced {
    sent: u64,
    failed: Vec<(u64, String)>,
}

/// Produces records at a steady rate until `stop`, numbering them from 0;
/// `next_seq` is the number of the next one.
fn spawn_producer(
    bootstrap: &str,
    next_seq: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<Produced> {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("acks", "all")
        // Not idempotent: tansu cannot follow an idempotent producer across
        // its own restart (see the edge bridge's kafka.rs). A record sent
        // twice is one point in InfluxDB.
        .set("enable.idempotence", "false")
        .set("linger.ms", "5")
        .set("message.timeout.ms", "60000")
        .set("reconnect.backoff.max.ms", "500")
        .create()
        .unwrap();
    let base_ms = warmhouse_service_kit::now_ms() - 3_600_000;
    tokio::spawn(async move {
        let mut pending = FuturesUnordered::new();
        let mut failed = Vec::new();
        let mut tick = tokio::time::interval(Duration::from_millis(10));
        while !stop.load(Ordering::SeqCst) {
            tokio::select! {
                _ = tick.tick() => {
                    for _ in 0..PER_TICK {
                        let seq = next_seq.fetch_add(1, Ordering::SeqCst);
                        let payload = envelope(seq, base_ms);
                        let key = format!("dev-{}", seq % 16);
                        let producer = producer.clone();
                        pending.push(async move {
                            let record = FutureRecord::to(TELEMETRY).key(&key).payload(&payload);
                            let result = producer.send(record, Duration::from_secs(5)).await;
                            (seq, result.err().map(|(err, _)| err.to_string()))
                        });
                    }
                }
                Some((seq, err)) = pending.next(), if !pending.is_empty() => {
                    failed.extend(err.map(|err| (seq, err)));
                }
            }
        }
        while let Some((seq, err)) = pending.next().await {
            failed.extend(err.map(|err| (seq, err)));
        }
        Produced {
            sent: next_seq.load(Ordering::SeqCst),
            failed,
        }
    })
}

/// Points in InfluxDB of records numbered `from` or more.
async fn stored_from(influx: &InfluxClient, from: u64) -> u64 {
    let query = format!(r#"SELECT count("value") FROM "raw"."temperature" WHERE "seq" >= {from}"#);
    let Ok(results) = influx.query(&query).await else {
        return 0;
    };
    results
        .first()
        .and_then(|r| r.series.first())
        .and_then(|s| s.values.first())
        .and_then(|row| row.get(1))
        .and_then(|v| v.as_u64())
        .unwrap_or(0)
}

/// Fails the test with the writer's exit status and log when it is gone.
fn assert_alive(writer: &mut ChildProcess, when: &str) {
    if let Err(err) = writer.check_alive() {
        panic!("the ingest writer died {when}: {err:#}");
    }
}

/// Waits until InfluxDB holds `want` points of records numbered `from` or
/// more, checking all along that the writer is alive.
async fn wait_stored(
    influx: &InfluxClient,
    writer: &mut ChildProcess,
    from: u64,
    want: u64,
    when: &str,
) {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        assert_alive(writer, when);
        let stored = stored_from(influx, from).await;
        if stored >= want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{when}: only {stored} of {want} records from #{from} reached InfluxDB; writer log:\n{}",
            writer.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// What a run leaves for its checks; dropping it stops every process.
struct Run {
    produced: Produced,
    /// The first record produced after the last restart.
    after_restart: u64,
    influx: InfluxClient,
    writer: ChildProcess,
    _tansu: Tansu,
    _influxd: Influxd,
    _dir: tempfile::TempDir,
}

/// Kills tansu while records flow and starts it again on the same port and
/// storage, `restarts` times; a tansu on memory storage gets its topics
/// created again right away. (Were they created later, the writer's group
/// could rejoin while its topic is missing: librdkafka then assigns it no
/// partitions and does not rejoin when the topic is back with as many
/// partitions as before, so the writer idles.) After every restart the
/// writer must be alive and write records produced after it.
async fn restart_under_load(storage: KafkaStorage, restarts: usize) -> Run {
    let dir = tempfile::tempdir().unwrap();
    let influxd = Influxd::start(&dir.path().join("influxd")).unwrap();
    let mut tansu = Tansu::start(&dir.path().join("kafka"), storage).unwrap();
    let bootstrap = tansu.bootstrap();
    create_topics(&bootstrap, &[TELEMETRY, DEAD_LETTERS], PARTITIONS)
        .await
        .unwrap();
    let mut writer = start_writer(dir.path(), &bootstrap, &influxd.url());
    let influx = InfluxClient::new(InfluxSettings::new(influxd.url(), DATABASE)).unwrap();

    let next_seq = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let producer = spawn_producer(&bootstrap, next_seq.clone(), stop.clone());

    // The writer consumes and writes before the first restart.
    wait_stored(&influx, &mut writer, 0, 2_000, "before any restart").await;

    let mut after_restart = 0;
    for restart in 1..=restarts {
        tansu.kill();
        tokio::time::sleep(Duration::from_secs(1)).await;
        tansu.start_again().unwrap();
        after_restart = next_seq.load(Ordering::SeqCst);
        if storage == KafkaStorage::Memory {
            create_topics(&bootstrap, &[TELEMETRY, DEAD_LETTERS], PARTITIONS)
                .await
                .unwrap();
        }
        let when = format!("after restart {restart} of {restarts} ({storage:?})");
        wait_stored(
            &influx,
            &mut writer,
            after_restart,
            AFTER_EACH_RESTART,
            &when,
        )
        .await;
    }

    stop.store(true, Ordering::SeqCst);
    let produced = producer.await.unwrap();
    let lost: Vec<&(u64, String)> = produced
        .failed
        .iter()
        .filter(|(seq, _)| *seq >= after_restart)
        .collect();
    assert!(
        lost.is_empty(),
        "Kafka did not acknowledge {} records produced after the last restart, e.g. {:?}",
        lost.len(),
        &lost[..lost.len().min(5)]
    );
    Run {
        produced,
        after_restart,
        influx,
        writer,
        _tansu: tansu,
        _influxd: influxd,
        _dir: dir,
    }
}

/// SQLite keeps the topics, the records and the group's offsets across a
/// restart: every record produced after the last restart is written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writer_writes_everything_across_restarts_of_sqlite_tansu() {
    let mut run = restart_under_load(KafkaStorage::Sqlite, 2).await;
    let want = run.produced.sent - run.after_restart;
    wait_stored(
        &run.influx,
        &mut run.writer,
        run.after_restart,
        want,
        "storing every record produced after the last restart",
    )
    .await;
    // Not more than was produced: the count is of distinct records.
    assert_eq!(stored_from(&run.influx, run.after_restart).await, want);
    assert_alive(&mut run.writer, "at the end");
}

/// A tansu on memory storage loses everything, its topics too, and the
/// writer's fetches meet a broker that does not know them until they are
/// created again. The writer survives every restart and writes what is
/// produced after it (checked in `restart_under_load`).
///
/// Not necessarily all of it: the consumer commits the offsets it had
/// reached in the lost partitions to the new broker (tansu 0.6 takes a
/// commit from a member of a group it no longer knows) and starts there on
/// its next assignment, and tansu, unlike Kafka, answers a fetch past the
/// end of a partition with no error, so `auto.offset.reset` never applies:
/// the first records of each new partition are skipped. A durable Kafka
/// (SQLite above) has neither problem.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writer_survives_restarts_of_memory_tansu_with_topics_recreated() {
    let mut run = restart_under_load(KafkaStorage::Memory, 4).await;
    assert_alive(&mut run.writer, "at the end");
}
