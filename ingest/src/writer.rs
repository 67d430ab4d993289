//! The write side: Kafka `telemetry` to InfluxDB.
//!
//! Envelopes are turned into line protocol as they arrive and gathered into
//! a batch, flushed when it holds `batch_max_points` points or is
//! `batch_max_delay_ms` old. A batch is gzipped and written; only when
//! InfluxDB accepted it are its offsets stored for commit. While InfluxDB is
//! down a write retries with backoff, no new batch starts once
//! `max_concurrent_writes` are pending, and consumption stops
//! (backpressure). Writes are idempotent (docs/adr/0004-point-identity-and-idempotent-writes.md), so a batch
//! redelivered after a crash overwrites itself.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::Context;
use flate2::write::GzEncoder;
use futures::stream::{FuturesOrdered, StreamExt};
use influxdb_line_protocol::builder::LineProtocolBuilder;
use prometheus::{Histogram, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Registry};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use rdkafka::{Offset, TopicPartitionList};
use warmhouse_contracts::kafka::DeadLetter;
use warmhouse_contracts::points::points;
use warmhouse_contracts::telemetry::TelemetryEnvelope;
use warmhouse_service_kit::args::{
    DeadLettersTopic, InfluxArgs, KafkaArgs, LogArgs, TelemetryTopic,
};
use warmhouse_service_kit::kafka::{
    group_consumer_config, producer_config, ClosedOffRuntime, Idempotence,
};
use warmhouse_service_kit::metrics::{counter, counter_vec, gauge, gauge_vec, histogram};
use warmhouse_service_kit::{admin_router, now_ms, serve, Lifecycle, Readiness, Running};

use crate::influx::{InfluxClient, InfluxSettings, WriteError};

pub const DEFAULT_GROUP: &str = "warmhouse-ingest";
pub const DEFAULT_RAW_RETENTION: &str = "30d";
pub const DEFAULT_ROLLUP_RETENTION: &str = "104w";
pub const DEFAULT_BATCH_MAX_POINTS: usize = 20_000;
pub const DEFAULT_BATCH_MAX_DELAY_MS: u64 = 100;
pub const DEFAULT_MAX_CONCURRENT_WRITES: usize = 2;
pub const DEFAULT_LAG_INTERVAL_MS: u64 = 5_000;
pub const DEFAULT_ADMIN_LISTEN: &str = "0.0.0.0:9185";

/// Configuration; every option is also an environment variable. Tests
/// start from [`Default`] (or [`WriterConfig::new`]) and override fields, so
/// what they run never depends on the shell's environment.
#[derive(clap::Parser, Debug, Clone, PartialEq, Eq)]
#[command(
    name = "ingest-writer",
    about = "Warmhouse ingest: Kafka telemetry to InfluxDB"
)]
pub struct WriterConfig {
    #[command(flatten)]
    pub kafka: KafkaArgs,
    #[arg(long, env = "WARMHOUSE_INGEST_GROUP", default_value = DEFAULT_GROUP)]
    pub group_id: String,
    #[command(flatten)]
    pub telemetry_topic: TelemetryTopic,
    #[command(flatten)]
    pub dead_letters_topic: DeadLettersTopic,
    #[command(flatten)]
    pub influx: InfluxArgs,
    /// How long raw readings are kept (InfluxQL duration).
    #[arg(
        long,
        env = "WARMHOUSE_INFLUX_RAW_RETENTION",
        default_value = DEFAULT_RAW_RETENTION
    )]
    pub raw_retention: String,
    /// How long hourly rollups are kept.
    #[arg(
        long,
        env = "WARMHOUSE_INFLUX_ROLLUP_RETENTION",
        default_value = DEFAULT_ROLLUP_RETENTION
    )]
    pub rollup_retention: String,
    /// Flush a batch when it holds this many points ...
    #[arg(
        long,
        env = "WARMHOUSE_INGEST_BATCH_MAX_POINTS",
        default_value_t = DEFAULT_BATCH_MAX_POINTS
    )]
    pub batch_max_points: usize,
    /// ... or when its first point is this old.
    #[arg(
        long,
        env = "WARMHOUSE_INGEST_BATCH_MAX_DELAY_MS",
        default_value_t = DEFAULT_BATCH_MAX_DELAY_MS
    )]
    pub batch_max_delay_ms: u64,
    /// Batches being written at once; beyond that consumption waits.
    #[arg(
        long,
        env = "WARMHOUSE_INGEST_MAX_CONCURRENT_WRITES",
        default_value_t = DEFAULT_MAX_CONCURRENT_WRITES
    )]
    pub max_concurrent_writes: usize,
    /// How often the consumer lag (`warmhouse_ingest_consumer_lag`) is read
    /// from Kafka; 0 turns it off.
    #[arg(
        long,
        env = "WARMHOUSE_INGEST_LAG_INTERVAL_MS",
        default_value_t = DEFAULT_LAG_INTERVAL_MS
    )]
    pub lag_interval_ms: u64,
    #[arg(
        long,
        env = "WARMHOUSE_INGEST_ADMIN_LISTEN",
        default_value = DEFAULT_ADMIN_LISTEN
    )]
    pub admin_listen: SocketAddr,
    /// Logging: `--log-filter` (`RUST_LOG`), `--log-format`
    /// (`WARMHOUSE_LOG_FORMAT`).
    #[command(flatten)]
    pub log: LogArgs,
}

