//! The Warmhouse MQTT broker: rumqttd 0.20 embedded, with an MQTT 3.1.1 and
//! an MQTT 5 listener, small in-memory logs, Prometheus metrics fed from
//! rumqttd's meters, and `/healthz` + `/readyz` driven by a self-probe that
//! speaks MQTT to its own listeners.
//!
//! ```no_run
//! # async fn run() -> anyhow::Result<()> {
//! use clap::Parser;
//! let broker = warmhouse_broker::start(warmhouse_broker::BrokerConfig::parse()).await?;
//! println!("MQTT on {} and {}", broker.mqtt_v4_addr, broker.mqtt_v5_addr);
//! # Ok(()) }
//! ```
//!
//! rumqttd has no shutdown: once started, its threads live until the
//! process exits. [`RunningBroker::shutdown`] stops only what this crate
//! adds (admin server, probe, metrics).

mod config;
mod metrics;
mod probe;

use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context};
use prometheus::Registry;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use warmhouse_service_kit::{admin_router, serve, Readiness};

pub use config::BrokerConfig;
pub use probe::{Listener, Prober};

use metrics::BrokerMetrics;

/// A started broker. Dropping it stops the admin server, the self-probe and
/// the metrics pump; rumqttd itself keeps running until the process exits.
pub struct RunningBroker {
    pub mqtt_v4_addr: SocketAddr,
    pub mqtt_v5_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub registry: Registry,
    pub readiness: Readiness,
    shutdown: watch::Sender<bool>,
    failures: mpsc::UnboundedReceiver<anyhow::Error>,
    admin_task: Option<JoinHandle<()>>,
    tasks: Vec<JoinHandle<()>>,
}

impl RunningBroker {
    /// Resolves when the broker can no longer serve: rumqttd's thread ended
    /// or panicked, its router stopped, or a listener failed
    /// `probe_failure_limit` probes in a row. The binary exits on it so the
    /// orchestrator restarts the process (rumqttd cannot be restarted
    /// in-process).
    pub async fn failed(&mut self) -> anyhow::Error {
        match self.failures.recv().await {
            Some(err) => err,
            // Every watcher is gone (after shutdown): nothing more to report.
            None => std::future::pending().await,
        }
    }

    /// Stops the admin server (gracefully), the probe and the metrics pump.
    pub async fn shutdown(mut self) {
        self.stop_tasks();
        if let Some(admin_task) = self.admin_task.take() {
            if let Err(err) = admin_task.await {
                tracing::warn!(%err, "admin server task ended abnormally");
            }
        }
    }

    fn stop_tasks(&mut self) {
        let _ = self.shutdown.send(true);
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl Drop for RunningBroker {
    fn drop(&mut self) {
        self.stop_tasks();
    }
}

/// Starts rumqttd (in its own threads: it blocks) and the admin HTTP server,
/// and returns once both MQTT listeners complete a publish/subscribe round
/// trip, or fails with the reason.
pub async fn start(config: BrokerConfig) -> anyhow::Result<RunningBroker> {
    config.validate().context("invalid broker configuration")?;
    // rumqttd logs a bind failure and carries on without that listener;
    // binding first turns "address in use" into an error here.
    for addr in [config.mqtt_v4_addr, config.mqtt_v5_addr] {
        std::net::TcpListener::bind(addr)
            .with_context(|| format!("MQTT listener address {addr} is not available"))?;
    }
    let rumqttd_config = config.to_rumqttd()?;

    let registry = Registry::new();
    let metrics = BrokerMetrics::register(&registry)?;
    let readiness = Readiness::new();
    for listener in [Listener::V4, Listener::V5] {
        readiness.set(listener.name(), false);
    }
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let stopped = {
        let rx = shutdown_rx.clone();
        // Also resolves when the sender is dropped with the RunningBroker.
        async move {
            let mut rx = rx;
            let _ = rx.wait_for(|stop| *stop).await;
        }
    };
    let (admin_addr, admin_task) = serve(
        config.admin_addr,
        admin_router(registry.clone(), readiness.clone()),
        stopped,
    )
    .await
    .context("starting the admin HTTP server")?;

    let (failure_tx, mut failures) = mpsc::unbounded_channel();
    let mut broker = rumqttd::Broker::new(rumqttd_config);
    // Links must be made before `start` takes the broker into its thread.
    let meters = broker.meters().context("opening rumqttd's meters link")?;
    let alerts = broker.alerts().context("opening rumqttd's alerts link")?;
    {
        let failure_tx = failure_tx.clone();
        std::thread::Builder::new()
            .name("rumqttd".to_string())
            .spawn(move || {
                // rumqttd's error is neither small nor Sync: keep its message.
                let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| {
                    broker.start().map_err(|err| err.to_string())
                }));
                let err = match outcome {
                    Ok(Ok(())) => {
                        anyhow!("rumqttd stopped: all its listeners ended (see the log for why)")
                    }
                    Ok(Err(err)) => anyhow!("rumqttd failed: {err}"),
                    Err(_) => anyhow!("rumqttd panicked"),
                };
                let _ = failure_tx.send(err);
            })
            .context("spawning the rumqttd thread")?;
    }

