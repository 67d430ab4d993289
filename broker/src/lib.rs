//! The Warmhouse MQTT broker: rumqttd 0.20 (vendored, with the patches in
//! `vendor/rumqttd/WARMHOUSE-PATCHES.md`) embedded, with device listeners
//! (MQTT 3.1.1 and MQTT 5 with passwords, MQTT 3.1.1 over TLS with client
//! certificates), an internal listener for the platform's own services,
//! small in-memory logs, Prometheus metrics fed from rumqttd's meters, and
//! `/healthz` + `/readyz` driven by a self-probe that speaks MQTT to each
//! of its listeners.
//!
//! Device identity (see docs/adr/0010-device-identity.md): every device
//! connection has a tenant (its device id: the certificate's subject O or
//! the password login's username) and rumqttd's `validate-tenant-prefix`
//! confines it to `/tenants/{device_id}/`. The device registry decides at
//! every connect ([`access`]); a disabled or deleted device is dropped and
//! refused ([`revocation`]).
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
//! process exits. [`Running::shutdown`] stops only what this crate adds
//! (admin server, probe, metrics, the ingress's tasks).

pub mod access;
mod config;
mod ingress;
mod last_good;
mod metrics;
mod probe;
pub mod revocation;

use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context};
use prometheus::Registry;
use tokio::task::JoinHandle;
use warmhouse_service_kit::{admin_router, FailureReporter, Lifecycle, Readiness, Running};

pub use config::{
    BrokerConfig, DeviceAuth, ListenerAuth, ListenerSpec, Secret, DEFAULT_MAX_PAYLOAD_SIZE,
};
pub use probe::{Listener, ProbeAuth, ProbeFailures, Prober, Protocol, TlsProbe, PROBE_DEVICE_ID};

use access::DeviceAccess;
use last_good::LastGoodAnswers;
use metrics::{BrokerMetrics, BrokerWork};
use revocation::Revocations;

/// What a running broker exposes.
pub struct BrokerParts {
    pub mqtt_v4_addr: SocketAddr,
    pub mqtt_v5_addr: SocketAddr,
    /// The mTLS device listener, when configured.
    pub mqtts_addr: Option<SocketAddr>,
    /// The internal (service) listener, when configured.
    pub internal_addr: Option<SocketAddr>,
    pub admin_addr: SocketAddr,
    /// Revoke a device by hand (what the admin endpoint and the registry's
    /// events do).
    pub revocations: Revocations,
    /// The device ingress's counters (what reached Kafka, the spool).
    pub ingress: warmhouse_edge_bridge::metrics::Metrics,
    pub registry: Registry,
    pub readiness: Readiness,
}

/// A started broker. [`Running::failed`] resolves when it can no longer
/// serve: rumqttd's thread ended or panicked, its router stopped, or a
/// listener failed `probe_failure_limit` probes in a row; the binary exits
/// on it so the orchestrator restarts the process (rumqttd cannot be
/// restarted in-process). [`Running::shutdown`] and dropping it stop the
/// admin server (gracefully), the probe, the metrics pump and the ingress's
/// tasks; rumqttd itself keeps running until the process exits.
pub type RunningBroker = Running<BrokerParts>;

