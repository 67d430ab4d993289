//! Broker configuration: command-line flags, each also read from a
//! `WARMHOUSE_BROKER_*` environment variable (12-factor), with defaults that
//! work on the local stack.

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;

use anyhow::{bail, Context};
use clap::{Parser, ValueEnum};
use warmhouse_edge_bridge::IngressConfig;
use warmhouse_service_kit::args::LogArgs;

use crate::probe::Listener;

/// MQTT payloads up to 64 KiB plus room for topic and properties.
pub const DEFAULT_MAX_PAYLOAD_SIZE: usize = 65_536 + 1_024;
/// A device subscribes to its command topic; a few more leave room for
/// firmware that also listens to a broadcast topic.
pub const DEFAULT_DEVICE_MAX_SUBSCRIPTIONS: usize = 8;
pub const DEFAULT_DEVICE_MAX_TOPIC_LENGTH: usize = 256;
pub const DEFAULT_DEVICE_MAX_TOPIC_LEVELS: usize = 8;
/// A device publishing a reading every few seconds has one or two
/// publishes waiting for their PUBACK (held until Kafka or the spool has
/// them); 64 leaves room for a backlog sent after a reconnect, or during a
/// Kafka hiccup, without letting one connection hold the ingress's memory.
pub const DEFAULT_DEVICE_MAX_INFLIGHT: u16 = 64;
/// The edge bridge reads a large window of publishes per network read.
pub const DEFAULT_MAX_INFLIGHT_COUNT: usize = 1_000;
pub const DEFAULT_MAX_CONNECTIONS: usize = 20_000;
pub const DEFAULT_CONNECTION_TIMEOUT_MS: u16 = 10_000;
/// No pause between accepts: rumqttd's 1 ms (a timer tick, often 2 ms on a
/// busy listener thread) capped accepts at 300 to 500 a second, below the
/// rate a fleet reconnects at after a replica restart, so devices timed out
/// and came back again. A storm queues at the registry instead
/// (`registry_concurrency`).
pub const DEFAULT_NEXT_CONNECTION_DELAY_MS: u64 = 0;
/// Small segments: rumqttd's sample config (100 MiB x 10) lets one filter
/// grow to ~1 GiB of memory.
pub const DEFAULT_MAX_SEGMENT_SIZE: usize = 4 << 20;
pub const DEFAULT_MAX_SEGMENT_COUNT: usize = 64;
pub const DEFAULT_MAX_OUTGOING_PACKET_COUNT: u64 = 200;
pub const DEFAULT_METERS_INTERVAL_SECS: u64 = 1;
pub const DEFAULT_PROBE_INTERVAL_SECS: u64 = 10;
pub const DEFAULT_PROBE_TIMEOUT_SECS: u64 = 5;
pub const DEFAULT_PROBE_FAILURE_LIMIT: u32 = 3;
pub const DEFAULT_STARTUP_TIMEOUT_SECS: u64 = 15;
pub const DEFAULT_REGISTRY_TIMEOUT_MS: u64 = 3_000;
pub const DEFAULT_REGISTRY_CONCURRENCY: usize = 64;
pub const DEFAULT_SERVICE_USERNAME: &str = "warmhouse-service";
pub const DEFAULT_REVOCATION_MEMORY_SECS: u64 = 3_600;
pub const DEFAULT_ACCESS_GRACE_SECS: u64 = 600;
pub const DEFAULT_MQTTS_ADDR: &str = "0.0.0.0:8883";
pub const DEFAULT_INTERNAL_ADDR: &str = "0.0.0.0:1885";

/// Who may connect to the device listeners (MQTT 3.1.1, MQTT 5, mTLS).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DeviceAuth {
    /// Devices prove who they are (password on the plain listeners, client
    /// certificate on the mTLS listener); the device registry decides on
    /// every connect; each device is confined to `/tenants/{device_id}/`.
    Registry,
    /// Anyone may connect and publish anywhere: tests and demos only.
    Open,
}

/// A secret from the environment: compared and used, never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Whether `presented` is this secret, compared in constant time so the
    /// answer's timing tells nothing of how much of a guess was right.
    pub fn matches(&self, presented: &str) -> bool {
        constant_time_eq(presented.as_bytes(), self.0.as_bytes())
    }
}

/// Compares secrets without an early exit on the first difference (the
/// length is not secret).
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl FromStr for Secret {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Self(s.to_string()))
    }
}

/// How one MQTT listener authenticates and confines its clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListenerAuth {
    /// No authentication, no confinement (`--device-auth open`).
    Open,
    /// Username = device id, password checked by the registry; tenant =
    /// username, so the client is confined to `/tenants/{username}/`.
    DevicePassword,
    /// TLS client certificate signed by the platform CA; tenant = subject
    /// O; the registry is asked whether the device may connect.
    DeviceCertificate,
    /// The platform's own services (edge bridge): one service username and
    /// password, not confined.
    Service,
}

/// One MQTT listener the configuration asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerSpec {
    pub listener: Listener,
    pub addr: SocketAddr,
    pub auth: ListenerAuth,
}

