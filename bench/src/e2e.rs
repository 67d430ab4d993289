//! Phase 3 (and 4): the whole pipeline under a target load. The simulator
//! publishes, a probe device measures publish-to-queryable latency through
//! the REST API, InfluxDB is counted afterwards to check that every
//! acknowledged reading is stored exactly once, and `/proc` tells where the
//! CPU went.

use std::collections::{BTreeMap, VecDeque};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use warmhouse_ingest::influx::{InfluxClient, InfluxSettings};
use warmhouse_simulator::DeviceKind;

use super::cpu;
use warmhouse_devstack::KafkaStorage;
use warmhouse_stack::{Stack, StackOptions};

#[derive(Debug, Clone)]
pub struct E2eOptions {
    pub duration: Duration,
    pub devices: u32,
    pub interval_ms: u64,
    pub samples: usize,
    pub batch_points: usize,
    pub perf: bool,
    pub kafka_storage: KafkaStorage,
    /// tansu brokers: more than one form a cluster (docs/adr/0018).
    pub kafka_brokers: usize,
    /// MQTT broker replicas; the simulator spreads its devices over them.
    pub broker_replicas: usize,
}

impl E2eOptions {
    /// Readings a second the simulator is asked for (`None` when it publishes
    /// as fast as it can).
    pub fn offered_per_sec(&self) -> Option<f64> {
        if self.interval_ms == 0 {
            return None;
        }
        let (homes, per_home) = self.fleet();
        let per_home_round: usize = (0..per_home as usize)
            .map(|i| DeviceKind::for_position(i).metrics().len() * self.samples)
            .sum();
        Some(homes as f64 * per_home_round as f64 * 1000.0 / self.interval_ms as f64)
    }

    /// (homes, devices per home).
    fn fleet(&self) -> (u32, u32) {
        let per_home = self.devices.clamp(1, 4);
        (self.devices.div_ceil(per_home).max(1), per_home)
    }
}

#[derive(Debug, Clone, Default)]
pub struct Latency {
    pub sent: u64,
    pub acked: u64,
    /// Publish to PUBACK of the probe's readings, ms: what a device waits
    /// until the broker says its reading is safe.
    pub puback_ms: Vec<f64>,
    /// (seconds since the probe started when the reading was published,
    /// milliseconds until it was queryable).
    pub samples: Vec<(f64, f64)>,
    pub not_seen: u64,
    pub poll_errors: u64,
    pub first_error: Option<String>,
}

impl Latency {
    /// Latencies (ms) of readings published at least `after_secs` into the load.
    pub fn after(&self, after_secs: f64) -> Vec<f64> {
        self.samples
            .iter()
            .filter(|(at, _)| *at >= after_secs)
            .map(|(_, ms)| *ms)
            .collect()
    }
}

/// Nearest-rank percentile.
pub fn percentile(values: &[f64], p: f64) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted.get(rank.clamp(1, sorted.len()) - 1).copied()
}

/// InfluxDB writes of the ingest writer during the load, from its
/// `batch_write_seconds` histogram.
#[derive(Debug, Clone, Default)]
pub struct BatchStats {
    pub count: u64,
    pub mean_secs: f64,
    /// Upper bound of the histogram bucket holding the 99th percentile.
    pub p99_bucket_secs: Option<f64>,
}

/// (count, sum, cumulative buckets) of a histogram.
type HistogramSnapshot = (u64, f64, Vec<(f64, u64)>);

fn histogram_snapshot(h: &prometheus::Histogram) -> HistogramSnapshot {
    use prometheus::core::Metric;
    let metric = h.metric();
    let hist = metric.get_histogram();
    let buckets = hist
        .get_bucket()
        .iter()
        .map(|b| (b.upper_bound(), b.cumulative_count()))
        .collect();
    (hist.get_sample_count(), hist.get_sample_sum(), buckets)
}

fn batch_stats(before: &HistogramSnapshot, after: &HistogramSnapshot) -> BatchStats {
    let count = after.0.saturating_sub(before.0);
    if count == 0 {
        return BatchStats::default();
    }
    let target = (count as f64 * 0.99).ceil() as u64;
    let p99_bucket_secs = after
        .2
        .iter()
        .zip(&before.2)
        .find(|((_, a), (_, b))| a.saturating_sub(*b) >= target)
        .map(|((bound, _), _)| *bound);
    BatchStats {
        count,
        mean_secs: (after.1 - before.1) / count as f64,
        p99_bucket_secs,
    }
}