/// Starts rumqttd (in its own threads: it blocks) and the admin HTTP server,
/// and returns once every MQTT listener completes a publish/subscribe round
/// trip, or fails with the reason.
pub async fn start(config: BrokerConfig) -> anyhow::Result<RunningBroker> {
    config.validate().context("invalid broker configuration")?;
    let listeners = config.listeners();
    ensure_listeners_free(&listeners)?;
    let mut rumqttd_config = config.to_rumqttd()?;
    let registry = Registry::new();
    let metrics = BrokerMetrics::register(&registry)?;
    let readiness = unready(&listeners);
    let mut lifecycle = Lifecycle::new("broker");

    // The self-probe's password on device listeners: random per process,
    // known only here, checked without the registry.
    let probe_password = Secret::new(random_secret());
    let revocations = device_access(
        &config,
        &listeners,
        &probe_password,
        &metrics,
        &mut rumqttd_config,
    )?;
    let broker_id = config.instance_id.clone().unwrap_or_else(host_name);
    let device_ingress = start_ingress(
        &config,
        &broker_id,
        &listeners,
        &registry,
        &metrics,
        &mut rumqttd_config,
        &mut lifecycle,
    )?;
    lifecycle.adopt(start_revocation_consumer(&config, &broker_id, &revocations, &metrics).await);
    let admin_addr =
        serve_admin(&config, &registry, &readiness, &revocations, &mut lifecycle).await?;

    let mut broker = rumqttd::Broker::new(rumqttd_config);
    // Links must be made before `start` takes the broker into its thread.
    spawn_metrics_pump(&mut broker, &metrics, &mut lifecycle)?;
    revocations.attach(broker.tenant_disconnector());
    start_commands(
        &broker,
        &device_ingress,
        &broker_id,
        &config,
        &mut lifecycle,
    )
    .await?;
    spawn_rumqttd(broker, lifecycle.failure_reporter())?;

    let work = BrokerWork::new(&metrics, device_ingress.metrics().acked.clone());
    start_self_probe(
        &config,
        &listeners,
        &probe_password,
        &readiness,
        &metrics,
        work,
        &mut lifecycle,
    )
    .await?;

    let parts = BrokerParts {
        mqtt_v4_addr: config.mqtt_v4_addr,
        mqtt_v5_addr: config.mqtt_v5_addr,
        mqtts_addr: listener_addr(&listeners, Listener::Mqtts),
        internal_addr: listener_addr(&listeners, Listener::Internal),
        admin_addr,
        revocations,
        ingress: device_ingress.metrics().clone(),
        registry,
        readiness,
    };
    tracing::info!(
        listeners = ?listeners.iter().map(|s| (s.listener.name(), s.addr.to_string())).collect::<Vec<_>>(),
        device_auth = ?config.device_auth,
        admin = %admin_addr,
        "broker serving"
    );
    Ok(lifecycle.running(parts))
}

/// Every listener is unready until it passes its first probe.
fn unready(listeners: &[ListenerSpec]) -> Readiness {
    let readiness = Readiness::new();
    for spec in listeners {
        readiness.set(spec.listener.name(), false);
    }
    readiness
}

fn listener_addr(listeners: &[ListenerSpec], wanted: Listener) -> Option<SocketAddr> {
    listeners
        .iter()
        .find(|spec| spec.listener == wanted)
        .map(|spec| spec.addr)
}

/// The admin HTTP server: metrics, health, readiness and revocation by hand.
async fn serve_admin(
    config: &BrokerConfig,
    registry: &Registry,
    readiness: &Readiness,
    revocations: &Revocations,
    lifecycle: &mut Lifecycle,
) -> anyhow::Result<SocketAddr> {
    let admin = admin_router(registry.clone(), readiness.clone()).merge(revocation::admin_routes(
        revocations.clone(),
        config.admin_token.clone(),
        Duration::from_secs(config.revocation_memory_secs),
    ));
    lifecycle
        .serve(config.admin_addr, admin)
        .await
        .context("starting the admin HTTP server")
}

/// rumqttd logs a bind failure and carries on without that listener;
/// binding first turns "address in use" into an error here.
fn ensure_listeners_free(listeners: &[ListenerSpec]) -> anyhow::Result<()> {
    for spec in listeners {
        let addr = spec.addr;
        std::net::TcpListener::bind(addr).with_context(|| {
            format!(
                "MQTT listener address {addr} ({}) is not available",
                spec.listener.name()
            )
        })?;
    }
    Ok(())
}

/// Who may connect: the revocations every listener honours and, when
/// devices authenticate through the registry, the access check each device
/// listener asks at every connect.
fn device_access(
    config: &BrokerConfig,
    listeners: &[ListenerSpec],
    probe_password: &Secret,
    metrics: &BrokerMetrics,
    rumqttd_config: &mut rumqttd::Config,
) -> anyhow::Result<Revocations> {
    let registry_timeout = Duration::from_millis(config.registry_timeout_ms);
    let revocations = Revocations::new(
        Duration::from_secs(config.revocation_memory_secs),
        registry_timeout + Duration::from_secs(1),
        metrics.revocations.clone(),
    );
    let last_good = LastGoodAnswers::new(Duration::from_secs(config.access_grace_secs));
    revocations.also_forget(last_good.clone());
    if config.device_auth == DeviceAuth::Registry {
        let access = DeviceAccess::new(
            config
                .registry_url
                .as_deref()
                .context("registry URL missing")?,
            config
                .registry_token
                .clone()
                .context("registry token missing")?,
            registry_timeout,
            config.registry_concurrency,
            probe_password.clone(),
            revocations.clone(),
            last_good,
            metrics.device_auth.clone(),
        )?;
        install_auth_handlers(rumqttd_config, listeners, &access)?;
    }
    Ok(revocations)
}

