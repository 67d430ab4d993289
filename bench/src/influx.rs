//! Phase 1: the raw InfluxDB write ceiling. A fresh influxd, the production
//! schema, and gzipped line protocol of exactly the writer's shape
//! (measurement per metric, tags device_id/device_type/home_id, fields
//! seq/value, nanosecond timestamps unique per point) written in large
//! batches by several concurrent writers.

use std::collections::VecDeque;
use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use flate2::write::GzEncoder;
use influxdb_line_protocol::builder::LineProtocolBuilder;
use warmhouse_devstack::Influxd;
use warmhouse_ingest::influx::{InfluxClient, InfluxSettings};

use super::cpu;

/// Devices of the synthetic fleet (4 a home, kinds as the simulator's).
const DEVICES: usize = 1000;
/// Points a second the pre-generated pool is sized for; past it the writers
/// build batches themselves (and say so in the report).
const POOL_RATE: u64 = 500_000;

#[derive(Debug, Clone)]
pub struct CeilingOptions {
    pub duration: Duration,
    pub writers: usize,
    pub batch_points: usize,
}

#[derive(Debug, Clone)]
pub struct CeilingResult {
    pub points: u64,
    pub batches: u64,
    pub failed_batches: u64,
    pub first_failure: Option<String>,
    pub elapsed: Duration,
    pub series: usize,
    pub writers: usize,
    pub batch_points: usize,
    pub gzip_bytes_per_point: f64,
    /// Batches the writers had to build during the timed run.
    pub built_inline: u64,
    pub influxd_cpu_share: Option<f64>,
    pub bench_cpu_share: Option<f64>,
    pub others_cpu_share: Option<f64>,
}

impl CeilingResult {
    pub fn points_per_sec(&self) -> f64 {
        super::per_sec(self.points, self.elapsed)
    }
}

struct Device {
    id: String,
    home: String,
    kind: &'static str,
    metrics: &'static [&'static str],
}

/// Deterministic stream of unique points: round r gives every device one
/// sample (seq r + 1, 1 ms after the previous one) with all its metrics.
struct PointStream {
    devices: Vec<Device>,
    t0_ms: i64,
    round: u64,
    device: usize,
    metric: usize,
}