/// Configuration of the embedded rumqttd broker and its admin endpoint.
#[derive(Parser, Debug, Clone, PartialEq, Eq)]
#[command(
    name = "warmhouse-broker",
    about = "Warmhouse MQTT broker (rumqttd) with Prometheus metrics and health endpoints"
)]
pub struct BrokerConfig {
    /// MQTT 3.1.1 listener (rumqttd needs a concrete port, not 0).
    #[arg(
        long,
        env = "WARMHOUSE_BROKER_MQTT_V4_ADDR",
        default_value = "0.0.0.0:1883"
    )]
    pub mqtt_v4_addr: SocketAddr,

    /// MQTT 5 listener (rumqttd needs a concrete port, not 0).
    #[arg(
        long,
        env = "WARMHOUSE_BROKER_MQTT_V5_ADDR",
        default_value = "0.0.0.0:1884"
    )]
    pub mqtt_v5_addr: SocketAddr,

    /// HTTP address serving /metrics, /healthz and /readyz.
    #[arg(
        long,
        env = "WARMHOUSE_BROKER_ADMIN_ADDR",
        default_value = "0.0.0.0:9183"
    )]
    pub admin_addr: SocketAddr,

    /// Connections the router holds at once, over both listeners (it also
    /// pre-sizes the router's tables). rumqttd 0.20 drops a connection past
    /// the limit without CONNACK, and a later reconnect with the same client
    /// id then wedges that listener (see README): keep it well above the
    /// fleet size.
    #[arg(long, env = "WARMHOUSE_BROKER_MAX_CONNECTIONS", default_value_t = DEFAULT_MAX_CONNECTIONS)]
    pub max_connections: usize,

    /// Largest MQTT packet a client may send, in bytes; larger ones close
    /// the connection.
    #[arg(long, env = "WARMHOUSE_BROKER_MAX_PAYLOAD_SIZE", default_value_t = DEFAULT_MAX_PAYLOAD_SIZE)]
    pub max_payload_size: usize,

    /// rumqttd's `max_inflight_count`: how many packets one connection may
    /// hand to the router in one batch. (The broker-to-subscriber QoS 1
    /// window is fixed at 100 inside rumqttd 0.20.)
    #[arg(long, env = "WARMHOUSE_BROKER_MAX_INFLIGHT_COUNT", default_value_t = DEFAULT_MAX_INFLIGHT_COUNT)]
    pub max_inflight_count: usize,

    /// Topic filters one device connection may subscribe at a time (a
    /// device needs one, its command topic); more drop the connection
    /// (MQTT 5: DISCONNECT 0x97).
    #[arg(long, env = "WARMHOUSE_BROKER_DEVICE_MAX_SUBSCRIPTIONS", default_value_t = DEFAULT_DEVICE_MAX_SUBSCRIPTIONS)]
    pub device_max_subscriptions: usize,

    /// Longest topic or filter a device connection may use, in bytes
    /// (MQTT 5: DISCONNECT 0x90 / 0x8F).
    #[arg(long, env = "WARMHOUSE_BROKER_DEVICE_MAX_TOPIC_LENGTH", default_value_t = DEFAULT_DEVICE_MAX_TOPIC_LENGTH)]
    pub device_max_topic_length: usize,

    /// Most `/`-separated levels in a device connection's topic or filter
    /// (`/tenants/{id}/commands/ack` has 5).
    #[arg(long, env = "WARMHOUSE_BROKER_DEVICE_MAX_TOPIC_LEVELS", default_value_t = DEFAULT_DEVICE_MAX_TOPIC_LEVELS)]
    pub device_max_topic_levels: usize,

    /// QoS 1 and 2 publishes one device connection may have unacknowledged
    /// (PUBACKs wait until the reading is safe). MQTT 5: stated in CONNACK
    /// as Receive Maximum, more gets DISCONNECT 0x93; MQTT 3.1.1: the broker
    /// stops reading the connection while that many wait.
    #[arg(long, env = "WARMHOUSE_BROKER_DEVICE_MAX_INFLIGHT", default_value_t = DEFAULT_DEVICE_MAX_INFLIGHT)]
    pub device_max_inflight: u16,

    /// How long a new TCP connection may take to send CONNECT, in ms.
    #[arg(long, env = "WARMHOUSE_BROKER_CONNECTION_TIMEOUT_MS", default_value_t = DEFAULT_CONNECTION_TIMEOUT_MS)]
    pub connection_timeout_ms: u16,

    /// Pause after each accepted connection, in ms (0: none; n caps a
    /// listener's accept rate below 1000/n a second).
    #[arg(long, env = "WARMHOUSE_BROKER_NEXT_CONNECTION_DELAY_MS", default_value_t = DEFAULT_NEXT_CONNECTION_DELAY_MS)]
    pub next_connection_delay_ms: u64,

    /// Bytes in one in-memory segment of a filter's commit log (>= 1024).
    #[arg(long, env = "WARMHOUSE_BROKER_MAX_SEGMENT_SIZE", default_value_t = DEFAULT_MAX_SEGMENT_SIZE)]
    pub max_segment_size: usize,

    /// Segments kept per filter; a subscriber further behind than
    /// size x count skips data (counted as a `cursor_jump` alert).
    #[arg(long, env = "WARMHOUSE_BROKER_MAX_SEGMENT_COUNT", default_value_t = DEFAULT_MAX_SEGMENT_COUNT)]
    pub max_segment_count: usize,

    /// Publishes the router reads from a log for one subscriber per turn.
    #[arg(long, env = "WARMHOUSE_BROKER_MAX_OUTGOING_PACKET_COUNT", default_value_t = DEFAULT_MAX_OUTGOING_PACKET_COUNT)]
    pub max_outgoing_packet_count: u64,

    /// How often rumqttd reports its meters (feeding /metrics), in seconds.
    #[arg(long, env = "WARMHOUSE_BROKER_METERS_INTERVAL_SECS", default_value_t = DEFAULT_METERS_INTERVAL_SECS)]
    pub meters_interval_secs: u64,

    /// How often the broker connects to its own listeners, subscribes,
    /// publishes and reads back (sets /readyz), in seconds.
    #[arg(long, env = "WARMHOUSE_BROKER_PROBE_INTERVAL_SECS", default_value_t = DEFAULT_PROBE_INTERVAL_SECS)]
    pub probe_interval_secs: u64,

    /// Time allowed for one self-probe round trip, in seconds.
    #[arg(long, env = "WARMHOUSE_BROKER_PROBE_TIMEOUT_SECS", default_value_t = DEFAULT_PROBE_TIMEOUT_SECS)]
    pub probe_timeout_secs: u64,

    /// Consecutive failed probes of one listener after which the broker
    /// reports itself failed (the binary then exits non-zero so the
    /// orchestrator restarts it). 0 = never.
    #[arg(long, env = "WARMHOUSE_BROKER_PROBE_FAILURE_LIMIT", default_value_t = DEFAULT_PROBE_FAILURE_LIMIT)]
    pub probe_failure_limit: u32,

    /// How long `start` waits for every listener to answer, in seconds.
    #[arg(long, env = "WARMHOUSE_BROKER_STARTUP_TIMEOUT_SECS", default_value_t = DEFAULT_STARTUP_TIMEOUT_SECS)]
    pub startup_timeout_secs: u64,

    /// Who may connect to the device listeners: `registry` (devices
    /// authenticate, the registry decides, each is confined to its own
    /// topics) or `open` (anyone, anywhere: tests and demos only).
    #[arg(long, env = "WARMHOUSE_BROKER_DEVICE_AUTH", value_enum, default_value_t = DeviceAuth::Registry)]
    pub device_auth: DeviceAuth,

    /// Base URL of the device registry, asked on every device connect
    /// (`POST {url}/internal/v1/device-access`). Required with
    /// `--device-auth registry`.
    #[arg(long, env = "WARMHOUSE_BROKER_REGISTRY_URL")]
    pub registry_url: Option<String>,

    /// Bearer token the broker presents to the registry (an administrator's).
    #[arg(long, env = "WARMHOUSE_BROKER_REGISTRY_TOKEN", hide_env_values = true)]
    pub registry_token: Option<Secret>,

    /// How long one connect may wait for the registry's answer (queueing
    /// included), in ms; no answer in time refuses the connect.
    #[arg(long, env = "WARMHOUSE_BROKER_REGISTRY_TIMEOUT_MS", default_value_t = DEFAULT_REGISTRY_TIMEOUT_MS)]
    pub registry_timeout_ms: u64,

    /// Registry requests in flight at once (a reconnect storm queues here
    /// instead of flooding the registry).
    #[arg(long, env = "WARMHOUSE_BROKER_REGISTRY_CONCURRENCY", default_value_t = DEFAULT_REGISTRY_CONCURRENCY)]
    pub registry_concurrency: usize,

    /// While the registry cannot answer, a device whose very same
    /// credentials it allowed within this many seconds still gets in
    /// (revocations and refusals forget them); 0 refuses every connect then.
    #[arg(long, env = "WARMHOUSE_BROKER_ACCESS_GRACE_SECS", default_value_t = DEFAULT_ACCESS_GRACE_SECS)]
    pub access_grace_secs: u64,

    /// MQTT 3.1.1 over TLS with client certificates (devices); on when
    /// `--tls-cert`, `--tls-key` and `--tls-ca` are set.
    #[arg(long, env = "WARMHOUSE_BROKER_MQTTS_ADDR", default_value = DEFAULT_MQTTS_ADDR)]
    pub mqtts_addr: SocketAddr,

    /// Server certificate (PEM) of the mTLS listener, signed by the platform CA.
    #[arg(long, env = "WARMHOUSE_BROKER_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,

    /// Private key (PEM) of the server certificate.
    #[arg(long, env = "WARMHOUSE_BROKER_TLS_KEY")]
    pub tls_key: Option<PathBuf>,

    /// Platform CA certificate (PEM): client certificates must chain to it.
    #[arg(long, env = "WARMHOUSE_BROKER_TLS_CA")]
    pub tls_ca: Option<PathBuf>,

    /// Client certificate (PEM) the self-probe presents to the mTLS
    /// listener: issued by the platform CA for the device id
    /// `warmhouse-broker-probe`. Required with the mTLS listener.
    #[arg(long, env = "WARMHOUSE_BROKER_TLS_PROBE_CERT")]
    pub tls_probe_cert: Option<PathBuf>,

    /// Private key (PEM) of the probe's client certificate.
    #[arg(long, env = "WARMHOUSE_BROKER_TLS_PROBE_KEY")]
    pub tls_probe_key: Option<PathBuf>,

    /// Listener (MQTT 3.1.1, plain TCP) for the platform's own services
    /// such as the edge bridge: not confined to a tenant. On when
    /// `--service-password` is set; keep it off the devices' network.
    #[arg(long, env = "WARMHOUSE_BROKER_INTERNAL_ADDR", default_value = DEFAULT_INTERNAL_ADDR)]
    pub internal_addr: SocketAddr,

    /// Username of the platform's services on the internal listener.
    #[arg(long, env = "WARMHOUSE_BROKER_SERVICE_USERNAME", default_value = DEFAULT_SERVICE_USERNAME)]
    pub service_username: String,

    /// Password of the platform's services on the internal listener.
    #[arg(
        long,
        env = "WARMHOUSE_BROKER_SERVICE_PASSWORD",
        hide_env_values = true
    )]
    pub service_password: Option<Secret>,

    /// Kafka, topics and spool of the device ingress: where devices'
    /// publishes go before their PUBACK, where commands and the registry's
    /// events (revocations) come from.
    #[command(flatten)]
    pub ingress: IngressConfig,

    /// Topic of the registry's domain events.
    #[arg(
        long,
        env = "WARMHOUSE_BROKER_REGISTRY_EVENTS_TOPIC",
        default_value = "registry-events"
    )]
    pub registry_events_topic: String,

    /// Name of this broker replica in Kafka client ids and logs (default:
    /// the host name).
    #[arg(long, env = "WARMHOUSE_BROKER_INSTANCE_ID")]
    pub instance_id: Option<String>,

    /// Bearer token that authorises `POST|DELETE /admin/v1/devices/{id}/revoke`
    /// on the admin port; without it those endpoints answer 403.
    #[arg(long, env = "WARMHOUSE_BROKER_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<Secret>,

    /// How long the broker itself remembers a revocation, in seconds. After
    /// that the registry's answer at connect keeps the device out.
    #[arg(long, env = "WARMHOUSE_BROKER_REVOCATION_MEMORY_SECS", default_value_t = DEFAULT_REVOCATION_MEMORY_SECS)]
    pub revocation_memory_secs: u64,

    /// Logging: `--log-filter` (`RUST_LOG`), `--log-format`
    /// (`WARMHOUSE_LOG_FORMAT`).
    #[command(flatten)]
    pub log: LogArgs,
}