#[derive(Debug, Clone)]
pub struct Verification {
    pub stored: u64,
    pub devices_with_data: usize,
    /// Points whose (device, metric, seq) appears more than once.
    pub duplicates: u64,
    /// Missing seqs below the highest stored one, over all series.
    pub gaps: u64,
    /// The first series with a gap or a duplicate: "device metric: n points,
    /// d distinct seqs, highest m".
    pub irregular: Vec<String>,
}

#[derive(Debug)]
pub struct E2eResult {
    pub run_id: String,
    /// Readings through the idle pipeline before the load.
    pub warm_up: anyhow::Result<WarmUp>,
    pub batch_delay: Duration,
    pub devices: usize,
    pub offered_per_sec: Option<f64>,
    pub readings_acked: u64,
    pub messages_acked: u64,
    pub messages_unacked: u64,
    pub skipped_ticks: u64,
    pub reconnects: u64,
    pub sim_elapsed: Duration,
    /// Points the writer stored while the load ran, and over how long.
    pub stored_during_load: u64,
    pub load_window: Duration,
    /// Per-second rates after a 2 s warm-up: readings the bridge accepted
    /// from MQTT, and points the writer stored.
    pub bridged_rates: Vec<f64>,
    pub stored_rates: Vec<f64>,
    /// The writer's InfluxDB writes during the load.
    pub batches: BatchStats,
    pub drain: Option<Duration>,
    pub verification: anyhow::Result<Verification>,
    pub latency: Latency,
    pub cpu: cpu::Usage,
    pub perf: Option<anyhow::Result<cpu::PerfProfile>>,
    pub batch_points: usize,
}

/// What became of the acknowledged readings of a run, once the bench
/// stopped waiting for them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tally {
    pub acked: u64,
    pub stored: u64,
    /// Every acknowledged reading was stored before the bench stopped
    /// waiting (120 s after the load).
    pub drained: bool,
    /// Acknowledged, missing when the bench stopped waiting: still on its
    /// way when the run did not drain, lost when it did (then also counted
    /// as seq gaps).
    pub not_stored: u64,
    /// Points stored more than once under the same (device, metric, seq).
    pub duplicates: u64,
    /// Seqs missing below the highest stored one, over all series.
    pub gaps: u64,
}

impl Tally {
    /// `acked` readings against what `stored` found; `drained`: every
    /// acknowledged reading was stored before the bench stopped waiting.
    pub fn new(acked: u64, stored: &Verification, drained: bool) -> Self {
        Self {
            acked,
            stored: stored.stored,
            drained,
            not_stored: acked.saturating_sub(stored.stored),
            duplicates: stored.duplicates,
            gaps: stored.gaps,
        }
    }

    /// Lost readings: seqs missing although every acknowledged reading
    /// was accounted for (the run drained). Unknown when it did not drain:
    /// a gap may then be a reading still on its way.
    pub fn lost(&self) -> Option<u64> {
        self.drained.then_some(self.gaps)
    }

    pub fn exactly_once(&self) -> bool {
        self.drained && self.not_stored == 0 && self.duplicates == 0 && self.gaps == 0
    }
}

impl E2eResult {
    /// The tally, when the exactly-once check could run.
    pub fn tally(&self) -> Option<Tally> {
        let v = self.verification.as_ref().ok()?;
        Some(Tally::new(self.readings_acked, v, self.drain.is_some()))
    }

    /// What kept the run from storing every acknowledged reading exactly
    /// once, if anything.
    pub fn delivery_problem(&self) -> Option<String> {
        let tally = match &self.verification {
            Err(err) => return Some(format!("the exactly-once check failed: {err:#}")),
            Ok(_) => self.tally()?,
        };
        if tally.exactly_once() {
            return None;
        }
        Some(format!(
            "{} acknowledged readings not stored when the bench stopped waiting{}, {} duplicated, {} seq gaps",
            tally.not_stored,
            if tally.drained { "" } else { " (not drained within 120 s)" },
            tally.duplicates,
            tally.gaps
        ))
    }

