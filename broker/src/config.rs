//! Broker configuration: command-line flags, each also read from a
//! `WARMHOUSE_BROKER_*` environment variable (12-factor), with defaults that
//! work on the local stack.

use std::collections::HashMap;
use std::net::SocketAddr;

use anyhow::{bail, Context};
use clap::{ArgAction, Parser};

/// MQTT payloads up to 64 KiB plus room for topic and properties.
pub const DEFAULT_MAX_PAYLOAD_SIZE: usize = 65_536 + 1_024;
/// The edge bridge reads a large window of publishes per network read.
pub const DEFAULT_MAX_INFLIGHT_COUNT: usize = 1_000;
pub const DEFAULT_MAX_CONNECTIONS: usize = 20_000;
pub const DEFAULT_CONNECTION_TIMEOUT_MS: u16 = 10_000;
pub const DEFAULT_NEXT_CONNECTION_DELAY_MS: u64 = 1;
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

    /// How long a new TCP connection may take to send CONNECT, in ms.
    #[arg(long, env = "WARMHOUSE_BROKER_CONNECTION_TIMEOUT_MS", default_value_t = DEFAULT_CONNECTION_TIMEOUT_MS)]
    pub connection_timeout_ms: u16,

    /// Pause after each accepted connection, in ms (caps the accept rate of
    /// a reconnect storm).
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

    /// Accept publishes on topics nobody subscribes to (each such topic gets
    /// its own bounded log). Without it rumqttd disconnects the publisher.
    #[arg(long, env = "WARMHOUSE_BROKER_DYNAMIC_FILTERS", default_value_t = true, action = ArgAction::Set)]
    pub dynamic_filters: bool,

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

    /// How long `start` waits for both listeners to answer, in seconds.
    #[arg(long, env = "WARMHOUSE_BROKER_STARTUP_TIMEOUT_SECS", default_value_t = DEFAULT_STARTUP_TIMEOUT_SECS)]
    pub startup_timeout_secs: u64,
}

impl BrokerConfig {
    /// The defaults on the given addresses, without reading arguments or
    /// environment.
    pub fn for_tests(
        mqtt_v4_addr: SocketAddr,
        mqtt_v5_addr: SocketAddr,
        admin_addr: SocketAddr,
    ) -> Self {
        Self {
            mqtt_v4_addr,
            mqtt_v5_addr,
            admin_addr,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_payload_size: DEFAULT_MAX_PAYLOAD_SIZE,
            max_inflight_count: DEFAULT_MAX_INFLIGHT_COUNT,
            connection_timeout_ms: DEFAULT_CONNECTION_TIMEOUT_MS,
            next_connection_delay_ms: DEFAULT_NEXT_CONNECTION_DELAY_MS,
            max_segment_size: DEFAULT_MAX_SEGMENT_SIZE,
            max_segment_count: DEFAULT_MAX_SEGMENT_COUNT,
            max_outgoing_packet_count: DEFAULT_MAX_OUTGOING_PACKET_COUNT,
            dynamic_filters: true,
            meters_interval_secs: DEFAULT_METERS_INTERVAL_SECS,
            probe_interval_secs: DEFAULT_PROBE_INTERVAL_SECS,
            probe_timeout_secs: DEFAULT_PROBE_TIMEOUT_SECS,
            probe_failure_limit: DEFAULT_PROBE_FAILURE_LIMIT,
            startup_timeout_secs: DEFAULT_STARTUP_TIMEOUT_SECS,
        }
    }

    /// Rejects what rumqttd would panic on or silently misbehave with.
    pub fn validate(&self) -> anyhow::Result<()> {
        for (name, addr) in [
            ("MQTT v4", self.mqtt_v4_addr),
            ("MQTT v5", self.mqtt_v5_addr),
        ] {
            // rumqttd binds by itself and never reports the port it got.
            if addr.port() == 0 {
                bail!("{name} listener address {addr} needs a concrete port: rumqttd cannot report a port chosen by the OS");
            }
        }
        if self.mqtt_v4_addr == self.mqtt_v5_addr {
            bail!("MQTT v4 and v5 listeners both use {}", self.mqtt_v4_addr);
        }
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

    /// The rumqttd configuration this describes.
    pub fn to_rumqttd(&self) -> anyhow::Result<rumqttd::Config> {
        let connections = rumqttd::ConnectionSettings {
            connection_timeout_ms: self.connection_timeout_ms,
            max_payload_size: self.max_payload_size,
            max_inflight_count: self.max_inflight_count,
            auth: None,
            external_auth: None,
            dynamic_filters: self.dynamic_filters,
        };
        let server = |name: &str, listen: SocketAddr| {
            let settings = rumqttd::ServerSettings {
                name: name.to_string(),
                listen,
                tls: None,
                next_connection_delay_ms: self.next_connection_delay_ms,
                connections: connections.clone(),
            };
            Some(HashMap::from([(name.to_string(), settings)]))
        };
        // `MetricSettings` has private fields: serde is the only way in.
        let push = |interval: u64| {
            serde_json::from_value::<rumqttd::MetricSettings>(
                serde_json::json!({ "push_interval": interval }),
            )
            .context("building rumqttd metric settings")
        };
        let metrics = HashMap::from([
            (
                rumqttd::MetricType::Meters,
                push(self.meters_interval_secs)?,
            ),
            (
                rumqttd::MetricType::Alerts,
                push(self.meters_interval_secs)?,
            ),
        ]);
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
            v4: server("v4", self.mqtt_v4_addr),
            v5: server("v5", self.mqtt_v5_addr),
            ws: None,
            cluster: None,
            // rumqttd's console is an unauthenticated HTTP API: keep it off.
            console: None,
            bridge: None,
            // Its own exporter would be a second /metrics; ours reads meters.
            prometheus: None,
            metrics: Some(metrics),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn parsed_defaults_match_for_tests() {
        let parsed = BrokerConfig::try_parse_from(["warmhouse-broker"]).unwrap();
        let expected = BrokerConfig::for_tests(
            addr("0.0.0.0:1883"),
            addr("0.0.0.0:1884"),
            addr("0.0.0.0:9183"),
        );
        assert_eq!(parsed, expected);
        parsed.validate().unwrap();
    }

    #[test]
    fn flags_override_defaults() {
        let parsed = BrokerConfig::try_parse_from([
            "warmhouse-broker",
            "--mqtt-v4-addr",
            "127.0.0.1:2883",
            "--dynamic-filters",
            "false",
            "--max-segment-count",
            "3",
        ])
        .unwrap();
        assert_eq!(parsed.mqtt_v4_addr, addr("127.0.0.1:2883"));
        assert!(!parsed.dynamic_filters);
        assert_eq!(parsed.max_segment_count, 3);
    }

    #[test]
    fn rejects_what_rumqttd_cannot_run() {
        let ok = BrokerConfig::for_tests(
            addr("127.0.0.1:1"),
            addr("127.0.0.1:2"),
            addr("127.0.0.1:0"),
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