impl Default for WriterConfig {
    /// What the flags default to, without reading arguments or environment.
    fn default() -> Self {
        Self {
            kafka: KafkaArgs::default(),
            group_id: DEFAULT_GROUP.into(),
            telemetry_topic: TelemetryTopic::default(),
            dead_letters_topic: DeadLettersTopic::default(),
            influx: InfluxArgs::default(),
            raw_retention: DEFAULT_RAW_RETENTION.into(),
            rollup_retention: DEFAULT_ROLLUP_RETENTION.into(),
            batch_max_points: DEFAULT_BATCH_MAX_POINTS,
            batch_max_delay_ms: DEFAULT_BATCH_MAX_DELAY_MS,
            max_concurrent_writes: DEFAULT_MAX_CONCURRENT_WRITES,
            lag_interval_ms: DEFAULT_LAG_INTERVAL_MS,
            admin_listen: SocketAddr::from(([0, 0, 0, 0], 9185)),
            log: LogArgs::default(),
        }
    }
}

impl WriterConfig {
    /// Defaults with the given endpoints and the admin endpoint on a free
    /// loopback port: for tests and embedding. Reads no environment.
    pub fn new(kafka_bootstrap: &str, influx_url: &str) -> Self {
        Self {
            kafka: KafkaArgs::new(kafka_bootstrap),
            influx: InfluxArgs::new(influx_url),
            admin_listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            ..Self::default()
        }
    }
}

/// The writer's Prometheus metrics (prefix `warmhouse_ingest_`).
#[derive(Clone)]
pub struct WriterMetrics {
    pub consumed: IntCounter,
    pub points_written: IntCounter,
    pub batches_written: IntCounter,
    pub write_failures: IntCounterVec,
    pub dead_lettered: IntCounter,
    pub batch_seconds: Histogram,
    pub pending_writes: IntGauge,
    pub last_write_ms: IntGauge,
    pub consumer_lag: IntGaugeVec,
}

impl WriterMetrics {
    fn new(registry: &Registry) -> anyhow::Result<Self> {
        let p = "warmhouse_ingest_";
        Ok(Self {
            consumed: counter(registry, format!("{p}consumed_total"), "Kafka records consumed")?,
            points_written: counter(registry, format!("{p}points_written_total"), "Points InfluxDB accepted")?,
            batches_written: counter(registry, format!("{p}batches_written_total"), "Batches InfluxDB accepted")?,
            write_failures: counter_vec(registry, format!("{p}write_failures_total"), "Failed InfluxDB writes, by kind (unavailable: retried; refused: dead-lettered)", &["kind"])?,
            dead_lettered: counter(registry, format!("{p}dead_lettered_total"), "Records or batches sent to the dead-letter topic")?,
            batch_seconds: histogram(registry, format!("{p}batch_write_seconds"), "Time to write one batch, retries included", Some(prometheus::exponential_buckets(0.005, 2.0, 14)?))?,
            pending_writes: gauge(registry, format!("{p}pending_writes"), "Batches being written")?,
            last_write_ms: gauge(registry, format!("{p}last_write_timestamp_ms"), "When InfluxDB last accepted a batch")?,
            consumer_lag: gauge_vec(registry, format!("{p}consumer_lag"), "Telemetry records in Kafka the writer's group has not committed (not yet in InfluxDB), by partition", &["partition"])?,
        })
    }
}