    pub fn acked_per_sec(&self) -> f64 {
        super::per_sec(self.readings_acked, self.sim_elapsed)
    }
    pub fn stored_per_sec(&self) -> f64 {
        super::per_sec(self.stored_during_load, self.load_window)
    }
}

pub async fn run(dir: &Path, options: &E2eOptions) -> anyhow::Result<E2eResult> {
    let stack_options = StackOptions {
        ingest_batch_max_points: options.batch_points,
        kafka_storage: options.kafka_storage,
        kafka_brokers: options.kafka_brokers,
        broker_replicas: options.broker_replicas,
        ..StackOptions::default()
    };
    let stack = tokio::time::timeout(
        Duration::from_secs(120),
        Stack::start(&dir.join("stack"), stack_options),
    )
    .await
    .context("the stack did not start within 120 s")?
    .context("starting the stack")?;
    let result = drive(&stack, dir, options).await;
    drop(stack);
    result
}

/// One run, step by step: the load's configuration, a warm-up reading, the
/// latency probe, perf and the rate sampler alongside, the load itself, then
/// the drain and the exactly-once count.
async fn drive(stack: &Stack, dir: &Path, options: &E2eOptions) -> anyhow::Result<E2eResult> {
    let me = std::process::id();
    let watched = watched_processes(me);
    let influx = InfluxClient::new(InfluxSettings::new(stack.influxd.url(), "warmhouse"))?;
    let run_id = format!("e2e{}", warmhouse_service_kit::now_ms() % 1_000_000_000);
    let duration_secs = options.duration.as_secs().max(1);
    let config = load_config(stack, options, &run_id, duration_secs)?;

    // One reading through the idle pipeline first, so Kafka producer and
    // consumer group, InfluxDB database and query API are all up before the
    // clock starts; its latency is the cold-start figure.
    // The probes read as an admin: their devices belong to no real home.
    let warm_up = warm_up(
        stack.api_client_builder()?,
        stack.mqtt_port(),
        &stack.query_url(),
        &format!("warmup-{run_id}"),
    )
    .await;
    let probe = LoadProbe::start(stack, &run_id, duration_secs).await?;
    let perf = options
        .perf
        .then(|| spawn_perf(dir, me, duration_secs))
        .transpose()?;
    let sampler = spawn_rate_sampler(stack, probe.load_end);

    let load = run_load(stack, config, options.duration, &watched, me).await;
    let summary = match load.summary {
        Ok(summary) => summary,
        Err(err) => {
            probe.abort();
            return Err(err);
        }
    };
    let (bridged_rates, stored_rates) = sampler.await.unwrap_or_default();
    let drain = wait_for_drain(&influx, &run_id, summary.readings_acked).await;
    let verification = verify(&influx, &run_id).await;
    let latency = probe.latency().await;
    print_slow_probe_readings(&latency);
    let perf = perf_result(perf).await;
    Ok(E2eResult {
        run_id,
        warm_up,
        batch_delay: StackOptions::default().ingest_batch_max_delay,
        devices: summary.devices,
        offered_per_sec: options.offered_per_sec(),
        readings_acked: summary.readings_acked,
        messages_acked: summary.messages_acked,
        messages_unacked: summary.messages_unacked,
        skipped_ticks: summary.skipped_ticks,
        reconnects: summary.reconnects,
        sim_elapsed: summary.elapsed,
        stored_during_load: load.stored,
        load_window: load.window,
        bridged_rates,
        stored_rates,
        batches: load.batches,
        drain,
        verification,
        latency,
        cpu: load.cpu,
        perf,
        batch_points: options.batch_points,
    })
}

/// The processes whose CPU phase 4 reports: the bench (broker, writer,
/// query API and simulator run in it), influxd and tansu.
fn watched_processes(me: u32) -> Vec<(String, u32)> {
    let mut watched = vec![("bench".to_string(), me)];
    for name in ["influxd", "tansu"] {
        match cpu::children_named(me, name).last() {
            Some(pid) => watched.push((name.to_string(), *pid)),
            None => tracing::warn!("no {name} child process found for CPU accounting"),
        }
    }
    watched
}