impl BrokerConfig {
    /// The defaults on the given addresses, with the given ingress (Kafka
    /// and spool), without reading arguments or environment.
    pub fn for_tests(
        mqtt_v4_addr: SocketAddr,
        mqtt_v5_addr: SocketAddr,
        admin_addr: SocketAddr,
        ingress: IngressConfig,
    ) -> Self {
        Self {
            mqtt_v4_addr,
            mqtt_v5_addr,
            admin_addr,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_payload_size: DEFAULT_MAX_PAYLOAD_SIZE,
            max_inflight_count: DEFAULT_MAX_INFLIGHT_COUNT,
            device_max_subscriptions: DEFAULT_DEVICE_MAX_SUBSCRIPTIONS,
            device_max_topic_length: DEFAULT_DEVICE_MAX_TOPIC_LENGTH,
            device_max_topic_levels: DEFAULT_DEVICE_MAX_TOPIC_LEVELS,
            device_max_inflight: DEFAULT_DEVICE_MAX_INFLIGHT,
            connection_timeout_ms: DEFAULT_CONNECTION_TIMEOUT_MS,
            next_connection_delay_ms: DEFAULT_NEXT_CONNECTION_DELAY_MS,
            max_segment_size: DEFAULT_MAX_SEGMENT_SIZE,
            max_segment_count: DEFAULT_MAX_SEGMENT_COUNT,
            max_outgoing_packet_count: DEFAULT_MAX_OUTGOING_PACKET_COUNT,
            meters_interval_secs: DEFAULT_METERS_INTERVAL_SECS,
            probe_interval_secs: DEFAULT_PROBE_INTERVAL_SECS,
            probe_timeout_secs: DEFAULT_PROBE_TIMEOUT_SECS,
            probe_failure_limit: DEFAULT_PROBE_FAILURE_LIMIT,
            startup_timeout_secs: DEFAULT_STARTUP_TIMEOUT_SECS,
            // Existing tests speak to the broker without credentials.
            device_auth: DeviceAuth::Open,
            registry_url: None,
            registry_token: None,
            registry_timeout_ms: DEFAULT_REGISTRY_TIMEOUT_MS,
            registry_concurrency: DEFAULT_REGISTRY_CONCURRENCY,
            mqtts_addr: DEFAULT_MQTTS_ADDR.parse().expect("valid default address"),
            tls_cert: None,
            tls_key: None,
            tls_ca: None,
            tls_probe_cert: None,
            tls_probe_key: None,
            internal_addr: DEFAULT_INTERNAL_ADDR
                .parse()
                .expect("valid default address"),
            service_username: DEFAULT_SERVICE_USERNAME.to_string(),
            service_password: None,
            ingress,
            registry_events_topic: "registry-events".to_string(),
            instance_id: None,
            admin_token: None,
            revocation_memory_secs: DEFAULT_REVOCATION_MEMORY_SECS,
            access_grace_secs: DEFAULT_ACCESS_GRACE_SECS,
            log: LogArgs::default(),
        }
    }