impl PointStream {
    fn new(t0_ms: i64) -> Self {
        let devices = (0..DEVICES)
            .map(|i| {
                let home = format!("home-ceiling-{:04}", i / 4 + 1);
                let (kind, metrics): (&'static str, &'static [&'static str]) = match i % 4 {
                    0 => (
                        "thermostat",
                        &["heating_on", "target_temperature", "temperature"],
                    ),
                    2 => ("relay", &["on", "power_w"]),
                    _ => ("climate_sensor", &["humidity", "temperature"]),
                };
                Device {
                    id: format!("{home}-dev-{:02}", i % 4 + 1),
                    home,
                    kind,
                    metrics,
                }
            })
            .collect();
        Self {
            devices,
            t0_ms,
            round: 0,
            device: 0,
            metric: 0,
        }
    }

    fn series(&self) -> usize {
        self.devices.iter().map(|d| d.metrics.len()).sum()
    }

    /// The next `n` points as line protocol.
    fn next_lines(&mut self, n: usize) -> Vec<u8> {
        let mut builder = LineProtocolBuilder::new_with(Vec::with_capacity(n * 120));
        for _ in 0..n {
            let device = &self.devices[self.device];
            let seq = self.round as i64 + 1;
            let ts_ms = self.t0_ms + self.round as i64;
            let value = 15.0 + ((seq * 7 + self.device as i64 * 13) % 200) as f64 / 10.0;
            builder = builder
                .measurement(device.metrics[self.metric])
                .tag("device_id", &device.id)
                .tag("device_type", device.kind)
                .tag("home_id", &device.home)
                .field("seq", seq)
                .field("value", value)
                .timestamp(ts_ms * 1_000_000 + seq % 1_000_000)
                .close_line();
            self.metric += 1;
            if self.metric == device.metrics.len() {
                self.metric = 0;
                self.device += 1;
                if self.device == self.devices.len() {
                    self.device = 0;
                    self.round += 1;
                }
            }
        }
        builder.build()
    }
}

fn gzip(lines: &[u8]) -> anyhow::Result<Vec<u8>> {
    let mut encoder = GzEncoder::new(
        Vec::with_capacity(lines.len() / 4),
        flate2::Compression::fast(),
    );
    encoder.write_all(lines).context("gzip")?;
    encoder.finish().context("gzip")
}

fn build_batch(stream: &Mutex<PointStream>, n: usize) -> anyhow::Result<Vec<u8>> {
    let lines = {
        let mut stream = stream
            .lock()
            .map_err(|_| anyhow::anyhow!("point stream lock poisoned"))?;
        stream.next_lines(n)
    };
    gzip(&lines)
}

pub async fn run(dir: &Path, options: &CeilingOptions) -> anyhow::Result<CeilingResult> {
    if options.writers == 0 || options.batch_points == 0 {
        bail!("--influx-writers and --influx-batch-points must be at least 1");
    }
    let (influxd, client, influxd_pid) = start_influxd(dir).await?;

    // Batches are built before the clock starts, so the timed run measures
    // InfluxDB, not our gzip.
    let t0_ms = warmhouse_service_kit::now_ms() - 3_600_000;
    let stream = Arc::new(Mutex::new(PointStream::new(t0_ms)));
    let series = stream
        .lock()
        .map_err(|_| anyhow::anyhow!("point stream lock poisoned"))?
        .series();
    let (pool, gzip_bytes_per_point) = fill_pool(&stream, options).await?;

    let counters = Arc::new(WriteCounters::default());
    let me = std::process::id();
    let mut watched = vec![("bench".to_string(), me)];
    if let Some(pid) = influxd_pid {
        watched.push(("influxd".to_string(), pid));
    }
    let before = cpu::snapshot(&watched, me);
    let started = Instant::now();
    let deadline = started + options.duration;
    let tasks: Vec<_> = (0..options.writers)
        .map(|_| {
            let writer = Writer {
                client: client.clone(),
                pool: pool.clone(),
                stream: stream.clone(),
                batch_points: options.batch_points,
                counters: counters.clone(),
            };
            tokio::spawn(writer.write_until(deadline))
        })
        .collect();
    for task in tasks {
        // Each write has the client's 10 s timeout, so this ends.
        let _ = task.await;
    }
    let elapsed = started.elapsed();
    let after = cpu::snapshot(&watched, me);
    let cores = super::cores();
    let usage = cpu::usage(&before, &after, cores);
    let points = counters.points.load(Ordering::Relaxed);
    let failed_batches = counters.failed.load(Ordering::Relaxed);
    let first_failure = counters.first_failure.lock().ok().and_then(|f| f.clone());
    if points == 0 {
        bail!(
            "no batch was accepted; first failure: {}",
            first_failure.as_deref().unwrap_or("none")
        );
    }
    drop(influxd);
    Ok(CeilingResult {
        points,
        batches: counters.batches.load(Ordering::Relaxed),
        failed_batches,
        first_failure,
        elapsed,
        series,
        writers: options.writers,
        batch_points: options.batch_points,
        gzip_bytes_per_point,
        built_inline: counters.inline.load(Ordering::Relaxed),
        influxd_cpu_share: usage.process("influxd").map(|s| usage.share(s)),
        bench_cpu_share: usage.process("bench").map(|s| usage.share(s)),
        others_cpu_share: usage.others_share(),
    })
}

/// A fresh influxd with the production schema, a client of it, and its pid
/// (for its CPU).
async fn start_influxd(dir: &Path) -> anyhow::Result<(Influxd, InfluxClient, Option<u32>)> {
    let dir = dir.to_path_buf();
    let influxd = super::on_process_thread(move || Influxd::start(&dir.join("influxdb")))
        .await
        .context("starting influxd")??;
    let client = InfluxClient::new(InfluxSettings::new(influxd.url(), "warmhouse"))?;
    client
        .ensure_schema()
        .await
        .context("creating the warmhouse schema")?;
    let influxd_pid = cpu::children_named(std::process::id(), "influxd")
        .last()
        .copied();
    Ok((influxd, client, influxd_pid))
}

/// Gzipped batches built ahead, taken by the writers oldest first.
type Pool = Arc<Mutex<VecDeque<Vec<u8>>>>;

/// Builds, on two blocking threads, enough batches for `POOL_RATE` points a
/// second over the whole run; returns the pool and the gzipped bytes a
/// point.
async fn fill_pool(
    stream: &Arc<Mutex<PointStream>>,
    options: &CeilingOptions,
) -> anyhow::Result<(Pool, f64)> {
    let pool_batches =
        (POOL_RATE * options.duration.as_secs().max(1)).div_ceil(options.batch_points as u64);
    let pool: Pool = Arc::new(Mutex::new(VecDeque::new()));
    let gz_bytes = Arc::new(AtomicU64::new(0));
    let builders: Vec<_> = (0..2)
        .map(|_| {
            let stream = stream.clone();
            let pool = pool.clone();
            let gz_bytes = gz_bytes.clone();
            let n = options.batch_points;
            tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
                loop {
                    let body = build_batch(&stream, n)?;
                    gz_bytes.fetch_add(body.len() as u64, Ordering::Relaxed);
                    let mut pool = pool
                        .lock()
                        .map_err(|_| anyhow::anyhow!("pool lock poisoned"))?;
                    if pool.len() as u64 >= pool_batches {
                        return Ok(());
                    }
                    pool.push_back(body);
                }
            })
        })
        .collect();
    for builder in builders {
        builder.await.context("building batches")??;
    }
    let pooled = pool.lock().map(|p| p.len()).unwrap_or(0).max(1);
    let gzip_bytes_per_point =
        gz_bytes.load(Ordering::Relaxed) as f64 / (pooled * options.batch_points) as f64;
    Ok((pool, gzip_bytes_per_point))
}

