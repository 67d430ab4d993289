//! The whole pipeline on one machine: tansu and influxd as real child
//! processes, and the broker replicas (each with its device ingress),
//! ingest writer and query API in-process, each on free loopback ports. The local stack (`warmhouse-stack
//! up`), the system tests and the benchmark all start it the same way.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use warmhouse_contracts::kafka::topics;
use warmhouse_devstack::{
    create_topics, free_port, Influxd, KafkaStorage, Postgres, Prometheus, ScrapeTarget,
    TansuCluster,
};

pub mod broker_process;
pub mod fleet;
pub mod gateway;
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
    /// tansu brokers. More than one share one SQLite store (set
    /// `kafka_storage` to `Sqlite`) and every client is bootstrapped with
    /// all of them (docs/adr/0018-kafka-cluster-locally.md).
    pub kafka_brokers: usize,
    pub partitions: i32,
    /// MQTT broker replicas, each with its own spool (devices may connect
    /// to any of them).
    pub broker_replicas: usize,
    /// Run the replicas as processes of their own (to kill and restart
    /// them) instead of in this process; see [`Stack::broker_processes`].
    pub broker_processes: Option<broker_process::BrokerProcessConfig>,
    /// How long a broker waits for Kafka before spooling a record.
    pub broker_kafka_timeout: Duration,
    pub ingest_batch_max_points: usize,
    pub ingest_batch_max_delay: Duration,
    /// Fixed ports for the local stack (MQTT of the first broker replica,
    /// the next replicas on the ports after it; query API); free ones when
    /// `None`.
    pub mqtt_port: Option<u16>,
    pub query_port: Option<u16>,
    /// Also start PostgreSQL and the device registry (commands, state).
    pub registry: bool,
    /// Devices authenticate against the registry (the brokers' production
    /// setting): each needs a credential from it. Needs `registry`. Off,
    /// the device listeners are open (docs/adr/0010-device-identity.md).
    pub broker_device_auth: bool,
    pub registry_port: Option<u16>,
    /// Also start the API gateway (nginx) in front of the registry and the
    /// query API; needs `registry`.
    pub gateway: bool,
    pub gateway_port: Option<u16>,
    pub gateway_rate_limit: gateway::RateLimit,
    /// Also start Prometheus, scraping every service's `/metrics`.
    pub prometheus: bool,
    pub prometheus_port: Option<u16>,
}

/// How often the stack's Prometheus scrapes: short, so tests see metrics
/// within seconds.
pub const SCRAPE_INTERVAL: Duration = Duration::from_secs(1);

impl Default for StackOptions {
    fn default() -> Self {
        Self {
            kafka_storage: KafkaStorage::Memory,
            kafka_brokers: 1,
            partitions: 4,
            broker_replicas: 1,
            broker_processes: None,
            broker_kafka_timeout: Duration::from_secs(3),
            ingest_batch_max_points: 20_000,
            ingest_batch_max_delay: Duration::from_millis(50),
            mqtt_port: None,
            query_port: None,
            registry: false,
            broker_device_auth: false,
            registry_port: None,
            gateway: false,
            gateway_port: None,
            gateway_rate_limit: gateway::RateLimit::GENEROUS,
            prometheus: false,
            prometheus_port: None,
        }
    }
}