    /// Whether the mTLS device listener is configured.
    pub fn tls_enabled(&self) -> bool {
        self.tls_cert.is_some() || self.tls_key.is_some() || self.tls_ca.is_some()
    }

    /// The MQTT listeners this configuration runs, in probe order.
    pub fn listeners(&self) -> Vec<ListenerSpec> {
        let device = match self.device_auth {
            DeviceAuth::Registry => ListenerAuth::DevicePassword,
            DeviceAuth::Open => ListenerAuth::Open,
        };
        let mut listeners = vec![
            ListenerSpec {
                listener: Listener::V4,
                addr: self.mqtt_v4_addr,
                auth: device,
            },
            ListenerSpec {
                listener: Listener::V5,
                addr: self.mqtt_v5_addr,
                auth: device,
            },
        ];
        if self.tls_enabled() {
            listeners.push(ListenerSpec {
                listener: Listener::Mqtts,
                addr: self.mqtts_addr,
                auth: ListenerAuth::DeviceCertificate,
            });
        }
        if self.service_password.is_some() {
            listeners.push(ListenerSpec {
                listener: Listener::Internal,
                addr: self.internal_addr,
                auth: ListenerAuth::Service,
            });
        }
        listeners
    }

    /// Rejects what rumqttd would panic on or silently misbehave with.
    pub fn validate(&self) -> anyhow::Result<()> {
        self.validate_listener_addrs()?;
        if self.device_auth == DeviceAuth::Registry {
            self.validate_registry_access()?;
        }
        if self
            .service_password
            .as_ref()
            .is_some_and(|p| p.expose().is_empty())
        {
            bail!("the service password must not be empty");
        }
        if self.service_username.is_empty() {
            bail!("the service username must not be empty");
        }
        if self.ingress.spool_dir.as_os_str().is_empty() {
            bail!("the spool directory (WARMHOUSE_BROKER_SPOOL_DIR) must be set");
        }
        if self.ingress.kafka_bootstrap.trim().is_empty() {
            bail!("the Kafka bootstrap servers (WARMHOUSE_BROKER_KAFKA_BOOTSTRAP) must be set");
        }
        if self
            .admin_token
            .as_ref()
            .is_some_and(|t| t.expose().len() < 16)
        {
            bail!("the admin token must be at least 16 characters");
        }
        if self.tls_enabled() {
            self.validate_tls_files()?;
        }
        if self.revocation_memory_secs == 0 {
            bail!("revocation memory must be greater than 0");
        }
        self.validate_limits()
    }

