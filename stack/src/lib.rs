//! The whole pipeline on one machine: tansu and influxd as real child
//! processes, and the broker, edge bridge, ingest writer and query API
//! in-process, each on free loopback ports. The local stack (`warmhouse-stack
//! up`), the system tests and the benchmark all start it the same way.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use warmhouse_contracts::kafka::topics;
use warmhouse_devstack::{create_topics, free_port, Influxd, KafkaStorage, Tansu};

pub mod verify;

/// A future that resolves when `stop` says so.
fn stopped(
    stop: &tokio::sync::watch::Sender<bool>,
) -> impl std::future::Future<Output = ()> + Send + 'static {
    let mut rx = stop.subscribe();
    async move {
        let _ = rx.wait_for(|stopped| *stopped).await;
    }
}

/// Knobs of a stack; the defaults suit tests.
#[derive(Debug, Clone)]
pub struct StackOptions {
    pub kafka_storage: KafkaStorage,
    pub partitions: i32,
    /// How long the bridge waits for Kafka before spooling a record.
    pub bridge_kafka_timeout: Duration,
    pub ingest_batch_max_points: usize,
    pub ingest_batch_max_delay: Duration,
    /// Fixed ports for the local stack (MQTT, query API); free ones when `None`.
    pub mqtt_port: Option<u16>,
    pub query_port: Option<u16>,
}

impl Default for StackOptions {
    fn default() -> Self {
        Self {
            kafka_storage: KafkaStorage::Memory,
            partitions: 4,
            bridge_kafka_timeout: Duration::from_secs(3),
            ingest_batch_max_points: 20_000,
            ingest_batch_max_delay: Duration::from_millis(50),
            mqtt_port: None,
            query_port: None,
        }
    }
}

/// A running stack. Dropping it stops our services, then kills the
/// processes (fields drop in declaration order: services first, so Kafka
/// clients never outlive the broker they talk to); [`Stack::stop`] does the
/// same gracefully.
pub struct Stack {
    pub bridge: warmhouse_edge_bridge::RunningBridge,
    pub writer: warmhouse_ingest::writer::RunningWriter,
    pub query: warmhouse_ingest::query::RunningQueryApi,
    pub broker: warmhouse_broker::RunningBroker,
    pub tansu: Tansu,
    pub influxd: Influxd,
    pub dir: PathBuf,
    stop: tokio::sync::watch::Sender<bool>,
}

impl Stack {
    pub async fn start(dir: &Path, options: StackOptions) -> anyhow::Result<Self> {
        warmhouse_service_kit::init_tracing();
        let tansu = Tansu::start(&dir.join("kafka"), options.kafka_storage)?;
        create_topics(
            &tansu.bootstrap(),
            &[
                topics::TELEMETRY,
                topics::DEVICE_EVENTS,
                topics::DEVICE_COMMANDS,
            ],
            options.partitions,
        )
        .await?;
        create_topics(&tansu.bootstrap(), &[topics::DEAD_LETTERS], 1).await?;
        let influxd = Influxd::start(&dir.join("influxdb"))?;

        let loopback = |port: u16| SocketAddr::from(([127, 0, 0, 1], port));
        let mqtt_port = match options.mqtt_port {
            Some(port) => port,
            None => free_port()?,
        };
        let broker = warmhouse_broker::start(warmhouse_broker::BrokerConfig::for_tests(
            loopback(mqtt_port),
            loopback(free_port()?),
            loopback(0),
        ))
        .await
        .context("starting the MQTT broker")?;

        let mut bridge_config = warmhouse_edge_bridge::BridgeConfig::new(
            mqtt_port,
            &tansu.bootstrap(),
            dir.join("bridge-spool"),
        );
        bridge_config.kafka_timeout_ms = options.bridge_kafka_timeout.as_millis() as u64;
        let (stop, _) = tokio::sync::watch::channel(false);
        let bridge = warmhouse_edge_bridge::start(bridge_config, stopped(&stop))
            .await
            .context("starting the edge bridge")?;

        let mut writer_config =
            warmhouse_ingest::writer::WriterConfig::new(&tansu.bootstrap(), &influxd.url());
        writer_config.batch_max_points = options.ingest_batch_max_points;
        writer_config.batch_max_delay_ms = options.ingest_batch_max_delay.as_millis() as u64;
        let writer = warmhouse_ingest::writer::start(writer_config, stopped(&stop))
            .await
            .context("starting the ingest writer")?;

        let query_config = warmhouse_ingest::query::QueryConfig::new(
            loopback(options.query_port.unwrap_or(0)),
            influxd.url(),
        );
        let query = warmhouse_ingest::query::start(query_config, stopped(&stop))
            .await
            .context("starting the query API")?;

        Ok(Self {
            dir: dir.to_path_buf(),
            tansu,
            influxd,
            broker,
            bridge,
            writer,
            query,
            stop,
        })
    }

    /// Stops the services gracefully (the writer finishes its in-flight
    /// batches and commits), then the infrastructure.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let Stack {
            bridge,
            writer,
            query,
            broker,
            tansu,
            influxd,
            ..
        } = self;
        if tokio::time::timeout(Duration::from_secs(10), writer.join())
            .await
            .is_err()
        {
            tracing::warn!("ingest writer did not stop within 10 s");
        }
        drop(bridge);
        drop(query);
        broker.shutdown().await;
        drop(tansu);
        drop(influxd);
    }

    pub fn mqtt_port(&self) -> u16 {
        self.broker.mqtt_v4_addr.port()
    }

    pub fn query_url(&self) -> String {
        format!("http://{}", self.query.addr)
    }

    /// A simulator configuration pointed at this stack.
    pub fn simulator(&self, args: &[&str]) -> warmhouse_simulator::SimConfig {
        use clap::Parser;
        let port = self.mqtt_port().to_string();
        let mut argv = vec![
            "warmhouse-sim",
            "--host",
            "127.0.0.1",
            "--port",
            port.as_str(),
        ];
        argv.extend_from_slice(args);
        warmhouse_simulator::SimConfig::parse_from(argv)
    }
}
