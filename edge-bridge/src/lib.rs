//! The edge bridge: MQTT (device side) to Kafka (platform side).
//!
//! A device's QoS 1 publish is acknowledged to the broker only once what it
//! carried is safe: acknowledged by Kafka (idempotent producer, acks=all) or
//! fsynced to the local [`spool`] while Kafka is unreachable. Acks go out in
//! the order the publishes came in (rumqttd expects that). Anything that
//! cannot be decoded goes to the dead-letter topic with the reason, so bad
//! input never blocks good input. See docs/adr/0003-bridge-spool.md.

pub mod commands;
pub mod delivery;
pub mod kafka;
pub mod metrics;
pub mod route;
pub mod spool;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use futures::stream::{FuturesOrdered, StreamExt};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, Publish, QoS};
use tokio::sync::mpsc;
use warmhouse_contracts::kafka::topics;
use warmhouse_contracts::topics::Channel;
use warmhouse_service_kit::{admin_router, now_ms, serve, Readiness};

use crate::delivery::Delivery;
use crate::metrics::Metrics;
use crate::route::{route, Routed, Topics};
use crate::spool::Spool;

/// Configuration; every option is also an environment variable.
#[derive(clap::Parser, Debug, Clone)]
#[command(name = "edge-bridge", about = "Warmhouse edge bridge: MQTT to Kafka")]
pub struct BridgeConfig {
    /// MQTT broker host.
    #[arg(long, env = "WARMHOUSE_BRIDGE_MQTT_HOST", default_value = "127.0.0.1")]
    pub mqtt_host: String,
    /// MQTT broker port (the internal, non-tenant listener).
    #[arg(long, env = "WARMHOUSE_BRIDGE_MQTT_PORT", default_value_t = 1883)]
    pub mqtt_port: u16,
    /// MQTT client id; keep it stable so the broker keeps the session.
    #[arg(
        long,
        env = "WARMHOUSE_BRIDGE_MQTT_CLIENT_ID",
        default_value = "warmhouse-edge-bridge"
    )]
    pub mqtt_client_id: String,
    /// MQTT username: the broker's service account on its internal listener
    /// (`WARMHOUSE_BROKER_SERVICE_USERNAME`).
    #[arg(long, env = "WARMHOUSE_BRIDGE_MQTT_USERNAME")]
    pub mqtt_username: Option<String>,
    /// MQTT password of that service account.
    #[arg(long, env = "WARMHOUSE_BRIDGE_MQTT_PASSWORD", hide_env_values = true)]
    pub mqtt_password: Option<String>,
    /// Kafka bootstrap servers, comma separated.
    #[arg(
        long,
        env = "WARMHOUSE_KAFKA_BOOTSTRAP",
        default_value = "127.0.0.1:9092"
    )]
    pub kafka_bootstrap: String,
    #[arg(long, env = "WARMHOUSE_TOPIC_TELEMETRY", default_value = topics::TELEMETRY)]
    pub telemetry_topic: String,
    #[arg(long, env = "WARMHOUSE_TOPIC_DEVICE_EVENTS", default_value = topics::DEVICE_EVENTS)]
    pub device_events_topic: String,
    #[arg(long, env = "WARMHOUSE_TOPIC_DEAD_LETTERS", default_value = topics::DEAD_LETTERS)]
    pub dead_letters_topic: String,
    #[arg(long, env = "WARMHOUSE_TOPIC_DEVICE_COMMANDS", default_value = topics::DEVICE_COMMANDS)]
    pub device_commands_topic: String,
    /// Consumer group reading `device-commands` (one per bridge deployment).
    #[arg(
        long,
        env = "WARMHOUSE_BRIDGE_COMMANDS_GROUP",
        default_value = "warmhouse-edge-bridge-commands"
    )]
    pub commands_group: String,
    /// How long Kafka may take to acknowledge a record before it is spooled.
    #[arg(
        long,
        env = "WARMHOUSE_BRIDGE_KAFKA_TIMEOUT_MS",
        default_value_t = 10_000
    )]
    pub kafka_timeout_ms: u64,
    /// How long the producer waits to fill a batch.
    #[arg(long, env = "WARMHOUSE_BRIDGE_KAFKA_LINGER_MS", default_value_t = 5)]
    pub kafka_linger_ms: u64,
    /// Directory of the local spool.
    #[arg(
        long,
        env = "WARMHOUSE_BRIDGE_SPOOL_DIR",
        default_value = "data/bridge-spool"
    )]
    pub spool_dir: PathBuf,
    /// Spool size limit; when full, publishes wait unacknowledged (backpressure).
    #[arg(long, env = "WARMHOUSE_BRIDGE_SPOOL_MAX_BYTES", default_value_t = 1 << 30)]
    pub spool_max_bytes: u64,
    /// Most publishes being made safe at once. rumqttd itself sends the
    /// bridge at most 100 unacknowledged publishes (a constant of rumqttd
    /// 0.20), so today that window is the tighter bound.
    #[arg(long, env = "WARMHOUSE_BRIDGE_MAX_IN_FLIGHT", default_value_t = 20_000)]
    pub max_in_flight: usize,
    /// Address of /metrics, /healthz and /readyz.
    #[arg(
        long,
        env = "WARMHOUSE_BRIDGE_ADMIN_LISTEN",
        default_value = "0.0.0.0:9184"
    )]
    pub admin_listen: SocketAddr,
}

