//! Warmhouse device simulator and load generator.
//!
//! Every simulated device has its own MQTT connection (client id = device
//! id, persistent session, retained last will on `/tenants/{id}/status`),
//! publishes [`TelemetryMessage`](warmhouse_contracts::telemetry::TelemetryMessage)s
//! on `/tenants/{id}/telemetry` and answers commands on
//! `/tenants/{id}/commands`. [`run`] drives a whole fleet and reports what
//! the broker acknowledged.

use std::fmt;
use std::future::Future;
use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Instant;
use warmhouse_contracts::ids::{DeviceId, DeviceType, HomeId};
use warmhouse_contracts::telemetry::Sample;

pub mod config;
pub mod credentials;
mod device;
pub mod model;
pub mod tracker;

pub use config::{DeviceSpec, SimConfig};
pub use model::DeviceKind;

/// A telemetry message a device published and the broker acknowledged
/// (PUBACK; at QoS 0, written to the connection).
#[derive(Debug, Clone, PartialEq)]
pub struct PublishedMessage {
    pub device_id: DeviceId,
    pub home_id: HomeId,
    pub device_type: DeviceType,
    pub samples: Vec<Sample>,
}

impl PublishedMessage {
    pub fn reading_count(&self) -> usize {
        self.samples.iter().map(|s| s.values.len()).sum()
    }
}

/// What a run did.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    pub devices: usize,
    /// Telemetry messages generated (sampled) by all devices.
    pub messages_generated: u64,
    /// Telemetry messages written to the broker at least once.
    pub messages_sent: u64,
    /// Telemetry messages the broker acknowledged.
    pub messages_acked: u64,
    /// Readings (metric values) in the acknowledged messages.
    pub readings_acked: u64,
    /// Generated telemetry messages never acknowledged (shutdown drain timed out).
    pub messages_unacked: u64,
    /// Connections re-established after a loss.
    pub reconnects: u64,
    /// Publishes resent on a resumed session.
    pub retransmits: u64,
    /// Commands received and answered.
    pub commands: u64,
    /// Of those, redeliveries of a command already executed: answered
    /// again, not applied again.
    pub duplicate_commands: u64,
    /// Sampling ticks skipped because a device's backlog was full.
    pub skipped_ticks: u64,
    pub elapsed: Duration,
    /// Every acknowledged telemetry message, only with `config.record`.
    pub published: Vec<PublishedMessage>,
}

impl Summary {
    /// Acknowledged readings per second over the whole run.
    pub fn readings_per_sec(&self) -> f64 {
        per_sec(self.readings_acked, self.elapsed)
    }
}

fn per_sec(count: u64, elapsed: Duration) -> f64 {
    let secs = elapsed.as_secs_f64();
    if secs > 0.0 {
        count as f64 / secs
    } else {
        0.0
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "devices:          {}", self.devices)?;
        writeln!(
            f,
            "messages:         {} generated, {} sent, {} acked, {} unacked",
            self.messages_generated, self.messages_sent, self.messages_acked, self.messages_unacked
        )?;
        writeln!(f, "readings acked:   {}", self.readings_acked)?;
        writeln!(
            f,
            "reconnects:       {} ({} publishes resent)",
            self.reconnects, self.retransmits
        )?;
        writeln!(
            f,
            "commands:         {} ({} duplicates, not re-applied)",
            self.commands, self.duplicate_commands
        )?;
        if self.skipped_ticks > 0 {
            writeln!(f, "skipped samples:  {} (backlog full)", self.skipped_ticks)?;
        }
        writeln!(f, "elapsed:          {:.3} s", self.elapsed.as_secs_f64())?;
        write!(
            f,
            "rate:             {:.0} readings/s ({:.0} messages/s)",
            self.readings_per_sec(),
            per_sec(self.messages_acked, self.elapsed)
        )
    }
}

/// Counters shared by every device of a run.
#[derive(Debug, Default)]
pub(crate) struct Stats {
    pub generated: AtomicU64,
    pub messages_sent: AtomicU64,
    pub messages_acked: AtomicU64,
    pub readings_acked: AtomicU64,
    pub reconnects: AtomicU64,
    pub retransmits: AtomicU64,
    pub commands: AtomicU64,
    pub duplicate_commands: AtomicU64,
    pub skipped_ticks: AtomicU64,
    pub connected: AtomicUsize,
}

pub(crate) struct Shared {
    pub config: SimConfig,
    pub stats: Stats,
    pub identity: DeviceIdentity,
}

/// How devices authenticate: per-device credentials and the CA to trust
/// over TLS (`--credentials`, `--tls-ca`).
#[derive(Debug, Clone, Default)]
pub struct DeviceIdentity {
    pub credentials: Option<credentials::Credentials>,
    pub tls_ca: Option<Vec<u8>>,
}