/// A running stack. Dropping it stops our services, then kills the
/// processes (fields drop in declaration order: services first, so Kafka
/// clients never outlive the broker they talk to); [`Stack::stop`] does the
/// same gracefully.
pub struct Stack {
    /// First, so it stops taking requests before the services go.
    pub gateway: Option<warmhouse_devstack::Nginx>,
    pub writer: warmhouse_ingest::writer::RunningWriter,
    pub query: warmhouse_ingest::query::RunningQueryApi,
    pub registry: Option<warmhouse_device_registry::RunningRegistry>,
    /// The MQTT broker replicas (each with its device ingress), when they
    /// run in this process.
    pub brokers: Vec<warmhouse_broker::RunningBroker>,
    /// The MQTT broker replicas, when they run as processes of their own
    /// ([`StackOptions::broker_processes`]).
    pub broker_processes: Vec<broker_process::BrokerProcess>,
    /// The Kafka brokers; `bootstrap()` names all of them.
    pub tansu: TansuCluster,
    pub influxd: Influxd,
    pub postgres: Option<Postgres>,
    pub prometheus: Option<Prometheus>,
    pub dir: PathBuf,
    /// HS256 secret the APIs verify bearer tokens with; random per stack.
    jwt_secret: String,
    stop: tokio::sync::watch::Sender<bool>,
}

/// Lifetime of the tokens [`Stack`] mints: a local stack runs for hours.
pub const TOKEN_TTL: Duration = Duration::from_secs(24 * 3600);

impl Stack {
    /// Starts the stores (Kafka, InfluxDB, PostgreSQL when asked), then our
    /// services through their own `start`, then the gateway and Prometheus
    /// in front of them. What failed to start is named in the error;
    /// whatever had started by then stops as it is dropped.
    pub async fn start(dir: &Path, options: StackOptions) -> anyhow::Result<Self> {
        warmhouse_service_kit::init_tracing();
        let jwt_secret = warmhouse_service_kit::auth::generate_secret();
        let (stop, _) = tokio::sync::watch::channel(false);
        let steps = StartSteps {
            dir,
            options: &options,
            jwt_secret: &jwt_secret,
            auth: warmhouse_service_kit::AuthConfig::with_secret(&jwt_secret),
            stop: &stop,
        };
        let tansu = steps.kafka().await?;
        let influxd = Influxd::start(&dir.join("influxdb"))?;
        let (writer, query) = steps.ingest(&tansu, &influxd).await?;
        let (postgres, registry) = if options.registry {
            let (postgres, registry) = steps.registry(&tansu, &influxd, &query).await?;
            (Some(postgres), Some(registry))
        } else {
            (None, None)
        };
        // Brokers last: with device authentication they ask the registry.
        let device_auth = steps.device_auth(registry.as_ref())?;
        let (brokers, broker_processes) = steps.brokers(&tansu, device_auth.as_ref()).await?;
        let gateway = steps.gateway(registry.as_ref(), &query)?;
        let prometheus = if options.prometheus {
            let targets = scrape_targets(
                &brokers,
                &broker_processes,
                &writer,
                &query,
                registry.as_ref(),
            );
            Some(steps.prometheus(&targets)?)
        } else {
            None
        };

        Ok(Self {
            dir: dir.to_path_buf(),
            gateway,
            prometheus,
            jwt_secret,
            postgres,
            registry,
            tansu,
            influxd,
            brokers,
            broker_processes,
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
            gateway,
            writer,
            query,
            registry,
            brokers,
            broker_processes,
            tansu,
            influxd,
            postgres,
            prometheus,
            ..
        } = self;
        drop(gateway);
        if tokio::time::timeout(Duration::from_secs(10), writer.wait())
            .await
            .is_err()
        {
            tracing::warn!("ingest writer did not stop within 10 s");
        }
        drop(query);
        if let Some(registry) = registry {
            let _ = tokio::time::timeout(Duration::from_secs(5), registry.wait()).await;
        }
        for broker in brokers {
            broker.shutdown().await;
        }
        for mut broker in broker_processes {
            broker.terminate(Duration::from_secs(5));
        }
        drop(tansu);
        drop(influxd);
        drop(postgres);
        drop(prometheus);
    }

    /// Fails, saying which and with its log, when a process of the stack
    /// died on its own (tansu, influxd, PostgreSQL, a broker replica run as
    /// a process): the local stack reports it instead of hanging.
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        self.tansu.check_alive().context("Kafka (tansu)")?;
        self.influxd.check_alive().context("InfluxDB")?;
        if let Some(postgres) = self.postgres.as_mut() {
            postgres.check_alive().context("PostgreSQL")?;
        }
        for broker in &mut self.broker_processes {
            broker.check_alive().context("an MQTT broker replica")?;
        }
        Ok(())
    }

