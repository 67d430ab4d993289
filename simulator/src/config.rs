//! Command line / environment configuration and the device id scheme.

use std::time::Duration;

use anyhow::{bail, Context};
use clap::builder::BoolishValueParser;
use warmhouse_contracts::ids::{DeviceId, DeviceType, HomeId, IdError};
use warmhouse_contracts::telemetry::MAX_SAMPLES_PER_MESSAGE;
use warmhouse_service_kit::args::LogArgs;

use crate::model::DeviceKind;

/// What to simulate and where to send it. Every option can also come from an
/// environment variable `WARMHOUSE_SIM_*` (flags take precedence).
#[derive(clap::Parser, Debug, Clone, PartialEq)]
#[command(
    name = "warmhouse-sim",
    version,
    about = "Simulates Warmhouse devices (thermostats, climate sensors, relays) over MQTT; doubles as the load generator."
)]
pub struct SimConfig {
    /// MQTT broker host.
    #[arg(long, env = "WARMHOUSE_SIM_HOST", default_value = DEFAULT_HOST)]
    pub host: String,

    /// MQTT broker port; several, comma separated, for broker replicas:
    /// devices are spread over them, and a device whose connection fails
    /// tries the next one.
    #[arg(
        long = "port",
        env = "WARMHOUSE_SIM_PORT",
        value_delimiter = ',',
        num_args = 1..,
        default_value = "1883"
    )]
    pub ports: Vec<u16>,

    /// MQTT username; `{device_id}` is replaced by each device's id.
    #[arg(long, env = "WARMHOUSE_SIM_USERNAME")]
    pub username: Option<String>,

    /// MQTT password; `{device_id}` is replaced by each device's id. Prefer the
    /// environment variable: command lines are visible to other users.
    #[arg(long, env = "WARMHOUSE_SIM_PASSWORD", hide_env_values = true)]
    pub password: Option<String>,

    /// JSON file of per-device credentials (device id to the registry's
    /// answer: a password, or a client certificate and key, inline or as
    /// files); every simulated device must be in it. Overrides
    /// --username/--password.
    #[arg(long, env = "WARMHOUSE_SIM_CREDENTIALS")]
    pub credentials: Option<std::path::PathBuf>,

    /// CA certificate (PEM) to trust: connect over TLS (devices with a
    /// certificate in --credentials present it).
    #[arg(long, env = "WARMHOUSE_SIM_TLS_CA")]
    pub tls_ca: Option<std::path::PathBuf>,

    /// Number of homes.
    #[arg(long, env = "WARMHOUSE_SIM_HOMES", default_value_t = 3,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub homes: u32,

    /// Devices in every home (kinds cycle: thermostat, climate_sensor, relay, climate_sensor).
    #[arg(long, env = "WARMHOUSE_SIM_DEVICES_PER_HOME", default_value_t = 4,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub devices_per_home: u32,

    /// Number of the first home, so several simulator processes can cover
    /// disjoint ranges of homes.
    #[arg(long, env = "WARMHOUSE_SIM_FIRST_HOME", default_value_t = 1)]
    pub first_home: u32,

    /// Prefix of home ids (`home` gives `home-0001`).
    #[arg(long, env = "WARMHOUSE_SIM_HOME_PREFIX", default_value = DEFAULT_HOME_PREFIX)]
    pub home_prefix: String,

    /// Mixed into every id (`home-RUN-0001-dev-01`) so parallel runs and tests
    /// never share devices.
    #[arg(long, env = "WARMHOUSE_SIM_RUN_ID")]
    pub run_id: Option<String>,

    /// Milliseconds between two messages of one device; 0 publishes as fast
    /// as the in-flight window allows (load generation).
    #[arg(long, env = "WARMHOUSE_SIM_INTERVAL_MS", default_value_t = 1000)]
    pub interval_ms: u64,

    /// Samples in one message (each with its own seq and timestamp).
    #[arg(long, env = "WARMHOUSE_SIM_SAMPLES_PER_MESSAGE", default_value_t = 1)]
    pub samples_per_message: usize,

    /// Stop after this many seconds; 0 runs until Ctrl-C (or the message limit).
    #[arg(long, env = "WARMHOUSE_SIM_DURATION_SECS", default_value_t = 0)]
    pub duration_secs: u64,

    /// Every device stops after publishing this many telemetry messages.
    #[arg(long, env = "WARMHOUSE_SIM_MESSAGES_PER_DEVICE")]
    pub messages_per_device: Option<u64>,

    /// QoS of telemetry (0 or 1). Status, state and command acks always use 1.
    #[arg(long, env = "WARMHOUSE_SIM_QOS", default_value_t = 1,
          value_parser = clap::value_parser!(u8).range(0..=1))]
    pub qos: u8,

    /// Keep every acknowledged message in the summary (tests; memory grows with the run).
    #[arg(long, env = "WARMHOUSE_SIM_RECORD", value_parser = BoolishValueParser::new())]
    pub record: bool,

    /// Print a progress line to stderr once a second.
    #[arg(long, env = "WARMHOUSE_SIM_PROGRESS", value_parser = BoolishValueParser::new())]
    pub progress: bool,

    /// Spread device start times evenly over this many milliseconds, so a
    /// large fleet does not connect in one burst.
    #[arg(
        long,
        alias = "start-delay-spread",
        env = "WARMHOUSE_SIM_START_DELAY_SPREAD_MS",
        default_value_t = 0
    )]
    pub start_delay_spread_ms: u64,

    /// Unacknowledged publishes allowed per device connection.
    #[arg(long, env = "WARMHOUSE_SIM_INFLIGHT", default_value_t = DEFAULT_INFLIGHT,
          value_parser = clap::value_parser!(u16).range(1..))]
    pub inflight: u16,

    /// Messages a device buffers while it cannot publish (disconnected or
    /// window full); when full it skips sampling instead of growing.
    #[arg(long, env = "WARMHOUSE_SIM_MAX_BACKLOG", default_value_t = DEFAULT_MAX_BACKLOG)]
    pub max_backlog: usize,

    /// MQTT keep alive in seconds.
    #[arg(long, env = "WARMHOUSE_SIM_KEEP_ALIVE_SECS", default_value_t = 30,
          value_parser = clap::value_parser!(u64).range(1..=65535))]
    pub keep_alive_secs: u64,

    /// On shutdown, how long devices may keep trying to get what they
    /// already published acknowledged.
    #[arg(long, env = "WARMHOUSE_SIM_DRAIN_TIMEOUT_SECS", default_value_t = 10)]
    pub drain_timeout_secs: u64,

    /// Logging: `--log-filter` (`RUST_LOG`), `--log-format`
    /// (`WARMHOUSE_LOG_FORMAT`).
    #[command(flatten)]
    pub log: LogArgs,
}