/// What the writers did, added up across them.
#[derive(Default)]
struct WriteCounters {
    points: AtomicU64,
    batches: AtomicU64,
    failed: AtomicU64,
    /// Batches a writer had to build itself: the pool had run dry.
    inline: AtomicU64,
    first_failure: Mutex<Option<String>>,
}

/// One of the concurrent writers of the timed run.
struct Writer {
    client: InfluxClient,
    pool: Pool,
    stream: Arc<Mutex<PointStream>>,
    batch_points: usize,
    counters: Arc<WriteCounters>,
}

impl Writer {
    /// Writes batch after batch until `deadline`: from the pool while it
    /// lasts, then built here. A failed write is counted and retried after
    /// 100 ms with the next batch.
    async fn write_until(self, deadline: Instant) {
        let (counters, n) = (&self.counters, self.batch_points);
        while Instant::now() < deadline {
            let pooled = self.pool.lock().ok().and_then(|mut p| p.pop_front());
            let body = match pooled {
                Some(body) => body,
                None => {
                    counters.inline.fetch_add(1, Ordering::Relaxed);
                    let stream = self.stream.clone();
                    match tokio::task::spawn_blocking(move || build_batch(&stream, n)).await {
                        Ok(Ok(body)) => body,
                        _ => break,
                    }
                }
            };
            match self.client.write_gzip(body).await {
                Ok(()) => {
                    counters.points.fetch_add(n as u64, Ordering::Relaxed);
                    counters.batches.fetch_add(1, Ordering::Relaxed);
                }
                Err(err) => {
                    counters.failed.fetch_add(1, Ordering::Relaxed);
                    if let Ok(mut first) = counters.first_failure.lock() {
                        first.get_or_insert_with(|| err.to_string());
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn points_are_unique_and_shaped_like_the_writer() {
        let mut stream = PointStream::new(1_764_000_000_000);
        let series = stream.series();
        assert_eq!(series, 2250);
        let text = String::from_utf8(stream.next_lines(2 * series + 5)).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2 * series + 5);
        assert_eq!(
            lines[0],
            "heating_on,device_id=home-ceiling-0001-dev-01,device_type=thermostat,home_id=home-ceiling-0001 seq=1i,value=15.7 1764000000000000001"
        );
        let mut keys: Vec<(String, String)> = lines
            .iter()
            .map(|l| {
                let (series, rest) = l.split_once(' ').unwrap();
                (
                    series.to_string(),
                    rest.rsplit(' ').next().unwrap().to_string(),
                )
            })
            .collect();
        keys.sort();
        keys.dedup();
        assert_eq!(keys.len(), lines.len(), "every point is unique");
    }
}
