//! Phase 2: our broker against Mosquitto, each as its own process, under the
//! same simulator load and with one QoS 1 subscriber on the telemetry filter.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use warmhouse_devstack::{
    create_topics, free_port, http_get_status, wait_for_tcp, ChildProcess, KafkaStorage, Tansu,
};

use super::cpu;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BrokerKind {
    Ours,
    Mosquitto,
}

impl BrokerKind {
    pub fn label(self) -> &'static str {
        match self {
            BrokerKind::Ours => "warmhouse-broker (rumqttd 0.20)",
            BrokerKind::Mosquitto => "Mosquitto",
        }
    }
}

#[derive(Debug, Clone)]
pub struct BrokerOptions {
    pub duration: Duration,
    pub devices: u32,
    /// Our broker's binary.
    pub broker_bin: PathBuf,
}

#[derive(Debug, Clone)]
pub struct BrokerRun {
    pub version: String,
    pub messages_acked: u64,
    pub messages_unacked: u64,
    pub reconnects: u64,
    pub sim_elapsed: Duration,
    pub received: u64,
    /// From the simulator's start to the last message the subscriber got.
    pub receive_window: Duration,
    pub subscriber_errors: u64,
    pub broker_cpu_secs: Option<f64>,
    pub broker_cpu_share: Option<f64>,
    /// The bench process: simulator and subscriber.
    pub bench_cpu_share: Option<f64>,
    pub others_cpu_share: Option<f64>,
}

impl BrokerRun {
    pub fn acked_per_sec(&self) -> f64 {
        super::per_sec(self.messages_acked, self.sim_elapsed)
    }
    pub fn received_per_sec(&self) -> f64 {
        super::per_sec(self.received, self.receive_window)
    }
    /// Broker CPU milliseconds per 1000 messages acknowledged.
    pub fn cpu_ms_per_k(&self) -> Option<f64> {
        let secs = self.broker_cpu_secs?;
        (self.messages_acked > 0).then(|| secs * 1e6 / self.messages_acked as f64)
    }
}

pub(super) struct RunningBroker {
    pub(super) process: ChildProcess,
    pub(super) port: u16,
    version: String,
    /// Our broker's Kafka (its PUBACKs wait for it); stopped with the broker.
    _kafka: Option<Tansu>,
}

/// tansu in memory with the topics our broker's ingress writes to.
async fn kafka_for_ours(dir: &Path) -> anyhow::Result<Tansu> {
    let kafka_dir = dir.join("kafka");
    let kafka = super::on_process_thread(move || Tansu::start(&kafka_dir, KafkaStorage::Memory))
        .await
        .context("starting tansu")??;
    let ingress = warmhouse_edge_bridge::IngressConfig::new(&kafka.bootstrap(), dir.join("spool"));
    create_topics(&kafka.bootstrap(), &ingress.kafka_topics(), 4).await?;
    Ok(kafka)
}

fn start_ours(dir: &Path, bin: &Path, kafka: Tansu) -> anyhow::Result<RunningBroker> {
    if !bin.is_file() {
        bail!(
            "{} not found: build it with `cargo build --release -p warmhouse-broker`",
            bin.display()
        );
    }
    let port = free_port()?;
    let v5 = free_port()?;
    let admin = free_port()?;
    let mut command = Command::new(bin);
    command
        .env("WARMHOUSE_BROKER_MQTT_V4_ADDR", format!("127.0.0.1:{port}"))
        .env("WARMHOUSE_BROKER_MQTT_V5_ADDR", format!("127.0.0.1:{v5}"))
        .env("WARMHOUSE_BROKER_ADMIN_ADDR", format!("127.0.0.1:{admin}"))
        // Like Mosquitto's `allow_anonymous true` below: the brokers are
        // compared on MQTT, not on the registry's access checks.
        .env("WARMHOUSE_BROKER_DEVICE_AUTH", "open")
        // Its PUBACK waits for Kafka (Mosquitto's does not wait at all).
        .env("WARMHOUSE_BROKER_KAFKA_BOOTSTRAP", kafka.bootstrap())
        .env("WARMHOUSE_BROKER_SPOOL_DIR", dir.join("spool"))
        // An error at start, not a backtrace, is what the log tail shows.
        .env("RUST_BACKTRACE", "0")
        .env("RUST_LOG", "warn");
    let mut process = ChildProcess::spawn("warmhouse-broker", command, &dir.join("broker.log"))?;
    // `start` returns only after both listeners passed a probe; readiness on
    // the admin port follows. Waiting for the MQTT port and then /readyz
    // covers both.
    wait_ready(&mut process, port, admin)?;
    Ok(RunningBroker {
        process,
        port,
        version: "rumqttd 0.20 (release build), PUBACK once tansu (in memory) has the message"
            .to_string(),
        _kafka: Some(kafka),
    })
}