    /// Every listener on a port of its own, chosen here: rumqttd binds by
    /// itself and never reports the port it got.
    fn validate_listener_addrs(&self) -> anyhow::Result<()> {
        let listeners = self.listeners();
        for (i, spec) in listeners.iter().enumerate() {
            let (name, addr) = (spec.listener.name(), spec.addr);
            if addr.port() == 0 {
                bail!("{name} listener address {addr} needs a concrete port: rumqttd cannot report a port chosen by the OS");
            }
            if let Some(other) = listeners[..i].iter().find(|o| o.addr == addr) {
                bail!(
                    "{} and {name} listeners both use {addr}",
                    other.listener.name()
                );
            }
        }
        Ok(())
    }

    /// What asking the registry at every connect needs.
    fn validate_registry_access(&self) -> anyhow::Result<()> {
        let missing = [
            ("WARMHOUSE_BROKER_REGISTRY_URL", self.registry_url.is_none()),
            (
                "WARMHOUSE_BROKER_REGISTRY_TOKEN",
                self.registry_token.is_none(),
            ),
        ];
        let missing: Vec<&str> = missing
            .iter()
            .filter(|(_, missing)| *missing)
            .map(|(name, _)| *name)
            .collect();
        if !missing.is_empty() {
            bail!(
                "device authentication by the registry (the default) needs {}; \
                 `--device-auth open` runs without it (tests and demos only: anyone \
                 may then publish as any device)",
                missing.join(", ")
            );
        }
        if self.registry_concurrency == 0 || self.registry_timeout_ms == 0 {
            bail!("registry concurrency and timeout must be greater than 0");
        }
        Ok(())
    }