/// What a running writer exposes.
pub struct WriterParts {
    pub admin_addr: SocketAddr,
    pub metrics: WriterMetrics,
}

/// A running writer: [`Running::wait`] returns once it has stopped (after
/// its shutdown future resolved and the batches in flight were written and
/// committed).
pub type RunningWriter = Running<WriterParts>;

/// A batch being gathered: line protocol, its size, the next offset of every
/// partition it covers, and the age of its first record.
#[derive(Default)]
struct Batch {
    lines: Vec<u8>,
    points: usize,
    first_offsets: BTreeMap<(String, i32), i64>,
    next_offsets: BTreeMap<(String, i32), i64>,
    started: Option<Instant>,
}

impl Batch {
    fn add_envelope(&mut self, envelope: &TelemetryEnvelope) {
        let mut builder = LineProtocolBuilder::new_with(std::mem::take(&mut self.lines));
        for point in points(envelope) {
            // Tags in key order, as InfluxDB stores them.
            builder = builder
                .measurement(point.measurement.as_str())
                .tag("device_id", point.device_id)
                .tag("device_type", point.device_type)
                .tag("home_id", point.home_id)
                .field("seq", point.seq)
                .field("value", point.value)
                .timestamp(point.timestamp_ns)
                .close_line();
            self.points += 1;
        }
        self.lines = builder.build();
    }

    fn covers(&mut self, topic: &str, partition: i32, offset: i64) {
        self.started.get_or_insert_with(Instant::now);
        let key = (topic.to_string(), partition);
        self.first_offsets.entry(key.clone()).or_insert(offset);
        self.next_offsets.insert(key, offset + 1);
    }

    fn is_empty(&self) -> bool {
        self.started.is_none()
    }
}