impl BridgeConfig {
    /// Username and password for the broker, when a username is set.
    pub fn mqtt_credentials(&self) -> Option<(String, String)> {
        self.mqtt_username
            .clone()
            .map(|user| (user, self.mqtt_password.clone().unwrap_or_default()))
    }

    /// Defaults with the given endpoints: for tests and embedding.
    pub fn new(mqtt_port: u16, kafka_bootstrap: &str, spool_dir: PathBuf) -> Self {
        use clap::Parser;
        let mut config = Self::parse_from(["edge-bridge"]);
        config.mqtt_port = mqtt_port;
        config.kafka_bootstrap = kafka_bootstrap.to_string();
        config.spool_dir = spool_dir;
        config.admin_listen = SocketAddr::from(([127, 0, 0, 1], 0));
        config
    }
}

pub struct RunningBridge {
    pub admin_addr: SocketAddr,
    pub metrics: Metrics,
    pub readiness: Readiness,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for RunningBridge {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Starts the bridge on the current Tokio runtime.
pub async fn start(
    config: BridgeConfig,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<RunningBridge> {
    let registry = prometheus::Registry::new();
    let metrics = Metrics::new(&registry)?;
    let readiness = Readiness::new();
    readiness.set("mqtt", false);

    let spool = Spool::open(&config.spool_dir, config.spool_max_bytes, 64 << 20)
        .with_context(|| format!("opening spool in {}", config.spool_dir.display()))?;
    let producer = kafka::Producer::new(
        &config.kafka_bootstrap,
        Duration::from_millis(config.kafka_timeout_ms),
        Duration::from_millis(config.kafka_linger_ms),
    )?;
    let delivery = Delivery::new(producer, spool, metrics.clone());
    let topics = Topics {
        telemetry: config.telemetry_topic.clone(),
        device_events: config.device_events_topic.clone(),
        dead_letters: config.dead_letters_topic.clone(),
    };

    let mut options = MqttOptions::new(&config.mqtt_client_id, &config.mqtt_host, config.mqtt_port);
    options
        .set_clean_session(false)
        .set_manual_acks(true)
        .set_keep_alive(Duration::from_secs(15))
        // Larger than the broker's own limit, so an oversized payload reaches
        // us (and the dead-letter topic) instead of breaking the connection.
        .set_max_packet_size(4 << 20, 64 << 10)
        .set_request_channel_capacity(config.max_in_flight.max(1024));
    if let Some((username, password)) = config.mqtt_credentials() {
        options.set_credentials(username, password);
    }
    let (client, mut eventloop) = AsyncClient::new(options, config.max_in_flight.max(1024));
    // Acks are small and go out one by one: never wait on Nagle.
    eventloop.network_options.set_tcp_nodelay(true);

    let (shutdown_tx, _) = tokio::sync::broadcast::channel::<()>(1);
    let (publish_tx, publish_rx) = mpsc::unbounded_channel();
    let epoch = Arc::new(AtomicU64::new(0));

    let mut tasks = Vec::new();
    tasks.push(tokio::spawn(mqtt_loop(
        eventloop,
        client.clone(),
        publish_tx,
        epoch.clone(),
        readiness.clone(),
        metrics.clone(),
    )));
    tasks.push(tokio::spawn(process_publishes(
        publish_rx,
        client,
        delivery.clone(),
        topics,
        epoch,
        metrics.clone(),
        config.max_in_flight,
    )));
    tasks.push(tokio::spawn(delivery.clone().drain_forever(1000)));
    tasks.extend(commands::spawn(
        commands::CommandSettings {
            mqtt_host: config.mqtt_host.clone(),
            mqtt_port: config.mqtt_port,
            mqtt_client_id: format!("{}-commands", config.mqtt_client_id),
            mqtt_credentials: config.mqtt_credentials(),
            kafka_bootstrap: config.kafka_bootstrap.clone(),
            group_id: config.commands_group.clone(),
            commands_topic: config.device_commands_topic.clone(),
            device_events_topic: config.device_events_topic.clone(),
            dead_letters_topic: config.dead_letters_topic.clone(),
        },
        delivery.clone(),
        metrics.clone(),
    )?);
    let kafka_readiness = readiness.clone();
    let kafka_delivery = delivery.clone();
    tasks.push(tokio::spawn(async move {
        loop {
            kafka_readiness.set("kafka", kafka_delivery.kafka_available());
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }));

    let mut shutdown_rx = shutdown_tx.subscribe();
    let (admin_addr, admin_task) = serve(
        config.admin_listen,
        admin_router(registry, readiness.clone()),
        async move {
            let _ = shutdown_rx.recv().await;
        },
    )
    .await?;
    tasks.push(admin_task);
    tasks.push(tokio::spawn(async move {
        shutdown.await;
        let _ = shutdown_tx.send(());
    }));
    tracing::info!(%admin_addr, mqtt = %format!("{}:{}", config.mqtt_host, config.mqtt_port), kafka = %config.kafka_bootstrap, "edge bridge started");
    Ok(RunningBridge {
        admin_addr,
        metrics,
        readiness,
        tasks,
    })
}

/// Drives the MQTT connection. Every (re)connect starts a new epoch: acks of
/// publishes from an earlier connection are not sent (their packet ids mean
/// nothing on the new one); the broker redelivers those, and the duplicates
/// are harmless because storage is idempotent.
async fn mqtt_loop(
    mut eventloop: rumqttc::EventLoop,
    client: AsyncClient,
    publishes: mpsc::UnboundedSender<(u64, Publish)>,
    epoch: Arc<AtomicU64>,
    readiness: Readiness,
    metrics: Metrics,
) {
    let filters: Vec<rumqttc::SubscribeFilter> = Channel::UPSTREAM
        .iter()
        .map(|c| rumqttc::SubscribeFilter::new(c.filter_all_devices(), QoS::AtLeastOnce))
        .collect();
    let mut backoff = Duration::from_millis(100);
    loop {
        match eventloop.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                let current = epoch.fetch_add(1, Ordering::SeqCst) + 1;
                tracing::info!(
                    session_present = ack.session_present,
                    epoch = current,
                    "connected to MQTT broker"
                );
                // try_: the event loop must keep running for this to be sent.
                if let Err(err) = client.try_subscribe_many(filters.clone()) {
                    tracing::error!(%err, "cannot queue MQTT subscription");
                }
                readiness.set("mqtt", true);
                backoff = Duration::from_millis(100);
            }
            Ok(Event::Incoming(Packet::Publish(publish))) => {
                // The broker's in-flight window bounds how many arrive unacked.
                if publishes
                    .send((epoch.load(Ordering::SeqCst), publish))
                    .is_err()
                {
                    return;
                }
            }
            Ok(_) => {}
            Err(err) => {
                readiness.set("mqtt", false);
                metrics.mqtt_reconnects.inc();
                tracing::warn!(%err, "MQTT connection lost; reconnecting in {backoff:?}");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

async fn process_publishes(
    mut publishes: mpsc::UnboundedReceiver<(u64, Publish)>,
    client: AsyncClient,
    delivery: Arc<Delivery>,
    topics: Topics,
    epoch: Arc<AtomicU64>,
    metrics: Metrics,
    max_in_flight: usize,
) {
    let mut pending = FuturesOrdered::new();
    let mut open = true;
    while open || !pending.is_empty() {
        tokio::select! {
            biased;
            Some((publish_epoch, publish)) = pending.next(), if !pending.is_empty() => {
                metrics.in_flight.dec();
                let publish: Publish = publish;
                if publish.qos != QoS::AtMostOnce && publish_epoch == epoch.load(Ordering::SeqCst) {
                    if let Err(err) = client.ack(&publish).await {
                        tracing::warn!(%err, "cannot queue MQTT ack");
                    } else {
                        metrics.acked.inc();
                    }
                }
            }
            next = publishes.recv(), if open && pending.len() < max_in_flight => {
                let Some((publish_epoch, publish)) = next else {
                    open = false;
                    continue;
                };
                metrics.in_flight.inc();
                let routed = route(&topics, &publish.topic, &publish.payload, now_ms());
                match &routed {
                    Routed::Telemetry { readings, .. } => {
                        metrics.received.with_label_values(&["telemetry"]).inc();
                        metrics.readings.inc_by(*readings as u64);
                    }
                    Routed::DeviceEvent(_) => metrics.received.with_label_values(&["device_event"]).inc(),
                    Routed::DeadLetter { reason_kind, .. } => {
                        metrics.received.with_label_values(&["invalid"]).inc();
                        metrics.dead_lettered.with_label_values(&[reason_kind]).inc();
                        tracing::debug!(topic = %publish.topic, reason = %reason_kind, "dead-lettering a publish");
                    }
                }
                let delivery = delivery.clone();
                // Keep the publish (for its packet id) but not its payload.
                let mut ack_handle = Publish::new(publish.topic.clone(), publish.qos, Vec::<u8>::new());
                ack_handle.pkid = publish.pkid;
                pending.push_back(async move {
                    delivery.deliver(routed.into_record()).await;
                    (publish_epoch, ack_handle)
                });
            }
        }
    }
}