/// Runs the fleet until every device reached `messages_per_device`,
/// `duration_secs` passed, or `shutdown` resolved; then devices drain what
/// they published (up to `drain_timeout_secs`), publish a retained offline
/// status and disconnect.
pub async fn run(config: SimConfig, shutdown: impl Future<Output = ()>) -> anyhow::Result<Summary> {
    config
        .validate()
        .context("invalid simulator configuration")?;
    let specs = config.device_specs()?;
    let identity = config.load_identity(&specs)?;
    let devices = specs.len();
    let duration = (config.duration_secs > 0).then(|| Duration::from_secs(config.duration_secs));
    let progress = config.progress;
    tracing::info!(
        devices,
        brokers = %config.brokers(),
        interval_ms = config.interval_ms,
        samples_per_message = config.samples_per_message,
        "simulator starting"
    );

    let shared = Arc::new(Shared {
        config,
        stats: Stats::default(),
        identity,
    });
    let (stop_tx, stop_rx) = watch::channel(false);
    let started = Instant::now();
    let tasks = spawn_devices(specs, &shared, &stop_rx);
    let progress_task =
        progress.then(|| tokio::spawn(progress_loop(shared.clone(), devices, started)));

    let deadline = duration.map(|d| started + d);
    let (reports, failure) = wait_for_devices(tasks, &stop_tx, shutdown, deadline).await;
    let elapsed = started.elapsed();
    if let Some(task) = progress_task {
        finish_progress(task, &shared.stats, devices, started).await;
    }
    if let Some(err) = failure {
        return Err(anyhow::Error::new(err).context("a simulated device failed"));
    }
    Ok(Summary::of_run(&shared.stats, devices, elapsed, reports))
}

/// One task a device, each starting after its own delay.
fn spawn_devices(
    specs: Vec<DeviceSpec>,
    shared: &Arc<Shared>,
    stop: &watch::Receiver<bool>,
) -> JoinSet<device::DeviceReport> {
    let devices = specs.len();
    let mut tasks = JoinSet::new();
    for spec in specs {
        let delay = shared.config.start_delay(spec.index, devices);
        tasks.spawn(device::run_device(
            spec,
            shared.clone(),
            stop.clone(),
            delay,
        ));
    }
    tasks
}

/// Collects every device's report, telling them all to stop (and drain)
/// on `shutdown`, at `deadline`, or when one of them panicked; that panic
/// is returned beside the reports.
async fn wait_for_devices(
    mut tasks: JoinSet<device::DeviceReport>,
    stop_tx: &watch::Sender<bool>,
    shutdown: impl Future<Output = ()>,
    deadline: Option<Instant>,
) -> (Vec<device::DeviceReport>, Option<tokio::task::JoinError>) {
    let mut reports = Vec::with_capacity(tasks.len());
    let mut failure = None;
    tokio::pin!(shutdown);
    let mut stopping = false;
    loop {
        tokio::select! {
            joined = tasks.join_next() => match joined {
                Some(Ok(report)) => reports.push(report),
                Some(Err(err)) => {
                    // A device task panicked: stop the others and report it.
                    failure.get_or_insert(err);
                    let _ = stop_tx.send(true);
                    stopping = true;
                }
                None => break,
            },
            _ = &mut shutdown, if !stopping => {
                tracing::info!("shutdown requested; draining");
                let _ = stop_tx.send(true);
                stopping = true;
            }
            _ = sleep_until_opt(deadline), if !stopping && deadline.is_some() => {
                let _ = stop_tx.send(true);
                stopping = true;
            }
        }
    }
    (reports, failure)
}

/// Stops the progress line and prints its final state, ending the line on
/// a terminal so what follows starts on a line of its own.
async fn finish_progress(
    task: tokio::task::JoinHandle<()>,
    stats: &Stats,
    devices: usize,
    started: Instant,
) {
    task.abort();
    let _ = task.await;
    print_progress(stats, devices, started, None);
    if std::io::stderr().is_terminal() {
        eprintln!();
    }
}

impl Summary {
    /// The run's counters and what the devices reported when they ended.
    fn of_run(
        stats: &Stats,
        devices: usize,
        elapsed: Duration,
        reports: Vec<device::DeviceReport>,
    ) -> Self {
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let mut summary = Summary {
            devices,
            messages_generated: load(&stats.generated),
            messages_sent: load(&stats.messages_sent),
            messages_acked: load(&stats.messages_acked),
            readings_acked: load(&stats.readings_acked),
            messages_unacked: 0,
            reconnects: load(&stats.reconnects),
            retransmits: load(&stats.retransmits),
            commands: load(&stats.commands),
            duplicate_commands: load(&stats.duplicate_commands),
            skipped_ticks: load(&stats.skipped_ticks),
            elapsed,
            published: Vec::new(),
        };
        for report in reports {
            summary.messages_unacked += report.unacked;
            summary.published.extend(report.published);
        }
        summary
    }
}

/// Sleeps until `at`; forever when there is no `at`.
async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

async fn progress_loop(shared: Arc<Shared>, devices: usize, started: Instant) {
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    ticker.tick().await;
    let mut last = (0u64, Instant::now());
    loop {
        ticker.tick().await;
        let now = Instant::now();
        let readings = shared.stats.readings_acked.load(Ordering::Relaxed);
        let rate = per_sec(readings.saturating_sub(last.0), now - last.1);
        print_progress(&shared.stats, devices, started, Some(rate));
        last = (readings, now);
    }
}

fn print_progress(stats: &Stats, devices: usize, started: Instant, rate: Option<f64>) {
    let line = format!(
        "[{:>6.1}s] sent {} acked {} readings {} ({} readings/s) connected {}/{}",
        started.elapsed().as_secs_f64(),
        stats.messages_sent.load(Ordering::Relaxed),
        stats.messages_acked.load(Ordering::Relaxed),
        stats.readings_acked.load(Ordering::Relaxed),
        rate.map_or_else(|| "-".to_string(), |r| format!("{r:.0}")),
        stats.connected.load(Ordering::Relaxed),
        devices,
    );
    let mut err = std::io::stderr().lock();
    // On a terminal the line updates in place; in a log, one line a second.
    let _ = if err.is_terminal() {
        write!(err, "\r\x1b[2K{line}")
    } else {
        writeln!(err, "{line}")
    };
    let _ = err.flush();
}