/// Starts the writer on the current Tokio runtime; it runs until
/// `shutdown` resolves.
pub async fn start(
    config: WriterConfig,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<RunningWriter> {
    let registry = Registry::new();
    let metrics = WriterMetrics::new(&registry)?;
    let readiness = Readiness::new();
    let influx = influx_client(&config).await?;
    let consumer = telemetry_consumer(&config)?;
    let producer = dead_letter_producer(&config)?;

    let mut lifecycle = Lifecycle::new("ingest writer");
    lifecycle.stop_on(shutdown);
    // Not stopped with the stop signal: /metrics keeps answering while the
    // writer finishes its batches in flight.
    let (admin_addr, admin) = serve(
        config.admin_listen,
        admin_router(registry, readiness.clone()),
        std::future::pending(),
    )
    .await?;
    lifecycle.adopt([admin]);
    readiness.set("influxdb", true);
    if let Some(lag) = spawn_lag_probe(&config, &metrics)? {
        lifecycle.adopt([lag]);
    }
    let writer = Writer {
        config,
        consumer: ClosedOffRuntime::new(consumer),
        producer,
        influx,
        metrics: metrics.clone(),
        readiness,
    };
    lifecycle.spawn_graceful(writer.run(lifecycle.stopped()));
    Ok(lifecycle.running(WriterParts {
        admin_addr,
        metrics,
    }))
}

/// The InfluxDB client, with the database and retention policies made.
async fn influx_client(config: &WriterConfig) -> anyhow::Result<InfluxClient> {
    let mut settings = InfluxSettings::new(&config.influx.url, &config.influx.database);
    settings.raw_retention = config.raw_retention.clone();
    settings.rollup_retention = config.rollup_retention.clone();
    let influx = InfluxClient::new(settings)?;
    influx
        .ensure_schema()
        .await
        .context("preparing the InfluxDB database and retention policies")?;
    Ok(influx)
}

/// The telemetry topic's consumer. Offsets are stored by hand, only after
/// InfluxDB took the batch.
fn telemetry_consumer(config: &WriterConfig) -> anyhow::Result<StreamConsumer> {
    let consumer: StreamConsumer = group_consumer_config(
        &config.kafka.bootstrap,
        &config.group_id,
        Duration::from_millis(20),
    )
    .create()
    .context("creating Kafka consumer")?;
    consumer
        .subscribe(&[&config.telemetry_topic.name])
        .with_context(|| format!("subscribing to {}", config.telemetry_topic.name))?;
    Ok(consumer)
}

/// Not idempotent: after a refused batch an idempotent producer bumps its
/// epoch, which tansu cannot take (see the edge bridge's kafka.rs), and
/// this one is never replaced. A dead letter sent twice is harmless. It
/// reconnects within a second like every other client (it had librdkafka's
/// 10 s backoff before it was built on the shared settings).
fn dead_letter_producer(config: &WriterConfig) -> anyhow::Result<FutureProducer> {
    producer_config(&config.kafka.bootstrap, Idempotence::Off)
        .create()
        .context("creating dead-letter producer")
}

/// Keeps the consumer-lag gauge current, unless turned off.
fn spawn_lag_probe(
    config: &WriterConfig,
    metrics: &WriterMetrics,
) -> anyhow::Result<Option<tokio::task::JoinHandle<()>>> {
    if config.lag_interval_ms == 0 {
        return Ok(None);
    }
    let probe = crate::lag::LagProbe::new(
        &config.kafka.bootstrap,
        &config.group_id,
        &config.telemetry_topic.name,
    )?;
    Ok(Some(crate::lag::spawn(
        probe,
        metrics.consumer_lag.clone(),
        Duration::from_millis(config.lag_interval_ms),
    )))
}

struct Writer {
    config: WriterConfig,
    consumer: ClosedOffRuntime,
    producer: FutureProducer,
    influx: InfluxClient,
    metrics: WriterMetrics,
    readiness: Readiness,
}

impl Writer {
    async fn run(self, shutdown: impl std::future::Future<Output = ()>) {
        tokio::pin!(shutdown);
        let max_delay = Duration::from_millis(self.config.batch_max_delay_ms);
        let mut batch = Batch::default();
        let mut writes = FuturesOrdered::new();
        loop {
            let deadline = batch
                .started
                .map(|s| tokio::time::Instant::from_std(s + max_delay))
                .unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(3600));
            let can_flush = writes.len() < self.config.max_concurrent_writes;
            tokio::select! {
                biased;
                _ = &mut shutdown => break,
                Some(done) = writes.next(), if !writes.is_empty() => self.finish(done),
                _ = tokio::time::sleep_until(deadline), if !batch.is_empty() && can_flush => {
                    writes.push_back(self.write(std::mem::take(&mut batch)));
                }
                message = self.consumer.recv(), if batch.points < self.config.batch_max_points => {
                    match message {
                        Ok(message) => self.take(&mut batch, &message).await,
                        Err(err) => tracing::warn!(%err, "Kafka consumer error"),
                    }
                }
            }
            if batch.points >= self.config.batch_max_points
                && writes.len() < self.config.max_concurrent_writes
            {
                writes.push_back(self.write(std::mem::take(&mut batch)));
            }
            self.metrics.pending_writes.set(writes.len() as i64);
        }
        // Finish what is in flight so its offsets are committed; what is only
        // gathered is left for the next run (it is not committed).
        while let Some(done) = writes.next().await {
            self.finish(done);
        }
        // Dropping `self.consumer` closes it off the runtime (see
        // ClosedOffRuntime), committing the stored offsets.
    }

    async fn take(&self, batch: &mut Batch, message: &rdkafka::message::BorrowedMessage<'_>) {
        self.metrics.consumed.inc();
        let payload = message.payload().unwrap_or_default();
        match TelemetryEnvelope::decode(payload) {
            Ok(envelope) => batch.add_envelope(&envelope),
            Err(err) => {
                let source = format!(
                    "kafka:{}/{}@{}",
                    message.topic(),
                    message.partition(),
                    message.offset()
                );
                tracing::warn!(%source, %err, "undecodable telemetry record: dead-lettering it");
                self.dead_letter(DeadLetter::new(
                    err.kind(),
                    err.to_string(),
                    source,
                    now_ms(),
                    payload,
                ))
                .await;
            }
        }
        batch.covers(message.topic(), message.partition(), message.offset());
    }

    async fn dead_letter(&self, letter: DeadLetter) {
        produce_dead_letter(
            &self.producer,
            &self.config.dead_letters_topic.name,
            &letter,
            &self.metrics,
        )
        .await;
    }

    /// Writes one batch, retrying while InfluxDB is unavailable. Resolves to
    /// the offsets to store.
    fn write(
        &self,
        batch: Batch,
    ) -> impl std::future::Future<Output = BTreeMap<(String, i32), i64>> + use<> {
        // Owned, so the write runs while the next batch is gathered.
        let sink = BatchSink {
            influx: self.influx.clone(),
            metrics: self.metrics.clone(),
            readiness: self.readiness.clone(),
            producer: self.producer.clone(),
            dead_letters: self.config.dead_letters_topic.name.clone(),
        };
        async move {
            let started = Instant::now();
            let Batch {
                lines,
                points,
                first_offsets,
                next_offsets,
                ..
            } = batch;
            if points > 0 {
                let Some(gz) = gzip_off_runtime(lines).await else {
                    return next_offsets;
                };
                sink.store(gz, points, &first_offsets, &next_offsets).await;
            }
            sink.metrics
                .batch_seconds
                .observe(started.elapsed().as_secs_f64());
            next_offsets
        }
    }

    fn finish(&self, next_offsets: BTreeMap<(String, i32), i64>) {
        let mut list = TopicPartitionList::new();
        for ((topic, partition), offset) in &next_offsets {
            if let Err(err) = list.add_partition_offset(topic, *partition, Offset::Offset(*offset))
            {
                tracing::warn!(%err, "bad offset");
            }
        }
        // Fails only for partitions this consumer no longer owns (after a
        // rebalance); their records are redelivered and overwrite themselves.
        if let Err(err) = self.consumer.store_offsets(&list) {
            tracing::warn!(%err, "cannot store offsets; the records will be written again");
        }
    }
}