    /// The mTLS listener's files, all present, so it does not fail at the
    /// first handshake.
    fn validate_tls_files(&self) -> anyhow::Result<()> {
        let files = [
            ("WARMHOUSE_BROKER_TLS_CERT", &self.tls_cert),
            ("WARMHOUSE_BROKER_TLS_KEY", &self.tls_key),
            ("WARMHOUSE_BROKER_TLS_CA", &self.tls_ca),
            ("WARMHOUSE_BROKER_TLS_PROBE_CERT", &self.tls_probe_cert),
            ("WARMHOUSE_BROKER_TLS_PROBE_KEY", &self.tls_probe_key),
        ];
        for (name, path) in files {
            match path {
                None => bail!(
                    "the mTLS listener needs {name} (it needs a server certificate, its \
                     key, the platform CA, and a client certificate for the self-probe)"
                ),
                Some(path) if !path.is_file() => {
                    bail!("{name}: {} is not a readable file", path.display())
                }
                Some(_) => {}
            }
        }
        Ok(())
    }

    /// Sizes, counts and intervals rumqttd panics on or stalls with.
    fn validate_limits(&self) -> anyhow::Result<()> {
        // rumqttd's commit log panics below 1 KiB.
        if self.max_segment_size < 1024 {
            bail!(
                "max segment size {} is below rumqttd's minimum of 1024 bytes",
                self.max_segment_size
            );
        }
        let positive = [
            ("max segment count", self.max_segment_count as u64),
            ("max connections", self.max_connections as u64),
            ("max payload size", self.max_payload_size as u64),
            ("max inflight count", self.max_inflight_count as u64),
            (
                "device max subscriptions",
                self.device_max_subscriptions as u64,
            ),
            (
                "device max topic length",
                self.device_max_topic_length as u64,
            ),
            (
                "device max topic levels",
                self.device_max_topic_levels as u64,
            ),
            ("device max inflight", u64::from(self.device_max_inflight)),
            ("max outgoing packet count", self.max_outgoing_packet_count),
            ("connection timeout", u64::from(self.connection_timeout_ms)),
            // A zero tokio interval panics inside rumqttd's timer thread.
            ("meters interval", self.meters_interval_secs),
            ("probe interval", self.probe_interval_secs),
            ("probe timeout", self.probe_timeout_secs),
            ("startup timeout", self.startup_timeout_secs),
        ];
        for (name, value) in positive {
            if value == 0 {
                bail!("{name} must be greater than 0");
            }
        }
        Ok(())
    }

    /// The rumqttd configuration this describes. Device listeners that ask
    /// the registry get their auth handler in `start` (it needs the
    /// running broker's state); until then they refuse every login.
    pub fn to_rumqttd(&self) -> anyhow::Result<rumqttd::Config> {
        let mut v4 = HashMap::new();
        let mut v5 = HashMap::new();
        for spec in self.listeners() {
            let settings = self.server_settings(&spec)?;
            let name = settings.name.clone();
            match spec.listener.protocol() {
                crate::probe::Protocol::V4 => v4.insert(name, settings),
                crate::probe::Protocol::V5 => v5.insert(name, settings),
            };
        }
        Ok(rumqttd::Config {
            id: 0,
            router: rumqttd::RouterConfig {
                max_connections: self.max_connections,
                max_outgoing_packet_count: self.max_outgoing_packet_count,
                max_segment_size: self.max_segment_size,
                max_segment_count: self.max_segment_count,
                custom_segment: None,
                initialized_filters: None,
                shared_subscriptions_strategy: Default::default(),
            },
            v4: (!v4.is_empty()).then_some(v4),
            v5: (!v5.is_empty()).then_some(v5),
            ws: None,
            cluster: None,
            // rumqttd's console is an unauthenticated HTTP API: keep it off.
            console: None,
            bridge: None,
            // Its own exporter would be a second /metrics; ours reads meters.
            prometheus: None,
            metrics: Some(self.metric_settings()?),
        })
    }

    /// One listener of rumqttd: its address, limits, TLS and logins.
    fn server_settings(&self, spec: &ListenerSpec) -> anyhow::Result<rumqttd::ServerSettings> {
        let mut connections = rumqttd::ConnectionSettings {
            connection_timeout_ms: self.connection_timeout_ms,
            max_payload_size: self.max_payload_size,
            max_inflight_count: self.max_inflight_count,
            auth: None,
            external_auth: None,
            // rumqttd 0.20 drops a publish that matches no
            // subscription whatever this says (and so does MQTT).
            dynamic_filters: false,
            tenant_from_username: false,
            publish_hook: None,
            // Devices get what a device needs; services are trusted.
            client_limits: if spec.auth == ListenerAuth::Service {
                rumqttd::ClientLimits::default()
            } else {
                rumqttd::ClientLimits {
                    max_subscriptions: Some(self.device_max_subscriptions),
                    max_topic_length: Some(self.device_max_topic_length),
                    max_topic_levels: Some(self.device_max_topic_levels),
                    max_inflight: Some(self.device_max_inflight),
                }
            },
        };
        let tls = self.secure(spec.auth, &mut connections)?;
        Ok(rumqttd::ServerSettings {
            name: spec.listener.rumqttd_name().to_string(),
            listen: spec.addr,
            tls,
            next_connection_delay_ms: self.next_connection_delay_ms,
            connections,
        })
    }