    let mut tasks = Vec::new();
    {
        let metrics = metrics.clone();
        let failure_tx = failure_tx.clone();
        tasks.push(tokio::spawn(async move {
            let err = metrics::pump(meters, alerts, metrics).await;
            let _ = failure_tx.send(err);
        }));
    }

    let mut probers = [
        Prober::new(Listener::V4, config.mqtt_v4_addr),
        Prober::new(Listener::V5, config.mqtt_v5_addr),
    ];
    let probe_timeout = Duration::from_secs(config.probe_timeout_secs);
    let startup = wait_until_serving(
        &mut probers,
        probe_timeout,
        Duration::from_secs(config.startup_timeout_secs),
        &mut failures,
    )
    .await;
    if let Err(err) = startup {
        let _ = shutdown_tx.send(true);
        tasks.iter().for_each(JoinHandle::abort);
        return Err(err.context("rumqttd did not start serving"));
    }
    for prober in &probers {
        readiness.set(prober.listener().name(), true);
        metrics
            .probe_up
            .with_label_values(&[prober.listener().name()])
            .set(1);
    }

    tasks.push(tokio::spawn(probe_loop(
        probers,
        Duration::from_secs(config.probe_interval_secs),
        probe_timeout,
        config.probe_failure_limit,
        readiness.clone(),
        metrics,
        failure_tx,
        shutdown_rx,
    )));

    tracing::info!(
        mqtt_v4 = %config.mqtt_v4_addr,
        mqtt_v5 = %config.mqtt_v5_addr,
        admin = %admin_addr,
        "broker serving"
    );
    Ok(RunningBroker {
        mqtt_v4_addr: config.mqtt_v4_addr,
        mqtt_v5_addr: config.mqtt_v5_addr,
        admin_addr,
        registry,
        readiness,
        shutdown: shutdown_tx,
        failures,
        admin_task: Some(admin_task),
        tasks,
    })
}

/// Probes every listener until each has answered once, rumqttd reports a
/// failure, or `deadline` passes.
async fn wait_until_serving(
    probers: &mut [Prober],
    probe_timeout: Duration,
    deadline: Duration,
    failures: &mut mpsc::UnboundedReceiver<anyhow::Error>,
) -> anyhow::Result<()> {
    let started = Instant::now();
    let mut serving = vec![false; probers.len()];
    loop {
        if let Ok(err) = failures.try_recv() {
            return Err(err);
        }
        let mut last_error = None;
        for (prober, serving) in probers.iter_mut().zip(serving.iter_mut()) {
            if !*serving {
                match prober.probe(probe_timeout).await {
                    Ok(()) => *serving = true,
                    Err(err) => last_error = Some(err),
                }
            }
        }
        match last_error {
            None => return Ok(()),
            Some(err) if started.elapsed() >= deadline => {
                return Err(err.context(format!("listeners not serving after {deadline:?}")))
            }
            Some(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn probe_loop(
    mut probers: [Prober; 2],
    interval: Duration,
    timeout: Duration,
    failure_limit: u32,
    readiness: Readiness,
    metrics: BrokerMetrics,
    failure_tx: mpsc::UnboundedSender<anyhow::Error>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut consecutive = [0u32; 2];
    // start() has just probed: the first periodic probe is one interval away.
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = shutdown.wait_for(|stop| *stop) => return,
        }
        for (i, prober) in probers.iter_mut().enumerate() {
            let name = prober.listener().name();
            match prober.probe(timeout).await {
                Ok(()) => {
                    consecutive[i] = 0;
                    readiness.set(name, true);
                    metrics.probe_up.with_label_values(&[name]).set(1);
                }
                Err(err) => {
                    consecutive[i] += 1;
                    readiness.set(name, false);
                    metrics.probe_up.with_label_values(&[name]).set(0);
                    metrics.probe_failures.with_label_values(&[name]).inc();
                    tracing::warn!(
                        listener = name,
                        failures = consecutive[i],
                        error = format!("{err:#}"),
                        "self-probe failed"
                    );
                    if failure_limit > 0 && consecutive[i] == failure_limit {
                        let _ = failure_tx.send(err.context(format!(
                            "{name} listener failed {failure_limit} probes in a row"
                        )));
                    }
                }
            }
        }
    }
}