/// What writing a batch needs, cloned from the [`Writer`] for each batch.
struct BatchSink {
    influx: InfluxClient,
    metrics: WriterMetrics,
    readiness: Readiness,
    producer: FutureProducer,
    dead_letters: String,
}

impl BatchSink {
    /// Writes the gzipped batch until InfluxDB takes it or refuses it; a
    /// refused batch is dead-lettered (retrying it would block the partition
    /// forever).
    async fn store(
        &self,
        gz: Vec<u8>,
        points: usize,
        first_offsets: &BTreeMap<(String, i32), i64>,
        next_offsets: &BTreeMap<(String, i32), i64>,
    ) {
        let mut backoff = Duration::from_millis(100);
        loop {
            match self.influx.write_gzip(gz.clone()).await {
                Ok(()) => {
                    self.readiness.set("influxdb", true);
                    self.metrics.points_written.inc_by(points as u64);
                    self.metrics.batches_written.inc();
                    self.metrics.last_write_ms.set(now_ms());
                    return;
                }
                Err(WriteError::Unavailable(reason)) => {
                    self.readiness.set("influxdb", false);
                    self.metrics
                        .write_failures
                        .with_label_values(&["unavailable"])
                        .inc();
                    tracing::warn!(%reason, "InfluxDB unavailable, retrying in {backoff:?}");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
                Err(WriteError::Refused { status, body }) => {
                    let source = batch_source(first_offsets, next_offsets);
                    self.dead_letter_refused(status, &body, source).await;
                    return;
                }
            }
        }
    }

    /// With "partial write" InfluxDB stored all but the refused points.
    /// Either way the dead letter names the Kafka offsets of the batch (the
    /// records stay there to replay) and InfluxDB's reason.
    async fn dead_letter_refused(&self, status: u16, body: &str, source: String) {
        let kind = if body.contains("partial write") {
            "influx_partial_write"
        } else {
            "influx_refused"
        };
        self.metrics.write_failures.with_label_values(&[kind]).inc();
        tracing::error!(status, %body, kind, "InfluxDB refused points: dead-lettering the batch's offsets");
        let letter = DeadLetter::new(
            kind,
            format!("InfluxDB answered {status}: {body}"),
            source,
            now_ms(),
            body.as_bytes(),
        );
        produce_dead_letter(&self.producer, &self.dead_letters, &letter, &self.metrics).await;
    }
}

/// `kafka:{topic}/{partition}@{first}..{next}` for every partition a batch
/// covers, comma-separated: where its records can be replayed from.
fn batch_source(
    first_offsets: &BTreeMap<(String, i32), i64>,
    next_offsets: &BTreeMap<(String, i32), i64>,
) -> String {
    first_offsets
        .iter()
        .filter_map(|(tp, first)| {
            next_offsets
                .get(tp)
                .map(|next| format!("kafka:{}/{}@{first}..{next}", tp.0, tp.1))
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// Produces a dead letter, retrying until Kafka takes it: the offsets it
/// accounts for are committed right after, so it must not be lost.
async fn produce_dead_letter(
    producer: &FutureProducer,
    topic: &str,
    letter: &DeadLetter,
    metrics: &WriterMetrics,
) {
    let payload = letter.to_json();
    let mut backoff = Duration::from_millis(100);
    loop {
        let record = FutureRecord::<str, [u8]>::to(topic).payload(&payload);
        match producer.send(record, Timeout::Never).await {
            Ok(_) => {
                metrics.dead_lettered.inc();
                return;
            }
            Err((err, _)) => {
                tracing::warn!(%err, "cannot produce a dead letter yet, retrying in {backoff:?}");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// Gzips a batch on a blocking thread (it can be megabytes); `None`, logged,
/// when that fails, which for an in-memory buffer it cannot in practice.
async fn gzip_off_runtime(lines: Vec<u8>) -> Option<Vec<u8>> {
    let compressed = tokio::task::spawn_blocking(move || gzip(&lines))
        .await
        .map_err(anyhow::Error::from)
        .and_then(|result| result);
    match compressed {
        Ok(gz) => Some(gz),
        Err(err) => {
            tracing::error!("gzip failed: {err:#}");
            None
        }
    }
}

fn gzip(lines: &[u8]) -> anyhow::Result<Vec<u8>> {
    let mut encoder = GzEncoder::new(
        Vec::with_capacity(lines.len() / 4),
        flate2::Compression::fast(),
    );
    encoder.write_all(lines).context("compressing batch")?;
    encoder.finish().context("compressing batch")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_is_what_the_flags_declare() {
        let declared: WriterConfig =
            warmhouse_service_kit::testing::clap_defaults().expect("the declared defaults parse");
        assert_eq!(WriterConfig::default(), declared);
    }

    #[test]
    fn envelope_becomes_one_line_per_reading() {
        let envelope = TelemetryEnvelope::decode(
            br#"{"v":1,"device_id":"d1","home_id":"h1","device_type":"thermostat","received_at_ms":1,
                "samples":[{"seq":7,"ts":1764000000123,"values":{"temperature":21.5,"heating_on":1}}]}"#,
        )
        .unwrap();
        let mut batch = Batch::default();
        batch.add_envelope(&envelope);
        batch.add_envelope(&envelope);
        let text = String::from_utf8(batch.lines).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(batch.points, 4);
        assert_eq!(
            lines[0],
            "heating_on,device_id=d1,device_type=thermostat,home_id=h1 seq=7i,value=1 1764000000123000007"
        );
        assert_eq!(
            lines[1],
            "temperature,device_id=d1,device_type=thermostat,home_id=h1 seq=7i,value=21.5 1764000000123000007"
        );
        assert_eq!(lines[2], lines[0]);
    }

    #[test]
    fn batch_tracks_next_offset_per_partition() {
        let mut batch = Batch::default();
        assert!(batch.is_empty());
        batch.covers("telemetry", 0, 5);
        batch.covers("telemetry", 1, 9);
        batch.covers("telemetry", 0, 6);
        assert_eq!(batch.next_offsets[&("telemetry".to_string(), 0)], 7);
        assert_eq!(batch.next_offsets[&("telemetry".to_string(), 1)], 10);
        assert!(!batch.is_empty());
    }

    #[test]
    fn gzip_round_trips() {
        use std::io::Read;
        let gz = gzip(b"m v=1 1\n").unwrap();
        let mut out = String::new();
        flate2::read::GzDecoder::new(gz.as_slice())
            .read_to_string(&mut out)
            .unwrap();
        assert_eq!(out, "m v=1 1\n");
    }
}