    /// Sets up how a listener authenticates and confines its clients;
    /// returns its TLS settings (the mTLS listener's only).
    fn secure(
        &self,
        auth: ListenerAuth,
        connections: &mut rumqttd::ConnectionSettings,
    ) -> anyhow::Result<Option<rumqttd::TlsConfig>> {
        Ok(match auth {
            ListenerAuth::Open => None,
            ListenerAuth::DevicePassword => {
                connections.tenant_from_username = true;
                // Fail closed until `start` installs the real check.
                connections.set_auth_handler(|_, _, _| async { false });
                None
            }
            ListenerAuth::DeviceCertificate => {
                let path = |p: &Option<PathBuf>| {
                    p.as_ref()
                        .map(|p| p.display().to_string())
                        .context("TLS file missing (validate first)")
                };
                let tls = rumqttd::TlsConfig::Rustls {
                    capath: Some(path(&self.tls_ca)?),
                    certpath: path(&self.tls_cert)?,
                    keypath: path(&self.tls_key)?,
                };
                if self.device_auth == DeviceAuth::Registry {
                    connections.set_auth_handler(|_, _, _| async { false });
                }
                Some(tls)
            }
            ListenerAuth::Service => {
                let password = self
                    .service_password
                    .as_ref()
                    .context("service password missing (validate first)")?;
                // rumqttd compares static passwords in constant time.
                connections.auth = Some(HashMap::from([(
                    self.service_username.clone(),
                    password.expose().to_string(),
                )]));
                None
            }
        })
    }

    /// rumqttd's meters and alerts, pushed every `meters_interval_secs`.
    fn metric_settings(
        &self,
    ) -> anyhow::Result<HashMap<rumqttd::MetricType, rumqttd::MetricSettings>> {
        // `MetricSettings` has private fields: serde is the only way in.
        let push = |interval: u64| {
            serde_json::from_value::<rumqttd::MetricSettings>(
                serde_json::json!({ "push_interval": interval }),
            )
            .context("building rumqttd metric settings")
        };
        Ok(HashMap::from([
            (
                rumqttd::MetricType::Meters,
                push(self.meters_interval_secs)?,
            ),
            (
                rumqttd::MetricType::Alerts,
                push(self.meters_interval_secs)?,
            ),
        ]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    /// What the flags default to.
    fn default_ingress() -> IngressConfig {
        IngressConfig::new("127.0.0.1:9092", PathBuf::from("data/broker-spool"))
    }

    #[test]
    fn parsed_defaults_match_for_tests_except_device_auth() {
        let parsed: BrokerConfig = warmhouse_service_kit::testing::clap_defaults().unwrap();
        let expected = BrokerConfig {
            device_auth: DeviceAuth::Registry,
            ..BrokerConfig::for_tests(
                addr("0.0.0.0:1883"),
                addr("0.0.0.0:1884"),
                addr("0.0.0.0:9183"),
                default_ingress(),
            )
        };
        assert_eq!(parsed, expected);
    }

    #[test]
    fn the_production_default_is_not_open() {
        let parsed = BrokerConfig::try_parse_from(["warmhouse-broker"]).unwrap();
        assert_eq!(parsed.device_auth, DeviceAuth::Registry);
        let err = parsed.validate().unwrap_err().to_string();
        for variable in [
            "WARMHOUSE_BROKER_REGISTRY_URL",
            "WARMHOUSE_BROKER_REGISTRY_TOKEN",
        ] {
            assert!(err.contains(variable), "{err}");
        }
        let open =
            BrokerConfig::try_parse_from(["warmhouse-broker", "--device-auth", "open"]).unwrap();
        open.validate().unwrap();
    }

    fn registry_config() -> BrokerConfig {
        BrokerConfig {
            device_auth: DeviceAuth::Registry,
            registry_url: Some("http://127.0.0.1:8082".into()),
            registry_token: Some(Secret::new("token")),
            service_password: Some(Secret::new("service-secret")),
            internal_addr: addr("127.0.0.1:3"),
            ..BrokerConfig::for_tests(
                addr("127.0.0.1:1"),
                addr("127.0.0.1:2"),
                addr("127.0.0.1:0"),
                default_ingress(),
            )
        }
    }

    #[test]
    fn registry_mode_confines_device_listeners_and_opens_an_internal_one() {
        let config = registry_config();
        config.validate().unwrap();
        let auths: Vec<(Listener, ListenerAuth)> = config
            .listeners()
            .iter()
            .map(|s| (s.listener, s.auth))
            .collect();
        assert_eq!(
            auths,
            vec![
                (Listener::V4, ListenerAuth::DevicePassword),
                (Listener::V5, ListenerAuth::DevicePassword),
                (Listener::Internal, ListenerAuth::Service),
            ]
        );
        let rumqttd = config.to_rumqttd().unwrap();
        let v4 = rumqttd.v4.unwrap();
        let device = &v4["v4"].connections;
        assert!(device.tenant_from_username);
        // Fails closed until `start` installs the registry check.
        assert!(device.external_auth.is_some());
        let internal = &v4["internal"].connections;
        assert!(!internal.tenant_from_username);
        assert_eq!(
            internal.auth.as_ref().unwrap()["warmhouse-service"],
            "service-secret"
        );
        assert!(rumqttd.v5.unwrap()["v5"].connections.tenant_from_username);
        // Secrets never show in Debug output.
        assert!(!format!("{config:?}").contains("service-secret"));
    }

    #[test]
    fn constant_time_eq_compares_whole_values() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
        assert!(constant_time_eq(b"", b""));
    }

    #[test]
    fn mtls_listener_needs_all_its_files() {
        let dir = tempfile::tempdir().unwrap();
        let file = |name: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, "x").unwrap();
            Some(path)
        };
        let mut config = BrokerConfig {
            tls_cert: file("cert.pem"),
            tls_key: file("key.pem"),
            mqtts_addr: addr("127.0.0.1:4"),
            ..registry_config()
        };
        let err = config.validate().unwrap_err().to_string();
        assert!(err.contains("WARMHOUSE_BROKER_TLS_CA"), "{err}");
        config.tls_ca = file("ca.pem");
        config.tls_probe_cert = file("probe.pem");
        config.tls_probe_key = file("probe.key");
        config.validate().unwrap();
        let listeners = config.listeners();
        assert!(listeners
            .iter()
            .any(|s| s.listener == Listener::Mqtts && s.auth == ListenerAuth::DeviceCertificate));
        let rumqttd = config.to_rumqttd().unwrap();
        let mqtts = &rumqttd.v4.unwrap()["mqtts"];
        assert!(mqtts.tls.is_some());
        assert!(!mqtts.connections.tenant_from_username);
        config.mqtts_addr = config.internal_addr;
        assert!(config
            .validate()
            .unwrap_err()
            .to_string()
            .contains("both use"));
    }