/// The simulator's configuration for the run: the options' fleet on every
/// broker replica, for `duration_secs`.
fn load_config(
    stack: &Stack,
    options: &E2eOptions,
    run_id: &str,
    duration_secs: u64,
) -> anyhow::Result<warmhouse_simulator::SimConfig> {
    let (homes, per_home) = options.fleet();
    // Devices come online over 2 ms each (500 a second), as a fleet does,
    // not in one burst.
    let spread_ms = (u64::from(options.devices) * 2).max(2000).to_string();
    super::sim_config(
        &stack.mqtt_ports(),
        &[
            "--homes",
            &homes.to_string(),
            "--devices-per-home",
            &per_home.to_string(),
            "--interval-ms",
            &options.interval_ms.to_string(),
            "--samples-per-message",
            &options.samples.to_string(),
            "--duration-secs",
            &duration_secs.to_string(),
            "--run-id",
            run_id,
            "--drain-timeout-secs",
            "30",
            // Thousands of devices connecting in the same instant measure
            // the accept loop, not the pipeline: spread them over 2 s.
            "--start-delay-spread-ms",
            &spread_ms,
        ],
    )
}

/// The latency probe of a run, connected before the load's clock starts and
/// publishing until `load_end`.
struct LoadProbe {
    load_end: Instant,
    /// Its task; an error when it could not connect.
    task: anyhow::Result<tokio::task::JoinHandle<Latency>>,
}

impl LoadProbe {
    async fn start(stack: &Stack, run_id: &str, duration_secs: u64) -> anyhow::Result<Self> {
        let device = format!("probe-{run_id}");
        let connection = Connected::connect(stack.mqtt_port(), &device, None).await;
        let load_end = Instant::now() + Duration::from_secs(duration_secs);
        let http = stack.api_client_builder()?;
        let task = connection.map(|connection| {
            tokio::spawn(probe(connection, http, stack.query_url(), device, load_end))
        });
        Ok(Self { load_end, task })
    }

    /// Stops it early: the run failed.
    fn abort(&self) {
        if let Ok(task) = &self.task {
            task.abort();
        }
    }

    /// What it measured (waiting at most 90 s for it), or why it could not.
    async fn latency(self) -> Latency {
        match self.task {
            Err(err) => Latency {
                first_error: Some(format!("probe: {err:#}")),
                ..Latency::default()
            },
            Ok(task) => probe_result(task, Duration::from_secs(90)).await,
        }
    }
}

/// The profile of a [`spawn_perf`] task, when there is one.
async fn perf_result(
    task: Option<tokio::task::JoinHandle<anyhow::Result<cpu::PerfProfile>>>,
) -> Option<anyhow::Result<cpu::PerfProfile>> {
    let task = task?;
    Some(match task.await {
        Ok(result) => result,
        Err(err) => Err(anyhow::anyhow!("perf task failed: {err}")),
    })
}

/// A `perf record` of this process over the middle of the load, not the
/// start-up.
fn spawn_perf(
    dir: &Path,
    me: u32,
    duration_secs: u64,
) -> anyhow::Result<tokio::task::JoinHandle<anyhow::Result<cpu::PerfProfile>>> {
    let delay = Duration::from_secs(2.min(duration_secs / 4));
    let seconds = duration_secs.saturating_sub(4).max(2);
    let perf_dir = dir.join("perf");
    std::fs::create_dir_all(&perf_dir).context("creating perf dir")?;
    Ok(tokio::spawn(async move {
        tokio::time::sleep(delay).await;
        tokio::task::spawn_blocking(move || cpu::start_perf(me, seconds, &perf_dir)?.finish(10))
            .await
            .context("perf task")?
    }))
}

/// Samples the brokers' ingress and the writer once a second until
/// `load_end`: per-second rates of readings bridged and points stored,
/// after a 2 s warm-up.
fn spawn_rate_sampler(
    stack: &Stack,
    load_end: Instant,
) -> tokio::task::JoinHandle<(Vec<f64>, Vec<f64>)> {
    let written = stack.writer.metrics.points_written.clone();
    let ingress: Vec<_> = stack
        .brokers
        .iter()
        .map(|b| b.ingress.readings.clone())
        .collect();
    let bridged = move || ingress.iter().map(|c| c.get()).sum::<u64>();
    tokio::spawn(async move {
        let (mut bridged_rates, mut stored_rates) = (Vec::new(), Vec::new());
        let mut last = (bridged(), written.get(), Instant::now());
        let started = Instant::now();
        while Instant::now() + Duration::from_millis(500) < load_end {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let now = (bridged(), written.get(), Instant::now());
            if started.elapsed() > Duration::from_secs(2) {
                let window = now.2 - last.2;
                bridged_rates.push(super::per_sec(now.0.saturating_sub(last.0), window));
                stored_rates.push(super::per_sec(now.1.saturating_sub(last.1), window));
            }
            last = now;
        }
        (bridged_rates, stored_rates)
    })
}