/// The device ingress (edge-bridge's library: Kafka, spool, dead letters)
/// with its spool drainer running, and every device listener's publishes
/// shown to it before rumqttd acknowledges them.
fn start_ingress(
    config: &BrokerConfig,
    broker_id: &str,
    listeners: &[ListenerSpec],
    registry: &Registry,
    metrics: &BrokerMetrics,
    rumqttd_config: &mut rumqttd::Config,
    lifecycle: &mut Lifecycle,
) -> anyhow::Result<Arc<warmhouse_edge_bridge::Ingress>> {
    let (device_ingress, drainer) =
        warmhouse_edge_bridge::Ingress::start(&config.ingress, broker_id, registry)
            .context("starting the device ingress")?;
    lifecycle.adopt([drainer]);
    install_publish_hooks(
        rumqttd_config,
        listeners,
        &device_ingress,
        metrics.client_limits_exceeded.clone(),
    )?;
    Ok(device_ingress)
}

/// Feeds rumqttd's meters and alerts into the metrics; the broker has
/// failed when that ends (rumqttd's router is gone).
fn spawn_metrics_pump(
    broker: &mut rumqttd::Broker,
    metrics: &BrokerMetrics,
    lifecycle: &mut Lifecycle,
) -> anyhow::Result<()> {
    let meters = broker.meters().context("opening rumqttd's meters link")?;
    let alerts = broker.alerts().context("opening rumqttd's alerts link")?;
    let metrics = metrics.clone();
    let failures = lifecycle.failure_reporter();
    lifecycle.spawn(async move {
        failures.report(metrics::pump(meters, alerts, metrics).await);
    });
    Ok(())
}

/// Commands for the devices connected here enter the router in-process.
/// Read from Kafka before the listeners open, so no command for a device
/// that connects from then on is missed.
async fn start_commands(
    broker: &rumqttd::Broker,
    device_ingress: &Arc<warmhouse_edge_bridge::Ingress>,
    broker_id: &str,
    config: &BrokerConfig,
    lifecycle: &mut Lifecycle,
) -> anyhow::Result<()> {
    let command_sink =
        ingress::RouterCommandSink::new(broker, &format!("warmhouse-commands-{broker_id}"))?;
    let commands = device_ingress
        .start_commands(
            command_sink,
            Duration::from_secs(config.startup_timeout_secs),
        )
        .await;
    lifecycle.adopt([commands]);
    Ok(())
}

/// Runs rumqttd in a thread of its own (it blocks); its end, whatever the
/// cause, is the broker's failure.
fn spawn_rumqttd(mut broker: rumqttd::Broker, failures: FailureReporter) -> anyhow::Result<()> {
    std::thread::Builder::new()
        .name("rumqttd".to_string())
        .spawn(move || {
            // rumqttd's error is neither small nor Sync: keep its message.
            let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| {
                broker.start().map_err(|err| err.to_string())
            }));
            failures.report(match outcome {
                Ok(Ok(())) => {
                    anyhow!("rumqttd stopped: all its listeners ended (see the log for why)")
                }
                Ok(Err(err)) => anyhow!("rumqttd failed: {err}"),
                Err(_) => anyhow!("rumqttd panicked"),
            });
        })
        .context("spawning the rumqttd thread")?;
    Ok(())
}

/// Returns once every listener has answered a probe, having started the
/// periodic self-probe (see [`SelfProbe`]).
async fn start_self_probe(
    config: &BrokerConfig,
    listeners: &[ListenerSpec],
    probe_password: &Secret,
    readiness: &Readiness,
    metrics: &BrokerMetrics,
    work: BrokerWork,
    lifecycle: &mut Lifecycle,
) -> anyhow::Result<()> {
    let self_probe = SelfProbe {
        probers: probers(config, listeners, probe_password)?,
        interval: Duration::from_secs(config.probe_interval_secs),
        timeout: Duration::from_secs(config.probe_timeout_secs),
        failure_limit: config.probe_failure_limit,
        readiness: readiness.clone(),
        metrics: metrics.clone(),
        work,
        failures: lifecycle.failure_reporter(),
    };
    let self_probe = wait_until_serving(self_probe, config, lifecycle)
        .await
        .context("rumqttd did not start serving")?;
    lifecycle.spawn(self_probe.run());
    Ok(())
}