    #[test]
    fn flags_override_defaults() {
        let parsed = BrokerConfig::try_parse_from([
            "warmhouse-broker",
            "--mqtt-v4-addr",
            "127.0.0.1:2883",
            "--spool-dir",
            "/var/lib/warmhouse/spool",
            "--max-segment-count",
            "3",
        ])
        .unwrap();
        assert_eq!(parsed.mqtt_v4_addr, addr("127.0.0.1:2883"));
        assert_eq!(
            parsed.ingress.spool_dir,
            PathBuf::from("/var/lib/warmhouse/spool")
        );
        assert_eq!(parsed.max_segment_count, 3);
    }

    #[test]
    fn rejects_what_rumqttd_cannot_run() {
        let ok = BrokerConfig::for_tests(
            addr("127.0.0.1:1"),
            addr("127.0.0.1:2"),
            addr("127.0.0.1:0"),
            default_ingress(),
        );
        ok.validate().unwrap();
        let port_zero = BrokerConfig {
            mqtt_v5_addr: addr("127.0.0.1:0"),
            ..ok.clone()
        };
        assert!(port_zero
            .validate()
            .unwrap_err()
            .to_string()
            .contains("concrete port"));
        let same_port = BrokerConfig {
            mqtt_v5_addr: addr("127.0.0.1:1"),
            ..ok.clone()
        };
        assert!(same_port.validate().is_err());
        let tiny_segment = BrokerConfig {
            max_segment_size: 10,
            ..ok.clone()
        };
        assert!(tiny_segment.validate().is_err());
        let zero_interval = BrokerConfig {
            meters_interval_secs: 0,
            ..ok
        };
        assert!(zero_interval.validate().is_err());
    }

    #[test]
    fn maps_to_rumqttd_config() {
        let config = BrokerConfig::for_tests(
            addr("127.0.0.1:1"),
            addr("127.0.0.1:2"),
            addr("127.0.0.1:0"),
            default_ingress(),
        );
        let rumqttd = config.to_rumqttd().unwrap();
        assert_eq!(rumqttd.router.max_segment_size, DEFAULT_MAX_SEGMENT_SIZE);
        let v4 = &rumqttd.v4.unwrap()["v4"];
        assert_eq!(v4.listen, addr("127.0.0.1:1"));
        assert_eq!(
            v4.connections.max_inflight_count,
            DEFAULT_MAX_INFLIGHT_COUNT
        );
        assert!(rumqttd.console.is_none());
        assert_eq!(rumqttd.metrics.unwrap().len(), 2);
    }
}