/// The simulator's run and what the pipeline did while it ran.
struct Load {
    summary: anyhow::Result<warmhouse_simulator::Summary>,
    window: Duration,
    /// Points the writer stored meanwhile.
    stored: u64,
    /// The writer's InfluxDB writes meanwhile.
    batches: BatchStats,
    cpu: cpu::Usage,
}

/// Runs the simulator to its end (at most `duration` and 90 s), with the
/// writer's counters and the watched processes' CPU read around it.
async fn run_load(
    stack: &Stack,
    config: warmhouse_simulator::SimConfig,
    duration: Duration,
    watched: &[(String, u32)],
    me: u32,
) -> Load {
    let written = &stack.writer.metrics.points_written;
    let batch_seconds = &stack.writer.metrics.batch_seconds;
    let batches_before = histogram_snapshot(batch_seconds);
    let before = cpu::snapshot(watched, me);
    let written_at_start = written.get();
    let started = Instant::now();
    let summary = tokio::time::timeout(
        duration + Duration::from_secs(90),
        warmhouse_simulator::run(config, std::future::pending()),
    )
    .await;
    let window = started.elapsed();
    let written_at_end = written.get();
    let batches = batch_stats(&batches_before, &histogram_snapshot(batch_seconds));
    let after = cpu::snapshot(watched, me);
    Load {
        summary: match summary {
            Ok(summary) => summary.context("simulator"),
            Err(_) => Err(anyhow::anyhow!("the simulator did not finish in time")),
        },
        window,
        stored: written_at_end.saturating_sub(written_at_start),
        batches,
        cpu: cpu::usage(&before, &after, super::cores()),
    }
}