pub const DEFAULT_HOST: &str = "127.0.0.1";
pub const DEFAULT_PORT: u16 = 1883;
pub const DEFAULT_HOME_PREFIX: &str = "home";
pub const DEFAULT_INFLIGHT: u16 = 100;
pub const DEFAULT_MAX_BACKLOG: usize = 10_000;

impl SimConfig {
    /// `host:port` of every broker, for logs.
    pub fn brokers(&self) -> String {
        self.ports
            .iter()
            .map(|port| format!("{}:{port}", self.host))
            .collect::<Vec<_>>()
            .join(",")
    }
}

impl Default for SimConfig {
    /// The command line defaults, without reading the environment.
    fn default() -> Self {
        Self {
            host: DEFAULT_HOST.to_string(),
            ports: vec![DEFAULT_PORT],
            username: None,
            password: None,
            credentials: None,
            tls_ca: None,
            homes: 3,
            devices_per_home: 4,
            first_home: 1,
            home_prefix: DEFAULT_HOME_PREFIX.to_string(),
            run_id: None,
            interval_ms: 1000,
            samples_per_message: 1,
            duration_secs: 0,
            messages_per_device: None,
            qos: 1,
            record: false,
            progress: false,
            start_delay_spread_ms: 0,
            inflight: DEFAULT_INFLIGHT,
            max_backlog: DEFAULT_MAX_BACKLOG,
            keep_alive_secs: 30,
            drain_timeout_secs: 10,
            log: LogArgs::default(),
        }
    }
}

/// One simulated device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceSpec {
    pub home_id: HomeId,
    pub device_id: DeviceId,
    pub kind: DeviceKind,
    /// Position in the fleet (0-based), used to spread start times.
    pub index: usize,
}

impl DeviceSpec {
    pub fn device_type(&self) -> DeviceType {
        self.kind.device_type()
    }
}

/// `{prefix}-{run_id}-{NNNN}`, or `{prefix}-{NNNN}` without a run id.
pub fn home_id(prefix: &str, run_id: Option<&str>, number: u32) -> Result<HomeId, IdError> {
    match run_id {
        Some(run) => HomeId::new(format!("{prefix}-{run}-{number:04}")),
        None => HomeId::new(format!("{prefix}-{number:04}")),
    }
}

/// `{home_id}-dev-{NN}`: the home is visible in the device id, which helps
/// when reading broker logs.
pub fn device_id(home: &HomeId, number: u32) -> Result<DeviceId, IdError> {
    DeviceId::new(format!("{home}-dev-{number:02}"))
}