/// Probes every listener until each has answered once, rumqttd reports a
/// failure, or the startup timeout passes; then marks them ready. Returns
/// the self-probe, to go on probing them.
async fn wait_until_serving(
    mut self_probe: SelfProbe,
    config: &BrokerConfig,
    lifecycle: &mut Lifecycle,
) -> anyhow::Result<SelfProbe> {
    let deadline = Duration::from_secs(config.startup_timeout_secs);
    let started = Instant::now();
    let mut serving = vec![false; self_probe.probers.len()];
    loop {
        if let Some(err) = lifecycle.reported_failure() {
            return Err(err);
        }
        let mut last_error = None;
        for (prober, serving) in self_probe.probers.iter_mut().zip(serving.iter_mut()) {
            if !*serving {
                match prober.probe(self_probe.timeout).await {
                    Ok(()) => *serving = true,
                    Err(err) => last_error = Some(err),
                }
            }
        }
        match last_error {
            None => break,
            Some(err) if started.elapsed() >= deadline => {
                return Err(err.context(format!("listeners not serving after {deadline:?}")))
            }
            Some(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    for prober in &self_probe.probers {
        self_probe.set_up(prober.listener(), true);
    }
    Ok(self_probe)
}

/// 32 random bytes, hex.
fn random_secret() -> String {
    use rand::RngCore;
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Gives each device listener its access check (patches 2 and 3 of rumqttd
/// make rumqttd call it for password and certificate connections).
fn install_auth_handlers(
    config: &mut rumqttd::Config,
    listeners: &[ListenerSpec],
    access: &DeviceAccess,
) -> anyhow::Result<()> {
    for spec in listeners {
        let listener = spec.listener;
        let servers = match listener.protocol() {
            Protocol::V4 => config.v4.as_mut(),
            Protocol::V5 => config.v5.as_mut(),
        };
        let settings = servers
            .and_then(|servers| servers.get_mut(listener.rumqttd_name()))
            .with_context(|| format!("rumqttd has no {} listener", listener.name()))?;
        let access = access.clone();
        match spec.auth {
            ListenerAuth::DevicePassword => {
                settings.set_auth_handler(move |client_id, username, password| {
                    access
                        .clone()
                        .check_password(listener, client_id, username, password)
                });
            }
            ListenerAuth::DeviceCertificate => {
                settings.set_auth_handler(move |client_id, tenant_id, certificate_sha256| {
                    access.clone().check_certificate(
                        listener,
                        client_id,
                        tenant_id,
                        certificate_sha256,
                    )
                });
            }
            ListenerAuth::Open | ListenerAuth::Service => {}
        }
    }
    Ok(())
}

/// Makes every device listener show its publishes to the ingress before
/// rumqttd acknowledges them (patch 7). The internal listener's services
/// are not devices.
fn install_publish_hooks(
    config: &mut rumqttd::Config,
    listeners: &[ListenerSpec],
    device_ingress: &Arc<warmhouse_edge_bridge::Ingress>,
    client_limits_exceeded: prometheus::IntCounterVec,
) -> anyhow::Result<()> {
    let hook = ingress::IngressHook::new(device_ingress.clone(), client_limits_exceeded);
    for spec in listeners {
        if spec.auth == ListenerAuth::Service {
            continue;
        }
        let listener = spec.listener;
        let servers = match listener.protocol() {
            Protocol::V4 => config.v4.as_mut(),
            Protocol::V5 => config.v5.as_mut(),
        };
        servers
            .and_then(|servers| servers.get_mut(listener.rumqttd_name()))
            .with_context(|| format!("rumqttd has no {} listener", listener.name()))?
            .connections
            .set_publish_hook(hook.clone());
    }
    Ok(())
}

/// Starts reading the registry's events when devices authenticate (an
/// open broker has no device identities to revoke). Waits (up to the
/// startup timeout) for the partitions to be assigned, so every event after
/// rumqttd starts is seen; when Kafka is unreachable the broker starts
/// anyway and the consumer keeps trying.
async fn start_revocation_consumer(
    config: &BrokerConfig,
    broker_id: &str,
    revocations: &Revocations,
    metrics: &BrokerMetrics,
) -> Option<JoinHandle<()>> {
    if config.device_auth == DeviceAuth::Open {
        return None;
    }
    let source = revocation::EventSource {
        bootstrap: config.ingress.kafka_bootstrap.clone(),
        topic: config.registry_events_topic.clone(),
        instance_id: broker_id.to_string(),
    };
    let deadline = Duration::from_secs(config.startup_timeout_secs);
    let assigned = match tokio::time::timeout(deadline, revocation::assign(&source)).await {
        Ok(Ok(assigned)) => Some(assigned),
        Ok(Err(err)) => {
            tracing::warn!(
                error = format!("{err:#}"),
                "registry events unavailable at start; retrying in the background"
            );
            None
        }
        Err(_) => {
            tracing::warn!(
                ?deadline,
                "registry events unavailable at start; retrying in the background"
            );
            None
        }
    };
    Some(tokio::spawn(revocation::run(
        source,
        assigned,
        revocations.clone(),
        metrics.revocation_consumer_up.clone(),
    )))
}

fn host_name() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|name| name.trim().to_string())
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "broker".to_string())
}

/// One prober per listener, logging in the way the listener expects.
fn probers(
    config: &BrokerConfig,
    listeners: &[ListenerSpec],
    probe_password: &Secret,
) -> anyhow::Result<Vec<Prober>> {
    let mut probers = Vec::new();
    for spec in listeners {
        let auth = match spec.auth {
            ListenerAuth::Open => ProbeAuth::None,
            ListenerAuth::DevicePassword => ProbeAuth::Password {
                username: PROBE_DEVICE_ID.to_string(),
                password: probe_password.expose().to_string(),
                confined: true,
            },
            ListenerAuth::Service => ProbeAuth::Password {
                username: config.service_username.clone(),
                password: config
                    .service_password
                    .as_ref()
                    .context("service password missing")?
                    .expose()
                    .to_string(),
                confined: false,
            },
            ListenerAuth::DeviceCertificate => {
                let read = |path: &Option<std::path::PathBuf>, what: &str| {
                    let path = path.as_ref().with_context(|| format!("{what} missing"))?;
                    std::fs::read(path)
                        .with_context(|| format!("reading the {what} {}", path.display()))
                };
                ProbeAuth::Tls(Arc::new(TlsProbe {
                    ca: read(&config.tls_ca, "platform CA certificate")?,
                    cert: read(&config.tls_probe_cert, "probe client certificate")?,
                    key: read(&config.tls_probe_key, "probe client key")?,
                }))
            }
        };
        probers.push(Prober::with_auth(spec.listener, spec.addr, auth));
    }
    Ok(probers)
}

/// The periodic self-probe of every listener: readiness follows each
/// probe; a listener that fails `failure_limit` probes in a row that count
/// (see [`ProbeFailures`]) is reported as the broker's failure.
struct SelfProbe {
    probers: Vec<Prober>,
    interval: Duration,
    timeout: Duration,
    failure_limit: u32,
    readiness: Readiness,
    metrics: BrokerMetrics,
    work: BrokerWork,
    failures: FailureReporter,
}

impl SelfProbe {
    fn set_up(&self, listener: Listener, up: bool) {
        self.readiness.set(listener.name(), up);
        self.metrics
            .probe_up
            .with_label_values(&[listener.name()])
            .set(i64::from(up));
    }

    async fn run(mut self) {
        let mut failures: Vec<ProbeFailures> = self
            .probers
            .iter()
            .map(|_| ProbeFailures::new(self.work.done()))
            .collect();
        // start() has just probed: the first periodic probe is one interval away.
        let mut ticker =
            tokio::time::interval_at(tokio::time::Instant::now() + self.interval, self.interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            for (i, failures) in failures.iter_mut().enumerate() {
                let listener = self.probers[i].listener();
                match self.probers[i].probe(self.timeout).await {
                    Ok(()) => {
                        failures.succeeded(self.work.done());
                        self.set_up(listener, true);
                    }
                    Err(err) => self.failed(listener, failures, err),
                }
            }
        }
    }

    fn failed(&self, listener: Listener, failures: &mut ProbeFailures, err: anyhow::Error) {
        let name = listener.name();
        let busy = failures.failed(self.work.done(), &err);
        let in_a_row = failures.in_a_row();
        self.set_up(listener, false);
        self.metrics.probe_failures.with_label_values(&[name]).inc();
        tracing::warn!(
            listener = name,
            failures = in_a_row,
            busy,
            error = format!("{err:#}"),
            "self-probe failed"
        );
        if self.failure_limit > 0 && !busy && in_a_row == self.failure_limit {
            self.failures.report(err.context(format!(
                "{name} listener failed {} probes in a row",
                self.failure_limit
            )));
        }
    }
}