fn wait_ready(process: &mut ChildProcess, port: u16, admin: u16) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        process.check_alive()?;
        if http_get_status(SocketAddr::from(([127, 0, 0, 1], admin)), "/readyz") == Some(200) {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "warmhouse-broker (MQTT port {port}) not ready after 30 s; log:\n{}",
                process.log_tail()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn start_mosquitto(dir: &Path) -> anyhow::Result<RunningBroker> {
    let program = Path::new("/usr/sbin/mosquitto");
    if !program.is_file() {
        bail!("/usr/sbin/mosquitto not found: install Debian's `mosquitto` package");
    }
    let port = free_port()?;
    let config = dir.join("mosquitto.conf");
    std::fs::write(
        &config,
        format!(
            "listener {port} 127.0.0.1\n\
             allow_anonymous true\n\
             max_inflight_messages 1000\n\
             max_queued_messages 100000\n\
             persistence false\n\
             log_dest stderr\n\
             log_type error\n\
             log_type warning\n"
        ),
    )
    .context("writing mosquitto.conf")?;
    let mut command = Command::new(program);
    command.arg("-c").arg(&config);
    let mut process = ChildProcess::spawn("mosquitto", command, &dir.join("mosquitto.log"))?;
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    if let Err(err) = wait_for_tcp(addr, Duration::from_secs(15)) {
        process.check_alive()?;
        return Err(err.context("mosquitto did not start listening"));
    }
    let version = Command::new(program)
        .arg("-h")
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .map(|l| l.trim().to_string())
        })
        .unwrap_or_else(|| "mosquitto".to_string());
    Ok(RunningBroker {
        process,
        port,
        version,
        _kafka: None,
    })
}

/// A QoS 1 subscriber counting what it receives (rumqttc acks automatically,
/// in order).
pub struct Subscriber {
    pub received: Arc<AtomicU64>,
    pub errors: Arc<AtomicU64>,
    pub last_received: Arc<Mutex<Option<Instant>>>,
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Subscriber {
    pub async fn start(port: u16, client_id: &str, filter: &str) -> anyhow::Result<Self> {
        let mut options = MqttOptions::new(client_id, "127.0.0.1", port);
        options
            .set_keep_alive(Duration::from_secs(30))
            .set_clean_session(true)
            .set_max_packet_size(1 << 20, 1 << 20);
        let (client, mut eventloop) = AsyncClient::new(options, 64);
        client
            .subscribe(filter, QoS::AtLeastOnce)
            .await
            .context("queueing SUBSCRIBE")?;
        let received = Arc::new(AtomicU64::new(0));
        let errors = Arc::new(AtomicU64::new(0));
        let last_received = Arc::new(Mutex::new(None));
        let (stop, mut stop_rx) = tokio::sync::watch::channel(false);
        let (subscribed_tx, subscribed_rx) = tokio::sync::oneshot::channel();
        let task = {
            let (received, errors, last) =
                (received.clone(), errors.clone(), last_received.clone());
            tokio::spawn(async move {
                let _client = client;
                let mut subscribed = Some(subscribed_tx);
                loop {
                    tokio::select! {
                        _ = stop_rx.changed() => break,
                        event = eventloop.poll() => match event {
                            Ok(Event::Incoming(Packet::Publish(_))) => {
                                received.fetch_add(1, Ordering::Relaxed);
                                if let Ok(mut last) = last.lock() {
                                    *last = Some(Instant::now());
                                }
                            }
                            Ok(Event::Incoming(Packet::SubAck(_))) => {
                                if let Some(tx) = subscribed.take() {
                                    let _ = tx.send(());
                                }
                            }
                            Ok(_) => {}
                            Err(_) => {
                                errors.fetch_add(1, Ordering::Relaxed);
                                tokio::time::sleep(Duration::from_millis(100)).await;
                            }
                        }
                    }
                }
            })
        };
        let subscriber = Self {
            received,
            errors,
            last_received,
            stop,
            task,
        };
        match tokio::time::timeout(Duration::from_secs(10), subscribed_rx).await {
            Ok(Ok(())) => Ok(subscriber),
            _ => {
                subscriber.stop().await;
                bail!("no SUBACK for {filter} within 10 s")
            }
        }
    }

    /// Waits until nothing arrived for `quiet` (at most `max`).
    pub async fn settle(&self, quiet: Duration, max: Duration) {
        let deadline = Instant::now() + max;
        let mut last_count = self.received.load(Ordering::Relaxed);
        let mut last_change = Instant::now();
        while Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let count = self.received.load(Ordering::Relaxed);
            if count != last_count {
                last_count = count;
                last_change = Instant::now();
            } else if last_change.elapsed() >= quiet {
                return;
            }
        }
    }

    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = tokio::time::timeout(Duration::from_secs(5), self.task).await;
    }
}