impl SimConfig {
    /// Refuses combinations that cannot work, before any connection is made.
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.samples_per_message == 0 || self.samples_per_message > MAX_SAMPLES_PER_MESSAGE {
            bail!(
                "--samples-per-message must be between 1 and {MAX_SAMPLES_PER_MESSAGE}, got {}",
                self.samples_per_message
            );
        }
        let largest = crate::model::largest_message_bytes(self.samples_per_message);
        if largest > warmhouse_contracts::MAX_PAYLOAD_BYTES {
            bail!(
                "--samples-per-message {} makes messages of up to {largest} bytes; the platform accepts at most {} bytes",
                self.samples_per_message,
                warmhouse_contracts::MAX_PAYLOAD_BYTES
            );
        }
        if self.max_backlog == 0 {
            bail!("--max-backlog must be at least 1");
        }
        if self.ports.is_empty() || self.ports.contains(&0) {
            bail!("--port needs at least one port, none of them 0");
        }
        if self.messages_per_device == Some(0) {
            bail!("--messages-per-device must be at least 1 (leave it out for no limit)");
        }
        // Builds every id once so a bad prefix or run id fails here, naming the id.
        self.device_specs()?;
        Ok(())
    }

    /// Reads `--credentials` and `--tls-ca` and checks they cover `specs`.
    pub fn load_identity(&self, specs: &[DeviceSpec]) -> anyhow::Result<crate::DeviceIdentity> {
        let tls_ca = match &self.tls_ca {
            Some(path) => Some(
                std::fs::read(path)
                    .with_context(|| format!("reading --tls-ca {}", path.display()))?,
            ),
            None => None,
        };
        let credentials = match &self.credentials {
            Some(path) => Some(crate::credentials::Credentials::load(path)?),
            None => None,
        };
        if let Some(credentials) = &credentials {
            let missing: Vec<&str> = specs
                .iter()
                .filter(|spec| credentials.get(&spec.device_id).is_none())
                .map(|spec| spec.device_id.as_str())
                .take(5)
                .collect();
            if !missing.is_empty() {
                bail!(
                    "--credentials has nothing for device(s) {} (every simulated device needs credentials)",
                    missing.join(", ")
                );
            }
            let any_certificate = specs.iter().any(|spec| {
                matches!(
                    credentials.get(&spec.device_id),
                    Some(crate::credentials::DeviceCredential::Certificate { .. })
                )
            });
            if any_certificate && tls_ca.is_none() {
                bail!(
                    "devices with certificates connect over TLS: give --tls-ca (the platform CA)"
                );
            }
        }
        Ok(crate::DeviceIdentity {
            credentials,
            tls_ca,
        })
    }

    /// Every device of the fleet, in a stable order.
    pub fn device_specs(&self) -> anyhow::Result<Vec<DeviceSpec>> {
        let mut specs = Vec::with_capacity(self.homes as usize * self.devices_per_home as usize);
        for h in 0..self.homes {
            let number = self
                .first_home
                .checked_add(h)
                .context("home numbers overflow; lower --first-home")?;
            let home =
                home_id(&self.home_prefix, self.run_id.as_deref(), number).with_context(|| {
                    format!(
                        "cannot build a home id from prefix {:?} and run id {:?}",
                        self.home_prefix, self.run_id
                    )
                })?;
            for d in 0..self.devices_per_home {
                let device = device_id(&home, d + 1)
                    .with_context(|| format!("cannot build device id {} of home {home}", d + 1))?;
                specs.push(DeviceSpec {
                    home_id: home.clone(),
                    device_id: device,
                    kind: DeviceKind::for_position(d as usize),
                    index: specs.len(),
                });
            }
        }
        Ok(specs)
    }

    pub fn interval(&self) -> Duration {
        Duration::from_millis(self.interval_ms)
    }

    pub(crate) fn credentials_for(&self, device: &DeviceId) -> Option<(String, String)> {
        let fill = |s: &str| s.replace("{device_id}", device.as_str());
        self.username.as_ref().map(|user| {
            (
                fill(user),
                self.password.as_deref().map(fill).unwrap_or_default(),
            )
        })
    }

    /// Start delay of the device at `index`: evenly spread, deterministic.
    pub(crate) fn start_delay(&self, index: usize, devices: usize) -> Duration {
        if devices == 0 || self.start_delay_spread_ms == 0 {
            return Duration::ZERO;
        }
        Duration::from_millis(self.start_delay_spread_ms * index as u64 / devices as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[test]
    fn ids_follow_the_scheme() {
        let home = home_id("home", None, 1).unwrap();
        assert_eq!(home.as_str(), "home-0001");
        assert_eq!(device_id(&home, 1).unwrap().as_str(), "home-0001-dev-01");
        let home = home_id("home", Some("t42"), 12345).unwrap();
        assert_eq!(home.as_str(), "home-t42-12345");
        assert_eq!(
            device_id(&home, 100).unwrap().as_str(),
            "home-t42-12345-dev-100"
        );
    }

    #[test]
    fn fleet_is_deterministic_and_unique() {
        let config = SimConfig {
            homes: 3,
            devices_per_home: 4,
            run_id: Some("r1".into()),
            ..SimConfig::default()
        };
        let specs = config.device_specs().unwrap();
        assert_eq!(specs.len(), 12);
        assert_eq!(specs, config.device_specs().unwrap());
        let mut ids: Vec<_> = specs.iter().map(|s| s.device_id.clone()).collect();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), 12);
        assert_eq!(specs[5].device_id.as_str(), "home-r1-0002-dev-02");
        assert_eq!(specs[5].home_id.as_str(), "home-r1-0002");
        assert_eq!(specs[5].index, 5);
        assert_eq!(specs[0].kind, DeviceKind::Thermostat);
        assert_eq!(specs[1].kind, DeviceKind::ClimateSensor);
        assert_eq!(specs[2].kind, DeviceKind::Relay);
    }

    #[test]
    fn first_home_shifts_numbers() {
        let config = SimConfig {
            homes: 2,
            devices_per_home: 1,
            first_home: 101,
            ..SimConfig::default()
        };
        let ids: Vec<_> = config
            .device_specs()
            .unwrap()
            .into_iter()
            .map(|s| s.device_id.to_string())
            .collect();
        assert_eq!(ids, ["home-0101-dev-01", "home-0102-dev-01"]);
    }

    #[test]
    fn bad_ids_and_limits_are_refused() {
        let bad = SimConfig {
            run_id: Some("a/b".into()),
            ..SimConfig::default()
        };
        let err = format!("{:#}", bad.validate().unwrap_err());
        assert!(err.contains("home id contains '/'"), "{err}");
        let long = SimConfig {
            home_prefix: "x".repeat(60),
            ..SimConfig::default()
        };
        assert!(long.validate().is_err());
        let too_many = SimConfig {
            samples_per_message: 1000,
            ..SimConfig::default()
        };
        let err = too_many.validate().unwrap_err().to_string();
        assert!(err.contains("at most 65536 bytes"), "{err}");
        assert!(SimConfig {
            samples_per_message: 0,
            ..SimConfig::default()
        }
        .validate()
        .is_err());
        assert!(SimConfig::default().validate().is_ok());
    }

    #[test]
    fn default_matches_the_command_line() {
        // The declared defaults, whatever the environment holds.
        assert_eq!(
            warmhouse_service_kit::testing::clap_defaults::<SimConfig>().unwrap(),
            SimConfig::default()
        );
    }

    #[test]
    fn flags_parse() {
        let config = SimConfig::parse_from([
            "warmhouse-sim",
            "--homes",
            "2",
            "--devices-per-home",
            "2",
            "--messages-per-device",
            "5",
            "--qos",
            "0",
            "--record",
            "--start-delay-spread",
            "500",
        ]);
        assert_eq!(config.homes, 2);
        assert_eq!(config.messages_per_device, Some(5));
        assert_eq!(config.qos, 0);
        assert!(config.record && !config.progress);
        assert_eq!(config.start_delay_spread_ms, 500);
        assert!(SimConfig::try_parse_from(["warmhouse-sim", "--qos", "2"]).is_err());
        assert!(SimConfig::try_parse_from(["warmhouse-sim", "--homes", "0"]).is_err());
    }

    #[test]
    fn start_delays_spread_evenly() {
        let config = SimConfig {
            start_delay_spread_ms: 1000,
            ..SimConfig::default()
        };
        assert_eq!(config.start_delay(0, 4), Duration::ZERO);
        assert_eq!(config.start_delay(2, 4), Duration::from_millis(500));
        assert_eq!(SimConfig::default().start_delay(3, 4), Duration::ZERO);
    }

    #[test]
    fn credentials_are_per_device() {
        let config = SimConfig {
            username: Some("{device_id}".into()),
            password: Some("secret-{device_id}".into()),
            ..SimConfig::default()
        };
        let id = DeviceId::new("d1").unwrap();
        assert_eq!(
            config.credentials_for(&id),
            Some(("d1".to_string(), "secret-d1".to_string()))
        );
        assert_eq!(SimConfig::default().credentials_for(&id), None);
    }
}