/// Waits (at most 120 s) until InfluxDB holds every acknowledged reading of
/// the run; how long that took.
async fn wait_for_drain(influx: &InfluxClient, run_id: &str, acked: u64) -> Option<Duration> {
    let sim_done = Instant::now();
    let drain_deadline = sim_done + Duration::from_secs(120);
    loop {
        if let Ok(stored) = count_run(influx, run_id).await {
            if stored >= acked {
                return Some(sim_done.elapsed());
            }
        }
        if Instant::now() > drain_deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Names the probe readings slower than 300 ms, to look into.
fn print_slow_probe_readings(latency: &Latency) {
    let slow: Vec<String> = latency
        .samples
        .iter()
        .filter(|(_, ms)| *ms > 300.0)
        .map(|(at, ms)| format!("{ms:.0} ms at {at:.1} s"))
        .collect();
    if !slow.is_empty() {
        eprintln!("   probe readings slower than 300 ms: {}", slow.join(", "));
    }
}

/// Readings of the run stored in InfluxDB (every metric).
pub(super) async fn count_run(influx: &InfluxClient, run_id: &str) -> anyhow::Result<u64> {
    let q =
        format!(r#"SELECT count("value") FROM "raw"./.*/ WHERE "home_id" =~ /^home-{run_id}-/"#);
    let results = influx.query(&q).await?;
    Ok(results
        .iter()
        .flat_map(|r| &r.series)
        .filter_map(|s| s.values.first().and_then(|row| row.get(1)))
        .filter_map(serde_json::Value::as_u64)
        .sum())
}

/// Per series (device x metric): count of points, distinct seqs and the
/// highest seq. Seqs start at 1 and have no gaps, so count = distinct = max
/// when nothing is lost or stored twice.
pub(super) async fn verify(influx: &InfluxClient, run_id: &str) -> anyhow::Result<Verification> {
    let filter =
        format!(r#"FROM "raw"./.*/ WHERE "home_id" =~ /^home-{run_id}-/ GROUP BY "device_id""#);
    let mut per_series: BTreeMap<(String, String), [u64; 3]> = BTreeMap::new();
    for (i, select) in [
        r#"SELECT count("value")"#,
        r#"SELECT count(distinct("seq"))"#,
        r#"SELECT max("seq")"#,
    ]
    .iter()
    .enumerate()
    {
        let results = influx
            .query(&format!("{select} {filter}"))
            .await
            .with_context(|| format!("{select} {filter}"))?;
        for series in results.iter().flat_map(|r| &r.series) {
            let device = series.tags.get("device_id").cloned().unwrap_or_default();
            let value = series
                .values
                .first()
                .and_then(|row| row.get(1))
                .and_then(serde_json::Value::as_u64)
                .unwrap_or(0);
            per_series.entry((device, series.name.clone())).or_default()[i] = value;
        }
    }
    let mut verification = Verification {
        stored: 0,
        devices_with_data: 0,
        duplicates: 0,
        gaps: 0,
        irregular: Vec::new(),
    };
    let mut devices = std::collections::BTreeSet::new();
    for ((device, metric), [count, distinct, max]) in &per_series {
        devices.insert(device.clone());
        verification.stored += count;
        verification.duplicates += count.saturating_sub(*distinct);
        verification.gaps += max.saturating_sub(*distinct);
        if (count != distinct || distinct != max) && verification.irregular.len() < 10 {
            verification.irregular.push(format!(
                "{device} {metric}: {count} points, {distinct} distinct seqs, highest {max}"
            ));
        }
    }
    verification.devices_with_data = devices.len();
    Ok(verification)
}

/// An MQTT client whose event loop runs in a task, connected (CONNACK
/// received) before anything is timed, so connection set-up never counts as
/// latency.
pub(super) struct Connected {
    client: AsyncClient,
    events: tokio::task::JoinHandle<()>,
    acked: Arc<AtomicU64>,
    /// When each QoS 1 publish still waiting for its PUBACK was handed to
    /// the client (PUBACKs come in publish order).
    sent: Arc<Mutex<VecDeque<Instant>>>,
    /// Publish to PUBACK, ms, of every acknowledged publish noted in `sent`.
    puback_ms: Arc<Mutex<Vec<f64>>>,
}

impl Connected {
    /// `password`: the device's, where the broker authenticates devices
    /// (its username is the client id).
    pub(super) async fn connect(
        mqtt_port: u16,
        client_id: &str,
        password: Option<&str>,
    ) -> anyhow::Result<Self> {
        let mut options = MqttOptions::new(client_id, "127.0.0.1", mqtt_port);
        options
            .set_keep_alive(Duration::from_secs(30))
            .set_clean_session(true);
        if let Some(password) = password {
            options.set_credentials(client_id, password);
        }
        let (client, mut eventloop) = AsyncClient::new(options, 64);
        // PUBACKs are read as soon as they arrive.
        eventloop.network_options.set_tcp_nodelay(true);
        let acked = Arc::new(AtomicU64::new(0));
        let sent: Arc<Mutex<VecDeque<Instant>>> = Arc::default();
        let puback_ms: Arc<Mutex<Vec<f64>>> = Arc::default();
        let (connected_tx, connected_rx) = tokio::sync::oneshot::channel();
        let events = {
            let acked = acked.clone();
            let sent = sent.clone();
            let puback_ms = puback_ms.clone();
            tokio::spawn(async move {
                let mut connected = Some(connected_tx);
                loop {
                    match eventloop.poll().await {
                        Ok(Event::Incoming(Packet::ConnAck(_))) => {
                            if let Some(tx) = connected.take() {
                                let _ = tx.send(());
                            }
                        }
                        Ok(Event::Incoming(Packet::PubAck(_))) => {
                            acked.fetch_add(1, Ordering::Relaxed);
                            let at = sent.lock().ok().and_then(|mut s| s.pop_front());
                            if let (Some(at), Ok(mut ms)) = (at, puback_ms.lock()) {
                                ms.push(at.elapsed().as_secs_f64() * 1000.0);
                            }
                        }
                        Ok(_) => {}
                        Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                    }
                }
            })
        };
        match tokio::time::timeout(Duration::from_secs(30), connected_rx).await {
            Ok(Ok(())) => Ok(Self {
                client,
                events,
                acked,
                sent,
                puback_ms,
            }),
            _ => {
                events.abort();
                bail!("{client_id} got no CONNACK within 30 s")
            }
        }
    }

    async fn close(self) {
        let _ = self.client.disconnect().await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        self.events.abort();
    }
}

/// Publishes two readings on `device`, one after the other, each time
/// waiting until the query API returns it: the first goes through the
/// pipeline just after it started (cold), the second through a warm one.
async fn warm_up(
    http: reqwest::ClientBuilder,
    mqtt_port: u16,
    query_url: &str,
    device: &str,
) -> anyhow::Result<WarmUp> {
    let http = http
        .timeout(Duration::from_secs(2))
        .build()
        .context("HTTP client")?;
    let connection = Connected::connect(mqtt_port, device, None).await?;
    let client = connection.client.clone();
    let url = format!("{query_url}/api/v1/devices/{device}/telemetry/latest");
    let one = |seq: i64| {
        let (client, http, url) = (&client, &http, &url);
        async move {
            let payload = serde_json::json!({
                "v": 1,
                "home_id": format!("warmup-home-{device}"),
                "device_type": "climate_sensor",
                "samples": [{"seq": seq, "ts": warmhouse_service_kit::now_ms(), "values": {"temperature": 20.0}}],
            });
            let started = Instant::now();
            client
                .publish(
                    format!("/tenants/{device}/telemetry"),
                    QoS::AtLeastOnce,
                    false,
                    payload.to_string(),
                )
                .await
                .context("publishing a warm-up reading")?;
            let deadline = started + Duration::from_secs(60);
            loop {
                if let Ok(Some(seen)) = latest_seq(http, url).await {
                    if seen >= seq {
                        return Ok(started.elapsed());
                    }
                }
                if Instant::now() > deadline {
                    bail!("warm-up reading {seq} was not queryable within 60 s");
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    };
    let result = async {
        let first = one(1).await?;
        let second = one(2).await?;
        Ok(WarmUp { first, second })
    }
    .await;
    connection.close().await;
    result
}

/// Publish-to-queryable of the readings sent before the load.
#[derive(Debug, Clone)]
pub struct WarmUp {
    /// The first reading after the stack started.
    pub first: Duration,
    /// The next one.
    pub second: Duration,
}

/// What the [`probe`] task measured, waiting at most `timeout` for it; a
/// failed or late task is a `Latency` that says so.
pub(super) async fn probe_result(
    probe: tokio::task::JoinHandle<Latency>,
    timeout: Duration,
) -> Latency {
    let failed = |why: String| Latency {
        first_error: Some(why),
        ..Latency::default()
    };
    match tokio::time::timeout(timeout, probe).await {
        Ok(Ok(latency)) => latency,
        Ok(Err(err)) => failed(format!("probe task failed: {err}")),
        Err(_) => failed("probe did not finish in time".to_string()),
    }
}

/// Readings the probe published and has not seen through the query API yet:
/// (seq, when published), oldest first.
type Pending = Arc<Mutex<VecDeque<(i64, Instant)>>>;

/// One reading every 100 ms on its own device until `load_end`; each one is
/// timed from just before the publish until the query API returns its seq.
pub(super) async fn probe(
    connection: Connected,
    http: reqwest::ClientBuilder,
    query_url: String,
    device: String,
    load_end: Instant,
) -> Latency {
    let mut latency = Latency::default();
    let http = match http.timeout(Duration::from_secs(2)).build() {
        Ok(http) => http,
        Err(err) => {
            latency.first_error = Some(format!("HTTP client: {err}"));
            return latency;
        }
    };
    let started = Instant::now();
    let pending: Pending = Arc::new(Mutex::new(VecDeque::new()));
    let publisher = spawn_probe_publisher(&connection, &device, pending.clone(), load_end);
    let url = format!("{query_url}/api/v1/devices/{device}/telemetry/latest");
    let give_up = load_end + Duration::from_secs(60);
    let poll = QueryPoll {
        http: &http,
        url: &url,
        pending: &pending,
        started,
        give_up,
    };
    poll.run(&publisher, &mut latency).await;
    latency.sent = match tokio::time::timeout(Duration::from_secs(5), publisher).await {
        Ok(Ok(sent)) => sent as u64,
        _ => latency.samples.len() as u64,
    };
    latency.not_seen = pending.lock().map(|p| p.len() as u64).unwrap_or(0);
    tokio::time::sleep(Duration::from_millis(200)).await;
    latency.acked = connection.acked.load(Ordering::Relaxed);
    latency.puback_ms = connection
        .puback_ms
        .lock()
        .map(|ms| ms.clone())
        .unwrap_or_default();
    connection.close().await;
    latency
}

/// The probe's publisher: a reading every 100 ms until `load_end`, each
/// noted in `pending` (for the query API) and in the connection's `sent`
/// (for its PUBACK) just before it goes out. Ends with the last seq sent.
fn spawn_probe_publisher(
    connection: &Connected,
    device: &str,
    pending: Pending,
    load_end: Instant,
) -> tokio::task::JoinHandle<i64> {
    let client = connection.client.clone();
    let sent = connection.sent.clone();
    let topic = format!("/tenants/{device}/telemetry");
    let home = format!("probe-home-{device}");
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(Duration::from_millis(100));
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut seq = 0i64;
        while Instant::now() < load_end {
            ticker.tick().await;
            seq += 1;
            let payload = serde_json::json!({
                "v": 1,
                "home_id": home,
                "device_type": "climate_sensor",
                "samples": [{
                    "seq": seq,
                    "ts": warmhouse_service_kit::now_ms(),
                    "values": {"temperature": 20.0 + (seq % 50) as f64 / 10.0},
                }],
            });
            let sent_at = Instant::now();
            if let Ok(mut pending) = pending.lock() {
                pending.push_back((seq, sent_at));
            }
            if let Ok(mut sent) = sent.lock() {
                sent.push_back(sent_at);
            }
            if client
                .publish(&topic, QoS::AtLeastOnce, false, payload.to_string())
                .await
                .is_err()
            {
                break;
            }
        }
        seq
    })
}

/// Polling the query API for the probe's readings.
struct QueryPoll<'a> {
    http: &'a reqwest::Client,
    url: &'a str,
    pending: &'a Pending,
    /// When the probe started (a sample's time is counted from it).
    started: Instant,
    /// No more polling after this, whatever is still pending.
    give_up: Instant,
}

impl QueryPoll<'_> {
    /// Every 5 ms while a reading is pending, until the publisher has ended
    /// and nothing is, or `give_up`: each reading the API returns (its seq or
    /// a later one) becomes a latency sample; a failed poll is counted.
    async fn run(&self, publisher: &tokio::task::JoinHandle<i64>, latency: &mut Latency) {
        loop {
            tokio::time::sleep(Duration::from_millis(5)).await;
            let waiting = self.pending.lock().map(|p| !p.is_empty()).unwrap_or(false);
            if !waiting {
                if publisher.is_finished() {
                    break;
                }
                continue;
            }
            if Instant::now() > self.give_up {
                break;
            }
            match latest_seq(self.http, self.url).await {
                Ok(Some(seen)) => self.take_seen(seen, latency),
                Ok(None) => {}
                Err(err) => {
                    latency.poll_errors += 1;
                    latency
                        .first_error
                        .get_or_insert_with(|| format!("{err:#}"));
                }
            }
        }
    }

    /// Moves every pending reading up to `seen` into the latency samples.
    fn take_seen(&self, seen: i64, latency: &mut Latency) {
        let now = Instant::now();
        if let Ok(mut pending) = self.pending.lock() {
            while pending.front().is_some_and(|(seq, _)| *seq <= seen) {
                if let Some((_, sent_at)) = pending.pop_front() {
                    latency.samples.push((
                        sent_at.duration_since(self.started).as_secs_f64(),
                        now.duration_since(sent_at).as_secs_f64() * 1000.0,
                    ));
                }
            }
        }
    }
}

/// The newest seq of the probe's temperature; `None` before the first one
/// is stored (404).
async fn latest_seq(http: &reqwest::Client, url: &str) -> anyhow::Result<Option<i64>> {
    let response = http.get(url).send().await.context("GET latest")?;
    let status = response.status();
    if status == reqwest::StatusCode::NOT_FOUND {
        return Ok(None);
    }
    let body = response.text().await.context("reading latest")?;
    if !status.is_success() {
        bail!("GET latest: {status}: {body}");
    }
    let value: serde_json::Value =
        serde_json::from_str(&body).with_context(|| format!("decoding {body}"))?;
    Ok(value
        .get("metrics")
        .and_then(|m| m.as_array())
        .into_iter()
        .flatten()
        .filter(|m| m.get("metric").and_then(|n| n.as_str()) == Some("temperature"))
        .filter_map(|m| m.get("seq").and_then(serde_json::Value::as_i64))
        .max())
}