    /// Base URL of the device registry, when the stack runs one.
    pub fn registry_url(&self) -> Option<String> {
        self.registry.as_ref().map(|r| format!("http://{}", r.addr))
    }

    /// Base URL of the API gateway, when the stack runs one: the entry
    /// point to every REST API and its docs.
    pub fn gateway_url(&self) -> Option<String> {
        self.gateway.as_ref().map(warmhouse_devstack::Nginx::url)
    }

    /// The HS256 secret the stack's APIs verify tokens with (for
    /// `warmhouse-token --secret`).
    pub fn jwt_secret(&self) -> &str {
        &self.jwt_secret
    }

    /// A bearer token of an administrator (every home), valid for
    /// [`TOKEN_TTL`].
    pub fn admin_token(&self) -> anyhow::Result<String> {
        admin_token(&self.jwt_secret, "warmhouse-stack")
    }

    /// A bearer token for `homes` only, valid for [`TOKEN_TTL`].
    pub fn token_for_homes(&self, homes: &[&str]) -> anyhow::Result<String> {
        use warmhouse_service_kit::auth::{issue_hs256, Claims};
        let claims = Claims::for_homes("warmhouse-stack", homes.iter().copied(), TOKEN_TTL);
        issue_hs256(&self.jwt_secret, &claims)
    }

    /// An HTTP client that sends the admin token with every request (add a
    /// timeout and build it).
    pub fn api_client_builder(&self) -> anyhow::Result<reqwest::ClientBuilder> {
        let mut value =
            reqwest::header::HeaderValue::try_from(format!("Bearer {}", self.admin_token()?))
                .context("bearer token as a header value")?;
        value.set_sensitive(true);
        let headers =
            reqwest::header::HeaderMap::from_iter([(reqwest::header::AUTHORIZATION, value)]);
        Ok(reqwest::Client::builder().default_headers(headers))
    }

    /// The first broker replica, when they run in this process.
    pub fn broker(&self) -> &warmhouse_broker::RunningBroker {
        self.brokers
            .first()
            .expect("the broker replicas run in this process (StackOptions::broker_processes)")
    }

    /// MQTT 3.1.1 port of the first broker replica.
    pub fn mqtt_port(&self) -> u16 {
        self.mqtt_ports()[0]
    }

    /// MQTT 3.1.1 ports of every broker replica (`start` makes at least one).
    pub fn mqtt_ports(&self) -> Vec<u16> {
        self.brokers
            .iter()
            .map(|b| b.mqtt_v4_addr.port())
            .chain(self.broker_processes.iter().map(|b| b.mqtt_v4_port))
            .collect()
    }

    /// Device readings the broker replicas' ingress took, all together.
    pub fn readings_accepted(&self) -> u64 {
        self.brokers.iter().map(|b| b.ingress.readings.get()).sum()
    }

    pub fn query_url(&self) -> String {
        format!("http://{}", self.query.addr)
    }

    /// Base URL of Prometheus, when the stack runs one.
    pub fn prometheus_url(&self) -> Option<String> {
        self.prometheus.as_ref().map(Prometheus::url)
    }

    /// A simulator configuration pointed at this stack (its devices spread
    /// over every broker replica).
    pub fn simulator(&self, args: &[&str]) -> warmhouse_simulator::SimConfig {
        let port = self
            .mqtt_ports()
            .iter()
            .map(u16::to_string)
            .collect::<Vec<_>>()
            .join(",");
        let mut argv = vec![
            "warmhouse-sim",
            "--host",
            "127.0.0.1",
            "--port",
            port.as_str(),
        ];
        argv.extend_from_slice(args);
        // The environment (WARMHOUSE_SIM_*) is ignored: a test's simulator
        // does not change with the shell it runs in. The arguments come
        // from the code, so a wrong one is a bug to stop at.
        warmhouse_service_kit::parse_ignoring_env(argv.iter().copied())
            .unwrap_or_else(|e| panic!("simulator arguments {argv:?}: {e:#}"))
    }
}