pub async fn run(
    kind: BrokerKind,
    dir: &Path,
    options: &BrokerOptions,
    run_id: &str,
) -> anyhow::Result<BrokerRun> {
    let dir = dir.join(match kind {
        BrokerKind::Ours => "ours",
        BrokerKind::Mosquitto => "mosquitto",
    });
    std::fs::create_dir_all(&dir).context("creating broker dir")?;
    let mut broker = start(kind, &dir, &options.broker_bin).await?;
    let result = drive(kind, &mut broker, options, run_id).await;
    broker.process.terminate(Duration::from_secs(2));
    result
}

/// Starts `kind` in `dir` (ours with a tansu of its own) and waits until it
/// serves.
pub(super) async fn start(
    kind: BrokerKind,
    dir: &Path,
    broker_bin: &Path,
) -> anyhow::Result<RunningBroker> {
    let (dir2, bin) = (dir.to_path_buf(), broker_bin.to_path_buf());
    let kafka = match kind {
        BrokerKind::Ours => Some(kafka_for_ours(dir).await?),
        BrokerKind::Mosquitto => None,
    };
    super::on_process_thread(move || match (kind, kafka) {
        (BrokerKind::Ours, Some(kafka)) => start_ours(&dir2, &bin, kafka),
        (BrokerKind::Ours, None) => bail!("our broker needs its Kafka"),
        (BrokerKind::Mosquitto, _) => start_mosquitto(&dir2),
    })
    .await
    .context("starting the broker")?
}

async fn drive(
    kind: BrokerKind,
    broker: &mut RunningBroker,
    options: &BrokerOptions,
    run_id: &str,
) -> anyhow::Result<BrokerRun> {
    let subscriber = Subscriber::start(
        broker.port,
        &format!("bench-subscriber-{run_id}"),
        "/tenants/+/telemetry",
    )
    .await?;
    let config = flat_out_load(broker.port, options, run_id)?;
    let me = std::process::id();
    let mut watched = vec![("bench".to_string(), me)];
    if let Some(pid) = broker.process.pid() {
        watched.push(("broker".to_string(), pid));
    }
    let before = cpu::snapshot(&watched, me);
    let started = Instant::now();
    let summary = tokio::time::timeout(
        options.duration + Duration::from_secs(60),
        warmhouse_simulator::run(config, std::future::pending()),
    )
    .await;
    let after = cpu::snapshot(&watched, me);
    let summary = match summary {
        Ok(Ok(summary)) => summary,
        Ok(Err(err)) => {
            subscriber.stop().await;
            return Err(err.context("simulator"));
        }
        Err(_) => {
            subscriber.stop().await;
            bail!("simulator did not finish in time");
        }
    };
    subscriber
        .settle(Duration::from_secs(2), Duration::from_secs(20))
        .await;
    let received = subscriber.received.load(Ordering::Relaxed);
    let last = subscriber.last_received.lock().ok().and_then(|l| *l);
    let errors = subscriber.errors.load(Ordering::Relaxed);
    subscriber.stop().await;
    let usage = cpu::usage(&before, &after, super::cores());
    let broker_cpu_secs = usage.process("broker");
    if let Err(err) = broker.process.check_alive() {
        bail!("{} died during the run: {err:#}", kind.label());
    }
    Ok(BrokerRun {
        version: broker.version.clone(),
        messages_acked: summary.messages_acked,
        messages_unacked: summary.messages_unacked,
        reconnects: summary.reconnects,
        sim_elapsed: summary.elapsed,
        received,
        receive_window: last.map_or(Duration::ZERO, |l| l.saturating_duration_since(started)),
        subscriber_errors: errors,
        broker_cpu_secs,
        broker_cpu_share: broker_cpu_secs.map(|s| usage.share(s)),
        bench_cpu_share: usage.process("bench").map(|s| usage.share(s)),
        others_cpu_share: usage.others_share(),
    })
}

/// The simulator's configuration: `options.devices` on the broker at
/// `port`, each publishing QoS 1 readings as fast as it can
/// (`--interval-ms 0`), one sample a message.
fn flat_out_load(
    port: u16,
    options: &BrokerOptions,
    run_id: &str,
) -> anyhow::Result<warmhouse_simulator::SimConfig> {
    let homes = options.devices.div_ceil(4).max(1);
    super::sim_config(
        &[port],
        &[
            "--homes",
            &homes.to_string(),
            "--devices-per-home",
            &options.devices.min(4).to_string(),
            "--interval-ms",
            "0",
            "--samples-per-message",
            "1",
            "--duration-secs",
            &options.duration.as_secs().max(1).to_string(),
            "--run-id",
            run_id,
            "--drain-timeout-secs",
            "10",
        ],
    )
}
