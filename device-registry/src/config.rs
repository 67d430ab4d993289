//! The registry's configuration: flags or environment variables, one
//! group a feature flattened in. Tests start from [`Default`] (or
//! [`RegistryConfig::new`]) and override fields, so what they run never
//! depends on the shell's environment.

use std::net::SocketAddr;

use warmhouse_service_kit::args::{
    DeviceCommandsTopic, DeviceEventsTopic, KafkaArgs, LogArgs, RegistryEventsTopic,
};
use warmhouse_service_kit::auth::AuthConfig;

use crate::kafka::{KafkaSettings, Topics};
use crate::{identity, legacy, onboarding};

pub const DEFAULT_LISTEN: &str = "0.0.0.0:8082";
pub const DEFAULT_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/warmhouse";
pub const DEFAULT_POOL_SIZE: u32 = 10;
pub const DEFAULT_ACQUIRE_TIMEOUT_MS: u64 = 3_000;
pub const DEFAULT_READY_INTERVAL_MS: u64 = 2_000;
pub const DEFAULT_GROUP: &str = "warmhouse-device-registry";

/// Configuration of `device-registry` (flags or environment variables).
#[derive(clap::Parser, Debug, Clone)]
#[command(
    name = "device-registry",
    about = "Warmhouse device registry (REST over PostgreSQL)"
)]
pub struct RegistryConfig {
    /// Address the HTTP API listens on.
    #[arg(long, env = "WARMHOUSE_REGISTRY_LISTEN", default_value = DEFAULT_LISTEN)]
    pub listen: SocketAddr,
    /// PostgreSQL connection URL.
    #[arg(
        long,
        env = "WARMHOUSE_REGISTRY_DATABASE_URL",
        default_value = DEFAULT_DATABASE_URL
    )]
    pub database_url: String,
    /// Most connections to PostgreSQL.
    #[arg(long, env = "WARMHOUSE_REGISTRY_POOL_SIZE", default_value_t = DEFAULT_POOL_SIZE,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub pool_size: u32,
    /// How long a request waits for a connection, in milliseconds.
    #[arg(
        long,
        env = "WARMHOUSE_REGISTRY_ACQUIRE_TIMEOUT_MS",
        default_value_t = DEFAULT_ACQUIRE_TIMEOUT_MS
    )]
    pub acquire_timeout_ms: u64,
    /// How often PostgreSQL is checked for `/readyz`, in milliseconds.
    #[arg(
        long,
        env = "WARMHOUSE_REGISTRY_READY_INTERVAL_MS",
        default_value_t = DEFAULT_READY_INTERVAL_MS
    )]
    pub ready_interval_ms: u64,
    /// Kafka bootstrap servers. Empty: no Kafka (commands then wait in the
    /// outbox; for tests of the REST API alone).
    #[command(flatten)]
    pub kafka: KafkaArgs,
    /// Consumer group of the registry's `device-events` consumer.
    #[arg(long, env = "WARMHOUSE_REGISTRY_GROUP", default_value = DEFAULT_GROUP)]
    pub group_id: String,
    #[command(flatten)]
    pub device_commands_topic: DeviceCommandsTopic,
    #[command(flatten)]
    pub device_events_topic: DeviceEventsTopic,
    #[command(flatten)]
    pub registry_events_topic: RegistryEventsTopic,
    /// How bearer tokens are verified.
    #[command(flatten)]
    pub auth: AuthConfig,
    /// Device identity: the platform CA that signs device certificates.
    #[command(flatten)]
    pub identity: identity::IdentityConfig,
    /// Where the legacy `/api/heating` endpoints read temperatures.
    #[command(flatten)]
    pub legacy: legacy::LegacyConfig,
    /// The onboarding saga: telemetry store, failure injection.
    #[command(flatten)]
    pub onboarding: onboarding::OnboardingConfig,
    /// Logging: `--log-filter` (`RUST_LOG`), `--log-format`
    /// (`WARMHOUSE_LOG_FORMAT`).
    #[command(flatten)]
    pub log: LogArgs,
}

impl Default for RegistryConfig {
    /// What the flags default to, without reading the environment. Set
    /// `auth` before starting: without a key the registry refuses to start.
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], 8082)),
            database_url: DEFAULT_DATABASE_URL.into(),
            pool_size: DEFAULT_POOL_SIZE,
            acquire_timeout_ms: DEFAULT_ACQUIRE_TIMEOUT_MS,
            ready_interval_ms: DEFAULT_READY_INTERVAL_MS,
            kafka: KafkaArgs::default(),
            group_id: DEFAULT_GROUP.into(),
            device_commands_topic: DeviceCommandsTopic::default(),
            device_events_topic: DeviceEventsTopic::default(),
            registry_events_topic: RegistryEventsTopic::default(),
            auth: AuthConfig::default(),
            identity: identity::IdentityConfig::default(),
            legacy: legacy::LegacyConfig::default(),
            onboarding: onboarding::OnboardingConfig::default(),
            log: LogArgs::default(),
        }
    }
}

impl RegistryConfig {
    /// Defaults with another database and listen address, and no Kafka
    /// (tests, embedding; see [`Self::with_kafka`]). Set `auth` before
    /// starting: without a key the registry refuses to start.
    pub fn new(listen: SocketAddr, database_url: impl Into<String>) -> Self {
        Self {
            listen,
            database_url: database_url.into(),
            kafka: KafkaArgs::new(""),
            ..Self::default()
        }
    }

    /// The same with Kafka at `bootstrap`.
    pub fn with_kafka(mut self, bootstrap: impl Into<String>) -> Self {
        self.kafka = KafkaArgs::new(bootstrap);
        self
    }

    pub(crate) fn topics(&self) -> Topics {
        Topics {
            device_commands: self.device_commands_topic.name.clone(),
            device_events: self.device_events_topic.name.clone(),
            registry_events: self.registry_events_topic.name.clone(),
        }
    }

    pub(crate) fn kafka(&self) -> Option<KafkaSettings> {
        (!self.kafka.bootstrap.trim().is_empty()).then(|| KafkaSettings {
            bootstrap: self.kafka.bootstrap.clone(),
            group_id: self.group_id.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_listen_address_is_the_flags() {
        let flag: SocketAddr = DEFAULT_LISTEN.parse().expect("a socket address");
        assert_eq!(RegistryConfig::default().listen, flag);
    }

    #[test]
    fn the_default_is_what_the_flags_declare() {
        let declared: RegistryConfig =
            warmhouse_service_kit::testing::clap_defaults().expect("the declared defaults parse");
        assert_eq!(
            format!("{:?}", RegistryConfig::default()),
            format!("{declared:?}")
        );
    }
}