/// A bearer token of an administrator, signed with `jwt_secret`, valid for
/// [`TOKEN_TTL`]; `issuer` names who uses it.
fn admin_token(jwt_secret: &str, issuer: &str) -> anyhow::Result<String> {
    use warmhouse_service_kit::auth::{issue_hs256, Claims};
    issue_hs256(jwt_secret, &Claims::admin(issuer, TOKEN_TTL))
}

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// What the steps of [`Stack::start`] share: where data goes, the options,
/// the secret tokens are signed with and the stop signal of our services.
struct StartSteps<'a> {
    dir: &'a Path,
    options: &'a StackOptions,
    jwt_secret: &'a str,
    auth: warmhouse_service_kit::AuthConfig,
    stop: &'a tokio::sync::watch::Sender<bool>,
}

/// Where a broker replica checks device credentials (the registry) and the
/// token it does so with.
struct RegistryAccess {
    url: String,
    token: String,
}

impl StartSteps<'_> {
    /// tansu with every topic our services use.
    async fn kafka(&self) -> anyhow::Result<TansuCluster> {
        let tansu = TansuCluster::start(
            &self.dir.join("kafka"),
            self.options.kafka_brokers,
            self.options.kafka_storage,
        )?;
        create_topics(
            &tansu.bootstrap(),
            &[
                topics::TELEMETRY,
                topics::DEVICE_EVENTS,
                topics::DEVICE_COMMANDS,
                topics::REGISTRY_EVENTS,
            ],
            self.options.partitions,
        )
        .await?;
        create_topics(&tansu.bootstrap(), &[topics::DEAD_LETTERS], 1).await?;
        Ok(tansu)
    }

    /// Both ingest processes: the writer (Kafka to InfluxDB) and the query
    /// API (InfluxDB to REST).
    async fn ingest(
        &self,
        tansu: &TansuCluster,
        influxd: &Influxd,
    ) -> anyhow::Result<(
        warmhouse_ingest::writer::RunningWriter,
        warmhouse_ingest::query::RunningQueryApi,
    )> {
        let mut writer_config =
            warmhouse_ingest::writer::WriterConfig::new(&tansu.bootstrap(), &influxd.url());
        writer_config.batch_max_points = self.options.ingest_batch_max_points;
        writer_config.batch_max_delay_ms = self.options.ingest_batch_max_delay.as_millis() as u64;
        writer_config.lag_interval_ms = SCRAPE_INTERVAL.as_millis() as u64;
        let writer = warmhouse_ingest::writer::start(writer_config, stopped(self.stop))
            .await
            .context("starting the ingest writer")?;

        let mut query_config = warmhouse_ingest::query::QueryConfig::new(
            loopback(self.options.query_port.unwrap_or(0)),
            influxd.url(),
        );
        query_config.auth = self.auth.clone();
        let query = warmhouse_ingest::query::start(query_config, stopped(self.stop))
            .await
            .context("starting the query API")?;
        Ok((writer, query))
    }

    /// PostgreSQL and the device registry on it.
    async fn registry(
        &self,
        tansu: &TansuCluster,
        influxd: &Influxd,
        query: &warmhouse_ingest::query::RunningQueryApi,
    ) -> anyhow::Result<(Postgres, warmhouse_device_registry::RunningRegistry)> {
        let postgres = Postgres::start(&self.dir.join("postgres"))?;
        let url = postgres.create_database("warmhouse")?;
        let mut config = warmhouse_device_registry::RegistryConfig::new(
            loopback(self.options.registry_port.unwrap_or(0)),
            url,
        )
        .with_kafka(tansu.bootstrap());
        config.auth = self.auth.clone();
        // The legacy /api/heating endpoints read temperatures from the
        // query API, as a service with its own token.
        config.legacy.telemetry_url = Some(format!("http://{}", query.addr));
        config.legacy.telemetry_token = Some(admin_token(self.jwt_secret, "device-registry")?);
        // Onboarding registers devices in the telemetry store.
        config.onboarding.influx_url = Some(influxd.url());
        let registry = warmhouse_device_registry::start(config, stopped(self.stop))
            .await
            .context("starting the device registry")?;
        Ok((postgres, registry))
    }

    /// How the broker replicas reach the registry to authenticate devices,
    /// when they do.
    fn device_auth(
        &self,
        registry: Option<&warmhouse_device_registry::RunningRegistry>,
    ) -> anyhow::Result<Option<RegistryAccess>> {
        match (registry, self.options.broker_device_auth) {
            (_, false) => Ok(None),
            (None, true) => {
                anyhow::bail!("devices authenticate against the registry: start it too")
            }
            (Some(registry), true) => Ok(Some(RegistryAccess {
                url: format!("http://{}", registry.addr),
                token: admin_token(self.jwt_secret, "warmhouse-broker")?,
            })),
        }
    }

    /// The broker replicas, in this process or as processes of their own
    /// ([`StackOptions::broker_processes`]); at least one.
    async fn brokers(
        &self,
        tansu: &TansuCluster,
        device_auth: Option<&RegistryAccess>,
    ) -> anyhow::Result<(
        Vec<warmhouse_broker::RunningBroker>,
        Vec<broker_process::BrokerProcess>,
    )> {
        let mut brokers = Vec::new();
        let mut broker_processes = Vec::new();
        for replica in 0..self.options.broker_replicas.max(1) {
            if let Some(config) = &self.options.broker_processes {
                let process = self
                    .broker_process(replica, config, tansu, device_auth)
                    .await
                    .with_context(|| format!("starting MQTT broker replica {replica}"))?;
                broker_processes.push(process);
            } else {
                let broker = self
                    .broker(replica, tansu, device_auth)
                    .await
                    .with_context(|| format!("starting MQTT broker replica {replica}"))?;
                brokers.push(broker);
            }
        }
        Ok((brokers, broker_processes))
    }

    /// Replica `replica` as a process of its own, configured through its
    /// environment as `warmhouse-broker` is.
    async fn broker_process(
        &self,
        replica: usize,
        config: &broker_process::BrokerProcessConfig,
        tansu: &TansuCluster,
        device_auth: Option<&RegistryAccess>,
    ) -> anyhow::Result<broker_process::BrokerProcess> {
        let mut config = broker_process::BrokerProcessConfig {
            kafka_bootstrap: tansu.bootstrap(),
            kafka_timeout: self.options.broker_kafka_timeout,
            ..config.clone()
        };
        if let Some(access) = device_auth {
            config.env.extend([
                ("WARMHOUSE_BROKER_DEVICE_AUTH".into(), "registry".into()),
                ("WARMHOUSE_BROKER_REGISTRY_URL".into(), access.url.clone()),
                (
                    "WARMHOUSE_BROKER_REGISTRY_TOKEN".into(),
                    access.token.clone(),
                ),
            ]);
        }
        broker_process::BrokerProcess::start(
            &self.dir.join("brokers"),
            &format!("broker-{replica}"),
            &config,
        )
        .await
    }

    /// Replica `replica` in this process, through the broker's own `start`.
    async fn broker(
        &self,
        replica: usize,
        tansu: &TansuCluster,
        device_auth: Option<&RegistryAccess>,
    ) -> anyhow::Result<warmhouse_broker::RunningBroker> {
        let mqtt_port = match self.options.mqtt_port {
            Some(port) => port
                .checked_add(u16::try_from(replica).context("too many broker replicas")?)
                .context("MQTT port out of range")?,
            None => free_port()?,
        };
        // Device listeners stay open here (the simulator and mosquitto
        // clients connect anonymously; docs/adr/0010-device-identity.md
        // has the production setup).
        let mut ingress = warmhouse_edge_bridge::IngressConfig::new(
            &tansu.bootstrap(),
            self.dir.join(format!("broker-{replica}-spool")),
        );
        ingress.kafka_timeout_ms = self.options.broker_kafka_timeout.as_millis() as u64;
        let mut config = warmhouse_broker::BrokerConfig {
            instance_id: Some(format!("broker-{replica}")),
            ..warmhouse_broker::BrokerConfig::for_tests(
                loopback(mqtt_port),
                loopback(free_port()?),
                loopback(0),
                ingress,
            )
        };
        if let Some(access) = device_auth {
            config.device_auth = warmhouse_broker::DeviceAuth::Registry;
            config.registry_url = Some(access.url.clone());
            config.registry_token = Some(warmhouse_broker::Secret::new(&access.token));
        }
        warmhouse_broker::start(config).await
    }

    /// The gateway in front of the registry and the query API, when asked.
    fn gateway(
        &self,
        registry: Option<&warmhouse_device_registry::RunningRegistry>,
        query: &warmhouse_ingest::query::RunningQueryApi,
    ) -> anyhow::Result<Option<warmhouse_devstack::Nginx>> {
        let registry = match (registry, self.options.gateway) {
            (_, false) => return Ok(None),
            (None, true) => anyhow::bail!("the gateway routes to the registry: start it too"),
            (Some(registry), true) => registry,
        };
        let port = match self.options.gateway_port {
            Some(port) => port,
            None => free_port()?,
        };
        let gateway_dir = self.dir.join("gateway");
        let config = gateway::GatewayConfig {
            listen: loopback(port),
            registry: registry.addr,
            telemetry: query.addr,
            rate_limit: self.options.gateway_rate_limit,
            access_log: gateway_dir.join("access.log"),
            // Nothing stands in front of it here but local clients.
            real_ip_from: "127.0.0.1/32".into(),
        };
        Ok(Some(gateway::start(&gateway_dir, &config)?))
    }

    fn prometheus(&self, targets: &[ScrapeTarget]) -> anyhow::Result<Prometheus> {
        let prometheus_dir = self.dir.join("prometheus");
        match self.options.prometheus_port {
            Some(port) => Prometheus::start_on(&prometheus_dir, port, targets, SCRAPE_INTERVAL),
            None => Prometheus::start(&prometheus_dir, targets, SCRAPE_INTERVAL),
        }
        .context("starting Prometheus")
    }
}

/// Every service's `/metrics`, for Prometheus.
fn scrape_targets(
    brokers: &[warmhouse_broker::RunningBroker],
    broker_processes: &[broker_process::BrokerProcess],
    writer: &warmhouse_ingest::writer::RunningWriter,
    query: &warmhouse_ingest::query::RunningQueryApi,
    registry: Option<&warmhouse_device_registry::RunningRegistry>,
) -> Vec<ScrapeTarget> {
    let mut targets: Vec<ScrapeTarget> = brokers
        .iter()
        .map(|broker| broker.admin_addr)
        .chain(broker_processes.iter().map(|broker| broker.admin_addr))
        .map(|admin| ScrapeTarget::new("warmhouse-broker", admin))
        .collect();
    targets.extend([
        ScrapeTarget::new("warmhouse-ingest-writer", writer.admin_addr),
        ScrapeTarget::new("warmhouse-ingest-query", query.addr),
    ]);
    if let Some(registry) = registry {
        targets.push(ScrapeTarget::new("warmhouse-registry", registry.addr));
    }
    targets
}
